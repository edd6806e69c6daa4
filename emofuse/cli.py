"""Command-line entry points. Thin: parse, build a config, call ``pipelines``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import EmofuseError


def _run(fn: Callable[[], object]) -> int:
    try:
        fn()
        return 0
    except EmofuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: committed work is kept; run the same command again to resume", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="emofuse", description="emofuse: speech + text emotion recognition tooling")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run every stage on the bundled demo corpus")
    d.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    i = sub.add_parser("info", help="describe a feature store")
    i.add_argument("store")
    c = sub.add_parser("corpus", help="summarise a corpus as emofuse reads it")
    c.add_argument("--corpus", choices=["iemocap", "manifest", "demo"], required=True)
    c.add_argument("--root")
    c.add_argument("--manifest")
    args = ap.parse_args(argv)

    if args.cmd == "demo":
        from .pipelines.demo import DemoConfig, run_demo
        return _run(lambda: run_demo(DemoConfig(out=args.out)))
    if args.cmd == "info":
        from .pipelines.describe import describe_store
        return _run(lambda: print(describe_store(args.store)))
    if args.cmd == "corpus":
        from .pipelines.describe import describe_corpus
        return _run(lambda: print(describe_corpus(args.corpus, root=args.root, manifest=args.manifest)))
    return 2


if __name__ == "__main__":
    sys.exit(main())
