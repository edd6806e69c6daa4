"""Audio loading for extraction: soundfile read, segment, mono mix, soxr resample, sanity checks."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

from ..corpora import Utterance

APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"


class BadInput(Exception):
    """One utterance cannot be processed; ``reason`` is one sentence for skipped.tsv."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_audio(utt: Utterance, target_sr: int) -> np.ndarray:
    """Mono float32 samples of ``utt`` at ``target_sr`` (its ``start``/``end`` segment if given).

    Raises ``BadInput`` for AppleDouble junk, unreadable or empty audio, a segment outside the
    file, and NaN/inf samples.
    """
    path = utt.audio_path
    if os.path.basename(path).startswith("._"):
        raise BadInput("AppleDouble metadata file (name starts with '._'), not audio")
    try:
        with open(path, "rb") as f:
            if f.read(4) == APPLEDOUBLE_MAGIC:
                raise BadInput("AppleDouble metadata file (bytes 00 05 16 07), not audio")
        info = sf.info(path)
        start = 0 if utt.start is None else int(round(utt.start * info.samplerate))
        stop = None if utt.end is None else int(round(utt.end * info.samplerate))
        if start > info.frames or (stop is not None and stop > info.frames + info.samplerate // 100):
            raise BadInput(f"segment [{utt.start}, {utt.end}] s lies outside the file ({info.frames / info.samplerate:.3f} s)")
        audio, sr = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except BadInput:
        raise
    except Exception as e:  # soundfile raises several types for broken files
        raise BadInput(f"unreadable audio ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if audio.size == 0:
        raise BadInput("empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise BadInput(f"audio holds {int((~np.isfinite(audio)).sum())} NaN or infinite samples")
    if sr != target_sr:
        audio = soxr.resample(audio, sr, target_sr, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(audio)


def check_transcript(text: str) -> str:
    """The transcript, or ``BadInput`` when it is empty or held bytes that are not UTF-8
    (readers decode those to U+FFFD)."""
    if "\ufffd" in text:
        raise BadInput("transcript is not valid UTF-8 text (undecodable bytes)")
    if not text.strip():
        raise BadInput("empty transcript")
    return text
