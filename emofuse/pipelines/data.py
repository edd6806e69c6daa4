"""The training data path: the streams a configuration needs, packed, in memory when they fit.

A stream key (``F`` frames, ``P``/``S``/``W`` segments, ``T`` tokens) becomes one packed array
``rows (ΣN, L, D)`` plus per-utterance offsets and lengths, read from the store once (a few large
sequential reads) and shared by every fold and repeat. A batch is a gather of its utterances'
rows (on the GPU when the arrays live there). When the arrays do not fit the memory budget, each
batch is read from the store instead (``StoreSource``).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from ..arrays import offsets_from_lengths
from ..devices import gpu_free_bytes, to_device
from ..errors import EmofuseError
from ..heads.functional import GatheredRows
from ..store import FeatureStore
from .keys import KEY_KIND, KEY_NAME
from .keys import stream_of as _stream_of
from .rundir import content_digest



def parse_layers(spec: str | None, n_layers: int, layer_ids: Sequence[int] | None = None,
                 option: str = "--layers", stream: str | None = None, encoder_layers: int | None = None) -> list[int]:
    """Positions of the selected layers in a stream's stored layer axis.

    ``spec`` names *encoder* layers (hidden-state indices: 0 = the transformer's input, 1..N its
    blocks): ``None``/``all`` every stored layer, ``last``, ``6``, ``1-12``, ``1-`` (1 to the
    last), ``0,4,8``. ``layer_ids`` are the encoder indices the stream stores (default 0..L−1);
    ``encoder_layers`` the encoder's hidden states (its ``num_layers``; default: the stored ones):
    ``last`` is the encoder's last, refused when the stream (extracted with ``--layers``) lacks it.
    """
    ids = list(range(n_layers)) if layer_ids is None else [int(i) for i in layer_ids]
    last = ids[-1] if not encoder_layers else max(int(encoder_layers) - 1, ids[-1])
    where = f" of stream {stream!r}" if stream else ""
    allowed = f"the stream{where and ' ' + repr(stream)} has layers {_ranges(ids)}"
    if spec in (None, "", "all"):
        return list(range(len(ids)))
    spec = str(spec).strip()
    if spec == "last":
        if last != ids[-1]:   # before: the last *stored* layer, another one, without a word
            raise EmofuseError(f"{option} last: the encoder's last layer is {last}, and {allowed} (extracted with "
                               f"--layers); name a kept layer ({option} {ids[-1]}), or extract its last layer")
        if len(ids) == 1:
            raise EmofuseError(f"{option} last: stream{where and ' ' + repr(stream)} has a single layer (hand-crafted "
                               "descriptors or one stored layer), so there is no layer to select; leave "
                               f"{option} unset (all)")
        return [len(ids) - 1]
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, dash, b = part.strip().partition("-")
            lo = int(a)
            hi = (int(b) if b.strip() else last) if dash else lo
            if hi < lo:
                raise ValueError
            out += list(range(lo, hi + 1))
    except ValueError:
        raise EmofuseError(f"{option} must look like 'all', 'last', '6', '1-12', '1-' or '0,4,8', found {spec!r}") from None
    bad = [layer for layer in out if layer not in ids]
    if bad:
        raise EmofuseError(f"{option} {spec}: layers {bad} do not exist; {allowed}")
    if len(set(out)) != len(out):
        raise EmofuseError(f"{option} {spec}: a layer is selected twice")
    return [ids.index(layer) for layer in out]


def _ranges(ids: Sequence[int]) -> str:
    if len(ids) > 1 and list(ids) == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(map(str, ids))


def available_memory() -> int:
    """Bytes of RAM available now, on any OS: ``MemAvailable`` where the kernel reports it (Linux:
    free memory plus the page cache it can drop), else the free pages ``os.sysconf`` reports
    (other POSIX), else half the physical memory (macOS has no free-page count in ``sysconf``),
    else 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    page = _sysconf("SC_PAGE_SIZE")
    free = _sysconf("SC_AVPHYS_PAGES")
    if page and free:
        return page * free
    total = _sysconf("SC_PHYS_PAGES")
    if page and total:
        return page * total // 2
    return 8 << 30


def _sysconf(name: str) -> int | None:
    """``os.sysconf(name)``, or None where the OS does not define it (Windows, macOS for some names)."""
    try:
        value = os.sysconf(name)
    except (AttributeError, ValueError, OSError):
        return None
    return value if value > 0 else None


class MemorySource:
    """Packed rows of one key held in memory (CPU or GPU)."""

    def __init__(self, rows: torch.Tensor, offsets: np.ndarray, lengths: np.ndarray):
        self.rows, self.offsets, self.lengths = rows, offsets.astype(np.int64), lengths.astype(np.int64)

    def flat_index(self, idx: np.ndarray) -> np.ndarray:
        """Row numbers of utterances ``idx``, back to back."""
        lens = self.lengths[idx]
        return np.repeat(self.offsets[idx] - offsets_from_lengths(lens), lens) + np.arange(lens.sum())

    def all_rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.rows.index_select(0, to_device(torch.from_numpy(self.flat_index(idx)), self.rows.device))


class StoreSource:
    """Packed rows of one key read from the store per batch (when they do not fit in memory)."""

    def __init__(self, fs: FeatureStore, stream: str, kind: str, ids: np.ndarray, present: np.ndarray,
                 lengths: np.ndarray, layers: list[int]):
        self.fs, self.stream, self.kind, self.ids, self.present = fs, stream, kind, ids, present
        self.lengths, self.layers = lengths.astype(np.int64), layers

    def all_rows(self, idx: np.ndarray) -> torch.Tensor:
        keep = [i for i in idx if self.present[i]]
        return torch.from_numpy(self.fs.load(self.stream, self.kind, ids=list(self.ids[keep]), layers=self.layers).data)


@dataclass
class TrainData:
    """Utterances usable by a configuration, their labels and folds, and one source per key."""

    ids: np.ndarray                    # (U,) utterance ids
    y: np.ndarray                      # (U,) int class index
    classes: list[str]
    sessions: np.ndarray               # (U,) fold unit (string)
    speakers: np.ndarray               # (U,)
    sources: dict                      # key → MemorySource | StoreSource
    dims: dict                         # key → (layers, dim)
    layers: dict                       # key → encoder layer indices used (true indices, not positions)
    excluded: dict = field(default_factory=dict)   # reason → count (utterances left out)
    empty: dict = field(default_factory=dict)      # key → utterances with no segment (masked)
    in_memory: bool = True
    bytes: int = 0
    home: str = "cpu"                  # where the rows are held: cpu, cuda…, or store (read per batch)

    def batch(self, idx: np.ndarray, device: torch.device, norm: dict | None = None) -> dict:
        """Inputs for the heads: {key: (rows ``GatheredRows`` (N, L, D), lengths (B,))}. Rows held
        on ``device`` are not copied at all; others are gathered (or read) and moved as stored.
        Lengths stay on the host: the heads pad from them without asking the device (``pad_rows``)."""
        out = {}
        for k, src in self.sources.items():
            lens = src.lengths[idx]
            if isinstance(src, MemorySource) and src.rows.device == device:
                table, index = src.rows, to_device(torch.from_numpy(src.flat_index(idx)), device)
            else:
                table = to_device(src.all_rows(idx), device)
                index = torch.arange(len(table), device=device)
            stats = norm[k].for_rows(np.repeat(idx, lens), device) if norm is not None and k in norm else {}
            out[k] = (GatheredRows(table, index, **stats), torch.from_numpy(lens))   # lengths stay on the host
        return out

    def batch_runs(self, idxs: Sequence[np.ndarray], device: torch.device, norms: Sequence[dict | None]) -> list[dict]:
        """``batch(idxs[r], device, norms[r])`` for every run r of a stacked step. Rows held on
        ``device`` are indexed where they are: every run's row numbers (and normaliser groups) of a
        key go to the device in one copy, each run's batch a view of it (the same values, R times
        fewer copies). Rows held elsewhere: ``batch`` run by run."""
        device = torch.device(device)
        if not all(isinstance(src, MemorySource) and src.rows.device == device for src in self.sources.values()):
            return [self.batch(idx, device, n) for idx, n in zip(idxs, norms)]
        out = [{} for _ in idxs]
        for k, src in self.sources.items():
            lens = [src.lengths[idx] for idx in idxs]
            stats = [n[k] if n is not None and k in n else None for n in norms]
            parts = [src.flat_index(idx) for idx in idxs]
            grouped = [s is not None and s.group is not None for s in stats]
            parts += [s.group[np.repeat(idx, n)] for s, idx, n, g in zip(stats, idxs, lens, grouped) if g]
            views = to_device(torch.from_numpy(np.concatenate(parts).astype(np.int64)), device).split(
                [len(p) for p in parts])
            groups = iter(views[len(idxs):])   # each run's normaliser groups rode in the same copy
            for r in range(len(idxs)):
                extra = {}
                if stats[r] is not None:
                    mean, std = stats[r].on(device)
                    extra = {"mean": mean, "std": std, "group": next(groups) if grouped[r] else None}
                out[r][k] = (GatheredRows(src.rows, views[r], **extra), torch.from_numpy(lens[r]))
        return out


class Normaliser:
    """Per-(layer, dim) standardisation of one key's rows: one mean/std (``global``, from the
    training utterances only) or one per speaker (``speaker``: each speaker's own rows; no label
    is used, so test speakers are normalised by their own statistics)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, group_of_utt: np.ndarray | None):
        self.mean, self.std, self.group = mean, std, group_of_utt   # (G, L, D) each
        self._on: dict = {}   # device → (mean, std) there: copied once, not once per batch

    def for_rows(self, utt_of_row: np.ndarray, device) -> dict:
        """``GatheredRows`` arguments that standardise rows of these utterances."""
        group = None if self.group is None else to_device(torch.from_numpy(self.group[utt_of_row]), device)
        mean, std = self.on(device)
        return {"mean": mean, "std": std, "group": group}

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) on ``device``, copied there once."""
        key = str(device)
        if key not in self._on:
            self._on[key] = (to_device(self.mean, device), to_device(self.std, device))
        return self._on[key]


def _moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = rows.double()
    return x.mean(0).float(), x.std(0, unbiased=False).clamp(min=1e-5).float()


def _source_moments(src, idx: np.ndarray, per: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``_moments`` of the rows of utterances ``idx``. Rows held on a GPU are read ``per``
    utterances at a time in two passes (mean, then squared deviations), so the float64 copy never
    holds more than a slice: the rows of a whole fold in float64 are 4× their float16 size, more
    than the GPU has left once the rows are on it. Elsewhere one pass over one copy, as always
    (CPU figures unchanged to the bit)."""
    if not (isinstance(src, MemorySource) and src.rows.device.type == "cuda") or len(idx) <= per:
        return _moments(src.all_rows(idx))
    return _chunked_moments(src, idx, per)


def _chunked_moments(src, idx: np.ndarray, per: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [idx[a:a + per] for a in range(0, len(idx), per)]
    n = int(src.lengths[idx].sum())
    mean = sum(src.all_rows(p).double().sum(0) for p in parts) / n
    var = sum(((src.all_rows(p).double() - mean) ** 2).sum(0) for p in parts) / n
    return mean.float(), var.sqrt().clamp(min=1e-5).float()


def fit_normaliser(data: TrainData, kind: str, train_idx: np.ndarray,
                   keys: Sequence[str] | None = None) -> dict | None:
    """Normalisers for one fold, for ``keys`` (default: every key): ``none`` → None. ``global``
    statistics come from ``train_idx`` only (the fold's training utterances, never its test
    session); ``speaker`` ones from each speaker's own rows and use no label."""
    if kind == "none":
        return None
    if kind not in ("global", "speaker"):
        raise EmofuseError(f"--norm must be none, global or speaker, found {kind!r}")
    out = {}
    for k, src in data.sources.items():
        if keys is not None and k not in keys:
            continue
        if kind == "global":
            m, s = _source_moments(src, train_idx)
            out[k] = Normaliser(m[None], s[None], None)
        else:
            speakers, group = np.unique(data.speakers, return_inverse=True)
            stats = []
            for g in range(len(speakers)):
                mine = np.flatnonzero(group == g)
                n_rows = int(src.lengths[mine].sum())
                if n_rows > 1:
                    stats.append(_source_moments(src, mine))
                else:   # at most one row: identity, on the rows' device (stacked with the others below)
                    rows = src.all_rows(mine)
                    stats.append((torch.zeros(rows.shape[1:], device=rows.device),
                                  torch.ones(rows.shape[1:], device=rows.device)))
            out[k] = Normaliser(torch.stack([a for a, _ in stats]), torch.stack([b for _, b in stats]), group)
    return out


def blank_speakers(speakers) -> np.ndarray:
    """Where a speaker cell names no one: missing, NaN, empty, or the strings "nan"/"None" that a
    missing cell becomes once a table is read as text."""
    text = np.array(["" if v is None or v != v else str(v).strip() for v in speakers], dtype=object)
    return np.isin(text, ("", "nan", "None"))


# a speaker-only change of the corpus keeps every tensor (the writer drops only changed inputs)
SPEAKERS_FIX = "give every utterance its speaker in the corpus and run extract-embeddings again with --update-corpus"


def _some(ids, n: int = 5) -> str:
    return ", ".join(map(str, list(ids)[:n])) + (" …" if len(ids) > n else "")


def refuse_blank_speakers(data: TrainData) -> None:
    """Training under ``--norm speaker``: utterances without a speaker would be one 'speaker'
    across every session, the test session included, standardised by statistics of the test data."""
    blank = np.flatnonzero(blank_speakers(data.speakers))
    if len(blank):
        raise EmofuseError(f"--norm speaker: {len(blank)} of {len(data.ids)} utterances have no speaker (ids "
                           f"{_some(data.ids[blank])}); together they would be one 'speaker' across every session, "
                           f"the test session included, standardised by statistics of the test data: {SPEAKERS_FIX}, "
                           "or use --norm global")


#: what a --norm speaker model does with the speakers it is given, as its messages say it
SPEAKER_NORM = "this model standardises each speaker by the speaker's own statistics (--norm speaker)"


def speakers_to_standardise(ids, speakers, where: str, rows: str, fix: str,
                            alone: bool = True) -> np.ndarray | None:
    """Data a ``--norm speaker`` model was not trained on (predict's manifest and Python calls,
    evaluate's store): each speaker is standardised by the speaker's own rows. Every row names its
    speaker (returned as strings), or none does: None, each utterance standardised by its own
    rows, where ``alone`` (else refused: a cross-corpus score must not rest on an utterance's one
    or two segments standardised by themselves); a mix is refused, since the blank ones would be
    standardised together as one 'speaker'."""
    named = ~blank_speakers(speakers)
    if named.all():
        return np.array([str(s) for s in speakers])
    if not named.any():
        if alone:
            return None
        raise EmofuseError(f"{where} names no speaker of its {len(named)} {rows}; {SPEAKER_NORM}, and an utterance "
                           "alone is too little for that (a one-word utterance has one word segment): " + fix)
    blank = np.asarray(ids)[~named]
    raise EmofuseError(f"{where}: {len(blank)} of {len(named)} {rows} have no speaker (ids {_some(blank)}) while the "
                       f"others name one; {SPEAKER_NORM}: {fix}")


def _corpus_flags(fs: FeatureStore) -> str:
    """The extract-embeddings flags that read the store's corpus again (as its metadata records)."""
    meta = fs.corpus_meta
    kind = meta.get("kind", "iemocap")
    root = meta.get("root")
    flag = {"iemocap": "--root", "manifest": "--manifest"}.get(kind)
    labels = meta.get("labels")
    return (f"--corpus {kind}" + (f" {flag} {shlex.quote(root)}" if flag and root else "")
            + (f" --labels {labels}" if labels not in (None, "", "None") else ""))


def _missing_stream(fs: FeatureStore, stream: str, key: str) -> EmofuseError:
    """One sentence: what the store has, and the fix that works when pasted: another stream of
    the store that has what is missing (``--audio-stream``/``--text-stream``) where there is one,
    else the command that adds it."""
    kind = KEY_KIND[key]
    store = shlex.quote(fs.path)
    option = "--text-stream" if key == "T" else "--audio-stream"
    others = [s for s in fs.streams if s != stream and fs.has(s, kind)]
    if key == "T":
        what = f"text tokens (stream {stream!r})"
        add = (f"extract-embeddings {_corpus_flags(fs)} --out {store} --audio-model none "
               f"--text-model bert-base-uncased" + (f" --text-stream {stream}" if stream != "text" else ""))
    elif key == "F":
        what = f"audio frames (stream {stream!r})"
        add = (f"extract-embeddings {_corpus_flags(fs)} --out {store} --text-model none"
               + (f" --audio-stream {stream}" if stream != "audio" else ""))
    else:
        g = kind.split("/")[1]
        what = f"{g} segments in stream {stream!r}"
        add = f"align-segments --store {store} --stream {stream} --granularities {g}"
        if stream not in fs.streams or not fs.has(stream, "frames"):   # nothing to pool: extract first
            add = None
    have = []
    for s in fs.streams:
        info = fs.stream_info(s)
        have.append(f"{s}: " + ", ".join(info["entries"]))
    if others:
        fix = "use " + " or ".join(f"{option} {s}" for s in others) + " (the same command with it)"
    else:
        fix = f"add it with: {add}"
    skipped = fs.skipped(stream) if key in ("F", "T") and stream in fs.streams else None
    if skipped is not None and len(skipped) and not others:   # extracted, every utterance skipped: extracting
        from .extract.skipped import skipped_tsv_path           # again the same way skips them again
        n, tsv = skipped["id"].nunique(), shlex.quote(skipped_tsv_path(fs.path))
        fix = (f"stream {stream!r} was extracted but its {n} utterances were all skipped (e.g. "
               f"{str(skipped['reason'].iloc[0])[:200]}); `emofuse info {store}` sums up why, {tsv} lists each")
    if add is None and not others:   # segments of a stream without frames: pool a stream that has frames, then use it
        src = [s for s in fs.streams if fs.has(s, "frames")]
        fix = (f"add them with: align-segments --store {store} --stream {src[0]} --granularities {g}, then use "
               f"--audio-stream {src[0]}" if src else
               f"extract audio first: extract-embeddings {_corpus_flags(fs)} --out {store} --text-model none")
    return EmofuseError(f"{fs.path} has no {what}; it has {'; '.join(have) or 'no streams'}. To fix: {fix}")


def require(fs: FeatureStore, stream: str, key: str) -> None:
    """Raise one sentence naming what the store has and the command that adds what is missing."""
    if not fs.has(stream, KEY_KIND[key]):
        raise _missing_stream(fs, stream, key)


def select_layers(fs: FeatureStore, keys: Sequence[str], audio_stream: str, text_stream: str,
                  layers: str | Mapping[str, str | None] | None = None) -> dict[str, tuple[list[int], list[int], int]]:
    """Per key: (positions in the stored layer axis, encoder layer indices, width D). ``layers`` is
    one spec for every stream, or ``{"audio": spec, "text": spec, "defaults": sides}``: a side
    listed in ``defaults`` took its head's default, and a default ``last`` on a one-layer stream
    (eGeMAPS) takes that layer instead of being refused as an explicit ``last`` is."""
    out = {}
    for k in keys:
        side = "text" if k == "T" else "audio"
        stream = _stream_of(k, audio_stream, text_stream)
        spec = layers.get(side) if isinstance(layers, Mapping) else layers
        require(fs, stream, k)
        L, D, _ = fs.row_shape(stream, KEY_KIND[k])
        ids = fs.layer_ids(stream, KEY_KIND[k])   # encoder numbers of the stored layers
        n_enc = fs.stream_info(stream).get("num_layers")
        default = isinstance(layers, Mapping) and side in layers.get("defaults", ())
        if spec == "last" and len(ids) == 1 and default and (not n_enc or ids[0] == int(n_enc) - 1):
            spec = None   # the one layer kept is the encoder's last (eGeMAPS' only one): that layer
        try:
            option = layers.get("options", {}).get(side) if isinstance(layers, Mapping) else None
            pos = parse_layers(spec, L, ids, option=option or f"--{side}-layers", stream=stream, encoder_layers=n_enc)
        except EmofuseError as e:
            if default and spec == "last":   # the user typed no --{side}-layers: say where 'last' came from
                raise EmofuseError(f"{e} ('last' is this head's default; choose with --{side}-layers)") from None
            raise
        out[k] = (pos, [ids[p] for p in pos], D)
    return out


def load_train_data(fs: FeatureStore, keys: Sequence[str], audio_stream: str, text_stream: str,
                    layers: str | Mapping[str, str | None] | None = None,
                    device: torch.device = torch.device("cpu"), memory_budget: int | None = None,
                    cache: dict | None = None) -> TrainData:
    """Read what ``keys`` need from the store: only those streams, granularities and layers
    (``layers``: one spec for every stream, or ``{"audio": spec, "text": spec}``).

    ``cache`` (a dict kept by the caller, e.g. ``ablate`` across its rows) holds the rows read in
    memory by earlier calls: a key whose stream, layers, utterances and store content match is not
    read again; what this call does not use is dropped from it first (so it holds one row's data
    at most, shared with the next row that reads the same streams)."""
    utts = fs.utterances
    ids = np.asarray(utts.index)
    stream_of = {k: _stream_of(k, audio_stream, text_stream) for k in keys}
    indexes, excluded = {}, {}
    for k in keys:
        require(fs, stream_of[k], k)
        indexes[k] = set(fs.ids(stream_of[k], KEY_KIND[k]))
    keep = np.ones(len(ids), bool)
    for k in keys:
        if k in ("F", "T"):   # no frames / no tokens: the utterance cannot be used at all
            absent = np.array([i not in indexes[k] for i in ids])
            if absent.any():
                excluded[f"no {KEY_NAME[k]} in stream {stream_of[k]!r}"] = int((absent & keep).sum())
            keep &= ~absent
    if not keep.any():
        raise EmofuseError(f"{fs.path}: no utterance has every stream this configuration needs ({list(keys)})")
    ids = ids[keep]
    labels = utts["label"].to_numpy()[keep].astype(str)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise EmofuseError(f"{fs.path}: found only the label(s) {classes}; at least two classes are needed")

    # Sizes first, to decide memory vs streaming before reading anything big.
    lens, present, lsel, dims, total = {}, {}, {}, {}, 0
    chosen = select_layers(fs, keys, audio_stream, text_stream, layers)
    for k in keys:
        index = fs.index(stream_of[k], KEY_KIND[k])
        present[k] = np.array([i in index for i in ids])
        lens[k] = np.array([index[i][1] if i in index else 0 for i in ids], np.int64)
        L, D, itemsize = fs.row_shape(stream_of[k], KEY_KIND[k])
        lsel[k] = chosen[k][1]   # encoder layer numbers: what FeatureStore.load takes
        dims[k] = (len(lsel[k]), D)
        total += int(lens[k].sum()) * len(lsel[k]) * D * itemsize
    # Keyed by the exact content read (rundir.content_digest: fingerprint, rows, spans, input
    # digests), not only the stream's fingerprint: segments pooled again from changed alignments
    # keep their stream's fingerprint, and rows held from before must not serve them.
    ckey = {k: (os.path.realpath(fs.path), content_digest(fs, stream_of[k], KEY_KIND[k]), stream_of[k], KEY_KIND[k],
                tuple(lsel[k]), tuple(ids[present[k]])) for k in keys} if cache is not None else {}
    if cache is not None:   # drop what this call does not use before measuring the free memory
        for old in [c for c in cache if c not in ckey.values()]:
            del cache[old]
    # Where the rows live: on the GPU when they fit there, else in RAM (batches moved to the GPU),
    # else read from the store per batch. An explicit budget applies to the compute device.
    held = {c[0].device.type: 0 for c in (cache or {}).values()}
    for c in (cache or {}).values():   # rows already held in memory take no more of it
        held[c[0].device.type] += c[0].numel() * c[0].element_size()
    if memory_budget is not None:
        home = device if total <= memory_budget else None
    elif device.type == "cuda" and total - held.get("cuda", 0) <= int(gpu_free_bytes(device) * 0.6):
        home = device
    else:
        home = torch.device("cpu") if total - held.get("cpu", 0) <= int(available_memory() * 0.6) else None
    in_memory = home is not None
    sources = {}
    for k in keys:
        if in_memory:
            # (rows, offsets of the utterances that have rows: the key's id list); this call's
            # utterance list may hold others without rows, at other positions
            held = cache.get(ckey[k]) if cache is not None else None
            if held is None or held[0].device != home:
                r = fs.load(stream_of[k], KEY_KIND[k], ids=list(ids[present[k]]), layers=lsel[k])
                held = (torch.from_numpy(r.data).to(home), np.asarray(r.offsets, np.int64))
                if cache is not None:
                    cache[ckey[k]] = held
            offsets = np.zeros(len(ids), np.int64)
            offsets[present[k]] = held[1]
            sources[k] = MemorySource(held[0], offsets, lens[k])
        else:
            sources[k] = StoreSource(fs, stream_of[k], KEY_KIND[k], ids, present[k], lens[k], lsel[k])
    empty = {k: int((lens[k] == 0).sum()) for k in keys if (lens[k] == 0).any()}
    return TrainData(ids=ids, y=np.array([classes.index(l) for l in labels]), classes=classes,
                     sessions=utts["session"].to_numpy()[keep].astype(str),
                     speakers=utts["speaker"].to_numpy()[keep].astype(str), sources=sources, dims=dims,
                     layers={k: chosen[k][1] for k in keys}, excluded=excluded, empty=empty, in_memory=in_memory, bytes=total,
                     home=str(home) if home is not None else "store")
