"""ablate and report: golden tables, reuse and resume, spec errors, figures."""

import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emofuse.errors import EmofuseError
from emofuse.pipelines import tables
from emofuse.pipelines.ablate import AblateConfig, load_spec, run_ablate
from emofuse.pipelines.report import run_report
from emofuse.testing.synthetic import make_synthetic_store
from emofuse.testing import logged_messages

GOLDEN = Path(__file__).parent / "golden"


def golden_frame():
    return pd.DataFrame({"label": ["Late F+S", "Coattention F+P", "Text_only & 50%"],
                         "ua_mean": [75.8012, 74.5678, 68.1], "ua_std": [0.91, 1.2345, 2.0],
                         "wa_mean": [74.0, 74.5, 67.0], "wa_std": [1.0, 1.1, 1.9],
                         "f1_mean": [75.5, 74.0, 67.9], "f1_std": [0.8, 1.0, 2.1], "n": [25, 25, 25],
                         "published": [75.80, 74.57, np.nan], "p_vs_best": [np.nan, 0.0312, 0.0001],
                         "best": [True, False, False]})


@pytest.mark.parametrize("ext", ["md", "tex", "csv"])
def test_table_writers_match_golden_files(ext):
    df = golden_frame()
    text = {"md": lambda: tables.to_markdown(df, "Table 3: fusion strategies (UA %)"),
            "tex": lambda: tables.to_latex(df, "Table 3: fusion strategies (UA %)", "table3"),
            "csv": lambda: tables.to_csv(df)}[ext]()
    # never rewritten by the test: a change of format is a deliberate edit of tests/golden/, reviewed
    # against test_golden_content_is_right
    assert text == (GOLDEN / f"table.{ext}").read_text()


def test_golden_content_is_right():
    md = (GOLDEN / "table.md").read_text()
    assert "| **75.80 ± 0.91** |" in md            # best UA in bold, 2 decimals
    assert "| **74.50 ± 1.10** |" in md            # best WA is another row: bold there
    assert "| 75.80 | +0.00 |" in md and "| — | — |" in md
    tex = (GOLDEN / "table.tex").read_text()
    assert r"\toprule" in tex and r"Text\_only \& 50\%" in tex and r"\textbf{75.80 $\pm$ 0.91}" in tex
    assert tex.startswith(r"% needs \usepackage{booktabs}") and r"& runs \\" in tex and r"& -- & -- & 25 \\" in tex
    assert r"& 75.80 & $+0.00$ & 25" in tex       # the sign in math mode (a text "-" prints as a hyphen)
    assert r"Mean $\pm$ standard deviation over the 25 runs (test folds $\times$ repeats)" in tex
    assert "Mean ± standard deviation over the 25 runs" in md
    csv = pd.read_csv(GOLDEN / "table.csv")
    assert list(csv["p_vs_best"].round(4).fillna(-1)) == [-1, 0.0312, 0.0001]


def test_labels_with_table_specials_are_escaped_where_pasted():
    """Found by a tables audit. Before: a `|` in a label ended its Markdown cell, so the row's UA
    showed under WA, its WA under F1 … (tables.md, report.md, runs.md); in LaTeX, `^` stopped
    pdflatex, `\\ ` and `~` vanished into spaces, Δ in a label or title was not set up; a CSV gave
    a single run a std of 0.0000; with every row ¶, one was bold under a note saying ¶ rows are not."""
    df = golden_frame().assign(label=["Frame | F", "x^2 ~ a\\b -- c", "Δ <5>"])
    md = tables.to_markdown(df, "T")
    row = next(line for line in md.splitlines() if line.startswith("| Frame"))
    assert row.startswith("| Frame \\| F | **75.80 ± 0.91** |")
    assert len(row.replace("\\|", "").split("|")) == len(md.splitlines()[2].split("|"))   # as many cells as the header
    tex = tables.to_latex(df, "Δ title_1", "t")
    assert r"Frame \textbar{} F & \textbf{75.80 $\pm$ 0.91}" in tex
    assert r"x\textasciicircum{}2 \textasciitilde{} a\textbackslash{}b -{}- c & " in tex
    assert r"$\Delta$ \textless{}5\textgreater{} & " in tex and r"\caption{$\Delta$ title\_1. " in tex
    assert not any(ord(c) > 127 for c in tex)   # every sign written as LaTeX: nothing a font may lack
    greek = tables.to_latex(df.assign(label=["[LAUGHTER] kept", "*F", "ω ≈ Α"]), "T", "t")
    assert "\\midrule\n{}[LAUGHTER] kept & " in greek and "\n{}*F & " in greek   # not \\[…] nor \\*
    assert "\n$\\omega$ $\\approx$ A & " in greek
    one = golden_frame().assign(n=[1, 1, 1])
    csv = pd.read_csv(io.StringIO(tables.to_csv(one)))
    assert csv[["ua_std", "wa_std", "f1_std"]].isna().all().all() and csv["ua_mean"].notna().all()
    assert pd.read_csv(io.StringIO(tables.to_csv(golden_frame())))["ua_std"].notna().all()
    fewer = golden_frame().assign(other_test=True, n_test=[57, 58, 59])
    note = tables.to_markdown(fewer, "T")
    assert "**75.80" in note and "so not compared for bold" not in note
    assert ("¶ scored on fewer of the test sessions' utterances than the table's rows together "
            "(57, 58, 59 utterances)") in note
    assert "no row is tested on all of the table's test data, so bold compares means over different test data" in note


def test_a_row_on_fewer_folds_is_marked_and_never_bold():
    df = golden_frame().drop(columns=["best"])
    df.loc[2, ["ua_mean", "wa_mean", "f1_mean"]] = [90.0, 90.0, 90.0]   # best numbers, on one fold only
    df["folds"] = ["1,2,3,4,5", "1,2,3,4,5", "1"]
    df["partial"] = [False, False, True]
    df.loc[2, "n"] = 5
    md = tables.to_markdown(df, "T")
    assert "| Text_only & 50% † | 90.00 ± 2.00 |" in md and "| **75.80 ± 0.91** |" in md
    assert "† run on fewer test folds than the table's 5 (1, 2, 3, 4, 5), so not compared for bold." in md
    tex = tables.to_latex(df, "T", "t")
    assert r"Text\_only \& 50\%$^\dagger$ & 90.00 $\pm$ 2.00" in tex and r"\textbf{75.80 $\pm$ 0.91}" in tex
    assert r"$^\dagger$ run on fewer test folds" in tex
    delta = tables.to_latex(df.assign(published=[76.3, np.nan, np.nan]), "T", "t")
    assert r"& 76.30 & $-0.50$ &" in delta
    assert "partial" in tables.to_csv(df).splitlines()[0]
    assert tables.to_markdown(df.drop(columns=["folds", "partial"]), "T").count("**90.00") == 3   # no fold info: as before
    # no row covers every fold: bold among all, and the note says what that compares
    split = df.assign(folds=["1,2,3,4", "1,2,3,4", "5"], partial=True)
    assert "no row is tested on all of the table's test data, so bold compares means over different test data" \
        in tables.to_markdown(split, "T")


def test_a_single_run_shows_its_value_without_a_spread():
    """Before: a row of one run (one fold, one repeat) printed "± 0.00" in Markdown and LaTeX, a
    spread a reader takes for runs that agreed; now its value stands alone and the note says so."""
    df = golden_frame().drop(columns=["best"])
    df["n"] = [5, 1, 5]
    md = tables.to_markdown(df, "T")
    one = next(line for line in md.splitlines() if line.startswith(f"| {df.loc[1, 'label']} |"))
    assert "±" not in one and f"| {df.loc[1, 'ua_mean']:.2f} |" in one and one.endswith("| 1 |")
    assert "a single run shows its value alone" in md
    tex = tables.to_latex(df, "T", "t")
    assert r"$\pm$ 0.00" not in tex and "a single run shows its value alone" in tex
    alone = tables.to_markdown(df.assign(n=1), "T")
    assert "±" not in alone and "One run per configuration (one test fold, one repeat): no standard deviation" in alone


SPEC = """
name: t
defaults: {repeats: 2, epochs: 3, patience: 2, folds: [1, 2]}
tables:
  - name: a
    title: "A"
    rows:
      - {label: "Frame", fusion: none, granularity: F, published: 65.44}
      - {label: "Late F+S", fusion: late, granularity: F+S}
      - {label: "Both", combine: ["Frame", "Late F+S"]}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("abl") / "s.h5"
    make_synthetic_store(path, per_class=4, layers=3, dim=8, planted_layer=1, mean_seconds=1.0, strength=0.6)
    return str(path)


def test_grid_reuses_finished_runs_resumes_and_grows(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "grid"
    res = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu"))
    df = res["a"]
    assert list(df["label"]) == ["Frame", "Late F+S", "Both"] and (df["n"] == 4).all()
    assert df["best"].sum() == 1 and np.isnan(df.loc[df["best"], "p_vs_best"]).all()
    assert {"a.md", "a.tex", "a.csv"} <= set(os.listdir(out / "tables"))
    runs = {r: os.path.getmtime(out / "runs" / r / "summary.json") for r in os.listdir(out / "runs")}
    # a run killed mid-way: its summary and one finished fold are gone, the other folds stay
    victim = df.loc[df["label"] == "Late F+S", "key"].item()
    os.remove(out / "runs" / victim / "summary.json")
    os.remove(out / "runs" / victim / "runs" / "r1_s2" / "metrics.json")
    kept = os.path.getmtime(out / "runs" / victim / "runs" / "r0_s1" / "model.safetensors")
    caplog.clear()
    res2 = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu"))
    msgs = logged_messages(caplog)
    assert "2 configurations, 1 already finished, 1 to run" in msgs[0]
    assert os.path.getmtime(out / "runs" / victim / "runs" / "r0_s1" / "model.safetensors") == kept
    for r, t in runs.items():
        if r != victim:
            assert os.path.getmtime(out / "runs" / r / "summary.json") == t
    pd.testing.assert_frame_equal(res["a"], res2["a"])      # same numbers after the resume
    # a grown spec computes only the new row
    spec.write_text(SPEC + '      - {label: "Text", fusion: none, granularity: T}\n')
    caplog.clear()
    res3 = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu"))
    msgs = logged_messages(caplog)
    assert "3 configurations, 2 already finished, 1 to run" in msgs[0] and len(res3["a"]) == 4
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "a-trained-layers.png").write_bytes(b"an earlier report's best row")
    (out / "figures" / "my-own-plot.png").write_bytes(b"the user's")
    (out / "figures" / "learning-curves.pdf").write_bytes(b"the user's, named like one of ours")
    with pytest.raises(EmofuseError):
        run_report(str(out / "figures"))   # not a run or grid: refused before anything is removed
    assert (out / "figures" / "a-trained-layers.png").exists()
    report = run_report(str(out))
    text = Path(report).read_text()
    assert "| Configuration |" in text and "figures/a-confusion.png" in text
    assert not (out / "figures" / "a-trained-layers.png").exists()   # an earlier report's figure: gone
    assert (out / "figures" / "my-own-plot.png").exists() and (out / "figures" / "learning-curves.pdf").exists()
    for name in ("a-confusion", "a-layers", "a-folds", "a-curves"):   # each for report.md, and as a vector PDF
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
        assert (out / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    # the report lists what it drew, and the next one removes exactly those (a review found a user's
    # learning-curves.pdf or manifolds.pdf removed by the name rule)
    listed = json.loads((out / "figures" / ".report-figures.json").read_text())
    assert "a-confusion.pdf" in listed and "learning-curves.pdf" not in listed
    (out / "figures" / "old-curves.pdf").write_bytes(b"drawn by an earlier report, of a renamed table")
    (out / "figures" / ".report-figures.json").write_text(json.dumps(listed + ["old-curves.pdf"]))
    run_report(str(out))
    assert not (out / "figures" / "old-curves.pdf").exists() and (out / "figures" / "learning-curves.pdf").exists()


def test_grid_best_is_a_full_row_and_a_combination_report_names_its_members(store, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + '      - {label: "Text S1", fusion: none, granularity: T, folds: [1]}\n')
    out = tmp_path / "grid"
    df = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu"))["a"]
    part = df.set_index("label")["partial"]
    assert part["Text S1"] and not part[["Frame", "Late F+S", "Both"]].any()
    assert not df.set_index("label").loc["Text S1", "best"] and df["best"].sum() == 1
    assert "Text S1 †" in (out / "tables" / "a.md").read_text()
    both = out / "runs" / df.set_index("label").loc["Both", "key"]
    text = Path(run_report(str(both))).read_text()
    assert text.startswith("# emofuse report: score combination of none F, late F+S+T\n")


def one_table_spec(tmp_path, *rows: str) -> Path:
    """spec.yaml: one table ``a`` of ``rows`` (YAML flow mappings), 1 repeat × 2 epochs on folds 1-2."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 2, folds: [1, 2]}\ntables:\n  - name: a\n    rows:\n"
                    + "".join(f"      - {r}\n" for r in rows))
    return spec


def test_a_combination_of_a_fine_tuned_row_not_run_is_left_out(store, tmp_path, caplog):
    """Before: every frozen row trained, then the combination failed on its unrun fine-tuned
    member ("not a finished train-head run") and no table was written."""
    caplog.set_level(logging.INFO, "emofuse")
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                          '{label: "FT text", finetune: true, system: text, text_model: /nonexistent/bert}',
                          '{label: "Both", combine: ["Frame", "FT text"]}')
    df = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu"))["a"]
    assert list(df["label"]) == ["Frame"]
    assert any("Both not combined: FT text (fine-tuned) not run" in m for m in logged_messages(caplog))
    assert "| Both |" in (tmp_path / "g" / "runs.md").read_text() and "(not run)" in (tmp_path / "g" / "runs.md").read_text()


def test_planning_without_finetune_downloads_no_checkpoint(monkeypatch):
    """ablate without --finetune keys its fine-tuned rows from the local hub cache only: a hub
    checkpoint (1.2 GB for wav2vec2-large) is not fetched to plan a row that will not run."""
    import huggingface_hub
    from emofuse.extract.checkpoints import checkpoint_digest
    calls = []

    def fake(repo_id, local_files_only=False, **kw):
        calls.append(local_files_only)
        raise FileNotFoundError("not cached")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(EmofuseError, match="neither a local folder nor in the hub cache"):
        checkpoint_digest("someone/some-model", fetch=False)
    assert calls == [True]
    with pytest.raises(EmofuseError, match="hub checkpoint that can be fetched"):
        checkpoint_digest("someone/some-model")
    assert calls == [True, True, False]


def test_a_store_changed_while_the_grid_trains_is_never_filed_under_the_old_key(store, tmp_path, monkeypatch):
    """ablate plans its keys from the store, then trains: a commit in between (align-segments
    while the grid runs) made a run of the new content sit under the old content's key, and the
    tables mixed the two."""
    import emofuse.pipelines.train as train_mod
    from emofuse.pipelines.ablate import run_key
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}')
    real = train_mod.store_fingerprints
    monkeypatch.setattr(train_mod, "store_fingerprints", lambda fs, cfg: {**real(fs, cfg), "F": "new segments"})
    cfg = AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu")
    with pytest.raises(EmofuseError, match="changed while ablate ran: 1 configuration.*no table was written"):
        run_ablate(cfg)
    (moved,) = os.listdir(tmp_path / "g" / "runs")
    config = json.loads((tmp_path / "g" / "runs" / moved / "config.json").read_text())
    assert moved == run_key(config["identity"], config["fingerprints"])   # filed under what it read
    assert not (tmp_path / "g" / "tables").exists()
    monkeypatch.setattr(train_mod, "store_fingerprints", real)
    df = run_ablate(cfg)["a"]            # the store as planned: trained again under its own key
    assert len(os.listdir(tmp_path / "g" / "runs")) == 2 and df["ua_mean"].notna().all()


def test_a_store_change_and_a_diverged_row_are_said_in_one_error(store, tmp_path, monkeypatch):
    """Before: when the store changed while the grid trained, the error said so and the rows that
    diverged meanwhile were only in the log; the user re-ran, waited, and learnt of them then."""
    import emofuse.pipelines.train as train_mod
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                          '{label: "Wild T", fusion: none, granularity: T, lr: 1.0e+36}')
    real = train_mod.store_fingerprints
    monkeypatch.setattr(train_mod, "store_fingerprints", lambda fs, cfg: {**real(fs, cfg), "F": "new segments"})
    cfg = AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu")
    with pytest.raises(EmofuseError, match=r"changed while ablate ran: 1 configuration.*run the same command again "
                                           r"\(besides, 1 configuration\(s\) of the grid diverged: Wild T \(the first: "
                                           r".*lower those rows' lr in the spec first\)$"):
        run_ablate(cfg)


@pytest.mark.parametrize("how", [{}, {"jobs": 2}, {"executor": "submitit", "cluster": "local"}])
def test_a_row_that_diverges_does_not_stop_the_grid(store, tmp_path, caplog, how):
    """Before: the first row that diverged (a learning rate too high) stopped the grid, so an
    overnight grid left every later row unrun. Now the other rows train, the grid ends without
    tables naming the row, and once its lr is lowered only it trains."""
    if how.get("executor"):
        pytest.importorskip("submitit")   # a test extra (setup.cfg), installed by CI
    caplog.set_level(logging.INFO, "emofuse")
    rows = ['{label: "Wild T", fusion: none, granularity: T, lr: 1.0e+36}', '{label: "Frame", fusion: none, granularity: F}',
            '{label: "Wild F", fusion: none, granularity: F, lr: 1.0e+36}',
            '{label: "Wild F again", fusion: none, granularity: F, lr: 1.0e+36}']   # one key, two labels
    spec = one_table_spec(tmp_path, *rows)
    out = tmp_path / "g"
    cfg = AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu", **how)
    # named in the grid's order (whichever finished first), each key with all its labels
    with pytest.raises(EmofuseError, match=r"2 configuration\(s\) of the grid diverged: Wild T, Wild F = Wild F again "
                                           r"\(the first: (\S+): repeat 0, test session 1 diverged: .*learning rate "
                                           r"1e\+36\)\)\. The other rows' runs are kept; no table was written") as e:
        run_ablate(cfg)
    first = re.search(r"the first: (\S+): repeat", str(e.value)).group(1)
    assert json.loads((Path(first) / "config.json").read_text())["config"]["granularity"] == "T"   # Wild T's
    assert len([r for r in os.listdir(out / "runs") if (out / "runs" / r / "summary.json").exists()]) == 1
    assert not (out / "tables").exists()
    spec.write_text(spec.read_text().replace("lr: 1.0e+36", "lr: 2.0e-3"))
    caplog.clear()
    df = run_ablate(cfg)["a"]
    assert "3 configurations, 1 already finished, 2 to run" in logged_messages(caplog)[0]
    assert list(df["label"]) == ["Wild T", "Frame", "Wild F", "Wild F again"] and df["ua_mean"].notna().all()


def test_parallel_jobs_give_the_same_numbers(store, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    a = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "a"), device="cpu"))
    b = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "b"), device="cpu", jobs=2))
    cols = ["label", "ua_mean", "wa_mean", "f1_mean"]
    pd.testing.assert_frame_equal(a["a"][cols], b["a"][cols])


def test_bundled_specs_load_and_bad_specs_are_refused(tmp_path):
    ml = load_spec("paper-multilevel")
    assert [t["name"] for t in ml["tables"]] == ["table1", "table2", "table3"]
    assert len(ml["tables"][0]["rows"]) == 10 and len(ml["tables"][1]["rows"]) == 16
    assert load_spec("paper-cma")["tables"][0]["rows"][0]["fusion"] == "cma"
    assert load_spec("demo")["name"] == "demo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  - name: x\n    rows:\n      - {label: a, fusion: none, granularity: F, lr_typo: 1}\n")
    with pytest.raises(EmofuseError, match="unknown keys \\['lr_typo'\\]"):
        load_spec(str(bad))
    bad.write_text("tables:\n  - name: x\n    rows:\n      - {label: c, combine: [nope]}\n")
    with pytest.raises(EmofuseError, match="refers to \\['nope'\\]"):
        load_spec(str(bad))
    with pytest.raises(EmofuseError, match="neither a bundled spec"):
        load_spec("no-such-spec")
    # before: a misspelt 'defaults' (or a table key) was ignored and the grid trained 5 x 100 epochs
    bad.write_text("defualts: {repeats: 1}\ntables:\n  - name: x\n    rows:\n      - {label: a, fusion: none, granularity: F}\n")
    with pytest.raises(EmofuseError, match="bad.yaml: unknown top-level keys \\['defualts'\\]"):
        load_spec(str(bad))
    bad.write_text("tables:\n  - name: x\n    rowz: []\n    rows:\n      - {label: a, fusion: none, granularity: F}\n")
    with pytest.raises(EmofuseError, match="table 'x': unknown keys \\['rowz'\\]"):
        load_spec(str(bad))
    # options as train-head spells them, as in --config files (before: refused as unknown keys)
    bad.write_text("defaults: {norm-streams: all, repeats: 1}\ntables:\n  - name: x\n    rows:\n"
                   "      - {label: a, fusion: late, granularity: F+T, audio-layers: 1-2, norm: global}\n")
    spec = load_spec(str(bad))
    assert spec["_labels"]["a"]["audio_layers"] == "1-2" and spec["defaults"]["norm_streams"] == "all"
    bad.write_text("tables:\n  - name: x\n    rows:\n      - {label: a, fusion: none, granularity: F, "
                   "audio-layers: 1, audio_layers: 2}\n")
    with pytest.raises(EmofuseError, match="both 'audio-layers' and 'audio_layers' are given, one option spelt"):
        load_spec(str(bad))
    bad.write_text("tables:\n  - name: x\n    rows:\n      - {label: a, fusion: none, granularity: F, audio-layer: 1}\n")
    with pytest.raises(EmofuseError, match=r"unknown keys \['audio-layer'\]"):   # as written, not 'audio_layer'
        load_spec(str(bad))
    bad.write_text("tables:\n  - name: x\n    rows: [a]\n")   # before: AttributeError ('str' object has no 'get')
    with pytest.raises(EmofuseError, match="table 'x': row 'a' is not a mapping"):
        load_spec(str(bad))


def test_sigkilled_grid_resumes_without_recomputing_finished_runs(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    """Kill -9 the ablate process once a first configuration has finished; the re-run keeps it."""
    import signal
    import subprocess
    import sys
    import time

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("epochs: 3", "epochs: 6"))
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "emofuse", "ablate", "--store", store, "--spec", str(spec), "--out", str(out),
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    finished = []
    while time.time() < deadline and proc.poll() is None:
        finished = [d for d in (out / "runs").glob("*") if (d / "summary.json").exists()] if (out / "runs").exists() else []
        if finished:
            break
        time.sleep(0.05)
    assert finished and proc.poll() is None, "the grid finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the grid ended before the kill landed"
    stamp = {d: (d / "summary.json").stat().st_mtime for d in finished}
    assert not (out / "tables.md").exists()
    caplog.clear()
    res = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu"))
    msgs = logged_messages(caplog)
    assert f"{len(finished)} already finished" in msgs[0]
    for d, t in stamp.items():
        assert (d / "summary.json").stat().st_mtime == t
    assert len(res["a"]) == 3 and (out / "tables.md").exists()


def test_rows_sharing_streams_read_them_once_and_the_plan_is_printed(store, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    from emofuse.store import FeatureStore

    reads = []
    load = FeatureStore.load
    monkeypatch.setattr(FeatureStore, "load", lambda self, s, kind, **kw: reads.append((s, kind)) or load(self, s, kind, **kw))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    caplog.clear()
    run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu"))
    msgs = logged_messages(caplog)
    # the frames are read once for both rows
    assert sorted(reads) == [("audio", "frames"), ("audio", "segments/syllable"), ("text", "tokens")]
    plan = [m for m in msgs if "plan:" in m]
    assert len(plan) == 1 and "2 configurations in this process, on cpu" in plan[0] and "F × 1, F+S+T × 1" in plan[0]


def test_submitit_local_executor_runs_the_grid_and_resumes(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    pytest.importorskip("submitit")   # a test extra (setup.cfg), installed by CI
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    local = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "a"), device="cpu"))
    out = tmp_path / "c"
    caplog.clear()
    sent = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu", executor="submitit",
                                   cluster="local", cluster_options=("timeout_min=10",)))
    msgs = logged_messages(caplog)
    assert sum("submitit jobs" in m for m in msgs) == 1 and sum(" finished" in m and "job " in m for m in msgs) == 2
    cols = ["label", "ua_mean", "wa_mean", "f1_mean", "key"]
    pd.testing.assert_frame_equal(local["a"][cols], sent["a"][cols])
    # a run lost on the cluster: resubmitted alone, its finished folds kept
    victim = sent["a"].loc[sent["a"]["label"] == "Late F+S", "key"].item()
    os.remove(out / "runs" / victim / "summary.json")
    os.remove(out / "runs" / victim / "runs" / "r0_s1" / "metrics.json")
    kept = os.path.getmtime(out / "runs" / victim / "runs" / "r1_s2" / "model.safetensors")
    caplog.clear()
    again = run_ablate(AblateConfig(store=store, spec=str(spec), out=str(out), device="cpu", executor="submitit",
                                    cluster="local"))
    msgs = logged_messages(caplog)
    assert "2 configurations, 1 already finished, 1 to run" in msgs[0]
    assert os.path.getmtime(out / "runs" / victim / "runs" / "r1_s2" / "model.safetensors") == kept
    pd.testing.assert_frame_equal(sent["a"][cols], again["a"][cols])
    with pytest.raises(EmofuseError, match="KEY=VALUE"):
        AblateConfig(store=store, spec=str(spec), out=str(out), executor="submitit", cluster_options=("oops",))


def test_one_configuration_spelt_several_ways_is_one_key_and_canonical_keys_are_unchanged():
    """Before: 'S+F', 'f+s', an explicit text equal to its default and folds in another order each
    got a key of their own (retrained, the same numbers). Keys of the usual spellings stay."""
    from emofuse.pipelines.ablate import run_key
    from emofuse.pipelines.train import TrainConfig

    def key(versioned=True, **kw):
        ident = TrainConfig(store="s", out="o", **kw).identity()
        if not versioned:
            del ident["results_version"]
        return run_key(ident, {"a": "b"})
    # the key this configuration has always had, but for the results version (rundir.RESULTS_VERSION)
    assert key(False, fusion="late", granularity="F+S") == "2da57d7351f8"
    assert key(False, fusion="late", granularity="F+S", folds=("1", "2")) == "33183e08ce41"
    late = key(fusion="late", granularity="F+S")
    assert late == "d0760185c9ad"
    assert late == key(fusion="late", granularity="S+F") == key(fusion="late", granularity="f+s") \
        == key(fusion="late", granularity="F+S", text=True)
    assert late != key(fusion="late", granularity="F+S", text=False)
    assert key(fusion="late", granularity="F+S", folds=("1", "2")) == key(fusion="late", granularity="F+S", folds=("2", "1"))


def test_table_csv_names_run_folders_relative_to_the_grid():
    """Before: the csv's run_dir was --out as typed (a relative one was relative to where ablate ran)."""
    df = golden_frame().assign(key=["aaa", "bbb", "ccc"], run_dir=["/abs/grid/runs/aaa", "grid/runs/bbb", "x/runs/ccc"])
    assert list(pd.read_csv(__import__("io").StringIO(tables.to_csv(df)))["run_dir"]) == \
        ["runs/aaa", "runs/bbb", "runs/ccc"]


def test_a_resume_on_another_cpu_thread_count_is_said(caplog):
    """ablate --jobs N trains on cores / N threads; CPU sums round differently with the thread count,
    so a grid resumed with another --jobs mixes folds of two arithmetics: said, once per run."""
    import torch

    from emofuse.pipelines.train import warn_other_threads
    now = torch.get_num_threads()
    with caplog.at_level(logging.WARNING, logger="emofuse"):
        warn_other_threads("RUN", [{"cpu_threads": now}, {"cpu_threads": None}, {}])
        assert not caplog.records
        warn_other_threads("RUN", [{"cpu_threads": now}, {"cpu_threads": now + 3}])
    assert [r.getMessage() for r in caplog.records] == [
        f"RUN: some finished runs were trained on {now + 3} CPU thread(s), this process uses {now}; CPU results "
        "differ in the last digits with the thread count, so this configuration's runs will not be bit-identical to "
        "an uninterrupted run's (resume with the same --jobs, or the same OMP_NUM_THREADS, for that)"]


@pytest.mark.parametrize("second,match", [
    ("a", r"two tables are named 'a'; each table needs a name of its own"),
    ("A", r"two tables are named 'A' and 'a'"),
    ("a-trained", r"two tables are named 'a-trained' and 'a'"),   # figures a-trained-*.png would collide
    ("my table", r"table name 'my table' cannot name its files"),
    ("../x", r"table name '../x' cannot name its files"),
])
def test_table_names_are_unique_file_names(tmp_path, second, match):
    """Before: a second table named like the first overwrote its results; tables.md printed the
    second table twice and the first nowhere, and report drew one section twice (exit 0)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("tables:\n  - name: a\n    rows:\n      - {label: X, fusion: none, granularity: F}\n"
                    f"  - name: '{second}'\n    rows:\n      - {{label: Y, fusion: none, granularity: T}}\n")
    with pytest.raises(EmofuseError, match=match):
        load_spec(str(spec))


def _end_abruptly(*args, **kwargs):
    """A ``--jobs`` worker killed from outside (the OOM killer, kill -9): it ends without a word."""
    os._exit(9)


def test_a_worker_killed_from_outside_gets_one_sentence(store, tmp_path, monkeypatch):
    """Before: a raw traceback ending in BrokenProcessPool, no hint that a re-run resumes."""
    import emofuse.pipelines.ablate as ablate_mod
    monkeypatch.setattr(ablate_mod, "_train_worker", _end_abruptly)   # the spawned workers import it by name
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                          '{label: "Text", fusion: none, granularity: T}')
    with pytest.raises(EmofuseError, match=r"a worker process of ablate --jobs 2 ended without a word \(killed from "
                                           r"outside, or out of memory\? Python: .*\) after 0 of 2 configurations; the "
                                           r"finished runs are kept: run the same command again"):
        run_ablate(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu", jobs=2))


def test_cluster_settings_without_submitit_and_a_missing_slurm_are_refused(store, tmp_path, monkeypatch):
    """Before: --cluster and --cluster-option without --executor submitit were ignored (the grid
    trained here); --cluster slurm without Slurm was submitit's traceback; on Slurm without a
    time limit every job ended after submitit's default 5 minutes."""
    submitit = pytest.importorskip("submitit")   # a test extra (setup.cfg), installed by CI
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}')
    for kw, given in (({"cluster": "local"}, "--cluster"),
                      ({"cluster_options": ("timeout_min=5",)}, "--cluster-option")):
        with pytest.raises(EmofuseError, match=f"^{given} is for --executor submitit, which was not given"):
            AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), **kw)

    class NoSlurm:
        def __init__(self, folder, cluster=None):
            raise RuntimeError('Could not detect "srun", are you indeed on a slurm cluster?')
    monkeypatch.setattr(submitit, "AutoExecutor", NoSlurm)
    cfg = AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), executor="submitit", cluster="slurm")
    with pytest.raises(EmofuseError, match=r"--cluster slurm: submitit could not start that cluster here \(Could not "
                                           r"detect \"srun\""):
        run_ablate(cfg)

    class Slurm:
        cluster = "slurm"

        def __init__(self, folder, cluster=None):
            pass
    monkeypatch.setattr(submitit, "AutoExecutor", Slurm)
    with pytest.raises(EmofuseError, match=r"ablate on Slurm needs each job's time limit: --cluster-option "
                                           r"timeout_min=MINUTES \(submitit's default, 5 minutes"):
        run_ablate(cfg)
    assert not (tmp_path / "g" / "runs").exists() or not os.listdir(tmp_path / "g" / "runs")   # nothing trained


def test_why_a_cluster_job_failed_is_said_in_a_few_words():
    """Before: the last line of submitit's exception, a log path, or the job's last progress line
    (for a job killed from outside), read as if it were the error."""
    from emofuse.pipelines.ablate import _job_failure
    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
             "last):\n  File \"x.py\", line 3, in f\nKeyError: 'frames'\n\n----------------------\nYou can check full "
             "logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /o/1_0_log.err\n  - /o/1_0_log.out")
    assert _job_failure(RuntimeError(trace), {}) == "KeyError: 'frames'"
    timed = trace.replace("KeyError: 'frames'", "submitit.core.utils.UncompletedJobError: timed-out and not "
                                                "checkpointable")
    assert _job_failure(RuntimeError(timed), {"timeout_min": 30}) == (
        "its time limit ran out (timeout_min=30: raise it, or split the grid)")
    assert _job_failure(RuntimeError(timed), {"slurm_time": "2:00:00"}) == (
        "its time limit ran out (slurm_time=2:00:00: raise it, or split the grid)")
    assert _job_failure(RuntimeError(""), {}) == "RuntimeError"   # before: IndexError, a traceback
    killed = ("Job 16962 (task: 0) with path /o/16962_0_result.pkl\nhas not produced any output (state: FAILED)\n"
              "No error stream produced. Look at stdout: /o/x.out\n----\ntrain-head none F, linear head: 80 utterances")
    assert _job_failure(RuntimeError(killed), {}) == (
        "it ended without a result (state FAILED): killed from outside, or out of memory?")


def test_a_cluster_job_stopped_by_a_users_error_names_its_row_and_says_why(store, tmp_path, monkeypatch):
    """Before: the message was a log path; the sentence (here: the row's folder is in use) was only
    in the job's log, and the job was named by number only. Local jobs now get a time limit of
    their own (submitit's 2 minutes ended every real row)."""
    submitit = pytest.importorskip("submitit")   # a test extra (setup.cfg), installed by CI
    from emofuse.pipelines.ablate import LOCAL_TIMEOUT_MIN, _plan
    from emofuse.pipelines.rundir import run_lock
    given, sent = [], []
    real, real_submit = submitit.AutoExecutor.update_parameters, submitit.AutoExecutor.submit
    monkeypatch.setattr(submitit.AutoExecutor, "update_parameters",
                        lambda self, **kw: (given.append(kw), real(self, **kw))[1])
    monkeypatch.setattr(submitit.AutoExecutor, "submit",
                        lambda self, fn, *a, **kw: (sent.append(a), real_submit(self, fn, *a, **kw))[1])
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}',
                          '{label: "Text", fusion: none, granularity: T}')
    cfg = AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu", executor="submitit",
                       cluster="local")
    _, key_of = _plan(cfg, load_spec(str(spec)))
    busy = tmp_path / "g" / "runs" / key_of["Text"]
    with run_lock(str(busy), "train-head"):   # another process trains that row now
        with pytest.raises(EmofuseError, match=r"1 cluster job\(s\) failed: job \S+, row Text: \S+ is in use: "
                                               r".*Run the same ablate again to resume"):
            run_ablate(cfg)
    assert given[0]["timeout_min"] == LOCAL_TIMEOUT_MIN
    assert all(a[-1][0] == os.getpid() for a in sent)   # each local job watches this ablate
    assert (tmp_path / "g" / "runs" / key_of["Frame"] / "summary.json").exists()   # the other job's row is kept


def test_a_local_cluster_job_ends_with_the_ablate_that_sent_it(tmp_path):
    """Before: a SIGKILLed ablate left its --cluster local jobs training as orphans (submitit's
    controller outlives its parent), and the next ablate's jobs failed on their run locks."""
    import subprocess
    import sys
    import time
    from emofuse.pipelines.ablate import _start_time
    ablate = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = _start_time(ablate.pid)   # taken by ablate itself, as _submit does
    job = subprocess.Popen([sys.executable, "-c", f"""
import time
from emofuse.pipelines.ablate import _die_with_process
_die_with_process({ablate.pid}, {started!r})
print("watching", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline() == "watching\n"
    time.sleep(1)
    assert job.poll() is None   # it trains while ablate lives
    ablate.kill()   # not reaped yet: a zombie, which os.kill(pid, 0) still finds
    assert job.wait(timeout=30) == 1
    ablate.wait()


def test_a_process_whose_start_cannot_be_read_counts_as_alive(monkeypatch):
    """Before: any error reading /proc/PID/stat (too many open files) counted as 'ablate is gone',
    and a healthy job or --jobs worker ended itself."""
    import builtins
    from emofuse.pipelines.ablate import _start_time
    assert _start_time(os.getpid())   # this process, alive
    real = builtins.open

    def failing(path, *a, **kw):
        if str(path).startswith("/proc/") and str(path).endswith("/stat"):
            raise OSError(24, "Too many open files")
        return real(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", failing)
    assert _start_time(os.getpid()) is None   # cannot tell: alive, not gone ("")
    monkeypatch.setattr(builtins, "open", real)
    assert _start_time(2 ** 22 + 12345) == ""   # no such process: gone


def test_a_table_renamed_or_removed_leaves_no_files_behind(store, tmp_path):
    """Before: renaming table a to b kept tables/a.md|.tex|.csv with the superseded numbers, so a
    paper's \\input{tables/a.tex} went on showing them."""
    spec = one_table_spec(tmp_path, '{label: "Frame", fusion: none, granularity: F}')
    cfg = AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), device="cpu")
    run_ablate(cfg)
    (tmp_path / "g" / "tables" / "notes.md").write_text("mine")   # a file of the user's own is left alone
    spec.write_text(spec.read_text().replace("name: a\n", "name: b\n"))
    run_ablate(cfg)   # the runs are reused: nothing trains
    assert sorted(os.listdir(tmp_path / "g" / "tables")) == ["b.csv", "b.md", "b.tex", "notes.md"]
