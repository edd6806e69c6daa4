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
#: the utterance table's column of each utterance's channel (NaN: every channel, mixed to mono)
CHANNEL = "channel"
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
    (file name, size, segment times, the digest of the file's bytes where the table has one,
    and the channel where one is named). Independent of where the corpus is mounted."""
    rows = []
    with_digest = AUDIO_DIGEST in table.columns
    for r in table.to_dict("records"):
        row = [r.get(c) for c in FINGERPRINT_COLUMNS]
        row.append(os.path.basename(str(r.get("audio_path", ""))))
        if with_digest:
            row.append(r.get(AUDIO_DIGEST))
        channel = r.get(CHANNEL)
        if channel is not None and channel == channel:   # one channel of its file (every channel: as before)
            row.append({"channel": int(channel)})
        rows.append(row)
    return digest(rows, 32)


def corpus_changes(old: pd.DataFrame, new: pd.DataFrame) -> list[tuple[str, str]]:
    """What differs between two utterance tables, per utterance id: ``(id, what)`` with what one
    of "removed from the corpus", "added to the corpus", "audio content changed", "channel changed",
    "transcript changed", "start or end changed", "label, session or speaker changed". Audio digests count
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
        elif key(a.get(CHANNEL)) != key(b.get(CHANNEL)):
            out.append((i, "channel changed"))
        elif str(a["transcript"]) != str(b["transcript"]):
            out.append((i, "transcript changed"))
        elif key(a["start"]) != key(b["start"]) or key(a["end"]) != key(b["end"]):
            out.append((i, "start or end changed"))
        elif any(str(a[c]) != str(b[c]) for c in ("label", "session", "speaker")):
            out.append((i, "label, session or speaker changed"))
    return sorted(out)


# -- encoders ---------------------------------------------------------------------------------
#: keys of a transformers ``config.to_dict()`` that say where the checkpoint was loaded from (the
#: path or hub id as typed) and with which library (the running transformers version), not what the
#: model computes: outside ``config_hash``, so one checkpoint typed as ``bert64`` or ``$PWD/bert64``,
#: or loaded after a transformers upgrade, is one encoder
CONFIG_PROVENANCE = ("_name_or_path", "transformers_version", "_commit_hash")
#: the stream-info fields a transformers encoder's fingerprint covers where it records them (the
#: encoders' ``fingerprint_fields``), besides ``store_dtype`` and ``layers``
ENCODER_FIELDS = ("weights_hash", "config_hash", "tokenizer_hash", "preprocessing", "compute_dtype", "last_layer")


def config_hash(config: Mapping[str, Any]) -> str:
    """Digest of a transformers ``config.to_dict()`` without its ``CONFIG_PROVENANCE`` keys."""
    return digest({k: v for k, v in config.items() if k not in CONFIG_PROVENANCE})


def stream_fingerprint(fields: Mapping[str, Any], store_dtype: Any, layers: Any = None) -> str:
    """A stream's fingerprint: its encoder's fingerprint fields, the stored dtype, and the kept
    layers where ``--layers`` kept a subset (a subset never mixes with another)."""
    out = {**fields, "store_dtype": store_dtype}
    if layers is not None:
        out["layers"] = list(layers)
    return digest(out, 32)


def _loaded_names(info: Mapping[str, Any]) -> set[str]:
    """What a stream's checkpoint may have been loaded as (``_name_or_path``): its spec as typed,
    without Whisper's ``#window=…``, and the empty name of a config built in code (``untrained:``)."""
    ec = info.get("extract_config") if isinstance(info.get("extract_config"), Mapping) else {}
    names = {""}
    for spec in (info.get("encoder_id"), ec.get("audio_model"), ec.get("text_model")):
        if isinstance(spec, str):
            names |= {spec, spec.partition("#")[0]}
    return names


def _old_recipe_matches(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``old``'s fingerprint is what emofuse computed before ``CONFIG_PROVENANCE`` was
    left out (``config_hash`` over the whole ``to_dict()``, the path as typed and the running
    transformers version with it) for the encoder of ``new``, a stream info that records its
    configuration (``config``, the ``to_dict()`` it was loaded with). Both the path ``old``'s
    checkpoint was typed as and the one ``new``'s was are tried, with the transformers version
    ``old`` records: the hash is over content, so a match means the same configuration."""
    config = new.get("config")
    if "config" in old or not isinstance(config, Mapping) or not old.get("config_hash") \
            or config_hash(config) != new.get("config_hash"):
        return False
    fields = {k: new[k] for k in ENCODER_FIELDS if k in new}
    if stream_fingerprint(fields, new.get("store_dtype"), new.get("layers")) != new.get("fingerprint"):
        return False   # fields this function does not know make the fingerprint: nothing to rebuild it from
    names = _loaded_names(old) | {config.get("_name_or_path")}
    versions = {old.get("transformers_version"), config.get("transformers_version")}
    for name in names:
        for version in versions:
            if not isinstance(name, str) or not isinstance(version, str):
                continue
            h = digest({**config, "_name_or_path": name, "transformers_version": version})
            if h == old["config_hash"] and \
                    stream_fingerprint({**fields, "config_hash": h}, new.get("store_dtype"), new.get("layers")) \
                    == old.get("fingerprint"):
                return True
    return False


def same_encoder(known: Mapping[str, Any], info: Mapping[str, Any]) -> bool:
    """Whether two stream infos identify the same encoder's activations: the same fingerprint, or
    one of them fingerprinted before ``CONFIG_PROVENANCE`` was left out of the config hash and the
    other (which records its ``config``) the same encoder by that recipe. Stores and models
    written before keep their fingerprints, and the run keys built on them."""
    if known.get("fingerprint") == info.get("fingerprint"):
        return True
    return _old_recipe_matches(known, info) or _old_recipe_matches(info, known)
