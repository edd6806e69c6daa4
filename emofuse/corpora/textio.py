"""Lenient text reading for corpus files (latin-1 bytes, any line ends, a byte-order mark)."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from ..errors import CorpusError

#: The line ends of corpus text files: CRLF (Windows), LF, and a lone CR (classic Mac, or a file
#: whose lines were edited on different systems). Nothing else ends a line: Python's
#: ``str.splitlines`` also splits on \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029, and \x85 is
#: what a cp1252 ellipsis (…) reads as in latin-1, so a transcript holding one would be cut.
LINE_END_RE = re.compile(r"\r\n|\r|\n")
LINE_END_BYTES_RE = re.compile(rb"\r\n|\r|\n")


def read_lines(path: str | Path) -> list[str]:
    """Lines of a text file, split at ``\\r\\n``, ``\\n`` and a lone ``\\r`` (see ``LINE_END_RE``;
    a file ending in a line end gives a last empty line, an empty file ``[""]``). A UTF-8
    byte-order mark at the start is dropped. The file is decoded as UTF-8 when it all decodes;
    otherwise each line is decoded on its own, as UTF-8 when it decodes and as cp1252 (latin-1's
    superset) when not,
    so one latin-1 byte does not turn every UTF-8 character of the file into mojibake. A file
    that cannot be read (a folder, no permission, a name too long) raises ``CorpusError``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CorpusError(f"{str(path)[:300]} cannot be read: {e.strerror or e}") from None
    return decode_lines(raw)


def decode_lines(raw: bytes) -> list[str]:
    """``raw`` split into lines and decoded as ``read_lines`` does (UTF-8, else cp1252 per line)."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return LINE_END_RE.split(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    # CR and LF bytes are the same in both encodings and never inside a UTF-8 sequence, so the
    # bytes can be split into lines before they are decoded
    return [_decode_line(line) for line in LINE_END_BYTES_RE.split(raw)]


def _latin1_for_undefined(err: UnicodeDecodeError) -> tuple[str, int]:
    """The five bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) read as latin-1."""
    return err.object[err.start:err.end].decode("latin-1"), err.end


codecs.register_error("emofuse-latin1", _latin1_for_undefined)


def _decode_line(raw: bytes) -> str:
    """A line as UTF-8 when it decodes, else as cp1252 (Windows' Western text: latin-1 with
    typographic punctuation in 0x80-0x9F, so ``\x92`` is ’ and ``\x85`` …, where latin-1 would
    give invisible control characters that a tokenizer drops without a word)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="emofuse-latin1")


def visible(name: str) -> bool:
    """False for hidden and AppleDouble junk names (``._x``, ``.DS_Store``)."""
    return not name.startswith(".")
