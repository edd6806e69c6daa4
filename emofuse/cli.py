"""Command-line entry points. Thin: parse, build a config, call ``pipelines``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, Sequence

from .errors import EmofuseError
from .options import add_config_options, add_options, config_from_args, config_yaml, parse_with_config


INTERRUPTED = "interrupted: committed work is kept; run the same command again to resume"


def _interruptible(entry: Callable[..., int]) -> Callable[..., int]:
    """A console entry point that answers Ctrl-C with one line and exit status 130 at any moment,
    also while it is still importing torch and building its parser (before ``_run``)."""
    import functools

    @functools.wraps(entry)
    def wrapped(*args, **kwargs) -> int:
        try:
            return entry(*args, **kwargs)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            return 130
    return wrapped


def _run(fn: Callable[[], object]) -> int:
    from .logs import show_messages
    show_messages()
    try:
        fn()
        return 0
    except EmofuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Our progress bars and messages only: no per-file 'Loading weights' bars from transformers."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message="Segment too short")
    # torch's weights-only unpickler notes a pickle protocol before refusing a file: the refusal is our sentence
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _with_defaults(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every option's help states its default: ``(default: X)`` is appended where the text does not say it."""
    for a in ap._actions:
        if (not a.option_strings or a.default is None or a.default is False or a.default == argparse.SUPPRESS
                or a.nargs == 0 or "default" in (a.help or "")):
            continue
        a.help = ((a.help + " ") if a.help else "") + f"(default: {a.default})"
    return ap


#: the options that are not fields of the stage's config (everything else is declared once, in the
#: config dataclass, and derived by emofuse/options.py); tests/test_options.py keeps this list true
CLI_ONLY = {
    "extract-embeddings": ("merge",),                       # a different job: merge shard stores
    "align-segments": ("word_tier", "phone_tier"),          # → AlignConfig.tier_names
    "train-head": ("runs", "tensorboard", "config", "print_config"),   # combine's inputs; after the run; files
    "ablate": ("report",),                                  # after the grid: report's figures
    "finetune": ("config", "print_config"),
}


def extract_parser() -> argparse.ArgumentParser:
    from .pipelines.extract.config import ExtractConfig

    ap = argparse.ArgumentParser(
        prog="extract-embeddings",
        description="Run frozen audio and text encoders once over a corpus and store every layer's activations. "
                    "Crash-safe and resumable: run the same command again after an interruption.")
    add_options(ap, ExtractConfig)
    ap.add_argument("--merge", nargs="+", metavar="SHARD", help="merge finished shard stores into --out and exit")
    return _with_defaults(ap)


@_interruptible
def extract_embeddings(argv: Sequence[str] | None = None) -> int:
    args = extract_parser().parse_args(argv)
    _quiet_libraries()

    def job():
        from .pipelines.extract import ExtractConfig, run_extract
        from .store import merge_stores

        if args.merge:
            added = merge_stores(args.out, args.merge)
            print(f"merged {len(args.merge)} shards into {args.out}: " +
                  (", ".join(f"{k} +{v}" for k, v in added.items()) or "nothing new"))
            return
        if not args.corpus:
            raise EmofuseError("extract-embeddings needs --corpus iemocap|manifest|lhotse|demo (or --merge SHARD …)")
        cfg = config_from_args(ExtractConfig, args)
        summary = run_extract(cfg)
        if summary is not None:
            print("extract-embeddings finished:\n" + summary.text())

    return _run(job)


def align_parser() -> argparse.ArgumentParser:
    from .pipelines.align import AlignConfig

    ap = argparse.ArgumentParser(
        prog="align-segments",
        description="Pool phone / syllable / word segment embeddings from forced alignments into the store. "
                    "Idempotent: re-running adds only what is missing.")
    add_options(ap, AlignConfig)
    ap.add_argument("--word-tier", help="TextGrid word tier name (default: words/word)")   # → tier_names
    ap.add_argument("--phone-tier", help="TextGrid phone tier name (default: phones/phone)")
    return _with_defaults(ap)


@_interruptible
def align_segments(argv: Sequence[str] | None = None) -> int:
    from .pipelines.align import AlignConfig

    args = align_parser().parse_args(argv)
    _quiet_libraries()

    def job():
        from .pipelines.align import run_align

        tiers = {}
        if args.word_tier:
            tiers["word"] = (args.word_tier,)
        if args.phone_tier:
            tiers["phone"] = (args.phone_tier,)
        cfg = config_from_args(AlignConfig, args, tier_names=tiers)
        summary = run_align(cfg)
        print("align-segments finished:\n" + summary.text())

    return _run(job)


def train_parser() -> argparse.ArgumentParser:
    from .pipelines.train import TrainConfig

    ap = argparse.ArgumentParser(
        prog="train-head",
        description="Train a head on cached tensors under leave-one-session-out cross-validation (docs/design.md, "
                    "Protocol), or combine finished runs' scores (--fusion combine --runs A B …).")
    add_options(ap, TrainConfig, skip=("runs_at_once",))
    ap.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="with --fusion combine: the runs to combine")
    add_tracking_options(ap)
    add_options(ap, TrainConfig, only=("runs_at_once",))
    add_config_options(ap)
    return _with_defaults(ap)


@_interruptible
def train_head(argv: Sequence[str] | None = None) -> int:
    from .pipelines.train import TrainConfig

    ap = train_parser()
    try:
        args = parse_with_config(ap, TrainConfig, argv)
    except EmofuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _quiet_libraries()

    def job():
        from .pipelines.combine import run_combine
        from .pipelines.train import TrainConfig, run_train

        if args.fusion == "combine":
            run_combine(args.runs or [], args.out)
            return
        if args.runs:
            raise EmofuseError("--runs only goes with --fusion combine")
        if not args.store:
            raise EmofuseError("train-head needs --store STORE.h5")
        cfg = config_from_args(TrainConfig, args)
        # a YAML comment: the whole output, saved to a file, is what --config reads back
        print("# train-head configuration (train-head --config FILE reads this output back)\n" + train_config_yaml(cfg),
              end="")
        if args.print_config:
            return
        tensorboard = args.tensorboard
        if tensorboard:   # said before training, not 30 minutes later
            from .pipelines.runs import tensorboard_missing, write_tensorboard
            if tensorboard_missing(tensorboard):
                tensorboard = None
        run_train(cfg)
        if tensorboard:
            write_tensorboard([args.out], tensorboard)

    return _run(job)


def train_config_yaml(cfg) -> str:
    """A train-head configuration as YAML, every field written; a ``null`` that a head default
    fills says which value it resolves to (heads/options.py)."""
    r = cfg.resolved()
    notes = {k: f"{cfg.fusion} {cfg.head if cfg.fusion in ('none', 'late') else ''}".strip() + f": {r[k]}"
             for k in ("lr", "hidden", "proj", "heads", "ff", "depth", "weighting", "scheduler")
             if getattr(cfg, k) is None and r[k] is not None}
    if cfg.layers is None:
        notes["layers"] = f"audio {r['audio_layers']}, text {r['text_layers']}"
    if cfg.text is None:
        notes["text"] = "with text" if "T" in cfg.keys() else "without text"
    if cfg.norm is None:
        notes["norm"] = "the stream's recorded default"
    return config_yaml(cfg, notes)


def ablate_parser() -> argparse.ArgumentParser:
    from .pipelines.ablate import AblateConfig

    ap = argparse.ArgumentParser(
        prog="ablate", description="Run a grid of train-head configurations from a spec and write its tables "
                                   "(Markdown, LaTeX, CSV). Finished runs are reused: a killed grid resumes.")
    add_options(ap, AblateConfig)
    ap.add_argument("--report", action="store_true", help="also write figures and report.md")
    return _with_defaults(ap)


@_interruptible
def ablate(argv: Sequence[str] | None = None) -> int:
    from .pipelines.ablate import AblateConfig

    args = ablate_parser().parse_args(argv)
    _quiet_libraries()

    def job():
        from .pipelines.ablate import run_ablate
        from .pipelines.report import run_report

        run_ablate(config_from_args(AblateConfig, args))
        with open(f"{args.out}/tables.md") as f:
            print(f.read())
        if args.report:
            run_report(args.out)

    return _run(job)


def finetune_parser() -> argparse.ArgumentParser:
    from .pipelines.finetune import FinetuneConfig

    ap = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune wav2vec2 and/or BERT with the cross-modal attention paper's head (or its unimodal "
                    "heads) under train-head's protocol and run-directory layout; runs under torchrun too "
                    "(data parallel). A killed run resumes at its last epoch.")
    add_options(ap, FinetuneConfig)
    add_config_options(ap)
    return _with_defaults(ap)


@_interruptible
def finetune(argv: Sequence[str] | None = None) -> int:
    from .pipelines.finetune import FinetuneConfig

    try:
        args = parse_with_config(finetune_parser(), FinetuneConfig, argv)
    except EmofuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _quiet_libraries()

    def job():
        from .pipelines.finetune import run_finetune

        cfg = config_from_args(FinetuneConfig, args)
        print("# finetune configuration (finetune --config FILE reads this output back)\n" + config_yaml(cfg), end="")
        if not args.print_config:
            run_finetune(cfg)

    return _run(job)


@_interruptible
def report(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="report", description="PNG figures and report.md for a run or a grid")
    ap.add_argument("path", help="a train-head run directory or an ablate grid directory")
    args = ap.parse_args(argv)

    def job():
        from .pipelines.report import run_report
        run_report(args.path)

    return _run(job)


def _add_use_commands(sub) -> None:
    """export, predict, evaluate: use a trained configuration (emofuse/pipelines/predict.py)."""
    ex = sub.add_parser("export", help="write a trained run's fold models as one self-contained folder",
                        description="Export a finished train-head run as one folder: config, encoder ids, hashes and "
                                    "fingerprints, layer selection, normalisation statistics, every fold model's head "
                                    "(safetensors). Reload it with emofuse.load_model(OUT).")
    ex.add_argument("run", help="a finished train-head run directory")
    ex.add_argument("out", help="the folder to write (must not exist or be empty)")
    ex.add_argument("--store", help="where the run's store is now, if it moved (default: the path in its config.json; "
                                    "read for --norm global statistics)")
    pr = sub.add_parser("predict", help="class probabilities of new audio and transcripts",
                        description="Apply an exported model (or a run directory) to new utterances: the same encoders, "
                                    "preprocessing, layer selection and normalisation as in training; the prediction is "
                                    "the mean of the fold models' softmax probabilities. Models on frames (F) and text "
                                    "(T) only: segment models need alignments (use evaluate on a store).")
    pr.add_argument("model", help="an exported model folder (emofuse export) or a train-head run directory")
    pr.add_argument("--audio", nargs="+", metavar="WAV", help="audio files (one utterance each)")
    pr.add_argument("--text", nargs="+", metavar="TEXT", help="their transcripts, in the same order")
    pr.add_argument("--manifest", help="a .csv/.tsv/.jsonl list: audio (or wav, path), text (or transcript), optional "
                                       "id, speaker, start, end; paths relative to the list")
    pr.add_argument("--out", help="write the probabilities to this CSV (default: print them)")
    pr.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    pr.add_argument("--audio-model", help="the audio encoder's checkpoint, if not where extraction found it "
                                          "(default: the model's; it must have the same fingerprint)")
    pr.add_argument("--text-model", help="the text encoder's checkpoint (default: the model's; same fingerprint)")
    ev = sub.add_parser("evaluate", help="evaluate a trained run on another corpus's store (cross-corpus)",
                        description="Score every fold model of a train-head run (or an exported model) on every "
                                    "utterance of another store extracted with the same encoders: metrics.json and "
                                    "predictions.csv per fold model, predictions.csv, summary.json (mean +- std over "
                                    "the fold models, and their ensemble) as train-head writes them.")
    ev.add_argument("run", help="a finished train-head run directory or an exported model folder")
    ev.add_argument("--store", required=True, help="the other corpus's store (same encoders)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--label-map", help="rename the store's labels to the model's classes, e.g. exc=hap,fru=ang "
                                        "(default: none; a label the model does not know is refused)")
    ev.add_argument("--train-store", help="the run's own store, if it moved (default: its config.json's path)")
    ev.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")


def _add_runs_command(sub) -> None:
    r = sub.add_parser("runs", help="list the train-head runs under a folder, or what differs between two runs",
                       description="List every train-head run under DIR (ablate grids' runs by their labels) with its "
                                   "configuration, UA, WA and macro-F1 (mean +- std) and number of runs; or, with "
                                   "--diff A B, the configuration values and store content that differ.")
    r.add_argument("dir", nargs="?", help="a folder holding runs (searched recursively)")
    r.add_argument("--sort", default="path", choices=["path", "label", "ua", "wa", "f1", "n"],
                   help="order of the listing; metrics best first (default: path)")
    r.add_argument("--diff", nargs=2, metavar=("A", "B"), help="two run directories to compare")
    r.add_argument("--tensorboard", metavar="LOGDIR",
                   help="also write every listed run's training curves to TensorBoard under LOGDIR (needs the "
                        "tensorboard package; default: none)")


def _runs_command(args) -> int:
    def job():
        import os

        from .pipelines.runs import diff_runs, find_runs, format_runs, write_tensorboard

        if args.diff:
            if args.dir:
                raise EmofuseError("give either DIR (a listing) or --diff A B, not both")
            print(diff_runs(*args.diff))
            return
        if not args.dir:
            raise EmofuseError("emofuse runs needs DIR (a folder holding runs) or --diff A B")
        rows = find_runs(args.dir)
        print(format_runs(rows, args.sort))
        if args.tensorboard:
            write_tensorboard([os.path.join(args.dir, r["path"]) for r in rows], args.tensorboard,
                              names=[r["label"] for r in rows])

    return _run(job)


def add_tracking_options(ap: argparse.ArgumentParser) -> None:
    """train-head's optional experiment tracking."""
    ap.add_argument("--tensorboard", metavar="LOGDIR",
                    help="write every fold's training curves (losses, validation UA, learning rate per epoch) to "
                         "TensorBoard under LOGDIR/<run>/ when the run ends (needs the tensorboard package; "
                         "default: none)")


def _use_command(args) -> int | None:
    if args.cmd == "export":
        from .pipelines.predict import export_run
        return _run(lambda: print(f"exported {args.run} to {export_run(args.run, args.out, args.store)}; "
                                  f"reload it with emofuse.load_model({args.out!r})"))
    if args.cmd == "predict":
        from .pipelines.predict import run_predict
        return _run(lambda: run_predict(args.model, audio=args.audio, text=args.text, manifest=args.manifest,
                                        out=args.out, device=args.device, audio_model=args.audio_model,
                                        text_model=args.text_model))
    if args.cmd == "evaluate":
        from .pipelines.predict import run_evaluate
        return _run(lambda: run_evaluate(args.run, args.store, args.out, label_map=args.label_map, device=args.device,
                                         train_store=args.train_store))
    return None


#: the stage commands (also console scripts of their own); ``emofuse CMD …`` runs them
STAGE_COMMANDS = {
    "extract-embeddings": "run frozen audio and text encoders once and store every layer",
    "align-segments": "pool phone / syllable / word segment embeddings into the store",
    "train-head": "train a head on the cached tensors (leave-one-session-out, repeats)",
    "ablate": "run a grid of train-head configurations from a spec and write its tables",
    "finetune": "fine-tune wav2vec2 and/or BERT with the cross-modal attention head",
    "report": "PNG figures and report.md for a run or a grid",
}


def _list_stage_commands(sub) -> None:
    """List the stage commands in ``emofuse --help`` (they are dispatched before parsing)."""
    for name, text in STAGE_COMMANDS.items():
        sub.add_parser(name, help=text + f" (emofuse {name} --help)", add_help=False)


@_interruptible
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="emofuse", description="emofuse: speech + text emotion recognition tooling. The stages are also "
                                    "subcommands: emofuse extract-embeddings | align-segments | train-head | ablate | "
                                    "finetune | report … (each with --help).")
    from . import __version__
    ap.add_argument("--version", action="version", version=f"emofuse {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _list_stage_commands(sub)
    d = sub.add_parser("demo", help="run every stage on the bundled demo corpus")
    from .pipelines.demo import DemoConfig
    add_options(d, DemoConfig)
    i = sub.add_parser("info", help="describe a feature store")
    i.add_argument("store", help="the store (STORE.h5)")
    st = sub.add_parser("store", help="maintain a feature store: upgrade a v1 store, compact one for shipping")
    st_sub = st.add_subparsers(dest="store_cmd", required=True)
    up = st_sub.add_parser("upgrade", help="turn a schema v1 store into v2 in place (no activation is copied)")
    up.add_argument("store", help="the v1 store (STORE.h5)")
    cp = st_sub.add_parser("compact", help="rewrite a store into the fewest files (the index and one part)")
    cp.add_argument("store", help="the store (STORE.h5)")
    c = sub.add_parser("corpus", help="summarise a corpus as emofuse reads it")
    from .corpora import KINDS
    from .pipelines.extract.config import ExtractConfig
    said = {f.name: f.metadata.get("help") for f in dataclasses.fields(ExtractConfig)}   # extract-embeddings' words
    c.add_argument("--corpus", choices=KINDS, required=True, help=said["corpus"])
    c.add_argument("--root", help=said["root"])
    c.add_argument("--manifest", help=said["manifest"])
    c.add_argument("--labels", help=said["labels"])
    _add_use_commands(sub)
    _add_runs_command(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["extract-embeddings"]:  # python -m emofuse extract-embeddings … (e.g. under torchrun)
        return extract_embeddings(argv[1:])
    if argv[:1] == ["align-segments"]:
        return align_segments(argv[1:])
    if argv[:1] == ["train-head"]:
        return train_head(argv[1:])
    if argv[:1] == ["ablate"]:
        return ablate(argv[1:])
    if argv[:1] == ["finetune"]:   # python -m emofuse finetune … (under torchrun)
        return finetune(argv[1:])
    if argv[:1] == ["report"]:
        return report(argv[1:])
    args = ap.parse_args(argv)
    _quiet_libraries()

    if args.cmd == "demo":
        from .pipelines.demo import run_demo
        return _run(lambda: run_demo(config_from_args(DemoConfig, args)))
    if args.cmd == "info":
        from .pipelines.describe import describe_store
        return _run(lambda: print(describe_store(args.store)))
    if args.cmd == "store":
        from .store import compact_store, upgrade_store
        fn = upgrade_store if args.store_cmd == "upgrade" else compact_store
        return _run(lambda: print(fn(args.store)))
    if args.cmd == "runs":
        return _runs_command(args)
    used = _use_command(args)
    if used is not None:
        return used
    if args.cmd == "corpus":
        from .pipelines.describe import describe_corpus
        return _run(lambda: print(describe_corpus(args.corpus, root=args.root, manifest=args.manifest,
                                                  labels=args.labels)))
    return 2


if __name__ == "__main__":
    sys.exit(main())
