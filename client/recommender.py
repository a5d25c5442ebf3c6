"""The recommender API: top-K unseen items with explanations, for a user id or a history."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.base import ConfigError
from common.config.data import DataConfig
from common.data.interactions import Interactions
from common.evaluation.evaluate import item_matrix
from common.io import clean_json
from common.model.adapter import AdapterInfo, catalogue_digest, open_adapter
from common.model.history import left_padded
from common.model.new_items import (
    history_cosines,
    new_item_parts,
    set_new_items,
    soft_maximum,
    soft_weights,
)
from common.model.towers import RecModel
from common.task import device, load_catalogue, load_corpus


class RequestError(ValueError):
    """A request the recommender cannot answer (unknown user or item, bad k): the caller's fault."""


@dataclass(frozen=True)
class Driver:
    """A history item behind a recommendation: its attention weight and share of the score.

    ``contribution`` is its exact additive part of the similarity term (the similarities of
    all history items sum to it); ``attention`` is its weight in the user tower (for a new
    item: its weight in the soft maximum over the history).
    """

    item: Any
    text: str
    attention: float
    contribution: float


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: ``score = similarity + popularity``.

    ``similarity`` is the two towers' cosine / temperature, ``popularity`` the terms from
    released statistics and per-item parameters (the weighted DP popularity prior, the item
    bias and, with `model.cooc-items`, the weighted DP co-occurrence score of the history);
    ``popularity_share = |popularity| / (|similarity| + |popularity|)``.

    A ``new_item`` (the catalogue marks it new: no interactions anywhere, `common.model.new_items`)
    is scored by the frozen text similarity to the history: ``similarity`` is
    ``a x sim / T``, and ``popularity`` the rest of its score, i.e. its placement (with
    `model.new-item-rank` the user's rank anchor less ``a x max sim / T``; with the credit form
    the new-item prior), which involves no popularity of its own (``popularity_share`` 0); its
    drivers' contributions are the soft maximum's weights times their similarity, which sum to
    the similarity less the soft maximum's entropy term.
    """

    rank: int
    item: Any
    text: str
    score: float
    similarity: float
    popularity: float
    popularity_share: float
    because: list[Driver] = field(default_factory=list)
    new_item: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return clean_json(asdict(self))  # type: ignore[no-any-return]


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def user_sequences(data: Interactions) -> list[np.ndarray]:
    """Per user, every interacted item index in time order (ties keep file order)."""
    order = np.lexsort((np.arange(len(data.users)), data.timestamps, data.users))
    counts = np.bincount(data.users, minlength=data.n_users)
    return np.split(data.items[order].astype(np.int64), np.cumsum(counts)[:-1])


class Recommender:
    """Top-K for a site's users or for explicit histories, under one adapter."""

    def __init__(self, model: RecModel, info: AdapterInfo, data: Interactions) -> None:
        if data.n_items != info.n_items:
            raise ConfigError(f"the data has {data.n_items} items, the adapter was trained on "
                              f"{info.n_items}: not the catalogue of this adapter")  # fmt: skip
        digest = catalogue_digest(data.item_ids, data.item_texts)
        if info.catalogue and digest != info.catalogue:
            raise ConfigError("the data's catalogue (item ids and texts) is not the one the "
                              f"adapter was trained on (digest {digest}, expected "
                              f"{info.catalogue})")  # fmt: skip
        self.model, self.info, self.data = model, info, data
        n_layers = model.n_lower + model.cfg.lora.layers
        self.cat = load_catalogue(model.cfg, data.item_texts, n_layers)
        with torch.no_grad():
            self.items = item_matrix(model, self.cat)
            self.prior = model.public_scores().detach()  # weighted prior + item bias
        self.new_item = model.new_item.cpu().numpy()
        self.sequences = user_sequences(data)
        self.user_index = {str(_native(u)): i for i, u in enumerate(data.user_ids)}
        self.item_index = {str(_native(v)): i for i, v in enumerate(data.item_ids)}

    @classmethod
    def load(
        cls, adapter: str | Path, data: DataConfig, *, backbone: str | None = None,
        cache_dir: str = "",
    ) -> Recommender:  # fmt: skip
        """Open `adapter` (see `common.model.adapter.open_adapter`) over the site data of `data`."""
        model, info = open_adapter(adapter, backbone=backbone, cache_dir=cache_dir,
                                   device=device())  # fmt: skip
        corpus = load_corpus(data)
        set_new_items(model, corpus.new_items)
        return cls(model, info, corpus.every_user)  # set-aside users too

    def user_ids(self) -> list[Any]:
        """Every user id of the site's data."""
        return [_native(u) for u in self.data.user_ids]

    def _items(self, ids: Sequence[Any], what: str) -> np.ndarray:
        missing = [i for i in ids if str(i) not in self.item_index]
        if missing:
            raise RequestError(f"unknown item id(s) in {what}: {missing[:10]}")
        return np.array([self.item_index[str(i)] for i in ids], dtype=np.int64)

    def for_user(self, user: Any, k: int = 10, *, explain: int = 3) -> list[Recommendation]:
        """Top-`k` unseen items for a user id of the site's data (history = its interactions)."""
        if str(user) not in self.user_index:
            raise RequestError(f"unknown user id {user!r}")
        seq = self.sequences[self.user_index[str(user)]]
        return self._rank([seq], [seq], k, explain)[0]

    def for_history(
        self, history: Sequence[Any], k: int = 10, *, exclude: Sequence[Any] = (),
        explain: int = 3,
    ) -> list[Recommendation]:  # fmt: skip
        """Top-`k` for an explicit history of item ids (oldest first); history items excluded."""
        hist = self._items(history, "history")
        seen = np.concatenate([hist, self._items(exclude, "exclude")])
        return self._rank([hist], [seen], k, explain)[0]

    def for_all(
        self, k: int = 10, *, explain: int = 3, chunk: int = 256
    ) -> Iterator[tuple[Any, list[Recommendation]]]:
        """(user id, top-`k`) for every user of the site's data, in user-id order."""
        ids = self.user_ids()
        for s in range(0, len(ids), chunk):
            seqs = self.sequences[s : s + chunk]
            yield from zip(ids[s : s + chunk], self._rank(seqs, seqs, k, explain), strict=True)

    @torch.no_grad()
    def _rank(
        self, hists: list[np.ndarray], seen: list[np.ndarray], k: int, explain: int
    ) -> list[list[Recommendation]]:
        if not 1 <= k <= self.data.n_items:
            raise RequestError(f"k must be in [1, {self.data.n_items}], got {k}")
        if explain < 0:
            raise RequestError(f"explain must be >= 0, got {explain}")
        hist, mask = left_padded(hists, self.info.history_len)
        dev, temp = self.model.device, self.model.cfg.temperature
        ht, mt = torch.from_numpy(hist).to(dev), torch.from_numpy(mask).to(dev)
        x, w = self.model.attend(ht, mt, self.cat)
        cooc = self.model.cooc_of(hists)
        public = self.prior.expand(len(hists), -1)
        if cooc is not None:
            public = self.model.public_scores(cooc)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-9)
        pooled = (w.unsqueeze(-1) * x).sum(1)
        norm = pooled.norm(dim=-1).clamp_min(1e-12)  # as F.normalize
        sim = (pooled / norm.unsqueeze(-1)) @ self.items.T / temp
        new = new_item_parts(self.model, ht, mt, self.cat, sim + public, seen)
        if new is not None:
            sim, public = sim.clone(), public.clone()
            sim[:, new[0]] = new[1].to(sim)
            public[:, new[0]] = new[2].to(public).expand(len(hists), -1)
        scores = sim + public
        for j, s in enumerate(seen):
            scores[j, torch.from_numpy(np.asarray(s, dtype=np.int64))] = -torch.inf
        out = []
        for j in range(len(hists)):
            n_free = int(torch.isfinite(scores[j]).sum())
            top = torch.topk(scores[j], min(k, n_free)).indices
            parts = (w[j].unsqueeze(0) * (self.items[top] @ x[j].T)) / (norm[j] * temp)
            weights = w[j].expand(len(top), -1).clone()
            text: dict[int, float] = {}
            if new is not None:
                text = self._new_item_parts(top, ht[j], mt[j], parts, weights)
            split = [(float(sim[j, i]), float(public[j, i])) if r not in text else
                     (text[r], float(scores[j, i]) - text[r])
                     for r, i in enumerate(top.tolist())]  # fmt: skip
            out.append([self._rec(r, int(i), *split[r], parts[r], hist[j], weights[r], explain)
                        for r, i in enumerate(top.tolist())])  # fmt: skip
        return out

    def _new_item_parts(
        self, top: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor, parts: torch.Tensor,
        weights: torch.Tensor,
    ) -> dict[int, float]:  # fmt: skip
        """Each new item's rows of `parts` and `weights` (in place): its soft-maximum drivers.

        Returns each new item's text part ``a x sim / T`` by its row in `top`.
        """
        rows = [r for r, i in enumerate(top.tolist()) if self.new_item[i]]
        if not rows:
            return {}
        cos = history_cosines(hist[None], mask[None], top[rows], self.cat)  # [1, T, R]
        soft = soft_weights(cos)[0].T  # [R, T]
        cfg = self.model.cfg
        drive = cfg.new_item_text_weight * soft * torch.nan_to_num(cos[0].T, neginf=0.0)
        parts[rows] = (drive / cfg.temperature).to(parts)
        weights[rows] = soft.to(weights)
        text = cfg.new_item_text_weight * soft_maximum(cos)[0] / cfg.temperature
        return dict(zip(rows, text.tolist(), strict=True))

    def _rec(
        self, rank: int, item: int, sim: float, pop: float, parts: torch.Tensor,
        hist: np.ndarray, w: torch.Tensor, explain: int,
    ) -> Recommendation:  # fmt: skip
        real = torch.nonzero(w > 0).flatten()
        order = real[torch.argsort(parts[real], descending=True)][:explain].tolist()
        because = [Driver(_native(self.data.item_ids[hist[p]]), self.data.item_texts[hist[p]],
                          float(w[p]), float(parts[p])) for p in order]  # fmt: skip
        total = abs(sim) + abs(pop)
        new = bool(self.new_item[item])
        share = 0.0 if new or total == 0 else abs(pop) / total  # a new item has no popularity
        return Recommendation(
            rank + 1, _native(self.data.item_ids[item]), self.data.item_texts[item], sim + pop,
            sim, pop, share, because, new,
        )  # fmt: skip
