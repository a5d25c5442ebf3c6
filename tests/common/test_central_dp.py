"""common.privacy.central: Flower's fixed-size sampling accounted vs exact references."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from common.privacy.accounting import PrivacyError
from common.privacy.central import calibrate_central, central_epsilon, round_release


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with sensitivity/std ratio `mu` (Balle & Wang 2018).

    ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``, solved for eps by bisection.
    """

    def d(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    lo, hi = 0.0, 1.0
    while d(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize(("sigma", "rounds"), [(2.0, 1), (4.0, 5), (8.0, 20)])
def test_full_participation_is_a_gaussian_with_twice_the_sensitivity(
    sigma: float, rounds: int
) -> None:
    # Every client in every round: R Gaussian releases of the clipped sum, replace-one
    # sensitivity 2C, noise sigma*C -> one Gaussian with mu = sqrt(R) * 2 / sigma.
    n, delta = 10, 1e-5
    release = round_release(sigma, sampled=n, aggregated=n)
    assert release == (sigma / 2, n)
    got = central_epsilon([release] * rounds, n_clients=n, delta=delta)
    exact = exact_gaussian_epsilon(math.sqrt(rounds) * 2 / sigma, delta)
    assert exact <= got <= 1.35 * exact  # RDP is an upper bound, and not a loose one here


def test_sampling_fewer_clients_only_helps_and_rounds_accumulate() -> None:
    n, delta, sigma = 1000, 1e-3, 1.0
    eps = [
        central_epsilon(
            [round_release(sigma, sampled=m, aggregated=m)] * 5,  # type: ignore[list-item]
            n_clients=n,
            delta=delta,
        )
        for m in (10, 100, 1000)
    ]
    assert eps[0] < eps[1] < eps[2]
    one = round_release(sigma, sampled=100, aggregated=100)
    per_round = [central_epsilon([one] * r, n_clients=n, delta=delta) for r in (1, 2, 4)]  # type: ignore[list-item]
    assert per_round[0] < per_round[1] < per_round[2]


def test_a_round_with_dropped_updates_is_accounted_with_weaker_noise() -> None:
    full = round_release(2.0, sampled=10, aggregated=10)
    short = round_release(2.0, sampled=10, aggregated=5)
    assert short == (0.5, 10)  # noise sigma*C/m on a mean over k: multiplier sigma*k/(2m)
    e_full = central_epsilon([full], n_clients=100, delta=1e-3)  # type: ignore[list-item]
    e_short = central_epsilon([short], n_clients=100, delta=1e-3)  # type: ignore[list-item]
    assert e_short > e_full
    assert round_release(2.0, sampled=10, aggregated=0) is None  # nothing released
    with pytest.raises(PrivacyError, match="aggregated 11"):
        round_release(2.0, sampled=10, aggregated=11)


def test_no_noise_is_infinite_and_no_rounds_is_zero() -> None:
    assert central_epsilon([(0.0, 5)], n_clients=10, delta=1e-3) == math.inf
    assert central_epsilon([], n_clients=10, delta=1e-3) == 0.0
    with pytest.raises(PrivacyError, match="sample size"):
        central_epsilon([(1.0, 11)], n_clients=10, delta=1e-3)


@pytest.mark.parametrize(("n", "m", "rounds", "target"), [(4, 4, 3, 8.0), (100, 10, 5, 2.0)])
def test_calibration_meets_the_target_tightly(n: int, m: int, rounds: int, target: float) -> None:
    sigma = calibrate_central(target_epsilon=target, n_clients=n, per_round=m, rounds=rounds,
                              delta=1 / n)  # fmt: skip
    release = round_release(sigma, sampled=m, aggregated=m)
    spent = central_epsilon([release] * rounds, n_clients=n, delta=1 / n)  # type: ignore[list-item]
    assert target - 0.1 <= spent <= target
