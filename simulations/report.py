"""Study report: `python -m simulations.report DIR` writes DIR/report.md and DIR/plots/*.png.

Reads DIR/results.jsonl (rows of `simulations.sweep`; the last row per id counts). Every section
says explicitly when it has no data; every DP point is checked for epsilon <= its target.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.exposure import top_share  # noqa: E402
from simulations.sweep import read_rows  # noqa: E402

METRICS = ("hr@10", "ndcg@10")
ITEM_METRICS = ("coverage@10", "long_tail_share@10", "exposure_gini@10")
PROFILE = "exposure_profile@10"
TOLERANCE = 1e-6  # relative slack for "epsilon <= target" (accountant rounding)
VIOLATION = "**!!! VIOLATED: epsilon > target !!!**"


def num(x: Any) -> float:
    """A float from a row value (JSON stores infinities as "inf"); None -> nan."""
    return math.nan if x is None else float(x)


def fmt(x: Any, digits: int = 4) -> str:
    """Short number for tables."""
    v = num(x)
    return "-" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.{digits}g}")


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row per id, in order of first appearance."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_id[str(r.get("id"))] = r
    return list(by_id.values())


def eps_of(row: dict[str, Any]) -> float:
    """The point's target epsilon (inf without DP)."""
    return num(row.get("epsilon_target", (row.get("privacy") or {}).get("target_epsilon")))


def privacy_check(row: dict[str, Any]) -> bool | None:
    """True if a DP row's accounted epsilon <= its target; None for non-DP or failed rows."""
    p = row.get("privacy") or {}
    if row.get("status") != "completed" or p.get("mode") in (None, "none"):
        return None
    eps, target = num(p.get("epsilon")), num(p.get("target_epsilon"))
    return bool(eps <= target * (1 + TOLERANCE)) if not math.isnan(eps) else False


def label(row: dict[str, Any]) -> str:
    """Short name of a row for plots and tables."""
    return f"{row.get('setting')} eps={fmt(eps_of(row), 3)} [{str(row.get('id'))[:6]}]"


def _x(eps: float, finite_max: float) -> float:
    return finite_max * 3 if math.isinf(eps) else eps


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{path.stem}](plots/{path.name})"


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


def baselines(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Baselines of the main split: the first completed row without cold start."""
    warm = [r for r in rows if not num((r.get("overrides") or {}).get("data.cold-start-share", 0))]
    for r in warm + rows:
        if r.get("baselines"):
            return dict(r["baselines"])
    return {}


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
        _eps_axis(ax, finite_max, all_eps)
        ax.set_ylabel(f"{key} (full ranking, test)")
    axes[0].legend(fontsize=7)
    img = _save(fig, plots / "utility_vs_epsilon.png")
    return [img, "", "Mean over seeds (error bar: std). Dashed lines: baselines on the same split."]


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
    return [_save(fig, plots / "utility_per_round.png")]


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
    out = [_save(fig, plots / "per_client.png"), ""]
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
        _save(fig, plots / "group_gaps_vs_epsilon.png"),
        "",
        "Activity: top 20% most active users (training interactions) vs the rest.",
        "",
        *out,
    ]


def section_items(pts: list[dict], central: list[dict], plots: Path) -> list[str]:
    """Item side: coverage, long-tail share, exposure Gini per point and baseline (bars)."""
    named = [(label(r), r.get("metrics") or {}) for r in pts + central]
    named += [(f"baseline {k}", v) for k, v in baselines(pts + central).items()]
    named = [(n, m) for n, m in named if any(k in m for k in ITEM_METRICS)]
    if not named:
        return ["_No data: no item-side metrics._"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.35 * len(named) + 2.5))
    for ax, key in zip(axes, ITEM_METRICS, strict=True):
        ax.barh(range(len(named)), [num(m.get(key)) for _, m in named])
        ax.set_yticks(
            range(len(named)), [n for n, _ in named] if key == ITEM_METRICS[0] else [], fontsize=6
        )
        ax.set_xlabel(key)
    out = [_save(fig, plots / "item_exposure.png"), ""]
    curves = [(n, m) for n, m in named if isinstance(m.get(PROFILE), list) and m.get("n_items")]
    if not curves:
        return [*out, "_No exposure curves: rows predate per-item exposure profiles._"]
    fracs = [10 ** (e / 8) for e in range(-32, 1)]  # 1e-4 .. 1, log-spaced
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for n, m in curves:
        ax.plot(fracs, top_share(m[PROFILE], int(m["n_items"]), fracs), label=n)
    ax.plot(fracs, fracs, color="grey", ls=":", label="equal exposure")
    ax.set_xscale("log")
    ax.set_xlabel("most-exposed share of the catalogue")
    ax.set_ylabel("share of all top-10 slots")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return [
        *out,
        _save(fig, plots / "exposure_curves.png"),
        "",
        "Exposure concentration of the top-10 lists: the share of all recommendation slots held "
        "by the most-exposed x of the catalogue (log x). Equal exposure is the dotted diagonal; "
        "a curve reaching 1 at x = 1% means 1% of the items take every slot. Federated curves "
        "use every site's per-item counts summed on the server (the union of all users' lists).",
    ]


def section_cold(rows: list[dict]) -> list[str]:
    """Users whose test item is cold (never in training) vs the rest, and most-popular on them."""
    have = [r for r in rows if r.get("cold_start")]
    if not have:
        return ["_No data: no point with data.cold-start-share > 0 and per-user metrics._"]
    out = [
        "| point | cold items | cold users | HR@10 cold | HR@10 warm | HR@100 cold "
        "| rank percentile cold | most-popular HR@10 / HR@100 / percentile cold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in have:
        c = r["cold_start"]
        pop = c.get("most-popular_cold") or {}
        cold = c.get("cold") or {}
        out.append(
            f"| {label(r)} | {c['n_cold_items']} | {c['n_cold_users']} "
            f"| {fmt(cold.get('hr@10'))} | {fmt((c.get('warm') or {}).get('hr@10'))} "
            f"| {fmt(cold.get('hr@100'))} | {fmt(cold.get('rank_percentile'))} "
            f"| {fmt(pop.get('hr@10'))} / {fmt(pop.get('hr@100'))} "
            f"/ {fmt(pop.get('rank_percentile'))} |"
        )
    return [
        *out,
        "",
        "Cold items were never in any training list, so most-popular (and any ID-based CF) can "
        "only rank them among the never-seen items; the text tower scores them from their "
        "titles and genres. Rank percentile: 1 = top of the catalogue, about 0.5 = random.",
    ]


def section_scale(scale: list[dict], plots: Path) -> list[str]:
    """Rows with kind="scale": time per round and peak memory of the whole process tree."""
    if not scale:
        return ['_No data: no kind="scale" row (run `python -m simulations.sweep --scale N`)._']
    out = [
        "| clients | per round | status | mean round s | peak RSS MB (tree) | peak PSS MB "
        "| processes | largest process MB | total s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(scale, key=lambda r: r.get("n_clients", 0)):
        per = r.get("clients_per_round") or []
        out.append(
            f"| {r.get('n_clients')} | {max(per) if per else '-'} | {r['status']} "
            f"| {fmt(r.get('mean_round_s'), 3)} | {fmt(r.get('peak_rss_mb'), 5)} "
            f"| {fmt(r.get('peak_pss_mb'), 5)} | {r.get('peak_processes', '-')} "
            f"| {fmt(r.get('max_process_rss_mb'), 5)} "
            f"| {fmt((r.get('timing') or {}).get('sweep_wall_s'), 4)} |"
        )
    done = sorted((r for r in scale if r.get("peak_rss_mb")), key=lambda r: r["n_clients"])
    if done:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        n = [r["n_clients"] for r in done]
        axes[0].plot(n, [r["peak_pss_mb"] for r in done], marker="o", label="PSS (shared once)")
        axes[0].plot(n, [r["peak_rss_mb"] for r in done], marker="s", label="RSS (summed)")
        axes[0].set_ylabel("peak memory of the run, MB")
        axes[0].legend(fontsize=7)
        axes[1].plot(n, [num(r.get("mean_round_s")) for r in done], marker="o")
        axes[1].set_ylabel("mean time per round, s")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("simulated clients")
            ax.grid(alpha=0.3)
        out = [_save(fig, plots / "scale.png"), "", *out]
    return out


def section_privacy(rows: list[dict]) -> list[str]:
    """Every DP point: accounted epsilon vs target, with unit and trust model."""
    dp = [r for r in rows if privacy_check(r) is not None]
    if not dp:
        return ["_No data: no completed DP point._"]
    out = [
        "| point | mode | unit | trust model | epsilon | target | delta | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in dp:
        p = r["privacy"]
        out.append(
            f"| {label(r)} | {p.get('mode')} | {p.get('unit')} | {p.get('trust_model')} "
            f"| {fmt(p.get('epsilon'))} | {fmt(p.get('target_epsilon'))} "
            f"| {fmt(p.get('delta'), 3)} | {'ok' if privacy_check(r) else VIOLATION} |"
        )
    return out


def section_table(rows: list[dict]) -> list[str]:
    """One line per row: config that varies, metrics, epsilon with unit, wall time."""
    if not rows:
        return ["_No data: results.jsonl has no rows._"]
    keys = sorted(
        k
        for k in {k for r in rows for k in r.get("overrides") or {}}
        if len({json.dumps((r.get("overrides") or {}).get(k)) for r in rows}) > 1
    )
    out = [
        "| id | kind | setting | status | config | HR@10 | NDCG@10 | MRR | epsilon (unit) "
        "| target | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, p, o = r.get("metrics") or {}, r.get("privacy") or {}, r.get("overrides") or {}
        conf = " ".join(f"{k}={o[k]}" for k in keys if k in o and k != "model.backbone")
        wall = num((r.get("timing") or {}).get("sweep_wall_s")) / 60
        out.append(
            f"| {r.get('id')} | {r.get('kind')} | {r.get('setting')} | {r.get('status')} "
            f"| {conf} | {fmt(m.get('hr@10'))} | {fmt(m.get('ndcg@10'))} "
            f"| {fmt(m.get('mrr'))} | {fmt(p.get('epsilon'))} ({p.get('unit', '-')}) "
            f"| {fmt(eps_of(r))} | {fmt(wall, 3)} |"
        )
    failed = [r for r in rows if r.get("status") != "completed"]
    if failed:
        out += ["", "Not completed:", ""] + [
            f"- `{r['id']}`: {r.get('error') or r.get('run_status')}" for r in failed
        ]
    return out


def write_report(out_dir: Path) -> Path:
    """Render DIR/report.md (and plots) from DIR/results.jsonl; return the report's path."""
    rows = latest(read_rows(out_dir / "results.jsonl"))
    ok = [r for r in rows if r.get("status") == "completed"]
    pts = [r for r in ok if r.get("kind", "point") == "point"]
    central = [r for r in ok if r.get("kind") == "central"]
    scale = [r for r in rows if r.get("kind") == "scale"]
    plots = out_dir / "plots"
    bad = [r for r in rows if privacy_check(r) is False]
    dp_priv = [
        r["privacy"] for r in ok if (r.get("privacy") or {}).get("mode") not in (None, "none")
    ]
    units = sorted({f"unit: {p.get('unit')}; trust model: {p.get('trust_model')}" for p in dp_priv})
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
        print(f"error: {args.dir / 'results.jsonl'} does not exist", file=sys.stderr)
        return 2
    try:
        path = write_report(args.dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
