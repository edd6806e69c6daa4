"""``STORE.skipped.tsv`` beside the store: every skipped utterance of every stream, with its reason."""

from __future__ import annotations

import csv
import os

from ...store import FeatureStore


def write_skipped_tsv(store: str, path: str) -> str | None:
    """Every skipped utterance of every stream, with its reason; None (and no file) when none."""
    rows = []
    with FeatureStore(store) as fs:
        utt = fs.utterances
        for s in fs.streams:
            sk = fs.skipped(s)
            for r in sk.itertuples():
                rows.append((s, r.id, r.kind, r.reason, utt["audio_path"].get(r.id, "")))
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return None
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["stream", "id", "kind", "reason", "audio_path"])
        w.writerows(sorted(rows))
    return path


def skipped_tsv_path(store: str, shard: str | None = None) -> str:
    """``STORE.skipped.tsv`` beside the store (``s.h5`` → ``s.skipped.tsv``; a shard:
    ``s.skipped.shard-I-of-N.tsv``): two stores in one folder keep their own lists."""
    stem = os.path.splitext(os.path.abspath(store))[0]
    return stem + (".skipped.tsv" if shard is None else f".skipped.shard-{shard.replace('/', '-of-')}.tsv")
