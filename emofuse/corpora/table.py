"""The utterance table a store keeps: one row per record, plus cheap audio facts."""

from __future__ import annotations

import os
from typing import Sequence

import pandas as pd
import soundfile as sf

from .records import Utterance

COLUMNS = ("id", "label", "session", "speaker", "gender", "transcript", "audio_path", "start", "end",
           "duration", "audio_bytes")


def _audio_facts(u: Utterance) -> tuple[float, int]:
    """(duration in seconds, file size in bytes); NaN / -1 when the file cannot be read."""
    try:
        size = os.stat(u.audio_path).st_size
    except OSError:
        return float("nan"), -1
    if u.start is not None and u.end is not None:
        return u.end - u.start, size
    try:
        info = sf.info(u.audio_path)
        dur = info.frames / info.samplerate
        if u.start is not None:
            dur -= u.start
        return dur, size
    except Exception:  # unreadable audio is reported by extraction, per utterance
        return float("nan"), size


def utterance_table(utts: Sequence[Utterance]) -> pd.DataFrame:
    """DataFrame with the columns in ``COLUMNS`` (``session`` as string, so folds of any
    manifest compare equal), in record order."""
    rows = []
    for u in utts:
        dur, size = _audio_facts(u)
        rows.append({
            "id": u.id, "label": u.label, "session": str(u.session), "speaker": u.speaker,
            "gender": u.gender or "", "transcript": u.transcript, "audio_path": u.audio_path,
            "start": float("nan") if u.start is None else u.start,
            "end": float("nan") if u.end is None else u.end,
            "duration": dur, "audio_bytes": size,
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))
