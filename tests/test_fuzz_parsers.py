"""Fuzz every reader of user files (hypothesis): whatever the bytes, the only exception that may
escape is the project's own ``EmofuseError``, with a one-line message.

Inputs are valid files mutated token by token (numbers swapped for 400-digit ones, ``2.0000.``,
``nan``, lines dropped or doubled, quotes and commas inserted, bytes cut) plus raw bytes. The budget
is bounded for CI (``FUZZ_EXAMPLES`` per reader, about 15 s in all on 2 cores); set the environment
variable ``EMOFUSE_FUZZ_EXAMPLES`` to search longer.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emofuse.align.frames import segment_frames
from emofuse.align.sphinx_seg import read_seg
from emofuse.align.textgrid import read_textgrid
from emofuse.align.tiers import check_within_audio, complete_tiers, read_alignment
from emofuse.corpora.iemocap import parse_emo_evaluation, parse_transcription
from emofuse.corpora.manifest import load_manifest
from emofuse.errors import EmofuseError

FUZZ_EXAMPLES = int(os.environ.get("EMOFUSE_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WORK = Path(tempfile.mkdtemp(prefix="emofuse-fuzz-"))
sf.write(WORK / "a.wav", np.zeros(1600, np.int16), 16000)

NASTY = ["9" * 400, "-" + "9" * 30, "2.0000.", "nan", "inf", "-inf", "1e309", "-1", "0", "", " ", "\t", '"', "'",
         ",", ",,", '"",', "\\", "[", "]", "-", "--", "x" * 5000, "\x00", "\ufeff", "é", "\udcff", "{", "}",
         "null", "[1]", "true", "1.0", "01", "Ang", "0x10", "1_0", "\r", "\n", "item [1]:", "xmin = 5", "xmax = -1",
         'text = "a', "intervals: size = 99999999999", '"IntervalTier"', '"TextTier"', "SFrm", "Total score:"]

token = st.one_of(st.sampled_from(NASTY), st.text(max_size=12), st.integers(-10**6, 10**30).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr))


@st.composite
def mutated(draw, base: str) -> bytes:
    """``base`` with a few token, line or byte edits; sometimes raw bytes instead."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=400))
    lines = base.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 5))
        k = draw(st.integers(0, max(len(lines) - 1, 0)))
        if not lines:
            lines = [draw(token)]
        elif op == 0:  # replace one whitespace/comma separated token
            parts = lines[k].replace(",", " , ").split(" ")
            j = draw(st.integers(0, len(parts) - 1))
            parts[j] = draw(token)
            lines[k] = " ".join(parts).replace(" , ", ",")
        elif op == 1:
            del lines[k]
        elif op == 2:
            lines.insert(k, lines[k])
        elif op == 3:
            pos = draw(st.integers(0, len(lines[k])))
            lines[k] = lines[k][:pos] + draw(token) + lines[k][pos:]
        elif op == 4:
            lines.insert(k, draw(st.text(max_size=40)))
        else:
            lines = lines[:k + 1]
            lines[-1] = lines[-1][:draw(st.integers(0, len(lines[-1])))]
    text = "\n".join(lines)
    return text.encode("utf-8", errors="surrogateescape") if draw(st.booleans()) else \
        text.encode("latin-1", errors="replace")


def _write(name: str, data: bytes) -> Path:
    p = WORK / name
    p.write_bytes(data)
    return p


def _only_our_errors(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except EmofuseError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg, f"{type(e).__name__} message is not one line: {msg!r}"
        assert "Traceback" not in msg
        return None


WDSEG = ("\t SFrm  EFrm    SegAScr Word\n\t    0    40     -81234 <s>\n\t   41    72     -17530 WHAT(2)\n"
         "\t   73    80      -9021 <sil>\n\t   81    99      -9021 HI\n Total score:    -1234567\n")
PHSEG = ("\t SFrm  EFrm    SegAScr Phone\n\t    0    40    -1234 SIL\n\t   41    55    -1234 W SIL AH b\n"
         "\t   56    72    -1234 AH W T i\n\t   73    80    -1234 SIL\n\t   81    90    -1234 HH\n"
         "\t   91    99    -1234 AY1\n Total score:    -1\n")
EMO = ("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
       "[1.5000 - 2.6171]\tSes01F_impro01_M000\tang\t[1.5000, 4.0000, 4.0000]\nC-E1:\tAnger;\t()\n\n"
       "[3.6152 - 4.9432]\tSes01F_impro01_F001\thap\t[4.0000, 3.5000, 3.0000]\nA-E1:\tval 4; act 3; dom  3;\t()\n")
TRANS = ("Ses01F_impro01_M000 [001.5000-002.6171]: You lied to me again!\n"
         "Ses01F_impro01_F001 [003.6152-004.9432]: I love this, wonderful gift!\nM: untimed line\n")
TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.2
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.2
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = "hello"
        intervals [2]:
            xmin = 0.5
            xmax = 1.2
            text = ""
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 1.2
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.3
            text = "HH"
        intervals [2]:
            xmin = 0.3
            xmax = 1.2
            text = "AH0"
'''
# one file under several ids: spans of different sessions may not overlap (a test fold would hold
# audio trained on), so a and c end where b starts
CSV = ("id,audio,text,label,speaker,session,start,end\na,a.wav,\"hi, you\",ang,s1,1,,0.1\n"
       "b,a.wav,fine,hap,s2,2,0.1,0.5\nc,a.wav,ok,ang,s1,1,,0.1\n")
JSONL = "\n".join(json.dumps(r) for r in [
    {"id": "a", "audio": "a.wav", "text": "hi", "label": "ang", "speaker": "s", "session": 1, "end": 0.1},
    {"id": "b", "audio": "a.wav", "text": "yo", "label": "hap", "speaker": "s", "session": 2, "start": 0.1, "end": 0.4},
])


@FUZZ
@given(mutated(WDSEG), st.sampled_from(["word", "phone"]))
def test_fuzz_sphinx_seg(data, tier):
    items = _only_our_errors(read_seg, _write("u.wdseg", data), tier)
    if items is not None:  # what is returned pools without error or is refused with a sentence
        _pool_or_refuse({tier: items})


@FUZZ
@given(mutated(WDSEG), mutated(PHSEG))
def test_fuzz_alignment_pair_to_frames(words, phones):
    paths = {"word": str(_write("p.wdseg", words)), "phone": str(_write("p.phseg", phones))}
    tiers = _only_our_errors(read_alignment, paths)
    if tiers is not None:
        tiers = _only_our_errors(complete_tiers, tiers, ["word", "phone", "syllable"])
    if tiers is not None:
        _pool_or_refuse(tiers)


def _pool_or_refuse(tiers):
    """Times that pass the past-the-audio check (1 s of audio, 49 frames) give valid frame spans."""
    try:
        check_within_audio(tiers, 1.0, "fuzz")
    except EmofuseError as e:
        assert "\n" not in str(e)
        return
    for items in tiers.values():
        if items:
            spans, _ = segment_frames(np.array([i.start for i in items]), np.array([i.end for i in items]),
                                      49, 0.02, 0.025)
            assert ((spans[:, 0] >= 0) & (spans[:, 1] <= 49) & (spans[:, 1] > spans[:, 0])).all()


@FUZZ
@given(mutated(EMO))
def test_fuzz_emo_evaluation(data):
    out = _only_our_errors(parse_emo_evaluation, _write("emo.txt", data))
    if out is not None:
        assert all(isinstance(k, str) and isinstance(code, str) and code for k, code in out.items())


@FUZZ
@given(mutated(TRANS))
def test_fuzz_transcription(data):
    out = _only_our_errors(parse_transcription, _write("trans.txt", data))
    assert out is None or all(isinstance(v, str) for v in out.values())


@FUZZ
@given(mutated(TEXTGRID))
def test_fuzz_textgrid(data):
    tiers = _only_our_errors(read_textgrid, _write("u.TextGrid", data))
    if tiers is not None:
        _pool_or_refuse(tiers)


@FUZZ
@given(mutated(CSV), st.sampled_from([".csv", ".tsv"]))
def test_fuzz_manifest_csv(data, suffix):
    if suffix == ".tsv":
        data = data.replace(b",", b"\t")
    utts = _only_our_errors(load_manifest, _write("m" + suffix, data))
    if utts is not None:
        _manifest_is_consistent(utts)


@FUZZ
@given(mutated(JSONL))
def test_fuzz_manifest_jsonl(data):
    utts = _only_our_errors(load_manifest, _write("m.jsonl", data))
    if utts is not None:
        _manifest_is_consistent(utts)


def _manifest_is_consistent(utts):
    """What a manifest yields never holds one label or session in two spellings."""
    labels = {u.label for u in utts}
    assert len({x.casefold() for x in labels}) == len(labels)
    sessions = {str(u.session) for u in utts}
    assert all(s.strip() for s in sessions)
    for u in utts:
        assert u.start is None or np.isfinite(u.start)


@pytest.mark.parametrize("reader,name,base", [
    (lambda p: read_seg(p, "word"), "x.wdseg", WDSEG), (parse_emo_evaluation, "x.txt", EMO),
    (read_textgrid, "x.TextGrid", TEXTGRID), (load_manifest, "x.csv", CSV), (load_manifest, "x.jsonl", JSONL)])
def test_fuzz_bases_are_valid(reader, name, base):
    """The seeds the fuzzers mutate are themselves read without error (else the fuzz tests
    would only ever see refusals)."""
    assert reader(_write(name, base.encode()))


def test_reported_crashes_are_sentences():
    """The five sites the issue's fuzzing found, each now one sentence."""
    cases = [
        (lambda: read_seg(_write("o.wdseg", ("\t" + "9" * 400 + " " + "9" * 401 + " 0 HI\n").encode()), "word"),
         r"frame number 9+… is too large"),
        (lambda: parse_emo_evaluation(_write("e.txt", b"[2.0000. - 3.0]\tSes01F_impro01_M000\tang\t[1, 2, 3]\n")),
         r"line 1: times \[2.0000. - 3.0\] of Ses01F_impro01_M000 are not numbers of seconds"),
        (lambda: load_manifest(_write("s.csv", b"id,audio,text,label,speaker,session,start\na,a.wav,x,ang,s,1,abc\n")),
         r"line 2: start 'abc' is not a number of seconds"),
        (lambda: load_manifest(_write("j.jsonl", b"[]\n")), r"line 1 holds a JSON list"),
        (lambda: load_manifest(_write("n.csv", ("id,audio,text,label,speaker,session\na," + "y" * 4000 +
                                                ",x,ang,s,1\n").encode())), r"File name too long"),
        (lambda: read_seg(WORK, "word"), r"cannot be read"),
    ]
    for fn, match in cases:
        with pytest.raises(EmofuseError, match=match):
            fn()
