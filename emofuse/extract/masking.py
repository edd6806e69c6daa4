"""Pure tensor functions that keep batched extraction equal to one-at-a-time extraction."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn


def conv_output_lengths(lengths: torch.Tensor, kernels: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """Valid output length after a stack of unpadded 1-D convolutions. ``lengths``: (B,) int."""
    out = lengths.clone()
    for k, s in zip(kernels, strides):
        out = torch.div(out - k, s, rounding_mode="floor") + 1
    return out.clamp(min=0)


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """(window, hop) in input samples of one output frame of a conv stack (wav2vec2: 400, 320)."""
    window, jump = 1, 1
    for k, s in zip(kernels, strides):
        window += (k - 1) * jump
        jump *= s
    return window, jump


def masked_instance_norm(x: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm with one group per channel, statistics over each item's first ``lengths[b]`` steps.

    x: (B, C, T); lengths: (B,). Equals ``nn.GroupNorm(C, C)`` applied to each item cut to its
    valid length; padded steps are normalised with the same statistics (and ignored later).
    """
    dtype = x.dtype
    x = x.float()  # statistics in float32 whatever the compute precision
    t = torch.arange(x.shape[-1], device=x.device)
    mask = (t[None, :] < lengths[:, None].to(x.device)).to(x.dtype)[:, None, :]  # (B, 1, T)
    n = mask.sum(-1, keepdim=True).clamp(min=1)
    mean = (x * mask).sum(-1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / n
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.float()[None, :, None] + bias.float()[None, :, None]
    return y.to(dtype)


class _LengthsWhileInside:
    """``with module.valid_lengths(lengths):`` sets the batch's real lengths for the forward
    passes inside the block (the wrapped Hugging Face model gives no way to pass them)."""

    lengths: torch.Tensor | None = None

    @contextmanager
    def valid_lengths(self, lengths: torch.Tensor) -> Iterator[None]:
        self.lengths = lengths
        try:
            yield
        finally:
            self.lengths = None


class MaskedGroupNorm(_LengthsWhileInside, nn.Module):
    """Drop-in for the per-channel ``GroupNorm`` of wav2vec2's first conv layer (the
    ``feat_extract_norm="group"`` kind) that ignores padding when ``lengths`` is set."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        if norm.num_groups != norm.num_channels:
            raise ValueError(f"expected a GroupNorm with one group per channel, found {norm.num_groups} groups "
                             f"for {norm.num_channels} channels")
        self.norm = norm
        self.lengths: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lengths is None:
            return self.norm(x)
        return masked_instance_norm(x, self.lengths, self.norm.weight, self.norm.bias, self.norm.eps)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, T) with every step at or past ``lengths[b]`` set to zero."""
    t = torch.arange(x.shape[-1], device=x.device)
    return x * (t[None, :] < lengths[:, None].to(x.device)).to(x.dtype)[:, None, :]


class MaskedConvStack(_LengthsWhileInside, nn.Module):
    """Drop-in for a positional embedding made of a stack of convolutions (data2vec-audio's
    ``pos_conv_embed``: 5 conv + layer-norm + GELU layers over (B, T, C)) that sets padded
    frames back to zero between layers when ``lengths`` is set. Each layer then sees exactly the
    zeros a lone utterance gets from its convolution's own zero padding, so a batch equals one
    utterance at a time."""

    def __init__(self, stack: nn.Module):
        super().__init__()
        self.layers = stack.layers
        self.lengths: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
            if self.lengths is not None:
                x = zero_padding(x, self.lengths)
        return x.transpose(1, 2)


class MaskedBatchNorm(_LengthsWhileInside, nn.Module):
    """Drop-in for the ``BatchNorm1d`` that HuBERT checkpoints with ``conv_pos_batch_norm`` (e.g.
    mHuBERT-25Hz) apply before their positional convolution. In eval mode it maps the zeros of
    padded frames to ``bias - running_mean * weight / std``, which the convolution then carries into
    the last real frames (a batch differed from one utterance at a time by up to 3); with
    ``lengths`` set, padded steps are set back to zero after it, as a lone utterance's convolution
    pads with zeros."""

    def __init__(self, norm: nn.BatchNorm1d):
        super().__init__()
        self.norm = norm
        self.lengths: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return y if self.lengths is None else zero_padding(y, self.lengths)


def mask_padding(model: nn.Module) -> tuple[MaskedGroupNorm | None, nn.Module | None]:
    """Wrap, in place, what would carry a batch's padding into the real frames of a wav2vec2-family
    ``model``: the first conv layer's per-channel GroupNorm (``feat_extract_norm="group"``),
    data2vec-audio's stack of positional convolutions, and the BatchNorm an mHuBERT-style checkpoint
    applies before its positional convolution. Returns (the ``MaskedGroupNorm`` or None, the masked
    positional module or None): their ``valid_lengths`` make a batch equal one utterance at a time.
    Extraction and fine-tuning both call it."""
    group_norm = pos_stack = None
    if getattr(model.config, "feat_extract_norm", "layer") == "group":
        layer0 = model.feature_extractor.conv_layers[0]
        group_norm = layer0.layer_norm = MaskedGroupNorm(layer0.layer_norm)
    pos = getattr(getattr(model, "encoder", None), "pos_conv_embed", None)
    if pos is not None and isinstance(getattr(pos, "layers", None), nn.ModuleList):   # data2vec-audio
        pos_stack = model.encoder.pos_conv_embed = MaskedConvStack(pos)
    elif pos is not None and isinstance(getattr(pos, "batch_norm", None), nn.BatchNorm1d):   # mHuBERT
        pos_stack = pos.batch_norm = MaskedBatchNorm(pos.batch_norm)
    return group_norm, pos_stack
