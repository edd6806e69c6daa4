#!/usr/bin/env python3
"""Grid benchmark: every training row of a bundled paper spec on a synthetic store with
IEMOCAP's shapes, a fixed number of epochs (no early stopping), ``--repeats`` seeds × the 5
folds, trained one run at a time (``--runs-at-once 1``, the path before stacking) and with the
row's runs stacked (``--runs-at-once 0``) side by side, alternated row by row in one process;
per row and path the seconds per run-epoch and the peak GPU memory, the ratio, and the whole grid
extrapolated to the protocol's 25 runs per row at ``--grid-epochs`` epochs per run and to
IEMOCAP's 5,531 utterances, and per row how far a run-epoch is from its limit: the larger of its
memory-read limit (one read of the row's held training and validation rows at the device's
measured memory bandwidth) and its arithmetic limit (the run-epoch's matmul operations, counted
on meta tensors, at the device's measured matmul rate) (stacked: the row's 25 runs in one pass,
so its per-run-epoch time measured with fewer runs is an upper bound there).

``--floor-only`` trains nothing: it counts every row's arithmetic and prints the whole grid's
floor at a device's peak rates (``--peak-tflops``, default an H100's data sheet), on any machine.

Store: 13 layers × 768 audio (frames 50/s, phone/syllable/word segments) and text (4-24 tokens),
float16, IEMOCAP's length distribution, ``--scale`` × 5,531 utterances. The per-epoch time is
scaled to full size linearly in the number of utterances (the epoch is a pass over them).

    python benchmarks/grid.py [--scale 0.02] [--epochs 2] [--repeats 1] [--device cpu] [--rows "Late F+S;Coattention F+P"]
    python benchmarks/grid.py --paths stacked ...   # one path only (per-run, stacked)
    python benchmarks/grid.py --bf16 ...            # every row trained with train-head --bf16
    python benchmarks/grid.py --group-by-length ... # every row on length-grouped batches
    python benchmarks/grid.py --floor-only --scale 0.05 [--peak-tflops 67,989] [--floor-batch 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emofuse.pipelines.ablate import TRAIN_FIELDS, load_spec  # noqa: E402
from emofuse.devices import resolve_device  # noqa: E402
from emofuse.pipelines.data import load_train_data  # noqa: E402
from emofuse.pipelines.protocol import epoch_order, sessions_of, split, utterance_rows  # noqa: E402
from emofuse.pipelines.tables import DEPARTURES  # noqa: E402
from emofuse.pipelines.train import TrainConfig, run_train  # noqa: E402
from emofuse.store import FeatureStore  # noqa: E402
from emofuse.testing.synthetic import make_synthetic_store  # noqa: E402
from common import record  # noqa: E402

IEMOCAP = 5531


def memory_bandwidth(device: torch.device) -> float:
    """Bytes per second the device's memory moves (read + write) in one large copy, best of 5."""
    n = (1 << 30) if device.type == "cuda" else (256 << 20)
    x = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        y.copy_(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    del x, y
    return 2 * n / best


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Floating-point operations per second of one large square matmul in ``dtype``, best of 5
    (float32 as PyTorch runs it by default: IEEE, no TF32)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(6):   # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    del a, b
    return 2 * n ** 3 / best


def epoch_flops(cfg: TrainConfig, batch: int | None = None) -> float:
    """Floating-point operations of one run-epoch of ``cfg`` as train-head computes it: the first
    fold's training split forward and backward in shuffled batches of ``batch_size`` (padded to
    each batch's longest, as trained, grouped by length with --group-by-length) and its validation
    split forward in batches of 64. Counted by
    torch's FlopCounterMode (matmuls, convolutions, attention) on meta tensors: shapes only,
    nothing is computed, so a full-size head is counted in seconds on any machine. ``batch``
    (e.g. 1: no padding at all) replaces both batch sizes."""
    from torch.utils.flop_counter import FlopCounterMode
    meta = torch.device("meta")
    with FeatureStore(cfg.store) as fs:
        data = load_train_data(fs, cfg.keys(), cfg.audio_stream, cfg.text_stream, cfg.layer_specs())
    with meta:
        model = cfg.build(data.dims, len(data.classes))
    tr, va, _ = split(data, sessions_of(data)[0], cfg.seed, cfg.val_fraction)
    order = epoch_order(tr, torch.Generator().manual_seed(cfg.seed), cfg.batch_size,
                        utterance_rows(data) if cfg.group_by_length else None)
    train_batch, val_batch = (cfg.batch_size, 64) if batch is None else (batch, batch)
    with FlopCounterMode(display=False) as count:
        for k in range(0, len(order), train_batch):
            model(data.batch(order[k:k + train_batch], meta)).sum().backward()
        with torch.no_grad():
            for k in range(0, len(va), val_batch):
                model(data.batch(va[k:k + val_batch], meta))
    return float(count.get_total_flops())


@contextlib.contextmanager
def profiled(on: bool, device: torch.device, label: str, path_name: str, args):
    """With ``on``: the block under torch.profiler, and two tables written beside the results: the
    operators and kernels by their own time on the device (on a CPU: the host), and the same
    grouped by input shape (which tensors the copies and casts move). Names what to look at when a
    row is slower than its arithmetic says, e.g. a head that loses under --bf16."""
    if not on:
        yield
        return
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        yield
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tag = re.sub(r"[^0-9a-z]+", "-", label.lower()).strip("-")
    out = ROOT / "benchmarks" / "results" / "grid-profile"
    out.mkdir(parents=True, exist_ok=True)
    name = out / f"{tag}-{path_name}{'-bf16' if args.bf16 else ''}{'-grouped' if args.group_by_length else ''}.txt"
    name.write_text(f"{label}, {path_name}, {device}\n\nby operator and kernel\n"
                    + prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=90)
                    + "\n\nby input shape\n"
                    + prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=30,
                                                                         max_name_column_width=60))
    print(f"{label:<28} {path_name:<8} profile: {name.relative_to(ROOT)}", flush=True)


def options(args) -> dict:
    """The train-head options the benchmark's flags set for every row."""
    return {k: True for k in DEPARTURES if getattr(args, k)}


def padding_at_iemocap_size(path: str, batch: int = 32, seed: int = 0) -> dict:
    """Padded frames ÷ real frames of one epoch's training batches at IEMOCAP's size (one fold's
    training split, 72 % of 5,531 utterances, lengths resampled from the store's frames), in the
    protocol's shuffled batches and with --group-by-length. Larger epochs group more tightly than
    the small store the rows are counted on, so this is what the grouping buys at full size."""
    with FeatureStore(path) as fs:
        frames = load_train_data(fs, ["F"], "audio", "text", {"audio": "last", "text": "last"}).sources["F"].lengths
    rng = np.random.default_rng(seed)
    L = rng.choice(np.asarray(frames), size=int(0.72 * IEMOCAP))
    out = {}
    for name, lengths in (("shuffled", None), ("grouped", L)):
        o = epoch_order(np.arange(len(L)), torch.Generator().manual_seed(seed), batch, lengths)
        padded = sum(int(L[o[k:k + batch]].max()) * len(o[k:k + batch]) for k in range(0, len(o), batch))
        out[name] = round(padded / int(L.sum()), 2)
    return out


def floor_only(args, rows: dict, defaults: dict) -> None:
    """``--floor-only``: each row's arithmetic per run-epoch and the whole grid's floor at the
    given peak rates (a device's data sheet), without training anything."""
    rates = [float(x) * 1e12 for x in args.peak_tflops.split(",")]
    names = ["float32", "bfloat16"][:len(rates)]
    per_class = max(1, round(args.scale * IEMOCAP / 20))
    n_utts = per_class * 20
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or os.path.join(tmp, "grid.h5")
        if not os.path.exists(path):
            make_synthetic_store(path, per_class=per_class, layers=13, dim=768, planted_layer=7, strength=0.3,
                                 seed=0)
        out, total = [], 0.0
        for label, row in rows.items():
            params = {**defaults, **{k: v for k, v in row.items() if k in TRAIN_FIELDS}}
            flops = epoch_flops(TrainConfig(store=path, out=os.path.join(tmp, "x"), **options(args), **params),
                                args.floor_batch) * IEMOCAP / n_utts
            total += flops
            out.append({"row": label, "tflop_per_run_epoch_full_scale": round(flops / 1e12, 2),
                        **{f"floor_s_per_run_epoch_{n}": round(flops / r, 3) for n, r in zip(names, rates)}})
            print(f"{label:<28} {flops / 1e12:9.2f} TFLOP per run-epoch at IEMOCAP size   "
                  + "   ".join(f"{n} floor {flops / r:7.3f} s" for n, r in zip(names, rates)), flush=True)
        padding = padding_at_iemocap_size(path)
    floors = {n: round(total * 25 * args.grid_epochs / r / 3600, 2) for n, r in zip(names, rates)}
    print(f"whole grid, 25 runs × {args.grid_epochs} epochs per row, at the peak rates: "
          + ", ".join(f"{n} {h} h" for n, h in floors.items()), flush=True)
    print(f"frames padded ÷ real at IEMOCAP size (batches of 32): shuffled {padding['shuffled']}, "
          f"grouped by length {padding['grouped']}", flush=True)
    res = {"benchmark": "grid-floor", "spec": args.spec, "scale": args.scale, "utterances": n_utts,
           "batch": args.floor_batch or "the protocol's (32; validation 64)", "group_by_length": args.group_by_length,
           "peak_tflops": dict(zip(names, [r / 1e12 for r in rates])), "grid_epochs_assumed": args.grid_epochs,
           "rows": out, "grid_floor_h": floors, "padding_at_iemocap_size": padding,
           "grid_pflop": round(total * 25 * args.grid_epochs / 1e15, 1)}
    row = (f"| grid floor | {time.strftime('%Y-%m-%d')} | arithmetic only (FlopCounterMode on meta tensors) | "
           f"{args.spec}, {len(out)} rows, counted at {n_utts} utts, scaled to IEMOCAP"
           + (f", batches of {args.floor_batch}" if args.floor_batch else "")
           + (", --group-by-length" if args.group_by_length else "") + " | whole grid, 25 runs × "
           f"{args.grid_epochs} epochs per row: {res['grid_pflop']} PFLOP; at "
           + ", ".join(f"{n} {r / 1e12:g} TFLOP/s {floors[n]} h" for n, r in zip(names, rates))
           + " | — | — | — | — |")
    record("grid-floor" + (f"-batch{args.floor_batch}" if args.floor_batch else "")
           + ("-grouped" if args.group_by_length else ""), res, row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="paper-multilevel")
    ap.add_argument("--scale", type=float, default=0.02, help="fraction of IEMOCAP's 5,531 utterances")
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed per run (fixed, no early stopping)")
    ap.add_argument("--grid-epochs", type=int, default=30, help="epochs per run assumed for the extrapolation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", help="row labels separated by ; (default: every training row)")
    ap.add_argument("--store", help="reuse this synthetic store (created when missing)")
    ap.add_argument("--repeats", type=int, default=1, help="seeds per fold (runs per row: 5 × repeats)")
    ap.add_argument("--paths", default="per-run,stacked", help="per-run, stacked or both (default)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--trials", type=int, default=1,
                    help="alternate the paths this many times per row and keep each path's fastest (a shared machine)")
    ap.add_argument("--bf16", action="store_true", help="train every row with --bf16 (bfloat16 autocast)")
    ap.add_argument("--profile", action="store_true",
                    help="run each row's training under torch.profiler and write its top operators and kernels "
                         "(benchmarks/results/grid-profile/ROW-PATH.txt); the timings then include the profiler's cost")
    ap.add_argument("--group-by-length", action="store_true",
                    help="train (or count) every row with --group-by-length (batches of similar lengths)")
    ap.add_argument("--floor-only", action="store_true",
                    help="count each row's arithmetic and print the grid's floor at --peak-tflops; train nothing")
    ap.add_argument("--peak-tflops", default="67,989",
                    help="with --floor-only: the peak float32[,bfloat16] rates in TFLOP/s (default: an H100 SXM's "
                         "data sheet, dense: 67 and 989)")
    ap.add_argument("--floor-batch", type=int,
                    help="with --floor-only: count at this batch size instead of the protocol's (1: no padding)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    defaults = dict(spec.get("defaults") or {})
    rows = {label: r for label, r in spec["_labels"].items() if "combine" not in r}
    if args.rows:
        wanted = [x.strip() for x in args.rows.split(";")]
        rows = {k: rows[k] for k in wanted}
    if args.floor_only:
        return floor_only(args, rows, defaults)
    per_class = max(1, round(args.scale * IEMOCAP / 20))    # 4 classes × 5 sessions
    n_utts = per_class * 20
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or os.path.join(tmp, "grid.h5")
        t0 = time.perf_counter()
        if not os.path.exists(path):
            make_synthetic_store(path, per_class=per_class, layers=13, dim=768, planted_layer=7, strength=0.3,
                                 seed=0)
        t_store = time.perf_counter() - t0
        paths = [p.strip() for p in args.paths.split(",")]
        bandwidth = memory_bandwidth(device)
        print(f"memory bandwidth (one large copy, read + write): {bandwidth / 1e9:.0f} GB/s", flush=True)
        precision = torch.bfloat16 if args.bf16 else torch.float32
        rate = matmul_rate(device, precision)
        print(f"matmul rate ({str(precision).removeprefix('torch.')}, one large square product): "
              f"{rate / 1e12:.1f} TFLOP/s", flush=True)
        at_once = {"per-run": 1, "stacked": 0}
        out, total_full = [], {p: 0.0 for p in paths}
        # one untimed run of each path first: the process's one-time costs (CUDA context, kernels
        # loaded, allocator warm-up, imports) would otherwise land in the first row's first path
        # and inflate its ratio several-fold
        first = next(iter(rows.values()), None)
        if first is not None:
            params = {**defaults, **{k: v for k, v in first.items() if k in TRAIN_FIELDS}}
            params.update(repeats=1, epochs=1, patience=2, folds=("1",))
            for path_name in paths:
                run_train(TrainConfig(store=path, out=os.path.join(tmp, "warm-up", path_name), device=str(device),
                                      **options(args),
                                      runs_at_once=at_once[path_name], **params))
            print("warm-up: one untimed run of each path done", flush=True)
        for label, row in rows.items():
            params = {**defaults, **{k: v for k, v in row.items() if k in TRAIN_FIELDS}}
            params.update(repeats=args.repeats, epochs=args.epochs, patience=args.epochs + 1)
            entry, best = {"row": label}, {}
            for trial in range(args.trials):
                for path_name in paths:
                    cfg = TrainConfig(store=path, out=os.path.join(tmp, "runs", f"{len(out)}-{path_name}-{trial}"),
                                      **options(args),
                                      device=str(device), runs_at_once=at_once[path_name], **params)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    t1 = time.perf_counter()
                    with profiled(args.profile, device, label, path_name, args):
                        s = run_train(cfg)
                    wall = time.perf_counter() - t1
                    train_wall = wall - s["time"]["load_s"]
                    histories = [json.load(open(os.path.join(cfg.out, "runs", d, "metrics.json")))["history"]
                                 for d in sorted(os.listdir(os.path.join(cfg.out, "runs")))]
                    n_epochs = sum(len(h) for h in histories)
                    # the path's training wall per run-epoch (training, validation and the runs' test passes)
                    per_epoch = train_wall / n_epochs
                    print(f"{label:<28} {path_name:<8} {per_epoch:8.3f} s/run-epoch (trial {trial + 1})", flush=True)
                    if path_name not in best or per_epoch < best[path_name][0]:
                        best[path_name] = (per_epoch, s, train_wall,
                                           torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None)
            # the row's memory-read limit per run-epoch: one read of its held rows (the training and
            # validation utterances, 80 % of them) at the device's memory bandwidth
            read_limit = 0.8 * s["data"]["bytes"] / bandwidth
            # and its arithmetic limit: the run-epoch's matmul operations (counted on meta tensors) at
            # the device's measured matmul rate; the row's limit is the larger of the two
            flops = epoch_flops(cfg)
            arith_limit = flops / rate
            limit = max(read_limit, arith_limit)
            entry.update(bytes_held=s["data"]["bytes"], read_limit_s_per_run_epoch=round(read_limit, 6),
                         tflop_per_run_epoch=round(flops / 1e12, 4), arithmetic_limit_s_per_run_epoch=round(arith_limit, 6),
                         bound="arithmetic" if arith_limit > read_limit else "memory read")
            for path_name in paths:
                per_epoch, s, train_wall, peak = best[path_name]
                entry[f"{path_name}_x_read_limit"] = round(per_epoch / read_limit, 1)
                entry[f"{path_name}_x_limit"] = round(per_epoch / limit, 1)
                full = per_epoch * IEMOCAP / n_utts
                grid = full * args.grid_epochs * 25
                total_full[path_name] += grid
                entry.update({"fusion": cfg.fusion, "keys": "+".join(cfg.keys()), "head": cfg.head,
                              f"{path_name}_s_per_run_epoch": round(per_epoch, 4),
                              f"{path_name}_s_per_run_epoch_full_scale": round(full, 3),
                              f"{path_name}_row_wall_25_runs_s": round(grid, 1),
                              f"{path_name}_gpu_peak_gb": round(peak, 2) if peak is not None else None,
                              f"{path_name}_compute_share": round(s["time"]["compute_s"] / max(train_wall, 1e-9), 3),
                              "load_s": round(s["time"]["load_s"], 2)})
                print(f"{label:<28} {path_name:<8} {per_epoch:8.3f} s/run-epoch   full scale {full:7.2f} s   "
                      f"25 runs × {args.grid_epochs} epochs {grid / 60:7.1f} min   "
                      f"{per_epoch / limit:8.1f}x its {entry['bound']} limit", flush=True)
            if len(paths) == 2:
                entry["speedup"] = round(entry["per-run_s_per_run_epoch"] / entry["stacked_s_per_run_epoch"], 2)
                print(f"{label:<28} stacked is {entry['speedup']:.2f}x the per-run path", flush=True)
            out.append(entry)
            # the rows so far, in case a long run is stopped: benchmarks/results/grid[-cuda].partial.json
            partial = ROOT / "benchmarks" / "results" / f"grid{'-cuda' if device.type == 'cuda' else ''}.partial.json"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"benchmark": "grid", "scale": args.scale, "utterances": n_utts,
                                           "epochs_timed": args.epochs, "trials": args.trials,
                                           "device": str(device), "rows": out}, indent=2) + "\n")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    res = {"benchmark": "grid", "spec": args.spec, "scale": args.scale, "utterances": n_utts, "repeats": args.repeats,
           "runs_per_row": 5 * args.repeats, "paths": paths, "trials": args.trials,
           "epochs_timed": args.epochs, "grid_epochs_assumed": args.grid_epochs, "device": str(device), "gpu": gpu,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, torch "
                      f"{torch.__version__}, {torch.get_num_threads()} threads" + (f", {gpu}" if gpu else ""),
           "store_build_s": round(t_store, 1), "memory_bandwidth_gb_s": round(bandwidth / 1e9, 1),
           "matmul_tflops": round(rate / 1e12, 2), "bf16": args.bf16, "group_by_length": args.group_by_length,
           "rows": out,
           "grid_wall_full_scale_h": {p: round(t / 3600, 2) for p, t in total_full.items()}}
    if len(paths) == 2:
        res["grid_speedup"] = round(total_full["per-run"] / total_full["stacked"], 2)
    ratios = [r["speedup"] for r in out if "speedup" in r]
    row = (f"| grid | {time.strftime('%Y-%m-%d')} | {res['machine']} | {args.spec}, {len(out)} rows, {n_utts} utts "
           f"({args.scale} × IEMOCAP), {args.epochs} epochs × {5 * args.repeats} runs"
           + "".join(f", --{k.replace('_', '-')}" for k in options(args)) + " | whole grid at IEMOCAP size, "
           f"25 runs × {args.grid_epochs} epochs per row: "
           + ", ".join(f"{p} {h} h" for p, h in res["grid_wall_full_scale_h"].items())
           + (f"; stacked {res['grid_speedup']}x the per-run path (rows {min(ratios)}–{max(ratios)}x)" if ratios else "")
           + " | per-run vs stacked, side by side | — | — | — |")
    if args.profile:   # the profiler's cost is in every timing: the tables are the result, nothing is recorded
        print(json.dumps(res, indent=2))
        print("--profile: timings include the profiler's cost, so they are not recorded (the tables are in "
              "benchmarks/results/grid-profile/)", flush=True)
        return
    record("grid", res, row, str(device))


if __name__ == "__main__":
    main()
