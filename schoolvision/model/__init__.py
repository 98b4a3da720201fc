"""The classifier: backbones, checkpoints, batched inference and device choice."""
