"""Audio loading for extraction: soundfile read, segment, mono mix, soxr resample, sanity checks."""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from ..corpora import Utterance

APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"
#: how audio at another rate reaches the encoder's (``read_audio``): recorded in each audio
#: stream's info as provenance (another resampler changes the activations a little; the
#: fingerprint does not cover it, as it does not cover the transformers version)
RESAMPLER = f"soxr {soxr.__version__}, quality HQ, each utterance resampled after its cut"


class BadInput(Exception):
    """One utterance cannot be processed; ``reason`` is one sentence for skipped.tsv."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def wav_truncation(f: BinaryIO, head: bytes) -> str | None:
    """One sentence when ``f`` (an open file whose first 12 bytes are ``head``) is a RIFF/WAVE
    file whose data chunk declares more bytes than the file holds (an interrupted copy, which
    soundfile reads silently as a shorter recording); else None. Reads only the chunk headers
    up to the data chunk. Only a clear truncation is judged: other formats (RF64, RIFX, FLAC …),
    a size left open by a streaming writer (0 or 0xFFFFFFFF, in the RIFF or the data header), a
    RIFF size that disagrees with the data chunk, or chunks that cannot be walked give None
    (soundfile then reads the file or refuses it itself). A shortfall of at most 10 ms of audio
    is let through too: some writers round the sizes in their headers, and an interrupted copy
    loses far more (it stops at a buffer's end)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    riff_size = struct.unpack("<I", head[4:8])[0]
    size = os.fstat(f.fileno()).st_size
    pos, block_align, byte_rate = 12, 0, 0
    for _ in range(64):  # a wav has a handful of chunks before its data
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            fmt = f.read(16)
            if len(fmt) >= 14:
                byte_rate, block_align = struct.unpack("<IH", fmt[8:14])
        elif cid == b"data":
            present = size - (pos + 8)
            open_size = n in (0, 0xFFFFFFFF) or riff_size in (0, 0xFFFFFFFF)
            if open_size or present + byte_rate // 100 >= n or 8 + riff_size < pos + 8 + n:
                return None
            if block_align:
                return (f"truncated wav: its header declares {n // block_align} samples, the file holds "
                        f"{present // block_align} (an interrupted copy?)")
            return (f"truncated wav: its header declares {n} bytes of audio, the file holds {present} "
                    "(an interrupted copy?)")
        pos += 8 + n + (n & 1)  # chunks are padded to an even size
    return None


def segment_samples(start_s: float | None, end_s: float | None, info) -> tuple[int, int | None]:
    """``(start, stop)`` sample indices of the segment [start_s, end_s) seconds of a file
    (``info``: its ``soundfile.info``; None: from the beginning / to the end), as extraction and
    the aligner both cut it; ``BadInput`` for a segment outside the file (10 ms of slack at the end)."""
    start_s = None if start_s is None or start_s != start_s else start_s   # NaN (a blank table cell): none
    end_s = None if end_s is None or end_s != end_s else end_s
    start = 0 if start_s is None else int(round(start_s * info.samplerate))
    stop = None if end_s is None else int(round(end_s * info.samplerate))
    if -info.samplerate // 100 <= start < 0:   # a few ms before the file (rounding in a manifest): from its start
        start = 0
    if start < 0 or start > info.frames or (stop is not None and stop > info.frames + info.samplerate // 100):
        raise BadInput(f"segment [{start_s}, {end_s}] s lies outside the file ({info.frames / info.samplerate:.3f} s)")
    if stop is not None and stop <= start or stop is None and start_s is not None and start >= info.frames:
        raise BadInput(f"segment [{start_s}, {end_s}] s is empty (its end is not after its start)")
    return start, stop


#: the audio files of several channels ``load_audio`` mixed to mono (extraction says how many)
MIXED: set[str] = set()
#: the sample rates ``load_audio`` resampled from (an openSMILE stream says so: its descriptors on a
#: 16 kHz copy differ from openSMILE's own run on the file's rate)
RESAMPLED: set[int] = set()


def pick_channel(audio: np.ndarray, channel: int | None, path: str) -> np.ndarray:
    """Mono samples from ``audio`` (frames × channels, as soundfile reads it): the ``channel``
    asked for, or every channel mixed (a file of several is noted in ``MIXED``). ``BadInput`` for
    a channel the file does not hold."""
    if channel is not None:
        if not 0 <= channel < audio.shape[1]:
            raise BadInput(f"channel {channel} asked for, the file holds {audio.shape[1]} channel(s) "
                           f"(0-based: 0 … {audio.shape[1] - 1})")
        return audio[:, channel]
    if audio.shape[1] > 1:
        MIXED.add(path)
        return audio.mean(axis=1)
    return audio[:, 0]


def load_audio(utt: Utterance, target_sr: int) -> np.ndarray:
    """Mono float32 samples of ``utt`` at ``target_sr`` (its ``start``/``end`` segment if given;
    its ``channel`` if named, else every channel mixed).

    Raises ``BadInput`` for AppleDouble junk, a truncated wav (``wav_truncation``), unreadable
    or empty audio, a segment outside the file, and NaN/inf samples.
    """
    path = utt.audio_path
    if os.path.basename(path).startswith("._"):
        raise BadInput("AppleDouble metadata file (name starts with '._'), not audio")
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] == APPLEDOUBLE_MAGIC:
                raise BadInput("AppleDouble metadata file (bytes 00 05 16 07), not audio")
            truncated = wav_truncation(f, head)
            if truncated:
                raise BadInput(truncated)
        info = sf.info(path)
        start, stop = segment_samples(utt.start, utt.end, info)
        audio, sr = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except BadInput:
        raise
    except Exception as e:  # soundfile raises several types for broken files
        raise BadInput(f"unreadable audio ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    audio = pick_channel(audio, utt.channel, path)
    if audio.size == 0:
        raise BadInput("empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise BadInput(f"audio holds {int((~np.isfinite(audio)).sum())} NaN or infinite samples")
    if sr != target_sr:
        RESAMPLED.add(int(sr))
        audio = soxr.resample(audio, sr, target_sr, quality="HQ").astype(np.float32)   # as RESAMPLER says
    return np.ascontiguousarray(audio)


def check_transcript(text: str) -> str:
    """The transcript, or ``BadInput`` when it is empty or held bytes that are not UTF-8
    (readers decode those to U+FFFD)."""
    if "\ufffd" in text:
        raise BadInput("transcript is not valid UTF-8 text (undecodable bytes)")
    if not text.strip():
        raise BadInput("empty transcript")
    return text
