"""``run_extract``: one process, or under torchrun every rank a shard of one global plan, merged
by rank 0 into the requested store (bit-identical to a single process with the same threads)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict
from typing import Iterator

from ...devices import rank_device
from ...store import merge_stores, remove_store, store_bytes
from .config import ExtractConfig
from .job import extract_into
from .skipped import skipped_tsv_path, write_skipped_tsv
from .summary import ExtractSummary

log = logging.getLogger(__name__)


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    """Under torchrun only rank 0 speaks: the other ranks' extraction messages are dropped (the
    setting of this process, a torchrun worker, is restored on the way out)."""
    logger = logging.getLogger(__package__)
    before = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def run_extract(cfg: ExtractConfig, background: bool | None = None) -> ExtractSummary:
    """Extract under torchrun (each rank a shard, merged by rank 0) or in one process.
    ``background``: store commits and audio reads in background threads (None: when the encoder
    runs on a GPU; forcing it on a CPU gives the same store, more slowly)."""
    dist = torchrun_rank()
    if dist is None:
        return extract_into(cfg, cfg.out, background=background)
    import torch
    import torch.distributed as td

    rank, world, local = dist
    dev = rank_device(cfg.device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    device = str(dev)
    td.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        shard_dir = cfg.out + ".shards"
        os.makedirs(shard_dir, exist_ok=True)
        shard_path = os.path.join(shard_dir, f"rank{rank}-of-{world}.h5")
        sub = ExtractConfig(**{**asdict(cfg), "shard": f"{rank}/{world}", "device": device})
        with _silenced(rank != 0):
            summary = extract_into(sub, shard_path, main_store=cfg.out, background=background)
        td.barrier()
        if rank == 0:
            shards = [os.path.join(shard_dir, f"rank{r}-of-{world}.h5") for r in range(world)]
            t0 = time.perf_counter()
            merge_stores(cfg.out, shards, update_corpus=cfg.update_corpus)
            summary.time_finalize += time.perf_counter() - t0
            for s in shards:  # their parts live on as hard links in the merged store's folder
                remove_store(s)
            os.rmdir(shard_dir)
            summary.store = cfg.out
            summary.store_bytes = store_bytes(cfg.out)
            summary.skipped_tsv = write_skipped_tsv(cfg.out, skipped_tsv_path(cfg.out))
            log.info(f"merged {world} rank shards into {cfg.out}")
        td.barrier()
        return summary
    finally:
        td.destroy_process_group()
