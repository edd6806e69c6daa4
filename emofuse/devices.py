"""``--device`` resolution, the same for every stage (extraction, training, fine-tuning)."""

from __future__ import annotations

import torch

from .errors import EmofuseError


def resolve_device(spec: str) -> torch.device:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.
    A CUDA device always comes back with its index (``cuda`` → ``cuda:<current>``), the way
    tensors report theirs: ``torch.device("cuda") == torch.device("cuda:0")`` is False, and every
    "is it already there" test would fail. A CUDA device on a machine without one, a GPU index
    beyond those present, or a spec torch does not know, is one sentence."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise EmofuseError(f"--device {spec} was asked for, but torch {torch.__version__} sees no CUDA device "
                           "on this machine; use --device cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise EmofuseError(f"--device must be auto, cpu, cuda or cuda:N, found {spec!r}") from None
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise EmofuseError(f"--device {spec} was asked for, but this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the device: to a GPU through
    page-locked memory, asynchronously (a copy from ordinary pageable memory waits for every kernel
    queued before it). Elsewhere a plain ``.to``."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def gpu_free_bytes(device: torch.device) -> int:
    """Bytes a new allocation on GPU ``device`` can use: what the driver reports free plus what
    torch's caching allocator holds reserved but unused (freed tensors it keeps for reuse, which
    ``mem_get_info`` counts as taken)."""
    free = torch.cuda.mem_get_info(device)[0]
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
