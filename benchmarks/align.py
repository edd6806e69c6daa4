#!/usr/bin/env python3
"""Alignment benchmark: pooling phone + syllable + word segments vs only reading the same frames.

A synthetic IEMOCAP-shaped stream (13 layers × 768, float16; utterance lengths lognormal around
4.5 s, 1–20 s, 50 frames/s; ~12 phones, ~4.5 syllables, ~3 words per second), scaled to
--utterances. Both paths read the frames with the same bulk reads (units of 200 utterances, as
align-segments does); one also maps segments to frames and pools them. Repeated alternately; the
median of each is reported. Writes benchmarks/results/align.json and a row in BENCHMARKS.md.

    python benchmarks/align.py [--utterances 300]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emofuse.align.frames import segment_frames  # noqa: E402
from emofuse.align.pooling import pool_many  # noqa: E402
from emofuse.pipelines.align import prefetched  # noqa: E402
from emofuse.store import FeatureStore, StoreWriter  # noqa: E402
from common import record  # noqa: E402

RATES = {"phone": 12.0, "syllable": 4.5, "word": 3.0}


def build(path: Path, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"u{i:05d}" for i in range(n)]
    secs = np.clip(rng.lognormal(np.log(4.5), 0.6, n), 1.0, 20.0)
    table = pd.DataFrame({"id": ids, "label": "neu", "session": "1", "speaker": "s", "gender": "F", "transcript": "x",
                          "audio_path": [f"/x/{i}.wav" for i in ids], "start": np.nan, "end": np.nan,
                          "duration": secs, "audio_bytes": 1})
    segs = {}
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "bench", "frame_hop_s": 0.02, "frame_window_s": 0.025})
        for k in range(0, n, 50):
            chunk = {}
            for i, s in zip(ids[k:k + 50], secs[k:k + 50]):
                T = int((s * 16000 - 400) // 320) + 1
                chunk[i] = {"data": rng.standard_normal((T, 13, 768)).astype(np.float16)}
                segs[i] = {g: np.sort(rng.uniform(0, s, max(1, int(r * s)) + 1)) for g, r in RATES.items()}
            w.commit("audio", {"frames": chunk})
        w.finalize()
    return segs


def read_only(fs: FeatureStore, ids) -> int:
    rows = 0
    for k in range(0, len(ids), 200):
        r = fs.load("audio", "frames", ids=ids[k:k + 200])
        rows += len(r.data)
    return rows


def read_and_pool(fs: FeatureStore, ids, segs) -> int:
    n = 0
    units = [ids[k:k + 200] for k in range(0, len(ids), 200)]
    for unit, r in zip(units, prefetched(fs, units)):
        for j, uid in enumerate(unit):
            frames = r[j]
            spans = [segment_frames(e[:-1], e[1:], len(frames), 0.02, 0.025)[0] for e in segs[uid].values()]
            n += sum(len(p) for p in pool_many(frames, spans))  # as align-segments does: one pass per utterance
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        segs = build(path, args.utterances)
        size = os.path.getsize(path)
        t_read, t_pool = [], []
        with FeatureStore(path) as fs:
            ids = fs.ids("audio")
            read_only(fs, ids)  # warm the page cache once: both paths then read the same way
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                rows = read_only(fs, ids)
                t_read.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                n_segs = read_and_pool(fs, ids, segs)
                t_pool.append(time.perf_counter() - t0)
    read, pool = float(np.median(t_read)), float(np.median(t_pool))
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "utterances": args.utterances, "frames": rows, "segments": n_segs, "store_gb": round(size / 1e9, 2),
           "read_s": round(read, 3), "read_and_pool_s": round(pool, 3), "pooling_overhead": round(pool / read - 1, 3),
           "read_gb_per_s": round(size / 1e9 / read, 2)}
    row = (f"| align | {res['date']} | {res['machine']} | {args.utterances} utts, {res['store_gb']} GB, {n_segs:,} segments | "
           f"read {read:.2f} s, read + pool 3 granularities {pool:.2f} s | read {res['read_gb_per_s']} GB/s (page cache) | "
           f"pooling adds {100 * res['pooling_overhead']:.0f} % | exact vs slow reference (tests) | streaming, 200 utts at a time |")
    record("align", res, row)


if __name__ == "__main__":
    main()
