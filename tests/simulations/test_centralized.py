"""The central run command: results schema, determinism, clear errors, a real-data run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from common.model.backbone import make_tiny_backbone
from simulations import centralized

ROOT = Path(__file__).resolve().parents[2]
ML_SMALL = ROOT / "data" / "ml-latest-small"  # the embedded default
KEYS = ("hr@10", "ndcg@10", "mrr", "sampled_hr@10", "sampled_ndcg@10")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny"))


def _run(tiny: Path, out: Path, cache: Path, epsilon: str = "8", extra: str = "") -> dict:
    over = (f'model.backbone="{tiny}" model.cache-dir="{cache}" fed.rounds=2 '
            f"data.synthetic-users=60 data.synthetic-items=80 {extra}")
    rc = centralized.main(["--dataset", "synthetic", "--epsilon", epsilon, "--out", str(out),
                           "--run-config", over])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def test_results_schema_and_privacy(tiny: Path, tmp_path: Path) -> None:
    res = _run(tiny, tmp_path / "a", tmp_path / "cache")
    for k in KEYS:
        assert 0.0 <= res["metrics"][k] <= 1.0
        assert 0.0 <= res["baselines"]["most-popular"][k] <= 1.0
    assert set(res["baselines"]) >= {"most-popular", "ease"}
    p = res["privacy"]
    assert p["unit"] == "user" and p["accountant"] == "prv"
    assert 0 < p["epsilon"] <= 8.0
    assert p["epsilon"] > 7.5  # calibrated to spend (almost) the whole budget
    assert p["delta"] == pytest.approx(1e-5)  # min(1e-5, 1/(10 x 60 users))
    assert res["timing"]["wall_s"] > 0 and res["timing"]["train_users_per_s"] > 0
    assert (tmp_path / "a" / "adapter" / "adapter_config.json").exists()


def test_same_seed_same_numbers(tiny: Path, tmp_path: Path) -> None:
    # DP noise is seeded as a site's (OS entropy); only dp.reproducible-noise repeats it.
    seeded = "dp.reproducible-noise=true"
    a = _run(tiny, tmp_path / "a", tmp_path / "cache", extra=seeded)
    b = _run(tiny, tmp_path / "b", tmp_path / "cache", extra=seeded)
    assert a["metrics"] == b["metrics"]
    assert a["history"] == b["history"]


def test_no_dp_reports_infinite_epsilon(tiny: Path, tmp_path: Path) -> None:
    res = _run(tiny, tmp_path / "a", tmp_path / "cache", epsilon="inf")
    assert res["privacy"]["mode"] == "none"
    assert math.isinf(float(res["privacy"]["epsilon"]))
    assert not [k for k in res["baselines"] if k.startswith("dp-")]  # no DP, no DP baselines


def test_dp_run_reports_dp_baselines_at_its_budget(tiny: Path, tmp_path: Path) -> None:
    res = _run(tiny, tmp_path / "a", tmp_path / "cache", epsilon="4")
    p = res["privacy"]
    for name in ("dp-popularity", "dp-ease"):
        b = res["baselines"][name]
        assert 0.0 <= b["hr@10"] <= 1.0 and 0.0 <= b["ndcg@10"] <= 1.0
        assert b["privacy"]["target_epsilon"] == pytest.approx(p["epsilon"])  # the model's
        assert b["privacy"]["epsilon"] <= p["epsilon"] * (1 + 1e-6)
        assert b["privacy"]["delta"] == p["delta"]
    ease = res["baselines"]["dp-ease"]
    assert ease["n_items_used"] in {50, 80}  # 80 items: the grid is capped at the catalogue
    assert len(ease["valid_grid"]) == 12


def test_the_cooc_release_is_planned_and_spent_in_budget(tiny: Path, tmp_path: Path) -> None:
    res = _run(tiny, tmp_path / "a", tmp_path / "cache", extra="model.cooc-items=20")
    p = res["privacy"]
    assert p["cooc_noise_multiplier"] > p["prior_noise_multiplier"] > 0  # 0.3 vs 0.4 of eps
    assert 7.5 < p["epsilon"] <= 8.0  # prior + co-occurrence + training, composed
    plain = _run(tiny, tmp_path / "b", tmp_path / "cache")["privacy"]
    assert "cooc_noise_multiplier" not in plain
    assert p["noise_multiplier"] > plain["noise_multiplier"]  # training pays for the release


def test_malformed_ratings_one_clear_line(tmp_path: Path) -> None:
    data = tmp_path / "ml"
    data.mkdir()
    (data / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,x,3.0,11\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.centralized", "--dataset", "ml-latest-small",
         "--data-dir", str(data), "--epsilon", "8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ratings.csv line 3" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "results.json").exists()


@pytest.mark.slow
def test_real_data_one_pass(tmp_path: Path) -> None:
    """MiniLM on ml-latest-small, one DP pass: the real product path end to end."""
    out = tmp_path / "real"
    rc = centralized.main(["--dataset", "ml-latest-small", "--data-dir", str(ML_SMALL),
                           "--epsilon", "8", "--out", str(out), "--run-config",
                           f'fed.rounds=1 train.eval-users=100 model.cache-dir="{tmp_path}/c"'])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["n_users"] == 610
    assert res["privacy"]["delta"] == pytest.approx(1e-5)  # min(1e-5, 1/(10 x 610))
    assert res["privacy"]["epsilon"] <= 8.0
    # the baselines reproduce the design's reference protocol figure for most-popular
    assert res["baselines"]["most-popular"]["hr@10"] == pytest.approx(0.041, abs=0.003)


def test_eval_valid_scores_the_validation_item_not_the_test_item(
    tiny: Path, tmp_path: Path
) -> None:
    over = (f'model.backbone="{tiny}" model.cache-dir="{tmp_path / "cache"}" fed.rounds=1 '
            "data.synthetic-users=60 data.synthetic-items=80")
    out = tmp_path / "v"
    rc = centralized.main(["--dataset", "synthetic", "--epsilon", "inf", "--eval", "valid",
                           "--out", str(out), "--run-config", over])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["evaluated"] == "valid"
    # the final figures are the last pass's validation figures (all users), not the test's
    assert res["metrics"]["hr@10"] == pytest.approx(res["history"][-1]["valid_hr@10"])
    assert res["metrics"]["ndcg@10"] == pytest.approx(res["history"][-1]["valid_ndcg@10"])
