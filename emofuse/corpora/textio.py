"""Lenient text reading for corpus files (latin-1 bytes, CRLF line ends)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorpusError


def read_lines(path: str | Path) -> list[str]:
    """Lines of a text file: UTF-8 when it decodes, else latin-1; ``\\r`` stripped. A file that
    cannot be read (a folder, no permission, a name too long) raises ``CorpusError``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CorpusError(f"{str(path)[:300]} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.rstrip("\r") for line in text.replace("\r\n", "\n").split("\n")]


def visible(name: str) -> bool:
    """False for hidden and AppleDouble junk names (``._x``, ``.DS_Store``)."""
    return not name.startswith(".")
