"""Pure tensor functions the heads are built from (no state, shapes in every docstring).

Inputs reach the heads *packed*: one stream of a batch is ``rows (N, L, D)`` (the utterances'
rows back to back, N = Σ lengths) plus ``lengths (B,)``. Layers are weighted on the packed rows
(cheap: no padding), then ``pad_rows`` makes ``(B, T, D)`` and a mask for the sequence layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..devices import to_device


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """lengths (B,) int → mask (B, T) bool, True at real positions."""
    T = int(lengths.max().item()) if max_len is None and len(lengths) else (max_len or 0)
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def pad_rows(rows: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows (N, D) packed, lengths (B,) with Σ lengths = N → padded (B, T, D) zeros after each
    sequence, mask (B, T) on rows' device. T = max(1, max length), so an empty sequence still has a
    (masked) slot.

    Lengths on the host (what ``TrainData.batch`` gives) make this free of device round trips: T,
    the mask and each row's place are computed on the host and copied to the device
    asynchronously, so a GPU batch never waits for the device to answer ``max`` or to turn a mask
    into indices (on a CPU the same copy, the same numbers). Lengths on a GPU work too (each of
    those steps then waits for the device)."""
    n = int(lengths.sum())
    if rows.shape[0] != n:
        raise ValueError(f"rows has {rows.shape[0]} rows but lengths sum to {n}")
    B = len(lengths)
    T = max(1, int(lengths.max().item()) if B else 1)
    mask = lengths_to_mask(lengths, T)
    if lengths.device.type == "cpu":   # each row's place in the flattened (B·T) batch, found on the host
        dest = to_device(mask.view(-1).nonzero().squeeze(1), rows.device)
        out = rows.new_zeros((B * T,) + tuple(rows.shape[1:])).index_copy(0, dest, rows)
        return out.view((B, T) + tuple(rows.shape[1:])), to_device(mask, rows.device)
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


CHUNK_BYTES = 8 << 20   # float32 rows per step of the chunked layer sum on a CPU (measured best of 2–16 MiB)


@dataclass(frozen=True)
class GatheredRows:
    """Rows ``table[index]`` (N, L, D), optionally standardised per row as (x − mean[group]) /
    std[group], *not materialised*: ``weight_layers`` reads them a few rows at a time, so a batch
    never exists as one float32 (N, L, D) copy (3× faster on a CPU, where the full copy, its
    conversion and the weighted sum each paid a trip through memory).

    table (M, L, D) any float dtype; index (N,) int64; mean, std (G, L, D) float32; group (N,) int64.
    """

    table: torch.Tensor
    index: torch.Tensor
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    group: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.index),) + tuple(self.table.shape[1:])

    def chunk(self, a: int, b: int) -> torch.Tensor:
        """Rows a..b as float32 (b − a, L, D), standardised when a normaliser is set."""
        x = self.table.index_select(0, self.index[a:b]).float()
        if self.mean is not None:
            if self.group is None:   # one mean/std for every row
                x = (x - self.mean[0]) / self.std[0]
            else:
                g = self.group[a:b]
                x = (x - self.mean.index_select(0, g)) / self.std.index_select(0, g)
        return x

    def materialise(self) -> torch.Tensor:
        return self.chunk(0, len(self.index))

    def rows_per_chunk(self) -> int:
        if self.table.device.type == "cuda":
            return max(1, len(self.index))
        per_row = 4 * self.table.shape[1] * self.table.shape[2]
        return max(16, (CHUNK_BYTES + per_row - 1) // per_row)


class _GatheredLayerSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights: torch.Tensor, rows: GatheredRows) -> torch.Tensor:
        n, step = rows.shape[0], rows.rows_per_chunk()
        out = torch.empty((n, rows.shape[2]), dtype=weights.dtype, device=weights.device)
        for a in range(0, n, step):
            torch.matmul(weights, rows.chunk(a, a + step), out=out[a:a + step])   # (L) @ (n, L, D)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows = ctx.rows
        n, step = rows.shape[0], rows.rows_per_chunk()
        gw = torch.zeros(rows.shape[1], dtype=grad.dtype, device=grad.device)
        for a in range(0, n, step):   # gw_l = Σ_n,d x[n, l, d] g[n, d], as one matrix-vector product
            x = rows.chunk(a, a + step)
            gw += x.transpose(0, 1).reshape(x.shape[1], -1) @ grad[a:a + step].reshape(-1)
        return gw, None


def weight_layers(rows: torch.Tensor | GatheredRows, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 1 without its LayerNorm: rows (N, L, D) (a tensor or ``GatheredRows``), weights (L,)
    positive, summing to 1 → (N, D) = Σ_l w_l rows[:, l], in float32 (rows may be float16), under
    bfloat16 autocast (``--bf16``) too: the sum is bound by reading the rows, not by arithmetic."""
    if rows.shape[1] != weights.shape[0]:
        raise ValueError(f"rows have {rows.shape[1]} layers but there are {weights.shape[0]} layer weights")
    if isinstance(rows, GatheredRows):   # float32 under autocast: matmul(out=…) is not autocast
        return _GatheredLayerSum.apply(weights, rows)
    with torch.autocast(weights.device.type, enabled=False):
        return torch.einsum("nld,l->nd", rows.to(weights.dtype), weights)


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, T) True at real positions → ``key_padding_mask`` for ``nn.MultiheadAttention``
    (True at padding). A fully padded row (an utterance with no segment) keeps its first slot so
    attention stays defined; that slot holds zeros and is masked out of every pooling. Computed
    without asking the device whether any row is empty (no host round trip on a GPU)."""
    pad = ~mask
    if pad.shape[-1]:
        pad[..., 0] &= ~pad.all(-1)
    return pad
