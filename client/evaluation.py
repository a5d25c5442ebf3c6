"""A site's evaluation: full-catalogue ranking of its users' held-out items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from client.site import Site
from common import records as R
from common.catalogue import default_cache_dir
from common.evaluate import evaluate_scores, model_score_fn
from common.exposure import long_tail_items
from common.metrics import RankingEvaluator
from common.model import load_trainable_state
from common.records import state_digest


def shared_item_scores(site: Site, state: dict[str, np.ndarray]) -> Any:
    """Score function for `state`; the item matrix is computed once per state per machine.

    All client workers on a machine evaluate the same global adapter, so the catalogue
    encoding is cached on disk under the state's digest (file lock; atomic write).
    """
    load_trainable_state(site.model, state)
    return model_score_fn(
        site.model,
        site.cat,
        history_len=site.cfg.data.history_len,
        cache=_item_cache_path(site, state),
    )


def _item_cache_path(site: Site, state: dict[str, np.ndarray]) -> Path:
    root = Path(site.cfg.model.cache_dir) if site.cfg.model.cache_dir else default_cache_dir()
    return root / "items" / f"{state_digest(state)}.npy"


def evaluate_round(
    site: Site, state: dict[str, np.ndarray], *, which: str, per_user: bool
) -> dict[str, Any]:
    """Full-catalogue ranking of this site's users' held-out items."""
    score = shared_item_scores(site, state)
    ev = evaluate_scores(
        score,
        site.local,
        site.corpus.data.n_items,
        which=which,
        evaluator=RankingEvaluator(
            site.corpus.data.n_items,
            seed=site.cfg.train.seed,
            long_tail_items=long_tail_items(
                list(site.corpus.split.train), site.corpus.data.n_items
            ),
        ),
    )
    res = ev.result()
    out: dict[str, Any] = {k: v for k, v in res.items() if k != "n_users"}
    out["num-examples"] = int(res["n_users"])
    if per_user:
        pu = ev.per_user()
        out["per-user-user"] = [float(u) for u in pu["user"]]
        for k in ("hr@10", "ndcg@10", "rank"):
            out[f"per-user-{k}"] = [float(x) for x in pu[k]]
        # Per-item top-10 counts: the server sums them for the federation's true coverage,
        # exposure Gini and Lorenz curve (a mean of per-site coverages would be wrong).
        out[R.EXPOSURE_COUNTS] = [float(x) for x in ev.exposure(10)]
    return out
