"""The demo job: every stage that exists, run on the bundled demo corpus."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from ..corpora import demo_root, load_corpus, utterance_table
from ..store import FeatureStore, StoreWriter


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo-out"


def run_demo(cfg: DemoConfig, echo=print) -> str:
    """Read the demo corpus and create its store (utterance table and fingerprint). Returns the store path."""
    utts = load_corpus("demo")
    labels = Counter(u.label for u in utts)
    sessions = Counter(u.session for u in utts)
    echo(f"demo corpus: {len(utts)} utterances from {demo_root()}")
    echo("  labels:   " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    echo("  sessions: " + ", ".join(f"{k}: {v}" for k, v in sorted(sessions.items())))
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "demo.h5")
    with StoreWriter(path, table=utterance_table(utts), corpus_meta={"kind": "demo", "root": demo_root()}):
        pass
    with FeatureStore(path) as fs:
        hours = fs.utterances["duration"].sum() / 3600
        echo(f"store {path}: {len(fs.utterances)} utterances, {hours * 60:.1f} min of audio, "
             f"corpus fingerprint {fs.corpus_fingerprint[:12]}, streams: {fs.streams or 'none yet'}")
    return path
