"""Training-side helpers for keras-ftprop (input pipelines, training loop)."""
