"""Accuracy / privacy / fairness sweep: every point is a real `flwr run` of the same apps.

Example::

    python -m simulations.sweep --preset quick --out runs/study
    python -m simulations.sweep --preset quick --out runs/study --scale 10000
    python -m simulations.report runs/study

A preset (`simulations/presets/sweep-<name>.toml`) holds ``[base]`` overrides, a ``[grid]`` of
key -> list of values (cartesian product), optional named ``[[point]]`` override sets (the grid
is crossed with each; the name is the point's *setting*), ``[central]`` (epsilons and overrides
of the central rows) and ``[scale]`` (overrides of the ``--scale N`` run, plus its one field
that is not a config key, ``clients-per-round``: clients sampled per round). Precedence: base <
point < grid value < ``--run-config``. A point whose ``dp.epsilon`` is ``inf`` runs with
``dp.mode = "none"``. Each finished point appends one JSON line to ``DIR/results.jsonl``;
points whose id (a hash of their overrides) already has a completed row are skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config.base import ConfigError
from common.config.parse import load_defaults, parse_config, parse_overrides
from common.io import clean_json
from common.run_result import RunResult, load_run
from simulations import cli, federated
from simulations.fairness import cold_start, fairness
from simulations.scale import run_scale, scale_overrides, split_scale_table

PRESETS = Path(__file__).resolve().parent / "presets"
TOP10 = ("hr@10", "ndcg@10")  # the per-round figures a row keeps
TABLES = ("description", "base", "grid", "point", "central", "scale")


@dataclass
class Point:
    """One run of the sweep: its id, settings (labels) and run-config overrides."""

    id: str
    kind: str  # "point" (federated), "central" or "scale"
    overrides: dict[str, Any]
    settings: list[str] = field(default_factory=list)


def point_id(kind: str, overrides: dict[str, Any]) -> str:
    """Short, stable hash of a point's kind and overrides."""
    text = json.dumps(clean_json({"kind": kind, **overrides}), sort_keys=True)
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
        fh.write(json.dumps(clean_json(row)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def make_row(pt: Point, results: RunResult, wall_s: float) -> dict[str, Any]:
    """The results.jsonl row of a finished point: config, metrics, privacy, fairness, timing."""
    from common.task import load_corpus

    cfg = parse_config(pt.overrides)
    corpus = load_corpus(cfg.data)
    per_client = results.last_eval().get("per_client")
    return {
        "id": pt.id,
        "kind": pt.kind,
        "setting": pt.settings[0] if pt.settings else pt.kind,
        "settings": pt.settings,
        "status": "completed" if results.completed else "stopped",
        "run_status": results.status,
        "dataset": cfg.data.dataset,
        "overrides": pt.overrides,
        "epsilon_target": cfg.dp.epsilon if cfg.dp.mode != "none" else math.inf,
        "metrics": results.metrics,
        "baselines": results.baselines,
        "privacy": results.privacy.summary(),
        "fairness": fairness(results, corpus),
        "cold_start": cold_start(results, corpus, seed=cfg.train.seed),
        "rounds": [
            {k: h.get(k) for k in ("round", "wall_s")} | {k: h["eval"].get(k) for k in TOP10}
            for h in results.evaluated_rounds()
        ],
        "per_client": {k: per_client[k] for k in TOP10} if per_client else None,
        "timing": {**results.timing, "sweep_wall_s": wall_s},
        "communication": results.communication,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ------------------------------------------------------------------ running


def run_central(over: dict[str, Any], out: Path) -> RunResult:
    """`python -m simulations.centralized` in a child process (its memory is freed after)."""
    pairs = []
    for k, v in over.items():
        text = federated.toml_value(v)
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
    return load_run(out / "results.json")


def _attempt(pt: Point, out: Path, t0: float) -> dict[str, Any]:
    if pt.kind == "central":
        central = RunResult.of(run_central(pt.overrides, out / "central" / pt.id))
        return make_row(pt, central, time.time() - t0)
    if pt.kind == "scale":
        return {
            "id": pt.id,
            "kind": "scale",
            "setting": "scale",
            "settings": ["scale"],
            **run_scale(pt.overrides, out / "scale" / pt.id),
        }
    where = out / "points" / pt.id
    run = RunResult.of(federated.run(pt.overrides, where, quiet=True), str(where / "results.json"))
    return make_row(pt, run, time.time() - t0)


def run_one(pt: Point, out: Path, *, log: Any = None) -> dict[str, Any]:
    """Run a point; return its row (a failure gives a row with status "failed" and the error).

    Every federated run picks free SuperLink ports of its own (`simulations.federated`), so
    concurrent sweeps on one machine do not collide and a failure is not retried.
    """
    t0 = time.time()
    try:
        return _attempt(pt, out, t0)
    except Exception as exc:  # a failed point is recorded; the sweep goes on
        if log is not None:
            log(f"{pt.id}: {type(exc).__name__}: {exc}")
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


# ------------------------------------------------------------------ scale


def plan_scale(spec: dict[str, Any], n_clients: int, extra: dict[str, Any]) -> Point:
    """The ``--scale N`` point: N synthetic single-user clients, ``clients-per-round`` sampled."""
    table, per_round = split_scale_table(spec.get("scale", {}))
    over = scale_overrides(table, n_clients, extra, per_round=per_round)
    return Point(point_id("scale", over), "scale", over, ["scale"])


# ------------------------------------------------------------------ the loop


def _brief(pt: Point, varying: list[str]) -> str:
    return " ".join(f"{k}={pt.overrides.get(k)}" for k in varying if k in pt.overrides)


def run_sweep(points: list[Point], out: Path, *, log: Any = None) -> list[dict]:
    """Run every point without a completed row in `out/results.jsonl`; return the new rows."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = out / "results.jsonl"
    done = {r.get("id") for r in read_rows(path) if r.get("status") == "completed"}
    todo = [p for p in points if p.id not in done]
    varying = sorted(
        k
        for k in {k for p in points for k in p.overrides}
        if len({json.dumps(clean_json(p.overrides.get(k))) for p in points}) > 1
    )
    log(f"{len(points)} points: {len(points) - len(todo)} already completed, {len(todo)} to run")
    rows: list[dict] = []
    t_start = time.time()
    for i, pt in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {pt.kind} {pt.id} ({', '.join(pt.settings)}) {_brief(pt, varying)}")
        row = run_one(pt, out, log=log)
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
    ap = cli.command_parser("simulations.sweep", __doc__)
    cli.add_preset(ap, "quick", "simulations/presets/sweep-<name>.toml")
    cli.add_out(ap, "output folder (results.jsonl)")
    cli.add_run_config(ap, 'overrides for every run, "key=value ..."')
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
        return cli.bad_input(exc)
    if args.dry_run:
        for p in points:
            print(p.id, p.kind, ",".join(p.settings), json.dumps(clean_json(p.overrides)))
        print(f"{len(points)} points")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_sweep(points, args.out)
    bad = [r for r in rows if r["status"] != "completed"]
    print(
        f"{len(rows) - len(bad)} completed, {len(bad)} not -> {args.out / 'results.jsonl'}"
        f"; report: python -m simulations.report {args.out}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
