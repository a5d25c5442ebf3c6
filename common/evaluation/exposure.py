"""Item exposure and inequality: coverage, long tail, Gini, exposure profiles, summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def exposure(topk: np.ndarray, n_items: int) -> np.ndarray:
    """How often each of the ``n_items`` items appears in ``topk`` (padding -1 ignored)."""
    items = np.asarray(topk).ravel()
    return np.bincount(items[items >= 0], minlength=n_items).astype(np.float64)


def coverage_at_k(topk: np.ndarray, n_items: int) -> float:
    """Catalogue coverage: distinct items in ``topk`` (padding -1 ignored) / ``n_items``."""
    return float((exposure(topk, n_items) > 0).sum() / n_items) if n_items else 0.0


def long_tail_share(topk: np.ndarray, long_tail_items: np.ndarray) -> float:
    """Share of filled recommendation slots (entries >= 0) holding a long-tail item; 0.0 if none."""
    items = np.asarray(topk).ravel()
    items = items[items >= 0]
    return float(np.isin(items, long_tail_items).mean()) if items.size else 0.0


def long_tail_items(
    train: Sequence[np.ndarray], n_items: int, head_share: float = 0.2
) -> np.ndarray:
    """Sorted long-tail item indices: all but the ``round(head_share * n_items)`` most popular.

    Popularity = number of training interactions; ties are broken by the lower item index (it is
    in the head). Items never seen in training are in the tail.
    """
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"`head_share` must be in [0, 1], got {head_share}.")
    flat = (
        np.concatenate([np.asarray(t, np.int64).ravel() for t in train])
        if len(train)
        else np.zeros(0, np.int64)
    )
    counts = np.bincount(flat, minlength=n_items)
    by_pop = np.argsort(-counts, kind="stable")
    return np.sort(by_pop[int(round(head_share * n_items)) :])


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 = all equal, (n - 1)/n = all mass on one entry.

    ``G = 2 * sum_i i * x_(i) / (n * sum_i x_i) - (n + 1) / n`` with ``x_(1) <= ... <= x_(n)`` and
    i = 1..n, so gini([1, 1, 1, 1]) = 0 and gini([0, 0, 0, 1]) = 0.75. Empty or all-zero -> 0.0.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if np.isnan(x).any() or (x < 0).any():
        raise ValueError("`values` must be non-negative and not NaN.")
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.dot(np.arange(1, n + 1), x) / (n * total) - (n + 1) / n)


def exposure_gini(topk: np.ndarray, n_items: int) -> float:
    """:func:`gini` of how often each of the ``n_items`` items appears in ``topk``."""
    return gini(exposure(topk, n_items))


def exposure_profile(counts: np.ndarray) -> list[int]:
    """The non-zero per-item exposure counts, largest first: every curve and share follows.

    Lossless for concentration curves (items never shown are ``n_items - len(profile)``) and
    compact (at most the number of recommendation slots, usually a few hundred values).
    """
    c = np.asarray(counts, dtype=np.float64).ravel()
    if np.isnan(c).any() or (c < 0).any() or (c != np.round(c)).any():
        raise ValueError("`counts` must be non-negative integers.")
    return [int(x) for x in np.sort(c[c > 0])[::-1]]


def top_share(profile: Sequence[int], n_items: int, fractions: Sequence[float]) -> list[float]:
    """Share of all slots held by the most-exposed ``f * n_items`` items, for each ``f``.

    Linear interpolation between whole items; 0.0 everywhere if nothing was shown.
    """
    p = np.asarray(profile, dtype=np.float64)
    if n_items < max(len(p), 1):
        raise ValueError(f"profile has {len(p)} items but the catalogue only {n_items}")
    total = p.sum()
    if total == 0:
        return [0.0] * len(fractions)
    full = np.concatenate([[0.0], np.cumsum(p) / total, np.ones(n_items - len(p))])
    return [float(np.interp(f * n_items, np.arange(n_items + 1), full)) for f in fractions]


def exposure_summary(counts: np.ndarray, k: int) -> dict[str, Any]:
    """``coverage@K``, ``exposure_gini@K``, ``exposure_profile@K`` and ``n_items`` of counts."""
    counts = np.asarray(counts, dtype=np.float64)
    return {
        "n_items": int(counts.size),
        f"coverage@{k}": float((counts > 0).sum() / counts.size) if counts.size else 0.0,
        f"exposure_gini@{k}": gini(counts),
        f"exposure_profile@{k}": exposure_profile(counts),
    }


def distribution_summary(values: np.ndarray) -> dict[str, float]:
    """Per-client fairness summary: mean, std (ddof 0), worst10, gini, min, max and n.

    ``worst10`` is the mean of the lowest ceil(10% of n) values (at least one). Empty input gives
    0.0 everywhere. ``gini`` needs non-negative values (see :func:`gini`).
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        return dict.fromkeys(("mean", "std", "worst10", "gini", "min", "max", "n"), 0.0)
    worst = x[: max(1, int(np.ceil(0.1 * x.size)))]
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "worst10": float(worst.mean()),
        "gini": gini(x),
        "min": float(x[0]),
        "max": float(x[-1]),
        "n": float(x.size),
    }
