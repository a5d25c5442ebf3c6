"""A site's persistent, file-locked privacy ledger and where it lives."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from common.config.run import RunConfig
from common.privacy.accounting import Event, PrivacyError, epsilon_of


def site_ledger_dir(cfg: RunConfig) -> Path:
    """Folder of the simulated sites' ledgers: `dp.ledger-dir`, else ``<fed.out-dir>/ledgers``."""
    return Path(cfg.dp.ledger_dir or os.path.join(cfg.fed.out_dir, "ledgers"))


@dataclass
class Ledger:
    """A client's privacy ledger: every DP event it ran, and the budget it must not exceed.

    Written atomically (temp file + rename, under a file lock) after every change, so that it
    survives restarts and concurrent writers; a corrupt file stops the client instead of
    silently resetting its budget.
    """

    budget_epsilon: float
    delta: float
    accountant: str = "prv"
    rounds: list[dict[str, float | int | str]] = field(default_factory=list)
    path: Path | None = None
    data_key: str = ""  # fingerprint of the data this ledger accounts for (one per data set)

    @property
    def events(self) -> list[Event]:
        """All accountant events so far."""
        return [(float(r["sigma"]), float(r["q"]), int(r["steps"])) for r in self.rounds]

    def epsilon(self, extra: Sequence[Event] = (), *, accountant: str | None = None) -> float:
        """Cumulative epsilon, optionally including `extra` planned events."""
        return epsilon_of(
            [*self.events, *extra], delta=self.delta, accountant=accountant or self.accountant
        )

    def run_epsilon(self, run: str, extra: Sequence[Event] = ()) -> float:
        """Epsilon of the events of one run (``run`` = its key), optionally with `extra`."""
        mine = [
            (float(r["sigma"]), float(r["q"]), int(r["steps"]))
            for r in self.rounds
            if r.get("run", "") == run
        ]
        return epsilon_of([*mine, *extra], delta=self.delta, accountant=self.accountant)

    def would_exceed(self, extra: Sequence[Event]) -> bool:
        """Whether running `extra` would take epsilon above the budget."""
        return self.epsilon(extra) > self.budget_epsilon * (1 + 1e-6)

    def record(
        self, server_round: int, kind: str, events: Sequence[Event], *, run: str = ""
    ) -> float:
        """Append one round's events, persist, and return the new cumulative epsilon.

        `run` names the federated training the round belongs to (the server's run key): a
        site's ledger spans every run it took part in, and round numbers restart per run.

        Read-check-append-write happens under the file lock against the ledger as it is on
        disk now, so concurrent writers never lose an entry and never jointly overspend:
        a round that would exceed the budget given the fresh state raises `PrivacyError`.
        """
        if self.path is None:
            return self._append(server_round, kind, events, run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            if self.path.exists():
                self.rounds = _read_rounds(self.path, self.budget_epsilon, self.delta)
            if self.would_exceed(events):
                raise PrivacyError(
                    f"round {server_round} would take ledger {self.path} over its budget "
                    f"epsilon {self.budget_epsilon} (spent {self.epsilon():.4g})"
                )
            eps = self._append(server_round, kind, events, run)
            self._write()
        return eps

    def _append(self, server_round: int, kind: str, events: Sequence[Event], run: str) -> float:
        if self.has_round(server_round, kind, run=run):
            raise PrivacyError(
                f"round {server_round} ({kind}) of run {run or '-'} is already in the ledger "
                f"{self.path}"
            )
        for sigma, q, steps in events:
            entry: dict[str, float | int | str] = {
                "round": server_round, "kind": kind, "sigma": sigma, "q": q, "steps": steps
            }  # fmt: skip
            if run:
                entry["run"] = run
            self.rounds.append(entry)
        eps = self.epsilon()
        if self.rounds:
            self.rounds[-1]["epsilon"] = eps
        return eps

    def has_round(self, server_round: int, kind: str, *, run: str = "") -> bool:
        """Whether `server_round` of `run` was already spent (a retry must not spend twice)."""
        return any(
            r["round"] == server_round and r["kind"] == kind and r.get("run", "") == run
            for r in self.rounds
        )

    def to_json(self) -> dict[str, object]:
        """Serialisable form."""
        return {
            "budget_epsilon": self.budget_epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "rounds": self.rounds,
            "unit": "user",
            "epsilon": self.epsilon(),
            **({"data_key": self.data_key} if self.data_key else {}),
        }

    def save(self) -> None:
        """Write atomically under the file lock (no-op for an in-memory ledger)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            self._write()

    def _write(self) -> None:
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_json(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def open(
        cls, path: Path | None, *, budget_epsilon: float, delta: float, accountant: str = "prv"
    ) -> Ledger:
        """Load the ledger at `path` (or start one); refuse a corrupt or mismatching file."""
        if path is None or not path.exists():
            return cls(budget_epsilon, delta, accountant, [], path)
        with FileLock(str(path) + ".lock"):
            rounds = _read_rounds(path, budget_epsilon, delta)
        return cls(budget_epsilon, delta, accountant, rounds, path)


def _read_rounds(path: Path, budget_epsilon: float, delta: float) -> list[dict[str, Any]]:
    """Parse and validate a ledger file (caller holds the lock); refuse corrupt/mismatching."""
    try:
        with open(path) as fh:
            raw = json.load(fh)
        rounds = list(raw["rounds"])
        stored = (float(raw["budget_epsilon"]), float(raw["delta"]))
        for r in rounds:
            sigma, q, steps = float(r["sigma"]), float(r["q"]), int(r["steps"])
            int(r["round"]), str(r["kind"])
            if not (math.isfinite(sigma) and sigma >= 0 and 0 < q <= 1 and steps >= 0):
                raise ValueError(f"invalid round entry {r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrivacyError(
            f"privacy ledger {path} is unreadable or corrupt ({exc}); refusing to train "
            "rather than reset the budget. Restore it from a backup or delete it knowingly."
        ) from exc
    if not math.isclose(stored[1], delta) or (
        math.isfinite(stored[0]) and budget_epsilon > stored[0] * (1 + 1e-9)
    ):
        raise PrivacyError(
            f"privacy ledger {path} was written for epsilon {stored[0]}, delta {stored[1]}; "
            f"this run asks for epsilon {budget_epsilon}, delta {delta}"
        )
    return rounds
