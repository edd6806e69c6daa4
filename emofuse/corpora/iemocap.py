"""IEMOCAP reader: the layout and quirks documented in docs/iemocap.md.

Only this module knows the IEMOCAP layout; everything downstream sees ``Utterance`` records.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping

from ..errors import CorpusError
from .records import Utterance
from .textio import read_lines, visible

log = logging.getLogger(__name__)

UTT_RE = re.compile(
    r"^Ses0([1-5])([FM])_(impro|script)(\d\d)([ab]?)(?:_(\d)([ab]?))?_([FM])(\d{3})$"
)
#: the name of a dialog (and of its EmoEvaluation and transcription files): an utterance id
#: without its speaker part
DIALOG_NAME_RE = re.compile(r"^Ses0[1-5][FM]_(impro|script)\d\d[ab]?(?:_\d[ab]?)?$")
SUMMARY_RE = re.compile(r"^\[([\d.]+) - ([\d.]+)\]\t(\S+)\t(\w+)\t\[([^\]]*)\]")
#: A transcript line: ``ID [START-END]: TEXT``. The corpus writes one space after the id and none
#: inside the brackets; other whitespace there (two spaces, a tab, ``[3.0 - 3.2]``, a leading
#: space) is accepted too, as other public IEMOCAP readers do, so a re-saved file keeps its text.
TRANSCRIPT_RE = re.compile(r"^\s*([^\s\[]+)\s*\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s*:\s?(.*)$")
#: The first token of a line (up to whitespace, a bracket or a colon): a line whose first token is
#: an utterance id but which ``TRANSCRIPT_RE`` does not match is a damaged transcript line.
FIRST_TOKEN_RE = re.compile(r"^\s*([^\s\[:]+)")
#: An untimed line of a transcription file (``M: Yeah.``): skipped, as the corpus documents.
SPEAKER_LINE_RE = re.compile(r"^\s*\S+:")
#: What a summary line starts with: a bracket at the line start, then the utterance id as the
#: first token after it. A line of this shape whose token is an utterance id but which
#: ``SUMMARY_RE`` does not match is a damaged summary line, and so is one whose token starts
#: like an id (``ID_LIKE_PREFIX``, in any case) but is not one (``Ses01F_impro01_M000;``,
#: ``…_F0000``, ``ses01f_impro01_f000``).
SUMMARY_LIKE_RE = re.compile(r"^\s*\[[^\]]*\]\s*([^\s\[\]]+)")
ID_LIKE_PREFIX = "Ses0"

#: The standard four-class set: excited merged into happy (5,531 utterances).
FOUR_CLASS: Mapping[str, str] = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}
#: The six-class set (7,380 utterances): excited kept apart, frustrated added.
SIX_CLASS: Mapping[str, str] = {c: c for c in ("ang", "hap", "exc", "neu", "sad", "fru")}
LABEL_SETS: Mapping[str, Mapping[str, str]] = {"four": FOUR_CLASS, "six": SIX_CLASS}
#: Utterances of the full release in the four classes, per session (5,531 in all): a copy read
#: with other counts is partial or edited, and its numbers do not compare with published ones.
FULL_RELEASE_FOUR_CLASS = (1085, 1023, 1151, 1031, 1241)
ALL_CODES = ("ang", "hap", "exc", "neu", "sad", "fru", "sur", "fea", "oth", "dis", "xxx")

SESSIONS = tuple(f"Session{i}" for i in range(1, 6))
ALIGNMENT_SUFFIXES = {".wdseg": "word", ".phseg": "phone", ".syseg": "syllable"}


def label_mapping(spec: str) -> dict[str, str]:
    """``--labels`` as a mapping raw label → class: a named set (``four``, ``six``) or a comma
    list of the classes to keep (``angry,happy,neutral,sad``), where ``raw:class`` merges a raw
    label into a class (``ang,hap,exc:hap,neu,sad``). Never split into characters."""
    if spec in LABEL_SETS:
        return dict(LABEL_SETS[spec])
    out: dict[str, str] = {}
    for part in str(spec).split(","):
        raw, _, cls = (x.strip() for x in part.partition(":"))
        if not raw or (_ and not cls):
            raise CorpusError(f"--labels {spec!r}: expected a named set ({', '.join(sorted(LABEL_SETS))}) or a "
                              "comma list of classes such as angry,happy,neutral,sad (raw:class merges, e.g. exc:hap)")
        if raw in out:   # the later one would win silently: hap,…,hap:neu relabels every hap
            raise CorpusError(f"--labels {spec!r} names {raw!r} twice ({raw}:{out[raw]} and {raw}:{cls or raw}); "
                              "each raw label goes to one class")
        out[raw] = cls or raw
    return out


def resolve_labels(labels: str | Mapping[str, str] | None) -> dict[str, str]:
    """A label mapping (raw IEMOCAP code → label) from a preset name, a ``--labels`` comma list
    (``label_mapping``) or a mapping."""
    if labels is None:
        return dict(FOUR_CLASS)
    if isinstance(labels, str) and labels not in LABEL_SETS and any(
            c in ALL_CODES for c in label_mapping(labels)):
        labels = label_mapping(labels)
    if isinstance(labels, str):
        if labels not in LABEL_SETS:
            raise CorpusError(
                f"unknown IEMOCAP label set {labels!r}; expected one of {sorted(LABEL_SETS)} or a mapping code → label"
            )
        return dict(LABEL_SETS[labels])
    mapping = dict(labels)
    unknown = sorted(set(mapping) - set(ALL_CODES))
    if unknown:
        raise CorpusError(f"label mapping names codes {unknown} that IEMOCAP does not use; its codes are {list(ALL_CODES)}")
    return mapping


def find_root(root: str | Path) -> Path:
    """The folder holding Session1..Session5: ``root`` itself or a folder up to two levels below.
    Every such folder up to that depth is looked for (a copy's own folders are not searched: a
    copy nested in another, ``IEMOCAP_full_release/IEMOCAP_full_release/``, is one copy); two
    copies side by side (``IEMOCAP/`` and ``IEMOCAP_full_release/``) are refused, never one of
    them taken by its name."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"IEMOCAP root {root} is not a folder; expected the folder that holds Session1 … Session5")
    found: list[Path] = []
    candidates = [root]
    for depth in range(3):
        nxt = []
        for c in candidates:
            if _holds_sessions(c):
                found.append(c)
            elif depth < 2:
                nxt += _subfolders(c)
        candidates = nxt
    seen: dict[str, Path] = {}   # one copy reached twice (a symlink beside its target) is one copy
    for p in found:
        seen.setdefault(os.path.realpath(p), p)
    found = list(seen.values())
    if len(found) == 1:
        return found[0]
    if found:
        found.sort()
        names = [str(p) for p in found]
        listed = " and ".join(names) if len(names) == 2 else f"{', '.join(names[:-1])} and {names[-1]}"
        raise CorpusError(f"--root {root} holds {'two' if len(found) == 2 else len(found)} IEMOCAP copies "
                          f"(folders holding Session1 … Session5): {listed}; point --root at one")
    present = sorted(p.name for p in root.iterdir() if visible(p.name))[:8]
    raise CorpusError(
        f"{root} does not look like an IEMOCAP copy: expected a folder holding Session1 … Session5 "
        f"(here or up to two levels below), found {present or 'nothing'}"
    )


def _holds_sessions(folder: Path) -> bool:
    try:
        return all((folder / s).is_dir() for s in SESSIONS)
    except OSError:  # a folder we may not look into holds no copy we could read
        return False


def _subfolders(folder: Path) -> list[Path]:
    try:
        # __MACOSX: the AppleDouble mirror a macOS zip unpacks beside the copy (only ._ files)
        return sorted(p for p in folder.iterdir() if visible(p.name) and p.name != "__MACOSX" and p.is_dir())
    except OSError:
        return []


def parse_emo_evaluation(path: Path) -> dict[str, str]:
    """``{utterance id: emotion code}`` from one consensus EmoEvaluation file. The times of a
    summary line are positions in the dialog wav, which we do not read (each sentence wav is
    already cut). A damaged file raises ``CorpusError`` naming the file and line: times that are
    not numbers, a code IEMOCAP does not use (``sadd``, ``Sad``), an id listed twice, a line that
    starts like a summary line (``[start - end]`` and an utterance id) but does not have its
    form, a summary line whose id starts like one (``Ses0``) but is not one
    (``Ses01F_impro01_M000;``), and a file with no summary line at all (empty, or re-saved as
    UTF-16)."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    lines = read_lines(path)
    for no, line in enumerate(lines, start=1):
        m = SUMMARY_RE.match(line)
        if not (m and UTT_RE.match(m.group(3))):
            like = SUMMARY_LIKE_RE.match(line)
            token = (m.group(3) if m else like.group(1)) if (m or like) else ""
            if token[:len(ID_LIKE_PREFIX)].lower() == ID_LIKE_PREFIX.lower() and not UTT_RE.match(token):
                raise CorpusError(f"{path}, line {no}: {line[:120]!r} is a summary line whose id {token[:60]!r} "
                                  "is not an IEMOCAP utterance id (expected the form Ses0<n><F|M>_<impro|script>"
                                  "<NN>…_<F|M><NNN>, e.g. Ses01F_impro01_F000)")
            if like and UTT_RE.match(like.group(1)):
                raise CorpusError(f"{path}, line {no}: {line[:120]!r} starts like the summary line of "
                                  f"{like.group(1)} but does not have its form "
                                  "'[START - END]<TAB>ID<TAB>CODE<TAB>[V, A, D]' (TABs between the fields)")
            continue
        uid, code = m.group(3), m.group(4)
        try:
            float(m.group(1)), float(m.group(2))
        except ValueError:
            raise CorpusError(f"{path}, line {no}: times [{m.group(1)[:20]} - {m.group(2)[:20]}] of {uid} "
                              "are not numbers of seconds") from None
        if code not in ALL_CODES:
            hint = " (codes are lower case)" if code.lower() in ALL_CODES else ""
            raise CorpusError(f"{path}, line {no}: {uid} has emotion code {code[:40]!r}, which is not one of "
                              f"IEMOCAP's codes {' '.join(ALL_CODES)}{hint}")
        if uid in out:
            raise CorpusError(f"{path}, line {no}: {uid} is listed again (first on line {first_line[uid]}); "
                              "each utterance has one summary line")
        out[uid] = code
        first_line[uid] = no
    if not out:
        raise CorpusError(f"{path} {_why_no_lines(lines, 'summary line')}: expected UTF-8 or latin-1 text with one "
                          "'[START - END]<TAB>ID<TAB>CODE<TAB>[V, A, D]' line per utterance of its dialog")
    return out


def _why_no_lines(lines: list[str], what: str) -> str:
    """Why a corpus text file yielded none of the lines it exists for: empty, UTF-16, or neither."""
    if lines == [""]:
        return "is empty (0 bytes)"
    if any("\x00" in line for line in lines):
        return f"holds NUL bytes (UTF-16 text?) and no {what}"
    return f"holds no {what}"


def parse_transcription(path: Path) -> dict[str, str]:
    """``{utterance id: text}``; XX lines and untimed ``M:``/``F:`` lines are skipped. An id
    transcribed twice with different texts raises ``CorpusError`` naming the file and line (the
    same line repeated is harmless and read once), and so does a file with no transcript line at
    all (empty, or re-saved as UTF-16): its dialog's utterances would silently lose their text."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    stray: list[int] = []
    lines = read_lines(path)
    for no, line in enumerate(lines, start=1):
        m = TRANSCRIPT_RE.match(line)
        if not m:
            first = FIRST_TOKEN_RE.match(line)
            if first and UTT_RE.match(first.group(1)):   # its utterance would silently lose its text
                raise CorpusError(f"{path}, line {no}: {first.group(1)}'s transcript line does not have the form "
                                  f"'ID [START-END]: TEXT' ({line.strip()[:80]!r}); correct the line")
        if not m and line.strip() and not SPEAKER_LINE_RE.match(line):
            stray.append(no)
        if m and UTT_RE.match(m.group(1)):
            uid, text = m.group(1), m.group(4).strip()
            if uid in out:
                if out[uid] != text:
                    raise CorpusError(f"{path}, line {no}: {uid} is transcribed again with another text (first on "
                                      f"line {first_line[uid]}); each utterance has one transcript line")
                continue
            out[uid] = text
            first_line[uid] = no
    if not out:
        raise CorpusError(f"{path} {_why_no_lines(lines, 'transcript line')}: expected UTF-8 or latin-1 text with "
                          "one 'ID [START-END]: TEXT' line per utterance of its dialog")
    if stray:   # e.g. the rest of a transcript after a line break (a CR) inside it: its text is not read
        log.warning(f"{path}: {len(stray)} line(s) are neither transcript lines nor untimed speaker lines, and are "
                    f"not read (first, line {stray[0]}: {lines[stray[0] - 1].strip()[:60]!r}); a line break inside "
                    "a transcript?")
    return out


def _alignment_index(fa_dir: Path) -> dict[str, dict[str, str]]:
    """``{utterance id: {tier: path}}`` from one dialog's ForcedAlignment folder (one listing)."""
    index: dict[str, dict[str, str]] = {}
    if not fa_dir.is_dir():
        return index
    with os.scandir(fa_dir) as it:
        for entry in it:
            if not visible(entry.name):
                continue
            stem, ext = os.path.splitext(entry.name)
            tier = ALIGNMENT_SUFFIXES.get(ext)
            if tier:
                index.setdefault(stem, {})[tier] = entry.path
    return index


def alignments_beside(audio: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{utterance id: {tier: path}}`` for the utterances of ``audio`` (``{id: wav path now}``)
    whose ``.wdseg/.phseg/.syseg`` files lie where ``load_iemocap`` looks for them
    (``SessionN/sentences/ForcedAlignment/<dialog>/<id>.*`` beside ``.../wav/<dialog>/<id>.wav``):
    one folder listing per dialog, nothing else read. Utterances with none are left out."""
    listed: dict[Path, dict[str, dict[str, str]]] = {}
    out = {}
    for uid, wav in audio.items():
        wav_dir = Path(wav).parent
        if wav_dir.parent.name != "wav":
            continue
        fa_dir = wav_dir.parent.parent / "ForcedAlignment" / wav_dir.name
        if fa_dir not in listed:
            listed[fa_dir] = _alignment_index(fa_dir)
        found = listed[fa_dir].get(uid)
        if found:
            out[uid] = found
    return out


def load_iemocap(root: str | Path, labels: str | Mapping[str, str] | None = None,
                 full_release: bool = True) -> list[Utterance]:
    """Read an IEMOCAP copy into ``Utterance`` records sorted by id.

    ``labels`` maps raw codes to labels (default: the four-class set, ``exc`` → ``hap``);
    utterances whose code is not in the mapping are left out. Raises ``CorpusError`` for a
    root without Session1–5, a session without EmoEvaluation files, a damaged EmoEvaluation or
    transcription file (``parse_emo_evaluation``, ``parse_transcription``), an id listed in two
    files, an id of another session than the ``SessionN`` folder its file lies in, or a missing
    sentence wav. Session and speaker come from the id (``Ses02F_…_M003``: session 2, speaker
    ``Ses02M``). Sentence wavs that no summary line lists are counted in a warning, and so are
    four-class counts per session other than the full release's (unless not ``full_release``:
    the bundled demo, which has IEMOCAP's layout and its own size).
    """
    mapping = resolve_labels(labels)
    base = find_root(root)
    utts: list[Utterance] = []
    listed: dict[str, str] = {}  # every id with a summary line, whatever its code → its file
    untranscribed: list[str] = []  # kept utterances that no transcription line covers
    for s_idx, session in enumerate(SESSIONS, start=1):
        dialog_dir = base / session / "dialog"
        emo_dir = dialog_dir / "EmoEvaluation"
        txt = sorted(p for p in (emo_dir.iterdir() if emo_dir.is_dir() else [])
                     if p.is_file() and visible(p.name) and p.suffix == ".txt")
        # a dialog's file is named after the dialog (Ses01F_impro01.txt); another .txt there (a
        # user's notes) is no label file: said once and left alone, never refused or parsed
        emo_files = [p for p in txt if DIALOG_NAME_RE.match(p.stem)]
        for p in txt:
            if not DIALOG_NAME_RE.match(p.stem):
                log.warning(f"{p} is not named after a dialog (Ses0N…); it is not read as a label file")
        if not emo_files:
            raise CorpusError(f"{emo_dir} holds no EmoEvaluation/<dialog>.txt files; expected one per dialog")
        align_cache: dict[str, dict[str, dict[str, str]]] = {}
        for emo in emo_files:
            codes = parse_emo_evaluation(emo)
            for utt_id in codes:
                if _session_of(utt_id) != s_idx:
                    raise CorpusError(f"{emo} lists {utt_id}, an utterance of session {_session_of(utt_id)} (by its "
                                      f"id), but lies in the folder {base / session}; the id decides the session "
                                      f"(the fold): move the dialog's files to Session{_session_of(utt_id)}")
                if utt_id in listed:
                    raise CorpusError(f"utterance id {utt_id} appears twice in the EmoEvaluation files, in "
                                      f"{listed[utt_id]} and in {emo}; each utterance has one summary line")
                listed[utt_id] = str(emo)
            trans_path = dialog_dir / "transcriptions" / f"{emo.stem}.txt"
            texts = parse_transcription(trans_path) if trans_path.is_file() else {}
            for utt_id, code in codes.items():
                if code not in mapping:
                    continue
                dialog = utt_id.rsplit("_", 1)[0]  # from the id, not the file name
                if dialog not in align_cache:
                    align_cache[dialog] = _alignment_index(base / session / "sentences" / "ForcedAlignment" / dialog)
                aligns = align_cache[dialog]
                wav = base / session / "sentences" / "wav" / dialog / f"{utt_id}.wav"
                if not wav.is_file():
                    raise CorpusError(f"missing audio file {wav} for labelled utterance {utt_id} (listed in {emo})")
                if not texts.get(utt_id):
                    why = "an empty text" if utt_id in texts else "no line"
                    untranscribed.append(f"{utt_id} ({why} in {trans_path if trans_path.is_file() else f'no {trans_path}'})")
                gender = utt_id.rsplit("_", 1)[1][0]
                utts.append(
                    Utterance(
                        id=utt_id,
                        audio_path=str(wav),
                        transcript=texts.get(utt_id, ""),
                        label=mapping[code],
                        session=_session_of(utt_id),
                        speaker=f"Ses{_session_of(utt_id):02d}{gender}",
                        gender=gender,
                        alignments=aligns.get(utt_id, {}),
                    )
                )
    utts.sort(key=lambda u: u.id)
    if untranscribed:
        log.warning(f"{len(untranscribed)} labelled utterance(s) have no text (no line, or an empty one, in their "
                    f"dialog's transcription file), e.g. {untranscribed[0]}; text streams skip them (the real corpus "
                    "has none)")
    if full_release and mapping == FOUR_CLASS:
        counts = tuple(sum(u.session == i for u in utts) for i in range(1, 6))
        if counts != FULL_RELEASE_FOUR_CLASS:
            log.warning(f"{base} reads as {len(utts):,} utterances in the four classes ({'/'.join(map(str, counts))} per "
                        f"session); the full release has {sum(FULL_RELEASE_FOUR_CLASS):,} "
                        f"({'/'.join(map(str, FULL_RELEASE_FOUR_CLASS))}): a partial or edited copy, whose numbers do "
                        "not compare with published ones")
    unlabelled = _unlabelled_wavs(base, listed)
    if unlabelled:
        log.warning(f"{len(unlabelled)} sentence wav(s) under {base}/Session*/sentences/wav have no summary line in "
                    f"any EmoEvaluation file and are left out, e.g. {unlabelled[0]} (the real corpus has none)")
    return utts


def _session_of(utt_id: str) -> int:
    """The session of an utterance id (``Ses02F_…`` → 2): the id decides it, not the folder."""
    return int(utt_id[3:5])


def _unlabelled_wavs(base: Path, listed: Mapping[str, str]) -> list[str]:
    """Sorted paths of the sentence wavs whose id no EmoEvaluation summary line lists (one
    listing per dialog folder). The real corpus has a line for every one of its 10,039 wavs."""
    out = []
    for session in SESSIONS:
        wav_root = base / session / "sentences" / "wav"
        if not wav_root.is_dir():
            continue
        with os.scandir(wav_root) as dialogs:
            folders = [d.path for d in dialogs if visible(d.name) and d.is_dir()]
        for folder in folders:
            with os.scandir(folder) as it:
                out += [e.path for e in it if visible(e.name) and e.name.endswith(".wav")
                        and e.name[:-4] not in listed]
    return sorted(out)
