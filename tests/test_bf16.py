"""``train-head --bf16`` (and ``ablate --bf16``): every head trains under bfloat16 autocast,
alone and stacked, with float32 weights and losses; the option is part of the run key only when
set (float32 keys stay what they were); a bf16 run's saved model reproduces its test logits."""

import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from emofuse.pipelines.ablate import AblateConfig, _plan, load_spec
from emofuse.pipelines.data import load_train_data
from emofuse.pipelines.loop import Timer, _predict, train_one
from emofuse.pipelines.predict import load_model
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore

from test_stacked import HEADS, _data, _jobs, _resolved, _stacked, store  # noqa: F401  (its store fixture)

CPU = torch.device("cpu")
#: every head of both papers, the stacking ones (test_stacked.HEADS) and the LSTM ones
ALL_HEADS = {**{k: v for k, v in HEADS.items() if not k.endswith("-gpu-way")},
             "cma": dict(fusion="cma", granularity="F", heads=2, proj=8, ff=8),
             "cnn-blstm": dict(fusion="none", granularity="F", head="cnn-blstm", proj=8)}


def test_bf16_enters_the_run_key_only_when_set(store, tmp_path):
    cfg = TrainConfig(store=store, out=str(tmp_path), fusion="late", granularity="F+S")
    assert "bf16" not in cfg.identity()   # float32 runs keep the keys they had before the option
    on = replace(cfg, bf16=True)
    assert on.identity()["bf16"] is True and on.identity() != cfg.identity()
    with pytest.raises(Exception, match="--bf16 is a switch"):
        TrainConfig(store=store, out=str(tmp_path), bf16="yes")


@pytest.mark.parametrize("name", list(ALL_HEADS))
def test_every_head_trains_under_bf16_autocast(store, tmp_path, name):
    """The forward passes run in bfloat16 (the logits differ from float32's), the weights stay
    float32, and the run lands near the float32 run (bf16 rounding, not another computation)."""
    cfg = _resolved(store=store, out=str(tmp_path), epochs=2, patience=2, **ALL_HEADS[name])
    data = _data(store, cfg)
    (job,) = _jobs(data, cfg, ("1",))
    runs = {b: train_one(replace(cfg, bf16=b), data, job.train, job.val, job.seed, CPU, job.norm, Timer())
            for b in (False, True)}
    model = runs[True][0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    te = np.flatnonzero(data.sessions == "1")
    got = {b: _predict(runs[b][0], data, te, CPU, job.norm, Timer(), bf16=b) for b in (False, True)}
    assert got[True].dtype == np.float32 and np.isfinite(got[True]).all()
    assert not np.array_equal(got[True], got[False])
    # bfloat16 keeps 8 significant bits: a few per cent of the logits' scale after two epochs
    np.testing.assert_allclose(got[True], got[False], atol=0.1 * max(1.0, np.abs(got[False]).max()))
    for h32, h16 in zip(runs[False][1], runs[True][1]):
        assert abs(h32["train_loss"] - h16["train_loss"]) < 0.1 * max(1.0, h32["train_loss"])


@pytest.mark.parametrize("name", ["late", "transformer-fused", "coattention"])
def test_stacked_bf16_runs_follow_their_runs_trained_alone(store, tmp_path, name):
    """Stacked under bf16 the batched products round differently from a lone run's (bfloat16
    sums), so a stacked run follows its lone run to bf16 rounding rather than float32's."""
    cfg = _resolved(store=store, out=str(tmp_path), epochs=2, patience=2, bf16=True, **HEADS[name])
    data = _data(store, cfg)
    jobs = _jobs(data, cfg, ("1", "4"))
    got = _stacked(cfg, data, jobs, fused=name.endswith("-fused") or None)
    f32 = _stacked(replace(cfg, bf16=False), data, jobs, fused=name.endswith("-fused") or None)
    for j in jobs:
        alone = train_one(cfg, data, j.train, j.val, j.seed, CPU, j.norm, Timer())
        assert len(got[j.key][1]) == len(alone[1])
        for a, b, c in zip(got[j.key][1], alone[1], f32[j.key][1]):
            assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * max(1.0, b["train_loss"])
            assert abs(a["val_loss"] - b["val_loss"]) < 0.05 * max(1.0, b["val_loss"])
            assert a["val_loss"] != c["val_loss"]   # the stacked pass really ran in bfloat16


def test_a_bf16_run_reloads_and_reproduces_its_test_logits(store, tmp_path):
    run = str(tmp_path / "run")
    summary = run_train(TrainConfig(store=store, out=run, fusion="late", granularity="F+S", repeats=1, epochs=2,
                                    patience=2, folds=("2",), device="cpu", bf16=True))
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["identity"]["bf16"] is True
    assert np.isfinite(summary["ua"]["mean"])
    model = load_model(run)
    preds = pd.read_csv(os.path.join(run, "predictions.csv"), dtype={"id": str})
    with FeatureStore(store) as fs:
        data = load_train_data(fs, model.keys, "audio", "text", {"audio": "all", "text": "all"})
    idx = np.array([list(data.ids).index(i) for i in preds["id"]])
    want = preds[[f"logit_{c}" for c in model.classes]].to_numpy()
    np.testing.assert_allclose(model.member_logits(data, idx)[0], want, atol=2e-4)
    # read in float32 instead, the same weights give other logits: bf16 was really used and recorded
    model.spec["config"] = {**model.spec["config"], "bf16": False}
    assert not np.allclose(model.member_logits(data, idx)[0], want, atol=2e-4)
    # and the run's report says how it was computed
    from emofuse.pipelines.report import run_report
    with open(run_report(run)) as f:
        head = f.read().split("\n\n")[1]
    assert head.endswith("; trained under bfloat16 autocast (--bf16)")


def test_ablate_bf16_puts_every_row_in_another_key(store, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 1}\ntables:\n- name: a\n  rows:\n"
                    "  - {label: late, fusion: late, granularity: F+S}\n"
                    "  - {label: one, fusion: none, granularity: F}\n")
    loaded = load_spec(str(spec))
    plain = _plan(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g")), loaded)
    bf16 = _plan(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), bf16=True), loaded)
    assert set(plain[1]) == set(bf16[1]) == {"late", "one"}
    assert not set(plain[1].values()) & set(bf16[1].values())
    assert all(c.bf16 for c in bf16[0].values()) and not any(c.bf16 for c in plain[0].values())


def test_tables_mark_bf16_rows_and_float32_tables_stay_as_they_were():
    from emofuse.pipelines import tables
    from test_ablate import golden_frame

    df = golden_frame().drop(columns=["best"])
    plain = {"md": tables.to_markdown(df, "T"), "tex": tables.to_latex(df, "T", "t"), "csv": tables.to_csv(df)}
    f32 = df.assign(bf16=False)   # ablate records the column for every grid: float32 tables unchanged
    assert {"md": tables.to_markdown(f32, "T"), "tex": tables.to_latex(f32, "T", "t"), "csv": tables.to_csv(f32)} == plain
    mixed = df.assign(bf16=[False, True, False])
    md, tex = tables.to_markdown(mixed, "T"), tables.to_latex(mixed, "T", "t")
    label = str(df.loc[1, "label"])
    assert f"| {label} ‡ |" in md and "‡ trained under bfloat16 autocast (--bf16)." in md
    assert r"$^\ddagger$ trained under bfloat16 autocast (-{}-bf16)" in tex
    assert list(pd.read_csv(__import__("io").StringIO(tables.to_csv(mixed)))["bf16"]) == [False, True, False]
    every = tables.to_markdown(df.assign(bf16=True), "T")
    assert "‡" not in every and "every row trained under bfloat16 autocast (--bf16)." in every


def test_ablate_bf16_overrides_a_rows_own_setting_and_marks_combinations(store, tmp_path):
    from emofuse.pipelines.ablate import run_ablate

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 1, folds: ['1']}\ntables:\n- name: a\n  rows:\n"
                    "  - {label: one, fusion: none, granularity: F, bf16: false}\n"
                    "  - {label: late, fusion: late, granularity: F+S}\n"
                    "  - {label: syl, fusion: none, granularity: S}\n"
                    "  - {label: both, combine: [one, late]}\n"
                    "  - {label: both2, combine: [late, syl]}\n"
                    "  - {label: nested, combine: [both, both2]}\n")
    cfgs, keys = _plan(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), bf16=True),
                       load_spec(str(spec)))
    assert all(c.bf16 for c in cfgs.values())   # "--bf16: every row", a row's bf16: false included
    got = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), bf16=True, device="cpu"))
    df = got["a"].set_index("label")
    assert df["bf16"].tolist() == [True] * 6   # a combination (of combinations too) of bf16 runs is a bf16 row
    md = (tmp_path / "g" / "tables.md").read_text()
    assert "every row trained under bfloat16 autocast (--bf16)" in md


def test_layer_sums_stay_float32_under_bf16_autocast():
    """Eq. 1's layer sum is bound by reading the rows, so bfloat16 buys nothing there. Before, the
    stacked all-runs sum (a GPU's stacked path) and the dense-tensor sum ran their products in
    bfloat16 under --bf16 while the lone head's gathered sum stayed float32 (matmul(out=) is not
    autocast): a stacked bf16 run's Eq. 1 rounded otherwise than its lone run's (~4e-3 relative)."""
    from emofuse.heads.functional import GatheredRows, weight_layers
    from emofuse.heads.stacked import _AllRunsLayerSum
    g = torch.Generator().manual_seed(0)
    table = torch.randn(40, 5, 16, generator=g).half()
    index, run = torch.arange(40), torch.arange(40) % 3
    w = torch.softmax(torch.randn(3, 5, generator=g), -1)
    want = torch.einsum("nld,nl->nd", table.float(), w[run])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stacked = _AllRunsLayerSum.apply(w, table, index, run, None, None, None)
        dense = weight_layers(table, w[0])
        gathered = weight_layers(GatheredRows(table, index), w[0])
    assert stacked.dtype == dense.dtype == gathered.dtype == torch.float32
    torch.testing.assert_close(stacked, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dense, gathered, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dense, torch.einsum("nld,l->nd", table.float(), w[0]), rtol=1e-6, atol=1e-6)
