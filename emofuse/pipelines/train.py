"""``train-head``: one configuration under the protocol of docs/design.md (leave-one-session-out,
10 % validation, early stopping, repeats), and ``--fusion combine`` (score combination)."""

from __future__ import annotations

import logging
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..devices import resolve_device
from ..errors import EmofuseError
from ..heads import CMA_BLOCKS, FUSIONS, build_head
from ..heads.cma import check_cma_block
from ..heads.options import HEAD_NAMES, PLATEAU, PROTOCOL, default_text, head_defaults
from ..options import opt
from ..store import FeatureStore
from .data import TrainData, fit_normaliser, load_train_data, refuse_blank_speakers, require, select_layers
from .keys import KEY_KIND, SPEECH_KEYS, stream_of, without_segments
from .loop import Timer, _predict, train_one
from .metrics import format_summary, summarise
from .progress import progress_bar
from .protocol import GROUP_BATCHES, _folds, fold_outcome, folds_of, run_seed, split
from .rundir import (RESULTS_VERSION, check_run_dir, content_digest, fold_dir, read_fold, run_lock, save_fold,
                     write_config, write_predictions, write_summary)
from .stacked import Job, fit_runs, train_stacked
from .tables import DEPARTURES, departure_names
from ..heads.stacked import stackable

log = logging.getLogger(__name__)

HEADS = HEAD_NAMES
NORMS = ("none", "global", "speaker")
NORM_STREAMS = ("speech", "text", "all")
WEIGHTINGS = ("learned", "none")
SCHEDULERS = ("none", "plateau", "plateau-ua")
#: fields that do not change what is computed (left out of the run key)
NOT_IN_KEY = ("out", "device", "memory_gb", "runs_at_once")
RUNS_AT_ONCE_HELP = ("train N of the (repeat, fold) runs together, heads stacked (0: every run; 1: one at a time). "
                     "Default: on a GPU as many as its memory holds for linear and proj-stats heads (late, "
                     "concatenation), one at a time for attention heads (transformer, coattention: stacked "
                     "they measured slower on an H100) and on a CPU. LSTM heads (cma, cnn-blstm) always train "
                     "one at a time (docs/stacked-training.md)")


@dataclass(frozen=True)
class TrainConfig:
    """One ``train-head`` configuration; saved as ``config.json`` in the run directory."""

    store: str = opt(required=False, help="a store written by extract-embeddings (and align-segments for P/S/W)")
    out: str = opt(help="run directory (finished folds in it are reused)")
    fusion: str = opt("late", choices=(*FUSIONS, "combine"),
                      help="none: one stream; late: a branch per stream, logits summed; concat: one sequence; "
                           "coattention; cma (cross-modal attention); combine: average finished runs' logits")
    granularity: str = opt("F", help="'+' list of F, P, S, W (frames, phone, syllable, word segments) and T (text), "
                                     "e.g. F+S (default F)")
    text: bool | None = opt(None, negatable="speech only", help="add the text stream (T)")
    # (None: with text for late/concat/coattention/cma, without for none)
    head: str = opt("linear", choices=HEADS,
                    help="branch of none/late fusion: linear (default), transformer; with --fusion none also the "
                         "cross-modal paper's unimodal systems cnn-blstm (audio) and proj-stats (text)")
    audio_stream: str = opt("audio")
    text_stream: str = opt("text")
    norm: str | None = opt(None, choices=NORMS,
                           help="feature standardisation: global (training folds' statistics) or per speaker "
                                "(default: the stream's recorded default, global for hand-crafted descriptors such "
                                "as eGeMAPS, none for encoder activations)")
    norm_streams: str = opt("speech", choices=NORM_STREAMS,
                            help="streams that --norm standardises (default speech, as the multi-granularity paper)")
    layers: str | None = opt(None, help="encoder layers of both streams: all, last, 6, 1-12, 1- or 0,4,8 "
                                        f"(default: {default_text('layers')})")
    audio_layers: str | None = opt(None, help="encoder layers of the speech streams (default: --layers)")
    text_layers: str | None = opt(None, help="encoder layers of the text stream (default: --layers)")
    weighting: str | None = opt(None, choices=WEIGHTINGS,
                                help="learned layer weights + LayerNorm (Eq. 1), or none: one layer as it is "
                                     f"(default: {default_text('weighting')})")
    repeats: int = opt(PROTOCOL["repeats"], help=f"seeds per fold (default {PROTOCOL['repeats']}: "
                                                 f"{PROTOCOL['repeats'] * 5} runs)")
    seed: int = opt(PROTOCOL["seed"])
    epochs: int = opt(PROTOCOL["epochs"], help="maximum epochs")
    patience: int = opt(PROTOCOL["patience"], help="early-stopping patience in epochs")
    batch_size: int = opt(PROTOCOL["batch_size"])
    # sizes and training options left at None take heads/options.py HEAD_DEFAULTS (resolved())
    lr: float | None = opt(None, help=f"learning rate (default: {default_text('lr')})")
    hidden: int | None = opt(None, help=f"linear branch width (default {default_text('hidden')})")
    proj: int | None = opt(None, help="project streams to this width first; 0 = no projection "
                                      f"(default: {default_text('proj')})")
    heads: int | None = opt(None, help=f"attention heads (default {default_text('heads')})")
    ff: int | None = opt(None, help=f"feed-forward width inside attention blocks (default {default_text('ff')})")
    depth: int | None = opt(None, help=f"attention blocks per branch (default {default_text('depth')})")
    cma_block: str | None = opt(None, choices=CMA_BLOCKS,
                                help="--fusion cma's attention block: transformer, a pre-LayerNorm transformer layer "
                                     "(default), or attention, the paper's Eqs. 4-5 alone (LayerNorm, multi-head "
                                     "attention, no residual nor other feed-forward layer); docs/reproducing.md")
    scheduler: str | None = opt(None, choices=SCHEDULERS,
                                help="learning-rate decay: plateau of validation loss, or of validation UA "
                                     f"(default: {default_text('scheduler')})")
    lr_factor: float = opt(PLATEAU["factor"], help="decay factor of --scheduler")
    lr_patience: int = opt(PLATEAU["patience"], help="epochs without improvement before a decay")
    dropout: float = opt(PROTOCOL["dropout"])
    val_fraction: float = opt(PROTOCOL["val_fraction"])
    folds: tuple[str, ...] | None = opt(None, help="comma list of test sessions to run (default: all)")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    memory_gb: float | None = opt(None, help="memory budget for holding the data (default: 60%% of free)")
    runs_at_once: int | None = opt(None, metavar="N", help=RUNS_AT_ONCE_HELP)   # None: auto
    group_by_length: bool = opt(False, help="batches of similar lengths: each epoch's shuffled order is cut into "
                                            f"groups of {GROUP_BATCHES} batches, each sorted longest first, so a batch "
                                            "pads little (after transformers' Trainer group_by_length); about a "
                                            "third of the attention heads' arithmetic on IEMOCAP's frames. Other "
                                            "batches than the protocol's random ones, so part of the run key")
    bf16: bool = opt(False, help="bfloat16 autocast for the head's matrix products and attention (a GPU's tensor "
                                 "cores; weights, optimizer, normalisations and losses stay float32). Changes the "
                                 "numbers (8 significant bits), so it is part of the run key (docs/stacked-training.md)")

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise EmofuseError(f"--fusion must be one of {list(FUSIONS) + ['combine']}, found {self.fusion!r}")
        if self.head not in HEADS:
            raise EmofuseError(f"--head must be one of {list(HEADS)}, found {self.head!r}")
        if self.norm is not None and self.norm not in NORMS:
            raise EmofuseError(f"--norm must be one of {list(NORMS)}, found {self.norm!r}")
        if self.norm_streams not in NORM_STREAMS:
            raise EmofuseError(f"--norm-streams must be one of {list(NORM_STREAMS)}, found {self.norm_streams!r}")
        if self.weighting is not None and self.weighting not in WEIGHTINGS:
            raise EmofuseError(f"--weighting must be one of {list(WEIGHTINGS)}, found {self.weighting!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise EmofuseError(f"--scheduler must be one of {list(SCHEDULERS)}, found {self.scheduler!r}")
        for name in ("hidden", "heads", "ff", "depth"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise EmofuseError(f"--{name} must be a positive integer, found {v!r}")
        check_cma_block(self.cma_block, self.fusion == "cma", "--fusion", self.fusion, self.ff is not None)
        if self.proj is not None and (not isinstance(self.proj, int) or self.proj < 0):
            raise EmofuseError(f"--proj must be 0 (no projection) or a positive width, found {self.proj!r}")
        if not 0 < self.lr_factor < 1 or self.lr_patience < 0:
            raise EmofuseError(f"--lr-factor must be in (0, 1) and --lr-patience at least 0, found "
                               f"{self.lr_factor} and {self.lr_patience}")
        if self.head in ("cnn-blstm", "proj-stats") and self.fusion != "none":
            raise EmofuseError(f"--head {self.head} is one of the cross-modal paper's unimodal systems: it goes with "
                               f"--fusion none, found --fusion {self.fusion}")
        if self.repeats < 1 or self.epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise EmofuseError("--repeats, --epochs, --patience and --batch-size must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise EmofuseError(f"--val-fraction must be in (0, 1), found {self.val_fraction}")
        if self.lr is not None and not self.lr > 0:   # 0 "trains" nothing and reports the initial weights
            raise EmofuseError(f"--lr must be a positive learning rate, found {self.lr}")
        if not 0 <= self.dropout < 1:
            raise EmofuseError(f"--dropout must be in [0, 1), found {self.dropout}")
        for name in DEPARTURES:
            if not isinstance(getattr(self, name), bool):
                raise EmofuseError(f"--{name.replace('_', '-')} is a switch (true or false), found {getattr(self, name)!r}")
        if self.runs_at_once is not None and (not isinstance(self.runs_at_once, int) or self.runs_at_once < 0):
            raise EmofuseError(f"--runs-at-once must be 0 (every run) or a positive number, found {self.runs_at_once!r}")
        self.keys()

    def keys(self) -> list[str]:
        """Stream keys in a fixed order: speech granularities, then T."""
        parts = [p.strip().upper() for p in self.granularity.replace(",", "+").split("+") if p.strip()]
        bad = [p for p in parts if p not in KEY_KIND]
        if bad or not parts:
            raise EmofuseError(f"--granularity must be a '+' list of F (frames), P, S, W (phone, syllable, word "
                               f"segments) and T (text), e.g. F+S; found {self.granularity!r}")
        text = self.text if self.text is not None else (self.fusion != "none" or parts == ["T"])
        keys = [k for k in SPEECH_KEYS if k in parts] + (["T"] if text or "T" in parts else [])
        if self.text is False and "T" in parts:
            raise EmofuseError("--no-text contradicts T in --granularity")
        speech = [k for k in keys if k != "T"]
        if self.fusion == "none" and len(keys) != 1:
            one = (" (or --no-text)" if len(speech) == 1 else
                   " (or one granularity" + (" and --no-text)" if "T" in keys else ")"))
            raise EmofuseError(f"--fusion none trains one stream; {'+'.join(keys)} needs --fusion late{one}")
        if self.fusion in ("coattention", "cma") and ("T" not in keys or not speech):
            raise EmofuseError(f"--fusion {self.fusion} needs text and at least one speech granularity, found {'+'.join(keys)}")
        if self.fusion == "cma" and len(speech) != 1:
            raise EmofuseError(f"--fusion cma takes exactly one speech granularity (e.g. F), found {'+'.join(speech)}")
        if self.fusion in ("late", "concat") and len(keys) < 2:
            raise EmofuseError(f"--fusion {self.fusion} needs at least two streams, found {'+'.join(keys)}")
        if self.norm not in (None, "none"):
            if not _norm_subset(keys, self.norm_streams):
                raise EmofuseError(f"--norm {self.norm} --norm-streams {self.norm_streams}: this configuration uses "
                                   f"no {self.norm_streams} stream ({'+'.join(keys)}); choose --norm-streams "
                                   f"{'text' if self.norm_streams == 'speech' else 'speech'} or all")
        return keys

    def norm_keys(self) -> list[str]:
        """The stream keys that --norm standardises."""
        return _norm_subset(self.keys(), self.norm_streams) if self.norm not in (None, "none") else []

    def resolved(self) -> dict:
        """The head's options with every default filled in (HEAD_DEFAULTS, heads/options.py)."""
        d = head_defaults(self.fusion, self.head)
        pick = lambda name: getattr(self, name) if getattr(self, name) is not None else d[name]  # noqa: E731
        layers = self.layers if self.layers is not None else d["layers"]
        return {"hidden": pick("hidden"), "proj": pick("proj"), "heads": pick("heads"),
                "ff": self.ff if self.ff is not None else d["ff"], "depth": pick("depth"),
                "weighting": pick("weighting"), "scheduler": pick("scheduler"),
                "lr": self.lr if self.lr is not None else d["lr"],
                "audio_layers": self.audio_layers if self.audio_layers is not None else layers,
                "text_layers": self.text_layers if self.text_layers is not None else layers}

    def resolved_lr(self) -> float:
        return self.resolved()["lr"]

    def layer_specs(self) -> dict:
        """``{"audio": spec, "text": spec, "defaults": sides whose spec is the head's default,
        "options": the option each side's spec came from}`` (a message names what the user typed)."""
        r = self.resolved()
        own = {"audio": self.audio_layers, "text": self.text_layers}
        given = {side: v if v is not None else self.layers for side, v in own.items()}
        return {"audio": r["audio_layers"], "text": r["text_layers"],
                "defaults": tuple(side for side, v in given.items() if v is None),
                "options": {side: "--layers" if v is None and self.layers is not None else f"--{side}-layers"
                            for side, v in own.items()}}

    def build(self, dims: dict, n_classes: int):
        """The head of this configuration for streams of ``dims`` (key → (layers, width))."""
        r = self.resolved()
        try:
            return build_head(self.fusion, dims, self.keys(), n_classes, self.head, r["hidden"], self.dropout,
                              proj=r["proj"], heads=r["heads"], ff=r["ff"], depth=r["depth"],
                              weighting=r["weighting"], cma_block=self.cma_block or "transformer")
        except ValueError as e:
            raise EmofuseError(f"--fusion {self.fusion}" + (f" --head {self.head}" if self.fusion in ("none", "late")
                                                            else "") + f": {e}") from None

    def identity(self) -> dict:
        """What determines the results (the run key): every field but out/device/memory, resolved."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_IN_KEY}
        d["folds"] = sorted(self.folds, key=_session_order) if self.folds else None
        # one spelling per configuration: "S+F" and "f+s" are "F+S", an explicit text equal to its default is the default
        parts = {p.strip().upper() for p in self.granularity.replace(",", "+").split("+") if p.strip()}
        d["granularity"] = "+".join(k for k in (*SPEECH_KEYS, "T") if k in parts)
        if self.text is not None and self.text == ("T" in replace(self, text=None).keys()):
            d["text"] = None
        d.update(self.resolved())
        ff_mult = head_defaults(self.fusion, self.head).get("ff_mult")
        if d["ff"] is None and ff_mult:   # attention blocks' width as a multiple of theirs: a default too
            d["ff_mult"] = ff_mult
        d.update(keys=self.keys(), store=None, layers=None, norm_keys=self.norm_keys())
        if d["cma_block"] in (None, "transformer"):   # the default, as every run before the option: keys unchanged
            del d["cma_block"]
        else:   # a block without a feed-forward layer: its width is no part of what trains
            d["ff"] = None
        for name in DEPARTURES:   # off, as every run before the options: keys unchanged
            if not getattr(self, name):
                del d[name]
        d["results_version"] = RESULTS_VERSION
        return d


def _session_order(s):
    """Sessions in their natural order (2 before 10), names after numbers."""
    return (0, int(s), "") if str(s).isdigit() else (1, 0, str(s))


def _norm_subset(keys: list[str], norm_streams: str) -> list[str]:
    """The keys among ``keys`` that ``--norm-streams`` (speech, text, all) names."""
    return {"speech": [k for k in keys if k != "T"], "text": [k for k in keys if k == "T"], "all": keys}[norm_streams]


def describe_config(cfg: TrainConfig) -> str:
    """One line naming what a configuration trains: fusion, streams and where each is read, and
    the head (``none``/``late`` only: the other fusions have heads of their own), e.g.
    ``coattention F+P+T (F+P: egemaps, T: text)`` or ``late F+T, linear branches (F: audio, T: text)``;
    then `, bf16` and `, length-grouped batches` when those options are on."""
    keys = cfg.keys()
    what = f"{cfg.fusion} {'+'.join(keys)}"
    if cfg.fusion in ("none", "late"):
        what += f", {cfg.head} " + ("head" if cfg.fusion == "none" else "branches")
    if cfg.cma_block not in (None, "transformer"):
        what += f", {cfg.cma_block} block"
    speech = [k for k in keys if k != "T"]
    streams = ([f"{'+'.join(speech)}: {cfg.audio_stream}"] if speech else []) + (
        [f"T: {cfg.text_stream}"] if "T" in keys else [])
    return f"{what} ({', '.join(streams)})" + departure_names(lambda option: getattr(cfg, option))


def stream_default_norm(info: dict) -> str:
    """The ``--norm`` a stream asks for when none is given, recorded in its info at extraction:
    ``global`` for hand-crafted descriptors (eGeMAPS: Hz, dB and ratios on scales orders of
    magnitude apart), ``none`` for encoder activations. Stores written before it was recorded:
    by encoder (openSMILE → global)."""
    return info.get("default_norm") or ("global" if info.get("encoder") == "opensmile" else "none")


def with_store_defaults(fs: FeatureStore, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``norm`` filled in from the store when it was not given: ``global`` when a
    stream that ``--norm-streams`` covers asks for it (see ``stream_default_norm``), else ``none``."""
    if cfg.norm is not None:
        return cfg
    streams = {stream_of(k, cfg.audio_stream, cfg.text_stream) for k in _norm_subset(cfg.keys(), cfg.norm_streams)}
    wants = {stream_default_norm(fs.stream_info(s)) for s in streams if s in fs.streams}
    return replace(cfg, norm="global" if "global" in wants else "none")


def store_fingerprints(fs: FeatureStore, cfg: TrainConfig) -> dict:
    """What the run reads: the corpus and stream fingerprints, and a digest of each stream kind's
    content (utterances, rows, segment spans and symbols), so changed segments are a new key."""
    out = {"corpus": fs.corpus_fingerprint}
    for k in cfg.keys():
        s = stream_of(k, cfg.audio_stream, cfg.text_stream)
        require(fs, s, k)
        out[s] = fs.stream_info(s).get("fingerprint")
        out[f"{s}/{KEY_KIND[k]}"] = content_digest(fs, s, KEY_KIND[k])
    return out


def run_train(cfg: TrainConfig, cache: dict | None = None) -> dict:
    """Train every (repeat, fold) of ``cfg``; finished ones in ``cfg.out`` are reused. Returns the summary.
    One process at a time per ``cfg.out`` (a second one is refused with a sentence). ``cache``: rows
    held by an earlier configuration of the same process (``load_train_data``), reused."""
    resolve_device(cfg.device)
    with FeatureStore(cfg.store) as fs:
        cfg = with_store_defaults(fs, cfg)
        check_against_store(fs, cfg)   # before anything is written (the lock creates cfg.out)
    with run_lock(cfg.out, "train-head"):
        return _run_train(cfg, cache)


def check_against_store(fs: FeatureStore, cfg: TrainConfig) -> dict:
    """Streams present, layer selections valid and the head buildable at the store's widths.
    Returns key → (positions, encoder layer indices, width)."""
    chosen = select_layers(fs, cfg.keys(), cfg.audio_stream, cfg.text_stream, cfg.layer_specs())
    _folds(fs.utterances["session"], cfg)
    labels = sorted({str(x) for x in fs.utterances["label"]})
    if len(labels) < 2:
        raise EmofuseError(f"{fs.path}: found only the label(s) {labels}; at least two classes are needed")
    with torch.device("meta"):   # structure only: no memory, no random numbers drawn
        cfg.build({k: (len(pos), D) for k, (pos, _, D) in chosen.items()}, 2)
    return chosen


def _run_train(cfg: TrainConfig, cache: dict | None = None) -> dict:
    device = resolve_device(cfg.device)
    with FeatureStore(cfg.store) as fs:
        fingerprints = store_fingerprints(fs, cfg)
        chosen = select_layers(fs, cfg.keys(), cfg.audio_stream, cfg.text_stream, cfg.layer_specs())
        config = {"type": "emofuse.train-head", "emofuse_version": __version__, "config": asdict(cfg),
                  "identity": cfg.identity(), "fingerprints": fingerprints,
                  "layer_ids": {k: ids for k, (_, ids, _) in chosen.items()}}
        check_run_dir(cfg.out, config, lambda c: TrainConfig(**c).identity())
        t0 = time.perf_counter()
        budget = None if cfg.memory_gb is None else int(cfg.memory_gb * 2**30)
        data = load_train_data(fs, cfg.keys(), cfg.audio_stream, cfg.text_stream, cfg.layer_specs(), device, budget,
                               cache)
        t_load = time.perf_counter() - t0
        log.info(f"train-head {describe_config(cfg)}: {len(data.ids)} utterances, classes "
                 f"{', '.join(data.classes)}; {data.bytes / 1e9:.2f} GB " +
                 (f"held in {data.home} memory" if data.in_memory else "read per batch (does not fit the memory budget)") +
                 f", training on {device}; --norm {cfg.norm}" + (f"; left out: {data.excluded}" if data.excluded else "") +
                 (f"; read with an input masked: {without_segments(data.empty)}" if data.empty else ""))
        folds = folds_of(data, cfg)
        if cfg.norm == "speaker":
            refuse_blank_speakers(data)
        os.makedirs(os.path.join(cfg.out, "runs"), exist_ok=True)   # only once everything is checked
        write_config(cfg.out, config)
        timer, done, norms = Timer(), {}, {}
        plan = [(r, s) for r in range(cfg.repeats) for s in folds]
        for r, session in plan:
            finished = read_fold(fold_dir(cfg.out, r, session))
            if finished is not None:
                done[(r, session)] = finished

        def job_of(r: int, session: str) -> Job:
            seed = cfg.seed + r
            tr, va, _ = split(data, session, seed, cfg.val_fraction)
            # global statistics depend on the fold's training sessions; per-speaker ones do not
            nkey = session if cfg.norm == "global" else None
            if nkey not in norms:
                norms[nkey] = fit_normaliser(data, cfg.norm, np.sort(np.concatenate([tr, va])), cfg.norm_keys())
            return Job(key=(r, session), seed=run_seed(data, seed, session), train=tr, val=va, norm=norms[nkey])

        pending = [k for k in plan if k not in done]
        if done:
            log.info(f"train-head: {len(done)} of the {len(plan)} runs already finished in {cfg.out} are reused"
                     + ("" if pending else "; nothing to train"))
        if pending and device.type == "cpu":
            warn_other_threads(cfg.out, [m for m, _ in done.values()])
        at_once = runs_at_once(cfg, device, len(plan))
        if at_once > 1 and cfg.runs_at_once is None and device.type == "cuda" and pending:
            at_once, why = fit_runs(cfg, data, device, at_once)   # the default: as many as the GPU holds
            log.info(f"train-head: {why}")
        # stacked groups are fixed slices of the whole plan, so a resumed run trains beside the same
        # runs as in an uninterrupted one (and on a CPU its files come out byte-identical; on a GPU
        # the stacked gradient sums use atomic adds, whose order varies from run to run): a group
        # with a run left to do trains whole again, and its finished runs' saved files are kept
        groups = [plan[k:k + at_once] for k in range(0, len(plan), at_once)] if at_once > 1 else []
        groups = [g for g in groups if any(k not in done for k in g)]
        if groups:
            again = sum(k in done for g in groups for k in g)
            log.info(f"train-head: {len(pending)} runs stacked, {at_once} at a time (--runs-at-once 1 trains one at a "
                     "time)" + (f"; {again} finished runs of their groups train again beside them, their saved files "
                            "kept" if again else ""))
        elif len(pending) > 1 and not stackable(cfg.fusion, cfg.head) and (cfg.runs_at_once not in (None, 1)
                                                                           or device.type == "cuda"):
            log.info(f"train-head: --fusion {cfg.fusion} --head {cfg.head} holds an LSTM, which does not stack: "
                     f"its {len(pending)} runs train one at a time")

        with progress_bar(total=len(plan), unit="run", desc="train-head") as bar:
            if done:
                bar.update(len(done))
            def finish(job: Job, model, history: list, best_epoch: int, stacked: int = 1) -> None:
                if job.key in done:   # trained again beside its group: the saved run stays as it is
                    return
                done[job.key] = _finish_run(cfg, data, job, model, history, best_epoch, device, timer, stacked)
                bar.update(1)

            for group in groups:
                try:
                    train_stacked(cfg, data, [job_of(*k) for k in group], device, timer,
                                  lambda *a, n=len(group): finish(*a, stacked=n),
                                  lambda s, n=len(group): bar.set_postfix_str(f"{n} runs stacked, {s}"))
                except torch.OutOfMemoryError:
                    raise EmofuseError(
                        f"{cfg.out}: the device ran out of memory training {len(group)} runs stacked; pass "
                        f"--runs-at-once {max(1, at_once // 2)} (fewer runs at a time; 1 trains one at a time) "
                        f"and run the same command again: the {len(done)} finished runs are kept") from None
            for r, session in (pending if at_once <= 1 else []):
                job = job_of(r, session)
                bar.set_postfix_str(f"repeat {r} fold {session}")
                model, history, best_epoch = train_one(
                    cfg, data, job.train, job.val, job.seed, device, job.norm, timer,
                    lambda s: bar.set_postfix_str(f"repeat {r} fold {session} {s}"))
                finish(job, model, history, best_epoch)
        runs = [done[k][0] for k in plan]
        preds = [done[k][1] for k in plan]
    summary = summarise(runs, data.classes)
    summary.update(type="emofuse.summary", fusion=cfg.fusion, keys=cfg.keys(), head=cfg.head,
                   excluded=data.excluded, empty_segments=data.empty,
                   data={"utterances": len(data.ids), "bytes": data.bytes, "in_memory": data.in_memory,
                         "held_in": data.home, "device": str(device)},
                   time={"load_s": t_load, "data_s": timer.data, "compute_s": timer.compute},
                   runs=[{k: v for k, v in m.items() if k != "history"} for m in runs])
    write_predictions(cfg.out, pd.concat(preds))
    write_summary(cfg.out, summary)
    log.info(f"{cfg.out}: " + format_summary(summary))
    return summary


def warn_other_threads(out: str, finished: list[dict]) -> None:
    """Say once when finished runs of ``out`` were trained on another number of CPU threads than
    this process uses: sums on a CPU round differently with the thread count (logits in the last
    digits, now and then a prediction), so the resumed configuration is not bit for bit an
    uninterrupted one (``ablate --jobs N`` gives each worker cores / N threads)."""
    now = torch.get_num_threads()
    other = sorted({int(m["cpu_threads"]) for m in finished if m.get("cpu_threads") not in (None, now)})
    if other:
        log.warning(f"{out}: some finished runs were trained on {', '.join(map(str, other))} CPU thread(s), this "
                    f"process uses {now}; CPU results differ in the last digits with the thread count, so this "
                    "configuration's runs will not be bit-identical to an uninterrupted run's (resume with the same "
                    "--jobs, or the same OMP_NUM_THREADS, for that)")


def runs_at_once(cfg: TrainConfig, device: torch.device, n_runs: int) -> int:
    """How many runs train together: ``--runs-at-once`` (0: every run); by default every run on a
    GPU for heads without attention (then capped by ``stacked.fit_runs`` to what its memory
    holds), one at a time for attention heads (transformer, coattention) and on a CPU
    (where a lone head already keeps the cores busy, and today's numbers stay bit for bit). Heads
    with an LSTM always train one at a time."""
    if not stackable(cfg.fusion, cfg.head):
        return 1
    n = cfg.runs_at_once
    if n is None:   # attention heads stacked ran 0.67-0.87x the one-at-a-time path on an H100, with
        # fused attention too (BENCHMARKS.md, 2026-11-24 and 2026-11-25): stacked only when asked
        attention = cfg.head == "transformer" or cfg.fusion == "coattention"
        n = 0 if device.type == "cuda" and not attention else 1
    return max(1, n_runs) if n == 0 else n


def _finish_run(cfg: TrainConfig, data: TrainData, job, model, history: list, best_epoch: int, device,
                timer: Timer, stacked: int = 1) -> tuple[dict, pd.DataFrame]:
    """Test a trained run on its held-out session and write its directory; (metrics, predictions).
    ``stacked``: how many runs trained in its pass (1: alone), recorded as ``runs_at_once``: under
    --bf16 a run's numbers depend on its companions to bfloat16 rounding, and a resumed
    configuration may mix groups."""
    r, session = job.key
    seed = cfg.seed + r
    te = np.flatnonzero(data.sessions == session)
    logits = _predict(model, data, te, device, job.norm, timer, bf16=cfg.bf16)
    m, p = fold_outcome(cfg.out, data, te, logits, r, seed, session, best_epoch, history, device, bf16=cfg.bf16,
                        n_train=len(job.train), n_val=len(job.val), runs_at_once=stacked,
                        layer_weights=model.layer_weights(),
                        layer_ids={k: [int(l) for l in v] for k, v in data.layers.items()})
    save_fold(fold_dir(cfg.out, r, session), model, m, p,
              {"layer_ids": json.dumps(data.layers), "fusion": cfg.fusion, "head": cfg.head,
               "keys": "+".join(cfg.keys())})
    return m, p
