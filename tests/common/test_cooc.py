"""The DP co-occurrence release (`model.cooc-items`): its score against a slow reference,
its accounting, its noise, per-user gradients with it, the adapter and the server's check."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_head_objective import each_user_alone, examples_of, per_user_grad_samples, trainable

from common.config.base import ConfigError
from common.config.run import RunConfig
from common.evaluation.evaluate import model_score_fn
from common.model.adapter import load_adapter, save_adapter
from common.model.catalogue import Catalogue
from common.model.objective import text_cache
from common.model.towers import (
    COOC_KEY,
    PRIOR_KEY,
    RecModel,
    load_trainable_state,
    trainable_state,
)
from common.model.train import LocalData
from common.privacy.accounting import ZERO_NOISE_ENV, PrivacyError, epsilon_of
from common.privacy.cooc import head_items, local_cooc, normalised_gram
from common.privacy.plan import plan_dp

COOC = {"model.cooc-items": 12, "model.cooc-lambda": 5.0, "model.cooc-weight": 2.0}


def _released(model: RecModel, local: LocalData) -> RecModel:
    """Install an exact (zero-noise) co-occurrence matrix of the model's prior's head."""
    assert model.cooc is not None
    head = head_items(model.prior.numpy(), model.cooc.shape[0])
    gram = local_cooc(local.train, model.prior.numel(), head, sigma=0.0, seed=0)
    with torch.no_grad():
        model.cooc.copy_(torch.from_numpy(gram).float())
    return model


def _slow_feature(model: RecModel, seqs: list[np.ndarray]) -> np.ndarray:
    """EASE by the textbook formulas in float64, one user and one item at a time.

    With decay 0 a user's last ``data.history-len`` items weigh 1 each; otherwise every item
    weighs ``decay ** age`` (age 0 = the last item). A repeated item counts once, at its most
    recent occurrence's weight.
    """
    decay = model.cfg.cooc_decay
    window = model.recency.num_embeddings
    assert model.cooc is not None
    g = model.cooc.numpy().astype(np.float64)
    w, q = np.linalg.eigh(g)
    g = (q * np.maximum(w, 0)) @ q.T + model.cfg.cooc_lambda * np.eye(len(g))
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    b /= np.sqrt(np.mean(b**2)) * math.sqrt(window)
    order = sorted(range(model.prior.numel()), key=lambda i: (-float(model.prior[i]), i))
    head = order[: len(g)]
    out = np.zeros((len(seqs), model.prior.numel()))
    for u, seq in enumerate(seqs):
        weight: dict[int, float] = {}
        for pos, i in enumerate(seq):
            age = len(seq) - 1 - pos
            if decay == 0 and age >= window:
                continue
            w = 1.0 if decay == 0 else decay**age
            weight[int(i)] = max(weight.get(int(i), 0.0), w)
        for col, item in enumerate(head):
            out[u, item] = sum(w * b[head.index(j), col] for j, w in weight.items() if j in head)
    return out


def _random_histories(n_items: int, seed: int) -> list[np.ndarray]:
    """Chronological histories of 0-20 items: one empty, one with a repeated item."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=int(rng.integers(1, 21))) for _ in range(6)]
    seqs[1] = np.zeros(0, dtype=np.int64)  # an empty history scores zero
    seqs[0] = np.concatenate([seqs[0][:1].repeat(3), seqs[0]])  # a repeated item counts once
    return seqs


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_feature_equals_a_slow_reference(
    decay: float,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    local: LocalData,
) -> None:
    model = _released(make_model(make_cfg(**COOC, **{"model.cooc-decay": decay})), local)
    seqs = _random_histories(model.prior.numel(), 0)
    assert max(len(q) for q in seqs) > model.recency.num_embeddings  # the window form cuts
    got = model.cooc_of(seqs)
    assert got is not None
    np.testing.assert_allclose(got.numpy(), _slow_feature(model, seqs), atol=1e-5)
    assert not got[1].any()


def test_a_newly_loaded_matrix_or_prior_is_scored_not_the_cached_one(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel], local: LocalData
) -> None:
    model = _released(make_model(make_cfg(**COOC)), local)
    seqs = _random_histories(model.prior.numel(), 1)
    assert model.cooc_of(seqs) is not None  # the table is cached now
    assert model.cooc is not None
    state = trainable_state(model)
    state[COOC_KEY] = state[COOC_KEY] * 0.5 + np.eye(len(state[COOC_KEY]), dtype=np.float32)
    state[PRIOR_KEY] = state[PRIOR_KEY][::-1].copy()  # another head
    load_trainable_state(model, state)  # what a site does with each round's global state
    got = model.cooc_of(seqs)
    assert got is not None
    np.testing.assert_allclose(got.numpy(), _slow_feature(model, seqs), atol=1e-5)


def test_the_feature_is_off_before_the_release_and_without_the_key(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel]
) -> None:
    seqs = [np.array([0, 1, 2]), np.array([3])]
    assert make_model(make_cfg(**COOC)).cooc_of(seqs) is None  # matrix still zero
    plain = make_model()
    assert plain.cooc is None and plain.cooc_of(seqs) is None and plain.cooc_rows(None) is None
    assert COOC_KEY not in trainable_state(plain)


@pytest.mark.parametrize("decay", [0.0, 0.7, 1.0])
def test_the_release_moves_the_ranking_by_its_learned_weight(
    decay: float, make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel],
    catalogue: Catalogue, local: LocalData,
) -> None:  # fmt: skip
    """The evaluation scores the window (decay 0) or the whole known history (decay > 0)."""
    model = _released(make_model(make_cfg(**COOC, **{"model.cooc-decay": decay})), local)
    rows, known = np.arange(6), [np.asarray(t) for t in local.train[:6]]
    with_cooc = model_score_fn(model, catalogue, history_len=8)(rows, known)
    assert model.cooc_weight is not None
    weight = float(model.cooc_weight.weight)  # perturbed away from its initial value
    assert weight != 0
    with torch.no_grad():
        model.cooc_weight.weight.zero_()
    without = model_score_fn(model, catalogue, history_len=8)(rows, known)
    assert model.recency.num_embeddings == 8 < max(len(k) for k in known)  # the window cuts
    want = weight * _slow_feature(model, known)
    np.testing.assert_allclose(with_cooc - without, want, atol=1e-4)


@pytest.mark.parametrize("loss", ["sampled", "full-cached"])
def test_per_user_grad_samples_with_the_cooc_term_equal_each_user_alone(
    loss: str,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    cfg = make_cfg(**{**COOC, "train.loss": loss, "train.positions": "all"})
    model = _released(make_model(cfg), local)
    rows = local.trainable()[[0, 4, 9]]
    ex = examples_of(cfg, local, rows, neg=3 if loss == "sampled" else 0)
    kw = dict(cache=text_cache(model, catalogue), log_q=None, live_catalogue=False)
    expected = each_user_alone(model, ex, catalogue, cfg, kw)
    gsm = per_user_grad_samples(model, ex, catalogue, cfg, kw)
    gs = model.cooc_weight.weight.grad_sample  # type: ignore[union-attr]
    assert gs.shape == (3, 1, 1)
    assert float(gs.abs().sum()) > 0  # the weight learns from the term
    for name, p in trainable(model).items():
        if getattr(p, "grad_sample", None) is None:
            continue
        for u in range(3):
            want = expected[u][name]
            want = torch.zeros_like(p) if want is None else want
            torch.testing.assert_close(p.grad_sample[u], want, atol=1e-5, rtol=1e-4,
                                       msg=f"{name} {u}")  # fmt: skip
    gsm.remove_hooks()


def test_adapter_round_trip_carries_the_matrix_and_its_weight(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel],
    catalogue: Catalogue, local: LocalData, tmp_path: Path,
) -> None:  # fmt: skip
    cfg = make_cfg(**COOC)
    model = _released(make_model(cfg), local)
    save_adapter(model, tmp_path / "a")
    back = load_adapter(cfg.model, tmp_path / "a", n_items=model.prior.numel(), history_len=8)
    assert back.cooc is not None and model.cooc is not None
    assert torch.equal(back.cooc, model.cooc)
    rows, known = np.arange(5), [np.asarray(t) for t in local.train[:5]]
    np.testing.assert_allclose(
        model_score_fn(back, catalogue, history_len=8)(rows, known),
        model_score_fn(model, catalogue, history_len=8)(rows, known),
        atol=1e-5,
    )


def test_the_plan_spends_the_cooc_share_and_composes_to_epsilon(
    make_cfg: Callable[..., RunConfig],
) -> None:
    cfg = make_cfg(**COOC)
    plan = plan_dp(cfg.dp, cfg.train, n_users=40, rounds=2, use_prior=True, use_cooc=True)
    without = plan_dp(cfg.dp, cfg.train, n_users=40, rounds=2, use_prior=True)
    assert plan.cooc_sigma > 0 and plan.cooc_events() == [(plan.cooc_sigma, 1.0, 1)]
    alone = epsilon_of(plan.cooc_events(), delta=plan.delta)
    assert alone == pytest.approx(cfg.dp.cooc_share * cfg.dp.epsilon, rel=0.02)
    events = [*plan.prior_events(), *plan.cooc_events(), *plan.round_events() * 2]
    assert cfg.dp.epsilon * 0.98 <= epsilon_of(events, delta=plan.delta) <= cfg.dp.epsilon
    assert plan.sigma > without.sigma  # training pays for the extra release


def test_shares_that_leave_no_training_budget_are_refused(
    make_cfg: Callable[..., RunConfig],
) -> None:
    with pytest.raises(ConfigError, match="dp.cooc-share"):
        make_cfg(**COOC, **{"dp.prior-share": 0.5, "dp.cooc-share": 0.45})
    with pytest.raises(ConfigError, match="model.cooc-items"):
        make_cfg(**{"model.cooc-items": -1})
    with pytest.raises(ConfigError, match="model.cooc-items"):
        make_cfg(**COOC, **{"model.prior": False})
    make_cfg(**{"dp.prior-share": 0.5, "dp.eval-share": 0.4})  # no cooc: its share is unused


def test_the_release_is_noised_from_fresh_entropy_and_exact_only_by_the_test_switch(
    local: LocalData, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = np.arange(10)
    exact = normalised_gram(local.train, 60, head)
    a = local_cooc(local.train, 60, head, sigma=1.0, seed=1)
    b = local_cooc(local.train, 60, head, sigma=1.0, seed=2)
    assert np.allclose(a, a.T) and not np.allclose(a, exact) and not np.allclose(a, b)
    assert np.std(a - exact) == pytest.approx(1.0 / math.sqrt(2), rel=0.25)  # (E + E^T) / 2
    with pytest.raises(PrivacyError):
        local_cooc(local.train, 60, head, sigma=-1.0, seed=0)
    monkeypatch.setenv(ZERO_NOISE_ENV, "1")
    np.testing.assert_array_equal(local_cooc(local.train, 60, head, sigma=1.0, seed=1), exact)


def test_a_membership_attack_on_the_site_release_is_at_chance_only_with_noise(
    local: LocalData,
) -> None:
    # The attacker knows every other user and the head; it guesses whether the target user is
    # in by the released matrix's projection on the target's outer product. Without noise it
    # is always right; at the release's sigma for epsilon 2.4 (0.3 x 8, delta 1e-5) it is
    # close to chance over many draws.
    head = np.arange(15)
    target = np.array([1, 4, 7, 9])
    rest = [t for t in local.train[:30]]
    v = np.zeros(15)
    v[target] = 1 / math.sqrt(len(target))
    probe = np.outer(v, v)
    out = normalised_gram(rest, 60, head)

    def accuracy(sigma: float, draws: int = 200) -> float:
        right = 0
        for d in range(draws):
            member = d % 2 == 0
            data = [*rest, target] if member else rest
            rel = local_cooc(data, 60, head, sigma=sigma, seed=d)
            right += ((rel - out) * probe).sum() > 0.5 if member else (
                (rel - out) * probe).sum() <= 0.5  # fmt: skip
        return right / draws

    from common.privacy.accounting import gaussian_sigma_for

    assert accuracy(1e-9) == 1.0
    sigma = gaussian_sigma_for(2.4, delta=1e-5)
    assert accuracy(sigma) < 0.75


def test_an_adapter_with_a_matrix_needs_a_model_that_has_one(
    make_cfg: Callable[..., RunConfig], make_model: Callable[..., RecModel],
    local: LocalData, tmp_path: Path,
) -> None:  # fmt: skip
    model = _released(make_model(make_cfg(**COOC)), local)
    save_adapter(model, tmp_path / "a")
    plain = make_cfg().model
    with pytest.raises(ConfigError, match="model.cooc-items = 0"):
        load_adapter(plain, tmp_path / "a", n_items=model.prior.numel(), history_len=8)
