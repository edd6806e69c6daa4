"""What a table shows is what it measured: rows scored on other test utterances, protocol
overrides, Δ as printed, ties, run folders that hold what their key says, combinations of members
that changed, and runs of older code or of changed defaults never reused."""

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emofuse.errors import EmofuseError
from emofuse.pipelines import tables
from emofuse.pipelines.ablate import AblateConfig, load_spec, run_ablate
from emofuse.pipelines.report import run_report
from emofuse.pipelines.rundir import RESULTS_VERSION, check_run_dir, content_digest
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.testing import logged_messages
from emofuse.testing.synthetic import make_synthetic_store


def spec_file(tmp_path, *rows, defaults="{repeats: 1, epochs: 2, folds: [1, 2]}", extra=""):
    p = tmp_path / "spec.yaml"
    p.write_text(f"name: t\ndefaults: {defaults}\ntables:\n  - name: a\n    rows:\n"
                 + "".join(f"      - {r}\n" for r in rows) + extra)
    return str(p)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three utterances of session 1 have no frames (as after extraction skipped their audio)."""
    path = tmp_path_factory.mktemp("trust") / "s.h5"
    make_synthetic_store(path, per_class=3, layers=2, dim=8, planted_layer=1, mean_seconds=1.0, strength=0.6,
                         no_frames=3)
    return str(path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Every utterance in every stream."""
    path = tmp_path_factory.mktemp("trust") / "c.h5"
    make_synthetic_store(path, per_class=3, layers=2, dim=8, planted_layer=1, mean_seconds=1.0, strength=0.6)
    return str(path)


def test_a_row_scored_on_fewer_test_utterances_is_marked_never_bold_and_shows_no_delta(store, tmp_path):
    """Before: the frame rows, tested on 3 utterances fewer than the text row (no frames for
    them), were ordinary rows: bold when best, a Δ against the published number, a Wilcoxon
    p-value pairing runs on different test sets; only the log said so. The row holding every
    utterance is never the one marked, whichever rows are more numerous."""
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F, published: 40.0}',
                     '{label: "Late F+T", fusion: late, granularity: F+T}',
                     '{label: "Text", fusion: none, granularity: T, published: 50.0}', defaults="{repeats: 1, epochs: 2}")
    df = run_ablate(AblateConfig(store=store, spec=spec, out=str(tmp_path / "g"), device="cpu"))["a"].set_index("label")
    n_text, n_frame = int(df.loc["Text", "n_test"]), int(df.loc["Frame", "n_test"])
    assert n_text == n_frame + 3 == df.loc["Late F+T", "n_test"] + 3
    assert df["other_test"].to_dict() == {"Frame": True, "Late F+T": True, "Text": False}
    assert not df["off_protocol"].any()   # every session, the spec's epochs
    assert df.loc["Text", "best"] and not df.loc[["Frame", "Late F+T"], "best"].any()
    assert np.isnan(df.loc["Frame", "p_vs_best"]) and np.isnan(df.loc["Late F+T", "p_vs_best"])
    md = (tmp_path / "g" / "tables" / "a.md").read_text()
    frame = next(line for line in md.splitlines() if line.startswith("| Frame"))
    assert frame.startswith("| Frame ¶ |") and "**" not in frame and frame.endswith("| 40.00 | — | 5 |")
    text = next(line for line in md.splitlines() if line.startswith("| Text"))
    assert text.startswith("| Text |") and text.endswith(f"| 50.00 | {float(text.split(' | ')[1].split(' ± ')[0].strip('*')) - 50:+.2f} | 5 |")
    assert (f"¶ scored on fewer of the test sessions' utterances than the other rows ({n_frame}, {n_frame} of {n_text}): "
            "the others have no frames or tokens for them in the store, so not compared for bold") in md
    assert md.splitlines()[-1].startswith(f"Test sessions 1, 2, 3, 4, 5 ({n_text} utterances). Mean ± standard deviation")
    tex = (tmp_path / "g" / "tables" / "a.tex").read_text()
    assert r"Frame$^\P$ &" in tex and r"$^\P$ scored on fewer" in tex
    csv = pd.read_csv(tmp_path / "g" / "tables" / "a.csv").set_index("label")
    assert csv.loc["Frame", "n_test"] == n_frame and np.isnan(csv.loc["Frame", "delta_ua"])
    assert not np.isnan(csv.loc["Text", "delta_ua"])


def test_a_test_fold_without_a_class_is_said(tmp_path, caplog):
    path = tmp_path / "s.h5"
    make_synthetic_store(path, per_class=1, layers=2, dim=8, planted_layer=1, mean_seconds=1.0, no_frames=1)   # session 1 lacks one class
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                     '{label: "Frame lr", fusion: none, granularity: F, lr: 0.002}')
    with caplog.at_level(logging.WARNING, logger="emofuse"):
        run_ablate(AblateConfig(store=str(path), spec=spec, out=str(tmp_path / "g"), device="cpu"))
    said = [m for m in logged_messages(caplog) if "test session 1 holds no" in m]
    # before: once per row in training and once per row in the tables (4 here, 54 for a 27-row grid)
    assert len(said) == 2, said
    assert said[1].startswith("test session 1 holds no ") and said[1].endswith(
        "utterance (rows Frame, Frame lr): its UA averages the recall of the other classes")
    caplog.clear()   # a lone train-head says it too, naming its run folder
    out = str(tmp_path / "lone")
    with caplog.at_level(logging.WARNING, logger="emofuse"):
        run_train(TrainConfig(store=str(path), out=out, fusion="none", granularity="F", epochs=1, repeats=1,
                              folds=("1",), device="cpu"))
    assert f"{out}: test session 1 holds no 'ang' utterance; its UA averages the recall of the other classes" in \
        logged_messages(caplog)


def test_protocol_overrides_apply_over_a_rows_own_setting_and_the_tables_say_so(store, tmp_path):
    """Before: ``ablate --epochs 1`` left a row that sets its own epochs at its value, and tables of
    a quick look (--folds 1) named no test session and printed Δ against the full protocol's numbers."""
    spec = spec_file(tmp_path, '{label: "Text", fusion: none, granularity: T, epochs: 3, published: 50.0}',
                     defaults="{repeats: 1, epochs: 2}")
    out = tmp_path / "g"
    df = run_ablate(AblateConfig(store=store, spec=spec, out=str(out), device="cpu", epochs=1, folds=("1",)))["a"]
    config = json.loads((Path(df.loc[0, "run_dir"]) / "config.json").read_text())
    assert config["config"]["epochs"] == 1 and config["config"]["folds"] == ["1"]
    md = (out / "tables" / "a.md").read_text()
    assert md.splitlines()[-1].startswith(
        f"Test sessions 1 ({int(df.loc[0, 'n_test'])} utterances). Run with ablate --epochs 1, --folds 1, not the spec's "
        "protocol. No Δ UA for a row tested on fewer sessions than its store holds or trained under --epochs: the "
        "published numbers are of the full protocol. One run per configuration")
    assert next(line for line in md.splitlines() if line.startswith("| Text")).endswith("| 50.00 | — | 1 |")
    tex = (out / "tables" / "a.tex").read_text()
    assert r"Run with ablate -{}-epochs 1, -{}-folds 1, not the spec's protocol. No $\Delta$ UA" in tex
    assert pd.read_csv(out / "tables" / "a.csv")["override"].tolist() == ["--epochs 1, --folds 1"]
    # --epochs alone: every session, yet not the protocol's training
    run_ablate(AblateConfig(store=store, spec=spec, out=str(tmp_path / "e"), device="cpu", epochs=1))
    assert "| 50.00 | — |" in (tmp_path / "e" / "tables" / "a.md").read_text()
    # --repeats alone estimates the same quantity with fewer runs: Δ stays, the note names it;
    # and a spec's own folds: of fewer sessions than the store holds show no Δ (no flag needed)
    run_ablate(AblateConfig(store=store, spec=spec, out=str(tmp_path / "r"), device="cpu", repeats=1))
    md = (tmp_path / "r" / "tables" / "a.md").read_text()
    assert "Run with ablate --repeats 1, not the spec's protocol. " in md and "| 50.00 | — |" not in md
    two = spec_file(tmp_path, '{label: "Text", fusion: none, granularity: T, folds: [1, 2], published: 50.0}',
                    defaults="{repeats: 1, epochs: 2}")
    run_ablate(AblateConfig(store=store, spec=two, out=str(tmp_path / "t"), device="cpu"))
    md = (tmp_path / "t" / "tables" / "a.md").read_text()
    assert "| 50.00 | — |" in md and "No Δ UA for a row tested on fewer sessions than its store holds" in md


def test_delta_is_the_difference_of_the_printed_numbers_and_ties_as_printed_are_all_bold():
    base = pd.DataFrame({"label": ["a", "b"], "ua_mean": [71.635, 70.0], "ua_std": [1.0, 1.0], "wa_mean": [1.0, 1.0],
                         "wa_std": [0.0, 0.0], "f1_mean": [1.0, 1.0], "f1_std": [0.0, 0.0], "n": [25, 25],
                         "published": [71.01, np.nan]})
    for ua in np.round(np.arange(60, 80, 0.005), 3):
        row = next(line for line in tables.to_markdown(base.assign(ua_mean=[ua, 70.0]), "T").splitlines()
                   if line.startswith("| a |"))
        shown, delta = row.split(" | ")[1].split(" ± ")[0].strip("*"), row.split(" | ")[5]
        assert f"{float(shown) - 71.01:+.2f}" == delta, (ua, row)
    # two means that print alike (the same sum added in another order) are both the best
    tie = base.assign(ua_mean=[94.58333333333334, 94.58333333333333], published=np.nan)
    assert tables.to_markdown(tie, "T").count("**94.58 ± 1.00**") == 2 and tables.best_rows(tie, "ua") == {0, 1}


def test_a_small_p_value_is_not_written_as_zero():
    df = pd.DataFrame({"label": ["a", "b"], "ua_mean": [70.0, 60.0], "ua_std": [1.0, 1.0], "wa_mean": [1.0, 1.0],
                       "wa_std": [0.0, 0.0], "f1_mean": [1.0, 1.0], "f1_std": [0.0, 0.0], "n": [25, 25],
                       "p_vs_best": [np.nan, 1.2e-6]})
    assert pd.read_csv(__import__("io").StringIO(tables.to_csv(df)))["p_vs_best"].iloc[1] == pytest.approx(1.2e-6)


def test_a_table_with_no_row_run_leaves_no_files_and_report_goes_on(store, tmp_path):
    """Before: report read tables/NAME.csv for every table of the spec and crashed on one whose
    rows were all fine-tuned and not run; an earlier grid's files of it passed for this one's."""
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                     extra='  - name: y\n    rows:\n      - {label: "FT", finetune: true, system: text, '
                           'text_model: /nonexistent/bert}\n')
    out = tmp_path / "g"
    (out / "tables").mkdir(parents=True)
    for ext in ("md", "tex", "csv"):
        (out / "tables" / f"y.{ext}").write_text("an earlier grid's table")
    run_ablate(AblateConfig(store=store, spec=spec, out=str(out), device="cpu"))
    assert sorted(os.listdir(out / "tables")) == ["a.csv", "a.md", "a.tex"]
    assert "## a: best configuration, Frame" in Path(run_report(str(out))).read_text()


def test_a_published_number_that_is_not_a_number_is_refused_at_load(tmp_path):
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F, published: "68.12%"}')
    with pytest.raises(EmofuseError, match=r"row 'Frame' has published: '68.12%'; expected the published UA in "
                                           r"percent as a number \(68.12\)"):
        load_spec(spec)


def test_a_run_folder_another_command_wrote_into_is_refused(clean, tmp_path):
    """Before: ``evaluate --out`` pointed at a grid's run folder overwrote its summary, and ablate
    showed the cross-corpus numbers as the row's (it trusted any summary.json under the key)."""
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                     '{label: "Text", fusion: none, granularity: T}', '{label: "Both", combine: ["Frame", "Text"]}')
    out = tmp_path / "g"
    df = run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))["a"].set_index("label")
    run = Path(df.loc["Frame", "run_dir"])
    good = (run / "config.json").read_text()
    (run / "config.json").write_text(json.dumps({"type": "emofuse.evaluate", "model": "elsewhere"}))
    with pytest.raises(EmofuseError, match=rf"{run} should hold the run of key {run.name}, but its config.json records "
                                           r"something else .*: another command wrote there"):
        run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))
    (run / "config.json").write_text(good)
    both = Path(df.loc["Both", "run_dir"])
    shutil.copy(Path(df.loc["Text", "run_dir"]) / "config.json", both / "config.json")   # a train run's, not the combination's
    with pytest.raises(EmofuseError, match=rf"{both} should hold the run of key {both.name}, but its config.json "
                                           rf"records the run of key {Path(df.loc['Text', 'run_dir']).name}"):
        run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))


def test_a_combination_is_made_again_when_a_member_holds_other_results(clean, tmp_path):
    """Before: a combination's key hashes its members' keys only, so a member trained again in
    place (its folder deleted, then retrained on a GPU) left the combination of the old logits."""
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                     '{label: "Text", fusion: none, granularity: T}', '{label: "Both", combine: ["Frame", "Text"]}')
    out = tmp_path / "g"
    df = run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))["a"].set_index("label")
    both, text = Path(df.loc["Both", "run_dir"]), Path(df.loc["Text", "run_dir"])
    made = (both / "predictions.csv").stat().st_mtime_ns
    run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))
    assert (both / "predictions.csv").stat().st_mtime_ns == made   # nothing changed: kept
    preds = pd.read_csv(text / "predictions.csv")
    logits = [c for c in preds.columns if c.startswith("logit_")]
    preds[logits] = preds[logits] * 100.0   # the text member now dominates the average
    preds.to_csv(text / "predictions.csv", index=False)
    run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))
    again = pd.read_csv(both / "predictions.csv")
    assert (again["pred"].to_numpy() == preds.set_index(["repeat", "seed", "fold", "id"]).loc[
        list(zip(again["repeat"], again["seed"], again["fold"], again["id"])), "pred"].to_numpy()).all()


def _recorded(cfg: TrainConfig, **identity) -> dict:
    return {"type": "emofuse.train-head", "config": dataclasses.asdict(cfg),
            "identity": {**json.loads(json.dumps(cfg.identity())), **identity}, "fingerprints": {"corpus": "c"}}


def test_a_run_of_an_older_results_version_is_never_resumed(tmp_path):
    """Before: nothing in a key named the code that trained it, so a grid kept across an upgrade
    showed the numbers of the code before a fix beside the numbers after it."""
    cfg = TrainConfig(store="s", out=str(tmp_path))
    old = _recorded(cfg)
    del old["identity"]["results_version"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    new = {"type": "emofuse.train-head", "identity": cfg.identity(), "fingerprints": {"corpus": "c"}}
    with pytest.raises(EmofuseError, match=rf"holds a run of another emofuse \(results version 0, now {RESULTS_VERSION}"):
        check_run_dir(str(tmp_path), new, lambda c: TrainConfig(**c).identity())
    (tmp_path / "config.json").write_text(json.dumps(_recorded(cfg)))
    check_run_dir(str(tmp_path), new, lambda c: TrainConfig(**c).identity())   # the same version: resumed


def test_a_run_recorded_under_another_default_is_not_this_configuration(tmp_path, monkeypatch):
    """Before: a run recorded under an older spelling was read again with today's code, unset
    options taking today's defaults, so a changed default learning rate passed for the old one."""
    from emofuse.heads import options
    cfg = TrainConfig(store="s", out=str(tmp_path))
    recorded = _recorded(cfg, granularity="F ")   # an older spelling: read anew
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    new = {"type": "emofuse.train-head", "identity": cfg.identity(), "fingerprints": {"corpus": "c"}}
    check_run_dir(str(tmp_path), new, lambda c: TrainConfig(**c).identity())   # the same run, spelt otherwise
    monkeypatch.setitem(options.HEAD_DEFAULTS, "linear", {**options.HEAD_DEFAULTS["linear"], "lr": 1e-6})
    now = {"type": "emofuse.train-head", "identity": cfg.identity(), "fingerprints": {"corpus": "c"}}
    assert now["identity"]["lr"] == 1e-6 != recorded["identity"]["lr"]
    with pytest.raises(EmofuseError, match=r"holds a run of another configuration \(differs in lr\)"):
        check_run_dir(str(tmp_path), now, lambda c: TrainConfig(**c).identity())


class _Store:
    """Just what content_digest reads of a store, one stream whose info is ``info``."""

    def __init__(self, info):
        self.info, self.index_identity = info, (json.dumps(info, sort_keys=True),)

    def stream_info(self, stream):
        return self.info

    def row_shape(self, stream, kind):
        return (2, 8)

    def index(self, stream, kind):
        return {"u1": 0, "u2": 5}

    def inputs(self, stream, kind):
        return {}


def test_the_text_windowing_is_part_of_what_a_run_read():
    """Before: two stores of one encoder windowed at 512 and at 64 tokens (a tokenizer saved with
    another model_max_length) gave one content digest, so one run key: a grid on the second
    reused the first's results."""
    base = {"fingerprint": "f"}
    a = content_digest(_Store({**base, "max_tokens": 512, "window_stride": 256}), "text", "tokens")
    b = content_digest(_Store({**base, "max_tokens": 64, "window_stride": 32}), "text", "tokens")
    assert a != b
    assert content_digest(_Store(base), "audio", "frames") == content_digest(_Store(dict(base)), "audio", "frames")


def test_a_table_whose_rows_each_cover_other_folds_is_still_written(clean, tmp_path):
    spec = spec_file(tmp_path, '{label: "One", fusion: none, granularity: F, folds: [1]}',
                     '{label: "Two", fusion: none, granularity: F, folds: [2]}')
    df = run_ablate(AblateConfig(store=clean, spec=spec, out=str(tmp_path / "g"), device="cpu"))["a"]
    assert df["partial"].all() and not df["other_test"].any()
    assert "no row is tested on all of the table's test data" in (tmp_path / "g" / "tables" / "a.md").read_text()


def test_a_grid_with_a_combination_of_a_combination_resumes(clean, tmp_path, caplog):
    """Before the key check read a combination's members from their folders: a combination of a
    combination was rebuilt under another key, and the grid refused to resume."""
    caplog.set_level(logging.INFO, "emofuse")
    spec = spec_file(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                     '{label: "Text", fusion: none, granularity: T}', '{label: "Both", combine: ["Frame", "Text"]}',
                     '{label: "Again", combine: ["Both", "Frame"]}')
    out = tmp_path / "g"
    first = run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))["a"]
    caplog.clear()
    again = run_ablate(AblateConfig(store=clean, spec=spec, out=str(out), device="cpu"))["a"]
    assert "2 configurations, 2 already finished, 0 to run" in logged_messages(caplog)[0]
    pd.testing.assert_frame_equal(first, again)


def test_the_attention_blocks_default_width_is_in_the_key(monkeypatch):
    """Before: a coattention or transformer head's feed-forward width (ff_mult × width by default)
    was in no key (the identity held ff=None), so a changed multiple reused old runs."""
    from emofuse.heads import options
    cfg = TrainConfig(store="s", out="o", fusion="coattention", granularity="F+P")
    before = cfg.identity()
    monkeypatch.setitem(options.HEAD_DEFAULTS, "coattention", {**options.HEAD_DEFAULTS["coattention"], "ff_mult": 2})
    assert before["ff_mult"] == 4 and cfg.identity()["ff_mult"] == 2
    assert "ff_mult" not in TrainConfig(store="s", out="o", fusion="coattention", granularity="F+P", ff=64).identity()
