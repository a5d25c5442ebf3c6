"""Scale runs: N synthetic single-user clients, a few sampled per round, memory measured.

The peak memory of every process of one `flwr run` (SuperLink, simulation, Ray workers) is
sampled from /proc by `TreeMonitor`; the point is that it is bounded by the concurrent client
workers, not by N. Used by `simulations.sweep --scale N` and `simulations.bench --federated`.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.config.base import ConfigError
from common.config.parse import parse_config
from simulations import federated
from simulations.procs import process_table

# The one field of a sweep preset's ``[scale]`` table that is not a run-config key: how many of
# the N single-user clients train (and evaluate) per round; the sampled fraction is this / N.
PER_ROUND_FIELD = "clients-per-round"
# Its default: a fixed sample, so a round's memory is that of a few client workers whatever N.
DEFAULT_PER_ROUND = 20


def split_scale_table(table: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """A preset's ``[scale]`` table as (run-config overrides, clients per round), validated."""
    over = dict(table)
    per_round = over.pop(PER_ROUND_FIELD, DEFAULT_PER_ROUND)
    if isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1:
        raise ConfigError(
            f"[scale] `{PER_ROUND_FIELD}` must be an integer >= 1 (clients sampled per round), "
            f"got {per_round!r}"
        )
    return over, per_round


def scale_overrides(
    table: Mapping[str, Any], n_clients: int, extra: dict[str, Any], *, per_round: int
) -> dict[str, Any]:
    """Run-config of a scale run: `table`'s overrides, N clients, `per_round` sampled a round."""
    frac = min(1.0, per_round / n_clients)
    over = {
        **table,
        "data.partitioning": "user",
        "data.synthetic-users": n_clients,
        "fed.fraction-train": frac,
        "fed.fraction-evaluate": frac,
        **extra,
    }
    if parse_config(over).data.dataset != "synthetic":
        raise ConfigError("--scale needs data.dataset = 'synthetic' (in the preset's [scale])")
    return over


class TreeMonitor:
    """Polls /proc for the peak summed RSS and PSS of the processes of one `flwr run`.

    Counted: this process's descendants and every process whose environment holds
    ``FLWR_HOME=<flwr_home>`` (the detached SuperLink, the simulation and its Ray workers),
    not this process itself (reported apart as ``launcher_rss_mb``).
    """

    def __init__(self, flwr_home: Path, interval: float = 1.0) -> None:
        self.marker = f"FLWR_HOME={flwr_home}".encode()
        self.interval = interval
        self.peak_rss_kb = self.peak_pss_kb = self.peak_procs = self.max_proc_kb = 0
        self._member: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one reading of the process tree."""
        ppid = {pid: parent for pid, (parent, _) in process_table().items()}
        me = os.getpid()
        rss = pss = n = 0
        for pid in ppid:
            if pid != me and self._belongs(pid, ppid, me):
                r, p = _memory_kb(pid)
                rss, pss, n = rss + r, pss + p, n + 1
                self.max_proc_kb = max(self.max_proc_kb, r)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_procs = max(self.peak_procs, n)

    def _belongs(self, pid: int, ppid: dict[int, int], me: int) -> bool:
        if pid not in self._member:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                env = []
            self._member[pid] = self.marker in env
        if self._member[pid]:
            return True
        seen, p = 0, ppid.get(pid, 0)
        while p > 1 and seen < 64:
            if p == me:
                return True
            p, seen = ppid.get(p, 0), seen + 1
        return False


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in kB; (0, 0) if it is gone."""

    def field_kb(path: str, name: str) -> int:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    return field_kb(f"/proc/{pid}/status", "VmRSS:"), field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def run_scale(overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one scale `flwr run` under a `TreeMonitor`; its time per round and peak memory."""
    t0 = time.time()
    out = out.resolve()
    with TreeMonitor(out / ".flwr-home") as mon:
        res = federated.run(overrides, out, quiet=True)
    hist = res.history
    per_round = [float(h["wall_s"]) for h in hist]
    cfg = parse_config(overrides)
    return {
        "status": "completed" if res.completed else "stopped",
        "run_status": res.status,
        "dataset": cfg.data.dataset,
        "overrides": overrides,
        "n_clients": cfg.data.synthetic_users,
        "clients_per_round": [len(h.get("clients", [])) for h in hist],
        "time_per_round_s": per_round,
        "mean_round_s": sum(per_round) / len(per_round) if per_round else None,
        "peak_rss_mb": mon.peak_rss_kb / 1024,
        "peak_pss_mb": mon.peak_pss_kb / 1024,
        "peak_processes": mon.peak_procs,
        "max_process_rss_mb": mon.max_proc_kb / 1024,
        "launcher_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": res.metrics,
        "privacy": {
            k: v
            for k, v in res.privacy.summary().items()
            if k in ("unit", "mode", "trust_model", "epsilon", "target_epsilon")
        },
        "timing": {**res.timing, "sweep_wall_s": time.time() - t0},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
