"""Simulation, sweep, benchmark and report scripts that drive the same apps (may import all)."""
