"""Centralised, non-private baselines: most-popular, EASE and item-kNN score functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch


def _flat_items(train: Sequence[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (user) and column (item) indices of every training interaction, validated."""
    if n_items < 1:
        raise ValueError(f"`n_items` must be positive, got {n_items}.")
    items = [np.asarray(t, dtype=np.int64).ravel() for t in train]
    cols = np.concatenate(items) if items else np.zeros(0, np.int64)
    if cols.size and (cols.min() < 0 or cols.max() >= n_items):
        raise ValueError(f"`train` holds item indices outside [0, {n_items}).")
    rows = np.repeat(np.arange(len(items)), [i.size for i in items])
    return rows, cols


def interaction_matrix(
    train: Sequence[np.ndarray], n_items: int, dtype: Any = np.float32
) -> sp.csr_matrix:
    """Binary user-item matrix X [len(train), n_items] (repeated interactions count once)."""
    rows, cols = _flat_items(train, n_items)
    x = sp.csr_matrix((np.ones(rows.size, dtype=dtype), (rows, cols)), shape=(len(train), n_items))
    x.sum_duplicates()
    x.data[:] = 1
    return x


def popularity_counts(train: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Float32 [n_items] number of training interactions per item (repeats counted)."""
    _, cols = _flat_items(train, n_items)
    return np.bincount(cols, minlength=n_items).astype(np.float32)


def _check_users(users: np.ndarray, n_users: int) -> np.ndarray:
    users = np.asarray(users)
    if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
        raise ValueError(f"`users` must be a 1-D integer array, got {users.dtype} {users.shape}.")
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"`users` holds indices outside [0, {n_users}).")
    return users.astype(np.int64)


class MostPopular:
    """Scores every item by its training popularity; all users get the same row."""

    def __init__(self, train: Sequence[np.ndarray], n_items: int) -> None:
        self.n_users, self.n_items = len(train), n_items
        self.counts = popularity_counts(train, n_items)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Float32 [len(users), n_items], each row equal to the popularity counts."""
        users = _check_users(users, self.n_users)
        return np.tile(self.counts, (users.size, 1))

    def scores_for(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The popularity row for each history (histories do not change the scores)."""
        return np.tile(self.counts, (len(histories), 1))


def _regularised_inverse(x: sp.csr_matrix, l2: float) -> torch.Tensor:
    """``(X^T X + l2 I)^-1`` in X's dtype, by Woodbury when there are fewer users than items.

    Woodbury: ``(X^T X + l2 I)^-1 = (I - X^T (X X^T + l2 I)^-1 X) / l2``, which only inverts a
    [n_users, n_users] matrix (in float64); otherwise a Cholesky inverse of the item Gram matrix.
    """
    n_users, n_items = x.shape
    if n_users < n_items:
        dense = torch.from_numpy(x.toarray())
        inner = (dense @ dense.T).double()
        inner.diagonal().add_(l2)
        k = torch.cholesky_inverse(torch.linalg.cholesky(inner)).to(dense.dtype)
        p = (dense.T @ k) @ dense
        p.neg_().diagonal().add_(1.0)
        return p.div_(l2)
    gram = torch.from_numpy((x.T @ x).toarray())
    gram.diagonal().add_(l2)
    return torch.cholesky_inverse(torch.linalg.cholesky(gram))


class EASE:
    """EASE (Steck 2019): ``P = (X^T X + l2 I)^-1``, ``B = I - P / diag(P)``, scores ``X_u B``.

    Entrywise ``B_ij = -P_ij / P_jj`` for i != j and ``B_jj = 0``. X is the binary training
    matrix; P comes from :func:`_regularised_inverse` (Cholesky in torch; Woodbury when users are
    fewer than items).
    """

    def __init__(
        self,
        train: Sequence[np.ndarray],
        n_items: int,
        *,
        l2: float = 100.0,
        dtype: Any = np.float32,
    ) -> None:
        if not l2 > 0:
            raise ValueError(f"`l2` must be positive, got {l2}.")
        self.n_users, self.n_items, self.l2 = len(train), n_items, l2
        self.x = interaction_matrix(train, n_items, dtype=dtype)
        p = _regularised_inverse(self.x, l2)
        diag = p.diagonal().clone()
        p.div_(-diag[None, :])
        p.diagonal().zero_()
        self.b: np.ndarray = p.numpy()

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Dense [len(users), n_items] scores ``X[users] @ B``."""
        users = _check_users(users, self.n_users)
        return np.asarray(self.x[users] @ self.b)

    def scores_for(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``X_h @ B`` for arbitrary item histories (e.g. train + validation item)."""
        return np.asarray(interaction_matrix(histories, self.n_items, dtype=self.b.dtype) @ self.b)


class ItemKNN:
    """Item-based kNN: cosine item-item similarity, the ``k_neighbors`` most similar kept per item.

    ``sim_ij = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (0 on the diagonal); for each target item j only
    its ``k_neighbors`` largest ``sim_ij`` are kept; ``score_uj = sum_{i in train_u} sim_ij``.
    """

    def __init__(
        self, train: Sequence[np.ndarray], n_items: int, *, k_neighbors: int = 100
    ) -> None:
        if k_neighbors < 1:
            raise ValueError(f"`k_neighbors` must be positive, got {k_neighbors}.")
        self.n_users, self.n_items, self.k_neighbors = len(train), n_items, k_neighbors
        self.x = interaction_matrix(train, n_items)
        gram = (self.x.T @ self.x).toarray()
        norm = np.sqrt(np.diag(gram)).astype(np.float32)
        norm[norm == 0] = 1.0
        sim = gram / norm[:, None] / norm[None, :]
        np.fill_diagonal(sim, 0.0)
        k = min(k_neighbors, n_items)
        keep = np.argpartition(-sim, k - 1, axis=0)[:k]  # [k, n_items]: neighbours i of each item j
        cols = np.broadcast_to(np.arange(n_items), keep.shape)
        vals = sim[keep, cols]
        self.sim = sp.csr_matrix(
            (vals.ravel(), (keep.ravel(), cols.ravel())), shape=(n_items, n_items)
        )
        self.sim.eliminate_zeros()

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Dense float32 [len(users), n_items] scores ``X[users] @ S``."""
        users = _check_users(users, self.n_users)
        return np.asarray((self.x[users] @ self.sim).toarray(), dtype=np.float32)

    def scores_for(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``X_h @ S`` for arbitrary item histories."""
        x = interaction_matrix(histories, self.n_items)
        return np.asarray((x @ self.sim).toarray(), dtype=np.float32)


BASELINES: dict[str, type] = {"most-popular": MostPopular, "ease": EASE, "item-knn": ItemKNN}


def create_baseline(name: str, train: Sequence[np.ndarray], n_items: int, **kwargs: Any) -> Any:
    """Build the baseline registered as ``name`` in :data:`BASELINES` on ``train``."""
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; known: {sorted(BASELINES)}.")
    return BASELINES[name](train, n_items, **kwargs)
