import collections

import soundfile as sf

from emofuse.corpora import load_corpus


def test_demo_corpus_shape():
    utts = load_corpus("demo")
    assert len(utts) >= 200
    assert collections.Counter(u.label for u in utts) == {"ang": 55, "hap": 55, "neu": 55, "sad": 55}
    assert len({u.speaker for u in utts}) == 10 and {u.session for u in utts} == {1, 2, 3, 4, 5}
    for u in utts:
        info = sf.info(u.audio_path)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert 1.0 <= info.frames / info.samplerate <= 4.0, u.id


def test_script_lines_are_spoken_in_all_four_emotions():
    utts = load_corpus("demo")
    by_line = collections.defaultdict(set)
    for u in utts:
        if "_script" in u.id:
            by_line[u.transcript].add(u.label)
    assert by_line and all(labels == {"ang", "hap", "neu", "sad"} for labels in by_line.values())
    impro_text = {u.transcript: u.label for u in utts if "_impro" in u.id}
    assert len(set(impro_text.values())) == 4  # wording carries emotion there


def test_emofuse_corpus_summarises_with_the_labels_extraction_would_keep(capsys):
    """Before: `emofuse corpus --labels six`, as the README suggests, was an unrecognised argument."""
    from emofuse.cli import main
    assert main(["corpus", "--corpus", "demo"]) == 0
    four = capsys.readouterr().out
    assert main(["corpus", "--corpus", "demo", "--labels", "six"]) == 0
    six = capsys.readouterr().out
    assert "exc" not in four.splitlines()[1] and "exc" in six.splitlines()[1]   # excited: merged into hap in four
