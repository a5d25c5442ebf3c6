"""Interaction data: the loaders and registry, types, split, synthetic data, downloads."""
