"""What a checkpoint *is*, not what it is called: a digest of the files a model loads from.

A fine-tuned run starts from its encoders' weights, so its run key must change when new weights
are saved under the same folder or a hub id moves to another revision; the name alone cannot
tell. Frozen-encoder runs need none of this: their stream fingerprints (weights, config and
tokenizer hashes, taken at extraction) already are in the store.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..errors import EmofuseError
from ..hashing import file_sha256
from .encoders import resolve_spec

#: the files ``from_pretrained`` reads from a hub snapshot (weights, configs, tokenizer)
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


def _local_folder(spec: str, fetch: bool = True) -> str:
    path = resolve_spec(spec)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download
    try:   # a hub id: the snapshot transformers loads it from, fetched first when not cached
        return snapshot_download(repo_id=path, local_files_only=True)
    except Exception:   # noqa: BLE001 — not in the cache (or no hub id): fetch below
        if not fetch:
            raise EmofuseError(f"model {spec!r} is neither a local folder nor in the hub cache") from None
    try:
        return snapshot_download(repo_id=path, allow_patterns=HUB_FILES)
    except Exception as e:   # noqa: BLE001 — offline, unknown id, no access: one sentence
        raise EmofuseError(f"model {spec!r} is neither a local folder nor a hub checkpoint that can be fetched "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                           "give the folder it was saved to") from None


def checkpoint_digest(spec: str | None, fetch: bool = True) -> str | None:
    """sha256 (32 hex) of a checkpoint's files (the names and bytes of its folder's non-hidden
    files), for a local folder, a ``packaged:`` model or a hub id (its snapshot in the local
    cache, fetched first when it is not there, as loading it would; ``fetch=False``: refused
    instead). ``None`` for no model."""
    if not spec:
        return None
    folder = _local_folder(spec, fetch)
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(p):
            continue
        h.update(json.dumps([name, file_sha256(p)]).encode())
    return h.hexdigest()[:32]
