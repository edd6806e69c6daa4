"""Defaults that do not mislead and error messages whose suggestions work: hand-crafted streams
standardised by default, every --help default stated, --labels lists, validation before writing."""

import logging
import argparse
import json
import os

import pytest

from emofuse import cli
from emofuse.pipelines.train import TrainConfig, with_store_defaults
from emofuse.store import FeatureStore
from emofuse.testing.synthetic import make_synthetic_store
from emofuse.testing import logged_messages


@pytest.fixture(scope="module")
def egemaps_store(tmp_path_factory):
    """A store whose speech stream is named and described as an eGeMAPS stream (default_norm global)."""
    path = tmp_path_factory.mktemp("egemaps") / "eg.h5"
    make_synthetic_store(path, per_class=3, sessions=3, layers=1, dim=8, planted_layer=0, mean_seconds=1.0,
                         audio_stream="egemaps", audio_info={"encoder": "opensmile", "default_norm": "global"})
    return str(path)


def _config(run_dir) -> dict:
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f)


def test_handcrafted_stream_is_standardised_by_default(egemaps_store, tmp_path):
    common = ["--store", egemaps_store, "--fusion", "none", "--granularity", "F", "--audio-stream", "egemaps",
              "--repeats", "1", "--epochs", "2", "--folds", "1", "--device", "cpu"]
    assert cli.train_head(common + ["--out", str(tmp_path / "default")]) == 0
    assert _config(tmp_path / "default")["identity"]["norm"] == "global"
    assert cli.train_head(common + ["--out", str(tmp_path / "none"), "--norm", "none"]) == 0   # explicit wins
    assert _config(tmp_path / "none")["identity"]["norm"] == "none"
    # text (an encoder stream) keeps none; the eGeMAPS stream outside --norm-streams does not switch it on
    with FeatureStore(egemaps_store) as fs:
        t = with_store_defaults(fs, TrainConfig(store=egemaps_store, out="", fusion="none", granularity="T"))
        assert t.norm == "none"
        late = with_store_defaults(fs, TrainConfig(store=egemaps_store, out="", audio_stream="egemaps"))
        assert late.norm == "global" and late.norm_keys() == ["F"]
        old = with_store_defaults(fs, TrainConfig(store=egemaps_store, out="", fusion="none", granularity="F",
                                                  audio_stream="egemaps", norm="speaker"))
        assert old.norm == "speaker"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, captured at parse time."""
    got = {}
    orig = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        got.setdefault(self.prog, self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        for fn in (cli.extract_embeddings, cli.align_segments, cli.train_head, cli.ablate, cli.finetune, cli.report):
            with pytest.raises(SystemExit):
                fn([])
    finally:
        argparse.ArgumentParser.parse_args = orig
    return got


def test_every_help_states_every_default():
    parsers = _parsers()
    assert len(parsers) == 6
    missing = []
    for prog, ap in parsers.items():
        for a in ap._actions:
            if not a.option_strings or a.nargs == 0 or a.required:
                continue
            if a.default is not None and "default" not in (a.help or ""):
                missing.append(f"{prog} {a.option_strings[0]}")
            if a.default is not None and "default" in (a.help or "") and str(a.default) not in a.help \
                    and not (isinstance(a.default, float) and f"{a.default:g}" in a.help):
                missing.append(f"{prog} {a.option_strings[0]} (says another default than {a.default!r})")
    assert not missing, missing
    assert "global for hand-crafted" in " ".join((parsers["train-head"]._option_string_actions["--norm"].help,))


def test_labels_on_the_command_line_for_a_manifest(tmp_path):
    import numpy as np
    import soundfile as sf

    rows = []
    for k, label in enumerate(["angry", "happy", "neutral", "sad", "fear"]):
        sf.write(tmp_path / f"u{k}.wav", (np.random.default_rng(k).standard_normal(8000) * 0.1).astype(np.float32),
                 16000)
        rows.append(f"u{k},u{k}.wav,hello,{label},s{k % 2},{k % 2 + 1}")
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session\n" + "\n".join(rows) + "\n")
    out = tmp_path / "s.h5"
    assert cli.extract_embeddings(["--corpus", "manifest", "--manifest", str(tmp_path / "m.csv"), "--out", str(out),
                                   "--audio-model", "opensmile:eGeMAPSv02", "--text-model", "none",
                                   "--labels", "angry,happy,neutral,sad"]) == 0
    with FeatureStore(out) as fs:
        assert sorted(fs.utterances["label"]) == ["angry", "happy", "neutral", "sad"]


def test_train_head_refused_by_validation_writes_nothing(egemaps_store, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--store", egemaps_store, "--out", str(out), "--fusion", "none", "--granularity", "F",
            "--audio-stream", "egemaps", "--repeats", "1", "--epochs", "2", "--device", "cpu"]
    assert cli.train_head(base + ["--folds", "7"]) == 2
    err = capsys.readouterr().err
    assert "no such session; the store's sessions are 1, 2, 3 (e.g. --folds 1,2)" in err and "np.str_" not in err
    assert not out.exists()
    assert cli.train_head(base + ["--layers", "3"]) == 2
    assert not out.exists()
    # the corrected command is not refused as "another configuration"
    assert cli.train_head(base + ["--folds", "1"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "predictions.csv", "runs", "summary.json"]   # no run.lock left


def test_ablate_refused_by_validation_writes_nothing(egemaps_store, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 2}\ntables:\n  - name: a\n    rows:\n"
                    "      - {label: ok, fusion: none, granularity: F, audio_stream: egemaps}\n"
                    "      - {label: bad, fusion: none, granularity: F, audio_stream: egemaps, layers: '5'}\n")
    out = tmp_path / "grid"
    assert cli.ablate(["--store", egemaps_store, "--spec", str(spec), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "row 'bad'" in err and "layers [5] do not exist" in err
    assert not out.exists()
    assert cli.ablate(["--store", egemaps_store, "--spec", str(spec), "--out", str(out), "--device", "cpu",
                       "--folds", "9"]) == 2
    assert not out.exists()


def test_extract_refused_by_validation_writes_no_store(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert cli.extract_embeddings(["--corpus", "demo", "--out", str(out), "--audio-model", "untrained:wav2vec2-small",
                                   "--text-model", "none", "--layers", "99", "--limit", "2"]) == 2
    assert "layers [99] do not exist" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_store_lock_and_skipped_list_per_store(egemaps_store, tmp_path):
    from emofuse.pipelines.extract import skipped_tsv_path
    from emofuse.store import StoreWriter

    assert skipped_tsv_path(str(tmp_path / "a.h5")) == str(tmp_path / "a.skipped.tsv")
    assert skipped_tsv_path(str(tmp_path / "a.h5"), "1/4") == str(tmp_path / "a.skipped.shard-1-of-4.tsv")
    with StoreWriter(egemaps_store) as w:
        assert os.path.exists(egemaps_store + ".lock")
        w.finalize()
    assert not os.path.exists(egemaps_store + ".lock")


def test_progress_lines_when_output_goes_to_a_file(egemaps_store, tmp_path):
    import subprocess
    import sys

    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "emofuse", "train-head", "--store", egemaps_store, "--out",
                            str(tmp_path / "run"), "--fusion", "none", "--granularity", "F", "--audio-stream", "egemaps",
                            "--repeats", "2", "--epochs", "4", "--patience", "4", "--device", "cpu"],
                           stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "EMOFUSE_PROGRESS_SECONDS": "0.2"})
    text = log.read_text()
    assert r.returncode == 0, text
    lines = [x for x in text.splitlines() if x.startswith("train-head: ") and "runs (" in x]
    assert len(lines) >= 2 and "\r" not in text, text
    assert lines[-1].startswith("train-head: 6/6 runs (100%)") and lines[-1].endswith("(done)")
    assert any("repeat" in x and "val UA" in x for x in lines)   # where training is, not only a count


def test_short_jobs_print_no_progress_line_and_terminals_get_a_bar():
    import io

    from tqdm import tqdm

    from emofuse.pipelines.progress import LineProgress, progress_bar

    buf = io.StringIO()
    with progress_bar(total=3, unit="utt", desc="x", file=buf) as bar:
        assert isinstance(bar, LineProgress)
        bar.update(3)
    assert buf.getvalue() == ""   # shorter than the interval: silent

    class Tty(io.StringIO):
        def isatty(self):
            return True

    with progress_bar(total=3, unit="utt", desc="x", file=Tty()) as bar:
        assert isinstance(bar, tqdm)


def test_ablate_names_rows_by_what_they_train_and_indexes_run_folders(egemaps_store, tmp_path, caplog):
    caplog.set_level(logging.INFO, "emofuse")
    import pandas as pd

    from emofuse.pipelines.ablate import AblateConfig, run_ablate

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 1, folds: [1, 2]}\ntables:\n  - name: a\n    rows:\n"
                    "      - {label: co, fusion: coattention, granularity: F+P, audio_stream: egemaps, proj: 8, heads: 2}\n"
                    "      - {label: cat, fusion: concat, granularity: F, audio_stream: egemaps, proj: 8, heads: 2}\n"
                    "      - {label: both, combine: [co, cat]}\n")
    caplog.clear()
    run_ablate(AblateConfig(store=egemaps_store, spec=str(spec), out=str(tmp_path / "g"), device="cpu"))
    msgs = logged_messages(caplog)
    text = "\n".join(msgs)
    assert "co: coattention F+P+T (F+P: egemaps, T: text)" in text and "cat: concat F+T (F: egemaps, T: text)" in text
    assert "(linear)" not in text
    idx = pd.read_csv(tmp_path / "g" / "runs.csv")
    assert list(idx["label"]) == ["co", "cat", "both"] and idx["finished"].all()
    for r in idx.itertuples():
        assert (tmp_path / "g" / r.folder / "summary.json").exists()
    assert idx.loc[2, "configuration"] == "score combination of co, cat"
    assert "| co | `runs/" in (tmp_path / "g" / "runs.md").read_text()


@pytest.mark.parametrize("entry, builder", [("extract_embeddings", "extract_parser"), ("align_segments", "align_parser"),
                                            ("train_head", "train_parser"), ("ablate", "ablate_parser"),
                                            ("finetune", "finetune_parser")])
def test_ctrl_c_while_starting_is_one_line_and_status_130(entry, builder, monkeypatch, capsys):
    """Before: Ctrl-C while a stage was still importing torch and building its parser printed a
    KeyboardInterrupt traceback (the stage's own handler only covers the job)."""
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, builder, interrupted)
    assert getattr(cli, entry)(["--help"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == cli.INTERRUPTED
