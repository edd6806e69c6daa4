"""The cross-modal attention paper's building blocks (CMA §2.2-2.5, §4), usable on frozen
features (``CMAHead`` and the two unimodal heads, through ``Head``) and on top of encoders being
fine-tuned (``fuse`` takes padded sequences, so the fine-tuning path feeds wav2vec2's last hidden
state and BERT's output tokens straight in).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import EmofuseError
from .functional import key_padding, lengths_to_mask, stats_pool
from .layers import AttentionBlock, MaskedBatchNorm1d


def conv_out_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Output lengths (B,) of a kernel-3, stride-2, padding-1 convolution: ⌊(T − 1)/2⌋ + 1, 0 stays 0."""
    return torch.where(lengths > 0, (lengths - 1) // 2 + 1, torch.zeros_like(lengths))


class AudioFeatureEncoder(nn.Module):
    """CMA §2.2: two convolution blocks (Conv1d kernel 3 stride 2, ``channels`` filters,
    BatchNorm over real frames only, ReLU), then one BiLSTM with ``channels // 2`` units per
    direction, dropout on its output.

    forward(x (B, T, D), mask (B, T)) → h (B, T', channels), mask (B, T'), T' ≈ T / 4.
    """

    def __init__(self, dim: int, channels: int = 256, dropout: float = 0.2):
        super().__init__()
        if channels % 2:
            raise ValueError(f"the audio feature encoder's width must be even (a BiLSTM of width/2 per "
                             f"direction), found {channels}")
        self.conv1 = nn.Conv1d(dim, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.bn1, self.bn2 = MaskedBatchNorm1d(channels), MaskedBatchNorm1d(channels)
        self.lstm = nn.LSTM(channels, channels // 2, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = mask.sum(1)
        h = (x * mask[..., None].to(x.dtype)).transpose(1, 2)             # (B, D, T), zeros at padding
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            lengths = conv_out_lengths(lengths)
            h = conv(h)
            h = torch.relu(bn(h, lengths_to_mask(lengths, h.shape[-1])))  # zeros at padding again
        packed = pack_padded_sequence(h.transpose(1, 2), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=h.shape[-1])
        return self.drop(h), lengths_to_mask(lengths, h.shape[1])


class TextProjection(nn.Module):
    """CMA §2.3: a kernel-1 Conv1d from the text encoder's width to ``channels`` (time unchanged).

    forward(x (B, N, D), mask (B, N)) → (B, N, channels), mask.
    """

    def __init__(self, dim: int, channels: int = 256):
        super().__init__()
        self.conv = nn.Conv1d(dim, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x.transpose(1, 2)).transpose(1, 2), mask


#: readings of the CMA block (CMA §2.4 Eqs. 4-5, §4): ``transformer``, a pre-LayerNorm transformer
#: layer (attention, residual, feed-forward of width ``ff`` with its own LayerNorm, residual);
#: ``attention``, Eqs. 4-5 alone: LayerNorm, multi-head attention whose output projection W0 is
#: "the feed-forward layer", its output A as it is (no residual, no other feed-forward layer).
CMA_BLOCKS = ("transformer", "attention")


def check_cma_block(block: str | None, cma: bool, option: str, value: str, ff_given: bool = False) -> None:
    """Refuse a ``--cma-block`` that is not one of ``CMA_BLOCKS``, or that is not the default
    where the model has no CMA block (``cma`` False: ``option value`` names what says so), or
    ``attention`` with a ``--ff`` given (that block has no feed-forward layer)."""
    if block is not None and block not in CMA_BLOCKS:
        raise EmofuseError(f"--cma-block must be one of {list(CMA_BLOCKS)}, found {block!r}")
    if block not in (None, "transformer") and not cma:
        raise EmofuseError(f"--cma-block is the attention block of {option} cma, found {option} {value}")
    if block == "attention" and ff_given:
        raise EmofuseError("--ff is the width of the transformer block's feed-forward layer, which --cma-block "
                           "attention does not have")


class CrossAttention(nn.Module):
    """Eqs. 4-5 of CMA as a block: A = Concat(A_1 … A_M) W0 with A_i = softmax(Q_i K_iᵀ / √d) V_i,
    queries from ``x`` and keys/values from ``ctx``, each LayerNormed first (§4, "layer-normalization
    before scaled dot product"); no residual. Dropout on the attention weights and on A.

    forward(x (B, Tq, d), ctx (B, Tk, ctx_dim), ctx_mask (B, Tk) True at real keys) → (B, Tq, d).
    """

    def __init__(self, dim: int, heads: int, dropout: float, ctx_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} attention heads do not divide the width {dim}")
        ctx_dim = ctx_dim or dim
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True, kdim=ctx_dim, vdim=ctx_dim)
        self.norm1, self.norm_ctx = nn.LayerNorm(dim), nn.LayerNorm(ctx_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        kv = self.norm_ctx(ctx)
        return self.drop(self.attn(self.norm1(x), kv, kv, key_padding_mask=key_padding(ctx_mask),
                                   need_weights=False)[0])


class CMAFusion(nn.Module):
    """CMA §2.4-2.5 on padded sequences: CMA-1 (audio queries text) and CMA-2 (text queries audio),
    one attention block each (``block``, one of ``CMA_BLOCKS``), statistics pooling of each,
    concatenation, classifier.

    forward(audio (B, T, dim), audio_mask, text (B, N, text_dim), text_mask) → logits (B, C).
    ``text_dim`` defaults to ``dim`` (the paper projects both to 256).
    """

    def __init__(self, dim: int, n_classes: int, heads: int = 8, ff: int = 256, dropout: float = 0.2,
                 text_dim: int | None = None, block: str = "transformer"):
        super().__init__()
        text_dim = text_dim or dim
        if block not in CMA_BLOCKS:
            raise ValueError(f"the CMA block must be one of {list(CMA_BLOCKS)}, found {block!r}")
        if block == "attention":
            self.cma1 = CrossAttention(dim, heads, dropout, ctx_dim=text_dim)
            self.cma2 = CrossAttention(text_dim, heads, dropout, ctx_dim=dim)
        else:
            self.cma1 = AttentionBlock(dim, heads, ff, dropout, pre_norm=True, ctx_dim=text_dim)
            self.cma2 = AttentionBlock(text_dim, heads, ff, dropout, pre_norm=True, ctx_dim=dim)
        self.out = nn.Linear(2 * dim + 2 * text_dim, n_classes)

    def forward(self, a: torch.Tensor, a_mask: torch.Tensor, t: torch.Tensor, t_mask: torch.Tensor) -> torch.Tensor:
        c1 = self.cma1(a, t, t_mask)     # audio queries text
        c2 = self.cma2(t, a, a_mask)     # text queries audio
        return self.out(torch.cat([stats_pool(c1, a_mask), stats_pool(c2, t_mask)], dim=-1))


Padded = Mapping[str, tuple[torch.Tensor, torch.Tensor]]   # key → (x (B, T, D), mask (B, T))


class CMAModel(nn.Module):
    """The whole frozen-feature CMA system after the encoders: ``fuse({audio: (x, mask), text: (x, mask)})``."""

    def __init__(self, audio_dim: int, text_dim: int, n_classes: int, proj: int = 256, heads: int = 8,
                 ff: int = 256, dropout: float = 0.2, audio: str = "F", text: str = "T", block: str = "transformer"):
        super().__init__()
        self.audio, self.text = audio, text
        self.audio_encoder = AudioFeatureEncoder(audio_dim, proj, dropout)
        self.text_proj = TextProjection(text_dim, proj)
        self.fusion = CMAFusion(proj, n_classes, heads, ff, dropout, block=block)

    def fuse(self, streams: Padded) -> torch.Tensor:
        a, a_mask = self.audio_encoder(*streams[self.audio])
        t, t_mask = self.text_proj(*streams[self.text])
        return self.fusion(a, a_mask, t, t_mask)


class AudioOnlyModel(nn.Module):
    """CMA's audio-only system after wav2vec2 (Table 2, 60.01): audio feature encoder, statistics
    pooling, classifier (the cross-modal attention removed)."""

    def __init__(self, dim: int, n_classes: int, proj: int = 256, dropout: float = 0.2, key: str = "F"):
        super().__init__()
        self.key = key
        self.audio_encoder = AudioFeatureEncoder(dim, proj, dropout)
        self.out = nn.Linear(2 * proj, n_classes)

    def fuse(self, streams: Padded) -> torch.Tensor:
        return self.out(stats_pool(*self.audio_encoder(*streams[self.key])))


class TextOnlyModel(nn.Module):
    """CMA's text-only system after BERT (Table 2, 71.01 fine-tuned): projection, statistics
    pooling, classifier."""

    def __init__(self, dim: int, n_classes: int, proj: int = 256, key: str = "T"):
        super().__init__()
        self.key = key
        self.text_proj = TextProjection(dim, proj)
        self.out = nn.Linear(2 * proj, n_classes)

    def fuse(self, streams: Padded) -> torch.Tensor:
        return self.out(stats_pool(*self.text_proj(*streams[self.key])))
