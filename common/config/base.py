"""The config's error type and value check, shared by every section."""

from __future__ import annotations

ConfigValue = bool | int | float | str


class ConfigError(ValueError):
    """A run-config key is unknown, missing, of the wrong type or out of range."""


def check(ok: bool, key: str, value: object, why: str) -> None:
    """Raise `ConfigError` naming `key` and `value` unless `ok`."""
    if not ok:
        raise ConfigError(f"`{key}` {why}, got {value!r}.")
