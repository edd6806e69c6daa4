import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emofuse.align.frames import segment_frames
from emofuse.align.records import AlignmentItem, is_silence
from emofuse.corpora import load_corpus
from emofuse.store import FeatureStore, copy_store

BIN = Path(sys.executable).parent


def run(cmd, *args):
    return subprocess.run([str(BIN / cmd), *map(str, args)], capture_output=True, text=True)

def _manifest_store(tmp_path, tiny_models, source: str, n: int):
    """``tmp_path/m.csv`` extracted (tiny audio model, no text) and aligned with ``--source``:
    (the store, align-segments' stdout), both commands asserted to succeed and ``n`` utterances
    aligned."""
    store = tmp_path / "s.h5"
    r = run("extract-embeddings", "--corpus", "manifest", "--manifest", tmp_path / "m.csv", "--out", store,
            "--audio-model", tiny_models["group"], "--text-model", "none", "--store-dtype", "float32")
    assert r.returncode == 0, r.stderr
    r = run("align-segments", "--store", store, "--source", source, "--granularities", "word,phone")
    assert r.returncode == 0 and f"{n} utterances aligned" in r.stdout, r.stdout + r.stderr
    return store, r.stdout



@pytest.fixture(scope="module")
def extracted(small_fake, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("align") / "s.h5"
    r = run("extract-embeddings", "--corpus", "iemocap", "--root", small_fake.root, "--out", out, "--audio-model",
            tiny_models["group"], "--text-model", "none", "--store-dtype", "float32")
    assert r.returncode == 0, r.stderr
    return out


def slow_reference(frames, items, hop, window):
    spans, _ = segment_frames(np.array([i[1] for i in items]), np.array([i[2] for i in items]), len(frames), hop, window)
    return np.stack([frames[s:e].astype(np.float64).mean(0) for s, e in spans]) if len(spans) else None, spans


def test_align_iemocap_files(extracted, small_fake, tmp_path):
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap")
    assert r.returncode == 0, r.stderr
    assert "24 utterances aligned" in r.stdout and "skipped 1: no forced alignment" in r.stdout
    assert "no phone's midpoint" not in r.stdout and "end after the audio" not in r.stdout
    truth = {u.id: u for u in small_fake.utterances}
    # the skipped utterance is named (before: only `emofuse info` or fs.skipped() told which)
    (unaligned,) = [u.id for u in small_fake.utterances if not u.has_alignment
                    and u.code in ("ang", "hap", "exc", "neu", "sad")]
    assert re.search(rf"skipped 1: no forced alignment.* \({unaligned}\)$", r.stdout, re.M), r.stdout
    with FeatureStore(store) as fs:
        info = fs.stream_info("audio")
        assert info["granularities"] == ["phone", "syllable", "word"]
        hop, window = info["frame_hop_s"], info["frame_window_s"]
        checked = 0
        for uid in fs.ids("audio", "segments/word"):
            u = truth[uid]
            frames = fs.frames("audio", uid)
            for gran, rows in (("word", u.words), ("phone", u.phones)):
                items = [(s.split("(")[0], a, b) for s, a, b in rows if not is_silence(s)]
                seg = fs.segments("audio", gran, uid)
                assert list(seg.symbols) == [i[0].split()[0] for i in items]
                ref, spans = slow_reference(frames, items, hop, window)
                assert np.array_equal(seg.spans, spans)
                assert np.allclose(seg.values, ref, atol=1e-5)
                checked += 1
            syl = fs.segments("audio", "syllable", uid)
            assert len(syl.symbols) >= len(fs.segments("audio", "word", uid).symbols)
        assert checked == 48
        sk = fs.skipped("audio")
        missing = [u.id for u in small_fake.utterances if not u.has_alignment and u.code in ("ang", "hap", "exc", "neu", "sad")]
        assert sorted(sk["id"].unique()) == missing
    again = run("align-segments", "--store", store, "--source", "iemocap")  # idempotent
    assert again.returncode == 0 and "0 utterances aligned (25 already in the store)" in again.stdout


def test_bad_alignment_file_is_reported_with_file_and_line(extracted, small_fake, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    victim = sorted(root.rglob("*.wdseg"))[0]
    lines = victim.read_text().splitlines()
    lines[2] = "\t  garbage"
    victim.write_text("\n".join(lines) + "\n")
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root, "--on-error", "fail")
    assert r.returncode == 2 and f"{victim}, line 3" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0 and f"{victim}, line 3" in r.stdout


def test_changed_alignment_files_are_pooled_again(extracted, small_fake, tmp_path):
    """Segments carry the digest of their alignment files: editing one re-pools exactly that
    utterance on the next run, and says so."""
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0 and "24 utterances aligned" in r.stdout, r.stderr
    old = tmp_path / "old.h5"
    copy_store(store, old)   # aligned before the edit below
    victim = sorted(root.rglob("*.wdseg"))[0]
    uid = victim.stem
    with FeatureStore(store) as fs:
        before = fs.segments("audio", "word", uid)
    text = victim.read_text()
    word = next(s for s in before.symbols if s not in ("<s>", "</s>", "<sil>"))
    victim.write_text(text.replace(f" {word}", " RENAMED", 1) if f" {word}" in text else text + "\n")
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "1 utterances aligned (24 already in the store)" in r.stdout
    assert "1 utterances were pooled again: their alignment inputs changed" in r.stdout
    with FeatureStore(store) as fs:
        after = fs.segments("audio", "word", uid)
        assert list(after.symbols) != list(before.symbols) or victim.read_text() != text
    again = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert "0 utterances aligned (25 already in the store)" in again.stdout
    # merging the store aligned before the edit is refused (before: its stale segments replaced the new ones)
    from emofuse.errors import StoreError
    from emofuse.store import merge_stores
    with pytest.raises(StoreError, match=rf"old\.h5 holds segments/(phone|syllable|word) of stream 'audio' of 1 utterance\(s\) \(e\.g\. "
                                         rf"'{uid}'\) computed from other inputs than this store's .*: one of the two is "
                                         "stale"):
        merge_stores(store, [old])
    with FeatureStore(store) as fs:
        assert list(fs.segments("audio", "word", uid).symbols) == list(after.symbols)
    r = run("align-segments", "--store", old, "--source", "iemocap", "--root", root)   # now both are current
    assert r.returncode == 0 and "1 utterances were pooled again" in r.stdout, r.stdout + r.stderr
    assert merge_stores(store, [old]) == {}


def test_moved_corpus_of_another_content_is_refused(extracted, tmp_path):
    from emofuse.testing import make_fake_iemocap
    other = make_fake_iemocap(tmp_path / "other", seed=99)
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--root", other.root)
    assert r.returncode == 2 and "is not the one" in r.stderr and "utterances differ" in r.stderr
    assert "audio content changed" in r.stderr


def test_sphinx_aligner_on_demo_speech(tmp_path):
    """The issue's target: >= 90 % of the words align (all of them do since the decoder uses
    alignment beams, no bestpath and a noise floor). Two speakers = 44 utterances, ~4 s."""
    import soundfile as sf

    from emofuse.align.sphinx_aligner import SphinxAligner, words_of
    from emofuse.align.sphinx_seg import read_seg
    from emofuse.align.textgrid import read_textgrid
    from emofuse.errors import EmofuseError
    aligner = SphinxAligner(write_to=str(tmp_path))
    utts = [u for u in load_corpus("demo") if u.speaker in ("Ses01F", "Ses03M")]
    n_words = aligned_words = 0
    for u in utts:
        n_words += len(words_of(u.transcript))
        try:
            tiers = aligner.align(u.id, u.audio_path, u.transcript)
        except EmofuseError:
            continue
        words = [w.symbol for w in tiers["word"] if not is_silence(w.symbol)]
        assert words == words_of(u.transcript)
        aligned_words += len(words)
        assert all(b.start >= a.start for a, b in zip(tiers["phone"], tiers["phone"][1:]))
        assert [i.symbol for i in read_seg(tmp_path / f"{u.id}.wdseg", "word") if not is_silence(i.symbol)] == words
        assert [i.symbol for i in read_textgrid(tmp_path / f"{u.id}.TextGrid")["word"] if i.symbol and not is_silence(i.symbol)] == words
        # where the audio is loud (within 30 dB of its peak, 10 ms frames) a word is aligned
        audio, sr = sf.read(u.audio_path)
        hop = sr // 100
        rms = np.sqrt(np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1))
        in_word = np.zeros(len(rms), bool)
        for w in tiers["word"]:
            if not is_silence(w.symbol):
                in_word[round(w.start * 100): round((w.start + w.duration) * 100)] = True
        assert in_word[rms > rms.max() * 10 ** (-30 / 20)].mean() > 0.9, u.id
    assert aligned_words >= 0.9 * n_words, f"{aligned_words} of {n_words} words aligned"
    with pytest.raises(EmofuseError, match="missing from the pronunciation dictionary: zzqxv"):
        aligner.align("x", utts[0].audio_path, "hello zzqxv")


def test_sphinx_aligns_the_slice_an_utterance_is_not_its_whole_file(tiny_models, tmp_path):
    """Before: a manifest utterance cut from its file (start/end) was aligned on the whole file, so
    its word times were file-relative and pooled onto frames that start at `start`: 90 ms of
    lead-in shifted every word 4-5 frames without a word (and several slices of one file were all
    skipped as 'past the audio'). Now the aligner reads the slice extraction encodes."""
    import csv

    import soundfile as sf
    x, sr = sf.read(next(u for u in load_corpus("demo")).audio_path, dtype="float32")
    x = x[: len(x) // 16 * 16]
    lead = np.zeros(int(0.09 * sr), np.float32)
    sf.write(tmp_path / "a.wav", np.concatenate([lead, x, lead]), sr, subtype="PCM_16")
    sf.write(tmp_path / "b.wav", x, sr, subtype="PCM_16")
    text = next(u for u in load_corpus("demo")).transcript
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "start", "end"])
        w.writerow(["sliced", "a.wav", text, "neu", "s1", "1", 0.09, round(0.09 + len(x) / sr, 4)])
        w.writerow(["plain", "b.wav", text, "ang", "s2", "2", "", ""])
    store, _ = _manifest_store(tmp_path, tiny_models, "sphinx", 2)
    with FeatureStore(store) as fs:
        assert np.allclose(fs.frames("audio", "sliced"), fs.frames("audio", "plain"), atol=1e-4)
        for g in ("word", "phone"):
            a, b = fs.segments("audio", g, "sliced"), fs.segments("audio", g, "plain")
            assert list(a.symbols) == list(b.symbols) and len(a.symbols) > 3
            assert np.array_equal(a.spans, b.spans)


def test_a_textgrid_of_the_whole_file_is_cut_to_the_utterance_slice(tiny_models, tmp_path):
    """Before: a TextGrid timed from its file's start (MFA run on a long recording writes one per
    file) was read as timed from the utterance's start. With 90 ms before the slice every word was
    pooled 4-5 frames late, silently (it overshot the slice by less than the 0.1 s refusal). Now a
    TextGrid whose declared end is the file's length, not the slice's, is cut to the slice; one
    timed from the slice is read as before."""
    import csv

    import soundfile as sf

    from emofuse.align.sphinx_seg import read_seg
    from emofuse.align.textgrid import write_textgrid
    u = next(u for u in load_corpus("demo"))
    fa = Path(u.audio_path).parents[2] / "ForcedAlignment" / u.id.rsplit("_", 1)[0]
    tiers = {t: read_seg(fa / f"{u.id}.{ext}", t) for t, ext in (("word", "wdseg"), ("phone", "phseg"))}
    x, sr = sf.read(u.audio_path, dtype="float32")
    x = x[: len(x) // 16 * 16]
    lead, tail = np.zeros(int(0.09 * sr), np.float32), np.zeros(sr, np.float32)
    sf.write(tmp_path / "long.wav", np.concatenate([lead, x, tail]), sr, subtype="PCM_16")
    sf.write(tmp_path / "alone.wav", x, sr, subtype="PCM_16")
    sf.write(tmp_path / "notail.wav", np.concatenate([lead, x]), sr, subtype="PCM_16")
    n, total = len(x) / sr, (len(lead) + len(x) + len(tail)) / sr
    shifted = {t: [AlignmentItem(i.symbol, i.start + 0.09, i.duration) for i in items] for t, items in tiers.items()}
    write_textgrid(tmp_path / "file.TextGrid", shifted, total)     # as MFA writes for the long file
    write_textgrid(tmp_path / "slice.TextGrid", tiers, n)          # timed from the slice's start
    write_textgrid(tmp_path / "notail.TextGrid", shifted, 0.09 + n)  # its file ends with the slice
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "start", "end", "textgrid"])
        w.writerow(["plain", "alone.wav", u.transcript, "ang", "s1", "1", "", "", "slice.TextGrid"])
        w.writerow(["file-timed", "long.wav", u.transcript, "neu", "s2", "2", 0.09, round(0.09 + n, 4), "file.TextGrid"])
        # one span of one file: one session, else a test fold would hold audio trained on
        w.writerow(["slice-timed", "long.wav", u.transcript, "sad", "s3", "2", 0.09, round(0.09 + n, 4), "slice.TextGrid"])
        # 90 ms into a file with no tail (end: the file's end): the two lengths differ by 0.09 s only
        w.writerow(["no-tail", "notail.wav", u.transcript, "hap", "s4", "4", 0.09, "", "notail.TextGrid"])
    store, out = _manifest_store(tmp_path, tiny_models, "textgrid", 4)
    assert "2 utterances are slices of a file whose TextGrid is timed from the file's start" in out, out
    with FeatureStore(store) as fs:
        for g in ("word", "phone"):
            plain = fs.segments("audio", g, "plain")
            assert len(plain.symbols) > 3
            for uid in ("file-timed", "slice-timed", "no-tail"):
                got = fs.segments("audio", g, uid)
                assert list(got.symbols) == list(plain.symbols), (uid, g)
                assert np.array_equal(got.spans, plain.spans), (uid, g)


def test_committed_demo_alignments_cover_the_corpus():
    """scripts/align_demo_corpus.py wrote these files: every demo word has its alignment."""
    from emofuse.align.sphinx_aligner import words_of
    from emofuse.align.sphinx_seg import read_seg
    total = aligned = 0
    for u in load_corpus("demo"):
        total += len(words_of(u.transcript))
        f = Path(u.audio_path).parents[2] / "ForcedAlignment" / u.id.rsplit("_", 1)[0] / f"{u.id}.wdseg"
        if f.exists():
            aligned += len([i for i in read_seg(f, "word") if not is_silence(i.symbol)])
    assert aligned >= 0.9 * total, f"{aligned} of {total} demo words aligned"


def test_frames_in_order_reads_small_units_in_order(extracted):
    """align-segments' reader: byte-sized units, prefetched; same frames, same order, any unit size."""
    import torch

    from emofuse.pipelines.align import frames_in_order, pooling_threads
    with FeatureStore(extracted) as fs:
        ids = fs.ids("audio")[::-1]  # not storage order: units must still follow the request
        for read_bytes in (1, 50_000, 1 << 30):
            got = list(frames_in_order(fs, "audio", ids, read_bytes=read_bytes))
            assert [i for i, _ in got] == ids
            for uid, frames in got:
                assert np.array_equal(frames, fs.frames("audio", uid))
    before = torch.get_num_threads()
    with pooling_threads():
        assert 1 <= torch.get_num_threads() <= before
    assert torch.get_num_threads() == before


def _scale_frames(path, factor):
    out = []
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].isdigit():
            line = f"\t{int(f[0]) * factor:5d} {int(f[1]) * factor + factor - 1:5d} {f[2]:>10} {' '.join(f[3:])}"
        out.append(line)
    path.write_text("\n".join(out) + "\n")


def test_alignment_past_the_audio_and_huge_frames_skip_that_utterance(extracted, small_fake, tmp_path):
    """A .wdseg in the wrong unit (×10) was pooled onto the last frame; a 400-digit frame number
    raised OverflowError and stopped the run despite --on-error skip. Now each skips its utterance."""
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    wd = sorted(root.rglob("*.wdseg"))
    scaled, huge = wd[0], wd[1].with_suffix(".phseg")
    _scale_frames(scaled, 10)
    lines = huge.read_text().splitlines()
    lines[2] = "\t" + "9" * 400 + " " + "9" * 401 + " -1 AH"
    huge.write_text("\n".join(lines) + "\n")
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root, "--on-error", "fail")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "22 utterances aligned" in r.stdout
    assert f"alignment {scaled} runs past the audio" in r.stdout and "wrong time unit" in r.stdout
    assert f"{huge}, line 3: frame number 9999" in r.stdout and "is too large" in r.stdout
    with FeatureStore(store) as fs:
        sk = fs.skipped("audio")
        reasons = dict(zip(sk["id"], sk["reason"]))
        dur = float(fs.utterances.loc[scaled.stem, "duration"])
        assert scaled.stem not in fs.ids("audio", "segments/word") and huge.stem not in fs.ids("audio", "segments/word")
    assert f"after {dur:.2f} s + 0.1 s" in reasons[scaled.stem]


def test_textgrid_in_milliseconds_is_refused_not_clipped():
    from emofuse.align.records import AlignmentItem
    from emofuse.align.tiers import check_within_audio
    items = {"word": [AlignmentItem("hi", 120.0, 300.0), AlignmentItem("there", 420.0, 500.0)]}
    with pytest.raises(Exception, match=r"alignment x.TextGrid runs past the audio: 2 segments end after 1.20 s "
                                        r"\+ 0.1 s \(the latest, word 'there', at 420.00..920.00 s\)"):
        check_within_audio(items, 1.2, {"textgrid": "x.TextGrid"})
    # within the tolerance (Sphinx's 10 ms rounding, a padded final silence): accepted
    check_within_audio({"word": [AlignmentItem("hi", 0.0, 1.29)]}, 1.2, "x")


def test_sphinx_source_from_python_chooses_its_aligner(extracted, tmp_path):
    """Before: the aligner was chosen in cli.py, so run_align(AlignConfig(source="sphinx")) from
    Python raised AttributeError ('NoneType' object has no attribute 'align') at the first utterance."""
    from emofuse.pipelines.align import AlignConfig, make_aligner, run_align
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    written = tmp_path / "alignments"
    cfg = AlignConfig(store=str(store), source="sphinx", granularities=("word",), write_alignments=str(written))
    assert type(make_aligner(cfg)).__name__ == "SphinxAligner"
    assert make_aligner(AlignConfig(store=str(store), source="iemocap")) is None
    summary = run_align(cfg)
    assert summary.utterances + sum(summary.skipped.values()) == 25
    assert summary.utterances > 0, summary.skipped
    with FeatureStore(store) as fs:
        aligned = fs.ids("audio", "segments/word")
    assert len(aligned) == summary.utterances
    assert sorted(p.stem for p in written.glob("*.wdseg")) == sorted(aligned)


def test_alignment_of_a_shorter_utterance_is_refused(extracted, small_fake, tmp_path):
    """Before: only an alignment running past the audio was refused; the .wdseg/.phseg of another,
    shorter utterance copied over an utterance's own were pooled onto its first frames, silently.
    Now an alignment ending more than 0.1 s before the audio skips its utterance, with the file."""
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    aligned = sorted((u for u in small_fake.utterances if u.has_alignment and u.code in ("ang", "hap", "exc", "neu", "sad")),
                     key=lambda u: u.n_samples)
    short, long = aligned[0], aligned[-1]
    assert short.words[-1][2] < long.n_samples / 16000 - 0.1
    mine = {}
    for ext in ("wdseg", "phseg"):
        [src] = root.rglob(f"{short.id}.{ext}")
        [dst] = root.rglob(f"{long.id}.{ext}")
        mine[ext] = dst
        shutil.copy(src, dst)
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root, "--on-error", "fail")
    assert r.returncode == 2 and f"{long.id}: alignment {mine['phseg']}" in r.stderr
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "23 utterances aligned" in r.stdout, r.stdout
    with FeatureStore(store) as fs:
        assert long.id not in fs.ids("audio", "segments/word") and short.id in fs.ids("audio", "segments/word")
        reason = dict(zip(fs.skipped("audio")["id"], fs.skipped("audio")["reason"]))[long.id]
    dur = long.n_samples / 16000
    assert reason.startswith(f"alignment {mine['phseg']}, {mine['wdseg']} end before the audio: its last row (")
    assert f"before the audio's end at {dur:.2f} s (more than 0.1 s); another utterance's file?" in reason


def test_segments_pooled_before_the_coverage_check_are_refused_on_the_next_run(extracted, small_fake, tmp_path,
                                                                               monkeypatch):
    """A store aligned before the check kept another, shorter utterance's segments: its input
    digests (the files' bytes) are unchanged, so nothing was pooled again and the wrong segments
    stayed. Now the files of reused segments are checked too, and such an utterance is refused."""
    from emofuse.pipelines import align as align_pipeline
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    aligned = sorted((u for u in small_fake.utterances if u.has_alignment and u.code in ("ang", "hap", "exc", "neu", "sad")),
                     key=lambda u: u.n_samples)
    short, long = aligned[0], aligned[-1]
    for ext in ("wdseg", "phseg"):
        shutil.copy(next(root.rglob(f"{short.id}.{ext}")), next(root.rglob(f"{long.id}.{ext}")))
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    cfg = align_pipeline.AlignConfig(store=str(store), source="iemocap", root=str(root))
    with monkeypatch.context() as m:   # as align-segments pooled before it checked coverage
        m.setattr(align_pipeline, "check_covers_audio", lambda *a, **k: None)
        assert align_pipeline.run_align(cfg).utterances == 24
    with FeatureStore(store) as fs:
        assert long.id in fs.ids("audio", "segments/word")
    again = align_pipeline.run_align(cfg)
    assert again.utterances == 0 and sum(again.skipped.values()) == 1
    with FeatureStore(store) as fs:
        assert long.id not in fs.ids("audio", "segments/word") and short.id in fs.ids("audio", "segments/word")
        assert "before the audio's end" in dict(zip(fs.skipped("audio")["id"], fs.skipped("audio")["reason"]))[long.id]


def test_alignments_ending_within_the_tolerance_are_pooled():
    """Sphinx's last frame ends some 16-26 ms before the wav; 0.1 s short is still this file's."""
    from emofuse.align.tiers import alignment_ends, check_covers_audio
    from emofuse.errors import EmofuseError
    tiers = {"word": [AlignmentItem("<s>", 0.0, 0.3), AlignmentItem("HI", 0.3, 0.88)],
             "phone": [AlignmentItem("SIL", 0.0, 0.3), AlignmentItem("HH", 0.3, 0.4), AlignmentItem("AY", 0.7, 0.5)]}
    paths = {"word": "u.wdseg", "phone": "u.phseg"}
    ends = alignment_ends(paths, tiers, ["word"])
    assert ends == {"u.wdseg": (1.18, "its last row (word 'HI')")}
    assert set(alignment_ends(paths, tiers, ["syllable"])) == {"u.wdseg", "u.phseg"}   # derived from both
    check_covers_audio(alignment_ends(paths, tiers, ["word", "phone"]), 1.2)
    with pytest.raises(EmofuseError, match=r"^alignment u.wdseg ends before the audio: its last row \(word 'HI'\) "
                                           r"ends at 1.18 s, 0.12 s before the audio's end at 1.30 s"):
        check_covers_audio(alignment_ends(paths, tiers, ["word", "phone"]), 1.3)


def test_a_textgrid_declaring_its_last_words_end_is_pooled_with_trailing_silence(tiny_models, tmp_path):
    """A TextGrid's declared end (xmax) is no audio length: converters from word timestamps write
    the last word's end there. One on audio with 0.5 s of trailing silence, whole or sliced, is
    pooled (a check of xmax against the audio refused such files, and their utterances then
    trained with no segments); a TextGrid of the whole file cut to a slice too."""
    import csv

    import soundfile as sf

    from emofuse.align.sphinx_seg import read_seg
    from emofuse.align.textgrid import write_textgrid
    u = next(u for u in load_corpus("demo"))
    fa = Path(u.audio_path).parents[2] / "ForcedAlignment" / u.id.rsplit("_", 1)[0]
    tiers = {t: read_seg(fa / f"{u.id}.{ext}", t) for t, ext in (("word", "wdseg"), ("phone", "phseg"))}
    x, sr = sf.read(u.audio_path, dtype="float32")
    x = x[: len(x) // 16 * 16]
    n = len(x) / sr
    lead, tail = np.zeros(int(0.09 * sr), np.float32), np.zeros(int(0.5 * sr), np.float32)
    sf.write(tmp_path / "alone.wav", x, sr, subtype="PCM_16")
    sf.write(tmp_path / "longer.wav", np.concatenate([x, tail]), sr, subtype="PCM_16")
    sf.write(tmp_path / "long.wav", np.concatenate([lead, x, tail]), sr, subtype="PCM_16")
    shifted = {t: [AlignmentItem(i.symbol, i.start + 0.09, i.duration) for i in items] for t, items in tiers.items()}
    write_textgrid(tmp_path / "own.TextGrid", tiers, n)
    write_textgrid(tmp_path / "file.TextGrid", shifted, 0.09 + n + 0.5)
    sliced_longer = round(0.09 + n + 0.4, 4)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "start", "end", "textgrid"])
        w.writerow(["own", "alone.wav", u.transcript, "ang", "s1", "1", "", "", "own.TextGrid"])
        w.writerow(["longer", "longer.wav", u.transcript, "neu", "s2", "2", "", "", "own.TextGrid"])
        w.writerow(["slice-longer", "long.wav", u.transcript, "sad", "s3", "3", 0.09, sliced_longer, "own.TextGrid"])
        w.writerow(["file-timed", "long.wav", u.transcript, "hap", "s4", "3", 0.09, sliced_longer, "file.TextGrid"])
    store, _ = _manifest_store(tmp_path, tiny_models, "textgrid", 4)
    with FeatureStore(store) as fs:
        assert sorted(fs.ids("audio", "segments/word")) == ["file-timed", "longer", "own", "slice-longer"]
        assert list(fs.segments("audio", "word", "own").symbols) == list(fs.segments("audio", "word", "longer").symbols)


def test_pooled_again_counts_only_the_utterances_pooled(extracted, small_fake, tmp_path):
    """Before: after deleting an utterance's .wdseg the summary said '0 utterances aligned' and
    '1 utterances were pooled again' (it counted every changed digest, skipped ones too)."""
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0 and "24 utterances aligned" in r.stdout, r.stderr
    wdseg = sorted(root.rglob("*.wdseg"))[0]
    wdseg.unlink()
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "0 utterances aligned (24 already in the store)" in r.stdout and "pooled again" not in r.stdout, r.stdout
    assert f"{wdseg}" in r.stdout


def test_a_conversation_textgrid_gives_each_utterance_its_own_speakers_words(tiny_models, tmp_path):
    """One TextGrid of a two-speaker recording (MFA: tiers ``A - words``, ``B - words`` …), each
    utterance a slice of the file: each is pooled from its own speaker's tiers (before: no tier
    was found, or one named tier was read for both speakers)."""
    import soundfile as sf
    from praatio import textgrid as ptg
    from praatio.utilities.constants import Interval
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "conv.wav", (rng.standard_normal(32000) * 0.1).astype(np.float32), 16000, subtype="PCM_16")
    tg = ptg.Textgrid()
    words = {"A": [(0.1, 0.4, "hello"), (0.5, 0.9, "there")], "B": [(1.1, 1.5, "fine"), (1.6, 1.9, "thanks")]}
    for spk, ws in words.items():
        tg.addTier(ptg.IntervalTier(f"{spk} - words", [Interval(s, e, w) for s, e, w in ws], 0, 2.0))
        tg.addTier(ptg.IntervalTier(f"{spk} - phones", [Interval(s, e, "AH0") for s, e, _ in ws], 0, 2.0))
    tg.save(str(tmp_path / "conv.TextGrid"), format="long_textgrid", includeBlankSpaces=True)
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session,start,end,textgrid\n"
                                    "a,conv.wav,hello there,ang,A,1,0,1,conv.TextGrid\n"
                                    "b,conv.wav,fine thanks,neu,B,1,1,2,conv.TextGrid\n")
    store, _ = _manifest_store(tmp_path, tiny_models, "textgrid", 2)
    with FeatureStore(store) as fs:
        assert list(fs.segments("audio", "word", "a").symbols) == ["hello", "there"]
        assert list(fs.segments("audio", "word", "b").symbols) == ["fine", "thanks"]


def test_align_reads_the_store_under_its_writer_lock(extracted, tmp_path, monkeypatch):
    """Before: align-segments read the store (its utterance table, frames index) before taking the
    writer's lock, so an extract-embeddings --update-corpus landing in between had segments pooled
    from the index it replaced. The store is now opened with the lock held."""
    from emofuse.errors import StoreError
    from emofuse.pipelines import align
    from emofuse.store.lock import WriterLock
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    held = []

    class Probe(align.FeatureStore):
        def __init__(self, path, *a, **k):
            try:
                WriterLock(str(path)).release()
                held.append(False)
            except StoreError:
                held.append(True)
            super().__init__(path, *a, **k)
    monkeypatch.setattr(align, "FeatureStore", Probe)
    align.run_align(align.AlignConfig(store=str(store), source="iemocap", granularities=("word",)))
    assert held and all(held)


def test_align_on_a_mistyped_store_path_creates_nothing(tmp_path):
    """Taking the writer's lock first (above) must not create a mistyped path's folders for its lock."""
    from emofuse.errors import StoreError
    from emofuse.pipelines.align import AlignConfig, run_align
    with pytest.raises(StoreError, match=r"feature store .*missing\.h5 does not exist"):
        run_align(AlignConfig(store=str(tmp_path / "a" / "b" / "missing.h5"), source="iemocap"))
    assert not (tmp_path / "a").exists()


def test_align_gives_the_aligner_each_utterances_channel(tiny_models, tmp_path):
    """align-segments --source sphinx passes a channel-naming utterance's channel to the aligner
    (only then: an aligner of Python callers may not take it), and the channel is in its digest."""
    import soundfile as sf

    from emofuse.align.records import AlignmentItem
    from emofuse.pipelines.align import AlignConfig, run_align
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "st.wav", (rng.standard_normal((16000, 2)) * 3000).astype(np.int16), 16000)
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session,channel\n"
                                    "l,st.wav,hello there,ang,s1,1,0\nr,st.wav,hello there,neu,s2,2,1\n")
    store = tmp_path / "s.h5"
    r = run("extract-embeddings", "--corpus", "manifest", "--manifest", tmp_path / "m.csv", "--out", store,
            "--audio-model", tiny_models["group"], "--text-model", "none", "--store-dtype", "float32")
    assert r.returncode == 0, r.stderr
    calls = {}

    class Aligner:
        def align(self, uid, path, transcript, *span, **kw):
            calls[uid] = kw.get("channel")
            return {"word": [AlignmentItem("hello", 0.1, 0.3), AlignmentItem("there", 0.5, 0.3)],
                    "phone": [AlignmentItem("HH", 0.1, 0.3), AlignmentItem("DH", 0.5, 0.3)]}
    run_align(AlignConfig(store=str(store), source="sphinx", granularities=("word",)), aligner=Aligner())
    assert calls == {"l": 0, "r": 1}


def test_a_word_no_phone_falls_in_is_said_not_dropped_silently(extracted, small_fake, tmp_path):
    """Before: a word whose phones are missing from the .phseg (every row under it silence, a
    damaged or mismatched file) had no syllable segment, and the summary said nothing (found by
    a pooling audit). Now the syllables still leave it out (there is nothing to syllabify), and
    the summary counts such words and names the first."""
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    victim = sorted(root.rglob("*.phseg"))[0]
    words = [r.split() for r in victim.with_suffix(".wdseg").read_text().splitlines()[1:] if r.strip()]
    word = next(w for w in words if not is_silence(w[-1].split("(")[0]))
    first, last = int(word[0]), int(word[1])
    lines = victim.read_text().splitlines()
    for k, row in enumerate(lines[1:], 1):
        f = row.split()
        if len(f) >= 4 and first <= (int(f[0]) + int(f[1])) / 2 <= last:
            lines[k] = f"\t{int(f[0]):5d} {int(f[1]):5d}    -1234 SIL"
    victim.write_text("\n".join(lines) + "\n")
    store = tmp_path / "s.h5"
    copy_store(extracted, store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", root)
    assert r.returncode == 0, r.stderr
    name = word[-1].split("(")[0]
    assert f"1 word with no phone's midpoint inside ({victim.stem} '{name}'): the syllables built from the " \
           "phones have nothing of it" in r.stdout, r.stdout
    with FeatureStore(store) as fs:   # the word is a segment of its own tier
        assert name in list(fs.segments("audio", "word", victim.stem).symbols)
