"""Hand-built Flower objects for the app tests: a node's Context, incoming and reply Messages."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from common import records as R

SERVER_NODE = 0  # Flower's SuperLink node id: the sender of every instruction message
CLIENT_NODE = 1


def make_context(run_config: dict[str, Any], partition_id: int = 0, n: int = 2) -> Context:
    """A ClientApp Context as a simulated SuperNode builds it."""
    return Context(
        run_id=1,
        node_id=CLIENT_NODE,
        node_config={"partition-id": partition_id, "num-partitions": n},
        state=RecordDict(),
        run_config=run_config,
    )


def incoming(
    content: RecordDict, message_type: str, *, message_id: str = "msg-1", node: int = CLIENT_NODE
) -> Message:
    """A Message as it reaches a ClientApp: sent by the SuperLink, with a message id."""
    metadata = Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=SERVER_NODE,
        dst_node_id=node,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    # `metadata=` is how Flower itself rebuilds a Message received over the wire; it is not in
    # the public overloads, hence the ignore.
    return Message(content, metadata=metadata)  # type: ignore[call-overload]


def train_msg(
    state: dict[str, np.ndarray],
    server_round: int = 1,
    *,
    collect_prior: bool = False,
    proximal_mu: float = 0.0,
) -> Message:
    """The server's train instruction for `server_round`."""
    config = ConfigRecord(
        {R.ROUND: server_round, R.COLLECT_PRIOR: collect_prior, R.PROXIMAL_MU: proximal_mu}
    )
    return incoming(
        RecordDict({R.ARRAYS: R.to_record(state), R.CONFIG: config}),
        MessageType.TRAIN,
        message_id=f"train-{server_round}",
    )


def eval_msg(state: dict[str, np.ndarray], *, per_user: bool = False) -> Message:
    """The server's evaluate instruction."""
    config = ConfigRecord({R.EVAL_SPLIT: "test", R.PER_USER: per_user})
    return incoming(
        RecordDict({R.ARRAYS: R.to_record(state), R.CONFIG: config}),
        MessageType.EVALUATE,
        message_id="evaluate",
    )


def reply_from(
    node: int, metrics: dict[str, Any], state: dict[str, np.ndarray] | None = None
) -> Message:
    """A client's reply to a train/evaluate instruction, as the server receives it."""
    content = RecordDict({R.METRICS: MetricRecord(metrics)})
    if state is not None:
        content[R.ARRAYS] = R.to_record(state)
    instruction = incoming(RecordDict(), MessageType.TRAIN, message_id=f"to-{node}", node=node)
    return Message(content, reply_to=instruction)
