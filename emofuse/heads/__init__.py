"""Heads: pure tensor functions (``functional``) under small Modules (layers, branches, fusion)."""

from .branches import LinearBranch, TransformerBranch
from .fusion import (CMAHead, CoattentionFusion, ConcatFusion, FUSIONS, Head, LateFusion, build_head, default_lr)
from .layers import LayerWeighting, MaskedBatchNorm1d

__all__ = ["LinearBranch", "TransformerBranch", "CMAHead", "CoattentionFusion", "ConcatFusion", "FUSIONS", "Head",
           "LateFusion", "build_head", "default_lr", "LayerWeighting", "MaskedBatchNorm1d"]
