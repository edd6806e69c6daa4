"""The merge engine: the next index, built from the published one, the committed parts no index
lists yet (*pending* parts) and other finished stores of the same corpus (shards).

Per utterance and entry kind, a later record replaces an earlier one when its inputs digest
differs (its inputs changed); with the same digest the first stays (a repeat after a crash, or a
shard holding what the store already has). Order: the published index, then the pending parts in
commit order, then the sources' entries in id order. A source's part that holds something new is
hard-linked into the store's folder (``link_part``): no activation is copied.

Nothing here decides *when* an index is published or under which names parts are written: that
is the commit protocol (``writer.StoreWriter``).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import StoreError
from .h5io import check_header, fsync_path, get_info, open_h5, read_index
from .index import DAMAGE, EntryTable, StoreIndex, _entry_kinds, _read_skipped, load_index, part_path
from .schema import PART_TYPE, READABLE_VERSIONS, STORE_TYPE, entry_path
from .write_errors import io_error

#: one utterance's record in an entry table while the index is built: ``("entry", part, row,
#: length, inputs)`` or ``("skip", reason, inputs)``; the last field is always the inputs digest
Record = tuple


@dataclass
class PendingPart:
    """What a committed part that no index lists yet holds (read from its index datasets):
    ``tables[(stream, kind)] = (ids, offsets, lengths, inputs)``, ``skipped[stream] = [(id, kind,
    reason, inputs)]``, ``infos[stream] = info``."""

    name: str
    tables: dict[tuple[str, str], tuple] = field(default_factory=dict)
    skipped: dict[str, list] = field(default_factory=dict)
    infos: dict[str, dict] = field(default_factory=dict)


def read_part(path: str, name: str, fingerprint: str | None) -> PendingPart:
    """The index datasets of a committed part file ``path`` (named ``name`` in the store's
    folder); refused when it belongs to another corpus, one sentence when it is damaged."""
    try:
        return _read_part_tables(path, name, fingerprint)
    except StoreError:
        raise
    except DAMAGE as e:
        raise StoreError(f"committed part file {path} of an unfinished run is damaged ({type(e).__name__}: "
                         f"{str(e)[:160]}); delete it and run the command again (it recomputes what it held)") from None


def _read_part_tables(path: str, name: str, fingerprint: str | None) -> PendingPart:
    with open_h5(path) as f:
        check_header(f, path, (PART_TYPE, STORE_TYPE), READABLE_VERSIONS)
        if fingerprint is not None and f.attrs["corpus_fingerprint"] != fingerprint:
            raise StoreError(f"part file {path} belongs to another corpus (fingerprint "
                             f"{str(f.attrs['corpus_fingerprint'])[:12]}, the store's is {fingerprint[:12]}); remove it")
        part = PendingPart(name)
        for s, sg in f.get("streams", {}).items():
            part.infos[s] = get_info(sg)
            for kind in _entry_kinds(sg):
                part.tables[(s, kind)] = read_index(sg[kind])
            part.skipped[s] = _read_skipped(sg)
    return part


def open_sources(paths: Iterable[str], fingerprint: str, into: str) -> list[tuple[str, StoreIndex]]:
    """The indexes of finished stores to merge into store ``into`` (absolute paths); refused when
    one is missing or holds another corpus."""
    sources = []
    for src in paths:
        if not os.path.exists(src):
            raise StoreError(f"store {src} does not exist")
        sidx = load_index(src)
        if sidx.fingerprint != fingerprint:
            raise StoreError(
                f"{src} was built from another corpus (fingerprint {sidx.fingerprint[:12]}) "
                f"than {into} ({fingerprint[:12]}); stores of different corpora cannot be merged"
            )
        sources.append((src, sidx))
    return sources


@dataclass
class MergeInputs:
    """Everything the next index is built from."""

    current: StoreIndex                        # the published index (its table and fingerprint carry over)
    pending: list[PendingPart]                 # committed parts no index lists yet, in commit order
    sources: list[tuple[str, StoreIndex]]      # other finished stores: path and index
    stream_infos: dict[str, dict]              # every stream declared so far
    dropped: set[str] = field(default_factory=set)   # utterances whose records go (inputs changed, or removed)


@dataclass
class Merged:
    """The next index, and ``added``: ``{entry path: utterances added or replaced}``."""

    index: StoreIndex
    added: dict[str, int]


class _Records:
    """Per (stream, kind), per utterance, the record that wins so far."""

    def __init__(self):
        self.state: dict[tuple[str, str], dict[str, Record]] = {}
        self.added: dict[str, int] = {}

    def get(self, key: tuple[str, str], uid: str) -> Record | None:
        return self.state.get(key, {}).get(uid)

    def keep(self, key: tuple[str, str], uid: str, rec: Record) -> None:
        """A record of the published index (or a repeat's first): no count."""
        self.state.setdefault(key, {})[uid] = rec

    def offer(self, key: tuple[str, str], uid: str, rec: Record) -> bool:
        """Take ``rec`` unless the utterance already has a record with the same inputs digest."""
        st = self.state.setdefault(key, {})
        cur = st.get(uid)
        if cur is not None and cur[-1] == rec[-1]:
            return False
        st[uid] = rec
        if rec[0] == "entry":
            path = entry_path(*key)
            self.added[path] = self.added.get(path, 0) + 1
        return True


def _refuse_conflicts(offered: list, recs: _Records, sources: list[str]) -> None:
    """Refuse a merge where a source brings a record of an utterance computed from other inputs
    (another digest) than the store's or an earlier source's: one of them is stale (e.g. segments
    pooled before a ``.wdseg`` was edited), and which one cannot be told here. Before, the source's
    replaced the store's (the last source's won), so an older store merged in served stale segments."""
    seen: dict[tuple, tuple[str, str]] = {}   # (key, id) -> (digest, whose)
    clash: dict[tuple, list[str]] = {}        # (whose, source, kind path) -> ids
    for i, key, k, rec in offered:
        cur = recs.get(key, i)
        had = (cur[-1], "store") if cur is not None else seen.get((key, i))
        if had is not None and had[0] != rec[-1]:
            clash.setdefault((had[1], sources[k], f"{key[1]} of stream {key[0]!r}"), []).append(str(i))
        seen.setdefault((key, i), (rec[-1], sources[k]))
    if clash:
        (whose, src, path), ids = next(iter(clash.items()))
        other = "this store's" if whose == "store" else f"{os.path.basename(whose)}'s"
        more = f" (and {len(clash) - 1} more such case(s) in other kinds or stores)" if len(clash) > 1 else ""
        raise StoreError(f"{os.path.basename(src)} holds {path} of {len(ids)} utterance(s) (e.g. {ids[0]!r}) "
                         f"computed from other inputs than {other}{more}: one of the two is stale (an alignment or "
                         "audio file, the stage's options or the aligner's version changed between the runs); run "
                         "the stage that wrote them (align-segments, extract-embeddings) on both stores so they are "
                         "current, then merge again")


def build_index(inp: MergeInputs, link: Callable[[str], str]) -> Merged:
    """The next index from ``inp``. ``link(path of a source's part)`` gives that part a name in
    this store's folder (called only for parts that contribute an entry, once each)."""
    old = inp.current
    parts = list(old.parts)
    seals = dict(old.seals)   # what the published index recorded of its parts; new ones are read at the swap
    recs = _Records()
    for key, t in old.tables.items():
        for i, p, r, n, d in zip(t.ids, t.part, t.row, t.length, t.inputs):
            if i not in inp.dropped:
                recs.keep(key, i, ("entry", p, r, n, d))
    for s, rows in old.skipped.items():
        for i, k, reason, d in rows:
            if i not in inp.dropped and recs.get((s, k), i) is None:
                recs.keep((s, k), i, ("skip", reason, d))

    retired = list(old.retired)
    for pend in inp.pending:
        k = len(parts)
        used = False
        for key, (ids, offs, lens, digests) in pend.tables.items():
            for i, o, n, d in zip(ids, offs, lens, digests):
                used |= recs.offer(key, str(i), ("entry", k, int(o), int(n), d))
        for s, rows in pend.skipped.items():
            for i, kind, reason, d in rows:
                used |= recs.offer((s, kind), i, ("skip", reason, d))
        if used:
            parts.append(pend.name)
        else:
            retired.append(pend.name)   # nothing new in it: deleted after the swap

    part_no: dict[tuple[str, str], int] = {}   # (source store, its part name) -> part number here
    offered = []
    shard_index = dict(inp.sources)
    for k, (src, sidx) in enumerate(inp.sources):
        for key, t in sidx.tables.items():
            offered += [(i, key, k, ("entry", (src, sidx.parts[p]), r, n, d)) for i, p, r, n, d in
                        zip(t.ids, t.part, t.row, t.length, t.inputs)]
        for s, rows in sidx.skipped.items():
            offered += [(i, (s, kind), k, ("skip", reason, d)) for i, kind, reason, d in rows]
    offered.sort(key=lambda x: (x[0], x[1], x[2]))
    _refuse_conflicts(offered, recs, [src for src, _ in inp.sources])
    for i, key, _, rec in offered:
        cur = recs.get(key, i)
        if cur is not None and cur[-1] == rec[-1]:
            continue  # a repeat: nothing to link
        if rec[0] == "entry":
            src, name = rec[1]
            sidx = shard_index[src]
            if rec[1] not in part_no:
                part_no[rec[1]] = len(parts)
                parts.append(link(part_path(src, name)))
                if sidx.seals.get(name):   # the shard's own record of its part, not the file as it is now
                    seals[parts[-1]] = sidx.seals[name]
            rec = ("entry", part_no[rec[1]]) + rec[2:]
        recs.offer(key, i, rec)

    tables: dict[tuple[str, str], EntryTable] = {}
    skipped: dict[str, list] = {}
    for key, st in recs.state.items():
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
    infos = {s: {**info, "corpus_fingerprint": old.fingerprint} for s, info in inp.stream_infos.items()
             if any(k[0] == s for k in tables) or skipped.get(s)}
    index = StoreIndex(version=2, fingerprint=old.fingerprint, meta=dict(old.meta), table=old.table,
                       parts=parts, retired=retired, streams=infos, tables=tables, skipped=skipped,
                       seals={n: seals[n] for n in parts if seals.get(n)})
    return Merged(index, recs.added)


def link_part(src: str, final: str) -> None:
    """Make part file ``src`` of another store appear at ``final`` in this store's folder: a hard
    link (no copy) where the file system allows it, else a copy written under ``.tmp`` and renamed."""
    folder = os.path.dirname(final)
    os.makedirs(folder, exist_ok=True)
    try:
        os.link(src, final)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise io_error(e, final, "link") from None
        tmp = final + ".tmp"
        try:
            shutil.copyfile(src, tmp)
            fsync_path(tmp)
            os.replace(tmp, final)
        except OSError as e2:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise io_error(e2, final, "copy a shard's part to") from None
    fsync_path(folder)


def merge_stores(out: str | os.PathLike, shards: Iterable[str | os.PathLike], update_corpus: bool = False
                 ) -> dict[str, int]:
    """Merge finished stores of one corpus (e.g. ``--shard i/n`` outputs) into ``out``: their
    part files are hard-linked into ``out``'s folder, no activation is copied. ``update_corpus``:
    ``out`` may hold an older version of the shards' corpus; what changed is dropped from it
    (the shards bring it recomputed), as ``extract-embeddings --update-corpus`` does."""
    from .writer import StoreWriter   # the commit protocol publishes what this module builds
    shards = [os.fspath(s) for s in shards]
    if not shards:
        raise StoreError("merge needs at least one shard store")
    for s in shards:
        if not os.path.exists(s):
            raise StoreError(f"shard store {s} does not exist")
    first = load_index(shards[0])
    with StoreWriter(out, table=first.table, corpus_meta=first.meta, update_corpus=update_corpus) as w:
        return w.finalize(extra_sources=shards)


__all__ = ["PendingPart", "read_part", "open_sources", "MergeInputs", "Merged", "build_index", "link_part",
           "merge_stores"]
