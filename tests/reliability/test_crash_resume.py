"""Crashes: the server dies (a real SIGKILL of a real `flwr run`, or, for exact timing, an
in-process crash of the round loop) and is started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config.parse import parse_overrides
from simulations.federated import stop_superlink

from .conftest import clear_site_caches, task_identity, training_rows
from .inproc import GridCrash, federate
from .procs import ROOT, federated_command, kill_all, serverapp_pid

# ---------------------------------------------------------------- in-process, exact timing


Entries = dict[str, list[dict[str, Any]]]


def _ledgers(out: Path) -> Entries:
    """Each site's ledger entries (one per accountant event; round 1 adds the prior's)."""
    return {
        f.stem: json.loads(f.read_text())["rounds"]
        for f in sorted((out / "ledgers").glob("*.json"))
    }


def _crash_then_resume(
    run_config: dict[str, Any], kind: str, rnd: int, phase: str
) -> tuple[dict[str, Any], Entries, dict[str, Any], Path]:
    """Crash the loop at (kind, round, phase), restart with fresh clients.

    Returns (checkpoint meta and ledgers at the crash, final results, out).
    """
    cfg = {**run_config, "fed.rounds": 3, "dp.accountant": "rdp"}
    out = Path(cfg["fed.out-dir"])
    with pytest.raises(GridCrash):
        federate(cfg, ["", "", ""], crash=lambda k, r, p: (k, r, p) == (kind, rnd, phase))
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    before = _ledgers(out)
    clear_site_caches()  # the client processes restart too
    results, _ = federate(cfg, ["", "", ""])
    return meta, before, results, out


@pytest.mark.usefixtures("server_identity")
def test_a_crash_between_rounds_resumes_without_repeating_or_double_counting(
    run_config: dict[str, Any],
) -> None:
    meta, before, results, out = _crash_then_resume(run_config, "train", 2, "before")
    assert meta["round"] == 1
    assert results["status"] == "completed"
    assert [h["round"] for h in training_rows(results)] == [1, 2, 3]
    # Round 1 (and a prior round 0, if any) taken from the checkpoint untouched.
    assert results["history"][: len(meta["history"])] == meta["history"]
    after = _ledgers(out)
    assert len(after) == 3 and set(after) == set(before)
    for site, entries in after.items():
        # What was spent before the crash is kept as it was; rounds 2 and 3 are new and are
        # charged once each, like any round without the prior.
        assert entries[: len(before[site])] == before[site], site
        assert max(e["round"] for e in before[site]) == 1, site
        new = Counter(e["round"] for e in entries[len(before[site]) :])
        assert set(new) == {2, 3} and new[2] == new[3] >= 1, (site, new)
    for f in (out / "ledgers").glob("*.json"):
        led = json.loads(f.read_text())
        assert led["epsilon"] <= led["budget_epsilon"] * (1 + 1e-6)


@pytest.mark.usefixtures("server_identity")
def test_a_crash_after_the_clients_trained_resumes_and_finishes(
    run_config: dict[str, Any],
) -> None:
    meta, before, results, out = _crash_then_resume(run_config, "train", 2, "after")
    assert meta["round"] == 1
    assert max(e["round"] for e in before["client-0"]) == 2  # round 2 was charged
    assert results["status"] == "completed", results["status"]
    assert [h["round"] for h in training_rows(results)] == [1, 2, 3]
    for site, entries in _ledgers(out).items():
        # Round 2 really ran twice (it may be charged twice); rounds 1 and 3 are charged once.
        assert entries[: len(before[site])] == before[site], site
        count = Counter(e["round"] for e in entries)
        assert count[1] == Counter(e["round"] for e in before[site])[1], (site, count)
        assert count[3] >= 1 and count[3] <= count[2], (site, count)
    for f in (out / "ledgers").glob("*.json"):
        led = json.loads(f.read_text())
        assert led["epsilon"] <= led["budget_epsilon"] * (1 + 1e-6)


# ---------------------------------------------------------------- a real SIGKILL

RUN_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def fed_args(tiny_backbone: Path, cache_dir: Path) -> list[str]:
    """Tiny federated run, no DP (so the final state can be compared exactly)."""
    over = (
        f'data.dataset="synthetic" data.synthetic-users=60 data.synthetic-items=80 '
        f'model.backbone="{tiny_backbone}" model.cache-dir="{cache_dir}" '
        'fed.rounds=3 dp.mode="none" data.num-sites=2'
    )
    return ["--num-supernodes", "2", "--run-config", over]


def _final_state(out: Path) -> dict[str, np.ndarray]:
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    with np.load(out / "checkpoint" / meta["state"]) as z:
        return {k: z[k] for k in z.files}


def _run_to_end(out: Path, fed_args: list[str], log: Path) -> dict[str, Any]:
    cmd, env = federated_command(["--out", str(out), *fed_args])
    with open(log, "w") as fh:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT
        )
    assert proc.returncode == 0, log.read_text()[-3000:]
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


def _kill_after_round_one(out: Path, fed_args: list[str], log: Path) -> dict[str, Any]:
    """Start the run; SIGKILL its ServerApp once round 1 is checkpointed; return the meta.

    Then the whole machine "dies": the command's process group is killed, the SuperLink is
    stopped with `stop_superlink`, and the Ray processes the ServerApp left are killed.
    """
    flwr_home = out / ".flwr-home"
    meta_f = out / "checkpoint" / "meta.json"
    cmd, env = federated_command(["--out", str(out), *fed_args])
    family: set[int] = set()
    with open(log, "w") as fh:
        first = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + RUN_TIMEOUT
            while not (meta_f.exists() and json.loads(meta_f.read_text())["round"] >= 1):
                assert first.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "round 1 never finished"
                time.sleep(0.05)
            target, family = serverapp_pid(flwr_home)
            assert target is not None, "no flwr-simulation process under the run's SuperLink"
            os.kill(target, signal.SIGKILL)
            meta: dict[str, Any] = json.loads(meta_f.read_text())
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)  # the command and its `flwr run`
            first.wait()
            stop_superlink(flwr_home)
            kill_all(family, grace=1.0)
    return meta


@dataclass
class KilledRun:
    """A run killed after round 1 and restarted, and an uninterrupted reference run."""

    tmp: Path
    meta: dict[str, Any]  # checkpoint meta.json right after the kill
    resumed: dict[str, Any]  # results.json of the restarted run
    reference: dict[str, Any]  # results.json of the uninterrupted run

    @property
    def out(self) -> Path:
        return self.tmp / "killed"

    @property
    def ref(self) -> Path:
        return self.tmp / "reference"


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory, fed_args: list[str]) -> KilledRun:
    tmp = tmp_path_factory.mktemp("sigkill")
    meta = _kill_after_round_one(tmp / "killed", fed_args, tmp / "first.log")
    resumed = _run_to_end(tmp / "killed", fed_args, tmp / "second.log")
    reference = _uninterrupted(tmp / "reference", fed_args)
    return KilledRun(tmp, meta, resumed, reference)


def _uninterrupted(out: Path, fed_args: list[str]) -> dict[str, Any]:
    """The same 3 rounds without a kill, through the same round loop and ClientApp in-process.

    `InProcessGrid` serves the nodes in this process; a real uninterrupted `flwr run` of this
    config was checked to give a bit-identical final state, and this saves a minute of CI.
    """
    over = dict(parse_overrides(fed_args[fed_args.index("--run-config") + 1]))
    with task_identity():
        clear_site_caches()
        try:
            results, _ = federate({**over, "fed.out-dir": str(out)}, ["", ""])
        finally:
            clear_site_caches()
    return results


def test_sigkill_of_the_server_resumes_from_the_last_finished_round(killed_run: KilledRun) -> None:
    meta, res, out = killed_run.meta, killed_run.resumed, killed_run.out
    done = meta["round"]
    assert done < 3, "the run finished before the kill landed"
    assert res["status"] == "completed"
    assert res["flwr_status"]["status"] == "finished:completed"
    assert [h["round"] for h in training_rows(res)] == [1, 2, 3]
    # Rounds up to `done` came from the checkpoint untouched (same wall_s): none was repeated.
    assert res["history"][: len(meta["history"])] == meta["history"]
    first = next(h for h in res["history"] if h["round"] == 1)
    assert first["wall_s"] == next(h for h in meta["history"] if h["round"] == 1)["wall_s"]
    assert serverapp_pid(out / ".flwr-home") == (None, set())


def test_the_resumed_adapter_matches_an_uninterrupted_run(killed_run: KilledRun) -> None:
    assert [h["round"] for h in training_rows(killed_run.reference)] == [1, 2, 3]
    resumed, straight = _final_state(killed_run.out), _final_state(killed_run.ref)
    assert set(resumed) == set(straight)
    for name in straight:
        np.testing.assert_allclose(
            resumed[name], straight[name], rtol=1e-5, atol=1e-7, err_msg=name
        )
    assert killed_run.resumed["metrics"]["hr@10"] == pytest.approx(
        killed_run.reference["metrics"]["hr@10"]
    )


def test_no_pem_block_in_any_log_of_the_runs(killed_run: KilledRun) -> None:
    # A local simulation has no TLS material; no PEM block may appear in its logs either way
    # (the TLS + node-auth deployment is checked by tests/deploy/test_deployment.py).
    logs = list(killed_run.tmp.glob("*.log")) + list(killed_run.tmp.glob("*/flwr.log"))
    logs += list(killed_run.tmp.glob("*/.flwr-home/**/*.log"))
    assert len(logs) >= 4
    for log in logs:
        assert "-----BEGIN" not in log.read_text(errors="replace"), log


def test_the_resume_is_announced_in_the_run_log(killed_run: KilledRun) -> None:
    done = killed_run.meta["round"]
    log = (killed_run.out / "flwr.log").read_text()
    assert f"resuming from checkpoint: rounds 1..{done} already done" in log
