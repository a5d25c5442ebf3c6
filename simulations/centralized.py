"""Central run: one party holding every user runs a site's local round, with baselines.

Example::

    python -m simulations.centralized --dataset ml-latest-small \
        --epsilon 8 --out runs/central-eps8   # the embedded data/ml-latest-small

The schedule is the federated one with a single party holding every user: ``fed.rounds``
passes of ``train.epochs`` epochs each, and with ``--epsilon`` finite, user-level DP-SGD whose
noise is calibrated so that the popularity prior plus all passes end at that epsilon. Plan,
ledger and seeds are a site's (`client.site_round.train_round`): noise from OS entropy unless
``dp.reproducible-noise``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from client.site import Site, data_fingerprint
from client.site_round import dp_plan, train_round
from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides
from common.config.run import RunConfig
from common.data.interactions import DataError
from common.evaluation.baseline_runs import dp_baselines_for, evaluator_for, run_baselines
from common.evaluation.evaluate import evaluate_scores, model_score_fn
from common.io import write_json_atomic
from common.model.adapter import catalogue_digest, write_adapter
from common.model.towers import trainable_state
from common.privacy.accounting import PrivacyError
from common.privacy.policy import SitePolicy
from common.privacy.report import privacy_report
from common.replies import Decline, TrainReply
from common.run_result import RunResult, load_run
from common.task import setup
from simulations import cli
from simulations.fairness import cold_start

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


def curator(cfg: RunConfig, ledger: Path | None) -> Site:
    """The central run's one party: a simulated site holding every user, with `CURATOR`.

    Its model is fresh and seeded with ``train.seed`` (as every site's is); its privacy
    ledger is the file `ledger`.
    """
    torch.manual_seed(cfg.train.seed)
    corpus, cat, model = setup(cfg)
    local = corpus.everyone()
    return Site(
        cfg,
        CURATOR.label,
        corpus,
        local,
        model,
        cat,
        ledger,
        local,
        policy=CURATOR,
        simulated=True,
        data_key=data_fingerprint(cfg, local),
    )


def local_round(
    site: Site,
    state: dict[str, np.ndarray],
    *,
    server_round: int,
    progress: Callable[[int, int, float], None] | None = None,
    cooc: bool = False,
) -> TrainReply:
    """The party's round `server_round` as a site runs it; raise if declined.

    Round 0 releases the prior, or with `cooc` the co-occurrence matrix (its second step).
    """
    reply = train_round(
        site,
        state,
        server_round=server_round,
        collect_prior=server_round == 0 and not cooc,
        collect_cooc=cooc,
        proximal_mu=0.0,
        progress=progress,
    )
    if isinstance(reply, Decline):
        raise PrivacyError(reply.reason)
    return reply


def run(cfg: RunConfig, out: Path, *, which: str = "test") -> RunResult:
    """Train centrally, evaluate model and baselines on the `which` item; results.json, read back.

    ``which = "valid"`` scores the validation item instead of the test item (for choosing
    hyper-parameters without reading the test item).

    The federated schedule with one party holding every user: the same local round as a
    site's (`client.site_round.train_round`: its DP plan, ledger, seeds and prior), ``fed.rounds``
    times, after the prior round when ``model.prior`` is set. A DP run also reports the DP
    baselines (`common.evaluation.baseline_runs.dp_baselines_for`) at the model's epsilon and delta.
    """
    if cfg.dp.mode not in CURATOR.dp_modes:
        raise ConfigError(
            f"the central run has no server to add central DP noise; dp.mode must be one of "
            f"{CURATOR.dp_modes}, got {cfg.dp.mode!r}"
        )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedrec-central-") as tmp:
        site = curator(cfg, Path(tmp) / "ledger.json")
        history, releases, train_s, users_seen = _passes(site)
    model, cat, corpus, local = site.model, site.cat, site.corpus, site.local
    ev = evaluate_scores(
        model_score_fn(model, cat, history_len=cfg.data.history_len),
        local,
        corpus.data.n_items,
        which=which,
        evaluator=evaluator_for(corpus, cfg.train.seed),
    )
    metrics = {**ev.result(), **ev.curves()}
    privacy = privacy_report(
        cfg,
        [(site.name, m) for m in releases],
        setting="central",
        plan=dp_plan(site),
    )
    baselines = _baselines(corpus, cfg, privacy, which)
    wall = time.perf_counter() - t0
    per_user = ev.per_user()
    results: dict[str, Any] = {
        "setting": "central",
        "evaluated": which,
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
    if len(corpus.split.cold_items):  # users whose evaluated item is cold vs the rest
        results["cold_start"] = cold_start(
            results, corpus, seed=cfg.train.seed, which=which, text_only=False
        )
    return _save(out, site, results)


def _baselines(corpus: Any, cfg: RunConfig, privacy: dict[str, Any], which: str) -> dict:
    """The ordinary baselines on the `which` item, and on the test item the DP baselines.

    The DP baselines choose on the validation item and report the test item, accounted at
    the model's epsilon and delta (`privacy`).
    """
    baselines = run_baselines(corpus, seed=cfg.train.seed, which=which)
    if which == "test":
        baselines |= dp_baselines_for(corpus, cfg, privacy, label="central")
    return baselines


def _save(out: Path, site: Site, results: dict[str, Any]) -> RunResult:
    """Write the adapter folder and results.json into `out`; return the results read back."""
    out.mkdir(parents=True, exist_ok=True)
    data = site.corpus.data
    digest = catalogue_digest(data.item_ids, data.item_texts)
    write_adapter(site.model, out / "adapter", data=site.cfg.data, catalogue=digest)
    write_json_atomic(out / "results.json", results)
    return load_run(out / "results.json")


def _passes(site: Site) -> tuple[list[dict[str, float]], list[dict[str, Any]], float, int]:
    """The prior round and every pass: (history, privacy releases, train seconds, users)."""
    cfg = site.cfg
    state = trainable_state(site.model)
    releases: list[dict[str, Any]] = []
    if cfg.model.prior:  # round 0: the statistics (as the server asks every site for them)
        for cooc in (False, True) if cfg.model.cooc_items else (False,):
            reply = local_round(site, state, server_round=0, cooc=cooc)
            state = reply.state
            releases.append(reply.metrics())
    history: list[dict[str, float]] = []
    train_s = 0.0
    users_seen = 0
    for rnd in range(1, cfg.fed.rounds + 1):
        bar = tqdm(desc=f"pass {rnd}/{cfg.fed.rounds}", unit="step", leave=False, file=sys.stderr)

        def progress(step: int, total: int, loss: float, bar: tqdm = bar) -> None:
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        reply = local_round(site, state, server_round=rnd, progress=progress)
        bar.close()
        state = reply.state
        releases.append(reply.metrics())
        stats = reply.stats
        if stats is None:  # the curator's policy releases diagnostics: a bug if missing
            raise RuntimeError("the central run's reply carries no training diagnostics")
        loss, wall_s = stats.train_loss, stats.train_s
        train_s += wall_s
        users_seen += stats.users_trained
        val = evaluate_scores(
            model_score_fn(site.model, site.cat, history_len=cfg.data.history_len),
            site.local,
            site.corpus.data.n_items,
            which="valid",
            max_users=cfg.train.eval_users,
            seed=cfg.train.seed,
        ).result()
        row = {
            "round": rnd,
            "loss": loss,
            "valid_hr@10": val["hr@10"],
            "valid_ndcg@10": val["ndcg@10"],
        }
        history.append(row)
        print(
            f"pass {rnd}: loss {loss:.4f}  valid HR@10 {val['hr@10']:.4f}  "
            f"NDCG@10 {val['ndcg@10']:.4f}  ({wall_s:.0f}s)",
            file=sys.stderr,
        )
    return history, releases, train_s, users_seen


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.centralized", __doc__)
    ap.add_argument("--dataset", default=None, help="ml-latest-small | ml-100k | ml-1m | synthetic")
    ap.add_argument("--data-dir", default=None, help="folder with the data set's files")
    ap.add_argument(
        "--epsilon",
        default=None,
        help="user-level DP budget; 'inf' trains without DP (default: dp.epsilon)",
    )
    ap.add_argument(
        "--eval",
        choices=("test", "valid"),
        default="test",
        help="held-out item of the final figures: 'valid' to tune without reading the test item",
    )
    cli.add_out(ap)
    cli.add_run_config(ap, 'overrides, e.g. "fed.rounds=2 train.lr=0.01"')
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
        res = run(cfg, args.out, which=args.eval)
    except (ConfigError, DataError, PrivacyError, ValueError) as exc:
        return cli.bad_input(exc)
    m, b = res.metrics, res.baselines["most-popular"]
    print(
        f"[{args.eval}] HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  (most-popular HR@10 "
        f"{b['hr@10']:.4f}; EASE {res.baselines['ease']['hr@10']:.4f})  epsilon "
        f"{res.privacy.epsilon:.3g}  -> {args.out / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
