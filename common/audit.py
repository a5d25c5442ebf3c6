"""Privacy audit: membership attacks and the ledger re-computation (bounds: `audit_bounds`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from common.privacy import epsilon_of

PRV_NUMERICAL_SLACK = 0.01  # Opacus' PRV accountant reports eps within this error (eps_error)


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
