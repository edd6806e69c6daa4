"""The training loop of one run: ``train_one`` (early stopping on validation UA, the learning-rate
schedule) and ``_predict`` (logits in batches), with the time they spend reading data and computing."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..devices import bf16_autocast, to_device
from .data import TrainData
from .metrics import scores
from .protocol import NO_EPOCH, epoch_order, epoch_score, utterance_rows

if TYPE_CHECKING:
    from .train import TrainConfig


@dataclass
class Timer:
    """Seconds spent getting batches ready (``data``) and in the model (``compute``)."""

    data: float = 0.0
    compute: float = 0.0


class BatchClock:
    """The data/compute split of each batch without synchronising the host with the device.

    On a CPU the host clock is exact (the work is done when the call returns). On a GPU each
    boundary is a CUDA event recorded in the stream; the events are read once, by ``flush`` at
    the end of an epoch or prediction, so the GPU runs ahead of the host as it would untimed.
    The GPU figures are times on the device's timeline between the events.
    """

    def __init__(self, device: torch.device, timer: Timer):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.timer = timer
        self.pending: list[tuple] = []

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record(torch.cuda.current_stream(self.device))   # the run's GPU, whichever is current
            return e
        return time.perf_counter()

    def add(self, t0, t1, t2) -> None:
        """One batch: data from ``t0`` to ``t1``, compute from ``t1`` to ``t2``."""
        if self.cuda:
            self.pending.append((t0, t1, t2))
        else:
            self.timer.data += t1 - t0
            self.timer.compute += t2 - t1

    def flush(self) -> None:
        """Read the recorded events (one wait, for the last of them)."""
        if self.pending:
            self.pending[-1][2].synchronize()
            for t0, t1, t2 in self.pending:
                self.timer.data += t0.elapsed_time(t1) / 1000
                self.timer.compute += t1.elapsed_time(t2) / 1000
            self.pending.clear()


def _predict(model, data: TrainData, idx: np.ndarray, device, norm, timer: Timer, batch: int = 64,
             bf16: bool = False) -> np.ndarray:
    """Logits (N, C) float32 of the utterances ``idx``, in batches of ``batch`` (under bfloat16
    autocast with ``bf16``, as the run trained); copied to the host once, at the end."""
    model.eval()
    out = []
    clock = BatchClock(device, timer)
    with torch.no_grad(), bf16_autocast(device, bf16):
        for k in range(0, len(idx), batch):
            t0 = clock.mark()
            inputs = data.batch(idx[k:k + batch], device, norm)
            t1 = clock.mark()
            out.append(model(inputs).float())
            clock.add(t0, t1, clock.mark())
    logits = torch.cat(out).cpu().numpy()
    clock.flush()
    return logits


def train_one(cfg: TrainConfig, data: TrainData, train_idx: np.ndarray, val_idx: np.ndarray, seed: int,
              device: torch.device, norm, timer: Timer, progress: Callable[[str], None] = lambda s: None) -> tuple:
    """Train one head with early stopping on validation UA (ties: lower validation loss). Returns
    (model at its best epoch, history, best epoch); each history entry records the learning rate."""
    torch.manual_seed(seed)
    model = cfg.build(data.dims, len(data.classes)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.resolved_lr())
    scheduler = cfg.resolved()["scheduler"]
    sched = None if scheduler == "none" else torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min" if scheduler == "plateau" else "max", factor=cfg.lr_factor, patience=cfg.lr_patience)
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.from_numpy(data.y)
    lengths = utterance_rows(data) if cfg.group_by_length else None
    best, best_score, best_epoch, history = None, NO_EPOCH, -1, []
    for epoch in range(cfg.epochs):
        t_epoch = time.perf_counter()
        model.train()
        order = epoch_order(train_idx, gen, cfg.batch_size, lengths)
        # the summed training loss stays on the device (float64: the same sums as Python floats) and
        # is read once per epoch; no batch waits for the device
        total, n = torch.zeros((), dtype=torch.float64, device=device), 0
        clock = BatchClock(device, timer)
        for k in range(0, len(order), cfg.batch_size):
            idx = order[k:k + cfg.batch_size]
            t0 = clock.mark()
            inputs = data.batch(idx, device, norm)
            y = to_device(y_all[idx], device)   # pinned, asynchronous: no wait for the device
            t1 = clock.mark()
            opt.zero_grad(set_to_none=True)
            with bf16_autocast(device, cfg.bf16):
                logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)   # float32 (a no-op without --bf16)
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)
            n += len(idx)
            clock.add(t0, t1, clock.mark())
        total = float(total)
        clock.flush()
        logits = _predict(model, data, val_idx, device, norm, timer, bf16=cfg.bf16)
        val = scores(data.y[val_idx], logits.argmax(1), len(data.classes))
        val_loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), y_all[val_idx]))
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss, "val_ua": val["ua"],
                        "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t_epoch, 4)})
        progress(f"epoch {epoch + 1} val UA {val['ua']:.1f}")
        score = epoch_score(val["ua"], val_loss)   # validation UA, ties broken by validation loss
        if score > best_score:
            best, best_score, best_epoch = copy.deepcopy(model.state_dict()), score, epoch
        elif epoch - best_epoch >= cfg.patience:
            break
        if sched is not None:   # decay on validation loss (plateau) or UA (plateau-ua); never the test set
            sched.step(val_loss if scheduler == "plateau" else val["ua"])
    if best is not None:   # none: no finite epoch (check_trained refuses the run)
        model.load_state_dict(best)
    return model, history, best_epoch
