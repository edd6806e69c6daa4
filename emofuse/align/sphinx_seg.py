"""Readers and writers of Sphinx-3 ``.wdseg`` / ``.phseg`` / ``.syseg`` files (IEMOCAP's format)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..corpora.textio import read_lines
from ..errors import EmofuseError
from .records import AlignmentItem

FRAME_RATE = 100  # Sphinx frames per second (10 ms)
MAX_FRAME = 10**9  # 115 days at 10 ms: anything larger is a damaged file, not an utterance
ROW_RE = re.compile(r"^\s*(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(\S.*?)\s*$")
ALTERNATE_RE = re.compile(r"\(\d+\)$")


class AlignmentFormatError(EmofuseError):
    """A malformed alignment file; the message names the file and line."""


def sphinx_frames_to_seconds(sfrm: int, efrm: int) -> tuple[float, float]:
    """(start, end) seconds of Sphinx frames ``sfrm..efrm`` inclusive: start = SFrm × 0.01,
    end = (EFrm + 1) × 0.01. The one place this convention lives."""
    return sfrm / FRAME_RATE, (efrm + 1) / FRAME_RATE


def read_seg(path: str | Path, tier: str) -> list[AlignmentItem]:
    """Items of one Sphinx segmentation file. Word alternates lose their ``(n)`` suffix; phone
    rows with triphone context (``BASE LEFT RIGHT POS``) keep BASE. Rows must tile in order."""
    path = Path(path)
    items: list[AlignmentItem] = []
    prev_end = None
    for no, line in enumerate(read_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("SFrm") or text.lower().startswith("total score"):
            continue
        m = ROW_RE.match(line)
        if not m:
            raise AlignmentFormatError(f"{path}, line {no}: expected 'SFrm EFrm SegAScr {tier.capitalize()}', found {text!r}")
        if max(len(m.group(1)), len(m.group(2))) > len(str(MAX_FRAME)):  # before int(): 5,000 digits raise
            raise AlignmentFormatError(f"{path}, line {no}: frame number {max(m.group(1), m.group(2), key=len)[:20]}… "
                                       f"is too large (at most {MAX_FRAME:,})")
        sfrm, efrm = int(m.group(1)), int(m.group(2))
        if efrm > MAX_FRAME:
            raise AlignmentFormatError(f"{path}, line {no}: frame number {efrm} is too large (at most {MAX_FRAME:,})")
        if efrm < sfrm or sfrm < 0:
            raise AlignmentFormatError(f"{path}, line {no}: frames {sfrm}..{efrm} are not an increasing span")
        if prev_end is not None and sfrm <= prev_end:
            raise AlignmentFormatError(f"{path}, line {no}: frames out of order (starts at {sfrm}, the previous row ended at {prev_end})")
        prev_end = efrm
        symbol = m.group(4).split(maxsplit=3)[0]
        if tier == "word":
            symbol = ALTERNATE_RE.sub("", symbol)
        start, end = sphinx_frames_to_seconds(sfrm, efrm)
        items.append(AlignmentItem(symbol, start, end - start))
    if not items:
        raise AlignmentFormatError(f"{path}: no alignment rows found")
    return items


def write_seg(path: str | Path, items: Sequence[AlignmentItem], tier: str) -> None:
    """Write items in Sphinx-3 layout (frames from seconds by the inverse of the rule above); the
    acoustic scores are written as 0 (our aligner does not report them)."""
    last = "Word" if tier == "word" else "Phone" if tier == "phone" else "Syllable"
    width = 10 if tier == "word" else 9
    lines = [f"\t SFrm  EFrm    SegAScr {last}"]
    for it in items:
        sfrm = int(round(it.start * FRAME_RATE))
        efrm = max(sfrm, int(round(it.end * FRAME_RATE)) - 1)
        lines.append(f"\t{sfrm:5d} {efrm:5d} {0:{width}d} {it.symbol}")
    lines.append(f" Total score: {0:11d}")
    Path(path).write_text("\n".join(lines) + "\n")
