"""The store writer (schema v2): exclusive, crash-safe, resumable, and it writes every byte once.

How a kill -9 at any instant leaves the store at its last committed state:

* Activations are only ever written to new, immutable *part files* in ``STORE.h5.d/``. A part is
  written under a ``.tmp`` name, fsynced and renamed: it exists whole or not at all. A part is
  never modified after that, and never deleted while an index refers to it.
* ``STORE.h5`` is a small index (the utterance table, stream infos, and per utterance: which part,
  which rows). ``finalize()`` builds the next index in memory, writes it to ``STORE.h5.tmp``,
  fsyncs it and renames it over ``STORE.h5``: readers see the old index or the new one, never a
  mixture. A stage therefore writes what it adds plus one index, whatever the store's size.
* A kill before the index swap leaves the old index plus committed parts that no index lists
  (*pending* parts); the next writer adopts them (``done_ids`` counts them), so a re-run computes
  only what is missing. Pending parts are always newer than the index they are adopted into.
* One writer at a time: an ``flock`` on ``STORE.h5.lock`` (released by the kernel when a
  process dies, so a killed writer never leaves a stale lock). The file is removed when the
  writer closes.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import shutil
import warnings
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .. import __version__
from ..arrays import offsets_from_lengths
from ..errors import StoreError
from .fingerprint import corpus_changes, corpus_fingerprint
from .h5io import (BIG_USERBLOCK, STR, check_header, file_header, fsync_path, get_info, layer_checksums, open_h5,
                   read_index, writing_h5, row_arrays, set_info, write_checksums, write_entry_table)
from .index import SELF, EntryTable, StoreIndex, data_dir, load_index, part_path, save_index
from .schema import DATA, PART_TYPE, READABLE_VERSIONS, STORE_TYPE, entry_path

#: ``{kind: {utt_id: {array name: rows}}}``: what one commit adds to one stream. ``data`` is required.
Entries = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]

_SEQ = re.compile(r"^(\d+)-")


#: what a failed write raises: the OS's OSError, or h5py's RuntimeError/OSError wrapping HDF5's
#: "file write failed ... errno = 28" when the failure happens inside the HDF5 library
WRITE_ERRORS = (OSError, RuntimeError)
_H5_ERRNO = re.compile(r"errno = (\d+)")
_WHAT_TO_DO = {errno.ENOSPC: "free some space or write the store elsewhere",
               errno.EDQUOT: "free some space or write the store elsewhere",
               errno.EFBIG: "the file size limit (ulimit -f) is too small for it",
               errno.EROFS: "write the store to a writable disk",
               errno.EACCES: "give yourself write permission there or write the store elsewhere",
               errno.EPERM: "give yourself write permission there or write the store elsewhere",
               errno.EISDIR: "remove or rename that folder"}


def _errno(e: BaseException) -> int | None:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = _H5_ERRNO.search(str(e))
    return int(m.group(1)) if m else None


def _io_error(e: BaseException, path: str, what: str, kept: str = "nothing of this commit was kept and the store is "
              "as it was") -> StoreError:
    """One sentence for a file-system error while writing (full disk, read-only, no permission):
    which file, why, what to do, and that the store is intact."""
    code = _errno(e)
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
           errno.EFBIG: "the file is too large for this process's file size limit",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EISDIR: "a folder is in the way"}.get(
               code, (e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:160]))
    todo = _WHAT_TO_DO.get(code, "check the disk and run the same command again")
    return StoreError(f"could not {what} {path}: {why}; {kept}; {todo}")


def _check_free(folder: str, needed: int, path: str) -> None:
    """Refuse a commit the disk cannot hold, before writing a byte of it (HDF5 fails untidily
    when the disk fills mid-file)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise StoreError(f"could not write {path}: the disk is full (it needs about {needed / 1e6:,.1f} MB, "
                         f"{free / 1e6:,.1f} MB are free); nothing of this commit was kept and the store is as it "
                         "was; free some space or write the store elsewhere, then run the same command again")


def _remove_quietly(path: str) -> None:
    """Remove a half-written file; a failure to remove it is not the error to report (the next
    writer removes any ``.tmp`` it finds)."""
    try:
        if os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


class _Pending:
    """What a committed part that no index lists yet holds (read from its index datasets)."""

    def __init__(self, name: str, tables: dict[tuple[str, str], tuple], skipped: dict[str, list], infos: dict):
        self.name, self.tables, self.skipped, self.infos = name, tables, skipped, infos


def _read_part(path: str, name: str, fingerprint: str | None) -> _Pending:
    from .index import DAMAGE
    try:
        return _read_part_tables(path, name, fingerprint)
    except StoreError:
        raise
    except DAMAGE as e:
        raise StoreError(f"committed part file {path} of an unfinished run is damaged ({type(e).__name__}: "
                         f"{str(e)[:160]}); delete it and run the command again (it recomputes what it held)") from None


def _read_part_tables(path: str, name: str, fingerprint: str | None) -> _Pending:
    with open_h5(path) as f:
        check_header(f, path, (PART_TYPE, STORE_TYPE), READABLE_VERSIONS)
        if fingerprint is not None and f.attrs["corpus_fingerprint"] != fingerprint:
            raise StoreError(f"part file {path} belongs to another corpus (fingerprint "
                             f"{str(f.attrs['corpus_fingerprint'])[:12]}, the store's is {fingerprint[:12]}); remove it")
        tables, skipped, infos = {}, {}, {}
        from .index import _entry_kinds, _read_skipped
        for s, sg in f.get("streams", {}).items():
            infos[s] = get_info(sg)
            for kind in _entry_kinds(sg):
                tables[(s, kind)] = read_index(sg[kind])
            skipped[s] = _read_skipped(sg)
    return _Pending(name, tables, skipped, infos)


class StoreWriter:
    """Exclusive writer of one store.

    ``table`` (from ``corpora.utterance_table``) is required to create a store; when the store
    exists it must describe the same corpus (same fingerprint), else the writer refuses and lists
    what changed, unless ``update_corpus``: then the utterances whose inputs changed (audio
    content, transcript, start, end) lose every entry, removed ones too, and the store takes the
    new table at ``finalize``; re-running the stages recomputes exactly those.
    """

    def __init__(self, path: str | os.PathLike, table: pd.DataFrame | None = None,
                 corpus_meta: Mapping[str, Any] | None = None, update_corpus: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.parts_dir = data_dir(self.path)
        self._lock_fd = self._acquire_lock()
        try:
            self._open(table, corpus_meta or {}, update_corpus)
        except BaseException:
            self.close()
            raise

    # -- set-up --------------------------------------------------------------------------
    def _acquire_lock(self) -> int:
        folder = os.path.dirname(self.path) or "."
        lock = self.path + ".lock"
        for _ in range(100):
            try:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                if os.path.islink(lock):
                    raise StoreError(f"the store's lock file {lock} is a symbolic link (to {os.readlink(lock)}); "
                                     "expected a plain file: remove it (it holds nothing) and run again") from None
                if os.path.isdir(lock):
                    raise StoreError(f"the store's lock file {lock} is a folder; expected a plain file: remove it (a "
                                     "lock file holds nothing) and run again") from None
                raise _io_error(e, lock, "create the lock file", kept="nothing was written") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreError(
                    f"another process is writing {self.path} (it holds {self.path}.lock); "
                    "wait for it to finish or write to another store"
                ) from None
            except OSError as e:
                os.close(fd)
                raise StoreError(f"cannot lock {lock}: this file system does not support locks ({e.strerror or e}); "
                                 "put the store on a local disk") from None
            try:   # the writer before us removes the file while holding it: ours must be the one at the path
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise StoreError(f"cannot take the lock {lock}: it keeps being replaced")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _open(self, table: pd.DataFrame | None, corpus_meta: Mapping[str, Any], update: bool) -> None:
        for stale in glob.glob(self.path + ".tmp") + glob.glob(os.path.join(self.parts_dir, "*.tmp")):
            try:  # half-written by a killed process or a failed write: never committed
                if os.path.isdir(stale) and not os.path.islink(stale):
                    shutil.rmtree(stale)
                else:
                    os.remove(stale)
            except OSError as e:
                raise _io_error(e, stale, "remove the unfinished file", kept="nothing was written") from None
        fp = corpus_fingerprint(table) if table is not None else None
        self.dropped: set[str] = set()   # utterances whose entries go (inputs changed, or removed)
        self.changes: list[tuple[str, str]] = []
        self._dirty = False
        if os.path.exists(self.path):
            idx = load_index(self.path)
            if idx.version == 1:
                raise StoreError(f"{self.path} is a schema v1 store; run `emofuse store upgrade {self.path}` once "
                                 "(it copies no activation) and run this command again")
            self.index = idx
            if fp is not None and fp != idx.fingerprint:
                self._reconcile(table, fp, update)
        else:
            if table is None:
                raise StoreError(f"{self.path} does not exist; run extract-embeddings to create it")
            self.index = StoreIndex(version=2, fingerprint=fp, meta={k: str(v) for k, v in corpus_meta.items()},
                                    table=table.reset_index(drop=True))
            try:
                save_index(self.index, self.path, __version__)
            except OSError as e:
                self._cleanup_tmp()
                raise _io_error(e, self.path, "create the store") from None
        self.fingerprint = self.index.fingerprint
        self.table = self.index.table
        self.stream_infos = {s: dict(i) for s, i in self.index.streams.items()}
        for name in self.index.retired:  # a compaction was killed before it deleted these
            p = part_path(self.path, name)
            if os.path.exists(p):
                os.remove(p)
        known = set(self.index.parts) | set(self.index.retired)
        self._pending: list[_Pending] = []
        for p in sorted(glob.glob(os.path.join(self.parts_dir, "*.h5"))):
            name = os.path.basename(p)
            if name in known:
                continue
            pend = _read_part(p, name, self.fingerprint)
            for s, info in pend.infos.items():
                self._check_stream(s, info, where=p)
            self._pending.append(pend)
        seqs = [int(m.group(1)) for n in known | {p.name for p in self._pending}
                if (m := _SEQ.match(os.path.basename(n)))]
        self._seq = max(seqs, default=-1) + 1

    def _reconcile(self, table: pd.DataFrame, fp: str, update: bool) -> None:
        """The run's corpus differs from the store's: adopt audio digests a v1 table lacked,
        else refuse with the list of changes, or (``update``) drop what changed."""
        old = self.index.table
        changes = corpus_changes(old, table)
        if not changes:  # only digests the old table did not record: take them
            self.index.table, self.index.fingerprint, self._dirty = table.reset_index(drop=True), fp, True
            return
        if not update:
            shown = "; ".join(f"{i}: {what}" for i, what in changes[:8])
            more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
            raise StoreError(
                f"{self.path} was built from another corpus, or another version of it: {len(changes)} utterances "
                f"differ ({shown}{more}); pass --update-corpus to drop their cached tensors and recompute them, "
                "or write to a new store"
            )
        self.changes = changes
        self.dropped = {i for i, what in changes if what != "label, session or speaker changed"}
        self.index.table, self.index.fingerprint, self._dirty = table.reset_index(drop=True), fp, True

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
    def add_stream(self, name: str, info: Mapping[str, Any]) -> None:
        """Declare a stream. ``info['fingerprint']`` identifies its encoder; a stream of that name
        with another fingerprint is refused."""
        if "fingerprint" not in info:
            raise ValueError("stream info needs a 'fingerprint' entry")
        if not name or "/" in name:
            raise StoreError(f"stream name {name!r} is not allowed; use letters, digits, '-' or '_'")
        info = {**info, "corpus_fingerprint": self.fingerprint}
        self._check_stream(name, info, where=self.path)

    def _records(self, stream: str, kind: str) -> dict[str, str]:
        """``{utt_id: inputs digest}`` of the latest record (entry or skip) per utterance for
        ``kind`` of ``stream``: the index, then pending parts in commit order."""
        rec: dict[str, str] = {}
        t = self.index.tables.get((stream, kind))
        if t is not None:
            rec.update(zip(t.ids, t.inputs))
        rec.update((i, d) for i, k, _, d in self.index.skipped.get(stream, []) if k == kind)
        for p in self._pending:
            got = p.tables.get((stream, kind))
            if got is not None:
                rec.update(zip(got[0], got[3]))
            rec.update((i, d) for i, k, _, d in p.skipped.get(stream, []) if k == kind)
        return rec

    def done_ids(self, stream: str, kind: str, inputs: Mapping[str, str] | None = None) -> set[str]:
        """Ids already committed for ``kind`` of ``stream`` (entries and skips, index and pending
        parts). With ``inputs`` (``{utt_id: digest}``), only those recorded with that digest:
        the others' inputs changed and they must be recomputed."""
        rec = self._records(stream, kind)
        if inputs is None:
            return {i for i in rec if i not in self.dropped}
        return {i for i, d in rec.items() if i not in self.dropped and d == inputs.get(i, "")}

    def recorded_inputs(self, stream: str, kind: str) -> dict[str, str]:
        """``{utt_id: inputs digest}`` as committed (latest record per utterance)."""
        return {i: d for i, d in self._records(stream, kind).items() if i not in self.dropped}

    def _next_name(self, tag: str) -> tuple[str, str]:
        name = f"{self._seq:08d}-{os.getpid()}-{tag}.h5"
        self._seq += 1
        return os.path.join(self.parts_dir, name), name

    def commit(self, stream: str, entries: Entries, skipped: Iterable[tuple[str, str, str]] = (),
               inputs: Mapping[str, str] | None = None) -> str:
        """Atomically commit one unit of work for ``stream``: entries per kind, and skipped
        utterances as ``(utt_id, kind, reason)`` triples; ``inputs``: per utterance, the digest of
        what its entries were computed from. Returns the part file's path."""
        if stream not in self.stream_infos:
            raise StoreError(f"stream {stream!r} was not declared with add_stream()")
        inputs = inputs or {}
        final, name = self._next_name(stream)
        tmp = final + ".tmp"
        tables, skips = {}, []
        needed = sum(np.asarray(a).nbytes for per_utt in entries.values() for arrays in per_utt.values()
                     for a in arrays.values() if getattr(a, "dtype", np.dtype("O")).kind != "O")
        try:
            os.makedirs(self.parts_dir, exist_ok=True)
            _check_free(self.parts_dir, int(needed * 1.02) + (1 << 20), final)
            with writing_h5(tmp) as f:
                file_header(f, PART_TYPE, self.fingerprint, __version__)
                sg = f.create_group(f"streams/{stream}")
                set_info(sg, self.stream_infos[stream])
                for kind, per_utt in entries.items():
                    if not per_utt:
                        continue
                    ids = sorted(per_utt)
                    first = per_utt[ids[0]]
                    if DATA not in first:
                        raise ValueError(f"entries of kind {kind!r} need a {DATA!r} array")
                    lengths = [len(per_utt[i][DATA]) for i in ids]
                    arrays = {k: np.concatenate([np.asarray(per_utt[i][k]) for i in ids]) for k in first}
                    digests = [inputs.get(i, "") for i in ids]
                    write_entry_table(f, entry_path(stream, kind), ids, lengths, arrays, digests)
                    offs = offsets_from_lengths(lengths)
                    tables[(stream, kind)] = (np.array(ids, dtype=object), offs, np.asarray(lengths, np.int64), digests)
                skips = [(i, k, r, inputs.get(i, "")) for i, k, r in sorted(skipped)]
                if skips:
                    g = sg.create_group("skipped")
                    for col, nm in enumerate(("ids", "kind", "reason", "inputs")):
                        g.create_dataset(nm, data=np.array([r[col] for r in skips], dtype=object),
                                         dtype=STR)
                    fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(self.parts_dir)
        except WRITE_ERRORS as e:
            _remove_quietly(tmp)
            if isinstance(e, RuntimeError) and _errno(e) is None:
                raise
            raise _io_error(e, final, "write") from None
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._pending.append(_Pending(name, tables, {stream: skips}, {stream: self.stream_infos[stream]}))
        return final

    def finalize(self, extra_sources: Iterable[str] = ()) -> dict[str, int]:
        """Publish everything committed (and ``extra_sources``: other finished stores of the same
        corpus, e.g. shards, whose parts are linked, not copied) with one atomic index swap.
        Returns ``{entry path: utterances added or replaced}``."""
        extra = [os.path.abspath(os.fspath(p)) for p in extra_sources]
        sources = []
        for src in extra:
            if not os.path.exists(src):
                raise StoreError(f"store {src} does not exist")
            sidx = load_index(src)
            if sidx.fingerprint != self.fingerprint:
                raise StoreError(
                    f"{src} was built from another corpus (fingerprint {sidx.fingerprint[:12]}) "
                    f"than {self.path} ({self.fingerprint[:12]}); stores of different corpora cannot be merged"
                )
            for s, info in sidx.streams.items():
                self._check_stream(s, info, where=src)
            sources.append((src, sidx))
        if not self._pending and not sources and not self._dirty and not self.dropped:
            return {}
        new = self._build(sources)
        try:
            save_index(new, self.path, __version__)
        except WRITE_ERRORS as e:
            self._cleanup_tmp()
            if isinstance(e, RuntimeError) and _errno(e) is None:
                raise
            raise _io_error(e, self.path, "publish the index of", kept="the committed parts stay for the next run "
                            "and the index is as it was") from None
        for name in set(new.retired) - set(self.index.retired):
            p = part_path(self.path, name)
            if os.path.exists(p):
                os.remove(p)
        added, self._added = self._added, {}
        self.index, self._pending, self.dropped, self._dirty = new, [], set(), False
        return added

    def _build(self, sources) -> StoreIndex:
        """The next index: the current one, then pending parts in commit order, then the
        sources' entries in id order. Per utterance and kind, a later record replaces an earlier
        one when its inputs digest differs (its inputs changed); with the same digest the first
        stays (a repeat)."""
        old = self.index
        parts = list(old.parts)
        part_no: dict[tuple[str, str], int] = {}  # (source store, its part name) -> part number here
        state: dict[tuple[str, str], dict[str, tuple]] = {}
        for key, t in old.tables.items():
            st = state.setdefault(key, {})
            for i, p, r, n, d in zip(t.ids, t.part, t.row, t.length, t.inputs):
                if i not in self.dropped:
                    st[i] = ("entry", p, r, n, d)
        for s, rows in old.skipped.items():
            for i, k, reason, d in rows:
                if i not in self.dropped:
                    state.setdefault((s, k), {}).setdefault(i, ("skip", reason, d))
        added: dict[str, int] = {}

        def offer(key, uid, rec) -> bool:
            st = state.setdefault(key, {})
            cur = st.get(uid)
            if cur is not None and cur[-1] == rec[-1]:
                return False
            st[uid] = rec
            if rec[0] == "entry":
                path = entry_path(*key)
                added[path] = added.get(path, 0) + 1
            return True

        retired = list(old.retired)
        for pend in self._pending:
            k = len(parts)
            used = False
            for key, (ids, offs, lens, digests) in pend.tables.items():
                for i, o, n, d in zip(ids, offs, lens, digests):
                    used |= offer(key, str(i), ("entry", k, int(o), int(n), d))
            for s, rows in pend.skipped.items():
                for i, kind, reason, d in rows:
                    used |= offer((s, kind), i, ("skip", reason, d))
            if used:
                parts.append(pend.name)
            else:
                retired.append(pend.name)   # nothing new in it: deleted after the swap
        offered = []
        for k, (src, sidx) in enumerate(sources):
            for key, t in sidx.tables.items():
                offered += [(i, key, k, ("entry", (src, sidx.parts[p]), r, n, d)) for i, p, r, n, d in
                            zip(t.ids, t.part, t.row, t.length, t.inputs)]
            for s, rows in sidx.skipped.items():
                offered += [(i, (s, kind), k, ("skip", reason, d)) for i, kind, reason, d in rows]
        for i, key, _, rec in sorted(offered, key=lambda x: (x[0], x[1], x[2])):
            cur = state.get(key, {}).get(i)
            if cur is not None and cur[-1] == rec[-1]:
                continue  # a repeat: nothing to link
            if rec[0] == "entry":
                src, name = rec[1]
                if rec[1] not in part_no:
                    part_no[rec[1]] = len(parts)
                    parts.append(self._link(part_path(src, name)))
                rec = ("entry", part_no[rec[1]]) + rec[2:]
            offer(key, i, rec)
        tables: dict[tuple[str, str], EntryTable] = {}
        skipped: dict[str, list] = {}
        for key, st in state.items():
            t = EntryTable()
            for i, rec in st.items():
                if rec[0] == "entry":
                    t.ids.append(i)
                    t.part.append(rec[1])
                    t.row.append(rec[2])
                    t.length.append(rec[3])
                    t.inputs.append(rec[4])
                else:
                    skipped.setdefault(key[0], []).append((i, key[1], rec[1], rec[2]))
            if len(t):
                tables[key] = t
        infos = {s: {**info, "corpus_fingerprint": self.fingerprint} for s, info in self.stream_infos.items()
                 if any(k[0] == s for k in tables) or skipped.get(s)}
        self._added = added
        return StoreIndex(version=2, fingerprint=self.fingerprint, meta=dict(old.meta), table=self.index.table,
                          parts=parts, retired=retired, streams=infos, tables=tables, skipped=skipped)

    def _link(self, src: str) -> str:
        """Give part ``src`` of another store a name in this store's folder: a hard link (no
        copy) where the file system allows it, else a copy. Returns its name in the index."""
        final, rel = self._next_name("merged")
        os.makedirs(self.parts_dir, exist_ok=True)
        try:
            os.link(src, final)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise _io_error(e, final, "link") from None
            tmp = final + ".tmp"
            try:
                shutil.copyfile(src, tmp)
                fsync_path(tmp)
                os.replace(tmp, final)
            except OSError as e2:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise _io_error(e2, final, "copy a shard's part to") from None
        fsync_path(self.parts_dir)
        return rel

    def _cleanup_tmp(self) -> None:
        _remove_quietly(self.path + ".tmp")

    def close(self) -> None:
        """Release the store without publishing: committed parts stay for the next writer."""
        if getattr(self, "_lock_fd", None) is not None:
            _release_lock(self.path, self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_stores(out: str | os.PathLike, shards: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Merge finished stores of one corpus (e.g. ``--shard i/n`` outputs) into ``out``: their
    part files are hard-linked into ``out``'s folder, no activation is copied."""
    shards = [os.fspath(s) for s in shards]
    if not shards:
        raise StoreError("merge needs at least one shard store")
    for s in shards:
        if not os.path.exists(s):
            raise StoreError(f"shard store {s} does not exist")
    first = load_index(shards[0])
    with StoreWriter(out, table=first.table, corpus_meta=first.meta) as w:
        return w.finalize(extra_sources=shards)


class _Lock:
    """The writer lock of a store, for maintenance commands (``upgrade``, ``compact``)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = StoreWriter._acquire_lock(self)

    def close(self) -> None:
        _release_lock(self.path, self.fd)


def _release_lock(path: str, fd: int) -> None:
    """Remove ``PATH.lock`` while still holding it (a newcomer that opened it sees it gone and
    retries), then release it: no lock file is left after a clean run."""
    try:
        os.remove(path + ".lock")
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def upgrade_store(path: str | os.PathLike) -> str:
    """Turn a schema v1 store into a v2 one without copying its activations: the v1 file is
    hard-linked into ``STORE.h5.d/`` as the store's one part, and a v2 index takes its name.
    Returns one sentence saying what was done."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise StoreError(f"feature store {path} does not exist")
    lock = _Lock(path)
    try:
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
        idx.version, idx.parts = 2, [name]
        save_index(idx, path, __version__)
        return f"{path} upgraded to schema v2: its v1 file was {how} to {final}"
    finally:
        lock.close()


def compact_store(path: str | os.PathLike, block_bytes: int = 64 << 20) -> str:
    """Rewrite a store into the fewest files (the index and one part), dropping rows no entry
    uses; for shipping. Needs free disk for one copy of what the store uses. Readers opened
    before it may fail afterwards (the old parts are deleted). Returns one sentence."""
    from .reader import FeatureStore, UncheckedStoreWarning
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise StoreError(f"feature store {path} does not exist")
    lock = _Lock(path)
    try:
        idx = load_index(path)
        folder = data_dir(path)
        os.makedirs(folder, exist_ok=True)
        known = idx.parts + idx.retired
        seqs = [int(m.group(1)) for n in known + os.listdir(folder) if (m := _SEQ.match(os.path.basename(n)))]
        name = f"{max(seqs, default=-1) + 1:08d}-{os.getpid()}-compact.h5"
        final = os.path.join(folder, name)
        tmp = final + ".tmp"
        tables: dict[tuple[str, str], EntryTable] = {}
        before = sum(os.path.getsize(part_path(path, n)) for n in set(idx.parts) if os.path.exists(part_path(path, n)))
        try:
            with warnings.catch_warnings(), FeatureStore(path) as fs, writing_h5(tmp, BIG_USERBLOCK) as out:
                warnings.simplefilter("ignore", UncheckedStoreWarning)  # this is the remedy it names
                file_header(out, PART_TYPE, idx.fingerprint, __version__)
                for (s, kind), t in sorted(idx.tables.items()):
                    tables[(s, kind)] = _copy_table(fs, out, s, kind, t, block_bytes)
                    set_info(out.require_group(f"streams/{s}"), idx.streams[s])
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(folder)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise _io_error(e, final, "write") from None
        for t in tables.values():
            t.part = [0] * len(t.ids)
        old = [n for n in idx.parts + idx.retired if n != SELF]  # a v1 file is unlinked by the swap itself
        idx.version, idx.parts, idx.retired, idx.tables = 2, [name], old, tables
        save_index(idx, path, __version__)
        for n in old:
            p = part_path(path, n)
            if os.path.exists(p):
                os.remove(p)
        idx.retired = []
        save_index(idx, path, __version__)
        return (f"{path} compacted: {len(set(old)) or 1} part files ({before / 1e6:.1f} MB) rewritten as "
                f"{final} ({os.path.getsize(final) / 1e6:.1f} MB), with checksums")
    finally:
        lock.close()


def _copy_table(fs, out, stream: str, kind: str, t: EntryTable, block_bytes: int) -> EntryTable:
    """Copy one entry table's referenced rows, in index order, into part file ``out``."""
    first = fs._file(t.part[0])[entry_path(stream, kind)]
    names = row_arrays(first)
    lengths = np.asarray(t.length, np.int64)
    total = int(lengths.sum())
    g = out.require_group(entry_path(stream, kind))
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
            from .schema import chunk_rows
            kw["chunks"] = (min(total, chunk_rows(src.shape[1:], src.dtype.itemsize)), 1, src.shape[2])
        dst = g.create_dataset(nm, shape=(total,) + src.shape[1:], dtype=STR if is_str else src.dtype, **kw)
        row_bytes = max(1, int(np.prod(src.shape[1:], dtype=np.int64)) * (8 if is_str else src.dtype.itemsize))
        sums: list[np.ndarray] = []
        k, pos = 0, 0
        while k < len(t.ids):
            j, rows = k, 0
            while j < len(t.ids) and (rows == 0 or (rows + t.length[j]) * row_bytes <= block_bytes):
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
