"""Generic manifest reader (CSV or JSONL) for any corpus."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import CorpusError
from .records import Utterance

REQUIRED = ("id", "audio", "text", "label", "speaker", "session")
OPTIONAL = ("start", "end", "gender", "textgrid")


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        raise CorpusError(f"manifest {path} has suffix {suffix!r}; expected .csv, .tsv or .jsonl")
    # Undecodable bytes become U+FFFD, so one bad transcript does not sink the corpus:
    # extraction skips that utterance and says why.
    text = path.read_bytes().decode("utf-8", errors="replace")
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CorpusError(f"manifest {path}, line {no} is not a JSON object: {e}") from e
        return pd.DataFrame(rows)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        rows = list(reader)
    except csv.Error as e:
        raise CorpusError(f"manifest {path} could not be parsed as CSV: {e}") from e
    return pd.DataFrame(rows, columns=reader.fieldnames or [], dtype=object).fillna("")


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _session(v):
    s = str(v).strip()
    return int(s) if s.lstrip("-").isdigit() else s


def load_manifest(path: str | Path, labels: Iterable[str] | None = None, check_audio: bool = True) -> list[Utterance]:
    """Read a manifest with columns ``id, audio, text, label, speaker, session`` (+ ``start, end,
    gender, textgrid``). Relative paths resolve against the manifest's folder.

    ``labels``: the allowed label set; a row with another label is an error. Without it, any
    non-empty label is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"manifest {path} does not exist; expected a .csv, .tsv or .jsonl file")
    df = _read_table(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CorpusError(f"manifest {path} lacks columns {missing}; expected at least {list(REQUIRED)}")
    allowed = set(labels) if labels is not None else None
    base = path.parent
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    first_row = 1 if path.suffix.lower() in (".jsonl", ".ndjson") else 2
    for row_no, row in enumerate(df.to_dict("records"), start=first_row):
        uid = str(row["id"]).strip()
        where = f"manifest {path}, row {row_no}"
        if not uid:
            raise CorpusError(f"{where} has an empty id")
        if uid in seen:
            raise CorpusError(f"{where}: duplicate id {uid!r} (first seen in row {seen[uid]})")
        seen[uid] = row_no
        label = "" if _blank(row["label"]) else str(row["label"]).strip()
        if not label:
            raise CorpusError(f"{where}: utterance {uid!r} has an empty label")
        if allowed is not None and label not in allowed:
            raise CorpusError(f"{where}: unknown label {label!r} for {uid!r}; expected one of {sorted(allowed)}")
        audio = Path(str(row["audio"]))
        audio = audio if audio.is_absolute() else base / audio
        if check_audio and not audio.is_file():
            raise CorpusError(f"{where}: missing audio file {audio} for {uid!r}")
        start = None if _blank(row.get("start")) else float(row["start"])
        end = None if _blank(row.get("end")) else float(row["end"])
        if start is not None and end is not None and end <= start:
            raise CorpusError(f"{where}: end {end} is not after start {start} for {uid!r}")
        aligns = {}
        if not _blank(row.get("textgrid")):
            tg = Path(str(row["textgrid"]))
            aligns["textgrid"] = str(tg if tg.is_absolute() else base / tg)
        gender = None if _blank(row.get("gender")) else str(row["gender"]).strip()
        utts.append(
            Utterance(
                id=uid,
                audio_path=str(audio),
                transcript="" if _blank(row["text"]) else str(row["text"]),
                label=label,
                session=_session(row["session"]),
                speaker=str(row["speaker"]).strip(),
                gender=gender,
                start=start,
                end=end,
                alignments=aligns,
            )
        )
    utts.sort(key=lambda u: u.id)
    return utts
