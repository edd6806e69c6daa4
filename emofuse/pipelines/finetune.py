"""``finetune``: the cross-modal attention paper's fine-tuned systems (wav2vec2 + BERT trained
with the CMA head, or one encoder with its unimodal head) under the protocol of ``train-head``.

Data: the store's utterance table (ids, labels, sessions, transcripts, audio paths), so a store
stays the single list of utterances and folds; audio is read from the table's paths. The run
directory has train-head's layout (config.json, runs/r{repeat}_s{session}/metrics.json,
predictions.csv, model.safetensors (the head), summary.json), so ``ablate`` tables,
``--fusion combine`` and ``report`` read it unchanged.

Exactness rules (tested): a global batch of ``batch_size`` utterances is cut into length-sorted
micro-batches; micro-batch ``i`` of optimizer step ``s`` draws its dropout masks from a seed of
(run seed, epoch, s, i), its loss is summed and divided by the global batch size, and the head's
BatchNorm running statistics are updated once per step from every micro-batch's statistics in
micro-batch order. So data-parallel processes (each runs micro-batches i ≡ rank mod world size)
give the same step as one process running the same micro-batches one after the other. In eval
mode a padded batch gives its utterances' results one at a time; in train mode the head's
BatchNorm normalises each micro-batch with that micro-batch's statistics, so the cut into
micro-batches is part of the run key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import __version__
from ..corpora import Utterance
from ..corpora.table import changes_text, channel_of, resolve_audio_path
from ..devices import bf16_autocast, rank_device, resolve_device, to_device
from ..errors import EmofuseError
from ..hashing import file_sha256, sha256_int
from ..extract.audio import BadInput, load_audio
from ..extract.checkpoints import checkpoint_digest
from ..extract.encoders import token_limit, warn_no_preprocessor
from ..extract.masking import MaskedBatchNorm, conv_output_lengths, mask_padding, receptive_field
from ..extract.posconv import use_matmul_pos_conv
from ..heads.cma import CMA_BLOCKS, AudioOnlyModel, CMAModel, TextOnlyModel, check_cma_block
from ..heads.functional import lengths_to_mask
from ..heads.layers import MaskedBatchNorm1d
from ..heads.options import HEAD_DEFAULTS, PLATEAU, PROTOCOL
from ..options import opt
from ..store import FeatureStore
from .metrics import format_summary, scores, summarise
from .rundir import (check_run_dir, finetune_results_version, fold_dir, read_fold, run_lock, save_fold, write_config,
                     write_predictions, write_summary)
from .protocol import NO_EPOCH, epoch_score, fold_outcome, folds_of, run_seed, split

log = logging.getLogger(__name__)

SYSTEMS = ("cma", "audio", "text")   # joint (74.71), audio-only (60.01), text-only (71.01)
TRAINING_OPTIONS = ("off", "checkpoint")
#: how wav2vec2's positional convolution is computed (extract/posconv.py)
POS_CONV = ("conv", "matmul")
CMA = HEAD_DEFAULTS["cma"]   # the head's sizes and learning rate (heads/options.py)
#: fields that do not change what is computed (left out of the run key)
NOT_IN_KEY = ("store", "out", "root", "device", "grad_checkpointing", "save_encoders", "compile")

@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning configuration; saved in ``config.json`` of the run directory."""

    store: str = opt(help="a store: its utterance table gives ids, labels, sessions, transcripts and audio paths")
    out: str = opt(help="run directory (finished folds and epoch checkpoints are reused)")
    root: str | None = opt(None, help="where the corpus lives now, if it moved since extraction: the folder "
                                      "extraction's --root named (IEMOCAP's root, or the folder of a manifest); "
                                      "each wav is still checked against the store's digest")
    system: str = opt("cma", choices=SYSTEMS,
                      help="cma: both encoders + CMA head (74.71); audio: wav2vec2 + CNN + BLSTM (60.01); "
                           "text: BERT + projection + statistics pooling (71.01)")
    audio_model: str | None = opt(None, help="wav2vec2-style checkpoint (folder or hub id)")
    text_model: str | None = opt(None, help="BERT-style checkpoint with a fast tokenizer")
    freeze: str = opt("cnn", help="comma list: cnn (always frozen), audio, text, audio-layers:N, text-layers:N "
                                  "(first N blocks)")
    training_options: str = opt("off", choices=TRAINING_OPTIONS,
                                help="the audio checkpoint's SpecAugment masking and layer drop: off (default) or as "
                                     "it ships")
    repeats: int = opt(PROTOCOL["repeats"])
    seed: int = opt(PROTOCOL["seed"])
    epochs: int = opt(PROTOCOL["epochs"])
    patience: int = opt(PROTOCOL["patience"])
    batch_size: int = opt(PROTOCOL["batch_size"])   # the protocol's (effective) batch
    micro_batch: int = opt(8)                # utterances per forward pass (gradient accumulation up to batch_size)
    micro_batch_seconds: float = opt(0.0, help="also cap a micro-batch's padded audio (utterances × the longest, in "
                                               "seconds); with a large --micro-batch, short utterances go through "
                                               "in few large passes and long ones in small ones (0: off; the text "
                                               "system has no audio and ignores it)")
    lr: float = opt(CMA["lr"])
    lr_factor: float = opt(PLATEAU["factor"])
    lr_patience: int = opt(PLATEAU["patience"])
    dropout: float = opt(PROTOCOL["dropout"])
    proj: int = opt(CMA["proj"])
    heads: int = opt(CMA["heads"])
    ff: int = opt(CMA["ff"])
    cma_block: str = opt("transformer", choices=CMA_BLOCKS,
                         help="--system cma's attention block: transformer (default) or attention, the paper's Eqs. "
                              "4-5 alone (as train-head's --cma-block)")
    val_fraction: float = opt(PROTOCOL["val_fraction"])
    folds: tuple[str, ...] | None = opt(None, help="comma list of test sessions (default: all)")
    max_audio_s: float = opt(60.0)           # longer utterances are refused (never cut silently)
    bf16: bool = opt(False, help="bfloat16 autocast (GPU)")
    grad_checkpointing: bool = opt(False, help="recompute encoder activations (GPU memory)")
    compile: bool = opt(False, help="torch.compile each transformer block of the encoders (a GPU: fewer, fused "
                                    "kernels for a host that cannot launch them fast enough; the first steps compile "
                                    "for a minute or two; the same values to float rounding)")
    pos_conv: str = opt("conv", choices=POS_CONV,
                        help="how wav2vec2's positional convolution (kernel 128, 16 groups) is computed: conv "
                             "(cuDNN's grouped convolution) or matmul (unfolded into batched matrix products: "
                             "tensor cores, more memory); the same values to float rounding")
    save_encoders: bool = opt(False, help="also save the fine-tuned encoders per run")   # 1.6 GB each, large+base
    device: str = opt("auto")

    def __post_init__(self):
        if self.system not in SYSTEMS:
            raise EmofuseError(f"--system must be one of {list(SYSTEMS)}, found {self.system!r}")
        if self.training_options not in TRAINING_OPTIONS:
            raise EmofuseError(f"--training-options must be one of {list(TRAINING_OPTIONS)}, found "
                               f"{self.training_options!r}")
        check_cma_block(self.cma_block, self.system == "cma", "--system", self.system, self.ff != CMA["ff"])
        if self.pos_conv not in POS_CONV:
            raise EmofuseError(f"--pos-conv must be conv or matmul, found {self.pos_conv!r}")
        if self.system in ("cma", "audio") and not self.audio_model:
            raise EmofuseError(f"--system {self.system} needs --audio-model (a wav2vec2-style checkpoint)")
        if self.system in ("cma", "text") and not self.text_model:
            raise EmofuseError(f"--system {self.system} needs --text-model (a BERT-style checkpoint)")
        for name in ("repeats", "epochs", "patience", "batch_size", "micro_batch", "proj", "heads", "ff"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise EmofuseError(f"--{name.replace('_', '-')} must be a positive integer, found {v!r}")
        if (isinstance(self.micro_batch_seconds, bool) or not isinstance(self.micro_batch_seconds, (int, float))
                or not self.micro_batch_seconds >= 0):
            raise EmofuseError(f"--micro-batch-seconds must be 0 (off) or a positive number of seconds, found "
                               f"{self.micro_batch_seconds!r}")
        # one value, one key: 480 from a spec and 480.0 from the command line are the same configuration
        object.__setattr__(self, "micro_batch_seconds", float(self.micro_batch_seconds))
        if self.micro_batch > self.batch_size:
            raise EmofuseError(f"--micro-batch ({self.micro_batch}) cannot exceed --batch-size ({self.batch_size})")
        if not 0 < self.val_fraction < 1:
            raise EmofuseError(f"--val-fraction must be in (0, 1), found {self.val_fraction}")
        if not 0 < self.lr_factor < 1 or self.lr_patience < 0 or self.lr <= 0:
            raise EmofuseError("--lr must be positive, --lr-factor in (0, 1), --lr-patience at least 0")
        self.frozen()

    def frozen(self) -> dict:
        """The --freeze list parsed: {"audio": bool, "text": bool, "audio_layers": N, "text_layers": N}."""
        out = {"audio": False, "text": False, "audio_layers": 0, "text_layers": 0}
        for part in (p.strip() for p in self.freeze.split(",") if p.strip()):
            name, _, n = part.partition(":")
            if part in ("cnn", "audio", "text"):
                if part != "cnn":
                    out[part] = True
            elif name in ("audio-layers", "text-layers") and n.isdigit():
                out[name.replace("-", "_")] = int(n)
            else:
                raise EmofuseError(f"--freeze takes a comma list of cnn, audio, text, audio-layers:N and "
                                   f"text-layers:N (the first N transformer blocks); found {part!r}")
        return out

    def keys(self) -> list[str]:
        return {"cma": ["F", "T"], "audio": ["F"], "text": ["T"]}[self.system]

    def identity(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_IN_KEY}
        if self.system == "text":
            d["micro_batch_seconds"] = 0.0   # no audio to cap
        for name, default in (("pos_conv", "conv"), ("micro_batch_seconds", 0.0), ("cma_block", "transformer")):
            if d[name] == default:
                del d[name]   # defaults are not written: run keys from before the option stay valid
        if self.cma_block == "attention":   # a block without a feed-forward layer: --ff trains nothing
            d["ff"] = None
        # one spelling per configuration: folds in session order (as train-head's), --freeze as parsed
        d["folds"] = sorted(self.folds, key=lambda f: (0, int(f), "") if str(f).isdigit() else (1, 0, str(f))) \
            if self.folds else None
        d["freeze"] = self.frozen()
        if self.system == "audio":
            d["text_model"] = None
        if self.system == "text":
            d["audio_model"] = None
        for k in ("audio_model", "text_model"):
            if d[k] and os.path.isdir(d[k]):
                d[k] = None   # a local folder: its bytes are keyed (run_fingerprints), not how its path was typed
        d["results_version"] = finetune_results_version()
        return d

    # what ablate and report read from a run's config like train-head's
    @property
    def fusion(self) -> str:
        return "cma" if self.system == "cma" else "none"

    @property
    def head(self) -> str:
        return {"cma": "cma", "audio": "cnn-blstm", "text": "proj-stats"}[self.system]


#: ablate row keys a fine-tuned row may carry besides ``finetune: true`` (and label/published)
ROW_FIELDS = {f.name for f in fields(FinetuneConfig)} - set(NOT_IN_KEY)


# -- data ----------------------------------------------------------------------------------------
@dataclass
class FinetuneData:
    """Utterances of the store's table usable by a configuration: labels, folds, and the inputs."""

    ids: np.ndarray
    y: np.ndarray
    classes: list[str]
    sessions: np.ndarray
    seconds: np.ndarray                      # audio duration (length grouping); token count for text-only
    waves: list[np.ndarray] | None = None    # preprocessed (the checkpoint's feature extractor)
    tokens: list[list[int]] | None = None    # token ids with the special tokens
    excluded: dict = field(default_factory=dict)


def _digest_now(path: str) -> str:
    """``audio_digest`` of the file at ``path`` as it is now ("" when it cannot be read), each
    version of a file hashed once per process (``file_sha256``: the same recipe)."""
    try:
        return file_sha256(path)[:32]
    except OSError:
        return ""


def audio_paths_now(utts: pd.DataFrame, meta: dict, root: str | None) -> pd.DataFrame:
    """The utterance table with ``audio_path`` where each wav lies now: under ``root`` when the
    corpus moved (``--root``), the bundled demo wherever emofuse is installed, else as recorded
    (a relative path of an older store resolved as align-segments resolves it)."""
    from .align import corpus_folder_now
    base = corpus_folder_now(meta, root, table=utts)
    recorded = meta.get("base") or None
    if root and not os.path.isdir(base):
        raise EmofuseError(f"--root {root} is not a folder; give the folder the corpus was moved to")
    utts = utts.copy()
    utts["audio_path"] = [resolve_audio_path(str(p), base, recorded) for p in utts["audio_path"]]
    return utts


def check_audio(store: str, utts: pd.DataFrame) -> None:
    """The audio files the store's utterance table points to hold the bytes the store recorded
    at extraction (``audio_digest``), else one sentence naming how many utterances differ and a
    few of them: fine-tuning reads the audio itself, so changed or missing files would train
    another corpus under the same run key. A file extraction could not read (digest "") and that
    still cannot be read is no change: that utterance stays left out, as extraction left it out."""
    if "audio_digest" not in utts.columns:
        return
    changes = []
    for uid, path, want in zip(utts.index, utts["audio_path"].astype(str), utts["audio_digest"]):
        want = "" if pd.isna(want) else str(want)
        now = _digest_now(path)
        if now != want:
            changes.append((str(uid), "audio file missing or unreadable" if not now else "audio content changed", path))
    if changes:
        raise EmofuseError(
            f"the audio files of {store}'s utterance table are not those it was built from: {len(changes)} "
            f"utterances differ from the store ({changes_text(changes)}); restore them, pass --root of the folder "
            "the corpus moved to, or run extract-embeddings with --update-corpus on this store first (fine-tuning "
            "trains on the audio the store records)")


def load_finetune_data(store: str, cfg: FinetuneConfig, enc: "Encoders") -> FinetuneData:
    with FeatureStore(store) as fs:
        utts = fs.utterances
        meta = fs.corpus_meta
    if enc.audio is not None:
        utts = audio_paths_now(utts, meta, cfg.root)
        check_audio(store, utts)   # before any audio is read
    ids, excluded = [], {}
    waves, tokens = [], []
    for uid, r in utts.iterrows():
        try:
            if enc.audio is not None:
                u = Utterance(id=str(uid), audio_path=str(r["audio_path"]), transcript=str(r["transcript"]),
                              label=str(r["label"]), session=str(r["session"]), speaker=str(r["speaker"]),
                              start=None if pd.isna(r["start"]) else float(r["start"]),
                              end=None if pd.isna(r["end"]) else float(r["end"]), channel=channel_of(r))
                w = load_audio(u, enc.sample_rate)
                if len(w) < enc.window:
                    raise BadInput(f"audio shorter than the encoder's receptive field ({enc.window} samples)")
                if len(w) > cfg.max_audio_s * enc.sample_rate:
                    raise EmofuseError(
                        f"utterance {uid} ({r['audio_path']}) is {len(w) / enc.sample_rate:.1f} s long, more than "
                        f"--max-audio-s {cfg.max_audio_s:g}; raise --max-audio-s if the device memory allows "
                        f"(utterances are never cut)")
            if enc.text is not None:
                t = enc.tokenize(str(r["transcript"]), str(uid))
        except BadInput as e:
            excluded[e.reason] = excluded.get(e.reason, 0) + 1
            continue
        ids.append(str(uid))
        if enc.audio is not None:
            waves.append(enc.preprocess(w))
        if enc.text is not None:
            tokens.append(t)
    keep = utts.loc[ids]
    labels = keep["label"].astype(str).to_numpy()
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise EmofuseError(f"{store}: found only the label(s) {classes}; at least two classes are needed")
    seconds = (np.array([len(w) / enc.sample_rate for w in waves]) if waves
               else np.array([len(t) for t in tokens], dtype=float))
    return FinetuneData(ids=np.array(ids), y=np.array([classes.index(x) for x in labels]), classes=classes,
                        sessions=keep["session"].astype(str).to_numpy(), seconds=seconds,
                        waves=waves or None, tokens=tokens or None, excluded=excluded)


# -- encoders --------------------------------------------------------------------------------------
#: the checkpoints' own dropout rates, recorded in config.json (``training_options``) and kept
AUDIO_DROPOUTS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout")
TEXT_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def _not_a_model(kind: str, spec: str, e: Exception) -> EmofuseError:
    where = f"folder {spec}" if os.path.exists(spec) else repr(spec)
    return EmofuseError(f"--{kind}-model {where} is not a loadable transformers checkpoint (expected config.json and "
                        f"weights; {str(e).splitlines()[0][:160]})")


def transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The transformer blocks of a wav2vec2-family (``encoder.layers``) or BERT-family
    (``encoder.layer``) model, in order; None for a model that keeps them elsewhere (GPT-2's
    ``h``, DistilBERT's ``transformer.layer``, LLaMA's ``layers``)."""
    enc = getattr(model, "encoder", None)
    return getattr(enc, "layers", None) or getattr(enc, "layer", None)


def compile_blocks(*models: nn.Module | None, backend: str = "inductor") -> int:
    """``torch.compile`` every transformer block of these encoders in place (``Module.compile``:
    the parameters and their names stay as they are, so checkpoints, freezing and DDP see the same
    model). Blocks, not whole models: a block compiles once for every sequence length
    (``dynamic=True``), where wav2vec2's front end (its convolution lengths) does not. Returns
    how many blocks."""
    n = 0
    for m in models:
        if m is None:
            continue
        blocks = transformer_blocks(m)
        if blocks is None:
            raise EmofuseError(f"--compile: {type(m).__name__} has no encoder.layers / encoder.layer blocks to compile")
        for block in blocks:
            block.compile(dynamic=True, backend=backend)
            n += 1
    return n


class Encoders:
    """The trainable encoders of a configuration, loaded with their training-time options set."""

    def __init__(self, cfg: FinetuneConfig):
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoTokenizer, Wav2Vec2FeatureExtractor

        self.audio = self.text = self.tok = self.fe = self.group_norm = self.pos_stack = None
        self.frozen: list[nn.Module] = []
        self.sample_rate, self.window = 16000, 400
        self.options: dict = {}
        if cfg.system in ("cma", "audio"):
            try:
                conf = AutoConfig.from_pretrained(cfg.audio_model)
                overrides, recorded = {}, {}
                for name in ("mask_time_prob", "mask_feature_prob", "layerdrop"):
                    recorded[name] = getattr(conf, name, None)
                    if cfg.training_options == "off" and recorded[name] is not None:
                        overrides[name] = 0.0
                used = {k: overrides.get(k, v) for k, v in recorded.items()}
                recorded["apply_spec_augment"] = getattr(conf, "apply_spec_augment", None)
                if recorded["apply_spec_augment"] is False:   # the model never masks, whatever the probabilities
                    used.update(mask_time_prob=0.0, mask_feature_prob=0.0)
                for name in AUDIO_DROPOUTS:   # kept as the checkpoint ships them
                    recorded[name] = used[name] = getattr(conf, name, None)
                self.options["audio_checkpoint"], self.options["audio_used"] = recorded, used
                self.audio = AutoModel.from_pretrained(cfg.audio_model, **overrides)
            except (OSError, ValueError, KeyError) as e:
                raise _not_a_model("audio", cfg.audio_model, e) from e
            if not hasattr(self.audio, "feature_extractor") or not hasattr(self.audio.feature_extractor, "conv_layers"):
                raise EmofuseError(f"--audio-model {cfg.audio_model} ({type(self.audio).__name__}) has no wav2vec2-style "
                                   "convolutional front end; supported: wav2vec2, HuBERT, WavLM, data2vec-audio")
            try:
                self.fe = AutoFeatureExtractor.from_pretrained(cfg.audio_model)
            except (OSError, ValueError):
                self.fe = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000)
                warn_no_preprocessor(cfg.audio_model, "config.json's training_options of the run")
                self.options["audio_preprocessing_default"] = True   # no preprocessor_config.json
            self.options["audio_preprocessing"] = {"do_normalize": bool(getattr(self.fe, "do_normalize", False)),
                                                   "sampling_rate": int(self.fe.sampling_rate)}
            self.sample_rate = int(self.fe.sampling_rate)
            self.kernels, self.strides = list(conf.conv_kernel), list(conf.conv_stride)
            self.window, _ = receptive_field(self.kernels, self.strides)
            pos = getattr(self.audio.encoder, "pos_conv_embed", None)
            if isinstance(getattr(pos, "batch_norm", None), nn.BatchNorm1d):
                f = cfg.frozen()
                if not (f["audio"] or f["audio_layers"]):   # trained, its batch statistics would mix in padding
                    raise EmofuseError(f"--audio-model {cfg.audio_model} normalises its positional convolution's "
                                       "input with a BatchNorm (conv_pos_batch_norm, e.g. mHuBERT), whose batch "
                                       "statistics would mix in the padding of a batch; fine-tuning it is not "
                                       "supported: freeze it (--freeze audio, or audio-layers:N with N ≥ 1), or "
                                       "extract its frozen features with extract-embeddings")
            # as extraction: batched == one at a time (a frozen BatchNorm runs on its running statistics)
            self.group_norm, self.pos_stack = mask_padding(self.audio)
            if cfg.pos_conv == "matmul" and not use_matmul_pos_conv(self.audio):
                raise EmofuseError(f"--pos-conv matmul: --audio-model {cfg.audio_model} has no wav2vec2-style "
                                   "positional convolution (pos_conv_embed.conv); use --pos-conv conv")
            if cfg.training_options == "off" and hasattr(self.audio, "masked_spec_embed"):
                self.audio.masked_spec_embed.requires_grad_(False)   # unused without SpecAugment masking
        if cfg.system in ("cma", "text"):
            try:
                conf = AutoConfig.from_pretrained(cfg.text_model)
                self.tok = AutoTokenizer.from_pretrained(cfg.text_model, use_fast=True)
                self.text = AutoModel.from_pretrained(cfg.text_model)
            except (OSError, ValueError, KeyError) as e:
                raise _not_a_model("text", cfg.text_model, e) from e
            if not self.tok.is_fast:
                raise EmofuseError(f"--text-model {cfg.text_model} has no fast tokenizer (tokenizer.json); "
                                   "emofuse needs one")
            self.max_tokens = token_limit(conf, self.text, self.tok)   # as extraction: RoBERTa's 514 positions take 512
            self.options["text_checkpoint"] = {k: getattr(conf, k, None) for k in TEXT_DROPOUTS}
            self.options["text_used"] = dict(self.options["text_checkpoint"])
            pooler = getattr(self.text, "pooler", None)
            if pooler is not None:
                pooler.requires_grad_(False)   # unused: the head reads the output tokens
        self._freeze(cfg)
        if cfg.compile:
            compile_blocks(self.audio, self.text)

    def _freeze(self, cfg: FinetuneConfig) -> None:
        """Freeze what ``cfg`` says, and list the frozen modules (``self.frozen``): they run in eval
        mode while the rest trains (no dropout in them), as a frozen feature extractor does; a
        wholly frozen encoder has no SpecAugment masking or layer drop either. Freezing the first N
        blocks freezes everything beneath them too (the feature projection, the positional
        convolution, a pre-block LayerNorm, the mask embedding; BERT's embeddings). SpecAugment
        masking and layer drop (``--training-options checkpoint`` only) are the encoder's, decided
        for all its blocks: under ``audio-layers:N`` they still mask the frozen blocks' input and
        drop frozen blocks too."""
        f, frozen = cfg.frozen(), []
        for kind, model in (("audio", self.audio), ("text", self.text)):
            n = f[f"{kind}_layers"]
            if model is None or not n:
                continue
            blocks = transformer_blocks(model)
            if blocks is None or (kind == "text" and not hasattr(model, "embeddings")):
                raise EmofuseError(f"--freeze {kind}-layers:{n}: {type(model).__name__} keeps its blocks elsewhere "
                                   "than emofuse looks (a BERT-style encoder.layer beneath embeddings); freeze the "
                                   f"whole model (--freeze {kind}) or none of it")
            if n > len(blocks):   # a typo would freeze all and key apart
                raise EmofuseError(f"--freeze {kind}-layers:{n}: the {kind} model has {len(blocks)} transformer "
                                   f"blocks; freeze at most that many (--freeze {kind}: all of it)")
        if self.audio is not None:
            self.audio.feature_extractor._freeze_parameters()   # the CNN feature encoder: always frozen (paper)
            frozen.append(self.audio.feature_extractor)
            if f["audio"]:
                frozen.append(self.audio)
            elif f["audio_layers"]:
                enc = self.audio.encoder
                frozen += [self.audio.feature_projection, enc.pos_conv_embed, *enc.layers[:f["audio_layers"]]]
                if getattr(enc, "dropout", None) is not None:
                    frozen.append(enc.dropout)
                if not getattr(self.audio.config, "do_stable_layer_norm", False):
                    frozen.append(enc.layer_norm)   # post-LN models normalise before the first block
                if getattr(self.audio, "masked_spec_embed", None) is not None:
                    self.audio.masked_spec_embed.requires_grad_(False)   # what masking puts beneath the blocks
        if self.text is not None:
            if f["text"]:
                frozen.append(self.text)
            elif f["text_layers"]:
                frozen += [self.text.embeddings, *transformer_blocks(self.text)[:f["text_layers"]]]
        for m in frozen:
            m.requires_grad_(False)
        self.frozen = frozen
        for kind, whole in (("audio", f["audio"]), ("text", f["text"])):
            if whole and f"{kind}_used" in self.options:   # a frozen encoder runs in eval mode: none of them applies
                self.options[f"{kind}_used"] = {k: (False if isinstance(v, bool) else 0.0) if v is not None else None
                                                for k, v in self.options[f"{kind}_used"].items()}

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        return np.asarray(self.fe(wave, sampling_rate=self.sample_rate, return_tensors="np")["input_values"][0],
                          dtype=np.float32)

    def tokenize(self, text: str, uid: str) -> list[int]:
        if "\ufffd" in text or not text.strip():
            raise BadInput("empty or undecodable transcript")
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) > self.max_tokens:
            raise EmofuseError(f"utterance {uid}: its transcript is {len(ids)} tokens, more than the text model's "
                               f"{self.max_tokens}; fine-tuning refuses it rather than cutting it")
        return ids


class FinetuneModel(nn.Module):
    """Encoders + head: ``forward(batch) → logits``; ``batch`` from ``collate``."""

    def __init__(self, enc: Encoders, head: nn.Module):
        super().__init__()
        self.audio, self.text, self.head = enc.audio, enc.text, head
        self._group_norm, self._pos_stack = enc.group_norm, enc.pos_stack
        self._frozen = list(enc.frozen)   # a plain list: not submodules twice over
        self._kernels, self._strides = getattr(enc, "kernels", None), getattr(enc, "strides", None)

    def train(self, mode: bool = True) -> "FinetuneModel":
        """Train mode for what trains; the frozen modules stay in eval mode (see ``Encoders._freeze``)."""
        super().train(mode)
        if mode:
            for m in self._frozen:
                m.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        streams = {}
        if self.audio is not None:
            x, lengths = batch["audio"], batch["audio_lengths"]
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None].to(x.device)).long()
            frames = conv_output_lengths(lengths, self._kernels, self._strides)
            first = conv_output_lengths(lengths, self._kernels[:1], self._strides[:1])
            norm_ctx = (self._group_norm.valid_lengths(first) if self._group_norm is not None
                        else contextlib.nullcontext())
            pos_ctx = (self._pos_stack.valid_lengths(frames.to(x.device)) if self._pos_stack is not None
                       else contextlib.nullcontext())
            with norm_ctx, pos_ctx:
                h = self.audio(x, attention_mask=mask).last_hidden_state
            frames = frames.to(h.device)
            streams["F"] = (h, lengths_to_mask(frames, h.shape[1]))
        if self.text is not None:
            ids, tmask = batch["input_ids"], batch["text_mask"]
            h = self.text(input_ids=ids, attention_mask=tmask.long()).last_hidden_state
            streams["T"] = (h, tmask.bool())
        dev = next(iter(streams.values()))[0].device.type
        with torch.autocast(dev, enabled=False):   # the head in float32 (its LSTM, BatchNorm, pooling)
            return self.head.fuse({k: (x.float(), m) for k, (x, m) in streams.items()})


def build_head(cfg: FinetuneConfig, enc: Encoders, n_classes: int) -> nn.Module:
    a = enc.audio.config.hidden_size if enc.audio is not None else None
    t = enc.text.config.hidden_size if enc.text is not None else None
    if cfg.system == "cma":
        return CMAModel(a, t, n_classes, proj=cfg.proj, heads=cfg.heads, ff=cfg.ff, dropout=cfg.dropout,
                        block=cfg.cma_block)
    if cfg.system == "audio":
        return AudioOnlyModel(a, n_classes, proj=cfg.proj, dropout=cfg.dropout)
    return TextOnlyModel(t, n_classes, proj=cfg.proj)


def collate(data: FinetuneData, idx: np.ndarray, device: torch.device, pad_token: int = 0,
            padding_value: float = 0.0) -> dict:
    """Pad the utterances ``idx`` to their longest (audio samples, tokens)."""
    out = {"y": to_device(torch.from_numpy(data.y[idx]), device)}
    if data.waves is not None:
        lengths = torch.tensor([len(data.waves[i]) for i in idx])
        x = torch.full((len(idx), int(lengths.max())), padding_value)
        for b, i in enumerate(idx):
            x[b, :len(data.waves[i])] = torch.from_numpy(data.waves[i])
        out.update(audio=to_device(x, device), audio_lengths=to_device(lengths, device))
    if data.tokens is not None:
        n = max(len(data.tokens[i]) for i in idx)
        ids = torch.full((len(idx), n), pad_token, dtype=torch.long)
        m = torch.zeros((len(idx), n), dtype=torch.bool)
        for b, i in enumerate(idx):
            ids[b, :len(data.tokens[i])] = torch.tensor(data.tokens[i])
            m[b, :len(data.tokens[i])] = True
        out.update(input_ids=to_device(ids, device), text_mask=to_device(m, device))
    return out


def micro_batches(idx: np.ndarray, seconds: np.ndarray, size: int, group: bool = True,
                  max_seconds: float = 0.0) -> list[np.ndarray]:
    """Cut a global batch into micro-batches of at most ``size``; ``group``: sorted by length
    first (longest first), so each micro-batch pads to a similar length. ``max_seconds`` > 0 also
    caps each micro-batch's padded audio (its utterances × its longest): a micro-batch of short
    utterances holds more of them, one utterance longer than the cap goes alone."""
    if group:
        idx = idx[np.argsort(-seconds[idx], kind="stable")]
    if max_seconds <= 0:
        return [idx[k:k + size] for k in range(0, len(idx), size)]
    out, k = [], 0
    while k < len(idx):
        n = 1
        while k + n < len(idx) and n < size and (n + 1) * max(seconds[idx[k:k + n + 1]]) <= max_seconds:
            n += 1
        out.append(idx[k:k + n])
        k += n
    return out


# -- BatchNorm statistics per global step ----------------------------------------------------------
def _bns(model: nn.Module) -> list[nn.BatchNorm1d]:
    """The BatchNorms that train: not those of frozen modules (mHuBERT's positional one, frozen,
    runs on its running statistics, which no step moves)."""
    frozen = {id(m) for f in getattr(model, "_frozen", ()) for m in f.modules()}
    return [m for m in model.modules()
            if isinstance(m, (MaskedBatchNorm1d, nn.modules.batchnorm._BatchNorm)) and id(m) not in frozen]


@contextlib.contextmanager
def capture_bn(model: nn.Module, out: list) -> Iterator[None]:
    """Run a training forward without moving BatchNorm running statistics; append the batch
    statistics each BatchNorm saw (mean, unbiased variance) to ``out`` as one flat vector."""
    bns = _bns(model)
    saved = [(b.momentum, b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone()) for b in bns]
    for b in bns:
        b.momentum = 1.0    # lerp with weight 1 stores the batch statistics exactly
    try:
        yield
        if bns:
            out.append(torch.cat([torch.cat([b.running_mean, b.running_var]).float() for b in bns]))
    finally:
        for b, (mom, rm, rv, n) in zip(bns, saved):
            b.momentum = mom
            b.running_mean.copy_(rm)
            b.running_var.copy_(rv)
            b.num_batches_tracked.copy_(n)


def apply_bn(model: nn.Module, stats: torch.Tensor) -> None:
    """Move the running statistics by each row of ``stats`` (one per micro-batch, in order)."""
    bns = _bns(model)
    with torch.no_grad():
        for row in stats:
            k = 0
            for b in bns:
                c = b.num_features
                b.running_mean.lerp_(row[k:k + c].to(b.running_mean), b.momentum)
                b.running_var.lerp_(row[k + c:k + 2 * c].to(b.running_var), b.momentum)
                b.num_batches_tracked += 1
                k += 2 * c


# -- distributed -----------------------------------------------------------------------------------
def dist_info(device_type: str = "cpu") -> tuple[int, int]:
    """(rank, world size): under torchrun, the process group is set up here for the device the
    run trains on (nccl on CUDA, gloo on CPU, also on a machine that has a GPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t


def _seed_of(*parts: int) -> int:
    return sha256_int("/".join(map(str, parts)), 7)


# -- training --------------------------------------------------------------------------------------
@dataclass
class Timer:
    compute: float = 0.0
    audio_s: float = 0.0


def _audio_cap(cfg: FinetuneConfig) -> float:
    """--micro-batch-seconds where there is audio (the text system's lengths are tokens: no cap)."""
    return 0.0 if cfg.system == "text" else cfg.micro_batch_seconds


def _oom(cfg: FinetuneConfig, n: int, e: Exception) -> EmofuseError:
    lower = (f"lower --micro-batch-seconds (now {cfg.micro_batch_seconds:g}) or --micro-batch (now {cfg.micro_batch})"
             if _audio_cap(cfg) > 0 else f"lower --micro-batch (now {cfg.micro_batch})")
    return EmofuseError(f"the device ran out of memory on a micro-batch of {n} utterances; {lower} (the effective "
                        f"batch stays --batch-size {cfg.batch_size} through gradient accumulation) or add "
                        f"--grad-checkpointing / --bf16; finished folds and the last "
                        f"epoch's checkpoint are kept, run the same command again to resume")


def train_step(model: FinetuneModel, wrapped: nn.Module, opt, data: FinetuneData, idx: np.ndarray,
               cfg: FinetuneConfig, device: torch.device, step_seed: int, rank: int = 0, world: int = 1,
               group: bool = True, pad_token: int = 0, timer: Timer | None = None) -> torch.Tensor:
    """One optimizer step on the global batch ``idx``; returns its mean training loss as a 0-dim
    float64 tensor on the device. Nothing here waits for the device (no ``.item()``, no copy to
    the host): the loss sum and the BatchNorm statistics stay on the device, and the caller reads
    the losses once per epoch."""
    micro = micro_batches(idx, data.seconds, cfg.micro_batch, group, _audio_cap(cfg))
    mine = [(i, m) for i, m in enumerate(micro) if i % world == rank]
    idle = not mine
    if idle:    # this process still takes part in the gradient all-reduce, with a zero loss
        mine = [(0, micro[0])]
    total = torch.zeros((), dtype=torch.float64, device=device)
    bn_rows = None
    for j, (i, mb) in enumerate(mine):
        torch.manual_seed(_seed_of(step_seed, i))   # dropout: the same whichever process runs micro-batch i
        np.random.seed(_seed_of(step_seed, i) % 2**32)   # transformers draws SpecAugment's masks with numpy
        batch = collate(data, mb, device, pad_token)
        sync = contextlib.nullcontext() if (j == len(mine) - 1 or not hasattr(wrapped, "no_sync")) else wrapped.no_sync()
        got: list = []
        try:
            with sync, capture_bn(model, got):
                with bf16_autocast(device, cfg.bf16):
                    logits = wrapped(batch)
                loss = nn.functional.cross_entropy(logits.float(), batch["y"], reduction="sum")
                (loss * (0.0 if idle else world / len(idx))).backward()
        except torch.OutOfMemoryError as e:
            raise _oom(cfg, len(mb), e) from None
        if not idle:
            total += loss.detach().double()
            if got:
                if bn_rows is None:
                    bn_rows = torch.zeros(len(micro), got[0].numel(), device=device)
                bn_rows[i] = got[0]
            if timer is not None and data.waves is not None:
                timer.audio_s += float(data.seconds[mb].sum())
    if _bns(model):
        if bn_rows is None:
            bn_rows = torch.zeros(len(micro), sum(2 * b.num_features for b in _bns(model)), device=device)
        apply_bn(model, _all_sum(bn_rows, world))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return _all_sum(total, world) / len(idx)


@torch.no_grad()
def predict(model: nn.Module, data: FinetuneData, idx: np.ndarray, cfg: FinetuneConfig, device: torch.device,
            rank: int = 0, world: int = 1, pad_token: int = 0) -> np.ndarray:
    """Logits (len(idx), C) in eval mode; processes share the micro-batches and sum the results."""
    model.eval()
    out = torch.zeros(len(idx), len(data.classes), dtype=torch.float32, device=device)
    parts = micro_batches(np.arange(len(idx)), data.seconds[idx], cfg.micro_batch, True, _audio_cap(cfg))
    for i, pos in enumerate(parts):
        if i % world != rank:
            continue
        try:
            with bf16_autocast(device, cfg.bf16):
                out[to_device(torch.from_numpy(pos), device)] = model(collate(data, idx[pos], device, pad_token)).float()
        except torch.OutOfMemoryError as e:
            raise _oom(cfg, len(pos), e) from None
    return _all_sum(out, world).cpu().numpy()


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_fold(cfg: FinetuneConfig, enc_factory: Callable[[], Encoders], data: FinetuneData, tr: np.ndarray,
               va: np.ndarray, seed: int, device: torch.device, rdir: str, rank: int = 0, world: int = 1,
               progress: Callable[[str], None] = lambda s: None, timer: Timer | None = None):
    """Train one (repeat, fold) with early stopping on validation UA (ties: lower validation
    loss), decay on validation loss; a checkpoint per epoch (``rdir/checkpoint.pt``) lets a
    killed run resume at the epoch it was in. Returns (model at its best epoch, history, best epoch)."""
    enc = enc_factory()
    torch.manual_seed(seed)   # the head's initialisation (the encoders come from their checkpoints)
    model = FinetuneModel(enc, build_head(cfg, enc, len(data.classes))).to(device)
    if cfg.grad_checkpointing:
        for m in (model.audio, model.text):
            if m is not None:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False,   # BatchNorm statistics: apply_bn, the same on every process
                      find_unused_parameters=cfg.training_options == "checkpoint")   # layer drop skips blocks
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    pad = enc.tok.pad_token_id or 0 if enc.tok is not None else 0
    state = {"epoch": -1, "best": None, "best_score": NO_EPOCH, "best_epoch": -1, "history": []}
    ckpt = os.path.join(rdir, "checkpoint.pt")
    if os.path.exists(ckpt):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        progress(f"resumed after epoch {state['epoch'] + 1}")
    y_all = torch.from_numpy(data.y)
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if epoch - 1 - state["best_epoch"] >= cfg.patience:   # no finite epoch yet: as if the best were epoch -1
            break
        model.train()
        gen = torch.Generator().manual_seed(_seed_of(seed, epoch))   # data order: a function of (seed, epoch)
        order = tr[torch.randperm(len(tr), generator=gen).numpy()]
        losses = []
        t0 = time.perf_counter()
        for s, k in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[k:k + cfg.batch_size]
            losses.append(train_step(model, wrapped, opt, data, idx, cfg, device, _seed_of(seed, epoch, s), rank, world,
                                     pad_token=pad, timer=timer) * len(idx))
        total = float(sum(float(x) for x in torch.stack(losses).cpu())) if losses else 0.0   # one copy per epoch
        if timer is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timer.compute += time.perf_counter() - t0
        logits = predict(model, data, va, cfg, device, rank, world, pad)
        val = scores(data.y[va], logits.argmax(1), len(data.classes))
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), y_all[va]))
        state["history"].append({"epoch": epoch, "train_loss": total / len(order), "val_loss": val_loss,
                                 "val_ua": val["ua"], "lr": opt.param_groups[0]["lr"]})
        progress(f"epoch {epoch + 1} val UA {val['ua']:.1f}")
        score = epoch_score(val["ua"], val_loss)
        if score > tuple(state["best_score"]):
            state.update(best={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                         best_score=score, best_epoch=epoch)
        sched.step(val_loss)   # decay on the validation loss, never the test set
        state["epoch"] = epoch
        if rank == 0:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "rng": torch.get_rng_state(), "state": state, "identity": cfg.identity()}, ckpt)
        if world > 1:
            import torch.distributed as dist
            dist.barrier()
    if state["best"] is not None:   # none: no finite epoch (check_trained refuses the run)
        model.load_state_dict(state["best"])
    return model, enc, state["history"], state["best_epoch"]


def run_fingerprints(fs: FeatureStore, cfg: FinetuneConfig, fetch: bool = True) -> dict:
    """What a fine-tuned run's results depend on besides its configuration: the corpus (the
    store's fingerprint) and the bytes of each encoder checkpoint it starts from (new weights
    saved under the same folder, or a hub id at another revision, are another run).
    ``fetch=False``: a hub checkpoint not in the local cache is refused, not downloaded."""
    out = {"corpus": fs.corpus_fingerprint}
    if cfg.system in ("cma", "audio"):
        out["audio_checkpoint"] = checkpoint_digest(cfg.audio_model, fetch)
    if cfg.system in ("cma", "text"):
        out["text_checkpoint"] = checkpoint_digest(cfg.text_model, fetch)
    return out


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune every (repeat, fold) of ``cfg``; finished ones in ``cfg.out`` are reused. One
    run at a time per ``cfg.out`` (a second one is refused with a sentence; under torchrun the
    rank-0 process holds the lock for all)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # under torchrun: this process's own GPU
        device = rank_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = resolve_device(cfg.device)
    rank, world = dist_info(device.type)
    with FeatureStore(cfg.store) as fs:
        fingerprints = run_fingerprints(fs, cfg)
        if cfg.system in ("cma", "audio"):
            # before anything is written (the lock creates cfg.out)
            check_audio(cfg.store, audio_paths_now(fs.utterances, fs.corpus_meta, cfg.root))
    enc = Encoders(cfg)   # checks the checkpoints before anything is written
    with run_lock(cfg.out, "finetune") if rank == 0 else contextlib.nullcontext():
        return _run_finetune(cfg, device, rank, world, fingerprints, enc)


def _run_finetune(cfg: FinetuneConfig, device: torch.device, rank: int, world: int, fingerprints: dict,
                  enc: Encoders) -> dict:
    say = log.info
    if rank != 0:
        say = lambda m: None   # noqa: E731  (one process speaks: rank 0)
    config = {"type": "emofuse.train-head", "kind": "finetune", "emofuse_version": __version__,
              "config": asdict(cfg), "identity": cfg.identity(), "fingerprints": fingerprints,
              "training_options": enc.options, "world_size": world,
              "frozen_parameters": _count_frozen(enc)}
    if rank == 0:
        check_run_dir(cfg.out, config, lambda c: FinetuneConfig(**c).identity())
        os.makedirs(os.path.join(cfg.out, "runs"), exist_ok=True)
        write_config(cfg.out, config)
    t0 = time.perf_counter()
    data = load_finetune_data(cfg.store, cfg, enc)
    t_load = time.perf_counter() - t0
    say(f"finetune {cfg.system}: {len(data.ids)} utterances, classes {', '.join(data.classes)}, training on "
        f"{device}" + (f" x {world} processes" if world > 1 else "") +
        (f"; left out: {data.excluded}" if data.excluded else ""))
    folds = folds_of(data, cfg, warn=rank == 0)
    runs, preds, timer = [], [], Timer()
    first = [enc]

    def factory() -> Encoders:   # fresh pretrained encoders per (repeat, fold); the first is already loaded
        return first.pop() if first else Encoders(cfg)

    if device.type == "cpu":
        from .train import warn_other_threads
        warn_other_threads(cfg.out, [f[0] for f in (read_fold(fold_dir(cfg.out, r, s)) for r in range(cfg.repeats)
                                                    for s in folds) if f is not None])
    for r in range(cfg.repeats):
        for session in folds:
            seed = cfg.seed + r
            rdir = fold_dir(cfg.out, r, session)
            finished = read_fold(rdir)
            if finished is not None:
                runs.append(finished[0])
                preds.append(finished[1])
                continue
            if rank == 0:
                os.makedirs(rdir, exist_ok=True)
            if world > 1:
                import torch.distributed as dist
                dist.barrier()
            tr, va, te = split(data, session, seed, cfg.val_fraction)
            model, fenc, history, best_epoch = train_fold(
                cfg, factory, data, tr, va, run_seed(data, seed, session), device, rdir, rank, world,
                lambda s: say(f"  repeat {r} fold {session}: {s}"), timer)
            pad = fenc.tok.pad_token_id or 0 if fenc.tok is not None else 0
            logits = predict(model, data, te, cfg, device, rank, world, pad)
            m, p = fold_outcome(cfg.out, data, te, logits, r, seed, session, best_epoch, history, device,
                                model="model", bf16=cfg.bf16, n_train=len(tr), n_val=len(va), layer_weights={},
                                layer_ids={})
            if rank == 0:
                if cfg.save_encoders:
                    save_encoders(model, rdir, fenc)
                save_fold(rdir, model.head, m, p, {"fusion": cfg.fusion, "head": cfg.head, "keys": "+".join(cfg.keys()),
                                                   "finetune": cfg.system})
                ck = os.path.join(rdir, "checkpoint.pt")
                if os.path.exists(ck):
                    os.remove(ck)
            runs.append(m)
            preds.append(p)
            say(f"  repeat {r} fold {session}: test UA {m['ua']:.2f}")
    # the audio every process trained on
    audio_s = float(_all_sum(torch.tensor(timer.audio_s, dtype=torch.float64, device=device), world))
    summary = summarise(runs, data.classes)
    summary.update(type="emofuse.summary", fusion=cfg.fusion, keys=cfg.keys(), head=cfg.head, finetune=cfg.system,
                   excluded=data.excluded, empty_segments={},
                   data={"utterances": len(data.ids), "device": str(device), "world_size": world},
                   time={"load_s": t_load, "train_s": timer.compute,
                         "train_audio_s_per_s": audio_s / timer.compute if timer.compute else None},
                   runs=[{k: v for k, v in m.items() if k != "history"} for m in runs])
    if rank == 0:
        write_predictions(cfg.out, pd.concat(preds))
        write_summary(cfg.out, summary)
    say(f"{cfg.out}: " + format_summary(summary))
    return summary


def save_encoders(model: FinetuneModel, rdir: str, enc: Encoders | None = None) -> None:
    """The fine-tuned encoders of ``model`` as transformers checkpoints (``rdir/audio_encoder``,
    ``rdir/text_encoder``) that ``AutoModel.from_pretrained`` reloads: saved with the plain
    ``GroupNorm`` / ``BatchNorm`` in place of the masked ones training wraps them in (else their
    weights would be saved under names the model does not have). With ``enc`` (the Encoders they
    were loaded by), each folder also holds what reads its input: the checkpoint's feature extractor
    (its normalisation, rate) and the tokenizer, so that the folder is a whole checkpoint for
    ``--audio-model`` / ``--text-model``. The config is the one trained with (SpecAugment masking
    and layer drop at 0 under ``--training-options off``)."""
    # a preprocessor emofuse defaulted (the checkpoint had none) is not written: reused, the folder
    # says again that it has none, and the run records the default again
    fe = enc.fe if enc is not None and not enc.options.get("audio_preprocessing_default") else None
    with _plain_norms(model):
        for name, m, reads in (("audio_encoder", model.audio, fe), ("text_encoder", model.text, enc and enc.tok)):
            if m is not None:
                m.save_pretrained(os.path.join(rdir, name))
                if reads is not None:
                    reads.save_pretrained(os.path.join(rdir, name))


@contextlib.contextmanager
def _plain_norms(model: FinetuneModel) -> Iterator[None]:
    """While inside: the audio encoder holds the plain norms that ``MaskedGroupNorm`` (a group-norm
    wav2vec2's first conv layer) and ``MaskedBatchNorm`` (mHuBERT's positional BatchNorm) wrap."""
    swaps = []
    if model.audio is not None and model._group_norm is not None:
        swaps.append((model.audio.feature_extractor.conv_layers[0], "layer_norm", model._group_norm))
    if model.audio is not None and isinstance(model._pos_stack, MaskedBatchNorm):
        swaps.append((model.audio.encoder.pos_conv_embed, "batch_norm", model._pos_stack))
    for owner, name, masked in swaps:
        assert getattr(owner, name) is masked
        setattr(owner, name, masked.norm)
    try:
        yield
    finally:
        for owner, name, masked in swaps:
            setattr(owner, name, masked)


def _count_frozen(enc: Encoders) -> dict:
    out = {}
    for name, m in (("audio", enc.audio), ("text", enc.text)):
        if m is not None:
            out[name] = {"frozen": sum(p.numel() for p in m.parameters() if not p.requires_grad),
                         "trained": sum(p.numel() for p in m.parameters() if p.requires_grad)}
    return out


# -- ablate hook -----------------------------------------------------------------------------------
def ablate_config(store: str, out_dir: str, defaults: dict, row: dict, device: str,
                  audio_model: str | None = None, text_model: str | None = None,
                  root: str | None = None) -> FinetuneConfig:
    """The FinetuneConfig of a spec row with ``finetune: true`` (spec defaults it knows apply;
    ``audio_model``/``text_model`` replace the row's encoder ids, e.g. local folders; ``root``:
    where a moved corpus lives now)."""
    params = {k: v for k, v in defaults.items() if k in ROW_FIELDS}
    params.update({k: v for k, v in row.items() if k in ROW_FIELDS})
    if audio_model:
        params["audio_model"] = audio_model
    if text_model:
        params["text_model"] = text_model
    if params.get("folds") is not None:
        params["folds"] = tuple(str(f) for f in params["folds"])
    return FinetuneConfig(store=store, out=out_dir, device=device, root=root, **params)
