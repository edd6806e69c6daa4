"""Run directories (issue 14): a run's key covers the store content it read, one process per
directory, unique temporary names, ablate workers die with their parent, resumed outputs are
byte-identical to uninterrupted ones."""

import logging
import json
import os
import shutil  # noqa: F401
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emofuse.align.pooling import pool_many
from emofuse.store.index import copy_store, remove_store
from emofuse import locks
from emofuse.errors import EmofuseError
from emofuse.pipelines import rundir
from emofuse.pipelines.ablate import AblateConfig, run_ablate
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore, StoreWriter
from emofuse.testing.synthetic import make_synthetic_store
from emofuse.testing import logged_messages


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores of one corpus and one encoder (same fingerprints, same utterances and segment
    counts) whose word segments differ: every boundary moved, as after re-aligning."""
    base = tmp_path_factory.mktemp("rundir")
    a = base / "a.h5"
    make_synthetic_store(a, per_class=3, sessions=3, layers=2, dim=4, planted_layer=1, mean_seconds=1.0, seed=3)
    b = base / "b.h5"
    with FeatureStore(a) as fs:
        table = fs.utterances.reset_index()
        info = {k: v for k, v in fs.stream_info("audio").items() if k not in ("entries", "granularities")}
        ids = fs.ids("audio")
        frames = {i: fs.frames("audio", i) for i in ids}
        words = {i: fs.segments("audio", "word", i) for i in fs.ids("audio", "segments/word")}
    with StoreWriter(b, table, {"kind": "synthetic"}) as w:
        w.add_stream("audio", info)
        seg = {}
        for i, s in words.items():
            T = len(frames[i])
            spans = np.array(s.spans, np.int64)
            spans[1:, 0] = np.maximum(spans[1:, 0] - 1, spans[:-1, 0] + 1)  # boundaries one frame earlier
            spans[:-1, 1] = spans[1:, 0]
            assert (spans[:, 1] > spans[:, 0]).all() and spans[-1, 1] <= T
            seg[i] = {"data": pool_many(frames[i], [spans])[0].astype(frames[i].dtype), "symbols": s.symbols,
                      "spans": spans.astype(np.int32)}
        w.commit("audio", {"frames": {i: {"data": frames[i]} for i in ids}, "segments/word": seg})
        w.finalize()
    with FeatureStore(a) as fa, FeatureStore(b) as fb:
        assert fa.corpus_fingerprint == fb.corpus_fingerprint
        assert fa.stream_info("audio")["fingerprint"] == fb.stream_info("audio")["fingerprint"]
        assert fa.index("audio", "segments/word").keys() == fb.index("audio", "segments/word").keys()
    return a, b


def quick(store, out, **kw):
    base = dict(store=str(store), out=str(out), fusion="none", granularity="W", repeats=1, epochs=2, patience=2,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_changed_segments_never_reuse_stale_folds(stores, tmp_path):
    """Before: same corpus and encoder fingerprints, so a run directory of the old segments was
    reused (a reported UA from data the store no longer holds)."""
    a, b = stores
    store = tmp_path / "s.h5"
    copy_store(str(a), str(store))
    out = tmp_path / "run"
    run_train(quick(store, out))
    remove_store(str(store))
    copy_store(str(b), str(store))  # the store's segments were re-aligned
    with pytest.raises(EmofuseError, match=r"another configuration \(differs in store content"):
        run_train(quick(store, out))
    with FeatureStore(a) as fa, FeatureStore(b) as fb:
        assert rundir.content_digest(fa, "audio", "segments/word") != rundir.content_digest(fb, "audio", "segments/word")
        assert rundir.content_digest(fa, "audio", "frames") == rundir.content_digest(fb, "audio", "frames")


def test_a_reader_open_across_a_writers_swap_files_no_stale_digest(stores, tmp_path):
    """Before: the digest cache was keyed by the index file at the path *now* while hashing the
    index the reader opened: a reader opened before a writer's commit and asked after it filed the
    old content under the new index, and every later reader in the process (ablate, a notebook)
    took a run of the old segments as matching the new ones."""
    a, b = stores
    store = tmp_path / "s.h5"
    copy_store(str(a), str(store))
    with FeatureStore(b) as fb:   # the re-aligned segments, written as align-segments would
        table = fb.utterances.reset_index()
        info = {k: v for k, v in fb.stream_info("audio").items() if k not in ("entries", "granularities")}
        seg = {i: {"data": fb._rows("audio", "segments/word", i, "data"), "symbols": fb.segments("audio", "word", i).symbols,
                   "spans": np.asarray(fb.segments("audio", "word", i).spans, np.int32)}
               for i in fb.ids("audio", "segments/word")}
    old = FeatureStore(store)
    try:
        with StoreWriter(store, table, {"kind": "synthetic"}) as w:
            w.add_stream("audio", info)
            w.commit("audio", {"segments/word": seg}, inputs={i: "re-aligned" for i in seg})
            w.finalize()
        seen_by_old = rundir.content_digest(old, "audio", "segments/word")   # asked after the swap
    finally:
        old.close()
    with FeatureStore(store) as new:
        seen_by_new = rundir.content_digest(new, "audio", "segments/word")
        rundir._digests.clear()
        assert seen_by_new == rundir.content_digest(new, "audio", "segments/word") != seen_by_old
        assert new.index_identity != old.index_identity


def test_ablate_keys_follow_the_store_content(stores, tmp_path, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    a, b = stores
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 2, patience: 2}\ntables:\n  - name: x\n    rows:\n"
                    "      - {label: W, fusion: none, granularity: W}\n")
    store = tmp_path / "s.h5"
    copy_store(str(a), str(store))
    out = tmp_path / "grid"
    first = run_ablate(AblateConfig(store=str(store), spec=str(spec), out=str(out), device="cpu"))
    remove_store(str(store))
    copy_store(str(b), str(store))
    caplog.clear()
    second = run_ablate(AblateConfig(store=str(store), spec=str(spec), out=str(out), device="cpu"))
    msgs = logged_messages(caplog)
    assert "1 configurations, 0 already finished, 1 to run" in msgs[0]
    assert first["x"]["key"].item() != second["x"]["key"].item()


def test_resumed_predictions_are_byte_identical(stores, tmp_path):
    """Before: reused folds came back from CSV as float64 and printed differently from fresh
    float32 logits."""
    a, _ = stores
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    cfg = dict(fusion="late", granularity="F+W", text=False, repeats=1, epochs=3)
    run_train(quick(a, whole, **cfg))
    run_train(quick(a, resumed, **cfg))
    for victim in ("r0_s2",):  # as if killed before this fold finished
        os.remove(resumed / "runs" / victim / "metrics.json")
    (resumed / "predictions.csv").unlink()
    run_train(quick(a, resumed, **cfg))
    assert (whole / "predictions.csv").read_bytes() == (resumed / "predictions.csv").read_bytes()
    for d in os.listdir(whole / "runs"):
        assert (whole / "runs" / d / "predictions.csv").read_bytes() == \
            (resumed / "runs" / d / "predictions.csv").read_bytes()
    assert not list(resumed.rglob("*.tmp"))


def test_a_run_scored_under_the_older_f1_is_scored_again_when_read(stores, tmp_path, caplog):
    """Runs written before macro-F1 counted only the classes present (no metrics_version in their
    files) were reused by train-head and ablate with their old F1 printed as today's, and a resumed
    run averaged the two definitions. Reading such a run scores it again from its predictions."""
    common = dict(store=str(stores[0]), fusion="none", granularity="F", repeats=1, epochs=2, patience=2,
                  device="cpu")
    today = run_train(TrainConfig(out=str(tmp_path / "today"), **common))
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "today", old)
    # as an older emofuse wrote it: no version, and another F1 in every file
    for path in [old / "summary.json"] + sorted(old.glob("runs/*/metrics.json")):
        d = json.loads(path.read_text())
        d.pop("metrics_version")
        for run in d.get("runs", [d]):
            run["f1"] = 1.0
        if "runs" in d:
            d["f1"] = {"mean": 1.0, "std": 0.0, "n": d["f1"]["n"]}
        path.write_text(json.dumps(d))
    got = rundir.read_summary(str(old))
    assert got["f1"] == today["f1"] and [r["f1"] for r in got["runs"]] == [r["f1"] for r in today["runs"]]
    # train-head reusing the old run (every fold finished, or one fold left to run) reports today's F1
    again = run_train(TrainConfig(out=str(old), **common))
    assert again["f1"] == today["f1"]
    shutil.rmtree(sorted(old.glob("runs/*"))[-1])
    (old / "summary.json").unlink()
    assert run_train(TrainConfig(out=str(old), **common))["f1"] == today["f1"]


def test_second_process_on_the_same_out_gets_one_sentence(stores, tmp_path):
    a, _ = stores
    out = tmp_path / "run"
    with rundir.run_lock(str(out)):
        with pytest.raises(EmofuseError, match=rf"{out} is in use: process {os.getpid()} on \S+ is running train-head "
                                               rf"there \(it holds {out}/run.lock\); wait for it to finish or choose"):
            run_train(quick(a, out))
        r = subprocess.run([sys.executable, "-m", "emofuse", "train-head", "--store", str(a), "--out", str(out),
                            "--fusion", "none", "--granularity", "W", "--epochs", "1", "--device", "cpu"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "is in use" in r.stderr
    run_train(quick(a, out))  # released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from emofuse.pipelines.rundir import run_lock\n"
                              "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(EmofuseError, match=f"process {child.pid} "):
        with rundir.run_lock(str(out)):
            pass
    child.send_signal(signal.SIGKILL)
    child.wait()
    with rundir.run_lock(str(out)):  # the kernel dropped the dead holder's lock
        assert (out / "run.lock").read_text().split()[0] == str(os.getpid())


def test_lock_without_flock_takes_over_a_dead_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    out = tmp_path / "run"
    out.mkdir()
    with rundir.run_lock(str(out)):
        with pytest.raises(EmofuseError, match="is in use"):
            with rundir.run_lock(str(out)):
                pass
    assert not (out / "run.lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "run.lock").write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")
    with rundir.run_lock(str(out)):
        assert (out / "run.lock").read_text().split()[0] == str(os.getpid())
    (out / "run.lock").write_text("4242 some-other-host\n")   # another host's process cannot be checked from here
    with pytest.raises(EmofuseError, match="is in use: process 4242 on some-other-host is running"):
        with rundir.run_lock(str(out)):
            pass


@pytest.mark.parametrize("kind", ["folder", "dangling symlink"])
def test_lock_path_that_is_not_a_file_is_one_sentence(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    if kind == "folder":
        (out / "run.lock").mkdir()
        match = "is a folder; expected a plain file: remove it"
    else:
        os.symlink(tmp_path / "nowhere" / "x", out / "run.lock")
        match = r"is a symbolic link \(to .*nowhere/x\); expected a plain file: remove it"
    with pytest.raises(EmofuseError, match=rf"the run's lock file {out}/run.lock {match}"):
        with rundir.run_lock(str(out)):
            pass


def test_temporary_names_are_unique_and_cleaned_on_failure(tmp_path):
    target = str(tmp_path / "x.json")
    names = {rundir.tmp_name(target) for _ in range(100)}
    assert len(names) == 100 and all(f".{os.getpid()}." in n and n.endswith(".tmp") for n in names)
    with pytest.raises(TypeError):
        rundir.write_json(target, {"bad": object()})
    assert os.listdir(tmp_path) == []
    rundir.write_json(target, {"ok": 1})
    assert json.loads(Path(target).read_text()) == {"ok": 1} and os.listdir(tmp_path) == ["x.json"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ablate_workers_die_with_their_parent(stores, tmp_path):
    """Before: SIGKILL of `ablate --jobs 2` left its workers training as orphans."""
    a, _ = stores
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 50, epochs: 100, patience: 100}\ntables:\n  - name: x\n    rows:\n"
                    "      - {label: W, fusion: none, granularity: W}\n      - {label: F, fusion: none, granularity: F}\n")
    out = tmp_path / "grid"
    parent = subprocess.Popen([sys.executable, "-m", "emofuse", "ablate", "--store", str(a), "--spec", str(spec),
                               "--out", str(out), "--device", "cpu", "--jobs", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2 and parent.poll() is None:
        locks = list((out / "runs").glob("*/run.lock")) if (out / "runs").exists() else []
        workers = [int(p.read_text().split()[0]) for p in locks if p.read_text().strip()]
        time.sleep(0.1)
    assert len(workers) == 2 and parent.poll() is None, "the workers did not start"
    assert all(_alive(w) for w in workers)
    parent.send_signal(signal.SIGKILL)
    assert parent.wait() == -signal.SIGKILL, "the grid ended before the kill landed"
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "orphaned ablate workers kept running"


@pytest.mark.parametrize("flock", [True, False])
def test_lock_file_removed_after_a_clean_run_and_an_unused_new_folder_too(tmp_path, monkeypatch, flock):
    if not flock:
        monkeypatch.setattr(locks, "fcntl", None)
    out = tmp_path / "run"
    with rundir.run_lock(str(out)):
        assert (out / "run.lock").exists()
    assert not out.exists()                     # created by the lock, nothing written: removed again
    with rundir.run_lock(str(out)):
        (out / "config.json").write_text("{}")
    assert os.listdir(out) == ["config.json"]   # the lock file is gone, the run's files stay
    with rundir.run_lock(str(out)):             # and the next run takes the lock again
        pass
    assert os.listdir(out) == ["config.json"]


def test_a_run_recorded_under_an_older_spelling_of_its_configuration_resumes(tmp_path):
    """Run keys now read one configuration spelt several ways as one (S+F = s+f, a checkpoint
    folder by its bytes). A run folder recorded before, under the older spelling, resumes: its
    recorded configuration is read the way this version keys it. Another configuration is still
    refused."""
    import json
    from dataclasses import asdict, replace

    from emofuse.errors import EmofuseError
    from emofuse.pipelines.rundir import check_run_dir
    from emofuse.pipelines.train import TrainConfig
    cfg = TrainConfig(store="s.h5", out=str(tmp_path), fusion="late", granularity="s+f", text=True, folds=("2", "1"))
    older = {**cfg.identity(), "granularity": "s+f", "text": True, "folds": ["2", "1"]}   # as recorded before
    fps = {"corpus": "c"}
    (tmp_path / "config.json").write_text(json.dumps({"type": "emofuse.train-head", "identity": older,
                                                      "fingerprints": fps, "config": asdict(cfg)}))
    now = {"type": "emofuse.train-head", "identity": json.loads(json.dumps(cfg.identity())), "fingerprints": fps}
    with pytest.raises(EmofuseError, match=r"differs in folds, granularity, text"):
        check_run_dir(str(tmp_path), now)
    check_run_dir(str(tmp_path), now, lambda c: TrainConfig(**c).identity())   # the same configuration: resumes
    other = replace(cfg, lr=0.5)
    with pytest.raises(EmofuseError, match=r"differs in lr"):
        check_run_dir(str(tmp_path), {**now, "identity": json.loads(json.dumps(other.identity()))},
                      lambda c: TrainConfig(**c).identity())
