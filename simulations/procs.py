"""Processes and ports on this machine, read from /proc: what the runners and tests share.

Everything here only reads; killing is left to callers, who kill only processes they
started (by pid).
"""

from __future__ import annotations

import socket
from pathlib import Path


def process_table() -> dict[int, tuple[int, str]]:
    """Pid -> (parent pid, command line) of every live process."""
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


def descendants(pid: int, table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """All live descendants of `pid`."""
    table = process_table() if table is None else table
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        kids = {p for p, (pp, _) in table.items() if pp in frontier} - found
        found |= kids
        frontier = kids
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def port_busy(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
