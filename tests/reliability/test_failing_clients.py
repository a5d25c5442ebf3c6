"""Failing clients: nodes that raise mid-training or never answer, in the real round loop.

`server.federation.run_federation` runs over `InProcessGrid` (real ClientApps, Flower's error
replies, a per-node timeout); see `inproc.py` for how it maps to Flower's Grid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.hostile import FAULT_ENV, HANG_ENV
from common.config.parse import load_defaults

from .conftest import clear_site_caches, server_log, task_identity, training_rows
from .inproc import FIRST_NODE, FROM_ENV, federate


def _dropped(row: dict[str, Any]) -> dict[int, str]:
    return {c["node"]: c["dropped"] for c in row["clients"] if "dropped" in c}


def _nodes_named(log: list[str]) -> set[int]:
    marker = "dropping reply from node "
    return {int(m.split(marker)[1].split(":")[0]) for m in log if marker in m}


@pytest.mark.usefixtures("server_identity")
def test_half_the_clients_crash_mid_training_the_rest_finish_the_run(
    run_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # FEDREC_FAULT="raise:0.5": partitions 0 and 1 of 4 train, then raise, in every round.
    monkeypatch.setenv(FAULT_ENV, "raise:0.5")
    cfg = {**run_config, "fed.min-clients": 2, "dp.accountant": "rdp"}
    with server_log() as log:
        results, grid = federate(cfg, [FROM_ENV] * 4)

    assert results["status"] == "completed"
    rows = training_rows(results)
    assert [h["round"] for h in rows] == [1, 2]
    crashed = {FIRST_NODE, FIRST_NODE + 1}
    for row in rows:
        rnd = row["round"]
        assert row["n_aggregated"] == 2
        dropped = _dropped(row)
        assert set(dropped) == crashed
        assert all("InjectedFault" in d and "crashed mid-training" in d for d in dropped.values())
        for node in crashed:
            assert any(f"round {rnd}: dropping reply from node {node}: error:" in m for m in log)
        assert any(f"round {rnd}: aggregating 2 of 4 replies" in m for m in log)
    # The crash came after the spend: each ledger keeps the budget the crashed rounds used.
    ledgers = Path(run_config["fed.out-dir"]) / "ledgers"
    for pid in range(4):
        entries = json.loads((ledgers / f"client-{pid}.json").read_text())["rounds"]
        assert {1, 2} <= {e["round"] for e in entries}, pid
    assert grid.timeouts == []


@pytest.mark.usefixtures("server_identity")
def test_too_few_usable_replies_stop_the_run_cleanly(run_config: dict[str, Any]) -> None:
    out = Path(run_config["fed.out-dir"])
    cfg = {**run_config, "fed.min-clients": 2, "dp.mode": "none"}
    with server_log() as log:
        results, _ = federate(cfg, ["raise", "raise", ""])

    # The first round the loop runs (1, or 0 when it collects the prior first) stops it.
    m = re.fullmatch(r"stopped at round (\d): 1 usable replies of 3", results["status"])
    assert m is not None, results["status"]
    assert results["history"] == []
    assert any(f"{results['status']} (fed.min-clients = 2)" in line for line in log)
    assert _nodes_named(log) == {FIRST_NODE, FIRST_NODE + 1}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == results["status"]
    assert not (out / "checkpoint").exists()  # nothing half-finished to resume from


# ---------------------------------------------------------------- a node that never answers

TIMEOUT_S = 8.0  # fed.round-timeout; honest tiny clients answer in well under a second


@pytest.fixture(scope="module")
def hung_run(
    tiny_backbone: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], list[str], list[int]]]:
    """One training round, 3 nodes, the last hangs; (results, server log, timed-out nodes)."""
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
        "model.prior": False,  # no prior round: one train and one evaluate exchange
    }
    clear_site_caches()
    with pytest.MonkeyPatch.context() as mp, task_identity(), server_log() as log:
        mp.setenv(HANG_ENV, str(TIMEOUT_S + 2))
        try:
            results, grid = federate(run_config, ["", "", "hang"])
            yield results, log, grid.timeouts
        finally:
            clear_site_caches()


def test_a_hung_node_times_out_and_the_round_completes_with_the_others(
    hung_run: tuple[dict[str, Any], list[str], list[int]],
) -> None:
    results, log, timeouts = hung_run
    hung = FIRST_NODE + 2
    assert timeouts == [hung, hung]  # the train and the evaluate message both timed out
    assert results["status"] == "completed"
    (row,) = training_rows(results)
    assert row["n_aggregated"] == 2
    assert row["eval"]["n_clients"] == 2
    assert any("round 1: aggregating 2 of 3 replies" in m for m in log)


def test_a_hung_node_is_named_in_the_history_and_the_log(
    hung_run: tuple[dict[str, Any], list[str], list[int]],
) -> None:
    results, log, _ = hung_run
    hung = FIRST_NODE + 2
    (row,) = training_rows(results)
    assert hung in {c["node"] for c in row["clients"]}
    assert any(str(hung) in m for m in log)
