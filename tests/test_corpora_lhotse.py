"""lhotse manifests (fixtures written by lhotse 1.33 itself) and manifest column aliases."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emofuse.cli import main
from emofuse.corpora import load_corpus, load_manifest
from emofuse.errors import CorpusError

GOLDEN = Path(__file__).parent / "golden" / "lhotse"
SECONDS = [2.0, 2.0, 1.0, 1.0]


@pytest.fixture
def lhotse_dir(tmp_path):
    for f in GOLDEN.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "audio").mkdir()
    rng = np.random.default_rng(0)
    for i, s in enumerate(SECONDS):
        sf.write(tmp_path / "audio" / f"rec{i}.wav", (rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32), 16000)
    return tmp_path


EXPECTED = {  # id: (label, session, speaker, start, end, text)
    "rec0-a": ("ang", "1", "spk1", 0.0, 1.0, "I am so angry"),
    "rec0-b": ("neu", "1", "spk2", 1.0, 2.0, "that is fine"),
    "rec1-a": ("hap", "2", "spk3", 0.0, 1.2, "what a lovely day"),
    "rec1-b": ("sad", "2", "spk4", 1.2, 2.0, "leave me alone"),
    "rec2": ("neu", "1", "spk1", 0.0, 1.0, "okay then"),
    "rec3": ("ang", "2", "spk3", 0.0, 1.0, "no way"),
}


@pytest.mark.parametrize("which", ["supervisions.jsonl.gz", "cuts.jsonl.gz", "cuts.jsonl", "."])
def test_recordings_supervisions_and_cuts_read_alike(lhotse_dir, which):
    if which == ".":
        (lhotse_dir / "cuts.jsonl").unlink()   # a folder: its supervisions with their recordings
    utts = load_corpus("lhotse", path=str(lhotse_dir / which))
    assert [u.id for u in utts] == sorted(EXPECTED)
    for u in utts:
        label, session, speaker, start, end, text = EXPECTED[u.id]
        assert (u.label, u.session, u.speaker, u.transcript) == (label, session, speaker, text)
        assert u.start == pytest.approx(start) and u.end == pytest.approx(end)
        assert Path(u.audio_path).is_file() and Path(u.audio_path).parent == lhotse_dir / "audio"
    assert [u.id for u in load_corpus("lhotse", path=str(lhotse_dir / which), labels="ang,sad")] == \
        ["rec0-a", "rec1-b", "rec3"]


def test_labels_as_the_manifest_reader_takes_them(lhotse_dir):
    """--labels means what it means for manifests: raw:class merges, and a listed label that no
    supervision has (a typo would silently drop a class) is refused with the labels there are."""
    path = str(lhotse_dir / "cuts.jsonl")
    merged = load_corpus("lhotse", path=path, labels="ang:sad,sad")
    assert [u.id for u in merged] == ["rec0-a", "rec1-b", "rec3"] and {u.label for u in merged} == {"sad"}
    with pytest.raises(CorpusError, match=r"--labels names \['angry'\], which no supervision has; its labels are"):
        load_corpus("lhotse", path=path, labels="angry,sad")


def _rewrite(path: Path, edit) -> None:
    lines = [json.loads(x) for x in gzip.open(path, "rt")]
    edit(lines)
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))


def test_session_defaults_to_speaker_and_refusals(lhotse_dir, caplog):
    sups = lhotse_dir / "supervisions.jsonl.gz"

    def no_session(lines):
        for s in lines:
            del s["custom"]["session"]
    _rewrite(sups, no_session)
    with caplog.at_level("INFO"):
        utts = load_corpus("lhotse", path=str(sups))
    assert {u.session for u in utts} == {"spk1", "spk2", "spk3", "spk4"}   # leave-one-speaker-out
    # before: not a word about which fold unit was used
    assert "no supervision has a custom 'session', so the fold unit is the speaker (leave-one-speaker-out)" in caplog.text

    _rewrite(sups, lambda lines: lines[2]["custom"].pop("emotion"))
    with pytest.raises(CorpusError, match=r"line 3: supervision 'rec1-a' has no emotion label"):
        load_corpus("lhotse", path=str(sups))

    recs = lhotse_dir / "recordings.jsonl.gz"
    _rewrite(recs, lambda lines: lines[0].update(transforms=[{"name": "Speed", "kwargs": {"factor": 1.1}}]))
    _rewrite(sups, lambda lines: lines[2]["custom"].update(emotion="hap"))
    with pytest.raises(CorpusError, match="has transforms"):
        load_corpus("lhotse", path=str(sups))
    _rewrite(recs, lambda lines: lines[0].update(transforms=None, sources=[{"type": "url", "channels": [0],
                                                                               "source": "https://x/y.wav"}]))
    with pytest.raises(CorpusError, match="one audio file per recording"):
        load_corpus("lhotse", path=str(sups))
    with pytest.raises(CorpusError, match="is a RecordingSet"):
        load_corpus("lhotse", path=str(recs))
    (lhotse_dir / "recordings.jsonl.gz").unlink()
    with pytest.raises(CorpusError, match="needs its RecordingSet beside it"):
        load_corpus("lhotse", path=str(sups))


def test_corpus_command_reads_lhotse(lhotse_dir, capsys):
    assert main(["corpus", "--corpus", "lhotse", "--manifest", str(lhotse_dir / "cuts.jsonl.gz")]) == 0
    assert "6 utterances" in capsys.readouterr().out


def test_lhotse_corpus_extracts(lhotse_dir, tmp_path, tiny_models):
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    from emofuse.store import FeatureStore

    out = str(tmp_path / "l.h5")
    run_extract(ExtractConfig(corpus="lhotse", manifest=str(lhotse_dir / "cuts.jsonl.gz"), out=out,
                              audio_model=tiny_models["group"], text_model=None))
    with FeatureStore(out) as fs:
        assert sorted(fs.ids("audio")) == sorted(EXPECTED)
        assert fs.corpus_meta["kind"] == "lhotse"
        # rec1-a is 1.2 s of a 2 s file: 20 ms frames of the segment, not of the file
        assert abs(len(fs.frames("audio", "rec1-a")) - 60) <= 1


def test_manifest_column_aliases(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text("ID,Wav,Transcript,Emotion,Speaker,Session\nu1,a.wav,hello,ang,s1,1\n")
    (u,) = load_manifest(m)
    assert (u.id, u.transcript, u.label, u.speaker, u.session) == ("u1", "hello", "ang", "s1", 1)
    assert u.audio_path == str(tmp_path / "a.wav")
    m.write_text("id,wav,path,text,label,speaker,session\nu1,a.wav,a.wav,hello,ang,s1,1\n")
    with pytest.raises(CorpusError, match=r"columns 'wav' and 'path' both name the 'audio' column"):
        load_manifest(m)
    j = tmp_path / "m.jsonl"
    j.write_text(json.dumps({"id": "u1", "audio_path": "a.wav", "text": "hi", "emotion": "sad", "speaker": "s",
                             "session": "2"}) + "\n")
    assert load_manifest(j)[0].label == "sad"


def test_a_supervision_reads_its_own_channel_of_a_stereo_recording(lhotse_dir, tiny_models, tmp_path):
    """A dialogue recorded with a microphone per speaker: each supervision's ``channel`` is read.
    Before: a stereo recording was refused (or, naming one channel, read as the mix of both)."""
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    from emofuse.store import FeatureStore

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((32000, 2)) * np.array([0.1, 0.4])).astype(np.float32)
    sf.write(lhotse_dir / "audio" / "rec0.wav", x, 16000)
    sf.write(lhotse_dir / "audio" / "right.wav", x[:, 1], 16000)   # channel 1 alone, as its own file
    recs, sups = lhotse_dir / "recordings.jsonl.gz", lhotse_dir / "supervisions.jsonl.gz"

    def stereo(lines):
        lines[0].update(channel_ids=[0, 1])
        lines[0]["sources"][0]["channels"] = [0, 1]
        lines.append({**json.loads(json.dumps(lines[0])), "id": "right", "channel_ids": [0],
                      "sources": [{"type": "file", "channels": [0], "source": "audio/right.wav"}]})
    _rewrite(recs, stereo)

    def channels(lines):
        lines[1]["channel"] = 1   # rec0-b (1 s to 2 s): the second speaker's microphone
        lines.append({**lines[1], "id": "right-b", "recording_id": "right", "channel": 0})
    _rewrite(sups, channels)
    by_id = {u.id: u for u in load_corpus("lhotse", path=str(sups))}
    assert (by_id["rec0-a"].channel, by_id["rec0-b"].channel, by_id["rec1-a"].channel, by_id["right-b"].channel) == \
        (0, 1, None, None)   # a mono file: no channel to name (its stores keep their fingerprints)
    out = str(tmp_path / "s.h5")
    run_extract(ExtractConfig(corpus="lhotse", manifest=str(sups), out=out, audio_model=tiny_models["group"],
                              text_model=None))
    with FeatureStore(out) as fs:   # channel 1 of the stereo file is the mono file of channel 1
        np.testing.assert_array_equal(fs.frames("audio", "rec0-b"), fs.frames("audio", "right-b"))
        assert not np.array_equal(fs.frames("audio", "rec0-a")[:40], fs.frames("audio", "right-b")[:40])
        assert fs.utterances.loc["rec0-b", "channel"] == 1

    _rewrite(sups, lambda lines: lines[1].update(channel=[0, 1]))   # every channel: mixed
    assert {u.id: u for u in load_corpus("lhotse", path=str(sups))}["rec0-b"].channel is None
    _rewrite(sups, lambda lines: lines[1].update(channel=2))
    with pytest.raises(CorpusError, match=r"supervision 'rec0-b' has channel 2; its recording 'rec0' has channels "
                                          r"\[0, 1\]: expected one of them, or all of them"):
        load_corpus("lhotse", path=str(sups))
    # a recording claiming two channels of a mono file (before this review: read as the mono file)
    _rewrite(sups, lambda lines: lines[1].update(channel=1))

    def mono_two(lines):
        lines[-1].update(channel_ids=[0, 1])
        lines[-1]["sources"][0]["channels"] = [0, 1]
    _rewrite(recs, mono_two)
    with pytest.raises(CorpusError, match=r"recording 'right' names channel\(s\) \[0, 1\] of .*right\.wav, which holds 1 "
                                          r"channels"):
        load_corpus("lhotse", path=str(sups))
    _rewrite(recs, lambda lines: lines.pop())
    _rewrite(sups, lambda lines: lines.pop())
    _rewrite(recs, lambda lines: lines[0].update(channel_ids=[1]) or lines[0]["sources"][0].update(channels=[1]))
    with pytest.raises(CorpusError, match=r"recording 'rec0' names channel\(s\) \[1\] of .*rec0\.wav, which holds 2 "
                                          r"channels"):
        load_corpus("lhotse", path=str(sups))


# -- corpus reader audit ------------------------------------------------------------------------
def test_session_written_two_ways_or_null(lhotse_dir):
    """Before: custom session 1 and "01" were two folds, and {"session": null} a fold named 'None'."""
    sups = lhotse_dir / "supervisions.jsonl.gz"

    def spell(lines):
        for s in lines:
            s["custom"]["session"] = 1 if s["custom"]["session"] == "1" else 2
        lines[1]["custom"]["session"] = "01"
    _rewrite(sups, spell)
    with pytest.raises(CorpusError, match=r"session '01' \(.*line 2\) and '1' \(.*line 1\) differ only in spelling"):
        load_corpus("lhotse", path=str(sups))
    _rewrite(sups, lambda lines: lines[1]["custom"].update(session=None))
    with pytest.raises(CorpusError, match=r"1 of 6 supervisions lack custom 'session'"):
        load_corpus("lhotse", path=str(sups))

    def all_null(lines):
        for s in lines:
            s["custom"]["session"] = None
    _rewrite(sups, all_null)
    assert {u.session for u in load_corpus("lhotse", path=str(sups))} == {"spk1", "spk2", "spk3", "spk4"}


@pytest.mark.parametrize("value,kind", [(["hap", "neu"], "list"), ({"hap": 0.7, "neu": 0.3}, "object")])
def test_a_label_that_is_not_one_value_is_refused(lhotse_dir, value, kind):
    """Before: custom emotion ["hap", "neu"] (or a dict) became a class named after its repr."""
    sups = lhotse_dir / "supervisions.jsonl.gz"
    _rewrite(sups, lambda lines: lines[1]["custom"].update(emotion=value))
    with pytest.raises(CorpusError, match=rf"line 2: supervision 'rec0-b' has custom 'emotion' .*, a JSON {kind}; "
                                          r"expected one label \(a string\)"):
        load_corpus("lhotse", path=str(sups))


def test_labels_left_out_near_codes_and_speaker_folds(lhotse_dir, caplog):
    """--labels four counts the supervisions it leaves out (before: dropped without a word) and
    refuses IEMOCAP's codes written another way; with no sessions the speaker is the fold and is
    compared as a speaker ('1' and '01' are two speakers, not one session written two ways)."""
    import logging
    sups = lhotse_dir / "supervisions.jsonl.gz"
    _rewrite(sups, lambda lines: lines[0]["custom"].update(emotion="fru"))
    with caplog.at_level(logging.WARNING):
        utts = load_corpus("lhotse", path=str(sups), labels="four")
    assert len(utts) == 5 and ": 1 supervision left out by --labels four: fru×1" in caplog.text
    _rewrite(sups, lambda lines: lines[0]["custom"].update(emotion="Sad"))
    with pytest.raises(CorpusError, match=r"'Sad'.*'sad'"):
        load_corpus("lhotse", path=str(sups), labels="four")

    def speakers(lines):
        for k, s in enumerate(lines):
            s["custom"].pop("session", None)
            s["custom"]["emotion"] = "neu"
            s["speaker"] = "1" if k % 2 else "01"
    _rewrite(sups, speakers)
    assert {u.session for u in load_corpus("lhotse", path=str(sups))} == {"1", "01"}
