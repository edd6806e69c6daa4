"""Child process for the crash tests: commits deterministic units, then finalizes.

Usage: python store_child.py STORE N_UNITS [SLEEP_S] [KILL_AT]. Prints 'COMMIT i' before each commit
and 'FINALIZE' before the index swap, so the parent can kill it at a chosen moment. KILL_AT makes
the child SIGKILL itself at an exact commit point: ``part-renamed:K`` (right after the K-th part
file's rename), ``part-unrenamed:K`` (its .tmp written and fsynced, not renamed),
``index-unswapped:K`` (the K-th index written and fsynced, not renamed) or ``index-swapped:K``
(right after its rename, before the folder's fsync). The first index is the empty store's.
"""

import os
import signal
import sys
import time

import numpy as np
import pandas as pd

from emofuse.store import StoreWriter

N_UTTS = 40


def table():
    ids = [f"u{i:03d}" for i in range(N_UTTS)]
    return pd.DataFrame({"id": ids, "label": ["ang", "hap", "neu", "sad"] * (N_UTTS // 4),
                         "session": [str(1 + i % 5) for i in range(N_UTTS)], "speaker": ["s"] * N_UTTS,
                         "gender": ["F"] * N_UTTS, "transcript": ["t"] * N_UTTS,
                         "audio_path": [f"/x/{i}.wav" for i in ids], "start": np.nan, "end": np.nan,
                         "duration": 1.0, "audio_bytes": 100})


def frames_of(uid):
    rng = np.random.default_rng(int(uid[1:]))
    return rng.standard_normal((20 + int(uid[1:]) % 13, 5, 64)).astype(np.float16)


def arm(kill_at: str) -> None:
    """Replace os.replace so that the process kills itself at the chosen rename."""
    real = os.replace
    seen = {"part": 0, "index": 0}
    what, _, k = kill_at.partition(":")

    def replace(src, dst):
        src = os.fspath(src)
        is_index = not os.path.dirname(src).endswith(".d")  # parts live in STORE.h5.d/
        seen["index" if is_index else "part"] += 1
        hit = seen["index" if is_index else "part"] == int(k)
        if is_index and what == "index-unswapped" and hit:
            os.kill(os.getpid(), signal.SIGKILL)
        if not is_index and what == "part-unrenamed" and hit:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
        if hit and what == ("index-swapped" if is_index else "part-renamed"):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace


def main():
    path, n_units = sys.argv[1], int(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    if len(sys.argv) > 4:
        arm(sys.argv[4])
    with StoreWriter(path, table()) as w:
        w.add_stream("audio", {"fingerprint": "enc-1", "encoder_id": "test"})
        done = w.done_ids("audio", "frames")
        todo = [u for u in table()["id"] if u not in done]
        per = max(1, N_UTTS // n_units)
        for k in range(0, len(todo), per):
            unit = todo[k:k + per]
            print(f"COMMIT {k}", flush=True)
            w.commit("audio", {"frames": {u: {"data": frames_of(u)} for u in unit}},
                     skipped=[("u999", "frames", "unreadable")] if k == 0 else [])
            time.sleep(pause)
        print("FINALIZE", flush=True)
        w.finalize()
        print("DONE", flush=True)


if __name__ == "__main__":
    main()
