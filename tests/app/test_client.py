"""The ClientApp handlers on hand-built Messages: what a reply carries, and the privacy ledger."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from client import client_app
from common import records as R
from common.config.base import ConfigError
from common.config.parse import parse_config
from common.config.run import RunConfig
from common.privacy.accounting import PrivacyError
from common.task import client_users, load_corpus

from .messages import SERVER_NODE, eval_msg, make_context, train_msg

State = dict[str, np.ndarray]


def _ledger(run_config: dict[str, Any]) -> Path:
    return Path(run_config["fed.out-dir"]) / "ledgers" / "client-0.json"


def _partition_size(cfg: RunConfig, partition_id: int = 0, n: int = 2) -> int:
    corpus = load_corpus(cfg.data)
    return len(client_users(cfg.data, corpus, partition_id, n, cfg.fed.seed))


def _metrics(reply: Message) -> dict[str, Any]:
    return dict(reply.content.metric_records[R.METRICS])


def _arrays(reply: Message) -> State:
    return R.from_record(reply.content.array_records[R.ARRAYS])


def test_train_reply_carries_only_the_trainable_state_and_its_metrics(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    sent = fresh_state()
    ctx = make_context(run_config)
    reply = client_app.train(train_msg(sent, 1), ctx)

    assert not reply.has_error()
    assert reply.metadata.dst_node_id == SERVER_NODE
    assert reply.metadata.reply_to_message_id == "train-1"
    got = _arrays(reply)
    assert set(got) == set(sent)
    assert all(k.startswith(("lora.", "head.")) or k == "prior" for k in got)
    assert not any("lora_" not in k for k in got if k.startswith("lora."))  # no backbone weight
    for name, value in got.items():
        assert value.shape == sent[name].shape, name
        assert value.dtype == sent[name].dtype, name
    # Trained (DP noise reaches every trainable tensor); the prior only changes in round 0.
    changed = {k for k in got if not np.array_equal(got[k], sent[k])}
    assert changed == set(sent) - {"prior"}

    m = _metrics(reply)
    # under local DP: equal FedAvg weights, no exact count, loss or step count
    assert m[R.UNIT_WEIGHT] == 1 and "num-examples" not in m and "train_loss" not in m
    assert m["declined"] == 0
    assert 0 < m["epsilon"] <= cfg.dp.epsilon
    assert 0 < m["delta"] <= 1e-5
    assert m["epsilon"] < m["epsilon-at-1e-6"]

    ledger = json.loads(_ledger(run_config).read_text())
    assert ledger["epsilon"] == pytest.approx(m["epsilon"])
    assert {r["round"] for r in ledger["rounds"]} == {1}
    assert ctx.state.config_records["privacy"]["epsilon"] == pytest.approx(m["epsilon"])


def test_a_site_policy_may_release_exact_diagnostics(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    ctx = make_context(run_config)
    ctx.node_config["release-diagnostics"] = True
    m = _metrics(client_app.train(train_msg(fresh_state(), 1), ctx))
    assert m["num-examples"] == _partition_size(cfg) > 0
    assert math.isfinite(m["train_loss"]) and m["steps"] >= 1


def test_epsilon_accumulates_over_rounds_in_the_ledger(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    ctx = make_context(run_config)
    first = client_app.train(train_msg(fresh_state(), 1), ctx)
    second = client_app.train(train_msg(_arrays(first), 2, collect_prior=False), ctx)

    eps1, eps2 = _metrics(first)["epsilon"], _metrics(second)["epsilon"]
    assert 0 < eps1 < eps2 <= cfg.dp.epsilon * (1 + 1e-6)
    ledger = json.loads(_ledger(run_config).read_text())
    assert ledger["epsilon"] == pytest.approx(eps2)
    assert [r["round"] for r in ledger["rounds"]][-1] == 2


def test_exhausted_budget_declines_instead_of_raising(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    run_config["fed.rounds"] = 1  # the whole budget is planned for one round
    ctx = make_context(run_config)
    first = client_app.train(train_msg(fresh_state(), 1), ctx)
    spent = _metrics(first)["epsilon"]
    state = _arrays(first)

    for rnd in (2, 3):
        reply = client_app.train(train_msg(state, rnd, collect_prior=False), ctx)
        assert not reply.has_error()
        assert R.ARRAYS not in reply.content.array_records
        m = _metrics(reply)
        assert m["declined"] == 1
        assert m["epsilon"] == pytest.approx(spent)
    assert "budget" in str(ctx.state.config_records[R.DECLINED]["reason"])
    assert json.loads(_ledger(run_config).read_text())["epsilon"] == pytest.approx(spent)

    # Resuming the run with more rounds (the checkpoint allows it) does not refill the budget.
    run_config["fed.rounds"] = 2
    reply = client_app.train(train_msg(state, 2, collect_prior=False), make_context(run_config))
    assert _metrics(reply)["declined"] == 1
    assert json.loads(_ledger(run_config).read_text())["epsilon"] == pytest.approx(spent)


def test_a_redelivered_round_never_spends_twice(
    run_config: dict[str, Any], fresh_state: Callable[[], State]
) -> None:
    ctx = make_context(run_config)
    sent = fresh_state()
    first = client_app.train(train_msg(sent, 1), ctx)
    spent = _metrics(first)["epsilon"]
    # Same round, same global state: the already released output is sent again, no new spend.
    again = client_app.train(train_msg(sent, 1), ctx)
    assert _metrics(again) == _metrics(first)
    for k, v in _arrays(first).items():
        np.testing.assert_array_equal(_arrays(again)[k], v, err_msg=k)
    assert json.loads(_ledger(run_config).read_text())["epsilon"] == pytest.approx(spent)
    # Same round, a different global state: refused loudly, still no new spend.
    other = {k: v + 1.0 if k.startswith("head.") else v for k, v in sent.items()}
    with pytest.raises(PrivacyError, match="round 1"):
        client_app.train(train_msg(other, 1), ctx)
    assert json.loads(_ledger(run_config).read_text())["epsilon"] == pytest.approx(spent)


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"budget_epsilon": 8.0, "delta": 0.1}', '{"rounds": [{"sigma": "x"}]}', ""],
    ids=["syntax", "no-rounds", "bad-round", "empty"],
)
def test_corrupt_ledger_fails_loudly_naming_the_file(
    run_config: dict[str, Any], fresh_state: Callable[[], State], content: str
) -> None:
    path = _ledger(run_config)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(PrivacyError, match="corrupt") as info:
        client_app.train(train_msg(fresh_state(), 1), make_context(run_config))
    assert str(path) in str(info.value)
    assert path.read_text() == content  # never reset


def test_the_app_routes_train_and_evaluate_messages(
    run_config: dict[str, Any], fresh_state: Callable[[], State]
) -> None:
    ctx = make_context(run_config)
    state = fresh_state()
    trained = client_app.app(train_msg(state, 1), ctx)
    assert trained.metadata.message_type == "train"
    assert R.ARRAYS in trained.content.array_records
    evaluated = client_app.app(eval_msg(_arrays(trained)), ctx)
    assert evaluated.metadata.message_type == "evaluate"
    assert "hr@10" in _metrics(evaluated)


@pytest.mark.parametrize("per_user", [False, True])
def test_evaluate_reports_ranking_metrics_of_the_partition(
    run_config: dict[str, Any],
    cfg: RunConfig,
    fresh_state: Callable[[], State],
    per_user: bool,
) -> None:
    ctx = make_context(run_config)
    ctx.node_config.update({"release-eval": "plain", "release-per-user": True})
    reply = client_app.evaluate(eval_msg(fresh_state(), per_user=per_user), ctx)

    assert not reply.has_error()
    assert not reply.content.array_records  # evaluation sends nothing back but metrics
    m = _metrics(reply)
    n = _partition_size(cfg)
    assert m["num-examples"] == n
    for key in ("hr@10", "ndcg@10", "mrr"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["ndcg@10"] <= m["hr@10"]
    lists = {k: v for k, v in m.items() if isinstance(v, list)}
    if not per_user:
        assert not lists
        return
    counts = np.array(lists.pop(R.EXPOSURE_COUNTS))
    assert set(lists) == {"per-user-user", "per-user-hr@10", "per-user-ndcg@10", "per-user-rank"}
    assert all(len(v) == n for v in lists.values())
    # per-item top-10 counts: one per catalogue item, at most 10 slots per user, and the
    # site's own coverage is what they say
    assert counts.shape == (load_corpus(cfg.data).data.n_items,) and 0 < counts.sum() <= 10 * n
    assert np.mean(counts > 0) == pytest.approx(m["coverage@10"])
    assert min(lists["per-user-rank"]) >= 0
    assert np.mean(lists["per-user-hr@10"]) == pytest.approx(m["hr@10"])
    assert np.mean(lists["per-user-ndcg@10"]) == pytest.approx(m["ndcg@10"])


def test_a_default_evaluation_is_noised_and_accounted(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    ctx = make_context(run_config)
    reply = client_app.evaluate(eval_msg(fresh_state(), per_user=True), ctx)
    m = _metrics(reply)
    assert m["noised"] == 1 and 0 < m["epsilon"] <= cfg.dp.epsilon
    assert not any(isinstance(v, list) for v in m.values())  # no per-user vectors
    assert "coverage@10" not in m  # only the accounted per-user means and a noisy count
    ledger = json.loads(_ledger(run_config).read_text())
    assert [r["kind"] for r in ledger["rounds"]] == ["eval-test"]
    assert ledger["epsilon"] == pytest.approx(m["epsilon"])


def test_second_partition_evaluates_its_own_users(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    msg = eval_msg(fresh_state(), per_user=True)
    contexts = [make_context(run_config, pid) for pid in (0, 1)]
    for ctx in contexts:
        ctx.node_config.update({"release-eval": "plain", "release-per-user": True})
    users = [set(_metrics(client_app.evaluate(msg, ctx))["per-user-user"]) for ctx in contexts]
    assert not users[0] & users[1]
    assert len(users[0] | users[1]) == load_corpus(cfg.data).data.n_users


def test_fixed_noise_without_budget_trains_or_is_rejected_by_the_config(
    run_config: dict[str, Any], fresh_state: Callable[[], State]
) -> None:
    run_config.update({"dp.epsilon": math.inf, "dp.noise-multiplier": 1.0})
    try:
        parse_config(run_config)
    except ConfigError as exc:  # rejected at the edge, naming the conflicting key: fine
        assert "dp." in str(exc)
        return
    reply = client_app.train(train_msg(fresh_state(), 1), make_context(run_config))
    assert R.ARRAYS in reply.content.array_records


def test_query_returns_the_seeded_initial_state(
    run_config: dict[str, Any], fresh_state: Callable[[], State]
) -> None:
    """A server without data (fed.server-data = false) gets the initial state from a node."""
    from flwr.app import MessageType, RecordDict

    from .messages import incoming

    reply = client_app.query(incoming(RecordDict(), MessageType.QUERY), make_context(run_config))
    got, want = _arrays(reply), fresh_state()
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize(
    ("overrides", "cap", "declines"),
    [
        ({}, 8.0, False),  # local DP at epsilon 8 <= cap 8: trains
        ({}, 3.0, True),  # the run asks for more than the site allows
        ({"dp.mode": "none"}, 8.0, True),  # no DP at all
    ],
)
def test_site_epsilon_cap_from_node_config(
    run_config: dict[str, Any],
    fresh_state: Callable[[], State],
    overrides: dict[str, Any],
    cap: float,
    declines: bool,
) -> None:
    ctx = make_context({**run_config, **overrides})
    ctx.node_config["max-epsilon"] = cap
    reply = client_app.train(train_msg(fresh_state(), 1), ctx)
    assert _metrics(reply)["declined"] == int(declines)
    assert (R.ARRAYS in reply.content.array_records) is not declines


def test_prior_round_releases_the_histogram_without_training(
    run_config: dict[str, Any], cfg: RunConfig, fresh_state: Callable[[], State]
) -> None:
    sent = fresh_state()
    reply = client_app.train(train_msg(sent, 0, collect_prior=True), make_context(run_config))
    got, m = _arrays(reply), _metrics(reply)
    assert not np.array_equal(got["prior"], sent["prior"])  # histogram released
    for k in sent:
        if k != "prior":
            np.testing.assert_array_equal(got[k], sent[k], err_msg=k)  # nothing trained
    assert "steps" not in m and 0 < m["epsilon"] < cfg.dp.epsilon
    ledger = json.loads(_ledger(run_config).read_text())
    assert [r["kind"] for r in ledger["rounds"]] == ["prior"]
