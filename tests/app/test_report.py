"""server.report: user-weighted aggregation of evaluation replies, results.json and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Error, Message, RecordDict

from common import records as R
from common.config.run import RunConfig
from server.report import aggregate_eval, finish_run

from .messages import reply_from


def _eval_reply(node: int, n: int, hr: float, **more: Any) -> Message:
    return reply_from(node, {R.NUM_EXAMPLES: n, "hr@10": hr, "ndcg@10": hr / 2, **more})


def test_scalar_metrics_are_weighted_by_users() -> None:
    out = aggregate_eval([_eval_reply(1, 1, 1.0), _eval_reply(2, 3, 0.0)])
    assert out["hr@10"] == pytest.approx(0.25)
    assert out["ndcg@10"] == pytest.approx(0.125)
    assert out["n_users"] == 4 and out["n_clients"] == 2
    assert out["per_client"] == {"hr@10": [1.0, 0.0], "ndcg@10": [0.5, 0.0], "n_users": [1, 3]}
    assert "per_user" not in out


def test_per_user_lists_are_concatenated_in_reply_order() -> None:
    a = _eval_reply(1, 1, 1.0, **{"per-user-hr@10": [1.0], "per-user-user": [5.0]})
    b = _eval_reply(2, 3, 0.0, **{"per-user-hr@10": [0.0, 0.0, 0.0], "per-user-user": [1, 2, 3]})
    out = aggregate_eval([a, b])
    assert out["per_user"] == {"hr@10": [1.0, 0.0, 0.0, 0.0], "user": [5.0, 1.0, 2.0, 3.0]}
    assert out["hr@10"] == pytest.approx(np.mean(out["per_user"]["hr@10"]))


def test_error_and_empty_replies_are_ignored() -> None:
    instruction = _eval_reply(9, 1, 1.0)
    failed = Message(Error(code=0, reason="boom"), reply_to=instruction)
    empty = Message(RecordDict(), reply_to=instruction)
    out = aggregate_eval([failed, empty, _eval_reply(1, 2, 0.5)])
    assert out["n_clients"] == 1 and out["hr@10"] == pytest.approx(0.5)


def test_no_replies_give_counts_only() -> None:
    assert aggregate_eval([]) == {"n_users": 0, "n_clients": 0}


def test_a_metric_only_some_clients_report_is_averaged_over_those_clients() -> None:
    out = aggregate_eval([_eval_reply(1, 1, 1.0, **{"coverage@10": 1.0}), _eval_reply(2, 3, 0.0)])
    assert out["coverage@10"] == pytest.approx(1.0)


def test_exposure_counts_are_summed_into_federation_wide_item_metrics() -> None:
    # Site 1 shows items {0, 1}, site 2 shows {0, 2}: the union covers 3 of 4 items, while the
    # user-weighted mean of the sites' own coverages (0.5 each) would say 0.5.
    a = _eval_reply(1, 1, 1.0, **{"coverage@10": 0.5, R.EXPOSURE_COUNTS: [2.0, 1.0, 0.0, 0.0]})
    b = _eval_reply(2, 1, 0.0, **{"coverage@10": 0.5, R.EXPOSURE_COUNTS: [1.0, 0.0, 3.0, 0.0]})
    out = aggregate_eval([a, b])
    assert out["coverage@10"] == pytest.approx(0.75)
    assert out["exposure_gini@10"] == pytest.approx(2 * 23 / 28 - 5 / 4)  # gini([3, 1, 3, 0])
    assert out["exposure_profile@10"] == [3, 3, 1]
    assert "per_user" not in out  # the counts are not per-user lists
    bad = _eval_reply(3, 1, 0.0, **{R.EXPOSURE_COUNTS: [1.0]})
    with pytest.raises(ValueError, match="different lengths"):
        aggregate_eval([a, bad])


def _history() -> list[dict[str, Any]]:
    def clients(eps: float) -> list[dict[str, Any]]:
        return [
            {"node": 1, "epsilon": eps, "delta": 0.01, "bytes_up": 100, "train-s": 2.0},
            {"node": 2, "epsilon": eps / 2, "delta": 0.01, "bytes_up": 100, "train-s": 2.0},
        ]

    return [
        {"round": r, "wall_s": 1.0, "clients": clients(r * 2.0), "eval": {"hr@10": 0.1 * r}}
        for r in (1, 2)
    ]


def test_finish_run_writes_results_and_plot(tmp_path: Path, cfg: RunConfig) -> None:
    state = {"w": np.zeros(10, np.float32)}
    central = {"sigma": 0.0, "q": 1.0, "delta": 0.5, "rounds": 2}
    res = finish_run(
        cfg,
        tmp_path,
        _history(),
        state,
        status="completed",
        central=central,
        wall_s=3.0,
        baselines_fn=lambda: {"most-popular": {"hr@10": 0.05, "ndcg@10": 0.02}},
    )
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["status"] == res["status"] == "completed"
    assert on_disk["metrics"] == {"hr@10": pytest.approx(0.2)}
    # Local DP: the reported epsilon is the largest cumulative one any client reached.
    assert on_disk["privacy"]["mode"] == "local"
    assert on_disk["privacy"]["epsilon"] == pytest.approx(4.0)
    assert on_disk["privacy"]["per_client_epsilon"] == {"1": 4.0, "2": 2.0}
    assert on_disk["communication"]["bytes_down_per_client"] == 40
    assert on_disk["config"] == cfg.flat()
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_finish_run_gives_dp_baselines_the_runs_privacy(tmp_path: Path, cfg: RunConfig) -> None:
    seen: list[dict[str, Any]] = []

    def dp_fn(privacy: dict[str, Any]) -> dict[str, Any]:
        seen.append(privacy)
        return {"dp-ease": {"hr@10": 0.03, "ndcg@10": 0.01}}

    res = finish_run(
        cfg,
        tmp_path,
        _history(),
        {"w": np.zeros(10, np.float32)},
        status="completed",
        central={"sigma": 0.0, "q": 1.0, "delta": 0.5, "rounds": 2},
        wall_s=1.0,
        baselines_fn=lambda: {"most-popular": {"hr@10": 0.05, "ndcg@10": 0.02}},
        dp_baselines_fn=dp_fn,
    )
    assert set(res["baselines"]) == {"most-popular", "dp-ease"}
    assert seen == [res["privacy"]] and seen[0]["epsilon"] == pytest.approx(4.0)


def test_finish_run_without_dp_reports_infinite_epsilon(tmp_path: Path, cfg: RunConfig) -> None:
    import dataclasses

    c = dataclasses.replace(cfg, dp=dataclasses.replace(cfg.dp, mode="none"))
    res = finish_run(
        c,
        tmp_path,
        [],
        {},
        status="stopped at round 1",
        central={"sigma": 0.0, "q": 1.0, "delta": 0.5},
        wall_s=0.0,
        baselines_fn=None,
    )
    assert math.isinf(res["privacy"]["epsilon"])
    assert json.loads((tmp_path / "results.json").read_text())["privacy"]["epsilon"] == "inf"
