"""Fingerprints that make a cached tensor trustworthy: which corpus, which encoder."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import pandas as pd

from ..hashing import sha256_hex

FINGERPRINT_COLUMNS = ("id", "label", "session", "speaker", "transcript", "start", "end", "audio_bytes")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, NaN written as null: stable across runs."""
    def clean(o):
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, Mapping):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if hasattr(o, "item"):  # numpy scalars
            return clean(o.item())
        return o
    return json.dumps(clean(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(obj: Any, n: int = 16) -> str:
    """Short sha256 hex digest of ``canonical_json(obj)``."""
    return sha256_hex(canonical_json(obj), n)


#: the utterance table's column holding a digest of each audio file's bytes (schema v2)
AUDIO_DIGEST = "audio_digest"
#: columns that say where a corpus's files are, not what they hold (outside the fingerprint):
#: a store takes a table whose locations differ (a moved corpus, alignment paths it did not keep)
LOCATION_COLUMNS = ("audio_path", "alignments")


def locations_differ(old: pd.DataFrame, new: pd.DataFrame) -> bool:
    """Whether ``new`` (a table of the same corpus) says something else about where the files are
    than ``old``: a location column ``old`` lacks, or other values in one both have."""
    for c in LOCATION_COLUMNS:
        if c not in new.columns:
            continue
        if c not in old.columns:
            return True
        if dict(zip(old["id"], map(str, old[c]))) != dict(zip(new["id"], map(str, new[c]))):
            return True
    return False


def corpus_fingerprint(table: pd.DataFrame) -> str:
    """Fingerprint of a corpus: ids, labels, folds, speakers, transcripts and audio identity
    (file name, size, segment times, and the digest of the file's bytes where the table has
    one). Independent of where the corpus is mounted."""
    rows = []
    with_digest = AUDIO_DIGEST in table.columns
    for r in table.to_dict("records"):
        row = [r.get(c) for c in FINGERPRINT_COLUMNS]
        row.append(os.path.basename(str(r.get("audio_path", ""))))
        if with_digest:
            row.append(r.get(AUDIO_DIGEST))
        rows.append(row)
    return digest(rows, 32)


def corpus_changes(old: pd.DataFrame, new: pd.DataFrame) -> list[tuple[str, str]]:
    """What differs between two utterance tables, per utterance id: ``(id, what)`` with what one
    of "removed from the corpus", "added to the corpus", "audio content changed", "transcript
    changed", "start or end changed", "label, session or speaker changed". Audio digests count
    only where both tables have them (a v1 table has none)."""
    def key(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        return v.item() if hasattr(v, "item") else v
    o = {r["id"]: r for r in old.to_dict("records")}
    n = {r["id"]: r for r in new.to_dict("records")}
    digests = AUDIO_DIGEST in old.columns and AUDIO_DIGEST in new.columns
    out = [(i, "removed from the corpus") for i in o if i not in n]
    out += [(i, "added to the corpus") for i in n if i not in o]
    for i in n:
        if i not in o:
            continue
        a, b = o[i], n[i]
        if (digests and key(a[AUDIO_DIGEST]) != key(b[AUDIO_DIGEST])) or key(a["audio_bytes"]) != key(b["audio_bytes"]) \
                or os.path.basename(str(a["audio_path"])) != os.path.basename(str(b["audio_path"])):
            out.append((i, "audio content changed"))
        elif str(a["transcript"]) != str(b["transcript"]):
            out.append((i, "transcript changed"))
        elif key(a["start"]) != key(b["start"]) or key(a["end"]) != key(b["end"]):
            out.append((i, "start or end changed"))
        elif any(str(a[c]) != str(b[c]) for c in ("label", "session", "speaker")):
            out.append((i, "label, session or speaker changed"))
    return sorted(out)

