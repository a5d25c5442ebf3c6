"""The server's central-DP ledger: every released round of every run, composed (`CentralLedger`).

The server's budget spans runs: `CentralLedger` keeps every released round of every run in a
JSON file (written atomically under a file lock, like a site's `common.privacy.ledger.Ledger`), and
composes them all with `common.privacy.central.composed_epsilon`. Each event is accounted with
its own sampling ratio ``q = m / n``, so runs over different numbers of clients compose correctly.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from common.privacy.accounting import PrivacyError
from common.privacy.central import (
    RELATION,
    SAMPLING,
    CentralEvent,
    Release,
    composed_epsilon,
    is_int,
    is_real,
)


@dataclass(frozen=True)
class CentralEntry:
    """One released central round: its run, round and accountant event."""

    run: str
    round: int
    multiplier: float  # relative to the replace-one sensitivity, as in `Release`
    sampled: int  # m, the clients sampled
    n_clients: int  # n, the population sampled from

    @property
    def key(self) -> tuple[str, int]:
        """(run, round): a round is released at most once per run."""
        return (self.run, self.round)

    @property
    def event(self) -> CentralEvent:
        """The accountant event."""
        return (self.multiplier, self.sampled, self.n_clients)

    def to_json(self) -> dict[str, str | int | float]:
        """Serialisable form."""
        return {
            "run": self.run,
            "round": self.round,
            "multiplier": self.multiplier,
            "sampled": self.sampled,
            "n_clients": self.n_clients,
        }

    @classmethod
    def checked(
        cls, run: object, server_round: object, mult: object, m: object, n: object
    ) -> CentralEntry:
        """An entry from untrusted values; `ValueError` unless every field is well-formed."""
        if not isinstance(run, str) or not is_int(server_round):
            raise ValueError(f"invalid run key {run!r} or round {server_round!r}")
        if not (is_real(mult) and math.isfinite(float(mult)) and float(mult) >= 0):
            raise ValueError(f"invalid noise multiplier {mult!r}")
        if not (is_int(m) and is_int(n) and 1 <= int(m) <= int(n)):
            raise ValueError(f"invalid sample size {m!r} of population {n!r}")
        return cls(run, int(server_round), float(mult), int(m), int(n))


@dataclass
class CentralLedger:
    """The server's central-DP ledger: every released round of every run, composed.

    Written atomically (temp file + fsync + rename, under a file lock) on every new entry, so
    that it survives restarts and concurrent servers; a corrupt file raises `PrivacyError`
    instead of silently resetting the budget. Entries are keyed by (run, round): recording a
    key again with the same event is a no-op (a resumed run does not double count), with a
    different event a `PrivacyError`.
    """

    entries: list[CentralEntry] = field(default_factory=list)
    path: Path | None = None

    @classmethod
    def open(cls, path: Path | None) -> CentralLedger:
        """Load the ledger at `path` (or start one; None = in memory); refuse a corrupt file."""
        if path is None or not path.exists():
            return cls([], path)
        with FileLock(str(path) + ".lock"):
            entries = _read_entries(path)
        return cls(entries, path)

    def has_round(self, run: str, server_round: int) -> bool:
        """Whether `server_round` of `run` is already recorded."""
        return any(e.key == (run, server_round) for e in self.entries)

    def record(self, run: str, server_round: int, release: Release, *, n_clients: int) -> bool:
        """Record one released round; True if new, False if this very entry was already there.

        Read-check-append-write happens under the file lock against the file as it is on disk
        now, so concurrent writers never lose an entry.
        """
        mult, m = release
        try:
            entry = CentralEntry.checked(run, server_round, mult, m, n_clients)
        except ValueError as exc:
            raise PrivacyError(f"cannot record round {server_round} of run {run!r}: {exc}") from exc
        if self.path is None:
            return self._append(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            if self.path.exists():
                self.entries = _read_entries(self.path)
            new = self._append(entry)
            if new:
                self._write()
        return new

    def _append(self, entry: CentralEntry) -> bool:
        for old in self.entries:
            if old.key == entry.key:
                if old == entry:
                    return False
                raise PrivacyError(
                    f"round {entry.round} of run {entry.run!r} is already in the central ledger "
                    f"{self.path or '(in memory)'} as {old.event} (multiplier, m, n); refusing "
                    f"to record it again as {entry.event}"
                )
        self.entries.append(entry)
        return True

    def epsilon(self, *, delta: float) -> float:
        """Epsilon (replace-one, at `delta`) of all entries of all runs composed."""
        return composed_epsilon([e.event for e in self.entries], delta=delta)

    def run_epsilon(self, run: str, *, delta: float) -> float:
        """Epsilon (replace-one, at `delta`) of the entries of one run alone."""
        return composed_epsilon([e.event for e in self.entries if e.run == run], delta=delta)

    def to_json(self) -> dict[str, object]:
        """Serialisable form."""
        return {
            "relation": RELATION,
            "sampling": SAMPLING,
            "unit": "client",
            "entries": [e.to_json() for e in self.entries],
        }

    def _write(self) -> None:
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".central-ledger-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_json(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def _read_entries(path: Path) -> list[CentralEntry]:
    """Parse and validate a central ledger file (caller holds the lock); refuse corrupt ones."""
    try:
        with open(path) as fh:
            raw: Any = json.load(fh)
        if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
            raise ValueError("no list of entries")
        if raw.get("relation") != RELATION:
            raise ValueError(f"accounted as {raw.get('relation')!r}, not {RELATION!r}")
        entries = []
        for r in raw["entries"]:
            if not isinstance(r, dict):
                raise ValueError(f"invalid entry {r!r}")
            entries.append(
                CentralEntry.checked(
                    r["run"], r["round"], r["multiplier"], r["sampled"], r["n_clients"]
                )
            )
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise ValueError("a (run, round) appears twice")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrivacyError(
            f"central privacy ledger {path} is unreadable or corrupt ({exc}); refusing to "
            "continue rather than reset the budget. Restore it from a backup or delete it "
            "knowingly."
        ) from exc
    return entries
