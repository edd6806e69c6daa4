"""Use a trained configuration: export it as one folder, reload it, apply it to new audio and
transcripts (``predict``) or to another corpus's store (``evaluate``).

A trained configuration is the **ensemble of its fold models**: every (repeat, fold) head of a
``train-head`` run, each with the normalisation statistics of its own training folds, and a
prediction is the mean of their softmax probabilities. Why not one model refit on all data: the
protocol stops each head early on validation UA, and a refit has no held-out data to stop on (its
epoch count would be a guess), and it would be a model whose score nobody measured; the fold
models are exactly the models behind the reported numbers. The cost is one head per member: 5
linear late-fusion heads took 0.16x the time of the cheapest encoders (eGeMAPS + MiniLM) on 2
CPU cores (BENCHMARKS.md, "predict"); the encoders run once whatever the number of members.

Exported folder (``export_run``; reload with ``emofuse.load_model``)::

    model.json                 classes, stream keys, layer selection, normalisation, the encoders'
                               ids, hashes and fingerprints, the members, sha256 of every file,
                               a short digest of each recording of the training store (so that
                               ``evaluate`` refuses a store that shares recordings with it)
    heads/r<repeat>_s<fold>.safetensors   one head per member
    norm/s<fold>.safetensors   training-fold mean/std per stream key (--norm global)
    training/config.json, training/summary.json   the run's own records
"""

from __future__ import annotations

import logging
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..corpora.manifest import OVERLAP_S
from ..devices import bf16_autocast, resolve_device
from ..errors import EmofuseError
from ..store import (FeatureStore, flags_of, info_differences, nonfinite, same_encoder, shaping_differs,
                     stream_fingerprint)
from .data import (SPEAKER_NORM, SPEAKERS_FIX, MemorySource, Normaliser, TrainData, fit_normaliser,
                   load_train_data, speakers_to_standardise)
from .extract.stream import not_finite
from .keys import FRAME_KEY, KEY_KIND, KEY_NAME, TEXT_KEY, stream_of, without_segments
from .metrics import format_summary, scores, summarise
from .rundir import (CONFIG, RUNS, SUMMARY, fold_metrics, has_config, is_finished, predictions_roundtrip,
                     read_config, read_summary, refuse_diverged, run_lock, write_config, write_csv, write_fold,
                     write_json, write_predictions, write_summary)

log = logging.getLogger(__name__)


def _spans(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each utterance's span of its audio file in seconds: (start, end); no start: 0, no end:
    where its audio ends (its duration after start; unknown: infinity)."""
    num = lambda c: (pd.to_numeric(table[c], errors="coerce") if c in table.columns  # noqa: E731
                     else pd.Series(np.nan, index=table.index))
    start = num("start").fillna(0.0)
    return start, num("end").fillna(start + num("duration")).fillna(np.inf)


def _signal(table: pd.DataFrame) -> pd.Series:
    """Per utterance the audio it reads: its file's content digest, with ``#c`` and the channel
    where it reads one channel of the file (two channels of one file are two signals); "" where
    the audio could not be read at extraction."""
    digests = table["audio_digest"].fillna("").astype(str)
    if "channel" not in table.columns:
        return digests
    return pd.Series([d + (f"#c{int(c)}" if d and c == c and c is not None else "")
                      for d, c in zip(digests, table["channel"])], index=table.index)


def recording_spans(table: pd.DataFrame) -> dict[str, list[list[float]]] | None:
    """{audio content digest: [[start, end] …]}: the spans of each audio file the table's
    utterances cover (None for a store written before audio digests)."""
    if "audio_digest" not in table.columns:
        return None
    out: dict[str, list[list[float]]] = {}
    for d, s, e in zip(_signal(table), *_spans(table)):
        if d:
            out.setdefault(d, []).append([float(s), float(e) if np.isfinite(e) else None])
    return out


def overlapping(table: pd.DataFrame, spans: dict, tolerance: float = OVERLAP_S) -> list[str]:
    """Ids of ``table``'s utterances whose audio (the same file content) overlaps one of
    ``spans`` (``recording_spans`` of another table) by more than ``tolerance`` seconds:
    the same recording cut a little differently, a longer or shorter span of it, the same file."""
    out = []
    within: dict[str, list] = {}   # a file's digest → its signals in ``spans`` (a mix holds each channel)
    for k in spans:
        within.setdefault(k.split("#")[0], []).append(k)
    for uid, d, s, e in zip(table.index, _signal(table), *_spans(table)):
        file = d.split("#")[0]
        # one channel overlaps that channel and the file's mix; a mix overlaps every channel of it
        signals = [k for k in within.get(file, ()) if "#" not in d or k in (d, file)] if d else []
        for s2, e2 in (x for k in signals for x in spans[k]):
            if min(e, np.inf if e2 is None else e2) - max(s, s2) > tolerance:
                out.append(str(uid))
                break
    return out


def recording_keys(table: pd.DataFrame, legacy: bool = False) -> pd.Series | None:
    """Per utterance (indexed by id) a 16-hex digest of what it is, wherever the corpus lies:
    its audio file's content digest and the span of the file it covers, in 10 ms (no start: 0;
    no end: where its audio ends), so a whole file and the same file given as [0, its length]
    (a lhotse manifest's way) are one recording; two stores share an utterance when they share
    its key. "" for an utterance whose audio could not be read at extraction (no digest: nothing
    to compare). None for a store written before audio digests (a file name and size would call
    two corpora's ``0001.wav`` the same recording). ``legacy``: the keys exports recorded before
    the span was normalised (the raw start and end)."""
    if "audio_digest" not in table.columns:
        return None
    if legacy or "duration" not in table.columns:
        cols = [c for c in ("audio_digest", "start", "end") if c in table.columns]
        rows = ["|".join(map(str, r)) for r in table[cols].itertuples(index=False, name=None)]
    else:
        start, end = _spans(table)
        end = end.replace(np.inf, np.nan)   # no end and no duration: keyed "nan", as exports recorded it
        rows = [f"{d}|{s:.2f}|{e:.2f}" for d, s, e in zip(_signal(table).astype(str), start, end)]
    keys = [hashlib.sha256(r.encode()).hexdigest()[:16] for r in rows]
    digests = table["audio_digest"].fillna("").astype(str).to_numpy()
    return pd.Series([k if d else "" for k, d in zip(keys, digests)], index=table.index)


MODEL_TYPE = "emofuse.model"
FORMAT_VERSION = 1
#: stream keys ``predict`` can compute from audio and text alone (segments need forced alignments)
PREDICT_KEYS = (FRAME_KEY, TEXT_KEY)
#: what keeps activations beyond a model's store dtype, or avoids an overflow inside its encoder:
#: predict computes them as the model's store was extracted
STORE_DTYPE_FIXED = {"remedy": "the model was trained on a store of that dtype: train it on one extracted with "
                               "--store-dtype float32",
                     "compute_remedy": "the model's stream was extracted so: extract with --dtype float32 and train "
                                       "again"}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Member:
    """One fold model: its head, and the normalisation statistics of its training folds
    (key → (mean (1, L, D), std (1, L, D)); empty without ``--norm global``)."""

    name: str
    repeat: int
    seed: int
    fold: str
    head: torch.nn.Module
    norm: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)   # the member's own test scores (ua, wa, f1) in training


class TrainedModel:
    """A trained configuration: the fold models of a ``train-head`` run (see the module doc).

    >>> m = emofuse.load_model("exported/")
    >>> m.classes, m.keys            # ['ang', 'hap', 'neu', 'sad'], ['F', 'T']
    >>> m.predict(audio=["a.wav"], text=["I am so happy"])   # DataFrame id, pred, prob_<class>
    """

    def __init__(self, spec: dict, members: list[Member]):
        self.spec, self.members = spec, members
        self.classes: list[str] = list(spec["classes"])
        self.keys: list[str] = list(spec["keys"])

    def __repr__(self) -> str:
        streams = ", ".join(f"{k}: {s['stream']} {s['kind']} layers {_short(s['layer_ids'])}"
                            for k, s in self.spec["streams"].items())
        c = self.spec["config"]
        return (f"TrainedModel(fusion={c['fusion']}, head={c['head']}, classes={self.classes}, "
                f"{len(self.members)} fold models, norm={self.spec['norm']}; {streams})")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str, store: str | None = None,
                 moved: str = "export the run with: emofuse export RUN OUT --store NEW_PATH") -> "TrainedModel":
        """The fold models of a finished ``train-head`` run, read with the run's store (its
        recording keys and encoder information; with ``--norm global`` the training folds'
        statistics are recomputed from it), which must hold exactly the content the run read.
        ``store`` overrides its path; ``moved``: what to do when the store is not where the run
        says (the calling command's own option)."""
        from .train import TrainConfig, store_fingerprints

        config = _read_run_config(run_dir)
        c = dict(config["config"])
        c["folds"] = tuple(c["folds"]) if c.get("folds") else None
        cfg = TrainConfig(**c)
        if not is_finished(run_dir):
            raise EmofuseError(f"{run_dir} is not a finished train-head run (no summary.json): run its train-head "
                               "command again to finish it first")
        refuse_diverged(run_dir)
        summary = read_summary(run_dir)
        store_path = store or cfg.store
        if not os.path.exists(store_path):
            raise EmofuseError(f"the store {store_path} that {run_dir} was trained on is not there; if it moved, "
                               f"{moved}")
        with FeatureStore(store_path) as fs:
            if store_fingerprints(fs, cfg) != config["fingerprints"]:
                raise EmofuseError(f"{store_path} no longer holds the content {run_dir} was trained on (its "
                                   "fingerprints or segment digests differ); the normalisation statistics cannot "
                                   "be recomputed from it")
            keys = cfg.keys()
            keys_now = recording_keys(fs.utterances)   # every recording of the training store
            training = None if keys_now is None else sorted(set(keys_now) - {""})
            spans = recording_spans(fs.utterances)
            layer_ids = config["layer_ids"]
            streams, encoders = {}, {}
            for k in keys:
                s = stream_of(k, cfg.audio_stream, cfg.text_stream)
                info = fs.stream_info(s)
                L, D, _ = fs.row_shape(s, KEY_KIND[k])
                streams[k] = {"stream": s, "kind": KEY_KIND[k], "layer_ids": [int(x) for x in layer_ids[k]], "dim": D}
                encoders[s] = {k2: v for k2, v in info.items() if k2 not in ("entries", "granularities")}
            norm_keys = cfg.norm_keys()
            fold_norms = {}
            if cfg.norm == "global":
                data = load_train_data(fs, keys, cfg.audio_stream, cfg.text_stream, cfg.layer_specs())
                for fold in sorted({str(r["fold"]) for r in summary["runs"]}):
                    idx = np.flatnonzero(data.sessions != fold)   # the fold's training + validation utterances
                    n = fit_normaliser(data, "global", idx, norm_keys)
                    fold_norms[fold] = {k: (v.mean, v.std) for k, v in n.items()}
        spec = {"type": MODEL_TYPE, "format_version": FORMAT_VERSION, "emofuse_version": __version__,
                "classes": list(summary["classes"]), "keys": keys, "streams": streams, "encoders": encoders,
                "norm": cfg.norm, "norm_keys": norm_keys, "config": config["config"], "identity": config["identity"],
                "fingerprints": config["fingerprints"], "ensemble": "mean of the members' softmax probabilities",
                "summary": {m: summary[m] for m in ("ua", "wa", "f1")},
                "training_recordings": training, "recording_keys": "span", "training_spans": spans}
        folders = {}   # (repeat, fold) → the folder of that run (found by its metrics, whatever its name)
        rdir = os.path.join(run_dir, "runs")
        for name, m in fold_metrics(run_dir, strict=False):
            folders[(int(m["repeat"]), str(m["fold"]))] = name
        members = []
        for r in sorted(summary["runs"], key=lambda r: (r["repeat"], str(r["fold"]))):
            name = folders.get((int(r["repeat"]), str(r["fold"])))
            if name is None:
                raise EmofuseError(f"{run_dir}: the run of repeat {r['repeat']}, fold {r['fold']} that summary.json "
                                   "lists has no folder with its metrics.json under runs/")
            head = _build_head(spec, os.path.join(rdir, name, "model.safetensors"))
            members.append(Member(name=name, repeat=int(r["repeat"]), seed=int(r["seed"]), fold=str(r["fold"]),
                                  head=head, norm=fold_norms.get(str(r["fold"]), {}),
                                  test={m: r[m] for m in ("ua", "wa", "f1")}))
        return cls(spec, members)

    def save(self, out: str, copies: Mapping[str, str] | None = None) -> str:
        """Write the self-contained folder (see the module doc), with ``copies`` ({path in the folder:
        file to copy there}, e.g. the run's records) beside the heads; ``model.json`` lists the sha256
        of every file but itself. Returns ``out``."""
        if os.path.exists(os.path.join(out, "model.json")) or (os.path.isdir(out) and os.listdir(out)):
            raise EmofuseError(f"{out} already exists and is not empty; choose a new folder for the export")
        from safetensors.torch import save_file

        os.makedirs(os.path.join(out, "heads"), exist_ok=True)
        files, members = {}, []
        for m in self.members:
            rel = f"heads/{m.name}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in m.head.state_dict().items()}
            save_file(state, os.path.join(out, rel), metadata={"type": "emofuse.head", "member": m.name})
            files[rel] = _sha256(os.path.join(out, rel))
            entry = {"name": m.name, "repeat": m.repeat, "seed": m.seed, "fold": m.fold, "head": rel, "test": m.test}
            if m.norm:
                rel_n = f"norm/s{m.fold}.safetensors"
                if rel_n not in files:
                    os.makedirs(os.path.join(out, "norm"), exist_ok=True)
                    tensors = {f"{k}.{what}": t.contiguous() for k, (mean, std) in m.norm.items()
                               for what, t in (("mean", mean), ("std", std))}
                    save_file(tensors, os.path.join(out, rel_n), metadata={"type": "emofuse.norm", "fold": m.fold})
                    files[rel_n] = _sha256(os.path.join(out, rel_n))
                entry["norm"] = rel_n
            members.append(entry)
        for rel, src in (copies or {}).items():
            os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
            shutil.copyfile(src, os.path.join(out, rel))
            files[rel] = _sha256(os.path.join(out, rel))
        spec = {**self.spec, "members": members, "files": files}
        write_json(os.path.join(out, "model.json"), spec)
        return out

    # -- scoring ----------------------------------------------------------------------------
    def member_logits(self, data: TrainData, idx: np.ndarray | None = None, device: str | torch.device = "cpu",
                      batch: int = 64) -> np.ndarray:
        """Logits (members, utterances, classes) of every fold model on ``data`` (a ``TrainData``
        whose keys and layers are this model's). Global statistics are each member's own;
        ``--norm speaker`` standardises each speaker of ``data`` by its own rows, as in training."""
        device = torch.device(device)
        idx = np.arange(len(data.ids)) if idx is None else np.asarray(idx)
        speaker_norm = None
        if self.spec["norm"] == "speaker":
            speaker_norm = fit_normaliser(data, "speaker", np.arange(len(data.ids)), self.spec["norm_keys"])
        out = []
        for m in self.members:
            norm = speaker_norm if speaker_norm is not None else (
                {k: Normaliser(mean, std, None) for k, (mean, std) in m.norm.items()} or None)
            head = m.head.to(device).eval()
            chunks = []
            bf16 = bool(self.spec["config"].get("bf16"))   # computed as the run computed its test logits
            with torch.no_grad(), bf16_autocast(device, bf16):
                for a in range(0, len(idx), batch):
                    chunks.append(head(data.batch(idx[a:a + batch], device, norm)).float())
            # to the host once per member, not once per chunk (each copy would wait for the device)
            out.append(torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, len(self.classes)), np.float32))
        return np.stack(out)

    @staticmethod
    def probabilities(member_logits: np.ndarray) -> np.ndarray:
        """(utterances, classes): the mean over members of each member's softmax."""
        return torch.softmax(torch.from_numpy(member_logits).double(), dim=-1).mean(0).numpy()

    def features(self, audio: Sequence[str] | None = None, text: Sequence[str] | None = None,
                 ids: Sequence[str] | None = None, speakers: Sequence[str] | None = None,
                 device: str = "cpu", audio_model: str | None = None, text_model: str | None = None,
                 starts: Sequence[float | None] | None = None, ends: Sequence[float | None] | None = None,
                 channels: Sequence[int | None] | None = None) -> TrainData:
        """Run the model's encoders on new audio files and transcripts (the extraction code path:
        same loading, resampling, preprocessing, compute and stored dtypes, layer selection)."""
        return encode_new(self, audio, text, ids, speakers, device, audio_model, text_model, starts, ends, channels)

    def predict(self, audio: Sequence[str] | None = None, text: Sequence[str] | None = None,
                ids: Sequence[str] | None = None, speakers: Sequence[str] | None = None, device: str = "cpu",
                audio_model: str | None = None, text_model: str | None = None, **kw) -> pd.DataFrame:
        """Class probabilities of new utterances: a DataFrame ``id, pred, prob_<class> …``."""
        data = self.features(audio, text, ids, speakers, device, audio_model, text_model, **kw)
        probs = self.probabilities(self.member_logits(data, device=device))
        out = pd.DataFrame({"id": data.ids, "pred": np.array(self.classes)[probs.argmax(1)]})
        for j, c in enumerate(self.classes):
            out[f"prob_{c}"] = probs[:, j]
        return out


def _short(ids: Sequence[int]) -> str:
    ids = list(ids)
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def _read_run_config(run_dir: str) -> dict:
    config = read_config(run_dir)
    if config is None:
        raise EmofuseError(f"{run_dir} is not a train-head run directory (no config.json)")
    if config.get("type") != "emofuse.train-head":
        raise EmofuseError(f"{run_dir} holds {config.get('type')!r}, not a train-head run")
    if config.get("kind") == "finetune":
        raise EmofuseError(f"{run_dir} is a finetune run: its encoders were trained too, so its heads do not fit the "
                           "frozen encoders export, predict and evaluate run; these work on train-head runs")
    if config.get("config", {}).get("fusion") == "combine":
        raise EmofuseError(f"{run_dir} is a score combination (--fusion combine), which has no head of its own; "
                           "export or evaluate each of its member runs")
    return config


def _build_head(spec: dict, path: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    from .train import TrainConfig

    c = dict(spec["config"])
    c["folds"] = tuple(c["folds"]) if c.get("folds") else None
    cfg = TrainConfig(**c)
    dims = {k: (len(s["layer_ids"]), int(s["dim"])) for k, s in spec["streams"].items()}
    torch.manual_seed(0)
    head = cfg.build(dims, len(spec["classes"]))
    if not os.path.exists(path):
        raise EmofuseError(f"the head weights {path} are missing")
    try:
        head.load_state_dict(load_file(path))
    except RuntimeError as e:
        raise EmofuseError(f"{path} does not hold this configuration's head ({str(e).splitlines()[0][:160]})") from None
    return head.eval()


def load_model(path: str) -> TrainedModel:
    """Reload an exported model folder (``emofuse export``), or a finished ``train-head`` run
    directory (its store must still be where the run says)."""
    if has_config(path) and not os.path.exists(os.path.join(path, "model.json")):
        return TrainedModel.from_run(path)
    mpath = os.path.join(path, "model.json")
    if not os.path.exists(mpath):
        raise EmofuseError(f"{path} is not an exported emofuse model (no model.json) nor a train-head run "
                           "(no config.json); export a run with: emofuse export RUN_DIR OUT")
    with open(mpath) as f:
        spec = json.load(f)
    if spec.get("type") != MODEL_TYPE:
        raise EmofuseError(f"{mpath} holds {spec.get('type')!r}, not an exported emofuse model")
    if spec.get("format_version") != FORMAT_VERSION:
        raise EmofuseError(f"{mpath} has format version {spec.get('format_version')!r}; this emofuse "
                           f"({__version__}) reads version {FORMAT_VERSION}")
    for rel, want in spec["files"].items():
        p = os.path.join(path, rel)
        if not os.path.exists(p):
            raise EmofuseError(f"{path}: the file {rel} that model.json lists is missing")
        if _sha256(p) != want:
            raise EmofuseError(f"{path}: {rel} does not match its sha256 in model.json (damaged or replaced)")
    from safetensors.torch import load_file

    members, norms = [], {}
    for e in spec["members"]:
        norm = {}
        if e.get("norm"):
            if e["norm"] not in norms:
                t = load_file(os.path.join(path, e["norm"]))
                norms[e["norm"]] = {k: (t[f"{k}.mean"], t[f"{k}.std"]) for k in spec["norm_keys"]}
            norm = norms[e["norm"]]
        members.append(Member(name=e["name"], repeat=e["repeat"], seed=e["seed"], fold=e["fold"],
                              head=_build_head(spec, os.path.join(path, e["head"])), norm=norm, test=e.get("test", {})))
    return TrainedModel(spec, members)


def export_run(run_dir: str, out: str, store: str | None = None) -> str:
    """``emofuse export RUN OUT``: the run's fold models as one self-contained folder."""
    if os.path.isdir(out) and os.listdir(out):
        raise EmofuseError(f"{out} already exists and is not empty; choose a new folder for the export")
    model = TrainedModel.from_run(run_dir, store, moved="pass its current path with --store")
    tmp = out.rstrip("/") + f".{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(tmp, {f"training/{name}": os.path.join(run_dir, name) for name in (CONFIG, SUMMARY)})
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -- new audio and transcripts ------------------------------------------------------------------
def _check_keys(model: TrainedModel) -> None:
    seg = [k for k in model.keys if k not in PREDICT_KEYS]
    if seg:
        raise EmofuseError(f"this model reads {', '.join(KEY_NAME[k] for k in seg)}, which need forced alignments of "
                           "the new audio; predict supports models on frames (F) and text (T): for segment models, "
                           "extract and align the new corpus into a store and use emofuse evaluate")


def _fingerprint(enc, info: dict) -> str:
    return stream_fingerprint(enc.fingerprint_fields(), info["store_dtype"], info.get("layers"))


def _load_encoder(model: TrainedModel, stream: str, side: str, override: str | None, device: str):
    """The stream's encoder, checked against the fingerprint the model was trained with."""
    from ..extract.encoders import load_audio_encoder, load_text_encoder, window_as_recorded

    info = model.spec["encoders"][stream]
    ec = info.get("extract_config") or {}
    spec = override or ec.get(f"{side}_model") or info.get("encoder_id")
    load = load_audio_encoder if side == "audio" else load_text_encoder
    enc = load(spec, device=device, dtype=ec.get("dtype", "float32"))
    got = _fingerprint(enc, info)
    # a model trained on a store fingerprinted by the recipe before (store.same_encoder) keeps its fingerprint
    same = same_encoder(info, {**enc.info, "store_dtype": info["store_dtype"], "layers": info.get("layers"),
                               "fingerprint": got})
    if not same and "last_layer" in enc.info and "last_layer" not in info \
            and enc.info.get("weights_hash") == info.get("weights_hash"):
        raise EmofuseError(f"this model's {side} stream {stream!r} ({info.get('encoder_id')}) was extracted before "
                           "emofuse stored a pre-LayerNorm model's normalised output as its last layer "
                           "(docs/encoders.md); its last layer is another tensor than this encoder gives now: "
                           "extract the store again and retrain the model")
    if not same:
        raise EmofuseError(f"the {side} encoder {spec} does not match the one this model was trained on (stream "
                           f"{stream!r}: {info.get('encoder_id')}, weights {str(info.get('weights_hash'))[:12]}, "
                           f"fingerprint {info['fingerprint'][:12]}; found weights "
                           f"{str(enc.info.get('weights_hash'))[:12]}, fingerprint {got[:12]}): pass the checkpoint "
                           f"extraction used with --{side}-model")
    differs = shaping_differs(info, enc.info)   # the text windowing follows model_max_length, outside the fingerprint
    if differs and window_as_recorded(enc, info.get("max_tokens")):   # the windows the model was trained on
        differs = shaping_differs(info, enc.info)
    if differs:
        k = differs[0]
        raise EmofuseError(f"the {side} encoder {spec} windows text differently from the one this model was "
                           f"trained on ({k} {enc.info[k]}, the model's stream {stream!r} has {info[k]}): its "
                           "tokenizer's model_max_length changed; restore it or pass the checkpoint extraction used")
    return enc


def encode_new(model: TrainedModel, audio, text, ids, speakers, device, audio_model, text_model, starts=None,
               ends=None, channels=None) -> TrainData:
    from ..corpora import Utterance
    from ..extract.audio import BadInput, check_transcript, load_audio

    _check_keys(model)
    n = len(audio) if audio is not None else (len(text) if text is not None else 0)
    if n == 0:
        raise EmofuseError("nothing to predict: give audio files (and transcripts when the model reads text)")
    if "F" in model.keys and audio is None:
        raise EmofuseError("this model reads audio frames (F): give the audio files (--audio or a manifest's audio column)")
    if "T" in model.keys and text is None:
        raise EmofuseError("this model reads text (T): give the transcripts (--text or a manifest's text column)")
    for name, seq in (("audio", audio), ("text", text), ("ids", ids), ("speakers", speakers)):
        if seq is not None and len(seq) != n:
            raise EmofuseError(f"{len(seq)} {name} for {n} utterances; give one per utterance")
    if ids is None:   # file names without their extension, or the paths as given where two names collide
        ids = [os.path.splitext(os.path.basename(str(a)))[0] for a in audio] if audio is not None else \
            [f"utt{k}" for k in range(n)]
        if audio is not None and len(set(ids)) != len(ids):
            ids = [str(a) for a in audio]
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise EmofuseError(f"utterance ids must be unique, found {dup} more than once; give each its own id (the id "
                           "column of --manifest)")
    rows = {}
    for k in model.keys:
        s = model.spec["streams"][k]
        info = model.spec["encoders"][s["stream"]]
        sdt = np.dtype(info["store_dtype"])
        compute = (info.get("extract_config") or {}).get("dtype", "float32")   # as the stream was extracted
        lids = s["layer_ids"]
        if k == "F":
            enc = _load_encoder(model, s["stream"], "audio", audio_model, device)
            out = []
            for j, path in enumerate(audio):
                u = Utterance(id=ids[j], audio_path=str(path), transcript="", label="", session="", speaker="",
                              start=starts[j] if starts is not None else None,
                              end=ends[j] if ends is not None else None,
                              channel=channels[j] if channels is not None else None)
                try:
                    w = load_audio(u, enc.sample_rate)
                    enc.check(w)
                    o = enc.encode([enc.preprocess(w)], out_dtype=sdt, preprocessed=True)[0]
                except BadInput as e:
                    raise EmofuseError(f"{path}: {e.reason}") from None
                o = np.ascontiguousarray(o[:, lids])   # only the layers the model reads must be finite
                if len(o) == 0 or nonfinite(o):
                    why = not_finite(o, "frames", "audio", compute, enc.info.get("encoder") == "opensmile",
                                     **STORE_DTYPE_FIXED)
                    raise EmofuseError(f"{path}: {why.reason}")
                out.append(o)
            rows[k] = out
        else:
            enc = _load_encoder(model, s["stream"], "text", text_model, device)
            texts = []
            for j, t in enumerate(text):
                try:
                    texts.append(check_transcript(t))
                except BadInput as e:
                    raise EmofuseError(f"utterance {ids[j]}: {e.reason}") from None
            batch = int((info.get("extract_config") or {}).get("text_batch") or 32)
            order = sorted(range(n), key=lambda j: (enc.n_tokens(texts[j]), ids[j]))
            out = [None] * n
            for a in range(0, n, batch):
                chunk = order[a:a + batch]
                for j, o in zip(chunk, enc.encode([texts[j] for j in chunk])):
                    with np.errstate(over="ignore", invalid="ignore"):   # beyond float16: inf, refused below
                        out[j] = np.ascontiguousarray(o["data"][:, lids].astype(sdt))
                    if nonfinite(out[j]):
                        why = not_finite(out[j], "tokens", "transcript", compute, **STORE_DTYPE_FIXED)
                        raise EmofuseError(f"utterance {ids[j]}: {why.reason}")
            rows[k] = out
        log.debug(f"{KEY_NAME[k]}: {model.spec['encoders'][s['stream']].get('encoder_id')} on {n} utterances")
    return _as_data(model, ids, rows, speakers)


def _as_data(model: TrainedModel, ids: list[str], rows: dict, speakers=None) -> TrainData:
    sources, dims = {}, {}
    for k, arrays in rows.items():
        lengths = np.array([len(a) for a in arrays], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        sources[k] = MemorySource(torch.from_numpy(np.concatenate(arrays)), offsets, lengths)
        dims[k] = arrays[0].shape[1:]
    if speakers is not None and model.spec["norm"] == "speaker":   # blank ones would be one 'speaker'
        speakers = speakers_to_standardise(ids, speakers, "speakers", "utterances", "give every utterance its "
                                           "speaker, or none (each utterance is then standardised by its own)")
    spk = np.array([str(s) for s in speakers]) if speakers is not None else np.array(ids)
    return TrainData(ids=np.array(ids), y=np.zeros(len(ids), np.int64), classes=list(model.classes),
                     sessions=np.array([""] * len(ids)), speakers=spk, sources=sources, dims=dims,
                     layers={k: model.spec["streams"][k]["layer_ids"] for k in rows})


def read_predict_manifest(path: str) -> pd.DataFrame:
    """A CSV/TSV/JSONL list of utterances to predict: ``audio`` (or ``wav``/``path``), optional
    ``id``, ``text`` (or ``transcript``), ``speaker``, ``channel``, ``start``, ``end`` or ``duration`` (read as
    the corpus manifest reads them: NeMo's ``offset``, SpeechBrain's ``stop``); paths relative to
    the file."""
    from pathlib import Path

    from ..corpora.manifest import _channel, _span, canonical_columns, read_rows

    p = Path(path)
    columns, rows = read_rows(p)
    rename = canonical_columns(columns, p)
    rows = [(no, {rename.get(c, c): v for c, v in r.items()}) for no, r in rows]
    columns = [rename.get(c, c) for c in columns]
    if "audio" not in columns and "text" not in columns:
        raise EmofuseError(f"{path} has neither an audio nor a text column (found {columns[:10]}); expected at least "
                           "audio (alias wav, path) and, for text models, text (alias transcript)")
    out = []
    for no, r in rows:
        a = str(r.get("audio") or "").strip()
        if a and not os.path.isabs(a):
            a = str(p.parent / a)
        uid = str(r.get("id") or "").strip() or (os.path.splitext(os.path.basename(a))[0] if a else f"line{no}")
        start, end = _span(r, uid, f"{path}, line {no}")
        out.append({"id": uid, "audio": a or None, "text": None if r.get("text") is None else str(r.get("text")),
                    "speaker": None if r.get("speaker") in (None, "") else str(r.get("speaker")),
                    "start": start, "end": end, "channel": _channel(r, uid, f"{path}, line {no}")})
    return pd.DataFrame(out, columns=["id", "audio", "text", "speaker", "start", "end", "channel"])


def run_predict(model_path: str, audio: Sequence[str] | None = None, text: Sequence[str] | None = None,
                manifest: str | None = None, out: str | None = None, device: str = "cpu",
                audio_model: str | None = None, text_model: str | None = None,
                note: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> pd.DataFrame:
    """``emofuse predict``: probabilities per utterance, printed as CSV or written to ``out``;
    notes go to ``note`` (stderr), so the printed CSV stays clean."""

    device = str(resolve_device(device))   # "auto" resolved once: the encoders and the heads run on it
    if manifest and (audio or text):
        raise EmofuseError("give either --manifest or --audio/--text, not both")
    model = load_model(model_path)
    ids = speakers = starts = ends = channels = None
    if manifest:
        df = read_predict_manifest(manifest)
        if "F" in model.keys and df["audio"].isna().any():
            raise EmofuseError(f"{manifest}: this model reads audio, and {int(df['audio'].isna().sum())} rows have no audio path")
        if "T" in model.keys and df["text"].isna().any():
            raise EmofuseError(f"{manifest}: this model reads text, and {int(df['text'].isna().sum())} rows have no "
                               "text (column text or transcript)")
        audio = list(df["audio"]) if "F" in model.keys else None
        text = list(df["text"]) if "T" in model.keys else None
        ids = list(df["id"])
        if model.spec["norm"] == "speaker":
            speakers = speakers_to_standardise(
                df["id"].astype(str), df["speaker"], manifest, "rows",
                "give every row its speaker, or leave the column out (each utterance is then standardised by its own)")
        starts, ends = list(df["start"]), list(df["end"])
        channels = [None if c is None or c != c else int(c) for c in df["channel"]]
    else:
        audio = list(audio) if audio else None
        text = list(text) if text else None
        if audio is not None and "F" not in model.keys:   # a text model: the files only name the utterances
            ids = [os.path.splitext(os.path.basename(a))[0] for a in audio]
            audio = None
    if model.spec["norm"] == "speaker" and speakers is None:   # on stderr: stdout may be the CSV
        note(f"note: {SPEAKER_NORM}; without a speaker column each utterance is standardised by its own")
    if audio is None and "F" in model.keys:
        raise EmofuseError("this model reads audio frames (F): give --audio FILE or --manifest LIST")
    res = model.predict(audio=audio, text=text, ids=ids, speakers=speakers, device=device,
                        audio_model=audio_model, text_model=text_model, starts=starts, ends=ends, channels=channels)
    if out:
        write_csv(out, res)
        log.info(f"wrote {len(res)} predictions to {out}")
    else:
        print(res.to_csv(index=False, float_format="%.6f").rstrip("\n"))   # the command's output
    return res


# -- cross-corpus evaluation --------------------------------------------------------------------
def _label_map(spec: str | None) -> dict:
    out = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        a, eq, b = part.partition("=")
        if not eq or not a.strip() or not b.strip():
            raise EmofuseError(f"--label-map must look like exc=hap,fru=ang, found {spec!r}")
        out[a.strip()] = b.strip()
    return out


EVALUATE_TYPE = "emofuse.evaluate"


def _left_out(excluded: dict) -> str:
    """``{reason: count}`` of utterances a store could not give, as a phrase."""
    return "; ".join(f"{n} utterance{'s' if n != 1 else ''} ({reason})" for reason, n in excluded.items())


def _check_evaluation_folder(out: str) -> None:
    """Refuse an ``--out`` that holds something other than an evaluation: a train-head or ablate
    run (its ``config.json`` names another type), whose config.json, summary.json and fold
    metrics the evaluation would overwrite (ablate then showed the cross-corpus numbers as that
    run's), or an exported model or a run's files without a config.json."""
    path = os.path.join(out, CONFIG)
    if os.path.exists(path):
        try:
            with open(path) as f:
                kind = json.load(f).get("type")
        except (OSError, ValueError, AttributeError) as e:
            raise EmofuseError(f"{path} cannot be read as a run's configuration ({e}); choose another --out for "
                               "the evaluation") from None
        if kind != EVALUATE_TYPE:
            what = f"a run of type {kind}" if kind else "a run of no recorded type"
            raise EmofuseError(f"{out} holds {what} (its config.json), not an evaluation: evaluating into it would "
                               "overwrite that run's config.json, summary.json and fold metrics; choose another --out")
        return
    found = [n for n in ("model.json", SUMMARY, RUNS) if os.path.exists(os.path.join(out, n))]
    if found:
        raise EmofuseError(f"{out} holds {', '.join(found)} but no config.json of an evaluation: evaluate writes "
                           "only into a new folder or one of its own evaluations; choose another --out")


def _remove_stale_members(out: str, members: list[str]) -> None:
    """Fold folders under ``out/runs/`` that a previous evaluation into ``out`` wrote for members
    this model does not have (another run evaluated there before): gone, so the folder holds only
    this evaluation's folds."""
    rdir = os.path.join(out, RUNS)
    if not os.path.isdir(rdir):
        return
    for name in sorted(set(os.listdir(rdir)) - set(members)):
        path = os.path.join(rdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)


def run_evaluate(run: str, store: str, out: str, label_map: str | dict | None = None, device: str = "cpu",
                 train_store: str | None = None) -> dict:
    """``emofuse evaluate RUN --store OTHER.h5 --out DIR``: every fold model of ``run`` (a run
    directory or an exported model) on every utterance of another corpus's store, scored as
    train-head scores its folds (UA, WA, macro-F1, confusion; mean ± std over the members), plus
    the ensemble's scores. ``out`` is a new folder or one of evaluate's own (re-evaluated: the
    folds of members this model lacks are removed); a run of another kind there is refused."""

    _check_evaluation_folder(out)   # before the work; again under the folder's lock
    dev = resolve_device(device)
    lm = _label_map(label_map) if not isinstance(label_map, dict) else dict(label_map)
    model = (load_model(run) if os.path.exists(os.path.join(run, "model.json"))
             else TrainedModel.from_run(run, train_store, moved="pass its current path with --train-store"))
    with FeatureStore(store) as fs:
        if fs.corpus_fingerprint == model.spec["fingerprints"]["corpus"]:
            raise EmofuseError(f"{store} holds the corpus {run} was trained on (same corpus fingerprint): every utterance "
                               "was in some fold model's training data; cross-corpus evaluation needs another corpus")
        for k, s in model.spec["streams"].items():
            want = model.spec["encoders"][s["stream"]]
            if s["stream"] not in fs.streams:
                raise EmofuseError(f"{store} has no stream {s['stream']!r} (the model reads {KEY_NAME[k]} of "
                                   f"{want.get('encoder_id')}); extract it with the same encoder first")
            got = fs.stream_info(s["stream"])
            if not same_encoder(want, got):   # either may be fingerprinted by the recipe before
                differ = info_differences(got, want)
                side = "text" if k == "T" else "audio"
                flags = " ".join(x for x in (
                    f"--{side}-model {(want.get('extract_config') or {}).get(side + '_model') or want.get('encoder_id')}",
                    flags_of(want, differ, sep=" ")) if x)
                raise EmofuseError(
                    f"{store}'s stream {s['stream']!r} was extracted by {got.get('encoder_id')} (fingerprint "
                    f"{str(got.get('fingerprint'))[:12]}), the model's by {want.get('encoder_id')} (fingerprint "
                    f"{want['fingerprint'][:12]})"
                    + (" [" + "; ".join(f"{d}: {got.get(d)!r} there, {want.get(d)!r} for the model" for d in differ[:4])
                       + "]" if differ else "")
                    + f": cross-corpus evaluation needs the same encoders, dtypes and preprocessing; extract {store} "
                    f"with {flags}")
        c = model.spec["config"]
        ids_of = lambda side: next((",".join(map(str, s["layer_ids"])) for k, s in model.spec["streams"].items()  # noqa: E731
                                    if (k == "T") == (side == "text")), None)
        data = load_train_data(fs, model.keys, c["audio_stream"], c["text_stream"],
                               {"audio": ids_of("audio"), "text": ids_of("text")}, torch.device("cpu"))
        trained_on, keys = model.spec.get("training_recordings"), recording_keys(fs.utterances)
        if trained_on is None or keys is None:
            log.warning(f"{run if trained_on is None else store} records no audio digests (written by an older "
                        f"emofuse): whether {store} shares utterances with {run}'s training data is not checked")
        else:
            # both spellings of a key: an export written before the span was normalised recorded raw times
            if model.spec.get("recording_keys") != "span":
                log.warning(f"{run} was exported before recordings were keyed by their span: the same audio given "
                            "as a whole file in one corpus and as [0, its length] in the other (a lhotse manifest) "
                            "is not recognised as shared; export the run again to check that too")
            keys, trained_on = keys.reindex(data.ids), set(trained_on)
            legacy = recording_keys(fs.utterances, legacy=True).reindex(data.ids)
            shared = [u for u, k, k0 in zip(data.ids, keys, legacy) if k and (k in trained_on or k0 in trained_on)]
            spans = model.spec.get("training_spans")
            if spans is not None:   # the same audio over any overlapping span (an export from before: equal keys)
                hit = {str(u) for u in shared} | set(overlapping(fs.utterances.reindex(data.ids), spans))
                shared = [u for u in data.ids if str(u) in hit]
            if shared:
                raise EmofuseError(
                    f"{len(shared)} of the {len(data.ids)} utterances of {store} are recordings {run} was trained on "
                    f"(the same audio content over overlapping times; e.g. {', '.join(map(str, shared[:3]))}): their "
                    "scores would not be cross-corpus; evaluate a store without them")
        if model.spec["norm"] == "speaker":
            data = replace(data, speakers=speakers_to_standardise(data.ids, data.speakers, store, "utterances",
                                                                  SPEAKERS_FIX, alone=False))
        names = [str(x) for x in np.array(data.classes)[data.y]]
        unknown = sorted(set(names) - set(lm) - set(model.classes))
        if unknown:
            # IEMOCAP's excited is merged into happy in the four-class protocol; otherwise no guess
            example = (f"{unknown[0]}=hap" if unknown[0] == "exc" and "hap" in model.classes
                       else f"{unknown[0]}=CLASS, CLASS one of the model's")
            raise EmofuseError(f"{store} has labels {unknown} that the model does not know (its classes: "
                               f"{model.classes}); map them with --label-map, e.g. --label-map {example}")
        bad = sorted({v for v in lm.values() if v not in model.classes})
        if bad:
            raise EmofuseError(f"--label-map maps to {bad}, which are not classes of the model ({model.classes})")
        mapped = np.array([lm.get(n, n) for n in names])
        y = np.array([model.classes.index(n) for n in mapped])
        absent = [c2 for c2 in model.classes if c2 not in set(mapped.tolist())]
        if data.empty:   # scored with that input masked (as train-head does), which the numbers must say
            log.warning(f"{store}: {without_segments(data.empty)} (of its {len(data.ids)} utterances): the model "
                        "reads that input masked for them (align-segments may have skipped them; its skipped list "
                        "says why)")
        logits = model.member_logits(data, device=dev)
        corpus_fp = fs.corpus_fingerprint
    with run_lock(out, "emofuse evaluate"):
        _check_evaluation_folder(out)
        if os.path.exists(os.path.join(out, SUMMARY)):   # a previous evaluation's: unfinished until this one is
            os.remove(os.path.join(out, SUMMARY))
        config = {"type": EVALUATE_TYPE, "emofuse_version": __version__, "model": os.path.abspath(run),
                  "store": os.path.abspath(store), "corpus_fingerprint": corpus_fp, "label_map": lm,
                  "config": c, "identity": model.spec["identity"]}
        write_config(out, config)   # first: an interrupted evaluation is still one of evaluate's folders
        _remove_stale_members(out, [m.name for m in model.members])
        runs, preds = [], []
        for m, lg in zip(model.members, logits):
            s = scores(y, lg.argmax(1), len(model.classes), f1_over_truth=True)
            s.update(repeat=m.repeat, seed=m.seed, fold=m.fold, n_test=len(y))
            p = pd.DataFrame({"repeat": m.repeat, "seed": m.seed, "fold": m.fold, "id": data.ids,
                              "label": mapped, "pred": np.array(model.classes)[lg.argmax(1)]})
            for j, name in enumerate(model.classes):
                p[f"logit_{name}"] = lg[:, j]
            p = predictions_roundtrip(p)
            write_fold(os.path.join(out, "runs", m.name), s, p)
            runs.append(s)
            preds.append(p)
        probs = model.probabilities(logits)
        ens = scores(y, probs.argmax(1), len(model.classes), f1_over_truth=True)
        summary = summarise(runs, model.classes)
        summary.update(type="emofuse.summary", evaluation="cross-corpus", fusion=c["fusion"], keys=model.keys,
                       head=c["head"], model=os.path.abspath(run), store=os.path.abspath(store), f1_over="truth",
                       label_map=lm, absent_classes=absent, ensemble=ens, utterances=len(data.ids),
                       excluded=data.excluded, empty_segments=data.empty, runs=runs)
        write_predictions(out, pd.concat(preds))
        ens_df = pd.DataFrame({"id": data.ids, "label": mapped, "pred": np.array(model.classes)[probs.argmax(1)]})
        for j, name in enumerate(model.classes):
            ens_df[f"prob_{name}"] = probs[:, j]
        write_csv(os.path.join(out, "ensemble.csv"), ens_df)
        write_summary(out, summary)
        cell = lambda m: (f"{summary[m]['mean']:.2f}" if summary[m]["n"] == 1  # noqa: E731
                          else f"{summary[m]['mean']:.2f} ± {summary[m]['std']:.2f}")
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(f"**{os.path.basename(os.path.normpath(run))} on {os.path.basename(store)} (cross-corpus): %**\n\n"
                    "| Configuration | UA | WA | Macro-F1 | runs |\n|---|---:|---:|---:|---:|\n"
                    f"| {c['fusion']} {'+'.join(model.keys)}, fold models | {cell('ua')} | {cell('wa')} | {cell('f1')} "
                    f"| {summary['ua']['n']} |\n"
                    f"| {c['fusion']} {'+'.join(model.keys)}, their ensemble | {ens['ua']:.2f} | {ens['wa']:.2f} | "
                    f"{ens['f1']:.2f} | 1 |\n\n{len(y)} utterances; ± is the sample standard deviation (n − 1) over "
                    "the fold models."
                    + (f" Classes absent from the store: {', '.join(absent)} (UA and macro-F1 average the others)."
                       if absent else "")
                    + (f" Left out: {_left_out(data.excluded)}." if data.excluded else "")
                    + (f" Scored with an input masked: {without_segments(data.empty)}." if data.empty else "")
                    + "\n")
    log.info(f"{out}: {len(y)} utterances of {store}; fold models: " + format_summary(summary)
             + f"; their ensemble: UA {ens['ua']:.2f}  WA {ens['wa']:.2f}  F1 {ens['f1']:.2f}"
             + (f"; classes absent from {store} (UA and macro-F1 average the others): {absent}" if absent else "")
             + (f"; scored with an input masked: {without_segments(data.empty)}" if data.empty else ""))
    return summary
