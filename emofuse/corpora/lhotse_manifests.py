"""lhotse manifests as a corpus (``--corpus lhotse --manifest PATH``).

lhotse (https://github.com/lhotse-speech/lhotse) prepares many corpora as JSON-lines manifests: a
``RecordingSet`` (audio files) with a ``SupervisionSet`` (segments of them: text, speaker,
``custom`` fields), or a ``CutSet`` that carries both. We read that documented JSON format
directly rather than importing the ``lhotse`` package: ``import lhotse`` 1.33 fails without the
undeclared ``urllib3`` and takes seconds, and the reader needs nothing of it but ``json`` and
``gzip``. The fixtures in ``tests/golden/lhotse`` were written by lhotse 1.33 itself.

What becomes of a supervision (one utterance):

- ``id``: the supervision id; ``audio_path``: the recording's one ``file`` source (paths as lhotse
  opens them, relative to the working directory; a relative path not found there is looked up
  beside the manifest); ``start``/``end``: the supervision's span in the recording;
- ``label``: ``custom["emotion"]`` (else ``custom["label"]``); ``speaker``, ``gender``, ``text``;
- ``session`` (the cross-validation fold): ``custom["session"]`` when every supervision has one,
  else the speaker (leave-one-speaker-out).

Refused with one sentence naming the file: a supervision without a label, a recording that is
not one mono file (URLs, in-memory audio, commands, several channels) or has ``transforms``
(speed perturbation, resampling: the audio would not be what the file holds), a ``MixedCut``, a
supervision listed twice with different content, a label/session/speaker written two ways.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from ..errors import CorpusError
from .manifest import (_blank, _header, _one_spelling, _same_session, _text, check_shared_audio,
                       left_out_warning, near_code)
from .records import Utterance
from .textio import LINE_END_RE

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def _is_manifest(p: Path) -> bool:
    return any(p.name.endswith(s) for s in SUFFIXES)


def _read(path: Path) -> list[tuple[int, dict]]:
    try:
        raw = gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")
        with raw as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CorpusError(f"lhotse manifest {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if path.name.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorpusError(f"lhotse manifest {path} is not valid JSON: {e}") from None
        return [(i + 1, o) for i, o in enumerate(items)]
    out = []
    for no, line in enumerate(LINE_END_RE.split(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"lhotse manifest {path}, line {no} is not valid JSON: {str(e)[:120]}") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"lhotse manifest {path}, line {no} holds a JSON {type(obj).__name__}; expected an object")
        out.append((no, obj))
    return out


def _kind(obj: dict) -> str:
    if "supervisions" in obj or str(obj.get("type", "")).endswith("Cut"):
        return "cuts"
    if "sources" in obj:
        return "recordings"
    if "recording_id" in obj:
        return "supervisions"
    return "unknown"


def manifest_files(path: str | Path) -> list[tuple[str, Path, Path | None]]:
    """What ``path`` holds: ``[("cuts", file, None)]`` or ``[("supervisions", file, recordings)]``.
    A folder: every supervisions file with its recordings file (same name with ``recordings``),
    or, without supervisions files, every cuts file."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"lhotse manifest {path} does not exist; expected a CutSet or SupervisionSet file "
                          "(.jsonl or .jsonl.gz) or a folder holding them")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_manifest(p))
        sups = [p for p in files if "supervisions" in p.name]
        cuts = [p for p in files if "cuts" in p.name]
        if not sups and not cuts:
            raise CorpusError(f"{path} holds no lhotse manifest (*supervisions*.jsonl[.gz] with *recordings*.jsonl[.gz], "
                              "or *cuts*.jsonl[.gz])")
        return [("supervisions", s, _recordings_of(s)) for s in sups] if sups else [("cuts", c, None) for c in cuts]
    if not _is_manifest(path):
        raise CorpusError(f"lhotse manifest {path} has neither of the suffixes {list(SUFFIXES)}")
    first = next(iter(_read(path)), None)
    kind = _kind(first[1]) if first else "unknown"
    if kind == "cuts":
        return [("cuts", path, None)]
    if kind == "supervisions":
        return [("supervisions", path, _recordings_of(path))]
    if kind == "recordings":
        raise CorpusError(f"{path} is a RecordingSet; pass its SupervisionSet (labels, speakers, text live there), "
                          "with the RecordingSet beside it, or a CutSet")
    raise CorpusError(f"{path} is not a lhotse CutSet, SupervisionSet or RecordingSet (its first object has keys "
                      f"{sorted(first[1])[:8] if first else 'none'})")


def _recordings_of(sup: Path) -> Path:
    rec = sup.with_name(sup.name.replace("supervisions", "recordings"))
    if rec == sup or not rec.exists():
        raise CorpusError(f"the SupervisionSet {sup} needs its RecordingSet beside it, named {rec.name}")
    return rec


def _audio(rec: dict, where: str, base: Path, sup: dict) -> tuple[str, int | None]:
    """(audio file, the channel of it that supervision ``sup`` reads) of a recording of one file:
    the channel is the file's 0-based index of the supervision's ``channel`` (the recording's
    channel ids are the file's channels in order); None for a mono file, or a supervision of
    every channel (mixed to mono, as lhotse's ``load_audio`` of several channels is not)."""
    sources = rec.get("sources") or []
    if rec.get("transforms"):
        raise CorpusError(f"{where}: recording {rec.get('id')!r} has transforms "
                          f"{[t.get('name') for t in rec['transforms']]}; emofuse reads the files as they are")
    if len(sources) != 1 or sources[0].get("type") != "file":
        kinds = [s.get("type") for s in sources]
        raise CorpusError(f"{where}: recording {rec.get('id')!r} is {len(sources)} source(s) of type {kinds}; "
                          "emofuse reads one audio file per recording")
    ids = list(sources[0].get("channels") or rec.get("channel_ids") or [0])
    src = Path(str(sources[0]["source"]))
    if not src.is_absolute() and not src.exists() and (base / src).exists():
        src = base / src
    path = str(src.absolute()) if not src.is_absolute() else str(src)
    held, seconds = _header(path)
    if held == 1 and (len(ids) == 1 or seconds is None):   # unreadable (no seconds): extraction reports it
        return path, None
    if len(ids) != held:   # e.g. one channel named of a stereo file: which one lhotse would read is unclear
        raise CorpusError(f"{where}: recording {rec.get('id')!r} names channel(s) {ids} of {path}, which holds "
                          f"{held} channels; a recording of a file names each of its channels, in order")
    want = sup.get("channel")
    want = want if isinstance(want, list) else [want] if want is not None else list(ids)
    if sorted(want, key=str) == sorted(ids, key=str) and len(want) > 1:
        return path, None
    if len(want) != 1 or want[0] not in ids:
        raise CorpusError(f"{where}: supervision {sup.get('id')!r} has channel {sup.get('channel')!r}; its recording "
                          f"{rec.get('id')!r} has channels {ids}: expected one of them, or all of them (mixed)")
    return path, ids.index(want[0])


def _label(sup: dict, where: str) -> str:
    custom = sup.get("custom") or {}
    for key in ("emotion", "label"):
        v = custom.get(key)
        if isinstance(v, (list, dict)):   # str() would make a class named "['hap', 'neu']"
            raise CorpusError(f"{where}: supervision {sup.get('id')!r} has custom {key!r} {json.dumps(v)[:60]}, a JSON "
                              f"{'list' if isinstance(v, list) else 'object'}; expected one label (a string)")
        if v not in (None, ""):
            return str(v).strip()
    return ""


def load_lhotse(path: str | Path, labels: Iterable[str] | str | None = None) -> list[Utterance]:
    """Utterances of a lhotse CutSet, a SupervisionSet (with its RecordingSet beside it), or a
    folder of them. ``labels``: keep only these labels, a list or ``--labels`` as the manifest
    reader takes it (a named set, or a comma list where ``raw:class`` merges; a listed label no
    supervision has is refused); without it every label is kept. Sorted by id."""
    from .iemocap import LABEL_SETS, label_mapping

    keep = label_mapping(labels) if isinstance(labels, str) else (
        {x: x for x in labels} if labels is not None else None)
    allowed = set(keep) if keep is not None else None
    seen_raw: set[str] = set()
    left_out: dict[str, int] = {}
    items: list[tuple[dict, dict, float, str, Path]] = []   # (supervision, recording, offset, where, folder)
    for kind, f, rec_file in manifest_files(path):
        if kind == "supervisions":
            recs = {}
            for no, r in _read(rec_file):
                recs[str(r.get("id"))] = r
            for no, s in _read(f):
                rid = str(s.get("recording_id"))
                if rid not in recs:
                    raise CorpusError(f"lhotse manifest {f}, line {no}: supervision {s.get('id')!r} refers to recording "
                                      f"{rid!r}, which {rec_file.name} does not hold")
                items.append((s, recs[rid], 0.0, f"lhotse manifest {f}, line {no}", rec_file.parent))
        else:
            for no, c in _read(f):
                where = f"lhotse manifest {f}, line {no}"
                if c.get("type", "MonoCut") != "MonoCut":
                    raise CorpusError(f"{where}: cut {c.get('id')!r} is a {c.get('type')}; emofuse reads MonoCuts "
                                      "(one recording each)")
                if "recording" not in c:
                    raise CorpusError(f"{where}: cut {c.get('id')!r} has no recording")
                for s in c.get("supervisions") or []:
                    items.append((s, c["recording"], float(c.get("start", 0.0)), where, f.parent))
    utts: dict[str, tuple[Utterance, str]] = {}
    # a null or blank session is no session: it would become a fold named 'None' (or '')
    has_session = [not _blank((s.get("custom") or {}).get("session")) for s, *_ in items]
    use_session = all(has_session) and bool(items)
    if any(has_session) and not use_session:
        n = len(has_session) - sum(has_session)
        raise CorpusError(f"lhotse manifest {path}: {n} of {len(items)} supervisions lack custom 'session' while the "
                          "others have it; give every supervision its session (the cross-validation fold)")
    if items and not use_session:
        log.info(f"lhotse manifest {path}: no supervision has a custom 'session', so the fold unit is the speaker "
                 "(leave-one-speaker-out)")
    spellings: dict[str, list] = {"label": [], "session": [], "speaker": []}
    for s, rec, offset, where, base in items:
        sid = str(s.get("id") or "").strip()
        if not sid:
            raise CorpusError(f"{where}: a supervision has no id")
        label = _label(s, where)
        if not label:
            raise CorpusError(f"{where}: supervision {sid!r} has no emotion label (custom 'emotion' or 'label')")
        if keep is not None:
            seen_raw.add(label)
            if label not in keep:
                near = near_code(label, keep) if isinstance(labels, str) and labels in LABEL_SETS else None
                if near is not None:
                    raise CorpusError(f"{where}: label {label!r} of {sid!r} is --labels {labels}'s {near!r} written "
                                      f"another way; write {near!r} (the set's codes are {sorted(keep)})")
                left_out[label] = left_out.get(label, 0) + 1
                continue
            label = keep[label]
        speaker = _text(s.get("speaker"))
        session = _text((s.get("custom") or {}).get("session")) if use_session else speaker
        if not session:
            raise CorpusError(f"{where}: supervision {sid!r} has neither a custom 'session' nor a speaker, so it has "
                              "no cross-validation fold")
        audio, channel = _audio(rec, where, base, s)
        if not os.path.isfile(audio):
            raise CorpusError(f"{where}: missing audio file {audio} for {sid!r}")
        start = round(offset + float(s.get("start", 0.0)), 6)
        end = round(start + float(s["duration"]), 6) if s.get("duration") is not None else None
        u = Utterance(id=sid, audio_path=audio, transcript=str(s.get("text") or ""), label=label, session=session,
                      speaker=speaker, gender=(str(s["gender"]) if s.get("gender") else None), start=start, end=end,
                      channel=channel)
        if sid in utts:
            if utts[sid][0] != u:
                raise CorpusError(f"{where}: supervision {sid!r} appears again with other content (first at "
                                  f"{utts[sid][1]}); supervision ids must be unique")
            continue
        utts[sid] = (u, where)
        # sessions as written (a store's fingerprint holds them), compared as the manifest reader
        # compares them: 1, "01" and 1.0 are one session written three ways, and refused
        # (without sessions the speaker is the fold unit: compared as a speaker, not as a number)
        for column, v, canon in (("label", label, label),
                                 ("session", session, _same_session(session) if use_session else session),
                                 ("speaker", speaker, speaker)):
            spellings[column].append((v, canon, where))
    for column, values in spellings.items():
        _one_spelling(values, column, Path(path), "lhotse manifest")
    if left_out and isinstance(labels, str):
        log.warning(left_out_warning(f"lhotse manifest {path}", labels, left_out, "supervision"))
    if not utts:
        raise CorpusError(f"lhotse manifest {path} holds no supervision" + (f" with a label in {sorted(allowed)} "
                                                                            f"(its labels are {sorted(seen_raw)})"
                                                                            if allowed is not None else ""))
    if isinstance(labels, str) and labels not in LABEL_SETS and allowed - seen_raw:
        raise CorpusError(f"lhotse manifest {path}: --labels names {sorted(allowed - seen_raw)}, which no supervision "
                          f"has; its labels are {sorted(seen_raw)}")
    out = sorted((u for u, _ in utts.values()), key=lambda u: u.id)
    check_shared_audio(out, f"lhotse manifest {path}")
    return out
