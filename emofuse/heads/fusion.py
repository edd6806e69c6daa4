"""The heads of both papers. Every head maps packed streams to logits:

    forward({key: (rows (N_k, L_k, D_k), lengths (B,))}) → logits (B, C)

Keys: ``F`` frames, ``P``/``S``/``W`` phone/syllable/word segments, ``T`` text tokens. Every
stream has its own layer weighting (Eq. 1 of the multi-granularity paper) or, with
``weighting="none"``, uses its one selected layer as it is; ``fuse`` does the rest on padded
sequences ``{key: (x (B, T, D), mask (B, T))}``, so the same head can sit on top of encoders
being fine-tuned. ``layer_weights()`` returns the learned weights for the reports. Sizes and
their sources: ``heads/options.py``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .branches import BRANCHES
from .cma import AudioOnlyModel, CMAModel, TextOnlyModel
from .functional import masked_mean
from .layers import WEIGHTINGS, AttentionBlock
from .options import HEAD_NAMES, PROTOCOL, head_defaults

Inputs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
Padded = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
Dims = Mapping[str, tuple[int, int]]   # key → (layers L, dim D)


class Head(nn.Module):
    """Base: one layer weighting per input key (``LayerWeighting`` or ``SingleLayer``)."""

    keys: tuple[str, ...]

    def __init__(self, dims: Dims, keys: Sequence[str], weighting: str = "learned"):
        super().__init__()
        missing = [k for k in keys if k not in dims]
        if missing:
            raise ValueError(f"no dimensions given for streams {missing}; have {sorted(dims)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, found {weighting!r}")
        self.keys = tuple(keys)
        self.weighting = nn.ModuleDict({k: WEIGHTINGS[weighting](*dims[k]) for k in keys})

    def encode(self, inputs: Inputs, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows, lengths = inputs[key]
        return self.weighting[key](rows, lengths)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        return self.fuse({k: self.encode(inputs, k) for k in self.keys})

    def fuse(self, streams: Padded) -> torch.Tensor:   # pragma: no cover - every head overrides it
        raise NotImplementedError

    def layer_weights(self) -> dict[str, list[float]]:
        """Learned weights per key (keys without a learned weighting are left out)."""
        return {k: m.weights.detach().cpu().tolist() for k, m in self.weighting.items() if m.learned}


class LateFusion(Head):
    """Eq. 3: one branch per stream (linear or transformer), logits summed. With one key this is
    the unimodal model of Table 1."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, branch: str = "linear",
                 hidden: int = 128, dropout: float = 0.2, weighting: str = "learned", **sizes):
        super().__init__(dims, keys, weighting)
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {list(BRANCHES)}, found {branch!r}")
        self.branches = nn.ModuleDict({k: BRANCHES[branch](dims[k][1], n_classes, hidden, dropout, **sizes)
                                       for k in keys})

    def fuse(self, streams: Padded) -> torch.Tensor:
        return torch.stack([self.branches[k](*streams[k]) for k in self.keys]).sum(0)


class ConcatFusion(Head):
    """Concatenation early fusion (MG §2.3): the streams' sequences joined along time, then one
    linear branch. With ``proj`` > 0 every stream is first projected to ``proj`` (needed when the
    streams' widths differ); with ``proj`` = 0 (the paper's reading) they must share a width."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, hidden: int = 128, dropout: float = 0.2,
                 branch: str = "linear", proj: int = 0, weighting: str = "learned"):
        super().__init__(dims, keys, weighting)
        widths = {k: dims[k][1] for k in keys}
        if not proj and len(set(widths.values())) > 1:
            raise ValueError(f"concatenation joins sequences of one width, found widths {widths}; "
                             "project them to one width with proj")
        self.proj = nn.ModuleDict({k: nn.Linear(dims[k][1], proj) for k in keys}) if proj else None
        self.branch = BRANCHES[branch](proj or widths[keys[0]], n_classes, hidden, dropout)

    def fuse(self, streams: Padded) -> torch.Tensor:
        xs = [streams[k][0] if self.proj is None else self.proj[k](streams[k][0]) for k in self.keys]
        return self.branch(torch.cat(xs, dim=1), torch.cat([streams[k][1] for k in self.keys], dim=1))


class CoattentionFusion(Head):
    """Eq. 4, Fig. 3: per speech granularity, text queries speech and speech queries text, each a
    transformer-encoder layer repeated ``depth`` times (both branches updated together); the
    masked averages of the two branches are averaged; granularities are concatenated (c), then
    g = LN(ReLU(W4 c + b4) + c) and logits = W5 g + b5. With ``proj`` = 0 (the paper) Q/K/V act
    on the Eq. 1 embeddings themselves; ``proj`` > 0 first projects every stream to that width."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, dropout: float = 0.2, depth: int = 3,
                 heads: int = 8, proj: int = 0, ff: int | None = None, text: str = "T",
                 weighting: str = "learned"):
        super().__init__(dims, keys, weighting)
        if text not in keys or len(keys) < 2:
            raise ValueError(f"coattention needs the text stream {text!r} and at least one speech stream, found {list(keys)}")
        self.text, self.speech = text, tuple(k for k in keys if k != text)
        if proj:
            self.text_proj = nn.Linear(dims[text][1], proj)
            self.speech_proj = nn.ModuleDict({k: nn.Linear(dims[k][1], proj) for k in self.speech})
        else:
            widths = {k: dims[k][1] for k in keys}
            if len(set(widths.values())) > 1:
                raise ValueError(f"coattention averages its text and speech branches, so they need one width; "
                                 f"found widths {widths}: project them with --proj N")
            self.text_proj, self.speech_proj = None, None
        width = proj or dims[text][1]

        def stack():
            return nn.ModuleList(AttentionBlock(width, heads, ff or 4 * width, dropout) for _ in range(depth))
        self.text_queries = nn.ModuleDict({k: stack() for k in self.speech})
        self.speech_queries = nn.ModuleDict({k: stack() for k in self.speech})
        c = width * len(self.speech)
        self.w4, self.norm, self.w5 = nn.Linear(c, c), nn.LayerNorm(c), nn.Linear(c, n_classes)
        self.drop = nn.Dropout(dropout)

    def fuse(self, streams: Padded) -> torch.Tensor:
        t0, t_mask = streams[self.text]
        if self.text_proj is not None:
            t0 = self.text_proj(t0)
        pooled = []
        for k in self.speech:
            s, s_mask = streams[k]
            if self.speech_proj is not None:
                s = self.speech_proj[k](s)
            t = t0
            for tq, sq in zip(self.text_queries[k], self.speech_queries[k]):
                t, s = tq(t, s, s_mask), sq(s, t, t_mask)
            pooled.append((masked_mean(t, t_mask) + masked_mean(s, s_mask)) / 2)
        c = torch.cat(pooled, dim=-1)
        g = self.norm(self.drop(torch.relu(self.w4(c))) + c)
        return self.w5(g)


class CMAHead(Head):
    """The cross-modal attention paper's system on frozen features (``heads/cma.py``): audio
    feature encoder on the speech stream, projection of the text stream, CMA-1 and CMA-2,
    statistics pooling, concatenation, classifier."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, proj: int = 256, dropout: float = 0.2,
                 heads: int = 8, ff: int = 256, text: str = "T", weighting: str = "none",
                 block: str = "transformer"):
        super().__init__(dims, keys, weighting)
        speech = [k for k in keys if k != text]
        if text not in keys or len(speech) != 1:
            raise ValueError(f"cma needs the text stream {text!r} and exactly one speech stream, found {list(keys)}")
        self.model = CMAModel(dims[speech[0]][1], dims[text][1], n_classes, proj, heads, ff, dropout,
                              audio=speech[0], text=text, block=block)

    def fuse(self, streams: Padded) -> torch.Tensor:
        return self.model.fuse(streams)


class UnimodalCMAHead(Head):
    """The cross-modal attention paper's unimodal systems on frozen features: ``cnn-blstm`` (audio
    feature encoder, statistics pooling, classifier) on a speech stream, ``proj-stats``
    (projection, statistics pooling, classifier) on any stream (the paper: text)."""

    def __init__(self, dims: Dims, keys: Sequence[str], n_classes: int, kind: str, proj: int = 256,
                 dropout: float = 0.2, weighting: str = "none"):
        super().__init__(dims, keys, weighting)
        if len(keys) != 1:
            raise ValueError(f"the {kind} head takes one stream, found {list(keys)}")
        k = keys[0]
        self.model = AudioOnlyModel(dims[k][1], n_classes, proj, dropout, key=k) if kind == "cnn-blstm" \
            else TextOnlyModel(dims[k][1], n_classes, proj, key=k)

    def fuse(self, streams: Padded) -> torch.Tensor:
        return self.model.fuse(streams)


FUSIONS = ("none", "late", "concat", "coattention", "cma")


def default_lr(fusion: str, head: str) -> float:
    """The protocol's learning rate: 1e-3 feed-forward heads, 5e-5 attention heads, 1e-5 the
    cross-modal attention paper's systems."""
    return head_defaults(fusion, head)["lr"]


def build_head(fusion: str, dims: Dims, keys: Sequence[str], n_classes: int, head: str = "linear",
               hidden: int | None = None, dropout: float = PROTOCOL["dropout"], *, proj: int | None = None,
               heads: int | None = None, ff: int | None = None, depth: int | None = None,
               weighting: str | None = None, cma_block: str = "transformer") -> Head:
    """The head for a ``train-head`` configuration. ``fusion``: none (one stream), late, concat,
    coattention, cma; ``head``: the branch of none/late fusion (linear, transformer; with none also
    cnn-blstm and proj-stats). Options left at ``None`` take ``HEAD_DEFAULTS`` (heads/options.py);
    ``cma_block``: the reading of cma's attention block (``heads.cma.CMA_BLOCKS``)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}, found {fusion!r}")
    if head not in HEAD_NAMES:
        raise ValueError(f"head must be one of {list(HEAD_NAMES)}, found {head!r}")
    d = head_defaults(fusion, head)
    pick = lambda name, v: d[name] if v is None else v  # noqa: E731
    hidden, proj, heads, depth, weighting = (pick("hidden", hidden), pick("proj", proj), pick("heads", heads),
                                             pick("depth", depth), pick("weighting", weighting))
    ff = ff if ff is not None else d["ff"]   # None: ff_mult × the block's width
    if fusion in ("none", "late"):
        if fusion == "none" and len(keys) != 1:
            raise ValueError(f"--fusion none trains one stream, found {list(keys)}")
        if head in ("cnn-blstm", "proj-stats"):
            if fusion != "none":
                raise ValueError(f"the {head} head is a unimodal system: use it with fusion none")
            return UnimodalCMAHead(dims, keys, n_classes, head, proj, dropout, weighting)
        sizes = {} if head == "linear" else {"depth": depth, "heads": heads, "proj": proj, "ff": ff}
        return LateFusion(dims, keys, n_classes, head, hidden, dropout, weighting, **sizes)
    if fusion == "concat":
        return ConcatFusion(dims, keys, n_classes, hidden, dropout, proj=proj, weighting=weighting)
    if fusion == "coattention":
        return CoattentionFusion(dims, keys, n_classes, dropout, depth, heads, proj, ff, weighting=weighting)
    return CMAHead(dims, keys, n_classes, proj, dropout, heads, ff, weighting=weighting, block=cma_block)
