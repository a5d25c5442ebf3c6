"""A site's work in a round, without Flower: local data, DP-SGD with a ledger."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.canary import make_canaries
from common.config import NODE_DATA_KEYS, RunConfig
from common.model import RecModel, load_trainable_state, trainable_state
from common.policy import SitePolicy, load_policy
from common.privacy import REPORT_DELTA, Ledger, PrivacyError, noise_seed, site_ledger_dir
from common.records import UNIT_WEIGHT as R_UNIT_WEIGHT
from common.records import state_digest
from common.task import (
    Corpus,
    client_users,
    heldout_users,
    load_corpus,
    local_histogram,
    setup,
)
from common.train import DPPlan, LocalData, Party, party_plan, train


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
    policy: SitePolicy = SitePolicy()  # the site's own limits (node config)
    simulated: bool = True  # a simulation node (Flower's partition-id) vs a deployed site
    data_key: str = ""  # fingerprint of the site's data: one ledger per data set
    adapter_dir: Path | None = None  # node config `adapter-dir`: where the final adapter goes


def node_setup(
    run_config: dict[str, Any], node_config: dict[str, Any]
) -> tuple[RunConfig, str, np.ndarray | None]:
    """Resolve the run config with node overrides; return (cfg, site name, users or None).

    Simulation nodes carry ``partition-id``/``num-partitions``; deployed SuperNodes carry
    ``data-dir`` (and optionally ``site-name``, ``ledger-path`` and the site's data settings
    of `common.config.NODE_DATA_KEYS`: ``dataset``, ``min-interactions``, files, columns) and
    own all the users in their data.
    """
    from common.config import ConfigError, parse_config

    over = dict(run_config)
    for key, run_key in NODE_DATA_KEYS.items():
        if key in node_config:
            over[run_key] = node_config[key]
    try:
        cfg = parse_config(over)
    except ConfigError as exc:
        mine = [k for k in NODE_DATA_KEYS if k in node_config]
        raise ConfigError(
            f"{exc} (this site's node config sets {mine})" if mine else str(exc)
        ) from None
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
        root = site_ledger_dir(cfg)
        ledger = str(root / f"{name}.json")
    index, n_sites = (
        (int(node_config["partition-id"]), int(node_config["num-partitions"]))
        if "partition-id" in node_config
        else (0, 1)
    )
    site = _site(
        cfg, name, None if users is None else tuple(int(u) for u in users), ledger, index, n_sites
    )
    simulated = "partition-id" in node_config
    site.policy = load_policy(node_config, simulated=simulated)
    if simulated and not site.policy.label:  # one researcher owns every simulated site
        site.policy = dataclasses.replace(site.policy, label=name)
    site.simulated = simulated
    site.data_key = data_fingerprint(cfg, site.trainees)
    site.adapter_dir = (
        Path(str(node_config["adapter-dir"])) if node_config.get("adapter-dir") else None
    )
    return site


def data_fingerprint(cfg: RunConfig, data: LocalData) -> str:
    """Content hash of what this site trains on (data set name, catalogue size, histories)."""
    h = hashlib.sha256(f"{cfg.data.dataset}/{cfg.data.synthetic_users}".encode())
    for seq in data.train:
        h.update(np.asarray(seq, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def ledger_file(site: Site) -> Path | None:
    """The ledger for this site's data: a run on other data never spends or locks it.

    The configured file belongs to the first data set that wrote it; a run on other data
    uses ``<stem>.<data key><suffix>`` beside it, unless the site's policy sets
    ``ledger-any-dataset`` (then every data set spends the one file).
    """
    base = site.ledger_path
    if base is None or site.policy.ledger_any_dataset or not base.exists():
        return base
    try:
        owner = json.loads(base.read_text()).get("data_key", site.data_key)
    except (OSError, ValueError, AttributeError):
        return base  # a corrupt file: Ledger.open refuses it with the full story
    if owner == site.data_key:
        return base
    return base.with_name(f"{base.stem}.{site.data_key}{base.suffix}")


def eval_releases(site: Site) -> int:
    """Noised evaluation releases a site plans for a run: one per round (+ one after round 0)."""
    return site.policy.eval_releases(site.cfg)


def dp_plan(site: Site) -> DPPlan | None:
    """This site's DP plan (None without local DP); raises `PrivacyError` for a bad delta."""
    return party_plan(site.cfg, Party.of(site.cfg, site.trainees, site.policy))


def open_ledger(site: Site, plan: DPPlan) -> Ledger:
    """The site's persistent ledger for its data (raises `PrivacyError` if corrupt).

    Its budget is the site's own `max-epsilon` (over every run on this data); each run is
    also held to its own `dp.epsilon` (`Ledger.run_epsilon`).
    """
    ledger = Ledger.open(
        ledger_file(site),
        budget_epsilon=site.policy.max_epsilon,
        delta=plan.delta,
        accountant=site.cfg.dp.accountant,
    )
    ledger.data_key = site.data_key
    return ledger


def declined(reason: str, **extra: float) -> tuple[None, dict[str, Any]]:
    """A refusal: no arrays, ``declined = 1`` and the reason (sent to the server)."""
    return None, {"declined": 1, "reason": reason, **extra}


def spend(
    site: Site, plan: DPPlan, ledger: Ledger, *, server_round: int, kind: str,
    events: list[tuple[float, float, int]], run_key: str,
) -> tuple[float | None, str | None]:  # fmt: skip
    """Record `events` if both the run's and the site's budgets allow: (run epsilon, refusal)."""
    run_eps = ledger.run_epsilon(run_key, events)
    if run_eps > site.cfg.dp.epsilon * (1 + 1e-6):
        return None, (
            f"round {server_round} ({kind}) would exceed this run's budget dp.epsilon "
            f"{site.cfg.dp.epsilon:g} (epsilon {run_eps:.4g})"
        )
    if ledger.would_exceed(events):
        return None, (
            f"round {server_round} ({kind}) would exceed the site's max-epsilon "
            f"{site.policy.max_epsilon:g} (spent {ledger.epsilon():.4g} over all runs)"
        )
    # Spend first: a crash mid-round must never leave spent budget unrecorded.
    ledger.record(server_round, kind, events, run=run_key)
    return ledger.run_epsilon(run_key), None


def privacy_metrics(site: Site, plan: DPPlan, ledger: Ledger, run_key: str) -> dict[str, float]:
    """What a site says about its privacy: the run's epsilon (at delta and 1e-6), all runs'."""
    strict = epsilon_strict(ledger, run_key)
    return {
        "epsilon": ledger.run_epsilon(run_key),
        "delta": plan.delta,
        "epsilon-at-1e-6": strict,
        "ledger-epsilon": ledger.epsilon(),
    }


def epsilon_strict(ledger: Ledger, run_key: str) -> float:
    """The run's epsilon at the report delta (1e-6)."""
    strict = Ledger(ledger.budget_epsilon, REPORT_DELTA, ledger.accountant, ledger.rounds)
    return strict.run_epsilon(run_key)


def round_seed(site: Site, server_round: int, *, stream: int) -> int:
    """Seed of one release: OS entropy, or a config hash (dp.reproducible-noise in simulation).

    Without DP (dp.mode = "none") nothing is private anyway and runs stay reproducible.
    """
    reproducible = (site.cfg.dp.reproducible_noise and site.simulated) or site.cfg.dp.mode == "none"
    label = f"{site.cfg.train.seed}/{site.name}/{server_round}/{stream}"
    return noise_seed(reproducible=reproducible, label=label)


def train_round(
    site: Site,
    state: dict[str, np.ndarray],
    *,
    server_round: int,
    collect_prior: bool,
    proximal_mu: float,
    run_key: str = "",
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """Load the global state, spend budget if allowed, train; return (new state, metrics).

    Returns ``(None, metrics)`` with ``declined = 1`` and a ``reason`` when the site's policy
    or budget refuses the round: the client refuses rather than overspend. `progress` is
    called after every training step (as `common.train.train` calls it).
    """
    cfg = site.cfg
    why = site.policy.decline_reason(cfg, simulated=site.simulated)
    if why:
        return declined(f"{site.name}: {why}")
    if len(site.trainees.trainable()) == 0:
        return declined(f"{site.name} has no user with two or more training interactions")
    try:
        plan = dp_plan(site)
    except PrivacyError as exc:
        return declined(f"{site.name}: {exc}")
    if plan is not None:
        why = site.policy.decline_reason(cfg, simulated=site.simulated, sigma=plan.sigma)
        if why:
            return declined(f"{site.name}: {why}")
    load_trainable_state(site.model, state)
    kind = "prior" if collect_prior else "train"
    ledger = None
    if plan is not None:
        events = plan.prior_events() if collect_prior else plan.round_events()
        ledger = open_ledger(site, plan)
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
            return cached
        _, refusal = spend(
            site, plan, ledger, server_round=server_round, kind=kind, events=events,
            run_key=run_key,
        )  # fmt: skip
        if refusal:
            return declined(f"{site.name}: {refusal}", epsilon=ledger.run_epsilon(run_key))
    if collect_prior:  # the prior round only releases the histogram; training starts next
        if cfg.model.prior:
            hist = local_histogram(
                site.trainees,
                site.corpus.data.n_items,
                recent=cfg.data.history_len,
                sigma=plan.prior_sigma if plan is not None else 0.0,
                seed=round_seed(site, server_round, stream=1),
            )
            with torch.no_grad():  # the site's (noisy) sum; the server sums the sites'
                site.model.prior.copy_(torch.from_numpy(hist).float())
        out = reply_metrics(site, plan, ledger, run_key, stats=None)
        return save_reply(
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
        seed=round_seed(site, server_round, stream=2),
        proximal_mu=proximal_mu,
        anchor=anchor,
        progress=progress,
    )
    metrics = reply_metrics(site, plan, ledger, run_key, stats=stats)
    return save_reply(
        site, server_round, "train", state, trainable_state(site.model), metrics, run_key
    )


def reply_metrics(
    site: Site, plan: DPPlan | None, ledger: Ledger | None, run_key: str, *, stats: Any
) -> dict[str, Any]:
    """What a training reply says besides its arrays.

    With local DP only released, data-independent values: equal FedAvg weights, the
    privacy spent. Exact counts, losses and timings (which reveal the number of users and
    depend on their data un-noised) only without DP or when the site's policy releases
    diagnostics.
    """
    out: dict[str, Any] = {R_UNIT_WEIGHT: 1, "declined": 0}
    if plan is not None and ledger is not None:
        out.update(privacy_metrics(site, plan, ledger, run_key))
        if site.cfg.dp.reproducible_noise:
            out["reproducible-noise"] = 1
    if plan is None or site.policy.release_diagnostics:
        out.update(
            {
                "num-examples": len(site.trainees),
                "train_loss": stats.loss if stats else 0.0,
                "steps": stats.steps if stats else 0,
                "users-trained": stats.users_seen if stats else 0,
                "train-s": stats.wall_s if stats else 0.0,
            }
        )
    return out


def _reply_path(site: Site, server_round: int, kind: str, run_key: str) -> Path | None:
    if site.ledger_path is None:
        return None
    run = f".{run_key}" if run_key else ""
    return site.ledger_path.with_name(
        f"{site.ledger_path.stem}{run}.round-{server_round}-{kind}.npz"
    )


def save_reply(
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


def load_reply(
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
