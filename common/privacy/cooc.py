"""The DP co-occurrence release: a per-user-normalised Gram matrix of head items, and EASE on it.

Shared by the model's round-0 co-occurrence statistics (`model.cooc-items`, released by each
site beside its popularity prior) and the DP-EASE baseline (`common.evaluation.dp_baselines`).
Each user's distinct items among the head form one unit-L2-norm vector ``v``; the Gram
``G = sum_u v_u v_u^T`` changes by ``v v^T`` (Frobenius norm <= 1) when one user is added or
removed, so ``G + N(0, sigma^2)`` per entry is the Gaussian mechanism of sensitivity 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from common.evaluation.baselines import interaction_matrix
from common.privacy.accounting import PrivacyError, test_only_zero_noise


def unit_rows(
    train: Sequence[np.ndarray], n_items: int, items: np.ndarray | None = None
) -> sp.csr_matrix:
    """Float64 [users, len(items)] binary rows on `items` (all items if None), unit L2 norm each.

    A user with no item in `items` keeps a zero row.
    """
    x = interaction_matrix(train, n_items, dtype=np.float64)
    if items is not None:
        x = x[:, np.asarray(items, dtype=np.int64)].tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ x)


def normalised_gram(train: Sequence[np.ndarray], n_items: int, items: np.ndarray) -> np.ndarray:
    """Dense float64 ``sum_u v_u v_u^T`` over `items` (rows normalised on `items`)."""
    v = unit_rows(train, n_items, items)
    return np.asarray((v.T @ v).toarray())


def gram_sensitivity() -> float:
    """L2 (Frobenius) sensitivity of `normalised_gram` under adding/removing one user: 1.

    Derivation: the neighbour differs by one term ``v v^T`` with ``||v||_2 in {0, 1}``, and
    ``||v v^T||_F^2 = sum_ij v_i^2 v_j^2 = (sum_i v_i^2)^2 = ||v||_2^4 <= 1``. The items are
    fixed by an earlier DP release (post-processing), so the normalisation does not depend on
    other users. Releasing ``G + (E + E^T)/2`` with iid ``E`` is post-processing of the
    Gaussian mechanism ``G + E`` on the ``n^2`` entries, whose multiplier is ``sigma / 1``.
    (Under replace-one it would be ``sqrt(2 - 2 (a.b)^2) <= sqrt(2)``; not used here.)
    """
    return 1.0


def gaussian_release(value: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``value + N(0, sigma^2)`` per entry (sensitivity-1 Gaussian mechanism); loud on bad sigma."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise PrivacyError(f"a DP release needs a finite noise multiplier > 0, got {sigma}")
    if test_only_zero_noise():
        return np.array(value, dtype=np.float64, copy=True)
    return value + rng.normal(0.0, sigma, size=value.shape)


def release_gram(gram: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``G + (E + E^T) / 2`` with ``E`` iid ``N(0, sigma^2)`` (see `gram_sensitivity`)."""
    noisy = gaussian_release(gram, sigma, rng)
    return (noisy + noisy.T) / 2.0


def psd_projection(gram: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix (negative eigenvalues set to zero)."""
    w, q = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    return np.asarray((q * np.maximum(w, 0.0)) @ q.T)


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's ``B`` of a PSD Gram: ``P = (G + l2 I)^-1``, ``B_ij = -P_ij / P_jj``, zero diagonal."""
    if not l2 > 0:
        raise ValueError(f"EASE needs l2 > 0, got {l2}")
    g = torch.from_numpy(np.array(gram, dtype=np.float64, copy=True))
    g.diagonal().add_(l2)
    p = torch.cholesky_inverse(torch.linalg.cholesky(g))
    b = (p / -p.diagonal()[None, :]).numpy()
    np.fill_diagonal(b, 0.0)
    return np.asarray(b)


def head_items(prior: np.ndarray, n: int) -> np.ndarray:
    """The `n` items with the largest (noisy, public) prior, largest first; ties by index."""
    return np.argsort(-np.asarray(prior, dtype=np.float64), kind="stable")[: min(n, len(prior))]


def ease_table(
    gram: np.ndarray, prior: np.ndarray, *, l2: float, history_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(head items, float32 EASE ``B``) of a released Gram of the prior's top items.

    The Gram is PSD-projected first (the noise can make it indefinite); ``B`` is divided by
    ``rms(B) * sqrt(history_len)`` so that a history's summed scores are about unit-scaled
    whatever the noise level or data size. Post-processing of released values only.
    """
    b = ease_weights(psd_projection(gram), l2)
    rms = float(np.sqrt(np.mean(b**2))) * math.sqrt(history_len)
    return head_items(prior, b.shape[0]), (b / max(rms, 1e-12)).astype(np.float32)


def flat_history(
    seqs: Sequence[np.ndarray], *, window: int | None, decay: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, item, weight) of every item the co-occurrence score reads, flat (no padding).

    Each chronological sequence contributes its last `window` items (None: all of them),
    weighted ``decay ** age`` (age 0 = its last item; decay 0: every item 1, the equal weights
    of the window form, `model.cooc-decay` = 0).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"`model.cooc-decay` must be in [0, 1], got {decay}")
    lens = np.array([len(q) if window is None else min(len(q), window) for q in seqs], np.int64)
    if not lens.sum():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    items = np.concatenate([np.asarray(q, np.int64)[len(q) - n :] for q, n in zip(seqs, lens,
                                                                                  strict=True)])
    rows = np.repeat(np.arange(len(seqs), dtype=np.int64), lens)
    age = np.repeat(np.cumsum(lens), lens) - 1 - np.arange(len(items))
    weights = np.ones(len(items)) if decay == 0.0 else decay ** age.astype(np.float64)
    return rows, items, weights.astype(np.float32)


def history_scores(
    flat: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n_rows: int,
    head: torch.Tensor,
    b: torch.Tensor,
    n_items: int,
) -> torch.Tensor:
    """``[n_rows, n_items]``: each row's ``x_head @ B`` from its flat (row, item, weight) triples.

    ``x_head`` holds each distinct head item of the row once, at the largest weight it has
    there (its most recent occurrence); items outside the head score 0 and weigh nothing.
    """
    rows, items, weights = flat
    width = head.numel() + 1  # the last column collects items outside the head
    slot = torch.full((n_items,), head.numel(), dtype=torch.long, device=head.device)
    slot[head] = torch.arange(head.numel(), device=head.device)
    x = torch.zeros(n_rows * width, device=head.device)
    x.scatter_reduce_(0, rows.to(head.device) * width + slot[items.to(head.device)],
                      weights.to(head.device, torch.float32), reduce="amax")  # fmt: skip
    out = torch.zeros(n_rows, n_items, device=head.device)
    out[:, head] = x.view(n_rows, width)[:, :-1] @ b
    return out


def local_cooc(
    histories: Sequence[np.ndarray], n_items: int, head: np.ndarray, *, sigma: float, seed: int
) -> np.ndarray:
    """This party's co-occurrence release: `normalised_gram` of `head`, noised if sigma > 0.

    ``sigma = 0`` (no DP) returns the exact matrix; the noise is `release_gram`'s (symmetric,
    sensitivity 1, zeroed only by the test-only switch).
    """
    if sigma < 0 or math.isnan(sigma):
        raise PrivacyError(f"co-occurrence noise must be >= 0, got {sigma}")
    gram = normalised_gram(histories, n_items, head)
    if sigma == 0:
        return gram
    return release_gram(gram, sigma, np.random.default_rng(seed))
