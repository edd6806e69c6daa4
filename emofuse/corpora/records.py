"""Immutable corpus records. Times are seconds; arrays never live here."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance of a corpus.

    ``start``/``end`` are seconds inside ``audio_path`` (``None`` means the whole file).
    ``alignments`` maps a tier (``"word"``, ``"phone"``, ``"syllable"``, ``"textgrid"``) to a
    file path; it is empty when the corpus ships no alignment for this utterance.
    ``session`` is the fold unit of leave-one-session-out cross-validation. ``channel``: which
    channel of a multi-channel file is the utterance's (0-based; ``None``: all, mixed to mono),
    e.g. one speaker's microphone in a two-channel recording of a dialogue.
    """

    id: str
    audio_path: str
    transcript: str
    label: str
    session: int | str
    speaker: str
    gender: str | None = None
    start: float | None = None
    end: float | None = None
    alignments: Mapping[str, str] = field(default_factory=dict, hash=False, compare=True)
    channel: int | None = None

    def __post_init__(self) -> None:
        # Freeze the mapping too, so a record can never change after it was read.
        object.__setattr__(self, "alignments", MappingProxyType(dict(self.alignments)))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["alignments"] = dict(self.alignments)
        if self.channel is None:   # a record of every channel reads as before channels were named
            del d["channel"]
        return {"type": "Utterance", "schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Utterance":
        if d.get("type") != "Utterance":
            raise ValueError(f"expected a record of type 'Utterance', found type={d.get('type')!r}")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"Utterance record has schema_version={d.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            )
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)
