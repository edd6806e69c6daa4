#!/usr/bin/env python3
"""predict benchmark: where the time of ``emofuse predict`` goes (the encoders vs the fold-model
ensemble), and that predict reproduces the run's own test logits, measured side by side in one run.

Builds everything from the bundled demo corpus: extracts its utterances (``--limit``: the first N) with
``--audio-model`` and ``--text-model`` into a temporary store, trains ``train-head --fusion late
--granularity F+T --norm global`` (``--repeats`` × 5 folds, ``--epochs``), exports it, then runs
``TrainedModel.features`` (the encoders through the extraction path) and ``member_logits`` (every
fold model) on the same utterances' audio files and transcripts. Reports encoder and head time per
utterance, the heads' share of predict's time, and the largest difference between each member's
logits and the logits the run wrote for its test session.

    python benchmarks/predict.py                                             # CPU, eGeMAPS + MiniLM
    python benchmarks/predict.py --device cuda --audio-model untrained:wav2vec2-base   # GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emofuse.pipelines.extract import ExtractConfig, run_extract  # noqa: E402
from emofuse.pipelines.predict import export_run, load_model  # noqa: E402
from emofuse.pipelines.train import TrainConfig, run_train  # noqa: E402
from emofuse.store import FeatureStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--audio-model", default="opensmile:eGeMAPSv02")
    ap.add_argument("--text-model", default="packaged:all-MiniLM-L6-v2")
    ap.add_argument("--limit", type=int, default=None, help="only the first N demo utterances by id (default: all 220, "
                                                             "5 sessions)")
    ap.add_argument("--repeats", type=int, default=1, help="seeds: members = 5 x repeats (default 1)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    args = ap.parse_args()
    from emofuse.cli import _quiet_libraries
    _quiet_libraries()
    work = args.work or tempfile.mkdtemp(prefix="emofuse-predict-bench-")
    store, run, model_dir = (os.path.join(work, n) for n in ("demo.h5", "run", "model"))
    stream = "egemaps" if args.audio_model.startswith("opensmile:") else "audio"
    run_extract(ExtractConfig(corpus="demo", out=store, audio_model=args.audio_model, text_model=args.text_model,
                              device=args.device, limit=args.limit))
    run_train(TrainConfig(store=store, out=run, fusion="late", granularity="F+T", audio_stream=stream, norm="global",
                          repeats=args.repeats, epochs=args.epochs, patience=args.epochs, device=args.device))
    if not os.path.exists(model_dir):
        export_run(run, model_dir)
    model = load_model(model_dir)
    preds = pd.read_csv(os.path.join(run, "predictions.csv"), dtype={"id": str, "fold": str})
    ids = sorted(set(preds["id"]))
    with FeatureStore(store) as fs:
        utts = fs.utterances.loc[ids]
    seconds = float(utts["duration"].sum())

    t0 = time.perf_counter()
    data = model.features(audio=list(utts["audio_path"]), text=list(utts["transcript"]), ids=ids, device=args.device)
    t1 = time.perf_counter()
    logits = model.member_logits(data, device=args.device)
    t2 = time.perf_counter()
    model.probabilities(logits)
    t3 = time.perf_counter()

    worst = 0.0
    cols = [f"logit_{c}" for c in model.classes]
    for k, m in enumerate(model.members):
        mine = preds[(preds["repeat"] == m.repeat) & (preds["fold"] == m.fold)].set_index("id")
        pos = [ids.index(i) for i in mine.index]
        worst = max(worst, float(np.abs(logits[k][pos] - mine[cols].to_numpy()).max()))

    enc, heads = t1 - t0, t3 - t1
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}")
    print(f"model: late F+T, {args.audio_model} + {args.text_model}, {len(model.members)} fold models")
    print(f"{len(ids)} utterances, {seconds:.1f} s of audio")
    print(f"encoders (load, preprocess, forward, layer selection): {enc:.2f} s = {1000 * enc / len(ids):.1f} ms/utterance, "
          f"{seconds / enc:.1f} audio-s/s")
    print(f"{len(model.members)} fold models + averaging: {heads:.3f} s = {1000 * heads / len(ids):.2f} ms/utterance; "
          f"{100 * heads / (enc + heads):.1f} % of predict's time (ratio heads/encoders {heads / enc:.3f})")
    print(f"largest |member logit - run's test logit| over {len(preds)} test predictions: {worst:.2e}")


if __name__ == "__main__":
    main()
