"""The `fed.*` and `audit.*` sections and the whole `RunConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from common.config.base import ConfigError, ConfigValue, check
from common.config.data import DataConfig
from common.config.dp import DPConfig
from common.config.model import ModelConfig, TrainConfig

# fed.eval-split: the held-out item a federated run is evaluated on, each round and at the end.
EVAL_SPLITS = ("test", "valid")


@dataclass(frozen=True)
class FedConfig:
    """Federation: rounds, sampling, strategy, central DP, output."""

    rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_clients: int
    strategy: str
    proximal_mu: float
    qffl_q: float
    qffl_lr: float
    trim_beta: float
    krum_malicious: int
    central_clip: float
    central_noise: float
    update_norm_bound: float
    round_timeout: float
    node_wait: float
    per_user_metrics: bool
    out_dir: str
    seed: int
    server_data: bool
    deliver_final: bool
    eval_split: str = "test"  # runs recorded before the key evaluated the test item

    def __post_init__(self) -> None:
        check(self.rounds >= 1, "fed.rounds", self.rounds, "must be >= 1")
        check(
            self.eval_split in EVAL_SPLITS,
            "fed.eval-split",
            self.eval_split,
            f"must be one of {EVAL_SPLITS} (choose settings on 'valid', report 'test' once)",
        )
        check(
            0 < self.fraction_train <= 1,
            "fed.fraction-train",
            self.fraction_train,
            "must be in (0, 1]",
        )
        check(
            0 <= self.fraction_evaluate <= 1,
            "fed.fraction-evaluate",
            self.fraction_evaluate,
            "must be in [0, 1]",
        )
        check(self.min_clients >= 1, "fed.min-clients", self.min_clients, "must be >= 1")
        check(self.round_timeout > 0, "fed.round-timeout", self.round_timeout, "must be > 0")
        check(self.node_wait > 0, "fed.node-wait", self.node_wait, "must be > 0 (seconds)")
        check(self.proximal_mu >= 0, "fed.proximal-mu", self.proximal_mu, "must be >= 0")
        check(self.qffl_q >= 0, "fed.qffl-q", self.qffl_q, "must be >= 0")
        check(self.qffl_lr > 0, "fed.qffl-lr", self.qffl_lr, "must be > 0")
        check(self.central_clip > 0, "fed.central-clip", self.central_clip, "must be > 0")
        check(self.central_noise >= 0, "fed.central-noise", self.central_noise, "must be >= 0")
        check(
            self.update_norm_bound > 0,
            "fed.update-norm-bound",
            self.update_norm_bound,
            "must be > 0",
        )
        check(0 <= self.trim_beta < 0.5, "fed.trim-beta", self.trim_beta, "must be in [0, 0.5)")
        check(
            self.krum_malicious >= 0,
            "fed.krum-malicious",
            self.krum_malicious,
            "must be >= 0 (malicious clients Krum tolerates)",
        )


@dataclass(frozen=True)
class AuditConfig:
    """Canary users and held-out real users for the empirical privacy audit (0 = off)."""

    canaries: int
    canary_history: int
    seed: int
    holdout_users: float

    def __post_init__(self) -> None:
        check(self.canaries >= 0, "audit.canaries", self.canaries, "must be >= 0 (0 = off)")
        check(
            0.0 <= self.holdout_users <= 0.9,
            "audit.holdout-users",
            self.holdout_users,
            "must be in [0, 0.9] (share of real users kept out of training; 0 = off)",
        )
        check(
            self.canary_history >= 1, "audit.canary-history", self.canary_history, "must be >= 1"
        )


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    dp: DPConfig
    fed: FedConfig
    audit: AuditConfig

    def flat(self) -> dict[str, ConfigValue]:
        """Return the flat, kebab-case mapping this config was parsed from."""
        out: dict[str, ConfigValue] = {}
        for key, (section, attr) in CONFIG_KEYS.items():
            obj: Any = getattr(self, section)
            for part in attr:
                obj = getattr(obj, part)
            out[key] = obj
        return out


def section_keys() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every flat key (``section.field`` or ``section.field.sub``) -> (section, attribute path)."""
    keys: dict[str, tuple[str, tuple[str, ...]]] = {}
    sections = get_type_hints(RunConfig)
    for section in fields(RunConfig):
        cls = sections[section.name]
        hints = get_type_hints(cls)
        for f in fields(cls):
            sub = hints[f.name]
            if dataclasses.is_dataclass(sub):
                for g in fields(sub):
                    key = f"{section.name}.{f.name}.{g.name}".replace("_", "-")
                    keys[key] = (section.name, (f.name, g.name))
            else:
                keys[f"{section.name}.{f.name}".replace("_", "-")] = (section.name, (f.name,))
    return keys


CONFIG_KEYS = section_keys()


def check_dp_model(cfg: RunConfig) -> None:
    """Refuse model/DP combinations that cannot run as configured.

    The co-occurrence release needs round 0 (not run under central DP) and budget left for
    training.

    Opacus materialises an ID embedding's per-sample gradient densely ([samples, items, dim]);
    with every position of a user as its own example that is one copy per example.
    """
    if cfg.dp.local and cfg.model.id_dim > 0 and cfg.train.positions == "all":
        raise ConfigError(
            "`model.id-dim` > 0 with dp.mode = 'local' needs `train.positions` = 'random': "
            "Opacus would materialise a [examples, items, id-dim] per-sample gradient"
        )
    dp = cfg.dp
    if cfg.model.cooc_items and dp.mode == "central":
        raise ConfigError(
            "`model.cooc-items` > 0 needs dp.mode = 'local' or 'none': under central DP no "
            "site releases the co-occurrence matrix (round 0 is skipped)"
        )
    if cfg.model.cooc_items and dp.prior_share + dp.eval_share + dp.cooc_share >= 1.0:
        raise ConfigError(
            f"`dp.cooc-share` = {dp.cooc_share}: with model.cooc-items > 0, dp.prior-share + "
            "dp.eval-share + dp.cooc-share must be < 1 (training needs the rest)"
        )
