"""Real processes for the reliability tests: the federated command, /proc walking, kills."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from simulations.procs import alive, descendants, free_ports, process_table

__all__ = ["alive", "descendants", "free_ports", "process_table"]

ROOT = Path(__file__).resolve().parents[2]


def federated_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of ``python -m simulations.federated <args>`` (it picks free ports itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_LOCAL_")}
    return [sys.executable, "-m", "simulations.federated", *args], env


def serverapp_pid(flwr_home: Path) -> tuple[int | None, set[int]]:
    """The run's ServerApp process and its descendants, found under its SuperLink.

    ``flwr run`` starts a SuperLink whose command line names `flwr_home` (its log file); in
    simulation mode the SuperLink's SuperExec starts ``flwr-simulation``, which runs the
    ServerApp (and starts Ray, whose processes are its descendants).
    """
    table = process_table()
    links = [
        p for p, (_, cmd) in table.items() if "flower-superlink" in cmd and str(flwr_home) in cmd
    ]
    for link in links:
        for pid in sorted(descendants(link, table)):
            if "flwr-simulation" in table[pid][1]:
                return pid, descendants(pid, table)
    return None, set()


def kill_all(pids: set[int], grace: float = 5.0) -> None:
    """SIGKILL those of `pids` (processes this test started) still alive after `grace` s."""
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
