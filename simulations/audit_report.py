"""The privacy audit's verdict and its rendering: audit.md and roc.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def verdict(report: dict[str, Any]) -> tuple[bool, list[str]]:
    """(ok, lines): every rigorous lower bound <= its upper bound, and the ledgers agree."""
    acc, can, lines, ok = report["accounted"], report["canaries"], [], True
    for key, ub in (("run_delta", acc["epsilon_run"]), ("audit_delta", acc["epsilon_audit"])):
        d = can[key]["delta"]
        lb = can[key]["one_run"]["epsilon_lb"]
        good = lb <= ub * (1 + 1e-9)
        ok &= good
        lines.append(
            f"{'PASS' if good else 'FAIL'}: one-run lower bound {lb:.3f} "
            f"{'<=' if good else '>'} accounted epsilon {ub:.3f} at delta {d:.3g}"
        )
        cp = can[key]["clopper_pearson"]["epsilon_lb"]
        if cp > ub:
            lines.append(
                f"WARN: heuristic Clopper-Pearson bound {cp:.3f} > {ub:.3f} at delta {d:.3g}"
            )
    led = report["ledger"]
    if led is not None:
        ok &= led["ok"]
        lines.append(
            "PASS: ledgers agree with the reported epsilons"
            if led["ok"]
            else "FAIL: ledger check: "
            + "; ".join(f for c in led["clients"].values() for f in c["flags"])
        )
    return bool(ok), lines


def plot_roc(report: dict[str, Any], path: Path) -> None:
    """ROC curves of every attack on canaries and real users, log-scaled FPR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for who, attacks in (
        ("canary users", report["canaries"]["attacks"]),
        ("real users", report["real_users"]),
    ):
        for name, att in attacks.items():
            ax.plot(
                np.maximum(att["roc_fpr"], 1e-4),
                att["roc_tpr"],
                label=f"{who}, {name}: AUC {att['auc']:.3f}",
            )
    grid = np.logspace(-4, 0, 50)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance")
    ax.set(
        xscale="log",
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(5e-5, 1),
        ylim=(0, 1.02),
        title="membership inference (FPR < 1e-4 drawn at 1e-4)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _attack_row(who: str, name: str, a: dict[str, Any]) -> str:
    return (
        f"| {who} | {name} | {a['auc']:.3f} | {a['tpr@fpr0.01']:.3f} | "
        f"{a['tpr@fpr0.001']:.3f} | {a['n_members']} / {a['n_nonmembers']} |"
    )


def _bound_rows(r: dict[str, Any]) -> list[str]:
    """One table row per delta: accounted epsilon beside the two empirical lower bounds."""
    acc, can = r["accounted"], r["canaries"]
    rows = []
    for key in ("run_delta", "audit_delta"):
        c = can[key]
        one, cp = c["one_run"], c["clopper_pearson"]
        ub = float(acc["epsilon_run" if key == "run_delta" else "epsilon_audit"])
        how_one = (
            f"{one['attack']}; k+ {one['k_pos']}, k- {one['k_neg']}: {one['v']}/{one['r']} right"
            if one["epsilon_lb"] > 0
            else "no attack and guess count rejects any epsilon > 0"
        )
        how_cp = f"{cp['attack']}; threshold {cp['threshold']:.4g}: TPR {cp['tpr']:.2f}, FPR "
        rows.append(
            f"| {c['delta']:.3g} | {ub:.3f} | **{one['epsilon_lb']:.3f}** ({how_one}) | "
            f"{cp['epsilon_lb']:.3f} ({how_cp}{cp['fpr']:.2f} on the held-out half) |"
        )
    return rows


def _ledger_lines(led: dict[str, Any] | None) -> list[str]:
    """One line per client ledger: PRV and RDP epsilon, budget, delta, flags."""
    if led is None:
        return ["(no DP: no ledgers)"]
    return [
        f"- {n}: PRV {c['epsilon_prv']:.4f}, RDP {c['epsilon_rdp']:.4f}, "
        f"budget {c['budget']:g}, delta {c['delta']:.3g}: {'; '.join(c['flags']) or 'ok'}"
        for n, c in led["clients"].items()
    ]


def markdown(r: dict[str, Any]) -> str:
    """The human-readable report."""
    p, can = r["privacy"], r["canaries"]
    rows, led_lines = _bound_rows(r), _ledger_lines(r["ledger"])
    n_grid = len(can["run_delta"]["one_run"]["grid"])
    return "\n".join(
        [
            f"# Privacy audit: {r['verdict']}",
            "",
            f"Run `{r['run_dir']}`: {r['dataset']}, DP mode {p['mode']}, privacy unit "
            f"**{p['unit']}**; trust model: {p['trust_model']}.",
            "",
            *[f"- {line}" for line in r["verdict_lines"]],
            "",
            f"## Canary audit ({can['m']} canary users, {can['n_included']} included, "
            f"confidence {r['confidence']:.0%})",
            "",
            "| delta | accounted epsilon (upper bound) | one-run lower bound | "
            "Clopper-Pearson lower bound (heuristic) |",
            "|---|---|---|---|",
            *rows,
            "",
            f"One-run bound (Steinke, Nasr & Jagielski 2023): the best of {len(can['attacks'])} "
            f"attacks x {n_grid} (k+, k-) guess counts, Bonferroni-corrected over all "
            f"{len(can['attacks']) * n_grid}. Clopper-Pearson: attack and threshold chosen on half "
            "the canaries, TPR/FPR counted on the other half; it treats canaries as independent "
            "trials, which one run does not guarantee, so it is reported, not relied on. The "
            "accounted epsilon at the audit delta is recomputed from the ledgers (PRV).",
            "",
            "## Membership inference",
            "",
            "| target | attack | AUC | TPR @ FPR 1% | TPR @ FPR 0.1% | members / non-members |",
            "|---|---|---|---|---|---|",
            *[_attack_row("canary users (user-level)", n, a) for n, a in can["attacks"].items()],
            *[
                _attack_row(f"real users (per {a.get('unit', 'interaction')})", n, a)
                for n, a in r["real_users"].items()
            ],
            "",
            "ROC curves: `roc.png`. Real users per interaction: each user's last training item "
            "(member) against its test item (never trained); the two items also differ in time "
            "and popularity. Real users per user (with `audit.holdout-users` > 0): users whose "
            "data reached no client are the non-members, scored on the same statistic as the "
            "trained users.",
            "",
            "## Ledger check",
            "",
            *led_lines,
            "",
            f"Wall time: run {r['timing']['run_s']:.0f}s, audit {r['timing']['audit_s']:.0f}s.",
            "",
        ]
    )
