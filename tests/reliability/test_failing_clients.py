"""Failing clients: nodes that raise mid-training or never answer, in the real round loop.

`server.federation.run_federation` runs over `InProcessGrid` (real ClientApps, Flower's error
replies, a per-node timeout); see `inproc.py` for how it maps to Flower's Grid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.hostile import FAULT_ENV, HANG_ENV

from .conftest import clear_site_caches
from .inproc import FIRST_NODE, federate

LOGGER = "fedrec.server"


def _dropped(results: dict[str, Any], rnd: int) -> dict[int, str]:
    row = results["history"][rnd - 1]
    return {c["node"]: c["dropped"] for c in row["clients"] if "dropped" in c}


@pytest.mark.usefixtures("server_identity")
def test_half_the_clients_crash_mid_training_the_rest_finish_the_run(
    run_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # FEDREC_FAULT="raise:0.5": partitions 0 and 1 of 4 train, then raise, in every round.
    monkeypatch.setenv(FAULT_ENV, "raise:0.5")
    caplog.set_level(logging.INFO, LOGGER)
    results, grid = federate(
        {**run_config, "fed.min-clients": 2, "dp.accountant": "rdp"}, ["raise:0.5"] * 4
    )

    assert results["status"] == "completed"
    assert [h["round"] for h in results["history"]] == [1, 2]
    crashed = {FIRST_NODE, FIRST_NODE + 1}
    for rnd in (1, 2):
        assert results["history"][rnd - 1]["n_aggregated"] == 2
        dropped = _dropped(results, rnd)
        assert set(dropped) == crashed
        assert all("InjectedFault" in d and "crashed mid-training" in d for d in dropped.values())
        for node in crashed:
            assert f"round {rnd}: dropping reply from node {node}: error:" in caplog.text
        assert f"round {rnd}: aggregating 2 of 4 replies" in caplog.text
    # The crash came after the spend: the ledger keeps the budget the crashed round used.
    ledgers = Path(run_config["fed.out-dir"]) / "ledgers"
    for pid in range(4):
        rounds = [r["round"] for r in json.loads((ledgers / f"client-{pid}.json").read_text())["rounds"]]
        assert sorted(set(rounds)) == [1, 2], pid
    assert grid.timeouts == []


@pytest.mark.usefixtures("server_identity")
def test_too_few_usable_replies_stop_the_run_cleanly(
    run_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    out = Path(run_config["fed.out-dir"])
    results, _ = federate(
        {**run_config, "fed.min-clients": 2, "dp.mode": "none"}, ["raise", "raise", ""]
    )

    assert results["status"] == "stopped at round 1: 1 usable replies of 3"
    assert results["history"] == []
    assert "stopped at round 1: 1 usable replies of 3 (fed.min-clients = 2)" in caplog.text
    assert set(_nodes_named(caplog.text)) == {FIRST_NODE, FIRST_NODE + 1}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == results["status"]
    assert not (out / "checkpoint").exists()  # nothing half-finished to resume from


def _nodes_named(text: str) -> list[int]:
    marker = "dropping reply from node "
    return [int(line.split(marker)[1].split(":")[0]) for line in text.splitlines() if marker in line]


# ---------------------------------------------------------------- a node that never answers

TIMEOUT_S = 8.0  # fed.round-timeout; honest tiny clients answer in well under a second


@pytest.fixture(scope="module")
def hung_run(
    tiny_backbone: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], str, list[int]]]:
    """One round with 3 nodes of which the last hangs; (results, server log, timed-out nodes)."""
    from common.config import load_defaults
    from flwr.supercore.task_identity import TaskIdentity

    mp = pytest.MonkeyPatch()
    mp.setenv(HANG_ENV, str(TIMEOUT_S + 2))
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        mp.setattr(TaskIdentity, attr, value)
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    run_config = {
        **load_defaults(),
        "data.dataset": "synthetic",
        "data.synthetic-users": 60,
        "data.synthetic-items": 80,
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(cache_dir),
        "fed.out-dir": str(tmp_path_factory.mktemp("hung") / "out"),
        "fed.rounds": 1,
        "fed.min-clients": 2,
        "fed.round-timeout": TIMEOUT_S,
        "dp.mode": "none",
    }
    clear_site_caches()
    try:
        results, grid = federate(run_config, ["", "", "hang"])
        yield results, "\n".join(records), grid.timeouts
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        mp.undo()
        clear_site_caches()


def test_a_hung_node_times_out_and_the_round_completes_with_the_others(
    hung_run: tuple[dict[str, Any], str, list[int]],
) -> None:
    results, log, timeouts = hung_run
    hung = FIRST_NODE + 2
    assert timeouts == [hung, hung]  # the train and the evaluate message both timed out
    assert results["status"] == "completed"
    row = results["history"][0]
    assert row["n_aggregated"] == 2
    assert row["eval"]["n_clients"] == 2
    assert "round 1: aggregating 2 of 3 replies" in log


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a node that gives no reply within fed.round-timeout is not named anywhere: "
    "server.federation only iterates the replies, so history['clients'] omits it and the log "
    "only says 'aggregating 2 of 3 replies' (the issue asks the round to 'say so').",
)
def test_a_hung_node_is_named_in_the_history_and_the_log(
    hung_run: tuple[dict[str, Any], str, list[int]],
) -> None:
    results, log, _ = hung_run
    hung = FIRST_NODE + 2
    assert hung in {c["node"] for c in results["history"][0]["clients"]}
    assert str(hung) in log
