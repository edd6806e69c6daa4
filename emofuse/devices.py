"""``--device`` resolution, the same for every stage (extraction, training, fine-tuning)."""

from __future__ import annotations

import logging

import torch

from .errors import EmofuseError

log = logging.getLogger(__name__)


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


def rank_device(spec: str, local_rank: int) -> torch.device:
    """The device of one torchrun process. A GPU request (``auto`` on a GPU machine, ``cuda``,
    ``cuda:N``) means this process's own GPU, ``cuda:<LOCAL_RANK>``, the torchrun convention of
    one process per GPU: a fixed ``cuda:N`` would put every process of the node on one GPU. An
    explicit other index is overridden, with one warning from the node's first process; more
    processes on a node than it has GPUs is one sentence. ``cpu`` stays ``cpu``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if not spec.startswith("cuda"):
        return resolve_device(spec)
    resolve_device(spec.split(":")[0])   # the sentence when torch sees no GPU at all
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise EmofuseError(f"torchrun started local rank {local_rank}, but this machine has {n} CUDA device(s); "
                           f"start at most {n} process(es) per node (--nproc-per-node {n})")
    if spec not in ("cuda", f"cuda:{local_rank}") and local_rank == 0:
        log.warning(f"--device {spec} under torchrun: each process uses its own GPU (cuda:<LOCAL_RANK>), "
                    "as with --device cuda")
    return torch.device("cuda", local_rank)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the device: to a GPU through
    page-locked memory, asynchronously (a copy from ordinary pageable memory waits for every kernel
    queued before it). Elsewhere a plain ``.to``."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def bf16_autocast(device, enabled: bool):
    """bfloat16 autocast on ``device``'s type when ``enabled`` (``--bf16``), else a context that
    changes nothing: the one way train-head, its stacked runs, predict and finetune switch it on."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def gpu_free_bytes(device: torch.device) -> int:
    """Bytes a new allocation on GPU ``device`` can use: what the driver reports free plus what
    torch's caching allocator holds reserved but unused (freed tensors it keeps for reuse, which
    ``mem_get_info`` counts as taken)."""
    free = torch.cuda.mem_get_info(device)[0]
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
