"""Training data: labelled chips cut from imagery on one window grid, the PyTorch dataset, augmentations.

The synthetic demo towns the book starts from live one layer up, in :mod:`schoolvision.demo`.
"""
