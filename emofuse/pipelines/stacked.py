"""Many runs of one configuration in one pass (``train-head --runs-at-once``): the (repeat, fold)
runs' heads stacked along a run axis (``heads/stacked.py``), every step advancing each unfinished
run on its own batch of its own fold, each run with its own validation, early stopping,
learning-rate schedule and best checkpoint. Design and guarantees: ``docs/stacked-training.md``.

A run here draws what it draws trained alone (``train.train_one``): the same initial weights
(built under the same seed), the same batch order (its own generator), and on a CPU the same
dropout masks (its own generator, continuing the state its initialisation left). Only the order
of floating-point sums differs (batched matrix products over padded batches).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.func import stack_module_state

from ..devices import bf16_autocast, gpu_free_bytes, to_device
from ..heads.stacked import StackedHead, Step
from .metrics import scores
from .protocol import NO_EPOCH, epoch_order, epoch_score, utterance_rows


@dataclass
class Job:
    """One (repeat, fold) run to train: its seed, its utterance indices and its normaliser."""

    key: object
    seed: int
    train: np.ndarray
    val: np.ndarray
    norm: dict | None


class StackedAdam:
    """Adam over stacked parameters (run axis first), element for element the arithmetic of
    ``torch.optim.Adam``'s single-tensor path, with a step count and a learning rate per run."""

    def __init__(self, params: dict[str, torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.p = params
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        R = next(iter(params.values())).shape[0]
        self.steps, self.lr, self.betas, self.eps = [0] * R, [lr] * R, betas, eps

    def keep(self, runs: Sequence[int]) -> None:
        """Drop every run not in ``runs`` (finished runs leave the stack)."""
        idx = torch.tensor(list(runs), dtype=torch.long, device=next(iter(self.p.values())).device)
        for d in (self.p, self.m, self.v):
            for n in d:
                d[n] = d[n].index_select(0, idx).detach()
        for n in self.p:
            self.p[n].requires_grad_(True)
        self.steps = [self.steps[i] for i in runs]
        self.lr = [self.lr[i] for i in runs]

    @torch.no_grad()
    def step(self, active: Sequence[int]) -> None:
        b1, b2 = self.betas
        R = len(self.steps)
        full = len(active) == R
        for r in active:
            self.steps[r] += 1
        step_size = [-(self.lr[r] / (1 - b1 ** self.steps[r])) for r in active]
        bc2 = [(1 - b2 ** self.steps[r]) ** 0.5 for r in active]
        first = next(iter(self.p.values()))
        idx = None if full else to_device(torch.tensor(list(active), dtype=torch.long), first.device)
        scal = to_device(torch.tensor([step_size, bc2], dtype=first.dtype), first.device)   # one copy per step
        for n, p in self.p.items():
            g = p.grad
            if g is None:
                continue
            view = (len(active),) + (1,) * (p.dim() - 1)
            ss, c2 = scal[0].view(view), scal[1].view(view)
            if full:
                m, v, x = self.m[n], self.v[n], p
            else:
                g, m, v, x = g[idx], self.m[n][idx], self.v[n][idx], p.detach()[idx]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / c2).add_(self.eps)
            x.add_(ss * m / denom)
            if not full:
                self.m[n][idx], self.v[n][idx] = m, v
                p.detach()[idx] = x


def _batch_all(data, idxs: Sequence[np.ndarray], jobs: Sequence[Job], device) -> tuple[list, dict]:
    """Every run's batch (``TrainData.batch_runs``), and its sequence lengths per key and run
    (host arrays, for ``Step``)."""
    lens = {k: [src.lengths[idx] for idx in idxs] for k, src in data.sources.items()}
    return data.batch_runs(idxs, device, [j.norm for j in jobs]), lens


def train_stacked(cfg, data, jobs: Sequence[Job], device: torch.device, timer,
                  on_done: Callable[[Job, torch.nn.Module, list, int], None],
                  progress: Callable[[str], None] = lambda s: None, packed_first: bool | None = None,
                  batched_encode: bool | None = None, fused_attention: bool | None = None) -> None:
    """Train ``jobs`` together; as each run stops (patience or the last epoch), ``on_done(job,
    model at its best epoch, history, best epoch)`` receives it as ``train_one`` would return it.
    ``packed_first``: linear branches' first layer run by run on packed rows (default: on a CPU);
    ``batched_encode``: every run's layer sum from one read of the held rows (default: on a GPU);
    ``fused_attention``: attention through ``scaled_dot_product_attention`` (default: on a GPU)."""
    from .loop import BatchClock

    n_classes = len(data.classes)
    models, gens = [], []
    for j in jobs:   # the lone run's initialisation, then its dropout generator where the init left the RNG
        torch.manual_seed(j.seed)
        models.append(cfg.build(data.dims, n_classes).to(device))
        if device.type == "cpu":
            g = torch.Generator()
            g.set_state(torch.get_rng_state())
        else:
            g = torch.Generator(device=device).manual_seed(j.seed)
        gens.append(g)
    template = copy.deepcopy(models[0]).to("meta")   # structure only (names, sizes, attention heads)
    head = StackedHead(template, cfg.fusion, cfg.head,
                       packed_first=device.type == "cpu" if packed_first is None else packed_first,
                       batched_encode=device.type == "cuda" if batched_encode is None else batched_encode,
                       fused_attention=fused_attention)
    params, _ = stack_module_state(models)
    models = [m.to("cpu") for m in models]   # the stack holds the weights now; a run's head returns at its end
    opt = StackedAdam(params, cfg.resolved_lr())
    scheduler = cfg.resolved()["scheduler"]
    scheds = [None if scheduler == "none" else torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.resolved_lr()),
        mode="min" if scheduler == "plateau" else "max", factor=cfg.lr_factor, patience=cfg.lr_patience)
        for _ in jobs]
    orders = [torch.Generator().manual_seed(j.seed) for j in jobs]
    lengths = utterance_rows(data) if cfg.group_by_length else None
    y_all = torch.from_numpy(data.y)
    alive = list(range(len(jobs)))        # job numbers still training, in stack order
    best = [None] * len(jobs)
    best_score = [NO_EPOCH] * len(jobs)
    best_epoch = [-1] * len(jobs)
    history = [[] for _ in jobs]
    for epoch in range(cfg.epochs):
        if not alive:
            break
        t_epoch = time.perf_counter()
        for i in alive:   # (a run that stopped has handed its head on: models[i] is None)
            models[i].train()
        run_orders = [epoch_order(jobs[i].train, orders[i], cfg.batch_size, lengths) for i in alive]
        n_steps = [(len(o) + cfg.batch_size - 1) // cfg.batch_size for o in run_orders]
        # summed losses stay on the device (float64: the sums Python floats make), read once per epoch
        totals, counts = torch.zeros(len(alive), dtype=torch.float64, device=device), [0] * len(alive)
        clock = BatchClock(device, timer)
        for k in range(max(n_steps)):
            active = [a for a in range(len(alive)) if k < n_steps[a]]
            t0 = clock.mark()
            idxs = [run_orders[a][k * cfg.batch_size:(k + 1) * cfg.batch_size] for a in active]
            sub = [jobs[alive[a]] for a in active]
            inputs, lens = _batch_all(data, idxs, sub, device)
            s = Step(B=[len(i) for i in idxs], lengths=lens, gens=[gens[alive[a]] for a in active], p=cfg.dropout,
                     training=True)
            y = torch.zeros((len(active), s.Bmax), dtype=torch.long)
            valid = torch.zeros((len(active), s.Bmax))
            for a, idx in enumerate(idxs):
                y[a, :len(idx)] = y_all[idx]
                valid[a, :len(idx)] = 1.0 / len(idx)
            y, valid = to_device(y, device), to_device(valid, device)
            t1 = clock.mark()
            if len(active) == len(alive):
                P = opt.p
            else:
                sel = to_device(torch.tensor(active), device)
                P = {n: p.index_select(0, sel) for n, p in opt.p.items()}
            with bf16_autocast(device, cfg.bf16):
                logits = head.forward(P, inputs, s)
            ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, n_classes), y.reshape(-1),
                                                   reduction="none").view(len(active), s.Bmax)
            per_run = (ce * valid).sum(1)
            for n in opt.p:
                opt.p[n].grad = None
            per_run.sum().backward()
            opt.step(active)
            sizes = [len(i) for i in idxs]
            at = to_device(torch.tensor(active), device)
            totals[at] += per_run.detach().double() * to_device(torch.tensor(sizes, dtype=torch.float64), device)
            for a, size in zip(active, sizes):
                counts[a] += size
            clock.add(t0, t1, clock.mark())
        totals = totals.tolist()
        clock.flush()
        val_logits = _predict_stacked(head, opt.p, data, [jobs[i] for i in alive], device, timer, bf16=cfg.bf16)
        seconds = (time.perf_counter() - t_epoch) / len(alive)
        done = []
        for a, i in enumerate(alive):
            j, logits = jobs[i], val_logits[a]
            val = scores(data.y[j.val], logits.argmax(1), n_classes)
            val_loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), y_all[j.val]))
            history[i].append({"epoch": epoch, "train_loss": totals[a] / max(counts[a], 1), "val_loss": val_loss,
                               "val_ua": val["ua"], "lr": opt.lr[a], "seconds": round(seconds, 4)})
            score = epoch_score(val["ua"], val_loss)
            if score > best_score[i]:
                best[i] = {n: p[a].detach().to("cpu", copy=True) for n, p in opt.p.items()}
                best_score[i], best_epoch[i] = score, epoch
            elif epoch - best_epoch[i] >= cfg.patience:
                done.append(a)
                continue
            if scheds[i] is not None:
                scheds[i].step(val_loss if scheduler == "plateau" else val["ua"])
                opt.lr[a] = scheds[i].optimizer.param_groups[0]["lr"]
            if epoch == cfg.epochs - 1:
                done.append(a)
        progress(f"epoch {epoch + 1}: {len(alive)} runs, {len(alive) - len(done)} go on")
        for a in done:
            i = alive[a]
            model = models[i]
            if best[i] is not None:   # none: no finite epoch (check_trained refuses the run)
                model.load_state_dict(best[i])
            on_done(jobs[i], model.to(device), history[i], best_epoch[i])
            best[i] = models[i] = None
        if done:
            keep = [a for a in range(len(alive)) if a not in done]
            alive = [alive[a] for a in keep]
            if alive:
                opt.keep(keep)


@torch.no_grad()
def _predict_stacked(head: StackedHead, P, data, jobs: Sequence[Job], device, timer, batch: int = 64,
                     bf16: bool = False) -> list:
    """Validation logits of every run on its own validation utterances, in batches of ``batch``
    as ``train._predict`` groups them (under bfloat16 autocast with ``bf16``); (n_val, C) float32
    numpy arrays, one per run."""
    from .loop import BatchClock

    out = [[] for _ in jobs]
    clock = BatchClock(device, timer)
    longest = max(len(j.val) for j in jobs)
    for k in range(0, longest, batch):
        active = [a for a, j in enumerate(jobs) if k < len(j.val)]
        t0 = clock.mark()
        idxs = [jobs[a].val[k:k + batch] for a in active]
        inputs, lens = _batch_all(data, idxs, [jobs[a] for a in active], device)
        s = Step(B=[len(i) for i in idxs], lengths=lens, gens=[], p=0.0, training=False)
        t1 = clock.mark()
        Pa = P if len(active) == len(jobs) else {
            n: p.index_select(0, to_device(torch.tensor(active), p.device)) for n, p in P.items()}
        with bf16_autocast(device, bf16):
            logits = head.forward(Pa, inputs, s).float()
        for a, idx in zip(range(len(active)), idxs):
            out[active[a]].append(logits[a, :len(idx)])
        clock.add(t0, t1, clock.mark())
    logits = [torch.cat(o).cpu().numpy() for o in out]   # to the host once, at the end
    clock.flush()
    return logits


def probe_step(cfg, data, device: torch.device, runs: int = 2) -> int:
    """One stacked training step of ``runs`` throwaway heads, each given the ``batch_size``
    utterances with the most rows (a run's worst batch). Draws no random number a run uses (the
    generators are forked). Returns the bytes of the heads' parameters, gradients and Adam moments."""
    rows = sum(src.lengths for src in data.sources.values())
    worst = np.sort(np.argsort(-rows, kind="stable")[:cfg.batch_size])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        models = [cfg.build(data.dims, len(data.classes)).to(device) for _ in range(runs)]
        head = StackedHead(copy.deepcopy(models[0]), cfg.fusion, cfg.head, packed_first=device.type == "cpu",
                           batched_encode=device.type == "cuda")
        params, _ = stack_module_state(models)
        inputs, lens = _batch_all(data, [worst] * runs, [Job(None, 0, worst, worst, None)] * runs, device)
        gen = torch.Generator(device=device).manual_seed(0)
        s = Step(B=[len(worst)] * runs, lengths=lens, gens=[gen] * runs, p=cfg.dropout, training=True)
        y = torch.from_numpy(data.y[worst]).to(device).repeat(runs)
        with bf16_autocast(device, cfg.bf16):
            logits = head.forward(params, inputs, s)
        torch.nn.functional.cross_entropy(logits.float().reshape(runs * len(worst), -1), y).backward()
        return 4 * sum(p.numel() * p.element_size() for p in params.values())


def step_memory(cfg, data, device: torch.device, runs: int = 2) -> int:
    """Bytes one run adds to a stacked training step at its worst (``probe_step``: the peak
    allocation above what was held before, plus Adam's moments, divided by ``runs``); 0 where the
    device keeps no allocation statistics."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    state = probe_step(cfg, data, device, runs)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base + state // 2) // runs


def fit_runs(cfg, data, device: torch.device, n_runs: int, share: float = 0.8) -> tuple[int, str]:
    """How many runs to stack on ``device`` by default: all of them where ``share`` of the free
    memory holds their worst step (``step_memory``), else as many as it holds (at least one).
    Returns (number, a sentence saying why)."""
    per_run = step_memory(cfg, data, device)
    if per_run <= 0:
        return n_runs, "every run"
    free = gpu_free_bytes(device)
    n = int(max(1, min(n_runs, (free * share) // per_run)))
    return n, (f"a run's worst step takes {per_run / 2**30:.2f} GiB and {free / 2**30:.1f} GiB are free: "
               f"{n} of {n_runs} runs at a time")
