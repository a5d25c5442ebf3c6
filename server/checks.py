"""Checks on every incoming update before it may reach aggregation."""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from common import records as R
from common.config import RunConfig
from common.model import PRIOR_KEY
from server.strategies import weight_key


def check_update(
    reply: Message, global_state: dict[str, np.ndarray], cfg: RunConfig, *, prior_round: bool
) -> str | None:
    """Return why `reply` must be dropped, or None if it is a well-formed, bounded update.

    Checks: an ArrayRecord and a positive example count are present; names, shapes and dtypes
    equal the global state's; all values finite; the prior unchanged outside the prior round;
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
        sq += float(np.sum((arr.astype(np.float64) - ref) ** 2))
    norm = float(np.sqrt(sq))
    if norm > cfg.fed.update_norm_bound:
        return f"update norm {norm:.4g} exceeds fed.update-norm-bound {cfg.fed.update_norm_bound}"
    return None
