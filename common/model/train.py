"""One training function for the central and the federated paths: user-level DP-SGD or plain."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from common.config.model import TrainConfig
from common.model.catalogue import Catalogue
from common.model.objective import (
    Examples,
    all_cuts,
    example_losses,
    examples_at,
    text_cache,
    user_weights,
)
from common.model.towers import RecModel
from common.privacy.accounting import (
    test_only_zero_noise,
)
from common.privacy.plan import DPPlan


@dataclass
class LocalData:
    """The users one party trains on: chronological train items and held-out items."""

    users: np.ndarray  # global user indices
    train: list[np.ndarray]  # per user, chronological train items
    valid: np.ndarray  # per user validation item
    test: np.ndarray  # per user test item

    def __len__(self) -> int:
        return len(self.train)

    def trainable(self) -> np.ndarray:
        """Local positions of users with >= 2 train items (a history and a target)."""
        return np.array([i for i, t in enumerate(self.train) if len(t) >= 2], dtype=np.int64)


@dataclass
class Batch:
    """A batch of B users, each with its history and K = T targets + N negatives."""

    hist: torch.Tensor  # [B, H] item indices (left-padded with 0)
    hist_mask: torch.Tensor  # [B, H]
    cands: torch.Tensor  # [B, T+N]: T targets then N negatives
    target_mask: torch.Tensor  # [B, T]: 1 where the target slot is real
    prefix: tuple[np.ndarray, ...] | None = None  # each row's whole history before its cut


def make_batch(
    data: LocalData,
    rows: np.ndarray,
    *,
    history_len: int,
    targets: int,
    negatives: int,
    n_items: int,
    rng: np.random.Generator,
    neg_probs: np.ndarray | None = None,
) -> Batch:
    """One example per user: a random cut, the items before it (history), the next T (targets).

    Negatives are drawn from the public catalogue for each user alone (never other users'
    items) -- uniformly, or from `neg_probs` (a public distribution, e.g. the released DP
    popularity) -- resampling any that hit one of that user's targets.
    """

    def draw(k: int) -> np.ndarray:
        if neg_probs is None:
            return rng.integers(0, n_items, k)
        return rng.choice(n_items, size=k, p=neg_probs)

    b = len(rows)
    hist = np.zeros((b, history_len), dtype=np.int64)
    hmask = np.zeros((b, history_len), dtype=np.float32)
    cands = np.zeros((b, targets + negatives), dtype=np.int64)
    tmask = np.zeros((b, targets), dtype=np.float32)
    prefix = []
    for j, row in enumerate(rows):
        seq = data.train[row]
        cut = int(rng.integers(1, len(seq)))
        prefix.append(seq[:cut])
        h = seq[max(0, cut - history_len) : cut]
        hist[j, history_len - len(h) :] = h
        hmask[j, history_len - len(h) :] = 1
        t = seq[cut : cut + targets]
        cands[j, : len(t)] = t
        tmask[j, : len(t)] = 1
        neg = draw(negatives)
        clash = np.isin(neg, t)
        while clash.any():
            neg[clash] = draw(int(clash.sum()))
            clash = np.isin(neg, t)
        cands[j, targets:] = neg
    return Batch(
        torch.from_numpy(hist),
        torch.from_numpy(hmask),
        torch.from_numpy(cands),
        torch.from_numpy(tmask),
        tuple(prefix),
    )


def per_user_loss(scores: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Sampled softmax per user: mean over its targets of -log softmax(target vs negatives)."""
    t = target_mask.shape[1]
    pos, neg = scores[:, :t], scores[:, t:]
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)
    nll = torch.logaddexp(pos, neg_lse) - pos  # [B, T]
    return (nll * target_mask).sum(1) / target_mask.sum(1).clamp_min(1.0)


def regroup_grad_samples(model: RecModel, n_users: int, owner: np.ndarray | None = None) -> None:
    """Fold per-row grad samples into one per user: ``[B*K, ...]`` / ``[E, ...]`` -> ``[B, ...]``.

    The LoRA layers run on every example's K candidate texts; Opacus' hooks give one gradient
    per text. Summing each example's K rows, then (with `owner`, ``[E]`` user of each of E
    examples) each user's examples, makes one Opacus sample = one user, so clipping bounds a
    user's whole contribution (without this a user would get K times the clipping bound).
    """
    n_rows = n_users if owner is None else len(owner)
    for p in model.item_tower_params():
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if gs.shape[0] % max(n_rows, 1) != 0:
            raise RuntimeError(f"grad_sample rows {gs.shape[0]} not a multiple of {n_rows}")
        p.grad_sample = gs.view(n_rows, -1, *gs.shape[1:]).sum(1)  # type: ignore[attr-defined]
    if owner is None:
        return
    index = torch.from_numpy(np.asarray(owner, dtype=np.int64))
    for p in model.parameters():
        gs = getattr(p, "grad_sample", None)
        if gs is None or not p.requires_grad:
            continue
        if gs.shape[0] != n_rows:
            raise RuntimeError(f"grad_sample rows {gs.shape[0]} != {n_rows} examples")
        out = torch.zeros((n_users, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
        p.grad_sample = out.index_add_(0, index.to(gs.device), gs)  # type: ignore[attr-defined]


def negative_distribution(
    model: RecModel, pop_share: float
) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """Negative sampling distribution and its log-correction ``log(n * q_i)``.

    ``q = (1 - s) * uniform + s * popularity``, popularity from the model's released (public,
    already DP) histogram; None for uniform sampling or before any prior exists.
    """
    hist = np.clip(model.prior.detach().cpu().numpy().astype(np.float64), 0.0, None)
    if pop_share <= 0 or hist.sum() <= 0:
        return None, None
    n = hist.size
    q = (1 - pop_share) / n + pop_share * hist / hist.sum()
    q = q / q.sum()
    return q, torch.from_numpy(np.log(n * q)).float().to(model.device)


@dataclass
class TrainStats:
    """What one call to `train` did."""

    loss: float
    steps: int
    users_seen: int
    wall_s: float


def train(
    model: RecModel,
    cat: Catalogue,
    data: LocalData,
    cfg: TrainConfig,
    *,
    history_len: int,
    plan: DPPlan | None,
    clip: float,
    seed: int,
    proximal_mu: float = 0.0,
    anchor: dict[str, np.ndarray] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainStats:
    """Train `model` in place on `data`; DP-SGD (one Opacus sample = one user) if `plan`.

    With a plan: Poisson sampling at ``plan.sample_rate`` for ``plan.steps_per_round`` steps,
    per-user clipping at `clip`, Gaussian noise ``plan.sigma * clip`` (Opacus' DPOptimizer);
    with ``train.positions = "all"`` a sampled user brings all its positions as one sample.
    Without: shuffled batches of ``cfg.batch_users`` users (``"all"``: examples) for
    ``cfg.epochs`` epochs. The full-softmax losses read the catalogue's text states from a
    stop-gradient cache, refreshed every epoch (``"full"``; ``"full-cached"`` trains no LoRA).
    With ``proximal_mu > 0`` (FedProx), each step is followed by the proximal step
    ``w -= lr * mu * (w - anchor)``; it touches no data, so it costs no privacy. The step's
    learning rate follows ``train.lr-schedule`` (`lr_factor`).
    """
    rows = data.trainable()
    n = len(rows)
    t0 = time.perf_counter()
    if n == 0:
        return TrainStats(0.0, 0, 0, 0.0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    frozen = {id(p) for p in model.item_tower_params()} if cfg.loss == "full-cached" else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
    opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr)
    model.train()
    cuts = all_cuts(data.train, rows) if cfg.positions == "all" else None
    units = n if cuts is None else len(cuts[0])
    gsm, opt, sampler, epoch_steps = _sampling(model, opt, n, units, cfg, plan, clip, gen, rng)
    neg_probs, log_q = negative_distribution(model, cfg.negatives_pop_share)
    cache = text_cache(model, cat) if cfg.loss != "sampled" else None
    total_loss, seen = 0.0, 0
    try:
        for step, local in enumerate(sampler):
            opt.zero_grad(set_to_none=True)
            if cfg.loss == "full" and step and step % epoch_steps == 0:
                cache = text_cache(model, cat)
            if len(local) == 0:  # an empty Poisson batch still takes a noisy step
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device)  # type: ignore[attr-defined]
            else:
                ex = _examples(data, rows, local, cuts, cfg, plan is not None, history_len,
                               cat.n_items, rng, neg_probs)  # fmt: skip
                loss, count = _backward(model, ex, cat, cfg, cache, log_q, dp=plan is not None,
                                        per_position=cuts is not None)  # fmt: skip
                total_loss += loss
                seen += count
            lr = cfg.lr * lr_factor(cfg.lr_schedule, step, len(sampler))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            if proximal_mu > 0 and anchor is not None:
                _proximal_step(model, anchor, lr * proximal_mu)
            if progress is not None:
                progress(step + 1, len(sampler), total_loss / max(seen, 1))
    finally:
        if gsm is not None:
            gsm.remove_hooks()
        for p in model.parameters():
            p.grad_sample = None  # type: ignore[attr-defined]
        model.eval()
    return TrainStats(total_loss / max(seen, 1), len(sampler), seen, time.perf_counter() - t0)


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning-rate multiplier of step `step` (0-based) of a local round of `steps` steps.

    ``"constant"``: 1. ``"cosine"``: ``(1 + cos(pi * step / steps)) / 2``, from 1 at the first
    step down towards 0 at the last (each local round restarts it). Data-independent, so it
    costs no privacy under DP.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    raise ValueError(f"`train.lr-schedule` must be 'constant' or 'cosine', got {schedule!r}")


def _sampling(
    model: RecModel,
    opt: torch.optim.Optimizer,
    n_users: int,
    units: int,
    cfg: TrainConfig,
    plan: DPPlan | None,
    clip: float,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> tuple[GradSampleModule | None, torch.optim.Optimizer, list[np.ndarray], int]:
    """(grad-sample module, optimiser, batches, steps per epoch) of one local round.

    With a plan: Opacus' per-sample gradients and DPOptimizer, Poisson batches of the
    `n_users` users at the plan's sample rate (with every position, a sampled user brings all
    of its); without: shuffled batches of `units` (users, or every position).
    """
    if plan is None:
        batches = _shuffled_batches(units, cfg.epochs, cfg.batch_users, rng)
        return None, opt, batches, max(1, math.ceil(units / cfg.batch_users))
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    dp_opt = DPOptimizer(
        opt,
        noise_multiplier=0.0 if test_only_zero_noise() else plan.sigma,
        max_grad_norm=clip,
        expected_batch_size=max(1, round(plan.sample_rate * n_users)),
        loss_reduction="mean",
        generator=gen,
    )
    sampler = UniformWithReplacementSampler(
        num_samples=n_users, sample_rate=plan.sample_rate, generator=gen, steps=plan.steps_per_round
    )
    batches = [np.asarray(b, dtype=np.int64) for b in sampler]
    return gsm, dp_opt, batches, max(1, round(1 / plan.sample_rate))


def _backward(
    model: RecModel,
    ex: Examples,
    cat: Catalogue,
    cfg: TrainConfig,
    cache: torch.Tensor | None,
    log_q: torch.Tensor | None,
    *,
    dp: bool,
    per_position: bool,
) -> tuple[float, int]:
    """Loss and gradients of one batch of examples `ex`; (summed loss, users or examples).

    Under DP every user's examples sum to one user's loss and the per-sample gradients are
    regrouped per user (`regroup_grad_samples`), so Opacus clips users, not examples.
    """
    losses = example_losses(model, ex, cat, cfg, cache=cache, log_q=log_q, live_catalogue=not dp)
    if dp:
        losses = losses * user_weights(ex.owner, ex.n_users).to(losses.device)
    with warnings.catch_warnings():
        # Opacus' full backward hooks fire on module outputs because the cached
        # lower-layer states need no gradient: expected, and harmless here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        (losses.sum() if dp else losses.mean()).backward()
    if dp:
        regroup_grad_samples(model, ex.n_users, ex.owner if per_position else None)
    return float(losses.detach().sum()), ex.n_users if dp else len(losses)


def _shuffled_batches(
    units: int, epochs: float, batch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches of `batch` indices into `units`, over shuffled passes, for `epochs` epochs."""
    steps = max(1, math.ceil(epochs * units / batch))
    order = np.concatenate(
        [rng.permutation(units) for _ in range(math.ceil(steps * batch / units) + 1)]
    )
    return [order[i * batch : (i + 1) * batch] for i in range(steps)]


def _examples(
    data: LocalData,
    rows: np.ndarray,
    local: np.ndarray,
    cuts: tuple[np.ndarray, np.ndarray] | None,
    cfg: TrainConfig,
    dp: bool,
    history_len: int,
    n_items: int,
    rng: np.random.Generator,
    neg_probs: np.ndarray | None,
) -> Examples:
    """The step's examples: one random cut per sampled user, or every position.

    `local` indexes users (a random cut each, or with DP all of each user's cuts) or, with
    ``train.positions = "all"`` and no DP, (user, cut) examples.
    """
    negatives = cfg.negatives if cfg.loss == "sampled" else 0
    kw = dict(history_len=history_len, targets=cfg.targets_per_user, negatives=negatives,
              n_items=n_items, rng=rng, neg_probs=neg_probs)  # fmt: skip
    if cuts is None:
        b = make_batch(data, rows[local], **kw)  # type: ignore[arg-type]
        owner = np.arange(len(local))
        return Examples(
            b.hist, b.hist_mask, b.cands, b.target_mask, owner, len(local), prefix=b.prefix
        )
    if dp:
        ex_rows, ex_cuts = all_cuts(data.train, rows[local])
        first = np.concatenate([[0], np.cumsum([len(data.train[r]) - 1 for r in rows[local]])])
        owner = np.searchsorted(first, np.arange(len(ex_rows)), side="right") - 1
    else:
        ex_rows, ex_cuts = cuts[0][local], cuts[1][local]
        owner = np.arange(len(local))
    return examples_at(data.train, ex_rows, ex_cuts, owner, **kw)  # type: ignore[arg-type]


@torch.no_grad()
def _proximal_step(model: RecModel, anchor: dict[str, np.ndarray], rate: float) -> None:
    """Pull trainable weights towards the round's global weights (FedProx)."""
    from common.model.towers import trainable_state

    current = trainable_state(model)
    named = dict(model.named_parameters())
    for key, _value in current.items():
        if not key.startswith("head."):
            continue
        p = named[key[5:]]
        p.sub_(rate * (p - torch.from_numpy(anchor[key]).to(p.device)))
    for name, p in model.bert.named_parameters():
        if not p.requires_grad:
            continue
        for key in anchor:
            if key.startswith("lora.") and name.endswith(
                key[5:].replace(".weight", ".default.weight")
            ):
                p.sub_(rate * (p - torch.from_numpy(anchor[key]).to(p.device)))
