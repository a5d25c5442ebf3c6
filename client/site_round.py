"""A site's local round, without Flower: its DP plan, admission, budget, training and reply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from client.site import Site
from client.spending import load_reply, open_ledger, privacy_metrics, save_reply, spend
from common.model.towers import load_trainable_state, trainable_state
from common.model.train import train
from common.privacy.accounting import PrivacyError, noise_seed
from common.privacy.cooc import head_items, local_cooc
from common.privacy.ledger import Ledger
from common.privacy.plan import DPPlan, Party, party_plan
from common.replies import Decline, TrainReply, TrainStats
from common.task import local_histogram

# Noise streams of a site's releases within one round (`round_seed`): each release draws from
# its own stream so that no two releases share noise under the reproducible switch (1: prior,
# 2: DP-SGD, 3 / 5: noised test / validation evaluation in client/evaluation.py, 4: the
# co-occurrence matrix).
COOC_STREAM = 4
EVAL_STREAMS = {"test": 3, "valid": 5}


def eval_releases(site: Site) -> int:
    """Noised evaluation releases a site plans for a run: one per round (+ one after round 0)."""
    return site.policy.eval_releases(site.cfg)


def dp_plan(site: Site) -> DPPlan | None:
    """This site's DP plan (None without local DP); raises `PrivacyError` for a bad delta."""
    return party_plan(site.cfg, Party.of(site.cfg, site.trainees, site.policy))


def round_seed(site: Site, server_round: int, *, stream: int) -> int:
    """Seed of one release: OS entropy, or a config hash (dp.reproducible-noise in simulation).

    Without DP (dp.mode = "none") nothing is private anyway and runs stay reproducible.
    """
    reproducible = (site.cfg.dp.reproducible_noise and site.simulated) or site.cfg.dp.mode == "none"
    label = f"{site.cfg.train.seed}/{site.name}/{server_round}/{stream}"
    return noise_seed(reproducible=reproducible, label=label)


def admit(site: Site) -> DPPlan | Decline | None:
    """The round's DP plan (None without local DP), or why the site's policy refuses it."""
    cfg = site.cfg
    why = site.policy.decline_reason(cfg, simulated=site.simulated)
    if why:
        return Decline(f"{site.name}: {why}")
    if len(site.trainees.trainable()) == 0:
        return Decline(f"{site.name} has no user with two or more training interactions")
    try:
        plan = dp_plan(site)
    except PrivacyError as exc:
        return Decline(f"{site.name}: {exc}")
    if plan is not None:
        why = site.policy.decline_reason(cfg, simulated=site.simulated, sigma=plan.sigma)
        if why:
            return Decline(f"{site.name}: {why}")
    return plan


def train_round(
    site: Site,
    state: dict[str, np.ndarray],
    *,
    server_round: int,
    collect_prior: bool,
    proximal_mu: float,
    run_key: str = "",
    progress: Callable[[int, int, float], None] | None = None,
    collect_cooc: bool = False,
) -> TrainReply | Decline:
    """Load the global state, spend budget if allowed, train; return the reply.

    Round 0 trains nothing: it releases the popularity histogram (`collect_prior`) or, in its
    second step, the co-occurrence matrix (`collect_cooc`).

    Returns a `Decline` with its reason when the site's policy or budget refuses the round:
    the client refuses rather than overspend. `progress` is called after every training
    step (as `common.model.train.train` calls it).
    """
    plan = admit(site)
    if isinstance(plan, Decline):
        return plan
    load_trainable_state(site.model, state)
    kind = "cooc" if collect_cooc else "prior" if collect_prior else "train"
    ledger = None
    if plan is not None:
        ledger = open_ledger(site, plan)
        settled = spend_round(site, plan, ledger, server_round, kind, state, run_key)
        if settled is not None:
            return settled
    if collect_prior or collect_cooc:  # round 0 releases statistics; training starts next
        (release_cooc if collect_cooc else release_prior)(site, plan, server_round)
        stats = None
    else:
        anchor = trainable_state(site.model) if proximal_mu > 0 else None
        stats = train(
            site.model, site.cat, site.trainees, site.cfg.train,
            history_len=site.cfg.data.history_len, plan=plan, clip=site.cfg.dp.clip,
            seed=round_seed(site, server_round, stream=2), proximal_mu=proximal_mu,
            anchor=anchor, progress=progress,
        )  # fmt: skip
    reply = reply_of(site, plan, ledger, run_key, stats=stats)
    return save_reply(site, server_round, kind, state, reply, run_key)  # type: ignore[return-value]


def spend_round(
    site: Site, plan: DPPlan, ledger: Ledger, server_round: int, kind: str,
    state: dict[str, np.ndarray], run_key: str,
) -> TrainReply | Decline | None:  # fmt: skip
    """Spend the round's budget (None: go on), re-send a redelivered round, or refuse it."""
    if ledger.has_round(server_round, kind, run=run_key):
        # A redelivered round (e.g. the server restarted mid-round): re-send the output
        # already released for the same input instead of spending the budget again.
        cached = load_reply(site, server_round, kind, state, run_key)
        if cached is None:
            raise PrivacyError(
                f"round {server_round} ({kind}) was already spent in {ledger.path} "
                "for a different global state (or its reply was lost); refusing to spend "
                "it twice"
            )
        return TrainReply.from_metrics(*cached)
    events = {"prior": plan.prior_events, "cooc": plan.cooc_events}.get(kind, plan.round_events)()
    if not events:
        raise PrivacyError(f"round {server_round} asks for a {kind} release this site's DP plan "
                           "does not include (model.cooc-items / model.prior differ?)")  # fmt: skip
    _, refusal = spend(site, plan, ledger, server_round=server_round, kind=kind, events=events,
                       run_key=run_key)  # fmt: skip
    if refusal:
        return Decline(f"{site.name}: {refusal}", epsilon=ledger.run_epsilon(run_key))
    return None


def release_prior(site: Site, plan: DPPlan | None, server_round: int) -> None:
    """Put the site's (noisy) popularity histogram into the model's prior (a sum, not a mean)."""
    cfg = site.cfg
    if not cfg.model.prior:
        return
    hist = local_histogram(
        site.trainees,
        site.corpus.data.n_items,
        recent=cfg.data.history_len,
        sigma=plan.prior_sigma if plan is not None else 0.0,
        seed=round_seed(site, server_round, stream=1),
    )
    with torch.no_grad():  # the site's (noisy) sum; the server sums the sites'
        site.model.prior.copy_(torch.from_numpy(hist).float())


def release_cooc(site: Site, plan: DPPlan | None, server_round: int) -> None:
    """Put the site's (noisy) co-occurrence matrix of the prior's head items into the model.

    The head items are the largest of the global (summed, already released) prior the server
    sent, so every site releases the same items' matrix and the server sums them.
    """
    model, cooc = site.model, site.model.cooc
    if cooc is None:
        raise PrivacyError(f"{site.name}: asked for a co-occurrence release, but "
                           "model.cooc-items = 0 in this node's configuration")  # fmt: skip
    head = head_items(model.prior.detach().cpu().numpy(), int(cooc.shape[0]))
    gram = local_cooc(site.trainees.train, site.corpus.data.n_items, head,
                      sigma=plan.cooc_sigma if plan is not None else 0.0,
                      seed=round_seed(site, server_round, stream=COOC_STREAM))  # fmt: skip
    with torch.no_grad():
        cooc.copy_(torch.from_numpy(gram).float())


def reply_of(
    site: Site, plan: DPPlan | None, ledger: Ledger | None, run_key: str, *, stats: Any
) -> TrainReply:
    """The training reply: the new trainable state and what it says besides.

    With local DP only released, data-independent values: equal FedAvg weights, the
    privacy spent. Exact counts, losses and timings (which reveal the number of users and
    depend on their data un-noised) only without DP or when the site's policy releases
    diagnostics.
    """
    privacy = None
    if plan is not None and ledger is not None:
        privacy = privacy_metrics(site, plan, ledger, run_key)
    diagnostics = None
    if plan is None or site.policy.release_diagnostics:
        diagnostics = TrainStats(
            num_examples=len(site.trainees),
            train_loss=stats.loss if stats else 0.0,
            steps=stats.steps if stats else 0,
            users_trained=stats.users_seen if stats else 0,
            train_s=stats.wall_s if stats else 0.0,
        )
    return TrainReply(trainable_state(site.model), privacy, diagnostics,
                      reproducible_noise=site.cfg.dp.reproducible_noise)  # fmt: skip
