"""common.evaluation.metrics and .exposure: hand-computed values, references, chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.evaluation.exposure import (
    coverage_at_k,
    distribution_summary,
    exposure_gini,
    exposure_profile,
    exposure_summary,
    gini,
    long_tail_items,
    long_tail_share,
    top_share,
)
from common.evaluation.metrics import (
    RankingEvaluator,
    per_user_metrics,
    ranking_metrics,
    sampled_ranks,
    target_ranks,
    top_k,
)

NONE: list[np.ndarray] = [np.zeros(0, np.int64)]


def _reference_rank(row: np.ndarray, target: int, excluded: set[int]) -> float:
    """Rank from the definition, one item at a time."""
    rank = 0.0
    for j, s in enumerate(row):
        if j == target or j in excluded:
            continue
        rank += 1.0 if s > row[target] else 0.5 if s == row[target] else 0.0
    return rank


def test_perfect_ranking_gives_one() -> None:
    scores = np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.1]])
    ranks = target_ranks(scores, np.array([1, 0]), NONE * 2)
    np.testing.assert_array_equal(ranks, [0.0, 0.0])
    assert ranking_metrics(ranks, ks=(1, 10)) == {
        "hr@1": 1.0,
        "ndcg@1": 1.0,
        "hr@10": 1.0,
        "ndcg@10": 1.0,
        "mrr": 1.0,
    }


def test_no_hits_gives_zero() -> None:
    scores = -np.arange(20, dtype=float)[None, :]  # item 0 best, item 19 worst
    ranks = target_ranks(scores, np.array([19]), NONE)
    assert ranks[0] == 19.0
    m = ranking_metrics(ranks, ks=(10,))
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 20)


def test_hand_computed_rank_two() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    ranks = target_ranks(scores, np.array([2]), NONE)
    assert ranks[0] == 2.0
    m = ranking_metrics(ranks, ks=(2, 10))
    assert m["hr@2"] == 0.0 and m["ndcg@2"] == 0.0
    assert m["hr@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(4)) and m["ndcg@10"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(1 / 3)


def test_mean_over_users() -> None:
    m = ranking_metrics(np.array([0.0, 1.0, 20.0]), ks=(10,))
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 21) / 3)


def test_empty_input_gives_zero() -> None:
    assert ranking_metrics(np.zeros(0)) == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr": 0.0}
    assert target_ranks(np.zeros((0, 5)), np.zeros(0, np.int64), []).shape == (0,)
    assert RankingEvaluator(5).result()["n_users"] == 0.0


def test_exclusion_removes_items_above_target() -> None:
    scores = np.array([[9.0, 8.0, 1.0, 7.0]])
    assert target_ranks(scores, np.array([3]), NONE)[0] == 2.0
    assert target_ranks(scores, np.array([3]), [np.array([0, 1])])[0] == 0.0
    # The target is never excluded, even when it is listed.
    assert target_ranks(scores, np.array([3]), [np.array([0, 3])])[0] == 1.0


def test_all_equal_scores_give_expected_rank() -> None:
    scores = np.zeros((2, 7))
    ranks = target_ranks(scores, np.array([0, 6]), [np.zeros(0, np.int64), np.array([1, 2])])
    np.testing.assert_array_equal(ranks, [3.0, 2.0])  # (7 - 1) / 2 and (5 - 1) / 2
    assert per_user_metrics(ranks, ks=(3,))["hr@3"].tolist() == [0.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 4), st.integers(1, 8), st.data())
def test_target_ranks_match_reference(n: int, n_items: int, data: st.DataObject) -> None:
    scores = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 3), min_size=n_items, max_size=n_items),
                min_size=n,
                max_size=n,
            )
        ),
        dtype=float,
    ).reshape(n, n_items)
    targets = np.array(
        data.draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), dtype=np.int64
    )
    exclude = [
        np.array(data.draw(st.lists(st.integers(0, n_items - 1), max_size=n_items)), dtype=np.int64)
        for _ in range(n)
    ]
    expected = [
        _reference_rank(scores[i], int(targets[i]), set(exclude[i].tolist())) for i in range(n)
    ]
    np.testing.assert_array_equal(target_ranks(scores, targets, exclude), expected)
    # With every allowed item as a negative, sampled ranks equal full ranks.
    np.testing.assert_array_equal(
        sampled_ranks(scores, targets, exclude, n_negatives=n_items, rng=np.random.default_rng(0)),
        expected,
    )


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: target_ranks(np.zeros(5), np.array([0]), NONE), "scores"),
        (lambda: target_ranks(np.zeros((1, 5)), np.array([0, 1]), NONE), "targets"),
        (lambda: target_ranks(np.zeros((1, 5)), np.array([5]), NONE), "targets"),
        (lambda: target_ranks(np.zeros((1, 5)), np.array([0.0]), NONE), "targets"),
        (lambda: target_ranks(np.zeros((1, 5)), np.array([0]), NONE * 2), "exclude"),
        (lambda: target_ranks(np.zeros((1, 5)), np.array([0]), [np.array([7])]), "exclude"),
        (lambda: target_ranks(np.full((1, 5), np.nan), np.array([0]), NONE), "scores"),
        (lambda: ranking_metrics(np.array([-1.0])), "ranks"),
        (lambda: top_k(np.zeros((1, 5)), NONE, 0), "k"),
        (
            lambda: RankingEvaluator(5).add(np.array([0]), np.zeros((1, 4)), np.array([0]), NONE),
            "scores",
        ),
    ],
)
def test_shapes_and_values_are_validated(call, name: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_sampled_ranks_draw_uniform_allowed_negatives() -> None:
    n_items, excluded = 50, np.arange(10, 20)
    scores = np.tile(np.arange(n_items, dtype=float), (2000, 1))
    targets = np.zeros(2000, np.int64)  # worst score: rank = number of negatives
    ranks = sampled_ranks(
        scores, targets, [excluded] * 2000, n_negatives=5, rng=np.random.default_rng(1)
    )
    np.testing.assert_array_equal(ranks, 5.0)
    # Target at item 30: negatives above it are items 31..49 (19 of the 39 allowed ones).
    ranks = sampled_ranks(
        scores, np.full(2000, 30), [excluded] * 2000, n_negatives=5, rng=np.random.default_rng(2)
    )
    assert ranks.mean() == pytest.approx(5 * 19 / 39, abs=0.1)


def test_top_k_orders_and_never_returns_excluded() -> None:
    scores = np.array([[0.5, 0.9, 0.1, 0.7], [1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(
        top_k(scores, [np.array([1]), np.zeros(0, np.int64)], 2), [[3, 0], [3, 2]]
    )
    np.testing.assert_array_equal(top_k(scores[:1], [np.array([0, 1, 3])], 3), [[2, -1, -1]])
    np.testing.assert_array_equal(
        top_k(np.full((1, 3), -np.inf), [np.array([1])], 2).tolist(), [[0, 2]]
    )


def test_item_side_metrics_by_hand() -> None:
    topk = np.array([[0, 1], [0, 2], [0, -1]])
    assert coverage_at_k(topk, 10) == pytest.approx(0.3)
    assert long_tail_share(topk, np.array([2, 5])) == pytest.approx(1 / 5)
    assert exposure_gini(topk, 4) == pytest.approx(gini(np.array([3, 1, 1, 0])))


def test_gini_standard_formula() -> None:
    # G = 2 * sum_i i x_(i) / (n sum x) - (n + 1) / n, ascending order, i = 1..n
    assert gini(np.array([1, 1, 1, 1])) == 0.0
    assert gini(np.array([0, 0, 0, 1])) == pytest.approx(0.75)
    assert gini(np.array([1, 3])) == pytest.approx(2 * (1 + 6) / (2 * 4) - 3 / 2)
    assert gini(np.zeros(0)) == 0.0 and gini(np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        gini(np.array([-1.0, 2.0]))


def test_exposure_profile_and_top_share_by_hand() -> None:
    # counts 3, 0, 1 over 3 items: profile [3, 1]; the top third of the catalogue (1 item)
    # holds 3/4 of the slots, the top two thirds all of them, the top sixth half an item's.
    profile = exposure_profile(np.array([3, 0, 1]))
    assert profile == [3, 1]
    assert top_share(profile, 3, [0.0, 1 / 6, 1 / 3, 2 / 3, 1.0]) == pytest.approx(
        [0.0, 0.375, 0.75, 1.0, 1.0]
    )
    assert top_share([], 5, [0.5, 1.0]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="integers"):
        exposure_profile(np.array([0.5]))
    with pytest.raises(ValueError, match="catalogue"):
        top_share([1, 1, 1], 2, [0.5])


def test_profile_reproduces_gini_through_the_lorenz_curve() -> None:
    # G = 1 - 2 * area under the Lorenz curve; the Lorenz curve at item boundaries is
    # 1 - top_share(1 - x): a slow route from the profile alone back to the direct Gini.
    x = np.random.default_rng(3).integers(0, 20, 40).astype(float)
    prof = exposure_profile(x)
    lorenz = [1 - s for s in top_share(prof, 40, [1 - i / 40 for i in range(41)])]
    area = sum((lorenz[i] + lorenz[i + 1]) / 2 for i in range(40)) / 40
    assert 1 - 2 * area == pytest.approx(gini(x))


def test_exposure_summary_and_evaluator_counts_agree() -> None:
    ev = RankingEvaluator(6, ks=(2,))
    scores = np.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]], dtype=float)
    ev.add(np.array([0, 1]), scores, np.array([0, 5]), [np.array([1]), np.array([4])])
    counts = ev.exposure(2)
    assert counts.tolist() == [1, 0, 1, 1, 0, 1]  # top-2 of each user, excluded items skipped
    summary = exposure_summary(counts, 2)
    assert summary["coverage@2"] == pytest.approx(4 / 6)
    assert summary["exposure_gini@2"] == pytest.approx(ev.result()["exposure_gini@2"])
    assert ev.curves()["exposure_profile@2"] == summary["exposure_profile@2"] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="k=10"):
        ev.exposure(10)


def test_long_tail_items_top_20_percent_is_head() -> None:
    train = [np.array([0, 1, 2]), np.array([1, 2]), np.array([2, 3])]
    # counts: item 2: 3, item 1: 2, item 0: 1, item 3: 1, item 4..9: 0 -> head = {2, 1}
    np.testing.assert_array_equal(long_tail_items(train, 10), [0, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(long_tail_items(train, 10, head_share=0.3), [3, 4, 5, 6, 7, 8, 9])


def test_distribution_summary() -> None:
    s = distribution_summary(np.arange(20, dtype=float))
    assert s["mean"] == 9.5 and s["min"] == 0.0 and s["max"] == 19.0 and s["n"] == 20.0
    assert s["worst10"] == pytest.approx(0.5)  # mean of the lowest 2 values
    assert s["std"] == pytest.approx(np.std(np.arange(20)))
    assert s["gini"] == pytest.approx(gini(np.arange(20)))
    assert distribution_summary(np.zeros(0))["n"] == 0.0


def test_evaluator_in_chunks_equals_one_call() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 30, 40
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(float)
    targets = rng.integers(0, n_items, size=n_users)
    exclude = [rng.choice(n_items, size=rng.integers(0, 10), replace=False) for _ in range(n_users)]
    kwargs = {"ks": (5, 10), "n_negatives": 15, "seed": 7, "long_tail_items": np.arange(20, 40)}
    whole = RankingEvaluator(n_items, **kwargs)
    whole.add(np.arange(n_users), scores, targets, exclude)
    chunked = RankingEvaluator(n_items, **kwargs)
    for users in np.array_split(np.arange(n_users), 3):
        chunked.add(users, scores[users], targets[users], [exclude[u] for u in users])
    assert chunked.result() == whole.result()
    res = whole.result()
    ranks = target_ranks(scores, targets, exclude)
    for key, value in ranking_metrics(ranks, (5, 10)).items():
        assert res[key] == value
    assert res["n_users"] == 30.0 and 0.0 < res["sampled_hr@10"] <= 1.0
    shown = top_k(scores, [e[e != t] for e, t in zip(exclude, targets, strict=True)], 10)
    assert res["coverage@10"] == coverage_at_k(shown, n_items)
    assert res["long_tail_share@10"] == pytest.approx(long_tail_share(shown, np.arange(20, 40)))
    assert res["exposure_gini@10"] == pytest.approx(exposure_gini(shown, n_items))
    per_user = chunked.per_user()
    np.testing.assert_array_equal(per_user["user"], np.arange(n_users))
    np.testing.assert_array_equal(per_user["hr@10"], ranks < 10)
