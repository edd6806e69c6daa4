#!/usr/bin/env python3
"""Store benchmark: what a stage costs on a big store, schema v1 (copy-per-stage) vs v2 (index +
immutable parts), side by side in one run.

For each store size (default 1 and 4 GB) and each schema, a synthetic store is built with that
schema's own code (IEMOCAP-shaped frames: 13 layers × 768, float16, ~4.5 s utterances at
50 frames/s, one commit per minute of audio as extraction does: ``build`` is extraction's store
writes alone), then, each in a fresh process whose /proc/self/io is read before and after:

* ``stream``: add a stream holding 24 bytes (as adding eGeMAPS or a second encoder starts);
* ``segments``: align-segments' store work: read every utterance's frames (``frames_in_order``),
  pool ~3 word segments per second into the store's dtype, commit 200 utterances at a time,
  publish (the alignment files themselves are not read: they cost the same in v1 and v2);
* ``load``: ``FeatureStore.load`` of every utterance's frames, all layers and one layer, warm
  page cache, median of 3 (training's bulk read).

The v1 code is the repository's own history: ``git archive`` of the last commit before schema v2
(or ``--v1-rev``) into a temporary folder, run with that folder first on PYTHONPATH. Writes
benchmarks/results/store.json and a row in BENCHMARKS.md.

    python benchmarks/store.py [--sizes 1,4] [--tmp DIR] [--v1-rev REV]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS, DIM, FPS, SECONDS = 13, 768, 50, 4.5


# ---------------------------------------------------------------------------- worker side
def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def _size(path: str) -> int:
    total = os.path.getsize(path)
    folder = path + ".d"
    if os.path.isdir(folder):
        total += sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    return total


def _table(n: int):
    import numpy as np
    import pandas as pd
    ids = [f"Ses{1 + i % 5:02d}_u{i:06d}" for i in range(n)]
    return pd.DataFrame({"id": ids, "label": [("ang", "hap", "neu", "sad")[i % 4] for i in range(n)],
                         "session": [str(1 + i % 5) for i in range(n)], "speaker": "s", "gender": "F",
                         "transcript": "synthetic", "audio_path": [f"/synthetic/{i}.wav" for i in ids],
                         "start": np.nan, "end": np.nan, "duration": SECONDS, "audio_bytes": 1})


def worker(stage: str, path: str, arg: float) -> dict:
    import numpy as np

    from emofuse.store import FeatureStore, StoreWriter
    rng = np.random.default_rng(0)
    t0, io0 = time.perf_counter(), _io()
    out: dict = {}
    if stage == "build":
        frames = int(SECONDS * FPS)
        n = int(arg * 1e9 // (frames * LAYERS * DIM * 2)) + 1
        table = _table(n)
        block = rng.standard_normal((frames, LAYERS, DIM)).astype(np.float16)
        with StoreWriter(path, table, {"kind": "synthetic"}) as w:
            w.add_stream("audio", {"fingerprint": "bench", "encoder_id": "synthetic", "frame_hop_s": 0.02,
                                   "frame_window_s": 0.025})
            per = max(1, int(60 / SECONDS))  # one commit per minute of audio, as extraction does
            ids = list(table["id"])
            for k in range(0, n, per):
                w.commit("audio", {"frames": {i: {"data": block} for i in ids[k:k + per]}})
            w.finalize()
        out["utterances"] = n
    elif stage == "stream":
        with StoreWriter(path) as w:
            uid = sorted(w.table["id"])[0]
            w.add_stream("tiny", {"fingerprint": "tiny"})
            w.commit("tiny", {"frames": {uid: {"data": np.ones((3, 1, 4), np.float16)}}})  # 24 bytes
            w.finalize()
    elif stage == "segments":
        from emofuse.align.pooling import pool_many
        from emofuse.pipelines.align import frames_in_order
        with FeatureStore(path) as fs:
            ids = fs.ids("audio")
            with StoreWriter(path) as w:
                w.add_stream("audio", w.stream_infos["audio"])
                unit: dict = {}
                for uid, fr in frames_in_order(fs, "audio", ids):
                    cuts = np.unique(np.concatenate([[0, len(fr)], rng.integers(1, len(fr), int(3 * SECONDS))]))
                    spans = np.stack([cuts[:-1], cuts[1:]], 1)
                    unit[uid] = {"data": pool_many(fr, [spans], dtype=fr.dtype)[0],
                                 "symbols": np.array(["w"] * len(spans), dtype=object), "spans": spans.astype(np.int32)}
                    if len(unit) == 200:
                        w.commit("audio", {"segments/word": unit})
                        unit = {}
                if unit:
                    w.commit("audio", {"segments/word": unit})
                w.finalize()
    elif stage == "load":
        times = {"all": [], "layer": []}
        with FeatureStore(path) as fs:
            ids = fs.ids("audio")
            for _ in range(3):
                for what, layers in (("all", None), ("layer", [6])):
                    t = time.perf_counter()
                    r = fs.load("audio", "frames", ids=ids, layers=layers)
                    times[what].append(time.perf_counter() - t)
                    out[f"bytes_{what}"] = int(r.data.nbytes)
        out.update({f"load_{k}_s": statistics.median(v) for k, v in times.items()})
    io1 = time.perf_counter(), _io()
    out.update(wall_s=io1[0] - t0, wchar=io1[1]["wchar"] - io0["wchar"],
               write_bytes=io1[1]["write_bytes"] - io0["write_bytes"], store_bytes=_size(path))
    return out


# ---------------------------------------------------------------------------- driver side
def v1_tree(rev: str | None, dest: Path) -> tuple[Path, str]:
    """The schema v1 code from git history, unpacked into ``dest``."""
    if rev is None:
        log = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "-S", "SCHEMA_VERSION = 1", "--",
                              "emofuse/store/schema.py"], capture_output=True, text=True, check=True).stdout.split()
        rev = f"{log[0]}^"  # the newest commit that changed it is the one that left v1
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True, check=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "emofuse"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest, sha


def run_stage(code: Path, stage: str, path: Path, arg: float = 0.0) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    r = subprocess.run([sys.executable, __file__, "--worker", stage, str(path), str(arg)], capture_output=True,
                       text=True, env=env, cwd=str(code))
    if r.returncode != 0:
        raise SystemExit(f"{stage} on {path} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4", help="store sizes in GB (default 1,4)")
    ap.add_argument("--tmp", default=None, help="folder for the stores (default: the system's temp folder)")
    ap.add_argument("--v1-rev", default=None, help="git revision holding the v1 store code (default: found)")
    ap.add_argument("--worker", nargs=3, metavar=("STAGE", "STORE", "ARG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], float(args.worker[2]))))
        return
    from common import record
    sizes = [float(s) for s in args.sizes.split(",")]
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "sizes_gb": sizes, "runs": {}}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        v1, sha = v1_tree(args.v1_rev, Path(tmp) / "v1-code")
        res["v1_rev"] = sha
        codes = {"v1": v1, "v2": ROOT}
        for size in sizes:
            for schema, code in codes.items():
                path = Path(tmp) / f"{schema}-{size:g}GB.h5"
                got = {"build": run_stage(code, "build", path, size)}
                for stage in ("stream", "segments", "load"):
                    got[stage] = run_stage(code, stage, path)
                before = got["build"]["store_bytes"]
                got["stream"]["added"] = got["stream"]["store_bytes"] - before
                got["segments"]["added"] = got["segments"]["store_bytes"] - got["stream"]["store_bytes"]
                res["runs"][f"{schema}-{size:g}GB"] = got
                print(f"{schema} {size:g} GB: " + json.dumps({k: {kk: vv for kk, vv in v.items()
                                                                    if kk in ("wall_s", "wchar", "added")}
                                                               for k, v in got.items()}), flush=True)
                for p in [path, Path(str(path) + ".lock")]:
                    if p.exists():
                        p.unlink()
                subprocess.run(["rm", "-rf", str(path) + ".d", str(path) + ".parts"], check=True)
    rows = []
    for size in sizes:
        a, b = res["runs"][f"v1-{size:g}GB"], res["runs"][f"v2-{size:g}GB"]
        store_gb = b["build"]["store_bytes"] / 1e9
        rows.append(f"build {store_gb:.2f} GB in 1-minute commits (extraction's writes): written v1 "
                    f"{a['build']['wchar'] / 1e9:.2f} GB / v2 {b['build']['wchar'] / 1e9:.2f} GB, wall v1 "
                    f"{a['build']['wall_s']:.1f} s / v2 {b['build']['wall_s']:.1f} s")
        for stage in ("stream", "segments"):
            rows.append(f"{stage} on {store_gb:.2f} GB: written v1 {a[stage]['wchar'] / 1e6:,.1f} MB / v2 "
                        f"{b[stage]['wchar'] / 1e6:,.1f} MB (added {b[stage]['added'] / 1e6:,.2f} MB), wall v1 "
                        f"{a[stage]['wall_s']:.1f} s / v2 {b[stage]['wall_s']:.1f} s")
        rows.append(f"load on {store_gb:.2f} GB, v2/v1 time: all layers {b['load']['load_all_s'] / a['load']['load_all_s']:.2f}, "
                    f"one layer {b['load']['load_layer_s'] / a['load']['load_layer_s']:.2f}")
    res["summary"] = rows
    print("\n".join(rows))
    record("store", res, f"| store v1 vs v2 | {time.strftime('%Y-%m-%d')} | {res['machine']} | "
                         f"{', '.join(f'{s:g} GB' for s in sizes)} | " + "; ".join(rows) + " | | | | |")


if __name__ == "__main__":
    main()
