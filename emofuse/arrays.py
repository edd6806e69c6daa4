"""Small numpy helpers shared by several layers (the store, alignment pooling, the data path)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def offsets_from_lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Start of each item when items of ``lengths`` (N,) lie back to back: (N,) int64,
    ``[0, l0, l0 + l1, …]``; empty for no item."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out
