"""User-level DP baselines: DP popularity and DP-EASE (Gaussian releases, Opacus-accounted).

Both protect each user under add/remove-one-user neighbouring data sets (the unit and the
relation of the model's local DP-SGD), and each is accounted on its own at the (epsilon,
delta) of the model it is compared with: every release is a full-participation Gaussian
mechanism, composed with `common.privacy.accounting.epsilon_of` (Opacus' accountant).

Mechanisms (X: a user's binary row of distinct training items, v = x / ||x||_2):

* **DP popularity**: ``h = sum_u v_u`` plus ``N(0, sigma^2)`` per item. One user adds or
  removes one vector of L2 norm 1 (or 0 without items): L2 sensitivity 1.
* **DP-EASE** (two releases): (1) the DP popularity histogram above, with noise
  ``sigma_pop``, which fixes the ``n_max`` most popular items (its order is public from then
  on); (2) the per-user-normalised Gram matrix ``G = sum_u v_u v_u^T`` of those items (v_u
  restricted to them and scaled to unit norm there), released as ``G + (E + E^T) / 2`` with
  ``E`` iid ``N(0, sigma_gram^2)`` per entry. See `gram_sensitivity` for why sensitivity 1.
  EASE on the top ``n`` <= ``n_max`` items for each lambda is post-processing of these two
  releases (the leading block of the released matrix).

Selection (honest caveat): ``n`` and lambda are chosen by HR@10 on the validation item, which
is private data; that choice is *not* accounted (standard in DP benchmarks, but strictly it
leaks a little about the validation items). The test item is read once, for the chosen pair.

Noise: a fresh OS-entropy seed per release (`common.privacy.accounting.noise_seed`); only with
``reproducible=True`` (the simulation switch `dp.reproducible-noise`) a hash of a label.
`$FEDREC_TEST_ONLY_ZERO_NOISE` zeroes it, as for every other release (tests only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.evaluation.baselines import interaction_matrix
from common.privacy.accounting import Event, PrivacyError, bisect_sigma, epsilon_of, noise_seed
from common.privacy.cooc import (
    ease_weights,
    gaussian_release,
    normalised_gram,
    psd_projection,
    release_gram,
    unit_rows,
)

# Grids searched on the validation item (n is capped at the catalogue size).
N_GRID = (50, 100, 200, 500, 1000)
LAMBDA_GRID = (1.0, 10.0, 50.0, 100.0, 500.0, 1000.0)
# Share of DP-EASE's budget (in 1/sigma^2, which adds up exactly for Gaussians) spent on the
# popularity release that picks the items; the Gram matrix gets the rest. Fixed, not tuned.
POP_SHARE = 0.2


@dataclass(frozen=True)
class DPTarget:
    """The budget a DP baseline must stay within: the model run's epsilon and delta."""

    epsilon: float
    delta: float
    accountant: str = "prv"
    reproducible: bool = False  # noise from a label hash (simulation only): not private
    label: str = "dp-baseline"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PrivacyError(f"a DP baseline needs a finite epsilon > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise PrivacyError(f"a DP baseline needs delta in (0, 1), got {self.delta}")

    def rng(self, stream: str) -> np.random.Generator:
        """The generator of one release (OS entropy unless `reproducible`)."""
        seed = noise_seed(reproducible=self.reproducible, label=f"{self.label}/{stream}")
        return np.random.default_rng(seed)


def user_popularity(train: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """``sum_u v_u``: each user's distinct training items as one unit-L2-norm vector."""
    return np.asarray(unit_rows(train, n_items).sum(axis=0)).ravel()


def split_sigmas(target: DPTarget, shares: Sequence[float]) -> list[float]:
    """Noise multipliers ``s / sqrt(share_k)`` of releases composed to at most `target`.

    ``s`` is bisected with the accountant on the composed events (`bisect_sigma`), so the
    composition's epsilon at ``target.delta`` is <= ``target.epsilon`` and within ~0.01 of it.
    """
    if not shares or any(not 0 < s <= 1 for s in shares) or sum(shares) > 1 + 1e-9:
        raise ValueError(f"budget shares must be in (0, 1] and sum to <= 1, got {list(shares)}")

    def eps(s: float) -> float:
        if s <= 0:
            return math.inf
        return epsilon_of(
            [(s / math.sqrt(w), 1.0, 1) for w in shares],
            delta=target.delta,
            accountant=target.accountant,
        )

    s = bisect_sigma(eps, target.epsilon)
    return [s / math.sqrt(w) for w in shares]


@dataclass
class DPPopularity:
    """DP most-popular: one Gaussian release of `user_popularity` (sensitivity 1)."""

    target: DPTarget
    n_items: int
    sigma: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, train: Sequence[np.ndarray], n_items: int, target: DPTarget) -> DPPopularity:
        """Calibrate sigma to `target` (one release) and release the histogram."""
        (sigma,) = split_sigmas(target, [1.0])
        hist = gaussian_release(user_popularity(train, n_items), sigma, target.rng("popularity"))
        return cls(target, n_items, sigma, hist)

    @property
    def events(self) -> list[Event]:
        """Accountant events of its releases."""
        return [(self.sigma, 1.0, 1)]

    def scores_for(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The noisy histogram for every history."""
        return np.tile(self.counts.astype(np.float32), (len(histories), 1))


@dataclass
class DPEase:
    """DP-EASE: a DP popularity release picks the `n_max` head items, one DP Gram release of them.

    `model(n, l2)` builds EASE on the top `n` items of the released Gram matrix, projected
    on the PSD cone first (post-processing: the noise can make it indefinite).
    """

    target: DPTarget
    n_items: int
    sigmas: tuple[float, float]  # (popularity, Gram)
    head: np.ndarray  # the n_max item indices, most popular (noisy) first
    pop: np.ndarray  # the noisy popularity histogram [n_items]
    gram: np.ndarray  # the noisy normalised Gram of `head`, PSD-projected

    @classmethod
    def fit(
        cls, train: Sequence[np.ndarray], n_items: int, target: DPTarget, *, n_max: int = 1000,
        pop_share: float = POP_SHARE,
    ) -> DPEase:  # fmt: skip
        """Both releases, their noise calibrated so the pair composes to `target`."""
        if n_max < 1:
            raise ValueError(f"`n_max` must be >= 1, got {n_max}")
        if not 0 < pop_share < 1:
            raise ValueError(f"`pop_share` must be in (0, 1), got {pop_share}")
        s_pop, s_gram = split_sigmas(target, [pop_share, 1.0 - pop_share])
        pop = gaussian_release(user_popularity(train, n_items), s_pop, target.rng("ease-pop"))
        head = np.argsort(-pop, kind="stable")[: min(n_max, n_items)]
        noisy = release_gram(normalised_gram(train, n_items, head), s_gram, target.rng("gram"))
        return cls(target, n_items, (s_pop, s_gram), head, pop, psd_projection(noisy))

    @property
    def events(self) -> list[Event]:
        """Accountant events of its two releases."""
        return [(self.sigmas[0], 1.0, 1), (self.sigmas[1], 1.0, 1)]

    def model(self, n: int, l2: float) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
        """Score function of EASE (`baselines.EASE`'s B) on the top `n` head items.

        Items outside the head rank below every head item, in noisy popularity order.
        """
        if not 1 <= n <= self.head.size or not l2 > 0:
            raise ValueError(f"need 1 <= n <= {self.head.size} and l2 > 0, got n={n}, l2={l2}")
        b = ease_weights(self.gram[:n, :n], l2)
        items = self.head[:n]
        pop = self.pop
        rank = (pop - pop.min()) / max(float(np.ptp(pop)), 1e-12)  # in [0, 1]
        base = (rank - 2.0 - 1e6).astype(np.float32)  # outside the head: far below

        def score(histories: Sequence[np.ndarray]) -> np.ndarray:
            x = interaction_matrix(histories, self.n_items, dtype=np.float64)[:, items]
            out = np.tile(base, (len(histories), 1))
            out[:, items] = np.asarray(x @ b, dtype=np.float32)
            return out

        return score


def dp_report(events: Sequence[Event], target: DPTarget, **extra: Any) -> dict[str, Any]:
    """The privacy figures stored with a DP baseline's metrics; raise if over budget."""
    eps = epsilon_of(events, delta=target.delta, accountant=target.accountant)
    if eps > target.epsilon * (1 + 1e-6):
        raise PrivacyError(f"DP baseline spends epsilon {eps:.4g} > target {target.epsilon:.4g}")
    return {
        "epsilon": eps,
        "target_epsilon": target.epsilon,
        "delta": target.delta,
        "accountant": target.accountant,
        "unit": "user (add/remove one)",
        "events": [list(e) for e in events],
        "reproducible_noise": target.reproducible,
        "selection": "n and lambda chosen on the validation item (selection not accounted)",
        **extra,
    }
