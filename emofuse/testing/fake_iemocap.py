"""Write a fake IEMOCAP copy with every quirk of docs/iemocap.md and return its ground truth.

Quirks written: optional nested root; ``._`` AppleDouble junk (EmoEvaluation and wav folders);
an EmoEvaluation subfolder whose files contradict the consensus (a reader must not recurse);
lettered dialogs (``impro05a``, ``script01_1b``); XX and untimed ``M:`` transcription lines;
latin-1 bytes and CRLF line ends; labels outside the four classes and ``xxx``; lab files;
``.wdseg``/``.phseg`` tiling frames 0..N-1 with ``<s>``/``</s>``, ``(2)`` alternates, fillers,
triphone rows and a trailer; one labelled utterance per corpus without alignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import soundfile as sf

from ..corpora.iemocap import FOUR_CLASS

SR = 16000
#: Real IEMOCAP four-class counts per session (ang, hap+exc, neu, sad): 1085/1023/1151/1031/1241.
REAL_FOUR_CLASS_COUNTS: Mapping[int, Mapping[str, int]] = {
    1: {"ang": 229, "hap": 135, "exc": 143, "neu": 384, "sad": 194},
    2: {"ang": 137, "hap": 117, "exc": 210, "neu": 362, "sad": 197},
    3: {"ang": 240, "hap": 135, "exc": 151, "neu": 320, "sad": 305},
    4: {"ang": 327, "hap": 65, "exc": 238, "neu": 258, "sad": 143},
    5: {"ang": 170, "hap": 143, "exc": 299, "neu": 384, "sad": 245},
}
DEFAULT_COUNTS = {"ang": 2, "hap": 1, "exc": 1, "neu": 2, "sad": 2, "fru": 1, "xxx": 1, "sur": 1}
WORDS = {
    "ang": ["stop", "that", "now"], "hap": ["great", "news", "today"], "exc": ["we", "won", "again"],
    "neu": ["the", "train", "left"], "sad": ["i", "miss", "her"], "fru": ["not", "this", "again"],
    "xxx": ["well", "maybe"], "sur": ["what", "really"], "fea": ["help", "me"], "oth": ["hmm"], "dis": ["ugh"],
}
FREQ = {"ang": 220.0, "hap": 330.0, "exc": 350.0, "neu": 180.0, "sad": 120.0}
PHONES = {"a": "AH", "e": "EH", "i": "IH", "o": "OW", "u": "UW", "y": "Y", "w": "W", "r": "R", "l": "L", "n": "N",
          "m": "M", "s": "S", "t": "T", "d": "D", "g": "G", "k": "K", "h": "HH", "p": "P", "b": "B", "c": "K",
          "f": "F", "v": "V", "x": "K"}


@dataclass(frozen=True)
class FakeUtterance:
    id: str
    dialog: str
    code: str
    transcript: str
    session: int
    gender: str
    start: float            # seconds in the dialog (EmoEvaluation times)
    end: float
    n_samples: int
    has_alignment: bool
    audio_path: str
    words: tuple = ()       # (symbol, start_s, end_s) rows written to .wdseg, silences included
    phones: tuple = ()      # (symbol, start_s, end_s) rows written to .phseg

    @property
    def speaker(self) -> str:
        return f"Ses{self.session:02d}{self.gender}"


@dataclass
class FakeCorpus:
    root: Path                      # what a user passes as --root
    base: Path                      # the folder that holds Session1..5
    utterances: list[FakeUtterance] = field(default_factory=list)

    def expected(self, labels: Mapping[str, str] = FOUR_CLASS) -> list[dict]:
        """What a reader must return, as ``Utterance``-like dicts sorted by id."""
        out = []
        for u in sorted(self.utterances, key=lambda u: u.id):
            if u.code not in labels:
                continue
            aligns = {}
            if u.has_alignment:
                fa = self.base / f"Session{u.session}" / "sentences" / "ForcedAlignment" / u.dialog
                aligns = {"word": str(fa / f"{u.id}.wdseg"), "phone": str(fa / f"{u.id}.phseg")}
            out.append({"id": u.id, "audio_path": u.audio_path, "transcript": u.transcript, "label": labels[u.code],
                        "session": u.session, "speaker": u.speaker, "gender": u.gender, "start": None,
                        "end": None, "alignments": aligns})
        return out


def _dialogs(session: int) -> list[str]:
    s = f"Ses0{session}"
    names = [f"{s}F_impro01", f"{s}M_impro05a", f"{s}F_script01_1", f"{s}M_script02_2"]
    if session == 5:
        names.append("Ses05M_script01_1b")
    return names


def _tile(symbols: list[str], n_frames: int) -> list[tuple[str, int, int]]:
    """Rows (symbol, SFrm, EFrm) tiling frames 0..n_frames-1 as evenly as possible."""
    cuts = np.linspace(0, n_frames, len(symbols) + 1).round().astype(int)
    return [(s, int(a), int(b) - 1) for s, a, b in zip(symbols, cuts[:-1], cuts[1:])]


def _write_seg(path: Path, rows: list[tuple[str, int, int]], last_col: str, width: int, rng) -> None:
    lines = [f"\t SFrm  EFrm    SegAScr {last_col}"]
    for sym, a, b in rows:
        lines.append(f"\t{a:5d} {b:5d} {-int(rng.integers(1000, 90000)):{width}d} {sym}")
    lines.append(f" Total score: {-int(rng.integers(10**5, 10**7)):11d}")
    path.write_text("\n".join(lines) + "\n")


def make_fake_iemocap(root: str | Path, counts: Mapping[int, Mapping[str, int]] | None = None,
                      seconds: float = 0.3, nested: bool = False, seed: int = 0,
                      alignments: bool = True) -> FakeCorpus:
    """Write a fake corpus under ``root``; ``counts[session][code]`` utterances per raw code
    (default: a few of each, with ``fru``, ``xxx`` and ``sur`` beside the four classes). A session
    given no utterances gets one ``xxx`` (outside every standard label set), and a dialog given
    none gets no files, as in the real corpus: the reader refuses an EmoEvaluation file without
    utterances. Audio: a label-dependent tone plus noise, ``seconds`` long (±30 %)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    base = root / "IEMOCAP_full_release" / "IEMOCAP_full_release" if nested else root
    counts = counts or {s: DEFAULT_COUNTS for s in range(1, 6)}
    corpus = FakeCorpus(root=root, base=base)
    no_alignment_done = False
    for session in range(1, 6):
        sdir = base / f"Session{session}"
        dialogs = _dialogs(session)
        codes = [c for c, n in sorted(counts.get(session, {}).items()) for _ in range(n)]
        if not codes:  # every real session has labelled dialogs, and the reader refuses an empty one
            codes = ["xxx"]
        rng.shuffle(codes)
        per_dialog: dict[str, list[str]] = {d: [] for d in dialogs}
        for i, c in enumerate(codes):
            per_dialog[dialogs[i % len(dialogs)]].append(c)
        for d_idx, dialog in enumerate(dialogs):
            emo_dir = sdir / "dialog" / "EmoEvaluation"
            for sub in ("transcriptions", "EmoEvaluation/Categorical", "wav"):
                (sdir / "dialog" / sub).mkdir(parents=True, exist_ok=True)
            wav_dir = sdir / "sentences" / "wav" / dialog
            fa_dir = sdir / "sentences" / "ForcedAlignment" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            fa_dir.mkdir(parents=True, exist_ok=True)
            t, counters = 2.0, {"F": 0, "M": 0}
            emo_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            trans_lines, cat_lines, lab = [], [], {"F": ["Header"], "M": ["Header"]}
            latin1 = d_idx == 1  # one file per session with a latin-1 byte
            for k, code in enumerate(per_dialog[dialog]):
                gender = "FM"[k % 2]
                uid = f"{dialog}_{gender}{counters[gender]:03d}"
                counters[gender] += 1
                dur = round(seconds * float(rng.uniform(0.7, 1.3)), 4)
                start, end = round(t, 4), round(t + dur, 4)
                t = end + 0.5
                n = int(round((end - start) * SR))
                words = list(WORDS[code])
                if latin1 and k == 0:
                    words = words + ["café"]
                text = " ".join(words).capitalize() + ("!" if code in ("ang", "exc") else ".")
                audio = (0.3 * np.sin(2 * np.pi * FREQ.get(code, 150.0) * np.arange(n) / SR)
                         + 0.05 * rng.standard_normal(n)) * 32767 * 0.8
                wav = wav_dir / f"{uid}.wav"
                sf.write(wav, audio.astype(np.int16), SR, subtype="PCM_16")
                v, a, dm = (round(float(x), 4) for x in rng.uniform(1, 5, 3))
                emo_lines += [f"[{start:.4f} - {end:.4f}]\t{uid}\t{code}\t[{v:.4f}, {a:.4f}, {dm:.4f}]",
                              f"C-E2:\t{code.capitalize()};\t()", "C-E3:\tNeutral; Other;\t(a comment, with commas)",
                              f"C-{gender}1:\t{code.capitalize()};\t()",
                              f"A-E3:\tval {int(v)}; act {int(a)}; dom  {int(dm)};\t()", ""]
                cat_lines.append(f"[{start:.4f} - {end:.4f}]\t{uid}\tfea\t[1.0000, 1.0000, 1.0000]")
                trans_lines.append(f"{uid} [{start:08.4f}-{end:08.4f}]: {text}")
                if k == 1:
                    trans_lines.append(f"{dialog}_MXX0 [{end:08.4f}-{end + 0.3:08.4f}]: [LAUGHTER], That's what they say.")
                    trans_lines.append("M: Yeah.")
                lab[gender].append(f"{start:.4f} {end:.4f} {uid}")
                has_align = alignments and not (not no_alignment_done and code in FOUR_CLASS and session == 3)
                if alignments and not has_align:
                    no_alignment_done = True
                w_rows, p_rows = (), ()
                if has_align:
                    n_frames = n // 160
                    spelled = [w.upper().replace("É", "E") for w in words]
                    spelled[0] = spelled[0] + "(2)"
                    wsyms = ["<s>"] + spelled[:1] + ["<sil>"] + spelled[1:] + ["++BREATHING++", "</s>"]
                    wtile = _tile(wsyms, max(n_frames, len(wsyms)))
                    _write_seg(fa_dir / f"{uid}.wdseg", wtile, "Word", 10, rng)
                    phones = ["SIL"] + [PHONES.get(ch, "AH") for ch in "".join(words).replace("é", "e")][:8] + ["SIL"]
                    ptile = _tile(phones, max(n_frames, len(phones)))
                    rows = []
                    for j, (sym, a_, b_) in enumerate(ptile):
                        if sym != "SIL" and j % 2 == 0:  # triphone context row
                            sym = f"{sym} {ptile[j - 1][0]} {ptile[j + 1][0]} {'bies'[j % 4]}"
                        rows.append((sym, a_, b_))
                    _write_seg(fa_dir / f"{uid}.phseg", rows, "Phone", 9, rng)
                    w_rows = tuple((s, a_ * 0.01, (b_ + 1) * 0.01) for s, a_, b_ in wtile)
                    p_rows = tuple((s, a_ * 0.01, (b_ + 1) * 0.01) for s, a_, b_ in ptile)
                corpus.utterances.append(FakeUtterance(
                    id=uid, dialog=dialog, code=code, transcript=text, session=session, gender=gender,
                    start=start, end=end, n_samples=n, has_alignment=has_align, audio_path=str(wav),
                    words=w_rows, phones=p_rows))
            if not per_dialog[dialog]:
                continue  # no files: every real dialog has utterances, and an empty EmoEvaluation file is refused
            eol = "\r\n" if d_idx == 2 else "\n"
            (emo_dir / f"{dialog}.txt").write_bytes(eol.join(emo_lines).encode())
            (emo_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text("\n".join(cat_lines) + "\n")
            (sdir / "dialog" / "transcriptions" / f"{dialog}.txt").write_bytes(
                (eol.join(trans_lines) + eol).encode("latin-1" if latin1 else "utf-8"))
            for g in "FM":
                lab_dir = sdir / "dialog" / "lab" / f"Ses0{session}_{g}"
                lab_dir.mkdir(parents=True, exist_ok=True)
                (lab_dir / f"{dialog}.lab").write_text("\n".join(lab[g]) + "\n")
        junk = b"\x00\x05\x16\x07" + bytes(60)
        (sdir / "dialog" / "EmoEvaluation" / f"._{dialogs[0]}.txt").write_bytes(junk)
        (sdir / "sentences" / "wav" / dialogs[0] / f"._{dialogs[0]}_F000.wav").write_bytes(junk)
    for extra in ("README.txt",):
        (base / extra).write_text("fake IEMOCAP for tests\n")
    (base / "Documentation").mkdir(exist_ok=True)
    return corpus
