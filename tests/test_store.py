import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from emofuse.corpora import load_corpus, utterance_table
from emofuse.errors import StoreError
from emofuse.store import FeatureStore, StoreWriter, corpus_fingerprint, merge_stores
from emofuse.store.h5io import reseal

CHILD = str(Path(__file__).with_name("store_child.py"))
sys.path.insert(0, os.path.dirname(CHILD))
import store_child  # noqa: E402


@pytest.fixture
def table(fake_iemocap):
    return utterance_table(load_corpus("iemocap", root=fake_iemocap.root))


def random_entries(ids, dtype, seed=0, layers=4, dim=8):
    rng = np.random.default_rng(seed)
    frames, tokens, segs = {}, {}, {}
    for k, i in enumerate(ids):
        t = int(rng.integers(0, 30))
        frames[i] = {"data": rng.standard_normal((t, layers, dim)).astype(dtype)}
        n = int(rng.integers(1, 6))
        tokens[i] = {"data": rng.standard_normal((n, layers, dim)).astype(dtype),
                     "strings": np.array([f"tok{j}é" for j in range(n)]),
                     "word_ids": np.arange(n, dtype=np.int32) - 1,
                     "offsets": rng.integers(0, 50, (n, 2)).astype(np.int32),
                     "special": np.arange(n) == 0}
        kk = int(rng.integers(0, 4))  # 0 segments happens: must read back as (0, L, D)
        segs[i] = {"data": rng.standard_normal((kk, layers, dim)).astype(dtype),
                   "symbols": np.array([f"W{j}" for j in range(kk)], dtype=str),
                   "spans": rng.integers(0, 9, (kk, 2)).astype(np.int32)}
    return frames, tokens, segs


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_is_bit_exact(tmp_path, table, dtype):
    ids = list(table["id"])
    frames, tokens, segs = random_entries(ids, dtype)
    path = tmp_path / "s.h5"
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "a1", "encoder_id": "enc", "num_layers": 4, "dim": 8})
        w.add_stream("text", {"fingerprint": "t1", "encoder_id": "bert"})
        half = len(ids) // 2
        w.commit("audio", {"frames": {i: frames[i] for i in ids[half:]}})
        w.commit("audio", {"frames": {i: frames[i] for i in ids[:half]}, "segments/word": segs})
        w.commit("text", {"tokens": tokens})
        w.finalize()
    with FeatureStore(path) as fs:
        assert fs.streams == ["audio", "text"]
        assert list(fs.utterances.index) == ids
        assert fs.utterances.loc[ids[0], "label"] == table.iloc[0]["label"]
        info = fs.stream_info("audio")
        assert info["encoder_id"] == "enc" and info["entries"] == {"frames": len(ids), "segments/word": len(ids)}
        assert info["granularities"] == ["word"]
        for i in ids:
            got = fs.frames("audio", i)
            assert got.dtype == dtype and np.array_equal(got, frames[i]["data"])
            tk = fs.tokens("text", i)
            assert np.array_equal(tk.values, tokens[i]["data"]) and list(tk.strings) == list(tokens[i]["strings"])
            assert np.array_equal(tk.word_ids, tokens[i]["word_ids"]) and np.array_equal(tk.special, tokens[i]["special"])
            assert np.array_equal(tk.offsets, tokens[i]["offsets"])
            sg = fs.segments("audio", "word", i)
            assert sg.values.shape == segs[i]["data"].shape and np.array_equal(sg.values, segs[i]["data"])
            assert list(sg.symbols) == list(segs[i]["symbols"]) and np.array_equal(sg.spans, segs[i]["spans"])
        # stored in commit order (merged as committed), each unit in id order
        assert fs.ids("audio") == sorted(ids[half:]) + sorted(ids[:half])
        # bulk reads equal per-utterance reads, any order, any layer subset
        order = ids[::-1]
        for layers in (None, [1, 2], [3, 0]):
            r = fs.load("audio", "frames", ids=order, layers=layers)
            sel = slice(None) if layers is None else layers
            for k, i in enumerate(order):
                assert np.array_equal(r[k], frames[i]["data"][:, sel])
        with pytest.raises(StoreError, match="layer 7 does not exist"):
            fs.load("audio", layers=[7])
        with pytest.raises(StoreError, match="no segments/phone.*align-segments"):
            fs.segments("audio", "phone", ids[0])
        with pytest.raises(StoreError, match="stream 'video' is not in"):
            fs.frames("video", ids[0])


def test_refuses_another_corpus_and_another_encoder(tmp_path, table):
    path = tmp_path / "s.h5"
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "a1", "encoder_id": "facebook/wav2vec2-base"})
        w.commit("audio", {"frames": {table["id"][0]: {"data": np.zeros((2, 1, 3), np.float16)}}})
        w.finalize()
    other = table.copy()
    other.loc[0, "label"] = "sad" if other.loc[0, "label"] != "sad" else "ang"
    assert corpus_fingerprint(other) != corpus_fingerprint(table)
    with pytest.raises(StoreError, match="was built from another corpus"):
        StoreWriter(path, other)
    with StoreWriter(path, table) as w:
        with pytest.raises(StoreError, match=r"stream 'audio'.*facebook/wav2vec2-base.*microsoft/wavlm-base"):
            w.add_stream("audio", {"fingerprint": "b2", "encoder_id": "microsoft/wavlm-base"})
        w.add_stream("wavlm", {"fingerprint": "b2", "encoder_id": "microsoft/wavlm-base"})  # another name is fine
    # moving the corpus elsewhere keeps its fingerprint
    moved = table.assign(audio_path=["/mnt/elsewhere/" + os.path.basename(p) for p in table["audio_path"]])
    assert corpus_fingerprint(moved) == corpus_fingerprint(table)


def test_commits_are_parts_and_the_index_is_swapped_only_at_finalize(tmp_path, table):
    ids = list(table["id"])
    frames, _, _ = random_entries(ids, np.float16, seed=3)
    path = tmp_path / "s.h5"
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "a1"})
        before = path.read_bytes()
        part = w.commit("audio", {"frames": {i: frames[i] for i in ids[:3]}})
        assert os.path.dirname(part) == str(path) + ".d"
        with h5py.File(part, "r", locking=False) as f:  # chunked one layer at a time, like the index says
            assert f["streams/audio/frames/data"].chunks[1:] == (1, 8)
        assert path.read_bytes() == before  # the index is untouched by a commit ...
        with FeatureStore(path) as fs:  # ... so readers see the last published state
            assert fs.streams == [] and fs.pending_parts == [part]
    # closed without finalize: the committed part stays for the next writer
    assert os.path.exists(part) and not Path(str(path) + ".tmp").exists()
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "a1"})
        assert w.done_ids("audio", "frames") == set(ids[:3])
        w.commit("audio", {"frames": {i: frames[i] for i in ids[3:]}})
        reader = FeatureStore(path)  # opened while the writer runs
        assert w.finalize() == {"streams/audio/frames": len(ids)}
    assert reader.streams == []  # still the state it opened
    reader.close()
    with FeatureStore(path) as fs:
        assert fs.ids("audio") == sorted(ids[:3]) + sorted(ids[3:])
        for i in ids:
            assert np.array_equal(fs.frames("audio", i), frames[i]["data"])
        assert fs.pending_parts == [] and len(fs.part_files) == 2
    # a unit that repeats a published utterance: the first copy is kept, the unused part deleted
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "a1"})
        other = np.ones((4, 4, 8), np.float16)
        dup = w.commit("audio", {"frames": {ids[0]: {"data": other}}})
        w.commit("audio", {}, skipped=[(ids[1], "tokens", "why")])
        assert w.finalize() == {}
    assert not os.path.exists(dup)
    with FeatureStore(path) as fs:
        assert np.array_equal(fs.frames("audio", ids[0]), frames[ids[0]]["data"])
        assert list(fs.skipped("audio")["id"]) == [ids[1]]


def test_second_writer_is_refused(tmp_path, table):
    path = tmp_path / "s.h5"
    with StoreWriter(path, table):
        with pytest.raises(StoreError, match="another process is writing"):
            StoreWriter(path, table)
    StoreWriter(path, table).close()  # released


def test_schema_version_and_type_checked(tmp_path, table):
    path = tmp_path / "s.h5"
    StoreWriter(path, table).close()
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    reseal(str(path))  # as a future emofuse would write it
    with pytest.raises(StoreError, match="schema v99"):
        FeatureStore(path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not an emofuse feature store"):
        FeatureStore(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="junk.h5 is not an emofuse feature store, or it is damaged"):
        FeatureStore(tmp_path / "junk.h5")


def test_reader_refuses_stream_of_another_corpus(tmp_path, table):
    path = tmp_path / "s.h5"
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "a1"})
        w.commit("audio", {"frames": {table["id"][0]: {"data": np.zeros((2, 1, 3), np.float16)}}})
        w.finalize()
    with h5py.File(path, "a") as f:  # a stream grafted from another store
        import json
        info = json.loads(f["streams/audio"].attrs["info"])
        info["corpus_fingerprint"] = "0" * 32
        f["streams/audio"].attrs["info"] = json.dumps(info)
    reseal(str(path))  # a consistent file, as a buggy tool would write it
    with pytest.raises(StoreError, match="computed for another corpus"):
        FeatureStore(path)


def run_child(path, n_units=10, pause=0.0, kill_at=None):
    return subprocess.Popen([sys.executable, CHILD, str(path), str(n_units), str(pause)] + ([kill_at] if kill_at else []),
                            stdout=subprocess.PIPE, text=True)


def reference(tmp_path):
    ref = tmp_path / "ref.h5"
    assert run_child(ref).wait() == 0
    return ref


def same_content(a, b):
    with FeatureStore(a) as fa, FeatureStore(b) as fb:
        assert fa.ids("audio") == fb.ids("audio")
        for i in fa.ids("audio"):
            assert np.array_equal(fa.frames("audio", i), fb.frames("audio", i))
        pd.testing.assert_frame_equal(fa.skipped("audio"), fb.skipped("audio"))
        pd.testing.assert_frame_equal(fa.utterances, fb.utterances)


@pytest.mark.parametrize("kill_at", ["COMMIT 0", "COMMIT 12", "COMMIT 28", "FINALIZE"])
@pytest.mark.parametrize("delay", [0.0, 0.003, 0.02])
def test_sigkill_anywhere_leaves_last_committed_state(tmp_path, kill_at, delay):
    path = tmp_path / "s.h5"
    for _ in range(6):  # the kill must land before the run finished; a late one is tried again sooner
        for p in (path, Path(str(path) + ".d")):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        child = run_child(path, n_units=10, pause=0.01)
        for line in child.stdout:
            if line.strip() == kill_at:
                time.sleep(delay)
                break
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        if child.wait() == -signal.SIGKILL and "DONE" not in rest:
            break
        delay /= 4
    assert child.returncode == -signal.SIGKILL and "DONE" not in rest, "the run finished before the kill landed"
    if path.exists():  # whatever exists must open and be consistent
        with FeatureStore(path) as fs:
            for i in fs.ids("audio") if "audio" in fs.streams else []:
                assert np.array_equal(fs.frames("audio", i), store_child.frames_of(i))
    # a resumed run finishes and equals an uninterrupted one, computing only what was missing
    resumed = run_child(path, n_units=10)
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    if kill_at == "FINALIZE":
        assert "COMMIT" not in out  # every unit had been committed before the kill
    same_content(path, reference(tmp_path))
    assert not Path(str(path) + ".tmp").exists()
    with FeatureStore(path) as fs:
        assert fs.pending_parts == []


def test_merge_shards_equals_single_store(tmp_path, table):
    ids = list(table["id"])
    frames, _, _ = random_entries(ids, np.float16, seed=5)
    shards = []
    for k in range(2):
        p = tmp_path / f"shard{k}.h5"
        with StoreWriter(p, table) as w:
            w.add_stream("audio", {"fingerprint": "a1"})
            w.commit("audio", {"frames": {i: frames[i] for i in ids[k::2]}})
            w.finalize()
        shards.append(p)
    added = merge_stores(tmp_path / "all.h5", shards)
    assert added == {"streams/audio/frames": len(ids)}
    with FeatureStore(tmp_path / "all.h5") as fs:
        assert fs.ids("audio") == sorted(ids)
        for i in ids:
            assert np.array_equal(fs.frames("audio", i), frames[i]["data"])
    other = table.copy()
    other.loc[0, "transcript"] = "changed"
    with StoreWriter(tmp_path / "x.h5", other) as w:
        pass
    with pytest.raises(StoreError, match="another corpus"):
        merge_stores(tmp_path / "all.h5", [tmp_path / "x.h5"])


@pytest.mark.parametrize("kill_at", ["part-unrenamed:1", "part-renamed:1", "part-unrenamed:4", "part-renamed:10",
                                     "index-unswapped:1", "index-unswapped:2", "index-swapped:2"])
def test_sigkill_at_each_commit_point(tmp_path, kill_at):
    """The commit points themselves, hit exactly: a part's rename and the index swap (the
    first index swap creates the empty store, the second publishes the commits)."""
    path = tmp_path / "s.h5"
    first = run_child(path, n_units=10, kill_at=kill_at)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    what, n = kill_at.split(":")
    if kill_at == "index-unswapped:1":  # killed while creating the store: there is none yet
        assert not path.exists()
    else:
        with FeatureStore(path) as fs:
            published = fs.ids("audio") if "audio" in fs.streams else []
            for i in published:
                assert np.array_equal(fs.frames("audio", i), store_child.frames_of(i))
            if what == "index-swapped":  # the rename happened: everything is published
                expected = (store_child.N_UTTS, 0)
            elif what == "index-unswapped":
                expected = (0, 10)
            else:
                expected = (0, int(n) if what == "part-renamed" else int(n) - 1)
            assert (len(published), len(fs.pending_parts)) == expected
    resumed = run_child(path, n_units=10)
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    if what.startswith("index") and n == "2":
        assert "COMMIT" not in out  # every unit had been committed before the kill
    same_content(path, reference(tmp_path))
    assert not Path(str(path) + ".tmp").exists() and not list(Path(str(path) + ".d").glob("*.tmp"))
