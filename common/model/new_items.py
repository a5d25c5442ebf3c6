"""Items the catalogue marks as new: scored by text similarity, placed by a rank anchor.

A new item has no interactions anywhere (in the simulations: the split's cold items, withheld
from every training history, `data.cold-start-share`; which items they are follows from the
catalogue size alone, so the flag is public). Its released popularity count is pure noise and
its trained per-item terms never moved, so the model's usual score says nothing about it and
the popularity prior buries it. The model blends per item instead: an item with popularity
evidence keeps ``text/LoRA similarity + w * prior``; a new item is scored by

    ``sim_i = tau * logsumexp_h(cos(f_i, f_h) / tau)``

with ``f`` the frozen backbone's item vectors over the user's history ``h`` (a soft maximum,
``tau`` = `SIM_TEMPERATURE`), placed in the user's own ranking: with ``model.new-item-rank`` K
> 0 (the default) it scores ``anchor_u + a * (sim_i - max_j sim_j) / T``, where ``anchor_u``
is just below the user's K-th best other unseen item (`rank_anchor`), ``T`` the model's
temperature and ``a`` = `model.new-item-text-weight`: the user's most similar new item ranks
K + 1, the others follow by similarity. Because the anchor is the user's own score, where
the first new item lands does not depend on how the model's scores are scaled (with or
without DP, central or federated); the spread of the others (``a / T`` per unit of
similarity) is in score units, so how they interleave with the other items still does.
With K = 0 the older popularity-credit form ``a * sim_i / T + w * c`` applies (``w`` the
trained prior weight, ``c`` = `model.new-item-prior`), whose one global ``c`` moves every new
item of every user at once. Only public text, the user's history and the model's
scores of other items enter; nothing is trained or released. K and ``a`` were chosen on the
validation item (`simulations.new_items --ranks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.model.catalogue import Catalogue
from common.model.towers import RecModel

# Soft maximum over the history's similarities: chosen on the validation item over the mean
# and the hard maximum of the frozen cosine (BENCHMARKS.md, "Issue 13, goal 4: cold-start items").
SIM_TEMPERATURE = 0.1


def set_new_items(model: RecModel, items: np.ndarray) -> None:
    """Mark `items` (indices into the catalogue) as new; an empty array marks none."""
    items = np.asarray(items, dtype=np.int64)
    n = int(model.prior.numel())
    if items.size and (items.min() < 0 or items.max() >= n):
        raise ValueError(f"new item indices must be in [0, {n}), got {items.min()}..{items.max()}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(items)] = True
    model.new_item = mask.to(model.prior.device)


def new_item_index(model: RecModel) -> torch.Tensor | None:
    """Indices of the items marked new, or None (none marked, or `model.new-items` off)."""
    mask = model.new_item
    if not model.cfg.new_items or not bool(mask.any()):
        return None
    return mask.nonzero().squeeze(1)


def history_cosines(
    hist: torch.Tensor, hist_mask: torch.Tensor, items: torch.Tensor, cat: Catalogue
) -> torch.Tensor:
    """``[B, T, M]`` frozen cosine of each history position to each of `items`; -inf on padding."""
    dev = hist.device
    unit = torch.nn.functional.normalize
    cand = unit(cat.frozen[items.cpu()].float(), dim=-1).to(dev)  # [M, H]
    past = unit(cat.frozen[hist.cpu()].float(), dim=-1).to(dev)  # [B, T, H]
    return (past @ cand.T).masked_fill(hist_mask.to(dev).unsqueeze(-1) == 0, float("-inf"))


def soft_weights(cos: torch.Tensor) -> torch.Tensor:
    """The soft maximum's weights over the history (dim 1) of `history_cosines`' output."""
    return torch.nan_to_num(torch.softmax(cos / SIM_TEMPERATURE, dim=1))  # empty history: 0


def soft_maximum(cos: torch.Tensor) -> torch.Tensor:
    """``[B, M]`` soft maximum over the history (dim 1) of `history_cosines`' output."""
    out = SIM_TEMPERATURE * torch.logsumexp(cos / SIM_TEMPERATURE, dim=1)
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))  # empty history: 0


def text_similarity(
    hist: torch.Tensor, hist_mask: torch.Tensor, items: torch.Tensor, cat: Catalogue
) -> torch.Tensor:
    """``[B, M]`` soft maximum over each history of the frozen cosine to each of `items`."""
    return soft_maximum(history_cosines(hist, hist_mask, items, cat))


def rank_anchor(
    scores: torch.Tensor,
    new: torch.Tensor,
    rank: int,
    known: Sequence[np.ndarray] | None = None,
    hist: torch.Tensor | None = None,
    hist_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, 1]``: the largest score below each user's `rank`-th best other candidate.

    Candidates are the items not marked `new` and not known to the user (`known`, else the
    history positions of `hist` under `hist_mask`); a user with fewer candidates anchors below
    the last of them, one with none at 0. A new item scored exactly the anchor ranks right
    after that candidate.
    """
    warm = scores.detach().clone()
    warm[:, new.to(warm.device)] = -torch.inf
    if known is not None:
        for j, k in enumerate(known):
            warm[j, torch.as_tensor(np.asarray(k, dtype=np.int64), device=warm.device)] = -torch.inf
    elif hist is not None and hist_mask is not None:
        keep = hist_mask.to(warm.device) > 0
        rows = torch.arange(len(warm), device=warm.device).unsqueeze(1).expand_as(hist)
        warm[rows[keep], hist.to(warm.device)[keep]] = -torch.inf
    top = torch.topk(warm, min(rank, warm.shape[1]), dim=1).values  # [B, rank], descending
    finite = torch.isfinite(top)
    last = finite.sum(1).clamp_min(1) - 1  # the rank-th candidate, or the last there is
    q = top.gather(1, last.unsqueeze(1))
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    return torch.nextafter(q, torch.full_like(q, -torch.inf))


def new_item_parts(
    model: RecModel,
    hist: torch.Tensor,
    hist_mask: torch.Tensor,
    cat: Catalogue,
    scores: torch.Tensor | None = None,
    known: Sequence[np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(new item indices ``[M]``, text part ``[B, M]``, prior part ``[M]`` or ``[B, 1]``) or None.

    With ``model.new-item-rank`` K > 0 the prior part is the user's rank anchor (`rank_anchor`
    of `scores`, the other items' scores, which it then needs) and the text part
    ``a * (sim - max sim) / T`` <= 0: the user's most similar new item ranks right after their
    K-th best other unseen item, the rest follow by text similarity. With K = 0, the text part
    is ``a * sim / T`` and the prior part ``w * c``; before a prior is released (all zeros: no
    prior round yet, or none under central DP) the other items carry no popularity term
    either, so neither does a new item.
    """
    idx = new_item_index(model)
    if idx is None:
        return None
    cfg = model.cfg
    sim = text_similarity(hist, hist_mask, idx, cat)
    if cfg.new_item_rank > 0:
        if scores is None:
            raise ValueError("model.new-item-rank > 0 needs the other items' scores")
        best = sim.max(dim=1, keepdim=True).values
        text = cfg.new_item_text_weight * (sim - best) / cfg.temperature
        anchor = rank_anchor(scores, idx, cfg.new_item_rank, known, hist, hist_mask)
        return idx, text.to(scores.dtype), anchor.to(text.device)
    text = cfg.new_item_text_weight * sim / cfg.temperature
    released = cfg.prior and bool(model.prior.any())
    weight = model.prior_weight.weight.reshape(()) if released else torch.zeros(())
    prior = (weight * cfg.new_item_prior).expand(idx.numel()).to(text.device)
    return idx, text, prior


def blend_new_items(
    model: RecModel,
    scores: torch.Tensor,
    hist: torch.Tensor,
    hist_mask: torch.Tensor,
    cat: Catalogue,
    known: Sequence[np.ndarray] | None = None,
) -> torch.Tensor:
    """`scores` ``[B, n_items]`` with the new items' columns set, in place, to their new score.

    `known`: each user's items that will not be recommended (for the rank anchor; default:
    the history positions).
    """
    parts = new_item_parts(model, hist, hist_mask, cat, scores, known)
    if parts is None:
        return scores
    idx, text, prior = parts
    scores[:, idx.to(scores.device)] = (text + prior).to(scores.dtype)
    return scores
