"""What an extraction did, per stream and in all, and the text ``extract-embeddings`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamSummary:
    stream: str
    kind: str
    encoder: str
    untrained: bool
    done: int = 0
    skipped: int = 0
    reused: int = 0
    rows: int = 0
    windowed: int = 0               # transcripts longer than the text model's maximum (windowed with overlap)
    audio_seconds: float = 0.0
    time_load: float = 0.0
    time_encode: float = 0.0
    time_write: float = 0.0         # the job stalled on the store (waiting for a commit to finish)
    time_write_busy: float = 0.0    # the background thread writing commits (overlaps encoding)


@dataclass
class ExtractSummary:
    store: str
    streams: list[StreamSummary] = field(default_factory=list)
    wall: float = 0.0
    time_finalize: float = 0.0
    store_bytes: int = 0
    skipped_tsv: str | None = None

    def text(self) -> str:
        lines = []
        for s in self.streams:
            tag = " [UNTRAINED: random weights, a smoke test]" if s.untrained else ""
            unit = "frames" if s.kind == "audio" else "tokens"
            line = (f"  {s.stream!r} ({s.encoder}{tag}): {s.done} utterances done, {s.skipped} skipped"
                    + (f", {s.reused} already in the store" if s.reused else "") + f", {s.rows:,} {unit}"
                    + (f" ({s.windowed} longer than the model's maximum: windowed with overlap)" if s.windowed else ""))
            if s.audio_seconds:
                busy = s.time_load + s.time_encode + s.time_write
                line += (f", {s.audio_seconds / 3600:.3f} h of audio, "
                         f"{s.audio_seconds / max(busy, 1e-9):.1f} audio-s/s")
            lines.append(line)
        lines.append(f"store {self.store}: {self.store_bytes / 1e6:.1f} MB, wall {self.wall:.1f} s"
                     + (f"; skipped utterances listed in {self.skipped_tsv}" if self.skipped_tsv else ""))
        return "\n".join(lines)
