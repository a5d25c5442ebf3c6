"""server.server_app.initial_from_node: a broken node picked for the query does not fail the run."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import pytest
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import records as R
from common.config.run import RunConfig
from common.model.towers import PRIOR_KEY
from server.server_app import initial_from_node

from .messages import incoming

GOOD = {PRIOR_KEY: np.ones(5, dtype=np.float32), "head.attn.bias": np.zeros(1, np.float32)}


class QueryGrid:
    """Answers each node's query as scripted: "error", "empty", "noprior", "silent" or "good"."""

    def __init__(self, script: dict[int, str]) -> None:
        self.script = script
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(self.script)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        (msg,) = list(messages)
        node = msg.metadata.dst_node_id
        self.asked.append(node)
        sent = incoming(RecordDict(), MessageType.QUERY, message_id=f"q{node}", node=node)
        kind = self.script[node]
        if kind == "silent":
            return []
        if kind == "error":
            return [Message(Error(code=0, reason=f"site {node} crashed"), reply_to=sent)]
        state = {"empty": {}, "noprior": {"x": np.zeros(2)}, "good": GOOD}[kind]
        content = RecordDict({R.ARRAYS: R.to_record(state)}) if kind != "empty" else RecordDict()
        return [Message(content, reply_to=sent)]


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    yield


@pytest.fixture
def quick(cfg: RunConfig) -> RunConfig:
    return dataclasses.replace(cfg, fed=dataclasses.replace(cfg.fed, node_wait=1))


def test_the_initial_state_comes_from_the_next_node_when_the_first_fail(
    quick: RunConfig, caplog: pytest.LogCaptureFixture
) -> None:
    grid = QueryGrid({1: "error", 2: "silent", 3: "empty", 4: "noprior", 5: "good", 6: "good"})
    fedrec_log = logging.getLogger("flwr.fedrec")  # Flower's logger does not propagate to root
    fedrec_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="flwr.fedrec"):
            state = initial_from_node(grid, quick)  # type: ignore[arg-type]
    finally:
        fedrec_log.removeHandler(caplog.handler)
    assert set(state) == set(GOOD)
    np.testing.assert_array_equal(state[PRIOR_KEY], GOOD[PRIOR_KEY])
    assert grid.asked == [1, 2, 3, 4, 5]  # one at a time, stops at the first usable state
    text = caplog.text
    for node, why in [(1, "site 1 crashed"), (2, "no reply"), (3, "no arrays"), (4, PRIOR_KEY)]:
        assert f"node {node}" in text and why in text


def test_every_node_failing_stops_the_run_naming_each(quick: RunConfig) -> None:
    grid = QueryGrid({7: "error", 8: "silent"})
    with pytest.raises(RuntimeError, match=r"node 7: site 7 crashed; node 8: no reply"):
        initial_from_node(grid, quick)  # type: ignore[arg-type]
    assert grid.asked == [7, 8]
