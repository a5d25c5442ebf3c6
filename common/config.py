"""Run configuration: typed dataclasses parsed once from Flower's flat run-config."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

ConfigValue = bool | int | float | str


class ConfigError(ValueError):
    """A run-config key is unknown, missing, of the wrong type or out of range."""


# The data sets `common.data.DATASETS` loads (a test keeps the two in step): checked when the
# config is parsed, so a typo stops the run before any node loads data.
DATASET_NAMES = ("ml-latest-small", "ml-100k", "ml-1m", "generic", "synthetic")
# Site-side data settings: node-config key -> the run-config key it overrides at that site
# (a site's files, its own minimum of interactions per user, its columns and item text).
NODE_DATA_KEYS = {
    "dataset": "data.dataset",
    "data-dir": "data.dir",
    "min-interactions": "data.min-interactions",
    "interactions": "data.interactions",
    "items": "data.items",
    "user-column": "data.user-column",
    "item-column": "data.item-column",
    "timestamp-column": "data.timestamp-column",
    "weight-column": "data.weight-column",
    "item-id-column": "data.item-id-column",
    "text-columns": "data.text-columns",
    "genre-column": "data.genre-column",
}


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives, and how users are split into clients."""

    dataset: str
    dir: str
    min_interactions: int
    interactions: str
    items: str
    user_column: str
    item_column: str
    timestamp_column: str
    weight_column: str
    item_id_column: str
    text_columns: str
    genre_column: str
    cold_start_share: float
    history_len: int
    partitioning: str
    num_sites: int
    dirichlet_alpha: float
    synthetic_users: int
    synthetic_items: int

    def __post_init__(self) -> None:
        _check(
            self.dataset in DATASET_NAMES,
            "data.dataset",
            self.dataset,
            f"must be one of {DATASET_NAMES}",
        )
        for key in ("user_column", "item_column", "timestamp_column"):
            value = getattr(self, key)
            name = f"data.{key.replace('_', '-')}"
            _check(bool(value.strip()), name, value, "must name a column")
        _check(
            bool(self.text_column_names),
            "data.text-columns",
            self.text_columns,
            "must name at least one column of the items file, e.g. 'title'",
        )
        _check(
            0.0 <= self.cold_start_share < 1.0,
            "data.cold-start-share",
            self.cold_start_share,
            "must be in [0, 1)",
        )
        _check(self.history_len >= 1, "data.history-len", self.history_len, "must be >= 1")
        _check(
            self.min_interactions >= 0,
            "data.min-interactions",
            self.min_interactions,
            "must be >= 0",
        )
        _check(
            self.synthetic_users >= 1, "data.synthetic-users", self.synthetic_users, "must be >= 1"
        )
        _check(
            self.synthetic_items >= 2, "data.synthetic-items", self.synthetic_items, "must be >= 2"
        )
        _check(
            self.partitioning in ("iid", "dirichlet", "user"),
            "data.partitioning",
            self.partitioning,
            "must be one of 'iid', 'dirichlet', 'user'",
        )
        _check(self.num_sites >= 1, "data.num-sites", self.num_sites, "must be >= 1")
        _check(
            self.dirichlet_alpha > 0, "data.dirichlet-alpha", self.dirichlet_alpha, "must be > 0"
        )


    @property
    def text_column_names(self) -> tuple[str, ...]:
        """`data.text-columns` as a tuple."""
        return tuple(c.strip() for c in self.text_columns.split(",") if c.strip())

    def generic_options(self) -> dict[str, str]:
        """The generic format's options (`common.data.GENERIC_DEFAULTS`) from these keys."""
        return {
            "interactions": self.interactions,
            "items": self.items,
            "user": self.user_column,
            "item": self.item_column,
            "timestamp": self.timestamp_column,
            "weight": self.weight_column,
            "item_id": self.item_id_column,
            "text": self.text_columns,
            "genres": self.genre_column,
        }


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter shape on the top layers of the backbone."""

    rank: int
    alpha: float
    targets: str
    layers: int
    ffa: bool

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "model.lora.rank", self.rank, "must be >= 1")
        _check(self.alpha > 0, "model.lora.alpha", self.alpha, "must be > 0")
        _check(self.layers >= 1, "model.lora.layers", self.layers, "must be >= 1")
        _check(
            bool(self.target_modules),
            "model.lora.targets",
            self.targets,
            "must name at least one module, e.g. 'query,value'",
        )

    @property
    def target_modules(self) -> list[str]:
        """Module names as a list."""
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, adapter and head."""

    backbone: str
    max_tokens: int
    lora: LoraConfig
    proj_dim: int
    proj_hidden: int
    id_dim: int
    item_bias: bool
    temperature: float
    prior: bool
    prior_weight: float
    prior_head_share: float
    cache_lower_layers: bool
    cache_dir: str

    def __post_init__(self) -> None:
        _check(
            4 <= self.max_tokens <= 512, "model.max-tokens", self.max_tokens, "must be in [4, 512]"
        )
        _check(self.proj_dim >= 0, "model.proj-dim", self.proj_dim, "must be >= 0 (0 = none)")
        _check(
            self.proj_hidden >= 0 and (self.proj_hidden == 0 or self.proj_dim > 0),
            "model.proj-hidden",
            self.proj_hidden,
            "must be >= 0 (0 = one linear layer) and needs model.proj-dim > 0",
        )
        _check(
            self.id_dim >= 0 and self.id_dim in (0, self.proj_dim or self.id_dim),
            "model.id-dim",
            self.id_dim,
            "must be >= 0 (0 = none) and equal model.proj-dim when that is > 0",
        )
        _check(self.temperature > 0, "model.temperature", self.temperature, "must be > 0")
        _check(
            0 < self.prior_head_share <= 1,
            "model.prior-head-share",
            self.prior_head_share,
            "must be in (0, 1]",
        )


# train.loss: sampled softmax over per-user negatives; full softmax over the catalogue with the
# targets scored live through LoRA ("full") or all items from the per-epoch cache ("full-cached").
LOSSES = ("sampled", "full", "full-cached")


@dataclass(frozen=True)
class TrainConfig:
    """Local (client or central) optimisation."""

    lr: float
    epochs: float
    batch_users: int
    targets_per_user: int
    negatives: int
    negatives_pop_share: float
    loss: str
    positions: str
    seed: int
    eval_users: int

    def __post_init__(self) -> None:
        _check(0 < self.lr < math.inf, "train.lr", self.lr, "must be finite and > 0")
        _check(0 < self.epochs < math.inf, "train.epochs", self.epochs, "must be finite and > 0")
        _check(self.batch_users >= 1, "train.batch-users", self.batch_users, "must be >= 1")
        _check(
            self.targets_per_user >= 1,
            "train.targets-per-user",
            self.targets_per_user,
            "must be >= 1",
        )
        _check(self.negatives >= 1, "train.negatives", self.negatives, "must be >= 1")
        _check(
            0 <= self.negatives_pop_share <= 1,
            "train.negatives-pop-share",
            self.negatives_pop_share,
            "must be in [0, 1]",
        )
        _check(
            self.loss in LOSSES,
            "train.loss",
            self.loss,
            f"must be one of {', '.join(repr(x) for x in LOSSES)}",
        )
        _check(
            self.positions in ("random", "all"),
            "train.positions",
            self.positions,
            "must be 'random' (one random cut per user per step) or 'all'",
        )
        _check(self.eval_users >= 0, "train.eval-users", self.eval_users, "must be >= 0 (0 = all)")


# delta is at most this, and at most 1/(10 x users protected) (see `common.privacy`).
MAX_DELTA = 1e-5
# Strategies whose aggregate is the (weighted) mean of the updates: the only ones central DP
# accounts for. Krum releases one update, FedTrimmedAvg an order statistic, QFedAvg weighs
# updates by raw losses; none is covered by the mean-of-clipped-updates accounting.
MEAN_STRATEGIES = ("fedavg", "fedprox")


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy: mode, budget and mechanism."""

    mode: str
    epsilon: float
    delta: float
    noise_multiplier: float
    clip: float
    accountant: str
    prior_share: float
    eval_share: float
    ledger_dir: str
    reproducible_noise: bool
    central_ledger: str
    central_max_epsilon: float

    def __post_init__(self) -> None:
        _check(
            self.mode in ("none", "local", "central"),
            "dp.mode",
            self.mode,
            "must be one of 'none', 'local', 'central'",
        )
        _check(self.epsilon > 0, "dp.epsilon", self.epsilon, "must be > 0 ('inf' = no budget)")
        _check(
            0.0 <= self.delta <= MAX_DELTA,
            "dp.delta",
            self.delta,
            f"must be in [0, {MAX_DELTA:g}] (0 = min({MAX_DELTA:g}, 1/(10 x users protected)), "
            "rounded down to a power of ten)",
        )
        _check(
            self.noise_multiplier >= 0,
            "dp.noise-multiplier",
            self.noise_multiplier,
            "must be >= 0 (0 = derive from dp.epsilon)",
        )
        _check(self.clip > 0, "dp.clip", self.clip, "must be > 0")
        _check(
            self.accountant in ("prv", "rdp"),
            "dp.accountant",
            self.accountant,
            "must be 'prv' or 'rdp'",
        )
        _check(
            0.0 < self.prior_share < 1.0,
            "dp.prior-share",
            self.prior_share,
            "must be in (0, 1) (0 would release the exact histogram; turn the prior off with "
            "model.prior = false)",
        )
        _check(
            0.0 <= self.eval_share < 1.0 and self.prior_share + self.eval_share < 1.0,
            "dp.eval-share",
            self.eval_share,
            "must be in [0, 1) with dp.prior-share + dp.eval-share < 1",
        )
        _check(
            self.central_max_epsilon > 0,
            "dp.central-max-epsilon",
            self.central_max_epsilon,
            "must be > 0 ('inf' = no cap across runs)",
        )
        if self.mode == "local" and math.isinf(self.epsilon) and self.noise_multiplier == 0:
            raise ConfigError(
                "dp.mode = 'local' needs a finite dp.epsilon or a dp.noise-multiplier "
                "(use dp.mode = 'none' for no DP)"
            )

    @property
    def local(self) -> bool:
        """Whether clients run DP-SGD."""
        return self.mode == "local"


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

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "fed.rounds", self.rounds, "must be >= 1")
        _check(
            0 < self.fraction_train <= 1,
            "fed.fraction-train",
            self.fraction_train,
            "must be in (0, 1]",
        )
        _check(
            0 <= self.fraction_evaluate <= 1,
            "fed.fraction-evaluate",
            self.fraction_evaluate,
            "must be in [0, 1]",
        )
        _check(self.min_clients >= 1, "fed.min-clients", self.min_clients, "must be >= 1")
        _check(self.round_timeout > 0, "fed.round-timeout", self.round_timeout, "must be > 0")
        _check(self.node_wait > 0, "fed.node-wait", self.node_wait, "must be > 0 (seconds)")
        _check(self.proximal_mu >= 0, "fed.proximal-mu", self.proximal_mu, "must be >= 0")
        _check(self.qffl_q >= 0, "fed.qffl-q", self.qffl_q, "must be >= 0")
        _check(self.qffl_lr > 0, "fed.qffl-lr", self.qffl_lr, "must be > 0")
        _check(self.central_clip > 0, "fed.central-clip", self.central_clip, "must be > 0")
        _check(self.central_noise >= 0, "fed.central-noise", self.central_noise, "must be >= 0")
        _check(
            self.update_norm_bound > 0,
            "fed.update-norm-bound",
            self.update_norm_bound,
            "must be > 0",
        )
        _check(0 <= self.trim_beta < 0.5, "fed.trim-beta", self.trim_beta, "must be in [0, 0.5)")
        _check(
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
        _check(self.canaries >= 0, "audit.canaries", self.canaries, "must be >= 0 (0 = off)")
        _check(
            0.0 <= self.holdout_users <= 0.9,
            "audit.holdout-users",
            self.holdout_users,
            "must be in [0, 0.9] (share of real users kept out of training; 0 = off)",
        )
        _check(
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
        for key, (section, attr) in _KEYS.items():
            obj: Any = getattr(self, section)
            for part in attr:
                obj = getattr(obj, part)
            out[key] = obj
        return out


def _check(ok: bool, key: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"`{key}` {why}, got {value!r}.")


def _section_keys() -> dict[str, tuple[str, tuple[str, ...]]]:
    keys: dict[str, tuple[str, tuple[str, ...]]] = {}
    for section in fields(RunConfig):
        cls = section.type if isinstance(section.type, type) else globals()[str(section.type)]
        for f in fields(cls):
            sub = f.type if isinstance(f.type, type) else globals().get(str(f.type))
            if dataclasses.is_dataclass(sub):
                for g in fields(sub):
                    key = f"{section.name}.{f.name}.{g.name}".replace("_", "-")
                    keys[key] = (section.name, (f.name, g.name))
            else:
                keys[f"{section.name}.{f.name}".replace("_", "-")] = (section.name, (f.name,))
    return keys


_KEYS = _section_keys()


def load_defaults(pyproject: Path = PYPROJECT) -> dict[str, ConfigValue]:
    """Read `[tool.flwr.app.config]` from pyproject.toml: the single source of defaults."""
    with open(pyproject, "rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def parse_value(key: str, text: str) -> ConfigValue:
    """Parse a command-line override value (TOML syntax; bare words are strings)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]  # type: ignore[no-any-return]
    except tomllib.TOMLDecodeError:
        if text.lower() in ("inf", "+inf"):
            return math.inf
        return text


def parse_overrides(pairs: str | list[str]) -> dict[str, ConfigValue]:
    """Parse ``"a.b=1 c=x"`` or ``["a.b=1", "c=x"]`` into a mapping."""
    items = pairs.split() if isinstance(pairs, str) else pairs
    out: dict[str, ConfigValue] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_value(key, text.strip())
    return out


def parse_config(
    run_config: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> RunConfig:
    """Validate a flat run-config (merged over the pyproject defaults) into a `RunConfig`.

    Unknown keys, missing keys and wrong types raise `ConfigError` naming the key.
    """
    base = dict(load_defaults() if defaults is None else defaults)
    unknown = sorted(set(run_config) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(_KEYS)}")
    merged = {**base, **run_config}
    missing = sorted(set(_KEYS) - set(merged))
    if missing:
        raise ConfigError(f"missing config key(s) {missing}")
    values: dict[str, dict[str, Any]] = {}
    for key, (section, attr) in _KEYS.items():
        proto = base.get(key, merged[key])
        value = _coerce(key, merged[key], proto)
        node = values.setdefault(section, {})
        for part in attr[:-1]:
            node = node.setdefault(part, {})
        node[attr[-1]] = value
    cfg = RunConfig(
        data=DataConfig(**values["data"]),
        model=ModelConfig(**{**values["model"], "lora": LoraConfig(**values["model"]["lora"])}),
        train=TrainConfig(**values["train"]),
        dp=DPConfig(**values["dp"]),
        fed=FedConfig(**values["fed"]),
        audit=AuditConfig(**values["audit"]),
    )
    check_strategy_privacy(cfg.dp.mode, cfg.fed.strategy)
    check_dp_model(cfg)
    return cfg


def check_dp_model(cfg: RunConfig) -> None:
    """Refuse model/loss combinations whose per-user DP-SGD gradients would not fit in memory.

    Opacus materialises an ID embedding's per-sample gradient densely ([samples, items, dim]);
    with every position of a user as its own example that is one copy per example.
    """
    if cfg.dp.local and cfg.model.id_dim > 0 and cfg.train.positions == "all":
        raise ConfigError(
            "`model.id-dim` > 0 with dp.mode = 'local' needs `train.positions` = 'random': "
            "Opacus would materialise a [examples, items, id-dim] per-sample gradient"
        )


def check_strategy_privacy(mode: str, strategy: str) -> None:
    """Refuse aggregators whose release the privacy accounting does not describe.

    Central DP accounts the mean of clipped updates; QFedAvg also needs every site's raw
    training loss, which no DP site releases.
    """
    if mode == "central" and strategy not in MEAN_STRATEGIES:
        raise ConfigError(
            f"`fed.strategy` = {strategy!r} cannot be used with dp.mode = 'central': its "
            f"aggregate is not the mean of clipped updates that central DP accounts for "
            f"(use one of {MEAN_STRATEGIES})."
        )
    if mode == "local" and strategy == "qfedavg":
        raise ConfigError(
            "`fed.strategy` = 'qfedavg' cannot be used with dp.mode = 'local': it weighs "
            "updates by each site's raw training loss, which a DP site does not release."
        )


def _coerce(key: str, value: Any, proto: Any) -> ConfigValue:
    """Coerce `value` to the type of the default `proto`, or raise naming the key."""
    if isinstance(proto, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(proto, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(proto, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.lower() in ("inf", "+inf"):
            return math.inf
    elif isinstance(proto, str) and isinstance(value, str):
        return value
    raise ConfigError(
        f"`{key}` must be of type {type(proto).__name__}, got {value!r} ({type(value).__name__})."
    )
