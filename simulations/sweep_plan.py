"""The sweep's points: a `sweep-<name>.toml` preset expanded into validated run overrides.

See `simulations.sweep` for the preset's tables and their precedence (base < point < grid
value < ``--run-config``); a point's id is a hash of its kind and overrides.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config.base import ConfigError
from common.config.parse import load_defaults, parse_config
from common.io import clean_json
from simulations.scale import scale_overrides, split_scale_table

PRESETS = Path(__file__).resolve().parent / "presets"
TABLES = ("description", "base", "grid", "point", "central", "scale")


@dataclass
class Point:
    """One run of the sweep: its id, settings (labels) and run-config overrides."""

    id: str
    kind: str  # "point" (federated), "central" or "scale"
    overrides: dict[str, Any]
    settings: list[str] = field(default_factory=list)


def point_id(kind: str, overrides: dict[str, Any]) -> str:
    """Short, stable hash of a point's kind and overrides."""
    text = json.dumps(clean_json({"kind": kind, **overrides}), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_spec(name: str) -> dict[str, Any]:
    """Read `presets/sweep-<name>.toml`; unknown top-level keys are errors."""
    path = PRESETS / f"sweep-{name}.toml"
    if not path.exists():
        known = sorted(p.stem.removeprefix("sweep-") for p in PRESETS.glob("sweep-*.toml"))
        raise ConfigError(f"unknown sweep preset {name!r}; known: {known}")
    with open(path, "rb") as fh:
        spec = tomllib.load(fh)
    if bad := sorted(set(spec) - set(TABLES)):
        raise ConfigError(f"{path.name}: unknown table(s) {bad}; allowed: {list(TABLES)}")
    for key, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path.name}: grid key {key!r} needs a non-empty list")
    return spec


def _normalise(over: dict[str, Any]) -> dict[str, Any]:
    """Epsilon inf means no DP: map any DP mode to ``none`` (the config rejects local + inf)."""
    defaults = load_defaults()
    eps = float(over.get("dp.epsilon", defaults["dp.epsilon"]))
    if math.isinf(eps) and over.get("dp.mode", defaults["dp.mode"]) != "none":
        over = {**over, "dp.mode": "none"}
    return over


def plan(spec: dict[str, Any], extra: dict[str, Any]) -> list[Point]:
    """Expand base x points x grid into validated points (identical overrides merged)."""
    grid = spec.get("grid", {})
    named = spec.get("point") or [{"name": ""}]
    points: dict[str, Point] = {}
    for entry in named:
        entry = dict(entry)
        name = str(entry.pop("name", ""))
        local_grid = {**grid, **entry.pop("grid", {})}
        keys = list(local_grid)
        for combo in itertools.product(*(local_grid[k] for k in keys)):
            over = _normalise(
                {**spec.get("base", {}), **entry, **dict(zip(keys, combo, strict=True)), **extra}
            )
            parse_config(over)  # validate every point before anything runs
            setting = name or _setting_name(over)
            pid = point_id("point", over)
            pt = points.setdefault(pid, Point(pid, "point", over))
            if setting not in pt.settings:
                pt.settings.append(setting)
    return list(points.values())


def _setting_name(over: dict[str, Any]) -> str:
    cfg = parse_config(over)
    where = "users" if cfg.data.partitioning == "user" else f"{cfg.data.num_sites}-sites"
    return f"{cfg.data.partitioning}-{where}"


def plan_central(spec: dict[str, Any], points: list[Point], extra: dict[str, Any]) -> list[Point]:
    """Central rows: once per data set of the points x epsilon (inf + the points' DP epsilons)."""
    table = dict(spec.get("central", {}))
    if table.pop("enabled", True) is False:
        return []
    eps = table.pop("epsilons", None)
    if eps is None:
        cfgs = [parse_config(p.overrides).dp for p in points]
        eps = {math.inf} | {dp.epsilon for dp in cfgs if dp.mode != "none"}
    data_keys = ("data.dataset", "data.dir", "data.synthetic-users", "data.synthetic-items")
    datasets = {
        json.dumps({k: p.overrides[k] for k in data_keys if k in p.overrides}, sort_keys=True)
        for p in points
    }
    out = []
    for data in sorted(datasets):
        for e in sorted(float(x) for x in eps):
            over = {**spec.get("base", {}), **json.loads(data), **table, **extra}
            over.update({"dp.mode": "none" if math.isinf(e) else "local", "dp.epsilon": e})
            parse_config(over)
            out.append(Point(point_id("central", over), "central", over, ["central"]))
    return out


def plan_scale(spec: dict[str, Any], n_clients: int, extra: dict[str, Any]) -> Point:
    """The ``--scale N`` point: N synthetic single-user clients, ``clients-per-round`` sampled."""
    table, per_round = split_scale_table(spec.get("scale", {}))
    over = scale_overrides(table, n_clients, extra, per_round=per_round)
    return Point(point_id("scale", over), "scale", over, ["scale"])
