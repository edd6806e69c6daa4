"""The store reader: per-utterance access and bulk reads for training."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..errors import StoreError
from .h5io import check_header, get_info, open_h5, read_index, read_table
from .schema import DATA, FRAMES, GRANULARITIES, TOKENS, entry_path, segments_kind


class Tokens(NamedTuple):
    """Text-token activations of one utterance."""

    values: np.ndarray     # (N, L, D)
    strings: np.ndarray    # (N,) token strings
    word_ids: np.ndarray   # (N,) int32, -1 for special tokens
    offsets: np.ndarray    # (N, 2) int32 character offsets [start, end) in the transcript
    special: np.ndarray    # (N,) bool


class Segments(NamedTuple):
    """Pooled segment activations of one utterance at one granularity."""

    values: np.ndarray     # (K, L, D)
    symbols: np.ndarray    # (K,) segment symbols
    spans: np.ndarray      # (K, 2) int32 encoder-frame spans [start, end)


@dataclass(frozen=True)
class Ragged:
    """Many utterances' rows back to back: utterance ``i`` is ``data[offsets[i]:offsets[i]+lengths[i]]``."""

    ids: np.ndarray        # (U,)
    data: np.ndarray       # (sum lengths, L', D)
    offsets: np.ndarray    # (U,) int64
    lengths: np.ndarray    # (U,) int64

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        o = self.offsets[i]
        return self.data[o:o + self.lengths[i]]


class FeatureStore:
    """Read-only view of a feature store.

    >>> fs = FeatureStore("iemocap.h5")
    >>> fs.frames("audio", "Ses01F_impro01_F000").shape   # (T, L, D)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            pending = glob.glob(self.path + ".parts/*.h5")
            hint = " (an interrupted run left parts: run the same command again to finish)" if pending else ""
            raise StoreError(f"feature store {self.path} does not exist{hint}")
        self._f = open_h5(self.path, "r")
        try:
            check_header(self._f, self.path)
            self.corpus_fingerprint = str(self._f.attrs["corpus_fingerprint"])
            #: how the corpus was read (kind, root, labels): lets later stages re-read it
            self.corpus_meta = {k[len("corpus_"):]: str(v) for k, v in self._f.attrs.items()
                                if k.startswith("corpus_") and k != "corpus_fingerprint"}
            self._utts = read_table(self._f["utterances"]).set_index("id", drop=False)
            self._index: dict[str, dict[str, tuple[int, int]]] = {}
            for name in self.streams:
                fp = self.stream_info(name).get("corpus_fingerprint")
                if fp is not None and fp != self.corpus_fingerprint:
                    raise StoreError(
                        f"stream {name!r} in {self.path} was computed for another corpus (fingerprint {fp[:12]}, "
                        f"the store's is {self.corpus_fingerprint[:12]}); refusing to mix them"
                    )
        except BaseException:
            self._f.close()
            raise

    # -- description ---------------------------------------------------------------------
    @property
    def utterances(self) -> pd.DataFrame:
        """One row per corpus utterance, indexed by id (label, session, speaker, gender, duration …)."""
        return self._utts.drop(columns=["id"]).copy()

    @property
    def streams(self) -> list[str]:
        return sorted(self._f.get("streams", {}).keys())

    @property
    def pending_parts(self) -> list[str]:
        """Committed work of an unfinished run, not yet merged into this file."""
        return sorted(glob.glob(self.path + ".parts/*.h5"))

    def stream_info(self, name: str) -> dict[str, Any]:
        """The stream's attributes (encoder id, fingerprint, layers, dim, frame hop and window …)
        plus ``entries``: utterances per kind (``frames``, ``tokens``, ``segments/word`` …)."""
        g = self._stream_group(name)
        info = get_info(g)
        entries = {}
        for kind in (FRAMES, TOKENS) + tuple(segments_kind(x) for x in GRANULARITIES):
            if kind in g:
                entries[kind] = int(g[kind]["ids"].shape[0])
        info["entries"] = entries
        info["granularities"] = [x for x in GRANULARITIES if segments_kind(x) in entries]
        return info

    def skipped(self, name: str) -> pd.DataFrame:
        """Utterances a stage skipped for this stream, with the reason (columns id, kind, reason)."""
        g = self._stream_group(name).get("skipped")
        if g is None:
            return pd.DataFrame(columns=["id", "kind", "reason"])
        return pd.DataFrame({"id": g["ids"].asstr()[...], "kind": g["kind"].asstr()[...],
                             "reason": g["reason"].asstr()[...]})

    def has(self, stream: str, kind: str) -> bool:
        return stream in self.streams and kind in self._f[f"streams/{stream}"]

    def ids(self, stream: str, kind: str = FRAMES) -> list[str]:
        """Ids with entries of ``kind`` in ``stream``, in storage order."""
        return list(self._entry_index(stream, kind))

    def index(self, stream: str, kind: str = FRAMES) -> dict[str, tuple[int, int]]:
        """``{utt_id: (offset, rows)}`` of an entry table (read once, cached): sizes without data."""
        return dict(self._entry_index(stream, kind))

    def row_shape(self, stream: str, kind: str = FRAMES) -> tuple[int, int, int]:
        """(layers L, dim D, bytes per value) of an entry table's rows."""
        self._entry_index(stream, kind)
        ds = self._f[entry_path(stream, kind)][DATA]
        return int(ds.shape[1]), int(ds.shape[2]), int(ds.dtype.itemsize)

    def column(self, stream: str, kind: str, name: str) -> np.ndarray:
        """A row-aligned array of an entry table, whole, in storage order: small per-row facts
        (``spans``, ``symbols`` of segments; ``strings`` of tokens), not ``data``."""
        self._entry_index(stream, kind)
        g = self._f[entry_path(stream, kind)]
        if name == DATA or name not in g:
            raise StoreError(f"{kind} of stream {stream!r} in {self.path} has no column {name!r}")
        ds = g[name]
        return ds.asstr()[...] if ds.dtype.kind == "O" else ds[...]

    # -- per utterance -------------------------------------------------------------------
    def frames(self, stream: str, utt_id: str) -> np.ndarray:
        """Frame activations ``(T, L, D)``."""
        g, (o, n) = self._locate(stream, FRAMES, utt_id)
        return g[DATA][o:o + n]

    def tokens(self, stream: str, utt_id: str) -> Tokens:
        g, (o, n) = self._locate(stream, TOKENS, utt_id)
        return Tokens(g[DATA][o:o + n], g["strings"].asstr()[o:o + n], g["word_ids"][o:o + n],
                      g["offsets"][o:o + n], g["special"][o:o + n].astype(bool))

    def segments(self, stream: str, granularity: str, utt_id: str) -> Segments:
        g, (o, n) = self._locate(stream, segments_kind(granularity), utt_id)
        return Segments(g[DATA][o:o + n], g["symbols"].asstr()[o:o + n], g["spans"][o:o + n])

    # -- bulk ----------------------------------------------------------------------------
    def load(self, stream: str, kind: str = FRAMES, ids: Sequence[str] | None = None,
             layers: Sequence[int] | None = None, dtype: Any = None) -> Ragged:
        """Rows of many utterances in a few large sequential reads.

        ``kind``: ``frames``, ``tokens`` or ``segments/<granularity>``; ``ids``: which utterances
        (default: all with entries), returned in the given order; ``layers``: which layers
        (default all). Runs of utterances stored next to each other are read in one call.
        """
        index = self._entry_index(stream, kind)
        if ids is None:
            ids = list(index)
        missing = [i for i in ids if i not in index]
        if missing:
            raise StoreError(
                f"{len(missing)} utterances (e.g. {missing[0]}) have no {kind} in stream {stream!r} of {self.path}"
            )
        ds = self._f[entry_path(stream, kind)][DATA]
        n_layers = ds.shape[1]
        lsel = list(range(n_layers)) if layers is None else [int(l) for l in layers]
        for l in lsel:
            if not 0 <= l < n_layers:
                raise StoreError(f"layer {l} does not exist in stream {stream!r} ({n_layers} layers: 0..{n_layers - 1})")
        spans = np.array([index[i] for i in ids], dtype=np.int64).reshape(-1, 2)
        lengths = spans[:, 1].copy()
        out = np.empty((int(lengths.sum()), len(lsel)) + ds.shape[2:], dtype=dtype or ds.dtype)
        dest = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # Read in storage order, one call per run of adjacent utterances.
        order = np.argsort(spans[:, 0], kind="stable")
        contiguous = lsel == list(range(lsel[0], lsel[-1] + 1)) if lsel else True
        run: list[int] = []
        for j in list(order) + [None]:
            if j is not None and run and spans[j, 0] == spans[run[-1], 0] + spans[run[-1], 1] and \
                    sum(spans[r, 1] for r in run) < (1 << 16):
                run.append(j)
                continue
            if run:
                a = int(spans[run[0], 0])
                b = int(spans[run[-1], 0] + spans[run[-1], 1])
                if contiguous:
                    block = ds[a:b, lsel[0]:lsel[-1] + 1]
                else:
                    block = np.stack([ds[a:b, l] for l in lsel], axis=1)
                for r in run:
                    src = int(spans[r, 0]) - a
                    out[dest[r]:dest[r] + lengths[r]] = block[src:src + lengths[r]]
            run = [j] if j is not None else []
        return Ragged(np.asarray(ids), out, dest, lengths)

    # -- helpers -------------------------------------------------------------------------
    def _stream_group(self, name: str):
        g = self._f.get(f"streams/{name}")
        if g is None:
            raise StoreError(f"stream {name!r} is not in {self.path}; it has {self.streams or 'no streams'}")
        return g

    def _entry_index(self, stream: str, kind: str) -> dict[str, tuple[int, int]]:
        key = f"{stream}/{kind}"
        if key not in self._index:
            g = self._stream_group(stream).get(kind)
            if g is None:
                have = list(self.stream_info(stream)["entries"])
                hint = " (run align-segments to add segments)" if kind.startswith("segments") else ""
                raise StoreError(f"stream {stream!r} of {self.path} has no {kind}; it has {have}{hint}")
            ids, offs, lens = read_index(g)
            self._index[key] = {i: (int(o), int(n)) for i, o, n in zip(ids, offs, lens)}
        return self._index[key]

    def _locate(self, stream: str, kind: str, utt_id: str):
        index = self._entry_index(stream, kind)
        if utt_id not in index:
            raise StoreError(f"utterance {utt_id!r} has no {kind} in stream {stream!r} of {self.path}")
        return self._f[entry_path(stream, kind)], index[utt_id]

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
