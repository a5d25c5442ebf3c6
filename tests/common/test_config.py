"""Run configuration: pyproject defaults, table-driven rejections naming the key, overrides."""

from __future__ import annotations

import math
from typing import Any

import pytest

from common.config.base import ConfigError
from common.config.parse import load_defaults, parse_config, parse_overrides
from common.config.run import RunConfig


def test_empty_run_config_gives_the_pyproject_defaults() -> None:
    defaults = load_defaults()
    cfg = parse_config({})
    flat = cfg.flat()
    assert set(flat) == set(defaults)
    for key, value in defaults.items():
        assert flat[key] == value and type(flat[key]) is type(value), key
    # a few spot checks against the typed sections
    assert cfg.model.lora.target_modules == ["query", "value"]
    assert cfg.dp.local and cfg.dp.accountant == "prv" and cfg.dp.delta == 0.0
    assert cfg.train.batch_users == defaults["train.batch-users"]


def test_flat_round_trips(make_cfg: Any) -> None:
    cfg: RunConfig = make_cfg(**{"dp.epsilon": math.inf, "dp.mode": "none", "model.lora.ffa": True})
    assert parse_config(cfg.flat()) == cfg


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # unknown or misspelt keys
        ({"model.lora.rnk": 4}, "model.lora.rnk"),
        ({"train_lr": 0.1}, "train_lr"),
        # wrong types
        ({"model.lora.rank": "four"}, "model.lora.rank"),
        ({"model.lora.rank": 2.5}, "model.lora.rank"),
        ({"model.lora.rank": True}, "model.lora.rank"),
        ({"model.lora.ffa": 1}, "model.lora.ffa"),
        ({"model.lora.ffa": "yes"}, "model.lora.ffa"),
        ({"dp.epsilon": "eight"}, "dp.epsilon"),
        ({"dp.epsilon": False}, "dp.epsilon"),
        ({"model.backbone": 3}, "model.backbone"),
        # out of range
        ({"model.lora.rank": 0}, "model.lora.rank"),
        ({"model.lora.alpha": -1.0}, "model.lora.alpha"),
        ({"model.lora.layers": 0}, "model.lora.layers"),
        ({"model.lora.targets": " , "}, "model.lora.targets"),
        ({"model.max-tokens": 3}, "model.max-tokens"),
        ({"model.max-tokens": 513}, "model.max-tokens"),
        ({"model.temperature": 0.0}, "model.temperature"),
        ({"model.proj-dim": -1}, "model.proj-dim"),
        ({"data.cold-start-share": 1.0}, "data.cold-start-share"),
        ({"data.history-len": 0}, "data.history-len"),
        ({"data.partitioning": "random"}, "data.partitioning"),
        ({"data.num-sites": 0}, "data.num-sites"),
        ({"data.dirichlet-alpha": 0.0}, "data.dirichlet-alpha"),
        ({"train.lr": 0.0}, "train.lr"),
        ({"train.lr": math.nan}, "train.lr"),
        ({"train.epochs": -1.0}, "train.epochs"),
        ({"train.batch-users": 0}, "train.batch-users"),
        ({"train.negatives": 0}, "train.negatives"),
        ({"train.targets-per-user": 0}, "train.targets-per-user"),
        ({"train.eval-users": -1}, "train.eval-users"),
        ({"dp.mode": "global"}, "dp.mode"),
        ({"dp.epsilon": 0.0}, "dp.epsilon"),
        ({"dp.epsilon": math.nan}, "dp.epsilon"),
        ({"dp.delta": 1.0}, "dp.delta"),
        ({"dp.delta": -1e-5}, "dp.delta"),
        ({"dp.noise-multiplier": -0.1}, "dp.noise-multiplier"),
        ({"dp.clip": 0.0}, "dp.clip"),
        ({"dp.accountant": "gdp"}, "dp.accountant"),
        ({"dp.prior-share": 1.0}, "dp.prior-share"),
        ({"dp.epsilon": math.inf}, "dp.epsilon"),  # local DP with neither budget nor noise
        ({"fed.rounds": 0}, "fed.rounds"),
        ({"fed.fraction-train": 0.0}, "fed.fraction-train"),
        ({"fed.fraction-evaluate": 1.5}, "fed.fraction-evaluate"),
        ({"fed.min-clients": 0}, "fed.min-clients"),
        ({"fed.central-clip": 0.0}, "fed.central-clip"),
        ({"fed.central-noise": -1.0}, "fed.central-noise"),
        ({"fed.update-norm-bound": 0.0}, "fed.update-norm-bound"),
        ({"fed.trim-beta": 0.5}, "fed.trim-beta"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(overrides)


MISSING_CHECK = (
    "BUG: no range check for this key; the bad value is accepted and fails (or is "
    "silently misused) later"
)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        pytest.param(
            {"train.epochs": math.inf},
            "train.epochs",
        ),
        pytest.param(
            {"train.lr": math.inf},
            "train.lr",
        ),
        pytest.param(
            {"fed.round-timeout": -1.0},
            "fed.round-timeout",
        ),
        pytest.param(
            {"fed.proximal-mu": -0.5},
            "fed.proximal-mu",
        ),
        pytest.param(
            {"data.min-interactions": -3},
            "data.min-interactions",
        ),
        pytest.param(
            {"data.synthetic-users": 0},
            "data.synthetic-users",
        ),
    ],
)
def test_unchecked_ranges(overrides: dict[str, Any], key: str) -> None:
    if key not in load_defaults():
        pytest.skip(f"{key} is no longer a config key")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(overrides)


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ({"model.lora.rank": 8.0}, lambda c: c.model.lora.rank == 8),  # whole float -> int
        ({"dp.epsilon": 2}, lambda c: c.dp.epsilon == 2.0 and isinstance(c.dp.epsilon, float)),
        ({"dp.epsilon": "inf", "dp.noise-multiplier": 1.0}, lambda c: math.isinf(c.dp.epsilon)),
        ({"model.lora.ffa": "true"}, lambda c: c.model.lora.ffa is True),
        (
            {"model.lora.targets": "query, key ,value"},
            lambda c: c.model.lora.target_modules == ["query", "key", "value"],
        ),
        ({"dp.mode": "none", "dp.epsilon": math.inf}, lambda c: not c.dp.local),
    ],
)
def test_accepted_coercions(overrides: dict[str, Any], check: Any) -> None:
    assert check(parse_config(overrides))


def test_parse_overrides() -> None:
    got = parse_overrides("a=1 b=x c=true d=inf e=0.5 f='q,v' g=-inf")
    assert got == {"a": 1, "b": "x", "c": True, "d": math.inf, "e": 0.5, "f": "q,v", "g": -math.inf}
    assert type(got["a"]) is int and type(got["c"]) is bool
    assert parse_overrides(["model.lora.rank=8", "dp.mode=none"]) == {
        "model.lora.rank": 8,
        "dp.mode": "none",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides("a=1 oops")


def test_overrides_feed_parse_config() -> None:
    cfg = parse_config(
        parse_overrides("dp.epsilon=inf dp.mode=none model.lora.ffa=true train.lr=0.01")
    )
    assert math.isinf(cfg.dp.epsilon) and cfg.model.lora.ffa and cfg.train.lr == 0.01
