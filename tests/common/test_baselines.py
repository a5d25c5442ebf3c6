"""common.evaluation.baselines: slow references and the design doc's figures on ml-latest-small."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from common.evaluation.baselines import (
    BASELINES,
    EASE,
    ItemKNN,
    MostPopular,
    create_baseline,
    popularity_counts,
)
from common.evaluation.metrics import RankingEvaluator

DATA = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"  # embedded copy


def _random_train(rng: np.random.Generator, n_users: int, n_items: int) -> list[np.ndarray]:
    return [
        rng.choice(n_items, size=rng.integers(1, n_items // 2), replace=False)
        for _ in range(n_users)
    ]


def _ease_reference(train: list[np.ndarray], n_items: int, l2: float) -> np.ndarray:
    """Closed form, entry by entry: B_ij = -P_ij / P_jj (i != j), B_jj = 0, scores = X B."""
    x = np.zeros((len(train), n_items))
    for u, items in enumerate(train):
        x[u, items] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(n_items))
    b = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i != j:
                b[i, j] = -p[i, j] / p[j, j]
    return x @ b


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("l2", [0.5, 10.0])
@pytest.mark.parametrize("n_users", [15, 6])  # Cholesky of the item Gram matrix; Woodbury
def test_ease_matches_slow_reference(dtype: type, rtol: float, l2: float, n_users: int) -> None:
    rng = np.random.default_rng(0)
    train = _random_train(rng, n_users, 12)
    train[3] = np.concatenate([train[3], train[3][:1]])  # a repeated interaction counts once
    model = EASE(train, 12, l2=l2, dtype=dtype)
    expected = _ease_reference(train, 12, l2)
    users = np.array([3, 0, n_users - 1, 3])
    np.testing.assert_allclose(model.scores(users), expected[users], rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(np.diag(model.b), 0.0)


def test_most_popular_orders_by_count() -> None:
    train = [np.array([2, 0]), np.array([2, 3]), np.array([2, 3, 1])]
    np.testing.assert_array_equal(popularity_counts(train, 5), [1, 1, 3, 2, 0])
    scores = MostPopular(train, 5).scores(np.array([0, 2]))
    assert scores.shape == (2, 5) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores[0], scores[1])
    assert np.argsort(-scores[0], kind="stable")[:3].tolist() == [2, 3, 0]


def test_item_knn_matches_reference() -> None:
    rng = np.random.default_rng(1)
    train = _random_train(rng, 20, 10)
    x = np.zeros((20, 10))
    for u, items in enumerate(train):
        x[u, items] = 1.0
    counts = x.sum(axis=0)
    sim = (x.T @ x) / np.sqrt(np.outer(counts, counts))
    np.fill_diagonal(sim, 0.0)
    np.testing.assert_allclose(
        ItemKNN(train, 10, k_neighbors=10).scores(np.arange(20)), x @ sim, rtol=1e-5
    )
    # With k = 2 every item keeps its two most similar neighbours (its column has two entries).
    pruned = ItemKNN(train, 10, k_neighbors=2).sim.toarray()
    for j in range(10):
        kept = np.flatnonzero(pruned[:, j])
        assert len(kept) == 2 and set(kept) == set(np.argsort(-sim[:, j], kind="stable")[:2])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: create_baseline("svd", [np.array([0])], 2),
            "known: \\['ease', 'item-knn', 'most-popular'\\]",
        ),
        (lambda: EASE([np.array([0])], 2, l2=0.0), "`l2`"),
        (lambda: MostPopular([np.array([2])], 2), "`train`"),
        (lambda: MostPopular([np.array([1])], 2).scores(np.array([1])), "`users`"),
        (lambda: ItemKNN([np.array([1])], 2, k_neighbors=0), "`k_neighbors`"),
    ],
)
def test_bad_input_is_rejected(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call()


def test_registry_builds_each_baseline() -> None:
    train = [np.array([0, 1]), np.array([1, 2])]
    for name, cls in BASELINES.items():
        model = create_baseline(name, train, 3)
        assert isinstance(model, cls) and model.scores(np.array([0, 1])).shape == (2, 3)


def _chronological_split(holdout: int) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Per user, ratings sorted by timestamp (stable: file order on ties); the last is the target.

    ``holdout=2`` also withholds the second-to-last rating (a validation item) from training.
    Items are the movies of movies.csv, indexed in ascending movieId order.
    """
    with open(DATA / "movies.csv", newline="", encoding="utf-8") as f:
        index = {m: i for i, m in enumerate(sorted(int(r["movieId"]) for r in csv.DictReader(f)))}
    history: dict[int, list[tuple[int, int]]] = {}
    with open(DATA / "ratings.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            history.setdefault(int(r["userId"]), []).append(
                (int(r["timestamp"]), index[int(r["movieId"])])
            )
    train, targets = [], []
    for user in sorted(history):
        items = [item for _, item in sorted(history[user], key=lambda p: p[0])]
        train.append(np.array(items[:-holdout], dtype=np.int64))
        targets.append(items[-1])
    return train, np.array(targets, dtype=np.int64), len(index)


def _evaluate(
    model: MostPopular | EASE, train: list[np.ndarray], targets: np.ndarray, n_items: int
) -> dict[str, float]:
    evaluator = RankingEvaluator(n_items, n_negatives=0)
    for users in np.array_split(np.arange(len(train)), 4):
        evaluator.add(users, model.scores(users), targets[users], [train[u] for u in users])
    return evaluator.result()


@pytest.mark.parametrize(
    ("holdout", "expected"),
    [
        # The design doc's figures: train = all but the last two ratings, exclusion = train items.
        (2, {"most-popular": (0.041, 0.019), "ease": (0.077, 0.037)}),
        # Plain leave-one-out (train = all but the last rating), pinned to the figures measured
        # here: most-popular 0.0426/0.0194, EASE 0.0852/0.0409 (EASE is 0.008 above the doc).
        (1, {"most-popular": (0.0426, 0.0194), "ease": (0.0852, 0.0409)}),
    ],
)
def test_reference_figures_on_ml_latest_small(
    holdout: int, expected: dict[str, tuple[float, float]]
) -> None:
    train, targets, n_items = _chronological_split(holdout)
    assert len(train) == 610 and n_items == 9742
    for name, (hr, ndcg) in expected.items():
        result = _evaluate(create_baseline(name, train, n_items), train, targets, n_items)
        assert result["hr@10"] == pytest.approx(hr, abs=0.006), name
        assert result["ndcg@10"] == pytest.approx(ndcg, abs=0.006), name
