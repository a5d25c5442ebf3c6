"""Helpers run in child processes by test_budgets: one site round, and ledger writers.

``python -m tests.reliability.spend <run-config.json> <round>`` is one client process: it
builds partition 0 of 2 from scratch, runs `round` from the seeded initial state (round 0
releases the popularity prior, as the server's round 0 asks; later rounds train), prints the
round's metrics as JSON, and exits (1 with ``PrivacyError: ...`` on stderr if refused).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common.privacy.accounting import Event, PrivacyError
from common.privacy.ledger import Ledger


def one_round(run_config: dict[str, Any], server_round: int) -> dict[str, Any]:
    """Run `server_round` at partition 0 of 2 in this (fresh) process."""
    from client.site import get_site, initial_state
    from client.site_round import train_round

    site = get_site(run_config, {"partition-id": 0, "num-partitions": 2})
    reply = train_round(
        site,
        initial_state(site),
        server_round=server_round,
        collect_prior=server_round == 0,
        proximal_mu=0.0,
    )
    return dict(reply.metrics())


def writer(
    path: str, name: str, attempts: int, budget: float, event: Event, start: Any
) -> list[int]:
    """Spend `event` up to `attempts` times on the ledger at `path`, as a site round does.

    Each attempt opens the ledger, stops at the budget, and records round ``i`` under kind
    `name`; returns the rounds this process recorded.
    """
    start.wait()
    done = []
    for i in range(attempts):
        ledger = Ledger.open(Path(path), budget_epsilon=budget, delta=1e-5, accountant="rdp")
        if ledger.would_exceed([event]):
            break
        try:  # record re-checks the budget against the ledger on disk, under the lock
            ledger.record(i, name, [event])
        except PrivacyError:
            break
        done.append(i)
    return done


def main(argv: list[str]) -> int:
    """Command-line entry point (see the module docstring)."""
    run_config = json.loads(Path(argv[0]).read_text())
    try:
        metrics = one_round(run_config, int(argv[1]))
    except PrivacyError as exc:
        print(f"PrivacyError: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in metrics.items() if k != "reason"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
