"""The public item catalogue: tokenised texts and the frozen backbone's cached outputs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common.model.backbone import additive_mask, load_backbone, resolve_backbone


@dataclass
class Catalogue:
    """Everything about the items that depends on public text only.

    Attributes
    ----------
    input_ids, attention_mask : torch.Tensor
        ``[n_items, L]`` tokenised item texts (L = longest text, capped at ``max_tokens``).
    lower : numpy.ndarray or None
        ``[n_items, L, H]`` float16 hidden states entering the first LoRA layer (memory-mapped
        from the on-disk cache), or None when the whole backbone runs per step.
    frozen : torch.Tensor
        ``[n_items, H]`` float32 mean-pooled, L2-normalised output of the frozen backbone (no
        adapter): the input of the user tower.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lower: np.ndarray | None
    frozen: torch.Tensor
    n_lower: int

    @property
    def n_items(self) -> int:
        """Number of items."""
        return int(self.input_ids.shape[0])


def default_cache_dir() -> Path:
    """`$FEDREC_CACHE`, else `$XDG_CACHE_HOME/fedrec`, else `~/.cache/fedrec`."""
    if os.environ.get("FEDREC_CACHE"):
        return Path(os.environ["FEDREC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedrec"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the unmasked tokens: ``[N, L, H], [N, L] -> [N, H]``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def _encode_frozen(
    bert: Any, ids: torch.Tensor, mask: torch.Tensor, n_lower: int, batch: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen backbone; return (hidden entering layer n_lower, pooled final output)."""
    n, seq = ids.shape
    hidden_size = bert.config.hidden_size
    lower = np.zeros((n, seq, hidden_size), dtype=np.float16)
    pooled = np.zeros((n, hidden_size), dtype=np.float32)
    for start in range(0, n, batch):
        sl = slice(start, start + batch)
        i, m = ids[sl].to(device), mask[sl].to(device)
        out = bert(input_ids=i, attention_mask=m, output_hidden_states=True)
        lower[sl] = out.hidden_states[n_lower].to(torch.float16).cpu().numpy()
        pooled[sl] = nn.functional.normalize(mean_pool(out.last_hidden_state, m), dim=-1).cpu()
    return lower, pooled


def build_catalogue(
    texts: list[str],
    *,
    backbone: str,
    max_tokens: int,
    n_lower: int,
    cache_lower: bool,
    cache_dir: str | Path | None,
    device: str = "cpu",
    batch: int = 256,
) -> Catalogue:
    """Tokenise `texts` and load (or compute once and cache on disk) the frozen outputs.

    The cache key covers the backbone, the texts, ``max_tokens`` and ``n_lower``; files are
    written to a temporary name and renamed, under a file lock, so concurrent client workers
    compute it once and never read a half-written cache.
    """
    path = resolve_backbone(backbone)
    tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
    enc = tok(texts, padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(
        json.dumps([str(path), _weights_stamp(path), max_tokens, n_lower, texts]).encode()
    ).hexdigest()[:24]
    folder = root / "catalogue" / key
    folder.mkdir(parents=True, exist_ok=True)
    lower_f, pooled_f = folder / "lower.f16.npy", folder / "frozen.f32.npy"
    with FileLock(str(folder / ".lock")):
        if not (pooled_f.exists() and lower_f.exists()):
            bert: Any = load_backbone(backbone)
            bert = bert.to(device).eval()
            lower, pooled = _encode_frozen(bert, ids, mask, n_lower, batch, device)
            _atomic_save(lower_f, lower)
            _atomic_save(pooled_f, pooled)
    frozen = torch.from_numpy(np.load(pooled_f))
    lower_t = np.load(lower_f, mmap_mode="r") if cache_lower else None
    return Catalogue(ids, mask, lower_t, frozen, n_lower)


def _weights_stamp(path: Path) -> str:
    """Content hash of the backbone folder's files (new weights invalidate the cache)."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(path).glob("*") if q.is_file()):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


__all__ = ["Catalogue", "additive_mask", "build_catalogue", "default_cache_dir", "mean_pool"]
