"""Empirical epsilon lower bounds: the one-run bound and Clopper-Pearson TPR/FPR bounds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import special, stats

# (k_pos, k_neg) as shares of the canaries; the one-run bound takes the best pair, with a
# Bonferroni correction over all of them (see `best_one_run_bound`).
GUESS_SHARES = (0.0, 0.05, 0.1, 0.25, 0.5)


def _check_delta(delta: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"`delta` must be in [0, 1), got {delta}.")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")


# ---------------------------------------------------------------- the one-run bound


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """p-value of ``>= v`` correct guesses out of `r` guesses on `m` canaries under (eps, delta)-DP.

    Steinke, Nasr & Jagielski (2023), "Privacy Auditing with One (1) Training Run": each of
    the m canaries is included independently with probability 1/2; the auditor sees the
    output, guesses "in"/"out" for r of them and abstains on the rest. Let
    ``q = e^eps / (1 + e^eps)`` and ``f(k) = P[Bin(r, q) >= k]``. Under eps-DP the number W of
    correct guesses is stochastically dominated by Bin(r, q), so ``P[W >= v] <= f(v)``. With
    delta > 0 the bound gains a term:

        P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,

    where ``f(v - i) - f(v) = P[v - i <= Bin(r, q) < v]``; for i > v the numerator stays
    ``1 - f(v)`` while i grows, so the maximum over i >= 1 is attained in 1..v. The result
    is capped at 1. ``v = 0`` gives 1 (nothing observed).
    """
    if m < 1 or not 0 <= r <= m or not 0 <= v <= r:
        raise ValueError(f"need 1 <= m, 0 <= v <= r <= m; got m={m}, r={r}, v={v}.")
    if not eps >= 0:
        raise ValueError(f"`eps` must be >= 0, got {eps}.")
    _check_delta(delta)
    if v == 0:
        return 1.0
    q = float(special.expit(eps))  # e^eps / (1 + e^eps), no overflow
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0:
        return min(1.0, beta)
    pmf = stats.binom.pmf(np.arange(v), r, q)  # P[Bin = k], k = 0..v-1
    window = np.cumsum(pmf[::-1])  # i-th entry: P[v - i <= Bin <= v - 1], i = 1..v
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def one_run_epsilon_lower_bound(
    m: int, r: int, v: int, delta: float, confidence: float = 0.95, *, tol: float = 1e-6
) -> float:
    """Largest eps whose p-value is ``<= 1 - confidence`` (bisection); 0 if no eps is rejected.

    The p-value grows with eps, so the eps it rejects form an interval ``[0, eps*)``; eps* is
    a lower bound on the true epsilon with probability >= `confidence` over the coin flips.
    """
    _check_confidence(confidence)
    level = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) > level:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) <= level:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return math.inf  # cannot happen for finite r; kept as a guard
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) <= level:
            lo = mid
        else:
            hi = mid
    return lo


def guesses_from_scores(scores: np.ndarray, k_pos: int, k_neg: int) -> np.ndarray:
    """+1 ("in") for the `k_pos` highest scores, -1 ("out") for the `k_neg` lowest, 0 elsewhere.

    Ties are broken by position (stable sort), so equal inputs give equal guesses.
    """
    s = np.asarray(scores, dtype=np.float64)
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > len(s):
        raise ValueError(
            f"need k_pos, k_neg >= 0 and k_pos + k_neg <= {len(s)}, "
            f"got k_pos={k_pos}, k_neg={k_neg}."
        )
    order = np.argsort(s, kind="stable")
    out = np.zeros(len(s), dtype=np.int64)
    out[order[:k_neg]] = -1
    if k_pos:
        out[order[len(s) - k_pos :]] = 1
    return out


def guess_grid(m: int, shares: Iterable[float] = GUESS_SHARES) -> list[tuple[int, int]]:
    """All (k_pos, k_neg) from `shares` of m with at least one guess and at most m in total."""
    ks = sorted({int(round(s * m)) for s in shares})
    return [(a, b) for a in ks for b in ks if 0 < a + b <= m]


def best_one_run_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    grid: Sequence[tuple[int, int]] | None = None,
    family_size: int | None = None,
) -> dict[str, Any]:
    """The best one-run lower bound over a grid of (k_pos, k_neg), valid for the maximum.

    Choosing k after seeing the scores is a multiple test: each grid point is evaluated at
    level ``(1 - confidence) / family_size`` (Bonferroni; default ``len(grid)``; pass
    ``len(grid) * n_scores`` when the best of several scores is taken), so the reported
    maximum holds at `confidence` jointly. Every grid point is returned too (`grid`).
    """
    _check_confidence(confidence)
    inc = np.asarray(included, dtype=bool)
    m = len(inc)
    if len(scores) != m or m == 0:
        raise ValueError(f"need one score per canary (m > 0), got {len(scores)} and {m}.")
    pairs = list(grid) if grid is not None else guess_grid(m)
    if family_size is not None and family_size < len(pairs):
        raise ValueError(f"`family_size` must be >= the grid size {len(pairs)}, got {family_size}.")
    per_test = 1.0 - (1.0 - confidence) / (family_size or len(pairs))
    rows, best = [], {"epsilon_lb": 0.0, "k_pos": 0, "k_neg": 0, "r": 0, "v": 0}
    for k_pos, k_neg in pairs:
        g = guesses_from_scores(scores, k_pos, k_neg)
        r = int(np.count_nonzero(g))
        v = int(np.count_nonzero((g == 1) & inc) + np.count_nonzero((g == -1) & ~inc))
        eps = one_run_epsilon_lower_bound(m, r, v, delta, per_test)
        row = {"k_pos": k_pos, "k_neg": k_neg, "r": r, "v": v, "epsilon_lb": eps}
        rows.append(row)
        if eps > best["epsilon_lb"]:
            best = row
    return {
        **best,
        "m": m,
        "delta": delta,
        "confidence": confidence,
        "per_test_confidence": per_test,
        "grid": rows,
    }


# ---------------------------------------------------------------- TPR / FPR with Clopper-Pearson


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval for a binomial proportion with k successes in n.

    Lower = the ``alpha/2`` quantile of Beta(k, n - k + 1) (0 when k = 0); upper = the
    ``1 - alpha/2`` quantile of Beta(k + 1, n - k) (1 when k = n). Each side alone holds
    with probability >= ``1 - alpha/2``.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n >= 1 and 0 <= k <= n, got k={k}, n={n}.")
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}.")
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def epsilon_from_rates(tpr_lo: float, fpr_hi: float, delta: float) -> float:
    """Smallest eps consistent with (eps, delta)-DP given TPR >= tpr_lo and FPR <= fpr_hi.

    (eps, delta)-DP forces ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) +
    delta``; so eps >= max(log((TPR - delta) / FPR), log((1 - delta - FPR) / (1 - TPR))), 0
    when neither log is defined and positive.
    """
    cands = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        cands.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - delta - fpr_hi > 0 and tpr_lo < 1:
        cands.append(math.log((1 - delta - fpr_hi) / (1 - tpr_lo)))
    return max(cands)


def _threshold_bound(
    s_in: np.ndarray, s_out: np.ndarray, t: float, delta: float, alpha: float
) -> dict[str, float]:
    k_in, k_out = int(np.sum(s_in >= t)), int(np.sum(s_out >= t))
    tpr_lo = clopper_pearson(k_in, len(s_in), alpha)[0]
    fpr_hi = clopper_pearson(k_out, len(s_out), alpha)[1]
    return {
        "threshold": t,
        "tpr": k_in / len(s_in),
        "fpr": k_out / len(s_out),
        "tpr_lo": tpr_lo,
        "fpr_hi": fpr_hi,
        "epsilon_lb": epsilon_from_rates(tpr_lo, fpr_hi, delta),
    }


def tpr_fpr_epsilon_lower_bound(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Epsilon lower bound from the TPR/FPR of a threshold "score >= t means in".

    Picking the threshold on the same scores that are then counted would overstate the
    bound, so both groups are split in half at random (`seed`): the threshold with the best
    bound on the first half is chosen, and the bound is computed on the second half only.
    TPR's lower and FPR's upper Clopper-Pearson limits each hold w.p. ``1 - (1 - c)/2``,
    so both hold jointly with probability >= c = `confidence`.

    This treats the canaries as independent trials; within one training run that is a
    heuristic (the one-run bound is the rigorous statement).
    """
    _check_confidence(confidence)
    _check_delta(delta)
    s_in, s_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if len(s_in) < 2 or len(s_out) < 2:
        raise ValueError(f"need >= 2 scores per group, got {len(s_in)} and {len(s_out)}.")
    rng = np.random.default_rng(seed)
    pin, pout = rng.permutation(len(s_in)), rng.permutation(len(s_out))
    sel_in, ev_in = s_in[pin[: len(pin) // 2]], s_in[pin[len(pin) // 2 :]]
    sel_out, ev_out = s_out[pout[: len(pout) // 2]], s_out[pout[len(pout) // 2 :]]
    alpha = 1.0 - confidence
    thresholds = np.unique(np.concatenate([sel_in, sel_out]))
    chosen = max(
        (_threshold_bound(sel_in, sel_out, float(t), delta, alpha) for t in thresholds),
        key=lambda b: b["epsilon_lb"],
    )
    held = _threshold_bound(ev_in, ev_out, chosen["threshold"], delta, alpha)
    return {
        **held,
        "n_in": len(ev_in),
        "n_out": len(ev_out),
        "selection_epsilon_lb": chosen["epsilon_lb"],
        "delta": delta,
        "confidence": confidence,
    }
