"""Central DP-FedAvg in the real round loop: accounting follows what was actually released."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from client.hostile import FAULT_ENV
from common.privacy.accounting import PrivacyError, default_delta
from common.privacy.central import central_epsilon, round_release

from .conftest import server_log
from .inproc import FROM_ENV, federate


def _central(run_config: dict[str, Any]) -> dict[str, Any]:
    return {**run_config, "dp.mode": "central", "dp.epsilon": 8.0, "data.partitioning": "user",
            "data.synthetic-users": 12, "fed.min-clients": 2}  # fmt: skip


@pytest.mark.usefixtures("server_identity")
def test_central_dp_run_ends_within_budget_and_epsilon_grows_per_round(
    run_config: dict[str, Any],
) -> None:
    results, _ = federate(_central(run_config), [""] * 12)
    assert results["status"] == "completed"
    rows = results["history"]
    assert [h["round"] for h in rows] == [1, 2]  # no round 0: no prior under central DP
    eps = [h["central_epsilon"] for h in rows]
    assert 0 < eps[0] < eps[1] <= 8.0
    privacy = results["privacy"]
    assert privacy["epsilon"] == eps[-1] and privacy["neighbouring"] == "replace-one"
    sigma, n = privacy["noise_multiplier"], 12
    full = round_release(sigma, sampled=n, aggregated=n)
    assert rows[0]["central_release"] == list(full)  # type: ignore[arg-type]
    delta = default_delta(n, 1e-5)
    assert central_epsilon([full] * 2, n_clients=n, delta=delta) == pytest.approx(eps[-1])  # type: ignore[list-item]


@pytest.mark.usefixtures("server_identity")
def test_rounds_with_crashed_clients_get_their_noise_topped_up(
    run_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Half the clients raise in every round: Flower's noise sigma*C/m on a mean over k = m/2
    # would be half as strong as planned; the server adds the missing noise, so every round
    # still counts as multiplier sigma/2 and the run ends within budget.
    monkeypatch.setenv(FAULT_ENV, "raise:0.5")
    with server_log() as log:
        results, _ = federate(_central(run_config), [FROM_ENV] * 12)
    assert results["status"] == "completed"
    sigma, n = results["privacy"]["noise_multiplier"], 12
    assert all(h["n_aggregated"] == 6 for h in results["history"])
    releases = [tuple(h["central_release"]) for h in results["history"]]
    assert releases == [(pytest.approx(sigma / 2), 12)] * 2
    assert sum("6 of 12 sampled updates aggregated; central DP noise topped up" in m
               for m in log) == 2  # fmt: skip
    assert results["privacy"]["epsilon"] == pytest.approx(
        central_epsilon(releases, n_clients=n, delta=default_delta(n, 1e-5))  # type: ignore[arg-type]
    )
    assert results["privacy"]["epsilon"] <= 8.0


@pytest.mark.usefixtures("server_identity")
def test_central_epsilon_is_carried_across_runs_and_capped(
    run_config: dict[str, Any], tmp_path: Path
) -> None:
    # Two runs (different configs = different run keys) share one server ledger: the second
    # reports its own epsilon and the composition of both; a third that would pass
    # dp.central-max-epsilon is refused before it releases anything.
    ledger = tmp_path / "server" / "central.json"
    base = {**_central(run_config), "dp.epsilon": 3.0, "dp.central-ledger": str(ledger)}
    first, _ = federate({**base, "fed.out-dir": str(tmp_path / "a")}, [""] * 12)
    second, _ = federate({**base, "fed.out-dir": str(tmp_path / "b"), "fed.rounds": 1}, [""] * 12)
    n = 12
    delta = default_delta(n, 1e-5)
    releases = [tuple(h["central_release"]) for r in (first, second) for h in r["history"]]
    p1, p2 = first["privacy"], second["privacy"]
    assert p1["ledger_epsilon"] == pytest.approx(p1["epsilon"]) and p1["epsilon"] <= 3.0
    assert p2["epsilon"] <= 3.0 and p2["ledger"] == str(ledger)
    assert p2["ledger_epsilon"] > max(p1["epsilon"], p2["epsilon"])
    assert p2["ledger_epsilon"] == pytest.approx(
        central_epsilon(releases, n_clients=n, delta=delta)  # type: ignore[arg-type]
    )
    entries = json.loads(ledger.read_text())["entries"]
    assert len(entries) == 3 and len({e["run"] for e in entries}) == 2
    cap = {**base, "fed.out-dir": str(tmp_path / "c"), "fed.rounds": 1,
           "dp.central-max-epsilon": p2["ledger_epsilon"] + 0.5}  # fmt: skip
    with pytest.raises(PrivacyError, match="dp.central-max-epsilon"):
        federate(cap, [""] * 12)
    assert len(json.loads(ledger.read_text())["entries"]) == 3  # nothing more released
