"""The store index (schema v2): which immutable part file holds which utterance's rows.

A v2 store is ``STORE.h5``, a small index, plus the folder ``STORE.h5.d/`` of part files. The
index is the only mutable thing, and it is never modified in place: a writer builds the next
index in memory, writes it to ``STORE.h5.tmp``, fsyncs it and renames it over ``STORE.h5``.
A v1 store (one self-contained file) reads as an index whose single part is the file itself.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from .h5io import (STR, atomic_publish, check_header, file_header, get_info, open_h5, read_index,
                   read_table, seal_of, set_info, write_table, writing_h5)
from .schema import DATA_DIR_SUFFIX, READABLE_VERSIONS, STORE_TYPE


@dataclass
class EntryTable:
    """One entry table (``frames``, ``tokens``, ``segments/<g>`` of a stream): per utterance, the
    part (index into ``StoreIndex.parts``), its first row there, its row count and the digest of
    its inputs ("" where not tracked). Order is storage order."""

    ids: list[str] = field(default_factory=list)
    part: list[int] = field(default_factory=list)
    row: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class StoreIndex:
    version: int
    fingerprint: str
    meta: dict[str, str]                       # corpus_* attributes without the prefix
    table: pd.DataFrame                        # the utterance table
    parts: list[str] = field(default_factory=list)      # part files, names in the store's folder
    retired: list[str] = field(default_factory=list)    # parts no entry uses any more (compact): deleted
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # stream name -> info
    tables: dict[tuple[str, str], EntryTable] = field(default_factory=dict)  # (stream, kind) -> entries
    skipped: dict[str, list[tuple[str, str, str, str]]] = field(default_factory=dict)  # stream -> (id, kind, reason, inputs)
    #: part name -> the digest of its seal when the index was written: binds the index to the
    #: exact part files it was built on (a part of another store under the same name is refused)
    seals: dict[str, str] = field(default_factory=dict)


def data_dir(path: str) -> str:
    return path + DATA_DIR_SUFFIX


#: the part name of a v1 store's only part: the file itself
SELF = ""


def part_path(index_path: str, name: str) -> str:
    """Where part ``name`` of the store indexed by ``index_path`` lives: ``STORE.h5.d/name``
    (names are relative to the store's folder, so index and folder move and rename together)."""
    return os.path.abspath(index_path) if name == SELF else os.path.join(data_dir(os.path.abspath(index_path)), name)


#: the sequence number that begins every part file's name (``00000012-4711-audio.h5``)
PART_SEQ = re.compile(r"^(\d+)-")


def next_seq(names) -> int:
    """The sequence number after every one in ``names`` (part file names or paths): commit
    order is name order."""
    return max((int(m.group(1)) for n in names if (m := PART_SEQ.match(os.path.basename(n)))), default=-1) + 1


def _entry_kinds(sg) -> list[str]:
    """Relative paths of entry tables in a stream group (``frames``, ``segments/word`` …)."""
    out = []

    def visit(name, obj):
        if hasattr(obj, "keys") and "ids" in obj:
            out.append(name)
    sg.visititems(visit)
    return sorted(k for k in out if k != "skipped")


def _read_skipped(sg) -> list[tuple[str, str, str, str]]:
    k = sg.get("skipped")
    if k is None:
        return []
    ids, kinds, reasons = k["ids"].asstr()[...], k["kind"].asstr()[...], k["reason"].asstr()[...]
    inputs = k["inputs"].asstr()[...] if "inputs" in k else [""] * len(ids)
    return list(zip(ids, kinds, reasons, inputs))


#: what h5py raises on a damaged file (its C library's messages, wrapped)
DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError, UnicodeDecodeError,
          OverflowError, MemoryError)


def damaged(path: str, e: BaseException) -> StoreError:
    """One sentence for a store file h5py cannot read as it should."""
    detail = str(e).strip().strip("'\"")[:200]
    return StoreError(f"{path} is damaged and cannot be read ({type(e).__name__}: {detail}); restore the store from a "
                      "copy, or re-extract")


def load_index(path: str) -> StoreIndex:
    """Read a store's index (v2) or describe a v1 store as one (its only part: itself); verify its
    ``meta_checksum``. A damaged index gives one sentence (``StoreError``), never a traceback."""
    try:
        return _load_index(path)
    except StoreError:
        raise
    except DAMAGE as e:
        raise damaged(path, e) from None


def _load_index(path: str) -> StoreIndex:
    with open_h5(path) as f:
        version = check_header(f, path, versions=READABLE_VERSIONS)
        idx = StoreIndex(version=version, fingerprint=str(f.attrs["corpus_fingerprint"]),
                         meta={k[len("corpus_"):]: str(v) for k, v in f.attrs.items()
                               if k.startswith("corpus_") and k != "corpus_fingerprint"},
                         table=read_table(f["utterances"]))
        if version == 1:
            idx.parts = [SELF]
        else:
            idx.parts = list(f["parts/files"].asstr()[...]) if "parts" in f else []
            idx.retired = list(f["parts/retired"].asstr()[...]) if "parts" in f and "retired" in f["parts"] else []
            if "parts" in f and "seals" in f["parts"]:
                seals = list(f["parts/seals"].asstr()[...])
                if len(seals) != len(idx.parts):
                    raise StoreError(f"{path} is damaged: it lists {len(idx.parts)} part files and {len(seals)} seals")
                idx.seals = {n: s for n, s in zip(idx.parts, seals) if s}
        n_parts = len(idx.parts)
        for s, sg in f.get("streams", {}).items():
            idx.streams[s] = get_info(sg)
            for kind in _entry_kinds(sg):
                g = sg[kind]
                if version == 1:
                    ids, offs, lens, inputs = read_index(g)
                    part = np.zeros(len(ids), np.int64)
                else:
                    ids, lens = g["ids"].asstr()[...], g["length"][...]
                    part, offs = g["part"][...], g["row"][...]
                    inputs = g["inputs"].asstr()[...]
                if not (len(ids) == len(offs) == len(lens) == len(part) == len(inputs)):
                    raise StoreError(f"{path} is damaged: the index of streams/{s}/{kind} has columns of different lengths")
                if len(ids) and (part.min() < 0 or part.max() >= n_parts or offs.min() < 0 or lens.min() < 0):
                    raise StoreError(f"{path} is damaged: the index of streams/{s}/{kind} points outside its "
                                     f"{n_parts} part files or to negative rows")
                idx.tables[(s, kind)] = EntryTable(list(ids), [int(x) for x in part], [int(x) for x in offs],
                                                   [int(x) for x in lens], list(inputs))
            idx.skipped[s] = _read_skipped(sg)
    return idx


def save_index(idx: StoreIndex, path: str, version: str) -> None:
    """Write ``idx`` as a v2 index to ``path + '.tmp'``, fsync it and rename it over ``path``. Each
    part's seal digest is recorded beside its name (``idx.seals``, else read from the part file
    now), so readers refuse a part file that is not the one this index was built on."""
    tmp = path + ".tmp"
    idx.seals = {n: idx.seals.get(n) or seal_of(part_path(path, n)) for n in idx.parts if n != SELF}
    with writing_h5(tmp) as f:
        file_header(f, STORE_TYPE, idx.fingerprint, version)
        for k, v in idx.meta.items():
            f.attrs[f"corpus_{k}"] = str(v)
        write_table(f.create_group("utterances"), idx.table)
        pg = f.create_group("parts")
        pg.create_dataset("files", data=np.array(idx.parts, dtype=object), dtype=STR)
        pg.create_dataset("retired", data=np.array(idx.retired, dtype=object), dtype=STR)
        pg.create_dataset("seals", data=np.array([idx.seals.get(n, "") for n in idx.parts], dtype=object), dtype=STR)
        for s in sorted(idx.streams):
            sg = f.create_group(f"streams/{s}")
            set_info(sg, idx.streams[s])
        for (s, kind), t in sorted(idx.tables.items()):
            g = f.create_group(f"streams/{s}/{kind}")
            g.create_dataset("ids", data=np.array(t.ids, dtype=object), dtype=STR)
            g.create_dataset("part", data=np.asarray(t.part, dtype=np.int32))
            g.create_dataset("row", data=np.asarray(t.row, dtype=np.int64))
            g.create_dataset("length", data=np.asarray(t.length, dtype=np.int64))
            g.create_dataset("inputs", data=np.array(t.inputs, dtype=object), dtype=STR)
        for s, rows in idx.skipped.items():
            if not rows or s not in idx.streams:
                continue
            g = f.create_group(f"streams/{s}/skipped")
            rows = sorted(rows)
            for col, name in enumerate(("ids", "kind", "reason", "inputs")):
                g.create_dataset(name, data=np.array([r[col] for r in rows], dtype=object), dtype=STR)
        f.attrs["summary"] = json.dumps({f"{s}/{k}": len(t) for (s, k), t in idx.tables.items()}, sort_keys=True)
    atomic_publish(tmp, path)


def referenced_parts(idx: StoreIndex) -> set[int]:
    used: set[int] = set()
    for t in idx.tables.values():
        used.update(t.part)
    return used


def store_bytes(path: str) -> int:
    """Bytes a store occupies: its index and every file in its folder."""
    total = os.path.getsize(path) if os.path.exists(path) else 0
    folder = data_dir(os.path.abspath(path))
    if os.path.isdir(folder):
        total += sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    return total


def copy_store(src: str, dst: str) -> None:
    """Copy a store (its index and folder of parts) to ``dst`` (a new store name)."""
    import shutil
    if os.path.exists(data_dir(os.path.abspath(src))):
        shutil.copytree(data_dir(os.path.abspath(src)), data_dir(os.path.abspath(dst)))
    shutil.copyfile(src, dst)


def remove_store(path: str) -> None:
    """Delete a store: its index, lock file and folder of parts."""
    import shutil
    for p in (path, path + ".lock", path + ".tmp"):
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(data_dir(os.path.abspath(path)), ignore_errors=True)


__all__ = ["store_bytes", "remove_store", "copy_store", "SELF", "EntryTable", "StoreIndex", "load_index", "save_index", "data_dir", "part_path", "referenced_parts",
           "next_seq"]
