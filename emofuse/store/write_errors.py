"""File-system failures while writing a store, as one sentence each (disk full, file size limit,
read-only file system, permission, a folder in the way): which file, why, what to do, and what
was kept. Shared by the writer, the merge engine, the lock and the maintenance commands."""

from __future__ import annotations

import errno
import os
import re
import shutil

from ..errors import StoreError

#: what a failed write raises: the OS's OSError, or h5py's RuntimeError/OSError wrapping HDF5's
#: "file write failed ... errno = 28" when the failure happens inside the HDF5 library
WRITE_ERRORS = (OSError, RuntimeError)
_H5_ERRNO = re.compile(r"errno = (\d+)")
_WHY = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
        errno.EFBIG: "the file is too large for this process's file size limit",
        errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
        errno.EPERM: "permission denied", errno.EISDIR: "a folder is in the way"}
_WHAT_TO_DO = {errno.ENOSPC: "free some space or write the store elsewhere",
               errno.EDQUOT: "free some space or write the store elsewhere",
               errno.EFBIG: "the file size limit (ulimit -f) is too small for it",
               errno.EROFS: "write the store to a writable disk",
               errno.EACCES: "give yourself write permission there or write the store elsewhere",
               errno.EPERM: "give yourself write permission there or write the store elsewhere",
               errno.EISDIR: "remove or rename that folder"}
#: the default of ``io_error(kept=)``: a failed commit
NOTHING_KEPT = "nothing of this commit was kept and the store is as it was"


def os_errno(e: BaseException) -> int | None:
    """The OS error number behind ``e``: its own, or the one HDF5 wrote into h5py's message."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = _H5_ERRNO.search(str(e))
    return int(m.group(1)) if m else None


def is_hdf5_bug(e: BaseException) -> bool:
    """A RuntimeError from h5py that no OS error explains: not a write failure, re-raise it."""
    return isinstance(e, RuntimeError) and os_errno(e) is None


def io_error(e: BaseException, path: str, what: str, kept: str = NOTHING_KEPT) -> StoreError:
    """One sentence for a file-system error while writing (full disk, read-only, no permission):
    which file, why, what to do, and that the store is intact."""
    code = os_errno(e)
    why = _WHY.get(code, (e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:160]))
    todo = _WHAT_TO_DO.get(code, "check the disk and run the same command again")
    return StoreError(f"could not {what} {path}: {why}; {kept}; {todo}")


def free_bytes(folder: str) -> int | None:
    """Bytes available to this user in ``folder``'s file system (None when it cannot be told).
    ``statvfs`` where the platform has it (Linux, macOS), ``shutil.disk_usage`` elsewhere."""
    try:
        statvfs = getattr(os, "statvfs", None)
        if statvfs is None:
            return shutil.disk_usage(folder).free
        st = statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_free(folder: str, needed: int, path: str) -> None:
    """Refuse a commit the disk cannot hold, before writing a byte of it (HDF5 fails untidily
    when the disk fills mid-file)."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise StoreError(f"could not write {path}: the disk is full (it needs about {needed / 1e6:,.1f} MB, "
                         f"{free / 1e6:,.1f} MB are free); {NOTHING_KEPT}; free some space or write the store "
                         "elsewhere, then run the same command again")


def remove_quietly(path: str) -> None:
    """Remove a half-written file; a failure to remove it is not the error to report (the next
    writer removes any ``.tmp`` it finds)."""
    try:
        if os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass
