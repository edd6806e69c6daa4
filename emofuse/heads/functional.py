"""Pure tensor functions the heads are built from (no state, shapes in every docstring).

Inputs reach the heads *packed*: one stream of a batch is ``rows (N, L, D)`` (the utterances'
rows back to back, N = Σ lengths) plus ``lengths (B,)``. Layers are weighted on the packed rows
(cheap: no padding), then ``pad_rows`` makes ``(B, T, D)`` and a mask for the sequence layers.
"""

from __future__ import annotations

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """lengths (B,) int → mask (B, T) bool, True at real positions."""
    T = int(lengths.max().item()) if max_len is None and len(lengths) else (max_len or 0)
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def pad_rows(rows: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows (N, D) packed, lengths (B,) with Σ lengths = N → padded (B, T, D) zeros after each
    sequence, mask (B, T). T = max(1, max length), so an empty sequence still has a (masked) slot."""
    if rows.shape[0] != int(lengths.sum()):
        raise ValueError(f"rows has {rows.shape[0]} rows but lengths sum to {int(lengths.sum())}")
    B = len(lengths)
    T = max(1, int(lengths.max().item()) if B else 1)
    mask = lengths_to_mask(lengths, T)
    out = rows.new_zeros((B, T) + tuple(rows.shape[1:]))
    out[mask] = rows
    return out, mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), mask (B, T) → (B, D): the mean over real positions (zeros for an empty one)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def stats_pool(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Statistics pooling: x (B, T, D), mask (B, T) → (B, 2D) = masked mean ⊕ masked std."""
    mean = masked_mean(x, mask)
    m = mask.to(x.dtype).unsqueeze(-1)
    var = (((x - mean[:, None]) * m) ** 2).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.cat([mean, (var + eps).sqrt()], dim=-1)


def weight_layers(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 1 without its LayerNorm: rows (N, L, D), weights (L,) positive, summing to 1 → (N, D)
    = Σ_l w_l rows[:, l]. Computed in the weights' dtype (rows may be float16 on disk)."""
    if rows.shape[1] != weights.shape[0]:
        raise ValueError(f"rows have {rows.shape[1]} layers but there are {weights.shape[0]} layer weights")
    return torch.einsum("nld,l->nd", rows.to(weights.dtype), weights)


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, T) True at real positions → ``key_padding_mask`` for ``nn.MultiheadAttention``
    (True at padding). A fully padded row (an utterance with no segment) keeps its first slot so
    attention stays defined; that slot holds zeros and is masked out of every pooling."""
    pad = ~mask
    empty = pad.all(1)
    if empty.any():
        pad = pad.clone()
        pad[empty, 0] = False
    return pad
