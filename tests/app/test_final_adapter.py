"""The final global adapter reaches every site after the last round (in-process federation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from reliability.inproc import FIRST_NODE, InProcessGrid, initial_state

from client.client_app import app as honest_app
from client.hostile import app as hostile_app
from client.recommender import Recommender
from common import records as R
from common.config.parse import parse_config
from common.model.adapter import open_adapter
from common.model.towers import PRIOR_KEY, trainable_state
from server.federation import run_federation

from .messages import incoming


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower's ServerApp runtime sets before strategies build Messages."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _federate(run_config: dict[str, Any], apps: list[Any], extra: list[dict[str, Any]] | None = None
              ) -> tuple[dict[str, Any], InProcessGrid]:  # fmt: skip
    cfg = parse_config(run_config)
    grid = InProcessGrid(run_config, apps, extra)
    results = run_federation(grid, cfg, initial_state(cfg), Path(cfg.fed.out_dir))  # type: ignore[arg-type]
    return results, grid


def _final_state(out: Path, rounds: int) -> dict[str, np.ndarray]:
    with np.load(out / "checkpoint" / f"state-{rounds:04d}.npz") as z:
        return {k: z[k] for k in z.files}


def test_every_site_keeps_the_final_adapter_and_can_recommend_from_it(
    run_config: dict[str, Any], tiny_backbone: Path, tmp_path: Path
) -> None:
    cfg = {**run_config, "dp.mode": "none", "fed.rounds": 1}
    own = tmp_path / "site-b-folder" / "adapter"
    results, grid = _federate(cfg, [honest_app, honest_app], [{}, {"adapter-dir": str(own)}])
    out = Path(cfg["fed.out-dir"])
    assert results["status"] == "completed"
    assert [n.received[-1] for n in grid.nodes.values()] == [R.FINAL_MESSAGE_TYPE] * 2
    rows = sorted(results["final_adapter"], key=lambda r: r["node"])
    assert rows == [{"node": FIRST_NODE, "label": "client-0", "saved": True},
                    {"node": FIRST_NODE + 1, "label": "client-1", "saved": True}]  # fmt: skip
    assert json.loads((out / "results.json").read_text())["final_adapter"] == rows

    final = _final_state(out, 1)
    folders = [out / "ledgers" / "client-0.final-adapter", own]  # beside the ledger / own dir
    for folder in folders:
        model, info = open_adapter(folder, backbone=str(tiny_backbone))
        got = trainable_state(model)
        assert set(got) == set(final)
        for name, value in final.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        assert info.extra["round"] == 1 and info.extra["run_key"]
        assert info.catalogue  # the site's catalogue digest: `recommend` checks the data
    parsed = parse_config(cfg)
    rec = Recommender.load(folders[1], parsed.data, backbone=str(tiny_backbone))
    user = rec.user_ids()[0]
    assert len(rec.for_user(user, k=5)) == 5


def test_a_node_that_cannot_keep_it_is_reported_and_the_run_still_completes(
    run_config: dict[str, Any],
) -> None:
    # The hostile app (honest otherwise) registers no `query.final_adapter` handler.
    cfg = {**run_config, "dp.mode": "none", "fed.rounds": 1}
    results, _ = _federate(cfg, [honest_app, hostile_app])
    assert results["status"] == "completed"
    rows = {r["node"]: r for r in results["final_adapter"]}
    assert rows[FIRST_NODE]["saved"] is True
    assert rows[FIRST_NODE + 1]["saved"] is False
    assert "final_adapter" in rows[FIRST_NODE + 1]["error"]


def test_no_delivery_when_switched_off_or_the_run_stopped(run_config: dict[str, Any]) -> None:
    cfg = {**run_config, "dp.mode": "none", "fed.rounds": 1, "fed.deliver-final": False}
    results, grid = _federate(cfg, [honest_app, honest_app])
    assert results["final_adapter"] is None
    assert all(R.FINAL_MESSAGE_TYPE not in n.received for n in grid.nodes.values())
    assert not list((Path(cfg["fed.out-dir"]) / "ledgers").glob("*.final-adapter"))


def test_the_handler_refuses_a_state_of_another_shape(
    run_config: dict[str, Any], fresh_state: Any
) -> None:
    state = fresh_state()
    state[PRIOR_KEY] = np.zeros(3, dtype=np.float32)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=run_config)  # fmt: skip
    msg = incoming(RecordDict({R.ARRAYS: R.to_record(state)}), R.FINAL_MESSAGE_TYPE)
    try:
        honest_app(msg, context)
    except Exception as exc:  # noqa: BLE001 - Flower turns it into an error reply
        assert "in the site's final_adapter" in str(exc)
    else:
        raise AssertionError("a mis-shaped final state was kept")
    assert not (Path(run_config["fed.out-dir"]) / "ledgers" / "client-0.final-adapter").exists()
