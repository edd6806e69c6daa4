"""Command-line entry points. Thin: parse, build a config, call ``pipelines``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import EmofuseError


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
        print("interrupted: committed work is kept; run the same command again to resume", file=sys.stderr)
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


def extract_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="extract-embeddings",
        description="Run frozen audio and text encoders once over a corpus and store every layer's activations. "
                    "Crash-safe and resumable: run the same command again after an interruption.")
    ap.add_argument("--corpus", choices=["iemocap", "manifest", "demo", "lhotse"], help="corpus reader")
    ap.add_argument("--root", help="IEMOCAP: the folder holding Session1 … Session5")
    ap.add_argument("--manifest", help="manifest: a .csv or .jsonl file; lhotse: a CutSet, a SupervisionSet (its "
                                       "RecordingSet beside it) or a folder of them (.jsonl or .jsonl.gz)")
    ap.add_argument("--labels", help="classes to keep: a named IEMOCAP set, four (default for IEMOCAP) or six, or a "
                                     "comma list of labels, e.g. angry,happy,neutral,sad (raw:class merges, e.g. "
                                     "exc:hap); other utterances are left out (default for manifests: every label)")
    ap.add_argument("--out", required=True, help="the store to write (STORE.h5)")
    ap.add_argument("--audio-model", default="facebook/wav2vec2-base",
                    help="hub id or local folder (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper; Whisper takes "
                         "#window=SECONDS for windows shorter than its standard 30 s), opensmile:eGeMAPSv02, "
                         "untrained:wav2vec2-small, or none (default: facebook/wav2vec2-base)")
    ap.add_argument("--text-model", default="bert-base-uncased",
                    help="hub id or local folder: a bidirectional encoder (BERT, RoBERTa, MiniLM …) or a decoder-only "
                         "causal LM (GPT-2, Llama, Qwen2 …), or none (default: bert-base-uncased)")
    ap.add_argument("--audio-stream", help="stream name for the audio encoder (default: audio, or egemaps)")
    ap.add_argument("--text-stream", help="stream name for the text encoder (default: text)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute precision")
    ap.add_argument("--store-dtype", default="float16", choices=["float16", "float32"], help="stored precision")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="padded audio seconds per forward pass (default: 120 on CUDA; on CPU one utterance per "
                         "forward, which measured fastest there)")
    ap.add_argument("--commit-seconds", type=float, default=60.0,
                    help="audio seconds per atomic commit: at most this much is recomputed after a crash (default 60)")
    ap.add_argument("--text-batch", type=int, default=32, help="transcripts per text batch (default 32)")
    ap.add_argument("--shard", help="I/N: process only shard I of N (a disjoint subset); merge later with --merge")
    ap.add_argument("--on-error", default="skip", choices=["skip", "fail"],
                    help="bad input: skip it and record why (default), or stop with one clear sentence")
    ap.add_argument("--limit", type=int, help="only the first N utterances (by id; default: all)")
    ap.add_argument("--merge", nargs="+", metavar="SHARD", help="merge finished shard stores into --out and exit")
    ap.add_argument("--layers", help="keep only these encoder layers, e.g. 0,6,12 or 6-12 or last (0 = transformer "
                                     "input; default all). Stored layers keep the encoder's numbers everywhere downstream")
    ap.add_argument("--update-corpus", action="store_true",
                    help="the corpus changed since --out was written: drop the cached tensors of the utterances whose "
                         "audio, transcript or times changed (and of removed ones) and recompute them")
    return _with_defaults(ap)


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
        none = lambda v: None if v in (None, "none", "") else v  # noqa: E731
        cfg = ExtractConfig(corpus=args.corpus, out=args.out, root=args.root, manifest=args.manifest,
                            labels=args.labels, audio_model=none(args.audio_model), text_model=none(args.text_model),
                            audio_stream=args.audio_stream, text_stream=args.text_stream, device=args.device,
                            dtype=args.dtype, store_dtype=args.store_dtype, batch_seconds=args.batch_seconds,
                            commit_seconds=args.commit_seconds,
                            text_batch=args.text_batch, shard=args.shard, on_error=args.on_error, limit=args.limit,
                            update_corpus=args.update_corpus, layers=args.layers)
        summary = run_extract(cfg)
        if summary is not None:
            print("extract-embeddings finished:\n" + summary.text())

    return _run(job)


def align_segments(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="align-segments",
        description="Pool phone / syllable / word segment embeddings from forced alignments into the store. "
                    "Idempotent: re-running adds only what is missing.")
    ap.add_argument("--store", required=True, help="a store written by extract-embeddings")
    ap.add_argument("--stream", help="audio stream to pool (default: audio, or the store's only stream with frames, "
                                     "e.g. egemaps)")
    ap.add_argument("--source", default="auto", choices=["auto", "iemocap", "textgrid", "sphinx"],
                    help="alignments: the corpus's files (iemocap .wdseg/.phseg, or a manifest's TextGrids), or our "
                         "pocketsphinx aligner (default auto: the corpus's files, sphinx where there are none)")
    ap.add_argument("--granularities", default="phone,syllable,word", help="comma list (default phone,syllable,word)")
    ap.add_argument("--keep-silence", action="store_true", help="keep silence and filler segments")
    ap.add_argument("--on-error", default="skip", choices=["skip", "fail"])
    ap.add_argument("--corpus", choices=["iemocap", "manifest", "demo", "lhotse"], help="where the corpus lives now, if it moved")
    ap.add_argument("--root")
    ap.add_argument("--manifest")
    ap.add_argument("--word-tier", help="TextGrid word tier name (default: words/word)")
    ap.add_argument("--phone-tier", help="TextGrid phone tier name (default: phones/phone)")
    ap.add_argument("--write-alignments", metavar="DIR",
                    help="with the sphinx aligner: also write .wdseg/.phseg and TextGrid files here")
    args = _with_defaults(ap).parse_args(argv)
    _quiet_libraries()

    def job():
        from .pipelines.align import AlignConfig, run_align

        tiers = {}
        if args.word_tier:
            tiers["word"] = (args.word_tier,)
        if args.phone_tier:
            tiers["phone"] = (args.phone_tier,)
        cfg = AlignConfig(store=args.store, stream=args.stream, source=args.source,
                          granularities=tuple(g.strip() for g in args.granularities.split(",") if g.strip()),
                          on_error=args.on_error, keep_silence=args.keep_silence, corpus=args.corpus, root=args.root,
                          manifest=args.manifest, tier_names=tiers, write_alignments=args.write_alignments)
        summary = run_align(cfg)
        print("align-segments finished:\n" + summary.text())

    return _run(job)


def train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="train-head",
        description="Train a head on cached tensors under leave-one-session-out cross-validation (docs/design.md, "
                    "Protocol), or combine finished runs' scores (--fusion combine --runs A B …).")
    ap.add_argument("--store", help="a store written by extract-embeddings (and align-segments for P/S/W)")
    ap.add_argument("--out", required=True, help="run directory (finished folds in it are reused)")
    ap.add_argument("--fusion", default="late", choices=["none", "late", "concat", "coattention", "cma", "combine"],
                    help="none: one stream; late: a branch per stream, logits summed; concat: one sequence; "
                         "coattention; cma (cross-modal attention); combine: average finished runs' logits")
    ap.add_argument("--granularity", default="F", help="'+' list of F, P, S, W (frames, phone, syllable, word "
                                                       "segments) and T (text), e.g. F+S (default F)")
    text = ap.add_mutually_exclusive_group()
    text.add_argument("--text", dest="text", action="store_true", default=None, help="add the text stream (T)")
    text.add_argument("--no-text", dest="text", action="store_false", help="speech only")
    ap.add_argument("--head", default="linear", choices=["linear", "transformer", "cnn-blstm", "proj-stats"],
                    help="branch of none/late fusion: linear (default), transformer; with --fusion none also the "
                         "cross-modal paper's unimodal systems cnn-blstm (audio) and proj-stats (text)")
    ap.add_argument("--audio-stream", default="audio")
    ap.add_argument("--text-stream", default="text")
    ap.add_argument("--norm", choices=["none", "global", "speaker"],
                    help="feature standardisation: global (training folds' statistics) or per speaker (default: the "
                         "stream's recorded default, global for hand-crafted descriptors such as eGeMAPS, none for "
                         "encoder activations)")
    ap.add_argument("--norm-streams", default="speech", choices=["speech", "text", "all"],
                    help="streams that --norm standardises (default speech, as the multi-granularity paper)")
    ap.add_argument("--layers", help="encoder layers of both streams: all, last, 6, 1-12, 1- or 0,4,8 "
                                     "(default: all; last for cma, cnn-blstm and proj-stats)")
    ap.add_argument("--audio-layers", help="encoder layers of the speech streams (default: --layers)")
    ap.add_argument("--text-layers", help="encoder layers of the text stream (default: --layers)")
    ap.add_argument("--weighting", choices=["learned", "none"],
                    help="learned layer weights + LayerNorm (Eq. 1), or none: one layer as it is "
                         "(default: learned; none for cma, cnn-blstm and proj-stats)")
    ap.add_argument("--repeats", type=int, default=5, help="seeds per fold (default 5: 25 runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=100, help="maximum epochs (default 100)")
    ap.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default 10)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, help="default: 1e-3 feed-forward heads, 5e-5 attention heads, 1e-5 CMA")
    ap.add_argument("--hidden", type=int, help="linear branch width (default 128)")
    ap.add_argument("--proj", type=int, help="project streams to this width first; 0 = no projection (default: 0; "
                                             "256 for cma, cnn-blstm, proj-stats)")
    ap.add_argument("--heads", type=int, help="attention heads (default 8)")
    ap.add_argument("--ff", type=int, help="feed-forward width inside attention blocks (default 4 x width; cma 256)")
    ap.add_argument("--depth", type=int, help="attention blocks per branch (default 3; cma 1)")
    ap.add_argument("--scheduler", choices=["none", "plateau", "plateau-ua"],
                    help="learning-rate decay: plateau of validation loss, or of validation UA "
                         "(default: none; plateau for cma, cnn-blstm and proj-stats)")
    ap.add_argument("--lr-factor", type=float, default=0.5, help="decay factor of --scheduler (default 0.5)")
    ap.add_argument("--lr-patience", type=int, default=2, help="epochs without improvement before a decay (default 2)")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--folds", help="comma list of test sessions to run (default: all)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--memory-gb", type=float, help="memory budget for holding the data (default: 60%% of free)")
    ap.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="with --fusion combine: the runs to combine")
    add_tracking_options(ap)
    _add_runs_at_once(ap)
    return _with_defaults(ap)


def _add_runs_at_once(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--runs-at-once", type=int, metavar="N",
                    help="train N of the (repeat, fold) runs together, heads stacked (0: every run; 1: one at a "
                         "time). Default: as many as the GPU memory holds, one at a time on a CPU. LSTM heads (cma, cnn-blstm) "
                         "always train one at a time (docs/stacked-training.md)")


def train_head(argv: Sequence[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
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
        cfg = TrainConfig(store=args.store, out=args.out, fusion=args.fusion, granularity=args.granularity,
                          text=args.text, head=args.head, audio_stream=args.audio_stream, text_stream=args.text_stream,
                          norm=args.norm, norm_streams=args.norm_streams, layers=args.layers,
                          audio_layers=args.audio_layers, text_layers=args.text_layers, weighting=args.weighting,
                          repeats=args.repeats, seed=args.seed,
                          epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                          hidden=args.hidden, proj=args.proj, heads=args.heads, ff=args.ff, depth=args.depth,
                          scheduler=args.scheduler, lr_factor=args.lr_factor, lr_patience=args.lr_patience,
                          dropout=args.dropout, val_fraction=args.val_fraction,
                          folds=tuple(f.strip() for f in args.folds.split(",")) if args.folds else None,
                          device=args.device, memory_gb=args.memory_gb, runs_at_once=args.runs_at_once)
        tensorboard = args.tensorboard
        if tensorboard:   # said before training, not 30 minutes later
            from .pipelines.runs import tensorboard_missing, write_tensorboard
            if tensorboard_missing(tensorboard):
                tensorboard = None
        run_train(cfg)
        if tensorboard:
            write_tensorboard([args.out], tensorboard)

    return _run(job)


def ablate(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ablate", description="Run a grid of train-head configurations from a spec and write its tables "
                                   "(Markdown, LaTeX, CSV). Finished runs are reused: a killed grid resumes.")
    ap.add_argument("--store", required=True)
    ap.add_argument("--spec", required=True, help="paper-multilevel, paper-cma, demo, or a YAML file")
    ap.add_argument("--out", required=True, help="grid directory (runs/, tables/, tables.md)")
    ap.add_argument("--jobs", type=int, default=1, help="configurations trained in parallel processes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, help="override the spec's repeats (default: the spec's)")
    ap.add_argument("--epochs", type=int, help="override the spec's maximum epochs (default: the spec's)")
    ap.add_argument("--folds", help="override the test sessions: a comma list (quick looks; default: every session)")
    ap.add_argument("--report", action="store_true", help="also write figures and report.md")
    ap.add_argument("--finetune", action="store_true",
                    help="also run the spec's fine-tuned rows (finetune: true; GPU hours each); without it they "
                         "are left out of the tables")
    ap.add_argument("--audio-model", help="fine-tuned rows: this audio checkpoint instead of the spec's (a folder)")
    ap.add_argument("--text-model", help="fine-tuned rows: this text checkpoint instead of the spec's (a folder)")
    _add_runs_at_once(ap)
    _add_executor(ap)
    args = _with_defaults(ap).parse_args(argv)
    _quiet_libraries()

    def job():
        from .pipelines.ablate import AblateConfig, run_ablate
        from .pipelines.report import run_report

        if args.jobs < 1:
            raise EmofuseError(f"--jobs must be at least 1, found {args.jobs}")
        run_ablate(AblateConfig(store=args.store, spec=args.spec, out=args.out, jobs=args.jobs, device=args.device,
                                repeats=args.repeats, epochs=args.epochs, finetune=args.finetune,
                                audio_model=args.audio_model, text_model=args.text_model,
                                folds=tuple(f.strip() for f in args.folds.split(",")) if args.folds else None,
                                runs_at_once=args.runs_at_once, executor=args.executor, cluster=args.cluster,
                                cluster_options=tuple(args.cluster_option or ())))
        with open(f"{args.out}/tables.md") as f:
            print(f.read())
        if args.report:
            run_report(args.out)

    return _run(job)


def _add_executor(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--executor", default="local", choices=["local", "submitit"],
                    help="local: this machine (--jobs processes); submitit: one cluster job per set of rows "
                         "sharing data (Slurm; needs pip install 'emofuse[cluster]')")
    ap.add_argument("--cluster", choices=["slurm", "local", "debug"],
                    help="with --executor submitit: the submitit cluster (default: Slurm when there is one, "
                         "else local processes)")
    ap.add_argument("--cluster-option", action="append", metavar="KEY=VALUE",
                    help="with --executor submitit, repeatable: a submitit parameter, e.g. timeout_min=120, "
                         "slurm_partition=gpu, gpus_per_node=1, cpus_per_task=8, slurm_mem_gb=64")


def finetune_parser() -> argparse.ArgumentParser:
    from .pipelines.finetune import FinetuneConfig

    d = FinetuneConfig(store="", out="", audio_model="-", text_model="-")
    ap = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune wav2vec2 and/or BERT with the cross-modal attention paper's head (or its unimodal "
                    "heads) under train-head's protocol and run-directory layout; runs under torchrun too "
                    "(data parallel). A killed run resumes at its last epoch.")
    ap.add_argument("--store", required=True, help="a store: its utterance table gives ids, labels, sessions, "
                                                   "transcripts and audio paths")
    ap.add_argument("--out", required=True, help="run directory (finished folds and epoch checkpoints are reused)")
    ap.add_argument("--system", default="cma", choices=["cma", "audio", "text"],
                    help="cma: both encoders + CMA head (74.71); audio: wav2vec2 + CNN + BLSTM (60.01); "
                         "text: BERT + projection + statistics pooling (71.01)")
    ap.add_argument("--audio-model", help="wav2vec2-style checkpoint (folder or hub id)")
    ap.add_argument("--text-model", help="BERT-style checkpoint with a fast tokenizer")
    ap.add_argument("--freeze", default=d.freeze, help="comma list: cnn (always frozen), audio, text, "
                                                      "audio-layers:N, text-layers:N (first N blocks)")
    ap.add_argument("--training-options", default=d.training_options, choices=["off", "checkpoint"],
                    help="the audio checkpoint's SpecAugment masking and layer drop: off (default) or as it ships")
    for name in ("repeats", "seed", "epochs", "patience", "batch_size", "micro_batch", "lr_patience", "proj",
                 "heads", "ff"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "lr_factor", "dropout", "val_fraction", "max_audio_s"):
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    ap.add_argument("--folds", help="comma list of test sessions (default: all)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute encoder activations (GPU memory)")
    ap.add_argument("--save-encoders", action="store_true", help="also save the fine-tuned encoders per run")
    ap.add_argument("--device", default="auto")
    return _with_defaults(ap)


def finetune(argv: Sequence[str] | None = None) -> int:
    args = finetune_parser().parse_args(argv)
    _quiet_libraries()

    def job():
        from .pipelines.finetune import FinetuneConfig, run_finetune

        kw = {k: v for k, v in vars(args).items() if k != "folds"}
        run_finetune(FinetuneConfig(folds=tuple(f.strip() for f in args.folds.split(",")) if args.folds else None,
                                    **kw))

    return _run(job)


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
    d.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    i = sub.add_parser("info", help="describe a feature store")
    i.add_argument("store")
    st = sub.add_parser("store", help="maintain a feature store: upgrade a v1 store, compact one for shipping")
    st_sub = st.add_subparsers(dest="store_cmd", required=True)
    up = st_sub.add_parser("upgrade", help="turn a schema v1 store into v2 in place (no activation is copied)")
    up.add_argument("store")
    cp = st_sub.add_parser("compact", help="rewrite a store into the fewest files (the index and one part)")
    cp.add_argument("store")
    c = sub.add_parser("corpus", help="summarise a corpus as emofuse reads it")
    c.add_argument("--corpus", choices=["iemocap", "manifest", "demo", "lhotse"], required=True)
    c.add_argument("--root")
    c.add_argument("--manifest")
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
        from .pipelines.demo import DemoConfig, run_demo
        return _run(lambda: run_demo(DemoConfig(out=args.out, device=args.device)))
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
        return _run(lambda: print(describe_corpus(args.corpus, root=args.root, manifest=args.manifest)))
    return 2


if __name__ == "__main__":
    sys.exit(main())
