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
* a round that aggregated only ``k < m`` updates (failures, dropped replies) gets noise
  ``sigma * C / m`` from Flower on a mean over ``k``, whose sensitivity is ``2C / k``: the
  server tops the noise up to ``sigma * C / k`` (`top_up_noise`) so that the round keeps its
  planned multiplier; a round released without the top-up is counted as ``sigma * k / (2m)``.

Under replace-one, epsilon is roughly twice the add/remove-one epsilon of the same noise; the
reports say which relation they use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from common.privacy import PrivacyError, bisect_sigma

RELATION = "replace-one"
SAMPLING = "fixed-size sample without replacement (Flower's sampler)"

# One central round: (noise multiplier relative to the replace-one sensitivity, sample size).
Release = tuple[float, int]


def round_release(sigma: float, *, sampled: int, aggregated: int) -> Release | None:
    """The accountant event of one round; None if nothing was released (no update kept)."""
    if aggregated <= 0:
        return None
    if sampled < 1 or aggregated > sampled:
        raise PrivacyError(f"aggregated {aggregated} updates of {sampled} sampled clients")
    return (sigma * aggregated / (2.0 * sampled), sampled)


def top_up_noise(
    record: ArrayRecord, *, sigma: float, clip: float, sampled: int, aggregated: int
) -> ArrayRecord:
    """Add the noise that makes a mean over `aggregated` < `sampled` updates as private as planned.

    Flower added std ``sigma * C / m``; the mean over ``k`` needs ``sigma * C / k``; the missing
    independent Gaussian has std ``sigma * C * sqrt(1/k^2 - 1/m^2)`` (variances add).
    """
    if not 0 < aggregated <= sampled:
        raise PrivacyError(f"aggregated {aggregated} updates of {sampled} sampled clients")
    extra = sigma * clip * math.sqrt(max(0.0, 1 / aggregated**2 - 1 / sampled**2))
    arrays = [np.array(a, copy=True) for a in record.to_numpy_ndarrays()]
    if extra > 0:
        add_gaussian_noise_inplace(arrays, extra)
    return ArrayRecord({k: Array(v) for k, v in zip(record.keys(), arrays, strict=True)})


def central_epsilon(releases: Sequence[Release], *, n_clients: int, delta: float) -> float:
    """Epsilon (replace-one, at `delta`) after the given rounds; inf if any had no noise."""
    if not releases:
        return 0.0
    if any(mult <= 0 for mult, _ in releases):
        return math.inf
    if any(not 1 <= m <= n_clients for _, m in releases):
        raise PrivacyError(f"a sample size is outside 1..{n_clients}: {list(releases)}")
    acc = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=n_clients,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
        )
    )
    for mult, m in releases:
        acc.compose(
            GaussianPrivacyEvent(noise_multiplier=mult, sample_size=m, population_size=n_clients)
        )
    return float(acc.get_epsilon(delta))


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
