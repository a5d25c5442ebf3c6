"""Fairness of a finished run: per-client spread, user groups, item exposure, cold start.

Groups: the 20% most active users (by training interactions) vs the rest, and demographics
where the data set has them (gender and age bands for ml-100k / ml-1m, the planted group for
synthetic data). Gaps are best minus worst group mean.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.run_result import RunResult

ACTIVE_SHARE = 0.2  # "most active" = top 20% of users by training interactions
AGE_BANDS = ((0, "<25"), (25, "25-34"), (35, "35-44"), (45, "45+"))  # ml-1m codes fit too
DEMOGRAPHICS = ("gender", "age", "group")


def activity_groups(train_counts: np.ndarray, share: float = ACTIVE_SHARE) -> np.ndarray:
    """Boolean mask of the ``ceil(share * n)`` users with most training interactions.

    Ties at the cut are broken by the lower user index (stable sort).
    """
    counts = np.asarray(train_counts)
    top = np.argsort(-counts, kind="stable")[: int(math.ceil(share * counts.size))]
    mask = np.zeros(counts.size, dtype=bool)
    mask[top] = True
    return mask


def age_band(age: float) -> str:
    """Band label of an age (ml-100k years or ml-1m age codes)."""
    return [label for low, label in AGE_BANDS if age >= low][-1]


def group_table(values: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Mean hr@10 / ndcg@10 per label, and the gap (best minus worst group mean) per metric."""
    groups: dict[str, Any] = {}
    for lab in sorted(set(labels.tolist())):
        sel = labels == lab
        groups[str(lab)] = {"n": int(sel.sum())} | {
            k: float(v[sel].mean()) for k, v in values.items()
        }
    gaps = (
        {
            f"gap_{k}": max(g[k] for g in groups.values()) - min(g[k] for g in groups.values())
            for k in values
        }
        if len(groups) > 1
        else {}
    )
    return {"groups": groups, **gaps}


def per_user_lists(results: RunResult | Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """Per-user {user, hr@10, ndcg@10, rank if kept} of the final evaluation."""
    pu = RunResult.of(results).final_per_user()
    if not pu or "user" not in pu or not len(pu["user"]):
        return None
    keys = ("user", "hr@10", "ndcg@10", "rank")
    return {k: np.asarray(pu[k], dtype=np.float64) for k in keys if k in pu}


def fairness(results: RunResult | Mapping[str, Any], corpus: Any) -> dict[str, Any]:
    """Per-client distribution, user groups (activity, demographics) and item-side metrics."""
    from common.evaluation.exposure import distribution_summary

    results = RunResult.of(results)
    out: dict[str, Any] = {}
    last = results.last_eval().get("per_client")
    if last:
        out["per_client"] = {
            k: distribution_summary(np.array([x for x in last[k] if not math.isnan(x)]))
            for k in ("hr@10", "ndcg@10")
        }
    pu = per_user_lists(results)
    if pu is not None:
        users = pu["user"].astype(np.int64)
        vals = {k: pu[k] for k in ("hr@10", "ndcg@10")}
        counts = np.array([len(t) for t in corpus.split.train])
        active = activity_groups(counts)[users]
        out["activity"] = group_table(vals, np.where(active, "top20", "rest"))
        attrs = corpus.data.user_attrs
        for name in DEMOGRAPHICS:
            if name in attrs:
                raw = np.asarray(attrs[name])[users]
                labels = np.array([age_band(float(a)) for a in raw]) if name == "age" else raw
                out[name] = group_table(vals, labels.astype(str))
    m = results.metrics
    out["items"] = {k: m[k] for k in ("coverage@10", "long_tail_share@10", "exposure_gini@10")
                    if k in m}  # fmt: skip
    return out


def _rank_stats(rank: np.ndarray, n_items: int) -> dict[str, float]:
    """HR@100 and mean rank percentile (1 = top of the catalogue, about 0.5 = random)."""
    return {
        "hr@100": float((rank < 100).mean()),
        "rank_percentile": float((1.0 - rank / max(n_items - 1, 1)).mean()),
    }


def cold_start(
    results: RunResult | Mapping[str, Any],
    corpus: Any,
    *,
    seed: int,
    which: str = "test",
    text_only: bool = True,
) -> dict[str, Any] | None:
    """Model vs most-popular on users whose `which` item is cold (never in training) vs the rest.

    Besides HR@10 / NDCG@10: HR@100 and the mean rank percentile of the item, which show
    what the text tower does for cold items even when a popularity-weighted top 10 never
    reaches them (most-popular ranks every cold item among the never-seen ones). With
    `text_only`, also the run's saved adapter with the prior off (`_text_only_cold`).
    """
    from common.evaluation.baseline_runs import evaluator_for
    from common.evaluation.baselines import create_baseline
    from common.evaluation.evaluate import evaluate_scores

    results = RunResult.of(results)
    split = corpus.split
    pu = per_user_lists(results)
    if not len(split.cold_items) or pu is None:
        return None
    n_items = corpus.data.n_items
    users = pu["user"].astype(np.int64)
    cold = np.isin((split.valid if which == "valid" else split.test)[users], split.cold_items)
    out: dict[str, Any] = {
        "n_cold_items": int(len(split.cold_items)),
        "n_cold_users": int(cold.sum()),
    }
    for name, sel in (("cold", cold), ("warm", ~cold)):
        out[name] = {
            k: float(pu[k][sel].mean()) if sel.any() else None for k in ("hr@10", "ndcg@10")
        }
        if "rank" in pu and sel.any():
            out[name].update(_rank_stats(pu["rank"][sel], n_items))
    if cold.any():
        pop = create_baseline("most-popular", list(split.train), n_items)
        ev = evaluate_scores(
            lambda _r, known: np.asarray(pop.scores_for(known)),
            corpus.local(users[cold]),
            n_items,
            which=which,
            evaluator=evaluator_for(corpus, seed),
        )
        res = ev.result()
        out["most-popular_cold"] = {
            **{k: res[k] for k in ("hr@10", "ndcg@10")},
            **_rank_stats(ev.per_user()["rank"], n_items),
        }
        text = (_text_only_cold(results, corpus, users[cold], seed=seed, which=which)
                if text_only else None)  # fmt: skip
        if text is not None:
            out["text-only_cold"] = text
    return out


def _text_only_cold(
    results: RunResult, corpus: Any, users: np.ndarray, *, seed: int, which: str = "test"
) -> dict[str, float] | None:
    """The run's final adapter with the popularity prior switched off, on the cold users.

    Isolates what the text towers do for items nobody trained on (the prior puts every cold
    item at its floor). None when the run saved no adapter (e.g. a central run).
    """
    from common.config.parse import parse_recorded
    from common.evaluation.baseline_runs import evaluator_for
    from common.evaluation.evaluate import evaluate_scores, model_score_fn
    from common.model.adapter import load_adapter
    from common.task import device, load_catalogue

    conf = results.config
    folder = Path(str(conf.get("fed.out-dir", ""))) / "adapter"
    if not conf or not (folder / "adapter_config.json").is_file():
        return None
    cfg = parse_recorded(conf)
    n_items, hl = corpus.data.n_items, cfg.data.history_len
    # Text only: no popularity term, new items by their frozen text similarity alone (the
    # credit form with w = 0), whatever placement the run itself used for them.
    text_cfg = dataclasses.replace(cfg.model, new_item_rank=0)
    model = load_adapter(text_cfg, folder, n_items=n_items, history_len=hl, device=device())
    with torch.no_grad():
        model.prior_weight.weight.zero_()
    cat = load_catalogue(cfg.model, corpus.data.item_texts, model.n_lower + cfg.model.lora.layers)
    ev = evaluate_scores(
        model_score_fn(model.eval(), cat, history_len=hl),
        corpus.local(users),
        n_items,
        which=which,
        evaluator=evaluator_for(corpus, seed),
    )
    res = ev.result()
    return {
        **{k: res[k] for k in ("hr@10", "ndcg@10")},
        **_rank_stats(ev.per_user()["rank"], n_items),
    }
