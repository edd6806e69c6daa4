"""The commit protocol of a store (schema v2): ``StoreWriter`` opens a store under its writer
lock, commits units of work as immutable part files, and publishes them with one atomic index
swap. It writes every byte once. How a kill -9 at any instant leaves the store at its last
committed state:

* Activations are only ever written to new, immutable *part files* in ``STORE.h5.d/``. A part is
  written under a ``.tmp`` name, fsynced and renamed: it exists whole or not at all. A part is
  never modified after that, and never deleted while an index refers to it.
* ``STORE.h5`` is a small index (the utterance table, stream infos, and per utterance: which part,
  which rows). ``finalize()`` has the merge engine (``merge.py``) build the next index in memory,
  writes it to ``STORE.h5.tmp``, fsyncs it and renames it over ``STORE.h5``: readers see the old
  index or the new one, never a mixture. A stage therefore writes what it adds plus one index,
  whatever the store's size.
* A kill before the index swap leaves the old index plus committed parts that no index lists
  (*pending* parts); the next writer adopts them (``done_ids`` counts them), so a re-run computes
  only what is missing. Pending parts are always newer than the index they are adopted into.
* One writer at a time: the writer lock (``lock.py``), never stale after a kill.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .. import __version__
from ..arrays import offsets_from_lengths
from ..errors import StoreError
from .fingerprint import corpus_changes, corpus_fingerprint, locations_differ, same_encoder
from .h5io import STR, file_header, fsync_path, set_info, write_entry_table, writing_h5
from .index import StoreIndex, data_dir, load_index, next_seq, part_path, save_index
from .lock import WriterLock
from .merge import MergeInputs, PendingPart, build_index, link_part, open_sources, read_part
from .schema import DATA, PART_TYPE, entry_path
from .write_errors import WRITE_ERRORS, check_free, io_error, is_hdf5_bug, remove_quietly

#: stream info that changes the stored tensors but is not in the encoder's fingerprint (kept out of
#: it so that fingerprints, and the run keys built on them, stay as they were): the text windowing
#: follows the tokenizer's ``model_max_length``, which the tokenizer hash does not cover. A stream
#: recorded with other values is refused like another encoder.
SHAPING_INFO = ("max_tokens", "window_stride")


#: Stream-info fields that identify an encoder's activations, in the order a refusal names them.
IDENTITY_INFO = ("encoder_id", "weights_hash", "config_hash", "tokenizer_hash", "preprocessing", "compute_dtype",
                 "last_layer") + SHAPING_INFO


#: extract-embeddings' flag of a stream info entry that is an option of the extraction
FLAG_OF_INFO = {"compute_dtype": "--dtype", "store_dtype": "--store-dtype", "layers": "--layers"}


def info_differences(known: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """The entries two stream infos record differently: what identifies the encoder first (in
    ``IDENTITY_INFO``'s order), descriptive ones after; fingerprints and provenance left out."""
    return sorted((k for k in set(known) | set(info)
                   if k not in ("fingerprint", "extract_config", "notes", "corpus_fingerprint", "config",
                                "entries", "granularities")   # the last two: what a reader counts
                   and known.get(k) != info.get(k)),
                  key=lambda k: (k not in IDENTITY_INFO, IDENTITY_INFO.index(k) if k in IDENTITY_INFO else 0, k))


def flags_of(info: Mapping[str, Any], keys: list[str], sep: str = ", ") -> str:
    """The extract-embeddings flags that give ``info``'s own value of those ``keys`` that are
    options of the extraction: ``--dtype bfloat16, --layers 0,6,12`` (joined by ``sep``); "" for none."""
    def value(v: Any) -> str:
        if v is None:
            return "all"   # no layer subset
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return sep.join(f"{FLAG_OF_INFO[k]} {value(info.get(k))}" for k in keys if k in FLAG_OF_INFO)


def shaping_differs(known: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """The ``SHAPING_INFO`` entries two stream infos both record with different values."""
    return [k for k in SHAPING_INFO if k in known and k in info and known[k] != info[k]]


#: ``{kind: {utt_id: {array name: rows}}}``: what one commit adds to one stream. ``data`` is required.
Entries = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]


@dataclass(frozen=True)
class StagedPart:
    """A part file written and sealed under its ``.tmp`` name, waiting for ``publish``."""
    tmp: str
    final: str
    part: PendingPart


def corpus_update(path: str, old: pd.DataFrame, table: pd.DataFrame, update: bool) -> tuple[list, set[str]]:
    """What a run reading the corpus as ``table`` does to the store at ``path`` whose utterance
    table is ``old`` (their fingerprints differ): ``(changes, stale)``, the changed utterances
    (``corpus_changes``) and those whose cached tensors go (all but label/session/speaker changes);
    none when only audio digests a v1 table lacked differ. Without ``update`` a change is refused
    in one sentence listing them (the rank processes of torchrun ask this of the main store before
    they extract, the writer when it opens it)."""
    changes = corpus_changes(old, table)
    if changes and not update:
        shown = "; ".join(f"{i}: {what}" for i, what in changes[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        raise StoreError(
            f"{path} was built from another corpus, or another version of it: {len(changes)} utterances "
            f"differ ({shown}{more}); pass --update-corpus to drop their cached tensors and recompute them, "
            "or write to a new store"
        )
    return changes, {i for i, what in changes if what != "label, session or speaker changed"}


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
        self._lock: WriterLock | None = WriterLock(self.path)
        try:
            self._open(table, corpus_meta or {}, update_corpus)
        except BaseException:
            self.close()
            raise

    # -- set-up --------------------------------------------------------------------------
    def _open(self, table: pd.DataFrame | None, corpus_meta: Mapping[str, Any], update: bool) -> None:
        for stale in glob.glob(self.path + ".tmp") + glob.glob(os.path.join(self.parts_dir, "*.tmp")):
            try:  # half-written by a killed process or a failed write: never committed
                if os.path.isdir(stale) and not os.path.islink(stale):
                    shutil.rmtree(stale)
                else:
                    os.remove(stale)
            except OSError as e:
                raise io_error(e, stale, "remove the unfinished file", kept="nothing was written") from None
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
                self._reconcile(table, fp, update, corpus_meta)
            elif table is not None and locations_differ(idx.table, table):
                self._take_table(table, fp, corpus_meta)   # same corpus, read from elsewhere
        else:
            if table is None:
                raise StoreError(f"{self.path} does not exist; run extract-embeddings to create it")
            self.index = StoreIndex(version=2, fingerprint=fp, meta={k: str(v) for k, v in corpus_meta.items()},
                                    table=table.reset_index(drop=True))
            try:
                save_index(self.index, self.path, __version__)
            except OSError as e:
                self._cleanup_tmp()
                raise io_error(e, self.path, "create the store") from None
        self.fingerprint = self.index.fingerprint
        self.table = self.index.table
        self.stream_infos = {s: dict(i) for s, i in self.index.streams.items()}
        self._stream_origin: dict[str, str | None] = {s: self.path for s in self.stream_infos}
        for name in self.index.retired:  # a compaction was killed before it deleted these
            p = part_path(self.path, name)
            if os.path.exists(p):
                os.remove(p)
        known = set(self.index.parts) | set(self.index.retired)
        self._pending: list[PendingPart] = []
        self._publish_failed: str | None = None   # why a publish failed (later ones are refused)
        for p in sorted(glob.glob(os.path.join(self.parts_dir, "*.h5"))):
            name = os.path.basename(p)
            if name in known:
                continue
            pend = read_part(p, name, self.fingerprint)
            for s, info in pend.infos.items():
                self._check_stream(s, info, source=p)
            self._pending.append(pend)
        self._seq = next_seq(known | {p.name for p in self._pending})

    def _take_table(self, table: pd.DataFrame, fp: str, corpus_meta: Mapping[str, Any]) -> None:
        """The next index carries ``table`` (and how it was read: ``corpus_meta``, where given)."""
        self.index.table, self.index.fingerprint, self._dirty = table.reset_index(drop=True), fp, True
        if corpus_meta:
            self.index.meta = {k: str(v) for k, v in corpus_meta.items()}

    def _reconcile(self, table: pd.DataFrame, fp: str, update: bool, corpus_meta: Mapping[str, Any]) -> None:
        """The run's corpus differs from the store's: adopt audio digests a v1 table lacked,
        else refuse with the list of changes, or (``update``) drop what changed."""
        changes, stale = corpus_update(self.path, self.index.table, table, update)
        self.changes, self.dropped = changes, stale
        self._take_table(table, fp, corpus_meta)

    def _check_stream(self, name: str, info: Mapping[str, Any], source: str | None = None) -> None:
        """``info`` of stream ``name`` comes from ``source`` (a pending part, a store being merged;
        None: this run): refused when the stream already holds another encoder (``same_encoder``:
        a stream fingerprinted by the recipe before is the same encoder; it keeps the info it has).
        The sentence names the file each encoder is in (``_stream_origin``: where the known one
        came from)."""
        known = self.stream_infos.get(name)
        if known is None:
            self.stream_infos[name] = dict(info)
            self._stream_origin[name] = source
        elif not same_encoder(known, info) or shaping_differs(known, info):
            origin = self._stream_origin.get(name, self.path)
            keys = info_differences(known, info)
            there = f"in {os.path.basename(origin)}" if origin else "in this run"
            here = f"in {os.path.basename(source)}" if source else "in this run"
            if there == here:
                there, here = "there", "here"
            diff = "; ".join(f"{k}: {known.get(k)!r} {there}, {info.get(k)!r} {here}" for k in keys[:4])

            def holds(where, inf):
                what = f"{inf.get('encoder_id', '?')} (fingerprint {str(inf.get('fingerprint'))[:12]})"
                return f"{where} holds {what}" if where else f"this run brings {what}"
            first = f"stream {name!r} in {holds(origin, known)}" if origin else \
                f"stream {name!r}: {holds(origin, known)}"
            second = holds(source, info)
            if source is None:
                same = flags_of(known, keys)   # an option of the extraction differs: its flags give the stream's own
                advice = (f"extract with the stream's own {same}, " if same else "") + \
                    "name another stream or write a new store"
            else:
                advice = "stores whose stream of one name holds different encoders cannot be merged (extract " \
                         "every shard with the same model and options)"
            raise StoreError(f"{first}; {second}" + (f" [{diff}]" if diff else "") + f": {advice}")

    # -- public API -----------------------------------------------------------------------
    def check_extends(self, name: str, info: Mapping[str, Any], known: Mapping[str, Any], origin: str) -> None:
        """Refuse ``info`` for stream ``name`` as ``add_stream`` would when ``known`` (the stream's
        info in ``origin``, another store this run extends: under torchrun, the main store its
        shards merge into) is another encoder or keeps other layers. Nothing is declared."""
        saved = self.stream_infos.get(name), self._stream_origin.get(name)
        known = {k: v for k, v in known.items() if k not in ("entries", "granularities")}   # a reader's counts
        self.stream_infos[name], self._stream_origin[name] = known, origin
        try:
            self._check_stream(name, {**info, "corpus_fingerprint": self.fingerprint})
        finally:
            if saved[0] is None:
                self.stream_infos.pop(name, None)
                self._stream_origin.pop(name, None)
            else:
                self.stream_infos[name], self._stream_origin[name] = saved

    def add_stream(self, name: str, info: Mapping[str, Any]) -> None:
        """Declare a stream. ``info['fingerprint']`` identifies its encoder; a stream of that name
        with another fingerprint is refused."""
        if "fingerprint" not in info:
            raise ValueError("stream info needs a 'fingerprint' entry")
        if not name or "/" in name:
            raise StoreError(f"stream name {name!r} is not allowed; use letters, digits, '-' or '_'")
        info = {**info, "corpus_fingerprint": self.fingerprint}
        self._check_stream(name, info)

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
               inputs: Mapping[str, str] | None = None,
               kind_inputs: Mapping[str, Mapping[str, str]] | None = None) -> str:
        """Atomically commit one unit of work for ``stream``: entries per kind, and skipped
        utterances as ``(utt_id, kind, reason)`` triples; ``inputs``: per utterance, the digest of
        what its entries were computed from (``kind_inputs[kind]`` instead, for a kind computed
        from more). Returns the part file's path. The same as ``publish(stage(...))``."""
        return self.publish(self.stage(stream, entries, skipped, inputs, kind_inputs))

    def stage(self, stream: str, entries: Entries, skipped: Iterable[tuple[str, str, str]] = (),
              inputs: Mapping[str, str] | None = None,
              kind_inputs: Mapping[str, Mapping[str, str]] | None = None) -> "StagedPart":
        """The first half of ``commit``: write and seal the part file under its ``.tmp`` name, not
        yet durable and not yet committed (a kill now loses it; the next writer removes it).
        ``publish`` completes it. Parts are published in the order they were staged, so a
        pipeline may stage the next part while the previous one is made durable (extraction on a
        GPU: the CPU work of one commit hides behind the disk flush of the one before)."""
        if stream not in self.stream_infos:
            raise StoreError(f"stream {stream!r} was not declared with add_stream()")
        inputs = inputs or {}
        of_kind = lambda k: (kind_inputs or {}).get(k, inputs)   # noqa: E731
        final, name = self._next_name(stream)
        tmp = final + ".tmp"
        tables, skips = {}, []
        needed = sum(np.asarray(a).nbytes for per_utt in entries.values() for arrays in per_utt.values()
                     for a in arrays.values() if getattr(a, "dtype", np.dtype("O")).kind != "O")
        try:
            os.makedirs(self.parts_dir, exist_ok=True)
            check_free(self.parts_dir, int(needed * 1.02) + (1 << 20), final)
            with writing_h5(tmp, durable=False) as f:
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
                    arrays = {k: [per_utt[i][k] for i in ids] for k in first}
                    digests = [of_kind(kind).get(i, "") for i in ids]
                    write_entry_table(f, entry_path(stream, kind), ids, lengths, arrays, digests)
                    offs = offsets_from_lengths(lengths)
                    tables[(stream, kind)] = (np.array(ids, dtype=object), offs, np.asarray(lengths, np.int64), digests)
                skips = [(i, k, r, of_kind(k).get(i, "")) for i, k, r in sorted(skipped)]
                if skips:
                    g = sg.create_group("skipped")
                    for col, nm in enumerate(("ids", "kind", "reason", "inputs")):
                        g.create_dataset(nm, data=np.array([r[col] for r in skips], dtype=object),
                                         dtype=STR)
        except WRITE_ERRORS as e:
            remove_quietly(tmp)
            if is_hdf5_bug(e):
                raise
            raise io_error(e, final, "write") from None
        except BaseException:
            remove_quietly(tmp)
            raise
        return StagedPart(tmp, final, PendingPart(name, tables, {stream: skips}, {stream: self.stream_infos[stream]}))

    def publish(self, staged: "StagedPart") -> str:
        """The second half of ``commit``: make the staged part durable (fsync), give it its final
        name (rename, then fsync of the folder) and count it as committed. Returns its path.
        Once a publish has failed, later ones are refused (their ``.tmp`` removed): parts become
        committed in staging order or not at all, so a part the next writer adopts is never older
        than one an index already lists."""
        if self._publish_failed is not None:
            remove_quietly(staged.tmp)
            raise StoreError(f"{staged.final} was not committed: an earlier commit of this run failed "
                             f"({self._publish_failed})")
        try:
            fsync_path(staged.tmp)
            os.replace(staged.tmp, staged.final)
        except WRITE_ERRORS as e:
            remove_quietly(staged.tmp)
            err = io_error(e, staged.final, "write")
            self._publish_failed = str(err)
            raise err from None
        except BaseException as e:
            remove_quietly(staged.tmp)
            self._publish_failed = f"{type(e).__name__}"
            raise
        try:
            fsync_path(self.parts_dir)
        except WRITE_ERRORS as e:   # the part is whole under its name; only the name may not survive a power cut
            err = io_error(e, self.parts_dir, "make durable the new part's name in",
                           kept=f"the part {os.path.basename(staged.final)} is whole and the next run adopts it")
            self._publish_failed = str(err)
            raise err from None
        self._pending.append(staged.part)
        return staged.final

    def finalize(self, extra_sources: Iterable[str] = ()) -> dict[str, int]:
        """Publish everything committed (and ``extra_sources``: other finished stores of the same
        corpus, e.g. shards, whose parts are linked, not copied) with one atomic index swap.
        Returns ``{entry path: utterances added or replaced}``."""
        sources = open_sources([os.path.abspath(os.fspath(p)) for p in extra_sources], self.fingerprint, self.path)
        for src, sidx in sources:
            for stream, info in sidx.streams.items():
                self._check_stream(stream, info, source=src)
        if not self._pending and not sources and not self._dirty and not self.dropped:
            return {}
        merged = build_index(MergeInputs(self.index, self._pending, sources, self.stream_infos, self.dropped),
                             link=self._link)
        new = merged.index
        try:
            save_index(new, self.path, __version__)
        except WRITE_ERRORS as e:
            self._cleanup_tmp()
            if is_hdf5_bug(e):
                raise
            raise io_error(e, self.path, "publish the index of", kept="the committed parts stay for the next run "
                            "and the index is as it was") from None
        for name in set(new.retired) - set(self.index.retired):
            p = part_path(self.path, name)
            if os.path.exists(p):
                os.remove(p)
        self.index, self._pending, self.dropped, self._dirty = new, [], set(), False
        return merged.added

    def _link(self, src: str) -> str:
        """Give part ``src`` of another store the next name in this store's folder (a hard link,
        or a copy where the file system has none); returns that name for the index."""
        final, name = self._next_name("merged")
        link_part(src, final)
        return name

    def _cleanup_tmp(self) -> None:
        remove_quietly(self.path + ".tmp")

    def close(self) -> None:
        """Release the store without publishing: committed parts stay for the next writer."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
