"""simulations.new_items: the new-item prior chosen on the validation item of a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.model.backbone import make_tiny_backbone
from simulations import centralized, new_items


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny central runs without DP: with 20% cold items, and without cold items."""
    root = tmp_path_factory.mktemp("ni")
    tiny = make_tiny_backbone(root / "tiny")
    out = {}
    for name, share in (("cold", 0.2), ("warm", 0.0)):
        over = (f'model.backbone="{tiny}" model.cache-dir="{root / "cache"}" fed.rounds=1 '
                f"data.synthetic-users=80 data.synthetic-items=60 data.cold-start-share={share}")
        rc = centralized.main(["--dataset", "synthetic", "--epsilon", "inf", "--eval", "valid",
                               "--out", str(root / name), "--run-config", over])  # fmt: skip
        assert rc == 0
        out[name] = root / name
    return out


def test_a_central_run_reports_users_whose_item_is_cold(runs: dict[str, Path]) -> None:
    cold = json.loads((runs["cold"] / "results.json").read_text())["cold_start"]
    assert cold["n_cold_items"] == 12 and cold["n_cold_users"] > 0
    assert set(cold) >= {"cold", "warm", "most-popular_cold"}
    assert 0.0 <= cold["cold"]["hr@100"] <= 1.0
    assert "cold_start" not in json.loads((runs["warm"] / "results.json").read_text())


def test_the_grid_is_scored_and_the_choice_follows_the_rule(runs: dict[str, Path]) -> None:
    rc = new_items.main(["--run", str(runs["cold"]), "--priors=-50,0,1,50", "--test"])
    assert rc == 0
    res = json.loads((runs["cold"] / "new-items.json").read_text())
    rows = res["valid"]
    assert [r["new_item_prior"] for r in rows] == [None, -50.0, 0.0, 1.0, 50.0]
    off, bottom, huge = rows[0], rows[1], rows[-1]
    assert off["new users"] > 0
    # -50 standard units put every new item below the 48 others, +50 above them all.
    assert bottom["new hr@10"] == 0.0 < huge["new hr@10"]
    assert res["chosen"] == new_items.choose(rows, 0.05)
    assert res["chosen"]["hr@10"] >= 0.95 * off["hr@10"]
    assert "test" in res and res["test"][1]["new_item_prior"] == res["chosen"]["new_item_prior"]
    md = (runs["cold"] / "new-items.md").read_text()
    assert "chosen" in md and "Test item" in md


def test_choose_takes_the_largest_prior_within_the_tolerance() -> None:
    rows = [{"new_item_prior": None, "hr@10": 0.10}]
    rows += [{"new_item_prior": c, "hr@10": h} for c, h in ((0.0, 0.10), (1.0, 0.096),
                                                             (2.0, 0.09), (3.0, 0.097))]
    assert new_items.choose(rows, 0.05)["new_item_prior"] == 3.0
    assert new_items.choose(rows, 0.02)["new_item_prior"] == 0.0
    assert new_items.choose([rows[0], {"new_item_prior": 1.0, "hr@10": 0.0}], 0.05) is rows[0]


def test_the_rank_grid_keeps_new_items_out_of_the_top_k_and_chooses_on_hr_at_100(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    rc = new_items.main(["--run", str(runs["cold"]), "--ranks=1,10", "--text-weights=0.5,2",
                         "--test", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "new-items.json").read_text())
    rows = res["valid"]
    assert [(r["new_item_rank"], r["new_item_text_weight"]) for r in rows[1:]] == [
        (1, 0.5), (1, 2.0), (10, 0.5), (10, 2.0)]  # fmt: skip
    off = rows[0]
    for r in rows[1:]:
        if r["new_item_rank"] == 10:  # new items start after position 10
            assert r["new hr@10"] == 0.0 and r["new users"] == off["new users"]
    assert res["chosen"] == new_items.choose(rows, 0.05)
    assert res["chosen"]["blend"] == "off" or res["chosen"]["hr@100"] >= 0.95 * off["hr@100"]
    if res["chosen"]["blend"] == "rank":
        test = res["test"][1]
        assert (test["new_item_rank"], test["new_item_text_weight"]) == (
            res["chosen"]["new_item_rank"], res["chosen"]["new_item_text_weight"])  # fmt: skip
    assert "rank 10, text weight 2" in (tmp_path / "new-items.md").read_text()


def test_take_reads_the_test_item_at_the_one_given_setting(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--run", str(runs["cold"]), "--ranks=80", "--text-weights=3", "--take", "--test"]
    assert new_items.main([*args, "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "new-items.json").read_text())
    assert res["chosen"] == res["valid"][1] and res["test"][1]["new_item_rank"] == 80
    assert new_items.main(["--run", str(runs["cold"]), "--ranks=10,20", "--text-weights=1",
                           "--take"]) == 2  # fmt: skip
    assert "--take needs a grid of one setting, got 2" in capsys.readouterr().err


def test_choose_on_ranks_takes_the_best_new_item_hr100_within_the_tolerance() -> None:
    off = {"blend": "off", "hr@100": 0.30, "new hr@100": 0.0}
    cells = ((10, 1.0, 0.20, 0.50), (30, 1.0, 0.29, 0.30), (60, 0.5, 0.295, 0.30),
             (80, 1.0, 0.31, 0.1))
    grid = [{"blend": "rank", "new_item_rank": k, "new_item_text_weight": w, "hr@100": h,
             "new hr@100": n} for k, w, h, n in cells]  # fmt: skip
    pick = new_items.choose([off, *grid], 0.05)
    assert (pick["new_item_rank"], pick["new_item_text_weight"]) == (60, 0.5)  # tie: larger K
    assert new_items.choose([off, *grid], 0.5)["new_item_rank"] == 10
    assert new_items.choose([off, grid[0]], 0.05) is off


def test_a_run_without_new_items_is_refused_by_name(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert new_items.main(["--run", str(runs["warm"])]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "marks no item new" in err
    assert new_items.main(["--run", str(runs["cold"]), "--tolerance", "1.5"]) == 2
    assert "--tolerance" in capsys.readouterr().err
    assert new_items.main(["--run", str(runs["cold"]), "--ranks=0"]) == 2
    assert "--ranks needs integers >= 1" in capsys.readouterr().err
    assert new_items.main(["--run", str(runs["cold"]), "--text-weights=1,2"]) == 2
    assert "with priors, --text-weights takes one value" in capsys.readouterr().err


def test_priors_take_the_runs_text_weight_unless_one_is_given(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    for extra, want in (([], 0.25), (["--text-weights=1"], 1.0)):  # 0.25: the default
        assert new_items.main(["--run", str(runs["cold"]), "--priors=0", "--out", str(tmp_path),
                               *extra]) == 0  # fmt: skip
        rows = json.loads((tmp_path / "new-items.json").read_text())["valid"]
        assert rows[1]["new_item_text_weight"] == want and rows[1]["new_item_rank"] == 0
