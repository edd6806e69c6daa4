#!/usr/bin/env python3
"""Where training makes the host wait for the GPU: every synchronising CUDA call (a ``.item()``,
a boolean-mask index, a copy from pageable memory, ...) made while training, counted by the line
of Python that made it, under ``torch.cuda.set_sync_debug_mode("warn")``. A call made once per
batch stops the host from queuing the next batch while the device works, so the device idles
for the host's whole launch time; a GPU run wants none in its per-batch path.

Checked: one epoch of ``train-head`` for the chosen rows of a paper spec on a small synthetic
store, one run at a time (``--runs-at-once 1``) and stacked (``0``), and two steps of joint
fine-tuning (``finetune``'s ``train_step``) on tiny random encoders. GPU only.

    python benchmarks/sync_check.py [--rows "Frame, transformer;Late F+P+S+W"] [--scale 0.01]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emofuse.pipelines.ablate import TRAIN_FIELDS, load_spec  # noqa: E402
from emofuse.pipelines.train import TrainConfig, run_train  # noqa: E402
from emofuse.testing.synthetic import make_synthetic_store  # noqa: E402

IEMOCAP = 5531


def syncs(fn) -> list[dict]:
    """Run ``fn`` with CUDA's sync debugging on; the synchronising calls by Python line, most first."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter(f"{os.path.relpath(w.filename, ROOT) if w.filename.startswith(str(ROOT)) else w.filename}"
                                f":{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return [{"where": k, "calls": n} for k, n in where.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="paper-multilevel")
    ap.add_argument("--rows", default="Frame, linear;Frame, transformer;Coattention F+P;Late F+P+S+W")
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "sync_check needs a CUDA device"
    spec = load_spec(args.spec)
    defaults = dict(spec.get("defaults") or {})
    labels = spec["_labels"]
    per_class = max(1, round(args.scale * IEMOCAP / 20))
    res = {"benchmark": "sync_check", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "utterances": per_class * 20, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.h5")
        make_synthetic_store(path, per_class=per_class, layers=13, dim=768, planted_layer=7, strength=0.3, seed=0)
        for label in [x.strip() for x in args.rows.split(";")]:
            params = {**defaults, **{k: v for k, v in labels[label].items() if k in TRAIN_FIELDS}}
            params.update(repeats=1, epochs=1, patience=2, folds=("1", "2"))
            for name, at_once in (("per-run", 1), ("stacked", 0)):
                cfg = TrainConfig(store=path, out=os.path.join(tmp, label.replace(" ", "_"), name),
                                  device=args.device, runs_at_once=at_once, **params)
                run_train(dataclasses.replace(cfg, out=cfg.out + "-warm"))   # kernels, allocator
                got = syncs(lambda: run_train(cfg))
                res["rows"].append({"row": label, "path": name, "syncs": sum(g["calls"] for g in got), "sites": got})
                print(f"{label:<24} {name:<8} {sum(g['calls'] for g in got):5d} synchronising calls; top: "
                      + "; ".join(f"{g['where']} ×{g['calls']}" for g in got[:4]), flush=True)
    # fine-tuning: tiny encoders, two global batches
    import finetune as fb
    from emofuse.pipelines import finetune as ft

    device = torch.device(args.device)
    w, b, wc = fb.models("tiny")
    model = fb.joint_model(w, b, wc).to(device)
    d = fb.data(96, 20.0, b.config.vocab_size)
    cfg = ft.FinetuneConfig(store="", out="", audio_model="random", text_model="random", batch_size=32,
                            micro_batch=8, bf16=True, device=args.device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    ft.train_step(model, model, opt, d, np.arange(32), cfg, device, 0)
    got = syncs(lambda: [ft.train_step(model, model, opt, d, np.arange(32, 96)[k:k + 32], cfg, device, k + 1)
                         for k in (0, 32)])
    res["finetune"] = {"global_batches": 2, "micro_batches": 8, "syncs": sum(g["calls"] for g in got), "sites": got}
    print(f"finetune train_step ×2 (8 micro-batches): {res['finetune']['syncs']} synchronising calls; "
          + "; ".join(f"{g['where']} ×{g['calls']}" for g in got[:6]), flush=True)
    out = ROOT / "benchmarks" / "results" / "sync-cuda.json"
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
