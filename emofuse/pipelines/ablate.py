"""``ablate``: a grid of train-head configurations from a spec, reused by key, to tables.

A run's key is a hash of its resolved configuration and the store's fingerprints: a finished run
(its ``summary.json``) is never recomputed, a killed grid resumes (inside a run, finished folds
are kept too), and a grown spec computes only what is new.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields, replace
from importlib import resources

import numpy as np
import pandas as pd
import yaml
from scipy.stats import wilcoxon

from ..devices import resolve_device
from ..errors import Diverged, EmofuseError
from ..options import build, check_field, opt, underscored
from ..hashing import sha256_hex
from ..heads.stacked import stackable
from ..logs import ROOT, show_messages
from ..store import FeatureStore
from . import finetune as ft
from . import tables
from .combine import run_combine
from .protocol import lacking_said_once
from .rundir import (is_finished, predictions_digest, read_config, read_run_predictions, read_summary,
                     refuse_diverged, run_lock, write_json)
from .train import NOT_IN_KEY as TRAIN_NOT_IN_KEY
from .train import (RUNS_AT_ONCE_HELP, TrainConfig, check_against_store, describe_config, run_train, runs_at_once,
                    store_fingerprints, with_store_defaults)

log = logging.getLogger(__name__)

TRAIN_FIELDS = {f.name for f in fields(TrainConfig)} - {"store", *TRAIN_NOT_IN_KEY}   # what a spec row may set
EXECUTORS = ("local", "submitit")
CLUSTERS = ("slurm", "local", "debug")
ROW_EXTRA = {"label", "published", "combine", "same_as"}
BUNDLED = ("paper-multilevel", "paper-cma", "demo")


@dataclass(frozen=True)
class AblateConfig:
    store: str = opt(help="the feature store every row trains on (STORE.h5)")
    spec: str = opt(help="paper-multilevel, paper-cma, demo, or a YAML file")
    out: str = opt(help="grid directory (runs/, tables/, tables.md)")
    jobs: int = opt(1, help="configurations trained in parallel processes, each on cores / N threads (CPU results "
                            "differ in the last digits with the thread count: resume a grid with the same --jobs)")
    device: str = opt("auto")
    repeats: int | None = opt(None, help="every row's repeats, over the spec's and a row's own (default: the spec's); "
                                         "the tables' notes say so")
    epochs: int | None = opt(None, help="every row's maximum epochs, over the spec's and a row's own (default: the "
                                        "spec's); the tables name it and show no Δ against published numbers")
    folds: tuple[str, ...] | None = opt(None, help="every row's test sessions: a comma list (quick looks; default: "
                                                   "every session); the tables name them and show no Δ")
    audio_model: str | None = opt(None, help="fine-tuned rows: this audio checkpoint instead of the spec's (a folder)")
    text_model: str | None = opt(None, help="fine-tuned rows: this text checkpoint instead of the spec's (a folder)")
    root: str | None = opt(None, help="fine-tuned rows: where the corpus lives now, if it moved since extraction "
                                      "(finetune --root)")
    finetune: bool = opt(False, help="also run the spec's fine-tuned rows (finetune: true; GPU hours each); without "
                                     "it they are left out of the tables")
    grad_checkpointing: bool = opt(False, help="fine-tuned rows: recompute encoder activations (finetune "
                                               "--grad-checkpointing; not part of a row's key)")
    compile: bool = opt(False, help="fine-tuned rows: torch.compile each transformer block (finetune --compile; not "
                                    "part of a row's key)")
    runs_at_once: int | None = opt(None, metavar="N", help=RUNS_AT_ONCE_HELP)   # train-head's, for every row
    group_by_length: bool = opt(False, help="every train-head row on length-grouped batches (train-head "
                                            "--group-by-length, over a row's own setting; part of each row's key)")
    bf16: bool = opt(False, help="every row, trained and fine-tuned, with bfloat16 autocast (train-head/finetune "
                                 "--bf16, over a row's own setting). Part of each row's key: float32 results are "
                                 "never shown for it")
    executor: str = opt("local", choices=EXECUTORS,
                        help="local: this machine (--jobs processes); submitit: one cluster job per set of rows "
                             "sharing data (Slurm; needs pip install 'emofuse[cluster]')")
    cluster: str | None = opt(None, choices=CLUSTERS,
                              help="with --executor submitit: the submitit cluster (default: Slurm when there is one, "
                                   "else local processes)")
    cluster_options: tuple[str, ...] = opt((), flag="--cluster-option", action="append", metavar="KEY=VALUE",
                                           help="with --executor submitit, repeatable: a submitit parameter, e.g. "
                                                "timeout_min=120, slurm_partition=gpu, gpus_per_node=1, "
                                                "cpus_per_task=8, slurm_mem_gb=64")

    def __post_init__(self):
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise EmofuseError(f"--jobs must be at least 1, found {self.jobs}")
        if self.executor not in EXECUTORS:
            raise EmofuseError(f"--executor must be one of {list(EXECUTORS)}, found {self.executor!r}")
        bad = [o for o in self.cluster_options if "=" not in o]
        if bad:
            raise EmofuseError(f"--cluster-option takes KEY=VALUE (e.g. timeout_min=120, slurm_partition=gpu), "
                               f"found {bad[0]!r}")
        if self.executor != "submitit" and (self.cluster or self.cluster_options):
            given = "--cluster" if self.cluster else "--cluster-option"
            raise EmofuseError(f"{given} is for --executor submitit, which was not given (the grid would train on "
                               "this machine and ignore it): add --executor submitit, or leave it out")


#: the keys a spec file and each of its tables may have (rows are checked against their configs)
SPEC_KEYS = {"name", "description", "defaults", "tables"}
TABLE_KEYS = {"name", "title", "description", "rows"}


def load_spec(spec: str) -> dict:
    """A bundled spec (``paper-multilevel``, ``paper-cma``, ``demo``) or a YAML file, checked."""
    if spec in BUNDLED:
        text = resources.files("emofuse.specs").joinpath(f"{spec}.yaml").read_text()
        where = f"bundled spec {spec!r}"
    elif os.path.exists(spec):
        with open(spec) as f:
            text = f.read()
        where = spec
    else:
        raise EmofuseError(f"--spec {spec!r} is neither a bundled spec ({', '.join(BUNDLED)}) nor a file")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EmofuseError(f"{where} is not valid YAML: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("tables"), list) or not d["tables"]:
        raise EmofuseError(f"{where}: expected a mapping with a non-empty 'tables' list")
    bad = set(d) - SPEC_KEYS   # a misspelt 'defaults' would silently train the built-in defaults
    if bad:
        raise EmofuseError(f"{where}: unknown top-level keys {sorted(bad)} (allowed: {sorted(SPEC_KEYS)})")
    if isinstance(d.get("defaults"), dict):
        d["defaults"] = underscored(d["defaults"], f"{where}, defaults")
    labels, names = {}, set()
    for t in d["tables"]:
        if not isinstance(t, dict) or "name" not in t or not isinstance(t.get("rows"), list):
            raise EmofuseError(f"{where}: every table needs 'name' and a 'rows' list, found {t!r}")
        # a table's name is its files' name (tables/NAME.md, figures/NAME-*.png): one table each
        name = str(t["name"])
        clash = {n for n in names if n.lower() in (name.lower(), name.lower() + "-trained")
                 or name.lower() == n.lower() + "-trained"}   # figures NAME-*.png and NAME-trained-*.png
        if name in names or clash:
            raise EmofuseError(f"{where}: two tables are named {name!r}" + (f" and {sorted(clash)[0]!r}" if clash and
                               name not in names else "") + "; each table needs a name of its own (its files are "
                               "tables/NAME.md|.tex|.csv and figures/NAME-*.png, NAME-trained-*.png)")
        if not name or name.startswith(".") or any(c in name for c in '/\\:*?"<>| \t\n'):
            raise EmofuseError(f"{where}: table name {name!r} cannot name its files (tables/NAME.md, "
                               "figures/NAME-*.png); use letters, digits, '-', '_' or '.' (a 'title:' may hold any text)")
        names.add(name)
        bad = set(t) - TABLE_KEYS
        if bad:
            raise EmofuseError(f"{where}, table {t['name']!r}: unknown keys {sorted(bad)} (allowed: {sorted(TABLE_KEYS)})")
        for r in t["rows"]:
            if not isinstance(r, dict):
                raise EmofuseError(f"{where}, table {t['name']!r}: row {r!r} is not a mapping; expected one such as "
                                   "{label: Frame, fusion: none, granularity: F}")
        written, t["rows"] = t["rows"], [underscored(r, f"{where}, table {t['name']!r}") for r in t["rows"]]
        for r, as_written in zip(t["rows"], written):
            known = (ft.ROW_FIELDS | {"finetune"} if r.get("finetune") else TRAIN_FIELDS) | ROW_EXTRA
            bad = {k for k in as_written if str(k).replace("-", "_") not in known}   # named as the user wrote them
            if bad or "label" not in r:
                raise EmofuseError(f"{where}, table {t['name']!r}: row {as_written!r} " + (
                    f"has unknown keys {sorted(bad)} (allowed: {sorted(TRAIN_FIELDS | ROW_EXTRA)})" if bad else "needs a label"))
            pub = r.get("published")
            if pub is not None and (isinstance(pub, bool) or not isinstance(pub, (int, float))):
                raise EmofuseError(f"{where}, table {t['name']!r}: row {r['label']!r} has published: {pub!r}; expected "
                                   "the published UA in percent as a number (68.12), or no published key")
            if "same_as" not in r:
                if r["label"] in labels:
                    raise EmofuseError(f"{where}: label {r['label']!r} is defined twice (use same_as to repeat a row)")
                labels[r["label"]] = r
    _check_rows(d, labels, where)
    for t in d["tables"]:
        for r in t["rows"]:
            refs = r.get("combine", []) + ([r["same_as"]] if "same_as" in r else [])
            missing = [x for x in refs if x not in labels]
            if missing:
                raise EmofuseError(f"{where}: row {r['label']!r} refers to {missing}, which no row defines")
    d["_labels"] = labels
    return d


def _check_rows(d: dict, labels: dict, where: str) -> None:
    """Build every trained row's configuration now (spec defaults under the row), so that a value
    of the wrong type (``epochs: ten``) or a configuration its config refuses is one sentence at
    load time, naming the file, the row, the key, the value and what is expected. The checked
    values replace the written ones (``folds: [1, 2]`` → ``("1", "2")``); a value that already has
    its field's type is kept as written, so run keys do not change."""
    defaults = d.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise EmofuseError(f"{where}: 'defaults' must be a mapping of train-head options, found {defaults!r}")
    bad = set(defaults) - TRAIN_FIELDS - ft.ROW_FIELDS
    if bad:
        raise EmofuseError(f"{where}: spec defaults have unknown keys {sorted(bad)}")
    for k, v in list(defaults.items()):   # the defaults in their fields' form too
        defaults[k] = check_field(TrainConfig if k in TRAIN_FIELDS else ft.FinetuneConfig, k, v,
                                  f"{where}, defaults")
    for label, r in labels.items():
        if "combine" in r:
            continue
        if r.get("finetune"):
            cls, names = ft.FinetuneConfig, ft.ROW_FIELDS
            # the encoders may come from ablate --audio-model/--text-model: stand-ins for the check
            values = {"audio_model": "-", "text_model": "-"}
            fixed = {"store": "", "out": ""}
        else:
            cls, names, values, fixed = TrainConfig, TRAIN_FIELDS, {}, {"store": "", "out": ""}
        values.update({k: v for k, v in defaults.items() if k in names})
        values.update({k: v for k, v in r.items() if k in names})
        cfg = build(cls, values, f"{where}, row {label!r}", allowed=names, fixed=fixed)
        r.update({k: getattr(cfg, k) for k in r if k in names})


def run_key(identity: dict, fingerprints: dict) -> str:
    blob = json.dumps({"identity": identity, "fingerprints": fingerprints}, sort_keys=True)
    return sha256_hex(blob, 12)


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the ablate process that started it is gone
    (killed, even by SIGKILL), instead of training on as an orphan. Linux: the kernel sends
    SIGKILL at once (PR_SET_PDEATHSIG); everywhere: a thread notices the parent is gone."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)
    _die_with_process(parent, _start_time(parent), child=True)


_WORKER_CACHE: dict = {}   # rows held by a worker process for the next configuration that reads them
_WORKER_SAID: set = set()   # the test sessions lacking a class that a worker process has said


def _train_worker(cfg: TrainConfig, threads: int | None, level: int | None = None) -> str | None:
    """One configuration in a worker process (a fresh interpreter: logging is set up again here,
    at ``level``, when the parent shows messages). Returns why it diverged (``Diverged``'s
    message), or None when it finished."""
    import torch
    if level is not None:
        show_messages(level)
    if threads:
        torch.set_num_threads(threads)
    with lacking_said_once(_WORKER_SAID):
        return _unless_diverged(lambda: run_train(cfg, cache=_WORKER_CACHE))


def _unless_diverged(train) -> str | None:
    """``train()``; a run that diverges (``Diverged``: its learning rate, not the input) is said
    and its reason returned instead of stopping the grid (None: it finished)."""
    try:
        train()
    except Diverged as e:
        log.error(str(e))
        return str(e)
    return None


def _train_rows(cfgs: list, threads: int | None = None, ablate: tuple[int, str | None] | None = None) -> dict:
    """One cluster job: configurations that read the same streams, trained one after the other
    with their data read once. Its messages go to the job's own log (submitit's folder). Returns
    {"why": per configuration trained why it diverged, or None; "error": (run folder, sentence)
    of a row that stopped the job with a user's error, or None}: the sentence reaches ablate
    whole, not as the last line of submitit's trace. ``ablate`` (pid, start time) for local jobs:
    the job ends when that process is gone, as ``--jobs`` workers do."""
    if ablate is not None:
        _die_with_process(*ablate)
    why: list[str | None] = []
    for c in cfgs:
        try:
            why.append(_train_worker(c, threads, logging.INFO))
        except EmofuseError as e:
            log.error(str(e))
            return {"why": why, "error": (c.out, str(e))}
    return {"why": why, "error": None}


def _start_time(pid: int) -> str | None:
    """A process's start time (Linux: /proc/PID/stat field 22), telling it from a later process
    given the same pid: "" where it is gone or a zombie (killed, not yet reaped), None where this
    cannot be told (no /proc, or a read error such as too many open files: alive, then)."""
    if not os.path.isdir("/proc/self"):
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, *rest = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return ""
    except (OSError, ValueError, IndexError):
        return None
    return "" if state == "Z" else rest[18] if len(rest) > 18 else None


def _die_with_process(pid: int, started: str | None, child: bool = False) -> None:
    """End this process when process ``pid`` (started at ``started``) is gone: a local cluster
    job's controller outlives the ablate that sent it, so the job watches ablate itself; ``child``:
    ``pid`` is this process's parent, gone as soon as this process has another."""
    import threading
    import time
    from ..locks import pid_alive

    def gone() -> bool:
        if (child and os.getppid() != pid) or not pid_alive(pid):
            return True
        now = _start_time(pid)
        return now == "" or (started is not None and now is not None and now != started)   # a zombie, or reused

    def watch():
        while not gone():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="emofuse-ablate-watch", daemon=True).start()


def _worker_level() -> int | None:
    """What ``--jobs`` workers show: warnings, when this process shows messages (their progress
    lines would interleave; this process says when each configuration finishes)."""
    return logging.WARNING if logging.getLogger(ROOT).handlers else None


@contextlib.contextmanager
def _indented(prefix: str = "    "):
    """The messages of the stages ablate runs (train-head, finetune, combine), indented under
    ablate's own line for the row."""
    old = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = old(*args, **kwargs)
        if record.name.startswith(ROOT + ".") and record.name != __name__:
            record.msg = prefix + str(record.msg)
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(old)


def data_signature(c: TrainConfig) -> tuple:
    """What a configuration holds in memory: the streams, granularities and layers it reads."""
    specs = {k: v for k, v in c.layer_specs().items() if k != "options"}   # how they were typed: not the data
    return (c.store, c.audio_stream, c.text_stream, tuple(c.keys()), json.dumps(specs, sort_keys=True), c.memory_gb)


def _place_rows(cfg: AblateConfig, pending: list) -> list[list]:
    """Order the configurations so that those reading the same data follow each other; say once
    what runs where. Returns the groups that share data."""
    groups: dict[tuple, list] = {}
    for c in pending:
        groups.setdefault(data_signature(c), []).append(c)
    import torch
    # cluster jobs resolve the device on their node; the submitting machine may have no GPU
    device = resolve_device(cfg.device) if cfg.executor == "local" else torch.device(
        "cuda" if cfg.device.startswith("cuda") else "cpu" if cfg.device == "cpu" else "meta")
    stacked = [c for c in pending if runs_at_once(c, device, c.repeats * 5) > 1]
    lstm = [c for c in pending if not stackable(c.fusion, c.head)]
    if cfg.executor == "submitit":
        where = (f"as {len(groups)} submitit jobs (one per set of rows sharing data; cluster "
                 f"{cfg.cluster or 'auto: Slurm when present, else this machine'}), logs in {cfg.out}/submitit")
    elif cfg.jobs > 1 and len(pending) > 1:
        where = f"on this machine in {cfg.jobs} processes"
    else:
        where = "in this process"
    on = str(device) if device.type != "meta" else "the device each job finds (--device auto)"
    log.info(f"  plan: {len(pending)} configurations {where}, on {on}; {len(stacked)} with their runs stacked "
             f"(--runs-at-once), {len(pending) - len(stacked)} one run at a time"
             + (f" ({len(lstm)} LSTM heads, which do not stack)" if lstm and stacked else "")
             + "; data read once per set of rows sharing streams: "
             + ", ".join(f"{'+'.join(sig[3])}" + (f" [{sig[1]}]" if sig[1] != "audio" else "") + f" × {len(g)}"
                     for sig, g in groups.items()))
    return list(groups.values())


#: a local cluster job's time limit when none is given: submitit's own (2 minutes) ends any real row
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


def _submit(cfg: AblateConfig, groups: list[list], label_of: dict[str, str]) -> dict[str, str | None]:
    """Send each group of rows as one job through submitit; wait for them all. Returns each run
    folder → why it diverged (None: it finished). A job that failed is named by its rows' labels
    (``label_of``: run key → label) with its cause: the user's error sentence, a time limit, or
    the end of a job killed from outside."""
    try:
        import submitit
    except ImportError:
        raise EmofuseError("ablate --executor submitit needs submitit: pip install 'emofuse[cluster]'") from None
    params = {}
    for o in cfg.cluster_options:
        k, _, v = o.partition("=")
        params[k.strip()] = yaml.safe_load(v)
    try:
        ex = submitit.AutoExecutor(folder=os.path.join(cfg.out, "submitit", "%j"), cluster=cfg.cluster)
    except RuntimeError as e:   # e.g. --cluster slurm where there is no srun
        raise EmofuseError(f"--cluster {cfg.cluster or 'auto'}: submitit could not start that cluster here "
                           f"({e})") from None
    if ex.cluster == "slurm" and not {"timeout_min", "slurm_time"} & set(params):
        raise EmofuseError("ablate on Slurm needs each job's time limit: --cluster-option timeout_min=MINUTES "
                           "(submitit's default, 5 minutes, would end every job before its rows finish; a job "
                           "trains the rows that share data, one after the other)")
    if ex.cluster == "local" and "timeout_min" not in params:   # submitit's 2 minutes would end every job
        params["timeout_min"] = LOCAL_TIMEOUT_MIN
    try:
        ex.update_parameters(name="emofuse-ablate", **params)
    except Exception as e:   # submitit names the unknown parameter and the allowed ones
        raise EmofuseError(f"--cluster-option: {e}") from None
    me = (os.getpid(), _start_time(os.getpid())) if ex.cluster == "local" else None
    jobs = [ex.submit(_train_rows, g, None, me) for g in groups]
    rows = lambda g: ", ".join(label_of.get(os.path.basename(c.out), os.path.basename(c.out)) for c in g)  # noqa: E731
    for job, g in zip(jobs, groups):
        log.info(f"  job {job.job_id}: {len(g)} configurations ({rows(g)})")
    failed, why_of = [], {}
    for job, g in zip(jobs, groups):
        try:
            got = job.result()
        except Exception as e:
            failed.append(f"job {job.job_id} ({rows(g)}): {_job_failure(e, params)}")
            continue
        why_of.update(zip((c.out for c in g), got["why"]))
        if got["error"]:
            out, sentence = got["error"]
            failed.append(f"job {job.job_id}, row {label_of.get(os.path.basename(out), out)}: {sentence}")
        else:
            log.info(f"  job {job.job_id} finished")
    if failed:
        raise EmofuseError(f"{len(failed)} cluster job(s) failed: " + "; ".join(failed) + f" (logs: {cfg.out}/"
                           "submitit). Run the same ablate again to resume (finished runs are kept)")
    return why_of


def _job_failure(e: Exception, params: dict) -> str:
    """Why a cluster job ended without a result, in a few words: its time limit, the last line of
    the job's trace (an error of emofuse's own code), or how it ended when it left no result."""
    import re
    text = str(e)
    if "timed-out" in text:
        given = next(((k, params[k]) for k in ("timeout_min", "slurm_time") if k in params), None)
        return "its time limit ran out (" + (f"{given[0]}={given[1]}: raise it" if given else
                                             "raise --cluster-option timeout_min") + ", or split the grid)"
    lines = []
    if "failed during processing with trace:" in text:
        lines = [line.strip() for line in text.split("-" * 22 + "\n")[1].splitlines() if line.strip()][-1:]
    state = re.search(r"has not produced any output \(state: ([^)]*)\)", text)
    if state:
        return f"it ended without a result (state {state.group(1)}): killed from outside, or out of memory?"
    return (lines or text.strip().splitlines() or [type(e).__name__])[0]


def run_ablate(cfg: AblateConfig) -> dict[str, pd.DataFrame]:
    """Run every configuration of the spec not yet finished; write tables. Returns table → rows.
    One process at a time per ``cfg.out`` (a second one is refused with a sentence)."""
    spec = load_spec(cfg.spec)
    train_cfgs, key_of = _plan(cfg, spec)   # every row checked against the store before --out is created
    with run_lock(cfg.out, "ablate"):
        return _run_ablate(cfg, spec, train_cfgs, key_of)


def protocol_overrides(cfg: AblateConfig) -> dict:
    """The protocol settings ``ablate`` was told to override for every row (``--repeats``,
    ``--epochs``, ``--folds``), in their fields' form."""
    return {k: tuple(str(f) for f in v) if k == "folds" else v
            for k, v in (("repeats", cfg.repeats), ("epochs", cfg.epochs), ("folds", cfg.folds)) if v is not None}


def overrides_note(cfg: AblateConfig) -> str:
    """``--epochs 4, --folds 1,2``: the protocol overrides as typed, for the tables' notes; empty for none."""
    return ", ".join(f"--{k} {','.join(v) if k == 'folds' else v}" for k, v in protocol_overrides(cfg).items())


def _plan(cfg: AblateConfig, spec: dict) -> tuple[dict, dict[str, str]]:
    """The run configuration of every trained row (key → config) and each row's key, every row
    checked against the store (streams, layers, folds, head sizes); nothing is written."""
    defaults = {k: v for k, v in (spec.get("defaults") or {}).items()}
    bad = set(defaults) - TRAIN_FIELDS
    if bad:
        raise EmofuseError(f"spec defaults have unknown keys {sorted(bad)}")
    # --repeats/--epochs/--folds and --bf16/--group-by-length apply to every row, over a row's own
    # setting (unlike a spec's defaults): a quick look is quick for every row, and says so in its tables
    forced = {**protocol_overrides(cfg), **{option: True for option in tables.DEPARTURES if getattr(cfg, option)}}
    forced_ft = {k: v for k, v in forced.items() if k in ft.ROW_FIELDS}
    runs_dir = os.path.join(cfg.out, "runs")
    train_cfgs: dict[str, TrainConfig] = {}
    key_of: dict[str, str] = {}
    with FeatureStore(cfg.store) as fs:
        for label, row in spec["_labels"].items():
            if "combine" in row:
                continue
            if row.get("finetune"):   # fine-tuned encoders: pipelines/finetune.py
                row = {**row, **forced_ft}
                c = ft.ablate_config(cfg.store, "", defaults, row, cfg.device, cfg.audio_model, cfg.text_model,
                                     cfg.root)
                try:
                    # without --finetune a hub checkpoint is not downloaded (gigabytes) only to plan
                    fps = ft.run_fingerprints(fs, c, fetch=cfg.finetune)
                except EmofuseError:
                    if cfg.finetune:
                        raise
                    # not run without --finetune: a checkpoint that cannot be read here only means
                    # that results of it cannot be shown (a key no finished row has)
                    fps = {"corpus": fs.corpus_fingerprint, "checkpoints": "not available"}
                key = run_key(c.identity(), fps)
                key_of[label] = key
                train_cfgs[key] = replace(ft.ablate_config(cfg.store, os.path.join(runs_dir, key), defaults, row,
                                                           cfg.device, cfg.audio_model, cfg.text_model, cfg.root),
                                          grad_checkpointing=cfg.grad_checkpointing, compile=cfg.compile)
                continue
            params = {**defaults, **{k: v for k, v in row.items() if k in TRAIN_FIELDS}, **forced}
            if "folds" in params and params["folds"] is not None:
                params["folds"] = tuple(str(f) for f in params["folds"])
            try:
                probe = with_store_defaults(fs, TrainConfig(store=cfg.store, out="", device=cfg.device,
                                                            runs_at_once=cfg.runs_at_once, **params))
                check_against_store(fs, probe)
            except EmofuseError as e:
                raise EmofuseError(f"spec {spec.get('name', cfg.spec)!r}, row {label!r}: {e}") from None
            key = run_key(probe.identity(), store_fingerprints(fs, probe))
            key_of[label] = key
            train_cfgs[key] = replace(probe, out=os.path.join(runs_dir, key))
    return train_cfgs, key_of


def _run_ablate(cfg: AblateConfig, spec: dict, train_cfgs: dict, key_of: dict[str, str]) -> dict[str, pd.DataFrame]:
    runs_dir = os.path.join(cfg.out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    for key, c in train_cfgs.items():
        if is_finished(c.out):
            check_keyed_run(c.out, key)
    pending = [c for k, c in train_cfgs.items() if not is_finished(c.out)]
    n_finished = len(train_cfgs) - len(pending)
    tuned = [c for c in pending if isinstance(c, ft.FinetuneConfig)]
    pending = [c for c in pending if not isinstance(c, ft.FinetuneConfig)]
    log.info(f"ablate {spec.get('name', cfg.spec)}: {len(train_cfgs)} configurations, {n_finished} "
             f"already finished, {len(pending) + len(tuned)} to run"
             + (f" ({len(tuned)} fine-tuned)" if tuned else "")
             + (f", frozen rows on {cfg.jobs} processes" if cfg.jobs > 1 and pending and cfg.executor == "local"
                else ""))
    groups = _place_rows(cfg, pending) if pending else []
    pending = [c for g in groups for c in g]   # rows reading the same data follow each other
    said: set = set()   # a test session lacking a class is said once, not once per row
    # A row that diverged (its learning rate, not the input) does not stop the grid: the other rows
    # train, and the grid ends without tables, naming it. Any other error stops the grid at once.
    why_of: dict[str, str | None] = {}   # run folder → why it diverged (None: it finished)
    labels: dict[str, str] = {}   # run key → its first label in the spec, for progress lines
    for label, key in key_of.items():
        labels.setdefault(key, label)
    if cfg.executor == "submitit" and pending:
        why_of.update(_submit(cfg, groups, labels))
    elif cfg.jobs > 1 and len(pending) > 1:
        threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
        import multiprocessing as mp
        with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            try:
                futures = {pool.submit(_train_worker, c, threads, _worker_level()): c for c in pending}
                for k, fut in enumerate(as_completed(futures)):
                    out = futures[fut].out
                    why = why_of[out] = fut.result()
                    log.info(f"  [{k + 1}/{len(pending)}] {labels[os.path.basename(out)]} "
                             + ("diverged" if why else "finished"))
            except BaseException as e:  # interrupted or a worker failed: stop the others now, not after their runs
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                if isinstance(e, BrokenProcessPool):   # a worker killed from outside: the OOM killer, kill -9
                    done = sum(1 for c in pending if c.out in why_of)
                    raise EmofuseError(f"a worker process of ablate --jobs {cfg.jobs} ended without a word (killed "
                                       f"from outside, or out of memory? Python: {e}) after {done} of {len(pending)} "
                                       "configurations; the finished runs are kept: run the same command again "
                                       "(with fewer --jobs if memory ran out)") from None
                raise
    else:
        cache: dict = {}   # rows held for the next configuration that reads the same streams
        for k, c in enumerate(pending):
            log.info(f"  [{k + 1}/{len(pending)}] {labels[os.path.basename(c.out)]}: {describe_config(c)} → {c.out}")
            with _indented(), lacking_said_once(said):
                why_of[c.out] = _unless_diverged(lambda: run_train(c, cache=cache))   # noqa: B023 (called now)
        cache.clear()
    _check_trained_content(pending, cfg.store, also=_diverged(why_of, pending, key_of))
    for k, c in enumerate(tuned if cfg.finetune else []):   # one at a time, on every device thread
        log.info(f"  [finetune {k + 1}/{len(tuned)}] {c.system} → {c.out}")
        with _indented(), lacking_said_once(said):
            why_of[c.out] = _unless_diverged(lambda: ft.run_finetune(c))   # noqa: B023 (called now)
    diverged = _diverged(why_of, pending + tuned, key_of)
    if diverged:
        raise EmofuseError(f"{diverged}. The other rows' runs are kept; no table was written: lower those rows' lr in "
                           "the spec and run ablate again (only they train)")
    if tuned and not cfg.finetune:
        log.info(f"  {len(tuned)} fine-tuned rows not run (they need ablate --finetune and the encoders; GPU hours)")
    for label, row in spec["_labels"].items():
        if "combine" in row:
            members = [os.path.join(runs_dir, key_of[m]) for m in row["combine"]]
            key = sha256_hex("+".join(key_of[m] for m in row["combine"]), 12)
            key_of[label] = key
            out = os.path.join(runs_dir, key)
            unrun = [m for m, d in zip(row["combine"], members) if not is_finished(d)]
            if unrun and not cfg.finetune and all(spec["_labels"][m].get("finetune") for m in unrun):
                log.info(f"  {label} not combined: {', '.join(unrun)} (fine-tuned) not run")
                continue
            if is_finished(out):
                check_keyed_run(out, key)
            if not is_finished(out) or members_changed(out, members):
                with _indented():
                    run_combine(members, out)
    with FeatureStore(cfg.store) as fs:
        sessions = sorted(set(fs.utterances["session"].astype(str)))
    results = _collect(spec, key_of, runs_dir, overrides_note(cfg), sessions, cfg.epochs is not None)
    _write_tables(spec, results, cfg.out)
    _write_index(spec, key_of, train_cfgs, cfg.out)
    write_json(os.path.join(cfg.out, "ablate.json"),
               {"type": "emofuse.ablate", "spec": {k: v for k, v in spec.items() if k != "_labels"},
                "store": os.path.abspath(cfg.store), "keys": key_of})
    return results


def _diverged(why_of: dict[str, str | None], cfgs: list, key_of: dict[str, str]) -> str | None:
    """The rows of ``cfgs`` that diverged (``why_of``: run folder → why, None if it finished),
    named in the grid's order whatever finished first, each key with all its labels; None if none."""
    order = [c.out for c in cfgs if why_of.get(c.out)]
    if not order:
        return None
    rows = ", ".join(" = ".join(lb for lb, k in key_of.items() if k == os.path.basename(out)) for out in order)
    first = why_of[order[0]].split("; lower --lr")[0]
    return f"{len(order)} configuration(s) of the grid diverged: {rows} (the first: {first})"


def _check_trained_content(trained: list[TrainConfig], store: str, also: str | None = None) -> None:
    """Each row just trained read the store content its key was planned from. The plan and the
    training see the store at two moments: a commit in between (an ``align-segments`` run while
    the grid trains) would file a run of the new content under the old content's key, and the
    tables would mix the two. Such a run is moved to the folder its own content keys (kept for a
    later grid), and the grid stops with one sentence: run again to build tables on one content.
    ``also``: the rows that diverged meanwhile, said in the same sentence (the next run trains
    them again, but a user lowering their lr learns it now)."""
    moved = []
    for c in trained:
        if not is_finished(c.out):
            continue
        key = run_key(c.identity(), read_config(c.out)["fingerprints"])
        if key == os.path.basename(c.out):
            continue
        dest = os.path.join(os.path.dirname(c.out), key)
        if os.path.exists(dest):
            shutil.rmtree(c.out)
        else:
            os.replace(c.out, dest)
        moved.append(describe_config(c))
    if moved:
        raise EmofuseError(f"{store} changed while ablate ran: {len(moved)} configuration(s) ({'; '.join(moved[:3])}) "
                           "trained on other store content than the grid was planned on; their runs are kept under "
                           "the content they read, and no table was written: run the same command again"
                           + (f" (besides, {also}: lower those rows' lr in the spec first)" if also else ""))


def _key_of_recorded(config: dict) -> str | None:
    """The key a run folder's recorded ``config.json`` gives (a score combination: from the run
    folders it combined, named by their keys, which are checked in their turn, combinations of
    combinations too); None for another kind of file."""
    if not isinstance(config, dict) or config.get("type") != "emofuse.train-head":   # finetune writes it too
        return None
    identity, fps = config.get("identity"), config.get("fingerprints")
    if not isinstance(identity, dict) or not isinstance(fps, dict):
        return None
    if identity.get("fusion") == "combine":   # keyed by its members' keys: the names of its members' folders
        runs = (config.get("config") or {}).get("runs")
        if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
            return None
        return sha256_hex("+".join(os.path.basename(os.path.normpath(r)) for r in runs), 12)
    return run_key(identity, fps)


def check_keyed_run(run_dir: str, key: str) -> None:
    """A finished run folder of the grid holds the run its name (its key) says: what its
    ``config.json`` records gives that key. Another command writing there (``evaluate --out``
    pointed at it, a copy, a hand edit) would otherwise have ablate show its numbers as the row's."""
    got = _key_of_recorded(read_config(run_dir, strict=False))
    if got != key:
        raise EmofuseError(f"{run_dir} should hold the run of key {key}, but its config.json records "
                           + (f"the run of key {got}" if got else "something else (no train-head or finetune run)")
                           + ": another command wrote there; move or delete the folder and run ablate again")


def members_changed(out: str, members: list[str]) -> bool:
    """A finished score combination was made from other results than its members hold now (a
    member trained again in place, e.g. after its folder was deleted): it is combined again."""
    recorded = (read_config(out, strict=False) or {}).get("member_predictions")
    return recorded != [predictions_digest(d) for d in members]


def _paired_p(a: dict, b: dict) -> float:
    """Wilcoxon signed-rank p over runs matched on (repeat, seed, fold); NaN when fewer than 2 pairs."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return float("nan")
    x, y = np.array([a[k] for k in common]), np.array([b[k] for k in common])
    if np.allclose(x, y):
        return 1.0
    return float(wilcoxon(x, y).pvalue)


def _departures(run_dir: str) -> dict[str, bool]:
    """Which of the options a table marks (``tables.DEPARTURES``) the run in ``run_dir`` used; a
    score combination used those that any run beneath it did (its identity holds its members',
    combinations of combinations included)."""
    found = tables.options_used((read_config(run_dir) or {}).get("identity") or {})
    return {option: option in found for option in tables.DEPARTURES}


def _test_set(run_dir: str, classes: list, lacking: dict, label: str) -> frozenset:
    """A run's test utterances, its (fold, id) pairs; each test fold that lacks a class is noted in
    ``lacking`` ((fold, missing classes) → the row labels), for one warning per grid."""
    preds = read_run_predictions(run_dir)
    refuse_diverged(run_dir, "delete that folder and run ablate again (lower the row's lr if it diverges again)",
                    preds, what=f"row {label!r}: ")
    pairs = sorted(set(zip(preds["fold"].astype(str), preds["id"].astype(str))))
    for fold, g in preds.groupby(preds["fold"].astype(str)):
        missing = tuple(c for c in classes if c not in set(g["label"]))
        if missing:
            lacking.setdefault((fold, missing), []).append(label)
    return frozenset(pairs)


def _say_lacking(lacking: dict) -> None:
    """One warning per test fold that lacks a class, naming the rows it holds for (every row on
    one store shares it: a grid of 27 rows said it 27 times)."""
    for (fold, missing), labels in sorted(lacking.items(), key=lambda kv: (len(kv[0][0]), kv[0])):
        labels = list(dict.fromkeys(labels))
        rows = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
        log.warning(f"test session {fold} holds no {', '.join(repr(c) for c in missing)} utterance "
                    f"(row{'s' if len(labels) > 1 else ''} {rows}): its UA averages the recall of the other classes")


def _collect(spec: dict, key_of: dict, runs_dir: str, overrides: str = "", sessions: list | None = None,
             epochs_overridden: bool = False) -> dict[str, pd.DataFrame]:
    """Each table's rows from their runs' summaries: the metrics, the test folds and utterances
    each row was scored on, the options it used, its published number and its Wilcoxon p-value
    against the table's best. ``overrides``: the protocol overrides ablate ran with (a note);
    ``sessions``: the store's sessions (a row tested on fewer is off the published protocol, and
    so is every row under ``epochs_overridden``)."""
    out = {}
    lacking: dict = {}
    for t in spec["tables"]:
        rows, per_run, sets = [], [], []
        for r in t["rows"]:
            src = r.get("same_as", r["label"])
            d = os.path.join(runs_dir, key_of[src])
            if not is_finished(d) and (spec["_labels"][src].get("finetune") or "combine" in spec["_labels"][src]):
                continue   # a fine-tuned row not run (ablate --finetune), or a combination of one
            s = read_summary(d)
            folds = sorted({str(x["fold"]) for x in s["runs"]}, key=lambda f: (len(f), f))
            test_set = _test_set(d, list(s.get("classes") or []), lacking, r["label"])
            rows.append({"label": r["label"], **{f"{m}_{k}": s[m][k] for m in ("ua", "wa", "f1") for k in ("mean", "std")},
                         "n": s["ua"]["n"], "folds": ",".join(folds), "n_test": len(test_set),
                         **_departures(d),
                         "published": r.get("published", spec["_labels"][src].get("published")),
                         "key": key_of[src], "run_dir": d})
            per_run.append({(x["repeat"], x["seed"], str(x["fold"])): x["ua"] for x in s["runs"]})
            sets.append(test_set)
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df["published"] = pd.to_numeric(df["published"])
        # a row run on fewer test folds than the table holds (a spec's folds:) has its mean over
        # other test data: marked, and never the table's best
        every = set().union(*(set(f.split(",")) for f in df["folds"]))
        df["partial"] = [set(f.split(",")) != every for f in df["folds"]]
        # so does a row run on every fold but on fewer of their utterances (the others have no
        # frames or tokens for some): the union of the full rows' test utterances is the table's,
        # so a row is never marked for holding more of them than another
        full = [sets[i] for i in range(len(df)) if not df["partial"][i]]
        every_utt = frozenset().union(*full) if full else frozenset()
        df["other_test"] = [not df["partial"][i] and sets[i] != every_utt for i in range(len(df))]
        if sessions is not None:   # the published numbers are of every session, trained for the spec's epochs
            whole = {str(x) for x in sessions}
            df["off_protocol"] = [epochs_overridden or set(f.split(",")) != whole for f in df["folds"]]
        if overrides:
            df["override"] = overrides
        # the best as printed: every row that ties with it is "best" too; p-values against the top one
        tied = tables.best_rows(df, "ua")
        best = max(tied, key=lambda i: (df["ua_mean"][i], -i))
        df["best"] = df.index.isin(tied)
        # runs on other test utterances are not paired with the best's
        df["p_vs_best"] = [float("nan") if i == best or df["other_test"][i] else _paired_p(per_run[i], per_run[best])
                           for i in range(len(df))]
        out[t["name"]] = df
    _say_lacking(lacking)
    return out


def _write_index(spec: dict, key_of: dict[str, str], train_cfgs: dict, out: str) -> None:
    """``runs.md`` and ``runs.csv`` in the grid folder: each row label → its run folder (named by the
    run's key, so that reuse is by content), the tables it appears in and what it trains."""
    in_tables: dict[str, list[str]] = {}
    for t in spec["tables"]:
        for r in t["rows"]:   # a same_as row shows the run of the row it names
            named = in_tables.setdefault(r.get("same_as", r["label"]), [])
            if t["name"] not in named:
                named.append(t["name"])
    rows = []
    for label, key in key_of.items():
        row, c = spec["_labels"][label], train_cfgs.get(key)
        tuned = (f"fine-tuned {getattr(c, 'system', '')}".strip()
                 + (f", {c.cma_block} block" if getattr(c, "cma_block", "transformer") != "transformer" else "")
                 + tables.departure_names(lambda o: getattr(c, o, False)))
        what = (f"score combination of {', '.join(row['combine'])}" if "combine" in row else
                describe_config(c) if isinstance(c, TrainConfig) else tuned)
        d = os.path.join(out, "runs", key)
        rows.append({"label": label, "folder": os.path.join("runs", key), "tables": ",".join(in_tables.get(label, [])),
                     "configuration": what, "finished": is_finished(d)})
    df = pd.DataFrame(rows, columns=["label", "folder", "tables", "configuration", "finished"])
    df.to_csv(os.path.join(out, "runs.csv"), index=False, lineterminator="\n")
    lines = ["| Label | Run folder | Tables | Configuration |", "|---|---|---|---|"]
    lines += [f"| {tables.md_cell(r.label)} | `{r.folder}` | {r.tables} | {tables.md_cell(r.configuration)}"
              + ("" if r.finished else " (not run)") + " |" for r in df.itertuples()]
    with open(os.path.join(out, "runs.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _earlier_tables(out: str) -> set[str]:
    """The names of the tables the grid's last ``ablate`` wrote (its ``ablate.json``), if any."""
    try:
        with open(os.path.join(out, "ablate.json")) as f:
            names = {str(t["name"]) for t in json.load(f)["spec"]["tables"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {n for n in names if n and not n.startswith(".") and "/" not in n and "\\" not in n}


def _write_tables(spec: dict, results: dict[str, pd.DataFrame], out: str) -> None:
    tdir = os.path.join(out, "tables")
    os.makedirs(tdir, exist_ok=True)
    md = []
    # no files for a table renamed or removed since the last grid, nor for one none of whose rows
    # ran (fine-tuned rows without --finetune): an earlier grid's would pass for this one's (a
    # paper's \input{tables/old.tex} kept superseded numbers)
    names = {str(t["name"]) for t in spec["tables"]}
    for name in (_earlier_tables(out) - names) | (names - set(results)):
        for ext in ("md", "tex", "csv"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(tdir, f"{name}.{ext}"))
    for t in spec["tables"]:
        if t["name"] not in results:
            continue
        df, title = results[t["name"]], t.get("title", t["name"])
        text = tables.to_markdown(df, title)
        md.append(text)
        for ext, body in (("md", text), ("tex", tables.to_latex(df, title, t["name"])), ("csv", tables.to_csv(df))):
            with open(os.path.join(tdir, f"{t['name']}.{ext}"), "w") as f:
                f.write(body)
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write("\n".join(md))
