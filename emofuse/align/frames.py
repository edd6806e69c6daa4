"""Seconds → encoder frames: the one rule every granularity uses."""

from __future__ import annotations

import numpy as np


def segment_frames(starts: np.ndarray, ends: np.ndarray, n_frames: int, hop: float, window: float,
                   offset: float = 0.0) -> tuple[np.ndarray, int]:
    """Frame spans ``(K, 2)`` [start, end) of segments given in seconds, and how many segments
    end past the audio (clipped): after the last frame's window by more than a hop, which the
    encoder would have made a frame of.

    Frame t covers [offset + t·hop, offset + t·hop + window) and belongs to a segment when its centre
    t·hop + window/2 lies in [start, end). A segment that holds no centre (shorter than a frame,
    or past the audio) takes the frame nearest its midpoint, so no span is ever empty. Spans lie
    in [0, n_frames) and are ordered when the segments are. wav2vec2: hop 0.02, window 0.025,
    offset 0; Whisper: hop 0.02, window 0.065, offset -0.0325 (frame t centred on t·hop).
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, found {n_frames}")
    starts = np.asarray(starts, dtype=np.float64) - offset
    ends = np.asarray(ends, dtype=np.float64) - offset
    half = window / 2.0
    eps = 1e-9
    s = np.ceil((starts - half) / hop - eps).astype(np.int64)
    e = np.ceil((ends - half) / hop - eps).astype(np.int64)
    s, e = np.clip(s, 0, n_frames), np.clip(e, 0, n_frames)
    empty = e <= s
    mid = np.clip(np.round(((starts + ends) / 2 - half) / hop), 0, n_frames - 1).astype(np.int64)
    s = np.where(empty, mid, s)
    e = np.where(empty, mid + 1, e)
    # the audio ends within a hop after the last frame's window (the encoder drops a partial frame):
    # a segment ending up to there ends with the audio, not past it
    audio_end = (n_frames - 1) * hop + window + hop
    clipped = int(np.sum(ends > audio_end + eps))
    return np.stack([s, e], axis=1), clipped
