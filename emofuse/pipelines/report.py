"""``report``: PNG figures and one ``report.md`` for a train-head run or an ablate grid."""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from ..errors import EmofuseError

STREAM_NAMES = {"F": "frames", "P": "phones", "S": "syllables", "W": "words", "T": "text"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _load(run_dir: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    runs = []
    rdir = os.path.join(run_dir, "runs")
    if os.path.isdir(rdir):
        for name in sorted(os.listdir(rdir)):
            p = os.path.join(rdir, name, "metrics.json")
            if os.path.exists(p):
                with open(p) as f:
                    runs.append(json.load(f))
    return s, runs or s["runs"]


def _save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_figure(summary: dict, path: str, title: str) -> None:
    """Row-normalised confusion matrix summed over every run (recall on the diagonal)."""
    plt = _plt()
    cm = np.array(summary["confusion"], float)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    classes = summary["classes"]
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=150)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{100 * cm[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(plt, fig, path)


def layer_weight_figure(runs: list[dict], path: str, title: str) -> bool:
    """Learned layer weights per stream, mean ± std over folds and repeats (layer 0 = input)."""
    ws_runs = [r for r in runs if r.get("layer_weights")]
    ws = [r["layer_weights"] for r in ws_runs]
    if not ws:
        return False
    keys = [k for k in ws[0] if len(ws[0][k]) > 1]   # a one-layer stream (eGeMAPS) has nothing to weigh
    if not keys:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 2.8), dpi=150)
    for k in keys:
        w = np.array([x[k] for x in ws])
        m, s = w.mean(0), w.std(0)
        ids = (ws_runs[0].get("layer_ids") or {}).get(k)  # the encoder's layer numbers (a --layers subset)
        layers = np.array(ids) if ids and len(ids) == len(m) else np.arange(len(m))
        ax.errorbar(layers, m, yerr=s, marker="o", ms=3, capsize=2, label=STREAM_NAMES.get(k, k))
    ax.axhline(1 / len(m), color="grey", lw=0.6, ls=":")
    ax.set_xlabel("layer (0 = transformer input)")
    ax.set_ylabel("weight")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    _save(plt, fig, path)
    return True


def fold_figure(summary: dict, path: str, title: str) -> None:
    """UA of every test fold, one dot per repeat, the mean as a bar."""
    plt = _plt()
    runs = summary["runs"]
    folds = sorted({str(r["fold"]) for r in runs}, key=lambda s: (len(s), s))
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=150)
    for i, f in enumerate(folds):
        v = [r["ua"] for r in runs if str(r["fold"]) == f]
        ax.bar(i, np.mean(v), color="#9ecae1")
        ax.plot([i] * len(v), v, "o", color="#08519c", ms=3)
    ax.set_xticks(range(len(folds)), [f"S{f}" for f in folds])
    ax.set_ylabel("UA %")
    ax.set_xlabel("test session")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=8)
    _save(plt, fig, path)


def curve_figure(runs: list[dict], path: str, title: str) -> bool:
    """Validation UA per epoch of every run (the early-stopping signal)."""
    hs = [r["history"] for r in runs if r.get("history")]
    if not hs:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=150)
    for h in hs:
        ax.plot([e["epoch"] + 1 for e in h], [e["val_ua"] for e in h], lw=0.8, alpha=0.7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation UA %")
    ax.set_title(title, fontsize=8)
    _save(plt, fig, path)
    return True


def run_figures(run_dir: str, fig_dir: str, prefix: str, title: str) -> list[tuple[str, str]]:
    """Every figure of one run; returns (caption, path relative to fig_dir's parent)."""
    s, runs = _load(run_dir)
    os.makedirs(fig_dir, exist_ok=True)
    rel = os.path.basename(fig_dir)
    out = []
    p = os.path.join(fig_dir, f"{prefix}confusion.png")
    confusion_figure(s, p, f"{title}: confusion (row %)")
    out.append(("Normalised confusion matrix (all runs)", f"{rel}/{prefix}confusion.png"))
    if layer_weight_figure(runs, os.path.join(fig_dir, f"{prefix}layers.png"), f"{title}: layer weights"):
        out.append(("Learned layer weights, mean ± std over runs", f"{rel}/{prefix}layers.png"))
    fold_figure(s, os.path.join(fig_dir, f"{prefix}folds.png"), f"{title}: UA per fold")
    out.append(("UA per test session", f"{rel}/{prefix}folds.png"))
    if curve_figure(runs, os.path.join(fig_dir, f"{prefix}curves.png"), f"{title}: validation curves"):
        out.append(("Validation UA per epoch", f"{rel}/{prefix}curves.png"))
    return out


def run_report(path: str, echo: Callable[[str], None] = print) -> str:
    """Write figures and ``report.md`` into ``path`` (a run or grid directory). Returns report.md."""
    from .metrics import format_summary

    fig_dir = os.path.join(path, "figures")
    lines = []
    if os.path.exists(os.path.join(path, "ablate.json")):
        with open(os.path.join(path, "ablate.json")) as f:
            grid = json.load(f)
        with open(os.path.join(path, "tables.md")) as f:
            tables_md = f.read()
        lines += [f"# emofuse report: {grid['spec'].get('name', 'grid')}", "", f"Store: `{grid['store']}`", "",
                  tables_md, "Tables also as LaTeX and CSV (with Wilcoxon p-values) in `tables/`.", ""]
        import pandas as pd
        for t in grid["spec"]["tables"]:
            df = pd.read_csv(os.path.join(path, "tables", f"{t['name']}.csv")).sort_values("ua_mean", ascending=False)
            trained = [os.path.exists(os.path.join(d, "runs")) for d in df["run_dir"]]
            picks = [df.iloc[0]]
            if not trained[0] and any(trained):   # a score combination has no layer weights or curves of its own
                picks.append(df[trained].iloc[0])
            for k, best in enumerate(picks):
                what = "best configuration" if k == 0 else "best trained configuration"
                lines += [f"## {t['name']}: {what}, {best['label']}", ""]
                prefix = f"{t['name']}-" if k == 0 else f"{t['name']}-trained-"
                for cap, rel in run_figures(best["run_dir"], fig_dir, prefix, str(best["label"])):
                    lines += [f"![{cap}]({rel})", ""]
    elif os.path.exists(os.path.join(path, "summary.json")):
        s, _ = _load(path)
        name = s.get("fusion", "run") + " " + "+".join(s.get("keys", []))
        lines += [f"# emofuse report: {name}", "", format_summary(s), ""]
        for cap, rel in run_figures(path, fig_dir, "", name):
            lines += [f"![{cap}]({rel})", ""]
    else:
        raise EmofuseError(f"{path} is neither a train-head run (summary.json) nor an ablate grid (ablate.json)")
    out = os.path.join(path, "report.md")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    echo(f"report: {out}")
    return out
