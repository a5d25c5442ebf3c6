"""DP popularity and DP-EASE: sensitivity against a brute-force reference, accounting, an attack."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.config.run import RunConfig
from common.evaluation.baseline_runs import dp_target_of, run_dp_baselines
from common.evaluation.dp_baselines import (
    DPEase,
    DPPopularity,
    DPTarget,
    dp_report,
    split_sigmas,
    user_popularity,
)
from common.privacy.accounting import ZERO_NOISE_ENV, PrivacyError, epsilon_of
from common.privacy.cooc import gram_sensitivity, normalised_gram, release_gram
from common.task import Corpus


def _users(rng: np.random.Generator, n_users: int = 25, n_items: int = 12) -> list[np.ndarray]:
    """Random histories with repeats, one empty user and one single-item user."""
    out = [rng.integers(0, n_items, size=rng.integers(1, 9)) for _ in range(n_users)]
    return [np.zeros(0, np.int64), np.array([3]), *out]


def _reference_gram(train: list[np.ndarray], items: np.ndarray) -> np.ndarray:
    """Slow, obviously correct: each 0/1 row on `items`, divided by its norm, outer product."""
    g = np.zeros((items.size, items.size))
    for hist in train:
        x = np.array([1.0 if it in set(hist.tolist()) else 0.0 for it in items])
        if x.sum() > 0:
            v = x / math.sqrt(x.sum())
            g += np.outer(v, v)
    return g


def test_gram_matches_reference_and_one_user_moves_it_by_at_most_one() -> None:
    rng = np.random.default_rng(0)
    train, n_items = _users(rng), 12
    items = np.array([7, 0, 3, 5, 11, 2])
    full = normalised_gram(train, n_items, items)
    np.testing.assert_allclose(full, _reference_gram(train, items), atol=1e-12)
    changes, raw = [], []
    for u in range(len(train)):
        rest = train[:u] + train[u + 1 :]
        changes.append(np.linalg.norm(full - _reference_gram(rest, items)))
        x = np.isin(items, train[u]).astype(float)
        raw.append(np.linalg.norm(np.outer(x, x)))  # what an unnormalised row would move
    assert max(changes) <= gram_sensitivity() + 1e-9
    assert max(changes) == pytest.approx(1.0)  # tight: any user with an item in the set
    assert changes[0] == 0.0  # the empty user
    assert max(raw) > 1.5  # without the normalisation the bound above would fail


def test_unnormalised_gram_would_fail_the_bound() -> None:
    """The same brute-force check has power: the plain X^T X moves by far more than 1."""
    train = [np.array([0, 1, 2, 3]), np.array([1, 2])]
    items = np.arange(4)
    plain = sum(np.outer(np.isin(items, h), np.isin(items, h)).astype(float) for h in train)
    without = np.outer(np.isin(items, train[1]), np.isin(items, train[1])).astype(float)
    assert np.linalg.norm(plain - without) == pytest.approx(4.0)
    ours = normalised_gram(train, 4, items) - normalised_gram(train[1:], 4, items)
    assert np.linalg.norm(ours) == pytest.approx(1.0)


def test_popularity_sensitivity_is_one() -> None:
    rng = np.random.default_rng(1)
    train, n_items = _users(rng), 12
    h = user_popularity(train, n_items)
    worst = max(
        np.linalg.norm(h - user_popularity(train[:u] + train[u + 1 :], n_items))
        for u in range(len(train))
    )
    assert worst == pytest.approx(1.0)


@pytest.mark.parametrize("eps", [2.0, 8.0])
def test_composed_releases_stay_within_target(eps: float) -> None:
    target = DPTarget(eps, 1e-5)
    sigmas = split_sigmas(target, [0.2, 0.8])
    spent = epsilon_of([(s, 1.0, 1) for s in sigmas], delta=1e-5)
    assert eps - 0.05 < spent <= eps
    assert sigmas[0] == pytest.approx(2 * sigmas[1])  # 1/sigma^2 split 1:4
    # Either release alone at the smaller noise would overspend: both are needed in the count.
    assert epsilon_of([(min(sigmas) * 0.9, 1.0, 1)] * 2, delta=1e-5) > eps


def test_baselines_account_every_release() -> None:
    rng = np.random.default_rng(2)
    train, target = _users(rng), DPTarget(4.0, 1e-5)
    ease = DPEase.fit(train, 12, target, n_max=6)
    pop = DPPopularity.fit(train, 12, target)
    assert len(ease.events) == 2 and len(pop.events) == 1
    for events in (ease.events, pop.events):
        assert dp_report(events, target)["epsilon"] <= 4.0
    with pytest.raises(PrivacyError, match="spends epsilon"):
        dp_report([*ease.events, *pop.events], target)  # both together exceed one budget
    with pytest.raises(PrivacyError):
        DPTarget(math.inf, 1e-5)


def _membership_accuracy(sigma: float, trials: int, rng: np.random.Generator) -> float:
    """Best-test accuracy of 'was user v in?' from the released Gram (balanced, threshold 1/2)."""
    rest = [np.array([0, 1]), np.array([1, 2, 3]), np.array([4])]
    target_user = np.array([0, 2, 4])
    items = np.arange(5)
    g_out = normalised_gram(rest, 5, items)
    g_in = normalised_gram([*rest, target_user], 5, items)
    v = np.isin(items, target_user) / math.sqrt(3)
    direction = np.outer(v, v)
    right = 0
    for t in range(trials):
        member = t % 2 == 0
        released = release_gram(g_in if member else g_out, sigma, rng)
        stat = float(np.sum((released - g_out) * direction))  # N(1, s^2) in, N(0, s^2) out
        right += (stat > 0.5) == member
    return right / trials


def test_attack_zero_noise_reveals_the_user_noise_hides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    eps = 0.5
    (sigma,) = split_sigmas(DPTarget(eps, 1e-5), [1.0])
    monkeypatch.setenv(ZERO_NOISE_ENV, "1")
    with pytest.warns(RuntimeWarning, match="DP NOISE IS DISABLED"):
        assert _membership_accuracy(sigma, 20, rng) == 1.0
    monkeypatch.delenv(ZERO_NOISE_ENV)
    acc = _membership_accuracy(sigma, 4000, rng)
    # Gaussian, multiplier sigma: best accuracy Phi(1/(2 sigma)), about 0.52 here.
    assert abs(acc - 0.5) < 0.05
    assert acc <= math.exp(eps) / (1 + math.exp(eps)) + 1e-5  # the DP bound on any test


def test_runner_on_the_tiny_corpus(corpus: Corpus, cfg: RunConfig) -> None:
    target = DPTarget(8.0, 1e-3)
    res = run_dp_baselines(corpus, target, seed=0, n_grid=(10, 20), lambda_grid=(1.0, 10.0))
    assert set(res) == {"dp-popularity", "dp-ease"}
    e = res["dp-ease"]
    assert (e["n_items_used"], e["lambda"]) in {(10, 1.0), (10, 10.0), (20, 1.0), (20, 10.0)}
    best = max(e["valid_grid"], key=lambda g: (g["valid_hr@10"], g["valid_ndcg@10"]))
    assert (best["n"], best["lambda"]) == (e["n_items_used"], e["lambda"])
    for r in res.values():
        assert 0.0 <= r["hr@10"] <= 1.0
        assert r["privacy"]["epsilon"] <= 8.0 and r["privacy"]["delta"] == 1e-3
    assert dp_target_of(cfg, {"mode": "none", "epsilon": math.inf}, label="x") is None
    assert dp_target_of(cfg, {"mode": "central", "epsilon": 2.0, "delta": 1e-5}, label="x") is None
    got = dp_target_of(cfg, {"mode": "local", "epsilon": 3.9, "delta": 1e-5}, label="x")
    assert got is not None and (got.epsilon, got.delta) == (3.9, 1e-5)
