#!/usr/bin/env python3
"""The store writer beside a busy Python thread: one extraction unit staged alone, and while
another thread runs Python, at several interpreter switch intervals, side by side in one run.

On a GPU, extraction stages its parts in a writer thread while the main thread encodes. The
writer hands the GIL back at every call that gives it up (every chunk it writes, every utterance
it copies or hashes, every seek and write of the file), and getting it back from a thread that is
running Python waits for that thread's switch interval (5 ms by default). So the writer's speed
depends on how much of the time the encoding thread spends in Python (dispatching the model's
operators, building the unit), which this benchmark bounds: its busy thread runs Python all the
time. Reports the stage time of a 60-s unit (float16, 13 × 768) alone and contended, for each
``--switch-interval``, the contended ones alternated with alone ones so both see the same disk and
cache, and the busy thread's speed while a unit is staged beside it, over its speed alone (the
other half of the cost: the encoding thread slowed by the writer).

    python benchmarks/store_gil.py [--units 6] [--switch-interval 5 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emofuse.store import StoreWriter  # noqa: E402
from common import record, synthetic_table  # noqa: E402

SECONDS, FPS, LAYERS, DIM = 4.5, 50, 13, 768


def _busy(stop: threading.Event, done: list[float]) -> None:
    """Run Python until ``stop``; append the loops per second it ran, timed by itself."""
    x, t = 0, time.perf_counter()
    while not stop.is_set():
        x += 1
    done.append(x / (time.perf_counter() - t))


def busy_rate(seconds: float = 0.3) -> float:
    """Loops per second of the busy thread while the main thread only sleeps."""
    stop, done = threading.Event(), []
    busy = threading.Thread(target=_busy, args=(stop, done))
    busy.start()
    time.sleep(seconds)
    stop.set()
    busy.join()
    return done[0]


def stage_times(units: int, interval_s: float) -> dict:
    """Seconds to stage one 60-s unit, alone and beside a thread running Python (alternated,
    ``units`` of each), at switch interval ``interval_s``."""
    n, frames = int(60 / SECONDS), int(SECONDS * FPS)
    ids = [f"u{i:06d}" for i in range(2 * n * units)]
    table = synthetic_table(ids, SECONDS)
    block = np.random.default_rng(0).standard_normal((frames, LAYERS, DIM)).astype(np.float16)
    times: dict[str, list[float]] = {"alone": [], "contended": []}
    slowed: list[float] = []    # the busy thread's speed while a unit is staged, over its speed alone
    default = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        with tempfile.TemporaryDirectory() as tmp, StoreWriter(os.path.join(tmp, "w.h5"), table) as w:
            w.add_stream("audio", {"fingerprint": "bench", "encoder_id": "synthetic"})
            for k in range(2 * units):
                unit = {i: {"data": block.copy()} for i in ids[k * n:(k + 1) * n]}
                stop, done = threading.Event(), []
                busy = threading.Thread(target=_busy, args=(stop, done)) if k % 2 else None
                solo = busy_rate() if busy else 0.0
                t = time.perf_counter()
                if busy:
                    busy.start()
                staged = w.stage("audio", {"frames": unit})
                stop.set()
                times["contended" if busy else "alone"].append(time.perf_counter() - t)
                if busy:
                    busy.join()
                    slowed.append(done[0] / solo)
                w.publish(staged)
    finally:
        sys.setswitchinterval(default)
    mb = n * block.nbytes / 1e6
    alone, contended = float(np.median(times["alone"])), float(np.median(times["contended"]))
    return {"switch_interval_ms": interval_s * 1e3, "unit_mb": round(mb, 1), "alone_s": round(alone, 4),
            "contended_s": round(contended, 4), "contended_vs_alone": round(contended / alone, 1),
            "contended_mb_per_s": round(mb / contended, 1),
            "busy_thread_speed_while_staging": round(float(np.median(slowed)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=6, help="units staged alone, and as many contended, per interval")
    ap.add_argument("--switch-interval", type=float, nargs="+", default=[5.0, 0.5], metavar="MS")
    args = ap.parse_args()
    rows = []
    for ms in args.switch_interval:
        r = stage_times(args.units, ms / 1000)
        rows.append(r)
        print(f"switch interval {ms:g} ms: a 60-s unit ({r['unit_mb']} MB) staged in {r['alone_s'] * 1e3:.0f} ms "
              f"alone, {r['contended_s'] * 1e3:.0f} ms beside a busy Python thread ({r['contended_vs_alone']}x), "
              f"which ran at {r['busy_thread_speed_while_staging']:.2f} of its speed alone meanwhile",
              flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    res = {"benchmark": "store-gil", "machine": machine, "units": args.units, "rows": rows}
    row = (f"| store beside a busy thread | {time.strftime('%Y-%m-%d')} | {machine} | 60-s units, float16, 13 × 768 | "
           + "; ".join(f"switch {r['switch_interval_ms']:g} ms: stage {r['alone_s'] * 1e3:.0f} ms alone, "
                       f"{r['contended_s'] * 1e3:.0f} ms contended ({r['contended_vs_alone']}x), busy thread at "
                       f"{r['busy_thread_speed_while_staging']:.2f} of its speed" for r in rows)
           + " | — | — | — | — |")
    record("store-gil", res, row)


if __name__ == "__main__":
    main()
