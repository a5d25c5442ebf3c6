"""One round's steps: round 0 (the sites' DP statistics), a training round, its evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import records as R
from common.config.run import RunConfig
from common.model.towers import COOC_KEY, PRIOR_KEY
from common.replies import EvalReply, KeptReply, ReplyError
from server.checks import SortedReplies, decline_of, node_of, site_label, sort_replies
from server.evaluation import EvaluateFn
from server.report import aggregate_eval
from server.wrappers import CheckedReplies

log = logging.getLogger("flwr.fedrec")


@dataclass
class RoundResult:
    """One finished round as results.json's history stores it (`to_json`)."""

    round: int
    clients: list[dict[str, Any]]
    n_aggregated: int
    train: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    eval: dict[str, Any] = field(default_factory=dict)
    site_eval: dict[str, Any] = field(default_factory=dict)
    eval_declined: list[dict[str, Any]] = field(default_factory=list)
    eval_privacy: list[dict[str, Any]] = field(default_factory=list)
    central: dict[str, Any] = field(default_factory=dict)  # central DP: release, epsilons

    def to_json(self) -> dict[str, Any]:
        """The history row (the keys of the first version, central-DP keys only under it)."""
        return {
            "round": self.round,
            "wall_s": self.wall_s,
            "clients": self.clients,
            "n_aggregated": self.n_aggregated,
            "train": self.train,
            "eval": self.eval,
            "site_eval": self.site_eval,
            "eval_declined": self.eval_declined,
            "eval_privacy": self.eval_privacy,
            **self.central,
        }


def instruction(rnd: int, run_key: str, cfg: RunConfig, *, cooc: bool = False) -> ConfigRecord:
    """The ConfigRecord every training instruction of round `rnd` carries.

    Round 0 asks for the popularity histogram, or with `cooc` for the co-occurrence matrix.
    """
    return ConfigRecord(
        {
            R.ROUND: rnd,
            R.RUN_KEY: run_key,
            R.COLLECT_PRIOR: rnd == 0 and not cooc,
            R.COLLECT_COOC: cooc,
            R.PROXIMAL_MU: cfg.fed.proximal_mu if cfg.fed.strategy == "fedprox" else 0.0,
        }
    )


def prior_round(
    grid: Grid, cfg: RunConfig, state: dict[str, np.ndarray], run_key: str
) -> tuple[ArrayRecord | None, RoundResult, str]:
    """Round 0: every node releases its (DP) popularity histogram; the prior is their sum.

    With `model.cooc-items`, a second step follows: every node releases its (DP)
    co-occurrence matrix of the summed prior's head items; the matrix is their sum. No
    strategy sampling and no training: the trainable arrays stay the initial ones.
    Returns (new state or None, the round's result, why it stopped).
    """
    steps = [PRIOR_KEY, COOC_KEY] if cfg.model.cooc_items else [PRIOR_KEY]
    result = RoundResult(0, [], 0)
    for key in steps:
        got = _release_step(grid, cfg, state, run_key, key)
        rows = got.rows if key == PRIOR_KEY else [{**r, "stage": key} for r in got.rows]
        result.clients += rows
        result.n_aggregated = len(got.good)
        if not got.enough(cfg.fed.min_clients):
            step = "" if key == PRIOR_KEY else f" ({key} step)"
            why = f"stopped at round 0{step}: {len(got.good)} usable replies of {got.sampled}"
            log.error("[fedrec] %s (fed.min-clients = %d)", why, cfg.fed.min_clients)
            return None, result, why
        log.info("[fedrec] round 0 (%s): summing %d of %d replies", key, len(got.good),
                 got.sampled)  # fmt: skip
        state = {**state, key: summed(got.good, key)}
    return R.to_record(state), result, ""


def _release_step(
    grid: Grid, cfg: RunConfig, state: dict[str, np.ndarray], run_key: str, key: str
) -> SortedReplies:
    """Send round 0's instruction for the statistic `key` to every node; sort the replies."""
    record = R.to_record(state)
    config = instruction(0, run_key, cfg, cooc=key == COOC_KEY)
    sent = [
        Message(RecordDict({R.ARRAYS: record, R.CONFIG: config}), dst_node_id=n,
                message_type=MessageType.TRAIN)
        for n in grid.get_node_ids()
    ]  # fmt: skip
    replies = list(grid.send_and_receive(sent, timeout=cfg.fed.round_timeout))
    return sort_replies(0, sent, replies, state, cfg, prior_round=key == PRIOR_KEY,
                        cooc_round=key == COOC_KEY)  # fmt: skip


def summed(replies: list[Message], key: str) -> np.ndarray:
    """The sum of the sites' (noisy) released statistic `key` (float32).

    Sites send sums, not means, so no site reveals its user count; the statistics are used
    only up to scale (standardised log-popularity, normalised negative sampling, EASE scores
    rescaled by their RMS).
    """
    parts = [R.from_record(r.content.array_records[R.ARRAYS])[key] for r in replies]
    return np.sum([p.astype(np.float64) for p in parts], axis=0).astype(np.float32)


def train_round(
    grid: Grid,
    strategy: CheckedReplies,
    cfg: RunConfig,
    rnd: int,
    state: dict[str, np.ndarray],
    run_key: str,
) -> tuple[ArrayRecord | None, RoundResult, str]:
    """A training round over the composed strategy: sample, send, check, aggregate."""
    sent = list(strategy.configure_train(rnd, R.to_record(state), instruction(rnd, run_key, cfg),
                                         grid))  # fmt: skip
    replies = list(grid.send_and_receive(sent, timeout=cfg.fed.round_timeout))
    new, metrics = strategy.aggregate_train(rnd, replies)
    result = RoundResult(rnd, strategy.last.rows, len(strategy.last.good), dict(metrics or {}))
    return new, result, strategy.stop_reason


def evaluate_round(
    grid: Grid,
    strategy: CheckedReplies,
    cfg: RunConfig,
    result: RoundResult,
    new: ArrayRecord,
    run_key: str,
    evaluate_fn: EvaluateFn | None,
) -> None:
    """Ask the sites to evaluate `new` and fill `result`'s evaluation fields.

    In simulation the server holds the data and evaluates itself (`evaluate_fn`: nothing
    released by a site); the sites' (noised) aggregate is kept beside it as ``site_eval``.
    """
    rnd = result.round
    config = ConfigRecord({R.EVAL_SPLIT: cfg.fed.eval_split, R.PER_USER: cfg.fed.per_user_metrics,
                           R.ROUND: rnd, R.RUN_KEY: run_key})  # fmt: skip
    msgs = list(strategy.configure_evaluate(rnd, new, config, grid))
    usable = []
    for r in grid.send_and_receive(msgs, timeout=cfg.fed.round_timeout):
        if r.has_error():
            continue
        node, label = int(r.metadata.src_node_id), site_label(r)
        if (decline := decline_of(r)) is not None:
            log.warning("[fedrec] round %d: node %s declines evaluation: %s", rnd, node,
                        decline.reason)  # fmt: skip
            result.eval_declined.append({"node": node, "label": label, "reason": decline.reason})
            continue
        try:
            reply = EvalReply.from_record(r.content)
        except ReplyError as exc:
            log.warning("[fedrec] round %d: dropping evaluation of node %s: %s", rnd, node, exc)
            continue
        usable.append(r)
        if reply.privacy is not None:
            privacy = {k: float(v) for k, v in reply.privacy.metrics().items()}  # type: ignore[arg-type]
            result.eval_privacy.append({"node": node, "label": label, **privacy})
    result.site_eval = aggregate_eval(usable)
    result.eval = evaluate_fn(R.from_record(new)) if evaluate_fn is not None else result.site_eval


def deliver_final(
    grid: Grid, cfg: RunConfig, state: dict[str, np.ndarray], run_key: str, rnd: int
) -> list[dict[str, Any]]:
    """Send the final global state to every connected node, which keeps it as its adapter.

    One small message per node (the arrays every round already sends); nothing is released
    by the sites. Returns one row per node: ``saved`` true, or the error the node reported.
    """
    record, config = R.to_record(state), ConfigRecord({R.ROUND: rnd, R.RUN_KEY: run_key})
    sent = [
        Message(
            RecordDict({R.ARRAYS: record, R.CONFIG: config}),
            dst_node_id=n,
            message_type=R.FINAL_MESSAGE_TYPE,
        )
        for n in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(sent, timeout=cfg.fed.round_timeout))
    to = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent}  # ids set on send
    rows: list[dict[str, Any]] = []
    for r in replies:
        node = node_of(r, to)
        if r.has_error():
            log.warning("[fedrec] node %s did not keep the final adapter: %s", node,
                        r.error.reason)  # fmt: skip
            rows.append({"node": node, "saved": False, "error": r.error.reason})
        else:
            saved = KeptReply.from_record(r.content).saved
            rows.append({"node": node, "label": site_label(r), "saved": saved})
    got = {row["node"] for row in rows}
    rows += [{"node": n, "saved": False, "error": "no reply"} for n in to.values()
             if n not in got]  # fmt: skip
    log.info("[fedrec] final adapter kept by %d of %d nodes",
             sum(row["saved"] for row in rows), len(sent))  # fmt: skip
    return rows
