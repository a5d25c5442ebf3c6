"""Flower ServerApp: thin wiring over `common` (the only package it imports)."""
