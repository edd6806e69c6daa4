"""Stage 2: pool phone / syllable / word segments from forced alignments (``align-segments``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from ..align.frames import segment_frames
from ..align.pooling import pool_many
from ..align.records import is_silence
from ..align.textgrid import speaker_tiers, textgrid_end
from ..align.tiers import (PAST_AUDIO_TOLERANCE_S, alignment_ends, check_covers_audio, check_within_audio,
                           complete_tiers, cut_to_slice, read_alignment)
from ..corpora import ALIGNMENTS, KINDS, alignment_paths, demo_root, load_corpus
from ..corpora.iemocap import SESSIONS, alignments_beside, find_root
from ..corpora.manifest import load_manifest
from ..corpora.table import audio_digest, changes_text, channel_of, resolve_audio_path
from ..cores import usable_cores
from ..errors import EmofuseError
from ..options import opt
from ..store import (GRANULARITIES, FeatureStore, StoreWriter, corpus_changes, corpus_fingerprint, digest,
                     segments_kind)
from .describe import corpus_options
from .progress import progress_bar

log = logging.getLogger(__name__)

SOURCES = ("auto", "iemocap", "textgrid", "sphinx")
ON_ERROR = ("skip", "fail")


@dataclass(frozen=True)
class AlignConfig:
    store: str = opt(help="a store written by extract-embeddings")
    stream: str | None = opt(None, help="audio stream to pool (default: audio, or the store's only stream with "
                                        "frames, e.g. egemaps)")
    source: str = opt("auto", choices=SOURCES,
                      help="alignments: the corpus's files (iemocap .wdseg/.phseg, or a manifest's TextGrids), or our "
                           "pocketsphinx aligner (default auto: the corpus's files, sphinx where there are none)")
    granularities: tuple[str, ...] = opt(GRANULARITIES, help="comma list (default phone,syllable,word)")
    keep_silence: bool = opt(False, help="keep silence and filler segments")
    on_error: str = opt("skip", choices=ON_ERROR)
    corpus: str | None = opt(None, choices=KINDS, help="the corpus reader, if the corpus moved (with --root or --manifest)")
    root: str | None = opt(None, help="where the corpus lives now, if it moved: IEMOCAP's root (the folder holding "
                                      "Session1 …, or one up to two levels above it) or a manifest's folder")
    manifest: str | None = opt(None, help="where the manifest lives now, if the corpus moved")
    commit_utterances: int = opt(200, cli=False)   # utterances per atomic commit (Python only)
    tier_names: dict = opt(default_factory=dict, cli=False)   # from --word-tier / --phone-tier
    write_alignments: str | None = opt(None, metavar="DIR",
                                       help="with the sphinx aligner: also write .wdseg/.phseg and TextGrid files "
                                            "here")

    def __post_init__(self):
        if self.source not in SOURCES:
            raise EmofuseError(f"--source must be one of {list(SOURCES)}, found {self.source!r}")
        bad = [g for g in self.granularities if g not in GRANULARITIES]
        if bad or not self.granularities:
            raise EmofuseError(f"--granularities takes a comma list of {list(GRANULARITIES)}, found {list(self.granularities)}")
        if self.on_error not in ON_ERROR:
            raise EmofuseError(f"--on-error must be 'skip' or 'fail', found {self.on_error!r}")


@dataclass
class AlignSummary:
    utterances: int = 0
    reused: int = 0
    changed: int = 0      # utterances pooled again: their alignment inputs changed since they were pooled
    segments: dict = field(default_factory=dict)
    empty: dict = field(default_factory=dict)
    clipped: int = 0
    skipped: dict = field(default_factory=dict)   # reason -> count
    example: dict = field(default_factory=dict)   # reason -> the first utterance skipped for it
    cut: int = 0          # utterances whose TextGrid is timed from its file's start, cut to the slice
    phoneless: int = 0    # words no phone falls in: no syllable built from them
    phoneless_example: str = ""   # the first: "UID 'WORD'"

    def text(self) -> str:
        seg = ", ".join(f"{g} {n:,}" for g, n in self.segments.items())
        lines = [f"  {self.utterances} utterances aligned ({self.reused} already in the store): {seg or 'no new'} segments"]
        if self.changed:
            lines.append(f"  {self.changed} utterances were pooled again: their alignment inputs changed since")
        if any(self.empty.values()):
            lines.append("  utterances left with no segment: " + ", ".join(f"{g} {n}" for g, n in self.empty.items() if n))
        if self.cut:
            lines.append(f"  {self.cut} utterances are slices of a file whose TextGrid is timed from the file's start "
                         "(it spans the whole file): cut to each utterance's slice")
        if self.clipped:
            lines.append(f"  {self.clipped} segments end after the audio (by at most the {PAST_AUDIO_TOLERANCE_S:g} s "
                         "tolerated; their span stops at its last frame)")
        if self.phoneless:
            n = self.phoneless
            lines.append(f"  {n} word{'s' if n > 1 else ''} with no phone's midpoint inside "
                         f"({'e.g. ' if n > 1 else ''}{self.phoneless_example}): the syllables built from the phones "
                         f"have nothing of {'them' if n > 1 else 'it'}")
        ranked = sorted(self.skipped.items(), key=lambda kv: -kv[1])
        for reason, n in ranked[:5]:
            e = self.example.get(reason)
            lines.append(f"  skipped {n}: {reason}" + (f" ({'e.g. ' if n > 1 else ''}{e})" if e else ""))
        if len(ranked) > 5:
            lines.append(f"  … and {sum(n for _, n in ranked[5:])} more skipped (emofuse info STORE lists them)")
        return "\n".join(lines)


@dataclass
class UtteranceInputs:
    """Where each utterance's alignment inputs are now: ``alignments[id]`` its files by tier,
    ``audio[id]`` its audio file (for the sphinx aligner). ``from_store``: read from the store's
    utterance table (stores written since it keeps them), else from the corpus (older stores)."""

    alignments: dict[str, dict[str, str]]
    audio: dict[str, str]
    from_store: bool
    base: str | None = None     # the corpus's folder now (store-kept paths resolve under it)
    added: int = 0              # utterances whose alignment files were added to the corpus after extraction
    cut: dict = field(default_factory=dict)   # id -> (start, end): its TextGrid covers its whole file


def utterance_inputs(cfg: AlignConfig, fs: FeatureStore) -> UtteranceInputs:
    """The alignment files and audio of every utterance: from the store when its table keeps them
    (the corpus is not read; a moved corpus is ``--root NEW``, or ``--manifest NEW`` for a manifest),
    else from the corpus (``_records``: read and checked against the store's fingerprint)."""
    table = fs.utterances
    if ALIGNMENTS in table.columns:
        meta = fs.corpus_meta
        recorded = meta.get("base") or None
        base = _corpus_folder_now(cfg, meta, table) or recorded
        inputs = UtteranceInputs(
            alignments={uid: alignment_paths(cell, base, recorded) for uid, cell in zip(table.index, table[ALIGNMENTS])},
            audio={uid: resolve_audio_path(str(p), base, recorded) for uid, p in zip(table.index, table["audio_path"])},
            from_store=True, base=base)
        if cfg.source != "sphinx":
            added = added_alignments(cfg, meta, inputs)
            inputs.alignments.update(added)
            inputs.added = len(added)
        return inputs
    records = _records(cfg, fs) if cfg.source != "sphinx" else {}
    return UtteranceInputs(alignments={uid: dict(u.alignments) for uid, u in records.items()},
                           audio={uid: str(p) for uid, p in zip(table.index, table["audio_path"])}, from_store=False)


def added_alignments(cfg: AlignConfig, meta: dict, inputs: UtteranceInputs) -> dict[str, dict[str, str]]:
    """Alignment files added to the corpus after extraction, for the utterances the store records
    none for, found by the corpus reader's own rule without reading the corpus again: for IEMOCAP's
    layout (and the demo) one listing of each such dialog's ``ForcedAlignment`` folder; for a
    manifest its ``textgrid`` column, the manifest file read again (its rows, no audio). An
    unreadable manifest adds nothing (the store's paths stand)."""
    without = {uid: inputs.audio[uid] for uid, paths in inputs.alignments.items() if not paths}
    if not without:
        return {}
    kind = cfg.corpus or meta.get("kind")
    if kind in ("iemocap", "demo"):
        return alignments_beside(without)
    if kind == "manifest":
        path = cfg.manifest or meta.get("root")
        if not path or not os.path.isfile(path):
            return {}
        try:
            utts = load_manifest(path, labels=_recorded_labels(meta))
        except EmofuseError:
            return {}
        return {u.id: dict(u.alignments) for u in utts if u.id in without and u.alignments}
    return {}


def _recorded_labels(meta: dict) -> str | None:
    """The ``--labels`` extraction read the corpus with (the store records "" or "None" for none)."""
    labels = meta.get("labels")
    return None if labels in (None, "", "None") else labels


def _corpus_folder_now(cfg: AlignConfig, meta: dict, table=None) -> str | None:
    return corpus_folder_now(meta, cfg.root, cfg.manifest, cfg.corpus, table)


def corpus_folder_now(meta: dict, root: str | None = None, manifest: str | None = None,
                      kind: str | None = None, table=None) -> str | None:
    """Where the corpus of a store (``meta``: its corpus attributes; ``table``: its utterance
    table) lives now, when the command says so (``--root``, ``--manifest``) or it is the bundled
    demo (wherever emofuse is installed); None: where it was at extraction. For IEMOCAP, ``root``
    may be the folder holding the sessions or one up to two levels above it (``iemocap_folder_now``)."""
    if root:
        if (kind or meta.get("kind")) == "iemocap":
            return iemocap_folder_now(root, meta.get("base") or None, table)
        return os.path.abspath(root)
    if manifest:
        path = os.path.abspath(manifest)
        return path if os.path.isdir(path) else os.path.dirname(path)
    if (kind or meta.get("kind")) == "demo":
        return str(demo_root())
    return None


def iemocap_folder_now(root: str, recorded: str | None, table=None) -> str:
    """The folder a store's kept IEMOCAP paths resolve under in the copy at ``root`` (the folder
    holding Session1 … Session5, or one up to two levels above it: ``find_root``). Stores keep
    them relative to the sessions folder: that folder. A store written before kept them relative
    to the ``--root`` it was given, which may have been above the sessions folder
    (``IEMOCAP_full_release/IEMOCAP_full_release/``): its paths start with those extra folders,
    and resolve under the folder the sessions folder found now sits in under the same names
    (given the outer folder or the inner one). Refused in one sentence when it does not."""
    if not os.path.isdir(root):
        raise EmofuseError(f"--root {root} is not a folder; give the folder the corpus was moved to (the one holding "
                           "Session1 … Session5, or one up to two levels above it)")
    sessions = os.path.abspath(find_root(root))
    extra = _extra_folders(recorded, table)
    if not extra:
        return sessions
    parts = sessions.split(os.sep)
    if len(parts) > len(extra) and parts[-len(extra):] == extra:
        return os.sep.join(parts[:-len(extra)]) or os.sep
    raise EmofuseError(
        f"the store keeps its IEMOCAP paths under {'/'.join(extra)}/ of the folder it was read from "
        f"({recorded}), but --root {root} holds Session1 … Session5 in {sessions}, not under folders of those "
        f"names; run extract-embeddings on the store again with --root {shlex.quote(root)} (and its encoders: "
        "nothing it holds is recomputed) to record where the corpus is now")


def _extra_folders(recorded: str | None, table) -> list[str]:
    """The folders between a store's recorded corpus folder and the IEMOCAP sessions folder in
    the paths it keeps (``[]`` when it kept them relative to the sessions folder), read from a
    kept alignment path (relative to the recorded folder) or an audio path inside that folder
    (``…/Session<n>/sentences/…``)."""
    if not recorded or table is None:
        return []
    top = os.path.abspath(recorded)
    kept: list[list[str]] = []
    if ALIGNMENTS in table.columns:
        for cell in table[ALIGNMENTS]:
            kept += [p.split("/") for p in json.loads(cell or "{}").values() if not os.path.isabs(p)][:1]
            if kept:
                break
    if "audio_path" in table.columns:
        kept += [os.path.relpath(p, top).split(os.sep) for p in table["audio_path"].astype(str).iloc[:1]
                 if os.path.isabs(p)]
    for parts in kept:
        if parts and parts[0] != os.pardir:
            for i in range(len(parts) - 1):
                if parts[i] in SESSIONS and parts[i + 1] == "sentences":
                    return parts[:i]
    return []


def check_audio(fs: FeatureStore, inputs: UtteranceInputs, ids: Sequence[str]) -> None:
    """The audio of the utterances about to be pooled is the audio the store was extracted from
    (its digest): alignment files of another copy of the corpus, or of re-recorded audio, never
    meet frames they do not describe. Only the utterances pooled in this run are read."""
    table = fs.utterances
    if "audio_digest" not in table.columns:
        return
    seen: dict[str, str] = {}
    changes = []
    for uid in ids:
        want = str(table.at[uid, "audio_digest"])
        path = inputs.audio[uid]
        if not want:
            continue
        if path not in seen:
            seen[path] = audio_digest(path) if os.path.exists(path) else "missing"
        if seen[path] != want:
            changes.append((uid, "audio file missing" if seen[path] == "missing" else "audio content changed", path))
    if changes:
        where = inputs.base or "its recorded location"
        raise EmofuseError(
            f"the corpus at {where} is not the one {fs.path} was built from: {len(changes)} utterances differ "
            f"({changes_text(changes)}); pass --root/--manifest of that copy, or run extract-embeddings with "
            "--update-corpus first")


def _records(cfg: AlignConfig, fs: FeatureStore):
    """The corpus records behind the store (for alignment paths), checked against its fingerprint."""
    meta = fs.corpus_meta
    kind = cfg.corpus or meta.get("kind")
    if kind not in KINDS:
        raise EmofuseError(f"{fs.path} does not say which corpus it holds; pass --corpus and --root/--manifest")
    # the store records where the corpus was read from (a folder or a manifest) as "root"
    opts = corpus_options(kind, cfg.root or meta.get("root"), cfg.manifest or meta.get("root"), _recorded_labels(meta))
    utts = load_corpus(kind, **opts)
    from ..corpora import utterance_table
    table = utterance_table(utts)
    if corpus_fingerprint(table) != fs.corpus_fingerprint:
        changes = corpus_changes(fs.utterances.reset_index(), table)
        if changes:  # (none: the store's table predates audio digests, the rest agrees)
            shown = "; ".join(f"{i}: {what}" for i, what in changes[:5])
            raise EmofuseError(
                f"the {kind} corpus read from {opts.get('root') or opts.get('path') or 'the bundle'} is not the one "
                f"{fs.path} was built from: {len(changes)} utterances differ ({shown}"
                f"{' …' if len(changes) > 5 else ''}); pass --root/--manifest of that copy, or run extract-embeddings "
                "with --update-corpus first")
    return {u.id: u for u in utts}


def _speaker(row) -> str | None:
    """An utterance's speaker from its table row (None when the table has none)."""
    v = row.get("speaker") if hasattr(row, "get") else None
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == "" else str(v)


def _file_bytes_digest(paths) -> str:
    h = hashlib.sha256()
    for tier, p in sorted(paths.items()):
        h.update(tier.encode() + b"\0")
        try:
            with open(p, "rb") as f:
                h.update(f.read())
        except OSError:
            h.update(b"<missing>")
        h.update(b"\0")
    return h.hexdigest()[:16]


def alignment_inputs(cfg: AlignConfig, ids, inputs: UtteranceInputs, utt_table, aligner) -> dict[str, str]:
    """Per utterance, a digest of everything its segments are pooled from: the bytes of its
    alignment files (``.wdseg/.phseg/.syseg``, TextGrid) or, for the sphinx aligner, the aligner,
    its version and settings (``aligner_digest``) and the utterance's audio digest and transcript;
    plus the options that change
    segments (source, silence, tier names). A segment whose digest differs is recomputed."""
    opts = {"source": cfg.source, "keep_silence": cfg.keep_silence, "tiers": {k: list(v) for k, v in cfg.tier_names.items()}}
    sphinx = aligner_digest(aligner) if aligner is not None else None
    out, slices = {}, _slices(utt_table)
    for uid in ids:
        paths = inputs.alignments.get(uid, {})
        if _aligned(cfg, paths, aligner):
            row = utt_table.loc[uid]
            src = {**(sphinx or {}), "audio": str(row.get("audio_digest", "")), "transcript": str(row["transcript"])}
            start, end = _segment_of(row)
            if start is not None or end is not None:   # a slice of its file (unsliced: the digest as before)
                src["segment"] = [start, end]
            channel = channel_of(row)
            if channel is not None:   # one channel of its file (every channel: the digest as before)
                src["channel"] = channel
        else:
            src = {"files": _file_bytes_digest(paths)}
            if "textgrid" in paths and speaker_tiers(paths["textgrid"]):   # which speaker's tiers are read
                src["speaker"] = _speaker(utt_table.loc[uid])
            if "textgrid" in paths and uid in slices:
                cut = whole_file_textgrid(paths["textgrid"], inputs.audio.get(uid), *slices[uid])
                if cut is not None:   # pooled from the slice's part of it (before: read as slice-timed)
                    inputs.cut[uid] = cut
                    src["cut to the slice"] = list(cut)
        out[uid] = digest({**opts, **src}, 16)
    return out


def aligner_digest(aligner) -> dict:
    """What of the forced aligner an utterance's digest names: its class, pocketsphinx's version
    and, for ours, its settings where they differ from ``DIGEST_BASELINE`` (the settings of every
    digest before they were named: those segments keep their digests). Another aligner (Python
    callers) may say its own with a ``settings()`` method."""
    out = {"aligner": type(aligner).__name__}
    try:
        from importlib.metadata import version
        out["pocketsphinx"] = version("pocketsphinx")
    except Exception:
        pass
    from ..align import sphinx_aligner
    if isinstance(aligner, sphinx_aligner.SphinxAligner):
        now = sphinx_aligner.settings()
        if now != sphinx_aligner.DIGEST_BASELINE:
            out["settings"] = now
    elif callable(getattr(aligner, "settings", None)):
        out["settings"] = aligner.settings()
    return out


def _slices(utt_table) -> dict[str, tuple[float | None, float | None]]:
    """``{id: (start, end)}`` of the utterances that are slices of their file."""
    cols = [c for c in ("start", "end") if c in utt_table.columns]
    if not cols:
        return {}
    part = utt_table[cols].astype(float)
    part = part[part.notna().any(axis=1)]
    return {uid: _segment_of(row) for uid, row in part.iterrows()}


#: How close (seconds) a TextGrid's declared end must come to its audio file's length to be taken
#: as timed from the file's start (aligners write the file's length there, to the sample).
WHOLE_FILE_TOLERANCE_S = 0.05


def whole_file_textgrid(textgrid: str, audio: str | None, start: float | None, end: float | None
                        ) -> tuple[float, float] | None:
    """For an utterance that is the slice ``start..end`` of its audio file: the slice (seconds in the
    file) when its TextGrid is timed from the file's start rather than the slice's, else None. An
    aligner run on a long recording (MFA) writes the whole file's length as the TextGrid's end; a
    TextGrid of the slice ends at the slice's length; the nearer one decides (a slice 90 ms into
    a file with no tail is told apart too). A slice from 0 to the file's end is both: None."""
    import soundfile as sf

    xmax = textgrid_end(textgrid)
    try:
        info = sf.info(audio) if audio else None
    except Exception:
        info = None
    if xmax is None or info is None or not info.samplerate:
        return None
    length = info.frames / info.samplerate
    s, e = (start or 0.0), (length if end is None else min(end, length))
    # the file's length, and nearer it than the slice's: only a slice from 0 to the file's end
    # (where both readings are one) keeps its TextGrid as it is
    if abs(xmax - length) <= WHOLE_FILE_TOLERANCE_S and abs(xmax - length) < abs(xmax - (e - s)):
        return s, e
    return None


def syllable_inputs(cfg: AlignConfig, inputs: Mapping[str, str], where: UtteranceInputs, aligner) -> dict[str, str]:
    """The input digests of the syllable segments: ``inputs`` (what every granularity is pooled
    from), plus, where the syllables are built from words and phones (no ``.syseg``), two rules
    that changed how: TextGrid phones may be IPA (read since), and under ``--keep-silence`` a
    silent word is a syllable segment too (since). So syllables pooled before either change are
    pooled again once; phone and word segments, and their run keys, are left as they are."""
    out = {}
    for uid, d in inputs.items():
        paths = where.alignments.get(uid, {})
        sphinx = _aligned(cfg, paths, aligner)
        if not paths and not sphinx:   # nothing to pool from: skipped as before, under the same digest
            out[uid] = d
            continue
        marks = []
        if "textgrid" in paths and not sphinx:
            marks.append("ipa phones read")
        if cfg.keep_silence and (sphinx or "syllable" not in paths):
            marks.append("silent words kept")
        out[uid] = digest({"inputs": d, "syllables": marks}, 16) if marks else d
    return out


def _aligned(cfg: AlignConfig, paths: Mapping[str, str], aligner) -> bool:
    """Whether an utterance with alignment files ``paths`` is aligned by the forced aligner."""
    return cfg.source == "sphinx" or (cfg.source == "auto" and not paths and aligner is not None)


def _segment_of(row) -> tuple[float | None, float | None]:
    """An utterance's ``start``/``end`` in its file (seconds; None where the table holds none)."""
    def value(name):
        v = row.get(name)
        return None if v is None or v != v else float(v)   # v != v: NaN
    return value("start"), value("end")


def prefetched(fs: FeatureStore, units: Sequence[Sequence[str]], stream: str = "audio") -> Iterator:
    """Frames of each unit (a ``Ragged``), the next unit read in a background thread while the
    caller pools the current one (HDF5 reads and torch kernels overlap)."""
    if not units:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(fs.load, stream, "frames", list(units[0]))
        for k in range(len(units)):
            cur = nxt.result()
            if k + 1 < len(units):
                nxt = pool.submit(fs.load, stream, "frames", list(units[k + 1]))
            yield cur


READ_BYTES = 64 << 20  # frames read per call: big enough for sequential reads, small enough to overlap


def frames_in_order(fs: FeatureStore, stream: str, ids: Sequence[str], read_bytes: int = READ_BYTES
                    ) -> Iterator[tuple[str, np.ndarray]]:
    """``(id, frames)`` for ``ids`` in order. Frames are read in units of about ``read_bytes``,
    the next unit in a background thread while the caller pools the current one (h5py releases
    the GIL while it reads), so reading and pooling overlap on two cores."""
    index = fs.index(stream, "frames")
    layers, dim, itemsize = fs.row_shape(stream, "frames")
    units, unit, size = [], [], 0
    for i in ids:
        unit.append(i)
        size += index[i][1] * layers * dim * itemsize
        if size >= read_bytes:
            units.append(unit)
            unit, size = [], 0
    if unit:
        units.append(unit)
    for unit, ragged in zip(units, prefetched(fs, units, stream)):
        for j, uid in enumerate(unit):
            yield uid, ragged[j]


@contextmanager
def pooling_threads():
    """Leave one core to the reading thread while torch pools on the others."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, int(usable_cores()) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_aligner(cfg: AlignConfig):
    """The forced aligner ``cfg.source`` asks for: the pocketsphinx aligner for ``sphinx`` (an
    error naming the package when it is missing), for ``auto`` when pocketsphinx is installed
    (it aligns the utterances that have no alignment files), else None."""
    if cfg.source not in ("sphinx", "auto"):
        return None
    from ..align.sphinx_aligner import SphinxAligner, sphinx_available
    if cfg.source == "sphinx" or sphinx_available():
        return SphinxAligner(write_to=cfg.write_alignments)
    return None


def frames_stream(fs: FeatureStore, stream: str | None) -> str:
    """The stream to pool: ``stream`` when it has frames; by default ``audio``, or the store's only
    stream with frames. Refused in one sentence with the ``--stream`` that works."""
    with_frames = [s for s in fs.streams if "frames" in fs.stream_info(s)["entries"]]
    if stream is None and "audio" not in with_frames and len(with_frames) == 1:
        return with_frames[0]
    stream = stream or "audio"
    if stream in with_frames:
        return stream
    what = (f"has no stream {stream!r}" if stream not in fs.streams else f"has no frames in stream {stream!r}")
    if not with_frames:
        raise EmofuseError(f"{fs.path} {what} and no stream with audio frames to pool (it has "
                           f"{fs.streams or 'no streams'}); extract audio first")
    pick = " or ".join(f"align-segments --store {shlex.quote(fs.path)} --stream {s}" for s in with_frames)
    raise EmofuseError(f"{fs.path} {what}; pool a stream with audio frames: {pick}")


def run_align(cfg: AlignConfig, aligner=None) -> AlignSummary:
    """Pool segments for every utterance with frames in ``cfg.stream``. Re-running is idempotent.
    ``aligner``: an object with ``align(id, audio_path, transcript) -> {tier: [AlignmentItem]}``
    used instead of the one ``cfg.source`` names (``make_aligner``); for an utterance that is a
    slice of its file it is called with the slice's ``start, end`` (seconds) too, and its times
    are seconds from ``start``."""
    if aligner is None:
        aligner = make_aligner(cfg)
    summary = AlignSummary(segments={g: 0 for g in cfg.granularities}, empty={g: 0 for g in cfg.granularities})
    if not os.path.exists(cfg.store):   # the reader's sentence (missing, or a first extraction interrupted),
        FeatureStore(cfg.store).close()   # before the lock would create a mistyped path's folders
    with StoreWriter(cfg.store) as writer:
        # the store is read under the writer's lock: before, an extract-embeddings --update-corpus
        # landing between the read and the lock had segments pooled from the index it replaced
        return _align_locked(cfg, aligner, summary, writer)


def _align_locked(cfg: AlignConfig, aligner, summary: AlignSummary, writer: StoreWriter) -> AlignSummary:
    fs = FeatureStore(cfg.store)
    try:
        cfg = replace(cfg, stream=frames_stream(fs, cfg.stream))
        info = fs.stream_info(cfg.stream)
        where = utterance_inputs(cfg, fs)
        if not where.from_store:
            log.info(f"{fs.path} predates stores that keep their alignment paths: the corpus was read for them "
                     "(run extract-embeddings on it once to record them)")
        if where.added:
            log.info(f"{where.added} utterances have alignment files added to the corpus since extraction (the "
                     "store recorded none for them): their segments are pooled from them")
        ids = fs.ids(cfg.stream, "frames")
        job = _AlignJob(cfg, where, fs.utterances, float(info["frame_hop_s"]), float(info["frame_window_s"]),
                        float(info.get("frame_offset_s", 0.0)), aligner, summary)
    except BaseException:
        fs.close()
        raise
    try:
        writer.add_stream(cfg.stream, writer.stream_infos[cfg.stream])
        inputs = alignment_inputs(cfg, ids, where, job.utt_table, aligner)
        for uid in _short_of_audio(job, ids):   # its digest names the refusal: segments pooled before it go
            inputs[uid] = digest({"inputs": inputs[uid], "refused": "ends before the audio"}, 16)
        syllables = syllable_inputs(cfg, inputs, where, aligner)
        of = {g: syllables if g == "syllable" else inputs for g in cfg.granularities}
        job.done = {g: writer.done_ids(cfg.stream, segments_kind(g), of[g]) for g in cfg.granularities}
        recorded = {g: writer.recorded_inputs(cfg.stream, segments_kind(g)) for g in cfg.granularities}
        todo = [i for i in ids if any(i not in job.done[g] for g in cfg.granularities)]
        summary.reused = len(ids) - len(todo)
        # counted once pooled (one whose changed inputs are now skipped was not pooled again)
        job.again = {i for i in todo if any(i in recorded[g] and i not in job.done[g] for g in cfg.granularities)}
        if where.from_store:
            check_audio(fs, where, todo)
        units = [todo[k:k + cfg.commit_utterances] for k in range(0, len(todo), cfg.commit_utterances)]
        with closing(frames_in_order(fs, cfg.stream, todo)) as frames, pooling_threads(), \
                progress_bar(total=len(todo), unit="utt", desc=f"{cfg.stream}: pooling segments") as bar:
            for unit in units:
                entries, skipped = _align_unit(job, frames, unit)
                writer.commit(cfg.stream, entries, skipped, inputs={i: inputs[i] for i in unit},
                              kind_inputs={segments_kind("syllable"): {i: syllables[i] for i in unit}})
                bar.update(len(unit))
    finally:
        fs.close()
        writer.finalize()
    return summary


def _short_of_audio(job: "_AlignJob", ids: list[str]) -> list[str]:
    """The utterances among ``ids`` whose Sphinx files end before their audio
    (``check_covers_audio``; only the files are read). Their input digests name the refusal, so
    that segments pooled from such files before align-segments checked it (same files, same
    digest: reused) are replaced by the refusal rather than kept."""
    out = []
    for uid in ids:
        paths = job.where.alignments.get(uid, {})
        if not paths or "textgrid" in paths or job.uses_aligner(uid) or uid in job.where.cut:
            continue
        row = job.utt_table.loc[uid]
        seconds = float(row["duration"]) if "duration" in row.index else float("nan")
        if not np.isfinite(seconds) or _segment_of(row) != (None, None):
            continue
        try:
            tiers = read_alignment(paths, job.cfg.tier_names, _speaker(row))
        except EmofuseError:   # unreadable: refused for that when pooled, its digest as it is
            continue
        try:
            check_covers_audio(alignment_ends(paths, tiers, job.cfg.granularities), seconds)
        except EmofuseError:
            out.append(uid)
    return out


@dataclass
class _AlignJob:
    """What pooling one unit of utterances needs besides their frames."""

    cfg: AlignConfig
    where: UtteranceInputs        # alignment files and audio per utterance
    utt_table: object             # the store's utterance table (pandas, indexed by id)
    hop: float                    # frame hop, window and offset of the stream, seconds
    window: float
    offset: float
    aligner: object | None        # the forced aligner, for utterances without alignment files
    summary: AlignSummary
    done: dict = field(default_factory=dict)   # granularity -> ids already pooled with these inputs
    again: set = field(default_factory=set)    # ids recorded with other inputs: pooled again if pooled now

    def uses_aligner(self, uid: str) -> bool:
        return _aligned(self.cfg, self.where.alignments.get(uid, {}), self.aligner)


def _audio_seconds(utt_table, uid: str, n_frames: int, hop: float, window: float) -> float:
    """The utterance's audio length: the corpus table's duration, else what the frames cover."""
    row = utt_table.loc[uid]
    dur = float(row["duration"]) if "duration" in row.index else float("nan")
    start, end = _segment_of(row)
    if start is None and end is not None:   # a slice by its end (stores before it recorded the file's length)
        dur = min(dur, end) if np.isfinite(dur) else end
    return dur if np.isfinite(dur) and dur > 0 else (n_frames - 1) * hop + window


def _align_unit(job: _AlignJob, frames_iter, unit):
    cfg, summary = job.cfg, job.summary
    entries = {segments_kind(g): {} for g in cfg.granularities}
    skipped = []
    for uid in unit:
        read_id, frames = next(frames_iter)
        assert read_id == uid, (read_id, uid)
        wanted = [g for g in cfg.granularities if uid not in job.done[g]]
        seconds = _audio_seconds(job.utt_table, uid, len(frames), job.hop, job.window)
        try:
            if job.uses_aligner(uid):
                row = job.utt_table.loc[uid]
                segment = _segment_of(row)   # a slice of its file: aligned on the slice, as it was encoded
                channel = channel_of(row)   # named only when set: an aligner of Python callers may not take it
                tiers = job.aligner.align(uid, job.where.audio[uid], row["transcript"],
                                          *(segment if segment != (None, None) or channel is not None else ()),
                                          **({"channel": channel} if channel is not None else {}))
                source = "from the aligner"
            else:
                paths = job.where.alignments.get(uid, {})
                if cfg.source == "textgrid" and "textgrid" not in paths:
                    raise EmofuseError("no TextGrid for this utterance (manifest column textgrid)")
                if not paths:
                    raise EmofuseError("no forced alignment for this utterance (use --source sphinx to align it)")
                tiers = read_alignment(paths, cfg.tier_names, _speaker(job.utt_table.loc[uid]))
                if uid in job.where.cut:   # a TextGrid of its whole file: it covers the slice
                    tiers = cut_to_slice(tiers, *job.where.cut[uid])
                    summary.cut += 1
                else:   # not one of another, shorter utterance (silence counts: not dropped yet)
                    check_covers_audio(alignment_ends(paths, tiers, wanted), seconds)
                source = paths
            phoneless: list = []
            tiers = complete_tiers(tiers, wanted, cfg.keep_silence, phoneless)
            check_within_audio({g: tiers[g] for g in wanted}, seconds, source)
        except EmofuseError as e:
            if cfg.on_error == "fail":
                raise EmofuseError(f"{uid}: {e}") from e
            reason = str(e)
            summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
            summary.example.setdefault(reason, uid)
            skipped += [(uid, segments_kind(g), reason) for g in wanted]
            continue
        if phoneless:
            summary.phoneless += len(phoneless)
            summary.phoneless_example = summary.phoneless_example or f"{uid} {phoneless[0].symbol!r}"
        kept, spans_of = {}, {}
        for g in wanted:
            items = [it for it in tiers[g] if cfg.keep_silence or not is_silence(it.symbol)]
            kept[g] = items
            if items:
                spans_of[g], clipped = segment_frames(np.array([i.start for i in items]),
                                                      np.array([i.end for i in items]), len(frames), job.hop,
                                                      job.window, job.offset)
                summary.clipped += clipped
            else:
                spans_of[g] = np.zeros((0, 2), np.int64)
                summary.empty[g] += 1
        # all granularities in one pass, means rounded to the store's dtype
        pooled = dict(zip(wanted, pool_many(frames, [spans_of[g] for g in wanted], dtype=frames.dtype)))
        for g in wanted:
            summary.segments[g] += len(kept[g])
            entries[segments_kind(g)][uid] = {"data": pooled[g],
                                              "symbols": np.array([i.symbol for i in kept[g]], dtype=object),
                                              "spans": spans_of[g].astype(np.int32)}
        summary.utterances += 1
        summary.changed += uid in job.again
    return entries, skipped
