"""data2vec-audio's positional convolutions in a padded batch: zero the padding between the
convolutions (what emofuse does) vs run that part per utterance. Both are exact; this measures
which costs less, side by side, on the data2vec-audio-base shapes (768 wide, 5 layers, kernel 19,
16 groups) with random weights.

    python benchmarks/data2vec_posconv.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Data2VecAudioConfig
from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioPositionalConvEmbedding

from emofuse.extract.masking import MaskedConvStack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    stack = Data2VecAudioPositionalConvEmbedding(Data2VecAudioConfig()).eval().to(dev)
    masked = MaskedConvStack(stack)
    # one batch of 8 utterances, 2-8 s (100-400 frames at 20 ms): IEMOCAP-like spread
    lengths = torch.tensor([400, 370, 330, 290, 240, 200, 150, 100])
    x = torch.randn(len(lengths), int(lengths.max()), 768, device=dev)
    x = x * (torch.arange(x.shape[1], device=dev)[None, :] < lengths[:, None].to(dev))[..., None]

    def run_masked():
        with masked.valid_lengths(lengths):
            return masked(x)

    def run_each():
        return [stack(x[b:b + 1, :int(n)]) for b, n in enumerate(lengths)]

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.inference_mode():
        a, b = run_masked(), run_each()
        diff = max(float((a[i, :int(n)] - b[i][0]).abs().max()) for i, n in enumerate(lengths))
        tm, te = [], []
        for _ in range(args.repeats):  # alternated
            tm.append(timed(run_masked))
            te.append(timed(run_each))
    tm.sort()
    te.sort()
    med_m, med_e = tm[len(tm) // 2], te[len(te) // 2]
    print(f"device {dev}: masked batch {med_m * 1e3:.1f} ms, per utterance {med_e * 1e3:.1f} ms; "
          f"per-utterance / masked = {med_e / med_m:.2f}x; max |masked - per utterance| = {diff:.2e}")


if __name__ == "__main__":
    main()
