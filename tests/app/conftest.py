"""Fixtures for the Flower-app tests: a tiny BERT, a synthetic run config, hand-built Messages."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

import client.site
from common import records as R
from common.backbone import make_tiny_backbone
from common.config import RunConfig, load_defaults, parse_config
from common.model import RecModel, trainable_state

SERVER_NODE = 0  # Flower's SuperLink node id: the sender of every instruction message
CLIENT_NODE = 1


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


@pytest.fixture(autouse=True)
def fresh_sites() -> Iterator[None]:
    """Every test starts (and ends) without cached sites: their models and ledgers differ."""
    client.site._site.cache_clear()
    yield
    client.site._site.cache_clear()


def make_context(run_config: dict[str, Any], partition_id: int = 0, n: int = 2) -> Context:
    """A ClientApp Context as a simulated SuperNode builds it."""
    return Context(
        run_id=1,
        node_id=CLIENT_NODE,
        node_config={"partition-id": partition_id, "num-partitions": n},
        state=RecordDict(),
        run_config=run_config,
    )


def incoming(content: RecordDict, message_type: str, *, message_id: str = "msg-1") -> Message:
    """A Message as it reaches a ClientApp: sent by the SuperLink, with a message id."""
    metadata = Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=SERVER_NODE,
        dst_node_id=CLIENT_NODE,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content, metadata=metadata)


def train_msg(
    state: dict[str, np.ndarray],
    server_round: int = 1,
    *,
    collect_prior: bool = True,
    proximal_mu: float = 0.0,
) -> Message:
    """The server's train instruction for `server_round`."""
    config = ConfigRecord(
        {R.ROUND: server_round, R.COLLECT_PRIOR: collect_prior, R.PROXIMAL_MU: proximal_mu}
    )
    return incoming(
        RecordDict({R.ARRAYS: R.to_record(state), R.CONFIG: config}),
        MessageType.TRAIN,
        message_id=f"train-{server_round}",
    )


def eval_msg(state: dict[str, np.ndarray], *, per_user: bool = False) -> Message:
    """The server's evaluate instruction."""
    config = ConfigRecord({R.EVAL_SPLIT: "test", R.PER_USER: per_user})
    return incoming(
        RecordDict({R.ARRAYS: R.to_record(state), R.CONFIG: config}),
        MessageType.EVALUATE,
        message_id="evaluate",
    )


def reply_from(
    node: int, metrics: dict[str, Any], state: dict[str, np.ndarray] | None = None
) -> Message:
    """A client's reply to a train/evaluate instruction, as the server receives it."""
    content = RecordDict({R.METRICS: MetricRecord(metrics)})
    if state is not None:
        content[R.ARRAYS] = R.to_record(state)
    instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(content, reply_to=instruction)


@pytest.fixture
def fresh_state(cfg: RunConfig) -> Callable[[], dict[str, np.ndarray]]:
    """Factory for the trainable state of a freshly built model (the server's initial state)."""
    from common.task import load_corpus

    def build() -> dict[str, np.ndarray]:
        n_items = load_corpus(cfg.data).data.n_items
        model = RecModel(cfg.model, n_items=n_items, history_len=cfg.data.history_len)
        return trainable_state(model)

    return build
