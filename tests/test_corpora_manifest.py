import json

import numpy as np
import pytest
import soundfile as sf

from emofuse.corpora import load_corpus
from emofuse.errors import CorpusError


@pytest.fixture
def wavs(tmp_path):
    (tmp_path / "audio").mkdir()
    for name in ("a", "b", "c"):
        sf.write(tmp_path / "audio" / f"{name}.wav", np.zeros(1600, np.int16), 16000)
    return tmp_path


def write_csv(path, rows, header="id,audio,text,label,speaker,session"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_with_relative_paths_and_optional_columns(wavs):
    m = write_csv(wavs / "m.csv", ["b,audio/b.wav,hello there,hap,spk2,2,0.1,0.5,F,tg/b.TextGrid",
                                    "a,audio/a.wav,\"hi, you\",ang,spk1,1,,,M,"],
                  header="id,audio,text,label,speaker,session,start,end,gender,textgrid")
    utts = load_corpus("manifest", path=m)
    assert [u.id for u in utts] == ["a", "b"]
    a, b = utts
    assert a.audio_path == str(wavs / "audio" / "a.wav") and a.transcript == "hi, you"
    assert a.start is None and a.alignments == {} and a.session == 1 and a.gender == "M"
    assert (b.start, b.end) == (0.1, 0.5) and b.alignments["textgrid"] == str(wavs / "tg" / "b.TextGrid")


def test_jsonl(wavs):
    m = wavs / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in [
        {"id": "c", "audio": str(wavs / "audio" / "c.wav"), "text": "x", "label": "sad", "speaker": "s", "session": "A"},
        {"id": "a", "audio": "audio/a.wav", "text": "y", "label": "neu", "speaker": "s", "session": "B"}]))
    utts = load_corpus("manifest", path=m)
    assert [(u.id, u.session) for u in utts] == [("a", "B"), ("c", "A")]


@pytest.mark.parametrize("rows,match", [
    (["a,audio/a.wav,x,ang,s,1", "a,audio/b.wav,y,ang,s,1"], r"row 3: duplicate id 'a' \(first seen in row 2\)"),
    (["a,audio/zz.wav,x,ang,s,1"], r"row 2: missing audio file .*zz.wav"),
    (["a,audio/a.wav,x,joy,s,1"], r"row 2: unknown label 'joy'.*\['ang', 'hap', 'neu', 'sad'\]"),
    (["a,audio/a.wav,x,,s,1"], r"row 2: utterance 'a' has an empty label"),
])
def test_bad_rows_name_file_and_row(wavs, rows, match):
    m = write_csv(wavs / "m.csv", rows)
    with pytest.raises(CorpusError, match=match) as e:
        load_corpus("manifest", path=m, labels=["ang", "hap", "neu", "sad"])
    assert str(m) in str(e.value)


def test_missing_columns_and_suffix(wavs):
    m = write_csv(wavs / "m.csv", ["a,audio/a.wav"], header="id,audio")
    with pytest.raises(CorpusError, match=r"lacks columns \['text', 'label', 'speaker', 'session'\]"):
        load_corpus("manifest", path=m)
    (wavs / "m.xlsx").write_text("x")
    with pytest.raises(CorpusError, match="suffix '.xlsx'"):
        load_corpus("manifest", path=wavs / "m.xlsx")
