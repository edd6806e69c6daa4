"""Run directories of ``train-head``, ``finetune``, ``ablate``, score combination and ``evaluate``:
the one module that reads and writes them. What a run read (its key), one process per directory,
files that appear whole, and outputs that read the same whether a run was resumed or not.

A run directory::

    config.json          what the run is (type, configuration, identity, store fingerprints)
    runs/<fold>/         one per (repeat, test session), named by ``run_folder``:
      model.safetensors    the head at its best epoch (its metadata names the layers it read)
      predictions.csv      test logits
      metrics.json         scores and history; written last, so its presence marks the fold finished
    predictions.csv      every fold's test logits
    summary.json         mean ± std over the folds; its presence marks the run finished

- ``read_config`` / ``read_summary`` / ``fold_metrics`` / ``read_fold`` read them back,
  ``write_config`` / ``write_summary`` / ``write_predictions`` / ``save_fold`` write them.

- ``content_digest``: a digest of the exact store content a run reads for one stream and kind
  (the index of utterances, rows and storage offsets, and for segments their frame spans and
  symbols), so a store whose segments were re-aligned never hands its stale folds to a new run.
- ``run_lock``: an exclusive lock per directory (``run.lock`` holding the owner's pid and host),
  the same mechanism as a store's writer lock (``emofuse.locks``): an ``flock`` where the platform
  has one (Linux, macOS), which the kernel drops when its process dies, so a killed run never
  leaves a stale lock; elsewhere an ``O_EXCL`` file, taken over when its pid no longer runs here.
  The file is removed when the run ends.
- ``write_json`` / ``write_csv``: written to a temporary name unique to the process (pid and a
  random token), then renamed over the target: two processes never share a ``.tmp``.
- ``predictions_roundtrip``: fresh predictions pass through the same CSV text as reused ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ..errors import EmofuseError
from ..store import SHAPING_INFO
from ..locks import LockFile
from .metrics import METRICS_VERSION, scores_of_predictions, summarise

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


# -- atomic files -----------------------------------------------------------------------------
def tmp_name(path: str) -> str:
    """A temporary name next to ``path``, unique to this process and call."""
    return f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _replace_with(path: str, write) -> None:
    tmp = tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    _replace_with(path, write)


def write_csv(path: str, df: pd.DataFrame) -> None:
    _replace_with(path, lambda tmp: df.to_csv(tmp, index=False))


def load_json(path: str):
    """The JSON object at ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- predictions ------------------------------------------------------------------------------
#: text columns of predictions.csv, read back as text (an id "007" stays "007", a label "NA" stays "NA")
TEXT_COLUMNS = ("fold", "id", "label", "pred")


def read_predictions(source) -> pd.DataFrame:
    """A predictions CSV (path or buffer) with text columns as text and logits as float64 (a
    NaN logit, written as an empty cell, reads as NaN: see ``nan_logits``)."""
    head = pd.read_csv(source, nrows=0)
    if hasattr(source, "seek"):
        source.seek(0)
    dtype = {c: str for c in head.columns if c in TEXT_COLUMNS}
    return pd.read_csv(source, dtype=dtype, keep_default_na=False,
                       na_values={c: ["nan", "NaN", ""] for c in head.columns if c.startswith("logit_")})


def refuse_diverged(run_dir: str, advice: str = "train it again (train-head retrains such folds)",
                    preds: pd.DataFrame | None = None, what: str = "") -> None:
    """Refuse a finished run whose predictions (``preds``, when the caller has read them) hold NaN
    logits (``nan_logits``), naming it (after ``what``: a grid's row) and what to do."""
    path = os.path.join(run_dir, PREDICTIONS)
    if preds is None and os.path.exists(path):
        preds = read_predictions(path)
    if preds is not None and nan_logits(preds):
        raise EmofuseError(f"{what}{run_dir} holds a run that diverged (logits that are not numbers, scored as the "
                           f"first class), kept before emofuse refused such runs; {advice}")


def nan_logits(preds: pd.DataFrame) -> bool:
    """Whether predictions hold a logit that is not a number: a run that diverged, written before
    emofuse refused such runs (its predictions were the first class: UA at chance)."""
    cols = [c for c in preds.columns if c.startswith("logit_")]
    return bool(cols) and bool(preds[cols].isna().to_numpy().any())


def predictions_roundtrip(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as it reads back from its CSV: a fold trained now and a fold reused from disk then
    serialise alike (float32 logits would otherwise print differently once mixed with float64)."""
    buf = io.StringIO(df.to_csv(index=False))
    return read_predictions(buf)


# -- what a run read --------------------------------------------------------------------------
_digests: dict[tuple, str] = {}


def content_digest(fs, stream: str, kind: str) -> str:
    """sha256 (32 hex) of what a run reads of ``kind`` in ``stream``: the stream's fingerprint,
    its utterances, rows and storage offsets, the row shape and dtype, and for segments their
    spans and symbols. Cached per version of the index file ``fs`` was opened on (path, inode,
    size, modification time, taken when it was read): never under a newer index a writer swapped
    in while ``fs`` was open."""
    key = fs.index_identity + (stream, kind)
    if key not in _digests:
        h = hashlib.sha256()
        info = fs.stream_info(stream)
        h.update(json.dumps([stream, kind, info.get("fingerprint"), list(fs.row_shape(stream, kind))]).encode())
        shaping = {k: info[k] for k in SHAPING_INFO if k in info}
        if shaping:   # the text windowing: outside the encoder's fingerprint, yet it shapes the tokens' rows
            h.update(json.dumps(shaping, sort_keys=True).encode())
        index = fs.index(stream, kind)
        h.update("\0".join(index).encode())
        h.update(np.asarray(list(index.values()), dtype=np.int64).tobytes())
        h.update("\0".join(fs.inputs(stream, kind).get(i, "") for i in index).encode())   # input digests (v2)
        if kind.startswith("segments/"):
            h.update(np.ascontiguousarray(fs.column(stream, kind, "spans"), dtype=np.int64).tobytes())
            h.update("\0".join(fs.column(stream, kind, "symbols")).encode())
        _digests[key] = h.hexdigest()[:32]
    return _digests[key]


# -- run folders -------------------------------------------------------------------------------
def run_folder(repeat: int, session) -> str:
    """The folder of one (repeat, test session) under ``runs/``: ``r0_s1`` for IEMOCAP's numbered
    sessions (as always), ``r0_sess1`` for a named session (a manifest's ``sess1``), characters
    unsafe in a folder name replaced and the name's digest added so that two never collide."""
    s = str(session)
    if s.isdigit():
        return f"r{repeat}_s{s}"
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in s).strip("-.") or "session"
    if safe != s:
        safe += "-" + hashlib.sha256(s.encode()).hexdigest()[:6]
    return f"r{repeat}_{safe}"


# -- one process per run directory --------------------------------------------------------------
@contextlib.contextmanager
def run_lock(out: str, what: str = "a run") -> Iterator[None]:
    """Hold ``out/run.lock`` exclusively (``emofuse.locks.LockFile``); a second process gets one
    sentence naming the holder. The lock file is removed on release (and ``out`` too when this
    call created it and it is still empty: a run refused early leaves nothing behind)."""
    created = not os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise EmofuseError(f"cannot create the run directory {out}: {e.strerror or e}") from None
    path = os.path.join(out, LOCK_NAME)

    def busy(pid: int | None, host: str | None) -> EmofuseError:
        holder = f"process {pid}" + (f" on {host}" if host else "") if pid is not None else "another process"
        return EmofuseError(f"{out} is in use: {holder} is running {what} there (it holds {path}); "
                            "wait for it to finish or choose another --out")
    try:
        with LockFile(path, "the run's lock file", busy, EmofuseError,
                      lambda e: EmofuseError(f"cannot create the run's lock file {path}: {e.strerror or e}"),
                      where="the run directory"):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)   # only when empty


# -- reuse ------------------------------------------------------------------------------------
#: The version of what training computes: part of every run's identity (train-head and finetune;
#: a score combination through its members' keys), so part of every run key. Bump it with any
#: change that makes one configuration on one store give other numbers (a fix above all), so that
#: a grid kept across an upgrade trains again instead of showing results of the code before the
#: fix beside results after it. A recorded identity without it is version 0 (emofuse before it).
#: 1: the first version recorded (every run before it came from code that has since had fixes
#: that change numbers, e.g. rows held for the next configuration of a grid).
RESULTS_VERSION = 1
#: ``finetune``'s own version, for changes to its own code (the heads, metrics and protocol it
#: shares with train-head are RESULTS_VERSION's): its runs key both, ``"1.2"``. 2: data2vec-audio's
#: positional convolutions no longer read the padding, SpecAugment masks (``--training-options
#: checkpoint``) are drawn from the run's seed, ``--freeze audio-layers:N`` freezes everything
#: beneath the frozen blocks, and frozen encoders run without their dropout.
FINETUNE_RESULTS_VERSION = 2


def finetune_results_version() -> str:
    """The ``results_version`` of a fine-tuned run's identity: both versions, ``"1.2"``."""
    return f"{RESULTS_VERSION}.{FINETUNE_RESULTS_VERSION}"


def check_run_dir(out: str, config: dict, identity_of: Callable[[dict], dict] | None = None) -> None:
    """Refuse ``out`` when it holds another kind of artefact, or a run of another configuration
    or of other store content (fingerprints and content digests). ``identity_of`` (the
    configuration's class, from a recorded ``config``) reads an older run's recorded
    configuration the way this version keys it, so a run recorded under an older spelling of the
    same configuration (``S+F``; a checkpoint folder's path) resumes instead of being refused."""
    path = os.path.join(out, CONFIG)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise EmofuseError(f"{path} cannot be read ({e}); choose another --out or delete it") from None
    if not isinstance(old, dict) or old.get("type") != config["type"]:
        raise EmofuseError(f"{out} holds something else ({old.get('type') if isinstance(old, dict) else old!r}); "
                           "choose another --out")
    recorded = ident_old = old.get("identity") or {}
    if ident_old != config["identity"] and identity_of is not None and isinstance(old.get("config"), dict):
        try:
            ident_old = reread_identity(recorded, old["config"], json.loads(json.dumps(identity_of(old["config"]))))
        except Exception:   # a configuration this version cannot read: compared as recorded
            pass
    diff = [k for k in set(ident_old) | set(config["identity"]) if ident_old.get(k) != config["identity"].get(k)]
    if diff == ["results_version"] and "results_version" in config["identity"]:   # the same run, of older code
        raise EmofuseError(f"{out} holds a run of another emofuse (results version {recorded.get('results_version', 0)}, "
                           f"now {config['identity']['results_version']}: a change since gives other numbers for the "
                           "same configuration); choose another --out or delete it")
    fp_old, fp_new = old.get("fingerprints") or {}, config["fingerprints"]
    if fp_old != fp_new:
        changed = sorted(k for k in set(fp_old) | set(fp_new) if fp_old.get(k) != fp_new.get(k))
        checkpoints = [k for k in changed if k.endswith("_checkpoint")]
        if checkpoints:
            diff.append(f"encoder checkpoint files ({', '.join(checkpoints)})")
        if len(checkpoints) < len(changed):
            diff.append("store content (fingerprints or segment digests: "
                        + ", ".join(k for k in changed if k not in checkpoints) + ")")
    if diff:
        raise EmofuseError(f"{out} holds a run of another configuration (differs in {', '.join(sorted(diff))}); "
                           f"choose another --out or delete it")


def reread_identity(recorded: dict, config: dict, today: dict) -> dict:
    """A run's identity as this version keys it (``today``: its recorded ``config`` read by this
    version), for a run recorded under an older spelling of the same configuration. Only the
    spelling of what the run's config set is read anew: an option it left unset takes the value
    its recorded identity resolved it to then (a default this version changed is a change, never
    the same run), and its results version stays the recorded one (0 when none)."""
    out = dict(today)
    for k, v in recorded.items():
        if k in out and out[k] != v and config.get(k) is None:
            out[k] = v
    out["results_version"] = recorded.get("results_version", 0)
    return out


# -- the files of a run directory ---------------------------------------------------------------
CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
CHECKPOINT = "model.safetensors"
RUNS = "runs"


def has_config(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, CONFIG))


def is_finished(run_dir: str) -> bool:
    """A run whose summary is written (every fold finished)."""
    return os.path.exists(os.path.join(run_dir, SUMMARY))


def _read_run_json(run_dir: str, name: str, strict: bool) -> dict | None:
    """``name`` of a run; None when it is missing (or unreadable, with ``strict=False``)."""
    path = os.path.join(run_dir, name)
    if not strict:
        return load_json(path)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_config(run_dir: str, strict: bool = True) -> dict | None:
    """``config.json`` of a run; None when it is missing (or unreadable, with ``strict=False``)."""
    return _read_run_json(run_dir, CONFIG, strict)


def read_summary(run_dir: str, strict: bool = True) -> dict | None:
    """``summary.json`` of a run; None when it is missing (or unreadable, with ``strict=False``).
    A summary written under an older definition of the scores (``METRICS_VERSION``; for a
    cross-corpus evaluation, before its macro-F1 averaged the store's classes: ``f1_over``)
    comes back scored again from the run's predictions: no table or report shows an older F1 as
    today's."""
    s = _read_run_json(run_dir, SUMMARY, strict)
    if isinstance(s, dict) and (s.get("metrics_version") != METRICS_VERSION
                                or (s.get("evaluation") == "cross-corpus" and s.get("f1_over") != "truth")):
        s = _rescored_summary(run_dir, s)
    return s


def _rescored_summary(run_dir: str, s: dict) -> dict:
    """``s`` with each run's scores, and their means, computed again from the run's predictions
    (as recorded when a run lacks them; the file itself is left as it is)."""
    path = os.path.join(run_dir, PREDICTIONS)
    classes, runs = s.get("classes"), s.get("runs")
    if not classes or not isinstance(runs, list) or not runs or not os.path.exists(path):
        return s
    preds = read_predictions(path)
    groups = {(int(r), int(seed), str(f)): g for (r, seed, f), g in preds.groupby(["repeat", "seed", "fold"])}
    fresh = []
    truth = s.get("evaluation") == "cross-corpus"   # scored over the target store's classes (evaluate)
    for run in runs:
        g = groups.get((int(run["repeat"]), int(run["seed"]), str(run["fold"])))
        fresh.append({**run, **scores_of_predictions(g, classes, truth)} if g is not None and len(g) else run)
    out = {**s, **summarise(fresh, classes), "runs": fresh, "metrics_version": METRICS_VERSION}
    if truth:
        out["f1_over"] = "truth"
        ens = os.path.join(run_dir, "ensemble.csv")
        if isinstance(s.get("ensemble"), dict) and os.path.exists(ens):   # the ensemble's scores, from its file
            out["ensemble"] = scores_of_predictions(read_predictions(ens), classes, True)
    return out


def read_run_predictions(run_dir: str) -> pd.DataFrame:
    return read_predictions(os.path.join(run_dir, PREDICTIONS))


def predictions_digest(run_dir: str) -> str | None:
    """sha256 (16 hex) of a run's predictions file (None without one): what a score combination
    records of each member, to know when a member holds other results than it was made from."""
    path = os.path.join(run_dir, PREDICTIONS)
    if not os.path.exists(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def write_config(run_dir: str, config: dict) -> None:
    write_json(os.path.join(run_dir, CONFIG), config)


def write_summary(run_dir: str, summary: dict) -> None:
    write_json(os.path.join(run_dir, SUMMARY), {**summary, "metrics_version": METRICS_VERSION})


def write_predictions(run_dir: str, preds: pd.DataFrame) -> None:
    write_csv(os.path.join(run_dir, PREDICTIONS), preds)


def fold_dir(run_dir: str, repeat: int, session) -> str:
    """The folder of one (repeat, test session) of a run."""
    return os.path.join(run_dir, RUNS, run_folder(repeat, session))


def finished_folds(run_dir: str) -> list[str]:
    """The folder names of a run's finished folds (those with their metrics.json), in order."""
    rdir = os.path.join(run_dir, RUNS)
    return [name for name in sorted(os.listdir(rdir)) if os.path.exists(os.path.join(rdir, name, METRICS))] \
        if os.path.isdir(rdir) else []


def fold_metrics(run_dir: str, strict: bool = True) -> list[tuple[str, dict]]:
    """(folder name, metrics) of every finished fold of a run, in folder order. ``strict=False``
    skips a metrics.json that cannot be read."""
    out = []
    for name in finished_folds(run_dir):
        path = os.path.join(run_dir, RUNS, name, METRICS)
        if strict:
            with open(path) as f:
                m = json.load(f)
        else:
            m = load_json(path)
            if m is None:
                continue
        out.append((name, m))
    return out


_SAID_DIVERGED: set[str] = set()


def read_fold(fdir: str) -> tuple[dict, pd.DataFrame] | None:
    """(metrics, predictions) of a finished fold folder; None while it is not finished. A fold
    scored under an older definition (``METRICS_VERSION``) is scored again from its predictions,
    so a resumed run never averages two definitions."""
    path = os.path.join(fdir, METRICS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    preds = read_predictions(os.path.join(fdir, PREDICTIONS))
    if nan_logits(preds):   # trained again (and refused, with the reason, if it diverges again)
        if fdir not in _SAID_DIVERGED:   # once, though a fold is read more than once (finetune)
            _SAID_DIVERGED.add(fdir)
            log.warning(f"{fdir}: a run that diverged (logits that are not numbers), kept before emofuse refused "
                        "such runs; it is trained again")
        return None
    if metrics.pop("metrics_version", None) != METRICS_VERSION and len(preds):   # the file's, not the fold's
        classes = [c[len("logit_"):] for c in preds.columns if c.startswith("logit_")]
        metrics = {**metrics, **scores_of_predictions(preds, classes)}
    return metrics, preds


def write_fold(fdir: str, metrics: dict, preds: pd.DataFrame) -> None:
    """A fold's predictions, then its metrics.json last (its presence marks the fold finished)."""
    os.makedirs(fdir, exist_ok=True)
    write_csv(os.path.join(fdir, PREDICTIONS), preds)
    write_json(os.path.join(fdir, METRICS), {**metrics, "metrics_version": METRICS_VERSION})


def save_fold(fdir: str, model, metrics: dict, preds: pd.DataFrame, meta: dict | None = None) -> None:
    """A finished (repeat, fold): checkpoint (its metadata names the encoder layers each stream
    read), predictions, then metrics.json last (its presence marks the run finished)."""
    from safetensors.torch import save_file

    os.makedirs(fdir, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(fdir, CHECKPOINT), metadata={"type": "emofuse.head", **(meta or {})})
    write_fold(fdir, metrics, preds)
