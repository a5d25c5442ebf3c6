"""Tests of the Flower apps (client, server, simulation runner)."""
