"""Corpus readers: turn a corpus on disk into ordered, immutable ``Utterance`` records.

Entry point: ``load_corpus(kind, **options)`` with kind ``"iemocap"`` (``root=``, ``labels=``),
``"manifest"`` (``path=``, ``labels=``) or ``"demo"`` (the bundled synthetic corpus).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import CorpusError
from .iemocap import FOUR_CLASS, SIX_CLASS, find_root, load_iemocap
from .lhotse_manifests import load_lhotse
from .manifest import load_manifest
from .records import Utterance
from .table import ALIGNMENTS, alignment_paths, resolve_path, utterance_table

KINDS = ("iemocap", "manifest", "demo", "lhotse")


def demo_root() -> Path:
    """Folder of the bundled demo corpus (IEMOCAP layout)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo"


def corpus_base(kind: str, **options) -> str:
    """The folder a corpus's files are kept relative to in a store (its alignment paths): IEMOCAP's
    folder holding Session1 … Session5 (``find_root``: ``--root`` may be up to two levels above
    it), the bundled demo's folder, a manifest's folder (or the folder given). A moved corpus is
    this folder moved: ``align-segments --root NEW`` resolves the same relative paths under NEW
    (for IEMOCAP, under the sessions folder ``NEW`` holds)."""
    if kind == "iemocap":
        return os.path.abspath(find_root(options["root"]))
    if kind == "demo":
        return str(demo_root())
    if kind in ("manifest", "lhotse"):
        path = os.path.abspath(options["path"])
        return path if os.path.isdir(path) else os.path.dirname(path)
    raise CorpusError(f"unknown corpus kind {kind!r}; expected one of {list(KINDS)}")


def load_corpus(kind: str, **options) -> Sequence[Utterance]:
    """Load a corpus as ``Utterance`` records sorted by id.

    kinds: ``iemocap`` (root=, labels=), ``manifest`` (path=, labels=), ``demo`` (labels=),
    ``lhotse`` (path= a CutSet, a SupervisionSet beside its RecordingSet, or a folder; labels=).
    """
    if kind == "iemocap":
        if "root" not in options:
            raise CorpusError("the iemocap corpus needs root=<folder holding Session1 … Session5>")
        return load_iemocap(**options)
    if kind == "manifest":
        if "path" not in options:
            raise CorpusError("the manifest corpus needs path=<file.csv|file.jsonl>")
        return load_manifest(**options)
    if kind == "demo":
        return load_iemocap(demo_root(), full_release=False, **options)
    if kind == "lhotse":
        if "path" not in options:
            raise CorpusError("the lhotse corpus needs path=<CutSet or SupervisionSet .jsonl[.gz], or a folder>")
        return load_lhotse(**options)
    raise CorpusError(f"unknown corpus kind {kind!r}; expected one of {list(KINDS)}")


__all__ = ["Utterance", "load_corpus", "load_iemocap", "load_manifest", "utterance_table", "demo_root",
           "FOUR_CLASS", "SIX_CLASS", "KINDS", "load_lhotse", "corpus_base", "ALIGNMENTS", "alignment_paths",
           "resolve_path"]
