"""Single-sequence branches: (B, T, D) + mask → logits (B, C)."""

from __future__ import annotations

import torch
from torch import nn

from .functional import masked_mean
from .layers import AttentionBlock, FeedForward


class LinearBranch(nn.Module):
    """Pepino et al. 2021 (Eq. 2): two position-wise feed-forward layers (ReLU, dropout), a
    masked global average over the sequence, an output layer.

    forward(x (B, T, D), mask (B, T)) → logits (B, C).
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.ff = FeedForward(dim, hidden, dropout)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(masked_mean(self.ff(x), mask))


class TransformerBranch(nn.Module):
    """Table 1's transformer-encoder baseline (MG §3.3): ``depth`` transformer-encoder layers at
    the input width (or after a projection to ``proj`` when ``proj`` > 0), then two feed-forward
    layers of width ``hidden``, masked average, output layer.

    forward(x (B, T, D), mask (B, T)) → logits (B, C).
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.2, depth: int = 3,
                 heads: int = 8, proj: int = 0, ff: int | None = None):
        super().__init__()
        self.proj = nn.Linear(dim, proj) if proj else nn.Identity()
        width = proj or dim
        self.layers = nn.ModuleList(AttentionBlock(width, heads, ff or 4 * width, dropout) for _ in range(depth))
        self.ff = FeedForward(width, hidden, dropout)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        for layer in self.layers:
            h = layer(h, h, mask)
        return self.out(masked_mean(self.ff(h), mask))


BRANCHES = {"linear": LinearBranch, "transformer": TransformerBranch}
