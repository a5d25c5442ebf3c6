"""The `model.*` and `train.*` sections: towers, LoRA, training."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.config.base import check

# train.loss: sampled softmax over per-user negatives; full softmax over the catalogue with the
# targets scored live through LoRA ("full") or all items from the per-epoch cache ("full-cached").
LOSSES = ("sampled", "full", "full-cached")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter shape on the top layers of the backbone."""

    rank: int
    alpha: float
    targets: str
    layers: int
    ffa: bool

    def __post_init__(self) -> None:
        check(self.rank >= 1, "model.lora.rank", self.rank, "must be >= 1")
        check(self.alpha > 0, "model.lora.alpha", self.alpha, "must be > 0")
        check(self.layers >= 1, "model.lora.layers", self.layers, "must be >= 1")
        check(
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
    # DP co-occurrence release (0 = off); defaults let adapters written before it load.
    cooc_items: int = 0
    cooc_lambda: float = 100.0
    cooc_weight: float = 1.0
    cooc_decay: float = 0.0  # 0: the user tower's window (before the key existed)
    # Items the catalogue marks as new (`common.model.new_items`); defaults let older adapters load.
    new_items: bool = True
    new_item_prior: float = 1.4
    new_item_text_weight: float = 1.0
    new_item_rank: int = 0  # 0: the older popularity-credit form (new_item_prior)

    def __post_init__(self) -> None:
        check(
            4 <= self.max_tokens <= 512, "model.max-tokens", self.max_tokens, "must be in [4, 512]"
        )
        check(self.proj_dim >= 0, "model.proj-dim", self.proj_dim, "must be >= 0 (0 = none)")
        check(
            self.proj_hidden >= 0 and (self.proj_hidden == 0 or self.proj_dim > 0),
            "model.proj-hidden",
            self.proj_hidden,
            "must be >= 0 (0 = one linear layer) and needs model.proj-dim > 0",
        )
        check(
            self.id_dim >= 0 and self.id_dim in (0, self.proj_dim or self.id_dim),
            "model.id-dim",
            self.id_dim,
            "must be >= 0 (0 = none) and equal model.proj-dim when that is > 0",
        )
        check(self.temperature > 0, "model.temperature", self.temperature, "must be > 0")
        check(
            0 < self.prior_head_share <= 1,
            "model.prior-head-share",
            self.prior_head_share,
            "must be in (0, 1]",
        )
        check(
            self.cooc_items >= 0 and (self.cooc_items == 0 or self.prior),
            "model.cooc-items",
            self.cooc_items,
            "must be >= 0 (0 = none) and needs model.prior = true (its head items are the "
            "prior's most popular)",
        )
        check(self.cooc_lambda > 0, "model.cooc-lambda", self.cooc_lambda, "must be > 0")
        check(
            math.isfinite(self.cooc_weight), "model.cooc-weight", self.cooc_weight, "must be finite"
        )
        check(
            0.0 <= self.cooc_decay <= 1.0,
            "model.cooc-decay",
            self.cooc_decay,
            "must be in [0, 1] (0 = the last data.history-len items; 1 = the whole history)",
        )
        check(
            math.isfinite(self.new_item_prior),
            "model.new-item-prior",
            self.new_item_prior,
            "must be finite",
        )
        check(
            0 <= self.new_item_text_weight < math.inf,
            "model.new-item-text-weight",
            self.new_item_text_weight,
            "must be finite and >= 0",
        )
        check(
            self.new_item_rank >= 0,
            "model.new-item-rank",
            self.new_item_rank,
            "must be >= 0 (0 = credit new items model.new-item-prior instead)",
        )


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
    lr_schedule: str

    def __post_init__(self) -> None:
        check(0 < self.lr < math.inf, "train.lr", self.lr, "must be finite and > 0")
        check(
            self.lr_schedule in LR_SCHEDULES,
            "train.lr-schedule",
            self.lr_schedule,
            f"must be one of {', '.join(repr(x) for x in LR_SCHEDULES)}",
        )
        check(0 < self.epochs < math.inf, "train.epochs", self.epochs, "must be finite and > 0")
        check(self.batch_users >= 1, "train.batch-users", self.batch_users, "must be >= 1")
        check(
            self.targets_per_user >= 1,
            "train.targets-per-user",
            self.targets_per_user,
            "must be >= 1",
        )
        check(self.negatives >= 1, "train.negatives", self.negatives, "must be >= 1")
        check(
            0 <= self.negatives_pop_share <= 1,
            "train.negatives-pop-share",
            self.negatives_pop_share,
            "must be in [0, 1]",
        )
        check(
            self.loss in LOSSES,
            "train.loss",
            self.loss,
            f"must be one of {', '.join(repr(x) for x in LOSSES)}",
        )
        check(
            self.positions in ("random", "all"),
            "train.positions",
            self.positions,
            "must be 'random' (one random cut per user per step) or 'all'",
        )
        check(self.eval_users >= 0, "train.eval-users", self.eval_users, "must be >= 0 (0 = all)")
