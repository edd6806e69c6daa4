"""``StreamJob``: the small object an extraction phase works on (one stream of one store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...corpora import Utterance
from ...errors import EmofuseError
from ...extract.audio import BadInput
from ...store import StoreWriter, nonfinite
from .config import ExtractConfig
from .summary import StreamSummary


def all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in ``a``: the store's own test (``nonfinite``, from the exponent bits, many
    times faster than ``np.isfinite`` for float16, which numpy computes in software)."""
    return not nonfinite(a)


def not_finite(kept: np.ndarray, rows: str, what: str, remedy: str = "--store-dtype float32 keeps them",
               compute_remedy: str = "--dtype float32 avoids it", descriptors: bool = False) -> BadInput:
    """Why an utterance whose kept ``rows`` (frames, tokens; ``kept``, in the store's dtype) came
    out empty or not finite is skipped: each cause in its own words, since their remedies differ.
    ``remedy``: what keeps values beyond a float16 store; ``compute_remedy``: what avoids an
    overflow inside the encoder; ``descriptors``: the encoder is openSMILE (NaN: audio it cannot
    describe)."""
    if not len(kept):
        return BadInput(f"the encoder produced no {rows[:-1]} for this {what}")
    nan = int(np.isnan(kept).sum())   # the error path only: np.isnan's cost does not matter here
    if nan:   # openSMILE's descriptors of audio shorter than their window: every value NaN
        why = ("openSMILE: audio too short or too degenerate to describe" if descriptors else
               f"an overflow inside the encoder, as computing in float16 gives; {compute_remedy}")
        return BadInput(f"the encoder produced {nan} of {kept.size} values that are not numbers (NaN) for this "
                        f"{what} ({why})")
    if np.dtype(kept.dtype).itemsize >= 4:   # a float32 store holds any finite value: the encoder's own inf
        return BadInput(f"the encoder produced infinite values for this {what} (an overflow inside the encoder, as "
                        f"computing in float16 gives; {compute_remedy})")
    return BadInput(f"the encoder produced values beyond the store's dtype ({np.dtype(kept.dtype).name}: largest "
                    f"{float(np.finfo(kept.dtype).max):g}) for this {what}, infinite once stored ({remedy})")


@dataclass
class StreamJob:
    """One stream to fill: where it goes, what encodes it, what to keep, what to report.

    ``store_dtype``: the numpy dtype rows are stored in; ``kept``: the encoder layers kept
    (``--layers``), None for all; ``background``: commit and read ahead in background threads
    (None: when the encoder runs on a GPU, whose host CPU is otherwise idle)."""

    writer: StoreWriter
    name: str
    encoder: Any
    cfg: ExtractConfig
    store_dtype: Any
    kept: list[int] | None
    summary: StreamSummary
    background: bool | None = None

    def keep(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (T, L, D) cut to the kept layers, in the store's dtype."""
        if self.kept is None:
            return rows.astype(self.store_dtype, copy=False)
        return rows[:, self.kept].astype(self.store_dtype)

    def keep_finite(self, rows: np.ndarray, what: str) -> np.ndarray | BadInput:
        """``keep(rows)``, or why not (``not_finite``) when that is empty or holds NaN or inf:
        values beyond the store's dtype (float16: 65504) become inf in the cast, which is checked
        after it, on the kept layers alone (an overflow in a layer ``--layers`` drops stores
        nothing wrong). ``what``: "audio" or "transcript"."""
        with np.errstate(over="ignore", invalid="ignore"):   # the overflow is reported as a skip
            kept = self.keep(rows)
        if len(kept) and all_finite(kept):
            return kept
        return not_finite(kept, "frames" if what == "audio" else "tokens", what,
                          descriptors=getattr(self.encoder, "info", {}).get("encoder") == "opensmile")

    def on_gpu(self) -> bool:
        device = getattr(self.encoder, "device", None)
        return device is not None and device.type == "cuda"

    def bad(self, utt: Utterance, err: BadInput, what: str) -> None:
        """Stop with one sentence under ``--on-error fail``; under ``skip`` the caller records it."""
        if self.cfg.on_error == "fail":
            raise EmofuseError(f"{utt.id}: {err.reason} ({utt.audio_path if what == 'audio' else 'transcript'}); "
                               "committed work is kept; fix the input or run with --on-error skip")
