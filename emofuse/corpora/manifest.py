"""Generic manifest reader (CSV, TSV or JSONL) for any corpus.

Strict wherever an ambiguity would change results rather than fail: a CSV row with the wrong
number of fields (an unquoted comma in a transcript shifts the label into another column), a
quoted field running over a line end (an unterminated quote swallows the rest of the file), and a
label, session or speaker spelled two ways (``Ang``/``ang``, ``1``/``1.0``) would each silently
create a new class, fold or speaker, so each is refused with one sentence naming the file and
line. Validation is written by hand rather than with a schema library (pydantic, pandera): the
checks that matter span rows (two spellings) or concern the CSV's lines, which row schemas do
not see, and one sentence per problem is easier to keep than a library's multi-line report.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import soundfile as sf

from ..errors import CorpusError
from .records import Utterance
from .textio import LINE_END_RE, decode_lines

log = logging.getLogger(__name__)

REQUIRED = ("id", "audio", "text", "label", "speaker", "session")
OPTIONAL = ("start", "end", "duration", "gender", "textgrid", "channel")
SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")


def _is_file(path: Path, what: str) -> bool:
    """``path.is_file()``, with OS errors that are the input's fault (a name too long, a path
    through a file) as one sentence."""
    try:
        return path.is_file()
    except (OSError, ValueError) as e:  # ENAMETOOLONG, embedded NUL …
        shown = str(path) if len(str(path)) <= 120 else str(path)[:100] + f"… ({len(str(path))} characters)"
        raise CorpusError(f"{what} {shown} cannot be looked up: {getattr(e, 'strerror', None) or e}") from None


def _decode(path: Path) -> str:
    # As the IEMOCAP reader reads its text files (``textio.read_lines``): UTF-8 when the file
    # decodes, else each line on its own, as UTF-8 or as cp1252, so ``Müller`` and ``Möller``
    # written by a Windows tool stay two speakers (U+FFFD made both ``M\ufffdller``). A UTF-8
    # byte-order mark is dropped. Lines are joined with \n: line numbers stay those of the file.
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"manifest {path} cannot be read: {e.strerror or e}") from None
    return "\n".join(decode_lines(raw))


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    rows, columns = [], []
    for no, line in enumerate(LINE_END_RE.split(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise CorpusError(f"manifest {path}, line {no} is not valid JSON: {str(e)[:120]}") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"manifest {path}, line {no} holds a JSON {type(obj).__name__}; "
                              "expected one object per line ({\"id\": …, \"audio\": …})")
        for k, v in obj.items():
            # only the columns read are type-checked: a nested field nobody reads ("meta": {…},
            # "words": […], as aligners and NeMo tools add) is no reason to refuse the manifest
            if v is not None and not isinstance(v, (str, int, float)) and str(k).strip().casefold() in _ALIAS_OF:
                raise CorpusError(f"manifest {path}, line {no}: field {k!r} holds a JSON {type(v).__name__}; "
                                  "expected a string, a number or null")
            if k not in columns:
                columns.append(k)
        rows.append((no, obj))
    return columns, rows


def _read_csv(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, header, last_line = [], None, 0
    try:
        for fields in reader:
            first_line = last_line + 1
            last_line = reader.line_num
            if last_line > first_line and any("\n" in f or "\r" in f for f in fields):
                raise CorpusError(f"manifest {path}, line {first_line}: a quoted field runs on to line {last_line} "
                                  "(an unterminated quote?); a field may not hold a line break")
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                dup = sorted({h for h in header if header.count(h) > 1})
                if dup:
                    raise CorpusError(f"manifest {path}, line {first_line}: column {dup[0]!r} appears twice in the header")
                continue
            if len(fields) != len(header):
                raise CorpusError(
                    f"manifest {path}, line {first_line} has {len(fields)} fields, the header {len(header)}: "
                    f"{'an unquoted ' + repr(delimiter) + ' inside a field? quote it' if len(fields) > len(header) else 'a field is missing'}")
            rows.append((first_line, dict(zip(header, fields))))
    except csv.Error as e:
        if "end of data" in str(e):
            raise CorpusError(f"manifest {path}, line {last_line + 1}: a quoted field is never closed (an unterminated "
                              "quote?); a field may not hold a line break") from None
        raise CorpusError(f"manifest {path}, line {reader.line_num} is not valid CSV: {e}") from None
    return header or [], rows


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _text(v: Any) -> str:
    return "" if _blank(v) else str(v).strip()


def _session(v: Any) -> int | str:
    """Digits (``1``, ``01``) become int; anything else stays a string."""
    s = _text(v)
    return int(s) if s.lstrip("-").isdigit() else s


def _same_session(s: int | str) -> Any:
    """What two spellings of one session share: ``1``, ``01`` and ``1.0`` are the same number."""
    try:
        x = float(s)
    except ValueError:
        return s
    return int(x) if math.isfinite(x) and x == int(x) else s


def _seconds(v: Any, name: str, where: str) -> float | None:
    if _blank(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise CorpusError(f"{where}: {name} {str(v)[:40]!r} is not a number of seconds") from None
    if not math.isfinite(x) or x < 0:
        raise CorpusError(f"{where}: {name} {x} is not a finite number of seconds >= 0")
    return x


def _one_spelling(values: list[tuple[str, Any, str]], column: str, path: Path, what: str = "manifest") -> None:
    """Refuse a value written two ways (``Ang``/``ang``; session ``1``/``1.0``): the two would
    silently become two classes, folds or speakers. ``values``: (spelling, canonical, where)."""
    first: dict[Any, tuple[str, str]] = {}
    for spelling, canon, where in values:
        key = canon.casefold() if isinstance(canon, str) else canon
        if key in first and first[key][0] != spelling:
            raise CorpusError(f"{what} {path}: {column} {spelling!r} ({where}) and {first[key][0]!r} "
                              f"({first[key][1]}) differ only in spelling; write one of them everywhere")
        first.setdefault(key, (spelling, where))


#: the common names of each column (compared case-insensitively); two columns of one file that
#: name the same column (``wav`` and ``path``) are refused
ALIASES = {
    "id": ("id", "utt_id", "utterance_id"),
    "audio": ("audio", "wav", "path", "audio_path", "audio_filepath"),
    "text": ("text", "transcript", "transcription"),
    "label": ("label", "emotion"),
    "speaker": ("speaker", "speaker_id"),
    "session": ("session",),
    # NeMo writes offset + duration, SpeechBrain start + stop (or duration)
    "start": ("start", "offset", "start_time", "begin"), "end": ("end", "stop", "end_time"),
    "duration": ("duration",), "gender": ("gender",), "textgrid": ("textgrid",),
    "channel": ("channel", "channel_id"),
}
_ALIAS_OF = {a: canon for canon, names in ALIASES.items() for a in names}


def canonical_columns(columns: Iterable[str], path: Path | str) -> dict[str, str]:
    """{column as written: its canonical name} for the columns that are a known name or alias
    (case-insensitive: ``Wav``, ``Emotion``). Two columns naming one canonical column are refused."""
    out: dict[str, str] = {}
    first: dict[str, str] = {}
    columns = list(columns)
    written = {str(c).strip().casefold() for c in columns}
    for c in columns:
        canon = _ALIAS_OF.get(str(c).strip().casefold())
        if canon is None:
            continue
        if canon in ("start", "end") and canon in written and str(c).strip().casefold() != canon:
            continue   # a time alias beside the column itself (start and offset): the column is read, as before
        if canon in first:
            raise CorpusError(f"manifest {path}: columns {first[canon]!r} and {c!r} both name the {canon!r} column "
                              f"(aliases {list(ALIASES[canon])}); keep one of them")
        first[canon] = c
        out[c] = canon
    return out


#: column names that say an utterance's span (``onset``, ``seg_end``, ``endTime``, ``utt_dur``),
#: matched on the whole name with its separators and case dropped: such a column that is not one
#: of ``ALIASES`` and holds numbers is refused rather than ignored, since ignoring it reads every
#: row as its whole file. Whole names only: ``text_length``, ``timestamp``, ``is_turn_start`` are
#: something else.
_TIME_COMPACT = re.compile(r"(start|end|begin|stop|onset|offset)(time|sec|secs|seconds|ms|s)?|dur(ation)?s?|"
                           r"(seg|segment|utt|utterance)(start|end|begin|stop|dur|duration|length|len)|"
                           r"[tx](min|max)")


def _numbers(values) -> bool:
    """Whether every non-empty value reads as a number (and at least one is there)."""
    seen = False
    for v in values:
        if v is None or str(v).strip() == "":
            continue
        try:
            float(str(v).strip())
        except ValueError:
            return False
        seen = True
    return seen


def looks_like_time(column: str) -> bool:
    """Whether a column name reads as a time or length (``duration``, ``end_time``, ``segStart``)."""
    return _TIME_COMPACT.fullmatch(re.sub(r"[^a-z]", "", str(column).strip().casefold())) is not None


def _channel(row: dict, uid: str, where: str) -> int | None:
    """A row's ``channel``: a 0-based whole number (``1`` or ``1.0``), or None when blank (every
    channel of the file, mixed to mono)."""
    v = row.get("channel")
    if _blank(v):
        return None
    try:
        f = float(str(v).strip())
    except ValueError:
        f = float("nan")
    if not (math.isfinite(f) and f >= 0 and f == int(f)):
        raise CorpusError(f"{where}: channel {v!r} of {uid!r} is not a channel number; expected a whole number "
                          "from 0 (the file's first channel), or blank for every channel mixed to mono (a column "
                          "of that name meaning something else: rename it)")
    return int(f)


def _file_channel(channel: int | None, audio: str, uid: str, where: str) -> int | None:
    """``channel`` of ``audio`` as read: None for a mono file's channel 0 (its only one: the
    utterance and its fingerprint are those of a row without the column); a channel the file
    lacks is refused (its header is read only for rows naming a channel)."""
    if channel is None:
        return None
    held, seconds = _header(audio)
    if seconds is None:   # unreadable here: extraction reports it per utterance
        return channel
    if held == 1 and channel == 0:
        return None
    if channel >= held:
        raise CorpusError(f"{where}: channel {channel} of {uid!r} is not in {audio}, which holds {held} channel(s); "
                          f"channels count from 0 (0 … {held - 1})")
    return channel


def _span(row: dict, uid: str, where: str, audio: str | None = None) -> tuple[float | None, float | None]:
    """(start, end) of a row: ``start``/``end``, or ``start`` (``offset``, 0 when blank) with
    ``duration`` when there is no ``end`` (beside an ``end``, a ``duration`` may be the file's and
    is not read). A duration from the file's start that reaches within ``WHOLE_S`` of the end of
    ``audio``, or past it, is the whole file (``end`` None, as a row without times): NeMo writes a
    whole file's length as its duration, rounded."""
    start = _seconds(row.get("start"), "start", where)
    end = _seconds(row.get("end"), "end", where)
    duration = _seconds(row.get("duration"), "duration", where)
    if duration is not None and end is None:
        end = round((start or 0.0) + duration, 6)
        length = _seconds_in(audio) if audio is not None and not start else None
        if length is not None and end >= length - WHOLE_S:
            start, end = None, None
    if start is not None and end is not None and end <= start:
        raise CorpusError(f"{where}: end {end} is not after start {start} for {uid!r}")
    if start is None and end is not None and end <= 0:
        raise CorpusError(f"{where}: end {end} is not after the file's start for {uid!r}")
    return start, end


#: a span from ``duration`` that ends this close to its file's end (or past it) is the rest of the file
WHOLE_S = 0.05


def _seconds_in(path: str) -> float | None:
    """An audio file's length in seconds (its header), None when it cannot be read here."""
    return _header(path)[1]


@functools.lru_cache(maxsize=1 << 18)
def _header_of(path: str, mtime_ns: int, size: int) -> tuple[int, float | None]:   # keyed by the file's state
    """(channels, seconds) of an audio file's header; (1, None) when it cannot be read."""
    try:
        info = sf.info(path)
        return int(info.channels), float(info.frames) / float(info.samplerate)
    except Exception:
        return 1, None


def _header(path: str) -> tuple[int, float | None]:
    """(channels, seconds) of an audio file's header, cached while the file is unchanged; (1, None)
    when it cannot be read here (extraction reports an unreadable file per utterance)."""
    try:
        st = os.stat(path)
    except OSError:
        return 1, None
    return _header_of(path, st.st_mtime_ns, st.st_size)


#: two utterances of one file overlapping by more than this share audio (rounding in a manifest aside)
OVERLAP_S = 0.01


def check_shared_audio(utts: list[Utterance], what: str) -> None:
    """Say when utterances of one audio file (same resolved path and channel) overlap by more than
    ``OVERLAP_S`` (a missing end is the file's end). Across sessions that may be one recording
    under two ids (a test fold would hold audio its model was trained on) or two speakers' crosstalk
    in one recording (expected): a warning, not a refusal. Within a session, a repeated row
    weighs twice. Each file's spans are swept in order of start, keeping the furthest end reached
    by each session so far: a sort and a pass, whatever the number of rows."""
    by_file: dict[str, list[tuple[float, float, Utterance]]] = {}
    for u in utts:
        by_file.setdefault(os.path.realpath(u.audio_path), []).append(
            (u.start or 0.0, math.inf if u.end is None else u.end, u))
    across, within, example_a, example_w = 0, 0, None, None
    for file, spans in by_file.items():
        if len(spans) < 2:
            continue
        # (session, channel) → (furthest end so far, whose); two named channels of one file are two
        # signals (a speaker's microphone each), and the file's mix (channel None) holds every channel
        reach: dict[Any, tuple[float, Utterance]] = {}
        for s, e, u in sorted(spans, key=lambda x: (x[0], x[2].id)):
            hits = [(sess, r_e, r_u) for (sess, ch), (r_e, r_u) in reach.items() if min(e, r_e) - s > OVERLAP_S
                    and (ch is None or u.channel is None or ch == u.channel)]
            other = [h for h in hits if h[0] != u.session]
            if other:
                across += 1
                example_a = example_a or (other[0][2], u, file, s, min(e, other[0][1]))
            elif hits:
                within += 1
                example_w = example_w or (hits[0][2].id, u.id, file)
            if e > reach.get((u.session, u.channel), (-math.inf, None))[0]:
                reach[(u.session, u.channel)] = (e, u)
    if across:
        a, u, file, s, to = example_a
        log.warning(f"{what}: {across} utterance(s) share more than {OVERLAP_S * 1000:g} ms of an audio file with an "
                    f"utterance of another session (e.g. {a.id!r} (session {a.session!r}) and {u.id!r} (session "
                    f"{u.session!r}) in {file}, from {s:g} s to {'its end' if to == math.inf else f'{to:g} s'}): two "
                    "speakers' crosstalk in one recording is expected, but one recording under two ids puts audio a "
                    "model was trained on into its test fold")
    if within:
        log.warning(f"{what}: {within} utterance(s) share more than {OVERLAP_S * 1000:g} ms of an audio file with "
                    f"another of their session (e.g. {example_w[0]!r} and {example_w[1]!r} in {example_w[2]}); a "
                    "repeated row weighs twice in training and scoring")


def left_out_warning(what: str, spec: str, counts: dict[str, int], unit: str = "row") -> str:
    """``N rows left out by --labels four: happy×1, Sad×1`` (most frequent first)."""
    shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    n = sum(counts.values())
    return (f"{what}: {n} {unit}{'' if n == 1 else 's'} left out by --labels {spec}: "
            + ", ".join(f"{k}×{n}" for k, n in shown[:12]) + (" …" if len(shown) > 12 else ""))


def near_code(label: str, keep: dict[str, str]) -> str | None:
    """The label of ``keep`` that ``label`` spells differently (``Sad`` for ``sad``), else None."""
    folded = {k.casefold(): k for k in keep}
    k = folded.get(label.casefold())
    return k if k is not None and k != label else None


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, row)]) of a .csv, .tsv or .jsonl file, columns as written."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CorpusError(f"manifest {path} has suffix {suffix!r}; expected .csv, .tsv or .jsonl")
    if not _is_file(path, "manifest"):
        raise CorpusError(f"manifest {path} does not exist; expected a .csv, .tsv or .jsonl file")
    text = _decode(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    return _read_csv(path, text, "\t" if suffix == ".tsv" else ",")


def load_manifest(path: str | Path, labels: str | Iterable[str] | None = None) -> list[Utterance]:
    """Read a manifest with columns ``id, audio, text, label, speaker, session`` (+ ``start, end,
    duration, gender, textgrid, channel``; without an ``end``, ``start`` + ``duration`` is the span (see
    ``_span``), and an unknown numeric column named as a span's time is refused rather than
    ignored). Relative paths resolve against the manifest's folder. Column names are
    case-insensitive and take the common aliases in ``ALIASES`` (``wav``/``path`` for audio,
    ``transcript`` for text, ``emotion`` for label …).

    ``labels``: the allowed label set; a row with another label is an error. Without it, any
    non-empty label is accepted. A string is ``--labels``: a named set (``four``, ``six``: IEMOCAP
    codes) or a comma list of classes to keep (``raw:class`` merges); rows with other labels are
    left out (``iemocap.label_mapping``), and a listed label no row has is an error. Every problem
    raises ``CorpusError`` naming the file and line.
    """
    path = Path(path)
    columns, rows = read_rows(path)
    rename = canonical_columns(columns, path)
    if any(k != v for k, v in rename.items()):
        columns = [rename.get(c, c) for c in columns]
        rows = [(no, {rename.get(c, c): v for c, v in r.items()}) for no, r in rows]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise CorpusError(f"manifest {path} lacks columns {missing}; expected at least {list(REQUIRED)} "
                          f"(or their aliases, e.g. wav/path for audio, transcript for text, emotion for label; "
                          f"found {columns[:10]})")
    # a column named like a time and holding numbers could be a span emofuse would ignore; one of
    # dates or words (an annotation's timestamp) cannot
    unread = [c for c in columns if c not in REQUIRED + OPTIONAL and str(c).strip().casefold() not in _ALIAS_OF
              and looks_like_time(c) and _numbers(r.get(c) for _, r in rows)]
    if unread:
        raise CorpusError(f"manifest {path}: column {unread[0]!r} reads as a time, which emofuse does not know; "
                          "expected start (alias offset, start_time, begin) with end (alias stop, end_time) or "
                          "duration, so rename it to one of those or drop it (ignored, every row would be read as "
                          "its whole file)")
    keep, spec = None, labels
    if isinstance(labels, str):
        from .iemocap import LABEL_SETS, label_mapping
        keep, labels = label_mapping(labels), None
    allowed = set(labels) if labels is not None else None
    seen_raw: set[str] = set()
    left_out: dict[str, int] = {}
    base = path.parent
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    spellings: dict[str, list] = {"label": [], "session": [], "speaker": []}
    for line_no, row in rows:
        where = f"manifest {path}, line {line_no}"
        uid = _text(row.get("id"))
        if not uid:
            raise CorpusError(f"{where} has an empty id")
        if uid in seen:
            raise CorpusError(f"{where}: duplicate id {uid!r} (first seen on line {seen[uid]})")
        seen[uid] = line_no
        label = _text(row.get("label"))
        if not label:
            raise CorpusError(f"{where}: utterance {uid!r} has an empty label")
        # spelling checked on the raw labels, kept or not: 'Ang' beside 'ang' is refused, never dropped
        spellings["label"].append((_text(row.get("label")), label, f"line {line_no}"))
        if keep is not None:
            seen_raw.add(label)
            if label not in keep:
                near = near_code(label, keep) if spec in LABEL_SETS else None
                if near is not None:
                    raise CorpusError(f"{where}: label {label!r} of {uid!r} is --labels {spec}'s {near!r} written "
                                      f"another way; write {near!r} (the set's codes are {sorted(keep)})")
                left_out[label] = left_out.get(label, 0) + 1
                continue
            label = keep[label]
        if allowed is not None and label not in allowed:
            raise CorpusError(f"{where}: unknown label {label!r} for {uid!r}; expected one of {sorted(allowed)}")
        session = _session(row.get("session"))
        if session == "":
            raise CorpusError(f"{where}: utterance {uid!r} has an empty session; every utterance needs its "
                              "session (the cross-validation fold)")
        speaker = _text(row.get("speaker"))
        for column, canon in (("session", _same_session(session)), ("speaker", speaker)):
            spellings[column].append((_text(row.get(column)), canon, f"line {line_no}"))
        if _blank(row.get("audio")):
            raise CorpusError(f"{where}: utterance {uid!r} has an empty audio path")
        audio = Path(str(row["audio"]).strip())
        audio = audio if audio.is_absolute() else base / audio
        if not _is_file(audio, f"{where}: audio file"):
            raise CorpusError(f"{where}: missing audio file {audio} for {uid!r}")
        start, end = _span(row, uid, where, str(audio))
        aligns = {}
        if not _blank(row.get("textgrid")):
            tg = Path(str(row["textgrid"]).strip())
            aligns["textgrid"] = str(tg if tg.is_absolute() else base / tg)
        gender = _text(row.get("gender")) or None
        channel = _file_channel(_channel(row, uid, where), str(audio), uid, where)
        utts.append(
            Utterance(
                id=uid,
                audio_path=str(audio),
                transcript="" if _blank(row.get("text")) else str(row["text"]),
                label=label,
                session=session,
                speaker=speaker,
                gender=gender,
                start=start,
                end=end,
                alignments=aligns,
                channel=channel,
            )
        )
    if keep is not None and not utts:
        raise CorpusError(f"manifest {path}: no row has a label of --labels {spec} ({sorted(keep)}); its labels are "
                          f"{sorted(seen_raw)}")
    if keep is not None and spec not in LABEL_SETS and set(keep) - seen_raw:
        raise CorpusError(f"manifest {path}: --labels names {sorted(set(keep) - seen_raw)}, which no row has; its "
                          f"labels are {sorted(seen_raw)}")
    for column, values in spellings.items():
        _one_spelling(values, column, path)
    if left_out:
        log.warning(left_out_warning(f"manifest {path}", spec, left_out))
    # (files of several channels are mixed to mono at extraction, which counts them: reading every
    # header here would cost each load of a large manifest seconds to minutes)
    check_shared_audio(utts, f"manifest {path}")
    utts.sort(key=lambda u: u.id)
    return utts
