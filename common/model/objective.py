"""Training examples (one random cut or every position) and the sampled / full-softmax losses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.config.model import TrainConfig
from common.model.catalogue import Catalogue
from common.model.towers import RecModel


@dataclass
class Examples:
    """E training examples of U users: histories, targets (+ negatives) and each one's owner."""

    hist: torch.Tensor  # [E, H] item indices (left-padded with 0)
    hist_mask: torch.Tensor  # [E, H]
    cands: torch.Tensor  # [E, T+N]: T targets then N negatives
    target_mask: torch.Tensor  # [E, T]
    owner: np.ndarray  # [E] in [0, U): which of the step's users an example belongs to
    n_users: int
    prefix: tuple[np.ndarray, ...] | None = None  # each example's whole history (cooc_of)


def all_cuts(data_train: list[np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, cut) pair of `rows`: each position 1..len-1 of each user's train sequence."""
    r = [np.full(len(data_train[row]) - 1, row, dtype=np.int64) for row in rows]
    c = [np.arange(1, len(data_train[row]), dtype=np.int64) for row in rows]
    if not r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(r), np.concatenate(c)


def examples_at(
    data_train: list[np.ndarray],
    rows: np.ndarray,
    cuts: np.ndarray,
    owner: np.ndarray,
    *,
    history_len: int,
    targets: int,
    negatives: int,
    n_items: int,
    rng: np.random.Generator,
    neg_probs: np.ndarray | None = None,
) -> Examples:
    """One example per (row, cut): the items before the cut (history) and the next T (targets).

    `negatives` per example are drawn as in `common.model.train.make_batch` (public catalogue,
    uniform or `neg_probs`, resampled when they hit a target); 0 for the full softmax.
    """
    e = len(rows)
    hist = np.zeros((e, history_len), dtype=np.int64)
    hmask = np.zeros((e, history_len), dtype=np.float32)
    cands = np.zeros((e, targets + negatives), dtype=np.int64)
    tmask = np.zeros((e, targets), dtype=np.float32)
    prefix = []
    for j, (row, cut) in enumerate(zip(rows, cuts, strict=True)):
        seq = data_train[row]
        prefix.append(seq[:cut])
        h = seq[max(0, cut - history_len) : cut]
        hist[j, history_len - len(h) :] = h
        hmask[j, history_len - len(h) :] = 1
        t = seq[cut : cut + targets]
        cands[j, : len(t)] = t
        tmask[j, : len(t)] = 1
    if negatives:

        def draw(k: int) -> np.ndarray:
            if neg_probs is None:
                return np.asarray(rng.integers(0, n_items, k))
            return np.asarray(rng.choice(n_items, size=k, p=neg_probs))

        neg = draw(e * negatives).reshape(e, negatives)
        clash = (neg[:, :, None] == cands[:, None, :targets]).any(-1)
        while clash.any():
            neg[clash] = draw(int(clash.sum()))
            clash = (neg[:, :, None] == cands[:, None, :targets]).any(-1)
        cands[:, targets:] = neg
    n_users = int(owner.max()) + 1 if len(owner) else 0
    return Examples(
        torch.from_numpy(hist),
        torch.from_numpy(hmask),
        torch.from_numpy(cands),
        torch.from_numpy(tmask),
        owner,
        n_users,
        tuple(prefix),
    )


@torch.no_grad()
def text_cache(model: RecModel, cat: Catalogue, *, batch: int = 512) -> torch.Tensor:
    """``[n_items, H]`` text states of every item under the current adapter (stop-gradient)."""
    was = model.training
    model.eval()
    out = [
        model.text_items(torch.arange(s, min(s + batch, cat.n_items)), cat)
        for s in range(0, cat.n_items, batch)
    ]
    model.train(was)
    return torch.cat(out)


def example_losses(
    model: RecModel,
    ex: Examples,
    cat: Catalogue,
    cfg: TrainConfig,
    *,
    cache: torch.Tensor | None,
    log_q: torch.Tensor | None,
    live_catalogue: bool,
) -> torch.Tensor:
    """``[E]`` loss per example: mean over its targets of -log softmax(target vs the rest).

    ``train.loss = "sampled"``: against the example's negatives (log-Q corrected with `log_q`).
    ``"full"`` / ``"full-cached"``: against every other item of the catalogue, whose text states
    come from `cache` (stop-gradient); the targets are scored live through LoRA (``"full"``) or
    from the cache too (``"full-cached"``, LoRA gets no gradient). With `live_catalogue` the
    head (projection, ID embedding, bias) gets gradients from all items' scores; without it
    (under DP, where a catalogue-wide computation has no per-user gradient) those scores are
    constants and only the user tower and the targets' scores carry gradients.
    """
    from common.model.train import per_user_loss

    dev = model.device
    hist, hmask = ex.hist.to(dev), ex.hist_mask.to(dev)
    cands, tmask = ex.cands.to(dev), ex.target_mask.to(dev)
    if cfg.loss == "sampled":
        scores = model(hist, hmask, cands, cat, ex.prefix)
        if log_q is not None:  # sampled-softmax correction for non-uniform negatives
            scores = scores - log_q[cands]
        return per_user_loss(scores, tmask)
    if cache is None:
        raise RuntimeError("the full softmax needs the catalogue's text cache")
    table = model.user_proj(cat.frozen.to(dev)) if live_catalogue else None
    users = model.encode_users(hist, hmask, cat, table)
    cooc = model.cooc_rows(ex.prefix)
    targets = cands[:, : tmask.shape[1]]
    if cfg.loss == "full":
        pos = model.score_candidates(users, targets, cat, cooc)
    else:
        pos = model.score_text(users, cache[targets], targets, cooc)
    if live_catalogue:
        every = model.catalogue_scores(users, cache, cooc)
    else:
        with torch.no_grad():
            items = model.item_vectors(cache, torch.arange(cat.n_items, device=dev))
            add = model.public_scores()
        every = users @ items.T / model.cfg.temperature + add
        if cooc is not None and model.cooc_weight is not None:  # per user: keeps its gradient
            every = every + model.cooc_weight(cooc.unsqueeze(-1)).squeeze(-1)
    own = torch.where(tmask > 0, torch.full_like(pos, -torch.inf), every.gather(1, targets))
    rest = every.scatter(1, targets, own)  # the example's own targets leave the denominator
    return per_user_loss(torch.cat([pos, rest], dim=1), tmask)


def user_weights(owner: np.ndarray, n_users: int) -> torch.Tensor:
    """``[E]`` weight ``1 / (examples of its user)``: each user's examples sum to one user loss."""
    counts = np.bincount(owner, minlength=n_users).astype(np.float32)
    return torch.from_numpy(1.0 / counts[owner])
