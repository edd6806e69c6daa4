"""Maintenance commands, each under the store's writer lock: ``upgrade_store`` (a schema v1
file becomes a v2 store in place, no copy) and ``compact_store`` (the rows the index uses,
rewritten into one part with fresh checksums, for shipping)."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..arrays import offsets_from_lengths
from ..errors import StoreError
from .h5io import (BIG_USERBLOCK, STR, file_header, fsync_path, layer_checksums, row_arrays, set_info, write_checksums,
                   writing_h5)
from .index import SELF, EntryTable, data_dir, load_index, next_seq, part_path, save_index
from .lock import WriterLock
from .schema import DATA, PART_TYPE, chunk_rows, entry_path
from .write_errors import io_error

def _existing(path: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise StoreError(f"feature store {path} does not exist")
    return path


def upgrade_store(path: str | os.PathLike) -> str:
    """Turn a schema v1 store into a v2 one without copying its activations: the v1 file is
    hard-linked into ``STORE.h5.d/`` as the store's one part, and a v2 index takes its name.
    Returns one sentence saying what was done."""
    path = _existing(path)
    with WriterLock(path):
        idx = load_index(path)
        if idx.version != 1:
            return f"{path} is already a schema v{idx.version} store; nothing to do"
        folder = data_dir(path)
        os.makedirs(folder, exist_ok=True)
        name = "00000000-upgraded-v1.h5"
        final = os.path.join(folder, name)
        if os.path.exists(final):  # left by an upgrade killed before its index swap
            os.remove(final)
        try:
            os.link(path, final)
            how = "linked (no copy)"
        except OSError:
            shutil.copyfile(path, final + ".tmp")
            fsync_path(final + ".tmp")
            os.replace(final + ".tmp", final)
            how = "copied (this file system has no hard links)"
        fsync_path(folder)
        idx.version, idx.parts, idx.seals = 2, [name], {}
        save_index(idx, path, __version__)
        return f"{path} upgraded to schema v2: its v1 file was {how} to {final}"


def compact_store(path: str | os.PathLike, block_bytes: int = 64 << 20) -> str:
    """Rewrite a store into the fewest files (the index and one part), dropping rows no entry
    uses; for shipping. Needs free disk for one copy of what the store uses. Readers opened
    before it may fail afterwards (the old parts are deleted). Returns one sentence."""
    from .reader import FeatureStore, UncheckedStoreWarning
    path = _existing(path)
    with WriterLock(path):
        idx = load_index(path)
        folder = data_dir(path)
        os.makedirs(folder, exist_ok=True)
        name = f"{next_seq(idx.parts + idx.retired + os.listdir(folder)):08d}-{os.getpid()}-compact.h5"
        final = os.path.join(folder, name)
        tmp = final + ".tmp"
        tables: dict[tuple[str, str], EntryTable] = {}
        before = sum(os.path.getsize(part_path(path, n)) for n in set(idx.parts) if os.path.exists(part_path(path, n)))
        try:
            with warnings.catch_warnings(), FeatureStore(path) as fs, writing_h5(tmp, BIG_USERBLOCK) as out:
                warnings.simplefilter("ignore", UncheckedStoreWarning)  # this is the remedy it names
                file_header(out, PART_TYPE, idx.fingerprint, __version__)
                for (s, kind), t in sorted(idx.tables.items()):
                    tables[(s, kind)] = _copy_table(_Copy(fs, out, s, kind, block_bytes), t)
                    set_info(out.require_group(f"streams/{s}"), idx.streams[s])
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(folder)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise io_error(e, final, "write") from None
        for t in tables.values():
            t.part = [0] * len(t.ids)
        old = [n for n in idx.parts + idx.retired if n != SELF]  # a v1 file is unlinked by the swap itself
        idx.version, idx.parts, idx.retired, idx.tables, idx.seals = 2, [name], old, tables, {}
        save_index(idx, path, __version__)
        for n in old:
            p = part_path(path, n)
            if os.path.exists(p):
                os.remove(p)
        idx.retired = []
        save_index(idx, path, __version__)
        return (f"{path} compacted: {len(set(old)) or 1} part files ({before / 1e6:.1f} MB) rewritten as "
                f"{final} ({os.path.getsize(final) / 1e6:.1f} MB), with checksums")


@dataclass
class _Copy:
    """One entry table being copied: from the open store ``fs`` into the new part file ``out``,
    in blocks of about ``block_bytes``."""

    fs: object          # the FeatureStore read from
    out: object         # the h5py.File written to
    stream: str
    kind: str
    block_bytes: int


def _copy_table(c: _Copy, t: EntryTable) -> EntryTable:
    """Copy one entry table's referenced rows, in index order, into part file ``c.out``."""
    fs, stream, kind = c.fs, c.stream, c.kind
    first = fs._file(t.part[0])[entry_path(stream, kind)]
    names = row_arrays(first)
    lengths = np.asarray(t.length, np.int64)
    total = int(lengths.sum())
    g = c.out.require_group(entry_path(stream, kind))
    offsets = offsets_from_lengths(lengths)
    g.create_dataset("ids", data=np.array(t.ids, dtype=object), dtype=STR)
    g.create_dataset("offset", data=offsets)
    g.create_dataset("length", data=lengths)
    g.create_dataset("inputs", data=np.array(t.inputs, dtype=object), dtype=STR)
    for nm in names:
        src = first[nm]
        is_str = src.dtype.kind == "O"
        kw = {}
        if src.ndim == 3 and total:
            kw["chunks"] = (min(total, chunk_rows(src.shape[1:], src.dtype.itemsize)), 1, src.shape[2])
        dst = g.create_dataset(nm, shape=(total,) + src.shape[1:], dtype=STR if is_str else src.dtype, **kw)
        row_bytes = max(1, int(np.prod(src.shape[1:], dtype=np.int64)) * (8 if is_str else src.dtype.itemsize))
        sums: list[np.ndarray] = []
        k, pos = 0, 0
        while k < len(t.ids):
            j, rows = k, 0
            while j < len(t.ids) and (rows == 0 or (rows + t.length[j]) * row_bytes <= c.block_bytes):
                rows += t.length[j]
                j += 1
            if rows and nm == DATA:  # verified as it is read; the new part gets fresh checksums
                block = fs.load(stream, kind, ids=t.ids[k:j]).data
                sums.append(layer_checksums(block, t.length[k:j]))
                dst[pos:pos + rows] = block
            elif rows:
                chunks = []
                for q in range(k, j):
                    if t.length[q]:
                        ds = fs._dataset(t.part[q], stream, kind, nm)
                        sl = slice(t.row[q], t.row[q] + t.length[q])
                        chunks.append(ds.asstr()[sl] if is_str else ds[sl])
                block = np.concatenate(chunks)
                dst[pos:pos + rows] = block.astype(object) if is_str else block
            elif nm == DATA:
                sums.append(layer_checksums(np.zeros((0,) + src.shape[1:], src.dtype), [0] * (j - k)))
            pos += rows
            k = j
        if nm == DATA and src.ndim == 3:
            write_checksums(g, np.concatenate(sums) if sums else np.zeros((0, src.shape[1]), np.uint64))
            if total:
                dst.attrs["finite"] = True  # every block came through load's NaN/Inf test
    return EntryTable(list(t.ids), [0] * len(t.ids), [int(x) for x in offsets], list(t.length), list(t.inputs))


__all__ = ["upgrade_store", "compact_store"]
