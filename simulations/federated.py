"""Run the Flower app through `flwr run .` (Flower's simulation engine) and collect results.

Example::

    python -m simulations.federated --preset quick --out runs/quick
    python -m simulations.federated --out runs/x --run-config "fed.rounds=2 dp.epsilon=3"
    python -m simulations.federated --preset main --out runs/main-seeds --seeds 3

Handles the known `flwr run` pitfalls: a private ``FLWR_HOME`` per output folder, no per-run
dependency re-installation, a check that no foreign SuperLink holds Flower's local ports, the
run's final status read from ``flwr ls`` (``--stream`` can exit 0 on a failed run), and the
background SuperLink this command started is stopped by its pid afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides
from common.config.run import RunConfig
from common.data.download import resolve_data_dir
from common.io import clean_json
from common.run_result import RunResult, RunResultError, load_run
from common.task import load_corpus
from simulations import cli
from simulations.procs import free_ports, port_busy, process_table

ROOT = Path(__file__).resolve().parents[1]
PRESETS = Path(__file__).resolve().parent / "presets"
# Flower reads the local SuperLink's ports from these variables (defaults 39091 / 39093);
# each run gets free ports of its own, so concurrent runs and leftovers never collide.
PORT_ENV = ("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT")
SUPERLINK_PORTS = (39091, 39093)


def load_preset(name: str) -> dict[str, Any]:
    """Overrides from `simulations/presets/<name>.toml` ('' = none)."""
    import tomllib

    if not name:
        return {}
    path = PRESETS / f"{name}.toml"
    if not path.exists():
        known = sorted(p.stem for p in PRESETS.glob("*.toml"))
        raise ConfigError(f"unknown preset {name!r}; known presets: {known}")
    with open(path, "rb") as fh:
        return dict(tomllib.load(fh))


def _pids_using(flwr_home: Path, ports: tuple[str, ...] = ()) -> list[int]:
    """Pids of our run's processes.

    SuperLink/SuperExec name `flwr_home` on their command line; the simulation process that
    runs the ServerApp names our private port.
    """
    pids = []
    for pid, (_, cmd) in process_table().items():
        if pid == os.getpid():
            continue
        ours = str(flwr_home) in cmd and ("superlink" in cmd or "superexec" in cmd)
        ours = ours or ("flwr-simulation" in cmd and any(f":{p} " in cmd + " " for p in ports))
        if ours:
            pids.append(pid)
    return pids


def stop_superlink(flwr_home: Path, ports: tuple[str, ...] = ()) -> list[int]:
    """Stop the SuperLink, SuperExec and simulation process of a run; return their pids."""
    pids = _pids_using(flwr_home, ports)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    return pids


def run_status(env: dict[str, str]) -> dict[str, Any] | None:
    """The latest run's entry from `flwr ls --format json`, or None."""
    proc = subprocess.run(
        ["flwr", "ls", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        runs = json.loads(proc.stdout).get("runs", [])
    except json.JSONDecodeError:
        return None
    return max(runs, key=lambda r: str(r.get("pending-at", ""))) if runs else None


def finished_run(overrides: dict[str, Any], out: Path) -> RunResult | None:
    """The completed earlier run of exactly `overrides` in `out` (its results.json), or None.

    Lets a sweep whose bookkeeping failed after the run (or was stopped) pick the run up
    instead of repeating it. The config must match key for key, as `run` would write it.
    """
    out = out.resolve()
    path = out / "results.json"
    if not path.exists():
        return None
    try:
        res = load_run(path)
    except RunResultError:  # unreadable or of an older format: run it again
        return None
    prepared, _ = _prepare(overrides, out, None, quiet=True)
    if res.completed and res.config == clean_json(parse_config(prepared).flat()):
        return res
    return None


def run(
    overrides: dict[str, Any], out: Path, *, num_supernodes: int | None = None, quiet: bool = False
) -> RunResult:
    """Run the app with `overrides` into `out`; return its results.json (raises on failure)."""
    out = out.resolve()
    overrides, nodes = _prepare(overrides, out, num_supernodes, quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)
    flwr_home = out / ".flwr-home"
    stop_superlink(flwr_home)  # a leftover of an interrupted run in this folder
    ports = _free_superlink_ports()
    run_cfg = out / "run-config.toml"
    with open(run_cfg, "w") as fh:
        for k, v in overrides.items():
            fh.write(f'"{k}" = {toml_value(v)}\n')
    env = _flwr_env(flwr_home, ports)
    cmd = ["flwr", "run", ".", "--stream", "--run-config", str(run_cfg),
           "--federation-config", f"num-supernodes={nodes}"]  # fmt: skip
    log_path = out / "flwr.log"
    t0 = time.time()
    try:
        rc = _stream(cmd, env, log_path, quiet=quiet)
        status = run_status(env)
    finally:
        stop_superlink(flwr_home, tuple(ports.values()))
    return _finished(out, rc, status, log_path, time.time() - t0)


def _prepare(
    overrides: dict[str, Any], out: Path, num_supernodes: int | None, *, quiet: bool
) -> tuple[dict[str, Any], int]:
    """Validated overrides (output folder, absolute data folder) and the number of nodes.

    Bad config or data fails here, with key or file and line, before Flower starts.
    """
    overrides = {**overrides, "fed.out-dir": str(out)}
    cfg = parse_config(overrides)
    overrides = with_data_dir(overrides, cfg)
    cfg = parse_config(overrides)
    corpus = load_corpus(cfg.data)
    if corpus.set_aside is not None and len(corpus.set_aside) and not quiet:
        print(f"{cfg.data.dataset}: {corpus.set_aside.summary()}", file=sys.stderr)
    if num_supernodes is None:
        by_user = cfg.data.partitioning == "user"
        num_supernodes = corpus.data.n_users if by_user else cfg.data.num_sites
    return overrides, num_supernodes


def _free_superlink_ports() -> dict[str, str]:
    """The local SuperLink's ports for this run (from the environment, else free ones)."""
    ports = {k: os.environ.get(k) or str(free_ports(1)[0]) for k in PORT_ENV}
    if any(port_busy(int(p)) for p in ports.values()):
        raise RuntimeError(
            f"local SuperLink ports {ports} are taken by another process; a foreign SuperLink "
            "would take over this run. Unset those variables or stop that process."
        )
    return ports


def _flwr_env(flwr_home: Path, ports: dict[str, str]) -> dict[str, str]:
    """The environment of `flwr run`: private FLWR_HOME, our ports, no dependency installs."""
    return {
        **os.environ,
        **ports,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # `flwr` and the SuperLink's own children must come from this interpreter's
        # environment even when it was not activated (e.g. `.venv/bin/python -m ...`).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _stream(cmd: list[str], env: dict[str, str], log_path: Path, *, quiet: bool) -> int:
    """Run `cmd`, copy its output to `log_path` (our lines and errors also to stderr)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if not quiet and ("fedrec" in line or "ERROR" in line or "Traceback" in line):
                print(line.rstrip(), file=sys.stderr)
        return proc.wait()


def _finished(
    out: Path, rc: int, status: dict[str, Any] | None, log_path: Path, wall_s: float
) -> RunResult:
    """The run's results.json with its timing and Flower status; raises if the run failed."""
    results_f = out / "results.json"
    sub = (status or {}).get("status", "unknown")
    if rc != 0 or "fail" in str(sub).lower() or not results_f.exists():
        why = ""
        if results_f.exists():  # the server wrote what it had: say how far the run got
            why = f"; results.json status: {json.loads(results_f.read_text()).get('status')!r}"
        if details := (status or {}).get("status-details"):
            why += f"; Flower says: {details}"
        raise RuntimeError(
            f"flwr run failed (exit {rc}, run status {sub!r}{why}); see {log_path}; "
            f"its last lines:\n{log_tail(log_path)}"
        )
    res: dict[str, Any] = json.loads(results_f.read_text())
    res.setdefault("timing", {})["flwr_run_s"] = wall_s
    res["flwr_status"] = status
    results_f.write_text(json.dumps(res, indent=1))
    return load_run(results_f)


def log_tail(log_path: Path, n: int = 40) -> str:
    """The last `n` lines of a run's log (what failed is usually there), or why there are none."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(f"  | {line}" for line in lines[-n:]) or "  | (the log is empty)"


def with_data_dir(overrides: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """`overrides` with ``data.dir`` as an absolute path (the embedded copy when empty).

    Flower runs the app from its installed copy under ``FLWR_HOME`` (which holds no data
    files) and in another working directory, so the folder is resolved here, once.
    """
    if cfg.data.dataset == "synthetic":
        return overrides
    if cfg.data.dir:
        return {**overrides, "data.dir": str(Path(cfg.data.dir).resolve())}
    if cfg.data.dataset == "generic":
        return overrides  # absolute data.interactions / data.items, or an error at load
    return {**overrides, "data.dir": str(resolve_data_dir(cfg.data.dataset, None).resolve())}


SEED_METRICS = ("hr@10", "ndcg@10", "mrr")


def run_seeds(
    overrides: dict[str, Any], out: Path, seeds: int, *, num_supernodes: int | None = None
) -> dict[str, Any]:
    """Run `seeds` times (``train.seed`` = base, base + 1, ...) into ``out/seed-<s>``.

    Noise and sampling under DP come from OS entropy and differ in every run whatever the
    seed; the seed moves the model's initialisation. Writes ``out/seeds.json``: per run the
    final metrics, epsilon and wall time, and their mean and sample standard deviation.
    """
    base = int(parse_config(overrides).train.seed)
    runs = []
    for i in range(seeds):
        seed = base + i
        print(f"[seeds] run {i + 1}/{seeds}: train.seed = {seed}", file=sys.stderr)
        res = run(
            {**overrides, "train.seed": seed}, out / f"seed-{seed}", num_supernodes=num_supernodes
        )
        runs.append(
            {
                "seed": seed,
                "status": res.status,
                **{k: float(res.metrics[k]) for k in SEED_METRICS if k in res.metrics},
                "epsilon": clean_json(res.privacy.epsilon),  # as results.json writes it
                "flwr_run_s": res.timing["flwr_run_s"],
            }
        )
    summary: dict[str, Any] = {"overrides": overrides, "runs": runs}
    for key in (*SEED_METRICS, "flwr_run_s"):
        vals = np.array([r[key] for r in runs if isinstance(r.get(key), float)])
        if len(vals):
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            summary[key] = {"mean": float(vals.mean()), "std": std, "n": len(vals)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(summary, indent=1))
    return summary


def toml_value(value: Any) -> str:
    """A run-config value as a TOML literal (booleans lower-case, infinity as ``inf``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    return json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.federated", __doc__)
    cli.add_preset(ap, "", "override file in simulations/presets/")
    cli.add_out(ap)
    cli.add_run_config(ap)
    ap.add_argument(
        "--num-supernodes",
        type=int,
        default=None,
        help="simulated nodes (default: data.num-sites, or users when data.partitioning = user)",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat with train.seed = seed, seed+1, ... into OUT/seed-<s>; write OUT/seeds.json",
    )
    args = ap.parse_args(argv)
    if args.seeds < 1:
        return cli.bad_input(ValueError(f"--seeds must be >= 1, got {args.seeds}"))
    try:
        over = {**load_preset(args.preset), **parse_overrides(args.run_config)}
        if args.seeds > 1:
            summary = run_seeds(over, args.out, args.seeds, num_supernodes=args.num_supernodes)
            for key in (*SEED_METRICS, "flwr_run_s"):
                if key in summary:
                    s = summary[key]
                    print(f"{key}: {s['mean']:.4f} +- {s['std']:.4f} (n = {s['n']})")
            print(f"-> {args.out / 'seeds.json'}")
            return 0
        res = run(over, args.out, num_supernodes=args.num_supernodes)
    except (ConfigError, RuntimeError, ValueError) as exc:
        return cli.bad_input(exc)
    m = res.metrics
    base = res.baselines.get("most-popular", {})
    print(
        f"{res.status}: HR@10 {m.get('hr@10', float('nan')):.4f} NDCG@10 "
        f"{m.get('ndcg@10', float('nan')):.4f} (most-popular {base.get('hr@10', float('nan')):.4f})"
        f"; epsilon {res.privacy.epsilon}; {res.timing['flwr_run_s']:.0f}s -> "
        f"{args.out / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
