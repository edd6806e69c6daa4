"""``ExtractConfig``: everything ``extract-embeddings`` does is decided here (validated on
construction, saved in every stream's info), and how a shard takes its part of one global plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ...corpora import KINDS
from ...errors import EmofuseError
from ...options import opt

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
DTYPES = ("float32", "bfloat16", "float16")
ON_ERROR = ("skip", "fail")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``extract-embeddings`` does is decided here; saved in the store's stream info."""

    corpus: str = opt(choices=KINDS, required=False, help="corpus reader")
    out: str = opt(help="the store to write (STORE.h5)")
    root: str | None = opt(None, help="IEMOCAP: the folder holding Session1 … Session5")
    manifest: str | None = opt(None, help="manifest: a .csv or .jsonl file; lhotse: a CutSet, a SupervisionSet (its "
                                          "RecordingSet beside it) or a folder of them (.jsonl or .jsonl.gz)")
    labels: str | None = opt(None, help="classes to keep: a named IEMOCAP set, four (default for IEMOCAP) or six, or "
                                        "a comma list of labels, e.g. angry,happy,neutral,sad (raw:class merges, e.g. "
                                        "exc:hap); other utterances are left out (default for manifests: every label)")
    audio_model: str | None = opt(
        "facebook/wav2vec2-base", none=True,
        help="hub id or local folder (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper; Whisper takes "
             "#window=SECONDS for windows shorter than its standard 30 s), opensmile:eGeMAPSv02, "
             "untrained:wav2vec2-small, or none (default: facebook/wav2vec2-base)")
    text_model: str | None = opt(
        "bert-base-uncased", none=True,
        help="hub id or local folder: a bidirectional encoder (BERT, RoBERTa, MiniLM …) or a decoder-only "
             "causal LM (GPT-2, Llama, Qwen2 …), packaged:all-MiniLM-L6-v2 (a pip package's copy, offline), "
             "or none (default: bert-base-uncased)")
    audio_stream: str | None = opt(None, help="stream name for the audio encoder (default: audio, or egemaps)")
    text_stream: str | None = opt(None, help="stream name for the text encoder (default: text)")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    dtype: str = opt("float32", choices=DTYPES, help="compute precision")
    store_dtype: str = opt("float16", choices=STORE_DTYPES, help="stored precision")
    batch_seconds: float | None = opt(None, help="padded audio seconds per forward pass (default: 120 on CUDA; on CPU "
                                                 "one utterance per forward, which measured fastest there)")
    commit_seconds: float = opt(60.0, help="audio seconds per atomic commit: at most this much is recomputed after a "
                                           "crash")
    text_batch: int = opt(32, help="transcripts per text batch")
    shard: str | None = opt(None, help="I/N: process only shard I of N, I from 0 to N-1 (a disjoint subset); merge "
                                        "later with --merge")
    on_error: str = opt("skip", choices=ON_ERROR,
                        help="bad input: skip it and record why (default), or stop with one clear sentence")
    limit: int | None = opt(None, help="only the first N utterances (by id; default: all)")
    update_corpus: bool = opt(False, help="the corpus changed since --out was written: drop the cached tensors of the "
                                          "utterances whose audio, transcript or times changed (and of removed ones) "
                                          "and recompute them")
    layers: str | None = opt(None, help="keep only these encoder layers, e.g. 0,6,12 or 6-12 or last (0 = transformer "
                                        "input; default all). Stored layers keep the encoder's numbers everywhere "
                                        "downstream")

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise EmofuseError(f"--on-error must be 'skip' or 'fail', found {self.on_error!r}")
        if self.store_dtype not in STORE_DTYPES:
            raise EmofuseError(f"--store-dtype must be one of {list(STORE_DTYPES)}, found {self.store_dtype!r}")
        if self.dtype not in DTYPES:
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
