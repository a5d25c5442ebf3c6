"""Shared core: config, data, model, training, privacy accounting and metrics."""
