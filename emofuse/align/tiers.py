"""Reading an utterance's alignment from whatever source, and deriving syllables."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import EmofuseError
from .records import AlignmentItem, is_silence
from .sphinx_seg import read_seg
from .syllabify import syllabify
from .textgrid import read_textgrid


def read_alignment(paths: Mapping[str, str], tier_names: Mapping[str, Sequence[str]] | None = None
                   ) -> dict[str, list[AlignmentItem]]:
    """``{tier: items}`` from an utterance's alignment files (``word``/``phone``/``syllable``
    Sphinx files, or a ``textgrid``)."""
    if "textgrid" in paths:
        return read_textgrid(paths["textgrid"], tier_names)
    return {tier: read_seg(p, tier) for tier, p in paths.items() if tier in ("word", "phone", "syllable")}


def syllables_from(words: Sequence[AlignmentItem], phones: Sequence[AlignmentItem]) -> list[AlignmentItem]:
    """Syllables of each non-silent word, from the phones whose midpoints fall inside it."""
    out: list[AlignmentItem] = []
    speech = [p for p in phones if not is_silence(p.symbol)]
    j = 0
    for w in words:
        if is_silence(w.symbol):
            continue
        inside = []
        while j < len(speech) and (speech[j].start + speech[j].end) / 2 < w.end:
            if (speech[j].start + speech[j].end) / 2 >= w.start:
                inside.append(speech[j])
            j += 1
        for group in syllabify([p.symbol for p in inside]):
            ps = [inside[i] for i in group]
            out.append(AlignmentItem("_".join(p.symbol for p in ps), ps[0].start, ps[-1].end - ps[0].start))
    return out


def complete_tiers(tiers: dict[str, list[AlignmentItem]], wanted: Sequence[str]) -> dict[str, list[AlignmentItem]]:
    """Add a syllable tier derived from words and phones when one is wanted and missing."""
    if "syllable" in wanted and "syllable" not in tiers:
        if "word" in tiers and "phone" in tiers:
            tiers = {**tiers, "syllable": syllables_from(tiers["word"], tiers["phone"])}
    missing = [g for g in wanted if g not in tiers]
    if missing:
        raise EmofuseError(f"no {'/'.join(missing)} tier (found {sorted(tiers)})")
    return tiers
