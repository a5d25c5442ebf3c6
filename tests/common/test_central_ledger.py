"""common.privacy.central_ledger.CentralLedger: epsilon across runs, persisted safely."""

from __future__ import annotations

import json
import math
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from common.privacy.accounting import PrivacyError
from common.privacy.central import Release, central_epsilon, composed_epsilon
from common.privacy.central_ledger import CentralEntry, CentralLedger

DELTA = 1e-5
N = 100


def flower_epsilon(releases: list[Release], n: int, delta: float) -> float:
    """Reference: Flower's own `RdpAccountant`, one event at a time (one population size)."""
    acc = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=n,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
        )
    )
    for mult, m in releases:
        acc.compose(GaussianPrivacyEvent(noise_multiplier=mult, sample_size=m, population_size=n))
    return float(acc.get_epsilon(delta))


def slow_mixed_epsilon(events: list[tuple[float, int, int]], delta: float) -> float:
    """Reference: RDP composition written out, summing each event's curve at its own q = m/n.

    Every event's RDP curve comes from a fresh single-event dp-accounting computation at its
    own sampling ratio; composition is the sum of the curves; epsilon is the usual RDP-to-DP
    conversion. No caching, no grouping.
    """
    orders = dp_rdp.DEFAULT_RDP_ORDERS
    total = np.zeros(len(orders))
    for mult, m, n in events:
        total = total + dp_rdp._compute_rdp_sample_wor_gaussian(m / n, mult, orders)
    return float(dp_rdp.compute_epsilon(orders, total, delta)[0])


RUN_A: list[Release] = [(1.0, 10)] * 3
RUN_B: list[Release] = [(1.5, 20)] * 2


def fill(ledger: CentralLedger) -> None:
    for i, rel in enumerate(RUN_A, start=1):
        assert ledger.record("run-a", i, rel, n_clients=N)
    for i, rel in enumerate(RUN_B, start=1):
        assert ledger.record("run-b", i, rel, n_clients=N)


def test_runs_compose_into_more_than_either_and_match_central_epsilon(tmp_path: Path) -> None:
    ledger = CentralLedger.open(tmp_path / "central.json")
    fill(ledger)
    total = ledger.epsilon(delta=DELTA)
    eps_a = ledger.run_epsilon("run-a", delta=DELTA)
    eps_b = ledger.run_epsilon("run-b", delta=DELTA)
    assert total > eps_a > 0 and total > eps_b > 0
    assert total == central_epsilon([*RUN_A, *RUN_B], n_clients=N, delta=DELTA)
    assert eps_a == central_epsilon(RUN_A, n_clients=N, delta=DELTA)
    assert eps_b == central_epsilon(RUN_B, n_clients=N, delta=DELTA)
    assert ledger.run_epsilon("never-ran", delta=DELTA) == 0.0
    # Round numbers restart per run: round 1 of both runs are two entries.
    assert ledger.has_round("run-a", 1) and ledger.has_round("run-b", 1)
    assert len(ledger.entries) == 5


@pytest.mark.parametrize(
    ("releases", "n"),
    [([(1.0, 4)] * 3, 4), ([(2.0, 10), (0.5, 10), (1.3, 7)], 100), ([(0.7, 1), (0.9, 50)], 50)],
)
def test_central_epsilon_still_equals_flowers_accountant(releases: list[Release], n: int) -> None:
    # The generalised composition is bit-identical to Flower's RdpAccountant for one n.
    assert central_epsilon(releases, n_clients=n, delta=DELTA) == flower_epsilon(releases, n, DELTA)


def test_persistence_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "central.json"
    first = CentralLedger.open(path)
    fill(first)
    again = CentralLedger.open(path)
    assert again.entries == first.entries
    assert again.epsilon(delta=DELTA) == first.epsilon(delta=DELTA)
    raw = json.loads(path.read_text())
    assert raw["relation"] == "replace-one" and raw["unit"] == "client"
    assert raw["entries"][0] == {
        "run": "run-a", "round": 1, "multiplier": 1.0, "sampled": 10, "n_clients": N
    }  # fmt: skip
    # A later run appends to what is on disk; no temp files are left behind.
    assert again.record("run-c", 1, (0.8, 5), n_clients=50)
    third = CentralLedger.open(path)
    assert len(third.entries) == 6 and third.epsilon(delta=DELTA) > first.epsilon(delta=DELTA)
    assert sorted(p.name for p in path.parent.iterdir()) == ["central.json", "central.json.lock"]


def test_in_memory_ledger_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ledger = CentralLedger.open(None)
    fill(ledger)
    assert ledger.epsilon(delta=DELTA) == central_epsilon([*RUN_A, *RUN_B], n_clients=N,
                                                          delta=DELTA)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


GOOD_ENTRY = {"run": "r", "round": 1, "multiplier": 1.0, "sampled": 2, "n_clients": 4}


def _ledger_json(*entries: dict[str, object], relation: str = "replace-one") -> str:
    return json.dumps({"relation": relation, "entries": list(entries)})


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        _ledger_json(GOOD_ENTRY)[:-5],  # truncated
        json.dumps([GOOD_ENTRY]),  # not an object
        json.dumps({"relation": "replace-one"}),  # no entries
        _ledger_json(GOOD_ENTRY, relation="add-or-remove-one"),
        _ledger_json({**GOOD_ENTRY, "round": "1"}),
        _ledger_json({**GOOD_ENTRY, "round": True}),
        _ledger_json({**GOOD_ENTRY, "multiplier": -1.0}),
        _ledger_json({**GOOD_ENTRY, "multiplier": "NaN"}),
        '{"relation": "replace-one", "entries": [{"run": "r", "round": 1, "multiplier": NaN, '
        '"sampled": 2, "n_clients": 4}]}',
        _ledger_json({**GOOD_ENTRY, "sampled": 5}),  # m > n
        _ledger_json({**GOOD_ENTRY, "sampled": 2.0}),
        _ledger_json({k: v for k, v in GOOD_ENTRY.items() if k != "n_clients"}),
        _ledger_json(GOOD_ENTRY, GOOD_ENTRY),  # the same (run, round) twice
        _ledger_json(GOOD_ENTRY, "junk"),  # type: ignore[arg-type]
    ],
)
def test_a_corrupt_file_is_refused_and_left_untouched(tmp_path: Path, content: str) -> None:
    path = tmp_path / "central.json"
    path.write_text(content)
    with pytest.raises(PrivacyError, match=str(path)):
        CentralLedger.open(path)
    assert path.read_text() == content


def test_a_file_corrupted_after_open_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "central.json"
    ledger = CentralLedger.open(path)
    ledger.record("r", 1, (1.0, 2), n_clients=4)
    path.write_text("{garbage")
    with pytest.raises(PrivacyError, match=str(path)):
        ledger.record("r", 2, (1.0, 2), n_clients=4)
    assert path.read_text() == "{garbage"


def test_a_redelivered_entry_is_not_double_counted(tmp_path: Path) -> None:
    path = tmp_path / "central.json"
    ledger = CentralLedger.open(path)
    assert ledger.record("r", 1, (1.0, 10), n_clients=N)
    once = ledger.epsilon(delta=DELTA)
    before = path.read_bytes()
    assert not ledger.record("r", 1, (1.0, 10), n_clients=N)  # same process, retried
    resumed = CentralLedger.open(path)  # a restarted server replaying round 1
    assert not resumed.record("r", 1, (1.0, 10), n_clients=N)
    assert not resumed.record("r", 1, (np.float64(1.0), np.int64(10)), n_clients=np.int64(N))  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert len(resumed.entries) == 1 and resumed.epsilon(delta=DELTA) == once
    assert once == central_epsilon([(1.0, 10)], n_clients=N, delta=DELTA)


@pytest.mark.parametrize(
    ("release", "n"), [((1.01, 10), N), ((1.0, 9), N), ((1.0, 10), N + 1)]
)  # fmt: skip
def test_a_conflicting_entry_is_refused(tmp_path: Path, release: Release, n: int) -> None:
    path = tmp_path / "central.json"
    ledger = CentralLedger.open(path)
    ledger.record("r", 1, (1.0, 10), n_clients=N)
    before = path.read_bytes()
    with pytest.raises(PrivacyError, match="already in the central ledger"):
        ledger.record("r", 1, release, n_clients=n)
    with pytest.raises(PrivacyError, match="already in the central ledger"):
        CentralLedger.open(path).record("r", 1, release, n_clients=n)
    assert path.read_bytes() == before
    assert ledger.entries == [CentralEntry("r", 1, 1.0, 10, N)]


@pytest.mark.parametrize(
    ("release", "n"),
    [((1.0, 0), 10), ((1.0, 11), 10), ((-1.0, 5), 10), ((math.nan, 5), 10),
     ((math.inf, 5), 10), ((1.0, 5.0), 10), ((1.0, True), 10)],
)  # fmt: skip
def test_an_invalid_release_is_refused(release: Release, n: int) -> None:
    ledger = CentralLedger.open(None)
    with pytest.raises(PrivacyError, match="cannot record"):
        ledger.record("r", 1, release, n_clients=n)
    assert ledger.entries == []


def test_a_round_without_noise_makes_epsilon_infinite() -> None:
    ledger = CentralLedger.open(None)
    ledger.record("r", 1, (1.0, 5), n_clients=10)
    ledger.record("s", 1, (0.0, 5), n_clients=10)
    assert ledger.epsilon(delta=DELTA) == math.inf
    assert ledger.run_epsilon("s", delta=DELTA) == math.inf
    assert math.isfinite(ledger.run_epsilon("r", delta=DELTA))


MIXED = [  # (multiplier, m, n): three runs over different federations
    (1.0, 10, 50), (1.0, 10, 50), (1.2, 10, 200), (0.8, 25, 100), (1.2, 10, 200), (1.0, 10, 50)
]  # fmt: skip


def test_mixed_population_sizes_use_each_events_own_q() -> None:
    ledger = CentralLedger.open(None)
    for i, (mult, m, n) in enumerate(MIXED, start=1):
        ledger.record(f"run-n{n}", i, (mult, m), n_clients=n)
    got = ledger.epsilon(delta=DELTA)
    assert got == pytest.approx(slow_mixed_epsilon(MIXED, DELTA), rel=1e-12)
    # Composition does not depend on the order of the events.
    shuffled = random.Random(0).sample(MIXED, len(MIXED))
    assert composed_epsilon(shuffled, delta=DELTA) == pytest.approx(got, rel=1e-12)
    # Each run alone is what Flower's accountant says for its (single) population.
    for n in (50, 100, 200):
        mine: list[Release] = [(mult, m) for mult, m, nn in MIXED if nn == n]
        assert ledger.run_epsilon(f"run-n{n}", delta=DELTA) == pytest.approx(
            flower_epsilon(mine, n, DELTA), rel=1e-12
        )
    # A smaller population amplifies less: pretending all events came from the smallest
    # (largest) population over- (under-)states epsilon; a single-n shortcut would be wrong.
    as_if = [
        central_epsilon([(mult, m) for mult, m, _ in MIXED], n_clients=n, delta=DELTA)
        for n in (25, 200)
    ]
    assert as_if[0] > got > as_if[1]


def test_full_participation_mixed_populations_compose_as_one_gaussian() -> None:
    # With m = n there is no amplification: Gaussians with multipliers s_i compose exactly
    # (in RDP) into one with multiplier (sum s_i^-2)^-1/2, whatever each population was.
    events = [(1.0, 4, 4), (2.0, 9, 9), (1.5, 30, 30)]
    ledger = CentralLedger.open(None)
    for i, (mult, m, n) in enumerate(events, start=1):
        ledger.record("r", i, (mult, m), n_clients=n)
    s_eff = sum(s**-2 for s, _, _ in events) ** -0.5
    assert ledger.epsilon(delta=DELTA) == pytest.approx(
        flower_epsilon([(s_eff, 7)], 7, DELTA), rel=1e-9
    )


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "central.json"
    ledgers = [CentralLedger.open(path) for _ in range(8)]  # all opened before any write
    threads = [
        threading.Thread(target=lg.record, args=("r", i, (1.0, 2)), kwargs={"n_clients": 4})
        for i, lg in enumerate(ledgers, start=1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.round for e in CentralLedger.open(path).entries) == list(range(1, 9))


def test_delta_is_validated() -> None:
    ledger = CentralLedger.open(None)
    ledger.record("r", 1, (1.0, 2), n_clients=4)
    for bad in (0.0, 1.0, math.nan):
        with pytest.raises(ValueError, match="delta"):
            ledger.epsilon(delta=bad)
