"""Study report rows (numbers, labels, epsilon check) and the per-point report sections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.evaluation.exposure import top_share  # noqa: E402

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


def save_plot(fig: Any, path: Path) -> str:
    """Save `fig` as `path` (in the report's plots/ folder); return its Markdown image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{path.stem}](plots/{path.name})"


DP_PREFIX = "dp-"  # DP baselines: per row, at that row's epsilon (`section_dp_baselines`)


def baselines(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Non-private baselines of the main split: the first completed row without cold start."""
    warm = [r for r in rows if not num((r.get("overrides") or {}).get("data.cold-start-share", 0))]
    for r in warm + rows:
        if r.get("baselines"):
            return {k: v for k, v in r["baselines"].items() if not k.startswith(DP_PREFIX)}
    return {}


def _mean_std(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "-"
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"  # sample sd (n - 1), as BENCHMARKS.md reports


def section_dp_baselines(rows: list[dict[str, Any]]) -> list[str]:
    """DP points beside the DP baselines of the same runs (same epsilon and delta), over seeds."""
    have = [r for r in rows if any(k.startswith(DP_PREFIX) for k in r.get("baselines") or {})]
    if not have:
        return ["_No DP baselines: no DP point reported them (no DP run, or rows predate them)._"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in have:
        groups.setdefault((str(r.get("setting")), eps_of(r)), []).append(r)
    names = sorted({k for r in have for k in r["baselines"] if k.startswith(DP_PREFIX)})
    out = [
        "| setting | target epsilon | delta | runs | model HR@10 | "
        + " | ".join(f"{n} HR@10" for n in names)
        + " | model NDCG@10 | "
        + " | ".join(f"{n} NDCG@10" for n in names)
        + " | dp-ease (n, lambda) |",
        "|---" * (6 + 2 * len(names)) + "|",
    ]
    for (setting, eps), rs in sorted(groups.items(), key=lambda g: (g[0][0], -g[0][1])):
        deltas = {fmt((r.get("privacy") or {}).get("delta"), 3) for r in rs}
        cells = []
        for key in ("hr@10", "ndcg@10"):
            cells.append(_mean_std([num((r.get("metrics") or {}).get(key)) for r in rs]))
            cells += [
                _mean_std([num(r["baselines"].get(n, {}).get(key)) for r in rs]) for n in names
            ]
        chosen = ", ".join(
            f"({e.get('n_items_used')}, {fmt(e.get('lambda'))})"
            for e in (r["baselines"].get("dp-ease") or {} for r in rs)
            if e
        )
        hr, nd = cells[: 1 + len(names)], cells[1 + len(names) :]
        out.append(f"| {setting} | {fmt(eps)} | {', '.join(sorted(deltas))} | {len(rs)} | "
                   + " | ".join(hr + nd) + f" | {chosen or '-'} |")  # fmt: skip
    return [
        *out,
        "",
        "Mean ± sample sd over the runs (seeds) of each setting and epsilon. Every DP baseline is "
        "accounted on its own at its run's accounted model epsilon and delta (user level, "
        "add/remove one; `dp_baselines`), with fresh noise per run; DP-EASE's item count "
        "n and lambda are chosen on the validation item (that choice is not accounted).",
    ]


def _cold_over_seeds(rows: list[dict[str, Any]]) -> list[str]:
    """Mean ± std of the cold-start figures over the runs (seeds) of each setting and epsilon.

    Empty when no setting has more than one run (the table above says it all).
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r.get("setting")), eps_of(r)), []).append(r)
    if all(len(rs) < 2 for rs in groups.values()):
        return []
    out = [
        "Over seeds (mean ± sample sd of the runs of each setting and epsilon):",
        "",
        "| setting | epsilon | runs | HR@100 cold | HR@10 cold | HR@10 warm | HR@10 all users |",
        "|---|---|---|---|---|---|---|",
    ]
    for (setting, eps), rs in sorted(groups.items(), key=lambda g: (g[0][0], -g[0][1])):
        cold = [r["cold_start"].get("cold") or {} for r in rs]
        warm = [r["cold_start"].get("warm") or {} for r in rs]
        out.append(
            f"| {setting} | {fmt(eps)} | {len(rs)} "
            f"| {_mean_std([num(c.get('hr@100')) for c in cold])} "
            f"| {_mean_std([num(c.get('hr@10')) for c in cold])} "
            f"| {_mean_std([num(w.get('hr@10')) for w in warm])} "
            f"| {_mean_std([num((r.get('metrics') or {}).get('hr@10')) for r in rs])} |"
        )
    return [*out, ""]


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
    out = [save_plot(fig, plots / "item_exposure.png"), ""]
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
        save_plot(fig, plots / "exposure_curves.png"),
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
        "| rank percentile cold | text only (prior off) HR@10 / HR@100 / percentile cold "
        "| most-popular HR@10 / HR@100 / percentile cold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in have:
        c = r["cold_start"]
        pop = c.get("most-popular_cold") or {}
        text = c.get("text-only_cold") or {}
        cold = c.get("cold") or {}
        out.append(
            f"| {label(r)} | {c['n_cold_items']} | {c['n_cold_users']} "
            f"| {fmt(cold.get('hr@10'))} | {fmt((c.get('warm') or {}).get('hr@10'))} "
            f"| {fmt(cold.get('hr@100'))} | {fmt(cold.get('rank_percentile'))} "
            f"| {fmt(text.get('hr@10'))} / {fmt(text.get('hr@100'))} "
            f"/ {fmt(text.get('rank_percentile'))} "
            f"| {fmt(pop.get('hr@10'))} / {fmt(pop.get('hr@100'))} "
            f"/ {fmt(pop.get('rank_percentile'))} |"
        )
    return [
        *out,
        "",
        *_cold_over_seeds(have),
        "Cold items were never in any training list, so most-popular (and any ID-based CF) can "
        "only rank them among the never-seen items; the text tower scores them from their "
        "titles and genres. Text only: the run's final adapter with the popularity prior's "
        "weight set to 0, on the same cold users. Rank percentile: 1 = top of the catalogue, "
        "about 0.5 = random.",
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
        out = [save_plot(fig, plots / "scale.png"), "", *out]
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
