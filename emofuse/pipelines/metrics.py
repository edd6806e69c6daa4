"""Metrics of the protocol: UA (mean per-class recall, the headline), WA (accuracy), macro-F1."""

from __future__ import annotations

from typing import Sequence

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

METRICS = ("ua", "wa", "f1")


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, f1_over_truth: bool = False) -> dict:
    """{'ua', 'wa', 'f1'} in percent and the confusion matrix (rows: true class, all ``n_classes``).
    UA averages the recall of the classes in ``y_true``; macro-F1 the F1 of the classes in
    ``y_true`` or ``y_pred`` (``f1_over_truth``: of the classes in ``y_true`` only, as UA: a
    cross-corpus evaluation, where every fold model must average the same classes)."""
    labels = list(range(n_classes))
    with warnings.catch_warnings():   # a small validation set may lack a class: recall over those present
        warnings.simplefilter("ignore", UserWarning)
        ua = 100 * float(balanced_accuracy_score(y_true, y_pred))
    return {"ua": ua,
            "wa": 100 * float(accuracy_score(y_true, y_pred)),
            # over the classes that occur (truth or prediction), as sklearn's default: a class absent
            # from a test fold and never predicted is no F1 of 0 (UA leaves it out likewise)
            "f1": 100 * float(f1_score(y_true, y_pred, average="macro", zero_division=0,
                                       labels=sorted(set(np.asarray(y_true).tolist())) if f1_over_truth else None)),
            "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


#: The definition of the scores run files hold. 2: macro-F1 over the classes that occur in a
#: fold's truth or predictions. Files without it (written before) hold an older F1 and are scored
#: again from their predictions when read (``pipelines.rundir``), never shown as today's.
METRICS_VERSION = 2


def scores_of_predictions(preds, classes: Sequence[str], f1_over_truth: bool = False) -> dict:
    """``scores`` of a predictions table (columns ``label``, ``pred``: class names)."""
    index = {c: i for i, c in enumerate(classes)}
    return scores(preds["label"].map(index).to_numpy(), preds["pred"].map(index).to_numpy(), len(classes),
                  f1_over_truth)


def mean_std(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def summarise(runs: Sequence[dict], classes: Sequence[str]) -> dict:
    """mean ± std over runs of each metric, and the summed confusion matrix."""
    out = {m: mean_std([r[m] for r in runs]) for m in METRICS}
    out["confusion"] = np.sum([r["confusion"] for r in runs], axis=0).tolist()
    out["classes"] = list(classes)
    return out


def format_summary(s: dict) -> str:
    """One line of mean ± std per metric; one run has no std to show (not ± 0.00)."""
    n = s["ua"]["n"]
    if n == 1:
        return "  ".join(f"{m.upper()} {s[m]['mean']:.2f}" for m in METRICS) + "  (1 run: no std)"
    return "  ".join(f"{m.upper()} {s[m]['mean']:.2f} ± {s[m]['std']:.2f}" for m in METRICS) + f"  ({n} runs)"
