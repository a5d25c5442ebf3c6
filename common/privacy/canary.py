"""Canary users for the one-run privacy audit: random histories and targets, inserted w.p. 1/2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Canaries:
    """m canary users drawn from the public catalogue; `included` is the secret coin flips."""

    histories: tuple[np.ndarray, ...]  # per canary, `history` distinct random items
    targets: np.ndarray  # [m] the target item (not in the history)
    included: np.ndarray  # [m] bool: inserted into training
    sites: np.ndarray  # [m] which site (simulated client) holds the canary if included

    @property
    def sequences(self) -> tuple[np.ndarray, ...]:
        """Training sequence of each canary: its history then its target."""
        return tuple(np.append(h, t) for h, t in zip(self.histories, self.targets, strict=True))


def make_canaries(n_items: int, m: int, *, history: int, n_sites: int, seed: int) -> Canaries:
    """Draw `m` canaries; each is included independently with probability 1/2.

    Everything is derived from `seed`, so the auditor (who knows the seed) and the sites
    agree on the canaries; the coin flips are what the audit must guess.
    """
    if m < 0 or history < 1 or n_sites < 1:
        raise ValueError(f"bad canary spec: m={m}, history={history}, n_sites={n_sites}")
    if history + 1 > n_items:
        raise ValueError(f"`audit.canary-history` {history} needs more than {n_items} items")
    rng = np.random.default_rng(seed)
    hists, targets = [], np.zeros(m, dtype=np.int64)
    for j in range(m):
        items = rng.choice(n_items, size=history + 1, replace=False)
        hists.append(items[:-1].astype(np.int64))
        targets[j] = items[-1]
    included = rng.random(m) < 0.5
    sites = rng.integers(0, n_sites, size=m)
    return Canaries(tuple(hists), targets, included, sites)
