"""Every run preset shipped in `simulations/presets/` is a valid configuration."""

from __future__ import annotations

import pytest

from common.config.base import ConfigError
from common.config.parse import parse_config
from simulations.federated import PRESETS, load_preset

RUN_PRESETS = sorted(p.stem for p in PRESETS.glob("*.toml") if not p.stem.startswith("sweep-"))


def test_the_run_presets_are_found() -> None:
    assert {"main", "quick", "tiny"} <= set(RUN_PRESETS)


@pytest.mark.parametrize("name", RUN_PRESETS)
def test_each_run_preset_parses(name: str) -> None:
    over = load_preset(name)
    assert over, f"preset {name} is empty"
    parse_config(over)  # raises ConfigError naming the key on a bad value


def test_the_main_preset_is_the_documented_job() -> None:
    cfg = parse_config(load_preset("main"))
    assert cfg.data.dataset == "ml-latest-small" and cfg.data.num_sites == 4
    assert cfg.dp.mode == "local" and cfg.dp.epsilon == 8.0 and cfg.fed.rounds == 3


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known presets.*main"):
        load_preset("no-such-preset")
