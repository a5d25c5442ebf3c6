"""User-level DP-SGD: per-user gradients against a one-user-at-a-time reference, clipping, noise."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from common.config.run import RunConfig
from common.model.catalogue import Catalogue
from common.model.towers import RecModel, trainable_state
from common.model.train import (
    Batch,
    LocalData,
    lr_factor,
    make_batch,
    per_user_loss,
    regroup_grad_samples,
    train,
)
from common.privacy.plan import DPPlan

B = 3


def batch_of(cfg: RunConfig, local: LocalData, rows: np.ndarray, seed: int = 0) -> Batch:
    return make_batch(
        local,
        rows,
        history_len=cfg.data.history_len,
        targets=cfg.train.targets_per_user,
        negatives=cfg.train.negatives,
        n_items=60,
        rng=np.random.default_rng(seed),
    )


def loss_of(model: RecModel, batch: Batch, cat: Catalogue, sl: slice = slice(None)) -> torch.Tensor:
    scores = model(batch.hist[sl], batch.hist_mask[sl], batch.cands[sl], cat)
    return per_user_loss(scores, batch.target_mask[sl])


def trainable(model: RecModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def reference_grads(model: RecModel, batch: Batch, cat: Catalogue) -> list[dict[str, torch.Tensor]]:
    """Slow path: plain autograd on each user's loss alone, in a copy without any Opacus hooks."""
    out = []
    for i in range(batch.hist.shape[0]):
        ref = copy.deepcopy(model)
        params = trainable(ref)
        grads = torch.autograd.grad(
            loss_of(ref, batch, cat, slice(i, i + 1)).sum(), list(params.values())
        )
        out.append(dict(zip(params, grads, strict=True)))
    return out


def gs(p: torch.Tensor) -> torch.Tensor:
    """Opacus' per-sample gradient of `p` (an attribute Opacus adds)."""
    return p.grad_sample  # type: ignore[attr-defined,no-any-return]


def l2(tensors: Iterable[torch.Tensor]) -> float:
    """Norm of all tensors together, as if flattened into one vector."""
    return float(torch.cat([t.reshape(-1) for t in tensors]).norm())


def grad_samples(
    model: RecModel, batch: Batch, cat: Catalogue, *, regroup: bool
) -> GradSampleModule:
    model.train()  # Opacus captures activations in training mode only
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # ... but the reference has none (BERT's attention reads `dropout.p`)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    loss_of(model, batch, cat).sum().backward()
    if regroup:
        regroup_grad_samples(model, batch.hist.shape[0])
    return gsm


@pytest.fixture
def batch(cfg: RunConfig, local: LocalData) -> Batch:
    return batch_of(cfg, local, local.trainable()[[0, 5, 11]])


@pytest.mark.parametrize("ffa", [False, True])
def test_per_user_grad_samples_equal_one_user_at_a_time_reference(
    ffa: bool,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    batch: Batch,
) -> None:
    model = make_model(make_cfg(**{"model.lora.ffa": ffa}))
    expected = reference_grads(model, batch, catalogue)
    gsm = grad_samples(model, batch, catalogue, regroup=True)
    params = trainable(model)
    assert any("lora_B" in n for n in params) and any("attn" in n for n in params)
    assert any("lora_A" in n for n in params) != ffa
    for name, p in params.items():
        assert gs(p).shape == (B, *p.shape), name
        for i in range(B):
            if "lora" in name:  # a zero gradient would make the comparison vacuous
                assert expected[i][name].abs().max() > 1e-4, name
            got, want = gs(p)[i], expected[i][name]
            diff = float((got - want).abs().max())
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), f"{name}, user {i}: {diff}"
        # the ordinary .grad Opacus leaves behind is the sum of the per-user gradients
        torch.testing.assert_close(
            p.grad, torch.stack([e[name] for e in expected]).sum(0), atol=1e-5, rtol=1e-4
        )
    gsm.remove_hooks()


def test_without_regroup_item_tower_has_one_row_per_candidate(
    cfg: RunConfig, make_model: Callable[..., RecModel], catalogue: Catalogue, batch: Batch
) -> None:
    model = make_model()
    k = cfg.train.targets_per_user + cfg.train.negatives
    gsm = grad_samples(model, batch, catalogue, regroup=False)
    tower = {id(p) for p in model.item_tower_params()}
    assert tower
    for name, p in trainable(model).items():
        assert gs(p).shape[0] == (B * k if id(p) in tower else B), name
    regroup_grad_samples(model, B)
    for name, p in trainable(model).items():
        assert gs(p).shape[0] == B, name
    gsm.remove_hooks()


def test_regroup_sums_each_users_rows_and_rejects_a_wrong_user_count(
    make_model: Callable[..., RecModel],
) -> None:
    model = make_model()
    k = 7
    rows = {
        n: torch.randn(B * k, *p.shape) for n, p in model.bert.named_parameters() if p.requires_grad
    }
    for n, p in model.bert.named_parameters():
        if p.requires_grad:
            p.grad_sample = rows[n].clone()  # type: ignore[attr-defined]
    regroup_grad_samples(model, B)
    for n, p in model.bert.named_parameters():
        if p.requires_grad:
            slow = torch.stack([rows[n][u * k : (u + 1) * k].sum(0) for u in range(B)])
            torch.testing.assert_close(gs(p), slow)
    with pytest.raises(RuntimeError, match="not a multiple"):
        regroup_grad_samples(model, 2)  # 3 rows per param now; 3 % 2 != 0


def clipped_sum(model: RecModel, clip: float) -> dict[str, torch.Tensor]:
    """What Opacus' DPOptimizer (no noise, sum reduction) turns the grad samples into."""
    params = list(trainable(model).values())
    opt = DPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=B,
        loss_reduction="sum",
    )
    assert opt.pre_step()
    return {n: p.grad.detach().clone() for n, p in trainable(model).items() if p.grad is not None}


@pytest.mark.parametrize("clip", [1e-3, 1e-1, 1e3])
def test_dp_optimizer_clips_each_user_once(
    clip: float, make_model: Callable[..., RecModel], catalogue: Catalogue, batch: Batch
) -> None:
    model = make_model()
    expected = reference_grads(model, batch, catalogue)
    gsm = grad_samples(model, batch, catalogue, regroup=True)
    got = clipped_sum(model, clip)
    gsm.remove_hooks()
    # slow reference: clip each user's whole gradient (all tensors together), then sum
    want: dict[str, torch.Tensor] = {n: torch.zeros_like(g) for n, g in got.items()}
    for g in expected:
        norm = l2(g.values())
        factor = min(1.0, clip / (norm + 1e-6))
        assert factor * norm <= clip * (1 + 1e-6)
        for n in want:
            want[n] += factor * g[n]
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6 * max(clip, 1.0), rtol=1e-4)
    total = l2(got.values())
    assert total <= B * clip * (1 + 1e-5)


def test_a_user_repeated_b_times_contributes_exactly_b_times_the_clip_norm(
    cfg: RunConfig, local: LocalData, make_model: Callable[..., RecModel], catalogue: Catalogue
) -> None:
    # all B rows are the same user with the same cut: every row clips to the same vector of
    # norm C, so the sum has norm exactly B*C (per user, not per candidate text)
    row = local.trainable()[[3]]
    one = batch_of(cfg, local, row, seed=4)
    same = Batch(*(t.repeat(B, 1) for t in (one.hist, one.hist_mask, one.cands, one.target_mask)))
    model = make_model()
    gsm = grad_samples(model, same, catalogue, regroup=True)
    clip = 1e-3
    got = clipped_sum(model, clip)
    gsm.remove_hooks()
    total = l2(got.values())
    assert total == pytest.approx(B * clip, rel=1e-4)


# --------------------------------------------------------------------------- train()


def snapshot(model: RecModel) -> dict[str, np.ndarray]:
    """A copy of `trainable_state` (whose arrays alias the live parameters on CPU, see below)."""
    return {k: v.copy() for k, v in trainable_state(model).items()}


def plan(sigma: float, q: float = 0.25, steps: int = 2) -> DPPlan:
    return DPPlan(sigma=sigma, sample_rate=q, steps_per_round=steps, prior_sigma=0.0, delta=1 / 40)


def run_train(
    model: RecModel,
    cfg: RunConfig,
    cat: Catalogue,
    local: LocalData,
    dp: DPPlan | None,
    *,
    seed: int = 0,
    torch_seed: int | None = 0,
) -> dict[str, np.ndarray]:
    if torch_seed is not None:
        torch.manual_seed(torch_seed)  # the backbone's dropout draws from torch's global RNG
    stats = train(
        model,
        cat,
        local,
        cfg.train,
        history_len=cfg.data.history_len,
        plan=dp,
        clip=cfg.dp.clip,
        seed=seed,
    )
    assert np.isfinite(stats.loss)
    return snapshot(model)


def lora_params(model: RecModel, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.bert.named_parameters() if part in n}


@pytest.mark.parametrize("dp", [None, plan(1.0)], ids=["plain", "dp"])
@pytest.mark.parametrize("ffa", [False, True], ids=["lora", "ffa-lora"])
def test_a_training_step_changes_the_adapter(
    ffa: bool,
    dp: DPPlan | None,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    cfg = make_cfg(**{"model.lora.ffa": ffa})
    model = make_model(cfg, perturbed=False)  # PEFT's own init: B = 0
    a0, b0 = lora_params(model, "lora_A"), lora_params(model, "lora_B")
    assert a0 and b0
    before = snapshot(model)
    after = run_train(model, cfg, catalogue, local, dp)
    lora_keys = [k for k in before if k.startswith("lora.")]
    assert any("lora_A" in k for k in lora_keys) != ffa  # FFA-LoRA: A is not trainable
    if ffa:
        assert not any("lora_A" in k for k in before)
        for n, a in lora_params(model, "lora_A").items():
            assert torch.equal(a, a0[n]), f"FFA-LoRA changed frozen {n}"
    for k in lora_keys:
        assert not np.array_equal(before[k], after[k]), f"{k} did not change"
    for n, b in lora_params(model, "lora_B").items():
        assert not torch.equal(b, b0[n]), n


def test_ffa_lora_a_is_the_same_in_every_fresh_model(
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
) -> None:
    cfg = make_cfg(**{"model.lora.ffa": True})
    torch.manual_seed(1)
    a1 = lora_params(make_model(cfg, perturbed=False), "lora_A")
    torch.manual_seed(2)
    a2 = lora_params(make_model(cfg, perturbed=False), "lora_A")
    assert a1.keys() == a2.keys() and all(torch.equal(a1[n], a2[n]) for n in a1)


def test_noise_is_really_added(
    cfg: RunConfig, make_model: Callable[..., RecModel], catalogue: Catalogue, local: LocalData
) -> None:
    start = make_model()
    quiet = run_train(copy.deepcopy(start), cfg, catalogue, local, plan(0.0))
    again = run_train(copy.deepcopy(start), cfg, catalogue, local, plan(0.0))
    loud = run_train(copy.deepcopy(start), cfg, catalogue, local, plan(1e3))
    s0 = snapshot(start)
    assert all(np.array_equal(quiet[k], again[k]) for k in quiet)
    diff = {k: float(np.abs(loud[k] - quiet[k]).max()) for k in quiet if k != "prior"}
    assert min(diff.values()) > 0, diff
    # the noisy run moved every tensor, the noiseless one moved it differently
    assert all(not np.array_equal(loud[k], s0[k]) for k in diff)


def test_an_empty_poisson_batch_still_takes_a_noisy_step(
    cfg: RunConfig, make_model: Callable[..., RecModel], catalogue: Catalogue, local: LocalData
) -> None:
    model = make_model()
    before = snapshot(model)
    torch.manual_seed(0)
    stats = train(
        model,
        catalogue,
        local,
        cfg.train,
        history_len=cfg.data.history_len,
        plan=plan(1.0, q=1e-9, steps=3),
        clip=1.0,
        seed=0,
    )
    assert (stats.steps, stats.users_seen, stats.loss) == (3, 0, 0.0)
    after = snapshot(model)
    for k in before:
        if k != "prior":
            assert not np.array_equal(before[k], after[k]), f"{k}: no noisy step was taken"


@pytest.mark.parametrize("dp", [None, plan(1.0)], ids=["plain", "dp"])
def test_same_seed_same_weights(
    dp: DPPlan | None,
    cfg: RunConfig,
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    start = make_model()
    one = run_train(copy.deepcopy(start), cfg, catalogue, local, dp, seed=3)
    two = run_train(copy.deepcopy(start), cfg, catalogue, local, dp, seed=3)
    other = run_train(copy.deepcopy(start), cfg, catalogue, local, dp, seed=4)
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert any(not np.array_equal(one[k], other[k]) for k in one)


@pytest.mark.parametrize("dp", [None, plan(1.0)], ids=["plain", "dp"])
def test_seed_alone_determines_the_trained_weights(
    dp: DPPlan | None,
    cfg: RunConfig,
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    start = make_model()
    one = run_train(copy.deepcopy(start), cfg, catalogue, local, dp, seed=3, torch_seed=None)
    two = run_train(copy.deepcopy(start), cfg, catalogue, local, dp, seed=3, torch_seed=None)
    assert all(np.array_equal(one[k], two[k]) for k in one)


def fedprox_run(
    model: RecModel, cfg: RunConfig, cat: Catalogue, local: LocalData, anchor: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    # rate = lr * mu = 1: every proximal step puts the weights back onto the anchor
    torch.manual_seed(0)
    train(
        model,
        cat,
        local,
        cfg.train,
        history_len=cfg.data.history_len,
        plan=None,
        clip=cfg.dp.clip,
        seed=0,
        proximal_mu=1.0 / cfg.train.lr,
        anchor=anchor,
    )
    return snapshot(model)


def test_fedprox_with_full_rate_stays_on_the_anchor(
    cfg: RunConfig, make_model: Callable[..., RecModel], catalogue: Catalogue, local: LocalData
) -> None:
    model = make_model()
    anchor = snapshot(model)
    after = fedprox_run(model, cfg, catalogue, local, anchor)
    for k in anchor:
        np.testing.assert_allclose(after[k], anchor[k], atol=1e-6, err_msg=k)


def test_fedprox_anchor_taken_with_trainable_state_stays_fixed(
    cfg: RunConfig, make_model: Callable[..., RecModel], catalogue: Catalogue, local: LocalData
) -> None:
    model = make_model()
    start = snapshot(model)
    after = fedprox_run(model, cfg, catalogue, local, trainable_state(model))
    for k in start:
        np.testing.assert_allclose(after[k], start[k], atol=1e-6, err_msg=k)


def test_lr_factor_follows_the_schedule() -> None:
    assert [lr_factor("constant", s, 4) for s in range(4)] == [1.0] * 4
    cos = [lr_factor("cosine", s, 4) for s in range(4)]
    np.testing.assert_allclose(cos, [1.0, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2])
    with pytest.raises(ValueError, match="train.lr-schedule"):
        lr_factor("linear", 0, 4)


@pytest.mark.parametrize("dp", [None, plan(1.0, steps=4)], ids=["plain", "dp"])
def test_every_step_uses_the_scheduled_learning_rate(
    dp: DPPlan | None,
    cfg: RunConfig,
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[float] = []
    adam_step = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    sched = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr_schedule="cosine"))
    run_train(make_model(), sched, catalogue, local, dp, seed=0)
    steps = len(seen)
    assert steps >= 3
    expect = [sched.train.lr * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]
    np.testing.assert_allclose(seen, expect, rtol=1e-12)
    seen.clear()
    run_train(make_model(), cfg, catalogue, local, dp, seed=0)
    assert seen == [cfg.train.lr] * steps
