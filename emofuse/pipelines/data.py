"""The training data path: the streams a configuration needs, packed, in memory when they fit.

A stream key (``F`` frames, ``P``/``S``/``W`` segments, ``T`` tokens) becomes one packed array
``rows (ΣN, L, D)`` plus per-utterance offsets and lengths, read from the store once (a few large
sequential reads) and shared by every fold and repeat. A batch is a gather of its utterances'
rows (on the GPU when the arrays live there). When the arrays do not fit the memory budget, each
batch is read from the store instead (``StoreSource``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import EmofuseError
from ..heads.functional import GatheredRows
from ..store import FeatureStore

KEY_KIND = {"F": "frames", "P": "segments/phone", "S": "segments/syllable", "W": "segments/word", "T": "tokens"}
KEY_NAME = {"F": "frames", "P": "phone segments", "S": "syllable segments", "W": "word segments", "T": "text tokens"}
SPEECH_KEYS = ("F", "P", "S", "W")


def parse_layers(spec: str | None, n_layers: int | Sequence[int]) -> list[int]:
    """``None``/``all`` → every layer; ``"6"``, ``"0-12"``, ``"0,4,8"`` or ``"last"`` otherwise.
    ``n_layers``: how many layers (0..n-1), or the encoder's numbers of the layers a stream holds
    (``FeatureStore.layer_ids``: a store extracted with ``--layers`` keeps a subset)."""
    have = list(range(n_layers)) if isinstance(n_layers, int) else [int(l) for l in n_layers]
    if spec in (None, "", "all"):
        return have
    if spec == "last":
        return [have[-1]]
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise EmofuseError(f"--layers must look like 'all', 'last', '6', '0-12' or '0,4,8', found {spec!r}") from None
    bad = [l for l in out if l not in set(have)]
    if bad:
        if have == list(range(len(have))):
            raise EmofuseError(f"--layers {spec}: layers {bad} do not exist (the stream has 0..{len(have) - 1})")
        raise EmofuseError(f"--layers {spec}: layers {bad} were not kept at extraction (the stream holds {have})")
    return out


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable), or 8 GiB when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


class MemorySource:
    """Packed rows of one key held in memory (CPU or GPU)."""

    def __init__(self, rows: torch.Tensor, offsets: np.ndarray, lengths: np.ndarray):
        self.rows, self.offsets, self.lengths = rows, offsets.astype(np.int64), lengths.astype(np.int64)

    def flat_index(self, idx: np.ndarray) -> np.ndarray:
        """Row numbers of utterances ``idx``, back to back."""
        lens = self.lengths[idx]
        return np.repeat(self.offsets[idx] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())

    def all_rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.rows.index_select(0, torch.from_numpy(self.flat_index(idx)).to(self.rows.device))


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
    layers: dict                       # key → list of layer indices used
    excluded: dict = field(default_factory=dict)   # reason → count (utterances left out)
    empty: dict = field(default_factory=dict)      # key → utterances with no segment (masked)
    in_memory: bool = True
    bytes: int = 0
    home: str = "cpu"                  # where the rows are held: cpu, cuda…, or store (read per batch)

    def batch(self, idx: np.ndarray, device: torch.device, norm: dict | None = None) -> dict:
        """Inputs for the heads: {key: (rows ``GatheredRows`` (N, L, D), lengths (B,))}. Rows held
        on ``device`` are not copied at all; others are gathered (or read) and moved as stored."""
        out = {}
        for k, src in self.sources.items():
            lens = src.lengths[idx]
            if isinstance(src, MemorySource) and src.rows.device == device:
                table, index = src.rows, torch.from_numpy(src.flat_index(idx)).to(device)
            else:
                table = src.all_rows(idx).to(device, non_blocking=True)
                index = torch.arange(len(table), device=device)
            stats = norm[k].for_rows(np.repeat(idx, lens), device) if norm is not None else {}
            out[k] = (GatheredRows(table, index, **stats), torch.from_numpy(lens).to(device))
        return out


class Normaliser:
    """Per-(layer, dim) standardisation of one key's rows: one mean/std (``global``, from the
    training utterances only) or one per speaker (``speaker``: each speaker's own rows; no label
    is used, so test speakers are normalised by their own statistics)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, group_of_utt: np.ndarray | None):
        self.mean, self.std, self.group = mean, std, group_of_utt   # (G, L, D) each

    def for_rows(self, utt_of_row: np.ndarray, device) -> dict:
        """``GatheredRows`` arguments that standardise rows of these utterances."""
        group = None if self.group is None else torch.from_numpy(self.group[utt_of_row]).to(device)
        return {"mean": self.mean.to(device), "std": self.std.to(device), "group": group}


def _moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = rows.double()
    return x.mean(0).float(), x.std(0, unbiased=False).clamp(min=1e-5).float()


def fit_normaliser(data: TrainData, kind: str, train_idx: np.ndarray) -> dict | None:
    """Normalisers per key for one fold: ``none`` → None; statistics never see test labels."""
    if kind == "none":
        return None
    if kind not in ("global", "speaker"):
        raise EmofuseError(f"--norm must be none, global or speaker, found {kind!r}")
    out = {}
    for k, src in data.sources.items():
        if kind == "global":
            m, s = _moments(src.all_rows(train_idx))
            out[k] = Normaliser(m[None], s[None], None)
        else:
            speakers, group = np.unique(data.speakers, return_inverse=True)
            stats = []
            for g in range(len(speakers)):
                rows = src.all_rows(np.flatnonzero(group == g))
                stats.append(_moments(rows) if len(rows) > 1 else (torch.zeros(rows.shape[1:]), torch.ones(rows.shape[1:])))
            out[k] = Normaliser(torch.stack([a for a, _ in stats]), torch.stack([b for _, b in stats]), group)
    return out


def _missing_stream(fs: FeatureStore, stream: str, key: str) -> EmofuseError:
    meta = fs.corpus_meta
    where = f"--corpus {meta.get('kind', 'iemocap')}" + (f" --root {meta['root']}" if meta.get("root") else "")
    if key == "T":
        fix = f"extract-embeddings {where} --out {fs.path} --audio-model none --text-model bert-base-uncased"
        what = f"text tokens (stream {stream!r})"
    elif key == "F":
        fix = f"extract-embeddings {where} --out {fs.path} --text-model none"
        what = f"audio frames (stream {stream!r})"
    else:
        g = KEY_KIND[key].split("/")[1]
        fix = f"align-segments --store {fs.path} --stream {stream} --granularities {g}"
        what = f"{g} segments in stream {stream!r}"
    have = []
    for s in fs.streams:
        info = fs.stream_info(s)
        have.append(f"{s}: " + ", ".join(info["entries"]))
    return EmofuseError(f"{fs.path} has no {what}; it has {'; '.join(have) or 'no streams'}. Add it with: {fix}")


def require(fs: FeatureStore, stream: str, key: str) -> None:
    """Raise one sentence naming what the store has and the command that adds what is missing."""
    if not fs.has(stream, KEY_KIND[key]):
        raise _missing_stream(fs, stream, key)


def load_train_data(fs: FeatureStore, keys: Sequence[str], audio_stream: str, text_stream: str,
                    layers: str | None = None, device: torch.device = torch.device("cpu"),
                    memory_budget: int | None = None) -> TrainData:
    """Read what ``keys`` need from the store: only those streams, granularities and layers."""
    utts = fs.utterances
    ids = np.asarray(utts.index)
    stream_of = {k: (text_stream if k == "T" else audio_stream) for k in keys}
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
    for k in keys:
        index = fs.index(stream_of[k], KEY_KIND[k])
        present[k] = np.array([i in index for i in ids])
        lens[k] = np.array([index[i][1] if i in index else 0 for i in ids], np.int64)
        L, D, itemsize = fs.row_shape(stream_of[k], KEY_KIND[k])
        lsel[k] = parse_layers(layers, fs.layer_ids(stream_of[k], KEY_KIND[k]))
        dims[k] = (len(lsel[k]), D)
        total += int(lens[k].sum()) * len(lsel[k]) * D * itemsize
    # Where the rows live: on the GPU when they fit there, else in RAM (batches moved to the GPU),
    # else read from the store per batch. An explicit budget applies to the compute device.
    if memory_budget is not None:
        home = device if total <= memory_budget else None
    elif device.type == "cuda" and total <= int(torch.cuda.mem_get_info(device)[0] * 0.6):
        home = device
    else:
        home = torch.device("cpu") if total <= int(available_memory() * 0.6) else None
    in_memory = home is not None
    sources = {}
    for k in keys:
        if in_memory:
            r = fs.load(stream_of[k], KEY_KIND[k], ids=list(ids[present[k]]), layers=lsel[k])
            offsets = np.zeros(len(ids), np.int64)
            offsets[present[k]] = r.offsets
            sources[k] = MemorySource(torch.from_numpy(r.data).to(home), offsets, lens[k])
        else:
            sources[k] = StoreSource(fs, stream_of[k], KEY_KIND[k], ids, present[k], lens[k], lsel[k])
    empty = {k: int((lens[k] == 0).sum()) for k in keys if (lens[k] == 0).any()}
    return TrainData(ids=ids, y=np.array([classes.index(l) for l in labels]), classes=classes,
                     sessions=utts["session"].to_numpy()[keep].astype(str),
                     speakers=utts["speaker"].to_numpy()[keep].astype(str), sources=sources, dims=dims,
                     layers=lsel, excluded=excluded, empty=empty, in_memory=in_memory, bytes=total,
                     home=str(home) if home is not None else "store")
