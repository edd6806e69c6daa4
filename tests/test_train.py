"""train-head on synthetic stores with a planted label: learning, layer weights, protocol,
reproducibility, reuse, score combination, bad input."""

import json
import logging
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from emofuse.cli import train_head
from emofuse.errors import EmofuseError
from emofuse.pipelines.data import load_train_data, parse_layers
from emofuse.pipelines.combine import run_combine
from emofuse.pipelines.protocol import split
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore
from emofuse.testing.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "s.h5"
    facts = make_synthetic_store(path, per_class=8, layers=5, dim=16, planted_layer=3, strength=1.0,
                                 mean_seconds=1.5, empty_word_ids=3, seed=0)
    return str(path), facts


def quick(store, out, **kw):
    base = dict(store=store, out=str(out), repeats=1, epochs=30, patience=5, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_planted_layer_is_learned_and_weighted(planted, tmp_path):
    store, _ = planted
    s = run_train(quick(store, tmp_path / "run", fusion="none", granularity="F"))
    assert s["ua"]["mean"] >= 95.0 and s["ua"]["n"] == 5
    for r in s["runs"]:
        w = r["layer_weights"]["F"]
        assert int(np.argmax(w)) == 3, f"fold {r['fold']}: layer weights {w} do not peak at the planted layer"
    # every artefact a run promises
    assert {"config.json", "summary.json", "predictions.csv", "runs"} <= set(os.listdir(tmp_path / "run"))
    rdir = tmp_path / "run" / "runs" / "r0_s1"
    assert {"metrics.json", "model.safetensors", "predictions.csv"} <= set(os.listdir(rdir))
    m = json.loads((rdir / "metrics.json").read_text())
    assert np.array(m["confusion"]).sum() == m["n_test"] and m["history"] and 0 <= m["best_epoch"] < m["epochs"]
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(preds) == 160 and {"logit_ang", "logit_sad"} <= set(preds.columns)


def test_text_planted_store_learns_from_text_not_audio(tmp_path):
    path = tmp_path / "t.h5"
    make_synthetic_store(path, per_class=6, layers=3, dim=8, planted_stream="text", planted_layer=1, strength=1.5,
                         mean_seconds=1.0, seed=2)
    text = run_train(quick(str(path), tmp_path / "t", fusion="none", granularity="T", epochs=30))
    audio = run_train(quick(str(path), tmp_path / "a", fusion="none", granularity="F", epochs=5))
    assert text["ua"]["mean"] >= 95.0 and audio["ua"]["mean"] < 60.0


def test_same_config_same_seed_identical_metrics(planted, tmp_path):
    store, _ = planted
    cfg = dict(fusion="late", granularity="F+S", epochs=4, folds=("1", "3"), repeats=2)
    a = run_train(quick(store, tmp_path / "a", **cfg))
    b = run_train(quick(store, tmp_path / "b", **cfg))
    assert a["runs"] == b["runs"] and len(a["runs"]) == 4
    # every run's own record too, its training curve included (less the wall-clock seconds per epoch)
    for run in os.listdir(tmp_path / "a" / "runs"):
        ma, mb = (json.loads((tmp_path / d / "runs" / run / "metrics.json").read_text()) for d in "ab")
        for m in (ma, mb):
            assert m["history"] and all(h.pop("seconds") >= 0 for h in m["history"])
        assert ma == mb, run
    pa, pb = (pd.read_csv(tmp_path / d / "predictions.csv") for d in "ab")
    pd.testing.assert_frame_equal(pa, pb)


def test_a_fold_trained_alone_equals_the_same_fold_of_a_full_run(planted, tmp_path):
    """A run's initialisation, dropout and batch order depend on (seed, test session) only: the
    fold picked with --folds gives the numbers it gives in a run of every fold."""
    store, _ = planted
    cfg = dict(fusion="none", granularity="F", epochs=2, repeats=1, seed=4)
    full = run_train(quick(store, tmp_path / "full", **cfg))
    alone = run_train(quick(store, tmp_path / "alone", folds=("3",), **cfg))
    pick = lambda s: [r for r in s["runs"] if r["fold"] == "3"]  # noqa: E731
    assert len(pick(alone)) == 1 and pick(alone) == pick(full)
    pf = pd.read_csv(tmp_path / "full" / "predictions.csv", dtype={"fold": str})
    pa = pd.read_csv(tmp_path / "alone" / "predictions.csv", dtype={"fold": str})
    pd.testing.assert_frame_equal(pf[pf.fold == "3"].reset_index(drop=True), pa.reset_index(drop=True))


def test_protocol_folds_and_validation(planted):
    store, facts = planted
    with FeatureStore(store) as fs:
        data = load_train_data(fs, ["F"], "audio", "text")
    tr, va, te = split(data, "2", seed=0, val_fraction=0.1)
    assert set(data.sessions[te]) == {"2"} and "2" not in set(data.sessions[np.concatenate([tr, va])])
    assert len(set(tr) & set(va)) == 0 and len(va) == round(0.1 * (len(tr) + len(va)))
    tr2, va2, _ = split(data, "2", seed=1, val_fraction=0.1)
    assert set(va2) != set(va)                      # each repeat draws its own validation set


def test_segments_missing_for_some_utterances_are_masked_and_counted(planted, tmp_path):
    store, facts = planted
    s = run_train(quick(store, tmp_path / "w", fusion="late", granularity="F+W", epochs=2, folds=("1",)))
    assert s["empty_segments"] == {"W": 3} and s["data"]["utterances"] == 160


def test_reading_only_needed_layers_and_streaming_equals_memory(planted, tmp_path):
    store, _ = planted
    with FeatureStore(store) as fs:
        mem = load_train_data(fs, ["F", "T"], "audio", "text", layers="2-3")
        streamed = load_train_data(fs, ["F", "T"], "audio", "text", layers="2-3", memory_budget=0)
        assert mem.in_memory and not streamed.in_memory and mem.dims == {"F": (2, 16), "T": (2, 16)}
        import torch
        idx = np.array([5, 0, 17])
        for k in ("F", "T"):
            a, b = mem.batch(idx, torch.device("cpu"))[k], streamed.batch(idx, torch.device("cpu"))[k]
            a, b = (a[0].materialise(), a[1]), (b[0].materialise(), b[1])
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            expect = np.concatenate([fs.frames("audio", mem.ids[i])[:, 2:4] if k == "F" else
                                     fs.tokens("text", mem.ids[i]).values[:, 2:4] for i in idx])
            assert np.array_equal(a[0].numpy(), expect.astype(np.float32))
    assert parse_layers("last", 13) == [12] and parse_layers("0,4,8", 13) == [0, 4, 8]
    with pytest.raises(EmofuseError, match="do not exist"):
        parse_layers("0-13", 13)


@pytest.mark.parametrize("norm", ["global", "speaker"])
def test_normalisation_options_train(planted, tmp_path, norm):
    store, _ = planted
    s = run_train(quick(store, tmp_path / norm, fusion="none", granularity="F", norm=norm, epochs=10,
                        folds=("1", "2")))
    assert s["ua"]["mean"] >= 90.0


def test_finished_runs_are_reused_and_other_configs_refused(planted, tmp_path, caplog):
    store, _ = planted
    out = tmp_path / "run"
    run_train(quick(store, out, fusion="none", granularity="F", epochs=2, folds=("1",)))
    stamp = os.path.getmtime(out / "runs" / "r0_s1" / "model.safetensors")
    caplog.set_level(logging.INFO, "emofuse")
    s = run_train(quick(store, out, fusion="none", granularity="F", epochs=2, folds=("1",)))
    assert os.path.getmtime(out / "runs" / "r0_s1" / "model.safetensors") == stamp and s["ua"]["n"] == 1
    assert f"1 of the 1 runs already finished in {out} are reused; nothing to train" in caplog.text   # said
    with pytest.raises(EmofuseError, match="another configuration .*epochs"):
        run_train(quick(store, out, fusion="none", granularity="F", epochs=3, folds=("1",)))


def test_score_combination_averages_logits_and_refuses_mismatched_runs(planted, tmp_path):
    store, _ = planted
    kw = dict(epochs=3, folds=("1", "2"))
    a = tmp_path / "a"
    b = tmp_path / "b"
    run_train(quick(store, a, fusion="none", granularity="F", **kw))
    run_train(quick(store, b, fusion="late", granularity="S", text=True, **kw))
    s = run_combine([str(a), str(b)], str(tmp_path / "c"))
    pa, pb, pc = (pd.read_csv(tmp_path / d / "predictions.csv").sort_values(["fold", "id"]) for d in "abc")
    cols = [c for c in pa.columns if c.startswith("logit_")]
    assert np.allclose(pc[cols].to_numpy(), (pa[cols].to_numpy() + pb[cols].to_numpy()) / 2)
    assert s["ua"]["n"] == 2
    run_train(quick(store, tmp_path / "d", fusion="none", granularity="F", epochs=3, folds=("1", "2"), seed=7))
    with pytest.raises(EmofuseError, match="do not share folds, seeds"):
        run_combine([str(a), str(tmp_path / "d")], str(tmp_path / "e"))
    # an --out holding a finished run, one of the members, or another combination is never overwritten
    before = {d: (tmp_path / d / "summary.json").read_bytes() for d in "abcd"}
    with pytest.raises(EmofuseError, match="holds a run of another configuration"):
        run_combine([str(a), str(b)], str(tmp_path / "d"))
    with pytest.raises(EmofuseError, match="is one of the runs to combine"):
        run_combine([str(a), str(b)], str(a))
    with pytest.raises(EmofuseError, match="holds a run of another configuration"):
        run_combine([str(b), str(a)], str(tmp_path / "c"))
    assert before == {d: (tmp_path / d / "summary.json").read_bytes() for d in "abcd"}
    assert run_combine([str(a), str(b)], str(tmp_path / "c"))["ua"] == s["ua"]   # the same combination again


def test_bad_input_one_sentence(tmp_path, capsys):
    path = tmp_path / "s.h5"
    make_synthetic_store(path, per_class=2, layers=2, dim=4, planted_layer=1, mean_seconds=1.0)
    # a store whose audio stream has no syllable segments, and no text stream
    from emofuse.store import StoreWriter
    with FeatureStore(path) as fs:
        table = fs.utterances.reset_index()
        frames = {i: {"data": fs.frames("audio", i)} for i in fs.ids("audio")}
    other = tmp_path / "o.h5"
    with StoreWriter(other, table, {"kind": "synthetic"}) as w:
        w.add_stream("audio", {"fingerprint": "x"})
        w.commit("audio", {"frames": frames})
        w.finalize()
    assert train_head(["--store", str(other), "--out", str(tmp_path / "r"), "--fusion", "none",
                       "--granularity", "S"]) == 2
    err = capsys.readouterr().err
    assert "no syllable segments" in err and "align-segments --store" in err and "audio: frames" in err
    assert train_head(["--store", str(other), "--out", str(tmp_path / "r2"), "--fusion", "late",
                       "--granularity", "F"]) == 2
    err = capsys.readouterr().err
    assert "no text tokens" in err and "extract-embeddings" in err
    assert train_head(["--store", str(path), "--out", str(tmp_path / "r3"), "--fusion", "cma",
                       "--granularity", "F+S"]) == 2
    assert "exactly one speech granularity" in capsys.readouterr().err
    assert train_head(["--store", str(path), "--out", str(tmp_path / "r4"), "--granularity", "F+X"]) == 2
    assert "--granularity must be" in capsys.readouterr().err


@pytest.mark.parametrize("fusion,gran,head", [("none", "T", "transformer"), ("concat", "F", "linear"),
                                              ("coattention", "F+P", "linear"), ("cma", "F", "linear")])
def test_every_fusion_runs_end_to_end(planted, tmp_path, fusion, gran, head):
    store, _ = planted
    s = run_train(quick(store, tmp_path / fusion, fusion=fusion, granularity=gran, head=head, epochs=2,
                        folds=("1",)))
    assert s["ua"]["n"] == 1
    assert_scores_match_predictions(s, tmp_path / fusion)


def assert_scores_match_predictions(summary, run_dir):
    """The summary's UA and WA are what its own predictions give, recomputed here without sklearn:
    UA the mean of the per-class recalls, WA the accuracy (percent)."""
    p = pd.read_csv(run_dir / "predictions.csv")
    recalls = [(g["pred"] == label).mean() for label, g in p.groupby("label")]
    assert len(p) > 0 and len(recalls) >= 2
    assert summary["ua"]["mean"] == pytest.approx(100 * np.mean(recalls), abs=1e-9)
    assert summary["wa"]["mean"] == pytest.approx(100 * (p["pred"] == p["label"]).mean(), abs=1e-9)


def test_free_memory_is_measured_without_proc_meminfo(monkeypatch):
    """Before: free memory came from /proc/meminfo alone, so on macOS (no /proc) every run
    assumed 8 GiB whatever the machine had. Now the OS is asked through os.sysconf."""
    import builtins

    from emofuse.pipelines import data as d
    real_open = builtins.open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)
    monkeypatch.setattr(builtins, "open", no_proc)
    pages = {"SC_PAGE_SIZE": 16384, "SC_AVPHYS_PAGES": 3 << 18, "SC_PHYS_PAGES": 1 << 20}
    monkeypatch.setattr(d.os, "sysconf", lambda name: pages[name])
    assert d.available_memory() == 16384 * (3 << 18)          # free pages (12 GiB), not a fixed guess
    del pages["SC_AVPHYS_PAGES"]                              # macOS: sysconf has no free-page count

    def macos(name):
        if name not in pages:
            raise ValueError(f"unrecognized configuration name {name!r}")
        return pages[name]
    monkeypatch.setattr(d.os, "sysconf", macos)
    assert d.available_memory() == 16384 * (1 << 20) // 2     # half of the 16 GiB installed


def test_macro_f1_averages_the_classes_that_occur_as_ua_does():
    """Before: a class absent from a test fold (a speaker or session without 'sad', common with
    manifest corpora) counted as an F1 of 0: a perfect fold read UA 100, WA 100, F1 75."""
    from sklearn.metrics import f1_score

    from emofuse.pipelines.metrics import scores
    y = np.array([0, 0, 1, 1, 2, 2])
    s = scores(y, y, 4)
    assert (s["ua"], s["wa"], s["f1"]) == (100.0, 100.0, 100.0)
    assert s["confusion"][3] == [0, 0, 0, 0] and len(s["confusion"]) == 4   # the matrix keeps every class
    pred = np.array([0, 3, 1, 1, 2, 0])   # a class predicted that the fold does not hold counts (F1 0)
    assert scores(y, pred, 4)["f1"] == pytest.approx(100 * f1_score(y, pred, average="macro"))


@pytest.mark.parametrize("lr", [-1.0, 0.0])
def test_a_learning_rate_that_cannot_train_is_one_sentence(tmp_path, lr):
    """Before: --lr -1 was torch's traceback after config.json was written, and --lr 0 'trained'
    and reported the initial weights as a result."""
    with pytest.raises(EmofuseError, match=f"--lr must be a positive learning rate, found {lr}"):
        TrainConfig(store="s.h5", out=str(tmp_path / "o"), lr=lr)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("at_once", [1, 0])
def test_a_diverged_run_is_refused_not_scored_as_chance(tmp_path, at_once):
    """Before: a run whose validation loss was NaN from its first epoch kept that epoch; its NaN
    logits argmax'ed to the first class, and UA 25 / F1 10 went into summary.json and the tables
    without a word (one at a time and stacked alike)."""
    path = tmp_path / "s.h5"
    make_synthetic_store(path, per_class=3, layers=3, dim=8, planted_layer=1)
    out = tmp_path / "o"
    with pytest.raises(EmofuseError, match=r"repeat 0, test session 1 diverged: its validation loss was not finite from "
                                           r"its first epoch \(learning rate 1e\+36\); lower --lr"):
        run_train(TrainConfig(store=str(path), out=str(out), fusion="none", granularity="F", lr=1e36, epochs=3,
                              patience=2, repeats=1, device="cpu", runs_at_once=at_once))
    assert not list(out.glob("runs/*/*/metrics.json")) and not (out / "summary.json").exists()


def test_a_run_diverging_after_its_best_epoch_keeps_that_epoch_and_says_so(caplog):
    from emofuse.pipelines.protocol import check_trained, epoch_score
    assert epoch_score(50.0, float("nan")) < epoch_score(0.0, 9.0) and epoch_score(50.0, float("inf")) == (-1.0, -np.inf)
    history = [{"epoch": 0, "val_loss": 1.0, "lr": 0.1}, {"epoch": 1, "val_loss": float("nan"), "lr": 0.1}]
    with caplog.at_level("WARNING", logger="emofuse"):
        check_trained("run x", 0, history, np.zeros((2, 4)))
    assert "run x diverged at epoch 1 (validation loss not finite) (learning rate 0.1); its best epoch before, 0, is " \
           "kept" in caplog.text
    with pytest.raises(EmofuseError, match=r"test logits that are not finite: the head overflowed \(its inputs are "
                                           r"checked when read\) \(learning rate 0.1\); lower --lr\. Nothing"):
        check_trained("run x", 0, history, np.array([[np.nan, 0.0]]))
    with pytest.raises(EmofuseError, match=r"not finite: the model overflowed \(learning rate 0.1\); lower --lr, or "
                                           r"train without --bf16\."):   # fine-tuned: no checked inputs; --bf16 on
        check_trained("run x", 0, history, np.array([[np.inf, 0.0]]), model="model", bf16=True)


def test_a_diverged_run_kept_before_is_trained_again_and_refused_in_tables(tmp_path, caplog):
    """Runs that diverged before such runs were refused hold NaN logits (empty cells): a resumed
    train-head trains the fold again (here it diverges again, and is refused with the reason), and
    ablate's tables refuse the row rather than print its chance-level UA."""
    from emofuse.pipelines.ablate import _test_set
    from emofuse.pipelines.rundir import read_predictions
    path = tmp_path / "s.h5"
    make_synthetic_store(path, per_class=3, layers=3, dim=8, planted_layer=1)
    out = tmp_path / "o"
    cfg = TrainConfig(store=str(path), out=str(out), fusion="none", granularity="F", epochs=2, repeats=1, device="cpu",
                      folds=("1",))
    run_train(cfg)
    pred = out / "runs" / "r0_s1" / "predictions.csv"
    for f in (pred, out / "predictions.csv"):   # the fold's, and the run's (tables read it)
        df = read_predictions(f)
        df[[c for c in df.columns if c.startswith("logit_")]] = np.nan
        df.to_csv(f, index=False)
    assert read_predictions(pred)["logit_ang"].isna().all()   # empty cells read as NaN, not as text
    with pytest.raises(EmofuseError, match=r"row 'x': .* holds a run that diverged"):
        _test_set(str(out), ["ang"], {}, "x")
    from emofuse.pipelines.predict import export_run
    from emofuse.pipelines.report import run_report
    for refused in (lambda: run_report(str(out)), lambda: export_run(str(out), str(tmp_path / "exp"))):
        with pytest.raises(EmofuseError, match=r"holds a run that diverged \(logits that are not numbers"):
            refused()
    with caplog.at_level("WARNING", logger="emofuse"):
        run_train(cfg)   # trained again: the same configuration trains to finite logits here
    assert "a run that diverged (logits that are not numbers), kept before emofuse refused such runs; it is trained " \
           "again" in caplog.text
    assert not read_predictions(pred)["logit_ang"].isna().any()


def test_speaker_norm_refuses_utterances_without_a_speaker(planted, monkeypatch, tmp_path):
    """Before: a corpus with blank speaker cells (a manifest whose speaker column is empty) made
    one 'speaker' of every such utterance across all sessions, so --norm speaker standardised the
    training rows with statistics of the test session, without a word (found by an audit)."""
    import emofuse.pipelines.train as train_mod
    path, _ = planted
    real = train_mod.load_train_data

    def blank_some(*a, **kw):
        data = real(*a, **kw)
        speakers = data.speakers.copy()
        speakers[[0, 5]] = ["", "nan"]
        return replace(data, speakers=speakers)
    monkeypatch.setattr(train_mod, "load_train_data", blank_some)
    with pytest.raises(EmofuseError, match=r"--norm speaker: 2 of \d+ utterances have no speaker \(ids \S+, \S+\); "
                                           r"together they would be one 'speaker' across every session"):
        run_train(quick(path, tmp_path / "r", norm="speaker", epochs=1, folds=("1",)))
    run_train(quick(path, tmp_path / "g", norm="global", epochs=1, folds=("1",)))   # global never reads speakers


def test_fusion_none_with_two_streams_suggests_what_helps():
    """Before: F+S with --fusion none suggested --no-text, which does not help (two speech streams)."""
    with pytest.raises(EmofuseError, match=r"F\+S needs --fusion late \(or one granularity\)$"):
        TrainConfig(store="s.h5", out="o", fusion="none", granularity="F+S").keys()
    with pytest.raises(EmofuseError, match=r"F\+T needs --fusion late \(or --no-text\)$"):
        TrainConfig(store="s.h5", out="o", fusion="none", granularity="F", text=True).keys()
    with pytest.raises(EmofuseError, match=r"F\+S\+T needs --fusion late \(or one granularity and --no-text\)$"):
        TrainConfig(store="s.h5", out="o", fusion="none", granularity="F+S", text=True).keys()
