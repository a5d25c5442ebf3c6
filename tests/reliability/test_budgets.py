"""Budgets: a site's epsilon ledger across process restarts, concurrent writers, corruption."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.privacy.accounting import PrivacyError, epsilon_of
from common.privacy.ledger import Ledger

from . import spend
from .conftest import server_log
from .inproc import FIRST_NODE, federate
from .procs import ROOT


def _spend_in_fresh_process(config_file: Path, rnd: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.reliability.spend", str(config_file), str(rnd)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_budget_holds_across_process_restarts(
    run_config: dict[str, Any], tmp_path: Path
) -> None:
    # The budget is planned for the prior and 2 rounds: round 0 (the prior, in this process)
    # and rounds 1 and 2 (each in a fresh process) spend it; round 3 must be declined, and a
    # restart that asks for a larger epsilon must not get a fresh budget.
    cfg = {**run_config, "fed.rounds": 2, "dp.accountant": "rdp", "dp.epsilon": 4.0}
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(cfg))
    ledger = Path(cfg["fed.out-dir"]) / "ledgers" / "client-0.json"
    assert spend.one_round(cfg, 0)["declined"] == 0

    spent = []
    for rnd in (1, 2, 3):
        proc = _spend_in_fresh_process(config_file, rnd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
        on_disk = json.loads(ledger.read_text())
        assert on_disk["epsilon"] <= 4.0 * (1 + 1e-6)
        spent.append((metrics["declined"], on_disk["epsilon"]))
    (d1, e1), (d2, e2), (d3, e3) = spent
    assert (d1, d2, d3) == (0, 0, 1)
    assert 0 < e1 < e2 == e3 <= 4.0 * (1 + 1e-6)
    assert {e["round"] for e in json.loads(ledger.read_text())["rounds"]} == {0, 1, 2}

    # A restart asking for more than the site's own cap (max-epsilon, default 10; a run config
    # cannot raise it) is declined and spends nothing (this process plays it: a new site
    # reads the same file).
    before = ledger.read_bytes()
    assert spend.one_round({**cfg, "dp.epsilon": 12.0}, 3)["declined"] == 1
    assert ledger.read_bytes() == before


# ---------------------------------------------------------------- two writers, one ledger

ATTEMPTS = 12  # per process (each attempt composes the whole ledger: keep it short)
EVENT = (1.0, 0.01, 10)
ALLOWED = 16  # the budget admits this many events in total, fewer than 2 * ATTEMPTS


@pytest.fixture(scope="module")
def two_writers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, list[list[int]]]:
    """Two processes spend on one ledger at once; (path, budget, rounds each recorded)."""
    path = tmp_path_factory.mktemp("ledger") / "site.json"
    budget = epsilon_of([EVENT] * ALLOWED, delta=1e-5, accountant="rdp")
    ctx = mp.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(2) as pool:
        jobs = [
            pool.apply_async(spend.writer, (str(path), name, ATTEMPTS, budget, EVENT, start))
            for name in ("a", "b")
        ]
        start.set()
        done = [job.get(timeout=600) for job in jobs]
    return path, budget, done


def test_concurrent_writers_leave_a_valid_ledger(
    two_writers: tuple[Path, float, list[list[int]]],
) -> None:
    path, budget, _ = two_writers
    json.loads(path.read_text())
    Ledger.open(path, budget_epsilon=budget, delta=1e-5, accountant="rdp")
    assert not list(path.parent.glob(".ledger-*"))  # no temporary file left behind


def test_concurrent_writers_lose_no_entry(two_writers: tuple[Path, float, list[list[int]]]) -> None:
    path, _, (a, b) = two_writers
    kept = {(r["kind"], r["round"]) for r in json.loads(path.read_text())["rounds"]}
    recorded = {("a", i) for i in a} | {("b", i) for i in b}
    assert kept == recorded, f"{len(recorded - kept)} of {len(recorded)} entries lost"


def test_concurrent_writers_never_overspend(
    two_writers: tuple[Path, float, list[list[int]]],
) -> None:
    _, budget, (a, b) = two_writers
    spent = epsilon_of([EVENT] * (len(a) + len(b)), delta=1e-5, accountant="rdp")
    assert len(a) + len(b) <= ALLOWED and spent <= budget * (1 + 1e-6), (len(a), len(b))


# ---------------------------------------------------------------- corrupt ledgers

FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def good_ledger(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a valid two-round ledger, as `Ledger.record` writes it."""
    path = tmp_path_factory.mktemp("good") / "site.json"
    led = Ledger(8.0, 1e-5, "rdp", [], path)
    led.record(1, "train", [(1.1, 0.1, 20), (2.0, 1.0, 1)])
    led.record(2, "train", [(1.1, 0.1, 20)])
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_a_truncated_or_garbled_ledger_refuses_and_stays_untouched(
    tmp_path_factory: pytest.TempPathFactory, good_ledger: bytes, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("corrupt") / "site.json"
    good = good_ledger
    cut = data.draw(st.integers(0, len(good.rstrip()) - 1), label="truncate at")
    junk = data.draw(st.binary(max_size=8), label="then append")
    bad = good[:cut] + junk
    if junk:  # a strict prefix plus junk may by chance parse: only keep what does not
        try:
            json.loads(bad)
            return
        except (ValueError, UnicodeDecodeError):
            pass
    path.write_bytes(bad)
    with pytest.raises(PrivacyError, match="corrupt") as info:
        Ledger.open(path, budget_epsilon=8.0, delta=1e-5, accountant="rdp")
    assert str(path) in str(info.value)
    assert path.read_bytes() == bad


@pytest.mark.usefixtures("server_identity")
def test_a_corrupt_ledger_stops_only_that_site(run_config: dict[str, Any]) -> None:
    cfg = {**run_config, "fed.rounds": 1, "dp.accountant": "rdp", "fed.min-clients": 2}
    ledger = Path(cfg["fed.out-dir"]) / "ledgers" / "client-1.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"budget_epsilon": 8.0, "delta": 0.01, "rounds": [{"round": 1, "si')
    before = ledger.read_bytes()

    with server_log() as log:
        results, _ = federate(cfg, ["", "", ""])

    assert results["status"] == "completed"
    row = results["history"][0]  # the first round the loop ran (0 if it collects the prior)
    assert row["n_aggregated"] == 2
    dropped = {c["node"]: c["dropped"] for c in row["clients"] if "dropped" in c}
    assert list(dropped) == [FIRST_NODE + 1]
    assert "PrivacyError" in dropped[FIRST_NODE + 1] and str(ledger) in dropped[FIRST_NODE + 1]
    assert any(f"dropping reply from node {FIRST_NODE + 1}: error:" in m for m in log)
    assert ledger.read_bytes() == before  # never reset or rewritten
