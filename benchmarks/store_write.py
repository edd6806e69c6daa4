#!/usr/bin/env python3
"""Store commit throughput against the disk's plain sequential write ceiling, side by side.

One extraction commit (``--seconds`` of audio, default 60: frames 50/s × 13 layers × 768, float16)
is written by ``StoreWriter.commit`` (a part file: HDF5, chunked per layer, checksums, seal, fsync,
rename) and, alternately, the same bytes by a plain ``write`` + ``fsync`` of one file: the ceiling
for one writer on this disk. Reports the best of ``--repeats`` of each, in MB/s, and their ratio.
With ``--baseline-rev REV`` the store code of that git revision is measured the same way in a
child process (e.g. the commit before a change to the writer).

    python benchmarks/store_write.py [--seconds 60] [--repeats 7] [--tmp DIR] [--baseline-rev REV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS, DIM, FPS, SECONDS = 13, 768, 50, 4.5


def measure(folder: str, seconds: float, repeats: int) -> dict:
    import numpy as np
    import pandas as pd

    from emofuse.store import StoreWriter
    n = max(1, int(seconds / SECONDS))
    frames = int(SECONDS * FPS)
    ids = [f"u{i:05d}" for i in range(n * (repeats + 1))]
    table = pd.DataFrame({"id": ids, "label": "neu", "session": "1", "speaker": "s", "gender": "F",
                          "transcript": "synthetic", "audio_path": [f"/synthetic/{i}.wav" for i in ids],
                          "start": np.nan, "end": np.nan, "duration": SECONDS, "audio_bytes": 1})
    rng = np.random.default_rng(0)
    block = rng.standard_normal((frames, LAYERS, DIM)).astype(np.float16)
    nbytes = n * block.nbytes
    store = os.path.join(folder, "w.h5")
    plain, commit = [], []
    with StoreWriter(store, table, {"kind": "synthetic"}) as w:
        w.add_stream("audio", {"fingerprint": "bench", "encoder_id": "synthetic"})
        for k in range(repeats + 1):
            unit = {i: {"data": block} for i in ids[k * n:(k + 1) * n]}
            t = time.perf_counter()
            w.commit("audio", {"frames": unit})
            commit.append(time.perf_counter() - t)
            raw = np.concatenate([block] * n).tobytes()
            t = time.perf_counter()
            fd = os.open(os.path.join(folder, f"plain{k}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            view = memoryview(raw)
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
            os.fsync(fd)
            os.close(fd)
            plain.append(time.perf_counter() - t)
            os.remove(os.path.join(folder, f"plain{k}.bin"))
    return {"bytes": nbytes, "commit_best_s": min(commit[1:]), "plain_best_s": min(plain[1:]),
            "commit_mb_s": nbytes / min(commit[1:]) / 1e6, "plain_mb_s": nbytes / min(plain[1:]) / 1e6,
            "ratio": min(plain[1:]) / min(commit[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.worker:
            print(json.dumps(measure(tmp, args.seconds, args.repeats)))
            return
        res = {"current": measure(tmp, args.seconds, args.repeats)}
    if args.baseline_rev:
        with tempfile.TemporaryDirectory(dir=args.tmp) as code:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "emofuse"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", code], input=archive, check=True)
            r = subprocess.run([sys.executable, __file__, "--worker", "--seconds", str(args.seconds), "--repeats",
                                str(args.repeats)] + (["--tmp", args.tmp] if args.tmp else []),
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": code}, cwd=code)
            if r.returncode:
                raise SystemExit(r.stderr)
            res[args.baseline_rev] = json.loads(r.stdout.strip().splitlines()[-1])
    for name, got in res.items():
        print(f"{name}: commit {got['commit_mb_s']:.0f} MB/s, plain write+fsync {got['plain_mb_s']:.0f} MB/s, "
              f"commit/ceiling {got['ratio']:.2f} ({got['bytes'] / 1e6:.0f} MB per commit)")
    out = ROOT / "benchmarks" / "results" / "store_write.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT)) if "--worker" not in sys.argv else None
    main()
