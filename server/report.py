"""Aggregate evaluation replies; write results.json and the per-round plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message

from common import records as R
from common.config.run import RunConfig
from common.evaluation.exposure import exposure_summary
from common.io import write_json_atomic
from common.privacy.report import privacy_report

# Per-site privacy figures in a reply: reported per site, never averaged as metrics.
PRIVACY_KEYS = (R.EPSILON, R.DELTA, R.EPSILON_STRICT, R.LEDGER_EPSILON, R.DECLINED)


def aggregate_eval(replies: list[Message]) -> dict[str, Any]:
    """User-weighted mean of scalar metrics; per-user lists concatenated; per-client values."""
    rows: list[Any] = [
        dict(r.content.metric_records[R.METRICS])
        for r in replies
        if r.has_content() and R.METRICS in r.content.metric_records
    ]
    total = sum(float(m.get(R.NUM_EXAMPLES, 0)) for m in rows)
    out: dict[str, Any] = {"n_users": total, "n_clients": len(rows)}
    if not rows or total <= 0:
        return out
    keys = {k for m in rows for k, v in m.items() if not isinstance(v, list)} - {
        R.NUM_EXAMPLES, *PRIVACY_KEYS
    }  # fmt: skip
    for k in sorted(keys):
        have = [m for m in rows if k in m]
        weight = sum(float(m[R.NUM_EXAMPLES]) for m in have)
        out[k] = sum(float(m[k]) * float(m[R.NUM_EXAMPLES]) for m in have) / weight
    out["per_client"] = {
        "hr@10": [float(m.get("hr@10", math.nan)) for m in rows],
        "ndcg@10": [float(m.get("ndcg@10", math.nan)) for m in rows],
        "n_users": [float(m[R.NUM_EXAMPLES]) for m in rows],
    }
    counts = [np.asarray(m[R.EXPOSURE_COUNTS], np.float64) for m in rows if R.EXPOSURE_COUNTS in m]
    if counts:
        if len({c.shape for c in counts}) != 1:
            raise ValueError(f"clients sent `{R.EXPOSURE_COUNTS}` of different lengths")
        # Coverage and Gini of the union of every user's top-10, not a mean of per-site values.
        out.update(exposure_summary(np.sum(counts, axis=0), 10))
    lists = {k for m in rows for k, v in m.items() if isinstance(v, list)} - {R.EXPOSURE_COUNTS}
    if lists:
        out["per_user"] = {
            k[len(R.PER_USER_PREFIX) :]: [x for m in rows for x in m.get(k, [])]
            for k in sorted(lists)
        }
    return out


def _privacy(
    cfg: RunConfig, history: list[dict[str, Any]], central: dict[str, Any]
) -> dict[str, Any]:
    # A site's epsilon after a round: its training reply, then its (noised) evaluation.
    releases = [
        (str(c["node"]), c)
        for row in history
        for c in [*row["clients"], *row.get("eval_privacy", [])]
    ]
    declines = [
        {"round": row["round"], "node": c["node"], "label": c.get("label", ""),
         "reason": c["dropped"]}
        for row in history
        for c in row["clients"]
        if str(c.get("dropped", "")).startswith("declined")
    ] + [{"round": row["round"], "phase": "evaluate", **d} for row in history
         for d in row.get("eval_declined", [])]  # fmt: skip
    server = None
    if cfg.dp.mode == "central":
        eps = history[-1].get("central_epsilon", 0.0) if history else 0.0
        ledger_eps = history[-1].get("central_ledger_epsilon", eps) if history else 0.0
        server = {**central, "epsilon": eps, "ledger_epsilon": ledger_eps}
    return privacy_report(cfg, releases, setting="federated", declines=declines, central=server)


def finish_run(
    cfg: RunConfig,
    out: Path,
    history: list[dict[str, Any]],
    state: dict[str, np.ndarray],
    *,
    status: str,
    central: dict[str, Any],
    wall_s: float,
    baselines_fn: Callable[[], dict[str, Any]] | None,
    dp_baselines_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    delivery: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write `out/results.json` and `out/metrics.png`; return the results.

    `dp_baselines_fn` gets the run's privacy section (the DP baselines match its epsilon and
    delta); its baselines join those of `baselines_fn`. `delivery`: per node, whether it kept
    the final adapter (None: not sent).
    """
    last = history[-1]["eval"] if history else {}
    metrics = {k: v for k, v in last.items() if k not in ("per_client", "per_user")}
    users = sum(float(c.get(R.USERS_TRAINED, 0)) for r in history for c in r["clients"])
    train_s = sum(float(c.get(R.TRAIN_S, 0)) for r in history for c in r["clients"])
    up = [c.get("bytes_up", 0) for r in history for c in r["clients"] if c.get("bytes_up")]
    privacy = _privacy(cfg, history, central)
    base = baselines_fn() if baselines_fn else {}
    if dp_baselines_fn is not None and status == "completed":
        base |= dp_baselines_fn(privacy)
    results: dict[str, Any] = {
        "setting": "federated",
        "evaluated": cfg.fed.eval_split,
        "status": status,
        "dataset": cfg.data.dataset,
        "metrics": metrics,
        "baselines": base,
        "privacy": privacy,
        "timing": {
            "wall_s": wall_s,
            "train_s": train_s,
            "train_users_per_s": users / train_s if train_s else 0.0,
        },
        "communication": {
            "bytes_down_per_client": R.state_bytes(state),
            "bytes_up_per_client_max": max(up) if up else 0,
        },
        "history": history,
        "final_adapter": delivery,
        "config": cfg.flat(),
    }
    write_json_atomic(out / "results.json", results)
    plot_rounds(results, out / "metrics.png")
    return results


def plot_rounds(results: dict[str, Any], path: Path) -> None:
    """HR@10 and NDCG@10 per round, baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = results["history"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("hr@10", "ndcg@10"), strict=True):
        ax.plot(
            [h["round"] for h in hist],
            [h["eval"].get(key, math.nan) for h in hist],
            marker="o",
            label="federated model",
        )
        for i, (name, b) in enumerate(results.get("baselines", {}).items()):
            ax.axhline(b[key], linestyle="--", color=f"C{i + 1}", label=name)
        ax.set_xlabel("round")
        ax.set_ylabel(f"{key} (full ranking, test)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    eps = results["privacy"].get("epsilon")
    fig.suptitle(
        f"{results['dataset']}: DP mode {results['privacy']['mode']}, epsilon {eps:.3g}"
        if isinstance(eps, float)
        else results["dataset"]
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
