"""Lenient text reading for corpus files (latin-1 bytes, CRLF line ends)."""

from __future__ import annotations

from pathlib import Path


def read_lines(path: str | Path) -> list[str]:
    """Lines of a text file: UTF-8 when it decodes, else latin-1; ``\\r`` stripped."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.rstrip("\r") for line in text.replace("\r\n", "\n").split("\n")]


def visible(name: str) -> bool:
    """False for hidden and AppleDouble junk names (``._x``, ``.DS_Store``)."""
    return not name.startswith(".")
