"""server.checkpoint.Checkpoint: save/reload, resumable keys, refusals that name the cause."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config.run import RunConfig
from server.checkpoint import Checkpoint

INITIAL = {
    "lora.a": np.zeros((2, 3), np.float32),
    "head.b": np.zeros(4, np.float32),
    "prior": np.zeros(5, np.float32),
}


def _state(fill: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, fill) for k, v in INITIAL.items()}


def _row(rnd: int) -> dict[str, Any]:
    return {"round": rnd, "wall_s": 1.5 * rnd, "clients": [{"node": 7}], "eval": {"hr@10": 0.1}}


def _replace(cfg: RunConfig, group: str, **values: Any) -> RunConfig:
    return dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **values)})


def test_nothing_saved_starts_at_round_one(tmp_path: Path, cfg: RunConfig) -> None:
    state, history, start = Checkpoint(tmp_path, cfg).load(INITIAL)
    assert state is INITIAL and history == [] and start == 1


def test_a_saved_round_reloads_state_history_and_next_round(tmp_path: Path, cfg: RunConfig) -> None:
    Checkpoint(tmp_path, cfg).save(1, _state(0.5), [_row(1)])
    state, history, start = Checkpoint(tmp_path, cfg).load(INITIAL)
    assert start == 2
    assert history == [_row(1)]
    assert set(state) == set(INITIAL)
    for k, v in state.items():
        np.testing.assert_array_equal(v, _state(0.5)[k])
        assert v.dtype == INITIAL[k].dtype


def test_only_the_latest_state_file_is_kept(tmp_path: Path, cfg: RunConfig) -> None:
    ckpt = Checkpoint(tmp_path, cfg)
    ckpt.save(1, _state(1.0), [_row(1)])
    ckpt.save(2, _state(2.0), [_row(1), _row(2)])
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [
        "meta.json",
        "state-0002.npz",
    ]
    state, history, start = Checkpoint(tmp_path, cfg).load(INITIAL)
    assert start == 3 and [h["round"] for h in history] == [1, 2]
    np.testing.assert_array_equal(state["prior"], _state(2.0)["prior"])


@pytest.mark.parametrize(
    ("group", "values", "key"),
    [
        ("train", {"lr": 0.1}, "train.lr"),
        ("dp", {"epsilon": 3.0}, "dp.epsilon"),
        ("fed", {"strategy": "fedprox"}, "fed.strategy"),
        ("data", {"num_sites": 3}, "data.num-sites"),
    ],
)
def test_a_different_config_is_refused_naming_the_key(
    tmp_path: Path, cfg: RunConfig, group: str, values: dict[str, Any], key: str
) -> None:
    Checkpoint(tmp_path, cfg).save(1, _state(1.0), [_row(1)])
    with pytest.raises(RuntimeError, match="different config") as info:
        Checkpoint(tmp_path, _replace(cfg, group, **values)).load(INITIAL)
    assert key in str(info.value)
    assert str(tmp_path / "checkpoint") in str(info.value)


def test_a_checkpoint_predating_a_key_resumes_only_at_its_earlier_behaviour(
    tmp_path: Path, cfg: RunConfig
) -> None:
    cfg = _replace(cfg, "data", cold_start_share=0.1)  # new items: the new-item keys act
    old = _replace(cfg, "model", new_item_rank=0)  # the behaviour before the key existed
    Checkpoint(tmp_path, old).save(1, _state(1.0), [_row(1)])
    meta = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    del meta["config"]["model.new-item-rank"], meta["config"]["train.lr-schedule"]
    (tmp_path / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    assert Checkpoint(tmp_path, old).load(INITIAL)[2] == 2
    with pytest.raises(RuntimeError, match=r"different config \(keys \['model.new-item-rank'\]"):
        Checkpoint(tmp_path, _replace(cfg, "model", new_item_rank=60)).load(INITIAL)


@pytest.mark.parametrize("cooc_items", [0, 12])
def test_keys_that_cannot_change_the_run_do_not_block_a_resume(
    tmp_path: Path, cfg: RunConfig, cooc_items: int
) -> None:
    """Without new items the new-item keys, without the release the co-occurrence keys, are
    inert (`without_inert`); with the release on, a checkpoint predating model.cooc-decay
    resumes only at its earlier behaviour (0, the window)."""
    cfg = _replace(cfg, "model", cooc_items=cooc_items)
    Checkpoint(tmp_path, cfg).save(1, _state(1.0), [_row(1)])
    meta = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    del meta["config"]["model.cooc-decay"]  # written before the key existed
    (tmp_path / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    other = _replace(cfg, "model", new_item_rank=7, cooc_decay=1.0)
    if not cooc_items:
        assert Checkpoint(tmp_path, other).load(INITIAL)[2] == 2
        return
    with pytest.raises(RuntimeError, match=r"different config \(keys \['model.cooc-decay'\]"):
        Checkpoint(tmp_path, other).load(INITIAL)
    assert Checkpoint(tmp_path, _replace(other, "model", cooc_decay=0.0)).load(INITIAL)[2] == 2


@pytest.mark.parametrize(
    "values",
    [{"rounds": 5}, {"round_timeout": 10.0}, {"out_dir": "/elsewhere"}],
    ids=["rounds", "round-timeout", "out-dir"],
)
def test_resumable_keys_may_change(tmp_path: Path, cfg: RunConfig, values: dict[str, Any]) -> None:
    Checkpoint(tmp_path, cfg).save(1, _state(1.0), [_row(1)])
    _, history, start = Checkpoint(tmp_path, _replace(cfg, "fed", **values)).load(INITIAL)
    assert start == 2 and len(history) == 1


def test_an_infinite_budget_round_trips(tmp_path: Path, cfg: RunConfig) -> None:
    c = _replace(cfg, "dp", mode="none", epsilon=math.inf)
    Checkpoint(tmp_path, c).save(1, _state(1.0), [_row(1)])
    assert Checkpoint(tmp_path, c).load(INITIAL)[2] == 2


def test_a_corrupt_checkpoint_is_refused_naming_the_folder(tmp_path: Path, cfg: RunConfig) -> None:
    Checkpoint(tmp_path, cfg).save(1, _state(1.0), [_row(1)])
    (tmp_path / "checkpoint" / "meta.json").write_text("{truncated")
    with pytest.raises(RuntimeError, match="unreadable") as info:
        Checkpoint(tmp_path, cfg).load(INITIAL)
    assert str(tmp_path / "checkpoint") in str(info.value)


def test_a_missing_state_file_is_refused(tmp_path: Path, cfg: RunConfig) -> None:
    Checkpoint(tmp_path, cfg).save(1, _state(1.0), [_row(1)])
    (tmp_path / "checkpoint" / "state-0001.npz").unlink()
    with pytest.raises(RuntimeError, match="unreadable"):
        Checkpoint(tmp_path, cfg).load(INITIAL)


def test_a_state_for_another_model_is_refused(tmp_path: Path, cfg: RunConfig) -> None:
    Checkpoint(tmp_path, cfg).save(1, {"other": np.zeros(2, np.float32)}, [_row(1)])
    with pytest.raises(RuntimeError, match="does not match"):
        Checkpoint(tmp_path, cfg).load(INITIAL)


def test_save_leaves_no_temporary_files(tmp_path: Path, cfg: RunConfig) -> None:
    Checkpoint(tmp_path, cfg).save(1, _state(1.0), [_row(1)])
    leftovers = [p.name for p in (tmp_path / "checkpoint").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not list((tmp_path / "checkpoint").glob("tmp*"))
