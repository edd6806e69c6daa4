"""``ExtractConfig``: everything ``extract-embeddings`` does is decided here (validated on
construction, saved in every stream's info), and how a shard takes its part of one global plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ...errors import EmofuseError

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``extract-embeddings`` does is decided here; saved in the store's stream info."""

    corpus: str
    out: str
    root: str | None = None
    manifest: str | None = None
    labels: str | None = None
    audio_model: str | None = "facebook/wav2vec2-base"
    text_model: str | None = "bert-base-uncased"
    audio_stream: str | None = None
    text_stream: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    store_dtype: str = "float16"
    batch_seconds: float | None = None  # None: 120 s on CUDA, one utterance per forward on CPU (fastest there)
    commit_seconds: float = 60.0
    text_batch: int = 32
    shard: str | None = None
    on_error: str = "skip"
    limit: int | None = None
    update_corpus: bool = False   # the corpus changed: drop the changed utterances' tensors and recompute them
    layers: str | None = None     # keep only these encoder layers ("0,6,12", "0-4", "last"); None: all

    def __post_init__(self):
        if self.on_error not in ("skip", "fail"):
            raise EmofuseError(f"--on-error must be 'skip' or 'fail', found {self.on_error!r}")
        if self.store_dtype not in STORE_DTYPES:
            raise EmofuseError(f"--store-dtype must be one of {list(STORE_DTYPES)}, found {self.store_dtype!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise EmofuseError(f"--dtype must be float32, bfloat16 or float16, found {self.dtype!r}")
        if self.commit_seconds <= 0:
            raise EmofuseError(f"--commit-seconds must be positive, found {self.commit_seconds}")
        if self.batch_seconds is not None and self.batch_seconds < 0:
            raise EmofuseError(f"--batch-seconds must be >= 0 (0: one utterance per forward), found {self.batch_seconds}")
        if not self.audio_model and not self.text_model:
            raise EmofuseError("nothing to extract: both --audio-model and --text-model are 'none'")
        parse_shard(self.shard)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``(i, n)`` of ``--shard I/N``; ``(0, 1)`` for no shard."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise EmofuseError(f"--shard must look like I/N (e.g. 0/4), found {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise EmofuseError(f"--shard {spec}: expected 0 <= I < N")
    return i, n


T = TypeVar("T")


def shard_part(plan: list[T], shard: str | None) -> list[T]:
    """This shard's batches of one global batch plan. Sharding whole batches (not utterances)
    keeps every utterance in the batch it has in a single-process run: merged shards are
    bit-identical to it."""
    i, n = parse_shard(shard)
    return plan[i::n]
