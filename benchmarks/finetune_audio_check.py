#!/usr/bin/env python3
"""finetune's audio check (each wav's bytes against the store's ``audio_digest``) vs what
fine-tuning does with the same files anyway: decode, resample and preprocess them.

A fake IEMOCAP of IEMOCAP-like lengths (4.5 s ± 30 %, 16 kHz), --utterances of them. Per pass:
``check_audio`` with an empty digest cache (every file hashed), again with the cache (a second
check in the same process: one ``stat`` per file), and loading every utterance as
``load_finetune_data`` does (``load_audio`` + the feature extractor). The fastest of --passes
passes of each is reported (the files are in the page cache: the disk's read time, where slower,
bounds both). Writes benchmarks/results/finetune-audio-check.json.

    python benchmarks/finetune_audio_check.py [--utterances 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from emofuse.corpora import load_corpus  # noqa: E402
from emofuse import hashing  # noqa: E402
from emofuse.corpora.table import utterance_table  # noqa: E402
from emofuse.extract.audio import load_audio  # noqa: E402
from emofuse.pipelines import finetune as ft  # noqa: E402
from emofuse.testing import make_fake_iemocap  # noqa: E402
from emofuse.testing.tiny_models import tiny_wav2vec2  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=200)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = tempfile.mkdtemp()
    per = max(1, args.utterances // 20)   # 5 sessions x 4 classes
    make_fake_iemocap(root + "/iemo", counts={s: {c: per for c in ("ang", "hap", "neu", "sad")} for s in range(1, 6)},
                      seconds=4.5, seed=0)
    utts = load_corpus("iemocap", root=root + "/iemo")
    table = utterance_table(utts).set_index("id", drop=False)
    nbytes = sum(os.path.getsize(p) for p in set(table["audio_path"]))
    cfg = ft.FinetuneConfig(store="s.h5", out="o", system="audio", device="cpu",
                            audio_model=tiny_wav2vec2(root + "/w2v", "layer"))
    enc = ft.Encoders(cfg)
    best: dict[str, float] = {}
    for _ in range(args.passes):
        hashing._file_sha256.clear()   # a cold check each pass
        t0 = time.perf_counter()
        ft.check_audio("s.h5", table)
        t1 = time.perf_counter()
        ft.check_audio("s.h5", table)
        t2 = time.perf_counter()
        for u in utts:
            enc.preprocess(load_audio(u, enc.sample_rate))
        t3 = time.perf_counter()
        for k, v in (("hash_s", t1 - t0), ("cached_s", t2 - t1), ("load_s", t3 - t2)):
            best[k] = min(best.get(k, float("inf")), v)
    res = {"utterances": len(table), "audio_mb": nbytes / 1e6, **best,
           "hash_mb_per_s": nbytes / best["hash_s"] / 1e6, "load_mb_per_s": nbytes / best["load_s"] / 1e6,
           "hash_over_load": best["hash_s"] / best["load_s"], "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count()}
    out = ROOT / "benchmarks" / "results" / "finetune-audio-check.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"{res['utterances']} utterances, {res['audio_mb']:.1f} MB: hashing {best['hash_s'] * 1e3:.0f} ms "
          f"({res['hash_mb_per_s']:.0f} MB/s), a second check in the process {best['cached_s'] * 1e3:.1f} ms, "
          f"loading the same audio {best['load_s'] * 1e3:.0f} ms: the check is {res['hash_over_load']:.2f}x loading")


if __name__ == "__main__":
    main()
