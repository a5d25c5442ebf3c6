"""How many users DP needs: central runs on planted synthetic data, DP vs no DP per size.

For each number of users, each epsilon (default 8 and inf = no DP) and each seed, the central
run (`simulations.centralized.run`: one party holding every user, a site's local round) trains
on synthetic data with planted topic preferences (`common.data.synthetic`) and is evaluated on the
test item. The result is ``users-needed.json`` (every run's HR@10 / NDCG@10 and the
most-popular baseline, EASE and, for DP runs, DP-EASE at the run's epsilon and delta),
``users-needed.md`` (mean +- standard deviation over seeds per size) and ``users-needed.png``
(HR@10 against users, log scale, the baselines dotted). A finished point is not re-run:
its ``results.json`` is read back, so an interrupted study resumes where it stopped.

Each finished point also leaves a small record, ``points/<point>.json`` (its full config and
its row of the report), small enough to commit: ``--reuse DIR`` takes the points of such a
folder whose config matches exactly instead of running them, so a study too long for one
sitting resumes on another machine or checkout. ``--report-only`` runs nothing and reports
the points already there (the others are listed as missing).

Example::

    python -m simulations.users_needed --out runs/users-needed --sizes 150,600,2500,10000
    python -m simulations.users_needed --out runs/un --reuse docs/examples/users-needed/points
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides, parse_recorded, without_inert
from common.config.run import RunConfig
from common.data.interactions import DataError
from common.io import clean_json, write_json_atomic
from common.privacy.accounting import PrivacyError
from common.run_result import RunResult, load_run
from simulations import cli
from simulations.centralized import run as central_run

DEFAULT_SIZES = (150, 600, 2500, 10000)
DEFAULT_ITEMS = 500  # catalogue size of every synthetic data set (same items at every size)
NO_DP = math.inf
BASELINES = ("ease", "dp-ease")  # reported beside the model when the run has them
BASELINE_KEYS = tuple(f"{b} hr@10" for b in BASELINES)


def point_config(base: dict[str, Any], users: int, epsilon: float, seed: int) -> RunConfig:
    """The central run of one point: `base` overrides plus size, privacy and seed."""
    over = {
        "data.dataset": "synthetic",
        "data.synthetic-items": DEFAULT_ITEMS,
        **base,
        "data.synthetic-users": users,
        "dp.mode": "none" if math.isinf(epsilon) else "local",
        "dp.epsilon": epsilon,
        "train.seed": seed,
    }
    return parse_config(over)


def same_config(recorded: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether a recorded flat config describes the point of `cfg`.

    A key the record lacks (added to the code after it was written) takes the value of the
    behaviour before it existed (`parse_recorded`); keys that cannot change the point's run
    (`without_inert`: new-item keys without new items, co-occurrence keys without the
    release) are not compared.
    """
    have = without_inert(clean_json(parse_recorded(recorded).flat()))
    want = without_inert(clean_json(cfg.flat()))
    return bool(have == want)


def finished(cfg: RunConfig, out: Path) -> bool:
    """Whether `out` holds a finished central run of exactly `cfg`."""
    done = out / "results.json"
    return done.exists() and same_config(load_run(done).config, cfg)


def read_record(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The row of a point record at `path` if it exists and its config is exactly `cfg`'s."""
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        same = same_config(rec["config"], cfg)
        row = dict(rec["row"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a users-needed point record ({exc})") from None
    if not same:
        return None
    for key in ("epsilon", "epsilon_spent"):  # "inf" in JSON
        if row.get(key) is not None:
            row[key] = float(row[key])
    return row


def point_row(users: int, eps: float, seed: int, res: RunResult) -> dict[str, Any]:
    """One point's row of the report from its run's results."""
    return {
        "users": users,
        "epsilon": eps,
        "seed": seed,
        "hr@10": res.metrics["hr@10"],
        "ndcg@10": res.metrics["ndcg@10"],
        "most-popular hr@10": res.baselines["most-popular"]["hr@10"],
        **{f"{b} hr@10": res.baselines[b]["hr@10"] for b in BASELINES if b in res.baselines},
        "epsilon_spent": res.privacy.epsilon,
        "delta": res.privacy.delta,
        "wall_s": res.timing["wall_s"],
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each (users, epsilon) point."""
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["users"], r["epsilon"]), []).append(r)
    out = []
    for (users, eps), rs in sorted(groups.items()):
        entry: dict[str, Any] = {"users": users, "epsilon": eps, "seeds": len(rs)}
        for k in ("hr@10", "ndcg@10", "most-popular hr@10", *BASELINE_KEYS):
            if not all(k in r for r in rs):  # EASE / DP-EASE: only where the runs report them
                continue
            vals = [r[k] for r in rs]
            entry[k] = statistics.fmean(vals)
            entry[f"{k} sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown table of `summarise`'s rows."""
    lines = [
        "| users | epsilon | HR@10 | NDCG@10 | most-popular HR@10 | baseline HR@10 (EASE without "
        "DP; DP-EASE at the run's epsilon and delta) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        eps = "no DP" if math.isinf(s["epsilon"]) else f"{s['epsilon']:g}"
        base = "ease hr@10" if math.isinf(s["epsilon"]) else "dp-ease hr@10"
        shown = f"{s[base]:.4f} ± {s[base + ' sd']:.4f}" if base in s else "-"
        lines.append(
            f"| {s['users']} | {eps} | {s['hr@10']:.4f} ± {s['hr@10 sd']:.4f} | "
            f"{s['ndcg@10']:.4f} ± {s['ndcg@10 sd']:.4f} | {s['most-popular hr@10']:.4f} | "
            f"{shown} | {s['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """HR@10 (mean +- sd) against the number of users, one line per epsilon and most-popular.

    Each epsilon's baseline of the same runs (EASE without DP, DP-EASE at the run's budget)
    is drawn dotted in the same colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for eps in sorted({s["epsilon"] for s in summary}):
        pts = [s for s in summary if s["epsilon"] == eps]
        label = "no DP" if math.isinf(eps) else f"epsilon {eps:g}"
        bars = ax.errorbar(
            [p["users"] for p in pts],
            [p["hr@10"] for p in pts],
            yerr=[p["hr@10 sd"] for p in pts],
            marker="o",
            capsize=3,
            label=label,
        )
        key = "ease hr@10" if math.isinf(eps) else "dp-ease hr@10"
        if all(key in p for p in pts):  # the baseline of the same runs, same colour, dotted
            ax.plot([p["users"] for p in pts], [p[key] for p in pts], ":",
                    color=bars.lines[0].get_color(),
                    label="EASE" if math.isinf(eps) else f"DP-EASE, epsilon {eps:g}")  # fmt: skip
    pop = [s for s in summary if math.isinf(s["epsilon"])] or summary
    ax.plot(
        [p["users"] for p in pop],
        [p["most-popular hr@10"] for p in pop],
        "k--",
        label="most-popular",
    )
    ax.set_xscale("log")
    ax.set_xlabel("users (synthetic, planted topics)")
    ax.set_ylabel("HR@10 (test item)")
    ax.set_title("How many users does user-level DP need?")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def study(
    out: Path,
    sizes: list[int],
    epsilons: list[float],
    seeds: int,
    base: dict[str, Any],
    *,
    reuse: list[Path] | None = None,
    run_missing: bool = True,
) -> dict[str, Any]:
    """Run every point (resumable), then write the JSON, the table and the plot.

    A point is taken, in this order, from its record in ``out/points``, from a record in one
    of the `reuse` folders (copied into ``out/points``), from ``out/<point>/results.json``, or
    run (unless `run_missing` is false: then it is listed under ``missing``). Every record's
    config must equal the point's exactly.
    """
    rows, missing = [], []
    points = [(n, e, s) for n in sizes for e in epsilons for s in range(seeds)]
    t0 = time.perf_counter()
    for i, (users, eps, seed) in enumerate(points, 1):
        cfg = point_config(base, users, eps, seed)
        name = f"users{users}-eps{'inf' if math.isinf(eps) else f'{eps:g}'}-seed{seed}"
        record = out / "points" / f"{name}.json"
        row, how = read_record(record, cfg), "recorded"
        for folder in reuse or []:
            if row is None:
                row, how = read_record(folder / f"{name}.json", cfg), f"reused from {folder}"
        if row is None:
            done = finished(cfg, out / name)
            if not run_missing and not done:
                missing.append(name)
                print(f"[{i}/{len(points)}] {name}: missing (not run)", file=sys.stderr)
                continue
            res = load_run(out / name / "results.json") if done else central_run(cfg, out / name)
            row = point_row(users, eps, seed, res)
            how = "read back" if done else "run"
        write_json_atomic(record, {"config": cfg.flat(), "row": row})
        rows.append(row)
        print(
            f"[{i}/{len(points)}] {name}: HR@10 {row['hr@10']:.4f} ({how}; "
            f"{time.perf_counter() - t0:.0f} s so far)",
            file=sys.stderr,
            flush=True,
        )
    summary = summarise(rows)
    result = {"runs": rows, "summary": summary, "base": base, "missing": missing}
    write_json_atomic(out / "users-needed.json", result)
    tmp = out / "users-needed.md.tmp"
    note = f"\nNot run yet ({len(missing)}): {', '.join(missing)}\n" if missing else ""
    tmp.write_text(table(summary) + note)
    tmp.replace(out / "users-needed.md")
    if summary:
        plot(summary, out / "users-needed.png")
    return result


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from exc
    if not vals or min(vals) < 2:
        raise ValueError(f"--{what} needs at least one value >= 2, got {text!r}")
    return vals


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.users_needed", __doc__)
    cli.add_out(ap)
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="users per point")
    ap.add_argument("--epsilons", default="8,inf", help="comma-separated; inf = no DP")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per point (>= 1)")
    cli.add_run_config(ap, 'overrides for every run, e.g. "fed.rounds=1 train.lr=0.01"')
    ap.add_argument("--reuse", type=Path, action="append", default=[], metavar="DIR",
                    help="a folder of point records (points/*.json) to take matching points "
                    "from instead of running them (repeatable)")  # fmt: skip
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: report the points already finished or recorded")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        sizes = _ints(args.sizes, "sizes")
        epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        base = parse_overrides(args.run_config)
        for folder in args.reuse:
            if not folder.is_dir():
                raise ValueError(f"--reuse {folder}: not a folder")
        res = study(args.out, sizes, epsilons, args.seeds, base, reuse=args.reuse,
                    run_missing=not args.report_only)  # fmt: skip
    except (ConfigError, DataError, PrivacyError, ValueError) as exc:
        return cli.bad_input(exc)
    print(table(res["summary"]), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
