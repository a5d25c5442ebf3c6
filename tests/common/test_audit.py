"""Audit math against values worked out by hand, attack metrics, and the ledger check."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from common.privacy import audit as A
from common.privacy import audit_bounds as B
from common.privacy.accounting import epsilon_of
from common.privacy.ledger import Ledger


def binomial_tail(r: int, v: int, q: float) -> float:
    """P[Bin(r, q) >= v] from the definition."""
    return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1))


# ---------------------------------------------------------------- one-run p-value


@pytest.mark.parametrize(
    ("m", "r", "v", "eps"),
    [
        (10, 10, 10, 0.0),
        (100, 40, 30, 1.0),
        (100, 40, 21, 0.3),
        (1000, 200, 150, 2.5),
        (50, 1, 1, 0.7),
    ],
)
def test_p_value_without_delta_is_the_binomial_tail(m: int, r: int, v: int, eps: float) -> None:
    q = math.exp(eps) / (1 + math.exp(eps))
    assert B.one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(binomial_tail(r, v, q), rel=1e-9)


def test_p_value_at_eps_zero_all_right_is_two_to_minus_r() -> None:
    assert B.one_run_p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(2.0**-10)


def test_p_value_delta_term_by_hand() -> None:
    # m = r = v = 2, q = 1/2: f(2) = 1/4; window i=1: P[Bin=1] = 1/2, i=2: P[Bin<=1]/2 = 3/8;
    # alpha = 1/2, so p = 1/4 + 1/2 * 0.01 * 2 * 2 = 0.27.
    assert B.one_run_p_value(2, 2, 2, 0.0, 0.01) == pytest.approx(0.27)
    # m = 10, r = 3, v = 2, q = 1/2: f(2) = 1/2; i=1: P[Bin=1] = 3/8, i=2: (3/8 + 1/8)/2 = 1/4;
    # alpha = 3/8, p = 1/2 + 3/8 * 0.001 * 20 = 0.5075.
    assert B.one_run_p_value(10, 3, 2, 0.0, 0.001) == pytest.approx(0.5075)


def test_p_value_is_capped_and_trivial_cases() -> None:
    assert B.one_run_p_value(1000, 10, 5, 0.0, 0.5) == 1.0
    assert B.one_run_p_value(10, 5, 0, 3.0, 0.0) == 1.0


def test_p_value_monotone() -> None:
    eps = np.linspace(0, 5, 21)
    p = [B.one_run_p_value(200, 80, 60, e, 1e-4) for e in eps]
    assert all(a <= b + 1e-15 for a, b in zip(p, p[1:], strict=False))
    pv = [B.one_run_p_value(200, 80, v, 1.0, 1e-4) for v in range(40, 81)]
    assert all(a >= b - 1e-15 for a, b in zip(pv, pv[1:], strict=False))


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (0, 0, 0, 1.0, 0.0),
        (10, 11, 1, 1.0, 0.0),
        (10, 5, 6, 1.0, 0.0),
        (10, 5, 3, -1.0, 0.0),
        (10, 5, 3, 1.0, 1.0),
    ],
)
def test_p_value_rejects_bad_input(m: int, r: int, v: int, eps: float, delta: float) -> None:
    with pytest.raises(ValueError):
        B.one_run_p_value(m, r, v, eps, delta)


# ---------------------------------------------------------------- one-run lower bound


def test_lower_bound_all_right_by_hand() -> None:
    # delta = 0, r = v = 10: reject eps while q^10 <= 0.05, i.e. q <= 0.05^(1/10).
    q = 0.05 ** (1 / 10)
    assert B.one_run_epsilon_lower_bound(10, 10, 10, 0.0) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-5
    )


def test_lower_bound_is_the_rejection_edge() -> None:
    lb = B.one_run_epsilon_lower_bound(500, 200, 170, 1e-5, 0.95)
    assert lb > 0
    assert B.one_run_p_value(500, 200, 170, lb, 1e-5) <= 0.05
    assert B.one_run_p_value(500, 200, 170, lb + 1e-3, 1e-5) > 0.05


def test_lower_bound_zero_at_chance_and_monotone() -> None:
    assert B.one_run_epsilon_lower_bound(500, 200, 100, 1e-5) == 0.0
    by_v = [B.one_run_epsilon_lower_bound(500, 200, v, 1e-5) for v in (120, 150, 180, 200)]
    assert by_v == sorted(by_v) and by_v[0] > 0
    by_delta = [B.one_run_epsilon_lower_bound(500, 100, 100, d) for d in (0, 1e-5, 1e-3)]
    assert by_delta == sorted(by_delta, reverse=True)
    by_conf = [B.one_run_epsilon_lower_bound(500, 100, 95, 1e-5, c) for c in (0.5, 0.95, 0.99)]
    assert by_conf == sorted(by_conf, reverse=True)


# ---------------------------------------------------------------- guesses


def test_guesses_from_scores() -> None:
    s = np.array([0.5, 3.0, -1.0, 2.0, 0.0])
    assert B.guesses_from_scores(s, 2, 1).tolist() == [0, 1, -1, 1, 0]
    assert B.guesses_from_scores(s, 0, 0).tolist() == [0] * 5
    assert B.guesses_from_scores(s, 0, 5).tolist() == [-1] * 5
    with pytest.raises(ValueError):
        B.guesses_from_scores(s, 3, 3)


def test_guess_grid() -> None:
    grid = B.guess_grid(100)
    assert (0, 0) not in grid and (5, 5) in grid and (50, 50) in grid
    assert all(0 < a + b <= 100 for a, b in grid)


def test_best_bound_separated_vs_random() -> None:
    rng = np.random.default_rng(0)
    inc = rng.random(1000) < 0.5
    best = B.best_one_run_bound(inc + 0.0, inc, delta=1e-5)
    assert best["epsilon_lb"] > 2 and best["v"] == best["r"]
    n = len(best["grid"])
    assert best["per_test_confidence"] == pytest.approx(1 - 0.05 / n)
    wider = B.best_one_run_bound(inc + 0.0, inc, delta=1e-5, family_size=2 * n)
    assert wider["epsilon_lb"] < best["epsilon_lb"]
    noise = B.best_one_run_bound(rng.normal(size=1000), inc, delta=1e-5)
    assert noise["epsilon_lb"] < 0.3


# ---------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize(
    ("k", "n", "alpha"), [(0, 10, 0.05), (3, 10, 0.05), (10, 10, 0.1), (57, 200, 0.01)]
)
def test_clopper_pearson_against_beta_quantiles(k: int, n: int, alpha: float) -> None:
    lo, hi = B.clopper_pearson(k, n, alpha)
    assert lo == (0.0 if k == 0 else pytest.approx(stats.beta.ppf(alpha / 2, k, n - k + 1)))
    assert hi == (1.0 if k == n else pytest.approx(stats.beta.ppf(1 - alpha / 2, k + 1, n - k)))
    assert lo <= k / n <= hi


def test_clopper_pearson_textbook_edges() -> None:
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n).
    assert B.clopper_pearson(0, 10, 0.05)[1] == pytest.approx(1 - 0.025**0.1)
    assert B.clopper_pearson(10, 10, 0.05)[0] == pytest.approx(0.025**0.1)


def test_epsilon_from_rates() -> None:
    assert B.epsilon_from_rates(0.5, 0.05, 0.0) == pytest.approx(math.log(10))
    assert B.epsilon_from_rates(0.99, 0.5, 0.0) == pytest.approx(math.log(0.5 / 0.01))
    assert B.epsilon_from_rates(0.3, 0.3, 0.0) == 0.0
    assert B.epsilon_from_rates(0.5, 0.05, 0.1) == pytest.approx(math.log(0.4 / 0.05))


def test_tpr_fpr_bound() -> None:
    rng = np.random.default_rng(1)
    sep = B.tpr_fpr_epsilon_lower_bound(np.ones(400), np.zeros(400), 1e-5)
    # 200 held-out per group, all separated: TPR_lo = 0.025^(1/200), FPR_hi = 1 - that.
    edge = 0.025 ** (1 / 200)
    assert sep["epsilon_lb"] == pytest.approx(math.log((edge - 1e-5) / (1 - edge)), rel=1e-6)
    assert sep["threshold"] == 1.0 and sep["tpr"] == 1.0 and sep["fpr"] == 0.0
    assert sep["n_in"] == 200 and sep["n_out"] == 200
    same = B.tpr_fpr_epsilon_lower_bound(rng.normal(size=400), rng.normal(size=400), 1e-5)
    assert same["epsilon_lb"] < 0.5


# ---------------------------------------------------------------- membership attack


def test_attack_perfect_and_chance() -> None:
    perfect = A.membership_attack(np.array([2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 1.0]))
    assert perfect["auc"] == 1.0 and perfect["tpr@fpr0.01"] == 1.0
    same = A.membership_attack(np.zeros(50), np.zeros(50))
    assert same["auc"] == 0.5 and same["tpr@fpr0.01"] == 0.0
    rng = np.random.default_rng(0)
    iid = A.membership_attack(rng.normal(size=4000), rng.normal(size=4000))
    assert iid["auc"] == pytest.approx(0.5, abs=0.03)


def test_attack_hand_example() -> None:
    # pairs (member, non): (3,2) (3,0) (1,2) (1,0) -> 3 of 4 won.
    res = A.membership_attack(np.array([3.0, 1.0]), np.array([2.0, 0.0]))
    assert res["auc"] == pytest.approx(0.75)
    assert res["roc_fpr"] == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert res["roc_tpr"] == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert res["tpr@fpr0.01"] == 0.5


# ---------------------------------------------------------------- ledger check


def make_ledger(budget: float = 8.0, delta: float = 1e-3) -> dict[str, Any]:
    led = Ledger(budget, delta)
    led.record(1, "train", [(1.2, 0.1, 10), (5.0, 1.0, 1)])
    led.record(2, "train", [(1.2, 0.1, 10)])
    return led.to_json()


def history_for(led: dict[str, Any], node: int, eps: dict[int, float]) -> list[dict[str, Any]]:
    return [
        {"round": rnd, "clients": [{"node": node, "epsilon": e, "sigma": 1.2, "sample-rate": 0.1}]}
        for rnd, e in eps.items()
    ]


def true_eps(led: dict[str, Any]) -> dict[int, float]:
    ev = [(r["sigma"], r["q"], r["steps"]) for r in led["rounds"]]
    return {1: epsilon_of(ev[:2], delta=led["delta"]), 2: epsilon_of(ev, delta=led["delta"])}


def test_ledger_check_agrees_and_rdp_above_prv() -> None:
    led = make_ledger()
    res = A.ledger_check({"client-0": led}, reported_epsilons={"client-0": true_eps(led)})
    c = res["clients"]["client-0"]
    assert res["ok"], c["flags"]
    assert c["epsilon_prv"] == pytest.approx(led["epsilon"])
    assert c["epsilon_rdp"] >= c["epsilon_prv"]


def test_ledger_check_flags_tampered_report_and_stored_value() -> None:
    led = make_ledger()
    eps = true_eps(led)
    res = A.ledger_check({"a": led}, reported_epsilons={"a": {**eps, 2: eps[2] - 0.5}})
    assert not res["ok"] and any(
        "mismatch: round 2 reported" in f for f in res["clients"]["a"]["flags"]
    )
    led["rounds"][-1]["epsilon"] = 0.1
    res = A.ledger_check({"a": led}, reported_epsilons={"a": eps})
    assert not res["ok"] and any("ledger stores" in f for f in res["clients"]["a"]["flags"])


def test_ledger_check_flags_overrun_and_unreported() -> None:
    led = make_ledger()
    led["budget_epsilon"] = led["epsilon"] / 2
    res = A.ledger_check({"a": led, "b": make_ledger()}, reported_epsilons={"a": true_eps(led)})
    assert any(f.startswith("overrun") for f in res["clients"]["a"]["flags"])
    assert any(f.startswith("unreported") for f in res["clients"]["b"]["flags"])


def test_pair_reports_by_mechanism_not_by_epsilon() -> None:
    led, other = make_ledger(), make_ledger()
    for r in other["rounds"]:
        if r["sigma"] == 1.2:
            r["sigma"] = 0.9
    eps = true_eps(led)
    hist = history_for(led, 7, {1: eps[1], 2: 99.0})  # tampered value still pairs with `a`
    paired, unmatched = A.pair_reports({"a": led, "b": other}, hist)
    assert paired == {"a": {1: eps[1], 2: 99.0}} and unmatched == []
    paired, unmatched = A.pair_reports({"b": other}, hist)
    assert paired == {} and unmatched == ["7"]


def test_pair_reports_by_published_label_and_last_report_of_a_round() -> None:
    """Local-DP replies carry no sigma or sample rate (they give n away): sites are paired by
    the label they publish, and a round's noised-evaluation report is its last word."""
    led, other = make_ledger(), make_ledger()
    eps = true_eps(led)
    hist = [
        {
            "round": rnd,
            "clients": [{"node": 7, "label": "site-a", "ledger-epsilon": e - 0.01}],
            "eval_privacy": [{"node": 7, "label": "site-a", "ledger-epsilon": e}],
        }
        for rnd, e in eps.items()
    ]
    ledgers = {"site-a.0123abcd": led, "site-b": other}
    paired, unmatched = A.pair_reports(ledgers, hist)
    assert paired == {"site-a.0123abcd": eps} and unmatched == []
    assert (
        A.ledger_check(ledgers, reported_epsilons=paired)["clients"]["site-a.0123abcd"]["flags"]
        == []
    )
    hist[1]["eval_privacy"][0]["ledger-epsilon"] = eps[2] + 0.5  # a tampered report still pairs
    paired, _ = A.pair_reports(ledgers, hist)
    res = A.ledger_check(ledgers, reported_epsilons=paired)
    flags = res["clients"]["site-a.0123abcd"]["flags"]
    assert any("mismatch: round 2 reported" in f for f in flags)
    paired, unmatched = A.pair_reports({"site-b": other}, hist)  # no ledger has its label
    assert paired == {} and unmatched == ["7"]
