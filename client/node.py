"""Which users a node holds: the run config with node overrides, its partition, its canaries."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.config.data import NODE_DATA_KEYS
from common.config.run import RunConfig
from common.model.train import LocalData
from common.privacy.canary import make_canaries
from common.task import client_users, heldout_users, load_corpus

# Node-config keys the app reads besides the data keys and the policy keys (docs/deploy.md,
# "Node config: every key the app reads"); ``fault`` is read by the test app client/hostile.py.
OTHER_NODE_KEYS = ("site-name", "ledger-path", "adapter-dir", "policy-file", "partition-id",
                   "num-partitions", "fault")  # fmt: skip


def node_keys() -> list[str]:
    """Every node-config key the app reads, sorted."""
    from dataclasses import fields

    from common.privacy.policy import SitePolicy

    policy = (f.name.replace("_", "-") for f in fields(SitePolicy))
    return sorted({*NODE_DATA_KEYS, *policy, *OTHER_NODE_KEYS})


def unknown_node_keys(node_config: dict[str, Any]) -> str:
    """"" when every key is known, else what is unknown with the closest known keys."""
    import difflib

    known = node_keys()
    bad = sorted(set(node_config) - set(known))
    if not bad:
        return ""
    hints = []
    for key in bad:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return f"unknown node-config key(s) {', '.join(hints)}; known keys: {', '.join(known)}"


def node_setup(
    run_config: dict[str, Any], node_config: dict[str, Any]
) -> tuple[RunConfig, str, np.ndarray | None]:
    """Resolve the run config with node overrides; return (cfg, site name, users or None).

    Simulation nodes carry ``partition-id``/``num-partitions``; deployed SuperNodes carry
    ``data-dir`` (and optionally ``site-name``, ``ledger-path`` and the site's data settings
    of `common.config.data.NODE_DATA_KEYS`: ``dataset``, ``min-interactions``, files, columns) and
    own all the users in their data. An unknown node-config key is a `ConfigError` naming
    it and the closest known key (a typo in ``max-epsilon`` must not leave the default budget).
    """
    from common.config.base import ConfigError
    from common.config.parse import parse_config

    if unknown := unknown_node_keys(node_config):  # a typo would silently keep the default
        raise ConfigError(f"this site's {unknown}")
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
