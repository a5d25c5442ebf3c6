"""client.recommender / client.recommend: top-K with explanations from a portable adapter folder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from client.recommend import main
from client.recommender import Recommender, RequestError, user_sequences
from common.config.base import ConfigError
from common.config.run import RunConfig
from common.evaluation.evaluate import model_score_fn
from common.model.adapter import catalogue_digest, open_adapter, read_info, write_adapter
from common.model.backbone import BUNDLED_ID, portable_backbone
from common.model.towers import RecModel
from common.task import load_catalogue, load_corpus


def trained_like(cfg: RunConfig, seed: int = 0) -> RecModel:
    """A model with random (non-zero) trainable tensors and a random prior: scores differ."""
    corpus = load_corpus(cfg.data)
    model = RecModel(cfg.model, n_items=corpus.data.n_items, history_len=cfg.data.history_len)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        model.prior.copy_(torch.rand(model.prior.shape, generator=gen) * 50)
    return model.eval()


@pytest.fixture
def adapter(cfg: RunConfig, tmp_path: Path) -> Path:
    data = load_corpus(cfg.data).data
    digest = catalogue_digest(data.item_ids, data.item_texts)
    return write_adapter(trained_like(cfg), tmp_path / "server" / "adapter", data=cfg.data,
                         catalogue=digest)  # fmt: skip


@pytest.fixture
def rec(adapter: Path, cfg: RunConfig, tiny_backbone: Path) -> Recommender:
    return Recommender.load(adapter, cfg.data, backbone=str(tiny_backbone),
                            cache_dir=cfg.model.cache_dir)  # fmt: skip


def test_the_adapter_folder_records_no_absolute_path(adapter: Path, tiny_backbone: Path) -> None:
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "head.safetensors",
                                                   "adapter_model.safetensors", "fedrec.json"}
    for f in adapter.iterdir():
        text = f.read_bytes().decode(errors="replace")
        assert str(tiny_backbone) not in text and str(adapter.parent) not in text, f.name
    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == tiny_backbone.name
    assert portable_backbone("") == BUNDLED_ID
    assert portable_backbone("models/tiny") == "models/tiny"


def test_a_copied_adapter_loads_elsewhere_and_scores_identically(
    adapter: Path, cfg: RunConfig, tiny_backbone: Path, tmp_path: Path
) -> None:
    elsewhere = shutil.copytree(adapter, tmp_path / "site" / "copy")
    shutil.rmtree(adapter.parent)  # nothing of the server's folder is left
    moved_backbone = shutil.copytree(tiny_backbone, tmp_path / "bb" / tiny_backbone.name)
    model, info = open_adapter(elsewhere, backbone=str(moved_backbone),
                               cache_dir=cfg.model.cache_dir)  # fmt: skip
    reference = trained_like(cfg)
    corpus = load_corpus(cfg.data)
    cat = load_catalogue(cfg.model, corpus.data.item_texts, model.n_lower + cfg.model.lora.layers)
    known = [np.asarray(t) for t in corpus.split.train[:16]]
    rows = np.arange(16)
    got = model_score_fn(model, cat, history_len=info.history_len)(rows, known)
    want = model_score_fn(reference, cat, history_len=cfg.data.history_len)(rows, known)
    np.testing.assert_array_equal(got, want)
    assert info.n_items == corpus.data.n_items and info.history_len == cfg.data.history_len


def test_loading_refuses_a_missing_or_different_backbone(
    adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the recorded relative name "tiny..." is not here
    with pytest.raises(ConfigError, match="records its name only.*--backbone FOLDER"):
        open_adapter(adapter)
    from common.model.backbone import make_tiny_backbone

    other = make_tiny_backbone(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match="not the one adapter"):
        open_adapter(adapter, backbone=str(other))


def test_a_users_top_k_excludes_seen_items_and_matches_the_models_scores(
    rec: Recommender, cfg: RunConfig
) -> None:
    data = rec.data
    user = rec.user_ids()[3]
    recs = rec.for_user(user, k=10)
    seq = user_sequences(data)[3]
    assert len(recs) == 10 and [r.rank for r in recs] == list(range(1, 11))
    idx = {str(v): i for i, v in enumerate(data.item_ids)}
    chosen = [idx[str(r.item)] for r in recs]
    assert not set(chosen) & set(seq.tolist())
    # The same scores as the evaluation's scoring function, and the best unseen ones.
    full = model_score_fn(rec.model, rec.cat, history_len=cfg.data.history_len)(
        np.array([0]), [seq]
    )[0]
    full[seq] = -np.inf
    np.testing.assert_allclose([r.score for r in recs], full[chosen], rtol=1e-5, atol=1e-5)
    assert chosen == np.argsort(-full, kind="stable")[:10].tolist()
    for r in recs:
        assert r.score == pytest.approx(r.similarity + r.popularity)
        assert 0.0 <= r.popularity_share <= 1.0
        assert r.popularity_share == pytest.approx(
            abs(r.popularity) / (abs(r.similarity) + abs(r.popularity))
        )


def test_explanations_decompose_the_similarity_over_the_history(rec: Recommender) -> None:
    items = [rec.data.item_ids[i].item() for i in range(6)]  # any item ids as a history
    recs = rec.for_history(items, k=5, explain=6)
    assert len(recs) == 5
    for r in recs:
        assert {d.item for d in r.because} <= set(items) and len(r.because) == 6
        assert sum(d.contribution for d in r.because) == pytest.approx(r.similarity, abs=1e-4)
        assert sum(d.attention for d in r.because) == pytest.approx(1.0, abs=1e-5)
        parts = [d.contribution for d in r.because]
        assert parts == sorted(parts, reverse=True)  # the strongest driver first
        assert r.item not in items
    top3 = rec.for_history(items, k=5)[0].because
    assert [d.item for d in top3] == [d.item for d in recs[0].because[:3]]


def test_bad_requests_are_refused_naming_what(rec: Recommender) -> None:
    with pytest.raises(RequestError, match="unknown user id 'nobody'"):
        rec.for_user("nobody")
    with pytest.raises(RequestError, match=r"unknown item id\(s\) in history: \['x1'\]"):
        rec.for_history(["x1"])
    with pytest.raises(RequestError, match="k must be in"):
        rec.for_user(rec.user_ids()[0], k=0)


def test_a_different_catalogue_is_refused(adapter: Path, cfg: RunConfig) -> None:
    from dataclasses import replace

    other = replace(cfg.data, synthetic_items=cfg.data.synthetic_items + 1)
    with pytest.raises(ConfigError, match="items"):
        Recommender.load(adapter, other, backbone=cfg.model.backbone)


def _cli(adapter: Path, cfg: RunConfig, *extra: str) -> list[str]:
    return ["--adapter", str(adapter), "--backbone", cfg.model.backbone,
            "--cache-dir", cfg.model.cache_dir, *extra]  # fmt: skip


def test_cli_one_user_and_all_users_to_csv_and_json(
    adapter: Path, cfg: RunConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = read_info(adapter)
    assert info.data is not None and info.data["data.dataset"] == "synthetic"  # no --dataset
    users = Recommender.load(adapter, cfg.data, backbone=cfg.model.backbone).user_ids()
    assert main(_cli(adapter, cfg, "--user", str(users[1]), "--k", "4")) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert [len(u["recommendations"]) for u in shown["users"]] == [4]
    assert shown["users"][0]["recommendations"][0]["because"]

    out = tmp_path / "recs" / "all.csv"
    assert main(_cli(adapter, cfg, "--all", "--k", "3", "--out", str(out))) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * len(users)
    assert {r["user"] for r in rows} == {str(u) for u in users}
    assert [p.name for p in out.parent.iterdir()] == ["all.csv"]  # no temp file left
    js = tmp_path / "recs" / "all.json"
    assert main(_cli(adapter, cfg, "--all", "--k", "3", "--out", str(js))) == 0
    assert len(json.loads(js.read_text())["users"]) == len(users)


def test_cli_new_item_rank_sets_where_new_items_enter(
    cfg: RunConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.config.parse import parse_config

    cold = parse_config({**cfg.flat(), "data.cold-start-share": 0.2})
    corpus = load_corpus(cold.data)
    data = corpus.data
    folder = write_adapter(trained_like(cold), tmp_path / "adapter", data=cold.data,
                           catalogue=catalogue_digest(data.item_ids, data.item_texts))  # fmt: skip
    warm = np.setdiff1d(np.arange(data.n_items), corpus.split.cold_items)
    args = _cli(folder, cfg, "--run-config", "data.cold-start-share=0.2", "--history",
                ",".join(str(data.item_ids[i]) for i in warm[:3]), "--k", "6")  # fmt: skip
    for rank in (0, 2, 4):
        assert main([*args, "--new-item-rank", str(rank)]) == 0
        recs = json.loads(capsys.readouterr().out)["users"][0]["recommendations"]
        if rank:  # the best new item right after the rank-th other one
            assert [r["new_item"] for r in recs[: rank + 1]] == [False] * rank + [True]
    assert main([*args, "--new-item-rank", "-1"]) == 2
    assert "--new-item-rank must be >= 0" in capsys.readouterr().err


def test_cli_bad_input_exits_2_with_the_reason(
    adapter: Path, cfg: RunConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_cli(adapter, cfg, "--user", "nobody")) == 2
    assert "error: unknown user id 'nobody'" in capsys.readouterr().err
    assert main(_cli(adapter, cfg, "--all", "--out", str(tmp_path / "x.txt"))) == 2
    assert "must end in .csv or .json" in capsys.readouterr().err
    assert main(["--adapter", str(tmp_path / "none"), "--user", "1"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_rewriting_an_adapter_swaps_it_whole_and_bad_folders_are_named(
    adapter: Path, cfg: RunConfig, tmp_path: Path
) -> None:
    first = (adapter / "head.safetensors").read_bytes()
    write_adapter(trained_like(cfg, seed=1), adapter, data=cfg.data)
    assert (adapter / "head.safetensors").read_bytes() != first
    assert sorted(p.name for p in adapter.parent.iterdir()) == ["adapter"]  # no temp folders
    assert read_info(adapter).catalogue == ""  # what this write said
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ConfigError, match=r"bare/fedrec.json: file not found"):
        read_info(bare)
    (bare / "fedrec.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"fedrec.json: not valid JSON"):
        read_info(bare)
    (bare / "fedrec.json").write_text('{"format": 1, "model": {}}')
    with pytest.raises(ConfigError, match=r"fedrec.json: bad or missing field"):
        read_info(bare)


def test_users_set_aside_from_training_still_get_recommendations(
    make_cfg: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user with 1 or 2 interactions is not trained on (leave-one-out needs 3) but is served."""
    data_dir = tmp_path / "shop"
    data_dir.mkdir()
    (data_dir / "items.csv").write_text(
        "sku,title\n" + "".join(f"i-{i},Item number {i}\n" for i in range(12))
    )
    rows = [f"u-{u},i-{(u + t) % 12},{t}" for u in range(6) for t in range(4)]
    rows += ["new-1,i-3,100", "new-2,i-4,100", "new-2,i-5,101"]
    (data_dir / "interactions.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    cfg = make_cfg(**{"data.dataset": "generic", "data.dir": str(data_dir),
                      "data.item-id-column": "sku"})  # fmt: skip
    corpus = load_corpus(cfg.data)
    assert corpus.data.n_users == 6 and corpus.every_user.n_users == 8
    digest = catalogue_digest(corpus.data.item_ids, corpus.data.item_texts)
    adapter = write_adapter(trained_like(cfg), tmp_path / "adapter", data=cfg.data,
                            catalogue=digest)  # fmt: skip
    rec = Recommender.load(adapter, cfg.data, backbone=cfg.model.backbone,
                           cache_dir=cfg.model.cache_dir)  # fmt: skip
    assert {"new-1", "new-2"} <= set(rec.user_ids())
    top = rec.for_user("new-2", k=12)
    assert {r.item for r in top}.isdisjoint({"i-4", "i-5"}) and len(top) == 10  # seen excluded
    assert {d.item for d in top[0].because} <= {"i-4", "i-5"}
    extra = ("--data-dir", str(data_dir), "--user", "new-1", "--k", "3")
    assert main(_cli(adapter, cfg, *extra)) == 0
    shown = json.loads(capsys.readouterr().out)["users"][0]
    assert shown["user"] == "new-1" and len(shown["recommendations"]) == 3
    out = tmp_path / "all.csv"
    assert main(_cli(adapter, cfg, "--data-dir", str(data_dir), "--all", "--k", "2",
                     "--out", str(out))) == 0  # fmt: skip
    with out.open() as fh:
        assert len({r["user"] for r in csv.DictReader(fh)}) == 8
