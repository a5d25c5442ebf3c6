"""The audit's attacks: scores of (history, item) pairs, canary epsilon bounds, real users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.run import RunConfig
from common.evaluation.evaluate import ScoreFn, model_score_fn
from common.model.adapter import load_adapter
from common.model.towers import RecModel
from common.privacy import audit as A
from common.privacy import audit_bounds as B
from common.privacy.canary import make_canaries
from common.task import device, heldout_users, load_catalogue, load_corpus

# The attack family: each gives one score per (history, item); the bounds take the best attack
# with a correction for having chosen it (Bonferroni for the one-run bound, a held-out half
# for Clopper-Pearson).
ATTACKS = ("model", "prior")


def target_scores(score: ScoreFn, known: list[np.ndarray], items: np.ndarray) -> np.ndarray:
    """Score of ``items[j]`` for a user whose known history is ``known[j]``."""
    out = np.empty(len(items), dtype=np.float64)
    for s in range(0, len(items), 256):
        block = score(np.arange(s, min(s + 256, len(items))), known[s : s + 256])
        out[s : s + len(block)] = block[np.arange(len(block)), items[s : s + 256]]
    return out


class Scorer:
    """The attacks' scores of (history, item) pairs under the audited model.

    ``model`` (black-box): the final model's score of the item given the history minus the
    score under the public, seeded initial model, which isolates what training changed.
    ``prior`` (white-box): the smallest released popularity-prior value among the item and
    the history items; a user's own interactions raise each of them.
    """

    def __init__(self, cfg: RunConfig, adapter: Path, attacks: tuple[str, ...]) -> None:
        unknown = sorted(set(attacks) - set(ATTACKS))
        if unknown or not attacks:
            raise ValueError(f"attacks must be a non-empty subset of {ATTACKS}, got {attacks}")
        self.attacks = attacks
        corpus = load_corpus(cfg.data)
        n_items, hl = corpus.data.n_items, cfg.data.history_len
        torch.manual_seed(cfg.train.seed)
        final = load_adapter(cfg.model, adapter, n_items=n_items, history_len=hl, device=device())
        cat = load_catalogue(
            cfg.model, corpus.data.item_texts, final.n_lower + cfg.model.lora.layers
        )
        self.prior = final.prior.detach().cpu().numpy().astype(np.float64)
        ref = RecModel(cfg.model, n_items=n_items, history_len=hl, device=device())
        self.final = model_score_fn(final.eval(), cat, history_len=hl)
        self.ref = model_score_fn(ref.eval(), cat, history_len=hl)

    def __call__(
        self, known: list[np.ndarray], items: np.ndarray, *, prior_of_history: bool = True
    ) -> dict[str, np.ndarray]:
        """{attack: scores of `items` given `known`}; higher means "member".

        With ``prior_of_history=False`` the prior attack looks at the item alone (for a real
        user, the history items are members either way).
        """
        out = {}
        if "model" in self.attacks:
            out["model"] = target_scores(self.final, known, items) - target_scores(
                self.ref, known, items
            )
        if "prior" in self.attacks:
            out["prior"] = np.array(
                [
                    min(self.prior[i], self.prior[k].min())
                    if prior_of_history and len(k)
                    else self.prior[i]
                    for k, i in zip(known, items, strict=True)
                ]
            )
        return out


def audit_canaries(
    cfg: RunConfig,
    scorer: Scorer,
    *,
    delta_run: float,
    delta_audit: float,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Score every canary (the auditor knows them all, not `included`) and bound epsilon."""
    can = make_canaries(
        load_corpus(cfg.data).data.n_items,
        cfg.audit.canaries,
        history=cfg.audit.canary_history,
        n_sites=cfg.data.num_sites,
        seed=cfg.audit.seed,
    )
    scores = scorer(list(can.histories), can.targets)
    inc = can.included
    family = len(B.guess_grid(len(inc))) * len(scores)
    out: dict[str, Any] = {"m": len(inc), "n_included": int(inc.sum()), "attacks": {}}
    for key, d in (("run_delta", delta_run), ("audit_delta", delta_audit)):
        ones = {
            a: B.best_one_run_bound(s, inc, delta=d, confidence=confidence, family_size=family)
            for a, s in scores.items()
        }
        cps = {
            a: B.tpr_fpr_epsilon_lower_bound(s[inc], s[~inc], d, confidence, seed=seed)
            for a, s in scores.items()
        }
        one_a = max(ones, key=lambda a: ones[a]["epsilon_lb"])
        cp_a = max(cps, key=lambda a: cps[a]["selection_epsilon_lb"])  # chosen on half A
        out[key] = {
            "delta": d,
            "one_run": {**ones[one_a], "attack": one_a},
            "clopper_pearson": {**cps[cp_a], "attack": cp_a},
            "per_attack": {
                a: {"one_run": ones[a]["epsilon_lb"], "clopper_pearson": cps[a]["epsilon_lb"]}
                for a in ones
            },
        }
    out["attacks"] = {a: A.membership_attack(s[inc], s[~inc]) for a, s in scores.items()}
    return out


def attack_real_users(cfg: RunConfig, scorer: Scorer) -> dict[str, Any]:
    """Attacks on real users: per interaction always, per user when users were held out.

    Per interaction: each user's last training item (member) vs its test item (never trained).
    Per user (``audit.holdout-users > 0``): trained users vs users whose data reached no
    client, on the same statistic (last training item given the earlier ones; the prior
    attack also looks at the history, since a user's own items all fed the histogram).
    """
    split = load_corpus(cfg.data).split
    everyone = [u for u, t in enumerate(split.train) if len(t) >= 2]
    held = set(heldout_users(len(split.train), cfg.audit.holdout_users, cfg.audit.seed).tolist())
    trained = [u for u in everyone if u not in held]  # a held-out user's items are not members
    member = scorer(
        [split.train[u][:-1] for u in trained],
        np.array([split.train[u][-1] for u in trained]),
        prior_of_history=False,
    )
    non = scorer(
        [np.append(split.train[u], split.valid[u]) for u in trained],
        split.test[trained],
        prior_of_history=False,
    )
    out = {a: {**A.membership_attack(member[a], non[a]), "unit": "interaction"} for a in member}
    if held:
        last = scorer(
            [split.train[u][:-1] for u in everyone],
            np.array([split.train[u][-1] for u in everyone]),
        )
        out_mask = np.array([u in held for u in everyone])
        for a, s in last.items():
            out[f"{a}, held-out users"] = {
                **A.membership_attack(s[~out_mask], s[out_mask]),
                "unit": "user",
            }
    return out
