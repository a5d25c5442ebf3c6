"""Ranking metrics (full and sampled) for leave-one-out evaluation; `RankingEvaluator`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.evaluation.exposure import exposure, exposure_profile, gini


def _check_batch(scores: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """Validate ``scores`` [n, n_items] and ``exclude`` (n arrays); return the exclusion mask."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be 2-D [n_users, n_items], got shape {scores.shape}.")
    if np.isnan(scores).any():
        raise ValueError("`scores` must not contain NaN.")
    n, n_items = scores.shape
    if len(exclude) != n:
        raise ValueError(
            f"`exclude` must hold one array per row of `scores` ({n}), got {len(exclude)}."
        )
    lengths = [len(e) for e in exclude]
    flat = (
        np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude])
        if n
        else np.zeros(0, np.int64)
    )
    if flat.size and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"`exclude` holds item indices outside [0, {n_items}).")
    mask = np.zeros(scores.shape, dtype=bool)
    mask[np.repeat(np.arange(n), lengths), flat] = True
    return mask


def _check_targets(targets: np.ndarray, n: int, n_items: int) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.shape != (n,) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"`targets` must be an int array of shape ({n},), got {targets.dtype} {targets.shape}."
        )
    if n and (targets.min() < 0 or targets.max() >= n_items):
        raise ValueError(f"`targets` holds item indices outside [0, {n_items}).")
    return targets.astype(np.int64)


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray]
) -> np.ndarray:
    """0-based expected rank of each target among the items that are not excluded.

    ``rank = #{j allowed: s_j > s_t} + #{j allowed, j != t: s_j == s_t} / 2``, i.e. the expected
    rank under uniformly random tie-breaking (a float; all-equal scores over m allowed items give
    (m - 1) / 2). Items in ``exclude[i]`` (usually the user's training items) are removed from the
    ranking, except the target itself, which is always ranked even if it also appears there.

    Parameters
    ----------
    scores : np.ndarray
        Float [n, n_items], higher is better (NaN rejected).
    targets : np.ndarray
        Int [n], the held-out item of each row.
    exclude : Sequence[np.ndarray]
        n int arrays of item indices to drop from each row's ranking.
    """
    mask = _check_batch(scores, exclude)
    scores = np.asarray(scores)
    targets = _check_targets(targets, *scores.shape)
    rows = np.arange(len(targets))
    mask[rows, targets] = False
    s_t = scores[rows, targets][:, None]
    greater = ((scores > s_t) & ~mask).sum(axis=1)
    equal = ((scores == s_t) & ~mask).sum(axis=1) - 1  # minus the target itself
    return greater + equal / 2.0


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, np.ndarray]:
    """Per-user ``hr@K``, ``ndcg@K`` per cut-off and ``mrr`` (vectors, one entry per rank).

    ``hr@K = [rank < K]``, ``ndcg@K = 1/log2(rank + 2)`` if rank < K else 0, ``mrr = 1/(rank + 1)``.

    With one relevant item per user the ideal DCG is 1, so NDCG equals DCG. ``ranks`` are 0-based
    and may be fractional (see :func:`target_ranks`). Empty ``ranks`` give empty vectors.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or (ranks < 0).any():
        raise ValueError(
            f"`ranks` must be a 1-D array of non-negative ranks, got shape {ranks.shape}."
        )
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"`ks` must hold positive cut-offs, got {k}.")
        hit = ranks < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Means over users of :func:`per_user_metrics`: ``hr@K``, ``ndcg@K`` per cut-off and ``mrr``.

    Denominator: the number of users (entries of ``ranks``). Empty ``ranks`` give 0.0 for every key.
    """
    per_user = per_user_metrics(ranks, ks)
    return {key: float(v.mean()) if v.size else 0.0 for key, v in per_user.items()}


def _sample_negatives(
    rng: np.random.Generator, n_items: int, forbidden: np.ndarray, n: int
) -> np.ndarray:
    """``n`` distinct items drawn uniformly from those not in ``forbidden`` (all if fewer)."""
    forbidden = np.unique(forbidden)
    draw = n + forbidden.size
    if draw >= n_items:
        return np.setdiff1d(np.arange(n_items), forbidden, assume_unique=True)
    # A uniform ordered draw, filtered, stays uniform; at most |forbidden| entries are lost.
    cand = rng.choice(n_items, size=draw, replace=False)
    return cand[~np.isin(cand, forbidden)][:n]


def _sampled_row(
    rng: np.random.Generator, row: np.ndarray, target: int, allowed_forbidden: np.ndarray, n: int
) -> float:
    negatives = _sample_negatives(rng, row.size, np.append(allowed_forbidden, target), n)
    s_t = row[target]
    return float((row[negatives] > s_t).sum() + (row[negatives] == s_t).sum() / 2.0)


def sampled_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    *,
    n_negatives: int = 100,
    rng: np.random.Generator,
) -> np.ndarray:
    """0-based expected rank of each target among itself and ``n_negatives`` sampled items.

    Negatives are drawn per user, uniformly without replacement, from the items that are neither
    in ``exclude[i]`` nor the target; if fewer are available all of them are used (the rank then
    equals :func:`target_ranks`). Ties count one half, as in :func:`target_ranks`.
    """
    if n_negatives < 0:
        raise ValueError(f"`n_negatives` must be >= 0, got {n_negatives}.")
    _check_batch(scores, exclude)
    scores = np.asarray(scores)
    targets = _check_targets(targets, *scores.shape)
    return np.array(
        [
            _sampled_row(
                rng, scores[i], int(targets[i]), np.asarray(exclude[i], np.int64), n_negatives
            )
            for i in range(len(targets))
        ],
        dtype=np.float64,
    )


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Int array [n, k] of the k best-scored items per row, best first, never an excluded item.

    Rows with fewer than k allowed items are padded with -1 at the end.
    """
    if k < 1:
        raise ValueError(f"`k` must be positive, got {k}.")
    mask = _check_batch(scores, exclude)
    work = -np.asarray(scores, dtype=np.float64)
    work[mask] = np.nan  # NaN sorts after every number, so excluded items come last
    k_eff = min(k, work.shape[1])
    part = np.argpartition(work, k_eff - 1, axis=1)[:, :k_eff]
    order = np.argsort(np.take_along_axis(work, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    out = np.full((work.shape[0], k), -1, dtype=np.int64)
    out[:, :k_eff] = top
    n_allowed = work.shape[1] - mask.sum(axis=1)
    out[np.arange(k)[None, :] >= n_allowed[:, None]] = -1
    return out


class RankingEvaluator:
    """Accumulates over user chunks so the full [n_users, n_items] matrix never needs to exist.

    Each :meth:`add` ranks one chunk (full ranking, sampled ranking and top-k); :meth:`result`
    averages over every user added so far. Sampled negatives come from a generator seeded with
    ``(seed, user)``, so results do not depend on how users are split into chunks or ordered.
    """

    def __init__(
        self,
        n_items: int,
        *,
        ks: Sequence[int] = (10,),
        n_negatives: int = 100,
        seed: int = 0,
        long_tail_items: np.ndarray | None = None,
    ) -> None:
        if n_items < 1:
            raise ValueError(f"`n_items` must be positive, got {n_items}.")
        if not ks or min(ks) < 1:
            raise ValueError(f"`ks` must hold positive cut-offs, got {tuple(ks)}.")
        if n_negatives < 0:
            raise ValueError(f"`n_negatives` must be >= 0, got {n_negatives}.")
        self.n_items, self.ks, self.n_negatives, self.seed = n_items, tuple(ks), n_negatives, seed
        self.long_tail_items = (
            None if long_tail_items is None else np.asarray(long_tail_items, np.int64)
        )
        self._users: list[np.ndarray] = []
        self._ranks: list[np.ndarray] = []
        self._sampled: list[np.ndarray] = []
        self._exposure = {k: np.zeros(n_items, dtype=np.float64) for k in self.ks}

    def add(
        self,
        users: np.ndarray,
        scores: np.ndarray,
        targets: np.ndarray,
        exclude: Sequence[np.ndarray],
    ) -> None:
        """Rank one chunk: ``scores`` [len(users), n_items]; one target and exclusion per user."""
        users = np.asarray(users, dtype=np.int64)
        scores = np.asarray(scores)
        if users.ndim != 1 or scores.shape != (users.size, self.n_items):
            raise ValueError(
                f"`scores` must have shape ({users.size}, {self.n_items}) for the given `users`, "
                f"got {scores.shape}."
            )
        ranks = target_ranks(scores, targets, exclude)
        sampled = np.array(
            [
                sampled_ranks(
                    scores[i : i + 1],
                    targets[i : i + 1],
                    exclude[i : i + 1],
                    n_negatives=self.n_negatives,
                    rng=np.random.default_rng([self.seed, int(u)]),
                )[0]
                for i, u in enumerate(users)
            ],
            dtype=np.float64,
        )
        # The target is ranked even when it is in `exclude`; keep top-k consistent with that.
        shown = [
            np.asarray(e, np.int64)[np.asarray(e) != t]
            for e, t in zip(exclude, targets, strict=True)
        ]
        top = top_k(scores, shown, max(self.ks))
        for k in self.ks:
            self._exposure[k] += exposure(top[:, :k], self.n_items)
        self._users.append(users)
        self._ranks.append(ranks)
        self._sampled.append(sampled)

    def _cat(self, parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def result(self) -> dict[str, float]:
        """Mean ranking metrics, ``sampled_*`` ones, ``coverage@K``, ``exposure_gini@K``, n_users.

        ``long_tail_share@K`` is included only when ``long_tail_items`` was given. With no users
        added every value is 0.0.
        """
        out = ranking_metrics(self._cat(self._ranks, np.float64), self.ks)
        sampled = ranking_metrics(self._cat(self._sampled, np.float64), self.ks)
        out.update({f"sampled_{key}": v for key, v in sampled.items()})
        for k, counts in self._exposure.items():
            out[f"coverage@{k}"] = float((counts > 0).sum() / self.n_items)
            if self.long_tail_items is not None:
                total = counts.sum()
                out[f"long_tail_share@{k}"] = (
                    float(counts[self.long_tail_items].sum() / total) if total else 0.0
                )
            out[f"exposure_gini@{k}"] = gini(counts)
        out["n_users"] = float(sum(u.size for u in self._users))
        return out

    def exposure(self, k: int = 10) -> np.ndarray:
        """How often each item appeared in the top-``k`` lists of the users added so far."""
        if k not in self._exposure:
            raise ValueError(f"no exposure kept for k={k}; cut-offs are {self.ks}.")
        return self._exposure[k].copy()

    def curves(self) -> dict[str, Any]:
        """``exposure_profile@K`` for every cut-off (see :func:`exposure_profile`), ``n_items``."""
        out: dict[str, Any] = {"n_items": self.n_items}
        for k, counts in self._exposure.items():
            out[f"exposure_profile@{k}"] = exposure_profile(counts)
        return out

    def per_user(self) -> dict[str, np.ndarray]:
        """``user``, ``rank`` and per-user ``hr@K``, ``ndcg@K``, ``mrr``, in the order added."""
        ranks = self._cat(self._ranks, np.float64)
        return {
            "user": self._cat(self._users, np.int64),
            "rank": ranks,
            **per_user_metrics(ranks, self.ks),
        }
