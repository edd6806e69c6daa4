"""Small building blocks shared by the heads."""

from __future__ import annotations

import torch
from torch import nn

from .functional import key_padding, pad_rows, weight_layers


class LayerWeighting(nn.Module):
    """Eq. 1: u = LayerNorm(Σ_l w_l u^l / Σ_l w_l) with w = softmax(logits) (positive, sum 1).

    forward(rows (N, L, D), lengths (B,)) → x (B, T, D), mask (B, T).
    """

    learned = True

    def __init__(self, num_layers: int, dim: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def weights(self) -> torch.Tensor:
        """(L,) the normalised layer weights."""
        return torch.softmax(self.logits, 0)

    def forward(self, rows: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.norm(weight_layers(rows, self.weights))
        return pad_rows(u, lengths)


class SingleLayer(nn.Module):
    """No weighting: the one selected layer as it is (no LayerNorm), as the cross-modal attention
    paper feeds wav2vec2's last layer and BERT's output. Holds no parameters.

    forward(rows (N, 1, D), lengths (B,)) → x (B, T, D) float32, mask (B, T).
    """

    learned = False

    def __init__(self, num_layers: int, dim: int):
        super().__init__()
        if num_layers != 1:
            raise ValueError(f"weighting 'none' takes exactly one layer per stream, found {num_layers} layers "
                             "(select one with --layers last or a single index, or use --weighting learned)")
        self.register_buffer("one", torch.ones(1), persistent=False)

    def forward(self, rows: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_rows(weight_layers(rows, self.one), lengths)


WEIGHTINGS = {"learned": LayerWeighting, "none": SingleLayer}


class FeedForward(nn.Sequential):
    """Two position-wise layers with ReLU and dropout: (…, D) → (…, H)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))


class AttentionBlock(nn.Module):
    """One transformer-encoder layer whose queries come from ``x`` and keys/values from ``ctx``
    (self-attention when ctx is x): multi-head attention, residual, LayerNorm, feed-forward,
    residual, LayerNorm (post-LN), or LayerNorm before each sublayer with ``pre_norm``.

    Keys and values may have another width (``ctx_dim``): queries from 768-d text can attend to
    1024-d speech without a projection.

    forward(x (B, Tq, d), ctx (B, Tk, ctx_dim), ctx_mask (B, Tk) True at real keys) → (B, Tq, d).
    """

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, pre_norm: bool = False,
                 ctx_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} attention heads do not divide the width {dim}")
        ctx_dim = ctx_dim or dim
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True, kdim=ctx_dim, vdim=ctx_dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(ctx_dim) if pre_norm else None
        self.drop = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        pad = key_padding(ctx_mask)
        if self.pre_norm:
            q, kv = self.norm1(x), self.norm_ctx(ctx)
            x = x + self.drop(self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)[0])
            return x + self.drop(self.ff(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, ctx, ctx, key_padding_mask=pad, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ff(x)))


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over channels whose batch statistics ignore padding.

    forward(x (B, C, T), mask (B, T)) → (B, C, T), zeros at padded positions. Computed in the
    statistics' own dtype (float32 under bfloat16 autocast, as autocast runs a normalisation).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.to(self.running_mean.dtype)   # a no-op in float32
        m = mask[:, None, :].to(x.dtype)
        if self.training:
            n = m.sum().clamp(min=1.0)
            mean = (x * m).sum((0, 2)) / n
            var = (((x - mean[None, :, None]) * m) ** 2).sum((0, 2)) / n
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y * m
