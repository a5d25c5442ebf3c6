"""Issue 13's levers: ID embedding, item bias, 2-layer projection, full softmax, all positions."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from common.config.base import ConfigError
from common.config.run import RunConfig
from common.evaluation.evaluate import model_score_fn
from common.model.adapter import load_adapter, save_adapter
from common.model.catalogue import Catalogue
from common.model.objective import (
    Examples,
    all_cuts,
    example_losses,
    examples_at,
    text_cache,
    user_weights,
)
from common.model.towers import RecModel, trainable_state
from common.model.train import LocalData, regroup_grad_samples, train
from common.privacy.plan import DPPlan

HEAD = {
    "model.proj-dim": 16,
    "model.proj-hidden": 24,
    "model.id-dim": 16,
    "model.item-bias": True,
}
N_ITEMS = 60


def examples_of(cfg: RunConfig, local: LocalData, rows: np.ndarray, *, neg: int = 0) -> Examples:
    """Every position of the given users, owners 0..len(rows)-1 (negatives seeded)."""
    ex_rows, ex_cuts = all_cuts(local.train, rows)
    owner = np.searchsorted(rows, ex_rows)
    return examples_at(
        local.train,
        ex_rows,
        ex_cuts,
        owner,
        history_len=cfg.data.history_len,
        targets=cfg.train.targets_per_user,
        negatives=neg,
        n_items=N_ITEMS,
        rng=np.random.default_rng(0),
    )


def subset(ex: Examples, keep: np.ndarray) -> Examples:
    prefix = ex.prefix
    if prefix is not None:
        prefix = tuple(p for p, k in zip(prefix, keep, strict=True) if k)
    return Examples(
        ex.hist[keep], ex.hist_mask[keep], ex.cands[keep], ex.target_mask[keep],
        np.zeros(int(keep.sum()), dtype=np.int64), 1, prefix,
    )  # fmt: skip


def trainable(model: RecModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def each_user_alone(
    model: RecModel, ex: Examples, cat: Catalogue, cfg: RunConfig, kw: dict[str, Any]
) -> list[dict[str, torch.Tensor | None]]:
    """The reference: each user's gradient from a copy of the model given that user alone."""
    expected = []
    for u in range(int(ex.owner.max()) + 1):
        ref = copy.deepcopy(model)
        params = trainable(ref)
        one = example_losses(ref, subset(ex, ex.owner == u), cat, cfg.train, **kw).mean()
        grads = torch.autograd.grad(one, list(params.values()), allow_unused=True)
        expected.append(dict(zip(params, grads, strict=True)))
    return expected


def per_user_grad_samples(
    model: RecModel, ex: Examples, cat: Catalogue, cfg: RunConfig, kw: dict[str, Any]
) -> GradSampleModule:
    """Opacus' per-sample gradients of one batch, regrouped per user (as DP-SGD takes them)."""
    n = int(ex.owner.max()) + 1
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    losses = example_losses(model, ex, cat, cfg.train, **kw)
    (losses * user_weights(ex.owner, n)).sum().backward()
    regroup_grad_samples(model, n, ex.owner)
    return gsm


# --------------------------------------------------------------------------- the head


def test_head_shapes_and_zero_start_equal_the_text_only_model(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel], catalogue: Catalogue
) -> None:
    text_only = make_model(make_cfg(**{**HEAD, "model.id-dim": 0, "model.item-bias": False}),
                           perturbed=False)  # fmt: skip
    full = make_model(make_cfg(**HEAD), perturbed=False)
    items = torch.arange(10)
    vec = full.encode_items(items, catalogue)
    assert vec.shape == (10, 16)
    torch.testing.assert_close(vec.norm(dim=-1), torch.ones(10))
    assert isinstance(full.item_proj, torch.nn.Sequential) and full.item_id is not None
    # ID embedding and bias start at zero: the same scores as the text-only model
    torch.testing.assert_close(vec, text_only.encode_items(items, catalogue))
    state = trainable_state(full)
    assert state["head.item_id.weight"].shape == (N_ITEMS, 16)
    assert state["head.item_bias.weight"].shape == (N_ITEMS, 1)


def test_item_bias_moves_the_evaluation_ranking(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel], catalogue: Catalogue
) -> None:
    model = make_model(make_cfg(**HEAD))
    score = model_score_fn(model, catalogue, history_len=8)
    known = [np.array([1, 2, 3])]
    base = score(np.array([0]), known)[0]
    assert model.item_bias is not None
    with torch.no_grad():
        model.item_bias.weight[int(np.argmin(base)), 0] += 1e4
    moved = model_score_fn(model, catalogue, history_len=8)(np.array([0]), known)[0]
    assert int(np.argmax(moved)) == int(np.argmin(base))


def test_adapter_round_trip_carries_id_embedding_and_bias(
    tmp_path: Path, make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel]
) -> None:
    cfg = make_cfg(**HEAD)
    src = make_model(cfg, seed=4)
    loaded = load_adapter(cfg.model, save_adapter(src, tmp_path / "a"), n_items=N_ITEMS,
                          history_len=cfg.data.history_len)  # fmt: skip
    want, got = trainable_state(src), trainable_state(loaded)
    for k in ("head.item_id.weight", "head.item_bias.weight", "head.item_proj.2.weight"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_id_dim_must_match_the_tower_width(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel]
) -> None:
    with pytest.raises(ValueError, match=r"model\.id-dim"):
        make_model(make_cfg(**{"model.id-dim": 8}))  # proj-dim 0: the backbone's width 32


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model.proj-hidden": 8}, "model.proj-hidden"),  # needs proj-dim > 0
        ({"model.proj-dim": 8, "model.proj-hidden": -1}, "model.proj-hidden"),
        ({"model.id-dim": -1}, "model.id-dim"),
        ({"model.proj-dim": 16, "model.id-dim": 8}, "model.id-dim"),
        ({"model.item-bias": "maybe"}, "model.item-bias"),
        ({"train.loss": "softmax"}, "train.loss"),
        ({"train.positions": "every"}, "train.positions"),
        ({"model.proj-dim": 16, "model.id-dim": 16, "train.positions": "all"}, "model.id-dim"),
    ],
)
def test_bad_new_keys_raise_config_error_naming_the_key(
    make_cfg: Callable[..., RunConfig], overrides: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_cfg(**{"dp.mode": "local", **overrides})


def test_defaults_keep_the_old_model(cfg: RunConfig, make_model: Callable[..., RecModel]) -> None:
    assert (cfg.model.proj_hidden, cfg.model.id_dim, cfg.model.item_bias) == (0, 0, False)
    assert (cfg.train.loss, cfg.train.positions) == ("sampled", "random")
    model = make_model()
    assert model.item_id is None and model.item_bias is None
    assert not any(k.startswith(("head.item_id", "head.item_bias")) for k in trainable_state(model))


# --------------------------------------------------------------------------- examples, full loss


def test_all_cuts_enumerate_every_position(local: LocalData) -> None:
    rows = local.trainable()[:3]
    r, c = all_cuts(local.train, rows)
    assert len(r) == sum(len(local.train[i]) - 1 for i in rows)
    for row in rows:
        np.testing.assert_array_equal(c[r == row], np.arange(1, len(local.train[row])))


def test_full_softmax_equals_a_sampled_softmax_over_every_other_item(
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    cfg = make_cfg(**HEAD, **{"train.loss": "full"})
    model = make_model(cfg)
    ex = examples_of(cfg, local, local.trainable()[:2])
    got = example_losses(model, ex, catalogue, cfg.train, cache=text_cache(model, catalogue),
                         log_q=None, live_catalogue=True)  # fmt: skip
    users = model.encode_users(ex.hist, ex.hist_mask, catalogue)
    every = torch.arange(N_ITEMS)
    for j in range(len(got)):
        t = [int(x) for x, m in zip(ex.cands[j], ex.target_mask[j], strict=False) if m > 0]
        others = torch.tensor([i for i in range(N_ITEMS) if i not in t])
        s = model(ex.hist[j : j + 1], ex.hist_mask[j : j + 1], every[None], catalogue)[0].detach()
        want = np.mean([float(torch.logaddexp(s[i], s[others].logsumexp(0)) - s[i]) for i in t])
        assert abs(float(got[j]) - want) < 1e-4, j
    assert users.shape[0] == len(got)


@pytest.mark.parametrize("loss", ["sampled", "full", "full-cached"])
def test_all_positions_per_user_grad_samples_equal_each_user_alone(
    loss: str,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    # Without DP this would fail: each user's several examples (and each example's K candidate
    # texts) must become exactly one per-user gradient before clipping.
    cfg = make_cfg(**{**HEAD, "model.id-dim": 0, "train.loss": loss, "train.positions": "all"})
    model = make_model(cfg)
    rows = local.trainable()[[0, 4, 9]]
    ex = examples_of(cfg, local, rows, neg=3 if loss == "sampled" else 0)
    cache = text_cache(model, catalogue)
    kw = dict(cache=cache, log_q=None, live_catalogue=False)
    expected = each_user_alone(model, ex, catalogue, cfg, kw)
    gsm = per_user_grad_samples(model, ex, catalogue, cfg, kw)
    checked = 0
    for name, p in trainable(model).items():
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            assert all(e[name] is None for e in expected), name
            continue
        assert gs.shape == (3, *p.shape), name
        for u in range(3):
            want = expected[u][name]
            want = torch.zeros_like(p) if want is None else want
            torch.testing.assert_close(gs[u], want, atol=1e-5, rtol=1e-4, msg=f"{name} {u}")
        checked += 1
    gsm.remove_hooks()
    assert checked >= 5


def test_regroup_by_owner_rejects_a_wrong_example_count(
    make_model: Callable[..., RecModel],
) -> None:
    model = make_model()
    tower = {id(p) for p in model.item_tower_params()}
    for p in model.parameters():
        if p.requires_grad and id(p) not in tower:  # the head: one row per example
            p.grad_sample = torch.zeros(5, *p.shape)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="examples"):
        regroup_grad_samples(model, 2, np.array([0, 0, 1, 1]))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("loss", "positions", "dp"),
    [("full-cached", "all", False), ("full", "random", False), ("full", "all", True),
     ("sampled", "random", True)],
)  # fmt: skip
def test_train_runs_the_new_levers_and_moves_the_right_weights(
    loss: str,
    positions: str,
    dp: bool,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    over = {**HEAD, "train.loss": loss, "train.positions": positions}
    over["dp.mode"] = "local" if dp else "none"
    if dp and positions == "all":
        over["model.id-dim"] = 0
    cfg = make_cfg(**over, **{"train.batch-users": 16})
    model = make_model(cfg, perturbed=False)
    before = trainable_state(model)
    plan = DPPlan(sigma=0.5, sample_rate=0.25, steps_per_round=3, prior_sigma=0.0, delta=1e-5)
    stats = train(model, catalogue, local, cfg.train, history_len=cfg.data.history_len,
                  plan=plan if dp else None, clip=1.0, seed=0)  # fmt: skip
    assert stats.steps >= 1 and np.isfinite(stats.loss)
    after = trainable_state(model)
    lora_moved = any(not np.array_equal(after[k], before[k]) for k in after if "lora_B" in k)
    assert lora_moved == (loss != "full-cached")
    assert not np.array_equal(after["head.item_proj.0.weight"], before["head.item_proj.0.weight"])
    if "head.item_bias.weight" in after:
        assert np.abs(after["head.item_bias.weight"]).max() > 0


def test_projected_table_gives_the_same_users_as_projecting_each_row(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel], catalogue: Catalogue,
    local: LocalData,
) -> None:  # fmt: skip
    cfg = make_cfg(**HEAD)
    model = make_model(cfg)
    ex = examples_of(cfg, local, local.trainable()[:2])
    table = model.user_proj(catalogue.frozen)
    torch.testing.assert_close(
        model.encode_users(ex.hist, ex.hist_mask, catalogue, table),
        model.encode_users(ex.hist, ex.hist_mask, catalogue),
    )
