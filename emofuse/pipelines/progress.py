"""Progress of long stages: a tqdm bar on a terminal, and plain lines every so often when the
output goes to a file (batch jobs, ``make … > log 2>&1``), where a bar would print nothing useful
(tqdm disables itself off a terminal, or fills the file with carriage returns).

``EMOFUSE_PROGRESS_SECONDS`` sets the interval between lines (default 60; 0 turns them off).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm


class LineProgress:
    """The part of tqdm's interface the stages use (``update``, ``set_postfix_str``, context
    manager), printing one self-contained line per ``interval`` seconds, and a last line at the
    end when any was printed (a short job prints nothing)."""

    def __init__(self, total: float, unit: str, desc: str, interval: float, file: TextIO):
        self.total, self.unit, self.desc, self.interval, self.file = total, unit, desc, interval, file
        self.n, self.postfix, self.printed = 0.0, "", 0
        self.t0 = self.last = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        done = f"{self.n:g}/{self.total:g} {self.unit if self.unit.endswith('s') else self.unit + 's'}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        eta = (f", ~{tqdm.format_interval(elapsed * (self.total - self.n) / self.n)} left"
               if self.n and self.total and self.n < self.total else "")
        return f"{self.desc}: {done}, {tqdm.format_interval(elapsed)} elapsed{eta}" + (
            f"; {self.postfix}" if self.postfix else "")

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if self.interval > 0 and now - self.last >= self.interval:
            self.last = now
            self.printed += 1
            print(self.line(), file=self.file, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        self._maybe_print()

    def close(self) -> None:
        if self.printed:
            print(self.line() + " (done)", file=self.file, flush=True)
            self.printed = 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: float, unit: str, desc: str, file: TextIO | None = None, **kw):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``LineProgress``."""
    file = file or sys.stderr
    if getattr(file, "isatty", lambda: False)():
        return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=file, **kw)
    try:
        interval = float(os.environ.get("EMOFUSE_PROGRESS_SECONDS", "60"))
    except ValueError:
        interval = 60.0
    return LineProgress(total, unit, desc, interval, file)
