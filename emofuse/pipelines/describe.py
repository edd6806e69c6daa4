"""Human-readable summaries of corpora and stores."""

from __future__ import annotations

import pandas as pd

from ..corpora import load_corpus
from ..errors import CorpusError
from ..store import FeatureStore, store_bytes


def corpus_options(kind: str, root: str | None = None, manifest: str | None = None,
                   labels: str | None = None) -> dict:
    """``load_corpus`` options from CLI flags (``labels``: --labels, when given), with one clear
    sentence when one is missing."""
    opts = {"labels": labels} if labels else {}
    if kind == "iemocap":
        if not root:
            raise CorpusError("--corpus iemocap needs --root DIR (the folder holding Session1 … Session5)")
        return {"root": root, **opts}
    if kind == "manifest":
        if not manifest:
            raise CorpusError("--corpus manifest needs --manifest FILE (.csv or .jsonl)")
        return {"path": manifest, **opts}
    if kind == "lhotse":
        if not manifest:
            raise CorpusError("--corpus lhotse needs --manifest PATH (a CutSet, a SupervisionSet with its RecordingSet "
                              "beside it, or a folder of them)")
        return {"path": manifest, **opts}
    return opts


def describe_corpus(kind: str, root: str | None = None, manifest: str | None = None, labels: str | None = None) -> str:
    """Utterances per session and class as ``extract-embeddings`` would read them (``labels``: its --labels)."""
    utts = load_corpus(kind, **corpus_options(kind, root, manifest, labels))
    df = pd.DataFrame([{"session": u.session, "label": u.label} for u in utts])
    table = pd.crosstab(df["session"], df["label"], margins=True, margins_name="total")
    n_align = sum(1 for u in utts if u.alignments)
    return f"{len(utts)} utterances ({n_align} with alignments)\n{table.to_string()}"


def encoder_line(info: dict) -> str:
    """Family, checkpoint, revision and weights hash, frame hop and window of one stream."""
    family = info.get("family") or info.get("model_type") or "?"
    parts = [f"family {family}", f"checkpoint {info.get('encoder_id', '?')}",
             f"revision {info.get('revision', '?')}", f"weights {str(info.get('weights_hash', '?'))[:12]}"]
    if info.get("untrained"):
        parts.append("UNTRAINED random weights")
    if "frame_hop_s" in info:
        parts.append(f"frame hop {1000 * float(info['frame_hop_s']):g} ms, frame window "
                     f"{1000 * float(info['frame_window_s']):g} ms"
                     + (f" (centred: offset {1000 * float(info['frame_offset_s']):g} ms)" if info.get("frame_offset_s") else ""))
    if "window_s" in info:
        parts.append(f"input window {float(info['window_s']):g} s"
                     + (" (standard)" if info.get("standard_window") else " (shorter than the standard 30 s: "
                        "activations differ from the standard ones)"))
    if "max_tokens" in info:
        parts.append(f"max {info['max_tokens']} tokens per window")
    return "; ".join(parts)


def describe_store(path: str) -> str:
    with FeatureStore(path) as fs:
        lines = [f"{path}: {len(fs.utterances)} utterances, {store_bytes(path) / 1e6:.1f} MB in "
                 f"{len(set(fs.part_files))} part files (schema v{fs.schema_version}), "
                 f"corpus fingerprint {fs.corpus_fingerprint[:12]}"]
        for s in fs.streams:
            info = fs.stream_info(s)
            desc = ", ".join(f"{k} {v}" for k, v in info["entries"].items())
            kept = info.get("layers")   # a --layers subset: which encoder layers the store holds
            layers = (f"layers {list(kept)} of {info.get('num_layers', '?')}" if kept is not None
                      else f"{info.get('num_layers', '?')} layers")
            lines.append(f"  stream {s!r}: {info.get('encoder_id', '?')} ({layers} x "
                         f"{info.get('dim', '?')}, {info.get('store_dtype', '?')}); {desc}")
            lines.append("    " + encoder_line(info))
            pre = info.get("preprocessing")
            if isinstance(pre, dict) and pre:
                lines.append("    input: " + ", ".join(f"{k} {v}" for k, v in pre.items()))
            if info.get("notes"):
                lines.append(f"    note: {info['notes']}")
            sk = fs.skipped(s)
            if len(sk):
                for kind, grp in sk.groupby("kind"):
                    reasons = grp["reason"].value_counts()
                    top = "; ".join(f"{n}× {r}" for r, n in reasons.head(3).items())
                    lines.append(f"    skipped for {kind}: {grp['id'].nunique()} utterances ({top[:240]})")
        if fs.pending_parts:
            lines.append(f"  {len(fs.pending_parts)} committed parts are not published yet: re-run the command that wrote them")
        return "\n".join(lines)
