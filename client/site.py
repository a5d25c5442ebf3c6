"""A site's work in a round, without Flower: local data, DP-SGD with a ledger."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.canary import make_canaries
from common.config import RunConfig
from common.model import RecModel, load_trainable_state, trainable_state
from common.privacy import Ledger, PrivacyError
from common.records import state_digest
from common.task import (
    Corpus,
    client_users,
    heldout_users,
    load_corpus,
    local_histogram,
    setup,
)
from common.train import DPPlan, LocalData, plan_dp, train


@dataclass
class Site:
    """One client's fixed context: config, its users, model and catalogue."""

    cfg: RunConfig
    name: str
    corpus: Corpus
    local: LocalData
    model: RecModel
    cat: Any
    ledger_path: Path | None
    trainees: LocalData  # who trains: `local` plus this site's included audit canaries
    max_epsilon: float = math.inf  # the site's own cap (node config `max-epsilon`)


def node_setup(
    run_config: dict[str, Any], node_config: dict[str, Any]
) -> tuple[RunConfig, str, np.ndarray | None]:
    """Resolve the run config with node overrides; return (cfg, site name, users or None).

    Simulation nodes carry ``partition-id``/``num-partitions``; deployed SuperNodes carry
    ``data-dir`` (and optionally ``dataset``, ``site-name``, ``ledger-path``) and own all the
    users in their data.
    """
    from common.config import parse_config

    over = dict(run_config)
    if "data-dir" in node_config:
        over["data.dir"] = str(node_config["data-dir"])
    if "dataset" in node_config:
        over["data.dataset"] = str(node_config["dataset"])
    cfg = parse_config(over)
    if "partition-id" in node_config:
        pid, nparts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        corpus = load_corpus(cfg.data)
        users = client_users(cfg.data, corpus, pid, nparts, cfg.fed.seed)
        if cfg.audit.holdout_users > 0:  # audit: these users' data never reach any client
            out = heldout_users(corpus.data.n_users, cfg.audit.holdout_users, cfg.audit.seed)
            users = np.setdiff1d(users, out)
        return cfg, str(node_config.get("site-name", f"client-{pid}")), users
    return cfg, str(node_config.get("site-name", "site")), None


@functools.lru_cache(maxsize=2)
def _shared(cfg: RunConfig) -> tuple[Corpus, Any, RecModel]:
    """Corpus, catalogue and one model per process and config.

    Shared by every site the process serves (a simulation worker serves many clients in
    turn; each round loads the received state into the model first, so no state leaks from
    one client to the next).
    """
    torch.manual_seed(cfg.train.seed)
    return setup(cfg)


def _site(
    cfg: RunConfig,
    name: str,
    users: tuple[int, ...] | None,
    ledger: str | None,
    site_index: int,
    n_sites: int,
) -> Site:
    corpus, cat, model = _shared(cfg)
    local = corpus.local(np.asarray(users)) if users is not None else corpus.everyone()
    if len(local) == 0:
        raise ValueError(f"site {name} has no users")
    return Site(
        cfg,
        name,
        corpus,
        local,
        model,
        cat,
        Path(ledger) if ledger else None,
        with_canaries(cfg, local, corpus.data.n_items, site_index, n_sites),
    )


def with_canaries(
    cfg: RunConfig, local: LocalData, n_items: int, site_index: int, n_sites: int
) -> LocalData:
    """`local` plus the included audit canaries assigned to this site (training only)."""
    if cfg.audit.canaries == 0:
        return local
    can = make_canaries(
        n_items,
        cfg.audit.canaries,
        history=cfg.audit.canary_history,
        n_sites=n_sites,
        seed=cfg.audit.seed,
    )
    mine = np.flatnonzero(can.included & (can.sites == site_index))
    seqs = can.sequences
    return LocalData(
        np.concatenate([local.users, -1 - mine]),  # canaries get negative user ids
        [*local.train, *(seqs[j] for j in mine)],
        np.concatenate([local.valid, can.targets[mine]]),
        np.concatenate([local.test, can.targets[mine]]),
    )


def get_site(run_config: dict[str, Any], node_config: dict[str, Any]) -> Site:
    """The (process-cached) `Site` for this node."""
    cfg, name, users = node_setup(run_config, node_config)
    ledger = node_config.get("ledger-path") or None
    if ledger is None and cfg.dp.local:
        root = Path(cfg.dp.ledger_dir or os.path.join(cfg.fed.out_dir, "ledgers"))
        ledger = str(root / f"{name}.json")
    index, n_sites = (
        (int(node_config["partition-id"]), int(node_config["num-partitions"]))
        if "partition-id" in node_config
        else (0, 1)
    )
    site = _site(
        cfg, name, None if users is None else tuple(int(u) for u in users), ledger, index, n_sites
    )
    if "max-epsilon" in node_config:
        site.max_epsilon = float(node_config["max-epsilon"])
    return site


def dp_plan(site: Site) -> DPPlan | None:
    """This site's DP-SGD plan (None without local DP)."""
    if not site.cfg.dp.local:
        return None
    return plan_dp(
        site.cfg.dp,
        site.cfg.train,
        n_users=len(site.trainees.trainable()),
        rounds=site.cfg.fed.rounds,
        use_prior=site.cfg.model.prior,
        protected_users=len(site.trainees),
    )


def open_ledger(site: Site, plan: DPPlan) -> Ledger:
    """The site's persistent ledger (raises `PrivacyError` if corrupt)."""
    return Ledger.open(
        site.ledger_path,
        budget_epsilon=site.cfg.dp.epsilon,
        delta=plan.delta,
        accountant=site.cfg.dp.accountant,
    )


def train_round(
    site: Site,
    state: dict[str, np.ndarray],
    *,
    server_round: int,
    collect_prior: bool,
    proximal_mu: float,
    run_key: str = "",
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """Load the global state, spend budget if allowed, train; return (new state, metrics).

    Returns ``(None, metrics)`` with ``declined = 1`` when this round would exceed the site's
    privacy budget: the client refuses rather than overspend.
    """
    cfg = site.cfg
    if math.isfinite(site.max_epsilon) and (not cfg.dp.local or cfg.dp.epsilon > site.max_epsilon):
        return None, {
            "declined": 1,
            "num-examples": 0,
            "reason": f"{site.name} requires local "
            f"DP with epsilon <= {site.max_epsilon} (node config max-epsilon); the run "
            f"asks for dp.mode={cfg.dp.mode}, dp.epsilon={cfg.dp.epsilon}",
        }
    if len(site.trainees.trainable()) == 0:
        return None, {
            "declined": 1,
            "num-examples": 0,
            "reason": f"{site.name} has no user with two or more training interactions",
        }
    load_trainable_state(site.model, state)
    plan = dp_plan(site)
    events = []
    ledger = None
    if plan is not None:
        events = plan.prior_events() if collect_prior else plan.round_events()
        ledger = open_ledger(site, plan)
        kind = "prior" if collect_prior else "train"
        if ledger.has_round(server_round, kind, run=run_key):
            # A redelivered round (e.g. the server restarted mid-round): re-send the output
            # already released for the same input instead of spending the budget again.
            cached = _load_reply(site, server_round, kind, state, run_key)
            if cached is None:
                raise PrivacyError(
                    f"round {server_round} ({kind}) was already spent in {site.ledger_path} "
                    "for a different global state (or its reply was lost); refusing to spend "
                    "it twice"
                )
            return cached
        if ledger.would_exceed(events):
            return None, {
                "declined": 1,
                "num-examples": 0,
                "epsilon": ledger.epsilon(),
                "delta": plan.delta,
                "reason": f"round {server_round} would exceed epsilon budget "
                f"{cfg.dp.epsilon} (spent {ledger.epsilon():.4g})",
            }
        # Spend first: a crash mid-round must never leave spent budget unrecorded.
        eps = ledger.record(server_round, kind, events, run=run_key)
    if collect_prior and cfg.model.prior:
        sigma = plan.prior_sigma if plan is not None else 0.0
        hist = local_histogram(
            site.trainees,
            site.corpus.data.n_items,
            recent=cfg.data.history_len,
            sigma=sigma,
            seed=_site_seed(site, server_round, stream=1),
        )
        with torch.no_grad():
            # Average of per-site (hist / n_users) weighted by n_users = global sum / N.
            site.model.prior.copy_(torch.from_numpy(hist / len(site.trainees)).float())
    if collect_prior:  # the prior round only releases the histogram; training starts next
        out = {
            "num-examples": len(site.trainees),
            "unit-weight": 1,
            "train_loss": 0.0,
            "steps": 0,
            "users-trained": 0,
            "train-s": 0.0,
            "declined": 0,
        }
        if plan is not None and ledger is not None:
            out.update(
                {"epsilon": eps, "delta": plan.delta, "sigma": plan.prior_sigma, "sample-rate": 1.0}
            )
        return _save_reply(
            site, server_round, "prior", state, trainable_state(site.model), out, run_key
        )
    anchor = trainable_state(site.model) if proximal_mu > 0 else None
    stats = train(
        site.model,
        site.cat,
        site.trainees,
        cfg.train,
        history_len=cfg.data.history_len,
        plan=plan,
        clip=cfg.dp.clip,
        seed=_site_seed(site, server_round, stream=2),
        proximal_mu=proximal_mu,
        anchor=anchor,
    )
    metrics: dict[str, Any] = {
        "num-examples": len(site.trainees),
        "unit-weight": 1,
        "train_loss": stats.loss,
        "steps": stats.steps,
        "users-trained": stats.users_seen,
        "train-s": stats.wall_s,
        "declined": 0,
    }
    if plan is not None and ledger is not None:
        metrics.update(
            {
                "epsilon": eps,
                "delta": plan.delta,
                "sigma": plan.sigma,
                "sample-rate": plan.sample_rate,
            }
        )
    return _save_reply(
        site, server_round, "train", state, trainable_state(site.model), metrics, run_key
    )


def _reply_path(site: Site, server_round: int, kind: str, run_key: str) -> Path | None:
    if site.ledger_path is None:
        return None
    run = f".{run_key}" if run_key else ""
    return site.ledger_path.with_name(
        f"{site.ledger_path.stem}{run}.round-{server_round}-{kind}.npz"
    )


def _save_reply(
    site: Site,
    server_round: int,
    kind: str,
    received: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    metrics: dict[str, Any],
    run_key: str = "",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Keep this round's released output (atomically) so a redelivery can re-send it."""
    path = _reply_path(site, server_round, kind, run_key)
    if path is not None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                **{f"a/{k}": v for k, v in state.items()},  # type: ignore[arg-type]
                meta=np.array(json.dumps({"digest": state_digest(received), "metrics": metrics})),
            )
        os.replace(tmp, path)
    return state, metrics


def _load_reply(
    site: Site, server_round: int, kind: str, received: dict[str, np.ndarray], run_key: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    path = _reply_path(site, server_round, kind, run_key)
    if path is None or not path.exists():
        return None
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if meta["digest"] != state_digest(received):
            return None
        return {k[2:]: z[k] for k in z.files if k.startswith("a/")}, meta["metrics"]


def _site_seed(site: Site, server_round: int, *, stream: int) -> int:
    """Seed of one site's sampling and DP noise in one round.

    Distinct per site: identical noise at every site would not average out in FedAvg (the
    aggregate would carry K times one site's noise instead of sqrt(K) times).
    """
    digest = hashlib.sha256(f"{site.cfg.train.seed}/{site.name}/{server_round}/{stream}".encode())
    return int.from_bytes(digest.digest()[:4], "little")


def initial_state(site: Site) -> dict[str, np.ndarray]:
    """A fresh, seeded model's trainable state (identical on every node for one config)."""
    torch.manual_seed(site.cfg.train.seed)
    model = RecModel(
        site.cfg.model,
        n_items=site.corpus.data.n_items,
        history_len=site.cfg.data.history_len,
        device=site.model.device,
    )
    return trainable_state(model)


__all__ = ["PrivacyError", "Site", "get_site", "train_round"]
