"""The server's round loop over a Flower strategy: checks, accounting, checkpoints, history."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import records as R
from common.central_dp import calibrate_central, round_release, top_up_noise
from common.config import MAX_DELTA, RunConfig
from common.model import PRIOR_KEY
from common.privacy import check_delta, default_delta
from server.central_budget import CentralBudget, central_ledger_path
from server.checkpoint import Checkpoint
from server.checks import check_update
from server.report import PRIVACY_KEYS, aggregate_eval, finish_run
from server.strategies import clients_per_round, create_strategy

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

    Calibrated for Flower's fixed-size sampling (see `common.central_dp`), not Poisson.
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


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    initial: dict[str, np.ndarray],
    out: Path,
    *,
    save_adapter_fn: Any = None,
    baselines_fn: Any = None,
    evaluate_fn: Any = None,
) -> dict[str, Any]:
    """Run (or resume) `fed.rounds` rounds; return the final results dictionary."""
    nodes = wait_for_nodes(grid, cfg.fed.min_clients, cfg.fed.node_wait)
    n_clients = len(nodes)
    sigma, q, delta = central_sigma(cfg, n_clients)
    strategy: Strategy = create_strategy(cfg, n_clients, central_sigma=sigma)
    ckpt = Checkpoint(out, cfg)
    if evaluate_fn is not None:  # a factory of the server-side evaluation, given the nodes
        evaluate_fn = evaluate_fn(n_clients)
    # Same config (incl. fed.out-dir) = the same training, also after a server restart: the
    # sites key their ledger entries and redelivery cache by it; round numbers restart per run.
    flat = json.dumps(cfg.flat(), sort_keys=True, default=str)
    run_key = hashlib.sha256(flat.encode()).hexdigest()[:16]
    arrays, history, start = ckpt.load(initial)
    with_prior = cfg.model.prior and cfg.dp.mode != "central"
    if not history and with_prior:
        start = 0  # round 0: the sites release their (DP) popularity histograms, no training
    if start > 1:
        log.info("[fedrec] resuming from checkpoint: rounds 1..%d already done", start - 1)
    budget = None
    if cfg.dp.mode == "central":  # epsilon carried across runs: the server's own ledger
        budget = CentralBudget.open(cfg, out, run_key=run_key, n_clients=n_clients, delta=delta)
        budget.check_plan(
            sigma,
            per_round=clients_per_round(cfg, n_clients),
            rounds=cfg.fed.rounds - max(start, 1) + 1,
        )
    t_run = time.perf_counter()
    status = "completed"
    for rnd in range(start, cfg.fed.rounds + 1):
        t0 = time.perf_counter()
        config = ConfigRecord(
            {
                R.ROUND: rnd,
                R.RUN_KEY: run_key,
                R.COLLECT_PRIOR: rnd == 0,
                R.PROXIMAL_MU: cfg.fed.proximal_mu if cfg.fed.strategy == "fedprox" else 0.0,
            }
        )
        record = R.to_record(arrays)
        if rnd == 0:  # every node releases its histogram; no strategy sampling
            msgs = [
                Message(
                    RecordDict({R.ARRAYS: record, R.CONFIG: config}),
                    dst_node_id=n,
                    message_type=MessageType.TRAIN,
                )
                for n in grid.get_node_ids()
            ]
        else:
            msgs = list(strategy.configure_train(rnd, record, config, grid))
        replies = list(grid.send_and_receive(msgs, timeout=cfg.fed.round_timeout))
        # Flower sets each instruction's message id when it pushes it.
        sent_to = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in msgs}
        good, clients = [], []
        for reply in replies:
            row = _client_row(reply, sent_to)
            if reply.has_error():
                row["dropped"] = f"error: {reply.error.reason}"
            elif _declined(reply):
                row["dropped"] = f"declined: {decline_reason(reply)}"
            else:
                problem = check_update(
                    reply, arrays, cfg, prior_round=bool(config[R.COLLECT_PRIOR])
                )
                if problem:
                    row["dropped"] = problem
                else:
                    good.append(reply)
            if "dropped" in row:
                log.warning(
                    "[fedrec] round %d: dropping reply from node %s%s: %s",
                    rnd,
                    row["node"],
                    f" ({row['label']})" if "label" in row else "",
                    row["dropped"],
                )
            row["bytes_down"] = R.state_bytes(arrays)
            clients.append(row)
        answered = {_node_of(r, sent_to) for r in replies}
        for node in sorted({int(m.metadata.dst_node_id) for m in msgs} - answered):
            why = f"no reply within fed.round-timeout ({cfg.fed.round_timeout:g}s)"
            log.warning("[fedrec] round %d: node %s gave %s", rnd, node, why)
            clients.append({"node": node, "dropped": why, "bytes_down": R.state_bytes(arrays)})
        if len(good) < min(cfg.fed.min_clients, len(msgs)) or not good:
            status = f"stopped at round {rnd}: {len(good)} usable replies of {len(msgs)}"
            log.error("[fedrec] %s (fed.min-clients = %d)", status, cfg.fed.min_clients)
            break
        log.info("[fedrec] round %d: aggregating %d of %d replies", rnd, len(good), len(msgs))
        new: ArrayRecord | None
        if rnd == 0:
            new, train_metrics = aggregate_prior(good, arrays), None
        else:
            new, train_metrics = strategy.aggregate_train(rnd, good)
        if new is None:
            status = f"stopped at round {rnd}: aggregation failed"
            break
        release = None
        if cfg.dp.mode == "central" and rnd > 0:
            kept = len(good)
            if sigma > 0 and kept < len(msgs):
                new = top_up_noise(
                    new, sigma=sigma, clip=cfg.fed.central_clip, sampled=len(msgs), aggregated=kept
                )
                log.warning(
                    "[fedrec] round %d: %d of %d sampled updates aggregated; central DP noise "
                    "topped up to sigma * clip / %d to keep the planned privacy",
                    rnd,
                    kept,
                    len(msgs),
                    kept,
                )
                kept = len(msgs)  # the released noise now matches a full round's
            release = round_release(sigma, sampled=len(msgs), aggregated=kept)
            if budget is not None and release is not None:
                budget.record(rnd, release)  # before the noised model leaves the server
        arrays = R.from_record(new)
        eval_msgs = list(
            strategy.configure_evaluate(
                rnd,
                new,
                ConfigRecord(
                    {
                        R.EVAL_SPLIT: "test",
                        R.PER_USER: cfg.fed.per_user_metrics,
                        R.ROUND: rnd,
                        R.RUN_KEY: run_key,
                    }
                ),
                grid,
            )
        )
        ev_replies, eval_declined = [], []
        for r in grid.send_and_receive(eval_msgs, timeout=cfg.fed.round_timeout):
            if r.has_error():
                continue
            if _declined(r):
                why = decline_reason(r)
                log.warning("[fedrec] round %d: node %s declines evaluation: %s", rnd,
                            r.metadata.src_node_id, why)  # fmt: skip
                eval_declined.append(
                    {"node": int(r.metadata.src_node_id), "label": site_label(r), "reason": why}
                )
            else:
                ev_replies.append(r)
        site_eval = aggregate_eval(ev_replies)
        # In simulation the server holds the data and evaluates itself (nothing released by
        # a site); the sites' (noised) aggregate is kept beside it.
        evaluation = evaluate_fn(arrays) if evaluate_fn is not None else site_eval
        row_out: dict[str, Any] = {
            "round": rnd,
            "wall_s": time.perf_counter() - t0,
            "clients": clients,
            "n_aggregated": len(good),
            "train": dict(train_metrics or {}),
            "eval": evaluation,
            "site_eval": site_eval,
            "eval_declined": eval_declined,
            "eval_privacy": [
                {
                    "node": int(r.metadata.src_node_id),
                    "label": site_label(r),
                    **{
                        k: float(v)  # type: ignore[arg-type]
                        for k, v in r.content.metric_records[R.METRICS].items()
                        if k in PRIVACY_KEYS and k != R.DECLINED
                    },
                }
                for r in ev_replies
                if "epsilon" in r.content.metric_records[R.METRICS]
            ],
        }
        if cfg.dp.mode == "central":
            row_out["central_release"] = list(release) if release else None
            assert budget is not None
            row_out["central_epsilon"] = budget.run_epsilon()
            row_out["central_ledger_epsilon"] = budget.total_epsilon()
        history.append(row_out)
        ckpt.save(rnd, arrays, history)
        if save_adapter_fn is not None:
            save_adapter_fn(arrays, out / "adapter")
        log.info(
            "[fedrec] round %d done in %.1fs: HR@10 %.4f NDCG@10 %.4f",
            rnd,
            row_out["wall_s"],
            evaluation.get("hr@10", math.nan),
            evaluation.get("ndcg@10", math.nan),
        )
    central = {
        "sigma": sigma,
        "q": q,
        "delta": delta,
        "rounds": len(history),
        "ledger": str(central_ledger_path(cfg, out)) if budget is not None else None,
    }
    return finish_run(
        cfg,
        out,
        history,
        arrays,
        status=status,
        central=central,
        wall_s=time.perf_counter() - t_run,
        baselines_fn=baselines_fn,
    )


def aggregate_prior(replies: list[Message], state: dict[str, np.ndarray]) -> ArrayRecord:
    """Round 0: the sum of the sites' (noisy) histograms.

    Sites send sums, not means, so no site reveals its user count; the prior is used only up
    to scale (standardised log-popularity, normalised negative sampling). Only the prior
    changes; the trainable arrays stay the initial ones.
    """
    priors = [R.from_record(r.content.array_records[R.ARRAYS])[PRIOR_KEY] for r in replies]
    total = np.sum([p.astype(np.float64) for p in priors], axis=0)
    return R.to_record({**state, PRIOR_KEY: total.astype(np.float32)})


def _node_of(reply: Message, sent_to: dict[str, int]) -> int:
    """The node a reply is about (the destination of the instruction it answers).

    An error the SuperLink makes for an unavailable node comes from the SuperLink itself
    (src node 1), so the instruction's destination decides, not the reply's source.
    """
    return sent_to.get(reply.metadata.reply_to_message_id, int(reply.metadata.src_node_id))


def _client_row(reply: Message, sent_to: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {"node": _node_of(reply, sent_to)}
    if reply.has_error() or not reply.has_content():
        return row
    if label := site_label(reply):
        row["label"] = label
    metrics = reply.content.metric_records.get(R.METRICS)
    if metrics is not None:
        row.update({k: v for k, v in metrics.items() if not isinstance(v, list)})
    rec = reply.content.array_records.get(R.ARRAYS)
    row["bytes_up"] = int(sum(a.numpy().nbytes for a in rec.values())) if rec else 0
    return row


def site_label(reply: Message) -> str:
    """The public label a site sends with its replies ("" when it publishes none)."""
    rec = reply.content.config_records.get(R.SITE)
    return str(rec.get(R.LABEL, "")) if rec is not None else ""


def decline_reason(reply: Message) -> str:
    """The reason a site gave for declining (its ``decline`` ConfigRecord)."""
    rec = reply.content.config_records.get(R.DECLINE)
    return str(rec.get(R.REASON, "no reason given")) if rec is not None else "no reason given"


def _declined(reply: Message) -> bool:
    metrics = reply.content.metric_records.get(R.METRICS)
    return bool(metrics is not None and metrics.get(R.DECLINED, 0))
