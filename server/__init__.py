"""Flower ServerApp: thin wiring over `common`."""
