#!/usr/bin/env python3
"""Generate the bundled demo corpus (emofuse/data/demo) with espeak-ng, in IEMOCAP layout.

5 sessions x 2 speakers (distinct espeak-ng voices), four emotions rendered by prosody (pitch
level and range, rate, loudness), with per-utterance jitter so no single cue separates them.
"impro" dialogs: the wording carries the emotion too. "script" dialogs: the same neutral lines
in all four emotions, so neither text nor audio alone solves the task.

The output is committed, so the demo runs without espeak-ng. Re-run to regenerate:
    python scripts/make_demo_corpus.py [--out emofuse/data/demo]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 16000
VOICES = {  # session -> (female voice, male voice): 10 distinct espeak-ng variants, all US English,
    # chosen because pocketsphinx's US-English acoustic model can force-align them (most other
    # accents and variants failed on over half of the sentences; see the alignment issue's note)
    1: ("en-us+f2", "en-us+m2"), 2: ("en-us+f3", "en-us+m6"), 3: ("en-us+f4", "en-us+klatt"),
    4: ("en-us+f5", "en-us+klatt4"), 5: ("en-us+klatt2", "en-us+klatt3"),
}
SPEAKER_PITCH = {1: (0, 0), 2: (8, -6), 3: (-6, 6), 4: (4, -10), 5: (-3, 3)}  # % offsets per (F, M)
PROSODY = {  # pitch %, pitch range, rate %, volume dB
    "ang": (12, "x-high", 22, 6), "hap": (28, "high", 10, 2), "neu": (0, "medium", 0, 0), "sad": (-18, "x-low", -28, -7),
}
IMPRO = {
    "ang": ["Get out of my office right now!", "I am sick of your stupid excuses!", "You lied to me again!",
            "Do not ever touch my car!", "This is a total disgrace!", "Stop yelling at my sister!"],
    "hap": ["This is the best day ever!", "I love this wonderful gift!", "We finally won the prize!",
            "What a lovely surprise party!", "You made me so happy!", "I got the dream job!"],
    "neu": ["The meeting starts at nine.", "Please put the box there.", "The bus comes every hour.",
            "I read the report today.", "The shop is on Main Street.", "We need two more chairs."],
    "sad": ["I miss her so much.", "Nobody came to my party.", "My old dog died today.",
            "I lost everything I had.", "He never called me back.", "I feel so alone tonight."],
}
SCRIPT = ["The train leaves at seven.", "I put the keys on the table.", "She is coming home tomorrow.",
          "We talked about it yesterday.", "The letter arrived this morning.", "He painted the door blue."]
EMOTIONS = ("ang", "hap", "neu", "sad")


def speak(text: str, voice: str, emotion: str, pitch_offset: int, rng: np.random.Generator, tmp: Path) -> np.ndarray:
    p, rng_name, rate, vol = PROSODY[emotion]
    p = p + pitch_offset + int(rng.integers(-6, 7))
    rate = rate + int(rng.integers(-8, 9))
    vol = vol + int(rng.integers(-2, 3))
    ssml = (f'<speak><prosody pitch="{p:+d}%" range="{rng_name}" rate="{100 + rate}%" volume="{vol:+d}dB">'
            f"{text}</prosody></speak>")
    out = tmp / "u.wav"
    subprocess.run(["espeak-ng", "-m", "-v", voice, "-w", str(out), ssml], check=True)
    audio, sr = sf.read(out, dtype="float32")
    audio = soxr.resample(audio, sr, SR)
    loud = np.flatnonzero(np.abs(audio) > 0.01)  # trim espeak's lead-in and tail silence
    audio = audio[max(loud[0] - 800, 0): loud[-1] + 1600] if len(loud) else audio
    if len(audio) < int(1.05 * SR):  # keep every utterance at least 1 s long
        audio = np.concatenate([audio, np.zeros(int(1.05 * SR) - len(audio), audio.dtype)])
    return np.clip(audio, -1, 1)


def dialog_plan(session: int) -> dict[str, list[tuple[str, str, str]]]:
    """dialog -> [(speaker gender, emotion code, text)] in time order."""
    s = f"Ses0{session}"
    lettered = "impro05a" if session % 2 else "impro03b"
    plan: dict[str, list] = {f"{s}F_impro01": [], f"{s}M_{lettered}": [], f"{s}F_script01_1": [], f"{s}M_script02_2": []}
    impro = list(plan)[:2]
    for d_i, dialog in enumerate(impro):
        k = 0
        for e_i, emo in enumerate(EMOTIONS):
            for j in range(3):
                text = IMPRO[emo][(session + d_i * 3 + j) % len(IMPRO[emo])]
                code = "exc" if emo == "hap" and j == 2 else emo
                plan[dialog].append(("FM"[k % 2], code, text))
                k += 1
        order = np.random.default_rng(session * 10 + d_i).permutation(len(plan[dialog]))
        plan[dialog] = [plan[dialog][i] for i in order]
    for d_i, dialog in enumerate(list(plan)[2:]):
        lines = [SCRIPT[(session + d_i * 3 + j) % len(SCRIPT)] for j in range(3 if d_i == 0 else 2)]
        k = 0
        for line in lines:
            for emo in EMOTIONS:
                plan[dialog].append(("FM"[k % 2], emo, line))
                k += 1
        order = np.random.default_rng(session * 10 + 5 + d_i).permutation(len(plan[dialog]))
        plan[dialog] = [plan[dialog][i] for i in order]
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "emofuse" / "data" / "demo"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(args.seed)
    stats: dict[str, list[float]] = {e: [] for e in EMOTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for session in range(1, 6):
            sdir = out / f"Session{session}"
            for dialog, utts in dialog_plan(session).items():
                wav_dir = sdir / "sentences" / "wav" / dialog
                wav_dir.mkdir(parents=True, exist_ok=True)
                (sdir / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
                (sdir / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
                emo_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
                trans, counters, t = [], {"F": 0, "M": 0}, 1.5
                for gender, code, text in utts:
                    uid = f"{dialog}_{gender}{counters[gender]:03d}"
                    counters[gender] += 1
                    emo = "hap" if code == "exc" else code
                    voice = VOICES[session][gender == "M"]
                    audio = speak(text, voice, emo, SPEAKER_PITCH[session][gender == "M"], rng, Path(tmp))
                    sf.write(wav_dir / f"{uid}.wav", (audio * 32767).astype(np.int16), SR, subtype="PCM_16")
                    dur = len(audio) / SR
                    stats[emo].append(dur)
                    start, end = t, t + dur
                    t = end + float(rng.uniform(0.3, 1.2))
                    vad = {"ang": (1.5, 4.0, 4.0), "hap": (4.0, 3.5, 3.0), "neu": (3.0, 2.5, 2.5), "sad": (1.5, 2.0, 2.0)}[emo]
                    emo_lines += [f"[{start:.4f} - {end:.4f}]\t{uid}\t{code}\t[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]",
                                  f"C-E1:\t{ {'ang': 'Anger', 'hap': 'Happiness', 'exc': 'Excited', 'neu': 'Neutral', 'sad': 'Sadness'}[code] };\t()",
                                  f"A-E1:\tval {int(vad[0])}; act {int(vad[1])}; dom  {int(vad[2])};\t()", ""]
                    trans.append(f"{uid} [{start:08.4f}-{end:08.4f}]: {text}")
                (sdir / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(emo_lines))
                (sdir / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(trans) + "\n")
    (out / "README.txt").write_text(
        "emofuse demo corpus: synthetic speech by espeak-ng in IEMOCAP layout (scripts/make_demo_corpus.py).\n"
        "Emotions are acted by prosody rules; its numbers are a smoke test, not a result.\n")
    n = sum(len(v) for v in stats.values())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{n} utterances, {size / 1e6:.1f} MB in {out}")
    for e, d in stats.items():
        print(f"  {e}: {len(d)} utterances, {np.mean(d):.2f} s mean ({min(d):.2f}-{max(d):.2f})")


if __name__ == "__main__":
    main()
