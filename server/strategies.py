"""Strategy registry over Flower's own strategies, and the composition a round runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Krum,
    QFedAvg,
    Strategy,
)

from common import records as R
from common.config.dp import check_strategy_privacy
from common.config.run import RunConfig
from server.central_budget import CentralBudget
from server.checks import weight_key
from server.wrappers import CentralRelease, CheckedReplies


def _common(cfg: RunConfig, n_clients: int) -> dict[str, Any]:
    weight = weight_key(cfg)
    return {
        "fraction_train": cfg.fed.fraction_train,
        "fraction_evaluate": cfg.fed.fraction_evaluate,
        "min_train_nodes": min(cfg.fed.min_clients, n_clients),
        "min_evaluate_nodes": min(cfg.fed.min_clients, n_clients),
        "min_available_nodes": min(cfg.fed.min_clients, n_clients),
        "weighted_by_key": weight,
        "arrayrecord_key": R.ARRAYS,
        "configrecord_key": R.CONFIG,
    }


STRATEGIES: dict[str, Callable[[RunConfig, int], Strategy]] = {
    "fedavg": lambda c, n: FedAvg(**_common(c, n)),  # type: ignore[arg-type]
    "fedprox": lambda c, n: FedProx(**_common(c, n), proximal_mu=c.fed.proximal_mu),  # type: ignore[arg-type]
    "qfedavg": lambda c, n: QFedAvg(
        client_learning_rate=c.fed.qffl_lr,
        q=c.fed.qffl_q,  # type: ignore[arg-type]
        train_loss_key=R.TRAIN_LOSS,
        **_common(c, n),
    ),
    "fedtrimmedavg": lambda c, n: FedTrimmedAvg(**_common(c, n), beta=c.fed.trim_beta),  # type: ignore[arg-type]
    "krum": lambda c, n: Krum(**_common(c, n), num_malicious_nodes=c.fed.krum_malicious),  # type: ignore[arg-type]
}


def clients_per_round(cfg: RunConfig, n_clients: int) -> int:
    """How many clients Flower's strategies sample per training round.

    Mirrors ``FedAvg.configure_train``: ``max(int(n * fraction_train), min_train_nodes)``.
    """
    return max(int(n_clients * cfg.fed.fraction_train), min(cfg.fed.min_clients, n_clients))


def create_strategy(cfg: RunConfig, n_clients: int, *, central_sigma: float = 0.0) -> Strategy:
    """Flower strategy named by `fed.strategy`, wrapped for central DP when `dp.mode=central`."""
    try:
        factory = STRATEGIES[cfg.fed.strategy]
    except KeyError:
        raise ValueError(
            f"`fed.strategy` must be one of {sorted(STRATEGIES)}, got {cfg.fed.strategy!r}."
        ) from None
    check_strategy_privacy(cfg.dp.mode, cfg.fed.strategy)
    strategy = factory(cfg, n_clients)
    if cfg.dp.mode == "central":
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=central_sigma,
            clipping_norm=cfg.fed.central_clip,
            num_sampled_clients=clients_per_round(cfg, n_clients),
        )
    return strategy


def round_strategy(
    cfg: RunConfig, n_clients: int, *, central_sigma: float, budget: CentralBudget | None
) -> CheckedReplies:
    """What a training round runs: reply checks around (central DP release around) the strategy.

    ``CheckedReplies(CentralRelease(DifferentialPrivacyServerSideFixedClipping(FedAvg)))``
    under central DP, ``CheckedReplies(<fed.strategy>)`` otherwise.
    """
    strategy = create_strategy(cfg, n_clients, central_sigma=central_sigma)
    if cfg.dp.mode == "central":
        if budget is None:
            raise ValueError("central DP needs the server's CentralBudget to record releases")
        strategy = CentralRelease(
            strategy,
            sigma=central_sigma,
            clip=cfg.fed.central_clip,
            planned=clients_per_round(cfg, n_clients),
            budget=budget,
        )
    return CheckedReplies(strategy, cfg)
