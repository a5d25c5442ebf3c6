"""`fedrec tiny-backbone`: the documented way to make the tiny BERT of the tiny preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.model.backbone import load_backbone
from simulations import cli, tiny_backbone


def test_it_writes_a_loadable_backbone_and_prints_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tiny-backbone", str(tmp_path / "a"), "--hidden", "16", "--heads", "2"]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "a").resolve())
    model = load_backbone(str(tmp_path / "a"))
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
    assert (tmp_path / "a" / "vocab.txt").is_file()  # the bundled tokenizer came along
    # Same seed, same weights: hosts that each make their own hold the same backbone.
    assert tiny_backbone.main([str(tmp_path / "b"), "--hidden", "16"]) == 0
    other = load_backbone(str(tmp_path / "b"))
    theirs = other.state_dict()
    for name, p in model.state_dict().items():
        assert torch.equal(p, theirs[name]), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", "30", "--heads", "4"], "--hidden 30 must be a multiple of --heads 4"),
        (["--layers", "0"], "--hidden, --layers and --heads must be >= 1"),
    ],
)
def test_bad_sizes_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert tiny_backbone.main([str(tmp_path / "x"), *args]) == cli.EXIT_BAD_INPUT
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_file_in_the_way_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert tiny_backbone.main([str(tmp_path / "f")]) == cli.EXIT_BAD_INPUT
    assert "exists and is not a folder" in capsys.readouterr().err
