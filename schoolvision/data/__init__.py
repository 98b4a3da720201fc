"""Training data: synthetic demo towns, labelled chips cut from imagery, the PyTorch dataset, augmentations."""
