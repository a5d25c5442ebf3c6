"""Leave-one-out evaluation split, user-to-client partitioning and per-user genre labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.data.interactions import Interactions


@dataclass(frozen=True, eq=False)
class Split:
    """Leave-one-out split, indexed by user index.

    Attributes
    ----------
    train : tuple of np.ndarray
        Per user, item indices (int64) in chronological order, without the last two items and
        without ``cold_items``; may be empty when ``cold_start_share > 0``.
    valid, test : np.ndarray
        int64 ``[n_users]``: each user's second-to-last and last item.
    cold_items : np.ndarray
        int64 item indices removed from every train list (empty when ``cold_start_share == 0``).
    """

    train: tuple[np.ndarray, ...]
    valid: np.ndarray
    test: np.ndarray
    cold_items: np.ndarray


def leave_one_out(data: Interactions, *, cold_start_share: float = 0.0, seed: int = 0) -> Split:
    """Hold out each user's last item for test and second-to-last for validation.

    Interactions are ordered by timestamp; ties keep the original row order (stable sort).

    Parameters
    ----------
    data : Interactions
        Every user needs at least 3 interactions.
    cold_start_share : float
        In ``[0, 1)``: ``round(share * n_items)`` items, drawn with ``seed``, are removed from
        every train list (valid/test are unchanged), so they can only be ranked from their text.
        A user whose train items are all cold keeps an empty train array.
    seed : int
        Seed of the cold-item draw.

    Returns
    -------
    Split
    """
    if not 0.0 <= cold_start_share < 1.0:
        raise ValueError(f"`cold_start_share` should be in [0, 1), got {cold_start_share}.")
    counts = np.bincount(data.users, minlength=data.n_users)
    if len(short := np.flatnonzero(counts < 3)):
        user = short[0]
        raise ValueError(
            f"user {data.user_ids[user]} (index {user}) has {counts[user]} interactions; "
            "leave-one-out needs >= 3"
        )
    order = np.lexsort((np.arange(len(data.users)), data.timestamps, data.users))
    ends = np.cumsum(counts)
    sequences = np.split(data.items[order].astype(np.int64), ends[:-1])
    n_cold = int(round(cold_start_share * data.n_items))
    rng = np.random.default_rng(seed)
    cold_items = np.sort(rng.permutation(data.n_items)[:n_cold]).astype(np.int64)
    is_cold = np.zeros(data.n_items, dtype=bool)
    is_cold[cold_items] = True
    train = tuple(seq[:-2][~is_cold[seq[:-2]]] for seq in sequences)
    valid = np.array([seq[-2] for seq in sequences], dtype=np.int64)
    test = np.array([seq[-1] for seq in sequences], dtype=np.int64)
    return Split(train=train, valid=valid, test=test, cold_items=cold_items)


# ---------------------------------------------------------------- partitioning

_Partitioner = Callable[[int, int, np.random.Generator, float, np.ndarray | None], list[np.ndarray]]


def _iid(
    n_users: int, n_clients: int, rng: np.random.Generator, alpha: float, labels: np.ndarray | None
) -> list[np.ndarray]:
    """Shuffle users and cut them into ``n_clients`` parts whose sizes differ by at most one."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n_users), n_clients)]


def _dirichlet(
    n_users: int, n_clients: int, rng: np.random.Generator, alpha: float, labels: np.ndarray | None
) -> list[np.ndarray]:
    """Spread the users of each label class over clients with Dirichlet(alpha) proportions.

    Clients left empty are then given one user each, taken from the currently largest client.
    """
    if labels is None or len(labels) != n_users:
        got = "None" if labels is None else f"length {len(labels)}"
        raise ValueError(
            f"`labels` must hold one label per user ({n_users}) for mode 'dirichlet', got {got}."
        )
    if not alpha > 0:
        raise ValueError(f"`alpha` should be positive, got {alpha}.")
    owner = np.empty(n_users, dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, part in enumerate(np.split(members, cuts)):
            owner[part] = client
    sizes = np.bincount(owner, minlength=n_clients)
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        moved = rng.choice(np.flatnonzero(owner == donor))
        owner[moved], sizes[donor], sizes[empty] = empty, sizes[donor] - 1, 1
    return [np.flatnonzero(owner == client).astype(np.int64) for client in range(n_clients)]


def _per_user(
    n_users: int, n_clients: int, rng: np.random.Generator, alpha: float, labels: np.ndarray | None
) -> list[np.ndarray]:
    """One client per user: client ``k`` holds user ``k``."""
    if n_clients != n_users:
        raise ValueError(
            f"mode 'user' needs n_clients == n_users ({n_users}), got n_clients={n_clients}."
        )
    return [np.array([user], dtype=np.int64) for user in range(n_users)]


PARTITIONERS: dict[str, _Partitioner] = {"iid": _iid, "dirichlet": _dirichlet, "user": _per_user}


def partition_users(
    n_users: int,
    n_clients: int,
    *,
    mode: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    labels: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Assign each user index to exactly one of ``n_clients`` clients.

    Parameters
    ----------
    n_users, n_clients : int
        ``1 <= n_clients <= n_users``; every client gets at least one user.
    mode : str
        A key of :data:`PARTITIONERS`: ``"iid"`` (shuffled, near-equal sizes), ``"dirichlet"``
        (non-IID by ``labels``, concentration ``alpha``) or ``"user"`` (one client per user).
    seed : int
        Seed; equal arguments give equal partitions.
    alpha : float
        Dirichlet concentration (``"dirichlet"`` only); smaller is more skewed.
    labels : np.ndarray, optional
        One class label per user (``"dirichlet"`` only), e.g. :func:`dominant_genre`.

    Returns
    -------
    list of np.ndarray
        Sorted int64 user indices per client.
    """
    if mode not in PARTITIONERS:
        raise ValueError(f"unknown partitioning mode {mode!r}; valid modes: {sorted(PARTITIONERS)}")
    if n_users < 1:
        raise ValueError(f"`n_users` should be >= 1, got {n_users}.")
    if not 1 <= n_clients <= n_users:
        raise ValueError(
            f"`n_clients` should be in [1, n_users={n_users}] so none is empty, got {n_clients}."
        )
    labels = None if labels is None else np.asarray(labels)
    return PARTITIONERS[mode](n_users, n_clients, np.random.default_rng(seed), alpha, labels)


def genre_vocabulary(data: Interactions) -> tuple[str, ...]:
    """Return the sorted genre names of ``data``; :func:`dominant_genre` labels index into it."""
    return tuple(sorted({genre for genres in data.item_genres for genre in genres}))


def dominant_genre(data: Interactions, split: Split) -> np.ndarray:
    """Return, per user, the index (in :func:`genre_vocabulary`) of its most frequent train genre.

    Ties go to the lowest index; users whose train items carry no genre get ``-1``.
    """
    vocabulary = {genre: k for k, genre in enumerate(genre_vocabulary(data))}
    membership = np.zeros((data.n_items, max(len(vocabulary), 1)), dtype=np.int64)
    for item, genres in enumerate(data.item_genres):
        membership[item, [vocabulary[g] for g in genres]] = 1
    labels = np.full(len(split.train), -1, dtype=np.int64)
    for user, items in enumerate(split.train):
        counts = membership[items].sum(axis=0)
        if counts.max(initial=0) > 0:
            labels[user] = int(np.argmax(counts))
    return labels
