"""Strategy wrappers, the way Flower's DP wrappers work: reply checks and the central-DP release."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import records as R
from common.config.run import RunConfig
from common.model.towers import PUBLIC_KEYS
from common.privacy.central import Release, add_noise
from server.central_budget import CentralBudget
from server.checks import SortedReplies, sort_replies

log = logging.getLogger("flwr.fedrec")


class Wrapper(Strategy):
    """A strategy around `strategy` that changes nothing (subclasses override a phase or two)."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's training instructions."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's evaluation instructions."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The inner strategy's evaluation aggregate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Flower's summary of the inner strategy."""
        self.strategy.summary()


class CheckedReplies(Wrapper):
    """Only well-formed, bounded, non-declined updates reach the inner strategy.

    `last` holds the round's `SortedReplies` (one history row per sampled node); a round with
    fewer usable replies than min(``fed.min-clients``, sampled) is not aggregated and
    `stop_reason` says why.
    """

    def __init__(self, strategy: Strategy, cfg: RunConfig) -> None:
        super().__init__(strategy)
        self.cfg = cfg
        self.last = SortedReplies([], [], 0)
        self.stop_reason = ""
        self._sent: list[Message] = []
        self._state: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner instructions, remembered with the state they carry (to check replies)."""
        self._state = R.from_record(arrays)
        self._sent = list(self.strategy.configure_train(server_round, arrays, config, grid))
        return self._sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sort the replies; aggregate the usable ones if there are enough."""
        self.last = sort_replies(
            server_round, self._sent, list(replies), self._state, self.cfg, prior_round=False
        )
        good, sampled = self.last.good, self.last.sampled
        if not self.last.enough(self.cfg.fed.min_clients):
            self.stop_reason = (
                f"stopped at round {server_round}: {len(good)} usable replies of {sampled}"
            )
            log.error("[fedrec] %s (fed.min-clients = %d)", self.stop_reason,
                      self.cfg.fed.min_clients)  # fmt: skip
            return None, None
        log.info("[fedrec] round %d: aggregating %d of %d replies", server_round, len(good),
                 sampled)  # fmt: skip
        new, metrics = self.strategy.aggregate_train(server_round, good)
        if new is None:
            self.stop_reason = f"stopped at round {server_round}: aggregation failed"
            return new, metrics
        for key in PUBLIC_KEYS:  # released in round 0: kept exactly, never averaged or noised
            if key in self._state:
                new[key] = Array(self._state[key])
        return new, metrics


class CentralRelease(Wrapper):
    """Central DP: the mean over the clients *sampled*, its noise matched, every release recorded.

    Wraps Flower's `DifferentialPrivacyServerSideFixedClipping`, which clips, takes the mean
    of the k usable updates and adds noise ``sigma * clip / planned``. This wrapper rescales
    the result to ``current + (sum of the k clipped updates) / m`` (m = clients sampled this
    round; a missing update counts as no change), so that one client moves it by at most
    ``2 clip / m`` whether its update was used or dropped -- a data-dependent k in the
    denominator is not covered by the accounting -- and tops the noise up to
    ``sigma * clip / m`` when the rescaled noise is weaker. The release (multiplier relative to
    the replace-one sensitivity, m) is written to the server's ledger before the model leaves
    the server; `release` holds the round's.
    """

    def __init__(
        self, strategy: Strategy, *, sigma: float, clip: float, planned: int, budget: CentralBudget
    ) -> None:
        super().__init__(strategy)
        self.sigma, self.clip, self.planned, self.budget = sigma, clip, planned, budget
        self.release: Release | None = None
        self._current: list[np.ndarray] = []
        self._sampled = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner instructions; remember the current state and how many were sampled."""
        self.release = None
        self._current = arrays.to_numpy_ndarrays()
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sampled = len(msgs)
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, mean, noise (inner); rescale to the sampled; top up; record the release."""
        replies = list(replies)
        new, metrics = self.strategy.aggregate_train(server_round, replies)
        if new is None or not replies:
            return new, metrics
        k, m = len(replies), max(self._sampled, len(replies))
        share = k / m
        arrays = [
            (cur + share * (np.asarray(a, np.float64) - cur)).astype(cur.dtype)
            for a, cur in zip(new.to_numpy_ndarrays(), self._current, strict=True)
        ]
        new = ArrayRecord(dict(zip(new.keys(), map(Array, arrays), strict=True)))
        have = share * self.sigma * self.clip / self.planned  # Flower's noise, rescaled
        need = self.sigma * self.clip / m
        if have < need:
            new = add_noise(new, math.sqrt(need**2 - have**2))
            log.warning(
                "[fedrec] round %d: %d of %d sampled updates aggregated; central DP noise "
                "topped up to sigma * clip / %d (the mean over the sampled clients)",
                server_round,
                k,
                m,
                m,
            )
        std = max(have, need)
        self.release = (std * m / (2.0 * self.clip), m)  # noise / (2 clip / m)
        self.budget.record(server_round, self.release)  # before the model leaves the server
        return new, metrics
