"""Message record keys and conversions between named numpy arrays and Flower records."""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

ARRAYS = "arrays"  # the ArrayRecord holding the trainable state
METRICS = "metrics"  # the MetricRecord of a reply
CONFIG = "config"  # the ConfigRecord the server sends
NUM_EXAMPLES = "num-examples"  # weight for FedAvg: users trained / evaluated
UNIT_WEIGHT = "unit-weight"  # always 1: the weight key under central DP (unweighted mean)
TRAIN_LOSS = "train_loss"  # key QFedAvg reads
DECLINED = "declined"  # 1.0 when a client refused to train (budget exhausted)
DECLINE = "decline"  # the ConfigRecord of a refusal: why the site declined (its `REASON`)
REASON = "reason"
SITE = "site"  # the ConfigRecord of a reply naming the site by the label it publishes
LABEL = "label"
# What a reply says about the privacy a site spent (`common.replies.SpentPrivacy`).
EPSILON = "epsilon"  # the run's epsilon at the site after this release
DELTA = "delta"
EPSILON_STRICT = "epsilon-at-1e-6"  # the run's epsilon at the report delta
LEDGER_EPSILON = "ledger-epsilon"  # every run's epsilon on this site's data
REPRODUCIBLE_NOISE = "reproducible-noise"  # 1: the noise is seeded (simulation only)
NOISED = "noised"  # 1: an evaluation reply through the Gaussian mechanism
# A training reply's diagnostics (no DP, or a policy releasing them: `common.replies.TrainStats`).
TRAIN_STEPS = "steps"
USERS_TRAINED = "users-trained"
TRAIN_S = "train-s"
PER_USER_PREFIX = "per-user-"  # list-valued per-user metrics (fairness studies)
EXPOSURE_COUNTS = "exposure-counts@10"  # per-item top-10 counts, summed across clients

# Per-round ConfigRecord keys sent by the server.
ROUND = "server-round"
RUN_KEY = "run-key"  # identifies one federated training across server restarts
COLLECT_PRIOR = "collect-prior"
COLLECT_COOC = "collect-cooc"  # round 0's second step: the co-occurrence release
PROXIMAL_MU = "proximal-mu"
EVAL_SPLIT = "eval-split"
PER_USER = "per-user"

# The final global adapter, sent to every node after the last round (`query.final_adapter`).
FINAL_ACTION = "final_adapter"
FINAL_MESSAGE_TYPE = f"query.{FINAL_ACTION}"
SAVED = "saved"  # 1.0 in the reply of a node that kept it


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (names kept, order sorted)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(state[k])) for k in sorted(state)})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return {k: record[k].numpy() for k in record}


def state_digest(state: dict[str, np.ndarray]) -> str:
    """Content hash of named arrays (cache keys, reply dedup)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k]).tobytes())
    return h.hexdigest()[:32]


def state_bytes(state: dict[str, np.ndarray]) -> int:
    """Payload size in bytes of the arrays."""
    return int(sum(v.nbytes for v in state.values()))


def metric_record(values: dict[str, float | int | list[float]]) -> MetricRecord:
    """A MetricRecord from plain Python numbers (numpy scalars converted)."""
    out: dict[str, float | int | list[float]] = {}
    for k, v in values.items():
        if isinstance(v, list):
            out[k] = [float(x) for x in v]
        elif isinstance(v, (bool | np.bool_, int | np.integer)):
            out[k] = int(v)
        else:
            out[k] = float(v)
    return MetricRecord(out)  # type: ignore[arg-type]
