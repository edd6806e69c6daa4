"""The stream keys of a configuration, in one place: ``F`` frames, ``P``/``S``/``W`` phone,
syllable and word segments, ``T`` text tokens; what each reads in the store (its entry kind, from
the store's own names) and what it is called in messages and figures."""

from __future__ import annotations

from ..store import FRAMES, GRANULARITIES, TOKENS, segments_kind

#: the segment keys, one per store granularity, in the store's order: P phone, S syllable, W word
SEGMENT_KEYS = {g[0].upper(): g for g in GRANULARITIES}
FRAME_KEY = "F"
TEXT_KEY = "T"
#: speech keys in their fixed order: frames, then the segment granularities
SPEECH_KEYS = (FRAME_KEY, *SEGMENT_KEYS)
#: every key, in the order a configuration lists them
KEYS = (*SPEECH_KEYS, TEXT_KEY)

#: key → the store entry kind it reads (``frames``, ``segments/<granularity>``, ``tokens``)
KEY_KIND = {FRAME_KEY: FRAMES, **{k: segments_kind(g) for k, g in SEGMENT_KEYS.items()}, TEXT_KEY: TOKENS}
#: key → its name in sentences ("phone segments")
KEY_NAME = {FRAME_KEY: "frames", **{k: f"{g} segments" for k, g in SEGMENT_KEYS.items()}, TEXT_KEY: "text tokens"}
#: key → its short name in figure titles ("phones")
SHORT_NAME = {FRAME_KEY: "frames", **{k: f"{g}s" for k, g in SEGMENT_KEYS.items()}, TEXT_KEY: "text"}


def without_segments(empty: dict) -> str:
    """``{key: count}`` of utterances a run reads with a segment input masked (the store has no
    segments of them), as a phrase: "2 utterances without word segments, 1 without phone segments"."""
    return ", ".join(f"{n} {'utterance' + ('s' if n != 1 else '') + ' ' if i == 0 else ''}without {KEY_NAME[k]}"
                     for i, (k, n) in enumerate(empty.items()))


def stream_of(key: str, audio_stream: str, text_stream: str) -> str:
    """The store stream a key is read from: the text stream for ``T``, the audio stream otherwise."""
    return text_stream if key == TEXT_KEY else audio_stream
