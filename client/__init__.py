"""Flower ClientApp: thin wiring over `common` (the only package it imports)."""
