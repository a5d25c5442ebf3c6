"""simulations.users_needed: DP vs no DP per number of users on planted-structure data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from common.io import clean_json
from simulations import users_needed as U


@pytest.fixture
def base(tiny_backbone: Path, cache_dir: Path) -> dict[str, Any]:
    return {
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(cache_dir),
        "data.synthetic-items": 60,
        "data.history-len": 8,
        "model.lora.rank": 2,
        "train.batch-users": 8,
        "train.targets-per-user": 2,
        "train.negatives": 5,
        "fed.rounds": 1,
    }


def test_summarise_gives_mean_and_sample_sd_per_point() -> None:
    rows = [
        {"users": 10, "epsilon": 8.0, "hr@10": h, "ndcg@10": h / 2, "most-popular hr@10": 0.1}
        for h in (0.1, 0.2, 0.6)
    ]
    rows.append({"users": 10, "epsilon": math.inf, "hr@10": 0.5, "ndcg@10": 0.3,
                 "most-popular hr@10": 0.1})
    summary = U.summarise(rows)
    assert [(s["users"], s["epsilon"], s["seeds"]) for s in summary] == [
        (10, 8.0, 3),
        (10, math.inf, 1),
    ]
    assert summary[0]["hr@10"] == pytest.approx(0.3)
    assert summary[0]["hr@10 sd"] == pytest.approx(math.sqrt(((0.2**2) + 0.1**2 + 0.3**2) / 2))
    assert summary[1]["hr@10 sd"] == 0.0
    assert "| 10 | no DP | 0.5000 ± 0.0000" in U.table(summary)


def test_the_study_runs_every_point_writes_its_report_and_resumes(
    base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = U.study(tmp_path, [30, 60], [8.0, math.inf], 1, base)
    assert len(res["runs"]) == 4
    assert {(s["users"], s["epsilon"], s["seeds"]) for s in res["summary"]} == {
        (30, 8.0, 1), (30, math.inf, 1), (60, 8.0, 1), (60, math.inf, 1)
    }
    for r in res["runs"]:
        assert 0 <= r["ease hr@10"] <= 1  # the ordinary baseline beside every run
        if math.isinf(r["epsilon"]):
            assert "dp-ease hr@10" not in r
            continue
        assert 0 < r["epsilon_spent"] <= 8.0 + 1e-6  # each DP run is accounted at its budget
        assert r["delta"] <= 1e-5
        assert 0 <= r["dp-ease hr@10"] <= 1  # and the DP baseline at the same budget
    dp_point = next(s for s in res["summary"] if s["epsilon"] == 8.0)
    assert "dp-ease hr@10 sd" in dp_point and "ease hr@10" in dp_point
    saved = json.loads((tmp_path / "users-needed.json").read_text())
    assert saved["runs"] == clean_json(res["runs"])
    assert (tmp_path / "users-needed.png").stat().st_size > 1000
    md = (tmp_path / "users-needed.md").read_text()
    assert "no DP" in md
    for line in md.splitlines()[2:]:  # every point's row shows its baseline, never "-"
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert " ± " in cells[5], line

    def no_rerun(*_: Any) -> None:
        raise AssertionError("a finished point was run again")

    monkeypatch.setattr(U, "central_run", no_rerun)
    again = U.study(tmp_path, [30, 60], [8.0, math.inf], 1, base)
    assert again["runs"] == res["runs"]

    # Elsewhere (another checkout): the committed point records stand in for the runs.
    records = tmp_path / "points"
    assert sorted(p.name for p in records.glob("*.json")) == [
        "users30-eps8-seed0.json", "users30-epsinf-seed0.json",
        "users60-eps8-seed0.json", "users60-epsinf-seed0.json",
    ]  # fmt: skip
    elsewhere = U.study(tmp_path / "b", [30, 60], [8.0, math.inf], 1, base, reuse=[records])
    assert clean_json(elsewhere["runs"]) == clean_json(res["runs"]) and not elsewhere["missing"]
    # A record of another config is not taken (a changed learning rate makes every record
    # foreign); with run_missing off nothing runs and the point is listed as missing.
    other = U.study(tmp_path / "c", [30], [8.0], 1, {**base, "train.lr": 0.5}, reuse=[records],
                    run_missing=False)  # fmt: skip
    assert other["runs"] == [] and other["missing"] == ["users30-eps8-seed0"]
    assert "Not run yet (1): users30-eps8-seed0" in (tmp_path / "c" / "users-needed.md").read_text()
    # A key the record predates counts at its earlier behaviour ("constant"; new-item rank 0,
    # which, like another new-item text weight, changes nothing on data without new items).
    rec = json.loads((records / "users30-eps8-seed0.json").read_text())
    del rec["config"]["train.lr-schedule"], rec["config"]["model.new-item-rank"]
    rec["config"]["model.new-item-text-weight"] = 1.0
    (records / "users30-eps8-seed0.json").write_text(json.dumps(rec))
    old = U.study(tmp_path / "d", [30], [8.0], 1, base, reuse=[records], run_missing=False)
    assert len(old["runs"]) == 1 and not old["missing"]
    rec["config"]["train.lr-schedule"] = "cosine"  # a recorded value that differs: foreign
    (records / "users30-eps8-seed0.json").write_text(json.dumps(rec))
    assert U.study(tmp_path / "d2", [30], [8.0], 1, base, reuse=[records],
                   run_missing=False)["missing"] == ["users30-eps8-seed0"]  # fmt: skip
    (records / "users30-eps8-seed0.json").write_text("{not json")
    with pytest.raises(ValueError, match="users30-eps8-seed0.json: not a users-needed point"):
        U.study(tmp_path / "e", [30], [8.0], 1, base, reuse=[records], run_missing=False)


def test_bad_sizes_are_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert U.main(["--out", str(tmp_path), "--sizes", "10,x"]) == 2
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err
    assert U.main(["--out", str(tmp_path), "--sizes", "1"]) == 2
    assert U.main(["--out", str(tmp_path), "--reuse", str(tmp_path / "absent")]) == 2
    assert "absent: not a folder" in capsys.readouterr().err
