"""The sha256 recipes behind emofuse's keys and seeds, in one place.

Every key of the store, the run directories and the ablate grids, and every seed drawn from a
name, is one of these two over a text the caller builds. Their outputs are part of the on-disk
formats (run directories and grid folders are named by them): never change a recipe.
"""

from __future__ import annotations

import hashlib
import os


def sha256_hex(text: str | bytes, n: int) -> str:
    """The first ``n`` hex digits of sha256(``text``) (UTF-8 for a str): a key or a digest."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:n]


def sha256_int(text: str, n_bytes: int) -> int:
    """The first ``n_bytes`` bytes of sha256(``text``) as a little-endian integer: a seed drawn
    from a name (e.g. ``"seed/session"``), the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:n_bytes], "little")


#: (real path, inode, size, modification time) → sha256 of the file: a file is read once per
#: process, and again only when it changes
_file_sha256: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """sha256 (64 hex) of a file's bytes, cached per version of the file; ``OSError`` when it
    cannot be read."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _file_sha256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _file_sha256[key] = h.hexdigest()
    return _file_sha256[key]
