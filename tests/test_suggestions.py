"""Every suggestion an error message makes is a command that works when pasted: each test below
provokes one suggestion site, takes the command (or the option) out of the message, runs it, and
sees it succeed. Sites: a missing stream in train-head (another stream that has it, the
align-segments command, the extract-embeddings command), align-segments' --stream, --folds,
--fusion none with two streams, --norm-streams, an explicit --layers last on a one-layer stream,
--on-error skip."""

import re
import shlex

import pytest

from emofuse import cli
from emofuse.store import FeatureStore

RUNNERS = {"extract-embeddings": cli.extract_embeddings, "align-segments": cli.align_segments,
           "train-head": cli.train_head}


def run_pasted(command: str) -> int:
    """Run a command line exactly as a message printed it."""
    argv = shlex.split(command)
    return RUNNERS[argv[0]](argv[1:])


def suggested_commands(err: str) -> list[str]:
    """The commands a message suggests (each up to ',', ';', ' or ', ' then' or the end)."""
    return [m.strip() for m in re.findall(r"((?:extract-embeddings|align-segments|train-head) .+?)(?=, then|; | or |$)",
                                          err.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def egemaps_only(tmp_path_factory, small_fake):
    """An eGeMAPS-only store of a small fake IEMOCAP (25 utterances, 5 sessions)."""
    path = tmp_path_factory.mktemp("sugg") / "eg.h5"
    assert cli.extract_embeddings(["--corpus", "iemocap", "--root", str(small_fake.root), "--out", str(path),
                                   "--audio-model", "opensmile:eGeMAPSv02", "--text-model", "none"]) == 0
    return str(path)


QUICK = ["--repeats", "1", "--epochs", "1", "--device", "cpu"]


def test_align_segments_names_the_stream_that_works(egemaps_only, capsys):
    assert cli.align_segments(["--store", egemaps_only, "--stream", "audio", "--granularities", "word"]) == 2
    err = capsys.readouterr().err
    cmds = suggested_commands(err)
    assert cmds == [f"align-segments --store {egemaps_only} --stream egemaps"], err
    assert run_pasted(cmds[0] + " --granularities word") == 0


def test_train_head_missing_streams_suggest_what_works(egemaps_only, tmp_path, capsys):
    # frames asked from 'audio' on an eGeMAPS-only store: the fix is --audio-stream egemaps, not an extraction
    argv = ["--store", egemaps_only, "--out", str(tmp_path / "a"), "--fusion", "none", "--granularity", "F"] + QUICK
    assert cli.train_head(argv) == 2
    err = capsys.readouterr().err
    assert "To fix: use --audio-stream egemaps" in err and "extract-embeddings" not in err, err
    assert cli.train_head(argv + ["--audio-stream", "egemaps"]) == 0
    # phone segments not pooled yet: the align-segments command, then the same train-head works
    argv = ["--store", egemaps_only, "--out", str(tmp_path / "p"), "--fusion", "none", "--granularity", "P",
            "--audio-stream", "egemaps"] + QUICK
    assert cli.train_head(argv) == 2
    err = capsys.readouterr().err
    cmds = suggested_commands(err)
    assert cmds == [f"align-segments --store {egemaps_only} --stream egemaps --granularities phone"], err
    assert run_pasted(cmds[0]) == 0
    assert cli.train_head(argv) == 0
    # no text stream: the extract-embeddings command reads the same corpus with the right flags
    argv = ["--store", egemaps_only, "--out", str(tmp_path / "t"), "--fusion", "late", "--granularity", "F",
            "--audio-stream", "egemaps"] + QUICK
    assert cli.train_head(argv) == 2
    err = capsys.readouterr().err
    cmds = suggested_commands(err)
    assert len(cmds) == 1 and cmds[0].startswith("extract-embeddings --corpus iemocap --root "), err
    # tests have no network: the suggested hub model is swapped for the packaged MiniLM, nothing else changes
    assert run_pasted(cmds[0].replace("bert-base-uncased", "packaged:all-MiniLM-L6-v2")) == 0
    with FeatureStore(egemaps_only) as fs:
        assert fs.has("text", "tokens") and fs.has("egemaps", "frames")
    assert cli.train_head(argv) == 0


def test_option_suggestions_work(egemaps_only, tmp_path, capsys):
    base = ["--store", egemaps_only, "--audio-stream", "egemaps"] + QUICK

    def refused_then_fixed(argv, pattern):
        assert cli.train_head(argv) == 2
        err = capsys.readouterr().err
        m = re.search(pattern, err)
        assert m, err
        return argv, m

    # --folds: the example given is a real fold list
    argv, m = refused_then_fixed(base + ["--out", str(tmp_path / "f"), "--fusion", "none", "--granularity", "F",
                                         "--folds", "7"], r"\(e\.g\. (--folds \S+)\)")
    assert "np.str_" not in m.string
    assert cli.train_head(argv[:-2] + shlex.split(m.group(1))) == 0
    # two streams under --fusion none: --fusion late, or --no-text
    argv, m = refused_then_fixed(base + ["--out", str(tmp_path / "n"), "--fusion", "none", "--granularity", "F+T"],
                                 r"needs (--fusion late) \(or (--no-text)\)")
    assert cli.train_head([a if a != "none" else "late" for a in argv]) == 0
    # --norm-streams text on a speech-only configuration: speech or all
    argv, m = refused_then_fixed(base + ["--out", str(tmp_path / "s"), "--fusion", "none", "--granularity", "F",
                                         "--norm", "global", "--norm-streams", "text"],
                                 r"choose --norm-streams (\w+) or (\w+)")
    assert cli.train_head(argv[:-1] + [m.group(1)]) == 0
    # --layers last on a one-layer stream: leave it unset
    argv, m = refused_then_fixed(base + ["--out", str(tmp_path / "l"), "--fusion", "none", "--granularity", "F",
                                         "--layers", "last"], r"leave --layers unset")   # the option typed
    assert cli.train_head(argv[:-2]) == 0


def test_on_error_skip_suggestion_works(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    for name, n in (("ok1", 8000), ("ok2", 8000), ("empty", 0)):
        sf.write(tmp_path / f"{name}.wav", np.random.default_rng(1).standard_normal(n).astype(np.float32) * 0.1, 16000)
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session\nok1,ok1.wav,a,ang,s1,1\n"
                                    "ok2,ok2.wav,b,sad,s2,2\nempty,empty.wav,c,sad,s2,2\n")
    argv = ["--corpus", "manifest", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.h5"),
            "--audio-model", "opensmile:eGeMAPSv02", "--text-model", "none", "--on-error", "fail"]
    assert cli.extract_embeddings(argv) == 2
    err = capsys.readouterr().err
    assert "run with --on-error skip" in err, err
    assert cli.extract_embeddings(argv[:-1] + ["skip"]) == 0


def test_store_reader_names_the_align_command(egemaps_only):
    """The store's own message for segments not pooled yet: the align-segments command, which works."""
    from emofuse.errors import StoreError

    with FeatureStore(egemaps_only) as fs:
        uid = fs.ids("egemaps")[0]
        with pytest.raises(StoreError) as e:
            fs.segments("egemaps", "syllable", uid)
    cmds = suggested_commands(str(e.value))
    assert cmds == [f"align-segments --store {egemaps_only} --stream egemaps --granularities syllable"], str(e.value)
    assert run_pasted(cmds[0]) == 0
    with FeatureStore(egemaps_only) as fs:
        assert fs.segments("egemaps", "syllable", uid) is not None
