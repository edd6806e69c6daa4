#!/usr/bin/env python3
"""Where extraction's time goes, stage by stage, next to each stage's ceiling on this machine.

Companion to benchmarks/extract.py (which gives the end-to-end ratios). On the same corpus and
batch plan as extract-embeddings it times, each alone: reading + preprocessing the audio, the
forward pass (synchronised), stacking + casting the hidden states on the device, the copy to
the host, the store commits, and the final merge; then the raw ceilings: dense matmul, host
memory copy, sequential disk write with fsync. Prints a table and writes
benchmarks/results/extract-breakdown[-cuda].json; with ``--profile`` also the top kernels of one
forward (torch.profiler) and the top Python functions of one whole run (cProfile).

    python benchmarks/extract_breakdown.py [--seconds 120] [--device cuda] [--dtype float32 bfloat16]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract import _sync, base_model, make_corpus, matmul_rate, model_flops_per_audio_second  # noqa: E402


def stage_times(model_dir: str, manifest: Path, dtype: str, device: str, batch_seconds: float | None) -> dict:
    """Seconds per stage over the whole corpus, each stage synchronised and timed alone."""
    from emofuse.corpora import load_corpus, utterance_table
    from emofuse.extract.audio import load_audio
    from emofuse.extract.batching import length_batches
    from emofuse.extract.encoders import HFAudioEncoder, _host
    from emofuse.pipelines.extract import ExtractConfig
    from emofuse.pipelines.extract.audio_phase import batch_seconds as batch_budget
    from emofuse.pipelines.extract.stream import StreamJob

    enc = HFAudioEncoder(model_dir, device=device, dtype=dtype)
    utts = load_corpus("manifest", path=str(manifest))
    table = utterance_table(utts)
    dur = dict(zip(table["id"], table["duration"].astype(float)))
    by_id = {u.id: u for u in utts}
    cfg = ExtractConfig(corpus="manifest", out="x", manifest=str(manifest), device=device, batch_seconds=batch_seconds)
    budget = batch_budget(StreamJob(None, "audio", enc, cfg, None, None, None))
    batches = length_batches(list(dur), list(dur.values()), budget)
    t = dict(read=0.0, preprocess=0.0, h2d=0.0, forward=0.0, stack_cast=0.0, d2h=0.0)
    out_bytes = 0
    audio = 0.0
    for rep in range(2):  # the first pass warms up kernels and caches; the second is timed
        t = {k: 0.0 for k in t}
        out_bytes, audio = 0, 0.0
        for b in batches:
            t0 = time.perf_counter()
            waves = [load_audio(by_id[i], enc.sample_rate) for i in b]
            t1 = time.perf_counter()
            feats = [enc.fe(w, sampling_rate=enc.sample_rate, return_tensors="np")["input_values"][0] for w in waves]
            lengths = torch.tensor([len(f) for f in feats])
            x = torch.zeros((len(feats), int(lengths.max())))
            for k, f in enumerate(feats):
                x[k, :len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
            mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).long()
            t2 = time.perf_counter()
            xd, md = x.to(enc.device, enc.dtype), mask.to(enc.device)
            _sync(device)
            t3 = time.perf_counter()
            with torch.inference_mode():
                if len(b) == 1:
                    out = enc.model(xd, output_hidden_states=True)
                else:
                    from emofuse.extract.masking import conv_output_lengths
                    import contextlib
                    ctx = (enc.group_norm.valid_lengths(conv_output_lengths(lengths, enc.kernels[:1], enc.strides[:1]))
                           if enc.group_norm is not None else contextlib.nullcontext())
                    with ctx:
                        out = enc.model(xd, attention_mask=md, output_hidden_states=True)
                _sync(device)
                t4 = time.perf_counter()
                hs = torch.stack(out.hidden_states, dim=2).to(torch.float16)
                _sync(device)
                t5 = time.perf_counter()
                host = _host(hs, np.float16)  # the pipeline's copy (pinned memory from a GPU)
                t6 = time.perf_counter()
            out_bytes += host.nbytes
            audio += sum(len(w) for w in waves) / enc.sample_rate
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                t[k] += v
    return {"seconds": t, "audio_s": audio, "padded_output_bytes": out_bytes, "batches": len(batches),
            "batch_seconds": budget}


def commit_rate(out_dir: Path, audio_s: float, layers: int = 13, dim: int = 768, unit_s: float = 60.0) -> dict:
    """Seconds to commit (parts, fsync) and finalize (merge) float16 frames for ``audio_s`` of
    audio through the store writer alone, in 60 s units like extract-embeddings."""
    import pandas as pd
    from emofuse.store import StoreWriter
    rng = np.random.default_rng(0)
    frames_per_s = 50
    n_utt = max(1, int(audio_s / 3.5))
    lens = np.full(n_utt, int(3.5 * frames_per_s))
    table = pd.DataFrame({"id": [f"u{k:05d}" for k in range(n_utt)], "label": "neu", "speaker": "s", "session": 1})
    block = rng.standard_normal((int(lens.max()), layers, dim)).astype(np.float16)
    path = out_dir / "commit.h5"
    per_unit = max(1, int(unit_s / 3.5))
    t0 = time.perf_counter()
    with StoreWriter(path, table=table, corpus_meta={"kind": "bench"}) as w:
        w.add_stream("audio", {"kind": "audio", "fingerprint": "bench"})
        for s in range(0, n_utt, per_unit):
            w.commit("audio", {"frames": {f"u{k:05d}": {"data": block[:lens[k]]} for k in range(s, min(n_utt, s + per_unit))}})
        t1 = time.perf_counter()
        w.finalize()
    t2 = time.perf_counter()
    nbytes = int(lens.sum()) * layers * dim * 2
    return {"bytes": nbytes, "commit_s": t1 - t0, "finalize_s": t2 - t1}


def disk_write_rate(out_dir: Path, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a sequential write + fsync (the page cache's and the disk's limit together)."""
    buf = np.ones(64 << 20, dtype=np.uint8)
    path = out_dir / "disk.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(nbytes // buf.nbytes):
            f.write(buf.data)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.remove(path)
    return nbytes / dt


def memcpy_rate(nbytes: int = 1 << 29) -> float:
    a = np.ones(nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    t0 = time.perf_counter()
    for _ in range(3):
        np.copyto(b, a)
    return 3 * nbytes / (time.perf_counter() - t0)


def d2h_rate(device: str, nbytes: int = 1 << 29) -> dict:
    if not device.startswith("cuda"):
        return {}
    x = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    pinned = torch.empty(nbytes // 2, dtype=torch.float16, pin_memory=True)
    out = {}
    for name, fn in (("pageable", lambda: x.cpu()), ("pinned", lambda: pinned.copy_(x))):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        out[name] = 3 * nbytes / (time.perf_counter() - t0)
    return out


def kernel_profile(model_dir: str, dtype: str, device: str, seconds: float = 120.0) -> str:
    from torch.profiler import ProfilerActivity, profile
    from emofuse.extract.encoders import HFAudioEncoder
    enc = HFAudioEncoder(model_dir, device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(int(4.0 * 16000)).astype(np.float32) for _ in range(int(seconds / 4))]
    enc.encode(waves, out_dtype=np.float16)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        enc.encode(waves, out_dtype=np.float16)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)


def whole_run(model_dir: str, manifest: Path, out: Path, dtype: str, device: str, profile: bool) -> tuple[str, dict]:
    """One whole extract-embeddings run (cProfiled when ``profile``): its summary's timings."""
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    cfg = ExtractConfig(corpus="manifest", manifest=str(manifest), out=str(out), audio_model=model_dir, text_model=None,
                        dtype=dtype, device=device)
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    if profile:
        pr.enable()
    s = run_extract(cfg)
    pr.disable()
    wall = time.perf_counter() - t0
    st = s.streams[0]
    buf = io.StringIO()
    if profile:
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(40)
    return buf.getvalue(), {"wall_s": wall, "audio_s": st.audio_seconds, "load_s": st.time_load,
                            "encode_s": st.time_encode, "write_wait_s": st.time_write,
                            "write_busy_s": st.time_write_busy, "finalize_s": s.time_finalize}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batch-seconds", type=float, default=None)
    ap.add_argument("--profile", action="store_true", help="also torch.profiler kernels and cProfile of a whole run")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick convolution algorithms by timing")
    ap.add_argument("--json", default=None, help="where to write the JSON (default benchmarks/results/)")
    ap.add_argument("--switch-interval", type=float, nargs="*", default=[], metavar="MS",
                    help="also a whole run at each of these interpreter switch intervals in place of extraction's "
                         "0.5 ms (Python's default is 5): the store's writer threads give the GIL back at every "
                         "chunk they write, so a busy encoding thread can stall them (benchmarks/store_gil.py)")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    dev = args.device
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    res: dict = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu x{os.cpu_count()}",
                 "torch": torch.__version__, "stages": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("EMOFUSE_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        model = base_model(tmp / "m")
        manifest = make_corpus(tmp / "c", args.seconds)
        flops = model_flops_per_audio_second(model)
        res["model_gflop_per_audio_second"] = flops / 1e9
        for dt in args.dtype:
            st = stage_times(model, manifest, dt, dev, args.batch_seconds)
            a = st["audio_s"]
            st["audio_s_per_s"] = {k: a / v if v else None for k, v in st["seconds"].items()}
            res["stages"][dt] = st
            text, summ = whole_run(model, manifest, tmp / f"p-{dt}.h5", dt, dev, args.profile)
            res["stages"][dt]["whole_run"] = summ
            for ms in args.switch_interval:   # extraction's own interval replaced by this one for a run
                from emofuse.pipelines.extract import threads
                default_interval, ours = sys.getswitchinterval(), threads.SWITCH_INTERVAL_S
                sys.setswitchinterval(ms / 1000)
                threads.SWITCH_INTERVAL_S = ms / 1000
                try:
                    _, other = whole_run(model, manifest, tmp / f"p-{dt}-{ms:g}ms.h5", dt, dev, False)
                finally:
                    sys.setswitchinterval(default_interval)
                    threads.SWITCH_INTERVAL_S = ours
                res["stages"][dt][f"whole_run_switch_{ms:g}ms"] = other
            if args.profile:
                print(f"\n== cProfile of a whole extract-embeddings run, {dt} ==\n{text}")
                print(f"\n== torch.profiler, one 120 s batch, {dt} ==\n{kernel_profile(model, dt, dev)}")
        audio = next(iter(res["stages"].values()))["audio_s"]
        cw = commit_rate(tmp, audio)
        res["store"] = {**cw, "commit_audio_s_per_s": audio / cw["commit_s"], "finalize_audio_s_per_s": audio / cw["finalize_s"],
                        "commit_bytes_per_s": cw["bytes"] / cw["commit_s"]}
        res["ceilings"] = {"disk_write_bytes_per_s": disk_write_rate(tmp), "memcpy_bytes_per_s": memcpy_rate(),
                           "d2h_bytes_per_s": d2h_rate(dev),
                           "matmul_flops": {"float32": matmul_rate(torch.float32, device=dev),
                                            "bfloat16": matmul_rate(torch.bfloat16, device=dev)}}
    bytes_per_audio_s = 50 * 13 * 768 * 2
    print(f"\n{res['device']}, torch {res['torch']}; {audio:.0f} s of audio; output {bytes_per_audio_s / 1e6:.2f} MB per audio-second (float16, 13 layers)")
    print(f"{'stage':<14}" + "".join(f"{dt:>22}" for dt in res["stages"]))
    for k in next(iter(res["stages"].values()))["seconds"]:
        print(f"{k:<14}" + "".join(f"{res['stages'][dt]['seconds'][k]:>9.3f} s {res['stages'][dt]['audio_s_per_s'][k] or 0:>8.0f}/s"
                                   for dt in res["stages"]))
    s = res["store"]
    print(f"store commit {s['commit_s']:.3f} s ({s['commit_audio_s_per_s']:.0f} audio-s/s, {s['commit_bytes_per_s'] / 1e9:.2f} GB/s), "
          f"finalize {s['finalize_s']:.3f} s ({s['finalize_audio_s_per_s']:.0f} audio-s/s)")
    c = res["ceilings"]
    print(f"ceilings: disk write+fsync {c['disk_write_bytes_per_s'] / 1e9:.2f} GB/s = {c['disk_write_bytes_per_s'] / bytes_per_audio_s:.0f} audio-s/s; "
          f"memcpy {c['memcpy_bytes_per_s'] / 1e9:.2f} GB/s; d2h {({k: round(v / 1e9, 2) for k, v in c['d2h_bytes_per_s'].items()})} GB/s; "
          f"matmul fp32 {c['matmul_flops']['float32'] / flops:.0f}, bf16 {c['matmul_flops']['bfloat16'] / flops:.0f} audio-s/s")
    for dt, st in res["stages"].items():
        for key in [k for k in st if k.startswith("whole_run")]:
            w = st[key]
            how = f" (switch interval {key.removeprefix('whole_run_switch_')})" if key != "whole_run" else ""
            print(f"whole run {dt}{how}: {w['audio_s'] / w['wall_s']:.0f} audio-s/s; "
                  + ", ".join(f"{k} {v:.2f}" for k, v in w.items()))
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"extract-breakdown{'-cuda' if dev.startswith('cuda') else ''}.json"
    path.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
