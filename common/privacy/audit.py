"""Privacy audit: membership attacks and the ledger re-computation (bounds: `audit_bounds`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from common.privacy.accounting import epsilon_of

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


def ledger_events(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, int]]:
    """The (noise multiplier, sample rate, steps) events of ledger rows, for `epsilon_of`."""
    return [(float(r["sigma"]), float(r["q"]), int(r["steps"])) for r in rows]


def _node_reports(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node of a run's `history`: its public label and its last reported epsilon per round.

    A round's last report is its noised evaluation's (``eval_privacy``) when there is one,
    else its training reply's; ``ledger-epsilon`` (cumulative over the ledger) wins over the
    run's ``epsilon``. Sigma and sample rate are kept when a site released them.
    """
    nodes: dict[str, dict[str, Any]] = {}
    for row in history:
        rnd = int(row["round"])
        for c in [*row.get("clients", []), *row.get("eval_privacy", [])]:
            eps = c.get("ledger-epsilon", c.get("epsilon"))
            if eps is None:
                continue
            n = nodes.setdefault(str(c["node"]), {"label": "", "eps": {}, "mech": set()})
            n["label"] = n["label"] or str(c.get("label", ""))
            n["eps"][rnd] = float(eps)
            if "sigma" in c and "sample-rate" in c:
                n["mech"].add((rnd, float(c["sigma"]), float(c["sample-rate"])))
    return nodes


def _runs_mechanism(led: Mapping[str, Any], mech: set[tuple[int, float, float]]) -> bool:
    ran = {(int(r["round"]), float(r["sigma"]), float(r["q"])) for r in led["rounds"]}
    return all(
        any(
            rnd == a and math.isclose(b, s, rel_tol=1e-9) and math.isclose(c, q, rel_tol=1e-9)
            for a, b, c in ran
        )
        for rnd, s, q in mech
    )


def pair_reports(
    ledgers: Mapping[str, Mapping[str, Any]], history: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Match each reporting node of a run's `history` to the ledger that ran its mechanism.

    A node is paired by the public label its site sends (ledger file ``<label>.json`` or a
    per-data-set ``<label>.<key>.json``); a site that publishes no label but released its
    sigma and sample rate is paired with an unused ledger whose events of every reported
    round have the same sigma and q. The epsilons are never used to pair (they are what is
    checked). Returns ({ledger name: {round: last reported epsilon}}, nodes no ledger matches).
    """
    paired: dict[str, dict[int, float]] = {}
    unmatched = []
    for node, rep in sorted(_node_reports(history).items()):
        label = rep["label"]
        names = [
            name
            for name, led in sorted(ledgers.items())
            if name not in paired
            and (
                (label and name.split(".")[0] == label)
                or (not label and rep["mech"] and _runs_mechanism(led, rep["mech"]))
            )
        ]
        if names:
            paired[names[0]] = dict(rep["eps"])
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

    For each ledger (name -> the JSON `common.privacy.ledger.Ledger.to_json` writes) and each round
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
            prv = epsilon_of(ledger_events(upto), delta=delta, accountant="prv")
            rdp = epsilon_of(ledger_events(upto), delta=delta, accountant="rdp")
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
