"""server.checks.check_update, table-driven: every malformed or unbounded reply is named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from common import records as R
from common.config.run import RunConfig
from common.model.towers import COOC_KEY, PRIOR_KEY
from server.checks import check_update

from .messages import reply_from

State = dict[str, np.ndarray]
GLOBAL: State = {
    "lora.layer.1.lora_A.weight": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4),
    "lora.layer.1.lora_B.weight": np.zeros((4, 2), np.float32),
    "head.attn.bias": np.zeros(1, np.float32),
    PRIOR_KEY: np.linspace(0, 1, 6, dtype=np.float32),
}


@pytest.fixture
def cfg(make_cfg: Callable[..., RunConfig]) -> RunConfig:
    """Without DP, where `num-examples` is the FedAvg weight every reply must carry."""
    return make_cfg(**{"dp.mode": "none"})


def test_under_dp_the_required_weight_is_the_unit_weight(
    make_cfg: Callable[..., RunConfig],
) -> None:
    dp = make_cfg()
    reply = reply_from(101, {R.NUM_EXAMPLES: 30}, _trained())
    problem = check_update(reply, GLOBAL, dp, prior_round=False)
    assert problem is not None and R.UNIT_WEIGHT in problem
    ok = reply_from(101, {R.UNIT_WEIGHT: 1}, _trained())
    assert check_update(ok, GLOBAL, dp, prior_round=False) is None


def _trained() -> State:
    """A plausible update: every trainable tensor moved a little, the prior untouched."""
    rng = np.random.default_rng(0)
    out = {k: v.copy() for k, v in GLOBAL.items()}
    for k in out:
        if k != PRIOR_KEY:
            out[k] = (out[k] + rng.normal(0, 0.3, out[k].shape)).astype(np.float32)
    return out


def _with(name: str, value: np.ndarray) -> State:
    return {**_trained(), name: value}


def _without(name: str) -> State:
    return {k: v for k, v in _trained().items() if k != name}


def _scaled(factor: float) -> State:
    t = _trained()
    return {k: (GLOBAL[k] + factor * (t[k] - GLOBAL[k])).astype(np.float32) for k in t}


def _reply(state: State | None, n: Any = 30) -> Message:
    metrics: dict[str, Any] = {"train_loss": 1.0}
    if n is not None:
        metrics[R.NUM_EXAMPLES] = n
    return reply_from(7, metrics, state)


A = "lora.layer.1.lora_A.weight"
CASES: list[tuple[str, Callable[[], Message], str]] = [
    ("nan", lambda: _reply(_with(A, np.full((2, 4), np.nan, np.float32))), "non-finite"),
    ("inf", lambda: _reply(_with(A, np.full((2, 4), np.inf, np.float32))), "non-finite"),
    ("nan-prior", lambda: _reply(_with(PRIOR_KEY, np.full(6, np.nan, np.float32))), "non-finite"),
    ("shape", lambda: _reply(_with(A, np.zeros((4, 2), np.float32))), "shape"),
    ("dtype", lambda: _reply(_with(A, GLOBAL[A].astype(np.float64))), "dtype"),
    ("extra", lambda: _reply({**_trained(), "bert.embeddings": np.zeros(3, np.float32)}), "extra"),
    ("missing", lambda: _reply(_without("head.attn.bias")), "missing"),
    ("scaled-x100", lambda: _reply(_scaled(100.0)), "update-norm-bound"),
    ("prior-changed", lambda: _reply(_with(PRIOR_KEY, GLOBAL[PRIOR_KEY] + 1)), "prior"),
    ("no-num-examples", lambda: _reply(_trained(), n=None), R.NUM_EXAMPLES),
    ("zero-num-examples", lambda: _reply(_trained(), n=0), R.NUM_EXAMPLES),
    ("nan-num-examples", lambda: _reply(_trained(), n=float("nan")), R.NUM_EXAMPLES),
    ("no-arrays", lambda: _reply(None), "ArrayRecord"),
    (
        "no-metrics",
        lambda: Message(RecordDict({R.ARRAYS: R.to_record(_trained())}), reply_to=_reply(None)),
        R.NUM_EXAMPLES,
    ),
]


def test_the_table_is_sized_for_the_default_bound(cfg: RunConfig) -> None:
    # A plausible update is well inside fed.update-norm-bound; x100 of it is far outside.
    t = _trained()
    norm = np.sqrt(sum(np.sum((t[k] - GLOBAL[k]) ** 2.0) for k in t if k != PRIOR_KEY))
    assert norm < cfg.fed.update_norm_bound < 100 * norm


def test_a_good_reply_passes(cfg: RunConfig) -> None:
    assert check_update(_reply(_trained()), GLOBAL, cfg, prior_round=False) is None


def test_the_prior_may_change_in_the_prior_round(cfg: RunConfig) -> None:
    reply = _reply(_with(PRIOR_KEY, GLOBAL[PRIOR_KEY] + 1))
    assert check_update(reply, GLOBAL, cfg, prior_round=True) is None


def test_the_prior_does_not_count_towards_the_norm_bound(cfg: RunConfig) -> None:
    reply = _reply(_with(PRIOR_KEY, GLOBAL[PRIOR_KEY] + 1000))
    assert check_update(reply, GLOBAL, cfg, prior_round=True) is None


def test_an_update_just_inside_the_bound_passes(cfg: RunConfig) -> None:
    t = _trained()
    norm = np.sqrt(sum(np.sum((t[k] - GLOBAL[k]) ** 2.0) for k in t if k != PRIOR_KEY))
    inside = _scaled(0.99 * cfg.fed.update_norm_bound / norm)
    outside = _scaled(1.01 * cfg.fed.update_norm_bound / norm)
    assert check_update(_reply(inside), GLOBAL, cfg, prior_round=False) is None
    assert check_update(_reply(outside), GLOBAL, cfg, prior_round=False) is not None


@pytest.mark.parametrize(("make", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_reply_is_dropped_with_a_message_naming_the_problem(
    cfg: RunConfig, make: Callable[[], Message], word: str
) -> None:
    problem = check_update(make(), GLOBAL, cfg, prior_round=False)
    assert problem is not None
    assert word in problem


@pytest.mark.parametrize(("name", "word"), [(A, A), ("head.attn.bias", "head.attn.bias")])
def test_the_message_names_the_offending_array(cfg: RunConfig, name: str, word: str) -> None:
    bad = _with(name, np.full(GLOBAL[name].shape, np.inf, np.float32))
    problem = check_update(_reply(bad), GLOBAL, cfg, prior_round=False)
    assert problem is not None and word in problem


def test_metrics_record_with_only_lists_counts_as_missing(cfg: RunConfig) -> None:
    reply = reply_from(7, {"per-user-hr@10": [1.0]}, _trained())
    assert isinstance(reply.content.metric_records[R.METRICS], MetricRecord)
    problem = check_update(reply, GLOBAL, cfg, prior_round=False)
    assert problem is not None and R.NUM_EXAMPLES in problem


def test_the_cooc_matrix_may_change_only_in_its_release_step(cfg: RunConfig) -> None:
    state = {**GLOBAL, COOC_KEY: np.zeros((3, 3), np.float32)}
    moved = {**{k: v.copy() for k, v in state.items()}, COOC_KEY: np.eye(3, dtype=np.float32)}
    reply = _reply(moved)
    assert check_update(reply, state, cfg, prior_round=False, cooc_round=True) is None
    problem = check_update(reply, state, cfg, prior_round=False)
    assert problem is not None and "co-occurrence" in problem
    problem = check_update(reply, state, cfg, prior_round=True)  # not in the prior's step
    assert problem is not None and "co-occurrence" in problem
    big = {**moved, COOC_KEY: np.full((3, 3), 1e6, np.float32)}  # not part of the norm bound
    assert check_update(_reply(big), state, cfg, prior_round=False, cooc_round=True) is None
