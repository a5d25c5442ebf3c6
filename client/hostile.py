"""Test-only hostile ClientApp: the real handlers with one injected fault (never deploy this).

The fault is chosen per node by the node-config key ``fault`` or, failing that, by the
environment variable ``FEDREC_FAULT``; the syntax is ``<kind>[:<share>]``:

- ``raise``     train for real (the ledger is charged), then raise: a crash mid-training.
- ``nan``/``inf`` one value of a LoRA tensor in the reply becomes NaN / +Inf.
- ``shape``     one LoRA tensor gains a row.
- ``extra``     the reply carries an array the global model does not have.
- ``scale<k>``  the update (reply - received, every tensor but the prior) is multiplied by k,
  e.g. ``scale100``.
- ``hang``      never answer: sleep ``FEDREC_HANG_S`` seconds (default 3600), then raise.

``<share>`` in (0, 1] makes only partitions ``partition-id < share * num-partitions``
misbehave (``raise:0.5`` -> the first half); the others, and nodes without a partition id
when the share is below 1, behave honestly. Evaluation and query messages are answered
honestly except by ``hang`` (a hung node answers nothing).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client import client_app as honest
from common import records as R
from common.model.towers import PRIOR_KEY

State = dict[str, np.ndarray]
FAULT_ENV = "FEDREC_FAULT"
HANG_ENV = "FEDREC_HANG_S"


class InjectedFaultError(RuntimeError):
    """Raised by a hostile client on purpose (so tests can tell it from a real bug)."""


@dataclass(frozen=True)
class Fault:
    """A parsed fault spec: its kind, a numeric parameter (scale factor) and the share."""

    kind: str
    factor: float = 1.0
    share: float = 1.0

    def applies_to(self, node_config: Mapping[str, object]) -> bool:
        """Whether this node misbehaves (see the module docstring for ``share``)."""
        if self.share >= 1.0:
            return True
        if "partition-id" not in node_config:
            return False
        pid = int(node_config["partition-id"])  # type: ignore[call-overload]
        n = int(node_config["num-partitions"])  # type: ignore[call-overload]
        return pid < self.share * n


def _lora_name(state: State) -> str:
    names = sorted(k for k in state if k.startswith("lora."))
    if not names:
        raise ValueError("the reply has no LoRA tensor to corrupt")
    return names[0]


def _poison(value: float) -> Callable[[State, State, Fault], State]:
    def apply(new: State, _sent: State, _fault: Fault) -> State:
        name = _lora_name(new)
        arr = new[name].copy()
        arr.flat[0] = value
        return {**new, name: arr}

    return apply


def _shape(new: State, _sent: State, _fault: Fault) -> State:
    name = _lora_name(new)
    arr = new[name]
    return {**new, name: np.concatenate([arr, arr[:1]], axis=0)}


def _extra(new: State, _sent: State, _fault: Fault) -> State:
    return {**new, "lora.backdoor.weight": np.ones((2, 2), np.float32)}


def _scale(new: State, sent: State, fault: Fault) -> State:
    return {
        k: v if k == PRIOR_KEY else (sent[k] + fault.factor * (v - sent[k])).astype(v.dtype)
        for k, v in new.items()
    }


# Faults that rewrite an honest train reply's arrays.
TAMPER: dict[str, Callable[[State, State, Fault], State]] = {
    "nan": _poison(math.nan),
    "inf": _poison(math.inf),
    "shape": _shape,
    "extra": _extra,
    "scale": _scale,
}
KINDS = (*TAMPER, "raise", "hang")


def parse_fault(spec: str) -> Fault | None:
    """``"scale100:0.5"`` -> ``Fault("scale", 100.0, 0.5)``; ``""``/``"none"`` -> None."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    m = re.fullmatch(r"([a-z]+?)(\d+(?:\.\d+)?)?(?::([0-9.]+))?", spec)
    if m is None or m.group(1) not in KINDS or (m.group(2) and m.group(1) != "scale"):
        raise ValueError(f"fault spec must be <kind>[:<share>] with kind in {KINDS}, got {spec!r}")
    factor = float(m.group(2)) if m.group(2) else (100.0 if m.group(1) == "scale" else 1.0)
    share = float(m.group(3)) if m.group(3) else 1.0
    if not 0 < share <= 1:
        raise ValueError(f"fault share must be in (0, 1], got {share} in {spec!r}")
    return Fault(m.group(1), factor, share)


def fault_for(context: Context) -> Fault | None:
    """The fault this node injects (node config ``fault`` first, then ``$FEDREC_FAULT``)."""
    node_config = dict(context.node_config)
    spec = str(node_config.get("fault", os.environ.get(FAULT_ENV, "")))
    fault = parse_fault(spec)
    return fault if fault is not None and fault.applies_to(node_config) else None


def _hang(context: Context) -> Message:
    seconds = float(os.environ.get(HANG_ENV, "3600"))
    time.sleep(seconds)
    raise InjectedFaultError(f"node {context.node_id} hung for {seconds:.0f}s (injected)")


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The honest train handler, then the node's fault applied to its reply."""
    fault = fault_for(context)
    if fault is not None and fault.kind == "hang":
        return _hang(context)
    reply = honest.train(msg, context)
    if fault is None or reply.has_error() or R.ARRAYS not in reply.content.array_records:
        return reply
    if fault.kind == "raise":
        raise InjectedFaultError(f"node {context.node_id} crashed mid-training (injected)")
    sent = R.from_record(msg.content.array_records[R.ARRAYS])
    new = TAMPER[fault.kind](R.from_record(reply.content.array_records[R.ARRAYS]), sent, fault)
    content = RecordDict(
        {R.ARRAYS: R.to_record(new), R.METRICS: reply.content.metric_records[R.METRICS]}
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Honest evaluation (a hung node answers nothing)."""
    fault = fault_for(context)
    if fault is not None and fault.kind == "hang":
        return _hang(context)
    return honest.evaluate(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Honest initial state (a hung node answers nothing)."""
    fault = fault_for(context)
    if fault is not None and fault.kind == "hang":
        return _hang(context)
    return honest.query(msg, context)
