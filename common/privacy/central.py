"""Accounting for central DP-FedAvg as Flower runs it: fixed-size client samples.

Flower's strategies sample exactly ``m`` of the ``n`` connected clients per round, without
replacement, and `DifferentialPrivacyServerSideFixedClipping` clips every update to ``C``,
averages them and adds Gaussian noise of std ``sigma * C / m``. Poisson-sampling accountants
(Opacus') do not describe that sampler, so this module accounts it as what it is:

* neighbouring relation **replace-one** (the sampler fixes ``n``; one client's data replaced),
  for which the L2 sensitivity of the sum of clipped updates is ``2C``: the mechanism's noise
  multiplier relative to that sensitivity is ``sigma / 2``;
* sampling **without replacement**, ``m`` of ``n``: the RDP bound of Wang, Balle and
  Kasiviswanathan (AISTATS 2019, Thm. 27), through Flower's own `RdpAccountant` (which wraps
  Google's dp-accounting);
* a round that aggregated only ``k < m`` updates (failures, dropped replies) is released as
  ``current + (sum of the k clipped updates) / m`` (`server.wrappers.CentralRelease`): the
  denominator is the number *sampled*, not the data-dependent ``k``, so the sensitivity stays
  ``2C / m`` and the noise is topped up (`add_noise`) to ``sigma * C / m`` whenever fewer nodes
  were sampled than Flower's wrapper planned for.

Under replace-one, epsilon is roughly twice the add/remove-one epsilon of the same noise; the
reports say which relation they use.

The server's budget spans runs: `CentralLedger` keeps every released round of every run in a
JSON file (written atomically under a file lock, like a site's `common.privacy.ledger.Ledger`), and
composes them all. Each event is accounted with its own sampling ratio ``q = m / n``, so runs
over different numbers of clients compose correctly.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from dp_accounting import dp_event
from dp_accounting.privacy_accountant import NeighboringRelation as DpRelation
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp
from filelock import FileLock
from flwr.app import Array, ArrayRecord
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace

from common.privacy.accounting import PrivacyError, bisect_sigma

RELATION = "replace-one"
SAMPLING = "fixed-size sample without replacement (Flower's sampler)"

# One central round: (noise multiplier relative to the replace-one sensitivity, sample size).
Release = tuple[float, int]

# One accountant event: (multiplier as in `Release`, sample size m, population size n).
CentralEvent = tuple[float, int, int]


def round_release(sigma: float, *, sampled: int, aggregated: int) -> Release | None:
    """The accountant event of one round; None if nothing was released (no update kept)."""
    if aggregated <= 0:
        return None
    if sampled < 1 or aggregated > sampled:
        raise PrivacyError(f"aggregated {aggregated} updates of {sampled} sampled clients")
    return (sigma * aggregated / (2.0 * sampled), sampled)


def add_noise(record: ArrayRecord, std: float) -> ArrayRecord:
    """A copy of `record` with independent N(0, std^2) on every value (Flower's own draw)."""
    arrays = [np.array(a, copy=True) for a in record.to_numpy_ndarrays()]
    if std > 0:
        add_gaussian_noise_inplace(arrays, std)
    return ArrayRecord({k: Array(v) for k, v in zip(record.keys(), arrays, strict=True)})


def central_epsilon(releases: Sequence[Release], *, n_clients: int, delta: float) -> float:
    """Epsilon (replace-one, at `delta`) after the given rounds; inf if any had no noise."""
    if not releases:
        return 0.0
    if any(mult <= 0 for mult, _ in releases):
        return math.inf
    if any(not 1 <= m <= n_clients for _, m in releases):
        raise PrivacyError(f"a sample size is outside 1..{n_clients}: {list(releases)}")
    return composed_epsilon([(mult, m, n_clients) for mult, m in releases], delta=delta)


def composed_epsilon(events: Sequence[CentralEvent], *, delta: float) -> float:
    """Epsilon (replace-one, at `delta`) of `events` composed, each with its own ``q = m / n``.

    The same RDP accountant as Flower's `RdpAccountant` (dp-accounting's, default orders,
    `SampledWithoutReplacementDpEvent` of a `GaussianDpEvent`), which only takes one
    population size; for one ``n`` the result is bit-identical to composing the events there
    one by one. Each distinct event's RDP curve is computed once and added per occurrence.
    """
    if isinstance(delta, bool) or not (math.isfinite(delta) and 0 < delta < 1):
        raise ValueError(f"`delta` must be in (0, 1), got {delta}.")
    for mult, m, n in events:
        if not (_is_int(m) and _is_int(n) and _is_real(mult) and math.isfinite(mult)):
            raise ValueError(f"invalid central accountant event (mult={mult!r}, m={m!r}, n={n!r})")
        if not 1 <= m <= n:
            raise PrivacyError(f"sample size {m} is outside 1..{n} (population size)")
    if not events:
        return 0.0
    if any(mult <= 0 for mult, _, _ in events):
        return math.inf
    total = np.zeros(len(dp_rdp.DEFAULT_RDP_ORDERS), dtype=np.float64)
    for mult, m, n in events:
        total += _event_rdp(float(mult), int(m), int(n))
    return float(dp_rdp.compute_epsilon(dp_rdp.DEFAULT_RDP_ORDERS, total, delta)[0])


@functools.lru_cache(maxsize=4096)
def _event_rdp(mult: float, m: int, n: int) -> np.ndarray:
    """RDP curve (at dp-accounting's default orders) of one event; read-only, cached."""
    acc = dp_rdp.RdpAccountant(neighboring_relation=DpRelation.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(n, m, dp_event.GaussianDpEvent(mult)))
    rdp = acc.rdp
    rdp.setflags(write=False)
    return rdp


def _is_int(x: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_real(x: object) -> TypeGuard[float | int | np.floating[Any] | np.integer[Any]]:
    return isinstance(x, float | int | np.floating | np.integer) and not isinstance(x, bool)


def calibrate_central(
    *, target_epsilon: float, n_clients: int, per_round: int, rounds: int, delta: float
) -> float:
    """Smallest Flower noise multiplier whose `rounds` full rounds stay <= `target_epsilon`."""
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"`target_epsilon` must be finite and > 0, got {target_epsilon}.")

    def eps(sigma: float) -> float:
        release = round_release(sigma, sampled=per_round, aggregated=per_round)
        assert release is not None
        return central_epsilon([release] * rounds, n_clients=n_clients, delta=delta)

    return bisect_sigma(eps, target_epsilon)


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
        if not isinstance(run, str) or not _is_int(server_round):
            raise ValueError(f"invalid run key {run!r} or round {server_round!r}")
        if not (_is_real(mult) and math.isfinite(float(mult)) and float(mult) >= 0):
            raise ValueError(f"invalid noise multiplier {mult!r}")
        if not (_is_int(m) and _is_int(n) and 1 <= int(m) <= int(n)):
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
