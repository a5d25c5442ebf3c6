"""Full-catalogue evaluation of a model on one party's users (same protocol as the baselines)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from common.evaluation.metrics import RankingEvaluator
from common.model.catalogue import Catalogue
from common.model.history import left_padded
from common.model.new_items import blend_new_items
from common.model.towers import RecModel
from common.model.train import LocalData


@torch.no_grad()
def item_matrix(model: RecModel, cat: Catalogue, *, batch: int = 512) -> torch.Tensor:
    """``[n_items, D]`` item vectors under the current adapter (one pass over the catalogue)."""
    model.eval()
    out = [
        model.encode_items(torch.arange(s, min(s + batch, cat.n_items)), cat)
        for s in range(0, cat.n_items, batch)
    ]
    return torch.cat(out)


def eval_histories(data: LocalData, which: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Known items (history and exclusion set) and target per user for `which`.

    Leave-one-out as in the sequential-recommendation literature: ``valid`` targets the
    second-to-last item with the train items known; ``test`` targets the last item with every
    earlier interaction known (train + validation item). Known items are the history and are
    excluded from the ranking. Models are trained on train items only; every method (model
    and baselines) scores from the same known items.
    """
    if which == "valid":
        return [np.asarray(t) for t in data.train], data.valid
    if which == "test":
        return [np.append(t, v) for t, v in zip(data.train, data.valid, strict=True)], data.test
    raise ValueError(f"`which` must be 'valid' or 'test', got {which!r}")


def _cached_items(model: RecModel, cat: Catalogue, path: Path) -> torch.Tensor:
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return torch.from_numpy(np.load(path)).to(model.device)
        items = item_matrix(model, cat)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, items.cpu().numpy())
        os.replace(tmp, path)
        return items


ScoreFn = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]


def model_score_fn(
    model: RecModel,
    cat: Catalogue,
    *,
    history_len: int,
    cache: Path | None = None,
    items: torch.Tensor | None = None,
) -> ScoreFn:
    """A function (local user rows, their known items) -> ``[B, n_items]`` scores.

    With `cache`, the item matrix is read from / written to that file (under a file lock,
    atomically): the caller keys it by the model state so it is computed once per state.
    """
    if items is None:
        items = _cached_items(model, cat, cache) if cache else item_matrix(model, cat)
    prior = model.public_scores().detach()

    @torch.no_grad()
    def score(rows: np.ndarray, known: list[np.ndarray]) -> np.ndarray:
        hist, mask = left_padded(known, history_len)
        dev = model.device
        ht, mt = torch.from_numpy(hist).to(dev), torch.from_numpy(mask).to(dev)
        users = model.encode_users(ht, mt, cat)
        cooc = model.cooc_of(known)
        public = prior if cooc is None else model.public_scores(cooc)
        s = users @ items.T / model.cfg.temperature + public
        s = blend_new_items(model, s, ht, mt, cat, known)
        return s.float().cpu().numpy()

    return score


def evaluate_scores(
    score: ScoreFn,
    data: LocalData,
    n_items: int,
    *,
    which: str = "test",
    evaluator: RankingEvaluator | None = None,
    chunk: int = 256,
    max_users: int = 0,
    seed: int = 0,
) -> RankingEvaluator:
    """Rank the whole catalogue for each user of `data`; accumulate into `evaluator`."""
    known, targets = eval_histories(data, which)
    ev = evaluator or RankingEvaluator(n_items, seed=seed)
    rows = np.arange(len(data))
    if max_users and max_users < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        kn = [known[i] for i in r]
        ev.add(data.users[r], score(r, kn), targets[r], kn)
    return ev


def item_cache_path(cache_dir: str, state_digest: str) -> Path:
    """Where the item matrix of one trainable state is cached (shared by all parties)."""
    from common.model.catalogue import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "items" / f"{state_digest}.npy"
