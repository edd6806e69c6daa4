#!/usr/bin/env python3
"""Store commit throughput against the disk's plain sequential write ceiling, side by side.

One extraction commit (``--seconds`` of audio, default 60: frames 50/s × 13 layers × 768, float16)
is written by ``StoreWriter.commit`` (a part file: HDF5, chunked per layer, checksums, seal, fsync,
rename) and, alternately, the same bytes by a plain ``write`` + ``fsync`` of one file: the ceiling
for one writer on this disk. Reports the best of ``--repeats`` of each, in MB/s, and their ratio.

Then a stream of ``--stream`` commits in a row, as extraction issues them: one after the other
(``commit``), and through extraction's two-stage pipeline (``BackgroundCommits``: the next part is
staged while the previous one is fsynced), against the same number of plain write + fsync files;
total MB/s of each and their ratio to the plain files, and the same bytes written as one file with
one fsync (the disk's streaming rate); alternated ``--trials`` times, best of each.
With ``--baseline-rev REV`` the store code of that git revision is measured the same way in a
child process (e.g. the commit before a change to the writer; its pipeline, if it has none, is
its ``commit`` in one background thread).

    python benchmarks/store_write.py [--seconds 60] [--repeats 7] [--stream 8] [--trials 3]
                                     [--tmp DIR] [--baseline-rev REV | --baseline-tar F] [--name NAME]
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


def _unit(ids, block):
    return {i: {"data": block} for i in ids}


def _plain(folder: str, raw: bytes, name: str) -> float:
    t = time.perf_counter()
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(raw)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t


def _pipelined(w, units) -> float:
    """Commit ``units`` as extraction does on a GPU: through ``BackgroundCommits`` (two-stage when
    the writer has ``stage``/``publish``, else ``commit`` in one background thread)."""
    from emofuse.pipelines.extract.threads import BackgroundCommits
    from emofuse.pipelines.extract.summary import StreamSummary
    from common import two_stage
    bc = BackgroundCommits(StreamSummary("audio", "audio", "synthetic", False), background=True)
    staged = hasattr(w, "stage")   # the code before two-stage commits has commit() only
    t = time.perf_counter()
    for unit in units:
        if staged:
            bc.submit(two_stage(w, unit))
        else:
            bc.submit(lambda unit=unit: w.commit("audio", {"frames": unit}))
    bc.close()
    return time.perf_counter() - t


def measure(folder: str, seconds: float, repeats: int, stream: int, trials: int) -> dict:
    import numpy as np
    from common import synthetic_table

    from emofuse.store import StoreWriter
    n = max(1, int(seconds / SECONDS))
    frames = int(SECONDS * FPS)
    units_needed = repeats + 1 + 2 * stream * trials
    ids = [f"u{i:06d}" for i in range(n * units_needed)]
    table = synthetic_table(ids, SECONDS)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((frames, LAYERS, DIM)).astype(np.float16)
    nbytes = n * block.nbytes
    raw = np.concatenate([block] * n).tobytes()
    store = os.path.join(folder, "w.h5")
    plain, commit = [], []
    serial, piped, plains, streams = [], [], [], []
    with StoreWriter(store, table) as w:
        w.add_stream("audio", {"fingerprint": "bench", "encoder_id": "synthetic"})
        next_unit = iter(range(units_needed))

        def take():
            k = next(next_unit)
            return _unit(ids[k * n:(k + 1) * n], block)
        for k in range(repeats + 1):
            unit = take()
            t = time.perf_counter()
            w.commit("audio", {"frames": unit})
            commit.append(time.perf_counter() - t)
            plain.append(_plain(folder, raw, f"plain{k}.bin"))
            os.remove(os.path.join(folder, f"plain{k}.bin"))
        for _ in range(trials):
            units = [take() for _ in range(stream)]
            t = time.perf_counter()
            for unit in units:
                w.commit("audio", {"frames": unit})
            serial.append(time.perf_counter() - t)
            plains.append(sum(_plain(folder, raw, f"s{j}.bin") for j in range(stream)))
            for j in range(stream):
                os.remove(os.path.join(folder, f"s{j}.bin"))
            streams.append(_plain(folder, raw * stream, "one.bin"))   # the disk streaming: one file, one fsync
            os.remove(os.path.join(folder, "one.bin"))
            piped.append(_pipelined(w, [take() for _ in range(stream)]))
    total = stream * nbytes
    return {"bytes": nbytes, "commit_best_s": min(commit[1:]), "plain_best_s": min(plain[1:]),
            "commit_mb_s": nbytes / min(commit[1:]) / 1e6, "plain_mb_s": nbytes / min(plain[1:]) / 1e6,
            "ratio": min(plain[1:]) / min(commit[1:]),
            "stream": {"commits": stream, "bytes": total, "serial_mb_s": total / min(serial) / 1e6,
                       "pipelined_mb_s": total / min(piped) / 1e6, "plain_mb_s": total / min(plains) / 1e6,
                       "one_file_mb_s": total / min(streams) / 1e6, "pipelined_over_one_file": min(streams) / min(piped),
                       "serial_ratio": min(plains) / min(serial), "pipelined_ratio": min(plains) / min(piped),
                       "two_stage": "stage" in dir(StoreWriter)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--stream", type=int, default=8, help="commits in a row for the throughput comparison")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--baseline-tar", default=None,
                    help="the baseline's emofuse/ as a tar file (`git archive REV emofuse > F`), where git is not at hand")
    ap.add_argument("--name", default="store_write", help="results file NAME.json in benchmarks/results/")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.worker:
            print(json.dumps(measure(tmp, args.seconds, args.repeats, args.stream, args.trials)))
            return
        res = {"current": measure(tmp, args.seconds, args.repeats, args.stream, args.trials)}
    if args.baseline_rev or args.baseline_tar:
        with tempfile.TemporaryDirectory(dir=args.tmp) as code:
            archive = (Path(args.baseline_tar).read_bytes() if args.baseline_tar else
                       subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "emofuse"],
                                      capture_output=True, check=True).stdout)
            subprocess.run(["tar", "-x", "-C", code], input=archive, check=True)
            r = subprocess.run([sys.executable, __file__, "--worker", "--seconds", str(args.seconds), "--repeats",
                                str(args.repeats), "--stream", str(args.stream), "--trials", str(args.trials)] + (["--tmp", args.tmp] if args.tmp else []),
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   [code] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))},
                               cwd=code)   # the baseline first; packages installed beside it stay reachable
            if r.returncode:
                raise SystemExit(r.stderr)
            res[args.baseline_rev or Path(args.baseline_tar).stem] = json.loads(r.stdout.strip().splitlines()[-1])
    for name, got in res.items():
        print(f"{name}: commit {got['commit_mb_s']:.0f} MB/s, plain write+fsync {got['plain_mb_s']:.0f} MB/s, "
              f"commit/ceiling {got['ratio']:.2f} ({got['bytes'] / 1e6:.0f} MB per commit)")
        st = got.get("stream")
        if st:
            print(f"{name}: {st['commits']} commits in a row: one after the other {st['serial_mb_s']:.0f} MB/s "
                  f"({st['serial_ratio']:.2f} of plain), pipelined {st['pipelined_mb_s']:.0f} MB/s "
                  f"({st['pipelined_ratio']:.2f} of plain), plain write+fsync {st['plain_mb_s']:.0f} MB/s; "
                  f"the same bytes as one file, one fsync {st.get('one_file_mb_s', float('nan')):.0f} MB/s "
                  f"(pipelined {st.get('pipelined_over_one_file', float('nan')):.2f} of it)")
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT)) if "--worker" not in sys.argv else None
    main()
