"""Alignment records: ``(symbol, start, duration)`` in seconds, per tier, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass

#: Symbols that are silence or filler, dropped before pooling unless asked to keep them.
SILENCE = {"<s>", "</s>", "<sil>", "sil", "sp", "spn", "", "SIL", "+BREATHING+", "+LAUGHTER+", "+LIPSMACK+",
           "+GARBAGE+", "+NOISE+", "++BREATHING++", "++LAUGHTER++", "++GARBAGE++", "++LIPSMACK++", "++NOISE++"}


@dataclass(frozen=True)
class AlignmentItem:
    symbol: str
    start: float      # seconds from the start of the utterance's audio
    duration: float   # seconds

    @property
    def end(self) -> float:
        return self.start + self.duration


def is_silence(symbol: str) -> bool:
    """Silence, sentence markers and fillers in Sphinx, MFA and Praat conventions."""
    s = symbol.strip()
    return s in SILENCE or (s.startswith("+") and s.endswith("+")) or (s.startswith("<") and s.endswith(">"))

