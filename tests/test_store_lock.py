"""The store's writer lock on both of its paths: ``flock`` (Linux, macOS) and the ``O_EXCL`` file
whose pid is checked, used where ``fcntl`` does not exist (Windows). The fallback is forced here
by removing ``fcntl`` from ``emofuse.locks``."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import emofuse.locks as lock_module
from emofuse.errors import StoreError
from emofuse.store import StoreWriter, compact_store, upgrade_store
from emofuse.store.lock import WriterLock

sys.path.insert(0, os.path.dirname(__file__))
from test_store_v2 import assert_frames, build, frames_of, make_table  # noqa: E402

ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture(params=["flock", "exclusive-file"])
def mode(request, monkeypatch):
    if request.param == "exclusive-file":
        monkeypatch.setattr(lock_module, "fcntl", None)
    elif lock_module.fcntl is None:
        pytest.fail("this platform has no fcntl: the flock path cannot be tested here")
    return request.param


def lock_file(path) -> Path:
    return Path(str(path) + ".lock")


def test_one_writer_at_a_time_and_no_lock_file_after(tmp_path, mode):
    table = make_table(8)
    path = tmp_path / "s.h5"
    ids = list(table["id"])
    with StoreWriter(path, table) as w:
        assert lock_file(path).read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(StoreError, match=rf"another process is writing {path} \(it holds {path}\.lock\); wait"):
            StoreWriter(path, table)
        with pytest.raises(StoreError, match="another process is writing"):
            compact_store(path)
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test"})
        w.commit("audio", {"frames": {i: {"data": frames_of(i)} for i in ids}})
        w.finalize()
    assert not lock_file(path).exists()
    assert_frames(path, ids)
    assert "nothing to do" in upgrade_store(path)   # the lock is free again, and released again
    assert not lock_file(path).exists()


def test_fallback_takes_over_the_lock_of_a_killed_writer(tmp_path, monkeypatch):
    """A writer killed with SIGKILL leaves its O_EXCL file behind; its pid no longer runs, so the
    next writer takes the lock over and adopts what the killed one committed."""
    monkeypatch.setattr(lock_module, "fcntl", None)
    table = make_table(8)
    ids = list(table["id"])
    path = tmp_path / "s.h5"
    build(path, table, ids[:4])
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import emofuse.locks as lock_module
        lock_module.fcntl = None
        from emofuse.store import StoreWriter
        from test_store_v2 import frames_of
        w = StoreWriter({str(path)!r})
        w.add_stream("audio", w.stream_infos["audio"])
        w.commit("audio", {{"frames": {{i: {{"data": frames_of(i)}} for i in {ids[4:]!r}}}}})
        print("committed", flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "committed"
        assert lock_file(path).read_text().split()[0] == str(p.pid)
        with pytest.raises(StoreError, match="another process is writing"):   # it still runs
            StoreWriter(path)
    finally:
        p.kill()
        p.wait()
    assert lock_file(path).exists()   # no kernel lock to drop: the file stays behind
    with StoreWriter(path) as w:      # ... and its owner is dead: taken over
        w.finalize()                  # the killed writer's committed part is adopted
    assert not lock_file(path).exists()
    assert_frames(path, ids)


def test_fallback_refuses_a_lock_held_on_another_host(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "fcntl", None)
    path = tmp_path / "s.h5"
    lock_file(path).write_text("4242 some-other-host\n")
    with pytest.raises(StoreError, match=rf"process 4242 on some-other-host holds {path}\.lock\); wait for it to "
                                         rf"finish, or remove {path}\.lock if it no longer runs"):
        WriterLock(str(path))
    assert lock_file(path).read_text() == "4242 some-other-host\n"   # not taken


def test_fallback_refuses_a_folder_or_a_link_at_the_lock_path(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "fcntl", None)
    path = tmp_path / "s.h5"
    lock_file(path).mkdir()
    with pytest.raises(StoreError, match="the store's lock file .* is a folder; expected a plain file"):
        WriterLock(str(path))
    lock_file(path).rmdir()
    os.symlink(tmp_path / "nowhere", lock_file(path))
    with pytest.raises(StoreError, match="the store's lock file .* is a symbolic link"):
        WriterLock(str(path))
