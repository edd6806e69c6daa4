#!/usr/bin/env python3
"""Fine-tuning benchmark: training throughput (audio-seconds per second), the fraction of the
device's matmul rate used, and peak memory of ``finetune``'s training step (length-grouped
micro-batches, gradient accumulation to the global batch, bf16 autocast on a GPU) against a plain
loop on the same model and data (random micro-batches padded to their longest utterance, float32,
an optimizer step per micro-batch), measured side by side in one process.

Models: random weights of the real architectures: ``--size tiny`` (CPU: wav2vec2 2 × 64, BERT
2 × 64) or ``--size large`` (wav2vec2-large-lv60: 24 × 1024, layer-norm front end; BERT-base:
12 × 768). Data: synthetic waveforms with IEMOCAP's length distribution (lognormal around 4.5 s,
1-20 s; ``--max-seconds`` caps it) and 4-24 random tokens each. The joint CMA system (the paper's
74.71 row). Matmul FLOPs are counted by torch's FlopCounterMode on the first global batch (padding
included: the work done) and scaled by audio seconds; the device's rate is measured with a large
matmul in the same run (bf16 on a GPU, float32 on a CPU). Also extrapolates one IEMOCAP fold and
the 25-run fine-tuned row.

    python benchmarks/finetune.py                                    # CPU, tiny
    python benchmarks/finetune.py --device cuda --size large --bf16  # GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emofuse.heads.cma import CMAModel  # noqa: E402
from emofuse.pipelines import finetune as ft  # noqa: E402
from common import record  # noqa: E402

IEMOCAP_AUDIO_S = 25_200      # about 7 h of audio in the 5,531 four-class utterances
TRAIN_SHARE = 0.8 * 0.9       # four training sessions, less the 10 % validation split
VAL_SHARE = 0.8 * 0.1
TEST_SHARE = 0.2


def models(size: str):
    from transformers import BertConfig, BertModel, Wav2Vec2Config, Wav2Vec2Model

    if size == "large":
        wc = Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                            mask_time_prob=0.0, layerdrop=0.0)
        bc = BertConfig()   # bert-base: 12 x 768
    else:
        wc = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            feat_extract_norm="layer", do_stable_layer_norm=True, mask_time_prob=0.0, layerdrop=0.0)
        bc = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    w, b = Wav2Vec2Model(wc), BertModel(bc, add_pooling_layer=False)
    w.feature_extractor._freeze_parameters()
    return w, b, wc


def data(n: int, max_s: float, vocab: int, seed: int = 0) -> ft.FinetuneData:
    rng = np.random.default_rng(seed)
    secs = np.clip(rng.lognormal(np.log(4.5), 0.6, n), 1.0, max_s)
    waves = [rng.standard_normal(int(s * 16000)).astype(np.float32) for s in secs]
    tokens = [[101] + list(rng.integers(1000, vocab, rng.integers(4, 25))) + [102] for _ in range(n)]
    return ft.FinetuneData(ids=np.array([f"u{i}" for i in range(n)]), y=rng.integers(0, 4, n),
                           classes=["ang", "hap", "neu", "sad"], sessions=np.array(["1"] * n), seconds=secs,
                           waves=waves, tokens=tokens)


def peak_rate(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 5
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def count_ops(fn) -> int:
    """Operators dispatched by ``fn()`` (each one a kernel launch or more on a GPU, and the host's
    cost per launch): counted below autograd, so the backward pass's operators count too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def busy_seconds(events, cuda: bool) -> float:
    """Seconds of work in a profile's averaged events: on a GPU, the device's kernels alone. An
    operator's event carries its kernels' time as well (its self device time), so summing every
    event counted each kernel about twice (the 2026-11-24 and -25 figures of 15 % and 54 % were
    7 % and 26 % by the profiler's own total, which sums kernel events only). On a CPU, every
    event's self time."""
    from torch.autograd import DeviceType
    if not cuda:
        return sum(e.self_cpu_time_total for e in events) / 1e6
    return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6


def profile_step(model, opt, d, idx, cfg, device) -> dict:
    """One global batch under torch.profiler: where the step's time goes (the question the H100
    figures left open: both loops ran at the same speed in bf16 and float32, so matmuls were not
    what limited them). Returns the share of the step spent in the top operators and in host-side
    collation, and writes the whole table beside the JSON."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    model.train()
    sync(device)
    t = time.perf_counter()
    with profile(activities=acts, record_shapes=True) as prof:
        ft.train_step(model, model, opt, d, idx, cfg, device, 99)
        sync(device)
    wall = time.perf_counter() - t
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages(group_by_input_shape=False).table(sort_by=key, row_limit=40)
    out = ROOT / "benchmarks" / "results" / ("finetune-profile-cuda.txt" if device.type == "cuda" else
                                             "finetune-profile.txt")
    out.write_text(table + "\n")
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy = busy_seconds(events, device.type == "cuda")
    top = sorted(events, key=lambda e: -getattr(e, attr, 0))[:12]
    return {"wall_s": wall, "device_busy_s": busy, "device_busy_fraction": busy / wall,
            "top": [{"op": e.key, "self_s": getattr(e, attr, 0) / 1e6, "calls": e.count} for e in top],
            "table": str(out.relative_to(ROOT))}


def joint_model(w, b, wc) -> torch.nn.Module:
    """The joint CMA model over ``models()``'s encoders, built as ``finetune`` builds it: from what
    ``FinetuneModel`` reads of an ``Encoders`` (a layer-norm wav2vec2, so no masked norms; its CNN
    frozen). Shared with ``sync_check.py``, so that neither falls behind ``Encoders``."""
    enc = types.SimpleNamespace(audio=w, text=b, group_norm=None, pos_stack=None, frozen=[w.feature_extractor],
                                kernels=list(wc.conv_kernel), strides=list(wc.conv_stride))
    return ft.FinetuneModel(enc, CMAModel(w.config.hidden_size, b.config.hidden_size, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", choices=["tiny", "large"], default="tiny")
    ap.add_argument("--utterances", type=int, default=64, help="per timed epoch (global batches of 32)")
    ap.add_argument("--micro-batch", type=int, default=8, help="ours: utterances per forward pass at most")
    ap.add_argument("--micro-batch-seconds", type=float, default=0.0,
                    help="ours: padded audio seconds per forward pass at most (finetune --micro-batch-seconds; 0: off)")
    ap.add_argument("--plain-micro-batch", type=int,
                    help="the plain loop's batch (an optimizer step each; default: --micro-batch)")
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--pos-conv", choices=ft.POS_CONV, default="conv",
                    help="wav2vec2's positional convolution in both loops: cuDNN's grouped convolution, or "
                         "unfolded into batched products (finetune --pos-conv)")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile each transformer block, in both loops (finetune --compile); the compile "
                         "happens in the untimed warm-up")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one global batch (torch.profiler): the top operators by self time on the "
                         "device (CPU when no GPU), written to benchmarks/results/finetune-profile[-cuda].txt")
    ap.add_argument("--epochs-per-run", type=float, default=20.0,
                    help="assumed epochs per run (early stopping) for the extrapolation")
    args = ap.parse_args()
    args.plain_micro_batch = args.plain_micro_batch or args.micro_batch
    device = torch.device(args.device)
    torch.manual_seed(0)
    w, b, wc = models(args.size)
    if args.pos_conv == "matmul":
        from emofuse.extract.posconv import use_matmul_pos_conv
        use_matmul_pos_conv(w)
    model = joint_model(w, b, wc).to(device)
    if args.grad_checkpointing:
        for m in (w, b):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    d = data(args.utterances + 32, args.max_seconds, b.config.vocab_size)
    warm, timed = np.arange(32), np.arange(32, 32 + args.utterances)
    cfg = ft.FinetuneConfig(store="", out="", audio_model="random", text_model="random", batch_size=32,
                            micro_batch=args.micro_batch, micro_batch_seconds=args.micro_batch_seconds,
                            bf16=args.bf16, device=args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    res = {"device": machine + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
           "size": args.size, "parameters_trained": sum(p.numel() for p in params), "utterances": args.utterances,
           "audio_s": float(d.seconds[timed].sum()), "micro_batch": args.micro_batch,
           "micro_batch_seconds": args.micro_batch_seconds, "plain_micro_batch": args.plain_micro_batch,
           "micro_batches_per_global_batch": float(np.mean([len(ft.micro_batches(timed[k:k + 32], d.seconds,
                                                                                 args.micro_batch, True,
                                                                                 args.micro_batch_seconds))
                                                            for k in range(0, len(timed), 32)])),
           "bf16": args.bf16,
           "grad_checkpointing": args.grad_checkpointing, "pos_conv": args.pos_conv, "compile": args.compile}

    # matmul work per audio second (padding included), counted on one global batch
    from torch.utils.flop_counter import FlopCounterMode
    model.train()
    opt = torch.optim.Adam(params, lr=1e-5)
    with FlopCounterMode(display=False) as fc:
        ft.train_step(model, model, opt, d, warm, cfg, device, 0)
    flops_per_s = fc.get_total_flops() / float(d.seconds[warm].sum())
    # the host's work: operators per audio second, ours (its micro-batches) vs the plain loop's batches
    ours_ops = count_ops(lambda: ft.train_step(model, model, opt, d, warm, cfg, device, 0))

    def plain_step(idx):   # the plain loop's step: pad to the longest, float32, an optimizer step each
        batch = ft.collate(d, idx, device)
        torch.nn.functional.cross_entropy(model(batch), batch["y"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    plain_ops = sum(count_ops(lambda: plain_step(warm[k:k + args.plain_micro_batch]))
                    for k in range(0, len(warm), args.plain_micro_batch))
    warm_s = float(d.seconds[warm].sum())
    res.update(operators_per_audio_s={"finetune": ours_ops / warm_s, "plain": plain_ops / warm_s})
    if args.compile:   # after the count (compiled kernels are not counted); compiled here, untimed: the
        # first call compiles for its shapes, the second for any length (dynamic)
        ft.compile_blocks(w, b)
        t = time.perf_counter()
        for part in (warm[:16], warm[16:]):
            ft.train_step(model, model, opt, d, part, cfg, device, 0)
        for part in (warm[:8], warm[8:]):   # and evaluation's graphs (eval mode: no dropout)
            ft.predict(model, d, part, cfg, device)
        model.train()
        sync(device)
        res["compile_warmup_s"] = time.perf_counter() - t
    peak = peak_rate(device, torch.bfloat16 if (device.type == "cuda") else torch.float32)
    res.update(matmul_flops_per_audio_s=flops_per_s, device_matmul_rate=peak)

    def run_ours():
        model.train()
        for s, k in enumerate(range(0, len(timed), 32)):
            ft.train_step(model, model, opt, d, timed[k:k + 32], cfg, device, s + 1)

    def run_plain():
        model.train()
        order = np.random.default_rng(1).permutation(timed)
        for k in range(0, len(order), args.plain_micro_batch):
            plain_step(order[k:k + args.plain_micro_batch])

    for name, fn in (("plain", run_plain), ("finetune", run_ours)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if name == "plain":   # one warm-up step (the finetune step was warmed up by the FLOP count)
            batch = ft.collate(d, warm[:args.plain_micro_batch], device)
            torch.nn.functional.cross_entropy(model(batch), batch["y"]).backward()
            opt.zero_grad(set_to_none=True)
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t
        thr = res["audio_s"] / dt
        res[name] = {"wall_s": dt, "audio_s_per_s": thr, "matmul_fraction": thr * flops_per_s / peak,
                     "peak_memory_gb": (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else
                                        # CPU: the process's peak RSS so far (both loops, the models, the data)
                                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9}
    # evaluation throughput (validation + test)
    sync(device)
    t = time.perf_counter()
    ft.predict(model, d, timed, cfg, device)
    sync(device)
    res["eval_audio_s_per_s"] = res["audio_s"] / (time.perf_counter() - t)
    if args.profile:
        res["profile"] = profile_step(model, opt, d, timed[:32], cfg, device)
    res["speedup_vs_plain"] = res["finetune"]["audio_s_per_s"] / res["plain"]["audio_s_per_s"]
    epoch_s = (TRAIN_SHARE * IEMOCAP_AUDIO_S / res["finetune"]["audio_s_per_s"] +
               VAL_SHARE * IEMOCAP_AUDIO_S / res["eval_audio_s_per_s"])
    run_s = args.epochs_per_run * epoch_s + TEST_SHARE * IEMOCAP_AUDIO_S / res["eval_audio_s_per_s"]
    res.update(iemocap_epoch_h=epoch_s / 3600, epochs_per_run_assumed=args.epochs_per_run,
               iemocap_run_h=run_s / 3600, paper_cma_row_25_runs_h=25 * run_s / 3600)
    row = (f"| finetune (CMA joint, {args.size}) | {time.strftime('%Y-%m-%d')} | {res['device']} | "
           f"{args.utterances} utts, {res['audio_s']:.0f} s audio, micro-batch {args.micro_batch}"
           f"{', compiled blocks' if args.compile else ''}"
           f"{f' (≤ {args.micro_batch_seconds:g} padded s)' if args.micro_batch_seconds else ''}"
           f"{f', plain {args.plain_micro_batch}' if args.plain_micro_batch != args.micro_batch else ''}"
           f"{', bf16' if args.bf16 else ''}{', positional conv as matmuls' if args.pos_conv == 'matmul' else ''} | "
           f"{res['finetune']['audio_s_per_s']:.2f} audio-s/s "
           f"({res['speedup_vs_plain']:.2f}x the plain loop's {res['plain']['audio_s_per_s']:.2f}) | "
           f"{100 * res['finetune']['matmul_fraction']:.1f} % of matmul rate (plain "
           f"{100 * res['plain']['matmul_fraction']:.1f} %) | 25-run row ≈ {res['paper_cma_row_25_runs_h']:.1f} h (this model) at "
           f"{args.epochs_per_run:g} epochs/run | exact accumulation (tests) | peak "
           f"{res['finetune']['peak_memory_gb']:.2f} GB (plain {res['plain']['peak_memory_gb']:.2f}) |")
    record("finetune" + ("-posconv-matmul" if args.pos_conv == "matmul" else "") +
           ("-budget" if args.micro_batch_seconds else "") + ("-compile" if args.compile else ""), res, row,
           args.device)


if __name__ == "__main__":
    main()
