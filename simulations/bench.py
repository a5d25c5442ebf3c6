"""Benchmark harness: training throughput, hardware efficiency, communication, evaluation time.

Example::

    python -m simulations.bench --out runs/bench            # ml-latest-small, MiniLM
    python -m simulations.bench --out /tmp/b --tiny         # CI: synthetic data, tiny backbone

All variants are measured side by side in one process on the same users, so the ratios are
comparable even on a shared, noisy machine; absolute numbers come with the machine's
description (CPU model, cores, torch threads) in `bench.json`.
"""

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.config.parse import parse_config
from common.config.run import RunConfig
from common.evaluation.evaluate import evaluate_scores, model_score_fn
from common.io import write_json_atomic
from common.model.backbone import load_backbone, make_tiny_backbone
from common.model.train import LocalData, train
from common.privacy.plan import DPPlan, Party, party_plan
from common.privacy.policy import load_policy
from common.task import setup
from simulations import cli
from simulations.bench_measure import full_catalogue_time, gemm_flops, machine, measure
from simulations.scale import run_scale, scale_overrides

VARIANTS: dict[str, dict[str, Any]] = {
    "lora-cached-nodp": {"dp.mode": "none"},
    "lora-cached-dp": {"dp.mode": "local"},
    "ffa-cached-dp": {"dp.mode": "local", "model.lora.ffa": True},
    "lora-uncached-nodp": {"dp.mode": "none", "model.cache-lower-layers": False},
    "lora-all-layers-nodp": {"dp.mode": "none"},
    "lora-all-layers-dp": {"dp.mode": "local"},
}
# Variants with LoRA on every backbone layer: `model.lora.layers` is set to the backbone's layer
# count when they run (it depends on `model.backbone`, so it cannot be a fixed override).
ALL_LAYER_VARIANTS = ("lora-all-layers-nodp", "lora-all-layers-dp")


def site_plan(cfg: RunConfig, local: LocalData) -> DPPlan | None:
    """The DP plan of a simulated site holding `local` under the default site policy."""
    return party_plan(cfg, Party.of(cfg, local, load_policy({}, simulated=True)))


def site_round(base: dict[str, Any], n_users: int) -> dict[str, Any]:
    """Wall time of one site's local round: DP-SGD over `n_users` users + their evaluation.

    The site's users are the first `n_users` of the data set; the noise is planned as a real
    simulated site with the default policy plans it (`site_plan`); the catalogue cache is warm.
    """
    cfg = parse_config({**base, "dp.mode": "local"})
    corpus, cat, model = setup(cfg)
    local = corpus.local(np.arange(min(n_users, corpus.data.n_users)))
    n = len(local.trainable())
    plan = site_plan(cfg, local)
    t0 = time.perf_counter()
    stats = train(
        model, cat, local, cfg.train, history_len=cfg.data.history_len, plan=plan,
        clip=cfg.dp.clip, seed=3,
    )  # fmt: skip
    t1 = time.perf_counter()
    evaluate_scores(
        model_score_fn(model, cat, history_len=cfg.data.history_len),
        local,
        corpus.data.n_items,
        which="test",
    )
    t2 = time.perf_counter()
    return {
        "users": len(local),
        "trainable_users": n,
        "steps": stats.steps,
        "train_s": t1 - t0,
        "eval_s": t2 - t1,
        "round_s": t2 - t0,
    }


FEDERATED: dict[str, Any] = {
    "data.dataset": "synthetic",
    "data.synthetic-items": 300,
    "dp.mode": "central",
    "dp.epsilon": 8.0,
    "fed.rounds": 2,
    "fed.min-clients": 2,
}
FEDERATED_PER_ROUND = 10  # clients sampled per round: memory should not grow with N


def federated_scale(base: dict[str, Any], sizes: list[int], out: Path) -> list[dict[str, Any]]:
    """Round wall time and peak RSS of real `flwr run` simulations with N clients each."""
    extra = {k: v for k, v in base.items() if k.startswith("model.")}
    rows = []
    for n in sizes:
        print(f"[bench] federated simulation with {n} clients ...", file=sys.stderr, flush=True)
        over = scale_overrides(FEDERATED, n, extra, per_round=FEDERATED_PER_ROUND)
        res = run_scale(over, out / "federated" / str(n))
        rows.append(
            {
                "clients": n,
                "status": res["status"],
                "clients_per_round": res["clients_per_round"],
                "time_per_round_s": res["time_per_round_s"],
                "mean_round_s": res["mean_round_s"],
                "peak_rss_mb": res["peak_rss_mb"],
                "peak_pss_mb": res["peak_pss_mb"],
                "peak_processes": res["peak_processes"],
            }
        )
        print(
            f"[bench] {n} clients: {res['mean_round_s'] or 0:.1f} s/round, "
            f"peak RSS {res['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _ratio(by: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    if a in by and b in by:
        return float(by[a]["users_per_s"] / by[b]["users_per_s"])
    return None


def measure_variants(
    base: dict[str, Any], steps: int, only: tuple[str, ...], gemm: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every variant's row (in `VARIANTS` order), and the full-catalogue evaluation timing."""
    n_layers = load_backbone(str(base.get("model.backbone", ""))).config.num_hidden_layers
    rows = []
    evaluation: dict[str, Any] = {"full_catalogue_s": None, "users": 0}
    for name, over in VARIANTS.items():
        if only and name not in only:
            continue
        if name in ALL_LAYER_VARIANTS:
            over = {**over, "model.lora.layers": n_layers}
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        row = measure(base, name, over, steps)
        row["efficiency"] = row["achieved_flops"] / gemm
        row["wall_s"] = time.perf_counter() - t0
        model = row.pop("_model")
        if name == "lora-cached-nodp":
            secs, users = full_catalogue_time(*model)
            evaluation = {"full_catalogue_s": secs, "users": users}
        rows.append(row)
        print(
            f"[bench] {name}: {row['users_per_s']:.1f} users/s, efficiency {row['efficiency']:.1%}",
            file=sys.stderr,
            flush=True,
        )
    return rows, evaluation


def run(
    base: dict[str, Any],
    out: Path,
    *,
    steps: int,
    only: tuple[str, ...] = (),
    site_users: int = 150,
    federated: list[int] | None = None,
) -> dict[str, Any]:
    """Run every variant, the evaluation timing, a site round and the federated scale runs."""
    gemm = gemm_flops()
    rows, evaluation = measure_variants(base, steps, only, gemm)
    site = None
    if site_users > 0:
        print(f"[bench] one site round with {site_users} users ...", file=sys.stderr, flush=True)
        site = site_round(base, site_users)
    fed = federated_scale(base, federated, out) if federated else []
    mem = {r["clients"]: r["peak_rss_mb"] for r in fed if r["status"] == "completed"}
    by = {r["variant"]: r for r in rows}
    res = {
        "machine": machine(),
        "gemm_flops": gemm,
        "steps": steps,
        "variants": rows,
        "ratios": {
            "dp_over_nodp_time": _ratio(by, "lora-cached-nodp", "lora-cached-dp"),
            "cached_over_uncached_speed": _ratio(by, "lora-cached-nodp", "lora-uncached-nodp"),
            "cached_over_all_layers_speed": _ratio(by, "lora-cached-nodp", "lora-all-layers-nodp"),
            "ffa_over_lora_speed": _ratio(by, "ffa-cached-dp", "lora-cached-dp"),
        },
        "evaluation": evaluation,
        "site_round": site,
        "federated": fed,
        "federated_peak_rss_ratio": (mem[max(mem)] / mem[min(mem)] if len(mem) > 1 else None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": base,
    }
    write_json_atomic(out / "bench.json", res)
    return res


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.bench", __doc__)
    cli.add_out(ap)
    ap.add_argument("--tiny", action="store_true", help="synthetic data + tiny backbone (CI)")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per variant")
    ap.add_argument(
        "--data-dir", default="", help="ml-latest-small folder (default: the embedded data/)"
    )
    ap.add_argument("--only", default="", help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--site-users", type=int, default=150, help="users of the site round (0: skip)")
    ap.add_argument(
        "--federated",
        default="10,100,1000",
        help="comma-separated client counts of the federated simulations ('' to skip)",
    )
    args = ap.parse_args(argv)
    base: dict[str, Any] = {"data.dataset": "ml-latest-small", "data.dir": args.data_dir}
    if args.tiny:
        tiny = make_tiny_backbone(Path(tempfile.mkdtemp(prefix="tinybert-")))
        base = {
            "data.dataset": "synthetic",
            "model.backbone": str(tiny),
            "model.cache-dir": tempfile.mkdtemp(prefix="fedrec-cache-"),
        }
    only = tuple(v for v in args.only.split(",") if v)
    unknown = sorted(set(only) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    try:
        sizes = [int(x) for x in args.federated.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--federated must be comma-separated integers, got {args.federated!r}")
    if any(n < 2 for n in sizes):
        ap.error("--federated client counts must be >= 2")
    res = run(
        base, args.out, steps=args.steps, only=only, site_users=args.site_users, federated=sizes
    )
    keys = ("ratios", "evaluation", "site_round", "federated_peak_rss_ratio")
    summary = {k: res[k] for k in keys}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
