"""Shared core: config, data, model, training, privacy, metrics (imports no other package)."""
