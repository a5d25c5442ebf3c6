"""Tests of the leave-one-out split, client partitioning and dominant-genre labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.loaders import Interactions, load_dataset
from common.data.split import (
    PARTITIONERS,
    Split,
    dominant_genre,
    genre_vocabulary,
    leave_one_out,
    partition_users,
)
from common.data.synthetic import generate

REAL_DIR = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"  # embedded copy


def make(
    users: list[int], items: list[int], times: list[int], genres: list[tuple[str, ...]]
) -> Interactions:
    n_users, n_items = max(users) + 1, len(genres)
    return Interactions(
        name="tiny",
        item_ids=np.arange(10, 10 + n_items, dtype=np.int64),
        item_texts=tuple(f"item {i}" for i in range(n_items)),
        item_genres=tuple(genres),
        user_ids=np.arange(100, 100 + n_users, dtype=np.int64),
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        timestamps=np.array(times, dtype=np.int64),
    )


GENRES = [("Drama",), ("Comedy",), ("Comedy", "Drama"), (), ("Action",)]
TINY = make(
    users=[1, 0, 0, 0, 1, 0, 1],
    items=[4, 0, 1, 2, 3, 3, 0],
    times=[9, 5, 5, 3, 1, 7, 2],
    genres=GENRES,
)


def check_invariants(data: Interactions, split: Split) -> None:
    """Train + valid + test is each user's time-ordered history, and test is the latest."""
    for user in range(data.n_users):
        rows = np.flatnonzero(data.users == user)
        rows = rows[np.argsort(data.timestamps[rows], kind="stable")]
        history = data.items[rows]
        assert np.array_equal(
            np.concatenate([split.train[user], [split.valid[user], split.test[user]]]), history
        )
        assert data.timestamps[rows[-1]] == data.timestamps[data.users == user].max()


def test_leave_one_out_orders_by_time_with_stable_ties() -> None:
    split = leave_one_out(TINY)
    assert split.train[0].tolist() == [2, 0] and split.train[1].tolist() == [3]
    assert split.valid.tolist() == [1, 0] and split.test.tolist() == [3, 4]
    assert split.cold_items.size == 0 and split.train[0].dtype == np.int64
    check_invariants(TINY, split)


def test_leave_one_out_needs_three_interactions() -> None:
    data = make([0, 0, 0, 1, 1], [0, 1, 2, 0, 1], [1, 2, 3, 1, 2], GENRES)
    with pytest.raises(ValueError, match="user 101 .* 2 interactions"):
        leave_one_out(data)


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_cold_start_share_range(share: float) -> None:
    with pytest.raises(ValueError, match="cold_start_share"):
        leave_one_out(TINY, cold_start_share=share)


def test_cold_start_removes_items_from_train_only() -> None:
    data = generate(n_users=50, n_items=100, seed=2)
    plain, cold = leave_one_out(data), leave_one_out(data, cold_start_share=0.2, seed=5)
    assert len(cold.cold_items) == 20 and np.array_equal(
        cold.cold_items, np.unique(cold.cold_items)
    )
    assert np.array_equal(
        cold.cold_items, leave_one_out(data, cold_start_share=0.2, seed=5).cold_items
    )
    assert np.array_equal(plain.valid, cold.valid) and np.array_equal(plain.test, cold.test)
    for before, after in zip(plain.train, cold.train, strict=True):
        assert np.array_equal(after, before[~np.isin(before, cold.cold_items)])


def test_cold_start_can_empty_a_train_list() -> None:
    split = leave_one_out(TINY, cold_start_share=0.95, seed=0)  # round(4.75) = all 5 items cold
    assert [len(t) for t in split.train] == [0, 0] and split.train[0].dtype == np.int64
    assert split.test.tolist() == [3, 4]


def test_synthetic_invariants() -> None:
    data = generate(n_users=40, n_items=60, seed=1)
    check_invariants(data, leave_one_out(data))


@pytest.mark.slow
def test_real_data_invariants() -> None:
    data = load_dataset("ml-latest-small", REAL_DIR)
    split = leave_one_out(data)
    check_invariants(data, split)
    sizes = sum(len(t) for t in split.train) + len(split.valid) + len(split.test)
    assert sizes == len(data.users) == 100836
    labels = dominant_genre(data, split)
    assert labels.shape == (610,) and labels.min() >= 0


# ---------------------------------------------------------------- partitioning


@pytest.mark.parametrize("mode", ["iid", "dirichlet"])
@pytest.mark.parametrize("n_clients", [1, 3, 7, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_partition_invariants(mode: str, n_clients: int, seed: int) -> None:
    labels = np.random.default_rng(9).integers(0, 4, size=50)
    parts = partition_users(50, n_clients, mode=mode, seed=seed, alpha=0.1, labels=labels)
    assert len(parts) == n_clients and all(len(p) >= 1 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(50))
    again = partition_users(50, n_clients, mode=mode, seed=seed, alpha=0.1, labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if mode == "iid":
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_partition_user_mode() -> None:
    parts = partition_users(5, 5, mode="user")
    assert [p.tolist() for p in parts] == [[0], [1], [2], [3], [4]]
    assert set(PARTITIONERS) == {"iid", "dirichlet", "user"}


def test_dirichlet_is_skewed() -> None:
    labels = np.arange(400) % 4

    def purity(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(labels[p], minlength=4).max() / len(p) for p in parts]))

    skewed = partition_users(400, 8, mode="dirichlet", alpha=0.05, labels=labels, seed=3)
    assert purity(skewed) > purity(partition_users(400, 8, mode="iid", seed=3)) + 0.3


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_users": 5, "n_clients": 0}, "n_clients"),
        ({"n_users": 5, "n_clients": 6}, "n_clients"),
        ({"n_users": 5, "n_clients": 2, "mode": "random"}, "iid"),
        ({"n_users": 5, "n_clients": 2, "mode": "dirichlet"}, "labels"),
        ({"n_users": 5, "n_clients": 2, "mode": "dirichlet", "labels": np.zeros(4)}, "labels"),
        (
            {"n_users": 5, "n_clients": 2, "mode": "dirichlet", "labels": np.zeros(5), "alpha": 0},
            "alpha",
        ),
        ({"n_users": 5, "n_clients": 4, "mode": "user"}, "n_clients=4"),
    ],
)
def test_partition_rejects(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        partition_users(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- labels


def test_dominant_genre() -> None:
    assert genre_vocabulary(TINY) == ("Action", "Comedy", "Drama")
    # user 0 train = items [2, 0]: Comedy 1, Drama 2 -> Drama (2); user 1 train = [3]: no genre
    assert dominant_genre(TINY, leave_one_out(TINY)).tolist() == [2, -1]
    tie = make([0, 0, 0, 0], [0, 1, 3, 3], [1, 2, 3, 4], GENRES)  # train = Drama, Comedy
    assert dominant_genre(tie, leave_one_out(tie)).tolist() == [1]  # tie -> lowest index


def test_heldout_users_never_reach_a_simulated_client() -> None:
    from client.site import node_setup
    from common.config.parse import load_defaults
    from common.task import heldout_users

    held = heldout_users(60, 0.25, 12345)
    assert len(held) == 15 and len(set(held.tolist())) == 15
    assert np.array_equal(held, heldout_users(60, 0.25, 12345))  # the server can recompute it
    assert len(heldout_users(60, 0.0, 1)) == 0
    run = {**load_defaults(), "data.dataset": "synthetic", "data.synthetic-users": 60,
           "data.synthetic-items": 80, "audit.holdout-users": 0.25}  # fmt: skip
    seen = []
    for pid in range(4):
        _, _, users = node_setup(run, {"partition-id": pid, "num-partitions": 4})
        assert users is not None
        seen += users.tolist()
    assert sorted(seen) == sorted(set(range(60)) - set(held.tolist()))
