"""Privacy accounting: delta rules, epsilon of events, noise calibration, noise seeds."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import secrets
import warnings
from collections.abc import Callable, Sequence

from opacus.accountants import create_accountant

# One accountant event: (noise multiplier, sample rate, number of steps), as in Opacus' history.
Event = tuple[float, float, int]

ACCOUNTANTS = ("prv", "rdp")


class PrivacyError(RuntimeError):
    """Privacy accounting cannot proceed safely (budget exceeded, corrupt ledger, ...)."""


ZERO_NOISE_ENV = "FEDREC_TEST_ONLY_ZERO_NOISE"


def test_only_zero_noise() -> bool:
    """Whether ``$FEDREC_TEST_ONLY_ZERO_NOISE`` is ``1``: DP noise is then zeroed. TEST ONLY.

    This BREAKS PRIVACY ON PURPOSE: DP-SGD steps and the popularity histogram are released
    without noise, while planning, accounting, ledgers and reports still claim the usual
    epsilon. It exists only so that a test can show the privacy audit has power (it must
    report FAIL on such a run); never set it anywhere else. Every use warns loudly.
    """
    if os.environ.get(ZERO_NOISE_ENV, "") != "1":
        return False
    warnings.warn(
        f"{ZERO_NOISE_ENV}=1: DP NOISE IS DISABLED (test only); this run is NOT private and "
        "its reported epsilon is false",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


# Every figure is also reported at this stricter delta.
REPORT_DELTA = 1e-6


def noise_seed(*, reproducible: bool, label: str) -> int:
    """Seed of one release's noise and sampling: 63 bits of OS entropy (`secrets`).

    Nothing the server knows (run config, site name, round) predicts it, and two runs never
    share noise. Only with ``reproducible=True`` (`dp.reproducible-noise`, a simulation switch
    that deployed sites refuse) is it a hash of `label`, which makes the noise predictable by
    anyone who knows `label`: such runs are marked not private against the server.
    """
    if reproducible:  # the rule of the first version, so reproducible runs match its figures
        return int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "little")
    return secrets.randbits(63)


def default_delta(protected_users: int, max_delta: float) -> float:
    """min(`max_delta`, 1/(10 x users protected)), rounded down to a power of ten.

    1/n would admit a mechanism that publishes one whole user; the rounding makes the delta a
    site reports reveal its user count only to within a factor of ten.
    """
    if protected_users < 1:
        raise ValueError(f"`protected_users` must be >= 1, got {protected_users}.")
    if not 0 < max_delta < 1:
        raise ValueError(f"`max_delta` must be in (0, 1), got {max_delta}.")
    bound = min(max_delta, 1.0 / (10 * protected_users))
    return float(10.0 ** math.floor(math.log10(bound) + 1e-12))


def check_delta(delta: float, protected_users: int) -> None:
    """Raise `PrivacyError` if `delta` is above 1/(10 x users protected)."""
    if delta > 1.0 / (10 * protected_users):
        raise PrivacyError(
            f"delta {delta:g} is above 1/(10 x users protected) for this party's users; "
            "such a delta admits releasing a whole user"
        )


def epsilon_of(events: Sequence[Event], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon after composing `events` with Opacus' accountant `accountant` at `delta`.

    Events with noise multiplier 0 (no DP) give ``inf``; no events give 0.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"`accountant` must be one of {ACCOUNTANTS}, got {accountant!r}.")
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1), got {delta}.")
    for sigma, q, steps in events:
        if not (math.isfinite(sigma) and sigma >= 0 and 0 <= q <= 1 and steps >= 0):
            raise ValueError(f"invalid accountant event (sigma={sigma}, q={q}, steps={steps})")
    kept = tuple((float(s), float(q), int(n)) for s, q, n in events if n > 0 and q > 0)
    if not kept:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in kept):
        return math.inf
    return _epsilon(kept, delta, accountant)


@functools.lru_cache(maxsize=1024)
def _epsilon(events: tuple[Event, ...], delta: float, accountant: str) -> float:
    """`epsilon_of` proper, memoised.

    A site's ledger asks for the same history several times a call (budget check, record,
    report), and each PRV evaluation takes about a second.
    """
    acc = create_accountant(accountant)
    acc.history = list(events)
    with warnings.catch_warnings():
        # PRV evaluates log(1 - q) at q = 1 (full-batch release); the result is still exact.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="opacus.*")
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_events: Sequence[Event] = (),
    accountant: str = "prv",
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier whose `steps` at `sample_rate` after `prior_events` stay <= target.

    Binary search over sigma with Opacus' accountant (the same one the ledger uses), so the
    planned run ends at most `tolerance` below `target_epsilon` and never above it.
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"`target_epsilon` must be finite and > 0, got {target_epsilon}.")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"`sample_rate` must be in (0, 1], got {sample_rate}.")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}.")
    events = tuple((float(s), float(q), int(n)) for s, q, n in prior_events)
    return _calibrate(target_epsilon, delta, sample_rate, steps, events, accountant, tolerance)


@functools.lru_cache(maxsize=256)
def _calibrate(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_events: tuple[Event, ...],
    accountant: str,
    tolerance: float,
) -> float:
    """`calibrate_noise` proper, memoised: a pure function of its arguments.

    A site plans at every call of a run (each PRV bisection takes seconds); the same
    arguments always give the same sigma, so a process computes each plan once.
    """

    def eps(sigma: float) -> float:
        return epsilon_of(
            [*prior_events, (sigma, sample_rate, steps)], delta=delta, accountant=accountant
        )

    if epsilon_of(prior_events, delta=delta, accountant=accountant) >= target_epsilon:
        raise PrivacyError(
            f"the prior events alone spend epsilon >= {target_epsilon}; nothing left for training"
        )
    return bisect_sigma(eps, target_epsilon, tolerance=tolerance)


def bisect_sigma(
    eps: Callable[[float], float], target_epsilon: float, *, tolerance: float = 0.01
) -> float:
    """Smallest noise multiplier (to ~1e-3) with ``eps(sigma) <= target_epsilon``.

    `eps` must decrease in sigma. The answer is never above the target and at most
    `tolerance` below it (or within 1e-3 in sigma).
    """
    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            raise PrivacyError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while hi - lo > 1e-3 and (eps(hi) < target_epsilon - tolerance or hi - lo > 0.05):
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_sigma_for(epsilon: float, *, delta: float, accountant: str = "prv") -> float:
    """Noise multiplier of a single full-participation Gaussian release with the given budget."""
    return calibrate_noise(
        target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )
