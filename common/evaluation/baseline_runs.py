"""Baselines run on a corpus's split under the model's protocol (most-popular, EASE, DP ones)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.config.run import RunConfig
from common.evaluation.baselines import create_baseline
from common.evaluation.dp_baselines import (
    LAMBDA_GRID,
    N_GRID,
    POP_SHARE,
    DPEase,
    DPPopularity,
    DPTarget,
    dp_report,
)
from common.evaluation.evaluate import evaluate_scores
from common.evaluation.exposure import long_tail_items
from common.evaluation.metrics import RankingEvaluator
from common.task import Corpus

# The baselines every results.json reports next to the model.
REPORTED_BASELINES = ("most-popular", "ease")
# ... and next to a user-level DP model, at its epsilon and delta (`run_dp_baselines`).
DP_BASELINES = ("dp-popularity", "dp-ease")


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


def _evaluate(
    corpus: Corpus, score: Callable[[list[np.ndarray]], np.ndarray], *, which: str, seed: int
) -> dict[str, Any]:
    """Full-ranking metrics of `score` (histories -> scores) on every user's `which` item."""
    ev = evaluate_scores(
        lambda _rows, known: score(known),
        corpus.everyone(),
        corpus.data.n_items,
        which=which,
        evaluator=evaluator_for(corpus, seed),
    )
    return {**ev.result(), **ev.curves()} if which == "test" else ev.result()


def run_dp_baselines(
    corpus: Corpus,
    target: DPTarget,
    *,
    seed: int,
    n_grid: Sequence[int] = N_GRID,
    lambda_grid: Sequence[float] = LAMBDA_GRID,
) -> dict[str, dict[str, Any]]:
    """DP popularity and DP-EASE at `target`, on the model's split and protocol.

    Both are fitted on the training items of every user (fresh releases per call); DP-EASE's
    item count and lambda maximise validation HR@10 (ties: NDCG@10), and the test item is
    then read once, for that pair. Each result carries its ``privacy`` figures (epsilon of its
    own releases at ``target.delta``, never above ``target.epsilon``) and the validation grid.
    """
    train, n_items = list(corpus.split.train), corpus.data.n_items
    pop = DPPopularity.fit(train, n_items, target)
    out: dict[str, dict[str, Any]] = {
        "dp-popularity": {
            **_evaluate(corpus, pop.scores_for, which="test", seed=seed),
            "privacy": dp_report(pop.events, target, sigma=pop.sigma),
        }
    }
    ns = sorted({min(int(n), n_items) for n in n_grid})
    ease = DPEase.fit(train, n_items, target, n_max=max(ns))
    grid: list[dict[str, float]] = []
    for n in ns:
        for l2 in lambda_grid:
            v = _evaluate(corpus, ease.model(n, float(l2)), which="valid", seed=seed)
            grid.append({"n": n, "lambda": float(l2), "valid_hr@10": v["hr@10"],
                         "valid_ndcg@10": v["ndcg@10"]})  # fmt: skip
    best = max(grid, key=lambda g: (g["valid_hr@10"], g["valid_ndcg@10"]))
    test = _evaluate(corpus, ease.model(int(best["n"]), best["lambda"]), which="test", seed=seed)
    out["dp-ease"] = {
        **test,
        "n_items_used": int(best["n"]),
        "lambda": best["lambda"],
        "valid_grid": grid,
        "privacy": dp_report(
            ease.events,
            target,
            sigma_popularity=ease.sigmas[0],
            sigma_gram=ease.sigmas[1],
            popularity_share=POP_SHARE,
        ),  # fmt: skip
    }
    return out


def dp_target_of(cfg: RunConfig, privacy: dict[str, Any], *, label: str) -> DPTarget | None:
    """The DP baselines' budget for a run: its model's accounted epsilon and its delta.

    None (no DP baselines) unless the run is user-level local DP with a finite epsilon > 0
    and a delta: under ``dp.mode = "central"`` the unit is a client and the relation
    replace-one, which these baselines do not implement.
    """
    if privacy.get("mode") != "local":
        return None
    eps, delta = float(privacy.get("epsilon") or 0.0), privacy.get("delta")
    if not (math.isfinite(eps) and eps > 0) or not delta:
        return None
    return DPTarget(
        epsilon=eps,
        delta=float(delta),
        accountant=cfg.dp.accountant,
        reproducible=cfg.dp.reproducible_noise,
        label=f"{label}/{cfg.train.seed}",
    )


def dp_baselines_for(
    corpus: Corpus, cfg: RunConfig, privacy: dict[str, Any], *, label: str
) -> dict[str, dict[str, Any]]:
    """The DP baselines of a run at its model's epsilon and delta; {} if the run is not DP."""
    target = dp_target_of(cfg, privacy, label=label)
    return {} if target is None else run_dp_baselines(corpus, target, seed=cfg.train.seed)
