"""The `dp.*` section and which aggregators each DP mode allows."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.config.base import ConfigError, check

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
    cooc_share: float = 0.3

    def __post_init__(self) -> None:
        check(
            self.mode in ("none", "local", "central"),
            "dp.mode",
            self.mode,
            "must be one of 'none', 'local', 'central'",
        )
        check(self.epsilon > 0, "dp.epsilon", self.epsilon, "must be > 0 ('inf' = no budget)")
        check(
            0.0 <= self.delta <= MAX_DELTA,
            "dp.delta",
            self.delta,
            f"must be in [0, {MAX_DELTA:g}] (0 = min({MAX_DELTA:g}, 1/(10 x users protected)), "
            "rounded down to a power of ten)",
        )
        check(
            self.noise_multiplier >= 0,
            "dp.noise-multiplier",
            self.noise_multiplier,
            "must be >= 0 (0 = derive from dp.epsilon)",
        )
        check(self.clip > 0, "dp.clip", self.clip, "must be > 0")
        check(
            self.accountant in ("prv", "rdp"),
            "dp.accountant",
            self.accountant,
            "must be 'prv' or 'rdp'",
        )
        check(
            0.0 < self.prior_share < 1.0,
            "dp.prior-share",
            self.prior_share,
            "must be in (0, 1) (0 would release the exact histogram; turn the prior off with "
            "model.prior = false)",
        )
        check(
            0.0 <= self.eval_share < 1.0 and self.prior_share + self.eval_share < 1.0,
            "dp.eval-share",
            self.eval_share,
            "must be in [0, 1) with dp.prior-share + dp.eval-share < 1",
        )
        check(
            0.0 < self.cooc_share < 1.0,
            "dp.cooc-share",
            self.cooc_share,
            "must be in (0, 1) (spent only with model.cooc-items > 0)",
        )
        check(
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
