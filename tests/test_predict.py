"""export, load_model, predict and cross-corpus evaluate on a fake corpus with tiny random encoders."""

import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import emofuse
from emofuse.cli import main
from emofuse.errors import EmofuseError
from emofuse.pipelines.extract import ExtractConfig, run_extract
from emofuse.pipelines.predict import export_run, load_model, run_evaluate
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore
from emofuse.testing import make_fake_iemocap

quiet = lambda *_: None  # noqa: E731
COUNTS = {s: {"ang": 2, "hap": 2, "neu": 2, "sad": 2} for s in range(1, 6)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    base = tmp_path_factory.mktemp("predict")
    corpus = make_fake_iemocap(base / "iemo", counts=COUNTS, seconds=0.8, seed=3)
    store = str(base / "s.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(corpus.root), out=store, audio_model=tiny_models["group"],
                              text_model=tiny_models["bert"]))
    run = str(base / "run")
    run_train(TrainConfig(store=store, out=run, fusion="late", granularity="F+T", norm="global", layers="1-",
                          repeats=1, epochs=3, patience=2, folds=("1", "2"), device="cpu"))
    return {"base": base, "corpus": corpus, "store": store, "run": run}


def test_export_reloads_and_reproduces_the_runs_test_logits(trained, tmp_path):
    out = str(tmp_path / "model")
    export_run(trained["run"], out)
    assert {"model.json", "heads", "norm", "training"} <= set(os.listdir(out))
    spec = json.loads(open(os.path.join(out, "model.json")).read())
    assert spec["keys"] == ["F", "T"] and spec["streams"]["F"]["layer_ids"] == [1, 2]
    assert spec["encoders"]["audio"]["weights_hash"] and spec["encoders"]["text"]["fingerprint"]
    assert [m["name"] for m in spec["members"]] == ["r0_s1", "r0_s2"] and spec["norm"] == "global"
    model = emofuse.load_model(out)
    assert "2 fold models" in repr(model) and model.classes == ["ang", "hap", "neu", "sad"]
    # every file but model.json has its sha256 there (before: the training records had none, so an
    # edited training/summary.json went unnoticed; found by a docs audit)
    listed = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs} - {"model.json"}
    assert set(spec["files"]) == listed and "training/summary.json" in listed
    import shutil
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "training" / "summary.json").write_text("{}")
    with pytest.raises(EmofuseError, match="training/summary.json does not match its sha256 in model.json"):
        emofuse.load_model(str(edited))

    # new audio + transcripts through the encoders: each member on its own test session gives the
    # logits the run wrote for those utterances (same extraction path, layers and statistics)
    run_preds = pd.read_csv(os.path.join(trained["run"], "predictions.csv"), dtype={"fold": str, "id": str})
    with FeatureStore(trained["store"]) as fs:
        utts = fs.utterances
    fold1 = run_preds[run_preds["fold"] == "1"].set_index("id")
    ids = list(fold1.index)
    data = model.features(audio=list(utts.loc[ids, "audio_path"]), text=list(utts.loc[ids, "transcript"]), ids=ids)
    logits = model.member_logits(data)
    assert logits.shape == (2, len(ids), 4)
    want = fold1[[f"logit_{c}" for c in model.classes]].to_numpy()
    np.testing.assert_allclose(logits[0], want, atol=2e-4)

    # the CLI: a manifest with aliased columns, probabilities in a CSV
    m = tmp_path / "list.csv"
    pd.DataFrame({"ID": ids, "wav": list(utts.loc[ids, "audio_path"]),
                  "Transcript": list(utts.loc[ids, "transcript"])}).to_csv(m, index=False)
    assert main(["predict", out, "--manifest", str(m), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    p = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    probs = p[[f"prob_{c}" for c in model.classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs, model.probabilities(logits), atol=1e-6)
    assert list(p["id"]) == ids and set(p["pred"]) <= set(model.classes)

    # one file from the command line, printed
    a, t = utts.loc[ids[0], "audio_path"], utts.loc[ids[0], "transcript"]
    assert main(["predict", out, "--audio", a, "--text", t]) == 0
    # --device auto (as --help offers; before: a traceback from torch.device("auto") after encoding)
    assert main(["predict", out, "--audio", a, "--text", t, "--out", str(tmp_path / "auto.csv"),
                 "--device", "auto"]) == 0
    assert list(pd.read_csv(tmp_path / "auto.csv", dtype={"id": str})["pred"])


def test_refusals_one_sentence(trained, tmp_path, tiny_models, capsys):
    out = str(tmp_path / "model")
    export_run(trained["run"], out)
    # another encoder than the model's: refused, naming the flag
    other = tiny_models["layer"]
    assert main(["predict", out, "--audio", trained["corpus"].utterances[0].audio_path, "--text", "hi",
                 "--audio-model", other]) == 2
    err = capsys.readouterr().err
    assert "does not match the one this model was trained on" in err and "--audio-model" in err
    # an encoder that cannot be found: one sentence naming the flag
    assert main(["predict", out, "--audio", trained["corpus"].utterances[0].audio_path, "--text", "hi",
                 "--audio-model", str(tmp_path / "moved")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not load the audio model" in err and "--audio-model" in err
    # a damaged export
    head = os.path.join(out, "heads", "r0_s1.safetensors")
    with open(head, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(EmofuseError, match="does not match its sha256"):
        load_model(out)
    # an existing, non-empty output folder
    with pytest.raises(EmofuseError, match="not empty"):
        export_run(trained["run"], out)
    # segment models need alignments
    model = load_model(trained["run"])
    model.keys = ["W"]
    with pytest.raises(EmofuseError, match="need forced alignments"):
        model.features(audio=["x.wav"])


def test_recording_keys_compare_only_what_has_a_digest():
    """An utterance extraction could not read has no digest: it matches nothing (before, every
    such utterance of two corpora shared one key and the evaluation was refused); a store
    without digests gives no keys (a file name and size would call two corpora's 0001.wav one
    recording)."""
    from emofuse.pipelines.predict import recording_keys
    t = pd.DataFrame({"audio_digest": ["ab" * 16, "", "ab" * 16], "start": [np.nan, np.nan, 1.0],
                      "end": [np.nan, np.nan, 2.0], "audio_path": ["a.wav", "b.wav", "a.wav"]},
                     index=["u1", "u2", "u3"])
    k = recording_keys(t)
    assert k["u2"] == "" and k["u1"] and k["u3"] and k["u1"] != k["u3"]   # another segment of the same file
    assert recording_keys(t.drop(columns=["audio_digest"])) is None
    # no end and no duration (a file sf.info could not read): the key exports have recorded
    import hashlib
    k = recording_keys(t.assign(duration=np.nan))
    assert k["u1"] == hashlib.sha256(f"{'ab' * 16}|0.00|nan".encode()).hexdigest()[:16]


def test_overlapping_spans_of_one_audio_file_are_one_recording():
    """The same file over a span cut a little differently, a longer or shorter span of it, or all
    of it, overlaps a training span; an adjacent span of the same file, another file, or an
    unread one does not."""
    from emofuse.pipelines.predict import overlapping, recording_keys, recording_spans
    a, b = "ab" * 16, "cd" * 16
    train = pd.DataFrame({"audio_digest": [a, a, b], "start": [1.0, 5.0, np.nan], "end": [2.0, 6.0, np.nan],
                          "duration": [1.0, 1.0, 3.0]}, index=["t1", "t2", "t3"])
    spans = recording_spans(train)
    assert spans == {a: [[1.0, 2.0], [5.0, 6.0]], b: [[0.0, 3.0]]}
    target = pd.DataFrame({"audio_digest": [a, a, a, b, "", "ef" * 16, a],
                           "start": [1.02, 2.0, 0.0, 0.5, np.nan, np.nan, 5.995],
                           "end": [1.98, 3.0, np.nan, 1.0, np.nan, np.nan, 7.0],
                           "duration": [0.96, 1.0, 10.0, 0.5, 1.0, 1.0, 1.005]},
                          index=["trimmed", "adjacent", "whole", "inside", "unread", "other", "touching"])
    assert overlapping(target, spans) == ["trimmed", "whole", "inside"]
    # two channels of one file are two signals; a file's mix holds each of its channels
    chan = pd.DataFrame({"audio_digest": [a, a, a], "start": [1.0, 1.0, 1.0], "end": [2.0, 2.0, 2.0],
                         "duration": [1.0] * 3, "channel": [0.0, 1.0, np.nan]}, index=["c0", "c1", "mix"])
    assert recording_keys(chan).nunique() == 3
    assert overlapping(chan, recording_spans(chan.loc[["c0"]])) == ["c0", "mix"]
    assert overlapping(chan, recording_spans(chan.loc[["mix"]])) == ["c0", "c1", "mix"]
    assert overlapping(chan.loc[["c1"]], recording_spans(chan.loc[["c0"]])) == []


def test_cross_corpus_evaluation(trained, tmp_path, tiny_models):
    other_corpus = make_fake_iemocap(tmp_path / "other", counts={s: {"ang": 1, "neu": 2, "sad": 1, "fru": 1}
                                                                 for s in range(1, 3)}, seconds=0.8, seed=9)
    other = str(tmp_path / "o.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(other_corpus.root), out=other, labels="six",
                              audio_model=tiny_models["group"], text_model=tiny_models["bert"]))
    ev = str(tmp_path / "ev")
    with pytest.raises(EmofuseError, match=r"labels \['fru'\].*--label-map fru="):
        run_evaluate(trained["run"], other, ev)
    assert main(["evaluate", trained["run"], "--store", other, "--out", ev, "--label-map", "fru=ang"]) == 0
    s = json.loads(open(os.path.join(ev, "summary.json")).read())
    assert s["ua"]["n"] == 2 and s["absent_classes"] == ["hap"] and "ensemble" in s
    with FeatureStore(other) as fs:
        n = len(fs.utterances)
    for r in s["runs"]:
        assert np.array(r["confusion"]).sum() == n
    preds = pd.read_csv(os.path.join(ev, "predictions.csv"))
    assert len(preds) == 2 * n and set(preds["label"]) == {"ang", "neu", "sad"}
    assert os.path.exists(os.path.join(ev, "runs", "r0_s1", "metrics.json"))
    table = open(os.path.join(ev, "table.md")).read()
    assert f"| {s['ua']['mean']:.2f} ± {s['ua']['std']:.2f} |" in table and "their ensemble" in table and "hap" in table
    # macro-F1 averages the store's classes for every fold model (before: a model that predicted
    # the absent 'hap' once averaged 4 classes, the others 3, in one mean)
    from sklearn.metrics import f1_score
    for r in s["runs"]:
        g = preds[(preds["repeat"] == r["repeat"]) & (preds["fold"].astype(str) == str(r["fold"]))]
        assert r["f1"] == pytest.approx(100 * f1_score(g["label"], g["pred"], labels=["ang", "neu", "sad"],
                                                       average="macro", zero_division=0))
    assert "UA and macro-F1 average the others" in table and "sample standard deviation" in table
    # an evaluation written before (F1 over truth or predictions, no f1_over) is scored again when read
    from emofuse.pipelines.rundir import read_summary
    old = tmp_path / "ev-old"
    import shutil
    shutil.copytree(ev, old)
    d = json.loads((old / "summary.json").read_text())
    del d["f1_over"]
    d["f1"]["mean"], d["ensemble"]["f1"] = 1.0, 1.0
    for r in d["runs"]:
        r["f1"] = 1.0
    (old / "summary.json").write_text(json.dumps(d))
    again = read_summary(str(old))
    assert again["f1"] == s["f1"] and again["ensemble"]["f1"] == pytest.approx(s["ensemble"]["f1"])
    assert [r["f1"] for r in again["runs"]] == [r["f1"] for r in s["runs"]]
    # its report says what it is: before, it read as an in-corpus report ("UA per test session",
    # the absent class a row of 0 % recall)
    from emofuse.pipelines.report import run_report
    report = open(run_report(ev)).read()
    assert report.startswith("# emofuse report: late F+T on o.h5 (cross-corpus)") and "their ensemble: UA" in report
    assert "Classes absent from the evaluated store: hap" in report
    assert "UA of each fold model on the whole evaluated store" in report and "UA per test session" not in report
    # an evaluation is no member of a score combination (before: KeyError 'fingerprints')
    from emofuse.pipelines.combine import run_combine
    with pytest.raises(EmofuseError, match=r"is not a train-head run \(its config.json is of type emofuse.evaluate\)"):
        run_combine([ev, trained["run"]], str(tmp_path / "cb"))
    with pytest.raises(EmofuseError, match=r"--label-map maps to \['frustrated'\], which are not classes"):
        run_evaluate(trained["run"], other, str(tmp_path / "ev5"), label_map="fru=frustrated")
    # before: 'e.g. --label-map fru=ang', the model's first class, read as advice
    with pytest.raises(EmofuseError, match=r"has labels \['fru'\] .*e\.g\. --label-map fru=CLASS, CLASS one of the "
                                           r"model's$"):
        run_evaluate(trained["run"], other, str(tmp_path / "ev5"))
    # an exported model evaluates the same
    exp = str(tmp_path / "model")
    export_run(trained["run"], exp)
    s2 = run_evaluate(exp, other, str(tmp_path / "ev2"), label_map="fru=ang")
    assert [r["ua"] for r in s2["runs"]] == pytest.approx([r["ua"] for r in s["runs"]])
    # the training corpus itself, and another encoder, are refused
    with pytest.raises(EmofuseError, match="cross-corpus evaluation needs another corpus"):
        run_evaluate(trained["run"], trained["store"], str(tmp_path / "ev3"))
    # the training corpus with one transcript edited (another corpus fingerprint, the same
    # recordings): before, scored as cross-corpus on utterances the fold models were trained on
    import shutil
    part = tmp_path / "part"
    shutil.copytree(trained["corpus"].root, part)
    tr = sorted((part / "Session5").glob("*/transcriptions/*.txt"))[0]
    tr.write_bytes(tr.read_bytes().replace(b"]: ", b"]: well, ", 1))
    sub = str(tmp_path / "sub.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(part), out=sub, audio_model=tiny_models["group"],
                              text_model=tiny_models["bert"]))
    for m in (trained["run"], exp):
        with pytest.raises(EmofuseError, match=r"40 of the 40 utterances of .*sub.h5 are recordings .* was trained on"):
            run_evaluate(m, sub, str(tmp_path / "ev6"))
    # the training wavs cut 20 ms shorter at both ends (a manifest corpus): before, other keys,
    # so scored as cross-corpus (UA 81 for the ensemble where the run itself scored 44)
    with FeatureStore(trained["store"]) as fs:
        utts = fs.utterances
    rows = ["id,audio,text,label,speaker,session,start,end"] + [
        f"c{i},{u.audio_path},{u.transcript.replace(',', ' ')},{u.label},{u.speaker},{u.session},0.02,"
        f"{u.duration - 0.02:.3f}"
        for i, u in enumerate(utts.head(6).itertuples())]
    (tmp_path / "cut.csv").write_text("\n".join(rows) + "\n")
    cut = str(tmp_path / "cut.h5")
    run_extract(ExtractConfig(corpus="manifest", manifest=str(tmp_path / "cut.csv"), out=cut,
                              audio_model=tiny_models["group"], text_model=tiny_models["bert"]))
    for m in (trained["run"], exp):
        with pytest.raises(EmofuseError, match=r"6 of the 6 utterances of .*cut.h5 are recordings .* was trained on "
                                               r"\(the same audio content over overlapping times"):
            run_evaluate(m, cut, str(tmp_path / "ev7"))
    assert s["utterances"] == n and s["excluded"] == {}
    wrong = str(tmp_path / "w.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(other_corpus.root), out=wrong, labels="six",
                              audio_model=tiny_models["layer"], text_model=None))
    with pytest.raises(EmofuseError, match="needs the same encoders"):
        run_evaluate(trained["run"], wrong, str(tmp_path / "ev4"), label_map="fru=ang")


def test_evaluate_writes_only_into_its_own_folders(trained, tmp_path, tiny_models):
    """--out pointed at a train-head or ablate run: before, its config.json, summary.json and fold
    metrics were overwritten with cross-corpus scores (ablate then showed them as that row's
    in-corpus numbers). Re-evaluating into an evaluation's folder leaves no fold of a member the
    model does not have."""
    other_corpus = make_fake_iemocap(tmp_path / "other", counts={s: {"ang": 1, "neu": 1, "sad": 1, "hap": 1}
                                                                 for s in range(1, 3)}, seconds=0.8, seed=9)
    other = str(tmp_path / "o.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(other_corpus.root), out=other,
                              audio_model=tiny_models["group"], text_model=tiny_models["bert"]))
    run = trained["run"]
    files = {n: open(os.path.join(run, n), "rb").read() for n in ("config.json", "summary.json")}
    metrics = open(os.path.join(run, "runs", "r0_s1", "metrics.json"), "rb").read()
    with pytest.raises(EmofuseError, match=r"holds a run of type emofuse.train-head \(its config.json\), not an "
                                           r"evaluation.*choose another --out"):
        run_evaluate(run, other, run)
    assert {n: open(os.path.join(run, n), "rb").read() for n in files} == files
    assert open(os.path.join(run, "runs", "r0_s1", "metrics.json"), "rb").read() == metrics
    abl = tmp_path / "ablate"
    abl.mkdir()
    (abl / "config.json").write_text(json.dumps({"type": "emofuse.ablate"}))
    with pytest.raises(EmofuseError, match="holds a run of type emofuse.ablate"):
        run_evaluate(run, other, str(abl))
    exp = str(tmp_path / "model")
    export_run(run, exp)
    with pytest.raises(EmofuseError, match="holds model.json but no config.json of an evaluation"):
        run_evaluate(run, other, exp)

    ev = tmp_path / "ev"
    run_evaluate(run, other, str(ev))
    import shutil
    shutil.copytree(ev / "runs" / "r0_s1", ev / "runs" / "r1_s4")   # a member of a model evaluated there before
    s = run_evaluate(exp, other, str(ev))
    assert sorted(os.listdir(ev / "runs")) == ["r0_s1", "r0_s2"] and len(s["runs"]) == 2


def test_egemaps_and_text_model_predicts_like_its_run(trained, tmp_path, tiny_models):
    """A hand-crafted descriptor stream (openSMILE, float32, one layer) goes through the same path."""
    store = str(tmp_path / "e.h5")
    root = str(trained["corpus"].root)
    run_extract(ExtractConfig(corpus="iemocap", root=root, out=store, audio_model="opensmile:eGeMAPSv02",
                              text_model=tiny_models["bert"]))
    run = str(tmp_path / "run")
    run_train(TrainConfig(store=store, out=run, fusion="late", granularity="F+T", audio_stream="egemaps",
                          norm="global", repeats=1, epochs=2, patience=1, folds=("3",), device="cpu"))
    model = load_model(run)
    assert model.spec["streams"]["F"]["stream"] == "egemaps" and model.spec["streams"]["F"]["layer_ids"] == [0]
    preds = pd.read_csv(os.path.join(run, "predictions.csv"), dtype={"id": str}).set_index("id")
    with FeatureStore(store) as fs:
        utts = fs.utterances.loc[list(preds.index)]
    data = model.features(audio=list(utts["audio_path"]), text=list(utts["transcript"]), ids=list(preds.index))
    np.testing.assert_allclose(model.member_logits(data)[0], preds[[f"logit_{c}" for c in model.classes]].to_numpy(),
                               atol=2e-4)


def test_speaker_normalised_model_uses_each_speakers_statistics(trained, tmp_path):
    run = str(tmp_path / "spk")
    run_train(TrainConfig(store=trained["store"], out=run, fusion="none", granularity="F", norm="speaker",
                          repeats=1, epochs=2, patience=1, folds=("2",), device="cpu"))
    model = load_model(run)
    preds = pd.read_csv(os.path.join(run, "predictions.csv"), dtype={"id": str}).set_index("id")
    with FeatureStore(trained["store"]) as fs:
        utts = fs.utterances.loc[list(preds.index)]
    # every utterance of the test session's speakers, grouped by speaker: the statistics training used
    data = model.features(audio=list(utts["audio_path"]), ids=list(preds.index), speakers=list(utts["speaker"]))
    want = preds[[f"logit_{c}" for c in model.classes]].to_numpy()
    np.testing.assert_allclose(model.member_logits(data)[0], want, atol=2e-4)
    # without speakers each utterance is its own group: other numbers, and predict says so
    alone = model.features(audio=list(utts["audio_path"]), ids=list(preds.index))
    assert not np.allclose(model.member_logits(alone)[0], want, atol=1e-3)
    # a manifest naming the speaker of some rows only: before, every row was standardised alone
    # (all probabilities changed) under a note saying there was no speaker column
    from emofuse.pipelines.predict import run_predict
    rows = ["id,audio,speaker"] + [f"{i},{a},{'' if k == 1 else s}" for k, (i, a, s) in
                                   enumerate(zip(preds.index, utts["audio_path"], utts["speaker"]))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(EmofuseError, match=rf"m.csv: 1 of {len(preds)} rows have no speaker \(ids {preds.index[1]}\) "
                                           "while the others name one; this model standardises each speaker"):
        run_predict(run, manifest=str(tmp_path / "m.csv"), note=quiet)
    # a run whose store moved: the advice names an option of the command in use
    moved = tmp_path / "moved"
    import shutil
    shutil.copytree(run, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["config"]["store"] = str(tmp_path / "gone.h5")
    (moved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EmofuseError, match=r"gone.h5 that .* is not there; if it moved, export the run with: emofuse "
                                           r"export RUN OUT --store NEW_PATH"):
        load_model(str(moved))
    with pytest.raises(EmofuseError, match=r"is not there; if it moved, pass its current path with --store$"):
        export_run(str(moved), str(tmp_path / "exp"))
    with pytest.raises(EmofuseError, match=r"is not there; if it moved, pass its current path with --train-store$"):
        run_evaluate(str(moved), trained["store"], str(tmp_path / "ev"))


def test_evaluate_of_a_speaker_normalised_model_never_pools_blank_speakers(trained, tmp_path, tiny_models,
                                                                           monkeypatch):
    """Before: evaluate of a --norm speaker model on a store whose speaker cells are blank (a
    manifest corpus without speakers) standardised every such utterance together, as one
    'speaker', without a word. Now a store with some, or all, blank is refused: each utterance
    alone is too little to standardise by (one word segment), and a cross-corpus score must not
    rest on it. So are blank speakers given to the Python API among named ones."""
    import emofuse.pipelines.predict as predict_mod
    run = str(tmp_path / "spk")
    run_train(TrainConfig(store=trained["store"], out=run, fusion="none", granularity="F", norm="speaker",
                          repeats=1, epochs=2, patience=1, folds=("2",), device="cpu"))
    other_corpus = make_fake_iemocap(tmp_path / "other", counts={s: {"ang": 1, "neu": 2, "sad": 1} for s in (1, 2)},
                                     seconds=0.8, seed=9)
    other = str(tmp_path / "o.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(other_corpus.root), out=other,
                              audio_model=tiny_models["group"], text_model=tiny_models["bert"]))
    real = predict_mod.load_train_data
    blank = {"which": [0, 3]}

    def blank_speakers(*a, **kw):
        data = real(*a, **kw)
        speakers = data.speakers.copy().astype(object)
        speakers[blank["which"]] = ""
        return replace(data, speakers=speakers)
    monkeypatch.setattr(predict_mod, "load_train_data", blank_speakers)
    with pytest.raises(EmofuseError, match=rf"{other}: 2 of 8 utterances have no speaker \(ids \S+, \S+\) while the "
                                           r"others name one; .* run extract-embeddings again with --update-corpus$"):
        run_evaluate(run, other, str(tmp_path / "ev-some"))
    blank["which"] = slice(None)
    with pytest.raises(EmofuseError, match=rf"{other} names no speaker of its 8 utterances; this model standardises "
                                           r"each speaker .* an utterance alone is too little for that"):
        run_evaluate(run, other, str(tmp_path / "ev-none"))
    monkeypatch.setattr(predict_mod, "load_train_data", real)
    s = run_evaluate(run, other, str(tmp_path / "ev-named"))   # every speaker named: scored
    assert s["utterances"] == 8
    # the Python API: named and blank speakers mixed are refused; none at all: each utterance alone
    model = load_model(run)
    with FeatureStore(other) as fs:
        utts = fs.utterances
    audio = list(utts["audio_path"][:3])
    with pytest.raises(EmofuseError, match=r"speakers: 1 of 3 utterances have no speaker"):
        model.features(audio=audio, ids=["a", "b", "c"], speakers=["s1", None, "s1"])
    alone = model.member_logits(model.features(audio=audio, ids=["a", "b", "c"], speakers=[None] * 3))
    np.testing.assert_allclose(alone, model.member_logits(model.features(audio=audio, ids=["a", "b", "c"])))


def test_only_the_layers_the_model_reads_must_be_finite(trained, monkeypatch):
    """The model reads layers 1-2: an overflow (inf in float16) in layer 0 of the audio or text
    encoder's output is not its concern; one in a layer it reads is refused in one sentence (the
    text side let it through into the head before)."""
    from emofuse.extract import encoders
    model = load_model(trained["run"])
    with FeatureStore(trained["store"]) as fs:
        u = fs.utterances.iloc[0]
    where = {"layer": 0}
    audio_encode, text_encode = encoders.HFAudioEncoder.encode, encoders.HFTextEncoder.encode

    def audio_inf(self, *a, **kw):
        outs = audio_encode(self, *a, **kw)
        for o in outs:
            o[:, where["layer"]] = np.inf
        return outs

    def text_big(self, texts):
        outs = text_encode(self, texts)
        for o in outs:
            o["data"][:, where["layer"]] = 1e6   # beyond float16's 65504: inf in the model's float16
        return outs
    monkeypatch.setattr(encoders.HFAudioEncoder, "encode", audio_inf)
    monkeypatch.setattr(encoders.HFTextEncoder, "encode", text_big)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        data = model.features(audio=[u["audio_path"]], text=[u["transcript"]], ids=["x"])
    assert np.isfinite(model.member_logits(data)).all()
    where["layer"] = 1
    with pytest.raises(EmofuseError, match=r"the encoder produced values beyond the store's dtype \(float16: largest "
                                           r"65504\) for this audio, infinite once stored \(the model was trained on"):
        model.features(audio=[u["audio_path"]], text=[u["transcript"]], ids=["x"])
    monkeypatch.setattr(encoders.HFAudioEncoder, "encode", audio_encode)
    with pytest.raises(EmofuseError, match=r"utterance x: the encoder produced values beyond the store's dtype "
                                           r"\(float16: largest 65504\) for this transcript"):
        model.features(audio=[u["audio_path"]], text=[u["transcript"]], ids=["x"])


def test_a_predict_manifest_reads_spans_as_the_corpus_reader_does(tmp_path):
    """NeMo's offset + duration and SpeechBrain's stop are spans here too (the aliases reached
    predict's reader, but a duration was dropped: the utterance ran to the file's end)."""
    from emofuse.pipelines.predict import read_predict_manifest
    (tmp_path / "n.jsonl").write_text('{"audio_filepath": "a.wav", "offset": 1.0, "duration": 0.5}\n')
    assert read_predict_manifest(str(tmp_path / "n.jsonl"))[["start", "end"]].values.tolist() == [[1.0, 1.5]]
    (tmp_path / "s.csv").write_text("wav,start,stop\na.wav,2,2.5\n")
    assert read_predict_manifest(str(tmp_path / "s.csv"))[["start", "end"]].values.tolist() == [[2.0, 2.5]]
    (tmp_path / "both.csv").write_text("audio,start,end,duration\na.wav,1,2,3\n")   # beside an end: the file's
    assert read_predict_manifest(str(tmp_path / "both.csv"))[["start", "end"]].values.tolist() == [[1.0, 2.0]]
    (tmp_path / "bad.csv").write_text("audio,start,end\na.wav,2,1\n")
    with pytest.raises(EmofuseError, match=r"bad.csv, line 2: end 1.0 is not after start 2.0"):
        read_predict_manifest(str(tmp_path / "bad.csv"))


def test_evaluate_says_which_utterances_it_scored_without_segments(trained, tmp_path, tiny_models, caplog):
    """Before: utterances of the other store without word segments (their alignment skipped) were
    scored with that input masked, and the result read as a plain cross-corpus one (train-head
    says so; evaluate said nothing, in its log, summary.json or table.md)."""
    from emofuse.pipelines.align import AlignConfig, run_align
    models = dict(audio_model=tiny_models["group"], text_model=tiny_models["bert"])
    store = str(tmp_path / "s.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(trained["corpus"].root), out=store, **models))
    run_align(AlignConfig(store=store, source="iemocap", granularities=("word",)))
    run = str(tmp_path / "fw")
    run_train(TrainConfig(store=store, out=run, fusion="late", granularity="F+W", repeats=1, epochs=2,
                          folds=("1", "2"), device="cpu"))
    other_corpus = make_fake_iemocap(tmp_path / "other", counts={s: {"ang": 2, "neu": 2} for s in range(1, 3)},
                                     seconds=0.8, seed=9)
    lost = sorted(other_corpus.root.glob("Session1/sentences/ForcedAlignment/*/*.wdseg"))[:2]
    for f in lost:
        f.unlink()   # two utterances whose alignment align-segments cannot read
    other = str(tmp_path / "o.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(other_corpus.root), out=other, **models))
    run_align(AlignConfig(store=other, source="iemocap", granularities=("word",)))
    ev = tmp_path / "ev"
    with caplog.at_level("WARNING", logger="emofuse"):
        s = run_evaluate(run, other, str(ev))
    assert s["empty_segments"] == {"W": 2} and s["utterances"] == 8
    assert f"{other}: 2 utterances without word segments (of its 8 utterances): the model reads that input " \
           "masked" in caplog.text
    assert "Scored with an input masked: 2 utterances without word segments." in (ev / "table.md").read_text()
