"""A hostile client inside a real `flwr run`: Flower's simulation engine, not the in-process grid.

The app's components are fixed in `pyproject.toml`, so the test runs a copy of the app whose
`clientapp` component is `client.hostile:app` (the real handlers plus one injected fault);
`FEDREC_FAULT` travels through the environment to every ClientApp process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.hostile import FAULT_ENV

from .procs import ROOT, federated_command

RUN_TIMEOUT = 600


def _hostile_copy(dest: Path) -> Path:
    """The tracked files of this repository, with the hostile ClientApp as the component."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src, dst = ROOT / name.decode(), dest / name.decode()
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text()
    honest = 'clientapp = "client.client_app:app"'
    assert honest in text
    pyproject.write_text(text.replace(honest, 'clientapp = "client.hostile:app"'))
    return dest


# Runs one `flwr run` of the hostile copy: (the run's output folder, the finished process).
HostileRun = Callable[..., tuple[Path, "subprocess.CompletedProcess[str]"]]


@pytest.fixture
def hostile_run(tmp_path: Path, tiny_backbone: Path, cache_dir: Path) -> HostileRun:
    """Run the hostile app copy on synthetic data with `fault` in every ClientApp process.

    ``run(fault, users=..., sites=..., extra=...)`` returns (output folder, finished process
    with its stdout and stderr).
    """

    def run(fault: str, *, users: int, sites: int, extra: str) -> tuple[Path, Any]:
        app = _hostile_copy(tmp_path / "app")
        out = tmp_path / "out"
        over = (
            f'data.dataset="synthetic" data.synthetic-users={users} data.synthetic-items=80 '
            f'model.backbone="{tiny_backbone}" model.cache-dir="{cache_dir}" '
            f'data.num-sites={sites} dp.accountant="rdp" {extra}'
        )
        argv = ["--out", str(out), "--num-supernodes", str(sites), "--run-config", over]
        cmd, env = federated_command(argv)
        env[FAULT_ENV] = fault
        proc = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)  # fmt: skip
        return out, proc

    return run


def test_a_nan_update_is_dropped_in_a_real_flwr_run(hostile_run: HostileRun) -> None:
    # partition 0 of 4 poisons every training reply
    out, proc = hostile_run("nan:0.25", users=60, sites=4, extra="fed.rounds=2 fed.min-clients=3")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    rows = [h for h in results["history"] if h["round"] >= 1]
    assert [h["round"] for h in rows] == [1, 2]
    dropped_nodes = set()
    for row in rows:
        dropped = {c["node"]: c["dropped"] for c in row["clients"] if "dropped" in c}
        assert len(dropped) == 1, row["clients"]
        assert "non-finite values" in next(iter(dropped.values()))
        assert row["n_aggregated"] == 3
        dropped_nodes |= set(dropped)
    assert len(dropped_nodes) == 1  # the same (partition 0) node, every round
    flwr_log = (out / "flwr.log").read_text()
    assert "dropping reply from node" in flwr_log and "non-finite values" in flwr_log


def test_a_run_without_its_planned_rounds_fails_loudly(hostile_run: HostileRun) -> None:
    # Every site raises: round 0 has no usable reply. results.json says how far the run got,
    # the ServerApp raises, Flower marks the run failed and the wrapper exits non-zero
    # naming the stop (it used to be "finished:completed" with exit 0).
    out, proc = hostile_run("raise:1.0", users=40, sites=2, extra="fed.rounds=1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "stopped at round 0: 0 usable replies of 2" in proc.stderr
    assert "failed" in proc.stderr  # Flower's own run status
    assert json.loads((out / "results.json").read_text())["status"].startswith("stopped")
