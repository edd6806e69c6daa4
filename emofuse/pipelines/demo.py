"""The demo job: every stage that exists, run on the bundled demo corpus."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from ..corpora import demo_root, load_corpus
from .align import AlignConfig, run_align
from .describe import describe_store
from .extract import ExtractConfig, run_extract

#: Encoders that need no download: the packaged MiniLM text model, a seeded random wav2vec2
#: (labelled untrained everywhere), and openSMILE's eGeMAPS descriptors.
DEMO_TEXT_MODEL = "packaged:all-MiniLM-L6-v2"
DEMO_AUDIO_MODEL = "untrained:wav2vec2-small"


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo-out"
    device: str = "cpu"


def run_demo(cfg: DemoConfig, echo=print) -> str:
    """Extract the demo corpus into ``<out>/demo.h5`` (resumable). Returns the store path."""
    utts = load_corpus("demo")
    labels = Counter(u.label for u in utts)
    echo(f"demo corpus (synthetic, espeak-ng): {len(utts)} utterances from {demo_root()}; "
         + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "demo.h5")
    echo("stage 1/2: extract-embeddings (audio: untrained wav2vec2-small; text: all-MiniLM-L6-v2; eGeMAPS)")
    base = ExtractConfig(corpus="demo", out=path, device=cfg.device, audio_model=DEMO_AUDIO_MODEL,
                         text_model=DEMO_TEXT_MODEL)
    for step in (base, ExtractConfig(corpus="demo", out=path, device=cfg.device,
                                     audio_model="opensmile:eGeMAPSv02", text_model=None)):
        echo(run_extract(step, echo=echo).text())
    echo("stage 2/2: align-segments (the corpus's ForcedAlignment files, made by our pocketsphinx aligner)")
    for stream in ("audio", "egemaps"):
        echo(f"stream {stream!r}:\n" + run_align(AlignConfig(store=path, stream=stream, source="iemocap"), echo=echo).text())
    echo(describe_store(path))
    return path
