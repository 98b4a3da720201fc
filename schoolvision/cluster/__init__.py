"""What the classifier learnt: chip embeddings, their clusters, and the TensorBoard projector."""
