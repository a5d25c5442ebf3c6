"""Strategy registry, the central-DP wrapper and its noise calibration."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Krum,
    QFedAvg,
    Strategy,
)
from flwr.supercore.task_identity import TaskIdentity

from common import records as R
from common.config.dp import MEAN_STRATEGIES
from common.config.run import RunConfig
from common.privacy.accounting import default_delta
from common.privacy.central import central_epsilon, round_release
from common.privacy.central_ledger import CentralLedger
from server.central_budget import CentralBudget
from server.federation import central_sigma
from server.strategies import STRATEGIES, clients_per_round, create_strategy, round_strategy
from server.wrappers import CentralRelease, CheckedReplies

from .messages import reply_from

EXPECTED = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "qfedavg": QFedAvg,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


def _with(cfg: RunConfig, **changes: Any) -> RunConfig:
    """`cfg` with dotted-group changes, e.g. ``fed__strategy="krum"``."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        group, name = key.split("__")
        groups.setdefault(group, {})[name] = value
    return dataclasses.replace(
        cfg, **{g: dataclasses.replace(getattr(cfg, g), **v) for g, v in groups.items()}
    )


class FakeGrid:
    """The part of Flower's Grid a strategy's `configure_*` uses: the connected node ids."""

    def __init__(self, n: int) -> None:
        self.nodes = list(range(101, 101 + n))

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The task identity Flower's ServerApp runtime sets before strategies build Messages."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    yield


def test_the_registry_covers_the_expected_strategies() -> None:
    assert set(STRATEGIES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_builds_with_the_project_record_keys(
    cfg: RunConfig, name: str
) -> None:
    # Without DP (the only mode every strategy is accounted for), FedAvg weighs by users.
    strategy = create_strategy(_with(cfg, dp__mode="none", fed__strategy=name), 4)
    assert type(strategy) is EXPECTED[name]
    assert isinstance(strategy, Strategy)
    assert strategy.weighted_by_key == R.NUM_EXAMPLES
    assert strategy.arrayrecord_key == R.ARRAYS
    assert strategy.configrecord_key == R.CONFIG
    assert strategy.fraction_train == cfg.fed.fraction_train


def test_strategy_specific_knobs_come_from_the_config(cfg: RunConfig) -> None:
    cfg = _with(cfg, dp__mode="none")
    prox = create_strategy(_with(cfg, fed__strategy="fedprox", fed__proximal_mu=0.3), 4)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.3
    trim = create_strategy(_with(cfg, fed__strategy="fedtrimmedavg", fed__trim_beta=0.1), 4)
    assert isinstance(trim, FedTrimmedAvg) and trim.beta == 0.1
    qffl = create_strategy(_with(cfg, fed__strategy="qfedavg", fed__qffl_q=0.7), 4)
    assert isinstance(qffl, QFedAvg) and qffl.q == 0.7
    assert qffl.train_loss_key == R.TRAIN_LOSS


def test_an_unknown_strategy_is_a_value_error_listing_the_names(cfg: RunConfig) -> None:
    with pytest.raises(ValueError, match="fed.strategy") as info:
        create_strategy(_with(cfg, fed__strategy="fedsgd"), 4)
    assert "'fedsgd'" in str(info.value)
    for name in STRATEGIES:
        assert name in str(info.value)


@pytest.mark.parametrize("mode", ["local", "central"])
def test_updates_weigh_equally_under_dp(cfg: RunConfig, mode: str) -> None:
    # a local-DP site does not release its exact user count; central DP needs a plain mean
    strategy = create_strategy(_with(cfg, dp__mode=mode), 4, central_sigma=1.0)
    inner = getattr(strategy, "strategy", strategy)
    assert inner.weighted_by_key == R.UNIT_WEIGHT


@pytest.mark.parametrize(
    ("mode", "name"),
    [("central", "krum"), ("central", "fedtrimmedavg"), ("central", "qfedavg"),
     ("local", "qfedavg")],
)  # fmt: skip
def test_aggregators_the_accounting_does_not_describe_are_refused(
    cfg: RunConfig, mode: str, name: str
) -> None:
    with pytest.raises(ValueError, match="fed.strategy"):
        create_strategy(_with(cfg, dp__mode=mode, fed__strategy=name), 4, central_sigma=1.0)


@pytest.mark.parametrize("name", sorted(MEAN_STRATEGIES))
def test_central_dp_wraps_the_named_strategy(cfg: RunConfig, name: str) -> None:
    c = _with(cfg, dp__mode="central", fed__strategy=name, fed__central_clip=0.7)
    strategy = create_strategy(c, 4, central_sigma=1.3)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert type(strategy.strategy) is EXPECTED[name]
    assert strategy.noise_multiplier == 1.3
    assert strategy.clipping_norm == 0.7
    assert strategy.num_sampled_clients == clients_per_round(c, 4)


@pytest.mark.parametrize("mode", ["none", "local"])
def test_no_wrapper_without_central_dp(cfg: RunConfig, mode: str) -> None:
    strategy = create_strategy(_with(cfg, dp__mode=mode), 4, central_sigma=1.0)
    assert not isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert central_sigma(_with(cfg, dp__mode=mode), 4)[0] == 0.0


@pytest.mark.parametrize(
    ("n_clients", "fraction", "rounds", "epsilon", "accountant"),
    [(4, 1.0, 3, 8.0, "prv"), (10, 0.5, 5, 2.0, "prv"), (20, 0.25, 10, 4.0, "rdp")],
)
def test_central_sigma_meets_the_budget(
    cfg: RunConfig, n_clients: int, fraction: float, rounds: int, epsilon: float, accountant: str
) -> None:
    c = _with(
        cfg,
        dp__mode="central",
        dp__epsilon=epsilon,
        dp__accountant=accountant,
        fed__fraction_train=fraction,
        fed__rounds=rounds,
        fed__min_clients=1,
    )
    sigma, q, delta = central_sigma(c, n_clients)
    assert sigma > 0
    assert q == pytest.approx(clients_per_round(c, n_clients) / n_clients)
    # dp.delta = 0: min(1e-5, 1/(10 clients)), rounded down to a power of ten
    assert delta == pytest.approx(default_delta(n_clients, 1e-5))
    assert delta <= min(1e-5, 1 / (10 * n_clients))
    m = clients_per_round(c, n_clients)
    release = round_release(sigma, sampled=m, aggregated=m)
    # accounted for Flower's fixed-size sampler (replace-one), whatever `dp.accountant` says
    spent = central_epsilon([release] * rounds, n_clients=n_clients, delta=delta)  # type: ignore[list-item]
    assert spent <= epsilon
    assert spent >= epsilon - 0.1  # calibrated, not wildly over-noised


def test_a_fixed_central_noise_overrides_the_calibration(cfg: RunConfig) -> None:
    c = _with(cfg, dp__mode="central", fed__central_noise=2.5, dp__delta=1e-6)
    assert central_sigma(c, 4) == (2.5, 1.0, 1e-6)


# (connected clients, fed.fraction-train, fed.min-clients)
SAMPLING = [
    (4, 1.0, 2),
    (3, 0.5, 2),
    (10, 0.25, 2),
    (7, 0.5, 1),
    (4, 0.5, 3),
]


@pytest.mark.parametrize(("n_clients", "fraction", "min_clients"), SAMPLING)
def test_clients_per_round_is_what_the_strategy_samples(
    cfg: RunConfig, server_identity: None, n_clients: int, fraction: float, min_clients: int
) -> None:
    c = _with(cfg, dp__mode="central", fed__fraction_train=fraction, fed__min_clients=min_clients)
    strategy = create_strategy(c, n_clients, central_sigma=1.0)
    msgs = list(
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid(n_clients))  # type: ignore[arg-type]
    )
    assert len(msgs) == clients_per_round(c, n_clients)
    assert len({m.metadata.dst_node_id for m in msgs}) == len(msgs)


def test_one_client_moves_the_central_dp_aggregate_at_most_clip_over_n(
    cfg: RunConfig, server_identity: None
) -> None:
    clip = 0.5
    c = _with(cfg, dp__mode="central", fed__central_clip=clip, fed__min_clients=2)
    strategy = create_strategy(c, 2, central_sigma=0.0)  # no noise: look at the sensitivity
    current = {"w": np.zeros(4, np.float32)}
    list(strategy.configure_train(1, R.to_record(current), ConfigRecord(), FakeGrid(2)))  # type: ignore[arg-type]
    big = {"w": np.full(4, 10.0, np.float32)}  # clipped to norm `clip` by the wrapper
    small = {"w": np.array([1e-3, 0, 0, 0], np.float32)}  # (a zero update crashes Flower's clip)
    replies = [
        reply_from(101, {R.NUM_EXAMPLES: 1, R.UNIT_WEIGHT: 1}, small),
        reply_from(102, {R.NUM_EXAMPLES: 99, R.UNIT_WEIGHT: 1}, big),
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None
    moved = float(np.linalg.norm(R.from_record(new)["w"] - current["w"]))
    # each client moves the unweighted mean by at most clip / 2 (here: clip + |small|, over 2)
    assert moved <= (clip + 1e-3) / 2 * (1 + 1e-6)


def test_a_dropped_update_counts_as_no_change_under_central_dp(
    cfg: RunConfig, server_identity: None, tmp_path: Any
) -> None:
    # Two clients sampled, one reply usable: the released aggregate is current + update / 2
    # (the mean over the *sampled*), so one client moves it by at most clip / m whether its
    # update is used or dropped; a mean over the k usable would move it by the full clip.
    clip = 0.5
    c = _with(cfg, dp__mode="central", fed__central_clip=clip, fed__min_clients=1)
    budget = CentralBudget(CentralLedger([], None), "run", 2, 1e-5, math.inf)
    strategy = round_strategy(c, 2, central_sigma=0.0, budget=budget)
    current = {"w": np.zeros(4, np.float32)}
    sent = list(strategy.configure_train(1, R.to_record(current), ConfigRecord(), FakeGrid(2)))  # type: ignore[arg-type]
    assert len(sent) == 2
    big = {"w": np.full(4, 10.0, np.float32)}
    new, _ = strategy.aggregate_train(1, [reply_from(101, {R.UNIT_WEIGHT: 1}, big)])
    assert new is not None
    moved = float(np.linalg.norm(R.from_record(new)["w"] - current["w"]))
    assert moved == pytest.approx(clip / 2, rel=1e-5)
    assert strategy.last.rows[-1]["dropped"].startswith("no reply")
    assert budget.ledger.entries[0].sampled == 2  # recorded: multiplier 0 (no noise), m = 2


def test_round_strategy_composes_checks_around_the_central_release(cfg: RunConfig) -> None:
    c = _with(cfg, dp__mode="central")
    budget = CentralBudget(CentralLedger([], None), "run", 4, 1e-5, math.inf)
    strategy = round_strategy(c, 4, central_sigma=1.0, budget=budget)
    assert isinstance(strategy, CheckedReplies) and isinstance(strategy.strategy, CentralRelease)
    assert isinstance(strategy.strategy.strategy, DifferentialPrivacyServerSideFixedClipping)
    plain = round_strategy(_with(cfg, dp__mode="local"), 4, central_sigma=0.0, budget=None)
    assert isinstance(plain, CheckedReplies) and type(plain.strategy) is FedAvg
    with pytest.raises(ValueError, match="CentralBudget"):
        round_strategy(c, 4, central_sigma=1.0, budget=None)


@pytest.mark.parametrize("usable", [2, 4])
def test_the_central_release_has_noise_sigma_clip_over_the_sampled_whatever_is_kept(
    cfg: RunConfig, server_identity: None, usable: int
) -> None:
    # Flower adds sigma * C / m to the mean over the k usable updates; rescaled to the mean
    # over the m sampled that is k/m as much, so `CentralRelease` tops it up (independent
    # noise, variances add) to sigma * C / m: 2 * 0.5 / 4 = 0.25 here, for k = 2 as for k = 4.
    sigma, clip, m = 2.0, 0.5, 4
    c = _with(cfg, dp__mode="central", fed__central_clip=clip, fed__min_clients=1)
    budget = CentralBudget(CentralLedger([], None), "run", m, 1e-5, math.inf)
    strategy = round_strategy(c, m, central_sigma=sigma, budget=budget)
    current = {"w": np.zeros(200_000, np.float32)}
    sent = list(strategy.configure_train(1, R.to_record(current), ConfigRecord(), FakeGrid(m)))  # type: ignore[arg-type]
    assert len(sent) == m
    tiny = {"w": np.full(200_000, 1e-9, np.float32)}  # the signal is negligible beside the noise
    np.random.seed(0)
    replies = [reply_from(101 + i, {R.UNIT_WEIGHT: 1}, tiny) for i in range(usable)]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None
    noise = R.from_record(new)["w"].astype(np.float64) - current["w"]
    assert np.std(noise) == pytest.approx(sigma * clip / m, rel=0.01)
    assert budget.ledger.entries[0].sampled == m
