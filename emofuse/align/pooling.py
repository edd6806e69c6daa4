"""Segment pooling (multi-granularity paper §2.1): the mean of each segment's frames, every layer."""

from __future__ import annotations

import numpy as np


def pool_segments(frames: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Mean of ``frames[s:e]`` for each span, at every layer, without a loop over segments or layers.

    frames: (T, L, D); spans: (K, 2) int [start, end) with 0 <= start < end <= T.
    Returns (K, L, D) float32 (a (0, L, D) array when K = 0). Uses a float64 prefix sum.
    """
    T = frames.shape[0]
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(spans) == 0:
        return np.zeros((0,) + frames.shape[1:], dtype=np.float32)
    if (spans[:, 0] < 0).any() or (spans[:, 1] > T).any() or (spans[:, 1] <= spans[:, 0]).any():
        raise ValueError(f"spans must satisfy 0 <= start < end <= T={T}")
    csum = np.zeros((T + 1,) + frames.shape[1:], dtype=np.float64)
    np.cumsum(frames, axis=0, dtype=np.float64, out=csum[1:])
    counts = (spans[:, 1] - spans[:, 0]).astype(np.float64)
    return ((csum[spans[:, 1]] - csum[spans[:, 0]]) / counts[:, None, None]).astype(np.float32)
