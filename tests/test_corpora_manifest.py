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


def test_jsonl_transcript_holding_a_unicode_line_separator(wavs):
    """Before: lines were split with str.splitlines, which also splits at U+2028/U+2029 (valid
    unescaped inside a JSON string, as json.dumps(..., ensure_ascii=False) writes them), so such
    a row was refused as 'not valid JSON'. Only CRLF, LF and CR end a line now."""
    m = wavs / "m.jsonl"
    m.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "a", "audio": "audio/a.wav", "text": "one\u2028two\x85three", "label": "neu", "speaker": "s", "session": "1"},
        {"id": "b", "audio": "audio/b.wav", "text": "y", "label": "sad", "speaker": "s", "session": "2"}]), encoding="utf-8")
    utts = load_corpus("manifest", path=m)
    assert [(u.id, u.transcript) for u in utts] == [("a", "one\u2028two\x85three"), ("b", "y")]


@pytest.mark.parametrize("rows,match", [
    (["a,audio/a.wav,x,ang,s,1", "a,audio/b.wav,y,ang,s,1"], r"line 3: duplicate id 'a' \(first seen on line 2\)"),
    (["a,audio/zz.wav,x,ang,s,1"], r"line 2: missing audio file .*zz.wav"),
    (["a,audio/a.wav,x,joy,s,1"], r"line 2: unknown label 'joy'.*\['ang', 'hap', 'neu', 'sad'\]"),
    (["a,audio/a.wav,x,,s,1"], r"line 2: utterance 'a' has an empty label"),
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


# -- strict where an ambiguity would change results (issue 14) -----------------------------------
HEADER = "id,audio,text,label,speaker,session"


def _refused(m, match, **kw):
    with pytest.raises(CorpusError, match=match) as e:
        load_corpus("manifest", path=m, **kw)
    msg = str(e.value)
    assert (str(m) in msg or len(str(m)) > 120) and "\n" not in msg
    return msg


def test_unquoted_comma_in_transcript_is_refused_with_line(wavs):
    # before: the label became 'really.' and the session 'Ses01M', a new class and a new fold
    m = write_csv(wavs / "m.csv", ["a,audio/a.wav,fine,ang,s,1", "b,audio/b.wav,oh, really.,hap,Ses01M,2"])
    _refused(m, r"line 3 has 7 fields, the header 6: an unquoted ',' inside a field\? quote it")
    m = write_csv(wavs / "m.csv", ["a,audio/a.wav,fine,ang,s"])
    _refused(m, r"line 2 has 5 fields, the header 6: a field is missing")


def test_unterminated_quote_is_refused_not_swallowing_the_rest(wavs):
    # before: 10 of 24 rows read, the rest silently inside one transcript
    rows = ["a,audio/a.wav,fine,ang,s,1", 'b,audio/b.wav,"she said hi,hap,s,2', 'c,audio/c.wav,x,sad,s,1"',
            "d,audio/a.wav,x,sad,s,1"]
    _refused(write_csv(wavs / "m.csv", rows), r"line 3: a quoted field runs on to line 4 \(an unterminated quote\?\)")
    # in the last column, up to the end of the file
    rows = ["a,audio/a.wav,fine,ang,s,1", 'b,audio/b.wav,x,hap,s,"2', "c,audio/c.wav,x,sad,s,1"]
    _refused(write_csv(wavs / "m.csv", rows), r"line 3: a quoted field is never closed \(an unterminated quote\?\)")


@pytest.mark.parametrize("rows,match", [
    (["a,audio/a.wav,x,Ang,s,1", "b,audio/b.wav,x,ang,s,2"], r"label 'ang' \(line 3\) and 'Ang' \(line 2\) differ only in spelling"),
    (["a,audio/a.wav,x,ang,s,1", "b,audio/b.wav,x,ang,s,1.0"], r"session '1.0' \(line 3\) and '1' \(line 2\) differ only"),
    (["a,audio/a.wav,x,ang,s,01", "b,audio/b.wav,x,ang,s,1"], r"session '1' \(line 3\) and '01' \(line 2\)"),
    (["a,audio/a.wav,x,ang,s,Ses1", "b,audio/b.wav,x,ang,s,ses1"], r"session 'ses1' \(line 3\) and 'Ses1'"),
    (["a,audio/a.wav,x,ang,Spk1,1", "b,audio/b.wav,x,ang,spk1,2"], r"speaker 'spk1' \(line 3\) and 'Spk1'"),
    (["a,audio/a.wav,x,ang,s,1", "b,audio/b.wav,x,ang,s, "], r"line 3: utterance 'b' has an empty session"),
    (["a,audio/a.wav,x,ang,s,1,abc,", "b,audio/b.wav,x,ang,s,2,,"], r"line 2: start 'abc' is not a number of seconds"),
    (["a,audio/a.wav,x,ang,s,1,0.5,nan", "b,audio/b.wav,x,ang,s,2,,"], r"line 2: end nan is not a finite number"),
])
def test_values_spelled_two_ways_or_not_numbers(wavs, rows, match):
    header = HEADER + (",start,end" if rows[0].count(",") > 5 else "")
    _refused(write_csv(wavs / "m.csv", rows, header=header), match)


def test_same_spelling_everywhere_is_fine_and_sessions_stay_as_written(wavs):
    m = write_csv(wavs / "m.csv", ["a,audio/a.wav,x,Ang,s,1.0", "b,audio/b.wav,x,Ang,s,1.0", "c,audio/c.wav,x,ang2,s,07"])
    utts = load_corpus("manifest", path=m)
    assert [(u.label, u.session) for u in utts] == [("Ang", "1.0"), ("Ang", "1.0"), ("ang2", 7)]


def test_utf8_bom_is_dropped(wavs):
    m = wavs / "m.csv"
    m.write_bytes(b"\xef\xbb\xbf" + (HEADER + "\na,audio/a.wav,hi,ang,s,1\n").encode())
    assert [u.id for u in load_corpus("manifest", path=m)] == ["a"]
    j = wavs / "m.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "audio": "audio/a.wav", "text": "", "label": "x",
                                                "speaker": "s", "session": 1}).encode() + b"\n")
    assert [u.id for u in load_corpus("manifest", path=j)] == ["a"]


@pytest.mark.parametrize("line,match", [
    ('[1, 2]', r"line 2 holds a JSON list; expected one object per line"),
    ('"text"', r"line 2 holds a JSON str"),
    ('{"id": "b", "audio": "audio/b.wav", "text": "", "label": ["x"], "speaker": "s", "session": 1}',
     r"line 2: field 'label' holds a JSON list"),
    ('{"id": "b", "audio": "audio/b.wav", "text": "", "label": "x", "speaker": "s", "session": 1, "start": "abc"}',
     r"line 2: start 'abc' is not a number"),
    ('{"id": "b", "audio"', r"line 2 is not valid JSON"),
    ('{"audio": "audio/b.wav", "text": "", "label": "x", "speaker": "s", "session": 1}', r"line 2 has an empty id"),
])
def test_jsonl_lines_that_are_not_rows(wavs, line, match):
    m = wavs / "m.jsonl"
    first = json.dumps({"id": "a", "audio": "audio/a.wav", "text": "", "label": "x", "speaker": "s", "session": 1})
    m.write_text(first + "\n" + line + "\n")
    _refused(m, match)


def test_file_name_too_long_is_one_sentence(wavs):
    m = write_csv(wavs / "m.csv", ["a," + "x" * 5000 + ".wav,hi,ang,s,1"])
    msg = _refused(m, r"line 2: audio file .*cannot be looked up: File name too long")
    assert len(msg) < 400
    _refused(wavs / ("y" * 300 + ".csv"), r"manifest .* (cannot be looked up|does not exist)")


def test_labels_option_keeps_listed_classes_never_characters(wavs):
    m = write_csv(wavs / "m.csv", ["a,audio/a.wav,x,angry,s,1", "b,audio/b.wav,x,happy,s,1", "c,audio/c.wav,x,sad,s,2"])
    utts = load_corpus("manifest", path=m, labels="angry,sad")
    assert [(u.id, u.label) for u in utts] == [("a", "angry"), ("c", "sad")]
    assert [u.label for u in load_corpus("manifest", path=m, labels="angry, happy:joy ,sad")] == ["angry", "joy", "sad"]
    with pytest.raises(CorpusError, match=r"--labels names \['angri'\], which no row has; its labels are "
                                          r"\['angry', 'happy', 'sad'\]"):
        load_corpus("manifest", path=m, labels="angri,sad")
    iem = write_csv(wavs / "i.csv", ["a,audio/a.wav,x,exc,s,1", "b,audio/b.wav,x,fru,s,1", "c,audio/c.wav,x,sad,s,2"])
    assert [u.label for u in load_corpus("manifest", path=iem, labels="four")] == ["hap", "sad"]   # exc → hap
    with pytest.raises(CorpusError, match="expected a named set"):
        load_corpus("manifest", path=m, labels="angry,,sad")


def test_labels_option_spelling_checked_before_leaving_rows_out(wavs):
    m = write_csv(wavs / "m.csv", ["a,audio/a.wav,x,Ang,s,1", "b,audio/b.wav,x,ang,s,1", "c,audio/c.wav,x,sad,s,2"])
    _refused_labels = pytest.raises(CorpusError, match="differ only in spelling")
    with _refused_labels:
        load_corpus("manifest", path=m, labels="ang,sad")


def test_iemocap_labels_comma_list(fake_iemocap):
    utts = load_corpus("iemocap", root=fake_iemocap.root, labels="ang,sad")
    assert {u.label for u in utts} == {"ang", "sad"}
    merged = load_corpus("iemocap", root=fake_iemocap.root, labels="ang,hap,exc:hap,neu,sad")
    assert [u.label for u in merged] == [u.label for u in load_corpus("iemocap", root=fake_iemocap.root)]


# -- corpus reader audit: time columns, encodings, labels, shared audio ----------------------------
@pytest.fixture
def long_wav(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(48000, np.int16), 16000)   # 3 s
    return tmp_path


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_nemo_offset_duration_and_speechbrain_stop_are_spans(long_wav):
    """Before: offset/duration (NeMo) and stop (SpeechBrain) were dropped as unknown columns, so
    every row read as the whole 3 s file."""
    rows = [{"id": f"u{k}", "audio_filepath": "long.wav", "text": "x", "label": "neu", "speaker": "s",
             "session": 1, "offset": k, "duration": 1} for k in range(3)]
    utts = load_corpus("manifest", path=_jsonl(long_wav / "m.jsonl", rows))
    assert [(u.start, u.end) for u in utts] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    m = write_csv(long_wav / "sb.csv", ["a,long.wav,x,neu,s,1,0.5,1.5", "b,long.wav,x,neu,s,1,1.5,2.5"],
                  header="ID,wav,transcript,emotion,speaker,session,start,stop")
    assert [(u.start, u.end) for u in load_corpus("manifest", path=m)] == [(0.5, 1.5), (1.5, 2.5)]
    m = write_csv(long_wav / "d.csv", ["a,long.wav,x,neu,s,1,2"], header=HEADER + ",duration")   # NeMo: offset 0
    assert [(u.start, u.end) for u in load_corpus("manifest", path=m)] == [(None, 2.0)]
    # beside an end, a duration may be the file's (as many corpora list it): the end is read
    m = write_csv(long_wav / "both.csv", ["a,long.wav,x,neu,s,1,0.5,2,3"], header=HEADER + ",start,end,duration")
    assert [(u.start, u.end) for u in load_corpus("manifest", path=m)] == [(0.5, 2.0)]
    # a NeMo whole-file row (its duration the file's length, rounded) is the whole file, as before
    # the column was read: the store's fingerprint stays; start and offset side by side read start
    rows = [{"id": "w", "audio_filepath": "long.wav", "text": "x", "label": "neu", "speaker": "s", "session": 1,
             "duration": 3.04}]
    whole = load_corpus("manifest", path=_jsonl(long_wav / "w.jsonl", rows))
    assert [(u.start, u.end) for u in whole] == [(None, None)]
    m = write_csv(long_wav / "so.csv", ["a,long.wav,x,neu,s,1,0.5,9,1.5"], header=HEADER + ",start,offset,end")
    assert [(u.start, u.end) for u in load_corpus("manifest", path=m)] == [(0.5, 1.5)]


@pytest.mark.parametrize("column", ["seg_end", "EndTime", "onset", "dur", "tmax", "utt_length"])
def test_an_unknown_time_column_is_refused_not_ignored(long_wav, column):
    m = write_csv(long_wav / "m.csv", ["a,long.wav,x,neu,s,1,1"], header=f"{HEADER},{column}")
    _refused(m, rf"column '{column}' reads as a time, which emofuse does not know")
    for other in ("age", "text_length", "timestamp", "is_turn_start", "annotation_seconds"):   # something else
        m = write_csv(long_wav / "m.csv", ["a,long.wav,x,neu,s,1,1"], header=f"{HEADER},{other}")
        assert len(load_corpus("manifest", path=m)) == 1, other
    m = write_csv(long_wav / "m.csv", ["a,long.wav,x,neu,s,1,2021-03-04 10:00"], header=f"{HEADER},{column}")
    assert len(load_corpus("manifest", path=m)) == 1   # named like a time but no number: an annotation's date


def test_cp1252_names_stay_apart(wavs):
    """Before: undecodable bytes became U+FFFD, so cp1252 speakers Müller/Möller and sessions
    Süd/Söd both read M\ufffdller / S\ufffdd: two speakers and two folds merged."""
    m = wavs / "m.csv"
    m.write_bytes((HEADER + "\na,audio/a.wav,caf\xe9,ang,M\xfcller,S\xfcd\nb,audio/b.wav,x,ang,M\xf6ller,S\xf6d\n"
                   "c,audio/c.wav,\u00fcber,ang,s,1\n").encode("cp1252")[:-len("c,audio/c.wav,\u00fcber,ang,s,1\n")]
                  + "c,audio/c.wav,\u00fcber,ang,s,1\n".encode("utf-8"))
    utts = load_corpus("manifest", path=m)
    assert [(u.speaker, u.session, u.transcript) for u in utts] == [
        ("Müller", "Süd", "café"), ("Möller", "Söd", "x"), ("s", 1, "über")]   # the UTF-8 line stays UTF-8


def test_labels_named_set_counts_what_it_leaves_out_and_refuses_near_codes(wavs, caplog):
    """Before: --labels four kept ang and neu of ang, happy, neu, Sad without a word: happy and Sad
    (IEMOCAP's sad written another way) were dropped silently."""
    rows = ["a,audio/a.wav,x,ang,s,1", "b,audio/b.wav,x,happy,s,1", "c,audio/c.wav,x,neu,s,2",
            "d,audio/a.wav,x,happy,s,2", "e,audio/b.wav,x,fru,s,2"]
    m = write_csv(wavs / "m.csv", rows)
    with caplog.at_level("WARNING"):
        assert [u.id for u in load_corpus("manifest", path=m, labels="four")] == ["a", "c"]
    assert "3 rows left out by --labels four: happy×2, fru×1" in caplog.text
    m = write_csv(wavs / "m.csv", rows + ["f,audio/c.wav,x,Sad,s,1"])
    _refused(m, r"line 7: label 'Sad' of 'f' is --labels four's 'sad' written another way; write 'sad'", labels="four")


def test_multichannel_files_are_counted_when_mixed(wavs, tiny_models, caplog):
    """Before: a stereo file (IEMOCAP-style dyadic: an actor per channel) was mixed to mono without
    a word. It is still mixed (unless column ``channel`` names one), and extraction, which reads every
    file anyway, counts them in one warning (reading every header at each load of a large manifest
    cost seconds to minutes)."""
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    rng = np.random.default_rng(0)
    sf.write(wavs / "audio" / "st.wav", (rng.standard_normal((8000, 2)) * 3000).astype(np.int16), 16000)
    sf.write(wavs / "audio" / "c.wav", (rng.standard_normal(8000) * 3000).astype(np.int16), 16000)
    m = write_csv(wavs / "m.csv", ["a,audio/st.wav,x,ang,s,1", "c,audio/c.wav,x,neu,s,2"])
    with caplog.at_level("WARNING"):
        assert len(load_corpus("manifest", path=m)) == 2
        assert "several channels" not in caplog.text   # not at load
        run_extract(ExtractConfig(corpus="manifest", manifest=str(m), out=str(wavs / "s.h5"), device="cpu",
                                  audio_model=tiny_models["group"], text_model=None))
    assert "audio: 1 audio file(s) hold several channels (e.g. " in caplog.text
    assert "st.wav); each was mixed" in caplog.text and "name each utterance's channel" in caplog.text


def test_a_channel_column_reads_one_channel(wavs, tiny_models, caplog):
    """A dialogue with a microphone per speaker: column ``channel`` (0-based) reads one channel,
    and two channels of one file over the same times are two signals (not shared audio). Before:
    every file was mixed to mono, so each speaker's utterance held the other's voice."""
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    from emofuse.store import FeatureStore
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8000, 2)) * [3000, 9000]).astype(np.int16)
    sf.write(wavs / "audio" / "st.wav", x, 16000)
    sf.write(wavs / "audio" / "right.wav", x[:, 1], 16000)
    m = write_csv(wavs / "m.csv", ["l,audio/st.wav,x,ang,s1,1,0", "r,audio/st.wav,x,neu,s2,2,1.0",
                                   "alone,audio/right.wav,x,neu,s2,3,"], header="id,audio,text,label,speaker,session,channel")
    with caplog.at_level("WARNING"):
        utts = {u.id: u for u in load_corpus("manifest", path=m)}
        assert (utts["l"].channel, utts["r"].channel, utts["alone"].channel) == (0, 1, None)
        run_extract(ExtractConfig(corpus="manifest", manifest=str(m), out=str(wavs / "s.h5"), device="cpu",
                                  audio_model=tiny_models["group"], text_model=None))
    assert "share more than" not in caplog.text and "several channels" not in caplog.text
    with FeatureStore(str(wavs / "s.h5")) as fs:
        np.testing.assert_array_equal(fs.frames("audio", "r"), fs.frames("audio", "alone"))
        assert not np.array_equal(fs.frames("audio", "l"), fs.frames("audio", "alone"))
    # a column named channel before emofuse read one: 0 on a mono file is that file (same utterance,
    # same fingerprint); a channel a file lacks is refused at load, naming it
    from emofuse.corpora import utterance_table
    from emofuse.store.fingerprint import corpus_fingerprint
    plain = write_csv(wavs / "p.csv", ["alone,audio/right.wav,x,neu,s2,3"])
    write_csv(m, ["alone,audio/right.wav,x,neu,s2,3,0"], header="id,audio,text,label,speaker,session,channel")
    (u,) = load_corpus("manifest", path=m)
    assert u.channel is None and corpus_fingerprint(utterance_table([u])) == \
        corpus_fingerprint(utterance_table(load_corpus("manifest", path=plain)))
    for row, held in (("alone,audio/right.wav,x,neu,s2,3,1", 1), ("l,audio/st.wav,x,ang,s1,1,2", 2)):
        write_csv(m, [row], header="id,audio,text,label,speaker,session,channel")
        with pytest.raises(CorpusError, match=rf"line 2: channel \d of '\w+' is not in .*\.wav, which holds {held} "
                                              rf"channel\(s\); channels count from 0"):
            load_corpus("manifest", path=m)
    # a file's mix holds each of its channels: shared with one channel of it across sessions is said
    write_csv(m, ["c,audio/st.wav,x,ang,s1,1,", "d,audio/st.wav,x,neu,s2,2,1"],
              header="id,audio,text,label,speaker,session,channel")
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_corpus("manifest", path=m)
    assert "1 utterance(s) share more than 10 ms of an audio file with an utterance of another session" in caplog.text
    for bad in ("-1", "0.5", "left", "inf", "1e400"):
        write_csv(m, [f"l,audio/st.wav,x,ang,s1,1,{bad}"], header="id,audio,text,label,speaker,session,channel")
        with pytest.raises(CorpusError, match=rf"line 2: channel '{bad}' of 'l' is not a channel number; expected a "
                                              "whole number from 0"):
            load_corpus("manifest", path=m)
    # a channel a file lacks at extraction (the file changed since): that utterance is skipped with the reason
    from emofuse.corpora.records import Utterance
    from emofuse.extract.audio import BadInput, load_audio
    with pytest.raises(BadInput, match=r"channel 2 asked for, the file holds 2 channel\(s\)"):
        load_audio(Utterance(id="l", audio_path=str(wavs / "audio" / "st.wav"), transcript="x", label="a", session=1,
                             speaker="s", channel=2), 16000)


def test_one_file_under_several_ids_overlapping(long_wav, caplog):
    """Before: the same audio under two ids with overlapping spans in different sessions was
    accepted without a word, so a test fold could hold audio its model was trained on. It is said
    (not refused: two speakers' crosstalk in one recording overlaps too), in one pass per file."""
    m = write_csv(long_wav / "m.csv", ["a,long.wav,x,neu,s,1,0,1.5", "b,long.wav,x,neu,s,2,1.0,2.0"],
                  header=HEADER + ",start,end")
    with caplog.at_level("WARNING"):
        assert len(load_corpus("manifest", path=m)) == 2
    assert ("1 utterance(s) share more than 10 ms of an audio file with an utterance of another session (e.g. 'a' "
            "(session 1) and 'b' (session 2) in ") in caplog.text and "from 1 s to 1.5 s)" in caplog.text
    caplog.clear()
    m = write_csv(long_wav / "m.csv", ["a,long.wav,x,neu,s,1,,", "b,long.wav,x,neu,s,2,2.5,"], header=HEADER + ",start,end")
    with caplog.at_level("WARNING"):
        load_corpus("manifest", path=m)
    assert "from 2.5 s to its end" in caplog.text
    caplog.clear()
    # touching within 10 ms: nothing; within one session: the other warning
    m = write_csv(long_wav / "m.csv", ["a,long.wav,x,neu,s,1,0,1.005", "b,long.wav,x,neu,s,2,1.0,2.0",
                                       "c,long.wav,x,neu,s,2,1.5,"], header=HEADER + ",start,end")
    with caplog.at_level("WARNING"):
        assert len(load_corpus("manifest", path=m)) == 3
    assert "another session" not in caplog.text
    assert "1 utterance(s) share more than 10 ms of an audio file with another of their session (e.g. 'b' and 'c'" \
        in caplog.text
    # 5,000 rows of one file in one session: utterances counted in one pass (before, 12.5 million pairs)
    from emofuse.corpora.manifest import check_shared_audio
    from emofuse.corpora.records import Utterance
    utts = [Utterance(id=f"u{i}", audio_path=str(long_wav / "long.wav"), transcript="x", label="neu", session=1,
                      speaker="s") for i in range(5000)]
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_shared_audio(utts, "m")
    assert "m: 4999 utterance(s) share" in caplog.text


def test_jsonl_nested_fields_never_read_are_ignored(wavs):
    """Before: an extra nested field ("meta": {...}, "words": [...]) refused the whole manifest."""
    m = _jsonl(wavs / "m.jsonl", [{"id": "a", "audio": "audio/a.wav", "text": "hi", "label": "neu", "speaker": "s",
                                   "session": 1, "meta": {"age": 3}, "words": [{"w": "hi", "start": 0.1}]}])
    assert [u.id for u in load_corpus("manifest", path=m)] == ["a"]
    m = _jsonl(wavs / "m.jsonl", [{"id": "a", "audio": "audio/a.wav", "text": "hi", "label": "neu", "speaker": "s",
                                   "session": 1, "Duration": [1]}])
    _refused(m, r"line 1: field 'Duration' holds a JSON list")
