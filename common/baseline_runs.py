"""Baselines run on a corpus's split under the model's protocol (most-popular and EASE)."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.baselines import create_baseline
from common.evaluate import evaluate_scores
from common.exposure import long_tail_items
from common.metrics import RankingEvaluator
from common.task import Corpus

# The baselines every results.json reports next to the model.
REPORTED_BASELINES = ("most-popular", "ease")


def evaluator_for(corpus: Corpus, seed: int) -> RankingEvaluator:
    """A ranking evaluator with the long tail of this split's training data."""
    tail = long_tail_items(list(corpus.split.train), corpus.data.n_items)
    return RankingEvaluator(corpus.data.n_items, seed=seed, long_tail_items=tail)


def run_baselines(corpus: Corpus, *, seed: int, which: str = "test") -> dict[str, dict[str, Any]]:
    """Most-popular and EASE on the same split and protocol as the model (`which` item)."""
    out = {}
    local = corpus.everyone()
    for name in REPORTED_BASELINES:
        base = create_baseline(name, list(corpus.split.train), corpus.data.n_items)

        def score(_rows: np.ndarray, known: list[np.ndarray], b: Any = base) -> np.ndarray:
            return np.asarray(b.scores_for(known))

        ev = evaluate_scores(
            score,
            local,
            corpus.data.n_items,
            which=which,
            evaluator=evaluator_for(corpus, seed),
        )
        out[name] = {**ev.result(), **ev.curves()}
    return out
