"""Reading an utterance's alignment from whatever source, and deriving syllables."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import EmofuseError
from .records import AlignmentItem, is_silence
from .sphinx_seg import read_seg
from .syllabify import UnknownPhone, syllabify
from .textgrid import read_textgrid


def read_alignment(paths: Mapping[str, str], tier_names: Mapping[str, Sequence[str]] | None = None,
                   speaker: str | None = None) -> dict[str, list[AlignmentItem]]:
    """``{tier: items}`` from an utterance's alignment files (``word``/``phone``/``syllable``
    Sphinx files, or a ``textgrid``: of several speakers, ``speaker``'s tiers)."""
    if "textgrid" in paths:
        return read_textgrid(paths["textgrid"], tier_names, speaker)
    return {tier: read_seg(p, tier) for tier, p in paths.items() if tier in ("word", "phone", "syllable")}


def syllables_from(words: Sequence[AlignmentItem], phones: Sequence[AlignmentItem],
                   keep_silence: bool = False, phoneless: list | None = None) -> list[AlignmentItem]:
    """Syllables of each non-silent word, from the phones whose midpoints fall inside it; with
    ``keep_silence`` a silence or filler word is kept as one segment of its own, as in the word
    and phone tiers. A word no phone's midpoint falls in has no syllable: it is appended to
    ``phoneless`` (for the caller to say). ``EmofuseError`` for phones neither ARPAbet nor IPA."""
    out: list[AlignmentItem] = []
    speech = [p for p in phones if not is_silence(p.symbol)]
    j = 0
    for w in words:
        if is_silence(w.symbol):
            if keep_silence:
                out.append(w)
            continue
        inside = []
        while j < len(speech) and (speech[j].start + speech[j].end) / 2 < w.end:
            if (speech[j].start + speech[j].end) / 2 >= w.start:
                inside.append(speech[j])
            j += 1
        try:
            groups = syllabify([p.symbol for p in inside])
        except UnknownPhone as e:
            raise EmofuseError(f"phone {str(e)[:40]!r} of the word {w.symbol[:40]!r} is neither ARPAbet nor IPA, so "
                               "syllables cannot be built from the phones; give a syllable tier, or align without "
                               "the syllable granularity") from None
        if not inside and phoneless is not None:
            phoneless.append(w)
        for group in groups:
            ps = [inside[i] for i in group]
            out.append(AlignmentItem("_".join(p.symbol for p in ps), ps[0].start, ps[-1].end - ps[0].start))
    return out


def complete_tiers(tiers: dict[str, list[AlignmentItem]], wanted: Sequence[str],
                   keep_silence: bool = False, phoneless: list | None = None) -> dict[str, list[AlignmentItem]]:
    """Add a syllable tier derived from words and phones when one is wanted and missing (words
    without a phone appended to ``phoneless``, as ``syllables_from`` says)."""
    if "syllable" in wanted and "syllable" not in tiers:
        if "word" in tiers and "phone" in tiers:
            tiers = {**tiers, "syllable": syllables_from(tiers["word"], tiers["phone"], keep_silence, phoneless)}
    missing = [g for g in wanted if g not in tiers]
    if missing:
        raise EmofuseError(f"no {'/'.join(missing)} tier (found {sorted(tiers)})")
    return tiers


def cut_to_slice(tiers: Mapping[str, Sequence[AlignmentItem]], start: float, end: float
                 ) -> dict[str, list[AlignmentItem]]:
    """Tiers timed from the start of a whole file, cut to its slice ``start..end`` (seconds) and
    timed from ``start``: an item overlapping the slice is kept, clipped to it; the rest dropped."""
    out = {}
    for tier, items in tiers.items():
        kept = []
        for it in items:
            a, b = max(it.start, start), min(it.end, end)
            if b > a:
                kept.append(AlignmentItem(it.symbol, a - start, b - a))
        out[tier] = kept
    return out


#: How far (seconds) an alignment may run past the end of the audio before it is refused. Sphinx
#: rounds to 10 ms frames and aligners pad the last silence by a frame or two; an alignment in the
#: wrong unit (milliseconds, frames ×10) or of another file overshoots by far more.
PAST_AUDIO_TOLERANCE_S = 0.1


def check_within_audio(tiers: Mapping[str, Sequence[AlignmentItem]], duration: float,
                       source: str | Mapping[str, str], tolerance: float = PAST_AUDIO_TOLERANCE_S) -> None:
    """Refuse an alignment whose segments end more than ``tolerance`` seconds after ``duration``
    (the audio's length): pooling would clip them all onto the last frame, silently.
    ``source``: what to name in the message, or ``{tier: file}`` (``textgrid``: one file for all)."""
    worst = None
    for tier, items in tiers.items():
        for it in items:
            if it.end > duration + tolerance and (worst is None or it.end > worst[1].end):
                worst = (tier, it)
    if worst is not None:
        tier, it = worst
        if not isinstance(source, str):
            source = source.get(tier) or source.get("textgrid") or ", ".join(sorted(set(source.values())))
        n = sum(1 for items in tiers.values() for i in items if i.end > duration + tolerance)
        raise EmofuseError(f"alignment {source} runs past the audio: {n} segments end after {duration:.2f} s + "
                           f"{tolerance:g} s (the latest, {tier} {it.symbol!r}, at {it.start:.2f}..{it.end:.2f} s); "
                           "wrong time unit or another utterance's file?")


#: How far (seconds) an alignment may end before the end of the audio before it is refused.
#: Sphinx-3 files tile the utterance from frame 0 to its last frame: its front end (10 ms hop,
#: 25.6 ms window) gives ``(samples - 410) // 160 + 1`` frames, so the last row ends 16-26 ms
#: before the wav does (the demo's pocketsphinx files: within 7 ms); a TextGrid from MFA or Praat
#: declares its audio's length to the sample. 0.1 s is four times Sphinx's shortfall, and an
#: alignment of another, shorter utterance (or cut short) ends earlier than that.
SHORT_OF_AUDIO_TOLERANCE_S = 0.1


def alignment_ends(paths: Mapping[str, str], tiers: Mapping[str, Sequence[AlignmentItem]],
                   wanted: Sequence[str]) -> dict[str, tuple[float, str]]:
    """Where each alignment file an utterance's ``wanted`` granularities are pooled from ends
    (``check_covers_audio``'s ``ends``), from ``tiers`` as read, silence not yet dropped: a Sphinx
    file's last row (its rows tile the utterance from frame 0, header and trailer aside). Derived
    syllables count their word and phone files. A TextGrid has none: its declared end (``xmax``)
    is the audio's length when MFA or Praat wrote it, but many converters (from word timestamps,
    Gentle, CTC aligners) write the last word's end there, so an utterance with trailing silence
    would be refused; only its running past the audio is checked (``check_within_audio``)."""
    if "textgrid" in paths:   # its xmax is no audio length: converters write the last word's end there
        return {}
    used = set(wanted) | ({"word", "phone"} if "syllable" in wanted and "syllable" not in tiers else set())
    out = {}
    for tier in sorted(used):
        if tier in paths and tiers.get(tier):
            last = tiers[tier][-1]
            out[paths[tier]] = (last.end, f"its last row ({tier} {last.symbol!r})")
    return out


def check_covers_audio(ends: Mapping[str, tuple[float, str]], duration: float,
                       tolerance: float = SHORT_OF_AUDIO_TOLERANCE_S) -> None:
    """Refuse an alignment that ends more than ``tolerance`` seconds before ``duration`` (the
    audio's length, or its slice's): it describes another, shorter utterance (or a cut-short
    file), and its segments would be pooled onto frames they do not describe, silently.
    ``ends``: ``{file: (where it ends, in seconds; what ends there)}``, silence counted (a Sphinx
    file's last row, a TextGrid's declared end)."""
    short = {f: e for f, e in ends.items() if e[0] < duration - tolerance}
    if short:
        end, what = min(short.values())
        files = ", ".join(sorted(short))
        raise EmofuseError(f"alignment {files} {'ends' if len(short) == 1 else 'end'} before the audio: {what} ends "
                           f"at {end:.2f} s, {duration - end:.2f} s before the audio's end at {duration:.2f} s (more "
                           f"than {tolerance:g} s); another utterance's file?")
