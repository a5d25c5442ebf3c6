"""Round 0's co-occurrence step through the real round loop and ClientApps (in process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .inproc import federate


def test_sites_release_the_cooc_matrix_after_the_prior_and_spend_it(
    run_config: dict[str, Any], server_identity: None
) -> None:
    cfg = {**run_config, "fed.rounds": 1, "model.cooc-items": 20}
    results, grid = federate(cfg, ["", "", ""])
    assert results["status"] == "completed"
    zero = results["history"][0]
    assert zero["round"] == 0
    stages = [c.get("stage", "prior") for c in zero["clients"]]
    assert stages == ["prior"] * 3 + ["cooc"] * 3  # every node, the prior first
    assert not [c for c in zero["clients"] if "dropped" in c]
    out = Path(cfg["fed.out-dir"])
    for ledger in sorted((out / "ledgers").glob("*.json")):
        kinds = [e["kind"] for e in json.loads(ledger.read_text())["rounds"]]
        assert kinds.count("cooc") == 1 and kinds.count("prior") == 1, ledger
    eps = [c["epsilon"] for c in results["history"][-1]["clients"] if "epsilon" in c]
    assert eps and max(eps) <= cfg["dp.epsilon"] * (1 + 1e-6)
    assert results["final_adapter"]  # the run delivered its adapter (with the summed matrix)


def test_no_two_releases_of_a_site_share_a_noise_stream(
    run_config: dict[str, Any], server_identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under the reproducible switch a (site, round, stream) triple fixes the noise: two
    # releases on one triple would share noise (e.g. round 0's noised evaluation and the
    # co-occurrence matrix), and one could be subtracted with the other.
    import client.evaluation
    import client.site_round

    seen: list[tuple[str, int, int]] = []
    real = client.site_round.round_seed

    def record(site: Any, server_round: int, *, stream: int) -> int:
        seen.append((site.name, server_round, stream))
        return real(site, server_round, stream=stream)

    monkeypatch.setattr(client.site_round, "round_seed", record)
    monkeypatch.setattr(client.evaluation, "round_seed", record)
    cfg = {**run_config, "fed.rounds": 1, "model.cooc-items": 20, "dp.reproducible-noise": True,
           "fed.server-data": False}  # fmt: skip
    results, _ = federate(cfg, ["", ""])
    assert results["status"] == "completed"
    round0 = [s for s in seen if s[1] == 0]
    assert len({s[2] for s in round0}) >= 3  # prior, co-occurrence, evaluation
    assert len(seen) == len(set(seen)), sorted(seen)
