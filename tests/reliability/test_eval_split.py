"""`fed.eval-split`: a federated run evaluated on the validation item (to choose settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_recorded
from common.evaluation.baseline_runs import run_baselines
from common.evaluation.evaluate import evaluate_scores, model_score_fn
from common.model.towers import load_trainable_state
from common.task import client_users, load_corpus, setup
from server.evaluation import server_evaluator
from server.server_app import baseline_fns

from .inproc import federate, initial_state


def test_the_key_is_checked_and_old_records_evaluated_the_test_item(
    run_config: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError, match="fed.eval-split"):
        parse_config({**run_config, "fed.eval-split": "train"})
    recorded = {k: v for k, v in run_config.items() if k != "fed.eval-split"}
    assert parse_recorded(recorded).fed.eval_split == "test"


def test_sites_evaluate_and_spend_on_the_configured_item(
    run_config: dict[str, Any], server_identity: None
) -> None:
    cfg = {**run_config, "fed.rounds": 1, "fed.eval-split": "valid"}
    results, _ = federate(cfg, ["", ""])
    assert results["status"] == "completed" and results["evaluated"] == "valid"
    ledgers = sorted((Path(cfg["fed.out-dir"]) / "ledgers").glob("*.json"))
    assert ledgers
    for ledger in ledgers:
        kinds = {e["kind"] for e in json.loads(ledger.read_text())["rounds"]}
        assert "eval-valid" in kinds and "eval-test" not in kinds, (ledger, kinds)


def test_baselines_follow_the_item_and_dp_baselines_only_report_test(
    run_config: dict[str, Any],
) -> None:
    corpus = load_corpus(parse_config(run_config).data)
    runs = {}
    for which in ("valid", "test"):
        base, dp = baseline_fns(corpus, parse_config({**run_config, "fed.eval-split": which}))
        runs[which] = base()
        assert (dp is None) == (which == "valid")
        assert runs[which] == run_baselines(corpus, seed=0, which=which)
    pop = [runs[w]["most-popular"]["hr@10"] for w in ("valid", "test")]
    assert pop[0] != pop[1]  # the two items give different figures on this data


@pytest.mark.parametrize("which", ["valid", "test"])
def test_the_server_evaluation_ranks_the_configured_item(
    which: str, run_config: dict[str, Any]
) -> None:
    cfg = parse_config({**run_config, "fed.eval-split": which, "audit.holdout-users": 0.0})
    state = initial_state(cfg)
    got = server_evaluator(cfg, 2)(state)
    other = "test" if which == "valid" else "valid"
    there = server_evaluator(parse_config({**run_config, "fed.eval-split": other,
                                           "audit.holdout-users": 0.0}), 2)(state)  # fmt: skip
    assert (got["hr@10"], got["ndcg@10"]) != (there["hr@10"], there["ndcg@10"])
    corpus, cat, model = setup(cfg)
    load_trainable_state(model, state)
    users = np.sort(np.concatenate([client_users(cfg.data, corpus, p, 2, cfg.fed.seed)
                                    for p in range(2)]))  # fmt: skip
    score = model_score_fn(model, cat, history_len=cfg.data.history_len)
    want = evaluate_scores(score, corpus.local(users), corpus.data.n_items, which=which)
    assert got["hr@10"] == pytest.approx(want.result()["hr@10"])
    assert got["ndcg@10"] == pytest.approx(want.result()["ndcg@10"])
