"""The store keeps each utterance's alignment files (relative to the corpus's folder), so
align-segments never reads the corpus again: a moved corpus is ``--root NEW``; stores written
before this keep working by reading the corpus as they did."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emofuse.corpora
import emofuse.corpora.iemocap
import emofuse.pipelines.align as pa
from emofuse.errors import EmofuseError
from emofuse.pipelines.align import AlignConfig, run_align
from emofuse.pipelines.extract import ExtractConfig, run_extract
from emofuse.store import FeatureStore, copy_store
from emofuse.store.index import load_index, save_index

BIN = Path(sys.executable).parent


def run(cmd, *args):
    return subprocess.run([str(BIN / cmd), *map(str, args)], capture_output=True, text=True)


def extract(root, out, model):
    run_extract(ExtractConfig(corpus="iemocap", root=str(root), out=str(out), audio_model=model, text_model="none",
                              store_dtype="float32", device="cpu"))


@pytest.fixture(scope="module")
def moved(small_fake, tiny_models, tmp_path_factory):
    """A store extracted from a copy of the corpus that was then moved elsewhere."""
    base = tmp_path_factory.mktemp("moved")
    before = base / "before" / "corpus"
    shutil.copytree(small_fake.root, before)
    store = base / "s.h5"
    extract(before, store, tiny_models["group"])
    after = base / "after" / "corpus"
    after.parent.mkdir()
    shutil.move(str(before), str(after))
    return {"store": store, "before": before, "after": after, "model": tiny_models["group"]}


def store_copy(moved, tmp_path):
    store = tmp_path / "s.h5"
    copy_store(moved["store"], store)
    return store


def no_corpus_reading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the corpus was read")
    for module, name in ((pa, "load_corpus"), (emofuse.corpora, "load_corpus"), (emofuse.corpora, "load_iemocap"),
                         (emofuse.corpora.iemocap, "load_iemocap")):
        monkeypatch.setattr(module, name, refuse)


def as_old_store(path):
    """What a store written before it kept alignment paths looks like: no column, no base."""
    idx = load_index(str(path))
    idx.table = idx.table.drop(columns=["alignments"])
    idx.meta.pop("base")
    save_index(idx, str(path), "0.1.0")


def segments(path):
    with FeatureStore(path) as fs:
        return {(g, i): fs.segments("audio", g, i) for g in ("phone", "syllable", "word")
                for i in fs.ids("audio", f"segments/{g}")}


def test_the_store_keeps_alignment_paths_relative_to_the_corpus_folder(moved, small_fake):
    idx = load_index(str(moved["store"]))
    assert idx.meta["base"] == str(moved["before"])
    table = idx.table.set_index("id")
    for u in small_fake.utterances:
        if u.id not in table.index:
            continue
        kept = json.loads(table.at[u.id, "alignments"])
        if u.has_alignment:
            assert {"word", "phone"} <= set(kept) and not any(os.path.isabs(p) for p in kept.values())
            assert kept["word"].endswith(f"{u.id}.wdseg") and "\\" not in kept["word"]
        else:
            assert kept == {}


def test_align_reads_the_store_not_the_corpus(moved, tmp_path, monkeypatch):
    """Before: align-segments loaded and fingerprinted the whole corpus (every audio file
    hashed) to learn where the alignment files are."""
    store = store_copy(moved, tmp_path)
    old = tmp_path / "old.h5"
    copy_store(moved["store"], old)
    as_old_store(old)
    reference = run_align(AlignConfig(store=str(old), source="iemocap", root=str(moved["after"])))   # reads the corpus
    with monkeypatch.context() as m:
        no_corpus_reading(m)
        with pytest.raises(AssertionError, match="the corpus was read"):   # the old store needs the corpus
            run_align(AlignConfig(store=str(old), source="iemocap", root=str(moved["after"])))
        summary = run_align(AlignConfig(store=str(store), source="iemocap", root=str(moved["after"])))
    assert summary.utterances == reference.utterances == 24 and summary.segments == reference.segments
    got, want = segments(store), segments(old)
    assert got.keys() == want.keys() and len(got) == 72
    for k in want:
        assert list(got[k].symbols) == list(want[k].symbols)
        assert np.array_equal(got[k].spans, want[k].spans) and np.array_equal(got[k].values, want[k].values)


def test_a_moved_corpus_is_its_new_root(moved, tmp_path):
    store = store_copy(moved, tmp_path)
    r = run("align-segments", "--store", store, "--source", "iemocap")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"the corpus at {moved['before']} is not the one" in r.stderr and "25 audio file missing" in r.stderr
    assert "pass --root/--manifest of that copy" in r.stderr
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", moved["after"])
    assert r.returncode == 0, r.stderr
    assert "24 utterances aligned" in r.stdout and "skipped 1: no forced alignment" in r.stdout
    # an edited alignment file at the new root: exactly that utterance again
    victim = sorted(Path(moved["after"]).rglob("*.phseg"))[0]
    text = victim.read_text()
    try:
        victim.write_text(text + "\n")
        r = run("align-segments", "--store", store, "--source", "iemocap", "--root", moved["after"])
        assert r.returncode == 0, r.stderr
        assert "1 utterances aligned (24 already in the store)" in r.stdout
        assert "1 utterances were pooled again: their alignment inputs changed" in r.stdout
    finally:
        victim.write_text(text)


def test_sphinx_gets_the_audio_at_the_new_root(moved, tmp_path, monkeypatch):
    """The aligner needs audio and transcripts: the store's, its audio path moved with the corpus."""
    from emofuse.align.records import AlignmentItem
    store = store_copy(moved, tmp_path)
    seen = {}

    class Aligner:
        def align(self, uid, audio_path, transcript):
            seen[uid] = (audio_path, transcript)
            return {"word": [AlignmentItem("w", 0.1, 0.3)], "phone": [AlignmentItem("W", 0.1, 0.3)]}
    no_corpus_reading(monkeypatch)
    summary = run_align(AlignConfig(store=str(store), source="sphinx", granularities=("word",),
                                    root=str(moved["after"])), aligner=Aligner())
    assert summary.utterances == 25 == len(seen)
    with FeatureStore(store) as fs:
        table = fs.utterances
    for uid, (audio, transcript) in seen.items():
        assert Path(audio).is_relative_to(moved["after"]) and os.path.isfile(audio)
        assert transcript == table.at[uid, "transcript"]


def test_an_old_store_aligns_and_learns_the_paths_at_its_next_extraction(moved, tmp_path, monkeypatch, caplog):
    store = store_copy(moved, tmp_path)
    as_old_store(store)
    r = run("align-segments", "--store", store, "--source", "iemocap", "--root", moved["after"])
    assert r.returncode == 0, r.stderr
    assert "24 utterances aligned" in r.stdout
    assert "predates stores that keep their alignment paths: the corpus was read for them" in r.stdout
    extract(moved["after"], store, moved["model"])   # nothing to compute; the store takes the paths
    idx = load_index(str(store))
    assert "alignments" in idx.table.columns and idx.meta["base"] == str(moved["after"])
    no_corpus_reading(monkeypatch)
    caplog.set_level(logging.INFO, "emofuse")
    summary = run_align(AlignConfig(store=str(store), source="iemocap"))
    assert summary.utterances == 0 and summary.reused == 25
    assert not [r for r in caplog.records if "predates" in r.getMessage()]


def test_a_store_of_another_corpus_copy_is_refused_before_pooling(moved, tmp_path):
    """Alignment files are never pooled onto frames of other audio: the audio of the utterances
    about to be pooled must be the audio the store was extracted from."""
    other = tmp_path / "other"
    shutil.copytree(moved["after"], other)
    wav = sorted(other.rglob("*.wav"))[3]
    wav.write_bytes(wav.read_bytes()[:-2] + b"\x01\x02")
    store = store_copy(moved, tmp_path)
    with pytest.raises(EmofuseError, match=rf"1 utterances differ \(1 audio content changed; e\.g\. {wav.stem}: "):
        run_align(AlignConfig(store=str(store), source="iemocap", root=str(other)))
    with FeatureStore(store) as fs:
        assert not fs.has("audio", "segments/word")


def test_a_relative_root_keeps_absolute_audio_paths(moved, tmp_path, monkeypatch):
    """Before: extraction with a relative --root kept each audio path relative to the working
    directory, align-segments resolved it under the corpus's folder (the path doubled) and refused
    every utterance as 'audio file missing', even from the same working directory."""
    corpus = tmp_path / "data" / "corpus"
    shutil.copytree(moved["after"], corpus)
    monkeypatch.chdir(tmp_path)
    extract(Path("data/corpus"), "s.h5", moved["model"])
    with FeatureStore("s.h5") as fs:
        paths = list(fs.utterances["audio_path"])
    assert all(os.path.isabs(p) and Path(p).is_relative_to(corpus) and os.path.isfile(p) for p in paths)
    monkeypatch.chdir(tmp_path / "data")   # any working directory
    summary = run_align(AlignConfig(store=str(tmp_path / "s.h5"), source="iemocap"))
    assert summary.utterances == 24 and not any("audio" in r for r in summary.skipped)


def test_a_store_holding_working_directory_relative_audio_paths_still_aligns(moved, tmp_path, monkeypatch):
    """Stores written before the fix keep ``data/corpus/Session1/…``: its part naming the
    corpus's folder is recognised, wherever align-segments runs and wherever the corpus moved."""
    from emofuse.corpora.table import resolve_audio_path
    store = store_copy(moved, tmp_path)
    before = Path(moved["before"])
    idx = load_index(str(store))
    idx.table["audio_path"] = [os.path.join("..", before.parent.name, before.name, os.path.relpath(p, before))
                               for p in idx.table["audio_path"]]
    save_index(idx, str(store), "0.1.0")
    assert resolve_audio_path("../before/corpus/Session1/a.wav", "/new/corpus", str(before)) == \
        os.path.join("/new/corpus", "Session1", "a.wav")
    assert resolve_audio_path("Session1/a.wav", "/new/corpus", str(before)) == os.path.join("/new/corpus", "Session1", "a.wav")
    monkeypatch.chdir(tmp_path)
    no_corpus_reading(monkeypatch)
    summary = run_align(AlignConfig(store=str(store), source="iemocap", root=str(moved["after"])))
    assert summary.utterances == 24 and not any("audio" in r for r in summary.skipped)


def write_alignment(wav: Path, words):
    """``.wdseg``/``.phseg`` for ``wav`` where IEMOCAP keeps them: ``words`` tiling its 10 ms frames."""
    import soundfile as sf
    n = sf.info(str(wav)).frames // 160
    fa = wav.parent.parent.parent / "ForcedAlignment" / wav.parent.name / wav.stem
    cuts = [round(i * n / len(words)) for i in range(len(words) + 1)]
    for ext, head in ((".wdseg", "Word"), (".phseg", "Phone")):
        rows = "".join(f"\t{cuts[i]:5d} {cuts[i + 1] - 1:5d} {-1000:10d} {w}\n" for i, w in enumerate(words))
        Path(str(fa) + ext).write_text(f"\t SFrm  EFrm    SegAScr {head}\n" + rows + " Total score: -5000\n")


def test_alignment_files_added_after_extraction_are_used(moved, small_fake, tmp_path, monkeypatch, caplog):
    """Before: align-segments took alignment paths from the store's table only, so a .wdseg/.phseg
    added for an utterance that had none was never used (it stayed skipped, or kept pocketsphinx
    segments). Utterances the store records none for are looked up by the reader's own rule (one
    listing of their dialog's ForcedAlignment folder), the corpus is not read."""
    corpus = tmp_path / "corpus"
    shutil.copytree(moved["after"], corpus)
    store = store_copy(moved, tmp_path)
    cfg = AlignConfig(store=str(store), source="iemocap", granularities=("word",), root=str(corpus))
    first = run_align(cfg)
    assert first.utterances == 24 and first.skipped == {"no forced alignment for this utterance (use --source sphinx "
                                                        "to align it)": 1}
    victim = next(u for u in small_fake.utterances if not u.has_alignment)
    wav = next(corpus.rglob(f"{victim.id}.wav"))
    write_alignment(wav, ["<s>", "GREAT", "NEWS", "TODAY", "</s>"])
    no_corpus_reading(monkeypatch)
    caplog.set_level(logging.INFO, "emofuse")
    again = run_align(cfg)
    assert again.utterances == 1 and again.reused == 24 and not again.skipped
    assert any("1 utterances have alignment files added to the corpus since extraction" in r.getMessage()
               for r in caplog.records)
    with FeatureStore(store) as fs:
        assert list(fs.segments("audio", "word", victim.id).symbols) == ["GREAT", "NEWS", "TODAY"]
    assert run_align(cfg).utterances == 0   # pooled once: the next run has nothing to do


def test_a_textgrid_added_to_a_manifest_after_extraction_is_used(tiny_models, tmp_path, caplog):
    """A manifest's utterance that had no TextGrid gets one (a new ``textgrid`` cell): the
    manifest file is read again (not its audio) and the TextGrid pooled."""
    import soundfile as sf
    from emofuse.align.records import AlignmentItem
    from emofuse.align.textgrid import write_textgrid
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / f"u{i}.wav", (rng.standard_normal(19200) * 0.1).astype(np.float32), 16000)
    rows = ["id,audio,text,label,speaker,session"] + [f"u{i},u{i}.wav,hello there,neu,s{i},{i % 2 + 1}" for i in range(3)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.h5"
    run_extract(ExtractConfig(corpus="manifest", manifest=str(manifest), out=str(store), audio_model=tiny_models["group"],
                              text_model="none", store_dtype="float32", device="cpu"))
    cfg = AlignConfig(store=str(store), source="textgrid", granularities=("word",))
    assert run_align(cfg).skipped == {"no TextGrid for this utterance (manifest column textgrid)": 3}
    write_textgrid(tmp_path / "u1.TextGrid", {"word": [AlignmentItem("hello", 0.1, 0.4), AlignmentItem("there", 0.5, 0.5)],
                                              "phone": [AlignmentItem("HH", 0.1, 0.4), AlignmentItem("DH", 0.5, 0.5)]}, 1.2)
    manifest.write_text("\n".join([rows[0] + ",textgrid"] + [r + (",u1.TextGrid" if r.startswith("u1,") else ",")
                                                              for r in rows[1:]]) + "\n")
    caplog.set_level(logging.INFO, "emofuse")
    again = run_align(cfg)
    assert again.utterances == 1 and again.reused == 2 and not again.skipped
    assert any("1 utterances have alignment files added" in r.getMessage() for r in caplog.records)
    with FeatureStore(store) as fs:
        assert list(fs.segments("audio", "word", "u1").symbols) == ["hello", "there"]


@pytest.fixture(scope="module")
def nested(tiny_models, tmp_path_factory):
    """A copy nested as ``OUTER/IEMOCAP_full_release/IEMOCAP_full_release/Session1 …``, extracted
    with ``--root OUTER``; and the same store as written before stores kept paths relative to the
    sessions folder (relative to OUTER, as given)."""
    from emofuse.testing import make_fake_iemocap
    base = tmp_path_factory.mktemp("nested")
    fake = make_fake_iemocap(base / "outer", counts={s: {"ang": 1, "neu": 1} for s in range(1, 6)}, seconds=1.0,
                             nested=True, seed=4)
    new, old = base / "new.h5", base / "old.h5"
    extract(fake.root, new, tiny_models["group"])
    with pytest.MonkeyPatch.context() as m:   # corpus_base as it was: the --root given
        m.setattr("emofuse.pipelines.extract.job.corpus_base", lambda kind, **o: os.path.abspath(o["root"]))
        extract(fake.root, old, tiny_models["group"])
    return {"fake": fake, "new": new, "old": old, "model": tiny_models["group"]}


def test_a_nested_copy_is_kept_relative_to_its_sessions_folder(nested):
    """Before: a store extracted with --root above the sessions folder kept its paths relative to
    that folder. The fingerprint holds no path: the two stores are of one corpus."""
    fake = nested["fake"]
    new, old = load_index(str(nested["new"])), load_index(str(nested["old"]))
    assert new.meta["base"] == str(fake.base) and old.meta["base"] == str(fake.root)
    assert new.meta["root"] == old.meta["root"] == str(fake.root)
    cells = [json.loads(c) for c in new.table["alignments"] if c != "{}"]
    assert cells and all(p.startswith("Session") for c in cells for p in c.values())
    assert new.fingerprint == old.fingerprint


@pytest.mark.parametrize("which", ["new", "old"])
def test_a_nested_copy_aligns_given_its_outer_or_inner_folder(nested, which, tmp_path):
    """Before: align-segments --root <the folder holding Session1 …> (as its help asks) on a store
    extracted with --root above it resolved every path doubled and refused the corpus: '… is not
    the one … was built from: 10 audio file missing'. Now the sessions folder is found under any
    --root, here, moved, or moved and given by its inner folder."""
    fake = nested["fake"]
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(fake.root, moved)
    inner = Path(*moved.parts, *fake.base.relative_to(fake.root).parts)
    for root in (fake.base, fake.root, moved, inner):
        store = tmp_path / f"{root.name}-{len(root.parts)}.h5"
        copy_store(nested[which], store)
        summary = run_align(AlignConfig(store=str(store), source="iemocap", granularities=("word",), root=str(root)))
        assert summary.utterances == 9 and list(summary.skipped.values()) == [1], (root, summary.skipped)
        assert "no forced alignment" in next(iter(summary.skipped))
    from emofuse.pipelines.finetune import audio_paths_now   # finetune finds the audio alike
    with FeatureStore(nested[which]) as fs:
        utts, meta = fs.utterances, fs.corpus_meta
    for root in (inner, moved):
        paths = audio_paths_now(utts, meta, str(root))["audio_path"]
        assert all(Path(p).is_relative_to(inner) and os.path.isfile(p) for p in paths)


def test_an_old_store_of_a_copy_whose_nesting_changed_is_refused_in_one_sentence(nested, tmp_path):
    """The sessions folder moved out of its IEMOCAP_full_release/IEMOCAP_full_release/: a new store
    resolves its paths under it; one written before names the folders its paths start with."""
    flat = tmp_path / "flat"
    shutil.copytree(nested["fake"].base, flat)
    store = tmp_path / "n.h5"
    copy_store(nested["new"], store)
    assert run_align(AlignConfig(store=str(store), source="iemocap", granularities=("word",), root=str(flat))).utterances == 9
    copy_store(nested["old"], tmp_path / "o.h5")
    with pytest.raises(EmofuseError, match=r"^the store keeps its IEMOCAP paths under IEMOCAP_full_release/"
                                           r"IEMOCAP_full_release/ of the folder it was read from .*, but --root "
                                           rf"{flat} holds Session1 … Session5 in {flat}, not under folders of those names; "
                                           r"run extract-embeddings on the store again with --root"):
        run_align(AlignConfig(store=str(tmp_path / "o.h5"), source="iemocap", root=str(flat)))
    extract(flat, tmp_path / "o.h5", nested["model"])   # as the sentence says: the store takes the new paths
    assert load_index(str(tmp_path / "o.h5")).meta["base"] == str(flat)
    assert run_align(AlignConfig(store=str(tmp_path / "o.h5"), source="iemocap", granularities=("word",),
                                 root=str(flat))).utterances == 9
