"""Child process for the OS-error tests: commits 8 MB of frames to an existing store under a
handicap, prints the one sentence it got (or "committed") on stdout.

Usage: python store_oserror_child.py STORE HANDICAP, HANDICAP one of
``fsize`` (a 256 KiB file size limit: the write fails inside HDF5, mid-file, as on a full disk;
the free-space check is switched off so that the failure happens there) or ``readonly-folder``
(the store's folder of parts is not writable: as root, this process gives up root first)."""

import os
import resource
import signal
import sys

import numpy as np

import emofuse.store.writer as writer
from emofuse.errors import EmofuseError
from emofuse.store import StoreWriter


def main():
    path, handicap = sys.argv[1], sys.argv[2]
    if handicap == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write gets EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
        writer.check_free = lambda *a: None
    elif os.getuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # nobody: the folder of parts belongs to root and is not writable
    try:
        with StoreWriter(path) as w:
            w.add_stream("audio", w.stream_infos["audio"])
            ids = sorted(w.table["id"])[4:]
            w.commit("audio", {"frames": {i: {"data": np.ones((2000, 4, 64), np.float32)} for i in ids}})
            w.finalize()
        print("committed")
    except EmofuseError as e:
        print(e)


if __name__ == "__main__":
    main()
