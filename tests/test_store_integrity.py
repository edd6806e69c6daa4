"""Stored tensors carry checksums; damaged bytes, NaN/Inf and damaged metadata give one sentence
(issue 14, findings 2 and 7)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from emofuse.errors import EmofuseError, StoreError
from emofuse.pipelines.data import load_train_data
from emofuse.store import FeatureStore, StoreWriter

sys.path.insert(0, os.path.dirname(__file__))
from test_store_v2 import make_table  # noqa: E402

FLIP_CHILD = str(Path(__file__).with_name("store_flip_child.py"))


def frames_of(uid, layers=3, dim=64):
    k = int(uid[-4:])
    return np.random.default_rng(k).standard_normal((40 + 9 * (k % 5), layers, dim)).astype(np.float16)


def build(path, n=12, per_commit=4, nan_in=None, scale=1):
    table = make_table(n)
    ids = list(table["id"])
    with StoreWriter(path, table, {"kind": "synthetic"}) as w:
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test"})
        for k in range(0, n, per_commit):
            entries = {}
            for i in ids[k:k + per_commit]:
                x = frames_of(i) * np.float16(scale)
                if i == nan_in:
                    x[3, 1, 5] = np.nan
                entries[i] = {"data": x}
            w.commit("audio", {"frames": entries})
            w.commit("audio", {"segments/word": {i: {"data": frames_of(i)[:3], "spans": np.array([[0, 1]] * 3, np.int32),
                                                     "symbols": np.array(["a", "b", "c"], dtype=object)}
                               for i in ids[k:k + per_commit]}})
        w.finalize()
    return ids


def data_ranges(fs):
    """(part file, byte offset, size, first row, layer) of every stored chunk of tensors."""
    out = []
    for part in sorted(set(fs.part_files)):
        with h5py.File(part, "r") as f:
            for kind in ("frames", "segments/word"):
                ds = f.get(f"streams/audio/{kind}/data")
                for c in range(ds.id.get_num_chunks() if ds is not None else 0):
                    info = ds.id.get_chunk_info(c)
                    out.append((part, info.byte_offset, info.size, info.chunk_offset[0], info.chunk_offset[1]))
    return out


def flip(path, offset, mask=0x5A):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def read_all(path):
    with FeatureStore(path) as fs:
        ids = fs.ids("audio")
        return (fs.load("audio").data, fs.load("audio", layers=[1]).data, fs.load("audio", ids=ids[::-1]).data,
                fs.load("audio", "segments/word").data, [fs.frames("audio", i) for i in ids])


def test_a_flipped_tensor_byte_names_the_stream_and_the_utterance(tmp_path):
    path = tmp_path / "s.h5"
    ids = build(path)
    with FeatureStore(path) as fs:
        part, row, n = fs._entry_index("audio", "frames")[ids[5]]
        where = fs.part_files[part]
    with h5py.File(where, "r") as f:  # the chunk holding layer 2 of ids[5]'s second row
        ds = f["streams/audio/frames/data"]
        rows = ds.chunks[0]
        target = [ds.id.get_chunk_info(c) for c in range(ds.id.get_num_chunks())]
        info = next(i for i in target if i.chunk_offset[1] == 2 and i.chunk_offset[0] <= row + 1 < i.chunk_offset[0] + rows)
    flip(where, info.byte_offset + ((row + 1 - info.chunk_offset[0]) * 64 + 7) * 2)
    msg = rf"frames of utterance '{ids[5]}' in stream 'audio' of .*s\.h5 are corrupt: layer position 2 does not match"
    with FeatureStore(path) as fs:
        with pytest.raises(StoreError, match=msg):
            fs.load("audio")
        with pytest.raises(StoreError, match=msg):
            fs.load("audio", layers=[2], ids=[ids[5]])
        with pytest.raises(StoreError, match=msg):
            fs.frames("audio", ids[5])
        fs.load("audio", layers=[0, 1])  # the other layers' bytes are intact and read
        assert np.array_equal(fs.frames("audio", ids[4]), frames_of(ids[4]))


def test_random_flips_in_tensor_bytes_never_read_as_different_arrays(tmp_path):
    path = tmp_path / "s.h5"
    build(path)
    ref = read_all(path)
    with FeatureStore(path) as fs:
        chunks = data_ranges(fs)
    rng = random.Random(14)
    outcomes = []
    for _ in range(30):
        part, off, size, _, _ = rng.choice(chunks)
        at, mask = off + rng.randrange(size), rng.randrange(1, 256)
        flip(part, at, mask)
        try:
            got = read_all(path)
            same = all(np.array_equal(a, b) for a, b in zip(ref[:4], got[:4])) and \
                all(np.array_equal(a, b) for a, b in zip(ref[4], got[4]))
            outcomes.append("same" if same else f"DIFFERENT at {part}:{at}")
        except StoreError as e:
            assert "are corrupt" in str(e) and "of utterance 'u00" in str(e) and "in stream 'audio'" in str(e), e
            outcomes.append("error")
        finally:
            flip(part, at, mask)  # xor again: the byte as it was
    assert not [o for o in outcomes if o.startswith("DIFFERENT")], outcomes
    assert outcomes.count("error") >= 20, outcomes  # a flip past a dataset's last row is never read
    assert all(np.array_equal(a, b) for a, b in zip(ref[0], read_all(path)[0]))


def test_nan_in_stored_frames_never_reaches_training(tmp_path):
    path = tmp_path / "s.h5"
    ids = build(path, nan_in="u0006")  # written with matching checksums: only the NaN test can see it
    msg = r"frames of utterance 'u0006' in stream 'audio' of .*s\.h5 hold NaN or infinite values \(layer position 1"
    with FeatureStore(path) as fs:
        with pytest.raises(StoreError, match=msg):
            fs.load("audio")
        with pytest.raises(StoreError, match=msg):
            fs.frames("audio", "u0006")
        with pytest.raises(EmofuseError, match=msg):
            load_train_data(fs, ["F"], "audio", "text")
        fs.load("audio", ids=[i for i in ids if i != "u0006"])  # the others are fine
        with pytest.raises(StoreError, match=msg):  # streamed per batch (no room in memory): the same check
            data = load_train_data(fs, ["F"], "audio", "text", memory_budget=0)
            data.sources["F"].all_rows(np.arange(len(data.ids)))


def run_flips(store, target, seed, n, lo=0, hi=None):
    args = [sys.executable, FLIP_CHILD, str(store), str(target), str(seed), str(n), str(lo)] + ([str(hi)] if hi else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)  # a hang fails the test
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("which", ["index", "part"])
def test_metadata_flips_give_one_sentence_never_a_traceback_or_a_hang(tmp_path, which):
    """30 random byte flips in a store file's first 64 KiB (the index: all of it), each followed by
    `emofuse info` and reading every tensor: the same answer or one sentence, within the timeout."""
    path = tmp_path / "s.h5"
    build(path)
    with FeatureStore(path) as fs:
        target = path if which == "index" else fs.part_files[0]
    rows = run_flips(path, target, seed=7 if which == "index" else 8, n=30, hi=64 << 10)
    assert len(rows) == 30
    bad = [r for r in rows if r["outcome"] not in ("same", "error")]
    assert not bad, bad
    assert sum(r["outcome"] == "error" for r in rows) >= 5, rows
    assert all("\n" not in r["detail"] for r in rows)


def test_info_on_a_damaged_index_is_one_sentence(tmp_path):
    path = tmp_path / "s.h5"
    build(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # a torn index: its second half gone
        f.truncate(size // 2)
    r = subprocess.run([sys.executable, "-m", "emofuse", "info", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {path}") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_part_file_or_index_of_another_store_is_refused_never_read(tmp_path):
    """Before: a part was checked only against itself (seal, table, checksums), so an intact part of
    another store under the same name (two extractions as PID 1 in containers name their parts
    alike; or a store's .h5 copied without its folder) was read, trained on and compacted under the
    original model's run key. Now the index records each part's seal and the reader compares."""
    import glob
    import shutil

    from emofuse.store import compact_store
    from emofuse.store.h5io import reseal
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    build(a)
    build(b, scale=2)   # another model's values, the same utterances and rows
    parts_a = sorted(glob.glob(f"{a}.d/*.h5"))
    assert [os.path.basename(p) for p in parts_a] == [os.path.basename(p) for p in sorted(glob.glob(f"{b}.d/*.h5"))]
    want = read_all(a)
    shutil.copyfile(b, tmp_path / "b-index.h5")
    shutil.copyfile(a, b)   # b's folder under a's index
    with pytest.raises(StoreError, match=r"is not the one its index was built on .*copy a store's \.h5 and its \.h5\.d"):
        read_all(b)
    with pytest.raises(StoreError, match="is not the one its index was built on"):
        compact_store(b)   # never launders the foreign part with fresh checksums
    shutil.copyfile(tmp_path / "b-index.h5", a)   # a's folder under b's index
    with pytest.raises(StoreError, match="is not the one its index was built on"), FeatureStore(a) as fs:
        load_train_data(fs, ["F"], "audio", "text")
    # an index written before seals were recorded still reads (nothing to compare)
    shutil.copyfile(b, a)
    with h5py.File(a, "r+") as f:
        del f["parts/seals"]
    reseal(str(a))
    for x, y in zip(read_all(a), want):
        assert all(np.array_equal(u, v) for u, v in zip(x, y)) if isinstance(x, list) else np.array_equal(x, y)


def test_a_reader_opened_before_a_compact_is_not_told_the_store_is_damaged(tmp_path):
    """Before: a part deleted by compact after the reader opened it read as 'damaged … re-extract'."""
    from emofuse.store import compact_store
    path = tmp_path / "s.h5"
    ids = build(path)
    fs = FeatureStore(path)
    try:
        first = fs.frames("audio", ids[0])   # opens the first part only
        compact_store(path)
        assert np.array_equal(fs.frames("audio", ids[0]), first)   # a part already open reads on
        with pytest.raises(StoreError, match=r"was rewritten \(compacted\) since this reader opened it.*open the "
                                             r"store again \(nothing is damaged\)"):
            fs.frames("audio", ids[-1])
    finally:
        fs.close()
    with FeatureStore(path) as fs:
        assert np.array_equal(fs.frames("audio", ids[-1]), frames_of(ids[-1]))
