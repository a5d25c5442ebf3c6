"""common.replies: each reply type round-trips through its records under the keys of records.py."""

from __future__ import annotations

import numpy as np
import pytest

from common import records as R
from common.replies import (
    Decline,
    EvalReply,
    ReplyError,
    SpentPrivacy,
    TrainReply,
    TrainStats,
)

STATE = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "prior": np.ones(4, np.float32)}
SPENT = SpentPrivacy(epsilon=1.5, delta=1e-5, epsilon_strict=1.9, ledger_epsilon=2.5)


def test_a_local_dp_train_reply_says_only_its_privacy_and_round_trips() -> None:
    reply = TrainReply(STATE, privacy=SPENT, reproducible_noise=True)
    content = reply.to_record("site-a")
    metrics = dict(content.metric_records[R.METRICS])
    assert metrics == {
        R.UNIT_WEIGHT: 1, R.DECLINED: 0, R.EPSILON: 1.5, R.DELTA: 1e-5,
        R.EPSILON_STRICT: 1.9, R.LEDGER_EPSILON: 2.5, R.REPRODUCIBLE_NOISE: 1,
    }  # fmt: skip
    assert content.config_records[R.SITE][R.LABEL] == "site-a"
    back = TrainReply.from_record(content)
    assert back.privacy == SPENT and back.stats is None and back.reproducible_noise
    assert all(np.array_equal(back.state[k], STATE[k]) for k in STATE)
    assert Decline.from_record(content) is None


def test_a_train_reply_without_dp_carries_its_diagnostics() -> None:
    stats = TrainStats(num_examples=12, train_loss=0.7, steps=3, users_trained=12, train_s=0.2)
    reply = TrainReply(STATE, stats=stats)
    assert list(reply.metrics()) == [R.UNIT_WEIGHT, R.DECLINED, R.NUM_EXAMPLES, R.TRAIN_LOSS,
                                     R.TRAIN_STEPS, R.USERS_TRAINED, R.TRAIN_S]  # fmt: skip
    assert TrainReply.from_record(reply.to_record()).stats == stats


def test_a_decline_keeps_its_reason_out_of_the_metrics() -> None:
    content = Decline("site-a: budget spent", epsilon=3.0).to_record()
    assert dict(content.metric_records[R.METRICS]) == {R.DECLINED: 1, R.EPSILON: 3.0}
    assert content.config_records[R.DECLINE][R.REASON] == "site-a: budget spent"
    assert R.ARRAYS not in content.array_records
    assert Decline.from_record(content) == Decline("site-a: budget spent", 3.0)


def test_an_eval_reply_round_trips_scores_vectors_counts_and_privacy() -> None:
    reply = EvalReply({"hr@10": 0.25, "ndcg@10": 0.1}, 40.0, per_user={"user": [1.0, 2.0]},
                      exposure_counts=[1.0, 0.0, 3.0], privacy=SPENT, noised=True)  # fmt: skip
    metrics = reply.metrics()
    assert metrics["per-user-user"] == [1.0, 2.0] and metrics[R.EXPOSURE_COUNTS] == [1.0, 0.0, 3.0]
    assert metrics[R.NUM_EXAMPLES] == 40.0 and metrics[R.NOISED] == 1
    assert EvalReply.from_record(reply.to_record()) == reply


def test_a_reply_missing_what_its_kind_needs_is_a_named_error() -> None:
    content = Decline("x").to_record()
    with pytest.raises(ReplyError, match="`arrays`"):
        TrainReply.from_record(content)
    with pytest.raises(ReplyError, match="`num-examples`"):
        EvalReply.from_metrics({"hr@10": 0.2})
    with pytest.raises(ReplyError, match="`delta`"):
        SpentPrivacy.from_metrics({R.EPSILON: 1.0})
