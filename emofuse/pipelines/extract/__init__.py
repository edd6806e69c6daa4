"""Stage 1, ``extract-embeddings``: run frozen encoders once over a corpus and store every layer.

One job per module:

- ``config``: ``ExtractConfig`` (validated), ``--shard`` parsing, a shard's part of a plan.
- ``distributed``: ``run_extract``: one process, or torchrun ranks each writing a shard, merged.
- ``job``: one process's extraction into one store: corpus, encoders, streams, phases, summary.
- ``stream``: ``StreamJob``, the small object a phase works on.
- ``audio_phase`` / ``text_phase``: encode and commit one stream's audio or transcripts.
- ``threads``: ``BackgroundCommits`` and ``Prefetch``, the two overlap utilities.
- ``summary``: what was done, and the text the command prints.
- ``skipped``: ``STORE.skipped.tsv`` beside the store.
"""

from .config import STORE_DTYPES, ExtractConfig, parse_shard
from .distributed import run_extract
from .job import extract_into, kept_layers
from .skipped import skipped_tsv_path, write_skipped_tsv
from .summary import ExtractSummary, StreamSummary

__all__ = ["ExtractConfig", "STORE_DTYPES", "parse_shard", "run_extract", "extract_into", "kept_layers",
           "write_skipped_tsv", "skipped_tsv_path", "ExtractSummary", "StreamSummary"]
