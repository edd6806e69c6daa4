"""``emofuse runs``: find the train-head runs under a folder, list them with their configuration and
scores (sortable), show what differs between two runs, and write their training curves to
TensorBoard when it is installed."""

from __future__ import annotations

import glob
import hashlib
import logging
import json
import os

from ..errors import EmofuseError
from .rundir import CONFIG, finished_folds, fold_metrics, load_json, read_config, read_summary
from .tables import departure_names

log = logging.getLogger(__name__)

SORTS = ("path", "label", "ua", "wa", "f1", "n")


def _grid_labels(root: str) -> dict[str, str]:
    """{run folder (real path): label} from every ablate grid (``ablate.json``) under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        if "ablate.json" in files:
            a = load_json(os.path.join(d, "ablate.json")) or {}
            for label, key in (a.get("keys") or {}).items():
                p = os.path.realpath(os.path.join(d, "runs", key))
                out[p] = out[p] + " = " + label if p in out else label
    return out


def config_summary(identity: dict, config: dict | None = None) -> str:
    """A short line of the values that tell configurations apart (``config``: the run's recorded
    configuration, for what its identity keys by content, e.g. a fine-tuned checkpoint folder)."""
    config = config or {}
    if identity.get("fusion") == "combine":   # its identity holds the members' identities, its config their folders
        listed = identity.get("members") or []
        paths = config.get("runs") or [m for m in listed if isinstance(m, str)]   # identities are dicts
        members = [os.path.basename(os.path.normpath(str(m))) for m in paths]
        n = len(members) or len(listed)
        return f"combine of {n} runs" + (f" ({', '.join(members)})" if members else "")
    if "system" in identity:   # a finetune run
        used = {"cma": ("audio_model", "text_model"), "audio": ("audio_model",), "text": ("text_model",)}
        models = [str(identity.get(k) or config.get(k)) for k in used.get(identity["system"], ())
                  if identity.get(k) or config.get(k)]
        from ..heads.options import HEAD_DEFAULTS
        cma = HEAD_DEFAULTS["cma"]   # the fine-tuned systems' head sizes (finetune --proj/--heads/--ff)
        sizes = [f"{k} {identity[k]}" for k in ("proj", "heads", "ff")   # None: not in this head (its CMA block)
                 if identity.get(k) is not None and identity[k] != cma.get(k)]
        sizes += [f"cma block {identity['cma_block']}"] if identity.get("cma_block") else []   # written if not default
        return ", ".join([f"finetune {identity['system']} ({', '.join(models)})", f"lr {identity.get('lr')}",
                          *sizes, *_protocol_departures(identity)]) + departure_names(identity.get)
    parts = [f"{identity.get('fusion')} {'+'.join(identity.get('keys') or [])}"]
    if identity.get("fusion") in ("none", "late"):
        parts.append(str(identity.get("head")))
    if identity.get("norm") not in (None, "none"):
        parts.append(f"norm {identity['norm']}({identity.get('norm_streams')})")
    layers = {identity.get("audio_layers"), identity.get("text_layers")}
    parts.append("layers " + "/".join(str(x) for x in (identity.get("audio_layers"), identity.get("text_layers")))
                 if len(layers) > 1 else f"layers {layers.pop()}")
    parts.append(f"{identity.get('weighting')} weights")
    parts.append(f"lr {identity.get('lr'):g}" if isinstance(identity.get("lr"), (int, float)) else "")
    # what else tells two runs apart in a listing: other streams, test folds, the protocol's numbers
    for k, default in (("audio_stream", "audio"), ("text_stream", "text")):
        if identity.get(k) not in (None, default) and (k == "audio_stream" or "T" in (identity.get("keys") or [])):
            parts.append(f"{k.split('_')[0]} stream {identity[k]}")
    parts += _head_departures(identity)
    parts += _protocol_departures(identity)
    return ", ".join(p for p in parts if p) + departure_names(identity.get)


#: head options a listing names where a run's differ from its head's defaults (before, runs of
#: --hidden 64 and --hidden 128 listed alike)
HEAD_OPTIONS = ("hidden", "proj", "heads", "ff", "depth", "cma_block", "scheduler", "lr_factor", "lr_patience")


def _head_departures(identity: dict) -> list[str]:
    """``hidden 64``, ``scheduler plateau`` …: the head options of ``identity`` that are not its
    head's defaults (heads/options.py), as the options are spelt."""
    from .train import TrainConfig
    try:
        default = TrainConfig(store="", out="", fusion=identity["fusion"], head=identity.get("head") or "linear",
                              granularity=identity["granularity"]).identity()
    except (KeyError, TypeError, ValueError, EmofuseError):   # a damaged or foreign record: nothing to add
        return []
    return [f"{k.replace('_', ' ')} {identity[k]}" for k in HEAD_OPTIONS   # None: not an option of this head
            if identity.get(k) is not None and identity[k] != default.get(k)]


def _protocol_departures(identity: dict) -> list[str]:
    """What of the protocol a run changed: its test folds, repeats, epochs … (train-head and
    finetune alike; before, a finetune run of one fold and one epoch listed as a full one)."""
    from ..heads.options import PROTOCOL
    parts = [f"folds {','.join(map(str, identity['folds']))} only"] if identity.get("folds") else []
    for k in ("repeats", "epochs", "patience", "batch_size", "dropout", "seed", "val_fraction"):
        if k in identity and k in PROTOCOL and identity[k] != PROTOCOL[k]:
            parts.append(f"{k.replace('_', ' ')} {identity[k]}")
    return parts


def _shown(k: str, identity: dict):
    """A resolved identity's value as ``--diff`` shows it: an attention head's default feed-forward
    width as the multiple it is, a head option the head lacks (a linear head's depth) said so."""
    if k == "cma_block" and k not in identity:   # written only where not the default
        return "transformer" if identity.get("fusion") == "cma" else "(not an option of this head)"
    if k not in identity:   # a record written before the option existed
        return "(unset)"
    if k == "ff" and identity["ff"] is None and identity.get("ff_mult"):
        return f"{identity['ff_mult']} x width"
    if k in HEAD_OPTIONS and identity[k] is None:
        return "(not an option of this head)"
    return identity[k]


def find_runs(root: str) -> list[dict]:
    """Every train-head run directory under ``root`` (``config.json`` of type emofuse.train-head):
    path, label, configuration, scores (None while unfinished) and the number of runs."""
    if not os.path.isdir(root):
        raise EmofuseError(f"{root} is not a folder; expected a folder holding train-head or ablate runs")
    labels = _grid_labels(root)
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        if "model.json" in files:   # an exported model: its training/ records are a copy of a run's
            dirs[:] = []
            continue
        if CONFIG not in files:
            continue
        c = read_config(d, strict=False)
        if not isinstance(c, dict) or c.get("type") != "emofuse.train-head":
            continue
        dirs[:] = []   # a run's runs/ folder holds its folds, not runs
        s = read_summary(d, strict=False)
        done = len(finished_folds(d))
        rel = os.path.relpath(d, root)
        row = {"path": rel, "label": labels.get(os.path.realpath(d), rel), "identity": c.get("identity") or {},
               "config": config_summary(c.get("identity") or {}, c.get("config") or {}), "finished": s is not None,
               "n": s["ua"]["n"] if s else done}
        for m in ("ua", "wa", "f1"):
            row[m] = (s[m]["mean"], s[m]["std"]) if s else None
        out.append(row)
    return out


def format_runs(rows: list[dict], sort: str = "path") -> str:
    if sort not in SORTS:
        raise EmofuseError(f"--sort must be one of {list(SORTS)}, found {sort!r}")
    if not rows:
        return "no train-head runs found"
    if sort in ("ua", "wa", "f1"):   # best first; unfinished runs last
        rows = sorted(rows, key=lambda r: (r[sort] is None, -(r[sort] or (0, 0))[0], r["path"]))
    elif sort == "n":
        rows = sorted(rows, key=lambda r: (-r["n"], r["path"]))
    else:
        rows = sorted(rows, key=lambda r: (r[sort], r["path"]))
    cell = lambda v, n: ("unfinished" if not v else f"{v[0]:.2f}" if n == 1  # noqa: E731
                         else f"{v[0]:.2f} ± {v[1]:.2f}")
    table = [("label", "configuration", "UA", "WA", "Macro-F1", "runs", "path")]
    table += [(r["label"], r["config"], cell(r["ua"], r["n"]), cell(r["wa"], r["n"]), cell(r["f1"], r["n"]), str(r["n"]),
               r["path"]) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    lines = ["  ".join(v.ljust(w) if i in (0, 1, 6) else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))).rstrip()
             for t in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(UA, WA, macro-F1 in %: mean ± standard deviation over the runs)"


def diff_runs(a: str, b: str) -> str:
    """The configuration values (resolved identity) and store content that differ between two runs."""
    ca, cb = (read_config(p, strict=False) for p in (a, b))
    for p, c in ((a, ca), (b, cb)):
        if not isinstance(c, dict) or c.get("type") != "emofuse.train-head":
            raise EmofuseError(f"{p} is not a train-head run directory (no readable config.json of a train-head run)")
    ia, ib = ca.get("identity") or {}, cb.get("identity") or {}
    rows = [(k, _shown(k, ia), _shown(k, ib)) for k in sorted((set(ia) | set(ib)) - {"ff_mult"})
            if _shown(k, ia) != _shown(k, ib)]
    fa, fb = ca.get("fingerprints") or {}, cb.get("fingerprints") or {}
    rows += [(f"store: {k}", fa.get(k, "(none)"), fb.get(k, "(none)")) for k in sorted(set(fa) | set(fb))
             if fa.get(k) != fb.get(k)]
    ma, mb = ca.get("member_fingerprints") or [], cb.get("member_fingerprints") or []   # combinations
    for j in range(1, min(len(ma), len(mb))):   # the first member's are the run's own, compared above
        fa, fb = ma[j] or {}, mb[j] or {}
        rows += [(f"member {j + 1} store: {k}", fa.get(k, "(none)"), fb.get(k, "(none)"))
                 for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    combos = [c for c in (ca, cb) if (c.get("identity") or {}).get("fusion") == "combine"]
    if combos and any(not c.get("member_fingerprints") for c in combos):   # combined before they were recorded
        rows.append(("later members' store content", "recorded" if ma else "(not recorded: combined by an older emofuse)",
                     "recorded" if mb else "(not recorded: combined by an older emofuse)"))
    if not rows:
        return f"{a} and {b} have the same configuration and read the same store content"
    w = max(len(r[0]) for r in rows)
    out = [f"{'':{w}}  A = {a}", f"{'':{w}}  B = {b}"]
    out += [f"{k:{w}}  A: {json.dumps(x)}   B: {json.dumps(y)}" for k, x, y in rows]
    return "\n".join(out)


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def tensorboard_missing(logdir: str) -> bool:
    """True (after one sentence) when tensorboard is not installed."""
    if _summary_writer() is not None:
        return False
    log.warning(f"note: --tensorboard {logdir}: tensorboard is not installed (pip install tensorboard), so no curves are "
                "written there; every fold's curves are in its runs/*/metrics.json (history)")
    return True


def write_tensorboard(run_dirs: list[str], logdir: str,
                      names: list[str] | None = None) -> int | None:
    """Each finished fold's training curves (train and validation loss, validation UA, learning
    rate per epoch, from its metrics.json) as TensorBoard scalars under ``logdir/<run>/<fold>``.
    Returns the number of folds written, or None (and one sentence) when tensorboard is missing."""
    if tensorboard_missing(logdir):
        return None
    writer_cls = _summary_writer()
    n = 0
    for i, d in enumerate(run_dirs):
        name = (names[i] if names else os.path.basename(os.path.normpath(d))).replace(os.sep, "_")
        # one folder per run folder: TensorBoard merges every event file of a folder into one run, so
        # two runs of one label (two grids) or one --out basename (two train-heads) must not share it
        name += "-" + hashlib.sha256(os.path.realpath(d).encode()).hexdigest()[:6]
        for fold, m in fold_metrics(d, strict=False):
            if not m or not m.get("history"):
                continue
            fold_log = os.path.join(logdir, name, fold)
            for old in glob.glob(os.path.join(fold_log, "events.out.tfevents.*")):   # written again: not twice
                os.remove(old)
            w = writer_cls(log_dir=fold_log)
            try:
                for h in m["history"]:
                    for tag, key in (("loss/train", "train_loss"), ("loss/validation", "val_loss"),
                                     ("ua/validation", "val_ua"), ("lr", "lr")):
                        if key in h:
                            w.add_scalar(tag, float(h[key]), int(h["epoch"]))
                w.add_scalar("ua/test", float(m["ua"]), int(m.get("best_epoch", 0)))
            finally:
                w.close()
            n += 1
    log.info(f"TensorBoard: the curves of {n} folds in {logdir} (tensorboard --logdir {logdir})")
    return n
