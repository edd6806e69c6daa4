"""Praat TextGrids through praatio (Montreal Forced Aligner writes tiers ``words`` and ``phones``)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import EmofuseError
from .records import AlignmentItem

DEFAULT_TIERS = {"word": ("words", "word", "Word"), "phone": ("phones", "phone", "Phone"),
                 "syllable": ("syllables", "syllable", "Syllable")}


#: a speaker's tier in a TextGrid of several speakers, as MFA writes one: ``SPEAKER - words``
SPEAKER_TIER = re.compile(r"^(?P<speaker>.+) - (?P<tier>[^-]+)$")


def speaker_tiers(path: str | Path) -> bool:
    """Whether a TextGrid's tiers are named per speaker (``A - words``), from its bytes (cheap:
    no parse)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return False
    return re.search(rb'name = "[^"\n]+ - [^"\n-]+"', raw) is not None


def read_textgrid(path: str | Path, tier_names: Mapping[str, Sequence[str]] | None = None,
                  speaker: str | None = None) -> dict[str, list[AlignmentItem]]:
    """``{tier: items}`` from a TextGrid; ``tier_names`` maps our tiers to candidate tier names.
    Empty intervals are kept as silence (''). In a TextGrid of several speakers (MFA's ``SPEAKER -
    words`` tiers) the tier of the utterance's ``speaker`` is read; another speaker's tier is
    refused (its words are not this utterance's)."""
    from praatio import textgrid

    names = {**DEFAULT_TIERS, **(tier_names or {})}
    try:
        tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
    except Exception as e:  # praatio raises several types for broken files
        raise EmofuseError(f"TextGrid {path} could not be read: {str(e).splitlines()[0][:200]}") from e
    out: dict[str, list[AlignmentItem]] = {}
    for tier, candidates in names.items():
        own = [f"{speaker} - {c}" for c in candidates] if speaker is not None else []
        found = next((c for c in own + list(candidates) if c in tg.tierNames), None)
        if found is None:
            continue
        m = SPEAKER_TIER.match(found)
        if m and speaker is not None and m["speaker"] != str(speaker):
            others = [t for t in tg.tierNames if (o := SPEAKER_TIER.match(t)) is not None and o["tier"] == m["tier"]]
            if len(others) > 1:
                raise EmofuseError(f"TextGrid {path}: tier {found!r} is speaker {m['speaker']!r}'s (the TextGrid has "
                                   f"{others}), and this utterance's speaker is {speaker!r}; name the tier without "
                                   f"its speaker ({m['tier']!r}: each utterance then reads its own speaker's), or "
                                   "give the utterances the TextGrid's speaker names")
        t = tg.getTier(found)
        if not isinstance(t, textgrid.IntervalTier):
            raise EmofuseError(f"TextGrid {path}: tier {found!r} is a point tier; expected intervals (start, end, label)")
        items = [AlignmentItem(str(e.label), float(e.start), float(e.end) - float(e.start)) for e in t.entries]
        bad = next((i for i in items if not (math.isfinite(i.start) and math.isfinite(i.duration)
                                             and i.start >= 0 and i.duration >= 0)), None)
        if bad is not None:
            raise EmofuseError(f"TextGrid {path}: tier {found!r} has an interval {bad.start}..{bad.end}; "
                               "expected finite times >= 0, end after start")
        out[tier] = items
    if not out:
        per_speaker = any(SPEAKER_TIER.match(t) for t in tg.tierNames)
        raise EmofuseError(f"TextGrid {path} has tiers {list(tg.tierNames)}; expected one of "
                           f"{sorted({c for v in names.values() for c in v})} (set the tier names to match)"
                           + (f"; tiers named per speaker are read by the utterance's speaker, here {speaker!r}"
                              if per_speaker else ""))
    return out


def textgrid_end(path: str | Path) -> float | None:
    """The end time (``xmax``) a TextGrid declares for itself (an aligner writes its audio file's
    length there); None when the file cannot be read (reading its tiers says why)."""
    from praatio import textgrid

    try:
        end = float(textgrid.openTextgrid(str(path), includeEmptyIntervals=True).maxTimestamp)
    except Exception:
        return None
    return end if math.isfinite(end) else None


def write_textgrid(path: str | Path, tiers: Mapping[str, Sequence[AlignmentItem]], duration: float) -> None:
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    tg = textgrid.Textgrid()
    for tier, items in tiers.items():
        entries = [Interval(round(i.start, 4), round(min(i.end, duration), 4), i.symbol) for i in items
                   if i.end > i.start and i.start < duration]
        tg.addTier(textgrid.IntervalTier(DEFAULT_TIERS[tier][0], entries, 0, duration))
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)
