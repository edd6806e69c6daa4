"""The demo job: every stage that exists, run on the bundled demo corpus."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

from ..corpora import demo_root, load_corpus
from ..options import opt
from .ablate import AblateConfig, run_ablate
from .align import AlignConfig, run_align
from .describe import describe_store
from .extract import ExtractConfig, run_extract
from .report import run_report

log = logging.getLogger(__name__)

#: Encoders that need no download: the packaged MiniLM text model, a seeded random wav2vec2
#: (labelled untrained everywhere), and openSMILE's eGeMAPS descriptors.
DEMO_TEXT_MODEL = "packaged:all-MiniLM-L6-v2"
DEMO_AUDIO_MODEL = "untrained:wav2vec2-small"


@dataclass(frozen=True)
class DemoConfig:
    out: str = opt("demo-out", help="output folder (default: demo-out)")
    device: str = opt("cpu", help="cpu (default), cuda or auto")


def run_demo(cfg: DemoConfig) -> str:
    """Every stage on the demo corpus: extract into ``<out>/demo.h5``, align, ablate the demo
    spec into ``<out>/grid``, report. Resumable at every stage. Returns the report's path."""
    utts = load_corpus("demo")
    labels = Counter(u.label for u in utts)
    log.info(f"demo corpus (synthetic, espeak-ng): {len(utts)} utterances from {demo_root()}; "
             + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "demo.h5")
    log.info("stage 1/4: extract-embeddings (audio: untrained wav2vec2-small; text: all-MiniLM-L6-v2; eGeMAPS)")
    base = ExtractConfig(corpus="demo", out=path, device=cfg.device, audio_model=DEMO_AUDIO_MODEL,
                         text_model=DEMO_TEXT_MODEL)
    for step in (base, ExtractConfig(corpus="demo", out=path, device=cfg.device,
                                     audio_model="opensmile:eGeMAPSv02", text_model=None)):
        log.info(run_extract(step).text())
    log.info("stage 2/4: align-segments (the corpus's ForcedAlignment files, made by our pocketsphinx aligner)")
    for stream in ("audio", "egemaps"):
        log.info(f"stream {stream!r}:\n" + run_align(AlignConfig(store=path, stream=stream, source="iemocap")).text())
    log.info(describe_store(path))
    grid = os.path.join(cfg.out, "grid")
    log.info("stage 3/4: ablate --spec demo (linear, late-fusion and coattention heads, 5 folds)")
    run_ablate(AblateConfig(store=path, spec="demo", out=grid, device=cfg.device))
    log.info("stage 4/4: report")
    report = run_report(grid)
    with open(os.path.join(grid, "tables.md")) as f:
        log.info("\n" + f.read())
    log.info("The demo corpus is synthetic (espeak-ng voices acting emotions by prosody rules) and its audio encoder "
             "is untrained: these numbers are a smoke test of the pipeline, not a result.")
    return report
