"""Messages of the stages go through :mod:`logging`, one logger per module
(``logging.getLogger(__name__)``, all under ``"emofuse"``); progress bars stay tqdm bars.

As a library emofuse configures nothing (the standard practice): a script that wants the
stages' sentences calls :func:`show_messages` once, as the command-line tools do. The handler
prints the bare sentence to the *current* ``sys.stdout`` (looked up at each message, so a
redirected or captured stdout receives it), which is where the tools printed before.
"""

from __future__ import annotations

import logging
import sys

ROOT = "emofuse"


class _StdoutHandler(logging.Handler):
    """The message alone, on whatever ``sys.stdout`` is when it is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:   # noqa: BLE001 (logging's own contract: never raise from emit)
            self.handleError(record)


def show_messages(level: int = logging.INFO) -> logging.Logger:
    """Print emofuse's messages at ``level`` and above to stdout (idempotent)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        h = _StdoutHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    return logger
