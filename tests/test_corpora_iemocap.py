import collections
import shutil
from pathlib import Path

import pytest

from emofuse.corpora import SIX_CLASS, Utterance, load_corpus
from emofuse.errors import CorpusError
from emofuse.testing import REAL_FOUR_CLASS_COUNTS, make_fake_iemocap


def reader_messages(caplog):
    """The reader's warnings but the one every small fake gets: four-class counts other than the
    full release's (its own test is test_a_copy_whose_four_class_counts_are_not_the_full_releases_is_warned)."""
    return [r.getMessage() for r in caplog.records if "the full release has 5,531" not in r.getMessage()]


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
    with pytest.raises(CorpusError, match=f"appears twice in the EmoEvaluation files, in {src} and in "
                                          f"{emo / 'Ses01F_impro09.txt'};"):
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


EMO_HEAD = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
EMO_OK = (EMO_HEAD + "[1.5000 - 2.6171]\tSes01F_impro01_M000\tang\t[1.5000, 4.0000, 4.0000]\nC-E1:\tAnger;\t()\n"
          "A-E3:\tval 3; act 2; dom  ;\t(a comment, with commas)\n\n"
          "[3.6152 - 4.9432]\tSes01F_impro01_F000\txxx\t[4.0000, 3.5000, 3.0000]\nC-F1:\tNeutral; Anger;\t()\n")


@pytest.mark.parametrize("text,match", [
    (EMO_OK + "\n[9.0 - 10.0]\tSes01F_impro01_M000\tsad\t[1.0, 1.0, 1.0]\n",
     r"line 10: Ses01F_impro01_M000 is listed again \(first on line 3\)"),
    (EMO_OK.replace("\tang\t", "\tsadd\t"),
     r"line 3: Ses01F_impro01_M000 has emotion code 'sadd', which is not one of"),
    (EMO_OK.replace("\tang\t", "\tAng\t"), r"line 3: .*'Ang'.*\(codes are lower case\)"),
    (EMO_OK.replace("]\tSes01F_impro01_F000", "] Ses01F_impro01_F000"),
     r"line 7: .* starts like the summary line of Ses01F_impro01_F000 but does not have its form"),
    (EMO_OK.replace("\t[1.5000, 4.0000, 4.0000]", ""), r"line 3: .*summary line of Ses01F_impro01_M000"),
    (EMO_OK.replace("\tang\t", "\t\t"), r"line 3: .*summary line of Ses01F_impro01_M000"),
    (EMO_OK.replace("\tSes01F_impro01_M000\t", "\tSes01F_impro01_M000;\t"),
     r"line 3: .* is a summary line whose id 'Ses01F_impro01_M000;' is not an IEMOCAP utterance id"),
    (EMO_OK.replace("\tSes01F_impro01_F000\t", "\tSes01F_impro01_F0000\t"),
     r"line 7: .* id 'Ses01F_impro01_F0000' is not an IEMOCAP utterance id \(expected the form Ses0<n>"),
    (EMO_OK.replace("\tSes01F_impro01_F000\t", "\tses01f_impro01_f000\t"),
     r"line 7: .* id 'ses01f_impro01_f000' is not"),
    (EMO_OK.replace("]\tSes01F_impro01_F000\txxx", "] Ses01F_impro01_F00 xxx"),
     r"line 7: .* id 'Ses01F_impro01_F00' is not an IEMOCAP utterance id"),
    ("", r"is empty \(0 bytes\)"),
    (EMO_HEAD, r"holds no summary line"),
    (EMO_OK.encode("utf-16"), r"holds NUL bytes \(UTF-16 text\?\) and no summary line"),
])
def test_damaged_emo_evaluation_is_refused_with_file_and_line(tmp_path, text, match):
    """A repeated id, a code IEMOCAP does not use, a summary line without its TABs or [V, A, D],
    or a file with no summary line at all: one sentence naming the file (and line), never a
    silently changed or dropped label."""
    from emofuse.corpora.iemocap import parse_emo_evaluation
    p = tmp_path / "Ses01F_impro01.txt"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CorpusError, match=match) as e:
        parse_emo_evaluation(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_emo_evaluation_quirks_and_other_lines_are_read(tmp_path):
    """What real files hold stays accepted: CRLF, latin-1 annotator comments, an empty dom value,
    annotator and header lines, and lines starting with a bracket that are not about an utterance."""
    from emofuse.corpora.iemocap import parse_emo_evaluation
    p = tmp_path / "e.txt"
    text = EMO_OK + "C-E2:\tOther;\t(caf\xe9 [laughs] Ses01F_impro01_F000)\n[note]\tnot an utterance id\n"
    p.write_bytes(text.replace("\n", "\r\n").encode("latin-1"))
    assert parse_emo_evaluation(p) == {"Ses01F_impro01_M000": "ang", "Ses01F_impro01_F000": "xxx"}


def test_damaged_emo_evaluation_stops_emofuse_corpus(tmp_path, capsys):
    """The whole reader and the command line: a dialog's labels re-saved as UTF-16 no longer make
    the dialog (or its session) vanish; `emofuse corpus` exits non-zero with one sentence."""
    from emofuse.cli import main
    make_fake_iemocap(tmp_path, seed=6)
    emo = tmp_path / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    emo.write_bytes(emo.read_text().encode("utf-16"))
    assert main(["corpus", "--corpus", "iemocap", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {emo} holds NUL bytes") and len(err.splitlines()) == 1


def test_wavs_without_a_label_line_are_counted_not_refused(tmp_path, caplog):
    """A sentence wav whose summary line is gone is left out with a warning that counts such wavs
    (the real corpus has a line for each of its wavs, so an intact copy says nothing)."""
    fake = make_fake_iemocap(tmp_path, seed=7)
    with caplog.at_level("WARNING", logger="emofuse"):
        assert as_dicts(load_corpus("iemocap", root=tmp_path)) == fake.expected()
    assert not reader_messages(caplog)
    dialogs = collections.Counter(u.dialog for u in fake.utterances)
    victim = next(u for u in fake.utterances if u.code == "ang" and dialogs[u.dialog] > 1)
    emo = tmp_path / f"Session{victim.session}" / "dialog" / "EmoEvaluation" / f"{victim.dialog}.txt"
    lines = emo.read_bytes().decode().split("\n")
    emo.write_bytes("\n".join(l for l in lines if f"\t{victim.id}\t" not in l).encode())
    with caplog.at_level("WARNING", logger="emofuse"):
        utts = load_corpus("iemocap", root=tmp_path)
    assert victim.id not in {u.id for u in utts} and len(utts) == len(fake.expected()) - 1
    assert reader_messages(caplog) == [
        f"1 sentence wav(s) under {tmp_path}/Session*/sentences/wav have no summary line in any EmoEvaluation file "
        f"and are left out, e.g. {victim.audio_path} (the real corpus has none)"]


def test_a_stray_text_file_beside_the_label_files_is_left_alone(tmp_path, caplog):
    """Only files named after a dialog are label files: a user's notes.txt (no summary line) in
    EmoEvaluation/ is said once and ignored, not refused as a damaged label file."""
    fake = make_fake_iemocap(tmp_path, seed=7)
    notes = tmp_path / "Session2" / "dialog" / "EmoEvaluation" / "notes.txt"
    notes.write_text("which dialogs I listened to\n")
    with caplog.at_level("WARNING", logger="emofuse"):
        assert as_dicts(load_corpus("iemocap", root=tmp_path)) == fake.expected()
    assert reader_messages(caplog) == [
        f"{notes} is not named after a dialog (Ses0N…); it is not read as a label file"]


def test_transcript_listed_twice_with_another_text_is_refused(tmp_path):
    from emofuse.corpora.iemocap import parse_transcription
    p = tmp_path / "t.txt"
    first = "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\nM: Yeah.\n"
    p.write_text(first + first)  # the same line repeated: read once
    assert parse_transcription(p) == {"Ses01F_impro01_F000": "Excuse me."}
    p.write_text(first + "Ses01F_impro01_F000 [009.0000-010.0000]: Something else entirely.\n")
    with pytest.raises(CorpusError, match=r"t\.txt, line 3: Ses01F_impro01_F000 is transcribed again with another "
                                          r"text \(first on line 1\)"):
        parse_transcription(p)


def test_fake_with_sessions_left_out_is_still_a_readable_copy(tmp_path):
    """A test corpus of fewer sessions (counts for 1 and 2 only) writes one `xxx` utterance in each
    other session and no files for a dialog without utterances, so the reader, which refuses an
    EmoEvaluation file with no summary line, reads it; the four classes come from sessions 1-2."""
    fake = make_fake_iemocap(tmp_path, counts={1: {"ang": 1}, 2: {"sad": 2}}, seconds=0.05, alignments=False)
    assert sorted(u.code for u in fake.utterances) == ["ang", "sad", "sad", "xxx", "xxx", "xxx"]
    assert len(list((tmp_path / "Session1" / "dialog" / "EmoEvaluation").glob("Ses*.txt"))) == 1
    utts = load_corpus("iemocap", root=tmp_path)
    assert as_dicts(utts) == fake.expected() and {u.session for u in utts} == {1, 2}


@pytest.mark.parametrize("damage,match", [
    (lambda t: t.encode("utf-16"), r"holds NUL bytes \(UTF-16 text\?\) and no transcript line"),
    (lambda t: b"", r"is empty \(0 bytes\)"),
])
def test_a_transcription_file_with_no_transcript_line_is_refused(tmp_path, capsys, damage, match):
    """A dialog's transcription re-saved as UTF-16 (or emptied) no longer leaves its utterances
    without text, which text streams then skipped: `emofuse corpus` exits with one sentence."""
    from emofuse.cli import main
    make_fake_iemocap(tmp_path, seed=6)
    trans = tmp_path / "Session2" / "dialog" / "transcriptions" / "Ses02F_impro01.txt"
    trans.write_bytes(damage(trans.read_text()))
    assert main(["corpus", "--corpus", "iemocap", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {trans} ") and len(err.splitlines()) == 1
    with pytest.raises(CorpusError, match=match):
        load_corpus("iemocap", root=tmp_path)


def test_labelled_utterances_without_a_transcript_line_are_counted(tmp_path, caplog):
    """An utterance whose transcript line is gone (or whose dialog has no transcription file) is
    kept for speech with an empty text, and one warning counts such utterances and names one."""
    fake = make_fake_iemocap(tmp_path, seed=7)
    dialogs = collections.Counter(u.dialog for u in fake.utterances)
    victim = next(u for u in fake.utterances if u.code == "ang" and dialogs[u.dialog] > 1)
    trans = tmp_path / f"Session{victim.session}" / "dialog" / "transcriptions" / f"{victim.dialog}.txt"
    lines = trans.read_bytes().split(b"\n")
    trans.write_bytes(b"\n".join(l for l in lines if not l.startswith(victim.id.encode() + b" ")))
    with caplog.at_level("WARNING", logger="emofuse"):
        utts = load_corpus("iemocap", root=tmp_path)
    assert {u.id: u.transcript for u in utts}[victim.id] == "" and len(utts) == len(fake.expected())
    assert reader_messages(caplog) == [
        f"1 labelled utterance(s) have no text (no line, or an empty one, in their dialog's transcription file), "
        f"e.g. {victim.id} (no line in {trans}); text streams skip them (the real corpus has none)"]


@pytest.mark.parametrize("eol", [b"\r", b"\r\n", b"\n"])
def test_lone_cr_line_ends_are_line_ends_in_every_corpus_text_file(tmp_path, eol):
    """Old-Mac (CR only) line ends: a transcript no longer swallows the lines after it, an
    EmoEvaluation file keeps every summary line, and a .wdseg file reads its rows (every reader
    goes through `textio.read_lines`). Nothing but CR, LF and CRLF ends a line."""
    from emofuse.align.sphinx_seg import read_seg
    from emofuse.corpora.textio import read_lines
    fake = make_fake_iemocap(tmp_path, seed=7)
    want = as_dicts(load_corpus("iemocap", root=tmp_path))
    reads = []
    for u in load_corpus("iemocap", root=tmp_path)[:6]:
        reads += [(p, tier, read_seg(p, tier)) for tier, p in sorted(u.alignments.items())]
    assert reads
    for sub in ("EmoEvaluation", "transcriptions"):
        for p in (tmp_path / "Session1" / "dialog" / sub).glob("Ses*.txt"):
            p.write_bytes(p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", eol))
    for p, _, _ in reads:
        Path(p).write_bytes(Path(p).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", eol))
    assert as_dicts(load_corpus("iemocap", root=tmp_path)) == want == fake.expected()
    for p, tier, items in reads:
        assert read_seg(p, tier) == items
    odd = tmp_path / "odd.txt"
    odd.write_bytes("a\x0bb\x0cc\x1cd\u2028e\u2029f\x85g\rh\r\ni\nj".encode())
    assert read_lines(odd) == ["a\x0bb\x0cc\x1cd\u2028e\u2029f\x85g", "h", "i", "j"]
    odd.write_bytes(b"caf\xe9 \x85 ok\rnext")  # cp1252 bytes (0x85: an ellipsis) end no line
    assert read_lines(odd) == ["caf\xe9 \u2026 ok", "next"]


def test_a_line_break_inside_a_transcript_is_warned_not_silent(tmp_path, caplog):
    """A CR inside a transcript line ends the line (CR-only files read right), so the text after it
    is a line of its own that no rule reads: the file is named in a warning with that line, not
    dropped in silence. Untimed M:/F: lines stay silent, as the corpus documents them."""
    import logging
    make_fake_iemocap(tmp_path, seed=7)
    p = sorted((tmp_path / "Session1" / "dialog" / "transcriptions").glob("Ses*.txt"))[0]
    lines = p.read_bytes().split(b"\n")
    lines[0] = lines[0].rstrip(b"\r") + b"\rand the rest of it."
    p.write_bytes(b"\n".join(lines[:1] + [b"M: Yeah."] + lines[1:]))
    with caplog.at_level(logging.WARNING, logger="emofuse.corpora.iemocap"):
        load_corpus("iemocap", root=tmp_path)
    warned = [r.getMessage() for r in caplog.records if str(p) in r.getMessage()]
    assert len(warned) == 1 and "1 line(s) are neither transcript lines nor untimed speaker lines" in warned[0]
    assert "line 2: 'and the rest of it.'" in warned[0]


def test_a_utf8_byte_order_mark_is_dropped_in_every_corpus_text_file(tmp_path, caplog):
    """A file re-saved 'UTF-8 with BOM' (transcription, EmoEvaluation, .wdseg/.phseg) keeps its
    first line: the first utterance keeps its text and label, no false 'no line' warning."""
    from emofuse.align.sphinx_seg import read_seg
    from emofuse.corpora.textio import read_lines
    fake = make_fake_iemocap(tmp_path, seed=7)
    want = as_dicts(load_corpus("iemocap", root=tmp_path))
    u = next(u for u in load_corpus("iemocap", root=tmp_path) if u.session == 1 and u.alignments)
    reads = [(p, tier, read_seg(p, tier)) for tier, p in sorted(u.alignments.items())]
    for sub in ("EmoEvaluation", "transcriptions"):
        for p in (tmp_path / "Session1" / "dialog" / sub).glob("Ses*.txt"):
            p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    for p, _, _ in reads:
        Path(p).write_bytes(b"\xef\xbb\xbf" + Path(p).read_bytes())
    trans = tmp_path / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
    assert read_lines(trans)[0].startswith("Ses01F_impro01_")
    with caplog.at_level("WARNING", logger="emofuse"):
        assert as_dicts(load_corpus("iemocap", root=tmp_path)) == want == fake.expected()
    assert not reader_messages(caplog)
    for p, tier, items in reads:
        assert read_seg(p, tier) == items


def test_one_latin1_byte_leaves_the_utf8_lines_of_its_file_alone(tmp_path):
    """A file that is UTF-8 but for one latin-1 byte is decoded line by line: the UTF-8 lines stay
    UTF-8 (no 'CafÃ©' mojibake), the line with the latin-1 byte is read as latin-1."""
    from emofuse.corpora.iemocap import parse_transcription
    from emofuse.corpora.textio import read_lines
    p = tmp_path / "Ses01F_impro01.txt"
    p.write_bytes("Ses01F_impro01_F000 [002.0000-002.3413]: Café – “great” news.\r\n".encode()
                  + b"Ses01F_impro01_M000 [002.8413-003.1614]: Stop that now\xe9!\r\n")
    assert parse_transcription(p) == {"Ses01F_impro01_F000": "Café – “great” news.",
                                      "Ses01F_impro01_M000": "Stop that nowé!"}
    p.write_bytes("caf\xe9\nnaïve\n".encode("latin-1"))  # all latin-1: read as before
    assert read_lines(p) == ["caf\xe9", "naïve", ""]
    p.write_bytes("café\nnaïve\n".encode())
    assert read_lines(p) == ["café", "naïve", ""]


def test_a_dialog_filed_under_another_sessions_folder_is_refused(tmp_path, capsys):
    """The id decides session and speaker (the leave-one-session-out fold): a Ses02 dialog moved
    into Session1/ was read as session 1 with speakers Ses01F/Ses01M, silently the wrong fold; it
    is refused with one sentence naming the file and the folder."""
    from emofuse.cli import main
    fake = make_fake_iemocap(tmp_path, seed=7)
    utts = load_corpus("iemocap", root=tmp_path)
    assert all(u.session == int(u.id[3:5]) and u.speaker == u.id[:5] + u.gender for u in utts)
    d = "Ses02F_impro01"
    assert any(u.dialog == d for u in fake.utterances)
    for sub in ("dialog/EmoEvaluation", "dialog/transcriptions"):
        shutil.move(tmp_path / "Session2" / sub / f"{d}.txt", tmp_path / "Session1" / sub / f"{d}.txt")
    for sub in ("sentences/wav", "sentences/ForcedAlignment"):
        shutil.move(tmp_path / "Session2" / sub / d, tmp_path / "Session1" / sub / d)
    emo = tmp_path / "Session1" / "dialog" / "EmoEvaluation" / f"{d}.txt"
    with pytest.raises(CorpusError, match=f"^{emo} lists {d}_[FM]00[0-9], an utterance of session 2 \\(by its id\\), "
                                          f"but lies in the folder {tmp_path / 'Session1'};.*move the dialog's files "
                                          "to Session2$"):
        load_corpus("iemocap", root=tmp_path)
    assert main(["corpus", "--corpus", "iemocap", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {emo} lists ") and len(err.splitlines()) == 1


def test_a_root_holding_two_copies_is_refused_a_nested_copy_is_one(tmp_path, capsys):
    """`--root` above two IEMOCAP copies (an old partial `IEMOCAP/` beside `IEMOCAP_full_release/`)
    used the alphabetically first, silently; it is refused naming both. A copy nested in another
    (`IEMOCAP_full_release/IEMOCAP_full_release/`) is still one copy, read as before."""
    from emofuse.cli import main
    from emofuse.corpora.iemocap import find_root
    small = dict(counts={1: {"ang": 1}, 2: {"sad": 1}}, seconds=0.05, alignments=False)
    full = make_fake_iemocap(tmp_path / "data" / "IEMOCAP_full_release", **small)
    shutil.copytree(full.root, tmp_path / "data" / "IEMOCAP")
    a, b = tmp_path / "data" / "IEMOCAP", tmp_path / "data" / "IEMOCAP_full_release"
    with pytest.raises(CorpusError, match=f"^--root {tmp_path / 'data'} holds two IEMOCAP copies \\(folders holding "
                                          f"Session1 … Session5\\): {a} and {b}; point --root at one$"):
        load_corpus("iemocap", root=tmp_path / "data")
    assert main(["corpus", "--corpus", "iemocap", "--root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --root {tmp_path / 'data'} holds two") and len(err.splitlines()) == 1
    assert as_dicts(load_corpus("iemocap", root=b)) == full.expected()  # each copy alone reads
    # copies at different depths that are not one inside the other are two copies too
    (tmp_path / "data" / "backup").mkdir()
    shutil.move(a, tmp_path / "data" / "backup" / "IEMOCAP")
    with pytest.raises(CorpusError, match=f"holds two IEMOCAP copies .*: {tmp_path / 'data' / 'IEMOCAP_full_release'} "
                                          f"and {tmp_path / 'data' / 'backup' / 'IEMOCAP'};"):
        find_root(tmp_path / "data")
    # nested: the outer folder holds the inner copy only, or is itself a copy holding another
    nest = tmp_path / "nest"
    inner = nest / "IEMOCAP_full_release" / "IEMOCAP_full_release"
    shutil.copytree(full.root, inner)
    assert find_root(nest) == inner and find_root(nest / "IEMOCAP_full_release") == inner
    shutil.copytree(full.root / "Session1", nest / "IEMOCAP_full_release" / "Session1")
    assert find_root(nest) == inner  # one session beside the inner copy: not a copy
    for s in range(2, 6):
        shutil.copytree(full.root / f"Session{s}", nest / "IEMOCAP_full_release" / f"Session{s}")
    assert find_root(nest) == nest / "IEMOCAP_full_release"  # a copy holding a copy: the outer one, as before
    # one copy reached twice is one copy: a convenience symlink beside its target, and the
    # __MACOSX mirror (only ._ files) a macOS zip unpacks beside the copy
    link = tmp_path / "linked"
    shutil.copytree(full.root, link / "IEMOCAP_full_release")
    (link / "IEMOCAP").symlink_to(link / "IEMOCAP_full_release", target_is_directory=True)
    assert find_root(link) == link / "IEMOCAP"   # the first found, as before the two-copy check
    mac = tmp_path / "mac"
    shutil.copytree(full.root, mac / "IEMOCAP_full_release")
    for s in range(1, 6):
        d = mac / "__MACOSX" / "IEMOCAP_full_release" / f"Session{s}"
        d.mkdir(parents=True)
        (d / "._dialog").write_bytes(b"\0\5\26\7")
    assert find_root(mac) == mac / "IEMOCAP_full_release"


@pytest.mark.parametrize("line", [
    "Ses01F_impro01_F000  [006.2901-008.2357]: Excuse me.",      # two spaces after the id
    "Ses01F_impro01_F000\t[006.2901-008.2357]: Excuse me.",      # a tab
    "Ses01F_impro01_F000 [006.2901 - 008.2357]: Excuse me.",     # spaces around the dash
    " Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.",      # a leading space
    "Ses01F_impro01_F000 [006.2901-008.2357] : Excuse me.",      # a space before the colon
])
def test_transcript_lines_with_other_whitespace_keep_their_text(tmp_path, line):
    """A re-saved transcription file's whitespace never costs an utterance its text (text and
    fusion runs would then test on fewer utterances than audio runs, with only a warning)."""
    from emofuse.corpora.iemocap import parse_transcription
    p = tmp_path / "Ses01F_impro01.txt"
    p.write_text(line + "\nSes01F_impro01_MXX0 [009.0000-010.0000]: Not labelled.\nM: Yeah.\n")
    assert parse_transcription(p) == {"Ses01F_impro01_F000": "Excuse me."}


@pytest.mark.parametrize("line", [
    "Ses01F_impro01_F000: Excuse me.",                 # no times
    "Ses01F_impro01_F000 [006.2901-]: Excuse me.",     # no end time
    "Ses01F_impro01_F000 (006.2901-008.2357): Excuse me.",
])
def test_a_damaged_transcript_line_of_an_utterance_is_refused_with_file_and_line(tmp_path, line):
    from emofuse.corpora.iemocap import parse_transcription
    p = tmp_path / "Ses01F_impro01.txt"
    p.write_text("Ses01F_impro01_M000 [002.0000-003.0000]: Hello.\n" + line + "\n")
    with pytest.raises(CorpusError, match=r"Ses01F_impro01\.txt, line 2: Ses01F_impro01_F000's transcript line does "
                                          r"not have the form 'ID \[START-END\]: TEXT'"):
        parse_transcription(p)


def test_windows_punctuation_in_a_non_utf8_line_is_read_as_cp1252(tmp_path):
    """cp1252's typographic bytes (0x80-0x9F) are punctuation, not the invisible control
    characters latin-1 reads there, which BERT's tokenizer drops without a word."""
    from emofuse.corpora.iemocap import parse_transcription
    p = tmp_path / "Ses01F_impro01.txt"
    p.write_bytes(b"Ses01F_impro01_F000 [002.0000-002.3413]: Don\x92t know\x85 caf\xe9 \x93ok\x94 \x81\n")
    assert parse_transcription(p) == {"Ses01F_impro01_F000": "Don\u2019t know\u2026 caf\u00e9 \u201cok\u201d \x81"}


def test_a_label_list_naming_a_code_twice_is_refused(fake_iemocap):
    with pytest.raises(CorpusError, match=r"names 'hap' twice \(hap:hap and hap:neu\)"):
        load_corpus("iemocap", root=fake_iemocap.root, labels="ang,hap,exc:hap,neu,sad,hap:neu")


def test_a_copy_whose_four_class_counts_are_not_the_full_releases_is_warned(tmp_path, caplog):
    """A copy missing a whole dialog (labels, transcripts, wavs) reads without any other message;
    the per-session counts of the four classes tell, in one warning; the full counts tell nothing."""
    from emofuse.corpora.iemocap import FULL_RELEASE_FOUR_CLASS
    assert FULL_RELEASE_FOUR_CLASS == tuple(sum(c.values()) for _, c in sorted(REAL_FOUR_CLASS_COUNTS.items()))
    make_fake_iemocap(tmp_path / "full", counts=REAL_FOUR_CLASS_COUNTS, seconds=0.02, alignments=False)
    with caplog.at_level("WARNING", logger="emofuse"):
        assert len(load_corpus("iemocap", root=tmp_path / "full")) == 5531
    assert not caplog.records
    make_fake_iemocap(tmp_path / "part", counts={1: {"ang": 2, "sad": 1}, 2: {"neu": 1}}, seconds=0.05,
                      alignments=False)
    with caplog.at_level("WARNING", logger="emofuse"):
        load_corpus("iemocap", root=tmp_path / "part")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'part'} reads as 4 utterances in the four classes (3/1/0/0/0 per session); the full release "
        "has 5,531 (1085/1023/1151/1031/1241): a partial or edited copy, whose numbers do not compare with "
        "published ones"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="emofuse"):
        load_corpus("iemocap", root=tmp_path / "part", labels="six")
    assert not caplog.records
