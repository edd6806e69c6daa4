"""The heads of both papers. Every head maps packed streams to logits:

    forward({key: (rows (N_k, L_k, D_k), lengths (B,))}) → logits (B, C)

Keys: ``F`` frames, ``P``/``S``/``W`` phone/syllable/word segments, ``T`` text tokens. Every
stream has its own layer weighting (Eq. 1); ``layer_weights()`` returns them for the reports.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .branches import BRANCHES
from .functional import lengths_to_mask, masked_mean, stats_pool
from .layers import AttentionBlock, LayerWeighting, MaskedBatchNorm1d

Inputs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
Dims = Mapping[str, tuple[int, int]]   # key → (layers L, dim D)


class Head(nn.Module):
    """Base: one ``LayerWeighting`` per input key."""

    keys: tuple[str, ...]

    def __init__(self, dims: Dims, keys: Sequence[str]):
        super().__init__()
        missing = [k for k in keys if k not in dims]
        if missing:
            raise ValueError(f"no dimensions given for streams {missing}; have {sorted(dims)}")
        self.keys = tuple(keys)
        self.weighting = nn.ModuleDict({k: LayerWeighting(*dims[k]) for k in keys})

    def encode(self, inputs: Inputs, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows, lengths = inputs[key]
        return self.weighting[key](rows, lengths)

    def layer_weights(self) -> dict[str, list[float]]:
        return {k: m.weights.detach().cpu().tolist() for k, m in self.weighting.items()}


class LateFusion(Head):
    """Eq. 3: one branch per stream (linear or transformer), logits summed. With one key this is
    the unimodal model of Table 1."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, branch: str = "linear",
                 hidden: int = 128, dropout: float = 0.2):
        super().__init__(dims, keys)
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {list(BRANCHES)}, found {branch!r}")
        self.branches = nn.ModuleDict({k: BRANCHES[branch](dims[k][1], n_classes, hidden, dropout) for k in keys})

    def forward(self, inputs: Inputs) -> torch.Tensor:
        return torch.stack([self.branches[k](*self.encode(inputs, k)) for k in self.keys]).sum(0)


class ConcatFusion(Head):
    """Concatenation early fusion: every stream projected to ``hidden`` and the sequences
    concatenated along time before one linear branch (text and frames in one sequence)."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, hidden: int = 128, dropout: float = 0.2,
                 branch: str = "linear"):
        super().__init__(dims, keys)
        self.proj = nn.ModuleDict({k: nn.Linear(dims[k][1], hidden) for k in keys})
        self.branch = BRANCHES[branch](hidden, n_classes, hidden, dropout)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        xs, masks = zip(*(self.encode(inputs, k) for k in self.keys))
        x = torch.cat([self.proj[k](x) for k, x in zip(self.keys, xs)], dim=1)
        return self.branch(x, torch.cat(masks, dim=1))


class CoattentionFusion(Head):
    """Eq. 4, Fig. 3: per speech granularity, text queries speech and speech queries text, each a
    transformer-encoder layer repeated ``layers`` times (both branches updated together); the
    masked averages of the two branches are averaged; granularities are concatenated (c), then
    g = LN(ReLU(W4 c + b4) + c) and logits = W5 g + b5."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, hidden: int = 128, dropout: float = 0.2,
                 layers: int = 3, heads: int = 4, text: str = "T"):
        super().__init__(dims, keys)
        if text not in keys or len(keys) < 2:
            raise ValueError(f"coattention needs the text stream {text!r} and at least one speech stream, found {list(keys)}")
        self.text, self.speech = text, tuple(k for k in keys if k != text)
        self.text_proj = nn.Linear(dims[text][1], hidden)
        self.speech_proj = nn.ModuleDict({k: nn.Linear(dims[k][1], hidden) for k in self.speech})

        def stack():
            return nn.ModuleList(AttentionBlock(hidden, heads, 2 * hidden, dropout) for _ in range(layers))
        self.text_queries = nn.ModuleDict({k: stack() for k in self.speech})
        self.speech_queries = nn.ModuleDict({k: stack() for k in self.speech})
        c = hidden * len(self.speech)
        self.w4, self.norm, self.w5 = nn.Linear(c, c), nn.LayerNorm(c), nn.Linear(c, n_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        t0, t_mask = self.encode(inputs, self.text)
        t0 = self.text_proj(t0)
        pooled = []
        for k in self.speech:
            s, s_mask = self.encode(inputs, k)
            s, t = self.speech_proj[k](s), t0
            for tq, sq in zip(self.text_queries[k], self.speech_queries[k]):
                t, s = tq(t, s, s_mask), sq(s, t, t_mask)
            pooled.append((masked_mean(t, t_mask) + masked_mean(s, s_mask)) / 2)
        c = torch.cat(pooled, dim=-1)
        g = self.norm(self.drop(torch.relu(self.w4(c))) + c)
        return self.w5(g)


class CMAHead(Head):
    """Cross-modal attention with frozen encoders: audio encoder (2 × Conv1d k3 s2 + BatchNorm +
    ReLU, BiLSTM 128 per direction, dropout), text projection (Conv1d k1), CMA-1 (audio queries
    text) and CMA-2 (text queries audio) with LayerNorm before attention, statistics pooling of
    each, concatenation, classifier."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, hidden: int = 256, dropout: float = 0.2,
                 heads: int = 8, text: str = "T"):
        super().__init__(dims, keys)
        speech = [k for k in keys if k != text]
        if text not in keys or len(speech) != 1:
            raise ValueError(f"cma needs the text stream {text!r} and exactly one speech stream, found {list(keys)}")
        self.text, self.audio = text, speech[0]
        self.conv1 = nn.Conv1d(dims[self.audio][1], hidden, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, 3, stride=2, padding=1)
        self.bn1, self.bn2 = MaskedBatchNorm1d(hidden), MaskedBatchNorm1d(hidden)
        self.lstm = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
        self.text_proj = nn.Conv1d(dims[text][1], hidden, 1)
        self.cma1 = AttentionBlock(hidden, heads, hidden, dropout, pre_norm=True)
        self.cma2 = AttentionBlock(hidden, heads, hidden, dropout, pre_norm=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, n_classes)

    @staticmethod
    def _down(lengths: torch.Tensor) -> torch.Tensor:
        """Output lengths of a k3 s2 p1 convolution."""
        return torch.where(lengths > 0, (lengths - 1) // 2 + 1, torch.zeros_like(lengths))

    def forward(self, inputs: Inputs) -> torch.Tensor:
        a, a_mask = self.encode(inputs, self.audio)
        lengths = a_mask.sum(1)
        h = a.transpose(1, 2)                                              # (B, D, T)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            lengths = self._down(lengths)
            h = conv(h)
            h = torch.relu(bn(h, lengths_to_mask(lengths, h.shape[-1])))  # zeros at padding again
        packed = pack_padded_sequence(h.transpose(1, 2), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=h.shape[-1])
        a_mask = lengths_to_mask(lengths, h.shape[1])
        h = self.drop(h)
        t, t_mask = self.encode(inputs, self.text)
        t = self.text_proj(t.transpose(1, 2)).transpose(1, 2)
        c1 = self.cma1(h, t, t_mask)     # audio queries text
        c2 = self.cma2(t, h, a_mask)     # text queries audio
        return self.out(self.drop(torch.cat([stats_pool(c1, a_mask), stats_pool(c2, t_mask)], dim=-1)))


FUSIONS = ("none", "late", "concat", "coattention", "cma")
#: learning rates of the protocol: feed-forward heads 1e-3, attention heads 5e-5, CMA 1e-5
DEFAULT_LR = {"linear": 1e-3, "transformer": 5e-5, "concat": 1e-3, "coattention": 5e-5, "cma": 1e-5}


def build_head(fusion: str, dims: Dims, keys: Sequence[str], n_classes: int, head: str = "linear",
               hidden: int | None = None, dropout: float = 0.2) -> Head:
    """The head for a ``train-head`` configuration. ``fusion``: none (one stream), late, concat,
    coattention, cma; ``head``: the branch of none/late (linear or transformer)."""
    if fusion in ("none", "late"):
        if fusion == "none" and len(keys) != 1:
            raise ValueError(f"--fusion none trains one stream, found {list(keys)}")
        return LateFusion(dims, keys, n_classes, head, hidden or 128, dropout)
    if fusion == "concat":
        return ConcatFusion(dims, keys, n_classes, hidden or 128, dropout)
    if fusion == "coattention":
        return CoattentionFusion(dims, keys, n_classes, hidden or 128, dropout)
    if fusion == "cma":
        return CMAHead(dims, keys, n_classes, hidden or 256, dropout)
    raise ValueError(f"fusion must be one of {list(FUSIONS)}, found {fusion!r}")


def default_lr(fusion: str, head: str) -> float:
    return DEFAULT_LR[head if fusion in ("none", "late") else fusion]
