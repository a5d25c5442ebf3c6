"""The model: backbone, item catalogue, the two towers and their training."""
