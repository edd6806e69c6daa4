"""The store writer: exclusive, crash-safe, resumable.

How a kill -9 at any instant leaves the store at its last committed state:

* ``STORE.h5`` is never opened for writing in place. Work is committed as *part files* in
  ``STORE.h5.parts/``: each is written under a ``.tmp`` name, fsynced, then atomically renamed,
  so a part either exists whole or not at all.
* Parts are merged copy-on-write, as they are committed: at the first commit ``STORE.h5`` is
  copied to ``STORE.h5.tmp``, and each committed part is appended there right after it is
  written (so the merge runs alongside the work instead of after it). ``finalize()`` only
  appends what is left, fsyncs the copy and atomically replaces ``STORE.h5`` with it; then the
  parts are deleted. A kill at any point leaves the old store and all parts (the ``.tmp`` is
  never trusted: the next writer deletes it and merges the parts again).
* One writer at a time: an ``flock`` on ``STORE.h5.lock`` (released by the kernel when a
  process dies, so a killed writer never leaves a stale lock).
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from collections import OrderedDict
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import StoreError
from .fingerprint import corpus_fingerprint
from .h5io import (STR, append_rows, atomic_publish, check_header, file_header, get_info, new_entry_table,
                   open_h5, read_index, read_table, row_arrays, set_info, write_entry_table, write_table)
from .schema import DATA, PART_TYPE, STORE_TYPE, entry_path

FLUSH_BYTES = 64 << 20

#: ``{kind: {utt_id: {array name: rows}}}``: what one commit adds to one stream. ``data`` is required.
Entries = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]


class _FileCache:
    """A few open source files at a time (a merge may read hundreds of parts)."""

    def __init__(self, size: int = 64):
        self.size, self.files = size, OrderedDict()

    def get(self, path: str):
        f = self.files.pop(path, None) or open_h5(path, "r")
        self.files[path] = f
        while len(self.files) > self.size:
            self.files.popitem(last=False)[1].close()
        return f

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class StoreWriter:
    """Exclusive writer of one store.

    ``table`` (from ``corpora.utterance_table``) is required to create a store; when the store
    exists it must describe the same corpus (same fingerprint), else the writer refuses.
    """

    def __init__(self, path: str | os.PathLike, table: pd.DataFrame | None = None,
                 corpus_meta: Mapping[str, Any] | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.parts_dir = self.path + ".parts"
        self._lock_fd = self._acquire_lock()
        try:
            self._open(table, corpus_meta or {})
        except BaseException:
            self.close()
            raise

    # -- set-up --------------------------------------------------------------------------
    def _acquire_lock(self) -> int:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"another process is writing {self.path} (it holds {self.path}.lock); "
                "wait for it to finish or write to another store"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _open(self, table: pd.DataFrame | None, corpus_meta: Mapping[str, Any]) -> None:
        for stale in glob.glob(self.path + ".tmp") + glob.glob(os.path.join(self.parts_dir, "*.tmp")):
            os.remove(stale)  # half-written by a killed process: never committed
        fp = corpus_fingerprint(table) if table is not None else None
        if os.path.exists(self.path):
            with open_h5(self.path) as f:
                check_header(f, self.path)
                self.fingerprint = str(f.attrs["corpus_fingerprint"])
                self.table = read_table(f["utterances"])
                self.stream_infos = {s: get_info(g) for s, g in f.get("streams", {}).items()}
            if fp is not None and fp != self.fingerprint:
                raise StoreError(
                    f"{self.path} was built from another corpus (fingerprint {self.fingerprint[:12]}, "
                    f"{len(self.table)} utterances); this run's corpus has fingerprint {fp[:12]} "
                    f"({len(table)} utterances): write to a new store"
                )
        else:
            if table is None:
                raise StoreError(f"{self.path} does not exist; run extract-embeddings to create it")
            self.fingerprint, self.table, self.stream_infos = fp, table.reset_index(drop=True), {}
            tmp = self.path + ".tmp"
            with open_h5(tmp, "w") as f:
                file_header(f, STORE_TYPE, fp, __version__)
                for k, v in corpus_meta.items():
                    f.attrs[f"corpus_{k}"] = str(v)
                write_table(f.create_group("utterances"), self.table)
            atomic_publish(tmp, self.path)
        self._parts = self._committed_parts()
        for part in self._parts:
            with open_h5(part) as f:
                check_header(f, part, (PART_TYPE,))
                if f.attrs["corpus_fingerprint"] != self.fingerprint:
                    raise StoreError(f"part file {part} belongs to another corpus than {self.path}; remove it")
                for s, g in f.get("streams", {}).items():
                    self._check_stream(s, get_info(g), where=part)
        self._seq = len(self._parts)
        self._merge = None  # the open STORE.h5.tmp being merged into, from the first commit on
        self._merged = 0  # how many of self._parts are in it
        self._known: dict[str, set[str]] = {}  # entry path -> ids in it
        self._added: dict[str, int] = {}

    def _committed_parts(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.parts_dir, "*.h5")))

    def _check_stream(self, name: str, info: Mapping[str, Any], where: str) -> None:
        known = self.stream_infos.get(name)
        if known is None:
            self.stream_infos[name] = dict(info)
        elif known.get("fingerprint") != info.get("fingerprint"):
            keys = sorted(k for k in set(known) | set(info)
                          if k not in ("fingerprint", "extract_config", "notes", "corpus_fingerprint")
                          and known.get(k) != info.get(k))
            diff = "; ".join(f"{k}: {known.get(k)!r} there, {info.get(k)!r} here" for k in keys[:4])
            raise StoreError(
                f"stream {name!r} in {where} holds {known.get('encoder_id', '?')} (fingerprint "
                f"{str(known.get('fingerprint'))[:12]}); this run brings {info.get('encoder_id', '?')} "
                f"(fingerprint {str(info.get('fingerprint'))[:12]})" + (f" [{diff}]" if diff else "")
                + ": name another stream or write a new store"
            )

    # -- public API -----------------------------------------------------------------------
    @property
    def corpus_fingerprint(self) -> str:
        return self.fingerprint

    def add_stream(self, name: str, info: Mapping[str, Any]) -> None:
        """Declare a stream. ``info['fingerprint']`` identifies its encoder; a stream of that name
        with another fingerprint is refused."""
        if "fingerprint" not in info:
            raise ValueError("stream info needs a 'fingerprint' entry")
        if not name or "/" in name:
            raise StoreError(f"stream name {name!r} is not allowed; use letters, digits, '-' or '_'")
        info = {**info, "corpus_fingerprint": self.fingerprint}
        self._check_stream(name, info, where=self.path)

    def done_ids(self, stream: str, kind: str) -> set[str]:
        """Ids already committed for ``kind`` of ``stream`` (entries and skips), main store and parts."""
        done: set[str] = set()
        for path in [self.path] + self._parts:
            if not os.path.exists(path):
                continue
            with open_h5(path) as f:
                g = f.get(entry_path(stream, kind))
                if g is not None:
                    done.update(g["ids"].asstr()[...])
                sk = f.get(f"streams/{stream}/skipped")
                if sk is not None:
                    kinds = sk["kind"].asstr()[...]
                    done.update(i for i, k in zip(sk["ids"].asstr()[...], kinds) if k == kind)
        return done

    def commit(self, stream: str, entries: Entries, skipped: Iterable[tuple[str, str, str]] = ()) -> str:
        """Atomically commit one unit of work for ``stream``: entries per kind, and skipped
        utterances as ``(utt_id, kind, reason)`` triples. Returns the part file's path."""
        if stream not in self.stream_infos:
            raise StoreError(f"stream {stream!r} was not declared with add_stream()")
        os.makedirs(self.parts_dir, exist_ok=True)
        final = os.path.join(self.parts_dir, f"{self._seq:08d}-{os.getpid()}-{stream}.h5")
        tmp = final + ".tmp"
        with open_h5(tmp, "w") as f:
            file_header(f, PART_TYPE, self.fingerprint, __version__)
            sg = f.create_group(f"streams/{stream}")
            set_info(sg, self.stream_infos[stream])
            tables = {}
            for kind, per_utt in entries.items():
                if not per_utt:
                    continue
                ids = sorted(per_utt)
                first = per_utt[ids[0]]
                if DATA not in first:
                    raise ValueError(f"entries of kind {kind!r} need a {DATA!r} array")
                lengths = [len(per_utt[i][DATA]) for i in ids]
                arrays = {k: np.concatenate([np.asarray(per_utt[i][k]) for i in ids]) for k in first}
                write_entry_table(f, entry_path(stream, kind), ids, lengths, arrays)
                tables[entry_path(stream, kind)] = (ids, lengths, arrays)
            skipped = list(skipped)
            if skipped:
                _write_skipped(sg, skipped)
        atomic_publish(tmp, final)
        self._parts.append(final)
        self._seq += 1
        self._merge_pending(fresh=(final, stream, tables, skipped))
        return final

    def _merge_pending(self, extra: list[str] = (), fresh: tuple | None = None) -> None:
        """Append parts not merged yet (one at a time, in commit order; ``fresh``, the part just
        committed, from memory instead of read back), then ``extra`` stores (together, new entries
        in id order), to ``STORE.h5.tmp``, copied from the store first."""
        if self._merge is None:
            shutil.copyfile(self.path, self.path + ".tmp")
            self._merge = open_h5(self.path + ".tmp", "a")
        cache = _FileCache()
        try:
            for part in self._parts[self._merged:]:
                added = None
                if fresh is not None and part == fresh[0]:
                    added = _append_fresh(self._merge, *fresh[1:], self.stream_infos, self._known)
                if added is None:
                    added = _absorb(self._merge, [part], self.stream_infos, cache, self._known)
                self._count(added)
                self._merged += 1
            if extra:
                self._count(_absorb(self._merge, list(extra), self.stream_infos, cache, self._known))
        finally:
            cache.close()

    def _count(self, added: Mapping[str, int]) -> None:
        for path, n in added.items():
            self._added[path] = self._added.get(path, 0) + n

    def finalize(self, extra_sources: Iterable[str] = ()) -> dict[str, int]:
        """Merge committed parts (and ``extra_sources``: other finished stores of the same
        corpus, e.g. shards) into the store, atomically. Returns ``{entry path: rows added}``."""
        extra = [os.path.abspath(p) for p in extra_sources]
        for src in extra:
            with open_h5(src) as f:
                check_header(f, src)
                if f.attrs["corpus_fingerprint"] != self.fingerprint:
                    raise StoreError(
                        f"{src} was built from another corpus (fingerprint {str(f.attrs['corpus_fingerprint'])[:12]}) "
                        f"than {self.path} ({self.fingerprint[:12]}); stores of different corpora cannot be merged"
                    )
                for s, g in f.get("streams", {}).items():
                    self._check_stream(s, get_info(g), where=src)
        if not self._parts and not extra:
            return {}
        self._merge_pending(extra)
        self._merge.close()
        self._merge = None
        atomic_publish(self.path + ".tmp", self.path)
        for part in self._parts:
            os.remove(part)
        self._parts, self._merged, self._known = [], 0, {}
        added, self._added = self._added, {}
        if os.path.isdir(self.parts_dir) and not os.listdir(self.parts_dir):
            os.rmdir(self.parts_dir)
        return added

    def close(self) -> None:
        """Release the store without merging: committed parts stay for the next writer."""
        if getattr(self, "_merge", None) is not None:
            self._merge.close()
            self._merge = None
            os.remove(self.path + ".tmp")
        if getattr(self, "_lock_fd", None) is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_skipped(sg, skipped: list[tuple[str, str, str]]) -> None:
    rows = sorted(skipped)
    g = sg.require_group("skipped")
    for col, name in enumerate(("ids", "kind", "reason")):
        values = [r[col] for r in rows]
        if name not in g:
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        ds = g[name]
        n0 = ds.shape[0]
        ds.resize((n0 + len(values),))
        ds[n0:] = np.array(values, dtype=object)


def _absorb(dst, sources: list[str], infos: Mapping[str, Mapping[str, Any]], cache: _FileCache,
            known: dict[str, set[str]] | None = None) -> dict[str, int]:
    """Append every entry of ``sources`` missing from ``dst``, new entries in id order.
    ``known`` caches ``{entry path: ids in dst}`` across calls (kept up to date here)."""
    known = {} if known is None else known
    plan: dict[str, list[tuple[str, str, int, int]]] = {}  # entry path -> [(id, src, offset, length)]
    skips: dict[str, dict[tuple[str, str], str]] = {}
    for src in sources:
        f = cache.get(src)
        for stream, sg in f.get("streams", {}).items():
            for kind_path in _entry_tables(sg):
                ids, offs, lens = read_index(sg[kind_path])
                plan.setdefault(entry_path(stream, kind_path), []).extend(
                    (i, src, int(o), int(n)) for i, o, n in zip(ids, offs, lens))
            if "skipped" in sg:
                k = sg["skipped"]
                for i, kind, reason in zip(k["ids"].asstr()[...], k["kind"].asstr()[...], k["reason"].asstr()[...]):
                    skips.setdefault(stream, {})[(i, kind)] = reason
    added: dict[str, int] = {}
    for stream, info in infos.items():
        if stream in {p.split("/")[1] for p in plan} | set(skips):
            sg = dst.require_group(f"streams/{stream}")
            set_info(sg, info)
    for path, entries in sorted(plan.items()):
        existing = _ids_in(dst, path, known)
        seen: dict[str, str] = {}
        todo = []
        for e in sorted(entries, key=lambda e: e[0]):
            if e[0] in existing:
                continue
            if e[0] in seen:
                raise StoreError(f"utterance {e[0]} appears twice in {path}: in {seen[e[0]]} and in {e[1]}")
            seen[e[0]] = e[1]
            todo.append(e)
        if not todo:
            continue
        if path not in dst:
            proto = cache.get(todo[0][1])[path]
            new_entry_table(dst, path, {n: _empty_like(proto[n]) for n in row_arrays(proto)})
        g = dst[path]
        names = row_arrays(g)
        buf_ids, buf_lens, buf, size = [], [], {n: [] for n in names}, 0
        for uid, src, off, n in todo:
            sgrp = cache.get(src)[path]
            for name in names:
                ds = sgrp[name]
                rows = ds.asstr()[off:off + n] if ds.dtype.kind == "O" else ds[off:off + n]
                buf[name].append(rows)
                size += rows.nbytes
            buf_ids.append(uid)
            buf_lens.append(n)
            if size > FLUSH_BYTES:
                append_rows(g, buf_ids, buf_lens, {k: np.concatenate(v) for k, v in buf.items()})
                buf_ids, buf_lens, buf, size = [], [], {n: [] for n in names}, 0
        if buf_ids:
            append_rows(g, buf_ids, buf_lens, {k: np.concatenate(v) for k, v in buf.items()})
        existing.update(e[0] for e in todo)
        added[path] = len(todo)
    for stream, sk in skips.items():
        _add_skips(dst[f"streams/{stream}"], sk)
    return added


def _ids_in(dst, path: str, known: dict[str, set[str]]) -> set[str]:
    """Ids of entry table ``path`` in ``dst``, read once and cached in ``known``."""
    if path not in known:
        known[path] = set(dst[path]["ids"].asstr()[...]) if path in dst else set()
    return known[path]


def _add_skips(sg, skips: Mapping[tuple[str, str], str]) -> None:
    """Record ``{(utt_id, kind): reason}`` skips in stream group ``sg``, those it lacks."""
    have = set(zip(sg["skipped"]["ids"].asstr()[...], sg["skipped"]["kind"].asstr()[...])) if "skipped" in sg else set()
    new = [(i, kind, reason) for (i, kind), reason in skips.items() if (i, kind) not in have]
    if new:
        _write_skipped(sg, new)


def _append_fresh(dst, stream: str, tables: Mapping[str, tuple[list[str], list[int], Mapping[str, np.ndarray]]],
                  skipped: list[tuple[str, str, str]], infos: Mapping[str, Mapping[str, Any]],
                  known: dict[str, set[str]]) -> dict[str, int] | None:
    """What ``_absorb`` does for one just-written part, from the arrays still in memory (no read
    back, no per-utterance copies). None when an entry is already in ``dst``: the caller then
    merges the part file entry by entry."""
    for path, (ids, _, _) in tables.items():
        if not _ids_in(dst, path, known).isdisjoint(ids):
            return None
    if not tables and not skipped:
        return {}
    sg = dst.require_group(f"streams/{stream}")
    set_info(sg, infos[stream])
    added: dict[str, int] = {}
    for path, (ids, lengths, arrays) in sorted(tables.items()):
        if path not in dst:
            new_entry_table(dst, path, {k: v[:0] for k, v in arrays.items()})
        append_rows(dst[path], ids, lengths, arrays)
        known[path].update(ids)
        added[path] = len(ids)
    if skipped:
        _add_skips(sg, {(i, kind): reason for i, kind, reason in skipped})
    return added


def _entry_tables(sg) -> list[str]:
    """Relative paths of entry tables in a stream group (``frames``, ``segments/word`` …)."""
    out = []

    def visit(name, obj):
        if hasattr(obj, "keys") and "ids" in obj and DATA in obj:
            out.append(name)
    sg.visititems(visit)
    return sorted(out)


def _empty_like(ds) -> np.ndarray:
    dtype = object if ds.dtype.kind == "O" else ds.dtype
    return np.empty((0,) + ds.shape[1:], dtype=dtype)


def merge_stores(out: str | os.PathLike, shards: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Merge finished stores of one corpus (e.g. ``--shard i/n`` outputs) into ``out``."""
    shards = [os.fspath(s) for s in shards]
    if not shards:
        raise StoreError("merge needs at least one shard store")
    for s in shards:
        if not os.path.exists(s):
            raise StoreError(f"shard store {s} does not exist")
    with open_h5(shards[0]) as f:
        check_header(f, shards[0])
        table = read_table(f["utterances"])
        meta = {k[len("corpus_"):]: v for k, v in f.attrs.items() if k.startswith("corpus_") and k != "corpus_fingerprint"}
    with StoreWriter(out, table=table, corpus_meta=meta) as w:
        return w.finalize(extra_sources=shards)
