"""Heads carrying a run axis: R copies of one head (same structure, each its own weights) applied
together, each to its own batch. Pure tensor functions over the stacked parameters that
``torch.func.stack_module_state`` makes of R per-run heads (every parameter gains a leading run
axis R); ``docs/stacked-training.md`` gives the design.

Every run's batch is padded to the largest batch and the longest sequence of the step (real
positions are masked exactly as a lone head masks its own padding), so the arithmetic is the
lone head's up to the order of floating-point sums. Dropout is drawn per run from the run's own
generator, at the run's own shape and in the lone head's order, then padded: a run's masks do not
depend on which runs share its pass, and on a CPU they are the masks the lone head draws.

Stackable: ``none``/``late`` with ``linear``, ``transformer`` or ``proj-stats`` branches,
``concat`` and ``coattention``. Not stackable (an LSTM): ``cma`` and ``cnn-blstm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .functional import key_padding, pad_rows, weight_layers



def stackable(fusion: str, head: str) -> bool:
    """Whether the heads of this configuration can be trained with a run axis (no LSTM inside)."""
    if fusion in ("none", "late"):
        return head in ("linear", "transformer", "proj-stats")
    return fusion in ("concat", "coattention")


@dataclass
class Step:
    """The shapes of one stacked step: per run its batch size and, per key, its utterances'
    sequence lengths (host arrays: the step's shapes are known without asking the device), each
    run's longest sequence and the padded sizes; the runs' dropout generators and whether dropout
    is on."""

    B: list[int]
    lengths: dict[str, list[np.ndarray]]
    gens: list[torch.Generator]
    p: float
    training: bool
    T: dict[str, list[int]] = field(init=False)   # per key and run: the longest sequence (at least 1)
    Bmax: int = field(init=False)
    Tmax: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.T = {k: [max(1, int(x.max())) if len(x) else 1 for x in v] for k, v in self.lengths.items()}
        self.Bmax = max(self.B)
        self.Tmax = {k: max(v) for k, v in self.T.items()}

    @property
    def R(self) -> int:
        return len(self.B)

    def b_axis(self):
        return [(self.B, self.Bmax)]

    def t_axis(self, key: str):
        return [(self.T[key], self.Tmax[key])]


def _place(x: torch.Tensor, axes: Sequence, r: int) -> torch.Tensor:
    """One run's tensor at its own shape → the padded shape (zeros after each segment)."""
    for d, ax in enumerate(axes):
        if ax is None:
            continue
        sizes = [seg[0][r] for seg in ax]
        parts = torch.split(x, sizes, d) if len(ax) > 1 else [x]
        out = []
        for part, (_, padded) in zip(parts, ax):
            if padded > part.shape[d]:
                shape = list(part.shape)
                shape[d] = padded - part.shape[d]
                part = torch.cat([part, part.new_zeros(shape)], d)
            out.append(part)
        x = torch.cat(out, d) if len(out) > 1 else out[0]
    return x


def dropout(x: torch.Tensor, s: Step, axes: Sequence, time_major: bool = False) -> torch.Tensor:
    """Dropout of x (R, …) whose axes after R are described by ``axes`` (None: every run has the
    full axis). Run r's mask is drawn from its own generator at its own shape, laid out in memory
    as the lone head's input is (``time_major``: the (T, B, E) memory of an attention output
    returned batch-first), so the generator fills it in the same order."""
    if not s.training or s.p == 0:
        return x
    mask = torch.empty_like(x)   # filled run by run: one padded mask at a time besides it, not R and a stack
    for r in range(s.R):
        shape = [sum(seg[0][r] for seg in ax) if ax is not None else x.shape[1 + d] for d, ax in enumerate(axes)]
        if time_major:
            noise = torch.empty([shape[1], shape[0]] + shape[2:], device=x.device).transpose(0, 1)
        else:
            noise = torch.empty(shape, device=x.device)
        noise.bernoulli_(1 - s.p, generator=s.gens[r]).div_(1 - s.p)
        mask[r] = _place(noise, axes, r)
    return x * mask


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (R, …, in), w (R, out, in), b (R, out) → (R, …, out)."""
    R, shape = x.shape[0], x.shape[1:-1]
    flat = x.reshape(R, -1, x.shape[-1])
    y = torch.bmm(flat, w.transpose(1, 2)) if b is None else torch.baddbmm(b[:, None, :], flat, w.transpose(1, 2))
    return y.reshape((R,) + tuple(shape) + (w.shape[1],))


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis with per-run affine w, b (R, D)."""
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(view) + b.view(view)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (R, B, T, D), mask (R, B, T) → (R, B, D)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


def stats_pool(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = masked_mean(x, mask)
    m = mask.to(x.dtype).unsqueeze(-1)
    var = (((x - mean.unsqueeze(-2)) * m) ** 2).sum(-2) / m.sum(-2).clamp(min=1.0)
    return torch.cat([mean, (var + eps).sqrt()], dim=-1)


#: bytes of float32 rows per chunk of the all-runs layer sum (a GPU: few, large kernels)
STACK_CHUNK_BYTES = 512 << 20


class _AllRunsLayerSum(torch.autograd.Function):
    """Eq. 1's weighted sum for every run's rows at once, read from the one held table:
    out[n] = Σ_l w[run[n], l] · x[n, l], x = table[index] (standardised per row when a normaliser
    is given), never materialised whole; the backward pass reads the rows again. In float32
    under ``--bf16`` too, as the lone head's sum (``weight_layers``): it is bound by reading the
    rows, not by arithmetic, and a run's Eq. 1 then rounds alike stacked or alone."""

    @staticmethod
    def forward(ctx, w, table, index, run, mean, std, group):
        n, (L, D) = len(index), table.shape[1:]
        step = max(1, STACK_CHUNK_BYTES // (4 * L * D))
        out = torch.empty((n, D), dtype=w.dtype, device=w.device)
        with torch.autocast(w.device.type, enabled=False):
            for a in range(0, n, step):
                x = _rows(table, index, mean, std, group, a, a + step)
                out[a:a + step] = torch.bmm(w.index_select(0, run[a:a + step]).unsqueeze(1), x).squeeze(1)
        ctx.save_for_backward(table, index, run, mean, std, group)
        ctx.shape = w.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        table, index, run, mean, std, group = ctx.saved_tensors
        n, (L, D) = len(index), table.shape[1:]
        step = max(1, STACK_CHUNK_BYTES // (4 * L * D))
        gw = torch.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)
        for a in range(0, n, step):
            x = _rows(table, index, mean, std, group, a, a + step)
            gw.index_add_(0, run[a:a + step], torch.bmm(x, grad[a:a + step].unsqueeze(2)).squeeze(2))
        return gw, None, None, None, None, None, None


def _rows(table, index, mean, std, group, a, b):
    x = table.index_select(0, index[a:b]).float()
    if mean is not None:
        g = group[a:b]
        x = (x - mean.index_select(0, g)) / std.index_select(0, g)
    return x


def _own(axis, r: int) -> int:
    """Run r's own length along a padded sequence axis (``Step.t_axis``: one segment)."""
    ((sizes, _),) = axis
    return sizes[r]


class _generator_as_default:
    """Make ``gen`` the device's default generator for the duration (kernels such as fused
    attention draw their dropout from the default one), then hand its advanced state back to
    ``gen`` and restore the default's own. Host-side states only: nothing waits for the device."""

    def __init__(self, gen: torch.Generator, device: torch.device):
        self.gen = gen
        self.default = (torch.cuda.default_generators[device.index if device.index is not None
                                                      else torch.cuda.current_device()]
                        if device.type == "cuda" else torch.default_generator)

    def __enter__(self):
        self.saved = self.default.get_state()
        self.default.set_state(self.gen.get_state())

    def __exit__(self, *exc):
        self.gen.set_state(self.default.get_state())
        self.default.set_state(self.saved)


class StackedHead:
    """R heads of one structure (``template``) as functions of stacked parameters ``P``
    (name → (R, …)); ``forward(P, inputs, step)`` → logits (R, Bmax, C)."""

    def __init__(self, template: torch.nn.Module, fusion: str, head: str, packed_first: bool = False,
                 batched_encode: bool = False, fused_attention: bool | None = None):
        if not stackable(fusion, head):
            raise ValueError(f"--fusion {fusion} --head {head} holds an LSTM: it trains one run at a time")
        self.t, self.fusion, self.head = template, fusion, head
        self.keys = tuple(template.keys)
        # linear branches: their first (position-wise, widest) layer applied run by run to the packed
        # rows, before padding, so no padded position pays it (on a CPU, where arithmetic is the cost)
        self.packed_first = packed_first and (head == "linear" if fusion in ("none", "late") else fusion == "concat")
        # every run's layer sum from one read of the held rows (a GPU: a few kernels, not R times a few)
        self.batched_encode = batched_encode
        # attention through the fused kernel (None: on a GPU); else written out as the CPU math path
        self.fused_attention = fused_attention

    # -- inputs ----------------------------------------------------------------------------
    def encode(self, P: Mapping[str, torch.Tensor], inputs: Sequence[Mapping], key: str, s: Step,
               first: str | None = None):
        """Per run, the lone head's layer weighting (same code, same numbers), padded and stacked:
        x (R, Bmax, Tmax, D), mask (R, Bmax, Tmax). ``first``: a Linear (parameter prefix) applied
        to each run's packed rows before padding (x is then (R, Bmax, Tmax, out))."""
        learned = getattr(self.t.weighting[key], "learned", False)
        rows0 = inputs[0][key][0]
        if (self.batched_encode and first is None and hasattr(rows0, "table")
                and all(inp[key][0].table is rows0.table for inp in inputs)):
            return self._encode_all(P, inputs, key, s, learned)
        xs, ms = [], []
        for r, inp in enumerate(inputs):
            rows, lengths = inp[key]
            if learned:
                u = weight_layers(rows, torch.softmax(P[f"weighting.{key}.logits"][r], 0))
                u = F.layer_norm(u, u.shape[-1:], P[f"weighting.{key}.norm.weight"][r],
                                 P[f"weighting.{key}.norm.bias"][r], self.t.weighting[key].norm.eps)
            else:
                u = weight_layers(rows, torch.ones(1, device=P[next(iter(P))].device))
            if first is not None:
                u = F.linear(u, P[first + "weight"][r], P[first + "bias"][r])
            x, m = pad_rows(u, lengths)
            T, B = s.Tmax[key] - x.shape[1], s.Bmax - x.shape[0]
            xs.append(F.pad(x, (0, 0, 0, T, 0, B)))
            ms.append(F.pad(m, (0, T, 0, B)))
        return torch.stack(xs), torch.stack(ms)

    def _encode_all(self, P, inputs, key: str, s: Step, learned: bool):
        """``encode`` for every run at once: one gather of all runs' rows, the (R × L) weights
        applied row by row, LayerNorm with each run's affine, one scatter into the padded batch."""
        rows = [inp[key][0] for inp in inputs]
        dev = rows[0].index.device
        counts = torch.tensor([len(r.index) for r in rows])
        run = torch.repeat_interleave(torch.arange(s.R), counts).to(dev)
        index = torch.cat([r.index for r in rows])
        mean = std = group = None
        if rows[0].mean is not None:   # each run's normaliser (a fold's statistics, or per speaker)
            offs = np.cumsum([0] + [len(r.mean) for r in rows[:-1]])
            mean, std = torch.cat([r.mean for r in rows]), torch.cat([r.std for r in rows])
            group = torch.cat([(r.group if r.group is not None else torch.zeros(len(r.index), dtype=torch.long,
                                                                               device=dev)) + int(o)
                               for r, o in zip(rows, offs)])
        if learned:
            w = torch.softmax(P[f"weighting.{key}.logits"], -1)
        else:
            w = torch.ones((s.R, 1), device=dev)
        u = _AllRunsLayerSum.apply(w, rows[0].table, index, run, mean, std, group)
        if learned:
            norm = self.t.weighting[key].norm
            u = F.layer_norm(u, u.shape[-1:], eps=norm.eps) * P[f"weighting.{key}.norm.weight"].index_select(0, run) \
                + P[f"weighting.{key}.norm.bias"].index_select(0, run)
        # where each row goes in the padded (R, Bmax, Tmax) batch
        Bm, Tm, dest = s.Bmax, s.Tmax[key], []
        for r, inp in enumerate(inputs):
            lens = s.lengths[key][r]
            b = np.repeat(np.arange(len(lens)), lens)
            t = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
            dest.append(r * Bm * Tm + b * Tm + t)
        dest = torch.from_numpy(np.concatenate(dest)).to(dev)
        x = u.new_zeros((s.R * Bm * Tm, u.shape[-1])).index_copy(0, dest, u).view(s.R, Bm, Tm, -1)
        mask = torch.zeros(s.R * Bm * Tm, dtype=torch.bool, device=dev)
        mask[dest] = True
        return x, mask.view(s.R, Bm, Tm)

    def _first(self, key: str, P) -> str | None:
        if not self.packed_first:
            return None
        if self.fusion == "concat":
            return None if f"proj.{key}.weight" in P else "branch.ff.0."
        return f"branches.{key}.ff.0."

    def forward(self, P: Mapping[str, torch.Tensor], inputs: Sequence[Mapping], s: Step) -> torch.Tensor:
        firsts = {k: self._first(k, P) for k in self.keys}
        streams = {k: self.encode(P, inputs, k, s, firsts[k]) for k in self.keys}
        if self.fusion in ("none", "late"):
            if self.head == "proj-stats":
                return self._proj_stats(P, streams)
            if self.head == "linear":
                return torch.stack([self._linear_branch(P, f"branches.{k}.", *streams[k], s.t_axis(k), s,
                                                        firsts[k] is not None) for k in self.keys]).sum(0)
            return torch.stack([self._transformer_branch(P, f"branches.{k}.", *streams[k], s.t_axis(k), s)
                                for k in self.keys]).sum(0)
        if self.fusion == "concat":
            return self._concat(P, streams, s)
        return self._coattention(P, streams, s)

    # -- pieces ----------------------------------------------------------------------------
    def _ff(self, P, p: str, x, t_axis, s: Step, first_done: bool = False):
        """FeedForward: Linear, ReLU, Dropout, Linear, ReLU, Dropout on (R, B, T, ·); with
        ``first_done`` x has been through the first Linear already (``encode``)."""
        axes = (s.b_axis(), t_axis, None)
        x = dropout(torch.relu(x if first_done else linear(x, P[p + "0.weight"], P[p + "0.bias"])), s, axes)
        return dropout(torch.relu(linear(x, P[p + "3.weight"], P[p + "3.bias"])), s, axes)

    def _linear_branch(self, P, p: str, x, mask, t_axis, s: Step, first_done: bool = False):
        h = self._ff(P, p + "ff.", x, t_axis, s, first_done)
        return linear(masked_mean(h, mask), P[p + "out.weight"], P[p + "out.bias"])

    def _transformer_branch(self, P, p: str, x, mask, t_axis, s: Step):
        h = linear(x, P[p + "proj.weight"], P[p + "proj.bias"]) if p + "proj.weight" in P else x
        i = 0
        while f"{p}layers.{i}.norm1.weight" in P:
            h = self._block(P, f"{p}layers.{i}.", h, h, mask, t_axis, t_axis, s)
            i += 1
        h = self._ff(P, p + "ff.", h, t_axis, s)
        return linear(masked_mean(h, mask), P[p + "out.weight"], P[p + "out.bias"])

    def _mha(self, P, p: str, x, ctx, ctx_mask, q_axis, k_axis, s: Step):
        """nn.MultiheadAttention (batch-first, packed in-projection, key padding, dropout on the
        attention weights) as the CPU math path computes it: x (R, B, Tq, E), ctx (R, B, Tk, E)."""
        mod = self.t.get_submodule(p[:-1])
        H, E = mod.num_heads, x.shape[-1]
        w, b = P[p + "in_proj_weight"], P[p + "in_proj_bias"]
        if x is ctx:
            q, k, v = linear(x, w, b).chunk(3, -1)
        else:
            q = linear(x, w[:, :E], b[:, :E])
            k, v = linear(ctx, w[:, E:], b[:, E:]).chunk(2, -1)
        R, B, Tq, Tk = x.shape[0], x.shape[1], x.shape[2], ctx.shape[2]
        split = lambda t, T: t.reshape(R, B, T, H, E // H).transpose(2, 3)  # noqa: E731  (R, B, H, T, hd)
        q, k, v = split(q, Tq), split(k, Tk), split(v, Tk)
        if self.fused_attention if self.fused_attention is not None else x.device.type == "cuda":
            out = self._fused(q, k, v, ctx_mask, q_axis, k_axis, s, mod.dropout if s.training else 0.0)
            return linear(out.transpose(2, 3).reshape(R, B, Tq, E), P[p + "out_proj.weight"], P[p + "out_proj.bias"])
        scale = math.sqrt(1.0 / math.sqrt(E // H))
        attn = torch.matmul(q * scale, k.transpose(-2, -1) * scale)
        pad = key_padding(ctx_mask.reshape(R * B, Tk)).reshape(R, B, 1, 1, Tk)
        attn = torch.softmax(attn.masked_fill(pad, float("-inf")), -1)
        attn = dropout(attn, s, (s.b_axis(), None, q_axis, k_axis)) if s.training and mod.dropout else attn
        out = torch.matmul(attn, v).transpose(2, 3).reshape(R, B, Tq, E)
        return linear(out, P[p + "out_proj.weight"], P[p + "out_proj.bias"])

    def _fused(self, q, k, v, ctx_mask, q_axis, k_axis, s: Step, p: float) -> torch.Tensor:
        """Attention through ``scaled_dot_product_attention`` (a fused kernel on a GPU: the
        (B, H, Tq, Tk) weights and their dropout masks are never held in memory): q (R, B, H, Tq,
        hd), k, v (R, B, H, Tk, hd) → (R, B, H, Tq, hd). Without dropout one call for every run.
        With dropout each run at its own shape (its batch, its longest sequences) with its own
        generator as the kernel's random source, so its masks do not depend on its companions."""
        R, B, H, Tq, hd = q.shape
        keep = ~key_padding(ctx_mask.reshape(R * B, -1))   # True where a key takes part
        if p == 0:
            out = F.scaled_dot_product_attention(q.reshape(R * B, H, Tq, hd), k.reshape(R * B, H, -1, hd),
                                                 v.reshape(R * B, H, -1, hd), attn_mask=keep[:, None, None, :])
            return out.view(R, B, H, Tq, hd)
        keep = keep.view(R, B, -1)
        out = q.new_zeros(q.shape)
        for r in range(R):
            b, tq, tk = s.B[r], _own(q_axis, r), _own(k_axis, r)
            qr, kr, vr = q[r, :b, :, :tq], k[r, :b, :, :tk], v[r, :b, :, :tk]
            with _generator_as_default(s.gens[r], q.device):
                out[r, :b, :, :tq] = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=keep[r, :b, None, None, :tk],
                                                                    dropout_p=p)
        return out

    def _block(self, P, p: str, x, ctx, ctx_mask, q_axis, k_axis, s: Step):
        """AttentionBlock, post-LN: LN(x + drop(attn)), LN(x + drop(ff))."""
        a = self._mha(P, p + "attn.", x, ctx, ctx_mask, q_axis, k_axis, s)
        axes = (s.b_axis(), q_axis, None)
        x = layer_norm(x + dropout(a, s, axes, time_major=True), P[p + "norm1.weight"], P[p + "norm1.bias"])
        f = dropout(torch.relu(linear(x, P[p + "ff.0.weight"], P[p + "ff.0.bias"])), s, axes)
        f = linear(f, P[p + "ff.3.weight"], P[p + "ff.3.bias"])
        return layer_norm(x + dropout(f, s, axes), P[p + "norm2.weight"], P[p + "norm2.bias"])

    def _concat(self, P, streams, s: Step):
        xs = [streams[k][0] if "proj." + k + ".weight" not in P else
              linear(streams[k][0], P[f"proj.{k}.weight"], P[f"proj.{k}.bias"]) for k in self.keys]
        mask = torch.cat([streams[k][1] for k in self.keys], dim=2)
        t_axis = [(s.T[k], s.Tmax[k]) for k in self.keys]
        return self._linear_branch(P, "branch.", torch.cat(xs, dim=2), mask, t_axis, s,
                                   self._first(self.keys[0], P) is not None)

    def _coattention(self, P, streams, s: Step):
        text = self.t.text
        t0, t_mask = streams[text]
        if "text_proj.weight" in P:
            t0 = linear(t0, P["text_proj.weight"], P["text_proj.bias"])
        pooled = []
        for k in self.t.speech:
            x, x_mask = streams[k]
            if f"speech_proj.{k}.weight" in P:
                x = linear(x, P[f"speech_proj.{k}.weight"], P[f"speech_proj.{k}.bias"])
            t = t0
            for i in range(len(self.t.text_queries[k])):
                t, x = (self._block(P, f"text_queries.{k}.{i}.", t, x, x_mask, s.t_axis(text), s.t_axis(k), s),
                        self._block(P, f"speech_queries.{k}.{i}.", x, t, t_mask, s.t_axis(k), s.t_axis(text), s))
            pooled.append((masked_mean(t, t_mask) + masked_mean(x, x_mask)) / 2)
        c = torch.cat(pooled, dim=-1)
        g = dropout(torch.relu(linear(c, P["w4.weight"], P["w4.bias"])), s, (s.b_axis(), None))
        g = layer_norm(g + c, P["norm.weight"], P["norm.bias"])
        return linear(g, P["w5.weight"], P["w5.bias"])

    def _proj_stats(self, P, streams):
        (k,) = self.keys
        x, mask = streams[k]
        w = P["model.text_proj.conv.weight"]
        h = linear(x, w[..., 0], P["model.text_proj.conv.bias"])
        return linear(stats_pool(h, mask), P["model.out.weight"], P["model.out.bias"])
