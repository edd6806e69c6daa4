"""The utterance table a store keeps: one row per record, plus cheap audio facts."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import pandas as pd
import soundfile as sf

from .records import Utterance

COLUMNS = ("id", "label", "session", "speaker", "gender", "transcript", "audio_path", "start", "end",
           "duration", "audio_bytes", "audio_digest")


def audio_digest(path: str) -> str:
    """sha256 (32 hex) of an audio file's bytes: a re-recorded or re-cut file of the same name
    and size is noticed. "" when the file cannot be read (extraction reports it per utterance).
    Hashing the bytes is cheaper than decoding (measured in docs/store-format.md)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()[:32]


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
    digests: dict[str, str] = {}  # several utterances may cut one file
    for u in utts:
        dur, size = _audio_facts(u)
        if u.audio_path not in digests:
            digests[u.audio_path] = audio_digest(u.audio_path)
        rows.append({
            "id": u.id, "label": u.label, "session": str(u.session), "speaker": u.speaker,
            "gender": u.gender or "", "transcript": u.transcript, "audio_path": u.audio_path,
            "start": float("nan") if u.start is None else u.start,
            "end": float("nan") if u.end is None else u.end,
            "duration": dur, "audio_bytes": size, "audio_digest": digests[u.audio_path],
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))
