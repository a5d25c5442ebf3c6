"""Accounting for central DP-FedAvg as Flower runs it: fixed-size client samples.

Flower's strategies sample exactly ``m`` of the ``n`` connected clients per round, without
replacement, and `DifferentialPrivacyServerSideFixedClipping` clips every update to ``C``,
averages them and adds Gaussian noise of std ``sigma * C / m``. Poisson-sampling accountants
(Opacus') do not describe that sampler, so this module accounts it as what it is:

* neighbouring relation **replace-one** (the sampler fixes ``n``; one client's data replaced),
  for which the L2 sensitivity of the sum of clipped updates is ``2C``: the mechanism's noise
  multiplier relative to that sensitivity is ``sigma / 2``;
* sampling **without replacement**, ``m`` of ``n``: the RDP bound of Wang, Balle and
  Kasiviswanathan (AISTATS 2019, Thm. 27), through Flower's own `RdpAccountant` (which wraps
  Google's dp-accounting);
* a round that aggregated only ``k < m`` updates (failures, dropped replies) is released as
  ``current + (sum of the k clipped updates) / m`` (`server.wrappers.CentralRelease`): the
  denominator is the number *sampled*, not the data-dependent ``k``, so the sensitivity stays
  ``2C / m`` and the noise is topped up (`add_noise`) to ``sigma * C / m`` whenever fewer nodes
  were sampled than Flower's wrapper planned for.

Under replace-one, epsilon is roughly twice the add/remove-one epsilon of the same noise; the
reports say which relation they use.

The server's budget across runs is kept by `common.privacy.central_ledger.CentralLedger`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np
from dp_accounting import dp_event
from dp_accounting.privacy_accountant import NeighboringRelation as DpRelation
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp
from flwr.app import Array, ArrayRecord
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace

from common.privacy.accounting import PrivacyError, bisect_sigma

RELATION = "replace-one"
SAMPLING = "fixed-size sample without replacement (Flower's sampler)"

# One central round: (noise multiplier relative to the replace-one sensitivity, sample size).
Release = tuple[float, int]

# One accountant event: (multiplier as in `Release`, sample size m, population size n).
CentralEvent = tuple[float, int, int]


def round_release(sigma: float, *, sampled: int, aggregated: int) -> Release | None:
    """The accountant event of one round; None if nothing was released (no update kept)."""
    if aggregated <= 0:
        return None
    if sampled < 1 or aggregated > sampled:
        raise PrivacyError(f"aggregated {aggregated} updates of {sampled} sampled clients")
    return (sigma * aggregated / (2.0 * sampled), sampled)


def add_noise(record: ArrayRecord, std: float) -> ArrayRecord:
    """A copy of `record` with independent N(0, std^2) on every value (Flower's own draw)."""
    arrays = [np.array(a, copy=True) for a in record.to_numpy_ndarrays()]
    if std > 0:
        add_gaussian_noise_inplace(arrays, std)
    return ArrayRecord({k: Array(v) for k, v in zip(record.keys(), arrays, strict=True)})


def central_epsilon(releases: Sequence[Release], *, n_clients: int, delta: float) -> float:
    """Epsilon (replace-one, at `delta`) after the given rounds; inf if any had no noise."""
    if not releases:
        return 0.0
    if any(mult <= 0 for mult, _ in releases):
        return math.inf
    if any(not 1 <= m <= n_clients for _, m in releases):
        raise PrivacyError(f"a sample size is outside 1..{n_clients}: {list(releases)}")
    return composed_epsilon([(mult, m, n_clients) for mult, m in releases], delta=delta)


def composed_epsilon(events: Sequence[CentralEvent], *, delta: float) -> float:
    """Epsilon (replace-one, at `delta`) of `events` composed, each with its own ``q = m / n``.

    The same RDP accountant as Flower's `RdpAccountant` (dp-accounting's, default orders,
    `SampledWithoutReplacementDpEvent` of a `GaussianDpEvent`), which only takes one
    population size; for one ``n`` the result is bit-identical to composing the events there
    one by one. Each distinct event's RDP curve is computed once and added per occurrence.
    """
    if isinstance(delta, bool) or not (math.isfinite(delta) and 0 < delta < 1):
        raise ValueError(f"`delta` must be in (0, 1), got {delta}.")
    for mult, m, n in events:
        if not (is_int(m) and is_int(n) and is_real(mult) and math.isfinite(mult)):
            raise ValueError(f"invalid central accountant event (mult={mult!r}, m={m!r}, n={n!r})")
        if not 1 <= m <= n:
            raise PrivacyError(f"sample size {m} is outside 1..{n} (population size)")
    if not events:
        return 0.0
    if any(mult <= 0 for mult, _, _ in events):
        return math.inf
    total = np.zeros(len(dp_rdp.DEFAULT_RDP_ORDERS), dtype=np.float64)
    for mult, m, n in events:
        total += _event_rdp(float(mult), int(m), int(n))
    return float(dp_rdp.compute_epsilon(dp_rdp.DEFAULT_RDP_ORDERS, total, delta)[0])


@functools.lru_cache(maxsize=4096)
def _event_rdp(mult: float, m: int, n: int) -> np.ndarray:
    """RDP curve (at dp-accounting's default orders) of one event; read-only, cached."""
    acc = dp_rdp.RdpAccountant(neighboring_relation=DpRelation.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(n, m, dp_event.GaussianDpEvent(mult)))
    rdp = acc.rdp
    rdp.setflags(write=False)
    return rdp


def is_int(x: object) -> TypeGuard[int | np.integer[Any]]:
    """Whether `x` is an integer (Python or NumPy), not a bool."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def is_real(x: object) -> TypeGuard[float | int | np.floating[Any] | np.integer[Any]]:
    """Whether `x` is a real number (Python or NumPy float or integer), not a bool."""
    return isinstance(x, float | int | np.floating | np.integer) and not isinstance(x, bool)


def calibrate_central(
    *, target_epsilon: float, n_clients: int, per_round: int, rounds: int, delta: float
) -> float:
    """Smallest Flower noise multiplier whose `rounds` full rounds stay <= `target_epsilon`."""
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"`target_epsilon` must be finite and > 0, got {target_epsilon}.")

    def eps(sigma: float) -> float:
        release = round_release(sigma, sampled=per_round, aggregated=per_round)
        assert release is not None
        return central_epsilon([release] * rounds, n_clients=n_clients, delta=delta)

    return bisect_sigma(eps, target_epsilon)
