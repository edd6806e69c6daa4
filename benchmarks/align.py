#!/usr/bin/env python3
"""Alignment benchmark: pooling phone + syllable + word segments vs only reading the same frames.

A synthetic IEMOCAP-shaped stream (13 layers × 768, float16; utterance lengths lognormal around
4.5 s, 1–20 s, 50 frames/s; ~12 phones, ~4.5 syllables, ~3 words per second), scaled to
--utterances. Both paths read the frames exactly as align-segments does (``frames_in_order``: 64 MB
bulk reads, the next one in a background thread); one also maps segments to frames and pools them
into the store's dtype with align-segments' thread setting. Repeated alternately; the median of
each is reported, twice: with the store in the page cache, and evicted from it before each
pass (``posix_fadvise``), as for a store larger than RAM (IEMOCAP with wav2vec2-base is ~25 GB).
Writes benchmarks/results/align.json and a row in BENCHMARKS.md.

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
from emofuse.pipelines.align import frames_in_order, pooling_threads  # noqa: E402
from emofuse.store import FeatureStore, StoreWriter, store_bytes  # noqa: E402
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


def evict(path: Path) -> None:
    """Drop the store (its index and part files) from the page cache (no root needed), so the
    next read comes from the disk."""
    folder = Path(str(path) + ".d")
    for p in [Path(path)] + (sorted(folder.iterdir()) if folder.is_dir() else []):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_only(fs: FeatureStore, ids) -> int:
    return sum(len(frames) for _, frames in frames_in_order(fs, "audio", ids))


def read_and_pool(fs: FeatureStore, ids, segs) -> int:
    n = 0
    with pooling_threads():
        for uid, frames in frames_in_order(fs, "audio", ids):
            spans = [segment_frames(e[:-1], e[1:], len(frames), 0.02, 0.025)[0] for e in segs[uid].values()]
            # as align-segments does: all granularities in one pass, rounded to the store's dtype
            n += sum(len(p) for p in pool_many(frames, spans, dtype=frames.dtype))
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        segs = build(path, args.utterances)
        size = store_bytes(str(path))
        counts: dict[str, int] = {}
        times: dict[str, list[float]] = {"warm_read": [], "warm_pool": [], "cold_read": [], "cold_pool": []}
        with FeatureStore(path) as fs:
            ids = fs.ids("audio")
            for _ in range(args.repeats):
                for cache in ("warm", "cold"):
                    for name, fn in (("read", lambda: read_only(fs, ids)), ("pool", lambda: read_and_pool(fs, ids, segs))):
                        if cache == "cold":
                            evict(path)
                        else:
                            read_only(fs, ids)  # in the page cache, as after extraction on a machine with RAM to spare
                        t0 = time.perf_counter()
                        counts[name] = fn()
                        times[f"{cache}_{name}"].append(time.perf_counter() - t0)
    rows, n_segs = counts["read"], counts["pool"]
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "utterances": args.utterances, "frames": rows, "segments": n_segs, "store_gb": round(size / 1e9, 2),
           **{f"{k}_s": round(v, 3) for k, v in med.items()},
           "pooling_overhead_warm": round(med["warm_pool"] / med["warm_read"] - 1, 3),
           "pooling_overhead_cold": round(med["cold_pool"] / med["cold_read"] - 1, 3),
           "warm_read_gb_per_s": round(size / 1e9 / med["warm_read"], 2),
           "cold_read_gb_per_s": round(size / 1e9 / med["cold_read"], 2)}
    row = (f"| align | {res['date']} | {res['machine']} | {args.utterances} utts, {res['store_gb']} GB, {n_segs:,} segments | "
           f"page cache: read {med['warm_read']:.2f} s, read + pool {med['warm_pool']:.2f} s; disk: read "
           f"{med['cold_read']:.2f} s, read + pool {med['cold_pool']:.2f} s | read {res['warm_read_gb_per_s']} GB/s cached, "
           f"{res['cold_read_gb_per_s']} GB/s disk | pooling adds {100 * res['pooling_overhead_warm']:.0f} % (cached), "
           f"{100 * res['pooling_overhead_cold']:.0f} % (disk) | exact vs slow reference (tests) | streaming, 64 MB reads |")
    record("align", res, row)


if __name__ == "__main__":
    main()
