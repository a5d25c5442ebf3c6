"""DP baselines alone (no model): DP popularity and DP-EASE at several epsilons, over noise draws.

Example (the BENCHMARKS.md figures)::

    python -m simulations.dp_baselines --dataset ml-latest-small --epsilon 8 4 2 \
        --delta 1e-5 --seeds 3 --reproducible-noise --out runs/dp-baselines

(the embedded data/ml-latest-small, byte-identical to the copy those figures were run on)

Same split and protocol as the model (chronological leave-one-out, full ranking, history =
train + validation item at test time). Each (epsilon, seed) is a fresh pair of releases,
DP-EASE's item count and lambda chosen on the validation item (`common.evaluation.baseline_runs`).
`--reproducible-noise` draws the noise from a hash of (epsilon, seed): reproducible, and for
that reason not private (a simulation switch, as `dp.reproducible-noise`); without it, noise
comes from OS entropy.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides
from common.data.interactions import DataError
from common.evaluation.baseline_runs import DP_BASELINES, run_dp_baselines
from common.evaluation.dp_baselines import DPTarget
from common.io import write_json_atomic
from common.privacy.accounting import PrivacyError
from common.task import load_corpus
from simulations import cli


def measure(
    over: dict[str, Any], epsilons: list[float], *, delta: float, seeds: int, reproducible: bool
) -> list[dict[str, Any]]:
    """One row per (epsilon, seed): each DP baseline's test metrics, choice and privacy."""
    cfg = parse_config(over)
    corpus = load_corpus(cfg.data)
    rows = []
    for eps in epsilons:
        for seed in range(seeds):
            t0 = time.perf_counter()
            target = DPTarget(eps, delta, accountant=cfg.dp.accountant,
                              reproducible=reproducible, label=f"bench/{eps:g}/{seed}")  # fmt: skip
            res = run_dp_baselines(corpus, target, seed=cfg.train.seed)
            rows.append({"epsilon": eps, "delta": delta, "seed": seed,
                         "wall_s": time.perf_counter() - t0, "baselines": res})  # fmt: skip
            e = res["dp-ease"]
            print(
                f"eps {eps:g} seed {seed}: dp-popularity HR@10 {res['dp-popularity']['hr@10']:.4f}"
                f"  dp-ease HR@10 {e['hr@10']:.4f} (n {e['n_items_used']}, lambda "
                f"{e['lambda']:g})  {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
            )
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table: mean +- std (over seeds) of HR@10 / NDCG@10 per baseline and epsilon."""
    out = ["| baseline | epsilon | delta | HR@10 | NDCG@10 | chosen (n, lambda) per seed | seeds |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in DP_BASELINES:
        for eps in sorted({r["epsilon"] for r in rows}, reverse=True):
            rs = [r for r in rows if r["epsilon"] == eps]
            cells = [_mean_std([r["baselines"][name][k] for r in rs]) for k in ("hr@10", "ndcg@10")]
            chosen = ", ".join(
                f"({r['baselines'][name]['n_items_used']}, {r['baselines'][name]['lambda']:g})"
                for r in rs
                if "n_items_used" in r["baselines"][name]
            )
            out.append(f"| {name} | {eps:g} | {rs[0]['delta']:g} | {cells[0]} | {cells[1]} "
                       f"| {chosen or '-'} | {len(rs)} |")  # fmt: skip
    return out


def _mean_std(v: list[float]) -> str:
    return f"{statistics.fmean(v):.4f} ± {statistics.pstdev(v):.4f}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.dp_baselines", __doc__)
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--data-dir", default=None, help="folder with the data set's files")
    ap.add_argument("--epsilon", type=float, nargs="+", default=[8.0, 4.0, 2.0])
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seeds", type=int, default=3, help="independent noise draws per epsilon")
    ap.add_argument(
        "--reproducible-noise",
        action="store_true",
        help="noise from a hash of (epsilon, seed): reproducible, NOT private",
    )
    cli.add_out(ap)
    cli.add_run_config(ap)
    args = ap.parse_args(argv)
    try:
        if args.seeds < 1 or any(not (math.isfinite(e) and e > 0) for e in args.epsilon):
            raise ValueError("--seeds must be >= 1 and every --epsilon finite and > 0")
        over = parse_overrides(args.run_config)
        over["data.dataset"] = args.dataset
        if args.data_dir:
            over["data.dir"] = args.data_dir
        rows = measure(over, args.epsilon, delta=args.delta, seeds=args.seeds,
                       reproducible=args.reproducible_noise)  # fmt: skip
    except (ConfigError, DataError, PrivacyError, ValueError) as exc:
        return cli.bad_input(exc)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "dp_baselines.json", {"rows": rows, "argv": argv or sys.argv[1:]})
    table = "\n".join(summary(rows))
    (args.out / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
