"""Disk full, permission denied, a read-only folder, a lock path that is not a file: one sentence
naming the path and what to do, no partial file left, the store as it was (issue 14, finding 5)."""

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import emofuse.store.writer as writer
from emofuse.errors import StoreError
from emofuse.store import FeatureStore, StoreWriter

sys.path.insert(0, os.path.dirname(__file__))
from test_store_v2 import assert_frames, build, frames_of, make_table  # noqa: E402

CHILD = str(Path(__file__).with_name("store_oserror_child.py"))


def leftovers(path):
    folder = Path(str(path) + ".d")
    return [p.name for p in [Path(str(path) + ".tmp")] + list(folder.glob("*")) if p.name.endswith(".tmp") and
            os.path.lexists(p)]


def commit_rest(path, table):
    ids = list(table["id"])
    with StoreWriter(path, table) as w:
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test"})
        w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in ids[4:]}})
        w.finalize()


@pytest.mark.parametrize("kind", ["folder", "dangling symlink"])
def test_a_store_lock_path_that_is_not_a_file_is_one_sentence(tmp_path, kind):
    table = make_table(8)
    path = tmp_path / "s.h5"
    build(path, table, list(table["id"])[:4])
    lock = Path(str(path) + ".lock")
    lock.unlink(missing_ok=True)   # a clean writer leaves none
    if kind == "folder":
        lock.mkdir()
        match = "is a folder; expected a plain file: remove it"
    else:
        os.symlink(tmp_path / "nowhere" / "x", lock)
        match = r"is a symbolic link \(to .*nowhere/x\); expected a plain file: remove it"
    with pytest.raises(StoreError, match=rf"the store's lock file {lock} {match}"):
        commit_rest(path, table)
    assert_frames(path, list(table["id"])[:4])
    (lock.rmdir() if kind == "folder" else lock.unlink())
    commit_rest(path, table)
    assert_frames(path, list(table["id"]))


def test_a_store_path_that_is_a_folder_is_one_sentence(tmp_path):
    (tmp_path / "s.h5").mkdir()
    with pytest.raises(StoreError, match=r"s\.h5 is a folder; expected a feature store file"):
        commit_rest(tmp_path / "s.h5", make_table(8))
    with pytest.raises(StoreError, match=r"s\.h5 is a folder; expected a feature store file"):
        FeatureStore(tmp_path / "s.h5")


def test_a_full_disk_is_refused_before_a_byte_is_written(tmp_path, monkeypatch):
    table = make_table(8)
    path = tmp_path / "s.h5"
    build(path, table, list(table["id"])[:4])

    class Full:
        f_bavail, f_frsize = 10, 4096
    monkeypatch.setattr(writer.os, "statvfs", lambda p: Full())
    with pytest.raises(StoreError, match=r"could not write .*s\.h5\.d/.*\.h5: the disk is full \(it needs about "
                                         r"[\d.]+ MB, 0\.0 MB are free\); nothing of this commit was kept and the "
                                         r"store is as it was; free some space"):
        commit_rest(path, table)
    assert leftovers(path) == []
    assert_frames(path, list(table["id"])[:4])
    monkeypatch.undo()  # space freed: the same command finishes
    commit_rest(path, table)
    assert_frames(path, list(table["id"]))


def test_a_write_failing_inside_hdf5_is_one_sentence_and_leaves_nothing(tmp_path):
    """Before: three chained HDF5 tracebacks ending in errno 28, and a .tmp left behind."""
    table = make_table(8)
    path = tmp_path / "s.h5"
    build(path, table, list(table["id"])[:4])
    r = subprocess.run([sys.executable, CHILD, str(path), "fsize"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip() == "", r.stderr
    assert r.stdout.startswith("could not write ") and "s.h5.d/" in r.stdout and \
        "the file is too large for this process's file size limit; nothing of this commit was kept and the " \
        "store is as it was" in r.stdout, r.stdout
    assert leftovers(path) == []
    assert_frames(path, list(table["id"])[:4])


def test_permission_denied_on_the_folder_of_parts_is_one_sentence(tmp_path):
    """A real EACCES: the folder of parts is not writable (as root, the child gives up root)."""
    table = make_table(8)
    top = tempfile.mkdtemp(prefix="emofuse-eacces-")  # outside pytest's private temp folder
    try:
        os.chmod(top, 0o755)
        path = Path(top) / "s.h5"
        build(path, table, list(table["id"])[:4])
        Path(str(path) + ".lock").touch()   # the child (not root) may lock it, though not create it in top
        os.chmod(str(path) + ".lock", 0o666)
        os.chmod(str(path) + ".d", 0o555)
        r = subprocess.run([sys.executable, CHILD, str(path), "readonly-folder"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stdout.startswith("could not write ") and "permission denied; nothing of this commit was kept and "\
            "the store is as it was; give yourself write permission there" in r.stdout, r.stdout
        assert leftovers(path) == []
        assert_frames(path, list(table["id"])[:4])
    finally:
        os.chmod(str(Path(top) / "s.h5.d"), 0o755) if os.path.exists(Path(top) / "s.h5.d") else None
        subprocess.run(["rm", "-rf", top], check=True)


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
def test_publishing_the_index_fails_cleanly(tmp_path, monkeypatch, err):
    table = make_table(8)
    path = tmp_path / "s.h5"
    build(path, table, list(table["id"])[:4])
    import emofuse.store.index as index

    def failing(tmp, final):
        raise OSError(err, os.strerror(err), tmp)
    monkeypatch.setattr(index, "atomic_publish", failing)
    with pytest.raises(StoreError, match=r"could not publish the index of .*s\.h5: .*; the committed parts stay for "
                                         r"the next run and the index is as it was"):
        commit_rest(path, table)
    monkeypatch.undo()
    assert leftovers(path) == []
    assert_frames(path, list(table["id"])[:4])
    with StoreWriter(path, table) as w:  # the next run adopts the committed part
        assert w.done_ids("audio", "frames") == set(table["id"])
        w.finalize()
    assert_frames(path, list(table["id"]))
