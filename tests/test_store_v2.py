"""Store schema v2: bytes written per stage, v1 stores, compaction, zero-copy merges, staleness."""

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from emofuse.errors import StoreError
from emofuse.store.h5io import reseal
from emofuse.store.reader import UncheckedStoreWarning
from emofuse.store import (FeatureStore, StoreWriter, compact_store, corpus_fingerprint, merge_stores, store_bytes,
                           upgrade_store)

IO_CHILD = str(Path(__file__).with_name("store_io_child.py"))


def make_table(n, prefix="u"):
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    return pd.DataFrame({"id": ids, "label": [("ang", "hap", "neu", "sad")[i % 4] for i in range(n)], "session": "1", "speaker": "s",
                         "gender": "F", "transcript": [f"text {i}" for i in range(n)],
                         "audio_path": [f"/x/{i}.wav" for i in ids], "start": np.nan, "end": np.nan,
                         "duration": 1.0, "audio_bytes": 100, "audio_digest": [f"d{i}" for i in range(n)]})


def frames_of(uid, layers=3, dim=4):
    k = int(uid[-4:])
    return np.random.default_rng(k).standard_normal((5 + k % 7, layers, dim)).astype(np.float16)


def build(path, table, ids=None, stream="audio", per_commit=7):
    ids = list(table["id"]) if ids is None else ids
    with StoreWriter(path, table) as w:
        w.add_stream(stream, {"fingerprint": "enc", "encoder_id": "test"})
        for k in range(0, len(ids), per_commit):
            w.commit(stream, {"frames": {i: {"data": frames_of(i)} for i in ids[k:k + per_commit]}})
        w.finalize()


def assert_frames(path, ids, stream="audio"):
    with FeatureStore(path) as fs:
        assert sorted(fs.ids(stream)) == sorted(ids)
        for i in ids:
            assert np.array_equal(fs.frames(stream, i), frames_of(i))
        r = fs.load(stream, ids=ids[::-1], layers=[2, 0])
        for k, i in enumerate(ids[::-1]):
            assert np.array_equal(r[k], frames_of(i)[:, [2, 0]])


def test_a_stage_writes_what_it_adds_on_a_1gb_store(tmp_path):
    """Adding a stream or segments to a 1 GB store writes what they hold plus the index
    (v1 rewrote the whole store: 1.09 GB for a 24-byte stream)."""
    n = 1000
    table = make_table(n)
    path = tmp_path / "big.h5"
    rows = (1 << 30) // (13 * 768 * 2) // n + 1
    block = np.zeros((rows, 13, 768), np.float16)
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "x"})
        for k in range(0, n, 100):
            w.commit("audio", {"frames": {i: {"data": block} for i in table["id"][k:k + 100]}})
        w.finalize()
    assert store_bytes(str(path)) >= 1 << 30
    index = os.path.getsize(path)
    for stage in ("tiny", "segments"):
        r = subprocess.run([sys.executable, IO_CHILD, str(path), stage], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        written = max(got["wchar"], got["write_bytes"])
        # what the stage adds (its parts and the index's growth), plus rewriting the index once
        assert written <= 1.05 * got["added"] + 2 * index + (64 << 10), (stage, got, index)
        if stage == "segments":
            assert got["added"] >= 16 << 20 and written <= 1.05 * got["added"] + 2 * index + (64 << 10)


def write_v1(path, table, ids):
    """A schema v1 store as emofuse 0.x wrote it: one file, entry tables with global offsets."""
    t1 = table.drop(columns=["audio_digest"])
    with h5py.File(path, "w") as f:
        f.attrs.update({"type": "emofuse.store", "schema_version": 1, "emofuse_version": "0.old",
                        "corpus_fingerprint": corpus_fingerprint(t1), "corpus_kind": "synthetic"})
        g = f.create_group("utterances")
        for c in t1.columns:
            v = t1[c].to_numpy()
            if v.dtype.kind in "OUS":
                g.create_dataset(c, data=np.array([str(x) for x in v], dtype=object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(c, data=v)
        g.attrs["columns"] = json.dumps(list(t1.columns))
        sg = f.create_group("streams/audio")
        sg.attrs["info"] = json.dumps({"fingerprint": "enc", "encoder_id": "test",
                                       "corpus_fingerprint": corpus_fingerprint(t1)})
        fr = sg.create_group("frames")
        data = [frames_of(i) for i in ids]
        lens = [len(d) for d in data]
        fr.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        fr.create_dataset("offset", data=np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64))
        fr.create_dataset("length", data=np.array(lens, np.int64))
        fr.create_dataset("data", data=np.concatenate(data), chunks=(16, 1, 4), maxshape=(None, 3, 4))
        sk = sg.create_group("skipped")
        for name, vals in (("ids", [ids[0]]), ("kind", ["tokens"]), ("reason", ["empty transcript"])):
            sk.create_dataset(name, data=np.array(vals, dtype=object), dtype=h5py.string_dtype())


def test_v1_store_is_read_refused_for_writing_and_upgraded_without_copying(tmp_path):
    table = make_table(24)
    ids = list(table["id"])
    path = tmp_path / "old.h5"
    write_v1(path, table, ids[:20])
    with pytest.warns(UncheckedStoreWarning, match=r"written before checksums .* read unverified; `emofuse store compact"):
        assert_frames(path, ids[:20])  # read as it is, unverified, and the reader says so
    with FeatureStore(path) as fs:
        assert fs.schema_version == 1 and list(fs.skipped("audio")["reason"]) == ["empty transcript"]
    with pytest.raises(StoreError, match=r"schema v1 store; run `emofuse store upgrade .*old.h5` once"):
        StoreWriter(path, table)
    inode = os.stat(path).st_ino
    r = subprocess.run([sys.executable, "-m", "emofuse", "store", "upgrade", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "upgraded to schema v2" in r.stdout, r.stderr
    with FeatureStore(path) as fs:
        assert fs.schema_version == 2
        assert [os.stat(p).st_ino for p in fs.part_files] == [inode]  # the v1 file itself, linked: no copy
    with pytest.warns(UncheckedStoreWarning):
        assert_frames(path, ids[:20])
    assert "already a schema v2 store" in upgrade_store(path)
    # the upgraded store takes new work; the corpus now brings audio digests the v1 table lacked
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test"})
        assert w.done_ids("audio", "frames") == set(ids[:20])
        w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in ids[20:]}})
        w.finalize()
    with pytest.warns(UncheckedStoreWarning):
        assert_frames(path, ids)
    with FeatureStore(path) as fs:
        assert list(fs.utterances["audio_digest"]) == list(table["audio_digest"])
    compact_store(path)  # rewrites the rows with checksums: read verified from now on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_frames(path, ids)
        with FeatureStore(path) as fs:
            fs.load("audio")
            assert fs.unchecked_parts == set()


def test_compact_rewrites_into_one_part_and_drops_unused_rows(tmp_path):
    table = make_table(30)
    ids = list(table["id"])
    path = tmp_path / "s.h5"
    build(path, table, ids[:20], per_commit=3)
    with StoreWriter(path, table) as w:  # a second stage: tokens in another stream, segments with inputs
        w.add_stream("text", {"fingerprint": "bert"})
        tok = lambda i: {"data": frames_of(i), "strings": np.array(["a"] * len(frames_of(i)), dtype=object),  # noqa: E731
                         "word_ids": np.zeros(len(frames_of(i)), np.int32), "offsets": np.zeros((len(frames_of(i)), 2), np.int32),
                         "special": np.zeros(len(frames_of(i)), bool)}
        w.commit("text", {"tokens": {i: tok(i) for i in ids[:10]}}, skipped=[(ids[11], "tokens", "empty")])
        w.finalize()
    with FeatureStore(path) as fs:
        assert len(set(fs.part_files)) == 8
    msg = compact_store(path)
    assert "compacted" in msg
    with FeatureStore(path) as fs:
        assert len(set(fs.part_files)) == 1 and fs.pending_parts == []
        assert fs.ids("text", "tokens") == sorted(ids[:10])
        assert list(fs.tokens("text", ids[3]).strings) == ["a"] * len(frames_of(ids[3]))
        assert list(fs.skipped("text")["id"]) == [ids[11]]
    assert len(os.listdir(str(path) + ".d")) == 1
    assert_frames(path, ids[:20])


def test_shards_merge_by_links_not_copies(tmp_path):
    table = make_table(20)
    ids = list(table["id"])
    shards = []
    for k in range(2):
        p = tmp_path / f"shard{k}.h5"
        build(p, table, ids[k::2], per_commit=4)
        shards.append(p)
    inodes = set()
    for p in shards:
        with FeatureStore(p) as fs:
            inodes |= {os.stat(q).st_ino for q in fs.part_files}
    out = tmp_path / "all.h5"
    assert merge_stores(out, shards) == {"streams/audio/frames": 20}
    with FeatureStore(out) as fs:
        assert {os.stat(q).st_ino for q in fs.part_files} == inodes
        assert fs.ids("audio") == sorted(ids)  # merged entries in id order
    for p in shards:  # the shards can go: the merged store keeps its links
        from emofuse.store import remove_store
        remove_store(str(p))
    assert_frames(out, ids)


def test_changed_corpus_is_refused_with_the_list_or_updated_on_request(tmp_path):
    table = make_table(12)
    ids = list(table["id"])
    path = tmp_path / "s.h5"
    build(path, table)
    new = table.copy()
    new.loc[2, "audio_digest"] = "re-recorded"          # same name and size, other content
    new.loc[5, "transcript"] = "another text"
    new.loc[7, "label"] = "sad" if new.loc[7, "label"] != "sad" else "ang"
    new = new[new["id"] != ids[9]]
    with pytest.raises(StoreError) as e:
        StoreWriter(path, new)
    text = str(e.value)
    for what in (f"{ids[2]}: audio content changed", f"{ids[5]}: transcript changed",
                 f"{ids[7]}: label, session or speaker changed", f"{ids[9]}: removed from the corpus", "4 utterances"):
        assert what in text
    assert "--update-corpus" in text
    with StoreWriter(path, new, update_corpus=True) as w:
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test"})
        assert w.dropped == {ids[2], ids[5], ids[9]}
        todo = set(new["id"]) - w.done_ids("audio", "frames")
        assert todo == {ids[2], ids[5]}  # exactly the utterances whose inputs changed
        w.commit("audio", {"frames": {i: {"data": frames_of(i) + 1} for i in sorted(todo)}})
        w.finalize()
    with FeatureStore(path) as fs:
        assert fs.corpus_fingerprint == corpus_fingerprint(new)
        assert sorted(fs.ids("audio")) == sorted(new["id"])
        assert np.array_equal(fs.frames("audio", ids[2]), frames_of(ids[2]) + 1)
        assert np.array_equal(fs.frames("audio", ids[7]), frames_of(ids[7]))
        assert fs.utterances.loc[ids[7], "label"] == new.loc[7, "label"]
    StoreWriter(path, new).close()  # the store now describes the new corpus


def test_changed_inputs_replace_their_entries(tmp_path):
    table = make_table(8)
    ids = list(table["id"])
    path = tmp_path / "s.h5"
    build(path, table)
    seg = lambda v: {"data": np.full((2, 3, 4), v, np.float16), "symbols": np.array(["a", "b"], dtype=object),  # noqa: E731
                     "spans": np.zeros((2, 2), np.int32)}
    with StoreWriter(path) as w:
        w.add_stream("audio", w.stream_infos["audio"])
        w.commit("audio", {"segments/word": {i: seg(1) for i in ids[:6]}}, skipped=[(i, "segments/word", "no alignment")
                                                                                  for i in ids[6:]],
                 inputs={i: "a" for i in ids})
        w.finalize()
    now = {i: "a" for i in ids}
    now[ids[1]] = "b"        # its alignment file was edited
    now[ids[6]] = "c"        # an alignment appeared
    with StoreWriter(path) as w:
        w.add_stream("audio", w.stream_infos["audio"])
        assert set(ids) - w.done_ids("audio", "segments/word", now) == {ids[1], ids[6]}
        w.commit("audio", {"segments/word": {ids[1]: seg(2), ids[6]: seg(3)}}, inputs=now)
        w.finalize()
    with FeatureStore(path) as fs:
        assert fs.segments("audio", "word", ids[1]).values[0, 0, 0] == 2
        assert fs.segments("audio", "word", ids[6]).values[0, 0, 0] == 3
        assert fs.segments("audio", "word", ids[0]).values[0, 0, 0] == 1
        assert list(fs.skipped("audio")["id"]) == [ids[7]]
        assert fs.inputs("audio", "segments/word")[ids[1]] == "b"


def test_damaged_index_or_missing_part_gives_one_sentence(tmp_path):
    table = make_table(8)
    path = tmp_path / "s.h5"
    build(path, table)
    with h5py.File(path, "a") as f:
        f["streams/audio/frames/row"][0] = 10 ** 9
    with pytest.raises(StoreError, match=r"s\.h5 is damaged \(its metadata bytes do not match the seal written"):
        FeatureStore(path)
    reseal(str(path))  # the same damage under a matching seal (a buggy tool): the bounds still hold
    with FeatureStore(path) as fs:
        with pytest.raises(StoreError, match="is damaged: its index asks rows up to"):
            fs.frames("audio", fs.ids("audio")[0])
    with h5py.File(path, "a") as f:
        f["streams/audio/frames/part"][0] = 99
    reseal(str(path))
    with pytest.raises(StoreError, match="is damaged: the index of streams/audio/frames points outside"):
        FeatureStore(path)
    build(tmp_path / "t.h5", table)
    with FeatureStore(tmp_path / "t.h5") as fs:
        os.remove(fs.part_files[0])
        with pytest.raises(StoreError, match="which is missing"):
            fs.load("audio")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_errors_name_the_path_and_keep_the_store(tmp_path, monkeypatch, err):
    table = make_table(8)
    ids = list(table["id"])
    path = tmp_path / "s.h5"
    build(path, table, ids[:4])
    import emofuse.store.writer as writer

    def failing(p):
        raise OSError(err, os.strerror(err), p)
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test"})
        monkeypatch.setattr(writer, "fsync_path", failing)
        with pytest.raises(StoreError, match=r"could not write .*s\.h5\.d/.*\.h5: .*the store is as it was"):
            w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in ids[4:]}})
        monkeypatch.undo()
    assert not list(Path(str(path) + ".d").glob("*.tmp"))
    assert_frames(path, ids[:4])


@pytest.mark.parametrize("overlap", [False, True])
def test_part_file_holds_each_layer_contiguously_with_the_checksums_of_its_rows(tmp_path, monkeypatch, overlap):
    """A part's rows are written chunk by chunk, one layer at a time (no HDF5 selection; the next
    layer copied in a helper thread where ``_OVERLAP``): the data reads back exactly, whatever the
    strides of the arrays handed in, a layer's chunks lie one after the other in the file, and the
    checksums are those of each utterance's rows of each layer."""
    monkeypatch.setattr("emofuse.store.h5io._OVERLAP", overlap)
    from emofuse.store.h5io import rows_checksum
    from emofuse.store.index import part_path
    table = make_table(6)
    ids = list(table["id"])
    rng = np.random.default_rng(3)
    frames = {i: rng.standard_normal((300 + 97 * k, 4, 96)).astype(np.float16) for k, i in enumerate(ids[:5])}
    frames[ids[1]] = np.ascontiguousarray(frames[ids[1]].transpose(1, 0, 2)).transpose(1, 0, 2)  # layer-major view
    frames[ids[5]] = np.zeros((0, 4, 96), np.float16)  # an utterance with no rows
    store = tmp_path / "s.h5"
    with StoreWriter(store, table) as w:
        w.add_stream("audio", {"fingerprint": "f"})
        part = w.commit("audio", {"frames": {i: {"data": frames[i]} for i in ids}})
        w.finalize()
    with FeatureStore(store) as fs:
        for i in ids:
            got = fs.frames("audio", i)
            assert got.dtype == np.float16 and np.array_equal(got, frames[i])
        np.testing.assert_array_equal(fs.load("audio", ids=[ids[2]], layers=[3]).data, frames[ids[2]][:, 3:4])
    with h5py.File(part_path(str(store), os.path.basename(part)), "r") as f:
        g = f["streams/audio/frames"]
        ds = g["data"]
        assert ds.chunks[1:] == (1, 96) and ds.shape == (sum(len(a) for a in frames.values()), 4, 96)
        infos = [ds.id.get_chunk_info(c) for c in range(ds.id.get_num_chunks())]
        order = sorted(infos, key=lambda c: c.byte_offset)
        assert [c.chunk_offset[1] for c in order] == sorted(c.chunk_offset[1] for c in order)  # layer after layer
        assert all(a.byte_offset + a.size == b.byte_offset for a, b in zip(order, order[1:]))  # back to back
        want = np.array([[rows_checksum(np.ascontiguousarray(frames[i][:, l])) for l in range(4)] for i in ids], np.uint64)
        assert np.array_equal(g["checksum"][...], want) and g["data"].attrs["finite"]


def test_part_files_are_the_same_bytes_with_or_without_the_helper_thread(tmp_path, monkeypatch):
    """``_OVERLAP`` changes only who copies a layer: the part files are byte for byte the same,
    and a non-finite value in any layer but the first is found (``finite`` false)."""
    table = make_table(4)
    ids = list(table["id"])
    rng = np.random.default_rng(5)
    frames = {i: rng.standard_normal((150 + 211 * k, 5, 64)).astype(np.float32) for k, i in enumerate(ids)}
    frames[ids[2]][17, 3, 9] = -np.inf
    parts = []
    for overlap in (False, True):
        monkeypatch.setattr("emofuse.store.h5io._OVERLAP", overlap)
        with StoreWriter(tmp_path / f"s{overlap:d}.h5", table) as w:
            w.add_stream("audio", {"fingerprint": "f"})
            parts.append(Path(w.commit("audio", {"frames": {i: {"data": frames[i]} for i in ids}})))
    assert parts[0].read_bytes() == parts[1].read_bytes()
    with h5py.File(parts[0], "r") as f:
        assert not f["streams/audio/frames/data"].attrs["finite"]


def test_a_wrong_call_is_a_type_error_not_damage(tmp_path):
    table = make_table(3)
    build(tmp_path / "s.h5", table)
    with FeatureStore(tmp_path / "s.h5") as fs:
        with pytest.raises(TypeError, match="layers"):
            fs.frames("audio", "u0000", layers=[0])


def test_after_a_failed_publish_later_staged_parts_are_not_committed(tmp_path, monkeypatch):
    """Extraction stages unit k+1 while unit k is fsynced. If k's fsync fails, k+1 must not become
    committed behind it (the next writer would adopt k's leftovers out of order): its publish is
    refused and its .tmp removed; what was committed before stays and is published."""
    import emofuse.store.writer as writer_module
    table = make_table(9)
    ids = list(table["id"])
    path = tmp_path / "s.h5"
    real = writer_module.fsync_path
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "f"})
        w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in ids[:3]}})
        a = w.stage("audio", {"frames": {i: {"data": frames_of(i)} for i in ids[3:6]}})
        b = w.stage("audio", {"frames": {i: {"data": frames_of(i)} for i in ids[6:]}})

        def failing(p):
            if p == a.tmp:
                raise OSError(errno.EIO, "Input/output error")
            real(p)
        monkeypatch.setattr(writer_module, "fsync_path", failing)
        with pytest.raises(StoreError, match="could not write"):
            w.publish(a)
        with pytest.raises(StoreError, match="not committed: an earlier commit of this run failed"):
            w.publish(b)
        assert not os.path.exists(a.tmp) and not os.path.exists(b.tmp) and not os.path.exists(b.final)
        w.finalize()
    monkeypatch.setattr(writer_module, "fsync_path", real)
    with FeatureStore(path) as fs:
        assert fs.ids("audio") == ids[:3]


def test_a_refused_encoder_names_the_file_each_encoder_is_in(tmp_path):
    """Before: merging shard b1 (encoder B) after a0 (encoder A) said 'stream in b1.h5 holds A;
    this run brings B', naming the wrong file for each encoder."""
    table = make_table(8)
    ids = list(table["id"])
    for name, enc, part in (("a0", "encA", ids[0::2]), ("b1", "encB", ids[1::2])):
        with StoreWriter(tmp_path / f"{name}.h5", table) as w:
            w.add_stream("audio", {"fingerprint": f"fp-{enc}", "encoder_id": enc})
            w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in part}})
            w.finalize()
    a0, b1 = tmp_path / "a0.h5", tmp_path / "b1.h5"
    with pytest.raises(StoreError) as e:
        merge_stores(tmp_path / "m.h5", [a0, b1])
    msg = str(e.value)
    assert msg.startswith(f"stream 'audio' in {a0} holds encA (fingerprint fp-encA); {b1} holds encB "
                          "(fingerprint fp-encB) [encoder_id: 'encA' in a0.h5, 'encB' in b1.h5]"), msg
    assert "cannot be merged" in msg
    with pytest.raises(StoreError) as e:   # in the other order, the other way round
        merge_stores(tmp_path / "m2.h5", [b1, a0])
    assert str(e.value).startswith(f"stream 'audio' in {b1} holds encB (fingerprint fp-encB); {a0} holds encA"), str(e.value)
    with StoreWriter(b1, table) as w, pytest.raises(StoreError) as e:   # extraction into a store
        w.add_stream("audio", {"fingerprint": "fp-encA", "encoder_id": "encA"})
    assert str(e.value) == (f"stream 'audio' in {b1} holds encB (fingerprint fp-encB); this run brings encA "
                            "(fingerprint fp-encA) [encoder_id: 'encB' in b1.h5, 'encA' in this run]: name another "
                            "stream or write a new store")


def test_a_stream_extracted_with_other_options_names_the_flags_that_give_its_own(tmp_path):
    """Before: the README's GPU extraction (--dtype bfloat16) then its reproduction command (the
    default float32) into one store was refused with 'name another stream or write a new store',
    never saying that --dtype bfloat16 extends the stream (found by a README walk-through)."""
    table = make_table(4)
    with StoreWriter(tmp_path / "s.h5", table) as w:
        w.add_stream("audio", {"fingerprint": "fp-a", "encoder_id": "w2v", "compute_dtype": "bfloat16",
                               "layers": [0, 6, 12]})
        w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in list(table["id"])[:2]}})
        w.finalize()
    with StoreWriter(tmp_path / "s.h5", table) as w, pytest.raises(StoreError) as e:
        w.add_stream("audio", {"fingerprint": "fp-b", "encoder_id": "w2v", "compute_dtype": "float32"})
    assert str(e.value).endswith(": extract with the stream's own --dtype bfloat16, --layers 0,6,12, name another "
                                 "stream or write a new store"), str(e.value)


def test_a_text_stream_windowed_otherwise_is_refused_like_another_encoder(tmp_path):
    """Before: a tokenizer whose model_max_length changed (its hash does not cover it) kept the
    stream's fingerprint, and a resumed or extended extraction added utterances windowed at the new
    length to a stream recorded with the old one, without a word."""
    table = make_table(4)
    ids = list(table["id"])
    info = {"fingerprint": "fp-bert", "encoder_id": "bert", "max_tokens": 64, "window_stride": 31}
    with StoreWriter(tmp_path / "s.h5", table) as w:
        w.add_stream("text", info)
        w.commit("text", {"frames": {i: {"data": frames_of(i)} for i in ids[:2]}})
        w.finalize()
    with StoreWriter(tmp_path / "s.h5", table) as w:
        w.add_stream("text", dict(info))   # the same windowing: accepted
    with StoreWriter(tmp_path / "s.h5", table) as w, pytest.raises(StoreError) as e:
        w.add_stream("text", {**info, "max_tokens": 5, "window_stride": 1})
    assert "[max_tokens: 64 in s.h5, 5 in this run; window_stride: 31 in s.h5, 1 in this run]" in str(e.value), str(e.value)


def test_the_writers_helper_thread_counts_a_containers_cpu_quota(tmp_path):
    """``_OVERLAP`` turns on with 4 usable cores: a cgroup quota of 2 CPUs caps what the affinity
    says (a container on a large node), an unlimited one does not, and a missing file is no quota."""
    from emofuse.cores import usable_cores
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert usable_cores(str(cpu_max)) <= 2.0
    cpu_max.write_text("max 100000\n")
    assert usable_cores(str(cpu_max)) == usable_cores(str(tmp_path / "missing"))
    cpu_max.write_text("50000 100000\n")
    assert usable_cores(str(cpu_max)) == 0.5
