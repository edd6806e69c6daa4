"""Synthetic feature stores with a label planted in one layer of one stream (tests, benchmarks).

The store has the real layout (utterance table, an ``audio`` stream with frames and phone /
syllable / word segments pooled by ``align.pooling``, a ``text`` stream with tokens) and
IEMOCAP-like lengths. Every layer is Gaussian noise except ``planted_layer`` of the planted
stream, which adds a class-dependent vector to every row: only that layer tells the classes apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..align.pooling import pool_many
from ..store import StoreWriter, digest

CLASSES = ("ang", "hap", "neu", "sad")
RATES = {"phone": 12.0, "syllable": 4.5, "word": 3.0}   # segments per second, as in IEMOCAP speech


def make_synthetic_store(path: str | Path, per_class: int = 10, sessions: int = 5, layers: int = 5,
                         dim: int = 16, text_layers: int | None = None, text_dim: int | None = None,
                         planted_stream: str = "audio", planted_layer: int = 3, strength: float = 1.0,
                         mean_seconds: float = 4.5, max_seconds: float = 20.0, fps: float = 50.0,
                         dtype=np.float16, seed: int = 0, empty_word_ids: int = 0,
                         audio_stream: str = "audio", audio_info: dict | None = None,
                         session_prefix: str = "", no_frames: int = 0) -> dict:
    """Write the store; return its facts (ids, labels, lengths). ``per_class`` utterances of each
    class per session, two speakers per session. ``empty_word_ids``: that many utterances get no
    word segment (as after a failed alignment). ``audio_stream``: the speech stream's name
    (``planted_stream="audio"`` plants in it whatever its name); ``audio_info``: extra entries of
    its stream info (e.g. ``{"default_norm": "global"}``, as an eGeMAPS stream records);
    ``session_prefix``: sessions named ``<prefix>1`` … (a manifest's ``sess1``) instead of ``1`` ….
    ``no_frames``: the first that many utterances get nothing in the speech stream (as after an
    extraction that skipped their audio); they keep their text tokens."""
    rng = np.random.default_rng(seed)
    text_layers, text_dim = text_layers or layers, text_dim or dim
    ids, labels, sess, spk, secs = [], [], [], [], []
    for s in range(1, sessions + 1):
        for c in CLASSES:
            for k in range(per_class):
                g = "FM"[k % 2]
                ids.append(f"Ses{s:02d}_{c}_{g}{k:03d}")
                labels.append(c), sess.append(f"{session_prefix}{s}"), spk.append(f"Ses{s:02d}{g}")
                secs.append(float(np.clip(rng.lognormal(np.log(mean_seconds), 0.6), 1.0, max_seconds)))
    order = np.argsort(ids)
    ids, labels, sess, spk, secs = ([x[i] for i in order] for x in (ids, labels, sess, spk, secs))
    # audio_bytes: a 16 kHz 16-bit WAV's size for the duration, so that the corpus fingerprint
    # follows the durations (the seed, mean_seconds, max_seconds) as a real corpus's follows its files
    table = pd.DataFrame({"id": ids, "label": labels, "session": sess, "speaker": spk, "gender": [x[-1] for x in spk],
                          "transcript": "synthetic", "audio_path": [f"/synthetic/{i}.wav" for i in ids],
                          "start": np.nan, "end": np.nan, "duration": secs,
                          "audio_bytes": [44 + 2 * int(round(x * 16000)) for x in secs]})
    centres = {"audio": rng.standard_normal((len(CLASSES), dim)), "text": rng.standard_normal((len(CLASSES), text_dim))}
    no_words = set(rng.choice(ids, size=empty_word_ids, replace=False)) if empty_word_ids else set()
    lengths = {}
    path = Path(path)
    # every parameter that changes what a stream holds is in its fingerprint (the random draws of
    # both streams come from one generator, so the shapes and counts of either change the other's
    # values; the planted signal only the planted stream's): stores of other content never share
    # a run key, and a grid never reuses another store's results
    drawn = {"seed": seed, "per_class": per_class, "sessions": sessions, "session_prefix": session_prefix,
             "layers": layers, "dim": dim, "text_layers": text_layers, "text_dim": text_dim,
             "mean_seconds": mean_seconds, "max_seconds": max_seconds, "fps": fps, "dtype": np.dtype(dtype).name,
             "empty_word_ids": empty_word_ids}
    planted = {"planted_layer": planted_layer, "strength": strength}
    audio_fp = digest({**drawn, "no_frames": no_frames, **(planted if planted_stream == "audio" else {})}, 32)
    text_fp = digest({**drawn, **(planted if planted_stream == "text" else {})}, 32)
    with StoreWriter(path, table, {"kind": "synthetic"}) as w:
        w.add_stream(audio_stream, {"fingerprint": f"synthetic-audio-{audio_fp}", "encoder_id": "synthetic",
                                    "num_layers": layers, "dim": dim, "frame_hop_s": 1 / fps, "frame_window_s": 1 / fps,
                                    **(audio_info or {})})
        w.add_stream("text", {"fingerprint": f"synthetic-text-{text_fp}", "encoder_id": "synthetic",
                              "num_layers": text_layers, "dim": text_dim})
        for k in range(0, len(ids), 64):
            audio = {"frames": {}, **{f"segments/{g}": {} for g in RATES}}
            text = {"tokens": {}}
            for i in range(k, min(k + 64, len(ids))):
                uid, c = ids[i], CLASSES.index(labels[i])
                T = max(2, int(secs[i] * fps))
                frames = rng.standard_normal((T, layers, dim)).astype(np.float32)
                if planted_stream == "audio":
                    frames[:, planted_layer] += strength * centres["audio"][c]
                frames = frames.astype(dtype)
                audio["frames"][uid] = {"data": frames}
                spans = {}
                for g, rate in RATES.items():
                    cuts = np.unique(np.concatenate([[0, T], rng.integers(1, T, max(1, int(rate * secs[i])))]))
                    spans[g] = np.stack([cuts[:-1], cuts[1:]], 1)
                    if g == "word" and uid in no_words:
                        spans[g] = np.zeros((0, 2), np.int64)
                for g, pooled in zip(RATES, pool_many(frames, list(spans.values()))):
                    audio[f"segments/{g}"][uid] = {"data": pooled.astype(dtype),
                                                  "symbols": np.array([g[:2].upper()] * len(pooled), dtype=object),
                                                  "spans": spans[g].astype(np.int32)}
                N = int(rng.integers(4, 24))
                tok = rng.standard_normal((N, text_layers, text_dim)).astype(np.float32)
                if planted_stream == "text":
                    tok[:, planted_layer] += strength * centres["text"][c]
                text["tokens"][uid] = {"data": tok.astype(dtype),
                                       "strings": np.array([f"w{j}" for j in range(N)], dtype=object),
                                       "word_ids": np.arange(N, dtype=np.int32),
                                       "offsets": np.stack([np.arange(N), np.arange(N) + 1], 1).astype(np.int32),
                                       "special": np.zeros(N, bool)}
                lengths[uid] = T
            for entries in audio.values():
                for uid in ids[:no_frames]:
                    entries.pop(uid, None)
            w.commit(audio_stream, audio)
            w.commit("text", text)
        w.finalize()
    return {"ids": ids, "labels": labels, "sessions": sess, "frames": lengths, "no_words": sorted(no_words)}
