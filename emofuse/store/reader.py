"""The store reader: per-utterance access and bulk reads for training."""

from __future__ import annotations

import functools
import glob
import inspect
import os
import shlex
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..arrays import offsets_from_lengths
from ..errors import StoreError
from .h5io import nonfinite, open_h5, rows_checksum
from .index import DAMAGE, damaged, data_dir, load_index, part_path
from .schema import CHECKSUM, DATA, FRAMES, GRANULARITIES, TOKENS, entry_path, segments_kind

#: rows of one layer read per HDF5 call in ``load`` (then checked while they are in the CPU cache)
READ_BLOCK_BYTES = 4 << 20


class UncheckedStoreWarning(UserWarning):
    """Part files written before checksums existed are read without verification."""


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

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(id, rows (length, L', D))`` per utterance, in order (views, no copy)."""
        for i in range(len(self.ids)):
            yield str(self.ids[i]), self[i]

    def padded(self, max_len: int | None = None, value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """``(x (U, T, L', D), mask (U, T) bool)``: every utterance's rows from position 0, ``value``
        after its end, mask True at real rows. ``T`` is the longest length, or ``max_len`` (longer
        utterances are cut there)."""
        T = int(self.lengths.max()) if max_len is None and len(self) else int(max_len or 0)
        x = np.full((len(self), T) + tuple(self.data.shape[1:]), value, dtype=self.data.dtype)
        mask = np.zeros((len(self), T), dtype=bool)
        for i in range(len(self)):
            n = min(int(self.lengths[i]), T)
            x[i, :n] = self[i][:n]
            mask[i, :n] = True
        return x, mask


def _file_identity(path: str) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns


def _load_stable(path: str, tries: int = 5):
    """The store's index and the identity (real path, inode, size, modification time) of the very
    index file it was read from: a writer may swap the index in while it is read, and a cache keyed
    on the file now at the path would then file this older content under the newer index."""
    for _ in range(tries):
        before = _file_identity(path)
        idx = load_index(path)
        if _file_identity(path) == before:
            return idx, before
    raise StoreError(f"{path} was replaced {tries} times while its index was read (a writer commits "
                     "very often); open it again once the writer has finished")


def _guarded(method):
    """A damaged file met while reading gives one sentence (``StoreError``), not h5py's traceback.
    A call with wrong arguments stays the caller's ``TypeError`` (never reported as damage)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        signature.bind(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except DAMAGE as e:
            raise damaged(getattr(self, "_reading", None) or self.path, e) from None
    return call


class FeatureStore:
    """Read-only view of a feature store (schema v2: the index ``STORE.h5`` and its part files;
    a v1 store, one self-contained file, reads the same way).

    The index is read once at opening: a writer publishing a new index meanwhile does not change
    what this reader sees (parts an index refers to are never modified, and only ``compact``
    deletes parts).

    >>> fs = FeatureStore("iemocap.h5")
    >>> fs.frames("audio", "Ses01F_impro01_F000").shape   # (T, L, D)
    """

    def __init__(self, path: str | os.PathLike, max_open: int = 256, verify: bool = True):
        self.path = os.fspath(path)
        #: check tensors against their checksums and for NaN/Inf as they are read (``False`` only
        #: to measure what the checks cost: ``benchmarks/store_checks.py``)
        self.verify = verify
        if not os.path.exists(self.path):
            pending = glob.glob(data_dir(os.path.abspath(self.path)) + "/*.h5")
            hint = " (an interrupted run left parts: run the same command again to finish)" if pending else ""
            raise StoreError(f"feature store {self.path} does not exist{hint}")
        self._idx, self.index_identity = _load_stable(self.path)
        self.schema_version = self._idx.version
        self.corpus_fingerprint = self._idx.fingerprint
        #: how the corpus was read (kind, root, labels): lets later stages re-read it
        self.corpus_meta = dict(self._idx.meta)
        self._utts = self._idx.table.set_index("id", drop=False)
        self._index: dict[tuple[str, str], dict[str, tuple[int, int, int]]] = {}
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._checked: set[tuple[int, str]] = set()
        self._entries: dict[tuple[int, str, str], dict] = {}
        self._finite: dict[tuple[int, str, str], bool] = {}
        self._warned = False
        #: part files met so far that carry no checksums (written before them): read unverified
        self.unchecked_parts: set[str] = set()
        self._reading: str | None = None
        self._max_open = max_open
        for name in self.streams:
            fp = self.stream_info(name).get("corpus_fingerprint")
            if fp is not None and fp != self.corpus_fingerprint:
                raise StoreError(
                    f"stream {name!r} in {self.path} was computed for another corpus (fingerprint {fp[:12]}, "
                    f"the store's is {self.corpus_fingerprint[:12]}); refusing to mix them"
                )

    # -- description ---------------------------------------------------------------------
    @property
    def utterances(self) -> pd.DataFrame:
        """One row per corpus utterance, indexed by id (label, session, speaker, gender, duration …)."""
        return self._utts.drop(columns=["id"]).copy()

    @property
    def streams(self) -> list[str]:
        return sorted(self._idx.streams)

    @property
    def part_files(self) -> list[str]:
        """Paths of the part files this index refers to."""
        return [part_path(self.path, n) for n in self._idx.parts]

    @property
    def pending_parts(self) -> list[str]:
        """Committed work of an unfinished run that no index lists yet."""
        known = set(self._idx.parts + self._idx.retired)
        return sorted(p for p in glob.glob(data_dir(os.path.abspath(self.path)) + "/*.h5")
                      if os.path.basename(p) not in known)

    def stream_info(self, name: str) -> dict[str, Any]:
        """The stream's attributes (encoder id, fingerprint, layers, dim, frame hop and window …)
        plus ``entries``: utterances per kind (``frames``, ``tokens``, ``segments/word`` …)."""
        if name not in self._idx.streams:
            raise StoreError(f"stream {name!r} is not in {self.path}; it has {self.streams or 'no streams'}")
        info = dict(self._idx.streams[name])
        entries = {}
        for kind in (FRAMES, TOKENS) + tuple(segments_kind(x) for x in GRANULARITIES):
            if (name, kind) in self._idx.tables:
                entries[kind] = len(self._idx.tables[(name, kind)])
        info["entries"] = entries
        info["granularities"] = [x for x in GRANULARITIES if segments_kind(x) in entries]
        return info

    def skipped(self, name: str) -> pd.DataFrame:
        """Utterances a stage skipped for this stream, with the reason (columns id, kind, reason)."""
        if name not in self._idx.streams:
            raise StoreError(f"stream {name!r} is not in {self.path}; it has {self.streams or 'no streams'}")
        rows = sorted(self._idx.skipped.get(name, []))
        return pd.DataFrame({"id": [r[0] for r in rows], "kind": [r[1] for r in rows], "reason": [r[2] for r in rows]},
                            columns=["id", "kind", "reason"])

    def inputs(self, stream: str, kind: str) -> dict[str, str]:
        """``{utt_id: digest of the inputs its entry was computed from}`` ("" where not tracked)."""
        t = self._table(stream, kind)
        return dict(zip(t.ids, t.inputs))

    def has(self, stream: str, kind: str) -> bool:
        return (stream, kind) in self._idx.tables

    def ids(self, stream: str, kind: str = FRAMES) -> list[str]:
        """Ids with entries of ``kind`` in ``stream``, in storage order."""
        return list(self._entry_index(stream, kind))

    def index(self, stream: str, kind: str = FRAMES) -> dict[str, tuple[int, int]]:
        """``{utt_id: (offset, rows)}`` of an entry table, ``offset`` counting rows in storage
        order across parts: sizes without data."""
        out, pos = {}, 0
        for i, (_, _, n) in self._entry_index(stream, kind).items():
            out[i] = (pos, n)
            pos += n
        return out

    @_guarded
    def row_shape(self, stream: str, kind: str = FRAMES) -> tuple[int, int, int]:
        """(layers L, dim D, bytes per value) of an entry table's rows."""
        ds = self._dataset(self._table(stream, kind).part[0], stream, kind, DATA)
        return int(ds.shape[1]), int(ds.shape[2]), int(ds.dtype.itemsize)

    @_guarded
    def column(self, stream: str, kind: str, name: str) -> np.ndarray:
        """A row-aligned array of an entry table, whole, in storage order: small per-row facts
        (``spans``, ``symbols`` of segments; ``strings`` of tokens), not ``data``."""
        if name == DATA:
            raise StoreError(f"{kind} of stream {stream!r} in {self.path}: column() reads small per-row facts, "
                             "not the activations (use load)")
        parts: dict[int, np.ndarray] = {}
        out = []
        for p, r, n in self._entry_index(stream, kind).values():
            if p not in parts:
                f = self._file(p)
                ds = f.get(f"{entry_path(stream, kind)}/{name}")
                if ds is None:
                    raise StoreError(f"{kind} of stream {stream!r} in {self.path} has no column {name!r}")
                parts[p] = ds.asstr()[...] if ds.dtype.kind == "O" else ds[...]
            out.append(parts[p][r:r + n])
        return np.concatenate(out) if out else np.empty(0)

    def layer_ids(self, stream: str, kind: str = FRAMES) -> list[int]:
        """The encoder's numbers of the layers stored, in storage order: ``0..L-1`` unless the
        stream was extracted with ``--layers`` (then e.g. ``[0, 6, 12]``)."""
        kept = self._idx.streams.get(stream, {}).get("layers")
        return [int(l) for l in kept] if kept else list(range(self.row_shape(stream, kind)[0]))

    def _positions(self, stream: str, layers: list[int], n_stored: int) -> list[int]:
        """Storage positions of encoder layers ``layers``; one sentence for a layer not stored."""
        kept = self._idx.streams.get(stream, {}).get("layers")
        if not kept:
            bad = [l for l in layers if not 0 <= l < n_stored]
            if bad:
                raise StoreError(f"layer {bad[0]} does not exist in stream {stream!r} ({n_stored} layers: 0..{n_stored - 1})")
            return layers
        pos = {int(l): k for k, l in enumerate(kept)}
        bad = [l for l in layers if l not in pos]
        if bad:
            raise StoreError(f"layer {bad[0]} of stream {stream!r} was not kept at extraction (--layers): the store "
                             f"holds layers {list(kept)}")
        return [pos[l] for l in layers]

    # -- per utterance -------------------------------------------------------------------
    def _rows(self, stream: str, kind: str, utt_id: str, name: str, as_str: bool = False) -> np.ndarray:
        p, o, n = self._locate(stream, kind, utt_id)
        ds = self._dataset(p, stream, kind, name)
        sums = self._entry_checksums(p, stream, kind, utt_id, o, n)
        rows = ds.asstr()[o:o + n] if as_str else ds[o:o + n]
        if name == DATA:
            for l in range(rows.shape[1]):
                self._check_rows(rows[:, l], sums, l, stream, kind, utt_id, p)
                if self.verify and nonfinite(rows[:, l]):
                    raise self._nonfinite_error(stream, kind, utt_id, l, p)
        return rows

    @_guarded
    def frames(self, stream: str, utt_id: str) -> np.ndarray:
        """Frame activations ``(T, L, D)``."""
        return self._rows(stream, FRAMES, utt_id, DATA)

    @_guarded
    def tokens(self, stream: str, utt_id: str) -> Tokens:
        r = lambda name, s=False: self._rows(stream, TOKENS, utt_id, name, s)  # noqa: E731
        return Tokens(r(DATA), r("strings", True), r("word_ids"), r("offsets"), r("special").astype(bool))

    @_guarded
    def segments(self, stream: str, granularity: str, utt_id: str) -> Segments:
        kind = segments_kind(granularity)
        return Segments(self._rows(stream, kind, utt_id, DATA), self._rows(stream, kind, utt_id, "symbols", True),
                        self._rows(stream, kind, utt_id, "spans"))

    # -- bulk ----------------------------------------------------------------------------
    @_guarded
    def load(self, stream: str, kind: str = FRAMES, ids: Sequence[str] | None = None,
             layers: Sequence[int] | None = None, dtype: Any = None) -> Ragged:
        """Rows of many utterances in a few large sequential reads, verified.

        ``kind``: ``frames``, ``tokens`` or ``segments/<granularity>``; ``ids``: which utterances
        (default: all with entries), returned in the given order; ``layers``: which layers, as the
        encoder numbers them (``layer_ids``; default all stored). Runs of utterances stored next to
        each other in one part are read one layer at a time in blocks of about
        ``READ_BLOCK_BYTES``; each block is checked while it is in the CPU cache: every
        utterance's rows of that layer against the checksum written at commit, and for NaN or
        ±Inf. A mismatch or a non-finite value raises ``StoreError`` naming the stream, the
        utterance and the part file.
        """
        index = self._entry_index(stream, kind)
        if ids is None:
            ids = list(index)
        missing = [i for i in ids if i not in index]
        if missing:
            raise StoreError(
                f"{len(missing)} utterances (e.g. {missing[0]}) have no {kind} in stream {stream!r} of {self.path}"
            )
        L, D, itemsize = self.row_shape(stream, kind)
        lsel = list(range(L)) if layers is None else self._positions(stream, [int(l) for l in layers], L)
        locs = np.array([index[i] for i in ids], dtype=np.int64).reshape(-1, 3)  # part, row, length
        lengths = locs[:, 2].copy()
        ds0 = self._dataset(int(locs[0, 0]) if len(locs) else self._table(stream, kind).part[0], stream, kind, DATA)
        out = np.empty((int(lengths.sum()), len(lsel), D), dtype=dtype or ds0.dtype)
        dest = offsets_from_lengths(lengths)
        # Read part by part in storage order, one block per run of adjacent utterances.
        order = np.lexsort((locs[:, 1], locs[:, 0]))
        max_rows = max(1, READ_BLOCK_BYTES // max(1, D * itemsize))
        scratch = np.empty(max_rows * D, ds0.dtype)  # one block buffer, reused: stays in the CPU cache
        run: list[int] = []
        for j in list(order) + [None]:
            if j is not None and run and locs[j, 0] == locs[run[-1], 0] and \
                    locs[j, 1] == locs[run[-1], 1] + locs[run[-1], 2] and \
                    locs[j, 1] + locs[j, 2] - locs[run[0], 1] <= max_rows:
                run.append(j)
                continue
            if run:
                self._read_run(stream, kind, [ids[r] for r in run], locs[run], dest[run], lsel, out, scratch)
            run = [j] if j is not None else []
        return Ragged(np.asarray(ids), out, dest, lengths)

    def _read_run(self, stream: str, kind: str, uids: list[str], locs: np.ndarray, dest: np.ndarray,
                  lsel: list[int], out: np.ndarray, scratch: np.ndarray) -> None:
        """Rows ``locs`` (adjacent in one part) of layers ``lsel`` into ``out`` at rows ``dest``:
        one HDF5 read per layer into a block, checked, then copied."""
        p = int(locs[0, 0])
        ds = self._dataset(p, stream, kind, DATA)
        a, b = int(locs[0, 1]), int(locs[-1, 1] + locs[-1, 2])
        sums = [self._entry_checksums(p, stream, kind, u, int(r), int(n)) for u, (_, r, n) in zip(uids, locs)]
        if b <= a:
            return
        D = ds.shape[2]
        block = (scratch[:(b - a) * D] if len(scratch) >= (b - a) * D and scratch.dtype == ds.dtype
                 else np.empty((b - a) * D, ds.dtype)).reshape(b - a, D)  # one utterance may exceed a block
        target = block.reshape(b - a, 1, D)  # a rank-3 selection: HDF5's fast path
        in_order = bool(np.all(dest[1:] == dest[:-1] + locs[:-1, 2]))  # out rows back to back as stored
        # Rows whose checksums match are the bytes the writer wrote; where it found them all finite
        # (``finite`` attribute) they are finite: the NaN/Inf test is for the other parts.
        check_nan = self.verify and not (self._finite.get((p, stream, kind)) and all(cs is not None for cs in sums))
        for k, l in enumerate(lsel):
            ds.read_direct(target, np.s_[a:b, l:l + 1, :], np.s_[:, :, :])
            for u, (_, r, n), cs in zip(uids, locs, sums):
                self._check_rows(block[r - a:r - a + n], cs, l, stream, kind, u, p)
            if check_nan and nonfinite(block):
                for u, (_, r, n) in zip(uids, locs):
                    if nonfinite(block[r - a:r - a + n]):
                        raise self._nonfinite_error(stream, kind, u, l, p)
            if in_order:
                out[dest[0]:dest[0] + (b - a), k] = block
            else:
                for d, (_, r, n) in zip(dest, locs):
                    out[d:d + n, k] = block[r - a:r - a + n]

    # -- integrity -----------------------------------------------------------------------
    def _part_name(self, p: int) -> str:
        return part_path(self.path, self._idx.parts[p])

    def _part_entries(self, p: int, stream: str, kind: str) -> dict[tuple[str, int], tuple[int, Any]]:
        """What part ``p`` itself says it holds for ``kind`` of ``stream``: ``{(utt_id, first
        row): (rows, checksums (L,) or None)}`` (None: a part written before checksums)."""
        key = (p, stream, kind)
        got = self._entries.get(key)
        if got is None:
            g = self._file(p).get(entry_path(stream, kind))
            limit = self._file(p).id.get_filesize()
            try:
                if g is None or any(g[c].shape[0] > limit for c in ("ids", "offset", "length")):
                    raise KeyError(entry_path(stream, kind))
                ids, offs, lens = g["ids"].asstr()[...], g["offset"][...], g["length"][...]
                sums = g[CHECKSUM][...] if CHECKSUM in g else None
                self._finite[key] = bool(g[DATA].attrs.get("finite", False)) if DATA in g else False
            except (KeyError, OSError, ValueError, TypeError, UnicodeDecodeError) as e:
                raise StoreError(f"part file {self._part_name(p)} of {self.path} is damaged: its table of "
                                 f"{entry_path(stream, kind)} cannot be read ({type(e).__name__}: {e})") from None
            if not (len(ids) == len(offs) == len(lens)) or (sums is not None and len(sums) != len(ids)):
                raise StoreError(f"part file {self._part_name(p)} of {self.path} is damaged: the columns of its table "
                                 f"of {entry_path(stream, kind)} have different lengths")
            if sums is None:
                self._warn_unchecked(self._part_name(p))
            got = {(str(i), int(o)): (int(n), None if sums is None else sums[k])
                   for k, (i, o, n) in enumerate(zip(ids, offs, lens))}
            self._entries[key] = got
        return got

    def _warn_unchecked(self, part: str) -> None:
        self.unchecked_parts.add(part)
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.path} has part files written before checksums (e.g. {part}): they are read "
                          f"unverified; `emofuse store compact {self.path}` rewrites the store with checksums",
                          UncheckedStoreWarning, stacklevel=5)

    def _entry_checksums(self, p: int, stream: str, kind: str, utt_id: str, row: int, n: int):
        """The checksums (one per stored layer) of an utterance's rows, after checking that its part
        file holds exactly the rows the index gives it (a damaged index reads nothing wrong)."""
        got = self._part_entries(p, stream, kind).get((utt_id, row))
        if got is None or got[0] != n:
            raise StoreError(f"{self.path} is damaged: its index places {kind} of utterance {utt_id!r} (stream "
                             f"{stream!r}) at rows {row}..{row + n} of part file {self._part_name(p)}, which holds "
                             "no such entry; restore the store from a copy or re-extract")
        return got[1]

    def _nonfinite_error(self, stream: str, kind: str, utt_id: str, l: int, p: int) -> StoreError:
        fp16 = self._idx.streams[stream].get("store_dtype") == "float16"   # inf is where float16 overflowed
        return StoreError(f"{kind} of utterance {utt_id!r} in stream {stream!r} of {self.path} hold NaN or infinite "
                          f"values (layer position {l}, part file {self._part_name(p)}); they cannot be used for "
                          "training: re-extract this utterance" + (" into a new store with --store-dtype float32 "
                          "(this one keeps float16, whose largest value is 65504)" if fp16 else "")
                          + ", or restore the store from a copy")

    def _check_rows(self, rows: np.ndarray, sums, l: int, stream: str, kind: str, utt_id: str, p: int) -> None:
        if sums is None or not self.verify:
            return
        if l >= len(sums) or rows_checksum(rows) != int(sums[l]):
            raise StoreError(f"{kind} of utterance {utt_id!r} in stream {stream!r} of {self.path} are corrupt: layer "
                             f"position {l} does not match the checksum written with it (part file "
                             f"{self._part_name(p)}); restore the store from a copy or re-extract it")

    # -- helpers -------------------------------------------------------------------------
    def _table(self, stream: str, kind: str):
        t = self._idx.tables.get((stream, kind))
        if t is None:
            if stream not in self._idx.streams:
                raise StoreError(f"stream {stream!r} is not in {self.path}; it has {self.streams or 'no streams'}")
            have = list(self.stream_info(stream)["entries"])
            hint = (f"; add them with: align-segments --store {shlex.quote(self.path)} --stream {shlex.quote(stream)} "
                    f"--granularities {kind.split('/', 1)[1]}" if kind.startswith("segments/") else "")
            raise StoreError(f"stream {stream!r} of {self.path} has no {kind}; it has {have}{hint}")
        return t

    def _entry_index(self, stream: str, kind: str) -> dict[str, tuple[int, int, int]]:
        key = (stream, kind)
        if key not in self._index:
            t = self._table(stream, kind)
            self._index[key] = {i: (p, r, n) for i, p, r, n in zip(t.ids, t.part, t.row, t.length)}
        return self._index[key]

    def _file(self, p: int):
        f = self._files.pop(p, None)
        self._reading = part_path(self.path, self._idx.parts[p])  # named if h5py fails on it
        if f is None:
            path = self._reading
            if not os.path.exists(path):
                raise self._missing_part(path)
            try:
                f = open_h5(path, "r", verify=self.verify)
            except FileNotFoundError:
                raise self._missing_part(path) from None
            want = self._idx.seals.get(self._idx.parts[p])
            if self.verify and want and f.emofuse_sealed != want:
                f.close()
                raise StoreError(f"{self.path} is damaged: its part file {path} is not the one its index was built "
                                 "on (the part's seal differs from the one the index recorded), so the index and "
                                 "its folder come from two different stores or copies; copy a store's .h5 and its "
                                 ".h5.d folder together, restore both from a copy, or re-extract")
            if self.verify and not f.emofuse_sealed and self._idx.parts[p] != "":
                self._warn_unchecked(path)
        self._files[p] = f
        while len(self._files) > self._max_open:
            self._files.popitem(last=False)[1].close()
        return f

    def _missing_part(self, path: str) -> StoreError:
        try:
            now = load_index(self.path).parts
        except (StoreError, OSError):
            now = None
        if now is not None and os.path.basename(path) not in now:   # a compact (or merge) retired it
            return StoreError(f"{self.path} was rewritten (compacted) since this reader opened it: its part file "
                              f"{path} is gone; open the store again (nothing is damaged)")
        return StoreError(f"{self.path} refers to the part file {path}, which is missing: the store's folder "
                          f"{os.path.basename(data_dir(self.path))}/ must stay beside it (copy or move both)")

    def _dataset(self, p: int, stream: str, kind: str, name: str):
        f = self._file(p)
        ds = f.get(f"{entry_path(stream, kind)}/{name}")
        if ds is None:
            raise StoreError(f"part file {f.filename} of {self.path} has no {entry_path(stream, kind)}/{name}, "
                             "which the index says it holds: the store is damaged")
        key = (p, f"{stream}/{kind}/{name}")
        if key not in self._checked:  # every row the index gives this part must exist in it
            end = self._part_ends(stream, kind).get(p, 0)
            if end > ds.shape[0]:
                raise StoreError(f"{self.path} is damaged: its index asks rows up to {end} of "
                                 f"{f.filename}:{ds.name}, which holds {ds.shape[0]}")
            self._checked.add(key)
        return ds

    def _part_ends(self, stream: str, kind: str) -> dict[int, int]:
        """Per part, the end of the last row the index uses there."""
        key = ("ends", stream, kind)
        if key not in self._index:
            t = self._table(stream, kind)
            part, end = np.asarray(t.part, np.int64), np.asarray(t.row, np.int64) + np.asarray(t.length, np.int64)
            ends = np.zeros(len(self._idx.parts), np.int64)
            np.maximum.at(ends, part, end)
            self._index[key] = {int(k): int(e) for k, e in enumerate(ends)}
        return self._index[key]

    def _locate(self, stream: str, kind: str, utt_id: str) -> tuple[int, int, int]:
        index = self._entry_index(stream, kind)
        if utt_id not in index:
            raise StoreError(f"utterance {utt_id!r} has no {kind} in stream {stream!r} of {self.path}")
        return index[utt_id]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __repr__(self) -> str:
        """One line per stream: encoder, layers x width, stored dtype, utterances per kind."""
        lines = [f"FeatureStore({self.path!r}: schema v{self.schema_version}, {len(self._utts)} utterances, "
                 f"labels {dict(sorted(self._utts['label'].value_counts().items()))}, "
                 f"{self._utts['session'].nunique()} sessions, corpus {self.corpus_fingerprint[:12]})"]
        for name in self.streams:
            info = self.stream_info(name)
            layers = info.get("layers") or info.get("num_layers", "?")
            lw = f"layers {layers}" if isinstance(layers, list) else f"{layers} layers"
            entries = ", ".join(f"{k} {v}" for k, v in info["entries"].items())
            lines.append(f"  {name}: {info.get('encoder_id', '?')}"
                         f"{' (UNTRAINED)' if info.get('untrained') else ''}, {lw} x {info.get('dim', '?')}, "
                         f"{info.get('store_dtype', '?')}; {entries or 'no entries'}")
        return "\n".join(lines)

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
