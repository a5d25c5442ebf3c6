"""An in-process Grid: delivers the server's Messages to real (or hostile) ClientApps.

It stands in for Flower's SuperLink + SuperNodes in tests of `server.federation`:

- every node has its own persistent `Context` (node config, state), like a SuperNode;
- a message gets a fresh message id, as the SuperLink assigns one;
- an exception raised by the ClientApp becomes an error reply exactly as Flower builds it
  (``Error(CLIENT_APP_RAISED_EXCEPTION, "<class ...>:<'...'>")``, see
  ``flwr/supernode/runtime/run_clientapp.py``);
- a node that does not answer within ``timeout`` gives no reply at all. Flower's
  ``Grid.send_and_receive(messages, timeout=fed.round-timeout)`` waits for all nodes in
  parallel and returns whatever arrived; here the nodes are served one after the other (they
  share the process's cached model), so ``timeout`` applies to each node on its own, which is
  the same bound for nodes that would run in parallel.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.client_app import app as honest_app
from client.hostile import app as hostile_app
from common import records as R
from common.config.parse import parse_config
from common.config.run import RunConfig
from common.model.towers import RecModel, trainable_state
from common.task import load_corpus
from server.federation import run_federation

FIRST_NODE = 101
FROM_ENV = "$FEDREC_FAULT"  # a `federate` fault entry: the hostile app, fault from the env


class GridCrash(BaseException):
    """Raised by `InProcessGrid` to emulate the server process dying (see ``InProcessGrid``)."""


@dataclass
class Node:
    """One simulated SuperNode: its app, its Context, and what it was sent."""

    node_id: int
    app: ClientApp
    context: Context
    received: list[str] = field(default_factory=list)


def _round_of(msg: Message) -> int:
    config = msg.content.config_records.get(R.CONFIG)
    return int(config.get(R.ROUND, 0)) if config else 0  # type: ignore[arg-type]


class InProcessGrid:
    """The part of Flower's Grid that `server.federation.run_federation` uses.

    Parameters
    ----------
    run_config : dict
        The flat run config every node sees.
    apps : list of ClientApp
        One app per node; node ``i`` gets ``partition-id = i`` of ``len(apps)``.
    node_configs : list of dict, optional
        Extra node-config entries per node (e.g. ``{"fault": "nan"}``).
    crash : callable, optional
        ``crash(kind, server_round, phase)`` -> True makes `send_and_receive` raise `GridCrash`
        ``"before"`` or ``"after"`` delivering that batch: the server process dies between
        rounds, or after the clients did their work but before it saw the replies.
    """

    def __init__(
        self,
        run_config: dict[str, Any],
        apps: list[ClientApp],
        node_configs: list[dict[str, Any]] | None = None,
        crash: Callable[[str, int, str], bool] | None = None,
    ) -> None:
        extra = node_configs or [{} for _ in apps]
        self.nodes = {
            FIRST_NODE + i: Node(
                FIRST_NODE + i,
                app,
                Context(
                    run_id=1,
                    node_id=FIRST_NODE + i,
                    node_config={"partition-id": i, "num-partitions": len(apps), **extra[i]},
                    state=RecordDict(),
                    run_config=dict(run_config),
                ),
            )
            for i, app in enumerate(apps)
        }
        self.crash = crash
        self.server_round = 0
        self.timeouts: list[int] = []  # nodes that did not answer in time
        self._threads: list[threading.Thread] = []

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the connected nodes."""
        return list(self.nodes)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver each message; return the replies that arrived within `timeout` each."""
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else ""
        rnd = self.server_round if kind != MessageType.TRAIN else _round_of(messages[0])
        self.server_round = rnd
        if self.crash is not None and self.crash(kind, rnd, "before"):
            raise GridCrash(f"server died before sending the {kind} messages of round {rnd}")
        replies = []
        for msg in messages:
            node = self.nodes[msg.metadata.dst_node_id]
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node.received.append(kind)
            reply = self._deliver(node, msg, timeout)
            if reply is None:
                self.timeouts.append(node.node_id)
                continue
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
        if self.crash is not None and self.crash(kind, rnd, "after"):
            raise GridCrash(f"server died after the {kind} messages of round {rnd} were answered")
        return replies

    def _deliver(self, node: Node, msg: Message, timeout: float | None) -> Message | None:
        box: dict[str, Message] = {}

        def work() -> None:
            try:
                box["reply"] = node.app(msg, node.context)
            except Exception as ex:  # noqa: BLE001 - Flower turns any exception into an error
                reason = str(type(ex)) + ":<'" + str(ex) + "'>"
                box["reply"] = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=msg,
                )

        thread = threading.Thread(target=work, daemon=True, name=f"node-{node.node_id}")
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self._threads.append(thread)  # a hung node: left behind, as a real one would be
            return None
        return box["reply"]


def initial_state(cfg: RunConfig) -> dict[str, np.ndarray]:
    """The server's seeded initial trainable state, as `server.server_app.main` builds it."""
    torch.manual_seed(cfg.train.seed)
    n_items = load_corpus(cfg.data).data.n_items
    model = RecModel(cfg.model, n_items=n_items, history_len=cfg.data.history_len)
    return trainable_state(model)


def federate(
    run_config: dict[str, Any],
    faults: list[str],
    *,
    crash: Callable[[str, int, str], bool] | None = None,
) -> tuple[dict[str, Any], InProcessGrid]:
    """Run `server.federation.run_federation` over one node per entry of `faults`.

    ``faults[i] = ""`` gives node i the real `client.client_app.app`; `FROM_ENV` gives it
    `client.hostile.app` reading ``$FEDREC_FAULT``; any other value gives it the hostile app
    with node config ``fault = faults[i]``.
    """
    cfg = parse_config(run_config)
    apps = [honest_app if not f else hostile_app for f in faults]
    node_configs = [{"fault": f} if f and f != FROM_ENV else {} for f in faults]
    grid = InProcessGrid(run_config, apps, node_configs, crash=crash)
    results = run_federation(grid, cfg, initial_state(cfg), Path(cfg.fed.out_dir))  # type: ignore[arg-type]
    return results, grid
