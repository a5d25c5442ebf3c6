"""Parsing Flower's flat run-config (over the pyproject defaults) into a `RunConfig`."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.config.base import ConfigError, ConfigValue
from common.config.data import DataConfig
from common.config.dp import DPConfig, check_strategy_privacy
from common.config.model import LoraConfig, ModelConfig, TrainConfig
from common.config.run import CONFIG_KEYS, AuditConfig, FedConfig, RunConfig, check_dp_model

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def load_defaults(pyproject: Path = PYPROJECT) -> dict[str, ConfigValue]:
    """Read `[tool.flwr.app.config]` from pyproject.toml: the single source of defaults."""
    with open(pyproject, "rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def parse_value(key: str, text: str) -> ConfigValue:
    """Parse a command-line override value (TOML syntax; bare words are strings)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]  # type: ignore[no-any-return]
    except tomllib.TOMLDecodeError:
        if text.lower() in ("inf", "+inf"):
            return math.inf
        return text


def parse_overrides(pairs: str | list[str]) -> dict[str, ConfigValue]:
    """Parse ``"a.b=1 c=x"`` or ``["a.b=1", "c=x"]`` into a mapping."""
    items = pairs.split() if isinstance(pairs, str) else pairs
    out: dict[str, ConfigValue] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_value(key, text.strip())
    return out


# Keys added after runs were first recorded, with the value that gives the behaviour from
# before the key existed (a recorded config without the key meant this, whatever today's
# default is). `parse_recorded` fills them in; add a key here when adding one to pyproject.
PREDATING: dict[str, ConfigValue] = {
    "train.lr-schedule": "constant",
    "model.new-item-rank": 0,
    "model.cooc-decay": 0.0,
    "fed.eval-split": "test",
}


# Keys that change nothing unless another key switches their feature on (compared only then).
NEW_ITEM_KEYS = ("model.new-item-rank", "model.new-item-text-weight", "model.new-item-prior")
COOC_KEYS = ("model.cooc-lambda", "model.cooc-weight", "model.cooc-decay")


def without_inert(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config without the keys that cannot change its run (for comparing two configs).

    The new-item keys act only when some item is new (``data.cold-start-share`` or
    ``data.new-items-file``), the co-occurrence keys only with ``model.cooc-items`` > 0.
    """
    out = dict(flat)
    if not out.get("data.cold-start-share") and not out.get("data.new-items-file"):
        for key in NEW_ITEM_KEYS:
            out.pop(key, None)
    if not out.get("model.cooc-items"):
        for key in COOC_KEYS:
            out.pop(key, None)
    return out


def parse_recorded(recorded: Mapping[str, Any]) -> RunConfig:
    """`parse_config` of a config recorded by an earlier run (results.json, a point record).

    A key the record lacks takes its `PREDATING` value (what the run did before the key
    existed), not today's default; keys in neither come from the defaults as usual.
    """
    return parse_config({**PREDATING, **recorded})


def parse_config(
    run_config: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> RunConfig:
    """Validate a flat run-config (merged over the pyproject defaults) into a `RunConfig`.

    Unknown keys, missing keys and wrong types raise `ConfigError` naming the key.
    """
    base = dict(load_defaults() if defaults is None else defaults)
    unknown = sorted(set(run_config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(CONFIG_KEYS)}")
    merged = {**base, **run_config}
    missing = sorted(set(CONFIG_KEYS) - set(merged))
    if missing:
        raise ConfigError(f"missing config key(s) {missing}")
    values: dict[str, dict[str, Any]] = {}
    for key, (section, attr) in CONFIG_KEYS.items():
        proto = base.get(key, merged[key])
        value = _coerce(key, merged[key], proto)
        node = values.setdefault(section, {})
        for part in attr[:-1]:
            node = node.setdefault(part, {})
        node[attr[-1]] = value
    cfg = RunConfig(
        data=DataConfig(**values["data"]),
        model=ModelConfig(**{**values["model"], "lora": LoraConfig(**values["model"]["lora"])}),
        train=TrainConfig(**values["train"]),
        dp=DPConfig(**values["dp"]),
        fed=FedConfig(**values["fed"]),
        audit=AuditConfig(**values["audit"]),
    )
    check_strategy_privacy(cfg.dp.mode, cfg.fed.strategy)
    check_dp_model(cfg)
    return cfg


def _coerce(key: str, value: Any, proto: Any) -> ConfigValue:
    """Coerce `value` to the type of the default `proto`, or raise naming the key."""
    if isinstance(proto, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(proto, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(proto, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.lower() in ("inf", "+inf"):
            return math.inf
    elif isinstance(proto, str) and isinstance(value, str):
        return value
    raise ConfigError(
        f"`{key}` must be of type {type(proto).__name__}, got {value!r} ({type(value).__name__})."
    )
