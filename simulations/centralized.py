"""Central run: the same model and training function on all users at once, with baselines.

Example::

    python -m simulations.centralized --dataset ml-latest-small \
        --data-dir ../shared/data/ml-latest-small --epsilon 8 --out runs/central-eps8

The schedule is the federated one with a single party holding every user: ``fed.rounds``
passes of ``train.epochs`` epochs each, and with ``--epsilon`` finite, user-level DP-SGD whose
noise is calibrated so that the popularity prior plus all passes end at that epsilon.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.baselines import create_baseline
from common.config import ConfigError, RunConfig, parse_config, parse_overrides
from common.data import DataError
from common.evaluate import evaluate_scores, model_score_fn
from common.exposure import long_tail_items
from common.metrics import RankingEvaluator
from common.model import save_adapter
from common.policy import SitePolicy
from common.privacy import PrivacyError, epsilon_of
from common.task import Corpus, local_histogram, set_prior, setup
from common.train import Party, party_plan, train
from simulations.io import write_json_atomic

BASELINES = ("most-popular", "ease")

# The central party's policy: a trusted curator holding every user. It evaluates in the
# clear (so it plans no noised evaluation release), keeps no budget across runs (each run is
# held to dp.epsilon) and releases its training diagnostics.
CURATOR = SitePolicy(
    max_epsilon=math.inf,
    dp_modes=("local", "none"),
    release_eval="plain",
    release_diagnostics=True,
    label="central",
)


def evaluator_for(corpus: Corpus, seed: int) -> RankingEvaluator:
    """A ranking evaluator with the long tail of this split's training data."""
    tail = long_tail_items(list(corpus.split.train), corpus.data.n_items)
    return RankingEvaluator(corpus.data.n_items, seed=seed, long_tail_items=tail)


def run_baselines(corpus: Corpus, *, seed: int) -> dict[str, dict[str, Any]]:
    """Most-popular and EASE on the same split and protocol as the model."""
    out = {}
    local = corpus.everyone()
    for name in BASELINES:
        base = create_baseline(name, list(corpus.split.train), corpus.data.n_items)

        def score(_rows: np.ndarray, known: list[np.ndarray], b: Any = base) -> np.ndarray:
            return np.asarray(b.scores_for(known))

        ev = evaluate_scores(
            score,
            local,
            corpus.data.n_items,
            which="test",
            evaluator=evaluator_for(corpus, seed),
        )
        out[name] = {**ev.result(), **ev.curves()}
    return out


def run(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """Train centrally, evaluate model and baselines, write `out/results.json`."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    corpus, cat, model = setup(cfg)
    local = corpus.everyone()
    dp = cfg.dp.mode == "local"
    plan = party_plan(cfg, Party.of(cfg, local, CURATOR))
    if cfg.model.prior:
        sigma = plan.prior_sigma if plan else 0.0
        set_prior(
            model,
            local_histogram(
                local,
                corpus.data.n_items,
                recent=cfg.data.history_len,
                sigma=sigma,
                seed=cfg.train.seed,
            ),
        )
    history: list[dict[str, float]] = []
    train_s = 0.0
    users_seen = 0
    for rnd in range(1, cfg.fed.rounds + 1):
        bar = tqdm(desc=f"pass {rnd}/{cfg.fed.rounds}", unit="step", leave=False, file=sys.stderr)

        def progress(step: int, total: int, loss: float, bar: tqdm = bar) -> None:
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        stats = train(
            model,
            cat,
            local,
            cfg.train,
            history_len=cfg.data.history_len,
            plan=plan,
            clip=cfg.dp.clip,
            seed=cfg.train.seed * 1000 + rnd,
            progress=progress,
        )
        bar.close()
        train_s += stats.wall_s
        users_seen += stats.users_seen
        val = evaluate_scores(
            model_score_fn(model, cat, history_len=cfg.data.history_len),
            local,
            corpus.data.n_items,
            which="valid",
            max_users=cfg.train.eval_users,
            seed=cfg.train.seed,
        ).result()
        row = {
            "round": rnd,
            "loss": stats.loss,
            "valid_hr@10": val["hr@10"],
            "valid_ndcg@10": val["ndcg@10"],
        }
        history.append(row)
        print(
            f"pass {rnd}: loss {stats.loss:.4f}  valid HR@10 {val['hr@10']:.4f}  "
            f"NDCG@10 {val['ndcg@10']:.4f}  ({stats.wall_s:.0f}s)",
            file=sys.stderr,
        )
    ev = evaluate_scores(
        model_score_fn(model, cat, history_len=cfg.data.history_len),
        local,
        corpus.data.n_items,
        which="test",
        evaluator=evaluator_for(corpus, cfg.train.seed),
    )
    metrics = {**ev.result(), **ev.curves()}
    events = [*plan.prior_events(), *plan.round_events() * cfg.fed.rounds] if plan else []
    delta = plan.delta if plan else 1.0 / max(len(local), 1)
    privacy = {
        "unit": "user",
        "trust_model": "central curator (trusted); DP protects each user "
        "against anyone who sees the trained adapter",
        "mode": cfg.dp.mode,
        "epsilon": epsilon_of(events, delta=delta, accountant=cfg.dp.accountant)
        if plan
        else math.inf,
        "epsilon_rdp": epsilon_of(events, delta=delta, accountant="rdp") if plan else math.inf,
        "target_epsilon": cfg.dp.epsilon if dp else math.inf,
        "delta": delta,
        "accountant": cfg.dp.accountant if dp else None,
        "noise_multiplier": plan.sigma if plan else 0.0,
        "prior_noise_multiplier": plan.prior_sigma if plan else 0.0,
        "sample_rate": plan.sample_rate if plan else None,
        "steps": plan.steps_per_round * cfg.fed.rounds if plan else None,
        "clip": cfg.dp.clip,
    }
    baselines = run_baselines(corpus, seed=cfg.train.seed)
    wall = time.perf_counter() - t0
    per_user = ev.per_user()
    results = {
        "setting": "central",
        "dataset": cfg.data.dataset,
        "metrics": metrics,
        "baselines": baselines,
        "privacy": privacy,
        "history": history,
        "timing": {
            "wall_s": wall,
            "train_s": train_s,
            "train_users_per_s": users_seen / train_s if train_s else 0.0,
        },
        "per_user": {k: np.asarray(v).tolist() for k, v in per_user.items()},
        "config": cfg.flat(),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out / "adapter")
    write_json_atomic(out / "results.json", results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m simulations.centralized",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--dataset", default=None, help="ml-latest-small | ml-100k | ml-1m | synthetic")
    ap.add_argument("--data-dir", default=None, help="folder with the data set's files")
    ap.add_argument(
        "--epsilon",
        default=None,
        help="user-level DP budget; 'inf' trains without DP (default: dp.epsilon)",
    )
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--run-config", default="", help='overrides, e.g. "fed.rounds=2 train.lr=0.01"')
    args = ap.parse_args(argv)
    try:
        over = parse_overrides(args.run_config)
        if args.dataset:
            over["data.dataset"] = args.dataset
        if args.data_dir:
            over["data.dir"] = args.data_dir
        if args.epsilon is not None:
            eps = float(args.epsilon)
            over["dp.mode"] = "none" if math.isinf(eps) else "local"
            over["dp.epsilon"] = eps
        elif "dp.mode" not in over:
            over["dp.mode"] = "local"
        cfg = parse_config(over)
        print(json.dumps(cfg.flat(), indent=None), file=sys.stderr)
        res = run(cfg, args.out)
    except (ConfigError, DataError, PrivacyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m, b = res["metrics"], res["baselines"]["most-popular"]
    print(
        f"HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  (most-popular HR@10 "
        f"{b['hr@10']:.4f}; EASE {res['baselines']['ease']['hr@10']:.4f})  epsilon "
        f"{res['privacy']['epsilon']:.3g}  -> {args.out / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
