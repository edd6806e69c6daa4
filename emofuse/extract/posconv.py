"""wav2vec2's positional convolution computed as one batched matrix product per group.

The positional embedding of wav2vec2, HuBERT and WavLM is a grouped 1-D convolution with a long
kernel (base: 768 channels, 16 groups, kernel 128; large: 1,024 channels). cuDNN's grouped
convolutions with such kernels are slow, above all their backward pass, which fine-tuning needs:
a suspect for the fine-tuning benchmark running at the same speed in bfloat16 and float32 on an
H100 (BENCHMARKS.md). Unfolded (im2col), the same convolution is one ``einsum`` per step over
``(B, G, T, Cg·K) × (G, Cg·K, Og)``: dense products that use the tensor cores, at the price of
holding the unfolded input (``B·T·C·K`` values) for the backward pass.

``use_matmul_pos_conv(model)`` switches a loaded model's positional convolutions to it in place.
The parameters, their names and the checkpoint are untouched (only the instance's
``_conv_forward`` is replaced), and the values are the convolution's to float rounding (tested).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def grouped_conv1d_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                          groups: int) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding, groups=groups)`` (stride 1, dilation 1) as an
    unfold and one batched product. x (B, C, T), weight (O, C/groups, K) → (B, O, T + 2·padding − K + 1)."""
    B, C, _ = x.shape
    O, Cg, K = weight.shape
    G = groups
    cols = F.pad(x, (padding, padding)).unfold(2, K, 1)        # (B, C, T', K): a view
    Tn = cols.shape[2]
    cols = cols.reshape(B, G, Cg, Tn, K).permute(0, 1, 3, 2, 4).reshape(B, G, Tn, Cg * K)
    w = weight.reshape(G, O // G, Cg * K)
    out = torch.einsum("bgtk,gok->bgot", cols, w).reshape(B, O, Tn)
    return out if bias is None else out + bias[None, :, None]


def _matmul_conv_forward(self: nn.Conv1d, input: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    return grouped_conv1d_matmul(input, weight, bias, self.padding[0], self.groups)


def use_matmul_pos_conv(model: nn.Module) -> int:
    """Compute every wav2vec2-style positional convolution of ``model`` (``…pos_conv_embed.conv``:
    a grouped ``Conv1d``, stride 1, zero padding) with ``grouped_conv1d_matmul``. Returns how many
    were switched (0: the model has none, e.g. data2vec-audio's stack of short convolutions)."""
    n = 0
    for name, m in model.named_modules():
        if (name.endswith("pos_conv_embed.conv") and isinstance(m, nn.Conv1d) and m.groups > 1
                and m.stride == (1,) and m.dilation == (1,) and m.padding_mode == "zeros"
                and isinstance(m.padding, tuple)):
            m._conv_forward = types.MethodType(_matmul_conv_forward, m)
            n += 1
    return n


__all__ = ["grouped_conv1d_matmul", "use_matmul_pos_conv"]
