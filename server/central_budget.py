"""Central DP across runs: every released round in the server's ledger, the cap checked first."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from common.config.run import RunConfig
from common.privacy.accounting import PrivacyError
from common.privacy.central import CentralEvent, composed_epsilon, round_release
from common.privacy.central_ledger import CentralLedger

CENTRAL_LEDGER_NAME = "central-ledger.json"  # in fed.out-dir unless dp.central-ledger names one


def central_ledger_path(cfg: RunConfig, out: Path) -> Path:
    """Where the server keeps its central-DP ledger (``dp.central-ledger``, else in `out`)."""
    return Path(cfg.dp.central_ledger) if cfg.dp.central_ledger else out / CENTRAL_LEDGER_NAME


@dataclass
class CentralBudget:
    """The server's view of one central-DP run against its ledger of every earlier run.

    Each round is recorded *before* the noised model leaves the server, under the run key plus
    a session drawn when this server process starts: a round re-done after a crash is a new
    noise draw, so it is counted again (never merged with the first attempt).
    """

    ledger: CentralLedger
    run_key: str
    n_clients: int
    delta: float
    cap: float
    session: str = ""

    @classmethod
    def open(
        cls, cfg: RunConfig, out: Path, *, run_key: str, n_clients: int, delta: float
    ) -> CentralBudget:
        """The ledger at `central_ledger_path` (refusing a corrupt one), for this run."""
        ledger = CentralLedger.open(central_ledger_path(cfg, out))
        return cls(
            ledger, run_key, n_clients, delta, cfg.dp.central_max_epsilon, secrets.token_hex(4)
        )

    def _events(self, *, this_run: bool | None = None) -> list[CentralEvent]:
        mine = f"{self.run_key}/"
        return [
            e.event
            for e in self.ledger.entries
            if this_run is None or e.run.startswith(mine) == this_run
        ]

    def check_plan(self, sigma: float, *, per_round: int, rounds: int) -> None:
        """Refuse to start when `rounds` more full rounds would pass ``dp.central-max-epsilon``."""
        full = round_release(sigma, sampled=per_round, aggregated=per_round)
        assert full is not None
        planned = [(full[0], full[1], self.n_clients)] * rounds
        total = composed_epsilon([*self._events(), *planned], delta=self.delta)
        if total > self.cap * (1 + 1e-9):
            spent = composed_epsilon(self._events(), delta=self.delta)
            raise PrivacyError(
                f"central DP ledger {self.ledger.path}: {rounds} more round(s) of this run "
                f"would bring epsilon to {total:.4g} > dp.central-max-epsilon {self.cap:g} "
                f"(already spent: {spent:.4g} at delta {self.delta:g} over "
                f"{len(self.ledger.entries)} released round(s)). Lower dp.epsilon or fed.rounds, "
                "raise dp.central-max-epsilon knowingly, or use another dp.central-ledger."
            )

    def record(self, server_round: int, release: tuple[float, int]) -> None:
        """Record one released round (before the model it describes leaves the server)."""
        self.ledger.record(
            f"{self.run_key}/{self.session}", server_round, release, n_clients=self.n_clients
        )

    def run_epsilon(self) -> float:
        """Epsilon of this run's released rounds (every session of its run key)."""
        return composed_epsilon(self._events(this_run=True), delta=self.delta)

    def total_epsilon(self) -> float:
        """Epsilon of every round in the ledger, all runs composed, at this run's delta."""
        return composed_epsilon(self._events(), delta=self.delta)
