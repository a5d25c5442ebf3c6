"""Study report: `python -m simulations.report DIR` writes DIR/report.md and DIR/plots/*.png.

Reads DIR/results.jsonl (rows of `simulations.sweep`; the last row per id counts). Every section
says explicitly when it has no data; every DP point is checked for epsilon <= its target.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.privacy.report import PrivacyReport  # noqa: E402
from simulations import cli
from simulations.report_sections import (  # noqa: E402
    VIOLATION,
    baselines,
    eps_of,
    fmt,
    label,
    num,
    privacy_check,
    save_plot,
    section_cold,
    section_dp_baselines,
    section_items,
    section_privacy,
    section_scale,
    section_table,
)
from simulations.sweep_rows import read_rows  # noqa: E402

METRICS = ("hr@10", "ndcg@10")


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row per id, in order of first appearance."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_id[str(r.get("id"))] = r
    return list(by_id.values())


def _x(eps: float, finite_max: float) -> float:
    return finite_max * 3 if math.isinf(eps) else eps


def _by_setting(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        for s in r.get("settings") or [r.get("setting")]:
            out[str(s)].append(r)
    return out


def _eps_axis(ax: Any, finite_max: float, xs: set[float]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ticks = sorted(xs)
    ax.set_xticks([_x(e, finite_max) for e in ticks])
    ax.set_xticklabels(["inf" if math.isinf(e) else f"{e:g}" for e in ticks])
    ax.set_xlabel("target epsilon (user level; inf = no DP)")
    ax.grid(alpha=0.3)


def _series(rows: list[dict[str, Any]], get: Any) -> tuple[list[float], list[float], list[float]]:
    """Mean and std (over seeds) of get(row) per epsilon."""
    vals: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        v = get(r)
        if v is not None and not math.isnan(num(v)):
            vals[eps_of(r)].append(num(v))
    es = sorted(vals)
    return es, [statistics.fmean(vals[e]) for e in es], [statistics.pstdev(vals[e]) for e in es]


def section_utility(pts: list[dict], central: list[dict], plots: Path) -> list[str]:
    """Utility vs epsilon per setting, baselines as horizontal lines."""
    if not pts and not central:
        return ["_No data: no completed federated or central point._"]
    all_eps = {eps_of(r) for r in pts + central}
    finite_max = max([e for e in all_eps if math.isfinite(e)] or [10.0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, METRICS, strict=True):
        groups = {
            **_by_setting(pts),
            **({"central (all users, one party)": central} if central else {}),
        }
        for name, rs in groups.items():
            es, mean, std = _series(rs, lambda r, k=key: (r.get("metrics") or {}).get(k))
            ax.errorbar(
                [_x(e, finite_max) for e in es],
                mean,
                yerr=std,
                marker="o",
                capsize=3,
                label=name,
                linestyle=":" if name.startswith("central") else "-",
            )
        for i, (name, b) in enumerate(baselines(pts + central).items()):
            ax.axhline(num(b.get(key)), color=f"C{i + 5}", linestyle="--", label=name)
        for name in ("dp-popularity", "dp-ease"):  # per epsilon: each run's own DP baselines
            es, mean, std = _series(
                pts + central,
                lambda r, k=key, n=name: ((r.get("baselines") or {}).get(n) or {}).get(k),
            )
            if es:
                ax.errorbar([_x(e, finite_max) for e in es], mean, yerr=std, marker="x",
                            capsize=3, linestyle="--", label=f"{name} (same epsilon)")  # fmt: skip
        _eps_axis(ax, finite_max, all_eps)
        ax.set_ylabel(f"{key} (full ranking, test)")
    axes[0].legend(fontsize=7)
    img = save_plot(fig, plots / "utility_vs_epsilon.png")
    return [
        img,
        "",
        "Mean over seeds (error bar: std). Dashed lines: baselines on the same split; "
        "crosses: the DP baselines of the same runs, at each run's epsilon and delta.",
    ]


def section_rounds(pts: list[dict], plots: Path) -> list[str]:
    """Utility per round of every point."""
    with_rounds = [r for r in pts if r.get("rounds")]
    if not with_rounds:
        return ["_No data: no point recorded per-round evaluation._"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, METRICS, strict=True):
        for r in with_rounds:
            ax.plot(
                [h["round"] for h in r["rounds"]],
                [num(h.get(key)) for h in r["rounds"]],
                marker="o",
                label=label(r),
            )
        ax.set_xlabel("round")
        ax.set_ylabel(f"{key} (test)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    return [save_plot(fig, plots / "utility_per_round.png")]


def section_per_client(pts: list[dict], plots: Path) -> list[str]:
    """Box plots of per-client HR@10 / NDCG@10 and the summary table."""
    have = [r for r in pts if (r.get("per_client") or {}).get("hr@10")]
    if not have:
        return ["_No data: no point recorded per-client metrics._"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.4 * len(have) + 2.5))
    for ax, key in zip(axes, METRICS, strict=True):
        data = [[num(v) for v in r["per_client"][key] if not math.isnan(num(v))] for r in have]
        ax.boxplot(data, orientation="horizontal", showmeans=True)
        ax.set_yticks(range(1, len(have) + 1), [label(r) for r in have], fontsize=6)
        ax.set_xlabel(f"per-client {key}")
    out = [save_plot(fig, plots / "per_client.png"), ""]
    out += [
        "| point | clients | mean | std | worst 10% | Gini (HR@10) |",
        "|---|---|---|---|---|---|",
    ]
    for r in have:
        s = ((r.get("fairness") or {}).get("per_client") or {}).get("hr@10", {})
        out.append(
            f"| {label(r)} | {fmt(s.get('n'))} | {fmt(s.get('mean'))} | {fmt(s.get('std'))} "
            f"| {fmt(s.get('worst10'))} | {fmt(s.get('gini'))} |"
        )
    return out


def _gaps(row: dict[str, Any]) -> dict[str, float]:
    f = row.get("fairness") or {}
    return {f"{name} gap {k}": num(f[name][f"gap_{k}"]) for name in f if isinstance(f[name], dict)
            for k in METRICS if f"gap_{k}" in f[name]}  # fmt: skip


def section_groups(pts: list[dict], central: list[dict], plots: Path) -> list[str]:
    """User-group metrics (activity, demographics) and their gaps vs epsilon."""
    rows = [r for r in pts + central if _gaps(r)]
    if not rows:
        return ["_No data: no per-user metrics (set fed.per-user-metrics = true in the sweep)._"]
    out = ["| point | group | n | HR@10 | NDCG@10 |", "|---|---|---|---|---|"]
    for r in rows:
        f = r["fairness"]
        for name in ("activity", "gender", "age", "group"):
            for g, v in (f.get(name) or {}).get("groups", {}).items():
                out.append(
                    f"| {label(r)} | {name}={g} | {v['n']} | {fmt(v['hr@10'])} "
                    f"| {fmt(v['ndcg@10'])} |"
                )
    keys = sorted({k for r in rows for k in _gaps(r) if k.endswith("hr@10")})
    all_eps = {eps_of(r) for r in rows}
    finite_max = max([e for e in all_eps if math.isfinite(e)] or [10.0])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        groups = {**_by_setting(pts), **({"central": central} if central else {})}
        for name, rs in groups.items():
            es, mean, std = _series(rs, lambda r, k=key: _gaps(r).get(k))
            if es:
                ax.errorbar([_x(e, finite_max) for e in es], mean, yerr=std, marker="o", label=name)
        _eps_axis(ax, finite_max, all_eps)
        ax.set_ylabel(key.replace("gap", "gap (best - worst group)"))
    axes[0][0].legend(fontsize=7)
    return [
        save_plot(fig, plots / "group_gaps_vs_epsilon.png"),
        "",
        "Activity: top 20% most active users (training interactions) vs the rest.",
        "",
        *out,
    ]


def row_privacy(row: dict[str, Any]) -> PrivacyReport | None:
    """A row's privacy (the sweep writes `PrivacyReport.summary` of the run); None if absent."""
    if not row.get("privacy"):
        return None
    return PrivacyReport.from_json(row["privacy"], f"results.jsonl row {row.get('id')}: privacy")


def write_report(out_dir: Path) -> Path:
    """Render DIR/report.md (and plots) from DIR/results.jsonl; return the report's path."""
    rows = latest(read_rows(out_dir / "results.jsonl"))
    ok = [r for r in rows if r.get("status") == "completed"]
    pts = [r for r in ok if r.get("kind", "point") == "point"]
    central = [r for r in ok if r.get("kind") == "central"]
    scale = [r for r in rows if r.get("kind") == "scale"]
    plots = out_dir / "plots"
    bad = [r for r in rows if privacy_check(r) is False]
    dp_priv = [p for p in map(row_privacy, ok) if p is not None and p.is_dp]
    units = sorted({f"unit: {p.unit}; trust model: {p.trust_model}" for p in dp_priv})
    md = [
        f"# Study report: {out_dir.name}",
        "",
        f"{len(rows)} rows ({len(pts)} federated, {len(central)} central, {len(scale)} scale "
        f"completed or not; {len(rows) - len(ok)} not completed). Regenerate: "
        f"`python -m simulations.report {out_dir}`.",
        "",
    ]
    if bad:
        md += [
            f"## {VIOLATION}",
            "",
            f"{len(bad)} DP point(s) report epsilon above their target: "
            + ", ".join(f"`{r['id']}`" for r in bad),
            "",
        ]
    md += ["Privacy unit / trust model of the DP points:", ""]
    md += [f"- {u}" for u in units] or ["- _no DP point_"]
    sections = [
        ("Privacy check: epsilon <= target", section_privacy(rows)),
        ("Utility vs epsilon", section_utility(pts, central, plots)),
        ("DP baselines at the same epsilon and delta", section_dp_baselines(pts + central)),
        ("Utility per round", section_rounds(pts, plots)),
        ("Per-client distribution", section_per_client(pts, plots)),
        ("User groups and gaps vs epsilon", section_groups(pts, central, plots)),
        ("Item side: coverage, long tail, exposure", section_items(pts, central, plots)),
        ("Cold start", section_cold(pts + central)),
        ("Scale", section_scale(scale, plots)),
        ("Every point", section_table(rows)),
    ]
    for title, body in sections:
        md += ["", f"## {title}", "", *body]
    path = out_dir / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m simulations.report", description=__doc__)
    ap.add_argument("dir", type=Path, help="sweep output folder holding results.jsonl")
    args = ap.parse_args(argv)
    if not (args.dir / "results.jsonl").exists():
        return cli.bad_input(FileNotFoundError(f"{args.dir / 'results.jsonl'} does not exist"))
    try:
        path = write_report(args.dir)
    except ValueError as exc:
        return cli.bad_input(exc)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
