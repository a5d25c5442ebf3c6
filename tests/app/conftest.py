"""Fixtures for the Flower-app tests: a tiny BERT, a synthetic run config, fresh sites."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import client.site
from common.config.parse import load_defaults, parse_config
from common.config.run import RunConfig
from common.model.backbone import make_tiny_backbone
from common.model.towers import RecModel, trainable_state


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the real tokenizer."""
    return make_tiny_backbone(tmp_path_factory.mktemp("tinybert"))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One catalogue/item cache for the whole session (keyed by content, so safe to share)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def run_config(tiny_backbone: Path, model_cache: Path, tmp_path: Path) -> dict[str, Any]:
    """The pyproject defaults with synthetic data, the tiny backbone and a per-test out dir."""
    return {
        **load_defaults(),
        "data.dataset": "synthetic",
        "data.synthetic-users": 60,
        "data.synthetic-items": 80,
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(model_cache),
        "fed.out-dir": str(tmp_path / "out"),
        "fed.rounds": 2,
    }


@pytest.fixture
def cfg(run_config: dict[str, Any]) -> RunConfig:
    """`run_config` parsed."""
    return parse_config(run_config)


def _clear_site_caches() -> None:
    for obj in vars(client.site).values():
        if callable(getattr(obj, "cache_clear", None)):
            obj.cache_clear()


@pytest.fixture(autouse=True)
def fresh_sites() -> Iterator[None]:
    """Every test starts (and ends) without cached sites: their models and ledgers differ."""
    _clear_site_caches()
    yield
    _clear_site_caches()


@pytest.fixture
def fresh_state(cfg: RunConfig) -> Callable[[], dict[str, np.ndarray]]:
    """Factory for the trainable state of a freshly built model (the server's initial state)."""
    from common.task import load_corpus

    def build() -> dict[str, np.ndarray]:
        n_items = load_corpus(cfg.data).data.n_items
        model = RecModel(cfg.model, n_items=n_items, history_len=cfg.data.history_len)
        return trainable_state(model)

    return build
