"""emofuse runs: listing, sorting, grid labels, diff, TensorBoard curves."""

import json
import os

import pytest

from emofuse.cli import main, train_head
from emofuse.errors import EmofuseError
from emofuse.pipelines import runs as pr
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.testing.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    store = str(base / "s.h5")
    make_synthetic_store(store, per_class=4, layers=3, dim=8, planted_layer=1, strength=1.0, mean_seconds=1.0, seed=0)
    root = base / "exp"
    common = dict(store=store, repeats=1, epochs=3, patience=2, folds=("1",), device="cpu")
    run_train(TrainConfig(out=str(root / "a"), fusion="none", granularity="F", **common))
    run_train(TrainConfig(out=str(root / "b"), fusion="none", granularity="F", norm="global", lr=3e-3, **common))
    grid = root / "grid"
    run_train(TrainConfig(out=str(grid / "runs" / "0123abcd"), fusion="none", granularity="T", **common))
    (grid / "ablate.json").write_text(json.dumps({"type": "emofuse.ablate", "keys": {"Text linear": "0123abcd"}}))
    os.makedirs(root / "c" / "runs")   # unfinished: a config and no summary
    os.makedirs(root / "exported" / "training")   # an export's copy of a run's records is not a run
    (root / "exported" / "model.json").write_text("{}")
    for name in ("config.json", "summary.json"):
        (root / "exported" / "training" / name).write_text((root / "a" / name).read_text())
    cfg = json.loads((root / "a" / "config.json").read_text())
    (root / "c" / "config.json").write_text(json.dumps(cfg))
    return root


def test_listing_sorted_with_labels_and_scores(tree, capsys):
    rows = pr.find_runs(str(tree))
    assert sorted(r["path"] for r in rows) == ["a", "b", "c", os.path.join("grid", "runs", "0123abcd")]
    by = {r["path"]: r for r in rows}
    assert by[os.path.join("grid", "runs", "0123abcd")]["label"] == "Text linear"
    assert by["c"]["ua"] is None and by["a"]["n"] == 1
    summary = json.loads((tree / "b" / "summary.json").read_text())
    assert by["b"]["ua"] == (summary["ua"]["mean"], summary["ua"]["std"])
    assert "norm global(speech)" in by["b"]["config"] and "none F" in by["a"]["config"]
    assert main(["runs", str(tree), "--sort", "ua"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["label", "configuration", "UA"]
    finished = sorted((r for r in rows if r["ua"]), key=lambda r: -r["ua"][0])
    listed = [line.split()[0] for line in out[2:-1]]
    assert listed[-1] == "c"   # unfinished last
    assert [x for x in listed if x != "c"] == [r["label"].split()[0] for r in finished]
    assert summary["ua"]["n"] == 1 and f"{summary['ua']['mean']:.2f}" in "\n".join(out)
    assert "± 0.00" not in "\n".join(out)   # one run has no standard deviation to show


def test_diff_names_the_values_that_differ(tree, capsys):
    assert main(["runs", "--diff", str(tree / "a"), str(tree / "b")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(lines) == {"lr", "norm", "norm_keys"}
    assert 'A: "none"   B: "global"' in lines["norm"] and "A: 0.001   B: 0.003" in lines["lr"]
    assert main(["runs", "--diff", str(tree / "a"), str(tree / "a")]) == 0
    assert "same configuration" in capsys.readouterr().out
    assert main(["runs", "--diff", str(tree / "a"), str(tree)]) == 2
    assert "not a train-head run directory" in capsys.readouterr().err


def test_head_options_are_listed_and_diffed_as_options(tree, tmp_path, capsys):
    """Before: runs of --hidden 64 --scheduler plateau and of the defaults listed alike, and --diff
    of a linear and a coattention head printed 'depth A: null' and an internal 'ff_mult'."""
    store = str(tree.parent / "s.h5")
    common = dict(store=store, repeats=1, epochs=1, patience=2, folds=("1",), device="cpu")
    run_train(TrainConfig(out=str(tmp_path / "h64"), fusion="none", granularity="F", hidden=64, scheduler="plateau",
                          **common))
    run_train(TrainConfig(out=str(tmp_path / "co"), fusion="coattention", granularity="F", heads=2, depth=1,
                          proj=8, **common))
    by = {r["path"]: r["config"] for r in pr.find_runs(str(tmp_path))}
    assert "hidden 64, scheduler plateau" in by["h64"]
    assert "proj 8, heads 2, depth 1" in by["co"]   # coattention's defaults: proj 0, 8 heads, depth 3
    assert "hidden" not in pr.config_summary(json.loads((tree / "a" / "config.json").read_text())["identity"])
    assert main(["runs", "--diff", str(tmp_path / "h64"), str(tmp_path / "co")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert 'A: "(not an option of this head)"   B: 1' in lines["depth"]
    assert 'A: "(not an option of this head)"   B: "4 x width"' in lines["ff"] and "ff_mult" not in lines


def test_diff_of_two_combinations_names_a_later_member_s_store_content(tree, tmp_path, capsys):
    """Before: a combination recorded only its first member's fingerprints, so two combinations
    whose second members read different store content were "the same configuration and the same
    store content". Each member's fingerprints are recorded now and the diff names them."""
    import shutil

    from emofuse.pipelines.combine import run_combine
    run_combine([str(tree / "a"), str(tree / "b")], str(tmp_path / "c1"))
    config = json.loads((tmp_path / "c1" / "config.json").read_text())
    assert config["member_fingerprints"] == [json.loads((tree / d / "config.json").read_text())["fingerprints"]
                                             for d in ("a", "b")]
    shutil.copytree(tmp_path / "c1", tmp_path / "c2")
    config["member_fingerprints"][1]["audio/frames"] = "0" * 32   # b re-extracted: other content
    (tmp_path / "c2" / "config.json").write_text(json.dumps(config))
    assert main(["runs", "--diff", str(tmp_path / "c1"), str(tmp_path / "c2")]) == 0
    out = capsys.readouterr().out
    assert "member 2 store: audio/frames" in out and "same configuration" not in out
    # a combination written before member fingerprints were recorded is not "the same store content"
    old = json.loads((tmp_path / "c1" / "config.json").read_text())
    del old["member_fingerprints"]
    shutil.copytree(tmp_path / "c1", tmp_path / "c0")
    (tmp_path / "c0" / "config.json").write_text(json.dumps(old))
    assert main(["runs", "--diff", str(tmp_path / "c0"), str(tmp_path / "c1")]) == 0
    out = capsys.readouterr().out
    assert "not recorded: combined by an older emofuse" in out and "same configuration" not in out
    # the listing names a combination's members by their folders (before: their whole identities)
    rows = {r["path"]: r for r in pr.find_runs(str(tmp_path))}
    assert rows["c1"]["config"] == "combine of 2 runs (a, b)", rows["c1"]["config"]


def test_tensorboard_said_once_when_missing_and_written_when_present(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pr, "_summary_writer", lambda: None)
    assert main(["runs", str(tree), "--tensorboard", str(tmp_path / "tb")]) == 0
    out = capsys.readouterr().out
    assert out.count("tensorboard is not installed") == 1 and not (tmp_path / "tb").exists()
    store = json.loads((tree / "a" / "config.json").read_text())["config"]["store"]
    assert train_head(["--store", store, "--out", str(tmp_path / "r"), "--fusion", "none", "--repeats", "1",
                       "--epochs", "2", "--folds", "1", "--device", "cpu", "--tensorboard", str(tmp_path / "tb")]) == 0
    assert capsys.readouterr().out.count("tensorboard is not installed") == 1

    scalars = []

    class Writer:   # the SummaryWriter interface we use
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((os.path.relpath(self.log_dir, tmp_path / "tb2"), tag, value, step))

        def close(self):
            pass
    monkeypatch.setattr(pr, "_summary_writer", lambda: Writer)
    assert pr.write_tensorboard([str(tree / "a")], str(tmp_path / "tb2")) == 1
    m = json.loads((tree / "a" / "runs" / "r0_s1" / "metrics.json").read_text())
    import hashlib
    name = "a-" + hashlib.sha256(os.path.realpath(tree / "a").encode()).hexdigest()[:6]   # one folder per run
    got = [(t, v, s) for d, t, v, s in scalars if d == os.path.join(name, "r0_s1") and t == "ua/validation"]
    assert got == [("ua/validation", h["val_ua"], h["epoch"]) for h in m["history"]]


def test_finetune_runs_are_listed_and_refused_by_export(tmp_path):
    from emofuse.errors import EmofuseError
    from emofuse.pipelines.predict import export_run

    d = tmp_path / "ft"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"type": "emofuse.train-head", "kind": "finetune", "config": {},
                                               "identity": {"system": "cma", "audio_model": "w2v", "text_model": "bert",
                                                            "lr": 1e-5}}))
    (rows,) = pr.find_runs(str(tmp_path))
    assert rows["config"] == "finetune cma (w2v, bert), lr 1e-05" and rows["ua"] is None
    with pytest.raises(EmofuseError, match="is a finetune run"):
        export_run(str(d), str(tmp_path / "out"))


def test_listing_tells_apart_what_changes_the_numbers_and_one_run_has_no_std():
    """Before: runs on one fold, on another encoder's stream or with other protocol numbers read as
    the same configuration in `emofuse runs`; one run printed '± 0.00' as if it had no spread."""
    from emofuse.pipelines.metrics import format_summary
    base = {"fusion": "none", "keys": ["F"], "head": "linear", "audio_layers": "all", "text_layers": "all",
            "weighting": "learned", "lr": 0.001, "audio_stream": "audio", "text_stream": "text", "folds": None,
            "repeats": 5, "epochs": 100, "seed": 0, "dropout": 0.2}
    one = pr.config_summary(base)
    other = pr.config_summary({**base, "audio_stream": "w2v2-large", "folds": ["1"], "epochs": 2, "seed": 7})
    assert "audio stream w2v2-large" in other and "folds 1 only" in other and "epochs 2" in other and "seed 7" in other
    assert not any(w in one for w in ("stream", "folds", "epochs", "seed"))
    assert pr.config_summary({"fusion": "combine", "members": ["/g/runs/aaa", "/g/runs/bbb"]}) == \
        "combine of 2 runs (aaa, bbb)"
    s = {m: {"mean": 61.0, "std": 0.0, "n": 1} for m in ("ua", "wa", "f1")}
    assert format_summary(s) == "UA 61.00  WA 61.00  F1 61.00  (1 run: no std)"


def test_a_finetune_runs_summary_names_its_protocol_departures():
    """Before: a finetune run of one fold, one repeat and one epoch listed as `finetune cma (…), lr 1e-05`,
    like a full protocol run."""
    from emofuse.pipelines.runs import config_summary
    ident = {"system": "cma", "audio_model": "w2v", "text_model": "bert", "lr": 1e-05, "folds": ["1"], "repeats": 1,
             "epochs": 1, "patience": 10}
    assert config_summary(ident) == "finetune cma (w2v, bert), lr 1e-05, folds 1 only, repeats 1, epochs 1"
    from emofuse.heads.options import HEAD_DEFAULTS
    sizes = {"proj": HEAD_DEFAULTS["cma"]["proj"], "heads": 4, "ff": HEAD_DEFAULTS["cma"]["ff"]}
    assert config_summary({**ident, **sizes}).startswith("finetune cma (w2v, bert), lr 1e-05, heads 4, folds 1")


def test_the_cma_block_reading_is_listed_where_it_is_not_the_default():
    """--cma-block attention (the paper's other reading of its CMA block) changes the numbers, so
    `emofuse runs` names it, for train-head and finetune runs; the default is not written."""
    from emofuse.pipelines.finetune import FinetuneConfig
    from emofuse.pipelines.runs import _shown, config_summary
    from emofuse.pipelines.train import TrainConfig
    frozen = TrainConfig(store="s.h5", out="o", fusion="cma", granularity="F").identity()
    other = TrainConfig(store="s.h5", out="o", fusion="cma", granularity="F", cma_block="attention").identity()
    assert "cma_block" not in frozen and "cma block" not in config_summary(frozen)
    assert "cma block attention" in config_summary(other) and "ff None" not in config_summary(other)
    assert _shown("cma_block", frozen) == "transformer" and _shown("cma_block", other) == "attention"
    late = TrainConfig(store="s.h5", out="o", fusion="late", granularity="F+T").identity()
    assert _shown("cma_block", late) == "(not an option of this head)"
    tuned = dict(store="s.h5", out="o", system="cma", audio_model="w2v", text_model="bert")
    assert "cma_block" not in FinetuneConfig(**tuned).identity()
    ident = FinetuneConfig(**tuned, cma_block="attention").identity()
    assert ident["cma_block"] == "attention" and "cma block attention" in config_summary(ident)
    with pytest.raises(EmofuseError, match="--ff is the width of the transformer block's feed-forward layer"):
        FinetuneConfig(**tuned, cma_block="attention", ff=64)   # as train-head refuses it
    assert ident["ff"] is None   # no feed-forward layer: its width no part of the key
    assert "ff None" not in config_summary(ident)
    with pytest.raises(EmofuseError, match="--cma-block is the attention block of --system cma, found --system text"):
        FinetuneConfig(store="s.h5", out="o", system="text", text_model="bert", cma_block="attention")


def test_diff_is_the_same_both_ways_and_runs_md_keeps_its_columns(tmp_path):
    """Found by a tables audit. Before: `runs --diff A B` showed `ff_mult` that `--diff B A` did
    not (operator precedence); runs.md split a label holding `|` into two cells and listed a
    run only under the table of its own row, not under tables repeating it with same_as."""
    for name, ident in (("a", {"fusion": "coattention", "ff_mult": 4, "ff": None}), ("b", {"fusion": "none"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"type": "emofuse.train-head", "identity": ident}))
    ab = pr.diff_runs(str(tmp_path / "a"), str(tmp_path / "b"))
    ba = pr.diff_runs(str(tmp_path / "b"), str(tmp_path / "a"))
    assert "ff_mult" not in ab and "ff_mult" not in ba
    assert sorted(line.split()[0] for line in ab.splitlines()) == sorted(line.split()[0] for line in ba.splitlines())
    from emofuse.pipelines.ablate import _write_index
    spec = {"tables": [{"name": "main", "rows": [{"label": "A | b", "combine": ["x", "y"]}]},
                       {"name": "second", "rows": [{"label": "Again", "same_as": "A | b"}]}],
            "_labels": {"A | b": {"label": "A | b", "combine": ["x", "y"]}}}
    _write_index(spec, {"A | b": "k1"}, {}, str(tmp_path))
    row = (tmp_path / "runs.md").read_text().splitlines()[2]
    assert row == "| A \\| b | `runs/k1` | main,second | score combination of x, y (not run) |"
