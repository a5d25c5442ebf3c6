"""The DP popularity prior's statistics: the per-user-bounded histogram and its scores."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def user_histogram(histories: Sequence[np.ndarray], n_items: int, *, recent: int) -> np.ndarray:
    """Sum over users of each user's unit-L2-norm indicator of their `recent` last items.

    Each user contributes ``1/sqrt(m)`` to each of its m distinct recent items, so one user
    changes the sum by at most 1 in L2 norm (the Gaussian mechanism's sensitivity).
    """
    if recent < 1:
        raise ValueError(f"`recent` must be >= 1, got {recent}.")
    hist = np.zeros(n_items, dtype=np.float64)
    for items in histories:
        uniq = np.unique(np.asarray(items)[-recent:])
        if uniq.size:
            hist[uniq] += 1.0 / math.sqrt(uniq.size)
    return hist


def prior_scores(hist: np.ndarray, *, head_share: float = 0.05) -> np.ndarray:
    """Standardised log-popularity of a (possibly noisy) histogram; invariant to scaling it.

    Items below the ``1 - head_share`` quantile are clamped to it: under DP noise only the
    head of the histogram carries signal, the tail is noise (and so are its log values).
    An all-zero histogram (no prior yet) gives all zeros.
    """
    if not 0 < head_share <= 1:
        raise ValueError(f"`head_share` must be in (0, 1], got {head_share}.")
    h = np.asarray(hist, dtype=np.float64)
    if h.size == 0:
        return np.zeros(0, dtype=np.float32)
    floor = max(float(np.quantile(h, 1.0 - head_share)), float(h.max()) * 1e-3, 1e-12)
    log_pop = np.log(np.maximum(h, floor))
    std = float(log_pop.std())
    return ((log_pop - log_pop.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
