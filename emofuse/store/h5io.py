"""Low-level HDF5 helpers shared by the writer and the reader (the only h5py users)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd

from ..errors import StoreError
from .schema import DATA, INDEX_NAMES, PART_TYPE, SCHEMA_VERSION, STORE_TYPE, chunk_rows

STR = h5py.string_dtype("utf-8")


def open_h5(path: str, mode: str = "r") -> h5py.File:
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as e:
        raise StoreError(f"{path} could not be opened as an HDF5 feature store ({e})") from e


def check_header(f: h5py.File, path: str, types: tuple[str, ...] = (STORE_TYPE,)) -> None:
    kind = f.attrs.get("type")
    if kind not in types:
        raise StoreError(f"{path} is not an emofuse feature store (type attribute {kind!r}, expected {types[0]!r})")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} uses store schema v{version} (written by emofuse {f.attrs.get('emofuse_version', '?')}); "
            f"this emofuse reads schema v{SCHEMA_VERSION}: re-extract, or use the emofuse version that wrote it"
        )


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


def new_entry_table(f: h5py.File, path: str, arrays: Mapping[str, np.ndarray]) -> h5py.Group:
    """Create an empty, resizable entry table whose row-aligned arrays look like ``arrays``."""
    g = f.require_group(path)
    g.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
    g.create_dataset("offset", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
    g.create_dataset("length", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        row_shape = arr.shape[1:]
        is_str = arr.dtype.kind in "OUS"
        dtype = STR if is_str else arr.dtype
        rows = chunk_rows(row_shape, 8 if is_str else arr.dtype.itemsize)
        chunks = (rows,) + tuple(1 if i < len(row_shape) - 1 else s for i, s in enumerate(row_shape))
        g.create_dataset(name, shape=(0,) + row_shape, maxshape=(None,) + row_shape, dtype=dtype, chunks=chunks)
    return g


def _offsets(lengths: list[int]) -> np.ndarray:
    """Start row of each utterance whose rows lie back to back: 0, l0, l0 + l1, …"""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)


def append_rows(g: h5py.Group, ids: list[str], lengths: list[int], arrays: Mapping[str, np.ndarray]) -> None:
    """Append utterances to an entry table: ``arrays[name]`` holds their rows back to back."""
    n0 = g["ids"].shape[0]
    total0 = g[DATA].shape[0] if DATA in g else 0
    n = len(ids)
    offsets = total0 + _offsets(lengths)
    for name, values in (("ids", np.array(ids, dtype=object)), ("offset", offsets),
                         ("length", np.asarray(lengths, dtype=np.int64))):
        g[name].resize((n0 + n,))
        g[name][n0:] = values
    rows = int(sum(lengths))
    for name, arr in arrays.items():
        ds = g[name]
        if tuple(ds.shape[1:]) != tuple(arr.shape[1:]):
            raise StoreError(
                f"entry table {g.name}/{name} holds rows of shape {tuple(ds.shape[1:])}, "
                f"an utterance brought {tuple(arr.shape[1:])}"
            )
        start = ds.shape[0]
        ds.resize((start + rows,) + ds.shape[1:])
        if rows:
            ds[start:] = arr.astype(object) if h5py.check_string_dtype(ds.dtype) else arr


def write_entry_table(f: h5py.File, path: str, ids: list[str], lengths: list[int], arrays: Mapping[str, np.ndarray]) -> None:
    """A complete entry table written once, every array contiguous (a part file's: written and
    read back whole, with no chunk layout to scatter into)."""
    g = f.require_group(path)
    offsets = _offsets(lengths)
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
    g.create_dataset("offset", data=offsets)
    g.create_dataset("length", data=np.asarray(lengths, dtype=np.int64))
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "OUS":
            g.create_dataset(name, data=arr.astype(object), dtype=STR)
        else:
            g.create_dataset(name, data=arr)


def row_arrays(g: h5py.Group) -> list[str]:
    """Names of the row-aligned arrays of an entry table (``data`` first)."""
    names = [k for k in g.keys() if k not in INDEX_NAMES and isinstance(g[k], h5py.Dataset)]
    return sorted(names, key=lambda k: (k != DATA, k))


def read_index(g: h5py.Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return g["ids"].asstr()[...], g["offset"][...], g["length"][...]


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


__all__ = ["open_h5", "check_header", "write_table", "read_table", "set_info", "get_info", "new_entry_table",
           "append_rows", "write_entry_table", "row_arrays", "read_index", "atomic_publish", "file_header", "STR", "PART_TYPE",
           "STORE_TYPE"]
