"""Low-level HDF5 helpers shared by the writer and the reader (the only h5py users)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd
import xxhash

from ..arrays import offsets_from_lengths
from ..cores import usable_cores
from ..errors import StoreError
from .schema import CHECKSUM, CHECKSUM_ALGORITHM, DATA, INDEX_NAMES, PART_TYPE, SCHEMA_VERSION, STORE_TYPE, chunk_rows

STR = h5py.string_dtype("utf-8")


#: every store file begins with an HDF5 user block of this size holding its seal (``_write_seal``)
USERBLOCK = 4096
SEAL_MAGIC = b"EMOFUSE-SEAL/1\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: the user block of files too big for a 4 KiB seal (``compact``'s one part)
BIG_USERBLOCK = 1 << 20


def open_h5(path: str, mode: str = "r", verify: bool = True) -> h5py.File:
    """Open a store file. For reading, its seal is verified first (``check_file_seal``), so HDF5
    never parses damaged metadata (HDF5 2.0 can segfault on it); ``f.emofuse_sealed`` is the
    seal's digest, or False for a file written before seals existed (read unverified) or opened
    unverified."""
    if mode == "r" and os.path.isdir(path):
        raise StoreError(f"{path} is a folder; expected a feature store file (STORE.h5, beside its folder STORE.h5.d)")
    sealed = check_file_seal(path) if verify and mode == "r" and os.path.isfile(path) else False
    try:
        f = h5py.File(path, mode, locking=False)
    except OSError as e:
        if mode != "r":
            raise  # a write error: the writer names it (disk full, read-only, permission)
        raise StoreError(f"{path} could not be opened as an HDF5 feature store ({e})") from None
    f.emofuse_sealed = sealed
    return f


def _tensor_ranges(f: h5py.File) -> list[list[int]]:
    """Byte ranges of a file's tensor chunks (datasets named ``data``), merged: what the seal
    leaves to the per-utterance checksums."""
    spans = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] == DATA and obj.chunks:
            if hasattr(obj.id, "chunk_iter"):   # one walk of the chunk index (HDF5 >= 1.14), not one per chunk
                obj.id.chunk_iter(lambda info: spans.append((int(info.byte_offset), int(info.byte_offset + info.size))))
                return
            for c in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(c)
                spans.append((int(info.byte_offset), int(info.byte_offset + info.size)))
    f.visititems(visit)
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def _seal_digest(fh, size: int, skip: list[list[int]], start: int) -> str:
    """XXH3-128 of a file's bytes from ``start`` (after the user block), but the ``skip`` ranges."""
    h = xxhash.xxh3_128()
    pos = start
    for a, b in skip + [[size, size]]:
        fh.seek(pos)
        left = a - pos
        while left > 0:
            block = fh.read(min(left, 4 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
        pos = max(pos, b)
    return h.hexdigest()


def _write_seal(fh, skip: list[list[int]], userblock: int = USERBLOCK) -> None:
    """Write the seal into the user block of a closed HDF5 file: its size, the tensor ranges and
    the digest of every other byte (metadata and small tables)."""
    size = os.fstat(fh.fileno()).st_size

    def header(skip):
        head = {"size": size, "userblock": userblock, "skip": skip,
                "xxh3_128": _seal_digest(fh, size, skip, userblock)}
        return SEAL_MAGIC + json.dumps(head, separators=(",", ":")).encode() + b"\n"
    raw = header(skip)
    if len(raw) > userblock:  # too many tensor ranges to list: seal every byte instead
        raw = header([])
    fh.seek(0)
    fh.write(raw.ljust(userblock, b"\0"))


def check_file_seal(path: str) -> str | bool:
    """Verify a store file's seal before HDF5 reads it: the seal's digest (a non-empty string)
    when sealed and intact, ``False`` for a file written before seals (it starts with HDF5's
    signature), ``StoreError`` otherwise."""
    def bad(why: str) -> StoreError:
        return StoreError(f"{path} is damaged ({why}); restore the store from a copy, or re-extract")
    with open(path, "rb") as fh:
        first = fh.read(USERBLOCK)
        if first.startswith(HDF5_SIGNATURE):
            return False
        if not first.startswith(SEAL_MAGIC):
            raise StoreError(f"{path} is not an emofuse feature store, or it is damaged: it begins with neither an "
                             "emofuse seal nor an HDF5 signature")
        if b"\n" not in first[len(SEAL_MAGIC):]:
            first += fh.read(1 << 20)  # a big file's seal lists more ranges
        try:
            head = json.loads(first[len(SEAL_MAGIC):].split(b"\n", 1)[0])
            size, userblock = int(head["size"]), int(head["userblock"])
            skip, want = [[int(a), int(b)] for a, b in head["skip"]], str(head["xxh3_128"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise bad("its seal cannot be read") from None
        actual = os.fstat(fh.fileno()).st_size
        if actual != size:
            raise bad(f"it holds {actual} bytes, its seal says {size}: it was truncated or extended")
        if userblock not in (USERBLOCK, BIG_USERBLOCK) or skip != sorted(skip) or \
                any(not (userblock <= a <= b <= size) for a, b in skip):
            raise bad("its seal lists impossible byte ranges")
        if _seal_digest(fh, size, skip, userblock) != want:
            raise bad("its metadata bytes do not match the seal written with them")
    return want


def seal_of(path: str) -> str:
    """The digest of a store file's intact seal ("" for a file without one, damaged or missing):
    what an index records of each of its parts (``check_file_seal``, which reads only the
    file's non-tensor bytes)."""
    try:
        return check_file_seal(path) or ""
    except (StoreError, OSError):
        return ""


def reseal(path: str) -> None:
    """Seal a store file again after editing it with h5py (tools and tests only)."""
    with h5py.File(path, "r", locking=False) as f:
        skip = _tensor_ranges(f)
        userblock = f.userblock_size
    with open(path, "r+b") as fh:
        _write_seal(fh, skip, userblock)


class _WriteThrough(io.RawIOBase):
    """The file HDF5 writes a new store file through (h5py's file-object driver). HDF5 2.0 does
    not survive a failed write (a full disk made its close, or the interpreter's exit, segfault),
    so this never tells it: the first OS error (ENOSPC, EFBIG, EIO …) is kept, later writes are
    dropped, and ``writing_h5`` raises that error once HDF5 has closed the file in peace."""

    def __init__(self, path: str):
        self.file = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def readinto(self, b) -> int:
        return self.file.readinto(b)

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self.file.write(view[done:])
            except OSError as e:
                self.error = e
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.file.truncate(size)
        except OSError as e:
            self.error = self.error or e
            return size if size is not None else self.file.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.file.close()
        super().close()


@contextlib.contextmanager
def writing_h5(path: str, userblock: int = USERBLOCK, durable: bool = True):
    """A new HDF5 file at ``path``, open for writing, sealed, closed and (``durable``) fsynced on
    the way out (without ``durable`` the caller fsyncs it later, e.g. ``StoreWriter.publish``); an OS
    error while writing it (disk full, file size limit, I/O error) is raised as that ``OSError``
    after HDF5 has closed the file (see ``_WriteThrough``). The caller removes ``path`` then."""
    raw = _WriteThrough(path)
    try:
        f = h5py.File(raw, "w", userblock_size=userblock)
        try:
            yield f
            f.flush()
            skip = _tensor_ranges(f)
        finally:
            f.close()
        if raw.error is None:
            try:
                _write_seal(raw.file, skip, userblock)
                if durable:
                    os.fsync(raw.file.fileno())
            except OSError as e:
                raw.error = e
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        if raw.error is not None:  # HDF5 stumbled on what it could not write: the cause is the OS error
            raise raw.error from None
        raise
    finally:
        raw.close()
    if raw.error is not None:
        raise raw.error


def check_header(f: h5py.File, path: str, types: tuple[str, ...] = (STORE_TYPE,),
                 versions: tuple[int, ...] = (SCHEMA_VERSION,)) -> int:
    """Check a file's ``type`` and ``schema_version``; return the version."""
    kind = f.attrs.get("type")
    if kind not in types:
        raise StoreError(f"{path} is not an emofuse feature store (type attribute {kind!r}, expected {types[0]!r})")
    if "schema_version" not in f.attrs:
        raise StoreError(f"{path} has no schema_version attribute: it is damaged; restore it from a copy, or re-extract")
    version = int(f.attrs["schema_version"])
    if version not in versions:
        raise StoreError(
            f"{path} uses store schema v{version} (written by emofuse {f.attrs.get('emofuse_version', '?')}); "
            f"this emofuse reads schema v{' and v'.join(str(v) for v in versions)}: re-extract, or use the "
            "emofuse version that wrote it"
        )
    return version


def write_table(group: h5py.Group, table: pd.DataFrame) -> None:
    """Columns of a DataFrame as datasets (strings utf-8, numbers as they are)."""
    for col in table.columns:
        values = table[col].to_numpy()
        if values.dtype.kind in "OUS" or str(table[col].dtype) in ("string", "str"):
            group.create_dataset(col, data=np.array([str(v) for v in values], dtype=object), dtype=STR)
        else:
            group.create_dataset(col, data=values)
    group.attrs["columns"] = json.dumps(list(table.columns))


def read_table(group: h5py.Group) -> pd.DataFrame:
    cols = json.loads(group.attrs["columns"])
    data = {}
    for c in cols:
        ds = group[c]
        data[c] = ds.asstr()[...] if h5py.check_string_dtype(ds.dtype) else ds[...]
    return pd.DataFrame(data, columns=cols)


def set_info(group: h5py.Group, info: Mapping[str, Any]) -> None:
    """Stream attributes: the full info as JSON, scalars also as plain attributes for h5dump."""
    group.attrs["info"] = json.dumps(dict(info), sort_keys=True)
    for k, v in info.items():
        if isinstance(v, (str, int, float, bool, np.integer, np.floating)) and v is not None:
            group.attrs[k] = v


def get_info(group: h5py.Group) -> dict[str, Any]:
    return json.loads(group.attrs["info"]) if "info" in group.attrs else {}


def nonfinite(a: np.ndarray) -> bool:
    """Whether a float array holds NaN or ±Inf, at memory speed and without a temporary array.
    A float is non-finite when its exponent bits are all ones: as unsigned integers the negative
    ones are the largest values (≥ 0xFC00 for float16), as signed integers the positive ones are
    (≥ 0x7C00), so two max-reductions of the bits decide it."""
    if a.dtype.kind != "f" or not a.size:
        return False
    if a.dtype.itemsize not in (2, 4, 8) or not a.flags.c_contiguous:
        return not bool(np.isfinite(a).all())
    bits = 8 * a.dtype.itemsize
    mant = {16: 10, 32: 23, 64: 52}[bits]
    exp_ones = ((1 << (bits - 1 - mant)) - 1) << mant          # 0x7C00 for float16
    u = a.view(f"u{a.dtype.itemsize}")
    i = a.view(f"i{a.dtype.itemsize}")
    return bool(int(u.max()) >= (1 << (bits - 1)) | exp_ones or int(i.max()) >= exp_ones)


def rows_checksum(rows: np.ndarray) -> int:
    """Checksum of one utterance's rows of one layer (a C-contiguous ``(n, D)`` array): XXH3-64
    of its little-endian bytes (~10 GB/s, so verifying on read costs little beside HDF5)."""
    if sys.byteorder != "little":
        rows = rows.astype(rows.dtype.newbyteorder("<"))
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(rows))


def _layer_parts(parts: list[np.ndarray]) -> tuple[list[np.ndarray], np.dtype]:
    """``parts`` as arrays of rows ``(T_u, L, D)`` of one ``(L, D)`` shape (else ``ValueError``), and
    the dtype of their rows back to back."""
    parts = [np.asarray(p) for p in parts]
    tail = parts[0].shape[1:]
    if any(p.ndim != 3 or p.shape[1:] != tail for p in parts):
        raise ValueError(f"rows of one entry table must share their (layers, dim) shape, found "
                         f"{sorted({p.shape[1:] for p in parts})}")
    return parts, np.result_type(*parts)


def layer_major(parts: list[np.ndarray]) -> np.ndarray:
    """Rows ``(T_u, L, D)`` of several utterances, back to back and layer-major: one ``(L, ΣT, D)``
    C-order array, so that an utterance's rows of one layer are contiguous (what the checksums
    hash). Parts are written without it, a layer at a time (``_write_layer_chunks``)."""
    parts, dtype = _layer_parts(parts)
    tail = parts[0].shape[1:]
    out = np.empty((tail[0], sum(len(p) for p in parts), tail[1]), dtype=dtype)
    o = 0
    for p in parts:
        out[:, o:o + len(p), :] = p.transpose(1, 0, 2)
        o += len(p)
    return out


def _checksums_layer_major(lm: np.ndarray, lengths: list[int] | np.ndarray) -> np.ndarray:
    """``(U, L)`` uint64 checksums (``rows_checksum``) of layer-major rows ``(L, ΣT, D)``."""
    lengths = np.asarray(lengths, np.int64)
    out = np.zeros((len(lengths), lm.shape[0]), np.uint64)
    for u, (o, n) in enumerate(zip(offsets_from_lengths(lengths), lengths)):
        for l in range(lm.shape[0]):
            out[u, l] = rows_checksum(lm[l, o:o + n])
    return out


def layer_checksums(data: np.ndarray, lengths: list[int] | np.ndarray) -> np.ndarray:
    """``(U, L)`` uint64: the checksum of utterance ``u``'s rows of layer ``l`` for rows
    ``(ΣT, L, D)`` holding the utterances back to back."""
    return _checksums_layer_major(layer_major([data]), lengths)


#: a layer's copy, checksums and NaN test run in a helper thread while the layer before is written
#: (numpy and xxhash release the GIL; HDF5's writes hold h5py's lock) where cores are plenty (a GPU
#: host); on 2 cores it cost more than it saved once the other core was busy (BENCHMARKS.md, "store
#: writer, one layer at a time")
_OVERLAP = usable_cores() >= 4


def _write_layer_chunks(g: h5py.Group, name: str, parts: list[np.ndarray], dtype: np.dtype,
                        summarise: bool = False) -> tuple[np.ndarray, bool]:
    """Dataset ``name`` of shape ``(N, L, D)`` from the rows ``(T_u, L, D)`` of several utterances
    (``_layer_parts``, with their ``dtype``), back to back, chunked (≈256 KiB of rows, 1 layer, D) so that reading a
    subset of layers reads only those layers. One layer at a time, its rows are copied into a
    buffer of whole chunks (``N`` rounded up to the chunk's rows, ``D``; what ``layer_major`` holds
    for that layer), and each chunk is handed to the file as it is (``write_direct_chunk``: no HDF5
    selection or conversion), so a layer's chunks lie one after the other in the file; the
    buffer's rows past ``N`` stay zero: the padding of the layer's last chunk. No ``(L, N, D)``
    copy of the whole table is made. With ``summarise``, also returns what is computed while a
    layer's rows are in cache: the ``(U, L)`` checksums (``rows_checksum``) and whether any row is
    non-finite (``nonfinite``); else zeros and False. With ``_OVERLAP``, layer ``l + 1`` is copied
    and summarised in a helper thread, into the other of two buffers, while layer ``l`` is
    written."""
    L, D = parts[0].shape[1:]
    lengths = [len(p) for p in parts]
    N = sum(lengths)
    rows = min(N, chunk_rows((L, D), dtype.itemsize))
    ds = g.create_dataset(name, shape=(N, L, D), dtype=dtype, chunks=(rows, 1, D))
    offsets = offsets_from_lengths(lengths)
    sums = np.zeros((len(parts), L), np.uint64)
    bad = np.zeros(L, bool)
    padded = -(-N // rows) * rows
    bufs = [np.zeros((padded, D), dtype) for _ in range(2 if _OVERLAP and L > 1 else 1)]

    def fill(l: int) -> np.ndarray:
        buf = bufs[l % len(bufs)]
        for u, (p, o, n) in enumerate(zip(parts, offsets, lengths)):
            rows_l = buf[o:o + n]
            rows_l[...] = p[:, l]
            if summarise:
                sums[u, l] = rows_checksum(rows_l)
        if summarise:
            bad[l] = nonfinite(buf[:N])
        return buf

    def write(l: int, buf: np.ndarray) -> None:
        for r in range(0, N, rows):
            ds.id.write_direct_chunk((r, l, 0), buf[r:r + rows])

    if len(bufs) == 1:
        for l in range(L):
            write(l, fill(l))
        return sums, bool(bad.any())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="emofuse-layers") as pool:
        ahead = pool.submit(fill, 0)
        for l in range(L):
            buf = ahead.result()
            if l + 1 < L:   # buf's twin is free: its layer was written
                ahead = pool.submit(fill, l + 1)
            write(l, buf)
    return sums, bool(bad.any())


def write_entry_table(f: h5py.File, path: str, ids: list[str], lengths: list[int],
                      arrays: Mapping[str, list[np.ndarray]], inputs: list[str] | None = None) -> None:
    """A complete entry table of a part file, written once, from ``arrays``: per name, the
    utterances' arrays in ``ids`` order. Arrays of rows ``(n, L, D)`` are stored chunked per layer
    (``_write_layer_chunks``); small arrays are contiguous. ``inputs``: per utterance, the digest of
    what it was computed from ("" when not tracked). ``data`` gets ``checksum`` (U, L): per
    utterance and layer, the checksum of its rows, which the reader verifies, and ``finite``."""
    g = f.require_group(path)
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
    g.create_dataset("offset", data=offsets_from_lengths(lengths))
    g.create_dataset("length", data=np.asarray(lengths, dtype=np.int64))
    g.create_dataset("inputs", data=np.array(inputs if inputs is not None else [""] * len(ids), dtype=object), dtype=STR)
    for name, parts in arrays.items():
        first = np.asarray(parts[0])
        if first.ndim == 3 and first.dtype.kind not in "OUS":
            parts, dtype = _layer_parts(parts)
            if sum(len(p) for p in parts):
                sums, bad = _write_layer_chunks(g, name, parts, dtype, summarise=name == DATA)
            else:  # no rows at all: nothing to chunk
                lm = layer_major(parts)
                g.create_dataset(name, data=lm.transpose(1, 0, 2))
                sums, bad = _checksums_layer_major(lm, [0] * len(parts)), False
            if name == DATA:
                write_checksums(g, sums)
                g[DATA].attrs["finite"] = not bad  # with the checksums, spares the reader its NaN test
            continue
        arr = np.concatenate([np.asarray(p) for p in parts])
        if arr.dtype.kind in "OUS":
            g.create_dataset(name, data=arr.astype(object), dtype=STR)
        else:
            g.create_dataset(name, data=arr)


def write_checksums(g: h5py.Group, sums: np.ndarray) -> None:
    ds = g.create_dataset(CHECKSUM, data=np.asarray(sums, np.uint64))
    ds.attrs["algorithm"] = CHECKSUM_ALGORITHM


def row_arrays(g: h5py.Group) -> list[str]:
    """Names of the row-aligned arrays of an entry table (``data`` first)."""
    names = [k for k in g.keys() if k not in INDEX_NAMES and isinstance(g[k], h5py.Dataset)]
    return sorted(names, key=lambda k: (k != DATA, k))


def read_index(g: h5py.Group) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``ids, offset, length, inputs`` of an entry table (``inputs`` all "" where not recorded)."""
    ids = g["ids"].asstr()[...]
    inputs = g["inputs"].asstr()[...] if "inputs" in g else np.full(len(ids), "", dtype=object)
    return ids, g["offset"][...], g["length"][...], inputs


def fsync_path(path: str) -> None:
    """Make a file, or a folder's entries (a rename), durable. Windows opens no folder as a file
    (its file systems journal renames themselves): there a folder is left as it is."""
    if os.name == "nt" and os.path.isdir(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_publish(tmp: str, final: str) -> None:
    """Make ``tmp`` (closed) durable and atomically take the place of ``final``."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(os.path.dirname(os.path.abspath(final)) or ".")


def file_header(f: h5py.File, kind: str, corpus_fingerprint: str, version: str) -> None:
    f.attrs["type"] = kind
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["emofuse_version"] = version
    f.attrs["corpus_fingerprint"] = corpus_fingerprint


__all__ = ["open_h5", "check_header", "write_table", "read_table", "set_info", "get_info", "write_entry_table", "row_arrays", "read_index", "atomic_publish", "file_header", "STR", "PART_TYPE",
           "STORE_TYPE"]
