"""Run configuration: typed sections parsed once from Flower's flat run-config."""
