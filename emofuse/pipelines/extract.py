"""Stage 1: run frozen encoders once over a corpus and store every layer (``extract-embeddings``)."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..corpora import Utterance, load_corpus, utterance_table
from ..errors import EmofuseError
from ..extract.audio import BadInput, check_transcript, load_audio
from ..extract.batching import commit_units, length_batches
from ..extract.encoders import load_audio_encoder, load_text_encoder
from ..store import FeatureStore, StoreWriter, digest, merge_stores, remove_store, store_bytes
from .describe import corpus_options
from .progress import progress_bar

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``extract-embeddings`` does is decided here; saved in the store's stream info."""

    corpus: str
    out: str
    root: str | None = None
    manifest: str | None = None
    labels: str | None = None
    audio_model: str | None = "facebook/wav2vec2-base"
    text_model: str | None = "bert-base-uncased"
    audio_stream: str | None = None
    text_stream: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    store_dtype: str = "float16"
    batch_seconds: float | None = None  # None: 120 s on CUDA, one utterance per forward on CPU (fastest there)
    commit_seconds: float = 60.0
    text_batch: int = 32
    shard: str | None = None
    on_error: str = "skip"
    limit: int | None = None
    update_corpus: bool = False   # the corpus changed: drop the changed utterances' tensors and recompute them
    layers: str | None = None     # keep only these encoder layers ("0,6,12", "0-4", "last"); None: all

    def __post_init__(self):
        if self.on_error not in ("skip", "fail"):
            raise EmofuseError(f"--on-error must be 'skip' or 'fail', found {self.on_error!r}")
        if self.store_dtype not in STORE_DTYPES:
            raise EmofuseError(f"--store-dtype must be one of {list(STORE_DTYPES)}, found {self.store_dtype!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise EmofuseError(f"--dtype must be float32, bfloat16 or float16, found {self.dtype!r}")
        if self.commit_seconds <= 0:
            raise EmofuseError(f"--commit-seconds must be positive, found {self.commit_seconds}")
        if self.batch_seconds is not None and self.batch_seconds < 0:
            raise EmofuseError(f"--batch-seconds must be >= 0 (0: one utterance per forward), found {self.batch_seconds}")
        if not self.audio_model and not self.text_model:
            raise EmofuseError("nothing to extract: both --audio-model and --text-model are 'none'")
        parse_shard(self.shard)


def parse_shard(spec: str | None) -> tuple[int, int]:
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise EmofuseError(f"--shard must look like I/N (e.g. 0/4), found {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise EmofuseError(f"--shard {spec}: expected 0 <= I < N")
    return i, n


@dataclass
class StreamSummary:
    stream: str
    kind: str
    encoder: str
    untrained: bool
    done: int = 0
    skipped: int = 0
    reused: int = 0
    rows: int = 0
    audio_seconds: float = 0.0
    time_load: float = 0.0
    time_encode: float = 0.0
    time_write: float = 0.0         # the job stalled on the store (waiting for a commit to finish)
    time_write_busy: float = 0.0    # the background thread writing commits (overlaps encoding)


#: Commit (and read audio ahead) in background threads: None = when the encoder runs on a GPU
#: (the CPU is idle then); on a CPU torch already uses every core and a writer thread only slows
#: both (measured: the write share rose from 4 % to 6.5 % of the job on 2 cores).
BACKGROUND_COMMITS: bool | None = None


class BackgroundCommits:
    """Store commits in one background thread, one at a time, so the next unit is encoded while
    the previous one is written (h5py releases the GIL while it writes). A commit's error is
    raised in the main thread at the next ``submit`` or at ``close``; ``close`` waits for the
    last commit, so nothing encoded before a failure is lost. With ``background=False`` each
    commit runs at once, in the caller's thread."""

    def __init__(self, s: StreamSummary, background: bool):
        from concurrent.futures import ThreadPoolExecutor
        self.s, self.pending = s, None
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()
        if self.pool is None:
            t0 = time.perf_counter()
            try:
                fn()
            finally:
                self.s.time_write += time.perf_counter() - t0
                self.s.time_write_busy += time.perf_counter() - t0
            return

        def timed():
            t0 = time.perf_counter()
            fn()
            self.s.time_write_busy += time.perf_counter() - t0
        self.pending = self.pool.submit(timed)

    def wait(self) -> None:
        if self.pending is not None:
            t0 = time.perf_counter()
            pending, self.pending = self.pending, None
            try:
                pending.result()
            finally:
                self.s.time_write += time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


@dataclass
class ExtractSummary:
    store: str
    streams: list[StreamSummary] = field(default_factory=list)
    wall: float = 0.0
    time_finalize: float = 0.0
    store_bytes: int = 0
    skipped_tsv: str | None = None

    def text(self) -> str:
        lines = []
        for s in self.streams:
            tag = " [UNTRAINED: random weights, a smoke test]" if s.untrained else ""
            unit = "frames" if s.kind == "audio" else "tokens"
            line = (f"  {s.stream!r} ({s.encoder}{tag}): {s.done} utterances done, {s.skipped} skipped"
                    + (f", {s.reused} already in the store" if s.reused else "") + f", {s.rows:,} {unit}")
            if s.audio_seconds:
                busy = s.time_load + s.time_encode + s.time_write
                line += (f", {s.audio_seconds / 3600:.3f} h of audio, "
                         f"{s.audio_seconds / max(busy, 1e-9):.1f} audio-s/s")
            lines.append(line)
        lines.append(f"store {self.store}: {self.store_bytes / 1e6:.1f} MB, wall {self.wall:.1f} s"
                     + (f"; skipped utterances listed in {self.skipped_tsv}" if self.skipped_tsv else ""))
        return "\n".join(lines)


def _distributed() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def run_extract(cfg: ExtractConfig, echo: Callable[[str], None] = print) -> ExtractSummary:
    """Extract under torchrun (each rank a shard, merged by rank 0) or in one process."""
    dist = _distributed()
    if dist is None:
        return _extract(cfg, cfg.out, echo)
    import torch
    import torch.distributed as td

    rank, world, local = dist
    device = cfg.device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        shard_dir = cfg.out + ".shards"
        os.makedirs(shard_dir, exist_ok=True)
        shard_path = os.path.join(shard_dir, f"rank{rank}-of-{world}.h5")
        sub = ExtractConfig(**{**asdict(cfg), "shard": f"{rank}/{world}", "device": device})
        summary = _extract(sub, shard_path, echo if rank == 0 else (lambda s: None), main_store=cfg.out)
        td.barrier()
        if rank == 0:
            shards = [os.path.join(shard_dir, f"rank{r}-of-{world}.h5") for r in range(world)]
            t0 = time.perf_counter()
            merge_stores(cfg.out, shards)
            summary.time_finalize += time.perf_counter() - t0
            for s in shards:  # their parts live on as hard links in the merged store's folder
                remove_store(s)
            os.rmdir(shard_dir)
            summary.store = cfg.out
            summary.store_bytes = store_bytes(cfg.out)
            summary.skipped_tsv = write_skipped_tsv(cfg.out, skipped_tsv_path(cfg.out))
            echo(f"merged {world} rank shards into {cfg.out}")
        td.barrier()
        return summary
    finally:
        td.destroy_process_group()


def _mine(plan: list[list[str]], shard: str | None) -> list[list[str]]:
    """This shard's batches of one global batch plan. Sharding whole batches (not utterances)
    keeps every utterance in the batch it has in a single-process run: merged shards are
    bit-identical to it."""
    i, n = parse_shard(shard)
    return plan[i::n]


def _already_done(main_store: str | None, stream: str, kind: str) -> set[str]:
    """Ids a finished main store already holds (so rank shards skip them on a resumed run)."""
    if not main_store or not os.path.exists(main_store):
        return set()
    with FeatureStore(main_store) as fs:
        if stream not in fs.streams:
            return set()
        done = set(fs.ids(stream, kind)) if fs.has(stream, kind) else set()
        sk = fs.skipped(stream)
        return done | set(sk.loc[sk["kind"] == kind, "id"])


def _extract(cfg: ExtractConfig, out: str, echo: Callable[[str], None], main_store: str | None = None) -> ExtractSummary:
    t_start = time.perf_counter()
    options = corpus_options(cfg.corpus, cfg.root, cfg.manifest)
    if cfg.labels:
        options["labels"] = cfg.labels
    utts = load_corpus(cfg.corpus, **options)
    if not utts:
        raise EmofuseError(f"the {cfg.corpus} corpus holds no labelled utterance; nothing to extract")
    table = utterance_table(utts)
    selection = list(utts[: cfg.limit] if cfg.limit else utts)
    durations = dict(zip(table["id"], table["duration"].astype(float)))
    store_dtype = STORE_DTYPES[cfg.store_dtype]
    summary = ExtractSummary(store=out)
    jobs = []
    if cfg.audio_model and cfg.audio_model != "none":
        enc = load_audio_encoder(cfg.audio_model, device=cfg.device, dtype=cfg.dtype)
        name = cfg.audio_stream or ("egemaps" if cfg.audio_model.startswith("opensmile:") else "audio")
        sdt = "float32" if enc.info["encoder"] == "opensmile" else cfg.store_dtype
        jobs.append(("audio", name, enc, sdt))
    if cfg.text_model and cfg.text_model != "none":
        enc = load_text_encoder(cfg.text_model, device=cfg.device, dtype=cfg.dtype)
        jobs.append(("text", cfg.text_stream or "text", enc, cfg.store_dtype))
    kept_pre = {name: kept_layers(cfg.layers, enc) for _, name, enc, _ in jobs}   # checked before the store opens
    src = cfg.root or cfg.manifest
    meta = {"kind": cfg.corpus, "root": os.path.abspath(src) if src else "bundled demo", "labels": cfg.labels or ""}
    with StoreWriter(out, table=table, corpus_meta=meta, update_corpus=cfg.update_corpus) as writer:
        if writer.changes:
            kinds: dict[str, int] = {}
            for _, what in writer.changes:
                kinds[what] = kinds.get(what, 0) + 1
            echo(f"the corpus changed since {out} was written: " + ", ".join(f"{n} {w}" for w, n in kinds.items())
                 + f"; the cached tensors of {len(writer.dropped)} utterances are dropped and recomputed")
        kept_of = {}
        for kind, name, enc, sdt in jobs:
            # train-head's --norm when none is given (hand-crafted descriptors set "global")
            info = {"default_norm": "none", **enc.info, "store_dtype": sdt, "extract_config": asdict(cfg)}
            fields = {**enc.fingerprint_fields(), "store_dtype": sdt}
            kept = kept_pre[name]
            if kept is not None:  # part of the stream's identity: a subset never mixes with another
                info["layers"] = fields["layers"] = kept
            kept_of[name] = kept
            info["fingerprint"] = digest(fields, 32)
            writer.add_stream(name, info)
        try:
            for kind, name, enc, sdt in jobs:
                entry_kind = "frames" if kind == "audio" else "tokens"
                done = writer.done_ids(name, entry_kind) | _already_done(main_store, name, entry_kind)
                s = StreamSummary(stream=name, kind=kind, encoder=enc.info["encoder_id"], untrained=enc.info["untrained"])
                summary.streams.append(s)
                if enc.info["untrained"]:
                    echo(f"note: audio encoder {enc.info['encoder_id']} has UNTRAINED random weights (seed 0); "
                         "its activations are a smoke test, not features")
                if kind == "audio":
                    _audio_phase(writer, name, enc, selection, done, durations, cfg, STORE_DTYPES[sdt], s, kept_of[name])
                else:
                    _text_phase(writer, name, enc, selection, done, cfg, store_dtype, s, kept_of[name])
        finally:
            t0 = time.perf_counter()
            writer.finalize()
            summary.time_finalize = time.perf_counter() - t0
    summary.wall = time.perf_counter() - t_start
    summary.store_bytes = store_bytes(out)
    if main_store is None:
        summary.skipped_tsv = write_skipped_tsv(out, skipped_tsv_path(out, cfg.shard))
    return summary


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in ``a``. For float16 from the exponent bits (all ones: inf or NaN), 9× faster
    than ``np.isfinite``, which computes float16 in software."""
    if a.dtype == np.float16:
        return a.size == 0 or int(np.max(a.view(np.uint16) & 0x7C00)) != 0x7C00
    return bool(np.isfinite(a).all())


def _bad(utt: Utterance, err: BadInput, cfg: ExtractConfig, what: str) -> None:
    if cfg.on_error == "fail":
        raise EmofuseError(f"{utt.id}: {err.reason} ({utt.audio_path if what == 'audio' else 'transcript'}); "
                           "committed work is kept; fix the input or run with --on-error skip")


def _batch_seconds(cfg: ExtractConfig, enc) -> float:
    if cfg.batch_seconds is not None:
        return cfg.batch_seconds
    return 120.0 if getattr(enc, "device", None) is not None and enc.device.type == "cuda" else 0.0


def kept_layers(spec: str | None, enc) -> list[int] | None:
    """The encoder layers ``--layers`` keeps (the encoder's own numbers, 0 = transformer input),
    or None for all. A one-layer stream (eGeMAPS) keeps its layer."""
    n = int(enc.info["num_layers"])
    if spec in (None, "", "all") or n == 1:
        return None
    from .data import parse_layers
    kept = sorted(set(parse_layers(spec, n)))
    return None if kept == list(range(n)) else kept


def _audio_phase(writer, name, enc, selection, done, durations, cfg, store_dtype, s: StreamSummary,
                 kept: list[int] | None = None) -> None:
    by_id = {u.id: u for u in selection}
    # Longest first: each batch then needs at most the memory the previous one freed. Shortest
    # first, every batch asked for larger blocks than any freed so far, and glibc's heap grew with
    # the corpus (CPU, float32: peak RSS 1.5 GB for 60 s of audio, 3.7 GB for 600 s).
    batches = length_batches([u.id for u in selection], [durations[u.id] for u in selection], _batch_seconds(cfg, enc))[::-1]
    plan = _mine(commit_units(batches, durations, cfg.commit_seconds), cfg.shard)
    s.reused = sum(1 for unit in plan for b in unit for u in b if u in done)
    # commits are whole units: a unit is either done or not; one written by another plan
    # (e.g. an earlier --limit run) keeps only its missing utterances
    units = [[[u for u in b if u not in done] for b in unit] for unit in plan if any(u not in done for b in unit for u in b)]
    units = [[b for b in unit if b] for unit in units]
    total = float(np.nansum([durations[u] for unit in units for b in unit for u in b]))
    with progress_bar(total=round(total, 1), unit="audio-s", desc=f"{name}: audio",
                      bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}{postfix}]") as bar:
        on_gpu = getattr(enc, "device", None) is not None and enc.device.type == "cuda"
        background = on_gpu if BACKGROUND_COMMITS is None else BACKGROUND_COMMITS
        commits = BackgroundCommits(s, background)

        def read(uid: str):
            """(samples, preprocessed wave) of one utterance, or the BadInput that stops it."""
            try:
                w = load_audio(by_id[uid], enc.sample_rate)
                enc.check(w)
                return len(w), enc.preprocess(w)
            except BadInput as e:
                return e
        audio = Prefetch([b for unit in units for b in unit], read, background)
        try:
            for unit in units:
                _audio_unit(writer, name, enc, unit, by_id, cfg, store_dtype, s, commits, audio, kept)
                bar.update(round(float(np.nansum([durations[u] for b in unit for u in b])), 1))
                bar.set_postfix_str(f"{s.done} utts, {s.skipped} skipped, {s.audio_seconds / 3600:.2f} h")
        finally:
            audio.close()
            commits.close()


class Prefetch:
    """``read(item)`` for every item of upcoming batches, ``depth`` batches ahead in one background
    thread (audio decoding and preprocessing while the GPU encodes); ``next_batch()`` returns the
    next batch's results in order. With ``background=False`` each batch is read when asked for."""

    def __init__(self, batches: list[list[str]], read: Callable[[str], Any], background: bool, depth: int = 2):
        from concurrent.futures import ThreadPoolExecutor
        self.batches, self.read, self.next = batches, read, 0
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None
        self.pending = [self._submit(k) for k in range(min(depth, len(batches)))] if self.pool else []

    def _submit(self, k: int):
        return self.pool.submit(lambda: [self.read(i) for i in self.batches[k]])

    def next_batch(self) -> list[Any]:
        k, self.next = self.next, self.next + 1
        if self.pool is None:
            return [self.read(i) for i in self.batches[k]]
        done = self.pending.pop(0).result()
        if k + len(self.pending) + 1 < len(self.batches):
            self.pending.append(self._submit(k + len(self.pending) + 1))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _audio_unit(writer, name, enc, unit, by_id, cfg, store_dtype, s: StreamSummary, commits: BackgroundCommits,
                audio: Prefetch, kept: list[int] | None = None) -> None:
    """Encode one commit unit (a few batches) and commit it atomically (in the background). With
    ``--on-error fail`` the utterances encoded before the bad one are committed before the job stops."""
    entries, skipped = {}, []
    try:
        for batch in unit:
            t0 = time.perf_counter()
            waves, ok, samples = [], [], []
            for uid, got in zip(batch, audio.next_batch()):
                if isinstance(got, BadInput):
                    _bad(by_id[uid], got, cfg, "audio")
                    skipped.append((uid, "frames", got.reason))
                    continue
                samples.append(got[0])
                waves.append(got[1])
                ok.append(uid)
            t1 = time.perf_counter()
            outs = enc.encode(waves, out_dtype=store_dtype, preprocessed=True) if waves else []
            t2 = time.perf_counter()
            for uid, n, o in zip(ok, samples, outs):
                if len(o) == 0 or not _all_finite(o):
                    err = BadInput("the encoder produced no frame, or values that are not finite in the store's dtype, "
                                   "for this audio (--store-dtype float32 keeps values beyond float16's range)")
                    _bad(by_id[uid], err, cfg, "audio")
                    skipped.append((uid, "frames", err.reason))
                    continue
                entries[uid] = {"data": o.astype(store_dtype, copy=False) if kept is None else o[:, kept].astype(store_dtype)}
                s.rows += len(o)
                s.audio_seconds += n / enc.sample_rate
            s.time_load += t1 - t0
            s.time_encode += t2 - t1
    finally:
        if entries or skipped:
            def commit():
                writer.commit(name, {"frames": entries}, skipped)
                s.done += len(entries)
                s.skipped += len(skipped)
            commits.submit(commit)


def _text_phase(writer, name, enc, selection, done, cfg, store_dtype, s: StreamSummary,
                kept: list[int] | None = None) -> None:
    items = []
    skipped = []
    i_shard, n_shard = parse_shard(cfg.shard)
    for k, u in enumerate(selection):
        if u.id in done:
            s.reused += 1
            continue
        try:
            text = check_transcript(u.transcript)
            n = enc.n_tokens(text)
            if n > enc.max_len and cfg.on_error == "fail":
                raise EmofuseError(f"{u.id}: transcript has {n} tokens, more than {enc.info['encoder_id']}'s maximum "
                                   f"of {enc.max_len}; run with --on-error skip to window it with overlap")
            items.append((n, u.id, text))
        except BadInput as e:
            if k % n_shard == i_shard:  # bad transcripts: each shard records its share
                _bad(u, e, cfg, "text")
                skipped.append((u.id, "tokens", e.reason))
    # one global plan of chunks, sorted by length; this shard takes chunks i::n; a resumed run
    # drops whole committed chunks, so the remaining chunks keep their composition
    everything = sorted(items + [(enc.n_tokens(u.transcript), u.id, u.transcript) for u in selection
                                 if u.id in done and u.transcript.strip() and "\ufffd" not in u.transcript])
    chunks = _mine([everything[k:k + cfg.text_batch] for k in range(0, len(everything), cfg.text_batch)], cfg.shard)
    todo_ids = {i for _, i, _ in items}
    chunks = [c for c in chunks if any(i in todo_ids for _, i, _ in c)]
    with progress_bar(total=sum(len(c) for c in chunks) + len(skipped), unit="utt", desc=f"{name}: text") as bar:
        if skipped:
            writer.commit(name, {}, skipped)
            s.skipped += len(skipped)
            bar.update(len(skipped))
        for chunk in chunks:
            t1 = time.perf_counter()
            outs = enc.encode([t for _, _, t in chunk])
            t2 = time.perf_counter()
            entries = {}
            for (_, uid, _), o in zip(chunk, outs):
                if uid not in todo_ids:  # computed only to keep the chunk's composition
                    continue
                entries[uid] = {**o, "data": (o["data"] if kept is None else o["data"][:, kept]).astype(store_dtype)}
                s.rows += len(o["data"])
            writer.commit(name, {"tokens": entries})
            s.time_encode += t2 - t1
            s.time_write += time.perf_counter() - t2
            s.done += len(entries)
            bar.update(len(chunk))


def skipped_tsv_path(store: str, shard: str | None = None) -> str:
    """``STORE.skipped.tsv`` beside the store (``s.h5`` → ``s.skipped.tsv``; a shard:
    ``s.skipped.shard-I-of-N.tsv``): two stores in one folder keep their own lists."""
    stem = os.path.splitext(os.path.abspath(store))[0]
    return stem + (".skipped.tsv" if shard is None else f".skipped.shard-{shard.replace('/', '-of-')}.tsv")


def write_skipped_tsv(store: str, path: str) -> str | None:
    """Every skipped utterance of every stream, with its reason; None (and no file) when none."""
    rows = []
    with FeatureStore(store) as fs:
        utt = fs.utterances
        for s in fs.streams:
            sk = fs.skipped(s)
            for r in sk.itertuples():
                rows.append((s, r.id, r.kind, r.reason, utt["audio_path"].get(r.id, "")))
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return None
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["stream", "id", "kind", "reason", "audio_path"])
        w.writerows(sorted(rows))
    return path
