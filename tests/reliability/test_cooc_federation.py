"""Round 0's co-occurrence step through the real round loop and ClientApps (in process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
