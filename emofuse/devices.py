"""``--device`` resolution, the same for every stage (extraction, training, fine-tuning)."""

from __future__ import annotations

import torch

from .errors import EmofuseError


def resolve_device(spec: str) -> torch.device:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.
    A CUDA device on a machine without one, or a spec torch does not know, is one sentence."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise EmofuseError(f"--device {spec} was asked for, but torch {torch.__version__} sees no CUDA device "
                           "on this machine; use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise EmofuseError(f"--device must be auto, cpu, cuda or cuda:N, found {spec!r}") from None
