#!/usr/bin/env python3
"""What verifying a store on read costs: ``FeatureStore.load`` of the same store with its checks
(each part file's seal, per utterance and layer the XXH3-64 checksum, and the NaN/Inf test) and without them, side by side,
alternating, in one process.

The store is synthetic and IEMOCAP-shaped (13 layers × 768, float16 by default, ~4.5 s
utterances at 50 frames/s, one commit per minute of audio as extraction writes it). Reads are
from a warm page cache (the case where checks cost most: nothing hides them). Reports the
best (least disturbed) and median wall time of each read, the best CPU time of the process (on a
shared machine the steadier figure: other processes' load stretches wall time, not CPU time), and the ratios checked / unchecked for all
layers, one layer and four adjacent layers; writes benchmarks/results/store_checks.json.

    python benchmarks/store_checks.py [--gb 0.5] [--repeats 5] [--dtype float16] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS, DIM, FPS, SECONDS = 13, 768, 50, 4.5


def build(path: str, gb: float, dtype: str) -> int:
    import numpy as np
    from common import synthetic_table

    from emofuse.store import StoreWriter
    frames = int(SECONDS * FPS)
    n = int(gb * 1e9 // (frames * LAYERS * DIM * np.dtype(dtype).itemsize)) + 1
    ids = [f"Ses{1 + i % 5:02d}_u{i:06d}" for i in range(n)]
    table = synthetic_table(ids, SECONDS)
    rng = np.random.default_rng(0)
    per = max(1, int(60 / SECONDS))
    with StoreWriter(path, table, {"kind": "synthetic"}) as w:
        w.add_stream("audio", {"fingerprint": "bench", "encoder_id": "synthetic"})
        for k in range(0, n, per):
            w.commit("audio", {"frames": {i: {"data": rng.standard_normal((frames, LAYERS, DIM)).astype(dtype)}
                                          for i in ids[k:k + per]}})
        w.finalize()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=0.5, help="store size in GB (default 0.5)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--tmp", default=None, help="folder for the store (default: the system's temp folder)")
    args = ap.parse_args()
    from emofuse.store import FeatureStore
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "gb": args.gb, "dtype": args.dtype,
                 "reads": {}}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "bench.h5")
        res["utterances"] = build(path, args.gb, args.dtype)
        for what, layers in (("all layers", None), ("one layer", [6]), ("four layers", [3, 4, 5, 6])):
            times: dict[str, list[float]] = {"checked": [], "unchecked": []}
            cpu: dict[str, list[float]] = {"checked": [], "unchecked": []}
            for _ in range(args.repeats + 1):  # the first round warms the page cache, not counted
                for mode in ("checked", "unchecked"):
                    with FeatureStore(path, verify=mode == "checked") as fs:
                        t, c = time.perf_counter(), time.process_time()
                        r = fs.load("audio", layers=layers)
                        times[mode].append(time.perf_counter() - t)
                        cpu[mode].append(time.process_time() - c)
                        nbytes = r.data.nbytes
            got = {m: statistics.median(v[1:]) for m, v in times.items()}
            best = {m: min(v[1:]) for m, v in times.items()}
            cbest = {m: min(v[1:]) for m, v in cpu.items()}
            res["reads"][what] = {"bytes": nbytes, "checked_s": got["checked"], "unchecked_s": got["unchecked"],
                                  "ratio_median": got["checked"] / got["unchecked"],
                                  "checked_best_s": best["checked"], "unchecked_best_s": best["unchecked"],
                                  "ratio_best": best["checked"] / best["unchecked"],
                                  "cpu_checked_best_s": cbest["checked"], "cpu_unchecked_best_s": cbest["unchecked"],
                                  "cpu_ratio_best": cbest["checked"] / cbest["unchecked"],
                                  "unchecked_gb_s": nbytes / best["unchecked"] / 1e9}
            print(f"{what}: {nbytes / 1e9:.2f} GB, best of {args.repeats}: checked {best['checked']:.3f} s, unchecked "
                  f"{best['unchecked']:.3f} s ({nbytes / best['unchecked'] / 1e9:.2f} GB/s), checked/unchecked "
                  f"{best['checked'] / best['unchecked']:.3f} (medians: {got['checked'] / got['unchecked']:.3f}); "
                  f"CPU time of this process, best: checked {cbest['checked']:.3f} s, unchecked {cbest['unchecked']:.3f} s, "
                  f"ratio {cbest['checked'] / cbest['unchecked']:.3f}",
                  flush=True)
    out = ROOT / "benchmarks" / "results" / "store_checks.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
