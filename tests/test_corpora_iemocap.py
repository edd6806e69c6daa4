import collections
import shutil

import pytest

from emofuse.corpora import SIX_CLASS, Utterance, load_corpus
from emofuse.errors import CorpusError
from emofuse.testing import REAL_FOUR_CLASS_COUNTS, make_fake_iemocap


def as_dicts(utts):
    return [{k: v for k, v in u.to_dict().items() if k not in ("type", "schema_version")} for u in utts]


def test_reader_recovers_ground_truth_exactly(fake_iemocap):
    utts = load_corpus("iemocap", root=fake_iemocap.root)
    assert as_dicts(utts) == fake_iemocap.expected()
    assert [u.id for u in utts] == sorted(u.id for u in utts)
    # quirks are really in the fake: lettered dialog, latin-1 text, an utterance without alignment
    assert any("impro05a" in u.id for u in utts) and any("script01_1b" in u.id for u in utts)
    assert any("café" in u.transcript for u in utts)
    assert sum(1 for u in utts if not u.alignments) == 1
    # speaker is session + the speaker's own gender, not the marker wearer
    assert any(u.id.startswith("Ses01F") and u.speaker == "Ses01M" for u in utts)


def test_six_class_mapping(fake_iemocap):
    utts = load_corpus("iemocap", root=fake_iemocap.root, labels="six")
    assert as_dicts(utts) == fake_iemocap.expected(SIX_CLASS)
    assert {u.label for u in utts} == {"ang", "hap", "exc", "neu", "sad", "fru"}


def test_custom_mapping_and_unknown_code(fake_iemocap):
    utts = load_corpus("iemocap", root=fake_iemocap.root, labels={"ang": "neg", "sad": "neg", "hap": "pos"})
    assert {u.label for u in utts} == {"neg", "pos"}
    with pytest.raises(CorpusError, match="'zzz'"):
        load_corpus("iemocap", root=fake_iemocap.root, labels={"zzz": "x"})
    with pytest.raises(CorpusError, match="label set"):
        load_corpus("iemocap", root=fake_iemocap.root, labels="seven")


def test_iemocap_sized_fake_counts_and_one_listing_per_dialog(tmp_path, monkeypatch):
    """The real corpus's counts; the reader's work grows with dialogs, not utterances: each
    EmoEvaluation file is parsed once and each dialog's alignment folder listed once (a check
    that holds on any machine, where a time limit held only on fast ones)."""
    from emofuse.corpora import iemocap
    counts = {s: {**c, "xxx": 3, "fru": 2} for s, c in REAL_FOUR_CLASS_COUNTS.items()}
    fake = make_fake_iemocap(tmp_path, counts=counts, seconds=0.03, alignments=False)
    calls = collections.Counter()

    def counted(name):
        real = getattr(iemocap, name)

        def wrapper(path, *a, **k):
            calls[(name, str(path))] += 1
            return real(path, *a, **k)
        return wrapper
    for name in ("parse_emo_evaluation", "parse_transcription", "_alignment_index"):
        monkeypatch.setattr(iemocap, name, counted(name))
    utts = load_corpus("iemocap", root=tmp_path)
    dialogs = {u.dialog for u in fake.utterances}
    per_fn = collections.Counter(name for name, _ in calls)
    assert per_fn == {"parse_emo_evaluation": len(dialogs), "parse_transcription": len(dialogs),
                      "_alignment_index": len({u.id.rsplit("_", 1)[0] for u in utts})}
    assert set(calls.values()) == {1}, "a file parsed or a folder listed twice"
    assert len(utts) == 5531
    assert collections.Counter(u.label for u in utts) == {"ang": 1103, "hap": 1636, "neu": 1708, "sad": 1084}
    assert collections.Counter(u.session for u in utts) == {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}
    assert len({u.speaker for u in utts}) == 10
    assert as_dicts(utts) == fake.expected()


def test_root_without_sessions_is_refused(tmp_path):
    (tmp_path / "Session1").mkdir()
    with pytest.raises(CorpusError, match=r"Session1 … Session5.*found \['Session1'\]"):
        load_corpus("iemocap", root=tmp_path)
    with pytest.raises(CorpusError, match="not a folder"):
        load_corpus("iemocap", root=tmp_path / "nope")


def test_missing_wav_names_the_file(tmp_path):
    fake = make_fake_iemocap(tmp_path, seed=2)
    victim = next(u for u in fake.utterances if u.code == "neu")
    shutil.os.remove(victim.audio_path)
    with pytest.raises(CorpusError, match=f"missing audio file .*{victim.id}.wav"):
        load_corpus("iemocap", root=tmp_path)


def test_duplicate_id_across_dialog_files_is_refused(tmp_path):
    make_fake_iemocap(tmp_path, seed=3)
    emo = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    src = sorted(p for p in emo.iterdir() if p.suffix == ".txt" and not p.name.startswith("."))[0]
    shutil.copy(src, emo / "Ses01F_impro09.txt")
    with pytest.raises(CorpusError, match="appears twice"):
        load_corpus("iemocap", root=tmp_path)


def test_record_round_trip_and_immutability(fake_iemocap):
    u = load_corpus("iemocap", root=fake_iemocap.root)[0]
    assert Utterance.from_dict(u.to_dict()) == u
    with pytest.raises(AttributeError):
        u.label = "x"
    with pytest.raises(TypeError):
        u.alignments["word"] = "x"
    with pytest.raises(ValueError, match="type"):
        Utterance.from_dict({"id": "x"})


def test_unknown_corpus_kind():
    with pytest.raises(CorpusError, match="iemocap"):
        load_corpus("librispeech")
