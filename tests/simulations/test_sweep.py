"""The study sweep and report: planning, skip-on-rerun, failures, fairness helpers, report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config.base import ConfigError
from common.config.parse import parse_config
from common.io import clean_json
from common.run_result import RunResult
from common.task import load_corpus
from simulations import fairness, federated, report, sweep, sweep_plan, sweep_rows

EXTRA = {"model.backbone": "/nonexistent/tiny"}  # never loaded by the fast tests


def fake_results(over: dict[str, Any], *, hr: float = 0.2) -> dict[str, Any]:
    """A results.json as `federated.run` writes it, for the synthetic data of `over`."""
    cfg = parse_config(over)
    n = load_corpus(cfg.data).data.n_users
    users = list(range(n))
    per_user = {"user": [float(u) for u in users], "hr@10": [float(u % 3 == 0) for u in users],
                "ndcg@10": [0.5 * (u % 3 == 0) for u in users],
                "rank": [float(0 if u % 3 == 0 else 20 + u % 50) for u in users]}  # fmt: skip
    ev = {"hr@10": hr, "ndcg@10": hr / 2, "per_client": {"hr@10": [0.1, 0.3], "ndcg@10":
          [0.05, 0.15], "n_users": [30, 30]}, "per_user": per_user}  # fmt: skip
    dp = cfg.dp.mode != "none"
    return {
        "status": "completed",
        "metrics": {
            "hr@10": hr,
            "ndcg@10": hr / 2,
            "mrr": 0.1,
            "coverage@10": 0.4,
            "long_tail_share@10": 0.2,
            "exposure_gini@10": 0.7,
        },  # fmt: skip
        "baselines": {"most-popular": {"hr@10": 0.1, "ndcg@10": 0.05}},
        "privacy": {
            "unit": "user",
            "mode": cfg.dp.mode,
            "trust_model": "sites trusted",
            "epsilon": 7.9 if dp else math.inf,
            "target_epsilon": cfg.dp.epsilon,
            "delta": 1 / 60,
            "accountant": "prv",
        },  # fmt: skip
        "timing": {"wall_s": 1.0},
        "history": [
            {"round": 1, "wall_s": 0.5, "eval": ev},
            {"round": 2, "wall_s": 0.5, "eval": ev},
        ],
    }


@pytest.fixture
def tiny_points() -> list[sweep_plan.Point]:
    return sweep_plan.plan(sweep_plan.load_spec("tiny"), dict(EXTRA))


def test_plan_expands_the_grid_and_maps_inf_to_no_dp(tiny_points: list[sweep_plan.Point]) -> None:
    assert len(tiny_points) == 2
    by_eps = {p.overrides["dp.epsilon"]: p for p in tiny_points}
    assert by_eps[math.inf].overrides["dp.mode"] == "none"
    assert by_eps[8.0].overrides["dp.mode"] == "local"
    assert len({p.id for p in tiny_points}) == 2
    assert all(p.settings == ["local-dp-2-sites"] for p in tiny_points)
    assert all(p.overrides["model.backbone"] == EXTRA["model.backbone"] for p in tiny_points)
    central = sweep_plan.plan_central(sweep_plan.load_spec("tiny"), tiny_points, dict(EXTRA))
    assert [c.overrides["dp.mode"] for c in central] == ["none"]


def test_identical_points_are_merged_and_bad_keys_rejected() -> None:
    spec = {
        "grid": {"dp.epsilon": [math.inf]},
        "base": {"data.dataset": "synthetic"},
        "point": [{"name": "a", "dp.mode": "local"}, {"name": "b", "dp.mode": "central"}],
    }
    (pt,) = sweep_plan.plan(spec, {})  # both collapse to dp.mode = none
    assert pt.settings == ["a", "b"]
    with pytest.raises(ConfigError, match="no.such"):
        sweep_plan.plan({"grid": {"no.such": [1]}}, {})


def test_scale_point(tmp_path: Path) -> None:
    pt = sweep_plan.plan_scale(sweep_plan.load_spec("tiny"), 500, {})
    assert pt.kind == "scale" and pt.overrides["data.partitioning"] == "user"
    assert pt.overrides["fed.fraction-train"] == pytest.approx(10 / 500)
    with pytest.raises(ConfigError, match="synthetic"):
        sweep_plan.plan_scale({"scale": {"data.dataset": "ml-100k"}}, 100, {})


def test_rerun_skips_finished_points_and_a_failure_is_recorded(
    tmp_path: Path, tiny_points: list[sweep_plan.Point], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    bad_id = tiny_points[1].id

    def fake_run(over: dict[str, Any], out: Path, **_: Any) -> RunResult:
        calls.append(out.name)
        if out.name == bad_id and len(calls) < 3:
            raise RuntimeError("flwr run failed (exit 1)")
        return RunResult.from_json(fake_results(over), str(out / "results.json"))

    monkeypatch.setattr(federated, "run", fake_run)

    def fake_central(over: dict[str, Any], out: Path) -> RunResult:
        return RunResult.from_json(fake_results(over, hr=0.3), str(out / "results.json"))

    monkeypatch.setattr(sweep, "run_central", fake_central)
    central = sweep_plan.plan_central(sweep_plan.load_spec("tiny"), tiny_points, dict(EXTRA))
    points = tiny_points + central
    rows = sweep.run_sweep(points, tmp_path, log=lambda _: None)
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert "flwr run failed" in rows[1]["error"]
    assert rows[2]["kind"] == "central" and rows[2]["setting"] == "central"
    assert len(sweep_rows.read_rows(tmp_path / "results.jsonl")) == 3
    # second invocation: only the failed point runs again
    rows = sweep.run_sweep(points, tmp_path, log=lambda _: None)
    assert [r["id"] for r in rows] == [bad_id]
    assert calls == [tiny_points[0].id, bad_id, bad_id]
    # third invocation: nothing new
    assert sweep.run_sweep(points, tmp_path, log=lambda _: None) == []
    assert len(calls) == 3
    row = sweep_rows.read_rows(tmp_path / "results.jsonl")[0]
    assert row["privacy"]["unit"] == "user" and row["privacy"]["trust_model"]
    assert row["fairness"]["per_client"]["hr@10"]["worst10"] == pytest.approx(0.1)
    assert set(row["fairness"]["activity"]["groups"]) == {"top20", "rest"}
    assert set(row["fairness"]["group"]["groups"]) <= {"A", "B"}
    assert row["cold_start"]["n_cold_items"] == 8


def test_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "sta')
    assert [r["id"] for r in sweep_rows.read_rows(path)] == ["a"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(ValueError, match="line 2"):
        sweep_rows.read_rows(path)


def test_activity_groups_and_age_bands() -> None:
    mask = fairness.activity_groups(np.array([5, 1, 3, 9, 2, 9, 0, 0, 0, 0]))
    assert mask.tolist() == [False, False, False, True, False, True] + [False] * 4  # ceil(2)
    assert fairness.activity_groups(np.array([1, 1, 1])).tolist() == [True, False, False]  # tie
    assert [fairness.age_band(a) for a in (1, 18, 24, 25, 35, 44, 45, 56, 70)] == [
        "<25", "<25", "<25", "25-34", "35-44", "35-44", "45+", "45+", "45+"]  # fmt: skip


def test_group_table_gap_by_hand() -> None:
    vals = {"hr@10": np.array([1.0, 0.0, 1.0, 1.0]), "ndcg@10": np.array([0.5, 0, 1, 0])}
    t = fairness.group_table(vals, np.array(["F", "F", "M", "M"]))
    assert t["groups"]["F"] == {"n": 2, "hr@10": 0.5, "ndcg@10": 0.25}
    assert t["gap_hr@10"] == pytest.approx(0.5) and t["gap_ndcg@10"] == pytest.approx(0.25)
    assert "gap_hr@10" not in fairness.group_table(vals, np.array(["F"] * 4))


def test_cold_start_counts_cold_users_and_most_popular_scores_zero(
    tiny_points: list[sweep_plan.Point],
) -> None:
    over = tiny_points[0].overrides
    corpus = load_corpus(parse_config(over).data)
    cs = fairness.cold_start(fake_results(over), corpus, seed=0)
    assert cs is not None
    cold = np.isin(corpus.split.test, corpus.split.cold_items)
    assert cs["n_cold_users"] == int(cold.sum()) > 0
    assert cs["most-popular_cold"]["hr@10"] == 0.0  # cold items were never trained on
    for who in (cs["cold"], cs["most-popular_cold"]):  # rank-based figures need per-user ranks
        assert 0.0 <= who["hr@100"] <= 1.0 and 0.0 <= who["rank_percentile"] <= 1.0


def _row(i: str, kind: str = "point", **kw: Any) -> dict[str, Any]:
    base = fake_results({"data.dataset": "synthetic", "dp.mode": "none"}, hr=0.1 + 0.01 * len(i))
    row = {
        "id": i, "kind": kind, "setting": "local-4-sites" if kind == "point" else kind,
        "settings": ["local-4-sites"] if kind == "point" else [kind], "status": "completed",
        "overrides": {"dp.epsilon": kw.get("target", "inf")},
        "epsilon_target": kw.get("target", "inf"),
        "metrics": {**base["metrics"], "exposure_profile@10": [5, 2, 1], "n_items": 80},
        "baselines": base["baselines"],
        "privacy": {"unit": "user", "mode": kw.get("mode", "none"), "trust_model": "sites trusted",
                    "epsilon": kw.get("eps", "inf"), "target_epsilon": kw.get("target", "inf")},
        "fairness": {"per_client": {"hr@10": {"mean": .2, "std": .1, "worst10": .1, "gini": .2,
                                              "n": 2}},
                     "activity": {"groups": {"top20": {"n": 12, "hr@10": .3, "ndcg@10": .1},
                                             "rest": {"n": 48, "hr@10": .2, "ndcg@10": .1}},
                                  "gap_hr@10": .1, "gap_ndcg@10": 0.0}},
        "cold_start": {"n_cold_items": 8, "n_cold_users": 5, "cold": {"hr@10": 0.2, "ndcg@10": 0.1},
                       "warm": {"hr@10": 0.3, "ndcg@10": 0.1},
                       "most-popular_cold": {"hr@10": 0.0, "ndcg@10": 0.0}},
        "rounds": [{"round": 1, "hr@10": 0.1, "ndcg@10": 0.05}, {"round": 2, "hr@10": 0.2,
                                                                  "ndcg@10": 0.1}],
        "per_client": {"hr@10": [0.1, 0.3], "ndcg@10": [0.05, 0.1]},
        "timing": {"sweep_wall_s": 100.0},
    }  # fmt: skip
    return row


def test_report_renders_every_section_and_flags_epsilon_above_target(tmp_path: Path) -> None:
    rows = [
        _row("p-inf"),
        _row("p-8", mode="local", eps=7.9, target=8.0),
        _row("p-3-bad", mode="local", eps=3.5, target=3.0),
        _row("c-inf", kind="central"),
        {"id": "dead", "kind": "point", "setting": "x", "status": "failed",
         "error": "RuntimeError: boom", "overrides": {}, "timing": {"sweep_wall_s": 3}},
        {"id": "s1", "kind": "scale", "setting": "scale", "status": "completed", "n_clients": 300,
         "clients_per_round": [10, 10], "time_per_round_s": [2.0, 3.0], "mean_round_s": 2.5,
         "peak_rss_mb": 900.0, "peak_pss_mb": 700.0, "peak_processes": 9,
         "max_process_rss_mb": 400.0, "timing": {"sweep_wall_s": 60}},
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md.count(report.VIOLATION) == 2  # banner + the row
    assert "`p-3-bad`" in md.split("## Privacy check")[0]
    for title in ("Utility vs epsilon", "Utility per round", "Per-client distribution",
                  "User groups", "Item side", "Cold start", "Scale", "Every point"):  # fmt: skip
        body = md.split(f"## {title}")[1].split("\n## ")[0]
        assert "_No data" not in body, title
    assert "RuntimeError: boom" in md and "| 300 | 10 |" in md
    for png in ("utility_vs_epsilon", "utility_per_round", "per_client", "group_gaps_vs_epsilon",
                "item_exposure", "exposure_curves", "scale"):  # fmt: skip
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 0


def test_report_without_data_says_so(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("")
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md.count("_No data") == 9
    assert report.main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path: Path, tiny_backbone: Path, cache_dir: Path) -> None:
    over = f'model.backbone="{tiny_backbone}" model.cache-dir="{cache_dir}"'
    argv = ["--preset", "tiny", "--out", str(tmp_path), "--run-config", over]
    assert sweep.main(argv) == 0
    rows = sweep_rows.read_rows(tmp_path / "results.jsonl")
    assert [r["kind"] for r in rows] == ["point", "point", "central"]
    assert all(r["status"] == "completed" for r in rows), rows
    dp = next(r for r in rows if r["privacy"]["mode"] == "local")
    assert dp["privacy"]["epsilon"] <= 8.0 * (1 + 1e-6)
    # round 0 (the DP popularity prior) + 2 training rounds
    assert len(dp["rounds"]) == 3 and dp["fairness"]["activity"]["groups"]
    assert dp["cold_start"]["n_cold_items"] == 8
    text = dp["cold_start"]["text-only_cold"]  # the run's adapter with the prior switched off
    assert 0.0 <= text["hr@10"] <= text["hr@100"] <= 1.0 and 0 <= text["rank_percentile"] <= 1
    for row in rows:  # federated profile from summed per-site counts; central: the evaluator
        prof = row["metrics"]["exposure_profile@10"]
        assert prof == sorted(prof, reverse=True) and prof[-1] >= 1
        assert len(prof) == round(row["metrics"]["coverage@10"] * 80)  # 80 synthetic items
    assert sweep.main(argv) == 0  # re-run: nothing new
    assert len(sweep_rows.read_rows(tmp_path / "results.jsonl")) == 3
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert report.VIOLATION not in md and "## Cold start" in md


def test_report_sets_dp_baselines_beside_the_model_per_epsilon(tmp_path: Path) -> None:
    def dp_row(i: str, hr_pop: float, hr_ease: float) -> dict[str, Any]:
        row = _row(i, mode="local", eps=7.9, target=8.0)
        row["privacy"]["delta"] = 1e-5
        row["baselines"] = {
            **row["baselines"],
            "dp-popularity": {"hr@10": hr_pop, "ndcg@10": hr_pop / 2},
            "dp-ease": {"hr@10": hr_ease, "ndcg@10": hr_ease / 2, "n_items_used": 100,
                        "lambda": 50.0},
        }  # fmt: skip
        return row

    rows = [dp_row("a", 0.03, 0.05), dp_row("b", 0.05, 0.07), _row("p-inf")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    body = md.split("## DP baselines at the same epsilon and delta")[1].split("\n## ")[0]
    assert "| local-4-sites | 8 | 1e-05 | 2 |" in body
    assert "0.0400 ± 0.0141" in body and "0.0600 ± 0.0141" in body  # sample sd
    assert "(100, 50), (100, 50)" in body
    # the DP baselines are per epsilon, not horizontal lines of the non-private baselines
    assert "dp-ease" not in report.baselines(rows)


def test_cold_start_section_summarises_seeds_per_setting_and_epsilon() -> None:
    from simulations.report_sections import section_cold

    rows = [_row("a"), _row("b"), _row("c", mode="local", eps=7.9, target=8.0)]
    for r, hr100 in zip(rows, (0.2, 0.4, 0.1), strict=True):
        r["cold_start"] = {**r["cold_start"], "cold": {**r["cold_start"]["cold"], "hr@100": hr100}}
    md = "\n".join(section_cold(rows))
    # two no-DP runs: mean 0.3, sample sd 0.1414; the eps-8 group has its one run
    assert "| local-4-sites | inf | 2 | 0.3000 ± 0.1414 |" in md
    assert "| local-4-sites | 8 | 1 | 0.1000 ± 0.0000 |" in md
    assert "Over seeds" not in "\n".join(section_cold(rows[:1] + rows[2:]))  # one run each


def test_a_completed_run_is_read_back_when_only_its_row_failed(
    tmp_path: Path, tiny_points: list[sweep_plan.Point], monkeypatch: pytest.MonkeyPatch
) -> None:
    pt = tiny_points[0]
    where = (tmp_path / "points" / pt.id).resolve()
    prepared, _ = federated._prepare(pt.overrides, where, None, quiet=True)
    done = {**fake_results(pt.overrides), "config": clean_json(parse_config(prepared).flat())}
    where.mkdir(parents=True)
    (where / "results.json").write_text(json.dumps(clean_json(done)))
    calls: list[str] = []

    def fake_run(over: dict[str, Any], out: Path, **_: Any) -> RunResult:
        calls.append(out.name)
        return RunResult.from_json(fake_results(over, hr=0.3), str(out / "results.json"))

    monkeypatch.setattr(federated, "run", fake_run)
    rows = sweep.run_sweep([pt], tmp_path, log=lambda _: None)
    assert calls == [] and rows[0]["status"] == "completed"
    assert rows[0]["metrics"]["hr@10"] == pytest.approx(0.2)  # the file's, not a new run's
    # A stopped run, or one of another config, is run again.
    for changed in ({"status": "stopped"}, {"config": {**done["config"], "train.lr": 0.5}}):
        (where / "results.json").write_text(json.dumps(clean_json({**done, **changed})))
        (tmp_path / "results.jsonl").unlink()
        rows = sweep.run_sweep([pt], tmp_path, log=lambda _: None)
        assert rows[0]["metrics"]["hr@10"] == pytest.approx(0.3)
    assert calls == [pt.id, pt.id]
