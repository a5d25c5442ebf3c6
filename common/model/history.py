"""Users' histories as right-aligned (left-padded) index arrays, the towers' input layout."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def left_padded(
    seqs: Sequence[np.ndarray], length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``[B, L]`` items and float32 ``[B, L]`` mask (1 = real) of chronological sequences.

    Each row holds the sequence's last `length` items, right-aligned; ``length = None`` keeps
    every item, ``L`` being the longest sequence (at least 1, so an all-empty batch still has a
    column). Padding is item 0 with mask 0.
    """
    if length is not None and length < 1:
        raise ValueError(f"a history length must be >= 1, got {length}")
    width = length if length is not None else max([1, *(len(s) for s in seqs)])
    hist = np.zeros((len(seqs), width), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.float32)
    for j, seq in enumerate(seqs):
        h = np.asarray(seq, dtype=np.int64)[len(seq) - min(len(seq), width) :]
        if len(h):
            hist[j, width - len(h) :] = h
            mask[j, width - len(h) :] = 1
    return hist, mask
