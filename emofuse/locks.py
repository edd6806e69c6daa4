"""Exclusive lock files, one holder at a time: a store's writer lock (``STORE.h5.lock``,
``store/lock.py``) and a run directory's ``run.lock`` (``pipelines/rundir.py``).

- Where the platform has ``flock`` (Linux, macOS, other POSIX): an exclusive ``flock`` on the
  file. The kernel drops it when its process dies, so a killed holder never leaves a stale lock.
  The holder removes the file when it lets go, while still holding it; a newcomer that opened
  the file just before checks that the file it locked is still the one at the path, else retries.
- Elsewhere (Windows): the file is created with ``O_EXCL`` and holds the owner's pid and host
  name. A file left by a process that no longer runs (a killed holder) is taken over; one whose
  owner runs, or runs on another host (whose processes cannot be checked from here), is refused.

Either way the file holds ``PID HOST`` while it is held, and is gone after a clean release. A
symbolic link or a folder at the lock's path is refused (the lock is never taken through a link).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL fallback
    fcntl = None

#: open flags of a lock file: never follow a symbolic link planted at its path
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class LockFile:
    """Hold the lock file ``path`` exclusively from construction to ``release()``.

    ``label`` names the file in sentences ("the store's lock file"); ``busy(pid, host)`` makes the
    exception raised when another process holds it (its pid and host as the file says, where
    known); ``error`` is the exception class of this lock's other sentences; ``io_error(e)`` makes
    the one for an OS error while creating the file; ``where`` is what to move to a local disk
    when its file system has no locks."""

    def __init__(self, path: str, label: str, busy: Callable[[int | None, str | None], Exception],
                 error: type[Exception], io_error: Callable[[OSError], Exception], where: str = "it"):
        self.path, self.label, self.where = path, label, where
        self._busy, self._error, self._io_error = busy, error, io_error
        self._me = f"{os.getpid()} {socket.gethostname()}\n".encode()
        self._fd: int | None = self._acquire_flock() if fcntl is not None else self._acquire_exclusive()

    # -- flock ----------------------------------------------------------------------------------
    def _acquire_flock(self) -> int:
        for _ in range(100):
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(*self.holder()) from None
            except OSError as e:
                os.close(fd)
                raise self._error(f"cannot lock {self.path}: this file system does not support locks "
                                  f"({e.strerror or e}); put {self.where} on a local disk") from None
            try:   # the holder before us removes the file while holding it: ours must be the one at the path
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise self._error(f"cannot take the lock {self.path}: it keeps being replaced")
        os.ftruncate(fd, 0)
        os.write(fd, self._me)
        return fd

    # -- O_EXCL fallback --------------------------------------------------------------------------
    def _acquire_exclusive(self) -> int:
        for _ in range(2):
            try:
                fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                pid, host = self.holder()
                if pid is None or host != socket.gethostname() or pid_alive(pid):
                    raise self._busy(pid, host) from None
                with contextlib.suppress(OSError):   # left by a holder that died: take it over
                    os.remove(self.path)
                continue
            os.write(fd, self._me)
            return fd
        raise self._busy(*self.holder())

    def holder(self) -> tuple[int | None, str | None]:
        """(pid, host) of the holder as its file says; None where the file does not say."""
        try:
            with open(self.path, "rb") as f:
                words = f.read(300).decode("utf-8", "replace").split()
        except OSError:
            return None, None
        pid = int(words[0]) if words and words[0].isdigit() else None
        return pid, (words[1] if len(words) > 1 else None)

    # -- both -------------------------------------------------------------------------------------
    def _open(self, flags: int) -> int:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            return os.open(self.path, flags | _NOFOLLOW, 0o644)
        except OSError as e:
            self._refuse_if_not_a_file()
            if isinstance(e, FileExistsError):
                raise   # O_EXCL: another holder's lock file
            raise self._io_error(e) from None

    def _refuse_if_not_a_file(self) -> None:
        """A symbolic link or a folder at the lock's path: one sentence."""
        lock = self.path
        if os.path.islink(lock):
            raise self._error(f"{self.label} {lock} is a symbolic link (to {os.readlink(lock)}); expected a plain "
                              "file: remove it (it holds nothing) and run again") from None
        if os.path.isdir(lock):
            raise self._error(f"{self.label} {lock} is a folder; expected a plain file: remove it (a lock file "
                              "holds nothing) and run again") from None

    def release(self) -> None:
        """Give the lock up and remove its file (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if fcntl is not None:
            # removed while still held: a newcomer that opened it sees it gone and retries
            with contextlib.suppress(OSError):
                os.remove(self.path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            os.close(fd)   # first: Windows cannot remove a file that is open
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def __enter__(self) -> "LockFile":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (when in doubt: yes)."""
    if os.name == "nt":   # os.kill(pid, 0) would terminate the process there
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # it exists but belongs to someone else (EPERM)
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5   # ERROR_ACCESS_DENIED: it exists; else there is no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259   # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


__all__ = ["LockFile", "pid_alive"]
