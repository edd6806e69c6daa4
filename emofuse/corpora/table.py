"""The utterance table a store keeps: one row per record, plus cheap audio facts and where each
utterance's alignment files are (so a store is self-sufficient: align-segments reads them from
the store, not from the corpus)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping, Sequence

import pandas as pd
import soundfile as sf

from .records import Utterance

#: the column holding each utterance's alignment files: a JSON object ``{tier: path}`` (tiers as in
#: ``Utterance.alignments``), a path relative to the corpus's base folder (``corpus_base``) with
#: ``/`` separators where the file lies inside it, else absolute; ``{}`` when it has none
ALIGNMENTS = "alignments"
#: the column of each utterance's channel of its file (0-based; NaN: every channel, mixed to mono)
CHANNEL = "channel"
COLUMNS = ("id", "label", "session", "speaker", "gender", "transcript", "audio_path", "start", "end",
           "duration", "audio_bytes", "audio_digest", ALIGNMENTS, CHANNEL)


def channel_of(row) -> int | None:
    """An utterance's channel from a table row (a dict or Series); None for every channel (NaN, a
    blank cell, or a table written before channels were named)."""
    v = row.get(CHANNEL) if hasattr(row, "get") else None
    if v is None or v != v or (isinstance(v, str) and not v.strip()):
        return None
    return int(float(v))


def _inside(path: str, base: str) -> bool:
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:   # another drive (Windows), or one relative and one absolute
        return False


def stored_path(path: str, base: str | None) -> str:
    """``path`` as the store keeps it: relative to ``base`` (``/``-separated) where it lies inside
    it, else absolute."""
    path = os.path.abspath(path)
    if base:
        base = os.path.abspath(base)
        if _inside(path, base):
            return os.path.relpath(path, base).replace(os.sep, "/")
    return path


def resolve_path(stored: str, base: str | None, recorded_base: str | None = None) -> str:
    """Where a path the store keeps lies now: a relative one under ``base`` (the corpus's folder
    today); an absolute one inside ``recorded_base`` (the folder at extraction) moved under
    ``base`` with it; any other absolute path as it is."""
    if not os.path.isabs(stored):
        return os.path.join(base or ".", *stored.split("/"))
    if base and recorded_base and os.path.abspath(base) != os.path.abspath(recorded_base) \
            and _inside(os.path.abspath(stored), os.path.abspath(recorded_base)):
        return os.path.join(base, os.path.relpath(os.path.abspath(stored), os.path.abspath(recorded_base)))
    return stored


def resolve_audio_path(stored: str, base: str | None, recorded_base: str | None = None) -> str:
    """Where an utterance's audio lies now, from the table's ``audio_path``: absolute since
    emofuse keeps it so (see ``resolve_path``). A relative one is from a store extracted with a
    relative ``--root`` before that: it was relative to the working directory of extraction,
    i.e. ``ROOT_AS_GIVEN/REST``. The longest leading part of it that names the tail of
    ``recorded_base`` (leading ``..`` aside) is that root (none: the root was ``.``); ``REST``
    then lies under ``base`` (the corpus's folder now). Without ``recorded_base``, the path as it
    reads from the working directory."""
    if os.path.isabs(stored):
        return resolve_path(stored, base, recorded_base)
    parts = [p for p in stored.split("/") if p not in ("", ".")]
    if recorded_base:
        tail = [p for p in os.path.abspath(recorded_base).split(os.sep) if p]
        for i in range(len(parts) - 1, -1, -1):
            prefix = parts[:i]
            while prefix and prefix[0] == "..":
                prefix = prefix[1:]
            if ".." in prefix or len(prefix) > len(tail) or tail[len(tail) - len(prefix):] != prefix:
                continue
            return os.path.join(base or recorded_base, *parts[i:])
    return os.path.abspath(stored)


def alignments_cell(paths: Mapping[str, str], base: str | None) -> str:
    """The ``alignments`` column's value for one utterance."""
    return json.dumps({tier: stored_path(p, base) for tier, p in sorted(paths.items())}, ensure_ascii=False)


def alignment_paths(cell: str, base: str | None, recorded_base: str | None = None) -> dict[str, str]:
    """``{tier: path now}`` from an ``alignments`` value (see ``resolve_path``)."""
    return {tier: resolve_path(p, base, recorded_base) for tier, p in json.loads(cell or "{}").items()}


def changes_text(changes: list[tuple[str, str, str]]) -> str:
    """``(id, what changed, path)`` of utterances whose audio differs from a store's record, as
    the counts per kind and a few examples: ``2 audio content changed; e.g. u1: … (path); …``."""
    kinds: dict[str, int] = {}
    for _, what, _ in changes:
        kinds[what] = kinds.get(what, 0) + 1
    counts = ", ".join(f"{n} {what}" for what, n in sorted(kinds.items()))
    shown = "; ".join(f"{i}: {what} ({path})" for i, what, path in changes[:3])
    return f"{counts}; e.g. {shown}"


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
        if u.end is not None:   # a slice given by its end only: from the file's start
            dur = min(dur, u.end)
        if u.start is not None:
            dur -= u.start
        return dur, size
    except Exception:  # unreadable audio is reported by extraction, per utterance
        return float("nan"), size


def utterance_table(utts: Sequence[Utterance], base: str | None = None) -> pd.DataFrame:
    """DataFrame with the columns in ``COLUMNS`` (``session`` as string, so folds of any
    manifest compare equal), in record order. ``base``: the corpus's folder (``corpus_base``),
    against which alignment paths are kept relative (absolute without it)."""
    rows = []
    digests: dict[str, str] = {}  # several utterances may cut one file
    for u in utts:
        dur, size = _audio_facts(u)
        # absolute: a reader given a relative --root would otherwise keep paths relative to the
        # working directory of extraction, which no later command can resolve
        audio = os.path.abspath(u.audio_path)
        if audio not in digests:
            digests[audio] = audio_digest(audio)
        rows.append({
            "id": u.id, "label": u.label, "session": str(u.session), "speaker": u.speaker,
            "gender": u.gender or "", "transcript": u.transcript, "audio_path": audio,
            "start": float("nan") if u.start is None else u.start,
            "end": float("nan") if u.end is None else u.end,
            "duration": dur, "audio_bytes": size, "audio_digest": digests[audio],
            ALIGNMENTS: alignments_cell(u.alignments, base),
            CHANNEL: float("nan") if u.channel is None else float(u.channel),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))
