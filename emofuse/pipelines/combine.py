"""``train-head --fusion combine`` (MG §2.4): the test logits of finished runs averaged per
(repeat, fold, utterance) and scored."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from .. import __version__
from ..errors import EmofuseError
from .metrics import format_summary, scores_of_predictions, summarise
from .rundir import (CONFIG, PREDICTIONS, check_run_dir, predictions_digest, read_config,
                     read_run_predictions, refuse_diverged, run_lock, write_config, write_predictions, write_summary)

log = logging.getLogger(__name__)


def run_combine(run_dirs: Sequence[str], out: str) -> dict:
    """Average the test logits of finished runs per (repeat, fold, utterance) and score them.
    The runs must share the corpus, classes, folds, seeds and test utterances."""
    with run_lock(out, "train-head --fusion combine"):
        return _run_combine(run_dirs, out)


def _run_combine(run_dirs: Sequence[str], out: str) -> dict:
    if len(run_dirs) < 2:
        raise EmofuseError("--fusion combine needs at least two --runs")
    inside = [d for d in run_dirs if os.path.realpath(d) == os.path.realpath(out)]
    if inside:
        raise EmofuseError(f"--out {out} is one of the runs to combine ({inside[0]}): it would overwrite that run's "
                           "results; choose another --out")
    configs, preds = [], []
    for d in run_dirs:
        for name in (CONFIG, PREDICTIONS):
            if not os.path.exists(os.path.join(d, name)):
                raise EmofuseError(f"{d} is not a finished train-head run (no {name})")
        config = read_config(d)
        kind = config.get("type") if isinstance(config, dict) else None
        if kind != "emofuse.train-head":
            raise EmofuseError(f"{d} is not a train-head run (its config.json is of type {kind}): score combination "
                               "averages the test logits of train-head or finetune runs on one store")
        if "fingerprints" not in config:
            raise EmofuseError(f"{d}/config.json records no store fingerprints (damaged, or written by hand): which "
                               "corpus its runs tested on cannot be checked; run its train-head command again")
        configs.append(config)
        preds.append(read_run_predictions(d))
        refuse_diverged(d, "train it again (train-head retrains such folds), then combine", preds[-1])
    corpus = {c["fingerprints"]["corpus"] for c in configs}
    if len(corpus) != 1:
        raise EmofuseError(f"runs {list(run_dirs)} come from different corpora; refusing to combine them")
    cols = [list(p.columns) for p in preds]
    if any(c != cols[0] for c in cols):
        raise EmofuseError(f"runs {list(run_dirs)} have different classes; refusing to combine them")
    key = ["repeat", "seed", "fold", "id"]
    ref = preds[0].set_index(key).sort_index()
    logit_cols = [c for c in ref.columns if c.startswith("logit_")]
    total = ref[logit_cols].to_numpy(dtype=np.float64)
    for d, p in zip(run_dirs[1:], preds[1:]):
        p = p.set_index(key).sort_index()
        if not p.index.equals(ref.index):
            raise EmofuseError(f"{d} and {run_dirs[0]} do not share folds, seeds and test utterances "
                               "(same --repeats, --seed and store needed); refusing to combine them")
        total += p[logit_cols].to_numpy(dtype=np.float64)
    classes = [c[len("logit_"):] for c in logit_cols]
    comb = ref[["label"]].copy()
    avg = total / len(run_dirs)
    comb["pred"] = np.array(classes)[avg.argmax(1)]
    for j, c in enumerate(logit_cols):
        comb[c] = avg[:, j]
    comb = comb.reset_index()
    runs = []
    for (r, seed, fold), g in comb.groupby(["repeat", "seed", "fold"], sort=True):
        m = scores_of_predictions(g, classes)
        m.update(repeat=int(r), seed=int(seed), fold=str(fold), n_test=len(g))
        runs.append(m)
    os.makedirs(out, exist_ok=True)
    config = {"type": "emofuse.train-head", "emofuse_version": __version__,
              "config": {"fusion": "combine", "runs": [os.path.abspath(d) for d in run_dirs]},
              "identity": {"fusion": "combine", "members": [c["identity"] for c in configs]},
              "fingerprints": configs[0]["fingerprints"],   # as recorded since the first combinations
              "member_fingerprints": [c["fingerprints"] for c in configs],
              # what each member held when combined: ablate combines again when a member changed since
              "member_predictions": [predictions_digest(d) for d in run_dirs]}
    check_run_dir(out, config)   # a finished train-head run or another combination there is not overwritten
    write_config(out, config)
    write_predictions(out, comb)
    summary = summarise(runs, classes)
    summary.update(type="emofuse.summary", fusion="combine", members=[os.path.abspath(d) for d in run_dirs], runs=runs)
    write_summary(out, summary)
    log.info(f"{out}: " + format_summary(summary))
    return summary
