"""``report``: PNG figures and one ``report.md`` for a train-head run or an ablate grid."""

from __future__ import annotations

import glob
import logging
import json
import os

import numpy as np

from ..errors import EmofuseError
from .keys import SHORT_NAME
from .rundir import fold_metrics, is_finished, read_config, read_summary, refuse_diverged
from .tables import DEPARTURES, options_used, partial_rows

log = logging.getLogger(__name__)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _load(run_dir: str) -> tuple[dict, list[dict]]:
    refuse_diverged(run_dir)
    s = read_summary(run_dir)
    runs = [m for _, m in fold_metrics(run_dir)]
    return s, runs or s["runs"]


def run_name(s: dict) -> str:
    """A finished run's configuration in a few words, from its summary: ``late F+S+T``; a score
    combination names its members (``score combination of late F+S, linear T``)."""
    if s.get("fusion") == "combine" and s.get("members"):
        members = [(d, read_summary(d, strict=False)) for d in s["members"]]
        # a member moved or removed since: its folder name
        names = [run_name(m) if m else os.path.basename(os.path.normpath(d)) for d, m in members]
        return "score combination of " + ", ".join(names)
    return (s.get("fusion", "run") + " " + "+".join(s.get("keys", []))).strip()


def _pdf_twin(png: str) -> str:
    """The vector PDF report draws beside each PNG figure (``x/a-folds.png`` → ``x/a-folds.pdf``)."""
    return os.path.splitext(png)[0] + ".pdf"


def _save(plt, fig, path: str) -> None:
    """``path`` (a PNG, for report.md) and, beside it, the same figure as a vector PDF (for a paper)."""
    fig.tight_layout()
    fig.savefig(path)
    if path.lower().endswith(".png"):
        fig.savefig(_pdf_twin(path))
    plt.close(fig)


def fold_label(fold) -> str:
    """A test fold as readers know it: IEMOCAP's numbered sessions as S1 … S5, any other
    session name (a manifest's ``sess1``, ``spk03``) as written."""
    f = str(fold)
    return f"S{f}" if f.isdigit() else f


def confusion_figure(summary: dict, path: str, title: str):
    """Row-normalised confusion matrix summed over every run (recall on the diagonal), in percent
    in the cells and on the colour bar; a class with no test utterance (absent from a
    cross-corpus store) is a grey row of "–", not a recall of 0. Returns the figure (closed)."""
    plt = _plt()
    counts = np.array(summary["confusion"], float)
    none = counts.sum(1) == 0
    cm = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    classes = [str(c) for c in summary["classes"]]
    n = len(classes)
    side = max(3.2, 0.55 * n + 1.6)
    fig, ax = plt.subplots(figsize=(side + 0.6, side), dpi=150)
    cmap = plt.get_cmap("Blues").with_extremes(bad="#e0e0e0")
    im = ax.imshow(np.ma.masked_array(cm, np.repeat(none[:, None], n, 1)), cmap=cmap, vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, "–" if none[i] else f"{cm[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > 60 and not none[i] else "black")
    long = max((len(c) for c in classes), default=0) > 4 or n > 5
    ax.set_xticks(range(n), classes, rotation=45 if long else 0, ha="right" if long else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(n), [f"{c} (none)" if none[i] else c for i, c in enumerate(classes)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8, parse_math=False)   # a label as written ($ …)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("% of the true class", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    _save(plt, fig, path)
    return fig


def layer_ids_of(run: dict, key: str) -> list[int]:
    """The encoder layer index of each learned weight of ``key`` in one run's metrics (runs from
    before layer ids were recorded used every stored layer, 0..n−1)."""
    ids = (run.get("layer_ids") or {}).get(key)
    return list(ids) if ids is not None else list(range(len(run["layer_weights"][key])))


def layer_weight_figure(runs: list[dict], path: str, title: str):
    """Learned layer weights, one panel per stream, mean ± std over folds and repeats, against the
    encoder layer index each weight belongs to (0 = the transformer's input) and the uniform level,
    on a y axis from 0 (near-uniform weights look flat, not like structure). Returns the figure
    (closed), or None when no stream has layers to weigh."""
    ws = [r for r in runs if r.get("layer_weights")]
    if not ws:
        return None
    keys = [k for k in ws[0]["layer_weights"] if len(ws[0]["layer_weights"][k]) > 1]   # one layer: nothing to weigh
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys) + 0.8, 2.6), dpi=150, squeeze=False)
    for ax, k in zip(axes[0], keys):
        w = np.array([r["layer_weights"][k] for r in ws])
        m, s = w.mean(0), (w.std(0, ddof=1) if len(w) > 1 else np.zeros(w.shape[1]))   # as the tables' std
        layers = layer_ids_of(ws[0], k)
        ax.errorbar(layers, m, yerr=s, marker="o", ms=3, capsize=2, label="learned (mean ± std)")
        ax.axhline(1 / len(m), color="grey", lw=0.8, ls=":", label=f"uniform (1/{len(m)})")
        hi = max(float((m + s).max()), 1 / len(m))
        ax.set_ylim(0, hi * 1.25)
        ax.set_xticks(layers if len(layers) <= 13 else layers[::2])
        ax.set_xlabel("encoder layer (0 = transformer input)", fontsize=7)
        ax.set_title(SHORT_NAME.get(k, k), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")   # each panel its own uniform level (1/L differs per stream)
    axes[0][0].set_ylabel("weight")
    fig.suptitle(title, fontsize=8, parse_math=False)
    _save(plt, fig, path)
    return fig


def fold_figure(summary: dict, path: str, title: str, xlabel: str = "test session (fold)"):
    """UA of every test fold, one dot per repeat, the mean as a bar (``xlabel``: what a fold is;
    a cross-corpus evaluation's are the fold models, each tested on the whole other store).
    Returns the figure (closed)."""
    plt = _plt()
    runs = summary["runs"]
    folds = sorted({str(r["fold"]) for r in runs}, key=lambda s: (len(s), s))
    fig, ax = plt.subplots(figsize=(max(4.2, 0.5 * len(folds) + 1.5), 2.8), dpi=150)
    for i, f in enumerate(folds):
        v = [r["ua"] for r in runs if str(r["fold"]) == f]
        ax.bar(i, np.mean(v), color="#9ecae1", label="mean over repeats" if i == 0 else None)
        ax.plot([i] * len(v), v, "o", color="#08519c", ms=3, label="one repeat" if i == 0 else None)
    labels = [fold_label(f) for f in folds]
    long = sum(len(x) for x in labels) > 40   # rotate only when the names would not fit side by side
    ax.set_xticks(range(len(folds)), labels, rotation=45 if long else 0, ha="right" if long else "center",
                  rotation_mode="anchor")
    ax.set_ylabel("UA %")
    ax.set_xlabel(xlabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(title, fontsize=8, parse_math=False)   # a label as written ($ …)
    _save(plt, fig, path)
    return fig


def curve_figure(runs: list[dict], path: str, title: str):
    """Validation UA per epoch (the early-stopping signal): per test fold, the mean over its
    repeats with a ± one standard deviation band (at each epoch, over the runs still training).
    Returns the figure (closed), or None without histories."""
    hs = [(str(r["fold"]), r["history"]) for r in runs if r.get("history")]
    if not hs:
        return None
    plt = _plt()
    folds = sorted({f for f, _ in hs}, key=lambda s: (len(s), s))
    fig, ax = plt.subplots(figsize=(4.8, 2.8), dpi=150)
    colours = plt.get_cmap("tab10")
    for k, f in enumerate(folds):
        curves = [[e["val_ua"] for e in h] for g, h in hs if g == f]
        T = max(len(c) for c in curves)
        m, sd = np.full(T, np.nan), np.full(T, np.nan)
        for t in range(T):
            v = [c[t] for c in curves if len(c) > t]
            m[t], sd[t] = np.mean(v), (np.std(v, ddof=1) if len(v) > 1 else 0.0)   # as the tables' std
        x = np.arange(1, T + 1)
        n = len(curves)
        ax.plot(x, m, lw=1.2, color=colours(k % 10), label=f"{fold_label(f)} ({n} runs)" if n > 1 else fold_label(f))
        if n > 1:
            ax.fill_between(x, m - sd, m + sd, color=colours(k % 10), alpha=0.15, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation UA %")
    ax.legend(fontsize=6, title="test fold" + (" (mean ± std over the runs still training)" if any(
        sum(g == f for g, _ in hs) > 1 for f in folds) else ""), title_fontsize=6, ncol=2 if len(folds) > 5 else 1)
    ax.set_title(title, fontsize=8, parse_math=False)   # a label as written ($ …)
    _save(plt, fig, path)
    return fig


#: the endings of the figure files report draws (``[PREFIX]confusion.png`` and ``.pdf`` …)
FIGURE_NAMES = ("confusion", "layers", "folds", "curves")   # each as .png and .pdf
#: in figures/: the files the last report drew, which the next one removes first (and no other)
DRAWN = ".report-figures.json"


def _remove_earlier_figures(fig_dir: str) -> None:
    """What an earlier report drew (another best row, a renamed table) goes; a user's own files in
    figures/ stay. A report from before the list drew PNGs only, named by ``FIGURE_NAMES``."""
    try:
        with open(os.path.join(fig_dir, DRAWN)) as f:
            names = [n for n in json.load(f) if isinstance(n, str)]
    except FileNotFoundError:
        names = [os.path.basename(p) for p in glob.glob(os.path.join(fig_dir, "*.png"))
                 if os.path.splitext(os.path.basename(p))[0].endswith(FIGURE_NAMES)]
    except (OSError, ValueError):   # unreadable: nothing is known to be ours
        names = []
    for name in names:
        if os.path.basename(name) == name and os.path.isfile(os.path.join(fig_dir, name)):
            os.remove(os.path.join(fig_dir, name))


def run_figures(run_dir: str, fig_dir: str, prefix: str, title: str,
                cross_corpus: bool = False) -> list[tuple[str, str]]:
    """Every figure of one run (or of a cross-corpus evaluation: ``cross_corpus``); returns
    (caption, path relative to fig_dir's parent)."""
    s, runs = _load(run_dir)
    os.makedirs(fig_dir, exist_ok=True)
    rel = os.path.basename(fig_dir)
    out = []
    p = os.path.join(fig_dir, f"{prefix}confusion.png")
    confusion_figure(s, p, f"{title}: confusion (row %)")
    out.append(("Confusion matrix summed over all runs, % of each true class", f"{rel}/{prefix}confusion.png"))
    if layer_weight_figure(runs, os.path.join(fig_dir, f"{prefix}layers.png"), f"{title}: layer weights"):
        out.append(("Learned layer weights, mean ± std over runs", f"{rel}/{prefix}layers.png"))
    if cross_corpus:
        fold_figure(s, os.path.join(fig_dir, f"{prefix}folds.png"), f"{title}: UA per fold model",
                    xlabel="fold model (the session it held out in training)")
        out.append(("UA of each fold model on the whole evaluated store", f"{rel}/{prefix}folds.png"))
    else:
        fold_figure(s, os.path.join(fig_dir, f"{prefix}folds.png"), f"{title}: UA per fold")
        out.append(("UA per test session", f"{rel}/{prefix}folds.png"))
    if curve_figure(runs, os.path.join(fig_dir, f"{prefix}curves.png"), f"{title}: validation curves"):
        out.append(("Validation UA per epoch: mean ± std over the repeats still training at that epoch, per test fold",
                    f"{rel}/{prefix}curves.png"))
    return out


def run_report(path: str) -> str:
    """Write figures and ``report.md`` into ``path`` (a run or grid directory). Returns report.md."""
    from .metrics import format_summary

    fig_dir = os.path.join(path, "figures")
    lines: list[str] = []
    drawn: list[str] = []

    def figures(*args, **kw):   # run_figures; the PNG and PDF of each figure drawn listed at once (a crash too)
        out = run_figures(*args, **kw)
        drawn.extend(n for _, rel in out for n in (os.path.basename(rel), os.path.basename(_pdf_twin(rel))))
        with open(os.path.join(fig_dir, DRAWN), "w") as f:
            json.dump(sorted(set(drawn)), f)
        return out

    if os.path.exists(os.path.join(path, "ablate.json")) or is_finished(path):
        _remove_earlier_figures(fig_dir)
    if os.path.exists(os.path.join(path, "ablate.json")):
        with open(os.path.join(path, "ablate.json")) as f:
            grid = json.load(f)
        with open(os.path.join(path, "tables.md")) as f:
            tables_md = f.read()
        lines += [f"# emofuse report: {grid['spec'].get('name', 'grid')}", "", f"Store: `{grid['store']}`", "",
                  tables_md, "Tables also as LaTeX and CSV (with Wilcoxon p-values) in `tables/`; each row's run folder "
                  "in `runs.md`.", ""]
        import pandas as pd
        for t in grid["spec"]["tables"]:
            csv = os.path.join(path, "tables", f"{t['name']}.csv")
            if not os.path.exists(csv):   # no row of it ran (fine-tuned rows without ablate --finetune)
                continue
            df = pd.read_csv(csv)
            # run folders relative to the grid (older tables: as ablate's --out was typed, or absolute)
            df["run_dir"] = [os.path.join(path, d) if os.path.isdir(os.path.join(path, d)) else d
                             for d in df["run_dir"].astype(str)]
            # the table's best: rows run on fewer test folds (†) come after every full row
            df = df.assign(_partial=partial_rows(df)).sort_values(["_partial", "ua_mean"], ascending=[True, False])
            trained = [os.path.exists(os.path.join(d, "runs")) for d in df["run_dir"]]
            picks = [df.iloc[0]]
            if not trained[0] and any(trained):   # a score combination has no layer weights or curves of its own
                picks.append(df[trained].iloc[0])
            for k, best in enumerate(picks):
                what = "best configuration" if k == 0 else "best trained configuration"
                lines += [f"## {t['name']}: {what}, {best['label']}", ""]
                prefix = f"{t['name']}-" if k == 0 else f"{t['name']}-trained-"
                for cap, rel in figures(best["run_dir"], fig_dir, prefix, str(best["label"])):
                    lines += [f"![{cap}]({rel})", ""]
    elif is_finished(path) and read_summary(path).get("evaluation") == "cross-corpus":
        s, _ = _load(path)
        name = f"{run_name(s)} on {os.path.basename(str(s.get('store', '')))} (cross-corpus)"
        e = s.get("ensemble") or {}
        lines += [f"# emofuse report: {name}", "",
                  f"Trained run: `{s.get('model')}`; evaluated store: `{s.get('store')}` ({s.get('utterances')} "
                  "utterances).", "",
                  "Fold models: " + format_summary(s) + (f"; their ensemble: UA {e['ua']:.2f}  WA {e['wa']:.2f}  "
                                                         f"F1 {e['f1']:.2f}" if e else ""), ""]
        if s.get("absent_classes"):
            lines += [f"Classes absent from the evaluated store: {', '.join(s['absent_classes'])} (UA and macro-F1 "
                      "average the others).", ""]
        for cap, rel in figures(path, fig_dir, "", name, cross_corpus=True):
            lines += [f"![{cap}]({rel})", ""]
    elif is_finished(path):
        s, _ = _load(path)
        name = run_name(s)
        used = options_used((read_config(path) or {}).get("identity"))   # how it was computed, where not the default
        how = "".join(f"; {d.note}" for o, d in DEPARTURES.items() if o in used)
        lines += [f"# emofuse report: {name}", "", format_summary(s) + how, ""]
        for cap, rel in figures(path, fig_dir, "", name):
            lines += [f"![{cap}]({rel})", ""]
    else:
        raise EmofuseError(f"{path} is neither a train-head run (summary.json) nor an ablate grid (ablate.json)")
    out = os.path.join(path, "report.md")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    log.info(f"report: {out}")
    return out
