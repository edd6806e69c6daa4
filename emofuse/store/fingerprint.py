"""Fingerprints that make a cached tensor trustworthy: which corpus, which encoder."""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Mapping

import pandas as pd

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
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def corpus_fingerprint(table: pd.DataFrame) -> str:
    """Fingerprint of a corpus: ids, labels, folds, speakers, transcripts and audio identity
    (file name and size, segment times). Independent of where the corpus is mounted."""
    rows = []
    for r in table.to_dict("records"):
        row = [r.get(c) for c in FINGERPRINT_COLUMNS]
        row.append(os.path.basename(str(r.get("audio_path", ""))))
        rows.append(row)
    return digest(rows, 32)


def file_tree_hash(folder: str, suffixes: tuple[str, ...] = (".safetensors", ".bin", ".json", ".txt", ".model")) -> str:
    """sha256 over a local checkpoint folder's weight and config files (name + content)."""
    h = hashlib.sha256()
    for root, _dirs, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if not name.endswith(suffixes):
                continue
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, folder).encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:32]
