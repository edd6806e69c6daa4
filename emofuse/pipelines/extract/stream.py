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


def not_finite(kept: np.ndarray, rows: str, what: str, compute: str = "float32", descriptors: bool = False,
               remedy: str = "--store-dtype float32 keeps them",
               compute_remedy: str = "--dtype float32 avoids it") -> BadInput:
    """Why an utterance whose kept ``rows`` (frames, tokens; ``kept``, in the store's dtype) came
    out empty or not finite is skipped: each cause in its own words, since their remedies differ.
    ``compute``: the dtype the encoder computed in (``--dtype``); ``descriptors``: the encoder is
    openSMILE; ``remedy``: what keeps values beyond a float16 store; ``compute_remedy``: what
    avoids an overflow inside the encoder."""
    if not len(kept):
        return BadInput(f"the encoder produced no {rows[:-1]} for this {what}")
    bad = int((~np.isfinite(kept)).sum())   # the error path only: its cost does not matter here
    nan = int(np.isnan(kept).sum())
    values = (f"{nan} of {kept.size} values that are not numbers (NaN)" if nan == bad else
              f"{bad} of {kept.size} values that are not finite (NaN or infinite)")
    if descriptors and nan:   # openSMILE's descriptors of audio shorter than their window: every value NaN
        return BadInput(f"the encoder produced {values} for this {what} (openSMILE: audio too short or too "
                        f"degenerate to describe)")
    if compute == "float16":   # its own range is float16's: beyond it, inf inside the encoder, whatever the store
        return BadInput(f"the encoder produced {values} for this {what}: an overflow inside it, computing in "
                        f"float16 ({compute_remedy})")
    if not nan and np.dtype(kept.dtype).itemsize < 4:   # finite in float32 or bfloat16, beyond a float16 store
        return BadInput(f"the encoder produced values beyond the store's dtype ({np.dtype(kept.dtype).name}: largest "
                        f"{float(np.finfo(kept.dtype).max):g}) for this {what}, infinite once stored ({remedy})")
    if compute == "bfloat16":
        return BadInput(f"the encoder produced {values} for this {what}, computing in bfloat16 (its coarse "
                        f"rounding can; {compute_remedy})")
    return BadInput(f"the encoder produced {values} for this {what}, computing in float32 (its checkpoint, or "
                    f"this input, is damaged or out of what it takes)")


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
        return not_finite(kept, "frames" if what == "audio" else "tokens", what, compute=self.cfg.dtype,
                          descriptors=getattr(self.encoder, "info", {}).get("encoder") == "opensmile")

    def on_gpu(self) -> bool:
        device = getattr(self.encoder, "device", None)
        return device is not None and device.type == "cuda"

    def bad(self, utt: Utterance, err: BadInput, what: str) -> None:
        """Stop with one sentence under ``--on-error fail``; under ``skip`` the caller records it."""
        if self.cfg.on_error == "fail":
            raise EmofuseError(f"{utt.id}: {err.reason} ({utt.audio_path if what == 'audio' else 'transcript'}); "
                               "committed work is kept; fix the input or run with --on-error skip")
