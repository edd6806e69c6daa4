"""The writer lock of a store: ``STORE.h5.lock``, held by one writer (``StoreWriter``,
``upgrade_store``, ``compact_store``) at a time. The mechanism (``flock`` where the platform has
it, else an ``O_EXCL`` file holding ``PID HOST``, taken over from a holder that died) is
``emofuse.locks.LockFile``, shared with run directories; this module gives it the store's
sentences."""

from __future__ import annotations

import socket

from ..errors import StoreError
from .. import locks
from ..locks import LockFile
from .write_errors import io_error


def lock_path(store_path: str) -> str:
    return store_path + ".lock"


class WriterLock(LockFile):
    """Hold ``STORE.h5.lock`` exclusively from construction to ``release()``; a second writer gets
    one sentence (``StoreError``) and holds nothing."""

    def __init__(self, store_path: str):
        self.store_path = store_path
        path = lock_path(store_path)

        def busy(pid: int | None, host: str | None) -> StoreError:
            if locks.fcntl is None and pid is not None and host is not None and host != socket.gethostname():
                return StoreError(f"another process is writing {store_path} (process {pid} on {host} holds "
                                  f"{path}); wait for it to finish, or remove {path} if it no longer runs")
            return StoreError(f"another process is writing {store_path} (it holds {path}); "
                              "wait for it to finish or write to another store")
        super().__init__(path, "the store's lock file", busy, StoreError,
                         lambda e: io_error(e, path, "create the lock file", kept="nothing was written"),
                         where="the store")

    close = LockFile.release


__all__ = ["WriterLock", "lock_path"]
