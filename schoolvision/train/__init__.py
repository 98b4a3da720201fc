"""Fitting the classifier: the training loop, metrics, evaluation and TensorBoard logging."""
