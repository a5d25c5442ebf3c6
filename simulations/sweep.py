"""Accuracy / privacy / fairness sweep: every point is a real `flwr run` of the same apps.

Example::

    python -m simulations.sweep --preset quick --out runs/study
    python -m simulations.sweep --preset quick --out runs/study --scale 10000
    python -m simulations.report runs/study

A preset (`simulations/presets/sweep-<name>.toml`) holds ``[base]`` overrides, a ``[grid]`` of
key -> list of values (cartesian product), optional named ``[[point]]`` override sets (the grid
is crossed with each; the name is the point's *setting*), ``[central]`` (epsilons and overrides
of the central rows) and ``[scale]`` (overrides of the ``--scale N`` run). Precedence: base <
point < grid value < ``--run-config``. A point whose ``dp.epsilon`` is ``inf`` runs with
``dp.mode = "none"``. Each finished point appends one JSON line to ``DIR/results.jsonl``;
points whose id (a hash of their overrides) already has a completed row are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError, load_defaults, parse_config, parse_overrides
from simulations import federated
from simulations.io import _clean

PRESETS = Path(__file__).resolve().parent / "presets"
TABLES = ("description", "base", "grid", "point", "central", "scale")
ACTIVE_SHARE = 0.2  # "most active" = top 20% of users by training interactions
AGE_BANDS = ((0, "<25"), (25, "25-34"), (35, "35-44"), (45, "45+"))  # ml-1m codes fit too
DEMOGRAPHICS = ("gender", "age", "group")


@dataclass
class Point:
    """One run of the sweep: its id, settings (labels) and run-config overrides."""

    id: str
    kind: str  # "point" (federated), "central" or "scale"
    overrides: dict[str, Any]
    settings: list[str] = field(default_factory=list)


def point_id(kind: str, overrides: dict[str, Any]) -> str:
    """Short, stable hash of a point's kind and overrides."""
    text = json.dumps(_clean({"kind": kind, **overrides}), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_spec(name: str) -> dict[str, Any]:
    """Read `presets/sweep-<name>.toml`; unknown top-level keys are errors."""
    path = PRESETS / f"sweep-{name}.toml"
    if not path.exists():
        known = sorted(p.stem.removeprefix("sweep-") for p in PRESETS.glob("sweep-*.toml"))
        raise ConfigError(f"unknown sweep preset {name!r}; known: {known}")
    with open(path, "rb") as fh:
        spec = tomllib.load(fh)
    if bad := sorted(set(spec) - set(TABLES)):
        raise ConfigError(f"{path.name}: unknown table(s) {bad}; allowed: {list(TABLES)}")
    for key, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path.name}: grid key {key!r} needs a non-empty list")
    return spec


def _normalise(over: dict[str, Any]) -> dict[str, Any]:
    """Epsilon inf means no DP: map any DP mode to ``none`` (the config rejects local + inf)."""
    defaults = load_defaults()
    eps = float(over.get("dp.epsilon", defaults["dp.epsilon"]))
    if math.isinf(eps) and over.get("dp.mode", defaults["dp.mode"]) != "none":
        over = {**over, "dp.mode": "none"}
    return over


def plan(spec: dict[str, Any], extra: dict[str, Any]) -> list[Point]:
    """Expand base x points x grid into validated points (identical overrides merged)."""
    grid = spec.get("grid", {})
    named = spec.get("point") or [{"name": ""}]
    points: dict[str, Point] = {}
    for entry in named:
        entry = dict(entry)
        name = str(entry.pop("name", ""))
        local_grid = {**grid, **entry.pop("grid", {})}
        keys = list(local_grid)
        for combo in itertools.product(*(local_grid[k] for k in keys)):
            over = _normalise(
                {**spec.get("base", {}), **entry, **dict(zip(keys, combo, strict=True)), **extra}
            )
            parse_config(over)  # validate every point before anything runs
            setting = name or _setting_name(over)
            pid = point_id("point", over)
            pt = points.setdefault(pid, Point(pid, "point", over))
            if setting not in pt.settings:
                pt.settings.append(setting)
    return list(points.values())


def _setting_name(over: dict[str, Any]) -> str:
    cfg = parse_config(over)
    where = "users" if cfg.data.partitioning == "user" else f"{cfg.data.num_sites}-sites"
    return f"{cfg.data.partitioning}-{where}"


def plan_central(spec: dict[str, Any], points: list[Point], extra: dict[str, Any]) -> list[Point]:
    """Central rows: once per data set of the points x epsilon (inf + the points' DP epsilons)."""
    table = dict(spec.get("central", {}))
    if table.pop("enabled", True) is False:
        return []
    eps = table.pop("epsilons", None)
    if eps is None:
        cfgs = [parse_config(p.overrides).dp for p in points]
        eps = {math.inf} | {dp.epsilon for dp in cfgs if dp.mode != "none"}
    data_keys = ("data.dataset", "data.dir", "data.synthetic-users", "data.synthetic-items")
    datasets = {
        json.dumps({k: p.overrides[k] for k in data_keys if k in p.overrides}, sort_keys=True)
        for p in points
    }
    out = []
    for data in sorted(datasets):
        for e in sorted(float(x) for x in eps):
            over = {**spec.get("base", {}), **json.loads(data), **table, **extra}
            over.update({"dp.mode": "none" if math.isinf(e) else "local", "dp.epsilon": e})
            parse_config(over)
            out.append(Point(point_id("central", over), "central", over, ["central"]))
    return out


# ------------------------------------------------------------------ results.jsonl


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl; a bad line is an error naming it (a torn last line is skipped)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n == len(lines):
                print(f"warning: {path} line {n} is incomplete; ignored", file=sys.stderr)
                continue
            raise ValueError(f"{path} line {n}: not JSON ({exc})") from exc
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(_clean(row)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------ fairness


def activity_groups(train_counts: np.ndarray, share: float = ACTIVE_SHARE) -> np.ndarray:
    """Boolean mask of the ``ceil(share * n)`` users with most training interactions.

    Ties at the cut are broken by the lower user index (stable sort).
    """
    counts = np.asarray(train_counts)
    top = np.argsort(-counts, kind="stable")[: int(math.ceil(share * counts.size))]
    mask = np.zeros(counts.size, dtype=bool)
    mask[top] = True
    return mask


def age_band(age: float) -> str:
    """Band label of an age (ml-100k years or ml-1m age codes)."""
    return [label for low, label in AGE_BANDS if age >= low][-1]


def group_table(values: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Mean hr@10 / ndcg@10 per label, and the gap (best minus worst group mean) per metric."""
    groups: dict[str, Any] = {}
    for lab in sorted(set(labels.tolist())):
        sel = labels == lab
        groups[str(lab)] = {"n": int(sel.sum())} | {
            k: float(v[sel].mean()) for k, v in values.items()
        }
    gaps = (
        {
            f"gap_{k}": max(g[k] for g in groups.values()) - min(g[k] for g in groups.values())
            for k in values
        }
        if len(groups) > 1
        else {}
    )
    return {"groups": groups, **gaps}


def per_user_lists(results: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Per-user {user, hr@10, ndcg@10} of the final evaluation (federated or central)."""
    pu = results.get("per_user") or ((results.get("history") or [{}])[-1].get("eval") or {}).get(
        "per_user"
    )
    if not pu or "user" not in pu or not len(pu["user"]):
        return None
    return {k: np.asarray(pu[k], dtype=np.float64) for k in ("user", "hr@10", "ndcg@10")}


def fairness(results: dict[str, Any], corpus: Any) -> dict[str, Any]:
    """Per-client distribution, user groups (activity, demographics) and item-side metrics."""
    from common.metrics import distribution_summary

    out: dict[str, Any] = {}
    last = ((results.get("history") or [{}])[-1].get("eval") or {}).get("per_client")
    if last:
        out["per_client"] = {
            k: distribution_summary(np.array([x for x in last[k] if not math.isnan(x)]))
            for k in ("hr@10", "ndcg@10")
        }
    pu = per_user_lists(results)
    if pu is not None:
        users = pu["user"].astype(np.int64)
        vals = {k: pu[k] for k in ("hr@10", "ndcg@10")}
        counts = np.array([len(t) for t in corpus.split.train])
        active = activity_groups(counts)[users]
        out["activity"] = group_table(vals, np.where(active, "top20", "rest"))
        attrs = corpus.data.user_attrs
        for name in DEMOGRAPHICS:
            if name in attrs:
                raw = np.asarray(attrs[name])[users]
                labels = np.array([age_band(float(a)) for a in raw]) if name == "age" else raw
                out[name] = group_table(vals, labels.astype(str))
    m = results.get("metrics", {})
    out["items"] = {k: m[k] for k in ("coverage@10", "long_tail_share@10", "exposure_gini@10")
                    if k in m}  # fmt: skip
    return out


def cold_start(results: dict[str, Any], corpus: Any, *, seed: int) -> dict[str, Any] | None:
    """Model vs most-popular on users whose test item is cold (never in training) vs the rest."""
    from common.baselines import create_baseline
    from common.evaluate import evaluate_scores
    from simulations.centralized import evaluator_for

    split = corpus.split
    pu = per_user_lists(results)
    if not len(split.cold_items) or pu is None:
        return None
    users = pu["user"].astype(np.int64)
    cold = np.isin(split.test[users], split.cold_items)
    out: dict[str, Any] = {
        "n_cold_items": int(len(split.cold_items)),
        "n_cold_users": int(cold.sum()),
    }
    for name, sel in (("cold", cold), ("warm", ~cold)):
        out[name] = {
            k: float(pu[k][sel].mean()) if sel.any() else None for k in ("hr@10", "ndcg@10")
        }
    if cold.any():
        pop = create_baseline("most-popular", list(split.train), corpus.data.n_items)
        ev = evaluate_scores(
            lambda _r, known: np.asarray(pop.scores_for(known)),
            corpus.local(users[cold]),
            corpus.data.n_items,
            which="test",
            evaluator=evaluator_for(corpus, seed),
        ).result()
        out["most-popular_cold"] = {k: ev[k] for k in ("hr@10", "ndcg@10")}
    return out


def make_row(pt: Point, results: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The results.jsonl row of a finished point: config, metrics, privacy, fairness, timing."""
    from common.task import load_corpus

    cfg = parse_config(pt.overrides)
    corpus = load_corpus(cfg.data)
    priv = results.get("privacy", {})
    hist = results.get("history") or []
    per_client = (hist[-1].get("eval") or {}).get("per_client") if hist else None
    status = results.get("status", "completed")
    return {
        "id": pt.id,
        "kind": pt.kind,
        "setting": pt.settings[0] if pt.settings else pt.kind,
        "settings": pt.settings,
        "status": "completed" if status == "completed" else "stopped",
        "run_status": status,
        "dataset": cfg.data.dataset,
        "overrides": pt.overrides,
        "epsilon_target": cfg.dp.epsilon if cfg.dp.mode != "none" else math.inf,
        "metrics": results.get("metrics", {}),
        "baselines": results.get("baselines", {}),
        "privacy": {
            k: priv.get(k)
            for k in (
                "unit",
                "mode",
                "trust_model",
                "epsilon",
                "target_epsilon",
                "delta",
                "accountant",
            )
        },
        "fairness": fairness(results, corpus),
        "cold_start": cold_start(results, corpus, seed=cfg.train.seed),
        "rounds": [
            {
                "round": h["round"],
                "wall_s": h.get("wall_s"),
                "hr@10": h["eval"].get("hr@10"),
                "ndcg@10": h["eval"].get("ndcg@10"),
            }
            for h in hist
            if "eval" in h
        ],  # fmt: skip
        "per_client": {k: per_client[k] for k in ("hr@10", "ndcg@10")} if per_client else None,
        "timing": {**results.get("timing", {}), "sweep_wall_s": wall_s},
        "communication": results.get("communication", {}),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ------------------------------------------------------------------ running


def run_central(over: dict[str, Any], out: Path) -> dict[str, Any]:
    """`python -m simulations.centralized` in a child process (its memory is freed after)."""
    pairs = []
    for k, v in over.items():
        text = federated._toml(v)
        if any(c.isspace() for c in text):
            raise ValueError(f"central override {k}={text!r} contains whitespace")
        pairs.append(f"{k}={text}")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "simulations.centralized", "--out", str(out)]
    cmd += ["--run-config", " ".join(pairs)]
    with open(out / "central.log", "w") as log:
        rc = subprocess.run(
            cmd, cwd=federated.ROOT, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    if rc != 0:
        tail = (out / "central.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"central run failed (exit {rc}): {' | '.join(tail)}")
    res: dict[str, Any] = json.loads((out / "results.json").read_text())
    return res


def wait_for_ports(timeout: float, log: Any) -> None:
    """No-op kept for the CLI flag: every run now gets free SuperLink ports of its own."""


def _attempt(pt: Point, out: Path, t0: float) -> dict[str, Any]:
    if pt.kind == "central":
        res = run_central(pt.overrides, out / "central" / pt.id)
        res.setdefault("status", "completed")
        return make_row(pt, res, time.time() - t0)
    if pt.kind == "scale":
        return run_scale(pt, out / "scale" / pt.id)
    res = federated.run(pt.overrides, out / "points" / pt.id, quiet=True)
    return make_row(pt, res, time.time() - t0)


def _ports_taken() -> bool:
    return False  # each run picks its own free ports (simulations.federated.PORT_ENV)


def run_one(pt: Point, out: Path, *, wait_s: float, log: Any) -> dict[str, Any]:
    """Run a point; return its row (a failure gives a row with status "failed" and the error).

    A federated or scale run that fails while another run's SuperLink holds Flower's ports (it
    took them between our check and our start) is retried once after the ports are free.
    """
    for attempt in (1, 2):
        if pt.kind != "central":
            wait_for_ports(wait_s, log)
        t0 = time.time()  # after any wait for the ports: the row's time is the run's own
        try:
            return _attempt(pt, out, t0)
        except Exception as exc:  # a failed point is recorded; the sweep goes on
            if attempt == 1 and pt.kind != "central" and _ports_taken():
                log(f"{pt.id}: failed while another run holds the ports ({exc}); retrying")
                continue
            return {
                "id": pt.id,
                "kind": pt.kind,
                "setting": pt.settings[0] if pt.settings else pt.kind,
                "settings": pt.settings,
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "overrides": pt.overrides,
                "timing": {"sweep_wall_s": time.time() - t0},
            }
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ scale


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
        ppid: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
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


def plan_scale(spec: dict[str, Any], n_clients: int, extra: dict[str, Any]) -> Point:
    """The ``--scale N`` point: N synthetic single-user clients, ``clients-per-round`` sampled."""
    table = dict(spec.get("scale", {}))
    per_round = int(table.pop("clients-per-round", 20))
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
    return Point(point_id("scale", over), "scale", over, ["scale"])


def run_scale(pt: Point, out: Path) -> dict[str, Any]:
    """Run the scale point under a `TreeMonitor`; return its kind="scale" row."""
    import resource

    t0 = time.time()
    out = out.resolve()
    with TreeMonitor(out / ".flwr-home") as mon:
        res = federated.run(pt.overrides, out, quiet=True)
    hist = res.get("history") or []
    per_round = [float(h["wall_s"]) for h in hist]
    cfg = parse_config(pt.overrides)
    return {
        "id": pt.id,
        "kind": "scale",
        "setting": "scale",
        "settings": ["scale"],
        "status": "completed" if res.get("status") == "completed" else "stopped",
        "run_status": res.get("status"),
        "dataset": cfg.data.dataset,
        "overrides": pt.overrides,
        "n_clients": cfg.data.synthetic_users,
        "clients_per_round": [len(h.get("clients", [])) for h in hist],
        "time_per_round_s": per_round,
        "mean_round_s": sum(per_round) / len(per_round) if per_round else None,
        "peak_rss_mb": mon.peak_rss_kb / 1024,
        "peak_pss_mb": mon.peak_pss_kb / 1024,
        "peak_processes": mon.peak_procs,
        "max_process_rss_mb": mon.max_proc_kb / 1024,
        "launcher_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": res.get("metrics", {}),
        "privacy": {
            k: res.get("privacy", {}).get(k)
            for k in ("unit", "mode", "trust_model", "epsilon", "target_epsilon")
        },
        "timing": {**res.get("timing", {}), "sweep_wall_s": time.time() - t0},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ------------------------------------------------------------------ the loop


def _brief(pt: Point, varying: list[str]) -> str:
    return " ".join(f"{k}={pt.overrides.get(k)}" for k in varying if k in pt.overrides)


def run_sweep(
    points: list[Point], out: Path, *, wait_s: float = 0.0, log: Any = None
) -> list[dict]:
    """Run every point without a completed row in `out/results.jsonl`; return the new rows."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = out / "results.jsonl"
    done = {r.get("id") for r in read_rows(path) if r.get("status") == "completed"}
    todo = [p for p in points if p.id not in done]
    varying = sorted(
        k
        for k in {k for p in points for k in p.overrides}
        if len({json.dumps(_clean(p.overrides.get(k))) for p in points}) > 1
    )
    log(f"{len(points)} points: {len(points) - len(todo)} already completed, {len(todo)} to run")
    rows: list[dict] = []
    t_start = time.time()
    for i, pt in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {pt.kind} {pt.id} ({', '.join(pt.settings)}) {_brief(pt, varying)}")
        row = run_one(pt, out, wait_s=wait_s, log=log)
        append_row(path, row)
        rows.append(row)
        eta = (time.time() - t_start) / i * (len(todo) - i)
        what = row.get("error") or " ".join(
            f"{k} {v:.4f}" for k, v in row.get("metrics", {}).items() if k in ("hr@10", "ndcg@10")
        )
        log(
            f"[{i}/{len(todo)}] {row['status']} in {row['timing']['sweep_wall_s']:.0f}s: {what}; "
            f"ETA {eta / 60:.1f} min"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m simulations.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="quick", help="simulations/presets/sweep-<name>.toml")
    ap.add_argument("--out", required=True, type=Path, help="output folder (results.jsonl)")
    ap.add_argument("--run-config", default="", help='overrides for every run, "key=value ..."')
    ap.add_argument(
        "--scale",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="run only the scale point(s) with N single-user synthetic clients",
    )
    ap.add_argument("--no-central", action="store_true", help="skip the central rows")
    ap.add_argument("--dry-run", action="store_true", help="list the points and exit")
    ap.add_argument(
        "--wait-ports",
        type=float,
        default=3600.0,
        metavar="S",
        help="wait up to S seconds for another run's SuperLink to free the ports",
    )
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.preset)
        extra = parse_overrides(args.run_config)
        if args.scale:
            points = [plan_scale(spec, n, extra) for n in args.scale]
        else:
            points = plan(spec, extra)
            if not args.no_central:
                points += plan_central(spec, points, extra)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for p in points:
            print(p.id, p.kind, ",".join(p.settings), json.dumps(_clean(p.overrides)))
        print(f"{len(points)} points")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_sweep(points, args.out, wait_s=args.wait_ports)
    bad = [r for r in rows if r["status"] != "completed"]
    print(
        f"{len(rows) - len(bad)} completed, {len(bad)} not -> {args.out / 'results.jsonl'}"
        f"; report: python -m simulations.report {args.out}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
