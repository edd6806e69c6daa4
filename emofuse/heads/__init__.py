"""Heads: pure tensor functions (``functional``) under small Modules (layers, branches, cma, fusion)."""

from .branches import LinearBranch, TransformerBranch
from .cma import (CMA_BLOCKS, AudioFeatureEncoder, AudioOnlyModel, CMAFusion, CMAModel, CrossAttention, TextOnlyModel,
                  TextProjection)
from .fusion import (CMAHead, CoattentionFusion, ConcatFusion, FUSIONS, Head, LateFusion, UnimodalCMAHead,
                     build_head, default_lr)
from .layers import LayerWeighting, MaskedBatchNorm1d, SingleLayer
from .options import HEAD_DEFAULTS, HEAD_NAMES, head_defaults

__all__ = ["LinearBranch", "TransformerBranch", "CMA_BLOCKS", "AudioFeatureEncoder", "AudioOnlyModel", "CMAFusion",
           "CMAModel", "CrossAttention", "TextOnlyModel", "TextProjection", "CMAHead", "CoattentionFusion",
           "ConcatFusion", "FUSIONS", "Head", "LateFusion", "UnimodalCMAHead", "build_head", "default_lr",
           "LayerWeighting", "MaskedBatchNorm1d", "SingleLayer", "HEAD_DEFAULTS", "HEAD_NAMES", "head_defaults"]
