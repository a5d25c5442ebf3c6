"""A site's evaluation: full-catalogue ranking of its users' held-out items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from client.site import Site
from client.site_round import EVAL_STREAMS, dp_plan, eval_releases, round_seed
from client.spending import load_reply, open_ledger, privacy_metrics, save_reply, spend
from common import records as R
from common.evaluation.evaluate import evaluate_scores, item_cache_path, model_score_fn
from common.evaluation.exposure import long_tail_items
from common.evaluation.metrics import RankingEvaluator
from common.model.towers import load_trainable_state
from common.privacy.accounting import PrivacyError, test_only_zero_noise
from common.records import state_digest
from common.replies import Decline, EvalReply


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
    return item_cache_path(site.cfg.model.cache_dir, state_digest(state))


# Per-user metrics a noised evaluation releases (each in [0, 1] per user).
NOISED_METRICS = ("hr@10", "ndcg@10", "mrr")
# Per-user vectors a simulated site's policy may release (fairness studies), in this order.
PER_USER_RELEASED = ("user", "hr@10", "ndcg@10", "rank")


def noisy_means(
    per_user: dict[str, np.ndarray], keys: tuple[str, ...], *, sigma: float, seed: int
) -> dict[str, float]:
    """Gaussian mechanism over per-user contributions (sensitivity: one user).

    Each user contributes ``(m_1, ..., m_d, 1) / sqrt(d + 1)`` (every m_i in [0, 1], so the
    vector has L2 norm <= 1); the sum gets ``N(0, sigma^2)`` per coordinate and is scaled
    back. Released: the noisy count (rounded, at least 1, as ``num-examples``) and each
    metric as noisy sum / that count -- the server's count-weighted mean of the sites' values
    is then the ratio of the summed noisy sums to the summed noisy counts.
    """
    d = len(keys)
    scale = float(np.sqrt(d + 1))
    n = len(per_user[keys[0]]) if keys else 0
    cols = [np.clip(np.asarray(per_user[k], np.float64), 0.0, 1.0) for k in keys]
    sums = np.array([c.sum() for c in cols] + [float(n)]) / scale
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=d + 1)
    noisy = (sums + (0.0 if test_only_zero_noise() else noise)) * scale
    count = max(1.0, float(np.round(noisy[-1])))
    out = {k: float(noisy[i] / count) for i, k in enumerate(keys)}
    out[R.NUM_EXAMPLES] = count
    return out


def evaluate_round(
    site: Site,
    state: dict[str, np.ndarray],
    *,
    which: str,
    per_user: bool,
    server_round: int = 0,
    run_key: str = "",
) -> EvalReply | Decline:
    """This site's evaluation reply, as its policy allows (a `Decline` with its reason if not).

    Under local DP with ``release-eval = "noised"`` (the default) the metrics go through
    `noisy_means`, accounted in the site's ledger (kind ``eval``) and composed with training;
    ``"plain"`` releases exact aggregates; ``"none"`` releases nothing. Per-user vectors only
    in simulation and only if the policy sets ``release-per-user``.
    """
    policy = site.policy
    why = policy.decline_reason(site.cfg, simulated=site.simulated)
    if why:
        return Decline(f"{site.name}: {why}")
    if policy.release_eval == "none":
        return Decline(f"{site.name}: the site's policy releases no evaluation")
    noised = site.cfg.dp.local and policy.release_eval == "noised"
    if noised:
        return _noised_round(site, state, which=which, server_round=server_round, run_key=run_key)
    ev = _evaluate(site, state, which)
    res = ev.result()
    scores = {k: v for k, v in res.items() if k != "n_users"}
    if not (per_user and policy.release_per_user and site.simulated):
        return EvalReply(scores, int(res["n_users"]))
    pu = ev.per_user()
    # Per-item top-10 counts: the server sums them for the federation's true coverage,
    # exposure Gini and Lorenz curve (a mean of per-site coverages would be wrong).
    return EvalReply(
        scores,
        int(res["n_users"]),
        per_user={k: [float(x) for x in pu[k]] for k in PER_USER_RELEASED},
        exposure_counts=[float(x) for x in ev.exposure(10)],
    )


def _evaluate(site: Site, state: dict[str, np.ndarray], which: str) -> Any:
    score = shared_item_scores(site, state)
    return evaluate_scores(
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


def _noised_round(
    site: Site, state: dict[str, np.ndarray], *, which: str, server_round: int, run_key: str
) -> EvalReply | Decline:
    """One accounted, noised evaluation release (re-sent, not re-spent, when redelivered)."""
    if which not in EVAL_STREAMS:  # before any budget is spent
        return Decline(f"{site.name}: unknown evaluation split {which!r} (valid or test)")
    try:
        plan = dp_plan(site)
    except PrivacyError as exc:
        return Decline(f"{site.name}: {exc}")
    if plan is None or plan.eval_sigma <= 0:
        return Decline(f"{site.name}: dp.eval-share = 0 leaves no budget for a noised "
                       "evaluation (the site's policy releases no plain metrics)")  # fmt: skip
    ledger = open_ledger(site, plan)
    kind = f"eval-{which}"
    if ledger.has_round(server_round, kind, run=run_key):
        cached = load_reply(site, server_round, kind, state, run_key)
        if cached is None:
            why = "was already released for another state; it is not released twice"
            return Decline(f"{site.name}: evaluation {server_round} {why}")
        return EvalReply.from_metrics(cached[1])
    done = sum(1 for r in ledger.rounds if r.get("run", "") == run_key
               and str(r["kind"]).startswith("eval"))  # fmt: skip
    if done >= eval_releases(site):
        return Decline(f"{site.name}: the run's {done} planned noised evaluations are spent "
                       "(one per round, dp.eval-share of epsilon)")  # fmt: skip
    _, refusal = spend(
        site, plan, ledger, server_round=server_round, kind=kind, events=plan.eval_events(),
        run_key=run_key,
    )  # fmt: skip
    if refusal:
        return Decline(f"{site.name}: {refusal}")
    ev = _evaluate(site, state, which)
    noisy = noisy_means(
        ev.per_user(), NOISED_METRICS, sigma=plan.eval_sigma,
        seed=round_seed(site, server_round, stream=EVAL_STREAMS[which]),
    )  # fmt: skip
    count = noisy.pop(R.NUM_EXAMPLES)
    reply = EvalReply(noisy, count, privacy=privacy_metrics(site, plan, ledger, run_key),
                      noised=True)  # fmt: skip
    save_reply(site, server_round, kind, state, reply, run_key)
    return reply
