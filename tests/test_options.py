"""One declaration per option: the command-line parsers are derived from the config dataclasses
(defaults agree, every field reachable or listed as not a CLI option), YAML --config files and
spec rows are type-checked by the shared helper (emofuse/options.py)."""

import argparse
import dataclasses
import json

import pytest
import yaml

from emofuse import cli
from emofuse.errors import EmofuseError
from emofuse.hashing import sha256_hex
from emofuse.options import add_options, config_from_args, opt
from emofuse.pipelines.ablate import AblateConfig, load_spec
from emofuse.pipelines.rundir import RESULTS_VERSION
from emofuse.pipelines.align import AlignConfig
from emofuse.pipelines.demo import DemoConfig
from emofuse.pipelines.extract import ExtractConfig
from emofuse.pipelines.finetune import FinetuneConfig
from emofuse.pipelines.train import TrainConfig


def _demo_parser():
    ap = argparse.ArgumentParser(prog="emofuse demo")
    add_options(ap, DemoConfig)
    return ap


#: parser, its config, the arguments a parse needs, the fields that are not command-line options
CASES = {
    "extract-embeddings": (cli.extract_parser, ExtractConfig, ["--out", "s.h5", "--corpus", "demo"], ()),
    "align-segments": (cli.align_parser, AlignConfig, ["--store", "s.h5"], ("commit_utterances", "tier_names")),
    "train-head": (cli.train_parser, TrainConfig, ["--store", "s.h5", "--out", "run"], ()),
    "ablate": (cli.ablate_parser, AblateConfig, ["--store", "s.h5", "--spec", "demo", "--out", "g"], ()),
    "finetune": (cli.finetune_parser, FinetuneConfig,
                 ["--store", "s.h5", "--out", "run", "--audio-model", "a", "--text-model", "t"], ()),
    "demo": (_demo_parser, DemoConfig, [], ()),
}


@pytest.mark.parametrize("prog", sorted(CASES))
def test_parser_defaults_are_the_dataclass_defaults(prog):
    make, cls, argv, not_cli = CASES[prog]
    ap = make()
    dests = {a.dest for a in ap._actions} - {"help"}
    names = {f.name for f in dataclasses.fields(cls)}
    # every field is an option, or declared cli=False (and listed here); every other option is listed in cli.py
    off = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("cli", True)}
    assert off == set(not_cli)
    assert names - off <= dests, f"{prog}: fields without an option: {sorted(names - off - dests)}"
    assert dests - names == set(cli.CLI_ONLY.get(prog, ())), f"{prog}: options that are not fields: {dests - names}"
    # a parse that gives only what is required yields the dataclass's defaults, field by field
    args = ap.parse_args(argv)
    given = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    built = config_from_args(cls, args)
    for f in dataclasses.fields(cls):
        if f.name in given or f.name in off:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert getattr(built, f.name) == default, f"{prog} --{f.name}: CLI default {getattr(built, f.name)!r}, " \
                                                  f"dataclass default {default!r}"


def test_flags_and_forms_as_before():
    args = cli.train_parser().parse_args(["--out", "r", "--store", "s", "--fusion", "none", "--no-text", "--folds", "1, 2",
                                          "--lr", "0.01", "--runs-at-once", "0"])
    c = config_from_args(TrainConfig, args)
    assert (c.text, c.folds, c.lr, c.runs_at_once) == (False, ("1", "2"), 0.01, 0)
    assert config_from_args(TrainConfig, cli.train_parser().parse_args(["--out", "r", "--text"])).text is True
    e = config_from_args(ExtractConfig, cli.extract_parser().parse_args(
        ["--out", "s", "--corpus", "demo", "--text-model", "none"]))
    assert e.text_model is None and e.audio_model == "facebook/wav2vec2-base"
    a = config_from_args(AblateConfig, cli.ablate_parser().parse_args(
        ["--store", "s", "--spec", "demo", "--out", "g", "--executor", "submitit", "--cluster-option", "a=1",
         "--cluster-option", "b=2"]))
    assert a.cluster_options == ("a=1", "b=2")
    al = config_from_args(AlignConfig, cli.align_parser().parse_args(["--store", "s", "--granularities", "word"]))
    assert al.granularities == ("word",)
    with pytest.raises(SystemExit):   # choices come from the module constants
        cli.train_parser().parse_args(["--out", "r", "--norm", "z-score"])


def test_head_defaults_in_help_come_from_the_table(monkeypatch):
    from emofuse.heads.options import HEAD_DEFAULTS, default_text
    lr = cli.train_parser()._option_string_actions["--lr"].help
    assert default_text("lr") in lr and "1e-3" in lr and "1e-5 for cma, cnn-blstm and proj-stats" in lr
    monkeypatch.setitem(HEAD_DEFAULTS, "linear", {**HEAD_DEFAULTS["linear"], "hidden": 96})
    assert default_text("hidden") == "96; 128 for transformer and concat"


def test_run_keys_unchanged():
    """The run key of the default configuration, as it was before options were derived, but for
    the results version every identity now holds (rundir.RESULTS_VERSION)."""
    def key(cfg, version=True):
        ident = cfg.identity()
        assert ident.pop("results_version") == RESULTS_VERSION
        return sha256_hex(json.dumps(ident if not version else cfg.identity(), sort_keys=True), 12)
    default, cma = TrainConfig(store="s", out="o"), TrainConfig(store="s", out="o", fusion="cma")
    assert (key(default, False), key(cma, False)) == (KEY_DEFAULT, KEY_CMA)
    assert (key(default), key(cma)) == ("8b70dfec10ac", "e113972bbfe1")


def test_an_int_given_for_a_float_option_is_the_same_run(tmp_path):
    """Before: a spec's ``lr: 1`` (YAML's int) kept a key of its own beside ``--lr 1`` (argparse's
    float) and ``lr: 1.0``: the same training, run twice under two keys."""
    d = load_spec(_spec(tmp_path, "{label: r, lr: 1, dropout: 0}"))
    assert isinstance(d["_labels"]["r"]["lr"], float) and isinstance(d["_labels"]["r"]["dropout"], float)
    assert TrainConfig(store="s", out="o", lr=d["_labels"]["r"]["lr"]).identity() == \
        TrainConfig(store="s", out="o", lr=1.0).identity()


KEY_DEFAULT, KEY_CMA = "0f735445569f", "7b06ae011658"   # computed with the code before this change


def _spec(tmp_path, row: str, defaults: str = "{repeats: 1}"):
    p = tmp_path / "spec.yaml"
    p.write_text(f"name: t\ndefaults: {defaults}\ntables:\n  - name: a\n    rows:\n      - {row}\n")
    return str(p)


def test_spec_row_of_the_wrong_type_fails_at_load(tmp_path):
    path = _spec(tmp_path, "{label: r1, fusion: none, granularity: F, epochs: ten}")
    with pytest.raises(EmofuseError) as e:
        load_spec(path)
    assert str(e.value) == f"{path}, row 'r1': key 'epochs' must be an integer, found 'ten' (a string)"
    for row, words in (("{label: r, text: maybe}", "'text' must be true or false or null, found 'maybe'"),
                       ("{label: r, lr: fast}", "'lr' must be a number or null, found 'fast'"),
                       ("{label: r, folds: {a: 1}}", "'folds' must be a list of strings"),
                       ("{label: r, fusion: 3}", "'fusion' must be a string, found 3 (an integer)"),
                       ("{label: r, finetune: true, system: audio, epochs: 2.5}",
                        "'epochs' must be an integer, found 2.5 (a number)")):
        with pytest.raises(EmofuseError, match="row 'r': key " + words.replace("(", r"\(").replace(")", r"\)")):
            load_spec(_spec(tmp_path, row))
    with pytest.raises(EmofuseError, match=r"defaults: key 'epochs' must be an integer, found 'ten'"):
        load_spec(_spec(tmp_path, "{label: r}", "{epochs: ten}"))
    # what a config refuses is said at load time too, naming the row
    with pytest.raises(EmofuseError, match=r"row 'r': --fusion none trains one stream"):
        load_spec(_spec(tmp_path, "{label: r, fusion: none, granularity: F+T}"))
    # the forms YAML gives are accepted and brought to the fields' forms
    d = load_spec(_spec(tmp_path, "{label: r, folds: [1, 2], lr: 1e-3}"))
    assert d["_labels"]["r"]["folds"] == ("1", "2") and d["_labels"]["r"]["lr"] == 1e-3


def _printed(out: str) -> dict:
    assert out.startswith("# ") and "--config FILE reads this output back" in out.splitlines()[0]
    return yaml.safe_load(out)   # the whole output: its header is a YAML comment


def test_yaml_config_round_trip_with_a_cli_override(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("store: s.h5\nout: run\nfusion: none\ngranularity: F\nbatch-size: 16\nlr: 1e-3\n"
                   "folds: [1, 3]\nepochs: 7\n")
    assert cli.train_head(["--config", str(cfg), "--epochs", "3", "--print-config"]) == 0
    printed = _printed(capsys.readouterr().out)
    assert printed["epochs"] == 3                                  # the command line wins
    assert (printed["batch_size"], printed["lr"], printed["folds"]) == (16, 1e-3, ["1", "3"])
    assert printed["dropout"] == TrainConfig.__dataclass_fields__["dropout"].default   # defaults filled in
    assert set(printed) == {f.name for f in dataclasses.fields(TrainConfig)}
    # the printed configuration read back is the same configuration: the output saved as it is
    # (before: its first line was plain text, which --config refused as an unknown option)
    assert cli.train_head(["--config", str(cfg), "--epochs", "3", "--print-config"]) == 0
    again = tmp_path / "again.yaml"
    again.write_text(capsys.readouterr().out)
    assert cli.train_head(["--config", str(again), "--print-config"]) == 0
    assert _printed(capsys.readouterr().out) == printed
    want = TrainConfig(store="s.h5", out="run", fusion="none", batch_size=16, lr=1e-3, folds=("1", "3"), epochs=3)
    back = TrainConfig(**{k: tuple(v) if k == "folds" else v for k, v in printed.items()})
    assert back.identity() == want.identity()


def test_yaml_config_unknown_key_or_wrong_type_refused(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("store: s.h5\nout: run\nepoch: 3\n")
    assert cli.train_head(["--config", str(cfg), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"--config {cfg}: unknown option 'epoch'" in err and "epochs" in err
    cfg.write_text("store: s.h5\nout: run\nepochs: ten\n")
    assert cli.train_head(["--config", str(cfg)]) == 2
    assert f"--config {cfg}: option 'epochs' must be an integer, found 'ten' (a string)" in capsys.readouterr().err
    cfg.write_text("- a list\n")
    assert cli.train_head(["--config", str(cfg)]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    assert cli.train_head(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    # one option spelt both ways (before: the last one silently won; found by a review)
    cfg.write_text("store: s.h5\nout: run\naudio-layers: '1'\naudio_layers: '2'\n")
    assert cli.train_head(["--config", str(cfg), "--print-config"]) == 2
    assert f"--config {cfg}: both 'audio-layers' and 'audio_layers' are given" in capsys.readouterr().err


def test_finetune_config_file(tmp_path, capsys):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("store: s.h5\nout: run\nsystem: text\ntext-model: t\nmicro_batch: 4\n")
    assert cli.finetune(["--config", str(cfg), "--print-config", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    printed = _printed(out)
    assert (printed["system"], printed["micro_batch"], printed["epochs"], printed["lr"]) == ("text", 4, 2, 1e-5)
    again = tmp_path / "again.yaml"
    again.write_text(out)   # the output saved as it is reads back as the same configuration
    assert cli.finetune(["--config", str(again), "--print-config"]) == 0
    assert _printed(capsys.readouterr().out) == printed


def test_build_refuses_unknown_keys_with_a_sentence():
    from emofuse.options import build

    @dataclasses.dataclass(frozen=True)
    class C:
        n: int = opt(1)
        names: tuple[str, ...] | None = opt(None)

    assert build(C, {"n": 2, "names": "a,b"}, "here") == C(2, ("a", "b"))
    with pytest.raises(EmofuseError, match=r"^here: unknown key 'm'; the known ones are n, names$"):
        build(C, {"m": 1}, "here")
    with pytest.raises(EmofuseError, match=r"^here: key 'n' must be an integer, found True \(true/false\)$"):
        build(C, {"n": True}, "here")
