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
points whose id (a hash of their overrides) already has a completed row are skipped, and a
point whose run completed but whose row failed (its results.json of the same config is there)
is read back instead of run again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.config.base import ConfigError
from common.config.parse import parse_overrides
from common.io import clean_json
from common.run_result import RunResult, load_run
from simulations import cli, federated
from simulations.scale import run_scale
from simulations.sweep_plan import Point, load_spec, plan, plan_central, plan_scale
from simulations.sweep_rows import append_row, make_row, read_rows

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
        central = run_central(pt.overrides, out / "central" / pt.id)
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
    done = federated.finished_run(pt.overrides, where)
    if done is not None:  # read back: its own wall time, not the reading's
        return make_row(pt, done, float(done.timing.get("wall_s", 0.0)))
    run = federated.run(pt.overrides, where, quiet=True)
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
