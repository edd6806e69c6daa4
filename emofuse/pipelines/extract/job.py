"""One extraction process: read the corpus, load the encoders, declare their streams, run the
audio and text phases into one store (a whole store, or one shard of it), and summarise."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

from ...corpora import corpus_base, load_corpus, utterance_table
from ...errors import EmofuseError
from ...extract.encoders import load_audio_encoder, load_text_encoder, window_as_recorded
from ...store import (FeatureStore, StoreWriter, corpus_fingerprint, corpus_update, same_encoder, store_bytes,
                      stream_fingerprint)
from ..describe import corpus_options
from .audio_phase import run_audio_phase
from .config import STORE_DTYPES, ExtractConfig
from .skipped import skipped_tsv_path, write_skipped_tsv
from .stream import StreamJob
from .summary import ExtractSummary, StreamSummary
from .text_phase import run_text_phase

log = logging.getLogger(__name__)


def kept_layers(spec: str | None, enc) -> list[int] | None:
    """The encoder layers ``--layers`` keeps (the encoder's own numbers, 0 = transformer input),
    or None for all. A one-layer stream (eGeMAPS) keeps its layer."""
    n = int(enc.info["num_layers"])
    if spec in (None, "", "all") or n == 1:
        return None
    from ..data import parse_layers
    kept = sorted(set(parse_layers(spec, n)))
    return None if kept == list(range(n)) else kept


def _main_store_state(main_store: str | None, table, update: bool) -> tuple[list, set[str]]:
    """Under torchrun, what this run's corpus (``table``) changes in the main store the rank
    shards merge into: ``(changes, stale ids)`` (``corpus_update``: refused without
    ``--update-corpus``, before any rank extracts). Nothing when it does not exist yet."""
    if not main_store or not os.path.exists(main_store):
        return [], set()
    with FeatureStore(main_store) as fs:
        if fs.corpus_fingerprint == corpus_fingerprint(table):
            return [], set()
        old = fs.utterances.rename_axis("id").reset_index()
    return corpus_update(main_store, old, table, update)


def _already_done(main_store: str | None, stream: str, kind: str, stale: set[str]) -> set[str]:
    """Ids a finished main store already holds (so rank shards skip them on a resumed run), but
    those ``--update-corpus`` drops from it (``stale``): the ranks recompute them."""
    if not main_store or not os.path.exists(main_store):
        return set()
    with FeatureStore(main_store) as fs:
        if stream not in fs.streams:
            return set()
        done = set(fs.ids(stream, kind)) if fs.has(stream, kind) else set()
        sk = fs.skipped(stream)
        return (done | set(sk.loc[sk["kind"] == kind, "id"])) - stale


def _stream_info(store: str | None, stream: str) -> dict:
    """Stream ``stream``'s info in ``store`` (under torchrun, the main store), or nothing."""
    if not store or not os.path.exists(store):
        return {}
    with FeatureStore(store) as fs:
        return fs.stream_info(stream) if stream in fs.streams else {}


def _keep_recorded_window(enc, fingerprint: str, known: dict) -> None:
    """A text stream of this encoder (same fingerprint) recorded with fewer tokens per window than
    the model takes keeps that windowing when extended or resumed (stores of RoBERTa and XLM-R
    written before emofuse took their 512 tokens were windowed at 510)."""
    if known.get("fingerprint") == fingerprint:
        window_as_recorded(enc, known.get("max_tokens"))


def _recorded_identity(info: dict, known: dict) -> dict:
    """The recorded ``fingerprint`` and ``config_hash`` a stream of this encoder (``info``) keeps
    where ``known`` (the stream's recorded info) fingerprinted the same encoder by the recipe
    before (its config hash held the checkpoint's path as typed and the transformers version:
    ``store.same_encoder``), so the stream, and the run keys built on it, stay as they are and
    torchrun's rank shards merge into it; nothing otherwise."""
    if not known or known.get("fingerprint") == info["fingerprint"] or not same_encoder(known, info):
        return {}
    return {"fingerprint": known["fingerprint"], "config_hash": known.get("config_hash")}


def extract_into(cfg: ExtractConfig, out: str, main_store: str | None = None,
                 background: bool | None = None) -> ExtractSummary:
    """Extract ``cfg`` into the store ``out`` in this process. ``main_store``: under torchrun, the
    store the rank shards merge into (what it holds is not recomputed; no skipped.tsv per rank).
    ``background``: commit and read ahead in threads (None: on a GPU only)."""
    t_start = time.perf_counter()
    options = corpus_options(cfg.corpus, cfg.root, cfg.manifest, cfg.labels)
    utts = load_corpus(cfg.corpus, **options)
    if not utts:
        raise EmofuseError(f"the {cfg.corpus} corpus holds no labelled utterance; nothing to extract")
    base = corpus_base(cfg.corpus, **options)
    table = utterance_table(utts, base)
    selection = list(utts[: cfg.limit] if cfg.limit else utts)
    durations = dict(zip(table["id"], table["duration"].astype(float)))
    summary = ExtractSummary(store=out)
    encoders = []   # (kind, stream name, encoder, stored dtype name)
    if cfg.audio_model and cfg.audio_model != "none":
        enc = load_audio_encoder(cfg.audio_model, device=cfg.device, dtype=cfg.dtype)
        encoders.append(("audio", cfg.audio_stream or enc.default_stream, enc, enc.stored_dtype or cfg.store_dtype))
    if cfg.text_model and cfg.text_model != "none":
        enc = load_text_encoder(cfg.text_model, device=cfg.device, dtype=cfg.dtype)
        encoders.append(("text", cfg.text_stream or enc.default_stream, enc, enc.stored_dtype or cfg.store_dtype))
    kept_pre = {name: kept_layers(cfg.layers, enc) for _, name, enc, _ in encoders}   # checked before the store opens
    src = cfg.root or cfg.manifest
    meta = {"kind": cfg.corpus, "root": os.path.abspath(src) if src else "bundled demo", "labels": cfg.labels or "",
            "base": base}
    main_changes, stale = _main_store_state(main_store, table, cfg.update_corpus)
    with StoreWriter(out, table=table, corpus_meta=meta, update_corpus=cfg.update_corpus) as writer:
        changes, dropped, changed_store = ((writer.changes, writer.dropped, out) if writer.changes
                                           else (main_changes, stale, main_store))
        if changes:
            kinds: dict[str, int] = {}
            for _, what in changes:
                kinds[what] = kinds.get(what, 0) + 1
            log.info(f"the corpus changed since {changed_store} was written: "
                     + ", ".join(f"{n} {w}" for w, n in kinds.items())
                     + f"; the cached tensors of {len(dropped)} utterances are dropped and recomputed")
        jobs = []
        for kind, name, enc, sdt in encoders:
            kept = kept_pre[name]   # part of the stream's identity: a subset never mixes with another
            fingerprint = stream_fingerprint(enc.fingerprint_fields(), sdt, kept)
            main_known = _stream_info(main_store, name)   # under torchrun, the main store's (read once)
            known = writer.stream_infos.get(name) or main_known
            recorded = _recorded_identity({**enc.info, "store_dtype": sdt, "layers": kept, "fingerprint": fingerprint},
                                          known)
            _keep_recorded_window(enc, recorded.get("fingerprint", fingerprint), known)
            # train-head's --norm when none is given (hand-crafted descriptors set "global")
            info = {"default_norm": "none", **enc.info, "store_dtype": sdt, "extract_config": asdict(cfg)}
            if kept is not None:
                info["layers"] = kept
            info["fingerprint"] = fingerprint
            if recorded:   # what the recorded config hash covers is not this configuration dict
                info.pop("config", None)
                info.update(recorded)
            if main_known:   # a rank's shard: its stream must be the one the main store holds (before,
                writer.check_extends(name, info, main_known, main_store)   # every id was reused and nothing ran)
            writer.add_stream(name, info)
            s = StreamSummary(stream=name, kind=kind, encoder=enc.info["encoder_id"], untrained=enc.info["untrained"])
            jobs.append((kind, StreamJob(writer, name, enc, cfg, STORE_DTYPES[sdt], kept, s, background)))
        try:
            for kind, job in jobs:
                entry_kind = "frames" if kind == "audio" else "tokens"
                done = writer.done_ids(job.name, entry_kind) | _already_done(main_store, job.name, entry_kind, stale)
                summary.streams.append(job.summary)
                if job.summary.untrained:
                    log.warning(f"note: audio encoder {job.summary.encoder} has UNTRAINED random weights (seed 0); "
                                "its activations are a smoke test, not features")
                if kind == "audio":
                    run_audio_phase(job, selection, done, durations)
                else:
                    run_text_phase(job, selection, done)
        finally:
            t0 = time.perf_counter()
            writer.finalize()
            summary.time_finalize = time.perf_counter() - t0
    summary.wall = time.perf_counter() - t_start
    summary.store_bytes = store_bytes(out)
    if main_store is None:
        summary.skipped_tsv = write_skipped_tsv(out, skipped_tsv_path(out, cfg.shard))
    return summary
