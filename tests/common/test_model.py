"""RecModel: what travels round-trips, PEFT adapter files, and the exact lower-layer cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from torch import nn

from common.config.run import RunConfig
from common.model.adapter import load_adapter, save_adapter
from common.model.backbone import load_backbone, make_tiny_backbone
from common.model.catalogue import Catalogue, build_catalogue, mean_pool
from common.model.towers import PRIOR_KEY, RecModel, load_trainable_state, trainable_state
from common.model.train import Batch, LocalData, make_batch
from common.task import Corpus, load_catalogue

TINY_LAYERS = 2


@pytest.fixture
def batch(cfg: RunConfig, local: LocalData) -> Batch:
    return make_batch(
        local,
        local.trainable()[:6],
        history_len=cfg.data.history_len,
        targets=cfg.train.targets_per_user,
        negatives=cfg.train.negatives,
        n_items=60,
        rng=np.random.default_rng(0),
    )


@torch.no_grad()
def scores(model: RecModel, batch: Batch, cat: Catalogue) -> torch.Tensor:
    return model.eval()(batch.hist, batch.hist_mask, batch.cands, cat)


def copy_state(model: RecModel) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in trainable_state(model).items()}


# --------------------------------------------------------------------------- trainable_state


@pytest.mark.parametrize("ffa", [False, True], ids=["lora", "ffa-lora"])
def test_trainable_state_round_trip_reproduces_scores(
    ffa: bool,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    batch: Batch,
) -> None:
    cfg = make_cfg(**{"model.lora.ffa": ffa})
    src, dst = make_model(cfg, seed=1), make_model(cfg, seed=2)
    state = copy_state(src)
    names = set(state)
    lora = {k for k in names if k.startswith("lora.")}
    assert any("lora_B" in k for k in lora)
    assert any("lora_A" in k for k in lora) != ffa  # FFA-LoRA sends B only
    assert {"head.attn.weight", "head.attn.bias", "head.recency.weight"} <= names
    assert PRIOR_KEY in names and names <= lora | {PRIOR_KEY} | {
        k for k in names if k.startswith("head.")
    }
    assert not any(".default." in k for k in lora)  # PEFT's portable names
    assert not torch.allclose(scores(src, batch, catalogue), scores(dst, batch, catalogue))
    load_trainable_state(dst, state)
    got = trainable_state(dst)
    assert set(got) == names
    for k in names:
        np.testing.assert_array_equal(got[k], state[k], err_msg=k)
    torch.testing.assert_close(
        scores(dst, batch, catalogue), scores(src, batch, catalogue), atol=0, rtol=0
    )


def test_trainable_state_sends_no_backbone_weight(make_model: Callable[..., RecModel]) -> None:
    model = make_model()
    n_sent = sum(v.size for k, v in trainable_state(model).items() if k != PRIOR_KEY)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_sent == n_trainable
    assert n_trainable < 0.05 * sum(p.numel() for p in model.bert.parameters())


def _drop(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    key = next(k for k in state if "lora_B" in k)
    return {k: v for k, v in state.items() if k != key}, key


def _extra(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    return {**state, "head.not_a_param": np.zeros(1, np.float32)}, "head.not_a_param"


def _renamed(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    key = next(k for k in state if "lora_B" in k)
    live = key.replace(".weight", ".default.weight")  # the classic peft-key mistake
    return {(live if k == key else k): v for k, v in state.items()}, live


def _reshaped(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    key = next(k for k in state if "lora_A" in k)
    return {**state, key: state[key].T.copy()}, key


def _short_prior(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    return {**state, PRIOR_KEY: state[PRIOR_KEY][:-1]}, PRIOR_KEY


@pytest.mark.parametrize(
    "corrupt",
    [_drop, _extra, _renamed, _reshaped, _short_prior],
    ids=["missing", "extra", "renamed", "shape", "prior-shape"],
)
def test_load_trainable_state_rejects_mismatches_naming_the_key(
    corrupt: Callable[[dict[str, np.ndarray]], tuple[dict[str, np.ndarray], str]],
    make_model: Callable[..., RecModel],
) -> None:
    src, dst = make_model(seed=1), make_model(seed=2)
    before = copy_state(dst)
    state, key = corrupt(copy_state(src))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_trainable_state(dst, state)
    after = trainable_state(dst)
    assert all(np.array_equal(before[k], after[k]) for k in before), "partially loaded"


def test_trainable_state_is_a_snapshot(make_model: Callable[..., RecModel]) -> None:
    model = make_model()
    state = trainable_state(model)
    frozen = {k: v.copy() for k, v in state.items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
        model.prior.add_(1.0)
    for k in frozen:
        np.testing.assert_array_equal(state[k], frozen[k], err_msg=k)


# --------------------------------------------------------------------------- PEFT adapter files


@pytest.mark.parametrize("ffa", [False, True], ids=["lora", "ffa-lora"])
def test_saved_adapter_loads_with_peft_and_reproduces_scores(
    ffa: bool,
    tmp_path: Path,
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    catalogue: Catalogue,
    batch: Batch,
) -> None:
    cfg = make_cfg(**{"model.lora.ffa": ffa})
    src = make_model(cfg, seed=3)
    folder = save_adapter(src, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == cfg.model.lora.rank
    assert sorted(config["target_modules"]) == sorted(cfg.model.lora.target_modules)

    peft = PeftModel.from_pretrained(load_backbone(cfg.model.backbone), folder)
    got = {n: p for n, p in peft.named_parameters() if "lora_" in n}
    want = {n: p for n, p in src.bert.named_parameters() if "lora_" in n}
    assert got.keys() == want.keys() and got
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=0, rtol=0)

    loaded = load_adapter(cfg.model, folder, n_items=60, history_len=cfg.data.history_len)
    torch.testing.assert_close(
        scores(loaded, batch, catalogue), scores(src, batch, catalogue), atol=0, rtol=0
    )


def test_load_adapter_restores_what_travels(
    tmp_path: Path, cfg: RunConfig, make_model: Callable[..., RecModel]
) -> None:
    src = make_model(seed=3)
    folder = save_adapter(src, tmp_path / "adapter")
    loaded = load_adapter(cfg.model, folder, n_items=60, history_len=cfg.data.history_len)
    want, got = copy_state(src), trainable_state(loaded)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# --------------------------------------------------------------------------- lower-layer cache


@pytest.fixture(scope="module")
def full_run(cfg: RunConfig, catalogue: Catalogue) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: the whole frozen backbone from tokens, all hidden states in fp32."""
    bert = load_backbone(cfg.model.backbone)
    with torch.no_grad():
        out = bert(
            input_ids=catalogue.input_ids,
            attention_mask=catalogue.attention_mask,
            output_hidden_states=True,
        )
    return out.hidden_states[catalogue.n_lower], out.last_hidden_state


def test_cache_holds_the_frozen_backbone_states(
    catalogue: Catalogue, full_run: tuple[torch.Tensor, torch.Tensor]
) -> None:
    lower, last = full_run
    assert catalogue.n_lower == TINY_LAYERS - 1
    assert catalogue.lower is not None and catalogue.lower.dtype == np.float16
    np.testing.assert_array_equal(catalogue.lower, lower.to(torch.float16).numpy())
    pooled = nn.functional.normalize(mean_pool(last, catalogue.attention_mask), dim=-1)
    torch.testing.assert_close(catalogue.frozen, pooled, atol=1e-6, rtol=1e-5)


def test_top_layers_on_cached_states_equal_the_whole_backbone(
    make_cfg: Callable[..., RunConfig],
    make_model: Callable[..., RecModel],
    make_catalogue: Callable[..., Catalogue],
    catalogue: Catalogue,
    full_run: tuple[torch.Tensor, torch.Tensor],
    batch: Batch,
    corpus: Corpus,
) -> None:
    model = make_model()  # random non-zero LoRA: the adapted layers really run
    items = torch.arange(catalogue.n_items)
    tokens = make_catalogue(cache_lower=False)
    assert tokens.lower is None
    with torch.no_grad():
        from_tokens = model.encode_items(items, tokens)
        from_cache = model.encode_items(items, catalogue)
        exact = Catalogue(
            catalogue.input_ids,
            catalogue.attention_mask,
            full_run[0].numpy(),
            catalogue.frozen,
            catalogue.n_lower,
        )
        from_fp32 = model.encode_items(items, exact)
    # the hand-off (additive mask, truncation to the longest text) is exact ...
    torch.testing.assert_close(from_fp32, from_tokens, atol=2e-6, rtol=0)
    # ... and the fp16 cache costs at most ~1e-4
    torch.testing.assert_close(from_cache, from_tokens, atol=1e-4, rtol=0)
    # and a subset of items (shorter width) gives the same vectors as the full catalogue
    sub = torch.tensor([5, 0, 17])
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_items(sub, catalogue), from_cache[sub], atol=1e-6, rtol=0
        )
    # the config route: model.cache-lower-layers = false builds a catalogue without the cache
    off, on = (make_cfg(**{"model.cache-lower-layers": flag}) for flag in (False, True))
    texts = tuple(corpus.data.item_texts)
    via_off = load_catalogue(off.model, texts, TINY_LAYERS)
    via_on = load_catalogue(on.model, texts, TINY_LAYERS)
    assert via_off.lower is None and via_on.lower is not None
    torch.testing.assert_close(
        scores(model, batch, via_off),
        scores(model, batch, via_on),
        atol=1e-4 / off.model.temperature,
        rtol=0,
    )


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}


def test_catalogue_cache_is_reused_and_keyed_by_max_tokens(
    tmp_path: Path, cfg: RunConfig, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = list(corpus.data.item_texts)

    def build(max_tokens: int, n_lower: int = 1) -> Catalogue:
        return build_catalogue(
            texts,
            backbone=cfg.model.backbone,
            max_tokens=max_tokens,
            n_lower=n_lower,
            cache_lower=True,
            cache_dir=tmp_path,
        )

    first = build(32)
    (folder,) = (tmp_path / "catalogue").iterdir()
    stamps = _files(folder)
    assert set(stamps) == {"lower.f16.npy", "frozen.f32.npy"}

    def no_backbone(name: str) -> None:
        raise AssertionError("the catalogue cache was recomputed")

    with monkeypatch.context() as m:
        m.setattr("common.model.catalogue.load_backbone", no_backbone)
        again = build(32)
    assert _files(folder) == stamps
    torch.testing.assert_close(again.frozen, first.frozen, atol=0, rtol=0)
    np.testing.assert_array_equal(again.lower, first.lower)

    short = build(6)
    assert short.input_ids.shape[1] == 6
    other = build(32, n_lower=0)
    assert len(list((tmp_path / "catalogue").iterdir())) == 3
    assert short.lower is not None and other.lower is not None and first.lower is not None
    assert short.lower.shape[1] == 6 and not np.array_equal(other.lower, first.lower)


def test_catalogue_cache_is_invalidated_by_new_weights(tmp_path: Path, corpus: Corpus) -> None:
    texts = list(corpus.data.item_texts)[:10]
    bb = tmp_path / "backbone"

    def build(cache: Path) -> Catalogue:
        return build_catalogue(
            texts, backbone=str(bb), max_tokens=16, n_lower=1, cache_lower=True, cache_dir=cache
        )

    make_tiny_backbone(bb, hidden=32, layers=TINY_LAYERS, seed=0)
    old = build(tmp_path / "cache")
    make_tiny_backbone(bb, hidden=32, layers=TINY_LAYERS, seed=1)
    fresh = build(tmp_path / "fresh-cache")
    assert not torch.allclose(old.frozen, fresh.frozen)  # the weights really changed
    cached = build(tmp_path / "cache")
    torch.testing.assert_close(cached.frozen, fresh.frozen)
