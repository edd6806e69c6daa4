"""Low-level HDF5 helpers shared by the writer and the reader (the only h5py users)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd
import xxhash

from ..errors import StoreError
from .schema import CHECKSUM, CHECKSUM_ALGORITHM, DATA, INDEX_NAMES, PART_TYPE, SCHEMA_VERSION, STORE_TYPE, chunk_rows

STR = h5py.string_dtype("utf-8")


def open_h5(path: str, mode: str = "r") -> h5py.File:
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as e:
        raise StoreError(f"{path} could not be opened as an HDF5 feature store ({e})") from e


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


def _offsets(lengths: list[int]) -> np.ndarray:
    """Start row of each utterance whose rows lie back to back: 0, l0, l0 + l1, …"""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)


def rows_checksum(rows: np.ndarray) -> int:
    """Checksum of one utterance's rows of one layer (a C-contiguous ``(n, D)`` array): XXH3-64
    of its little-endian bytes (~10 GB/s, so verifying on read costs little beside HDF5)."""
    if sys.byteorder != "little":
        rows = rows.astype(rows.dtype.newbyteorder("<"))
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(rows))


def layer_checksums(data: np.ndarray, lengths: list[int] | np.ndarray) -> np.ndarray:
    """``(U, L)`` uint64: the checksum of utterance ``u``'s rows of layer ``l`` for rows
    ``(ΣT, L, D)`` holding the utterances back to back."""
    lengths = np.asarray(lengths, np.int64)
    offsets = _offsets(list(lengths))
    out = np.zeros((len(lengths), data.shape[1]), np.uint64)
    for l in range(data.shape[1]):
        layer = np.ascontiguousarray(data[:, l])
        for u, (o, n) in enumerate(zip(offsets, lengths)):
            out[u, l] = rows_checksum(layer[o:o + n])
    return out


def write_entry_table(f: h5py.File, path: str, ids: list[str], lengths: list[int], arrays: Mapping[str, np.ndarray],
                      inputs: list[str] | None = None) -> None:
    """A complete entry table of a part file, written once. Arrays of rows ``(n, L, D)`` are
    chunked as (≈256 KiB of rows, 1 layer, D) so that reading a subset of layers reads only those
    layers; small arrays are contiguous. ``inputs``: per utterance, the digest of what it was
    computed from ("" when not tracked). ``data`` gets ``checksum`` (U, L): per utterance and
    layer, the checksum of its rows (``layer_checksums``), which the reader verifies."""
    g = f.require_group(path)
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
    g.create_dataset("offset", data=_offsets(lengths))
    g.create_dataset("length", data=np.asarray(lengths, dtype=np.int64))
    g.create_dataset("inputs", data=np.array(inputs if inputs is not None else [""] * len(ids), dtype=object), dtype=STR)
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "OUS":
            g.create_dataset(name, data=arr.astype(object), dtype=STR)
        elif arr.ndim == 3 and len(arr):
            rows = min(len(arr), chunk_rows(arr.shape[1:], arr.dtype.itemsize))
            g.create_dataset(name, data=arr, chunks=(rows, 1, arr.shape[2]))
        else:
            g.create_dataset(name, data=arr)
        if name == DATA and arr.ndim == 3:
            write_checksums(g, layer_checksums(arr, lengths))


#: root attribute of every store file (index and parts): XXH3-128 of all its attributes and datasets
#: except the tensors (``data``, which carry per-utterance ``checksum``)
META_CHECKSUM = "meta_checksum"


def meta_digest(f: h5py.File) -> str:
    """XXH3-128 (hex) of everything in a store file but its tensors: every attribute (but
    ``meta_checksum``) and every dataset not named ``data``, in name order, as h5py reads them.
    Refuses (``StoreError``) a dataset larger than the file, so a damaged header cannot make it
    read for ever."""
    limit = max(os.path.getsize(f.filename), 1 << 16)
    h = xxhash.xxh3_128()
    names: list[str] = []
    f.visit(names.append)

    def put(tag: str, value) -> None:
        a = np.asarray(value)
        if a.dtype.kind == "O" or a.dtype.kind == "U":
            raw = "\0".join(str(x) for x in a.reshape(-1)).encode("utf-8", "surrogatepass")
            kind = f"str{a.shape}"
        elif a.dtype.kind == "S":
            raw, kind = b"\0".join(a.reshape(-1).tolist()), f"bytes{a.shape}"
        else:
            a = a.astype(a.dtype.newbyteorder("<"))
            raw, kind = a.tobytes(), f"{a.dtype.str}{a.shape}"
        h.update(f"{tag}|{kind}|{len(raw)}|".encode())
        h.update(raw)

    for name in [""] + sorted(names):
        obj = f[name] if name else f
        for k in sorted(obj.attrs):
            if not (name == "" and k == META_CHECKSUM):
                put(f"{name}@{k}", obj.attrs[k])
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] != DATA:
            if obj.size > limit:
                raise StoreError(f"{f.filename} is damaged: its dataset {name} claims {obj.size} elements, more than "
                                 "the file's bytes")
            put(name, obj.asstr()[...] if h5py.check_string_dtype(obj.dtype) else obj[...])
    return h.hexdigest()


def seal(f: h5py.File) -> None:
    """Record ``meta_digest`` in a store file being written (its last step before closing)."""
    f.attrs[META_CHECKSUM] = meta_digest(f)


def check_seal(f: h5py.File, path: str) -> bool:
    """Verify a store file's ``meta_checksum``; False when it has none (written before checksums)."""
    want = f.attrs.get(META_CHECKSUM)
    if want is None:
        return False
    if meta_digest(f) != str(want):
        raise StoreError(f"{path} is damaged: its tables and attributes do not match the checksum written with them; "
                         "restore the store from a copy, or re-extract")
    return True


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
