"""The server's round loop: resume, round 0 (the prior), training rounds, checkpoints, results."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from common import records as R
from common.config.dp import MAX_DELTA
from common.config.run import RunConfig
from common.privacy.accounting import check_delta, default_delta
from common.privacy.central import calibrate_central
from server.central_budget import CentralBudget, central_ledger_path
from server.checkpoint import Checkpoint
from server.evaluation import EvaluateFn
from server.report import finish_run
from server.rounds import deliver_final, evaluate_round, prior_round, train_round
from server.strategies import CheckedReplies, clients_per_round, round_strategy

log = logging.getLogger("flwr.fedrec")


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """Block until at least `n` nodes are connected, or `timeout` seconds pass (a clear error)."""
    t0 = time.time()
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.time() - t0 > timeout:
            raise RuntimeError(
                f"only {len(nodes)} of {n} required nodes connected after {timeout:.0f}s"
            )
        time.sleep(1.0)


def central_sigma(cfg: RunConfig, n_clients: int) -> tuple[float, float, float]:
    """(noise multiplier, sample rate q, delta) of central DP-FedAvg; sigma 0 if off.

    Calibrated for Flower's fixed-size sampling (see `common.privacy.central`), not Poisson.
    """
    m = clients_per_round(cfg, n_clients)
    q = m / n_clients
    delta = cfg.dp.delta or default_delta(n_clients, MAX_DELTA)
    check_delta(delta, n_clients)
    if cfg.dp.mode != "central":
        return 0.0, q, delta
    if cfg.fed.central_noise > 0:
        return cfg.fed.central_noise, q, delta
    sigma = calibrate_central(
        target_epsilon=cfg.dp.epsilon,
        n_clients=n_clients,
        per_round=m,
        rounds=cfg.fed.rounds,
        delta=delta,
    )
    return sigma, q, delta


def run_key_of(cfg: RunConfig) -> str:
    """The run's key: the same config (incl. fed.out-dir) is the same training.

    Also after a server restart: the sites key their ledger entries and redelivery cache by it.
    """
    flat = json.dumps(cfg.flat(), sort_keys=True, default=str)
    return hashlib.sha256(flat.encode()).hexdigest()[:16]


def _central_budget(
    cfg: RunConfig,
    out: Path,
    run_key: str,
    n_clients: int,
    noise: tuple[float, float],
    start: int,
) -> CentralBudget | None:
    """Under central DP the server's own ledger, else None.

    Epsilon is carried across runs; the plan for the rounds still to run at noise
    (sigma, delta) is checked against its cap before anything is released.
    """
    if cfg.dp.mode != "central":
        return None
    sigma, delta = noise
    budget = CentralBudget.open(cfg, out, run_key=run_key, n_clients=n_clients, delta=delta)
    budget.check_plan(sigma, per_round=clients_per_round(cfg, n_clients),
                      rounds=cfg.fed.rounds - max(start, 1) + 1)  # fmt: skip
    return budget


def _central_round(strategy: CheckedReplies, budget: CentralBudget) -> dict[str, Any]:
    """A central-DP round's release (what Flower's wrapper noised) and the epsilon so far."""
    release = getattr(strategy.strategy, "release", None)
    return {
        "central_release": list(release) if release else None,
        "central_epsilon": budget.run_epsilon(),
        "central_ledger_epsilon": budget.total_epsilon(),
    }


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    initial: dict[str, np.ndarray],
    out: Path,
    *,
    save_adapter_fn: Callable[[dict[str, np.ndarray], Path], None] | None = None,
    baselines_fn: Callable[[], dict[str, Any]] | None = None,
    dp_baselines_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    evaluate_fn: Callable[[int], EvaluateFn] | None = None,
) -> dict[str, Any]:
    """Run (or resume) `fed.rounds` rounds; return the final results dictionary.

    `evaluate_fn` is a factory of the server-side evaluation, given the number of nodes;
    `dp_baselines_fn` (given the run's privacy section) the DP baselines at its budget.
    """
    n_clients = len(wait_for_nodes(grid, cfg.fed.min_clients, cfg.fed.node_wait))
    sigma, q, delta = central_sigma(cfg, n_clients)
    run_key = run_key_of(cfg)
    ckpt = Checkpoint(out, cfg)
    arrays, history, start = ckpt.load(initial)
    if not history and cfg.model.prior and cfg.dp.mode != "central":
        start = 0  # round 0: the sites release their (DP) popularity histograms, no training
    if start > 1:
        log.info("[fedrec] resuming from checkpoint: rounds 1..%d already done", start - 1)
    budget = _central_budget(cfg, out, run_key, n_clients, (sigma, delta), start)
    strategy = round_strategy(cfg, n_clients, central_sigma=sigma, budget=budget)
    evaluate = evaluate_fn(n_clients) if evaluate_fn is not None else None
    t_run, status = time.perf_counter(), "completed"
    for rnd in range(start, cfg.fed.rounds + 1):
        t0 = time.perf_counter()
        if rnd == 0:
            new, result, stop = prior_round(grid, cfg, arrays, run_key)
        else:
            new, result, stop = train_round(grid, strategy, cfg, rnd, arrays, run_key)
        if new is None:
            status = stop
            break
        arrays = R.from_record(new)
        evaluate_round(grid, strategy, cfg, result, new, run_key, evaluate)
        if budget is not None:
            result.central = _central_round(strategy, budget)
        result.wall_s = time.perf_counter() - t0
        history.append(result.to_json())
        ckpt.save(rnd, arrays, history)
        if save_adapter_fn is not None:
            save_adapter_fn(arrays, out / "adapter")
        ev = result.eval
        log.info("[fedrec] round %d done in %.1fs: HR@10 %.4f NDCG@10 %.4f", rnd, result.wall_s,
                 ev.get("hr@10", math.nan), ev.get("ndcg@10", math.nan))  # fmt: skip
    delivery = None
    if status == "completed" and cfg.fed.deliver_final:
        delivery = deliver_final(grid, cfg, arrays, run_key, cfg.fed.rounds)
    central = {
        "sigma": sigma,
        "q": q,
        "delta": delta,
        "rounds": len(history),
        "ledger": str(central_ledger_path(cfg, out)) if budget is not None else None,
    }
    return finish_run(cfg, out, history, arrays, status=status, central=central,
                      wall_s=time.perf_counter() - t_run, baselines_fn=baselines_fn,
                      dp_baselines_fn=dp_baselines_fn, delivery=delivery)  # fmt: skip
