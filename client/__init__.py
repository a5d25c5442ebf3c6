"""Flower ClientApp: thin wiring over `common`."""
