#!/usr/bin/env python3
"""train-head benchmark: one 5-fold late-fusion F+S(+T) run on a synthetic IEMOCAP-shaped store,
split into data time and compute time, against a plain baseline that reads each utterance from
HDF5 through a standard ``DataLoader`` every epoch (same model, same batches, same steps).

Store: 13 layers × 768, float16, IEMOCAP's length distribution (lognormal around 4.5 s, 1–20 s,
50 frames/s; syllables 4.5/s; 4–24 tokens), ``--scale`` of IEMOCAP's 5,531 utterances. The
baseline runs fold 1 only (its per-epoch time is what is compared; the 5-fold figure is that
times the number of folds). Writes benchmarks/results/train.json (train-cuda.json on a GPU) and a row in BENCHMARKS.md.

    python benchmarks/train.py [--scale 0.1] [--epochs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emofuse.heads import build_head  # noqa: E402
from emofuse.logs import show_messages  # noqa: E402
from emofuse.devices import resolve_device  # noqa: E402
from emofuse.pipelines.protocol import split  # noqa: E402
from emofuse.pipelines.train import TrainConfig, run_train  # noqa: E402
from emofuse.pipelines.data import load_train_data  # noqa: E402
from emofuse.store import FeatureStore, store_bytes  # noqa: E402
from emofuse.testing.synthetic import make_synthetic_store  # noqa: E402
from common import record  # noqa: E402


class PerUtterance(torch.utils.data.Dataset):
    """What a typical script does: open the HDF5 file, read one utterance's arrays per item."""

    def __init__(self, path: str, ids, labels):
        self.path, self.ids, self.labels, self.fs = path, ids, labels, None

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if self.fs is None:
            self.fs = FeatureStore(self.path)
        uid = self.ids[i]
        return {"F": torch.from_numpy(self.fs.frames("audio", uid)).float(),
                "S": torch.from_numpy(self.fs.segments("audio", "syllable", uid).values).float(),
                "T": torch.from_numpy(self.fs.tokens("text", uid).values).float()}, int(self.labels[i])


def collate(items):
    batch = {}
    for k in ("F", "S", "T"):
        xs = [x[k] for x, _ in items]
        batch[k] = (torch.cat(xs), torch.tensor([len(x) for x in xs]))
    return batch, torch.tensor([y for _, y in items])


def baseline(path: str, epochs: int, device, seed: int = 0) -> dict:
    with FeatureStore(path) as fs:
        data = load_train_data(fs, ["F", "S", "T"], "audio", "text", memory_budget=0)  # ids, labels, folds only
    tr, va, te = split(data, "1", seed, 0.1)
    torch.manual_seed(seed)
    model = build_head("late", data.dims, ["F", "S", "T"], len(data.classes)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PerUtterance(path, data.ids[tr], data.y[tr]), batch_size=32, shuffle=True,
                                         collate_fn=collate, num_workers=0)
    val_loader = torch.utils.data.DataLoader(PerUtterance(path, data.ids[va], data.y[va]), batch_size=64,
                                             collate_fn=collate, num_workers=0)
    t_data = t_comp = 0.0
    t0 = time.perf_counter()
    for _ in range(epochs):
        t1 = time.perf_counter()
        for batch, y in loader:
            batch = {k: (v[0].to(device), v[1].to(device)) for k, v in batch.items()}
            t2 = time.perf_counter()
            t_data += t2 - t1
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(batch), y.to(device)).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            t_comp += t1 - t2
        model.eval()      # validation every epoch, as train-head does (for early stopping)
        with torch.no_grad():
            t1 = time.perf_counter()
            for batch, y in val_loader:
                batch = {k: (v[0].to(device), v[1].to(device)) for k, v in batch.items()}
                t2 = time.perf_counter()
                t_data += t2 - t1
                model(batch).argmax(1).cpu()
                t1 = time.perf_counter()
                t_comp += t1 - t2
        model.train()
    return {"wall_s": time.perf_counter() - t0, "data_s": t_data, "compute_s": t_comp, "train_utts": len(tr)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="fraction of IEMOCAP's 5,531 utterances")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tmp", default=None, help="where to build the store (default: a temp folder)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    per_class = max(1, round(5531 * args.scale / 20))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "bench.h5")
        t0 = time.perf_counter()
        make_synthetic_store(path, per_class=per_class, layers=13, dim=768, planted_layer=9, strength=0.3, seed=0)
        build_s = time.perf_counter() - t0
        size = store_bytes(str(path))
        cfg = TrainConfig(store=path, out=os.path.join(tmp, "run"), fusion="late", granularity="F+S", repeats=1,
                          epochs=args.epochs, patience=args.epochs, device=str(device))
        t0 = time.perf_counter()
        show_messages()
        s = run_train(cfg)
        ours_wall = time.perf_counter() - t0
        base = baseline(path, args.epochs, device)
    n_folds = 5
    tm = s["time"]
    epoch_ours = (tm["data_s"] + tm["compute_s"]) / (n_folds * args.epochs)
    epoch_base = base["wall_s"] / args.epochs
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
           f"{torch.__version__}, {torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}"
                                                                          if device.type == "cuda" else ""),
           "device": str(device), "utterances": s["data"]["utterances"], "scale": args.scale,
           "store_gb": round(size / 1e9, 2), "build_s": round(build_s, 1), "epochs": args.epochs,
           "ours": {"wall_s": round(ours_wall, 2), "load_s": round(tm["load_s"], 2), "data_s": round(tm["data_s"], 2),
                    "compute_s": round(tm["compute_s"], 2), "epoch_s": round(epoch_ours, 3),
                    "data_share": round(tm["data_s"] / (tm["data_s"] + tm["compute_s"]), 3)},
           "baseline_fold1": {k: round(v, 2) for k, v in base.items()},
           "baseline_epoch_s": round(epoch_base, 3),
           "speedup_per_epoch": round(epoch_base / epoch_ours, 2),
           "speedup_5fold_wall": round(epoch_base * n_folds * args.epochs / ours_wall, 2)}
    o = res["ours"]
    row = (f"| train | {res['date']} | {res['machine']} | {res['utterances']} utts ({args.scale:g} × IEMOCAP), "
           f"{res['store_gb']} GB, {args.epochs} epochs × 5 folds | 5-fold wall {o['wall_s']} s (load {o['load_s']} s) "
           f"vs baseline {epoch_base * n_folds * args.epochs:.1f} s: {res['speedup_5fold_wall']}× "
           f"(per epoch {res['speedup_per_epoch']}×) | data {100 * o['data_share']:.0f} % of the epoch | "
           f"baseline data {100 * base['data_s'] / base['wall_s']:.0f} % | same model and steps | all in memory |")
    record("train", res, row, str(device))


if __name__ == "__main__":
    main()
