"""Empirical privacy audit: epsilon lower bounds, membership attacks, a ledger re-computation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special, stats

from common.privacy import epsilon_of

# (k_pos, k_neg) as shares of the canaries; the one-run bound takes the best pair, with a
# Bonferroni correction over all of them (see `best_one_run_bound`).
GUESS_SHARES = (0.0, 0.05, 0.1, 0.25, 0.5)
PRV_NUMERICAL_SLACK = 0.01  # Opacus' PRV accountant reports eps within this error (eps_error)


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


# ---------------------------------------------------------------- membership inference


def membership_attack(
    scores_members: np.ndarray,
    scores_nonmembers: np.ndarray,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
) -> dict[str, Any]:
    """Threshold attack "score >= t means member": AUC, TPR at low FPR, ROC points.

    AUC = P[s_member > s_nonmember] + P[=] / 2 (Mann-Whitney). TPR at FPR x is the best TPR
    among thresholds whose FPR is <= x (no interpolation; with n nonmembers, FPR <= x allows
    ``floor(x n)`` false positives). ROC points run from (0, 0) to (1, 1).
    """
    pos, neg = np.asarray(scores_members, float), np.asarray(scores_nonmembers, float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need members and nonmembers, got {len(pos)} and {len(neg)}.")
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([0.0, *(np.mean(pos >= t) for t in thresholds)])
    fpr = np.array([0.0, *(np.mean(neg >= t) for t in thresholds)])
    at = {f"tpr@fpr{x:g}": float(tpr[fpr <= x + 1e-12].max()) for x in fprs}
    return {
        "auc": float(auc),
        **at,
        "n_members": len(pos),
        "n_nonmembers": len(neg),
        "roc_fpr": fpr.tolist(),
        "roc_tpr": tpr.tolist(),
    }


# ---------------------------------------------------------------- ledger check


def _events(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, int]]:
    return [(float(r["sigma"]), float(r["q"]), int(r["steps"])) for r in rows]


def pair_reports(
    ledgers: Mapping[str, Mapping[str, Any]], history: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Match each reporting node of a run's `history` to the ledger that ran its mechanism.

    Nodes report (sigma, sample-rate, epsilon) per round but not their site name; a node is
    paired with an unused ledger whose "train" event of every reported round has the same
    sigma and q in that round. The epsilons are not used to pair (they are what is checked). Returns
    ({ledger name: {round: reported epsilon}}, nodes no ledger matches).
    """
    reports: dict[str, list[tuple[int, float, float, float]]] = {}
    for row in history:
        for c in row.get("clients", []):
            if all(k in c for k in ("epsilon", "sigma", "sample-rate")):
                reports.setdefault(str(c["node"]), []).append(
                    (
                        int(row["round"]),
                        float(c["epsilon"]),
                        float(c["sigma"]),
                        float(c["sample-rate"]),
                    )
                )
    paired: dict[str, dict[int, float]] = {}
    unmatched = []
    for node, rep in sorted(reports.items()):
        for name, led in sorted(ledgers.items()):
            ran = {(int(r["round"]), float(r["sigma"]), float(r["q"])) for r in led["rounds"]}
            if name not in paired and all(
                any(
                    rnd == a
                    and math.isclose(b, s, rel_tol=1e-9)
                    and math.isclose(c, q, rel_tol=1e-9)
                    for a, b, c in ran
                )
                for rnd, _, s, q in rep
            ):
                paired[name] = {rnd: eps for rnd, eps, _, _ in rep}
                break
        else:
            unmatched.append(node)
    return paired, unmatched


def ledger_check(
    ledgers: Mapping[str, Mapping[str, Any]],
    *,
    reported_epsilons: Mapping[str, Mapping[int, float]],
    tolerance: float = 1e-3,
) -> dict[str, Any]:
    """Recompute every client's epsilon from its ledger with PRV and RDP; flag problems.

    For each ledger (name -> the JSON `common.privacy.Ledger.to_json` writes) and each round
    in it, the events of all rounds up to and including that one are composed at the
    ledger's delta with both accountants. Flags: "mismatch" when the PRV value differs by
    more than `tolerance` from the epsilon the client reported for that round (or from the
    one stored in the ledger); "rdp<prv" when RDP is below PRV by more than PRV's numerical
    error plus `tolerance` (both are upper bounds, RDP the looser one); "overrun" when the
    final epsilon exceeds the ledger's budget; "unreported" when no report was paired.
    ``ok`` is True when no client has a flag.
    """
    clients: dict[str, Any] = {}
    for name, led in sorted(ledgers.items()):
        delta, budget = float(led["delta"]), float(led["budget_epsilon"])
        rows = list(led["rounds"])
        reported = reported_epsilons.get(name, {})
        flags: list[str] = [] if reported else [f"unreported: no node's report matches {name}"]
        per_round: list[dict[str, Any]] = []
        for rnd in sorted({int(r["round"]) for r in rows}):
            upto = [r for r in rows if int(r["round"]) <= rnd]
            prv = epsilon_of(_events(upto), delta=delta, accountant="prv")
            rdp = epsilon_of(_events(upto), delta=delta, accountant="rdp")
            stored = [
                float(r["epsilon"]) for r in upto if int(r["round"]) == rnd and "epsilon" in r
            ]
            rep = reported.get(rnd)
            per_round.append(
                {
                    "round": rnd,
                    "epsilon_prv": prv,
                    "epsilon_rdp": rdp,
                    "stored": stored[-1] if stored else None,
                    "reported": rep,
                }
            )
            if rep is not None and not abs(prv - rep) <= tolerance:
                flags.append(f"mismatch: round {rnd} reported {rep:.6g}, PRV gives {prv:.6g}")
            if stored and not abs(prv - stored[-1]) <= tolerance:
                flags.append(
                    f"mismatch: round {rnd} ledger stores {stored[-1]:.6g}, PRV gives {prv:.6g}"
                )
            if rdp < prv - PRV_NUMERICAL_SLACK - tolerance:
                flags.append(f"rdp<prv: round {rnd} RDP {rdp:.6g} < PRV {prv:.6g}")
        missing = sorted(set(reported) - {p["round"] for p in per_round})
        if missing:
            flags.append(f"mismatch: rounds {missing} reported but not in the ledger")
        final = per_round[-1]["epsilon_prv"] if per_round else 0.0
        if final > budget * (1 + 1e-6):
            flags.append(f"overrun: epsilon {final:.6g} > budget {budget:.6g}")
        clients[name] = {
            "delta": delta,
            "budget": budget,
            "epsilon_prv": final,
            "epsilon_rdp": per_round[-1]["epsilon_rdp"] if per_round else 0.0,
            "rounds": per_round,
            "flags": flags,
        }
    return {
        "ok": all(not c["flags"] for c in clients.values()),
        "tolerance": tolerance,
        "clients": clients,
    }
