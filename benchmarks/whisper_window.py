"""Whisper's input window: the standard 30 s padding (the default, exact) vs shorter windows
(``#window=S``), side by side in one process: speed of encoding the same utterances, and the
cosine between each shorter window's activations and the standard ones at every layer.

Model: a Whisper architecture with random weights (``--arch base``: d_model 512, 6 encoder layers,
the openai/whisper-base shapes; ``--arch tiny``: 384, 4 layers). Audio: the demo corpus's speech,
utterances joined to IEMOCAP-like lengths (mean ~4.5 s). Random weights compute at the same speed
as trained ones; their cosine shows that and where the activations move, not how much a trained
model's do (run with a real checkpoint via ``--model PATH`` for that).

    python benchmarks/whisper_window.py [--arch base] [--windows 10 5] [--model PATH] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from emofuse.corpora import load_corpus
from emofuse.extract.encoders import load_audio_encoder

ROOT = Path(__file__).resolve().parent.parent
ARCHS = {"tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
         "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048)}
#: IEMOCAP-like utterance lengths in seconds (mean 4.5)
LENGTHS = [1.5, 2.0, 2.5, 3.0, 3.2, 3.5, 3.8, 4.0, 4.2, 4.5, 4.8, 5.0, 5.5, 6.0, 7.0, 8.0, 9.5, 4.5]


def random_whisper(folder: str, arch: str) -> str:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    a = ARCHS[arch]
    cfg = WhisperConfig(**a, decoder_layers=1, decoder_attention_heads=a["encoder_attention_heads"],
                        decoder_ffn_dim=a["encoder_ffn_dim"], num_mel_bins=80)
    torch.manual_seed(0)
    WhisperModel(cfg).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def utterances() -> list[np.ndarray]:
    speech = np.concatenate([sf.read(u.audio_path, dtype="float32")[0] for u in load_corpus("demo")[:60]])
    out, pos = [], 0
    for sec in LENGTHS:
        n = int(sec * 16000)
        out.append(speech[pos:pos + n])
        pos += n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="base", choices=sorted(ARCHS))
    ap.add_argument("--model", help="a real Whisper checkpoint folder instead of random weights")
    ap.add_argument("--windows", type=float, nargs="+", default=[10.0, 5.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = args.model or random_whisper(tmp + "/whisper", args.arch)
    encs = {30.0: load_audio_encoder(path, device=args.device)}
    for w in args.windows:
        encs[w] = load_audio_encoder(f"{path}#window={w:g}", device=args.device)
    waves = utterances()
    times = {w: [] for w in encs}
    outs = {}
    for _ in range(args.repeats):  # alternated, one utterance per forward (the CPU default)
        for w, enc in encs.items():
            t0 = time.perf_counter()
            outs[w] = [enc.encode([x])[0] for x in waves]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[w].append(time.perf_counter() - t0)
    med = {w: sorted(t)[len(t) // 2] for w, t in times.items()}
    audio_s = sum(len(x) for x in waves) / 16000
    res = {"model": args.model or f"random-init whisper-{args.arch} architecture", "device": args.device,
           "utterances": len(waves), "audio_seconds": round(audio_s, 1), "repeats": args.repeats,
           "seconds_30s_window": round(med[30.0], 3), "windows": {}}
    ref = outs[30.0]
    for w in args.windows:
        cos = []  # (layers,) mean cosine per utterance
        worst = []
        for a, b in zip(outs[w], ref):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            c = (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1) + 1e-12)  # (T, L)
            cos.append(c.mean(0))
            worst.append(c.min(0))
        cos, worst = np.mean(cos, 0), np.min(worst, 0)
        res["windows"][f"{w:g}"] = {"speedup_vs_30s": round(med[30.0] / med[w], 2), "seconds": round(med[w], 3),
                                   "mean_cosine_per_layer": [round(float(x), 4) for x in cos],
                                   "min_cosine_per_layer": [round(float(x), 4) for x in worst],
                                   "utterances_split": sum(len(x) > w * 16000 for x in waves)}
    out = ROOT / "benchmarks" / "results" / ("whisper-window-cuda.json" if args.device.startswith("cuda")
                                             else "whisper-window.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
