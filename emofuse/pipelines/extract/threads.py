"""The two overlap utilities of extraction: store commits in a background thread while the next
unit is encoded, and audio read ahead while the current batch is encoded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .summary import StreamSummary


class BackgroundCommits:
    """Store commits in one background thread, one at a time, so the next unit is encoded while
    the previous one is written (h5py releases the GIL while it writes). A commit's error is
    raised in the main thread at the next ``submit`` or at ``close``; ``close`` waits for the
    last commit, so nothing encoded before a failure is lost. With ``background=False`` each
    commit runs at once, in the caller's thread. Times go to ``s.time_write`` (the caller
    waited) and ``s.time_write_busy`` (the writer worked)."""

    def __init__(self, s: StreamSummary, background: bool):
        self.s, self.pending = s, None
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()
        if self.pool is None:
            t0 = time.perf_counter()
            try:
                fn()
            finally:
                self.s.time_write += time.perf_counter() - t0
                self.s.time_write_busy += time.perf_counter() - t0
            return

        def timed():
            t0 = time.perf_counter()
            fn()
            self.s.time_write_busy += time.perf_counter() - t0
        self.pending = self.pool.submit(timed)

    def wait(self) -> None:
        if self.pending is not None:
            t0 = time.perf_counter()
            pending, self.pending = self.pending, None
            try:
                pending.result()
            finally:
                self.s.time_write += time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


class Prefetch:
    """``read(item)`` for every item of upcoming batches, ``depth`` batches ahead in one background
    thread (audio decoding and preprocessing while the GPU encodes); ``next_batch()`` returns the
    next batch's results in order. With ``background=False`` each batch is read when asked for."""

    def __init__(self, batches: list[list[str]], read: Callable[[str], Any], background: bool, depth: int = 2):
        self.batches, self.read, self.next = batches, read, 0
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None
        self.pending = [self._submit(k) for k in range(min(depth, len(batches)))] if self.pool else []

    def _submit(self, k: int):
        return self.pool.submit(lambda: [self.read(i) for i in self.batches[k]])

    def next_batch(self) -> list[Any]:
        k, self.next = self.next, self.next + 1
        if self.pool is None:
            return [self.read(i) for i in self.batches[k]]
        done = self.pending.pop(0).result()
        if k + len(self.pending) + 1 < len(self.batches):
            self.pending.append(self._submit(k + len(self.pending) + 1))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
