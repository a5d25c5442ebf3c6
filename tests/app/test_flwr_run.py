"""End to end: `flwr run .` through simulations.federated on a tiny BERT and synthetic data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import AutoModel

from simulations.federated import run

pytestmark = pytest.mark.slow


@pytest.fixture
def overrides(tiny_backbone: Path, model_cache: Path) -> dict[str, Any]:
    return {
        "data.dataset": "synthetic",
        "data.synthetic-users": 60,
        "data.synthetic-items": 80,
        "data.num-sites": 2,
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(model_cache),
        "fed.rounds": 2,
    }


def _alive_with(text: str) -> list[str]:
    """Command lines of live processes (other than this one) that mention `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{proc.name}: {cmd}")
    return found


def _adapter_tensors(model: PeftModel) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in get_peft_model_state_dict(model).items()}


def test_two_rounds_of_local_dp_end_to_end(
    tmp_path: Path, overrides: dict[str, Any], tiny_backbone: Path
) -> None:
    out = tmp_path / "run"
    res = run(overrides, out, num_supernodes=2, quiet=True)

    assert res.status == "completed"
    assert res.flwr_status["status"] == "finished:completed"
    assert res.flwr_status["fab-name"] == "fedrec"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["config"]["fed.out-dir"] == str(out.resolve())

    history = res.history
    assert [h["round"] for h in history] == [0, 1, 2]  # round 0: the DP popularity prior
    for row in history:
        assert row["n_aggregated"] == 2
        assert all("dropped" not in c for c in row["clients"])
        assert row["eval"]["n_users"] == 60
    metrics = res.metrics
    for key in ("hr@10", "ndcg@10", "mrr", "sampled_hr@10", "sampled_ndcg@10"):
        assert 0.0 <= metrics[key] <= 1.0, key

    privacy = res.privacy.to_json()
    assert privacy["mode"] == "local"
    assert 0 < privacy["epsilon"] <= privacy["target_epsilon"] == 8.0
    assert len(privacy["per_client_epsilon"]) == 2
    for name in ("dp-popularity", "dp-ease"):  # the server's DP baselines, at the run's budget
        dp_base = res.baselines[name]
        assert dp_base["privacy"]["target_epsilon"] == pytest.approx(privacy["epsilon"])
        assert dp_base["privacy"]["epsilon"] <= privacy["epsilon"] * (1 + 1e-6)
        assert dp_base["privacy"]["delta"] == privacy["delta"]
    ledgers = sorted((out / "ledgers").glob("*.json"))
    assert len(ledgers) == 2
    for f in ledgers:
        assert json.loads(f.read_text())["epsilon"] <= 8.0
        assert {r["round"] for r in json.loads(f.read_text())["rounds"]} == {0, 1, 2}

    assert (out / "metrics.png").stat().st_size > 0
    assert (out / "checkpoint" / "state-0002.npz").exists()

    base = AutoModel.from_pretrained(tiny_backbone)
    adapter = PeftModel.from_pretrained(base, out / "adapter")
    loaded = _adapter_tensors(adapter)
    assert loaded and all("lora_" in k for k in loaded)
    with np.load(out / "checkpoint" / "state-0002.npz") as final:
        for name, value in loaded.items():
            np.testing.assert_allclose(value, final[f"lora.{name}"], err_msg=name)
    with torch.no_grad():
        ids = torch.tensor([[101, 2023, 3185, 102]])
        assert torch.isfinite(adapter(input_ids=ids).last_hidden_state).all()

    assert _alive_with(str(out / ".flwr-home")) == []

    # After the last round every site kept the final global adapter beside its ledger.
    assert [r["saved"] for r in on_disk["final_adapter"]] == [True, True]
    for label in sorted(r["label"] for r in on_disk["final_adapter"]):
        kept = out / "ledgers" / f"{label}.final-adapter"
        kept_adapter = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_backbone), kept)
        for name, value in _adapter_tensors(kept_adapter).items():
            np.testing.assert_array_equal(value, loaded[name], err_msg=f"{label}: {name}")
        assert str(out) not in (kept / "adapter_config.json").read_text()


def test_a_second_run_resumes_from_the_checkpoint(
    tmp_path: Path, overrides: dict[str, Any]
) -> None:
    out = tmp_path / "resume"
    # No local DP: a budget planned for one round would (rightly) refuse a second one.
    first = run(
        {**overrides, "dp.mode": "none", "fed.rounds": 1}, out, num_supernodes=2, quiet=True
    )
    assert first.status == "completed"
    assert [h["round"] for h in first.history] == [0, 1]
    assert _alive_with(str(out / ".flwr-home")) == []

    second = run(
        {**overrides, "dp.mode": "none", "fed.rounds": 2}, out, num_supernodes=2, quiet=True
    )
    assert second.status == "completed"
    assert second.flwr_status["status"] == "finished:completed"
    assert second.flwr_status["run-id"] != first.flwr_status["run-id"]
    assert [h["round"] for h in second.history] == [0, 1, 2]
    # Rounds 0-1 came from the checkpoint, untouched: only round 2 ran the second time.
    assert second.history[:2] == first.history
    assert second.history[1]["wall_s"] == first.history[1]["wall_s"]
    assert second.config["fed.rounds"] == 2
    assert _alive_with(str(out / ".flwr-home")) == []
