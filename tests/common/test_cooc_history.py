"""What the co-occurrence term reads (`model.cooc-decay`): the window or the whole history, in
training, evaluation and recommendation alike; the padding helper; the recorded-config rule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from test_cooc import COOC, _released, _slow_feature
from test_head_objective import examples_of

from common.config.base import ConfigError
from common.config.parse import parse_recorded
from common.config.run import RunConfig
from common.model.catalogue import Catalogue
from common.model.history import left_padded
from common.model.towers import RecModel
from common.model.train import LocalData, make_batch
from common.privacy.cooc import flat_history


@pytest.mark.parametrize(
    ("length", "want_hist", "want_mask"),
    [
        (3, [[0, 0, 5], [7, 8, 9], [0, 0, 0]], [[0, 0, 1], [1, 1, 1], [0, 0, 0]]),
        (None, [[0, 0, 0, 5], [6, 7, 8, 9], [0, 0, 0, 0]], [[0, 0, 0, 1], [1] * 4, [0] * 4]),
    ],
)
def test_left_padded_keeps_the_last_items_right_aligned(
    length: int | None, want_hist: list[list[int]], want_mask: list[list[int]]
) -> None:
    seqs = [np.array([5]), np.array([6, 7, 8, 9]), np.array([], dtype=np.int64)]
    hist, mask = left_padded(seqs, length)
    np.testing.assert_array_equal(hist, want_hist)
    np.testing.assert_array_equal(mask, want_mask)
    assert hist.dtype == np.int64 and mask.dtype == np.float32


def test_left_padded_edges() -> None:
    hist, mask = left_padded([np.array([], dtype=np.int64)])
    assert hist.shape == (1, 1) and not mask.any()  # one column even when all are empty
    assert left_padded([])[0].shape == (0, 1)
    with pytest.raises(ValueError, match="history length"):
        left_padded([np.array([1])], 0)


def test_the_key_is_checked_and_old_records_keep_the_window(
    make_cfg: Callable[..., RunConfig],
) -> None:
    for bad in (-0.1, 1.01):
        with pytest.raises(ConfigError, match="model.cooc-decay"):
            make_cfg(**{"model.cooc-decay": bad})
    assert parse_recorded({}).model.cooc_decay == 0.0  # a run recorded before the key
    assert make_cfg().model.cooc_decay == 1.0  # today's default: the whole history


@pytest.mark.parametrize("decay", [0.0, 0.6, 1.0])
def test_training_examples_carry_the_whole_history_and_the_feature_reads_it(
    decay: float,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    cfg = make_cfg(**COOC, **{"model.cooc-decay": decay, "data.history-len": 3})
    model = _released(make_model(cfg), local)
    rows = local.trainable()[:4]
    ex = examples_of(cfg, local, rows)
    batch = make_batch(local, rows, history_len=3, targets=1, negatives=2,
                       n_items=model.prior.numel(), rng=np.random.default_rng(0))  # fmt: skip
    for hist, mask, prefix in ((ex.hist, ex.hist_mask, ex.prefix),
                               (batch.hist, batch.hist_mask, batch.prefix)):  # fmt: skip
        assert prefix is not None and len(prefix) == len(hist)
        for j, p in enumerate(prefix):  # the window is the prefix's tail
            n = int(mask[j].sum())
            np.testing.assert_array_equal(hist[j, 3 - n :].numpy(), p[-3:])
        assert max(len(p) for p in prefix) > 3  # some prefixes are longer than the window
        got = model.cooc_rows(prefix)
        assert got is not None
        np.testing.assert_allclose(got.numpy(), _slow_feature(model, list(prefix)), atol=1e-5)
    cands = ex.cands[:, :1]
    want = model.score_candidates(model.encode_users(ex.hist, ex.hist_mask, catalogue), cands,
                                  catalogue, model.cooc_of(ex.prefix))  # fmt: skip
    torch.testing.assert_close(model(ex.hist, ex.hist_mask, cands, catalogue, ex.prefix), want)


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_rows_without_their_histories_are_refused_when_the_term_is_on(
    decay: float,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    local: LocalData,
) -> None:
    """No silent fallback to the user tower's window, whatever `model.cooc-decay` reads."""
    model = _released(make_model(make_cfg(**COOC, **{"model.cooc-decay": decay})), local)
    hist, mask = torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8)
    with pytest.raises(ValueError, match="chronological history"):
        model.cooc_rows(None)
    with pytest.raises(ValueError, match="chronological history"):
        model(hist, mask, hist[:, :1], catalogue)


def test_flat_history_reads_the_window_or_the_whole_history() -> None:
    seqs = [np.array([4, 2, 9]), np.array([], dtype=np.int64), np.array([7])]
    rows, items, weights = flat_history(seqs, window=2, decay=0.5)
    np.testing.assert_array_equal(rows, [0, 0, 2])
    np.testing.assert_array_equal(items, [2, 9, 7])
    np.testing.assert_allclose(weights, [0.5, 1.0, 1.0])
    rows, items, weights = flat_history(seqs, window=None, decay=0.5)
    np.testing.assert_array_equal(rows, [0, 0, 0, 2])
    np.testing.assert_allclose(weights, [0.25, 0.5, 1.0, 1.0])
    _, items, weights = flat_history(seqs, window=None, decay=0.0)
    np.testing.assert_array_equal(items, [4, 2, 9, 7])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1])
    assert all(len(a) == 0 for a in flat_history([], window=None, decay=1.0))
    with pytest.raises(ValueError, match="model.cooc-decay"):
        flat_history(seqs, window=None, decay=1.5)
