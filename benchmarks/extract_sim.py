#!/usr/bin/env python3
"""GPU extraction's store side, simulated on a CPU: the real store writer and the real background
commits (``BackgroundCommits`` at extraction's switch interval), with the encoder replaced by a
main thread that, for each 120-s batch, runs Python for a share of the batch's time (a GPU
extraction's main thread dispatching the model's operators) and sleeps the rest with the GIL free
(the GPU computing), then hands over float16 frames (13 × 768, 50 per second, 3.5-s utterances).

Measures, for the same audio: the whole loop, the encoding alone (no commits), the commits alone
(pipelined, nothing encoding), and the disk's plain write + fsync of the same bytes. What it shows
is how much the writer and the encoding thread slow each other, which no GPU is needed to see
(on a host with cores to spare: on 2 cores they also share the cores); the H100's own figure
comes from ``extract_breakdown.py``. ``--switch-interval MS`` sets the background threads' switch
interval in place of extraction's 0.5 ms. ``--baseline-rev REV`` runs the same
measurement with the store and extraction code of each REV (``--baseline-tar``: of each
``git archive`` tar, where git is not at hand), alternated, best of ``--trials``.

    python benchmarks/extract_sim.py [--seconds 1800] [--encode-rate 2000] [--python-share 0.5]
                                     [--trials 3] [--baseline-rev REV ... | --baseline-tar TAR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FPS, LAYERS, DIM, UTT_S, BATCH_S = 50, 13, 768, 3.5, 120.0


def _python_for(seconds: float) -> None:
    """Run Python (holding the GIL between bytecodes) for ``seconds``."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def _disk(folder: str, nbytes: int) -> float:
    """Seconds to write ``nbytes`` to one file in 64 MiB pieces and fsync it."""
    buf = np.ones(64 << 20, np.uint8)
    path = os.path.join(folder, "plain.bin")
    os.sync()
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // buf.nbytes)):
            f.write(buf.data)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    os.remove(path)
    return dt


def worker(seconds: float, encode_rate: float, share: float, folder: str, switch_ms: float | None) -> dict:
    """The four timings with the code importable from the current directory (this tree or a
    baseline's), in seconds."""
    sys.path.insert(0, os.getcwd())
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    from emofuse.pipelines.extract.summary import StreamSummary
    from emofuse.pipelines.extract import threads
    from emofuse.pipelines.extract.threads import BackgroundCommits, short_switch_interval
    if switch_ms is not None:
        threads.SWITCH_INTERVAL_S = switch_ms / 1000
    from emofuse.store import StoreWriter, remove_store
    from common import synthetic_table, two_stage

    per_batch = int(BATCH_S / UTT_S)
    batches = max(1, round(seconds / BATCH_S))
    ids = [f"u{i:06d}" for i in range(batches * per_batch)]
    block = np.random.default_rng(0).standard_normal((int(UTT_S * FPS), LAYERS, DIM)).astype(np.float16)
    batch_time = BATCH_S / encode_rate

    def run(encode: bool, commit: bool) -> float:
        os.sync()   # each measurement starts with nothing of the last one left to write back
        path = os.path.join(folder, "sim.h5")
        with StoreWriter(path, synthetic_table(ids, UTT_S)) as w:
            w.add_stream("audio", {"fingerprint": "sim", "encoder_id": "synthetic"})
            commits = BackgroundCommits(StreamSummary("audio", "audio", "sim", False), background=True)
            t = time.perf_counter()
            with short_switch_interval(True):
                try:
                    for b in range(batches):
                        if encode:
                            _python_for(batch_time * share)
                            time.sleep(batch_time * (1 - share))
                        entries = {i: {"data": block} for i in ids[b * per_batch:(b + 1) * per_batch]}
                        if commit:
                            commits.submit(two_stage(w, entries))
                finally:
                    commits.close()
            dt = time.perf_counter() - t
        remove_store(path)
        return dt

    nbytes = len(ids) * block.nbytes
    return {"audio_s": len(ids) * UTT_S, "bytes": nbytes, "disk_s": _disk(folder, nbytes), "whole_s": run(True, True),
            "encode_s": run(True, False), "commits_s": run(False, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1800.0, help="audio seconds per measurement")
    ap.add_argument("--encode-rate", type=float, default=2000.0,
                    help="audio-s/s of the simulated encoder alone (the H100's wav2vec2-base ran 1,980 in float32)")
    ap.add_argument("--python-share", type=float, default=0.5,
                    help="share of each batch's encoding time the main thread runs Python (dispatch)")
    ap.add_argument("--switch-interval", type=float, default=None, metavar="MS",
                    help="the background threads' switch interval (default: extraction's own, 0.5 ms)")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--baseline-rev", nargs="+", default=[], metavar="REV",
                    help="also measure the code of these git revisions, alternated with this tree's")
    ap.add_argument("--baseline-tar", nargs="+", default=[], metavar="TAR",
                    help="also measure these trees' emofuse/ (`git archive REV emofuse > emofuse-REV.tar`), where "
                         "git is not at hand (a GPU machine)")
    ap.add_argument("--tmp", default=None, help="folder to write in (default: the system's temporary folder)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.seconds, args.encode_rate, args.python_share, args.tmp, args.switch_interval)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import record

    trees = {"current": str(ROOT)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        archives = {rev: lambda rev=rev: subprocess.run(["git", "-C", str(ROOT), "archive", rev, "emofuse"],
                                                        capture_output=True, check=True).stdout
                    for rev in args.baseline_rev}
        archives.update({Path(t).stem.removeprefix("emofuse-"): lambda t=t: Path(t).read_bytes()
                         for t in args.baseline_tar})
        for name, archive in archives.items():
            code = os.path.join(tmp, f"tree-{name}")
            os.makedirs(code)
            subprocess.run(["tar", "-x", "-C", code], input=archive(), check=True)
            trees = {name: code, **trees}
        best: dict[str, dict] = {}
        for trial in range(args.trials):
            for name, code in trees.items():
                folder = os.path.join(tmp, f"w-{name}")
                os.makedirs(folder, exist_ok=True)
                r = subprocess.run([sys.executable, __file__, "--worker", "--seconds", str(args.seconds),
                                    "--encode-rate", str(args.encode_rate), "--python-share", str(args.python_share),
                                    "--tmp", folder]
                                   + (["--switch-interval", str(args.switch_interval)] if args.switch_interval else []),
                                   capture_output=True, text=True, cwd=code)
                if r.returncode:
                    sys.exit(f"the {name} worker failed:\n{r.stderr}")
                got = json.loads(r.stdout.strip().splitlines()[-1])
                keep = best.setdefault(name, got)
                for k in ("whole_s", "encode_s", "commits_s", "disk_s"):
                    keep[k] = min(keep[k], got[k])
                print(f"trial {trial + 1} {name}: whole {got['audio_s'] / got['whole_s']:.0f} audio-s/s", flush=True)
    rows = {}
    for name, b in best.items():
        rate = {k[:-2]: b["audio_s"] / b[k] for k in ("whole_s", "encode_s", "commits_s", "disk_s")}
        rows[name] = {**{f"{k}_audio_s_per_s": round(v, 1) for k, v in rate.items()},
                      "whole_vs_disk": round(rate["whole"] / rate["disk"], 3),
                      "whole_vs_slower_alone": round(rate["whole"] / min(rate["encode"], rate["commits"]), 3)}
        print(f"{name}: whole {rate['whole']:.0f} audio-s/s = {rows[name]['whole_vs_disk']:.2f} of the disk's "
              f"{rate['disk']:.0f} (plain write + fsync); encoding alone {rate['encode']:.0f}, commits alone "
              f"{rate['commits']:.0f}; whole / the slower of the two alone {rows[name]['whole_vs_slower_alone']:.2f}")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    res = {"benchmark": "extract-sim", "machine": machine, "seconds": args.seconds, "encode_rate": args.encode_rate,
           "python_share": args.python_share, "switch_interval_ms": args.switch_interval, "trials": args.trials,
           "rows": rows}
    row = (f"| extract, simulated GPU encoder | {time.strftime('%Y-%m-%d')} | {machine} | {args.seconds:g} audio-s, "
           f"encoder {args.encode_rate:g} audio-s/s, {args.python_share:g} of it Python, switch interval "
           f"{args.switch_interval or 0.5:g} ms | "
           + "; ".join(f"{n}: whole {r['whole_audio_s_per_s']:.0f} audio-s/s, commits alone "
                       f"{r['commits_audio_s_per_s']:.0f}, encoding alone {r['encode_audio_s_per_s']:.0f}"
                       for n, r in rows.items())
           + " | " + "; ".join(f"{n}: {r['whole_vs_disk']:.2f} of the disk's plain write + fsync "
                               f"({r['disk_audio_s_per_s']:.0f} audio-s/s)" for n, r in rows.items())
           + " | — | — | — |")
    record("extract-sim", res, row)


if __name__ == "__main__":
    main()
