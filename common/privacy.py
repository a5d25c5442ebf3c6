"""Privacy accounting: noise calibration, a persistent per-client ledger, the DP prior."""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from opacus.accountants import create_accountant

from common.config import RunConfig

# One accountant event: (noise multiplier, sample rate, number of steps), as in Opacus' history.
Event = tuple[float, float, int]

ACCOUNTANTS = ("prv", "rdp")


class PrivacyError(RuntimeError):
    """Privacy accounting cannot proceed safely (budget exceeded, corrupt ledger, ...)."""


ZERO_NOISE_ENV = "FEDREC_TEST_ONLY_ZERO_NOISE"


def test_only_zero_noise() -> bool:
    """Whether ``$FEDREC_TEST_ONLY_ZERO_NOISE`` is ``1``: DP noise is then zeroed. TEST ONLY.

    This BREAKS PRIVACY ON PURPOSE: DP-SGD steps and the popularity histogram are released
    without noise, while planning, accounting, ledgers and reports still claim the usual
    epsilon. It exists only so that a test can show the privacy audit has power (it must
    report FAIL on such a run); never set it anywhere else. Every use warns loudly.
    """
    if os.environ.get(ZERO_NOISE_ENV, "") != "1":
        return False
    warnings.warn(
        f"{ZERO_NOISE_ENV}=1: DP NOISE IS DISABLED (test only); this run is NOT private and "
        "its reported epsilon is false",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


# Every figure is also reported at this stricter delta.
REPORT_DELTA = 1e-6


def noise_seed(*, reproducible: bool, label: str) -> int:
    """Seed of one release's noise and sampling: 63 bits of OS entropy (`secrets`).

    Nothing the server knows (run config, site name, round) predicts it, and two runs never
    share noise. Only with ``reproducible=True`` (`dp.reproducible-noise`, a simulation switch
    that deployed sites refuse) is it a hash of `label`, which makes the noise predictable by
    anyone who knows `label`: such runs are marked not private against the server.
    """
    if reproducible:  # the rule of the first version, so reproducible runs match its figures
        return int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "little")
    return secrets.randbits(63)


def site_ledger_dir(cfg: RunConfig) -> Path:
    """Folder of the simulated sites' ledgers: `dp.ledger-dir`, else ``<fed.out-dir>/ledgers``."""
    return Path(cfg.dp.ledger_dir or os.path.join(cfg.fed.out_dir, "ledgers"))


def default_delta(protected_users: int, max_delta: float) -> float:
    """min(`max_delta`, 1/(10 x users protected)), rounded down to a power of ten.

    1/n would admit a mechanism that publishes one whole user; the rounding makes the delta a
    site reports reveal its user count only to within a factor of ten.
    """
    if protected_users < 1:
        raise ValueError(f"`protected_users` must be >= 1, got {protected_users}.")
    if not 0 < max_delta < 1:
        raise ValueError(f"`max_delta` must be in (0, 1), got {max_delta}.")
    bound = min(max_delta, 1.0 / (10 * protected_users))
    return float(10.0 ** math.floor(math.log10(bound) + 1e-12))


def check_delta(delta: float, protected_users: int) -> None:
    """Raise `PrivacyError` if `delta` is above 1/(10 x users protected)."""
    if delta > 1.0 / (10 * protected_users):
        raise PrivacyError(
            f"delta {delta:g} is above 1/(10 x users protected) for this party's users; "
            "such a delta admits releasing a whole user"
        )


def epsilon_of(events: Sequence[Event], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon after composing `events` with Opacus' accountant `accountant` at `delta`.

    Events with noise multiplier 0 (no DP) give ``inf``; no events give 0.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"`accountant` must be one of {ACCOUNTANTS}, got {accountant!r}.")
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1), got {delta}.")
    for sigma, q, steps in events:
        if not (math.isfinite(sigma) and sigma >= 0 and 0 <= q <= 1 and steps >= 0):
            raise ValueError(f"invalid accountant event (sigma={sigma}, q={q}, steps={steps})")
    events = [e for e in events if e[2] > 0 and e[1] > 0]
    if not events:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in events):
        return math.inf
    acc = create_accountant(accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in events]
    with warnings.catch_warnings():
        # PRV evaluates log(1 - q) at q = 1 (full-batch release); the result is still exact.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="opacus.*")
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_events: Sequence[Event] = (),
    accountant: str = "prv",
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier whose `steps` at `sample_rate` after `prior_events` stay <= target.

    Binary search over sigma with Opacus' accountant (the same one the ledger uses), so the
    planned run ends at most `tolerance` below `target_epsilon` and never above it.
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"`target_epsilon` must be finite and > 0, got {target_epsilon}.")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"`sample_rate` must be in (0, 1], got {sample_rate}.")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}.")

    def eps(sigma: float) -> float:
        return epsilon_of(
            [*prior_events, (sigma, sample_rate, steps)], delta=delta, accountant=accountant
        )

    if epsilon_of(prior_events, delta=delta, accountant=accountant) >= target_epsilon:
        raise PrivacyError(
            f"the prior events alone spend epsilon >= {target_epsilon}; nothing left for training"
        )
    return bisect_sigma(eps, target_epsilon, tolerance=tolerance)


def bisect_sigma(
    eps: Callable[[float], float], target_epsilon: float, *, tolerance: float = 0.01
) -> float:
    """Smallest noise multiplier (to ~1e-3) with ``eps(sigma) <= target_epsilon``.

    `eps` must decrease in sigma. The answer is never above the target and at most
    `tolerance` below it (or within 1e-3 in sigma).
    """
    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            raise PrivacyError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while hi - lo > 1e-3 and (eps(hi) < target_epsilon - tolerance or hi - lo > 0.05):
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_sigma_for(epsilon: float, *, delta: float, accountant: str = "prv") -> float:
    """Noise multiplier of a single full-participation Gaussian release with the given budget."""
    return calibrate_noise(
        target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )


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


def user_histogram(histories: Sequence[np.ndarray], n_items: int, *, recent: int) -> np.ndarray:
    """Sum over users of each user's unit-L2-norm indicator of their `recent` last items.

    Each user contributes ``1/sqrt(m)`` to each of its m distinct recent items, so one user
    changes the sum by at most 1 in L2 norm (the Gaussian mechanism's sensitivity).
    """
    if recent < 1:
        raise ValueError(f"`recent` must be >= 1, got {recent}.")
    hist = np.zeros(n_items, dtype=np.float64)
    for items in histories:
        uniq = np.unique(np.asarray(items)[-recent:])
        if uniq.size:
            hist[uniq] += 1.0 / math.sqrt(uniq.size)
    return hist


def prior_scores(hist: np.ndarray, *, head_share: float = 0.05) -> np.ndarray:
    """Standardised log-popularity of a (possibly noisy) histogram; invariant to scaling it.

    Items below the ``1 - head_share`` quantile are clamped to it: under DP noise only the
    head of the histogram carries signal, the tail is noise (and so are its log values).
    An all-zero histogram (no prior yet) gives all zeros.
    """
    if not 0 < head_share <= 1:
        raise ValueError(f"`head_share` must be in (0, 1], got {head_share}.")
    h = np.asarray(hist, dtype=np.float64)
    if h.size == 0:
        return np.zeros(0, dtype=np.float32)
    floor = max(float(np.quantile(h, 1.0 - head_share)), float(h.max()) * 1e-3, 1e-12)
    log_pop = np.log(np.maximum(h, floor))
    std = float(log_pop.std())
    return ((log_pop - log_pop.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
