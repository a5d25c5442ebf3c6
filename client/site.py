"""A site's fixed context, without Flower: `Site`, its per-process cached data, `get_site`."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.node import node_setup, with_canaries
from common.config.run import RunConfig
from common.model.towers import RecModel, trainable_state
from common.model.train import LocalData
from common.privacy.ledger import site_ledger_dir
from common.privacy.policy import SitePolicy, load_policy
from common.task import Corpus, load_corpus, setup

log = logging.getLogger("flwr.fedrec")


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


@functools.lru_cache(maxsize=2)
def _shared(cfg: RunConfig) -> tuple[Corpus, Any, RecModel]:
    """Corpus, catalogue and one model per process and config.

    Shared by every site the process serves (a simulation worker serves many clients in
    turn; each round loads the received state into the model first, so no state leaks from
    one client to the next).
    """
    torch.manual_seed(cfg.train.seed)
    return setup(cfg)


# Sites whose data a process keeps: a simulation worker serves many sites in turn, and each
# entry holds only its users' rows (references into the cached corpus), never a model.
SITES_CACHED = 1024


@functools.lru_cache(maxsize=SITES_CACHED)
def _site_data(
    cfg: RunConfig, name: str, users: tuple[int, ...] | None, site_index: int, n_sites: int
) -> tuple[LocalData, LocalData, str]:
    """(local users, trainees with canaries, data fingerprint): fixed for one node's data."""
    corpus = load_corpus(cfg.data)
    if users is None and corpus.set_aside is not None and len(corpus.set_aside):
        log.warning("[fedrec] site %s: %s", name, corpus.set_aside.summary())
    local = corpus.local(np.asarray(users)) if users is not None else corpus.everyone()
    if len(local) == 0:
        raise ValueError(f"site {name} has no users")
    trainees = with_canaries(cfg, local, corpus.data.n_items, site_index, n_sites)
    return local, trainees, data_fingerprint(cfg, trainees)


def resolve_node(
    run_config: dict[str, Any], node_config: dict[str, Any]
) -> tuple[RunConfig, str, tuple[int, ...] | None]:
    """`node_setup` (config parsed, users partitioned) once per distinct pair of configs."""
    try:
        return _resolved(tuple(sorted(run_config.items())), tuple(sorted(node_config.items())))
    except TypeError:  # an unhashable config value: resolve it afresh
        return _freeze_users(*node_setup(run_config, node_config))


@functools.lru_cache(maxsize=SITES_CACHED)
def _resolved(
    run_items: tuple[tuple[str, Any], ...], node_items: tuple[tuple[str, Any], ...]
) -> tuple[RunConfig, str, tuple[int, ...] | None]:
    return _freeze_users(*node_setup(dict(run_items), dict(node_items)))


def _freeze_users(
    cfg: RunConfig, name: str, users: np.ndarray | None
) -> tuple[RunConfig, str, tuple[int, ...] | None]:
    return cfg, name, None if users is None else tuple(int(u) for u in users)


def get_site(run_config: dict[str, Any], node_config: dict[str, Any]) -> Site:
    """The `Site` for this node: its data cached per process, its policy read on every call.

    The data part (parsed config, users, canaries, the data fingerprint that picks the
    ledger) is cached per (run config, node config) and (config, site name, users, canary
    slot). The policy is re-read from the node config and
    its file on every message: it is a small file, and a site that tightens its limits must
    be obeyed from the next message on, without restarting its SuperNode.
    """
    cfg, name, key = resolve_node(run_config, node_config)
    ledger = node_config.get("ledger-path") or None
    if ledger is None and cfg.dp.local:
        ledger = str(site_ledger_dir(cfg) / f"{name}.json")
    simulated = "partition-id" in node_config
    index, n_sites = (
        (int(node_config["partition-id"]), int(node_config["num-partitions"]))
        if simulated
        else (0, 1)
    )
    local, trainees, data_key = _site_data(cfg, name, key, index, n_sites)
    corpus, cat, model = _shared(cfg)
    adapter_dir = Path(str(node_config["adapter-dir"])) if node_config.get("adapter-dir") else None
    policy = load_policy(node_config, simulated=simulated)
    if simulated and not policy.label:  # one researcher owns every simulated site
        policy = dataclasses.replace(policy, label=name)
    return Site(cfg, name, corpus, local, model, cat, Path(ledger) if ledger else None,
                trainees, policy, simulated, data_key, adapter_dir)  # fmt: skip


def data_fingerprint(cfg: RunConfig, data: LocalData) -> str:
    """Content hash of what this site trains on (data set name, catalogue size, histories)."""
    h = hashlib.sha256(f"{cfg.data.dataset}/{cfg.data.synthetic_users}".encode())
    for seq in data.train:
        h.update(np.asarray(seq, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


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
