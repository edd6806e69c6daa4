"""The evaluation protocol of docs/design.md: leave-one-session-out folds, the validation draw
and the seed of each (repeat, fold) run, and the order of an epoch's batches. Shared by ``train-head``
and ``finetune``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..errors import Diverged, EmofuseError
from ..hashing import sha256_int
from .metrics import scores
from .rundir import predictions_roundtrip

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .data import TrainData
    from .train import TrainConfig


def sessions_of(data) -> list[str]:
    """Every session (fold unit) of the usable utterances, in fold order (S2 before S10)."""
    return _sessions(data.sessions)


def _sessions(sessions_of_utts) -> list[str]:
    """The distinct sessions as plain strings, in fold order (S2 before S10)."""
    return sorted({str(s) for s in sessions_of_utts}, key=lambda s: (len(s), s))


def run_seed(data, seed: int, session: str) -> int:
    """The seed of one run's initialisation, dropout and batch order: a function of (seed, test
    session) only. The session's position is taken in the *full* session list, so a fold trained
    under ``--folds`` draws exactly what it draws in a run of every fold."""
    return seed * 1000 + sessions_of(data).index(session)


_said: set | None = None   # under ``lacking_said_once``: the (store, session, classes) already said


@contextlib.contextmanager
def lacking_said_once(said: set | None = None):
    """Within the block, a test session lacking a class is said once per store, not once per
    configuration (ablate: every row on one store shares the fact)."""
    global _said
    old, _said = _said, (set() if said is None else said)
    try:
        yield
    finally:
        _said = old


def folds_of(data: TrainData, cfg: TrainConfig, warn: bool = True) -> list[str]:
    """The test sessions of ``cfg``; warns (``warn``: one process of several says it) when one of
    them holds no utterance of some class (that fold's UA then averages the recall of the other
    classes only)."""
    folds = _folds(data.sessions, cfg)
    if not warn:
        return folds
    sessions, y = np.asarray(data.sessions).astype(str), np.asarray(data.y)
    for s in folds:
        present = set(y[sessions == s].tolist())
        missing = [c for i, c in enumerate(data.classes) if i not in present]
        if not missing:
            continue
        if _said is not None:   # under ablate: once per store
            fact = (os.path.abspath(str(getattr(cfg, "store", ""))), s, tuple(missing))
            if fact in _said:
                continue
            _said.add(fact)
        names = ", ".join(repr(str(c)) for c in missing)
        log.warning(f"{cfg.out}: test session {s} holds no {names} utterance; its UA averages the recall of "
                    "the other classes")
    return folds


#: the rank of an epoch that is never the best (its validation loss is not finite), and of none yet
NO_EPOCH = (-1.0, float("-inf"))


def epoch_score(val_ua: float, val_loss: float) -> tuple[float, float]:
    """How an epoch ranks for the best checkpoint: validation UA, ties broken by the lower
    validation loss. An epoch whose loss is not finite (the run diverged) ranks with ``NO_EPOCH``
    and is never kept: before, a run NaN from its first epoch kept it, and its NaN logits were
    scored as predicting the first class (UA 25 on four classes, published as a result)."""
    return (val_ua, -val_loss) if math.isfinite(val_loss) else NO_EPOCH


def check_trained(what: str, best_epoch: int, history: list, logits: np.ndarray, model: str = "head",
                  bf16: bool = False) -> None:
    """Refuse a run that has no finite epoch, or whose test logits are not finite, naming it and
    its learning rate (the usual cause); warn of one that diverged after a best epoch (kept).
    ``model``: what computes the logits from checked inputs ("head": cached activations, checked
    finite when read; "model": fine-tuned encoders and head); ``bf16``: it trained under --bf16."""
    lr = f" (learning rate {history[0]['lr']:g})" if history and "lr" in history[0] else ""
    if best_epoch < 0:
        raise Diverged(f"{what} diverged: its validation loss was not finite from its first epoch{lr}; "
                       "lower --lr (a spec row's lr: under ablate). Nothing of it is written; runs finished "
                       "before are kept")
    if not np.isfinite(logits).all():
        checked = " (its inputs are checked when read)" if model == "head" else ""
        raise Diverged(f"{what}: its best epoch ({best_epoch}) gives test logits that are not finite: the {model} "
                       f"overflowed{checked}{lr}; lower --lr" + (", or train without --bf16" if bf16 else "") +
                       ". Nothing of it is written; runs finished before are kept")
    bad = next((h["epoch"] for h in history if not math.isfinite(h["val_loss"])), None)
    if bad is not None:
        log.warning(f"{what} diverged at epoch {bad} (validation loss not finite){lr}; its best epoch before, "
                    f"{best_epoch}, is kept")


def fold_outcome(out: str, data, te: np.ndarray, logits: np.ndarray, r: int, seed: int, session: str,
                 best_epoch: int, history: list, device: torch.device, model: str = "head", bf16: bool = False,
                 **more) -> tuple[dict, pd.DataFrame]:
    """A trained fold's metrics and predictions, as train-head and finetune write them: refused when
    it diverged (``check_trained``, with ``model`` and ``bf16``); ``more``: the run kind's own
    metrics fields (n_train, layer weights …). Both as a reused fold reads them back, so that a
    resumed run's files equal an uninterrupted run's."""
    check_trained(f"{out}: repeat {r}, test session {session}", best_epoch, history, logits, model, bf16)
    m = scores(data.y[te], logits.argmax(1), len(data.classes))
    m.update(repeat=r, seed=seed, fold=session, best_epoch=best_epoch, epochs=len(history), n_test=len(te), **more,
             cpu_threads=torch.get_num_threads() if device.type == "cpu" else None, history=history)
    p = pd.DataFrame({"repeat": r, "seed": seed, "fold": session, "id": data.ids[te],
                      "label": np.array(data.classes)[data.y[te]], "pred": np.array(data.classes)[logits.argmax(1)]})
    for c, name in enumerate(data.classes):
        p[f"logit_{name}"] = logits[:, c]
    return json.loads(json.dumps(m)), predictions_roundtrip(p)


def _folds(sessions_of_utts, cfg: TrainConfig) -> list[str]:
    """The test sessions of ``cfg`` among the utterances' sessions (plain strings, in order)."""
    sessions = _sessions(sessions_of_utts)
    if len(sessions) < 2:
        raise EmofuseError(f"leave-one-session-out needs at least two sessions; the store has {sessions}")
    if cfg.folds:
        bad = [f for f in cfg.folds if f not in sessions]
        if bad:
            raise EmofuseError(f"--folds {','.join(bad)}: no such session; the store's sessions are "
                               f"{', '.join(sessions)} (e.g. --folds {','.join(sessions[:2])})")
        return [s for s in sessions if s in cfg.folds]
    return sessions


def split(data: TrainData, session: str, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) utterance indices: test = the session, validation = a random
    ``val_fraction`` of the other sessions' utterances (seeded by repeat seed and session)."""
    test = np.flatnonzero(data.sessions == session)
    rest = np.flatnonzero(data.sessions != session)
    key = sha256_int(f"{seed}/{session}", 4)
    perm = np.random.default_rng(key).permutation(rest)
    n_val = max(1, int(round(val_fraction * len(rest))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), test


#: batches per length group of ``--group-by-length`` (transformers' LengthGroupedSampler: at most 50)
GROUP_BATCHES = 50


def epoch_order(train: np.ndarray, gen, batch_size: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """One epoch's order of the training utterances ``train``: a permutation drawn from ``gen``
    (the run's generator), consecutive ``batch_size`` slices being the batches. With ``lengths``
    (rows per utterance, ``--group-by-length``) the shuffled order is cut into groups of
    ``GROUP_BATCHES`` batches and each group sorted longest first (stable), so each batch holds
    utterances of similar length; the draws from ``gen`` are the same either way."""
    order = train[torch.randperm(len(train), generator=gen).numpy()]
    if lengths is None:
        return order
    size = GROUP_BATCHES * batch_size
    return np.concatenate([g[np.argsort(-lengths[g], kind="stable")] for g in np.split(order, range(size, len(order), size))]) \
        if len(order) else order


def utterance_rows(data) -> np.ndarray:
    """(U,) rows an utterance brings to a batch, summed over the configuration's streams: the
    length ``--group-by-length`` groups by."""
    return sum(src.lengths for src in data.sources.values())
