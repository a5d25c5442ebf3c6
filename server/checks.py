"""Where a reply is checked: every incoming update is sorted into usable or dropped (why)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from common import records as R
from common.config.run import RunConfig
from common.model.towers import COOC_KEY, PRIOR_KEY
from common.replies import Decline
from common.replies import site_label as label_of

log = logging.getLogger("flwr.fedrec")


def weight_key(cfg: RunConfig) -> str:
    """The metric FedAvg weighs updates by.

    Central DP needs an unweighted mean (each client moves it by at most clip / m); a local-DP
    site does not release its exact user count, so its update weighs as much as any other's.
    Only without DP are updates weighted by users.
    """
    return R.NUM_EXAMPLES if cfg.dp.mode == "none" else R.UNIT_WEIGHT


def check_update(
    reply: Message, global_state: dict[str, np.ndarray], cfg: RunConfig, *, prior_round: bool,
    cooc_round: bool = False,
) -> str | None:
    """Return why `reply` must be dropped, or None if it is a well-formed, bounded update.

    Checks: an ArrayRecord and a positive example count are present; names, shapes and dtypes
    equal the global state's; all values finite; the prior unchanged outside the prior round
    and the co-occurrence matrix outside its step of round 0;
    the L2 norm of (update - global) over trainable tensors within ``fed.update-norm-bound``.
    """
    rec = reply.content.array_records.get(R.ARRAYS)
    if rec is None:
        return "no ArrayRecord in the reply"
    metrics = reply.content.metric_records.get(R.METRICS)
    key = weight_key(cfg)
    n = None if metrics is None else metrics.get(key)
    if not isinstance(n, int | float) or not np.isfinite(n) or n <= 0:
        return f"`{key}` missing or not positive ({n!r})"
    names = set(rec.keys())
    if names != set(global_state):
        return (
            f"array names differ: missing {sorted(set(global_state) - names)}, "
            f"extra {sorted(names - set(global_state))}"
        )
    sq = 0.0
    for name, ref in global_state.items():
        arr = rec[name].numpy()
        if arr.shape != ref.shape:
            return f"`{name}` has shape {arr.shape}, expected {ref.shape}"
        if arr.dtype != ref.dtype:
            return f"`{name}` has dtype {arr.dtype}, expected {ref.dtype}"
        if not np.all(np.isfinite(arr)):
            return f"`{name}` has non-finite values"
        if name == PRIOR_KEY:
            if not prior_round and not np.array_equal(arr, ref):
                return "the popularity prior changed outside the prior round"
            continue
        if name == COOC_KEY:
            if not cooc_round and not np.array_equal(arr, ref):
                return "the co-occurrence matrix changed outside its release (round 0)"
            continue
        sq += float(np.sum((arr.astype(np.float64) - ref) ** 2))
    norm = float(np.sqrt(sq))
    if norm > cfg.fed.update_norm_bound:
        return f"update norm {norm:.4g} exceeds fed.update-norm-bound {cfg.fed.update_norm_bound}"
    return None


# ---------------------------------------------------------------- sorting a round's replies


def node_of(reply: Message, sent_to: dict[str, int]) -> int:
    """The node a reply is about (the destination of the instruction it answers).

    An error the SuperLink makes for an unavailable node comes from the SuperLink itself
    (src node 1), so the instruction's destination decides, not the reply's source.
    """
    return sent_to.get(reply.metadata.reply_to_message_id, int(reply.metadata.src_node_id))


def site_label(reply: Message) -> str:
    """The public label a site sends with its replies ("" when it publishes none)."""
    return label_of(reply.content)


def decline_of(reply: Message) -> Decline | None:
    """The site's refusal in a (content) reply, with its reason; None if it did not decline."""
    return Decline.from_record(reply.content)


def client_row(reply: Message, sent_to: dict[str, int]) -> dict[str, Any]:
    """A reply's row in the round's history: node, label, scalar metrics, bytes uploaded."""
    row: dict[str, Any] = {"node": node_of(reply, sent_to)}
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


@dataclass
class SortedReplies:
    """A training round's replies: the usable ones and one history row per sampled node."""

    good: list[Message]
    rows: list[dict[str, Any]]
    sampled: int

    def enough(self, min_clients: int) -> bool:
        """Whether the round may be aggregated (at least min(`min_clients`, sampled) usable)."""
        return bool(self.good) and len(self.good) >= min(min_clients, self.sampled)


def sort_replies(
    rnd: int,
    sent: list[Message],
    replies: list[Message],
    global_state: dict[str, np.ndarray],
    cfg: RunConfig,
    *,
    prior_round: bool,
    cooc_round: bool = False,
) -> SortedReplies:
    """Drop errors, declines, malformed or out-of-bound updates and silent nodes, with a reason.

    Each dropped node is logged (with its label, when it publishes one) and its row carries
    ``dropped``; the usable replies keep their order.
    """
    sent_to = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent}
    down = R.state_bytes(global_state)
    good, rows = [], []
    for reply in replies:
        row = client_row(reply, sent_to)
        if reply.has_error():
            row["dropped"] = f"error: {reply.error.reason}"
        elif (decline := decline_of(reply)) is not None:
            row["dropped"] = f"declined: {decline.reason}"
        elif problem := check_update(reply, global_state, cfg, prior_round=prior_round,
                                     cooc_round=cooc_round):
            row["dropped"] = problem
        else:
            good.append(reply)
        if "dropped" in row:
            label = f" ({row['label']})" if "label" in row else ""
            log.warning("[fedrec] round %d: dropping reply from node %s%s: %s",
                        rnd, row["node"], label, row["dropped"])  # fmt: skip
        row["bytes_down"] = down
        rows.append(row)
    answered = {node_of(r, sent_to) for r in replies}
    for node in sorted({int(m.metadata.dst_node_id) for m in sent} - answered):
        why = f"no reply within fed.round-timeout ({cfg.fed.round_timeout:g}s)"
        log.warning("[fedrec] round %d: node %s gave %s", rnd, node, why)
        rows.append({"node": node, "dropped": why, "bytes_down": down})
    return SortedReplies(good, rows, len(sent))
