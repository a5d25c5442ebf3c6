"""The audit catches a broken implementation: DP noise switched off, epsilon still claimed.

``FEDREC_TEST_ONLY_ZERO_NOISE=1`` (`accounting.test_only_zero_noise`, test only) zeroes the
DP-SGD noise and the popularity histogram's noise while planning, ledgers and reports claim
the usual epsilon. `simulations.audit` must then prove more leakage than that claim (FAIL);
the same configuration with real noise must not (that run is
tests/simulations/test_audit_run.py's strong-DP test). The run is a real `flwr run` simulation
(the variable reaches the Ray workers through the environment `simulations.federated` passes
on) on synthetic data with the tiny random BERT, 2 sites, 2 rounds, 60 canaries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.evaluation import noisy_means
from common import records as R
from common.model.train import LocalData
from common.privacy import accounting as privacy
from common.task import local_histogram
from simulations import audit

CLAIM = 1.0  # dp.epsilon; the default site policy allows up to 10
# 60 canaries: a perfect attack proves eps >= 2.09 at delta 1e-5 (Bonferroni over 48 tests),
# well above the claim; 40 would give 1.66.
BASE = (
    "data.dataset=synthetic data.synthetic-users=40 data.synthetic-items=2000 "
    f"data.num-sites=2 fed.rounds=2 audit.canaries=60 audit.canary-history=3 "
    f"dp.mode=local dp.epsilon={CLAIM}"
)
WARNING = "DP NOISE IS DISABLED"


def run_audit(out: Path, tiny: Path, cache: Path, *, zero_noise: bool) -> tuple[int, Any]:
    over = f'{BASE} model.backbone="{tiny}" model.cache-dir="{cache}"'
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FEDREC_SITE_POLICY", raising=False)
        if zero_noise:
            mp.setenv(privacy.ZERO_NOISE_ENV, "1")
        else:
            mp.delenv(privacy.ZERO_NOISE_ENV, raising=False)
        rc = audit.main(["--preset", "", "--out", str(out), "--run-config", over])
    return rc, json.loads((out / "audit.json").read_text())


@pytest.fixture(scope="module")
def zero_noise(
    tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path, cache_dir: Path
) -> tuple[int, Any, Path]:
    out = tmp_path_factory.mktemp("zero-noise")
    return (*run_audit(out, tiny_backbone, cache_dir, zero_noise=True), out)


def canary_checks(rep: dict[str, Any]) -> list[tuple[float, float]]:
    """(one-run lower bound, accounted epsilon) at the run's and at the audit delta."""
    acc, can = rep["accounted"], rep["canaries"]
    return [
        (can["run_delta"]["one_run"]["epsilon_lb"], acc["epsilon_run"]),
        (can["audit_delta"]["one_run"]["epsilon_lb"], acc["epsilon_audit"]),
    ]


# ---------------------------------------------------------------- the switch itself (fast)


def test_switch_is_off_unless_exactly_1(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in (None, "", "0", "true", "yes"):
        if value is None:
            monkeypatch.delenv(privacy.ZERO_NOISE_ENV, raising=False)
        else:
            monkeypatch.setenv(privacy.ZERO_NOISE_ENV, value)
        assert privacy.test_only_zero_noise() is False
    monkeypatch.setenv(privacy.ZERO_NOISE_ENV, "1")
    with pytest.warns(RuntimeWarning, match=WARNING):
        assert privacy.test_only_zero_noise() is True


def test_switch_skips_the_histogram_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalData(
        np.arange(2), [np.array([0, 1, 2]), np.array([2, 3])], np.array([4, 4]), np.array([5, 5])
    )
    monkeypatch.delenv(privacy.ZERO_NOISE_ENV, raising=False)
    exact = local_histogram(local, 6, recent=8, sigma=0.0, seed=0)
    noisy = local_histogram(local, 6, recent=8, sigma=5.0, seed=0)
    assert not np.allclose(noisy, exact)
    monkeypatch.setenv(privacy.ZERO_NOISE_ENV, "1")
    with pytest.warns(RuntimeWarning, match=WARNING):
        np.testing.assert_array_equal(local_histogram(local, 6, recent=8, sigma=5.0, seed=0), exact)


def test_switch_skips_the_evaluation_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    per_user = {"hr@10": np.array([1.0, 0.0, 1.0, 1.0])}
    monkeypatch.delenv(privacy.ZERO_NOISE_ENV, raising=False)
    noisy = noisy_means(per_user, ("hr@10",), sigma=5.0, seed=3)
    assert noisy["hr@10"] != pytest.approx(0.75)
    monkeypatch.setenv(privacy.ZERO_NOISE_ENV, "1")
    with pytest.warns(RuntimeWarning, match=WARNING):
        exact = noisy_means(per_user, ("hr@10",), sigma=5.0, seed=3)
    assert exact["hr@10"] == pytest.approx(0.75) and exact[R.NUM_EXAMPLES] == 4


# ---------------------------------------------------------------- end to end (flwr run)


@pytest.mark.slow
def test_zero_noise_run_fails_the_audit(zero_noise: tuple[int, Any, Path]) -> None:
    rc, rep, out = zero_noise
    assert rc == 1 and rep["verdict"] == "FAIL"
    # the switch reached the ClientApp processes (Ray workers), and only the noise changed:
    # the claim is what the ledgers account, at most the budget
    assert WARNING in (out / "run" / "flwr.log").read_text()
    assert rep["privacy"]["mode"] == "local" and rep["privacy"]["target_epsilon"] == CLAIM
    for lb, ub in canary_checks(rep):
        assert 0 < ub <= CLAIM * (1 + 1e-6)
        assert lb > ub, (lb, ub)  # the attack proves more leakage than claimed
    lines = [line for line in rep["verdict_lines"] if "one-run lower bound" in line]
    assert len(lines) == 2 and all(line.startswith("FAIL") for line in lines), lines
    assert "# Privacy audit: FAIL" in (out / "audit.md").read_text()
