"""Server-side evaluation in simulation: the global model ranked for every user the server holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from common.config.run import RunConfig
from common.evaluation.evaluate import evaluate_scores, item_cache_path, model_score_fn
from common.evaluation.exposure import exposure_summary, long_tail_items
from common.evaluation.metrics import RankingEvaluator
from common.model.towers import load_trainable_state
from common.records import state_digest
from common.task import client_users, heldout_users, setup

EvaluateFn = Callable[[dict[str, np.ndarray]], dict[str, Any]]


def server_evaluator(cfg: RunConfig, n_clients: int) -> EvaluateFn:
    """Evaluate a global state on the union of the simulated sites' users (no site release).

    Only for simulation (``fed.server-data = true``): the server reads the same data the
    simulated sites do, so the figures a study reports need nothing from any site. Same
    protocol as a site's evaluation (full catalogue, the `fed.eval-split` item: test with
    history = train + validation, or valid with history = train);
    per-client values group users by the simulated partition.
    """
    corpus, cat, model = setup(cfg)
    n_users, n_items = corpus.data.n_users, corpus.data.n_items
    out_users = heldout_users(n_users, cfg.audit.holdout_users, cfg.audit.seed)
    owner = np.full(n_users, -1, dtype=np.int64)
    for pid in range(n_clients):
        owner[client_users(cfg.data, corpus, pid, n_clients, cfg.fed.seed)] = pid
    owner[out_users] = -1
    users = np.flatnonzero(owner >= 0)
    local = corpus.local(users)
    tail = long_tail_items(list(corpus.split.train), n_items)

    def evaluate(state: dict[str, np.ndarray]) -> dict[str, Any]:
        load_trainable_state(model, state)
        score = model_score_fn(
            model,
            cat,
            history_len=cfg.data.history_len,
            cache=item_cache_path(cfg.model.cache_dir, state_digest(state)),
        )
        ev = evaluate_scores(
            score,
            local,
            n_items,
            which=cfg.fed.eval_split,
            evaluator=RankingEvaluator(n_items, seed=cfg.train.seed, long_tail_items=tail),
        )
        res = ev.result()
        pu = ev.per_user()
        out: dict[str, Any] = {"source": "server (simulation: the server holds the data)"}
        out.update({k: v for k, v in res.items() if k != "n_users"})
        out.update(exposure_summary(ev.exposure(10), 10))
        out.update({"n_users": float(res["n_users"]), "n_clients": n_clients})
        part = owner[pu["user"]]
        groups = [np.flatnonzero(part == pid) for pid in range(n_clients)]
        out["per_client"] = {
            "hr@10": [float(pu["hr@10"][g].mean()) if g.size else float("nan") for g in groups],
            "ndcg@10": [float(pu["ndcg@10"][g].mean()) if g.size else float("nan") for g in groups],
            "n_users": [float(g.size) for g in groups],
        }
        if cfg.fed.per_user_metrics:
            out["per_user"] = {
                "user": [float(u) for u in pu["user"]],
                "hr@10": [float(x) for x in pu["hr@10"]],
                "ndcg@10": [float(x) for x in pu["ndcg@10"]],
                "rank": [float(x) for x in pu["rank"]],
            }
        return out

    return evaluate
