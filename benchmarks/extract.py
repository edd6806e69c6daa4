#!/usr/bin/env python3
"""Extraction benchmark: side by side in one run, on the same audio, with a wav2vec2-base-sized model.

(a) a plain per-utterance loop (batch 1, float32, output_hidden_states=True, as a typical script does)
(b) extract-embeddings at float32 (the whole job: load, encode, store writes, merge)
(c) extract-embeddings at bfloat16 (where bfloat16 is native: a GPU, or a CPU with AVX-512 BF16 / AMX)
each run in a fresh process, alternated (a, b, c, a, b, c …), medians.

Reports audio-seconds per second and ratios to (a), the fraction of this machine's dense-matmul
rate reached (torch.matmul measured in the same run), the share of time spent writing the store,
per-layer cosine similarity of (c) to (b), and peak RSS of (b) for two corpus sizes.
Writes benchmarks/results/extract.json (extract-cuda.json on a GPU) and a row in BENCHMARKS.md.

    python benchmarks/extract.py [--seconds 90] [--repeats 3] [--device cuda] [--bf16 auto|yes|no]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import record  # noqa: E402


def make_corpus(folder: Path, total_seconds: float, seed: int = 0) -> Path:
    """A manifest of utterances with IEMOCAP-like lengths (lognormal, median ≈ 3.5 s, 1–12 s)."""
    rng = np.random.default_rng(seed)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows, t, k = [], 0.0, 0
    while t < total_seconds:
        dur = float(np.clip(rng.lognormal(np.log(3.5), 0.5), 1.0, 12.0))
        n = int(dur * 16000)
        x = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(n) / 16000) + 0.03 * rng.standard_normal(n)
        sf.write(folder / "wav" / f"u{k:04d}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
        rows.append(f"u{k:04d},wav/u{k:04d}.wav,hello,neu,s{k % 4},{k % 5 + 1}")
        t += n / 16000
        k += 1
    m = folder / "manifest.csv"
    m.write_text("id,audio,text,label,speaker,session\n" + "\n".join(rows) + "\n")
    return m


def base_model(folder: Path) -> str:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(folder)  # wav2vec2-base architecture, 95 M parameters
    Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000, return_attention_mask=False).save_pretrained(folder)
    return str(folder)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_loop(model_dir: str, manifest: Path, device: str = "cpu") -> tuple[float, float, float]:
    """(wall seconds, audio seconds, seconds in the loop) of the typical per-utterance script,
    model loading included in the wall (as it is in ours)."""
    from transformers import AutoFeatureExtractor, AutoModel
    t0 = time.perf_counter()
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval().to(device)
    paths = [manifest.parent / line.split(",")[1] for line in manifest.read_text().splitlines()[1:]]
    audio_s, feats = 0.0, []
    t1 = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            wav, sr = sf.read(p, dtype="float32")
            x = torch.from_numpy(fe(wav, sampling_rate=sr, return_tensors="np")["input_values"]).to(device)
            hs = model(x, output_hidden_states=True).hidden_states
            feats.append(torch.stack(hs, 2)[0].cpu().numpy().astype(np.float16))
            audio_s += len(wav) / sr
    _sync(device)
    t2 = time.perf_counter()
    return t2 - t0, audio_s, t2 - t1


def ours(model_dir: str, manifest: Path, out: Path, dtype: str, device: str = "cpu") -> dict:
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    cfg = ExtractConfig(corpus="manifest", manifest=str(manifest), out=str(out), audio_model=model_dir, text_model=None,
                        dtype=dtype, device=device)  # default batching: one utterance per forward on CPU, 120 s on CUDA
    io0 = _written()
    t0 = time.perf_counter()
    s = run_extract(cfg)
    wall = time.perf_counter() - t0
    st = s.streams[0]
    return {"wall_s": wall, "written_bytes": _written() - io0, "store_bytes": s.store_bytes, "audio_s": st.audio_seconds, "write_s": st.time_write + s.time_finalize,
            "write_busy_s": st.time_write_busy + s.time_finalize, "finalize_s": s.time_finalize, "encode_s": st.time_encode, "load_s": st.time_load}


def _written() -> int:
    """Bytes this process has written so far (write() calls, /proc/self/io wchar)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def in_child(which: str, *args) -> tuple | dict:
    """``plain_loop`` or ``ours`` in a fresh Python process, so no run inherits another's allocator
    state, caches or process-wide settings (extract-embeddings fixes glibc's mmap threshold)."""
    cmd = [sys.executable, __file__, "--child", json.dumps([which, [str(a) for a in args]])]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child {which} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return tuple(out) if which == "plain_loop" else out


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 10, device: str = "cpu") -> float:
    if device.startswith("cuda"):
        n, reps = 8192, 50
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.matmul(a, b)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def model_flops_per_audio_second(model_dir: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel
    model = AutoModel.from_pretrained(model_dir).eval()
    x = torch.randn(1, 16000 * 4)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, output_hidden_states=True)
    return fc.get_total_flops() / 4.0


def layer_cosines(a: Path, b: Path) -> list[float]:
    from emofuse.store import FeatureStore
    with FeatureStore(a) as fa, FeatureStore(b) as fb:
        x = fa.load("audio", dtype=np.float32).data
        y = fb.load("audio", ids=fa.ids("audio"), dtype=np.float32).data
    out = []
    for l in range(x.shape[1]):  # in float64: float32 sums over millions of values drift past 1
        a, b = x[:, l].astype(np.float64).ravel(), y[:, l].astype(np.float64).ravel()
        out.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    return out


# Peak RSS from /proc/self/status (VmHWM, of this process image): getrusage's ru_maxrss survives
# exec, so a child started from a large parent reports the parent's size (it read 11 GB here).
RSS_CHILD = """
import sys
sys.path.insert(0, {root!r})
from emofuse.pipelines.extract import ExtractConfig, run_extract
run_extract(ExtractConfig(corpus="manifest", manifest={manifest!r}, out={out!r}, audio_model={model!r},
            text_model=None, device={device!r}))
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def peak_rss_mb(model_dir: str, manifest: Path, out: Path, device: str = "cpu") -> float:
    code = RSS_CHILD.format(root=str(ROOT), manifest=str(manifest), out=str(out), model=model_dir, device=device)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def native_bf16(device: str) -> bool:
    """Whether bfloat16 matmuls run natively here (any GPU; on a CPU, oneDNN's AVX-512 BF16 or AMX)."""
    if device.startswith("cuda"):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="audio seconds for the side-by-side runs")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--repeats", type=int, default=3, help="(a), (b), (c) alternated this many times; medians")
    ap.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                    help="run (c) at bfloat16: auto = on a GPU, or on a CPU with native bfloat16 (an emulated "
                         "bfloat16 is many times slower and measures nothing useful)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one measured run, in its own process (see in_child)
        which, a = json.loads(args.child)
        fn = {"plain_loop": lambda m, man, dev: plain_loop(m, Path(man), dev),
              "ours": lambda m, man, out, dt, dev: ours(m, Path(man), Path(out), dt, dev)}[which]
        print(json.dumps(fn(*a)))
        return
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    ours_runs = {"b": "float32"}
    if args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16(args.device)):
        ours_runs["c"] = "bfloat16"
    else:
        print("(c) bfloat16 skipped: " + ("--bf16 no" if args.bf16 == "no" else
              "this CPU has no native bfloat16 (AVX-512 BF16 / AMX), so it would measure an emulation"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = base_model(tmp / "w2v2-base")
        manifest = make_corpus(tmp / "c1", args.seconds)
        dev = args.device
        runs: dict[str, list] = {"a": [], **{k: [] for k in ours_runs}}
        for k in range(args.repeats):  # alternated, so drifts of a noisy machine hit all three alike
            runs["a"].append(in_child("plain_loop", model, manifest, dev))
            for key, dt in ours_runs.items():
                for f in tmp.glob(f"{key}.h5*"):
                    shutil.rmtree(f) if f.is_dir() else os.remove(f)
                runs[key].append(in_child("ours", model, manifest, tmp / f"{key}.h5", dt, dev))
        wall_a, audio_a, loop_a = sorted(runs["a"])[len(runs["a"]) // 2]
        got = {k: sorted(runs[k], key=lambda r: r["wall_s"])[len(runs[k]) // 2] for k in ours_runs}
        cos = layer_cosines(tmp / "b.h5", tmp / "c.h5") if "c" in got else []
        mm = {dt: matmul_rate(getattr(torch, dt), device=dev) for dt in ours_runs.values()}
        flops = model_flops_per_audio_second(model)
        small = make_corpus(tmp / "c2", args.seconds / 2, seed=1)
        large = make_corpus(tmp / "c3", args.seconds * 2, seed=2)
        rss_small, rss_large = peak_rss_mb(model, small, tmp / "r1.h5", dev), peak_rss_mb(model, large, tmp / "r2.h5", dev)
    name = {"b": "b_ours_float32", "c": "c_ours_bfloat16"}
    short = {"b": "b_float32", "c": "c_bfloat16"}
    tput = {"a_plain_loop": audio_a / wall_a, **{name[k]: r["audio_s"] / r["wall_s"] for k, r in got.items()}}
    res = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "audio_seconds": round(audio_a, 1), "repeats": args.repeats,
        "wall_s_all_runs": {"a": [round(w, 2) for w, _, _ in runs["a"]], **{k: [round(r["wall_s"], 2) for r in runs[k]] for k in got}},
        "model": "wav2vec2-base architecture, random weights (95 M parameters)",
        "throughput_audio_s_per_s": {k: round(v, 2) for k, v in tput.items()},
        "ratio_to_plain_loop": {k: round(v / tput["a_plain_loop"], 2) for k, v in tput.items()},
        # per utterance, once set up: (a)'s loop vs ours' read + encode + waiting on the store,
        # without the one-time costs (model load, weights hash, the final merge)
        "steady_state_ratio_to_plain_loop": {
            name[k]: round(audio_a / (r["encode_s"] + r["load_s"] + r["write_s"] - r["finalize_s"]) / (audio_a / loop_a), 2)
            for k, r in got.items()},
        "model_gflop_per_audio_second": round(flops / 1e9, 2),
        "matmul_gflops": {dt: round(v / 1e9, 1) for dt, v in mm.items()},
        "fraction_of_matmul_rate": {short[k]: round(tput[name[k]] * flops / mm[ours_runs[k]], 3) for k in got},
        # the job held up by the store (waiting on a background commit, and the final merge) ...
        "store_write_share": {short[k]: round(r["write_s"] / r["wall_s"], 4) for k, r in got.items()},
        # ... and the time the store was being written at all (mostly hidden behind encoding)
        "store_write_busy_share": {short[k]: round(r["write_busy_s"] / r["wall_s"], 4) for k, r in got.items()},
        "encode_share": {short[k]: round(r["encode_s"] / r["wall_s"], 4) for k, r in got.items()},
        # every activation byte is written once (store v2): written / stored ≈ 1
        "written_bytes_per_audio_s": {short[k]: round(r["written_bytes"] / r["audio_s"]) for k, r in got.items()},
        "written_over_store_bytes": {short[k]: round(r["written_bytes"] / r["store_bytes"], 3) for k, r in got.items()},
        "bf16_cosine_per_layer": [round(x, 5) for x in cos],
        "peak_rss_mb": {f"{args.seconds / 2:.0f}s_audio": round(rss_small), f"{args.seconds * 2:.0f}s_audio": round(rss_large)},
    }
    ratio, steady, frac = res["ratio_to_plain_loop"], res["steady_state_ratio_to_plain_loop"], res["fraction_of_matmul_rate"]
    c_tput = (f"(c) {tput['c_ours_bfloat16']:.2f} ({ratio['c_ours_bfloat16']}×)" if "c" in got
              else "(c) not run (no native bfloat16 on this CPU)")
    row = (f"| extract | {res['date']} | {res['machine']} | {res['audio_seconds']} s audio | "
           f"(a) {tput['a_plain_loop']:.2f}, (b) {tput['b_ours_float32']:.2f} ({ratio['b_ours_float32']}×), "
           f"{c_tput} audio-s/s; per utterance once set up b {steady['b_ours_float32']}×"
           + (f", c {steady['c_ours_bfloat16']}×" if "c" in got else "") + " | "
           f"matmul fraction b {frac['b_float32']}" + (f", c {frac['c_bfloat16']}" if "c" in got else "") + " | "
           f"store writes stall {100 * res['store_write_share']['b_float32']:.1f} % (busy "
           f"{100 * res['store_write_busy_share']['b_float32']:.1f} %) | "
           + (f"min bf16 cosine {min(cos):.4f}" if cos else "no bf16 run") + " | "
           f"peak RSS {round(rss_small)} / {round(rss_large)} MB; written "
           f"{res['written_bytes_per_audio_s']['b_float32'] / 1e6:.2f} MB per audio-s "
           f"({res['written_over_store_bytes']['b_float32']}× the store) |")
    record("extract", res, row, args.device)

if __name__ == "__main__":
    main()
