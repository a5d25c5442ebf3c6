"""End to end: the audit CLI over real `flwr run` simulations on synthetic data, tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulations import audit

pytestmark = pytest.mark.slow

# Few users and a large catalogue: most items are rare, so a canary's items stand out.
BASE = (
    "data.dataset=synthetic data.synthetic-users=40 data.synthetic-items=2000 "
    "data.num-sites=2 fed.rounds=2 audit.canaries=200 audit.canary-history=3"
)


def run_audit(out: Path, tiny: Path, cache: Path, extra: str, *flags: str) -> tuple[int, Any]:
    over = f'{BASE} model.backbone="{tiny}" model.cache-dir="{cache}" {extra}'
    rc = audit.main(["--preset", "", "--out", str(out), "--run-config", over, *flags])
    return rc, json.loads((out / "audit.json").read_text())


def test_without_dp_the_audit_has_power(
    tmp_path: Path, tiny_backbone: Path, cache_dir: Path
) -> None:
    rc, rep = run_audit(
        tmp_path / "nodp",
        tiny_backbone,
        cache_dir,
        "dp.mode=none train.epochs=2.0 audit.holdout-users=0.25",
        "--require-power",
    )
    assert rc == 0
    held = rep["real_users"]["model, held-out users"]
    assert held["unit"] == "user" and 5 <= held["n_nonmembers"] <= 10 < held["n_members"]
    inter = rep["real_users"]["model"]
    assert inter["unit"] == "interaction"  # trained users only: held-out items are not members
    assert inter["n_members"] == inter["n_nonmembers"] == held["n_members"]
    assert rep["privacy"]["mode"] == "none" and rep["ledger"] is None
    can = rep["canaries"]
    assert can["m"] == 200
    one = can["audit_delta"]["one_run"]
    assert one["delta"] == 1e-5 and one["epsilon_lb"] > 1.0, one  # clearly positive
    assert max(a["auc"] for a in can["attacks"].values()) > 0.9
    assert rep["verdict"] == "PASS"
    assert (tmp_path / "nodp" / "roc.png").stat().st_size > 0
    assert "# Privacy audit: PASS" in (tmp_path / "nodp" / "audit.md").read_text()


def test_with_strong_dp_the_bound_stays_below_the_accounted_epsilon(
    tmp_path: Path, tiny_backbone: Path, cache_dir: Path
) -> None:
    rc, rep = run_audit(tmp_path / "dp", tiny_backbone, cache_dir, "dp.mode=local dp.epsilon=1.0")
    assert rc == 0, rep["verdict_lines"]
    acc = rep["accounted"]
    assert 0 < acc["epsilon_run"] <= 1.0 + 1e-6
    # The run's delta is now min(1e-5, 1/(10 n)) = the audit's 1e-5: the same epsilon.
    assert acc["delta_run"] == 1e-5
    assert acc["epsilon_audit"] == pytest.approx(acc["epsilon_run"], rel=1e-9)
    for key, ub in (("run_delta", acc["epsilon_run"]), ("audit_delta", acc["epsilon_audit"])):
        assert rep["canaries"][key]["one_run"]["epsilon_lb"] <= ub
    led = rep["ledger"]
    assert led["ok"], led
    assert len(led["clients"]) == 2
    for c in led["clients"].values():
        assert all(r["reported"] is not None for r in c["rounds"])
        assert c["epsilon_prv"] <= c["budget"] * (1 + 1e-6)
    assert rep["privacy"]["unit"] == "user" and rep["verdict"] == "PASS"
