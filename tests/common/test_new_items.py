"""New items (a public catalogue flag): text similarity + new-item prior, not the model's score."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from client.recommender import Recommender
from common.config.base import ConfigError
from common.config.run import RunConfig
from common.data.interactions import DataError
from common.data.new_items import read_new_items, resolve
from common.evaluation.evaluate import model_score_fn
from common.model.adapter import catalogue_digest, write_adapter
from common.model.catalogue import Catalogue
from common.model.new_items import SIM_TEMPERATURE, rank_anchor, set_new_items, text_similarity
from common.model.towers import RecModel, trainable_state
from common.task import Corpus, load_corpus, setup

HL = 8
# The popularity-credit form (model.new-item-rank = 0) with its measured text weight.
CREDIT = {"model.new-item-rank": 0, "model.new-item-text-weight": 1.0}


def _histories(n_users: int, n_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    hist = torch.from_numpy(rng.integers(0, n_items, size=(n_users, HL)))
    mask = torch.ones(n_users, HL)
    mask[0, :5] = 0  # left padding
    mask[1] = 0  # an empty history
    return hist, mask


def test_text_similarity_matches_a_slow_reference(catalogue: Catalogue) -> None:
    n = catalogue.frozen.shape[0]
    hist, mask = _histories(5, n)
    items = torch.tensor([0, 3, 7, n - 1])
    got = text_similarity(hist, mask, items, catalogue)
    f = catalogue.frozen.double()
    for b in range(5):
        for m, i in enumerate(items.tolist()):
            real = [int(h) for h, k in zip(hist[b], mask[b], strict=True) if k > 0]
            if not real:
                assert float(got[b, m]) == 0.0
                continue
            cos = [float(f[i] @ f[h] / (f[i].norm() * f[h].norm())) for h in real]
            ref = SIM_TEMPERATURE * math.log(sum(math.exp(c / SIM_TEMPERATURE) for c in cos))
            assert float(got[b, m]) == pytest.approx(ref, abs=1e-5)


def test_only_the_new_items_columns_change_and_they_follow_the_config(
    make_model: Callable[..., RecModel], make_cfg: Callable[..., RunConfig],
    catalogue: Catalogue, local: object,
) -> None:  # fmt: skip
    model = make_model(make_cfg(**CREDIT))
    n = int(model.prior.numel())
    fn = model_score_fn(model, catalogue, history_len=HL)
    rows = np.arange(4)
    known = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8]), np.array([9, 10])]
    before = fn(rows, known)
    new = np.array([0, 11, n - 1])
    set_new_items(model, new)
    after = model_score_fn(model, catalogue, history_len=HL)(rows, known)
    keep = np.setdiff1d(np.arange(n), new)
    np.testing.assert_array_equal(after[:, keep], before[:, keep])
    assert not np.allclose(after[:, new], before[:, new])
    # The new items' score: a * simtext / T + w * c, recomputed by hand.
    cfg = model.cfg
    hist = torch.zeros(4, HL, dtype=torch.long)
    mask = torch.zeros(4, HL)
    for j, k in enumerate(known):
        hist[j, HL - len(k) :], mask[j, HL - len(k) :] = torch.from_numpy(k), 1
    sim = text_similarity(hist, mask, torch.from_numpy(new), catalogue).numpy()
    w = float(model.prior_weight.weight.detach())
    expect = cfg.new_item_text_weight * sim / cfg.temperature + w * cfg.new_item_prior
    np.testing.assert_allclose(after[:, new], expect, rtol=1e-5, atol=1e-5)
    # Raising the new-item prior by 1 lifts exactly those columns by w.
    model.cfg = dataclasses.replace(cfg, new_item_prior=cfg.new_item_prior + 1.0)
    lifted = model_score_fn(model, catalogue, history_len=HL)(rows, known)
    np.testing.assert_allclose(lifted[:, new] - after[:, new], w, rtol=1e-4)
    np.testing.assert_array_equal(lifted[:, keep], before[:, keep])
    # Before any prior is released the other items have no popularity term: nor do new ones.
    model.cfg = cfg
    with torch.no_grad():
        model.prior.zero_()
    unreleased = model_score_fn(model, catalogue, history_len=HL)(rows, known)
    np.testing.assert_allclose(unreleased[:, new], expect - w * cfg.new_item_prior, atol=1e-5)
    # The blend switched off scores as a model with no new items.
    off = make_model(make_cfg(**{"model.new-items": False}))
    set_new_items(off, new)
    np.testing.assert_allclose(
        model_score_fn(off, catalogue, history_len=HL)(rows, known), before, rtol=1e-6
    )


def test_bad_new_item_indices_and_config_values_are_refused(
    make_model: Callable[..., RecModel], make_cfg: Callable[..., RunConfig]
) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="new item indices"):
        set_new_items(model, np.array([int(model.prior.numel())]))
    with pytest.raises(ConfigError, match="model.new-item-text-weight"):
        make_cfg(**{"model.new-item-text-weight": -1.0})
    with pytest.raises(ConfigError, match="model.new-item-prior"):
        make_cfg(**{"model.new-item-prior": math.inf})


def test_setup_marks_the_splits_cold_items_new(make_cfg: Callable[..., RunConfig]) -> None:
    cfg = make_cfg(**{"data.cold-start-share": 0.2})
    corpus, _, model = setup(cfg)
    assert len(corpus.split.cold_items) == 12
    assert set(np.flatnonzero(model.new_item.numpy())) == set(corpus.split.cold_items.tolist())
    # no cold items in any training history: the flag is exactly "no interaction anywhere"
    seen = np.unique(np.concatenate([t for t in corpus.split.train if len(t)]))
    assert not np.isin(corpus.split.cold_items, seen).any()
    assert "new_item" not in model.state_dict()  # a public flag from the data: never travels
    assert "new_item" not in trainable_state(model)


def _recommender(
    cfg: RunConfig, tmp_path: Path, tiny_backbone: Path
) -> tuple[Corpus, Catalogue, Recommender]:
    """A fresh model of `cfg` written as an adapter folder and loaded as a site would."""
    corpus: Corpus = load_corpus(cfg.data)
    _, cat, model = setup(cfg)
    digest = catalogue_digest(corpus.data.item_ids, corpus.data.item_texts)
    folder = write_adapter(model, tmp_path / "adapter", data=cfg.data, catalogue=digest)
    rec = Recommender.load(folder, cfg.data, backbone=str(tiny_backbone),
                           cache_dir=cfg.model.cache_dir)  # fmt: skip
    return corpus, cat, rec


def test_new_items_are_recommended_by_text_similarity_flagged_and_explained(
    make_cfg: Callable[..., RunConfig], tmp_path: Path, tiny_backbone: Path
) -> None:
    """A large new-item prior lifts new items into the top 10, in the order of their text
    similarity to the history; their drivers are the soft maximum's weights; off, no blend."""
    cfg = make_cfg(**{"data.cold-start-share": 0.2, "model.new-item-prior": 50.0, **CREDIT})
    corpus, cat, rec = _recommender(cfg, tmp_path, tiny_backbone)
    data = corpus.data
    warm = np.setdiff1d(np.arange(data.n_items), corpus.split.cold_items)
    history = [data.item_ids[i] for i in warm[:3]]
    top = rec.for_history(history, k=10)
    flagged = [r for r in top if r.new_item]
    assert flagged, "a new-item prior of 50 standard units puts new items in the top 10"
    cold_ids = {str(data.item_ids[i]) for i in corpus.split.cold_items}
    assert all(str(r.item) in cold_ids for r in flagged)
    assert all(str(r.item) not in cold_ids for r in top if not r.new_item)
    # All new items share the prior part: among them the order is the text similarity's.
    hist_idx = torch.from_numpy(warm[:3]).unsqueeze(0)
    sim = text_similarity(hist_idx, torch.ones(1, 3), torch.from_numpy(corpus.split.cold_items),
                          cat)[0]  # fmt: skip
    by_text = [str(data.item_ids[corpus.split.cold_items[i]])
               for i in torch.argsort(sim, descending=True).tolist()]  # fmt: skip
    assert [str(r.item) for r in flagged] == by_text[: len(flagged)]
    best = flagged[0]
    assert best.score == pytest.approx(best.similarity + best.popularity)
    assert len(best.because) == 3  # every history item, by its soft-maximum weight
    assert sum(d.attention for d in best.because) == pytest.approx(1.0, abs=1e-5)
    cfgm = rec.model.cfg
    for d in best.because:
        i, h = int(np.flatnonzero(data.item_ids == best.item)[0]), int(
            np.flatnonzero(data.item_ids == d.item)[0])  # fmt: skip
        f = torch.nn.functional.normalize(cat.frozen.float(), dim=-1)
        cos = float(f[i] @ f[h])
        assert d.contribution == pytest.approx(
            cfgm.new_item_text_weight * d.attention * cos / cfgm.temperature, rel=1e-4)
    # With the blend off, the same adapter ranks as a model that marks no item new.
    rec.model.cfg = make_cfg(**{"data.cold-start-share": 0.2, "model.new-items": False,
                                **CREDIT}).model  # fmt: skip
    plain = [(r.item, r.score) for r in rec.for_history(history, k=10)]
    set_new_items(rec.model, np.array([], dtype=np.int64))
    assert plain == [(r.item, r.score) for r in rec.for_history(history, k=10)]
    assert plain != [(r.item, r.score) for r in top]


def test_a_sites_new_items_file_is_read_with_errors_naming_file_and_line(
    make_cfg: Callable[..., RunConfig], tmp_path: Path
) -> None:
    cfg = make_cfg()
    ids = load_corpus(cfg.data).data.item_ids
    good = tmp_path / "new.txt"
    good.write_text(f"# items added this week\n{ids[3]}\n\n  {ids[7]}  \n{ids[3]}\n")
    assert read_new_items(good, ids).tolist() == [3, 7]
    unknown = tmp_path / "unknown.txt"
    unknown.write_text(f"{ids[1]}\n999999\n")
    with pytest.raises(DataError, match=r"unknown.txt line 2: item id '999999' is not in"):
        read_new_items(unknown, ids)
    word = tmp_path / "word.txt"
    word.write_text("toy story\n")
    with pytest.raises(DataError, match=r"word.txt line 1: 'toy story' is not an item id"):
        read_new_items(word, ids)
    with pytest.raises(DataError, match="data.new-items-file: cannot read"):
        read_new_items(tmp_path / "absent.txt", ids)
    # In a run: relative to data.dir when set; the listed items are marked new.
    listed = make_cfg(**{"data.new-items-file": str(good)})
    seen = set(np.concatenate(load_corpus(cfg.data).split.train).tolist())
    assert {3, 7} & seen  # listed items with interactions: the operator is warned
    with pytest.warns(UserWarning, match=r"new.txt: \d of 2 listed items already have"):
        corpus, _, model = setup(listed)
    assert corpus.new_items.tolist() == [3, 7]
    assert np.flatnonzero(model.new_item.numpy()).tolist() == [3, 7]
    # With cold items as well: both are new.
    both = load_corpus(make_cfg(**{"data.new-items-file": str(good),
                                   "data.cold-start-share": 0.2}).data)  # fmt: skip
    expect = sorted({3, 7} | set(both.split.cold_items.tolist()))
    assert both.new_items.tolist() == expect and len(expect) > 12
    assert resolve("new.txt", str(tmp_path)) == good and resolve(str(good), "/x") == good
    # Listing only items without interactions (here the split's cold items) warns nothing.
    cold = tmp_path / "cold.txt"
    cold.write_text("".join(f"{ids[i]}\n" for i in both.split.cold_items[:3]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_corpus(make_cfg(**{"data.new-items-file": str(cold),
                                "data.cold-start-share": 0.2}).data)  # fmt: skip


@pytest.mark.parametrize("rank", [1, 3, 10_000])
def test_rank_anchored_new_items_enter_below_the_users_kth_other_item(
    rank: int, make_model: Callable[..., RecModel], make_cfg: Callable[..., RunConfig],
    catalogue: Catalogue,
) -> None:  # fmt: skip
    model = make_model(make_cfg(**{"model.new-item-rank": rank,
                                   "model.new-item-text-weight": 0.5}))  # fmt: skip
    n = int(model.prior.numel())
    rows = np.arange(5)
    known = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8]), np.array([9, 10]),
             np.arange(13, 13 + 2 * HL)]  # longer than the history: known != history  # fmt: skip
    model.cfg = dataclasses.replace(model.cfg, new_items=False)
    before = model_score_fn(model, catalogue, history_len=HL)(rows, known)
    model.cfg = dataclasses.replace(model.cfg, new_items=True)
    new = np.array([0, 11, 12, n - 1])
    set_new_items(model, new)
    after = model_score_fn(model, catalogue, history_len=HL)(rows, known)
    keep = np.setdiff1d(np.arange(n), new)
    np.testing.assert_array_equal(after[:, keep], before[:, keep])
    hist = torch.zeros(5, HL, dtype=torch.long)
    mask = torch.zeros(5, HL)
    for j, k in enumerate(known):
        k = k[-HL:]
        hist[j, HL - len(k) :], mask[j, HL - len(k) :] = torch.from_numpy(k), 1
    sim = text_similarity(hist, mask, torch.from_numpy(new), catalogue).numpy()
    # Without the known items the anchor falls back to the history positions.
    s = torch.from_numpy(before)
    by_hist = rank_anchor(s, torch.from_numpy(new), rank, hist=hist, hist_mask=mask)
    short = [k[-HL:] for k in known]
    np.testing.assert_array_equal(by_hist, rank_anchor(s, torch.from_numpy(new), rank, short))
    for j, k in enumerate(known):  # slow reference: one user at a time, by sorting
        others = sorted((before[j, i] for i in keep if i not in set(k.tolist())), reverse=True)
        kth = others[min(rank, len(others)) - 1]
        got = after[j, new]
        best = int(np.argmax(sim[j]))
        assert got[best] < kth and got[best] == pytest.approx(kth, rel=1e-6, abs=1e-6)
        # ... it ranks right after the K-th other unseen item (or last but the other new ones)
        unseen = [i for i in range(n) if i not in set(k.tolist())]
        order = sorted(unseen, key=lambda i: -after[j, i])
        assert order.index(int(new[best])) == min(rank, len(others))
        # ... and the others follow by text similarity: a * (sim - max sim) / T below it
        spread = model.cfg.new_item_text_weight * (sim[j] - sim[j, best]) / model.cfg.temperature
        np.testing.assert_allclose(got - got[best], spread, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="model.new-item-rank"):
        make_cfg(**{"model.new-item-rank": -1})


def test_the_recommender_puts_the_best_new_item_right_after_the_kth_other(
    make_cfg: Callable[..., RunConfig], tmp_path: Path, tiny_backbone: Path
) -> None:
    cfg = make_cfg(**{"data.cold-start-share": 0.2, "model.new-item-rank": 3})
    corpus, cat, rec = _recommender(cfg, tmp_path, tiny_backbone)
    data = corpus.data
    assert rec.model.cfg.new_item_rank == 3  # travels in the adapter folder's config
    warm = np.setdiff1d(np.arange(data.n_items), corpus.split.cold_items)
    top = rec.for_history([data.item_ids[i] for i in warm[:3]], k=10)
    assert [r.new_item for r in top[:4]] == [False, False, False, True]
    hist_idx = torch.from_numpy(warm[:3]).unsqueeze(0)
    sim = text_similarity(hist_idx, torch.ones(1, 3), torch.from_numpy(corpus.split.cold_items),
                          cat)[0]  # fmt: skip
    assert str(top[3].item) == str(data.item_ids[corpus.split.cold_items[int(sim.argmax())]])
    assert top[3].score < top[2].score and top[3].score == pytest.approx(top[2].score, rel=1e-5)
    # Its text part is a x sim / T (recomputed here); the rest is its placement, no popularity.
    cfgm = rec.model.cfg
    assert top[3].similarity == pytest.approx(
        cfgm.new_item_text_weight * float(sim.max()) / cfgm.temperature, rel=1e-5)  # fmt: skip
    assert top[3].popularity_share == 0.0 and top[0].popularity_share > 0.0
    # A user whose unseen items are fewer than K: the new items follow the last of them.
    seen = [data.item_ids[i] for i in warm[5:]]  # 2 unseen other items left, K = 3
    few = rec.for_history([data.item_ids[i] for i in warm[:3]], k=8, exclude=seen)
    assert [r.new_item for r in few] == [False, False] + [True] * 6
