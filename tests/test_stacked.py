"""Stacked training (train-head --runs-at-once): every head that stacks trains run for run as it
trains alone (same initial weights, batches and dropout masks; losses equal to float rounding),
a run's numbers do not depend on which runs share its pass, and the run directory is the one the
one-at-a-time path writes."""

import logging
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from emofuse.heads.stacked import stackable
from emofuse.pipelines.data import fit_normaliser, load_train_data
from emofuse.pipelines.stacked import Job, train_stacked
from emofuse.pipelines.loop import Timer, _predict, train_one
from emofuse.pipelines.protocol import run_seed, split
from emofuse.pipelines.train import TrainConfig, run_train, with_store_defaults
from emofuse.store import FeatureStore
from emofuse.testing.synthetic import make_synthetic_store
from emofuse.testing import logged_messages

#: float tolerance of a stacked run against the same run alone on a CPU: batched matrix products
#: over padded batches sum in another order (measured: ≤ 4e-7 on losses after 4 epochs)
TOL = 1e-5

HEADS = {
    "linear": dict(fusion="none", granularity="F"),
    "late": dict(fusion="late", granularity="F+S"),
    # the GPU's way: every run's layer sum from one read, first layer on padded batches; normalised
    "late-gpu-way": dict(fusion="late", granularity="F+S", norm="global", norm_streams="all"),
    "coattention-gpu-way": dict(fusion="coattention", granularity="F+P", heads=2, depth=1, ff=16, norm="speaker"),
    "single-layer": dict(fusion="none", granularity="F", weighting="none", layers="last"),
    "concat": dict(fusion="concat", granularity="F"),
    "transformer": dict(fusion="late", granularity="F", head="transformer", heads=2, depth=1, ff=16),
    "coattention": dict(fusion="coattention", granularity="F+P", heads=2, depth=1, ff=16),
    # attention through scaled_dot_product_attention (the GPU's way), each run's dropout at its own
    # shape from its own generator: on a CPU the masks the lone head's attention draws
    "transformer-fused": dict(fusion="late", granularity="F", head="transformer", heads=2, depth=2, ff=16),
    "coattention-fused": dict(fusion="coattention", granularity="F+P", heads=2, depth=1, ff=16),
    # length-grouped batches (--group-by-length): every run's batches grouped as alone
    "transformer-grouped": dict(fusion="late", granularity="F+W", head="transformer", heads=2, depth=1, ff=16,
                                group_by_length=True, batch_size=4),
    "proj-stats": dict(fusion="none", granularity="T", head="proj-stats", proj=8, scheduler="plateau",
                       lr=1e-2, lr_patience=0),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stacked") / "s.h5"
    make_synthetic_store(path, per_class=3, layers=3, dim=8, planted_layer=1, strength=1.0, mean_seconds=0.8,
                         empty_word_ids=2, seed=3)
    return str(path)


def _resolved(**kw) -> TrainConfig:
    """A config as run_train resolves it: --norm from the store's streams when not given."""
    cfg = TrainConfig(**kw)
    with FeatureStore(cfg.store) as fs:
        return with_store_defaults(fs, cfg)


def _data(store, cfg):
    with FeatureStore(store) as fs:
        return load_train_data(fs, cfg.keys(), cfg.audio_stream, cfg.text_stream, cfg.layer_specs())


def _jobs(data, cfg, folds, seeds=(0,)):
    out = []
    for seed in seeds:
        for f in folds:
            tr, va, _ = split(data, f, seed, cfg.val_fraction)
            norm = fit_normaliser(data, cfg.norm, np.sort(np.concatenate([tr, va])), cfg.norm_keys())
            out.append(Job(key=(seed, f), seed=run_seed(data, seed, f), train=tr, val=va, norm=norm))
    return out


def _stacked(cfg, data, jobs, gpu_way=False, fused=None):
    got = {}
    train_stacked(cfg, data, jobs, torch.device("cpu"), Timer(),
                  lambda j, m, h, b: got.__setitem__(j.key, (m, h, b)),
                  packed_first=False if gpu_way else None, batched_encode=gpu_way, fused_attention=fused)
    return got


def _test_logits(model, data, fold, norm=None):
    te = np.flatnonzero(data.sessions == fold)
    return _predict(model, data, te, torch.device("cpu"), norm, Timer())


def _same_run(a, b, data, fold, norm=None):
    (ma, ha, ba), (mb, hb, bb) = a, b
    assert len(ha) == len(hb) and ba == bb
    for x, y in zip(ha, hb):
        assert x["val_ua"] == y["val_ua"] and x["lr"] == y["lr"]
        assert abs(x["val_loss"] - y["val_loss"]) < TOL and abs(x["train_loss"] - y["train_loss"]) < TOL
    la, lb = _test_logits(ma, data, fold, norm), _test_logits(mb, data, fold, norm)
    np.testing.assert_allclose(la, lb, atol=TOL)
    assert (la.argmax(1) == lb.argmax(1)).all()


@pytest.mark.parametrize("name", list(HEADS))
def test_stacked_runs_equal_runs_trained_alone(store, tmp_path, name):
    cfg = _resolved(store=store, out=str(tmp_path), epochs=3, patience=1, **HEADS[name])
    assert stackable(cfg.fusion, cfg.head)
    data = _data(store, cfg)
    jobs = _jobs(data, cfg, ("1", "4"), seeds=(0, 1) if name == "late" else (0,))
    got = _stacked(cfg, data, jobs, gpu_way=name.endswith("-gpu-way"), fused=name.endswith("-fused") or None)
    for j in jobs:
        alone = train_one(cfg, data, j.train, j.val, j.seed, torch.device("cpu"), j.norm, Timer())
        _same_run(got[j.key], alone, data, j.key[1], j.norm)


@pytest.mark.parametrize("name", ["proj-stats", "single-layer"])
def test_runs_that_stop_at_different_epochs_leave_the_stack_and_the_rest_go_on(store, tmp_path, name):
    """Early stopping ends runs at different epochs (the normal case at patience 10): a run that
    stopped leaves the stack and the others train on, run for run as one at a time."""
    kw = dict(store=store, epochs=8, patience=1, repeats=2, folds=("1", "3", "4"), device="cpu", **HEADS[name])
    stacked = run_train(TrainConfig(out=str(tmp_path / "stacked"), runs_at_once=0, **kw))
    alone = run_train(TrainConfig(out=str(tmp_path / "alone"), runs_at_once=1, **kw))
    epochs = [r["epochs"] for r in stacked["runs"]]
    assert len(set(epochs)) > 1 and min(epochs) < 8   # some runs stopped while others went on
    assert epochs == [r["epochs"] for r in alone["runs"]]
    assert [r["best_epoch"] for r in stacked["runs"]] == [r["best_epoch"] for r in alone["runs"]]
    for a, b in zip(stacked["runs"], alone["runs"]):
        assert abs(a["ua"] - b["ua"]) < 1e-9
    # each fold records how many runs shared its pass (a resumed configuration may mix them)
    assert [r["runs_at_once"] for r in stacked["runs"]] == [6] * 6
    assert [r["runs_at_once"] for r in alone["runs"]] == [1] * 6


def test_a_run_does_not_depend_on_its_companions(store, tmp_path):
    cfg = _resolved(store=store, out=str(tmp_path), epochs=3, patience=1, **HEADS["coattention"])
    data = _data(store, cfg)
    crowd = _stacked(cfg, data, _jobs(data, cfg, ("1", "2", "3", "5"), seeds=(0, 2)))
    alone = _stacked(cfg, data, _jobs(data, cfg, ("3",), seeds=(2,)))
    _same_run(crowd[(2, "3")], alone[(2, "3")], data, "3")


def test_fused_attention_a_run_does_not_depend_on_its_companions(store, tmp_path):
    """The GPU's attention path, forced on a CPU: a run's masks come from its own generator at its
    own shapes, whatever the batches and sequence lengths of the runs beside it."""
    cfg = _resolved(store=store, out=str(tmp_path), epochs=3, patience=1, **HEADS["transformer-fused"])
    data = _data(store, cfg)
    crowd = _stacked(cfg, data, _jobs(data, cfg, ("1", "2", "3", "5"), seeds=(0, 2)), fused=True)
    alone = _stacked(cfg, data, _jobs(data, cfg, ("3",), seeds=(2,)), fused=True)
    _same_run(crowd[(2, "3")], alone[(2, "3")], data, "3")


def test_a_stacked_group_out_of_memory_is_one_sentence_and_keeps_finished_runs(store, tmp_path, monkeypatch):
    import emofuse.pipelines.train as train_mod
    from emofuse.errors import EmofuseError

    kw = dict(store=store, fusion="late", granularity="F", epochs=2, patience=2, repeats=1, folds=("2", "3", "4", "5"),
              device="cpu", out=str(tmp_path), runs_at_once=2)
    real = train_mod.train_stacked
    calls = []

    def second_group_runs_out(cfg, data, jobs, *a, **k):
        calls.append(len(jobs))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.80 GiB")
        return real(cfg, data, jobs, *a, **k)

    monkeypatch.setattr(train_mod, "train_stacked", second_group_runs_out)
    with pytest.raises(EmofuseError, match=r"ran out of memory training 2 runs stacked; pass --runs-at-once 1 .*"
                                           r"the 2 finished runs are kept"):
        run_train(TrainConfig(**kw))
    assert sorted(os.listdir(tmp_path / "runs")) == ["r0_s2", "r0_s3"]


def test_run_directory_the_same_files_and_resumed(store, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    kw = dict(store=store, fusion="late", granularity="F+T", epochs=3, patience=2, repeats=2, folds=("2", "3"),
              device="cpu")
    one = run_train(TrainConfig(out=str(tmp_path / "one"), runs_at_once=1, **kw))
    caplog.clear()
    many = run_train(TrainConfig(out=str(tmp_path / "many"), runs_at_once=0, **kw))
    msgs = logged_messages(caplog)
    assert any("4 runs stacked" in m for m in msgs)
    listing = lambda d: sorted(os.path.relpath(os.path.join(p, f), d) for p, _, fs in os.walk(d) for f in fs)  # noqa
    assert listing(tmp_path / "one") == listing(tmp_path / "many")
    assert [r["ua"] for r in one["runs"]] == [r["ua"] for r in many["runs"]]
    a = pd.read_csv(tmp_path / "one" / "predictions.csv", dtype={"fold": str})
    b = pd.read_csv(tmp_path / "many" / "predictions.csv", dtype={"fold": str})
    pd.testing.assert_frame_equal(a.drop(columns=[c for c in a if c.startswith("logit_")]),
                                  b.drop(columns=[c for c in b if c.startswith("logit_")]))
    np.testing.assert_allclose(a.filter(like="logit_").to_numpy(), b.filter(like="logit_").to_numpy(), atol=TOL)
    # resume: two runs lost, trained again (stacked) from the rest; the files equal the uninterrupted run's
    before = {f: (tmp_path / "many" / f).read_bytes() for f in ("predictions.csv", "runs/r1_s3/predictions.csv")}
    for f in ("summary.json", "runs/r1_s3/metrics.json", "runs/r0_s2/metrics.json"):
        os.remove(tmp_path / "many" / f)
    run_train(TrainConfig(out=str(tmp_path / "many"), runs_at_once=0, **kw))
    msgs = logged_messages(caplog)
    assert any("2 runs stacked" in m and "2 finished runs of their groups train again" in m for m in msgs)
    for f, blob in before.items():
        assert (tmp_path / "many" / f).read_bytes() == blob
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["ua"]["n"] == 4


def test_lstm_heads_fall_back_and_say_so(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    assert not stackable("cma", "linear") and not stackable("none", "cnn-blstm")
    caplog.clear()
    s = run_train(TrainConfig(store=store, out=str(tmp_path / "c"), fusion="none", granularity="F", head="cnn-blstm",
                              proj=8, epochs=1, folds=("1", "2"), repeats=1, device="cpu", runs_at_once=0))
    msgs = logged_messages(caplog)
    assert s["ua"]["n"] == 2 and sum("does not stack" in m for m in msgs) == 1


def test_memory_probe_runs_and_leaves_the_runs_random_numbers_alone(store, tmp_path):
    from emofuse.pipelines.stacked import fit_runs, probe_step

    cfg = _resolved(store=store, out=str(tmp_path), **HEADS["coattention"])
    data = _data(store, cfg)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert probe_step(cfg, data, torch.device("cpu")) > 0
    assert torch.equal(torch.get_rng_state(), before)
    assert fit_runs(cfg, data, torch.device("cpu"), 25) == (25, "every run")   # no statistics on a CPU


def test_default_runs_at_once_stacks_attention_heads_only_when_asked():
    """On a GPU the default stacked every stackable head; on an H100 stacked transformer and
    coattention heads ran slower than one at a time, and the frame transformer ran out of memory.
    The default now stacks them only when --runs-at-once asks; a CPU trains one at a time."""
    import torch

    from emofuse.pipelines.train import TrainConfig, runs_at_once
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")   # a device object only: nothing runs on it
    late = TrainConfig(store="s.h5", out="o", fusion="late", granularity="F+S")
    assert runs_at_once(late, gpu, 25) == 25 and runs_at_once(late, cpu, 25) == 1
    for attention in (TrainConfig(store="s.h5", out="o", fusion="none", granularity="F", head="transformer"),
                      TrainConfig(store="s.h5", out="o", fusion="coattention", granularity="F+P")):
        assert runs_at_once(attention, gpu, 25) == 1
        assert runs_at_once(TrainConfig(**{**attention.__dict__, "runs_at_once": 0}), gpu, 25) == 25


def test_batch_runs_gives_each_run_the_batch_it_gets_alone(store, tmp_path):
    """``TrainData.batch_runs`` (one copy per key for every run of a step) hands each run the
    rows, row numbers, normaliser and lengths that ``TrainData.batch`` gives it alone."""
    cfg = _resolved(store=store, out=str(tmp_path), fusion="late", granularity="F+W", norm="speaker",
                    norm_streams="all")
    data = _data(store, cfg)
    jobs = _jobs(data, cfg, ("1", "3"))
    norms = [jobs[0].norm, None]    # one run standardised per speaker, one not
    idxs = [jobs[0].train[:5], jobs[1].train[3:4]]
    for got, idx, norm in zip(data.batch_runs(idxs, torch.device("cpu"), norms), idxs, norms):
        want = data.batch(idx, torch.device("cpu"), norm)
        assert set(got) == set(want)
        for k in want:
            (g, gl), (w, wl) = got[k], want[k]
            assert g.table is w.table and torch.equal(g.index, w.index) and torch.equal(gl, wl)
            for name in ("mean", "std", "group"):
                a, b = getattr(g, name), getattr(w, name)
                assert (a is None and b is None) or torch.equal(a, b.to(a.dtype))
            assert torch.equal(g.materialise(), w.materialise())
