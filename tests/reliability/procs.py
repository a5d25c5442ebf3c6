"""Real processes for the reliability tests: the federated command, /proc walking, kills."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that were free a moment ago."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def federated_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of ``python -m simulations.federated <args>`` (it picks free ports itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_LOCAL_")}
    return [sys.executable, "-m", "simulations.federated", *args], env


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # Field 4 (after the parenthesised command name) is the parent pid.
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> set[int]:
    """All live descendants of `pid`."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        kids = {p for p, (pp, _) in table.items() if pp in frontier} - found
        found |= kids
        frontier = kids
    return found


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


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_all(pids: set[int], grace: float = 5.0) -> None:
    """SIGKILL those of `pids` (processes this test started) still alive after `grace` s."""
    deadline = time.time() + grace
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
