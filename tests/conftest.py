"""Shared fixtures: a tiny random BERT, a run config on synthetic data, its catalogue and model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from common.config.parse import parse_config
from common.config.run import RunConfig
from common.model.backbone import make_tiny_backbone
from common.model.catalogue import Catalogue, build_catalogue
from common.model.towers import RecModel
from common.model.train import LocalData
from common.task import Corpus, load_corpus

TINY_HIDDEN = 32
TINY_LAYERS = 2
HISTORY_LEN = 8


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT with the real tokenizer (written once per session)."""
    return make_tiny_backbone(
        tmp_path_factory.mktemp("tiny"), hidden=TINY_HIDDEN, layers=TINY_LAYERS
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def make_cfg(tiny_backbone: Path, cache_dir: Path) -> Callable[..., RunConfig]:
    """``make_cfg(**{"dp.epsilon": 2.0})``: the small test config with overrides."""
    base: dict[str, Any] = {
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(cache_dir),
        "data.dataset": "synthetic",
        "data.synthetic-users": 40,
        "data.synthetic-items": 60,
        "data.history-len": HISTORY_LEN,
        "model.lora.rank": 2,
        "train.batch-users": 8,
        "train.targets-per-user": 2,
        "train.negatives": 5,
        "fed.rounds": 2,
    }

    def make(**overrides: Any) -> RunConfig:
        return parse_config({**base, **overrides})

    return make


@pytest.fixture(scope="session")
def cfg(make_cfg: Callable[..., RunConfig]) -> RunConfig:
    return make_cfg()


@pytest.fixture(scope="session")
def corpus(cfg: RunConfig) -> Corpus:
    return load_corpus(cfg.data)


@pytest.fixture(scope="session")
def local(corpus: Corpus) -> LocalData:
    """All synthetic users as one party."""
    return corpus.everyone()


@pytest.fixture(scope="session")
def make_catalogue(cfg: RunConfig, corpus: Corpus) -> Callable[..., Catalogue]:
    def make(*, cache_lower: bool = True, max_tokens: int | None = None) -> Catalogue:
        return build_catalogue(
            list(corpus.data.item_texts),
            backbone=cfg.model.backbone,
            max_tokens=max_tokens or cfg.model.max_tokens,
            n_lower=TINY_LAYERS - cfg.model.lora.layers,
            cache_lower=cache_lower,
            cache_dir=cfg.model.cache_dir,
        )

    return make


@pytest.fixture(scope="session")
def catalogue(make_catalogue: Callable[..., Catalogue]) -> Catalogue:
    """The synthetic catalogue with cached lower-layer states."""
    return make_catalogue(cache_lower=True)


def perturb(model: RecModel, seed: int = 0, scale: float = 0.3) -> RecModel:
    """Give every trainable tensor non-zero random values (in place) and switch to eval mode.

    PEFT starts LoRA B at zero (so A's gradient is zero) and the head at zeros; a gradient test
    on that point would compare mostly zeros. The prior buffer gets random values too.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
        model.prior.copy_(torch.randn(model.prior.shape, generator=gen))
    return model.eval()


@pytest.fixture
def make_model(cfg: RunConfig, corpus: Corpus) -> Callable[..., RecModel]:
    """``make_model(cfg=None, perturbed=True)``: a fresh RecModel on the synthetic catalogue."""

    def make(run: RunConfig | None = None, *, perturbed: bool = True, seed: int = 0) -> RecModel:
        run = run or cfg
        model = RecModel(run.model, n_items=corpus.data.n_items, history_len=run.data.history_len)
        return perturb(model, seed) if perturbed else model.eval()

    return make
