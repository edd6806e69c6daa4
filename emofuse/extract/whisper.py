"""Whisper's encoder as an audio stream: every hidden state, frames trimmed to the real audio.

Whisper's encoder reads a log-mel spectrogram of a fixed window (30 s: 3000 mel frames of 10 ms)
and, after its stride-2 convolution, returns one frame per 20 ms. The standard pipeline pads
every input to 30 s; by default so do we, so the activations are exactly the standard ones.
Utterances longer than the window are cut into consecutive windows, each encoded on its own
(as Whisper itself transcribes long audio), and their frames concatenated: nothing is truncated.

``#window=SECONDS`` after the checkpoint (e.g. ``openai/whisper-base#window=10``) runs shorter
windows instead: faster, but the activations differ from the standard ones (the model was
trained on 30 s windows; see BENCHMARKS.md for how much).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import EmofuseError
from .audio import RESAMPLER, BadInput
from ..devices import resolve_device
from .encoders import (DTYPES, _host, _load_error, _prepare, config_identity, stacked_layers, transformers_version,
                       weights_hash)
from .families import AUDIO_FAMILIES

#: Windows per forward (each a full window of activations before trimming).
MAX_WINDOWS_PER_FORWARD = 8


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``path#key=value,key=value`` → (path, options)."""
    if "#" not in spec:
        return spec, {}
    path, _, tail = spec.partition("#")
    options = {}
    for item in filter(None, tail.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise EmofuseError(f"audio model {spec!r}: expected KEY=VALUE after '#', found {item!r}")
        options[key.strip()] = value.strip()
    return path, options


class WhisperAudioEncoder:
    """A Whisper checkpoint's encoder returning ``(T, L, D)`` per utterance, L = layers + 1
    (the last hidden state is after the encoder's final layer norm, as transformers returns it).

    Frame t is centred on sample ``t * hop`` (hop = 2 mel hops = 20 ms) and sees ±2 mel frames
    (65 ms): recorded as ``frame_hop_s``, ``frame_window_s`` and ``frame_offset_s`` (the start of
    frame 0's window, -32.5 ms) so segment pooling maps seconds to frames correctly.
    Batches are exact: every window is padded to the same length on its own.
    """

    default_stream = "audio"
    stored_dtype = None

    def __init__(self, spec: str, device: str = "auto", dtype: str = "float32"):
        from transformers import AutoConfig, WhisperFeatureExtractor, WhisperModel

        self.spec, self.device, self.dtype = spec, resolve_device(device), DTYPES[dtype]
        path, options = split_options(spec)
        unknown = set(options) - {"window"}
        if unknown:
            raise EmofuseError(f"audio model {spec!r}: unknown option(s) {sorted(unknown)}; expected window=SECONDS")
        try:
            config = AutoConfig.from_pretrained(path)
            model = WhisperModel.from_pretrained(path).get_encoder()
        except (OSError, ValueError) as e:
            raise _load_error("audio", path, e) from e
        notes = []
        try:
            fe = WhisperFeatureExtractor.from_pretrained(path)
        except (OSError, ValueError):
            fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
            notes.append(f"no preprocessor_config.json: used Whisper's standard log-mel ({config.num_mel_bins} bins)")
        if fe.feature_size != config.num_mel_bins:
            raise EmofuseError(f"{path}: the feature extractor makes {fe.feature_size} mel bins but the model "
                               f"expects {config.num_mel_bins} (preprocessor_config.json does not match config.json)")
        self.fe = fe
        self.sample_rate = int(fe.sampling_rate)
        self.mel_hop = int(fe.hop_length)
        strides = model.conv1.stride[0] * model.conv2.stride[0]
        self.hop = self.mel_hop * strides  # samples per encoder frame (320: 20 ms)
        full = config.max_source_positions * self.hop  # the trained window (480000: 30 s)
        if "window" in options:
            try:
                seconds = float(options["window"])
            except ValueError:
                raise EmofuseError(f"audio model {spec!r}: window must be a number of seconds, "
                                   f"found {options['window']!r}") from None
            self.window_samples = int(round(seconds * self.sample_rate))
            if not (0 < self.window_samples <= full) or self.window_samples % self.hop:
                raise EmofuseError(f"audio model {spec!r}: window must be a multiple of {self.hop / self.sample_rate} s "
                                   f"between {self.hop / self.sample_rate} and {full / self.sample_rate:g} s, found {seconds}")
        else:
            self.window_samples = full
        self.standard = self.window_samples == full
        self.info_weights_hash = weights_hash(model)
        self.model = _prepare(model, self.device, self.dtype)
        self.num_layers, self.dim = config.encoder_layers + 1, config.d_model
        # receptive field of one frame: mel window (n_fft) plus two k=3 convolutions, strides 1 and 2
        k1, k2 = model.conv1.kernel_size[0], model.conv2.kernel_size[0]
        s1 = model.conv1.stride[0]
        span_mel = (k1 - 1) + (k2 - 1) * s1  # mel frames either side, in total
        window = span_mel * self.mel_hop + int(fe.n_fft)
        revision = getattr(config, "_commit_hash", None) or "local"
        preprocessing = {"log_mel_bins": int(fe.feature_size), "n_fft": int(fe.n_fft), "mel_hop": self.mel_hop,
                         "sampling_rate": self.sample_rate, "window_s": self.window_samples / self.sample_rate,
                         "padding": "each window zero-padded to window_s (Whisper's standard log-mel)"}
        self.info: dict[str, Any] = {
            "kind": "audio", "encoder": "transformers-whisper", "encoder_id": spec, "model_type": "whisper",
            "family": AUDIO_FAMILIES["whisper"][0], "exact_batching": True, "revision": revision,
            "weights_hash": self.info_weights_hash, **config_identity(config),
            "num_layers": self.num_layers, "dim": self.dim, "sample_rate": self.sample_rate,
            "frame_hop_s": self.hop / self.sample_rate, "frame_window_s": window / self.sample_rate,
            "frame_offset_s": -window / 2 / self.sample_rate,
            "window_s": self.window_samples / self.sample_rate, "standard_window": self.standard,
            "long_audio": "consecutive windows, each encoded alone, frames concatenated",
            "preprocessing": preprocessing, "compute_dtype": dtype, "untrained": False, "notes": "; ".join(notes),
            "transformers_version": transformers_version(), "emofuse_version": __version__, "resampler": RESAMPLER,
        }

    def fingerprint_fields(self) -> dict[str, Any]:
        return {k: self.info[k] for k in ("weights_hash", "config_hash", "preprocessing", "compute_dtype")}

    def check(self, wave: np.ndarray) -> None:
        if len(wave) < self.hop:
            raise BadInput(f"audio is {len(wave) / self.sample_rate:.3f} s, shorter than one Whisper frame "
                           f"({self.hop / self.sample_rate:.3f} s)")

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        return np.asarray(wave, dtype=np.float32)  # log-mel per window, in ``encode``

    def n_frames(self, n_samples: int) -> int:
        """Frames whose centre lies in the audio: frame t is centred on sample t·hop."""
        return math.ceil(n_samples / self.hop)

    def log_mel(self, chunk: np.ndarray) -> np.ndarray:
        """The checkpoint's log-mel of one window (zero-padded to the window), (bins, frames)."""
        feats = self.fe(chunk, sampling_rate=self.sample_rate, return_tensors="np", padding="max_length",
                        max_length=self.window_samples, truncation=True)["input_features"][0]
        return np.asarray(feats, dtype=np.float32)

    def _forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, bins, frames) → (B, T, L, D) hidden states."""
        if self.standard:  # transformers' own forward: the standard activations by construction
            out = self.model(mel, output_hidden_states=True)
            return stacked_layers(out)
        enc = self.model  # the same computation on a shorter window (transformers insists on 30 s)
        x = torch.nn.functional.gelu(enc.conv1(mel))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[:x.shape[1]]
        states = [x]
        for layer in enc.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return torch.stack(states, dim=2)

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray], out_dtype: Any = np.float32, preprocessed: bool = False) -> list[np.ndarray]:
        """Waveforms at ``sample_rate`` → ``(T, L, D)`` each, T = ceil(samples / hop)."""
        pieces = []  # (utterance, log-mel, frames kept)
        for i, w in enumerate(waves):
            w = np.asarray(w, dtype=np.float32)
            for start in range(0, len(w), self.window_samples):
                chunk = w[start:start + self.window_samples]
                pieces.append((i, self.log_mel(chunk), self.n_frames(len(chunk))))
        kept: list[list[np.ndarray]] = [[] for _ in waves]
        for k in range(0, len(pieces), MAX_WINDOWS_PER_FORWARD):
            group = pieces[k:k + MAX_WINDOWS_PER_FORWARD]
            mel = torch.from_numpy(np.stack([m for _, m, _ in group]))
            hs = self._forward(mel.to(self.device, self.dtype))
            n_max = max(n for _, _, n in group)
            host = _host(hs[:, :n_max], out_dtype)
            for (i, _, n), h in zip(group, host):
                kept[i].append(h[:n])
        return [parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0) for parts in kept]
