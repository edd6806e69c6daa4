"""The two overlap utilities of extraction: store commits in background threads while the next
unit is encoded, and audio read ahead while the current batch is encoded."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

from .summary import StreamSummary


#: the interpreter's switch interval while extraction's threads run (Python's default: 5 ms). The
#: store's writer hands the GIL back at every chunk it writes and every utterance it copies or
#: hashes (hundreds of times per unit); each time a thread running Python holds it, getting it
#: back waits for that thread's switch interval. Measured on a 2-core VM (benchmarks/store_gil.py):
#: a 60-s unit staged in ~40 ms alone took ~6 s beside a busy Python thread at 5 ms, ~0.4 s at 0.5 ms
SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def short_switch_interval(on: bool) -> Iterator[None]:
    """With ``on`` (background threads), the interpreter's switch interval at most
    ``SWITCH_INTERVAL_S`` for the block, restored after it."""
    if not on:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class BackgroundCommits:
    """Store commits off the encoding thread, in two stages: a writer thread stages a unit's part
    (``StoreWriter.stage``: layout, checksums, the write into the page cache), and a syncer thread
    publishes it (``StoreWriter.publish``: fsync, rename), so one unit's CPU work overlaps the
    previous unit's disk flush and both overlap encoding. Units are published in order; at most
    one is being staged and one published while the next is encoded (a kill loses at most those
    and the one being encoded). ``submit(stage)``: ``stage()`` runs in the writer thread and
    returns the function to run in the syncer thread (or None). An error of either is raised in
    the main thread at the next ``submit`` or at ``close``; ``close`` waits for every unit, so
    nothing encoded before a failure is lost. With ``background=False`` both run at once, in the
    caller's thread. Times go to ``s.time_write`` (the caller waited) and ``s.time_write_busy``
    (the two threads worked, together)."""

    def __init__(self, s: StreamSummary, background: bool):
        self.s = s
        self.staging: Future | None = None     # the unit being staged
        self.publishing: list[Future] = []      # units staged, being published, in order
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-stage") if background else None
        self.syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sync") if background else None
        self.lock = threading.Lock()

    def _busy(self, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            with self.lock:
                self.s.time_write_busy += time.perf_counter() - t0

    def submit(self, stage: Callable[[], Callable[[], None] | None]) -> None:
        if self.writer is None:
            t0 = time.perf_counter()
            try:
                publish = self._busy(stage)
                if publish is not None:
                    self._busy(publish)
            finally:
                self.s.time_write += time.perf_counter() - t0
            return
        self._wait(keep=1)

        def staged() -> None:
            publish = self._busy(stage)
            if publish is not None:
                self.publishing.append(self.syncer.submit(self._busy, publish))
        self.staging = self.writer.submit(staged)

    def _await(self, f: Future) -> None:
        """Wait for ``f`` and raise its error; forget it once it is done (an interrupt while it
        runs leaves it to be waited for again, never unobserved)."""
        try:
            f.result()
        except BaseException:
            if f.done():
                self._forget(f)
            raise
        self._forget(f)

    def _forget(self, f: Future) -> None:
        if f is self.staging:
            self.staging = None
        elif f in self.publishing:
            self.publishing.remove(f)

    def _wait(self, keep: int) -> None:
        """Wait for the unit being staged, and until at most ``keep`` units are being published;
        raise the first error of either."""
        t0 = time.perf_counter()
        try:
            if self.staging is not None:
                self._await(self.staging)   # after this, its publish (if any) is in self.publishing
            while len(self.publishing) > keep:
                self._await(self.publishing[0])
            for done in [f for f in self.publishing if f.done()]:
                self._await(done)
        finally:
            self.s.time_write += time.perf_counter() - t0

    def wait(self) -> None:
        """Wait until every unit submitted is committed."""
        self._wait(keep=0)

    def close(self) -> None:
        """Wait for every unit (also through Ctrl-C: the threads are writing into the store, and
        the store must not be published or unlocked under them), then raise the first error, or
        the interrupt."""
        error: BaseException | None = None
        interrupted = False
        while self.staging is not None or self.publishing:
            try:
                self._wait(keep=0)
            except KeyboardInterrupt:
                interrupted = True
            except BaseException as e:   # noqa: BLE001 (raised below, once every unit is done)
                error = error or e
        for pool in (self.writer, self.syncer):
            while pool is not None:
                try:
                    pool.shutdown()
                    break
                except KeyboardInterrupt:
                    interrupted = True
        if error is not None:
            raise error
        if interrupted:
            raise KeyboardInterrupt


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
