"""emofuse in a few minutes of reading and under a minute of running (offline, 2 CPU cores).

A walk-through of the Python API: a corpus → a feature store → tables → a head trained under
leave-one-session-out → a figure → the trained model exported, reloaded and applied to new audio.
It uses a small fake IEMOCAP copy and tiny random encoders (``emofuse.testing``), so the numbers
mean nothing; swap in ``corpus="iemocap", root=…`` and real checkpoints for real work.

    python examples/quickstart.py --out quickstart-out

CI runs this file (tests/test_examples.py), so it stays true to the API.
"""

from __future__ import annotations

import argparse
import os


def main(out: str = "quickstart-out", echo=print) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    import emofuse
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    from emofuse.pipelines.predict import export_run
    from emofuse.pipelines.train import TrainConfig, run_train
    from emofuse.store import FeatureStore
    from emofuse.testing import make_fake_iemocap
    from emofuse.testing.tiny_models import tiny_bert, tiny_wav2vec2

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()

    os.makedirs(out, exist_ok=True)

    # 1. A corpus and two encoders. Here: a fake IEMOCAP copy (5 sessions, 4 emotions, tones and
    #    noise) and tiny random wav2vec2 / BERT checkpoints written to folders.
    counts = {s: {"ang": 2, "hap": 2, "neu": 2, "sad": 2} for s in range(1, 6)}
    corpus = make_fake_iemocap(os.path.join(out, "corpus"), counts=counts, seconds=0.8, seed=0)
    audio_model = tiny_wav2vec2(os.path.join(out, "w2v2"))
    text_model = tiny_bert(os.path.join(out, "bert"))

    # 2. Extraction: every layer of both encoders, once, into one store (as extract-embeddings).
    store = os.path.join(out, "quickstart.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(corpus.root), out=store, audio_model=audio_model,
                              text_model=text_model))

    # 3. The store: what it holds, the utterance table, tensors per utterance or in bulk.
    with FeatureStore(store) as fs:
        echo(repr(fs))
        utts = fs.utterances                               # DataFrame: label, session, speaker, duration …
        echo(pd.crosstab(utts["session"], utts["label"], margins=True).to_string())
        frames = fs.load("audio", "frames", layers=[1, 2])  # Ragged: every utterance's (T, 2, D) rows
        lengths = {uid: len(rows) for uid, rows in frames}   # per-utterance iteration
        x, mask = frames.padded()                          # (U, T, 2, D) and (U, T) for your own models
        echo(f"{len(frames)} utterances, {x.shape[1]} frames at most, {int(mask.sum())} real frames "
             f"(mean {np.mean(list(lengths.values())):.1f} per utterance)")

    # 4. A head in a few lines: late fusion of frames and text, learned layer weights, the
    #    protocol of train-head (leave-one-session-out, 10 % validation, early stopping).
    run = os.path.join(out, "runs", "late-FT")
    cfg = TrainConfig(store=store, out=run, fusion="late", granularity="F+T", norm="global", repeats=1,
                      epochs=5, patience=2, device="cpu")
    summary = run_train(cfg)
    echo(f"UA {summary['ua']['mean']:.2f} ± {summary['ua']['std']:.2f} over {summary['ua']['n']} runs (the fake "
         "corpus's tones give its labels away: a check of the pipeline, not a result)")

    # 5. A figure: the normalised confusion matrix and the frames' learned layer weights.
    classes = summary["classes"]
    cm = np.array(summary["confusion"], dtype=float)
    cm = 100 * cm / cm.sum(1, keepdims=True).clip(min=1)
    runs = summary["runs"]
    weights = np.array([r["layer_weights"]["F"] for r in runs])
    layer_ids = runs[0]["layer_ids"]["F"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    im = ax1.imshow(cm, vmin=0, vmax=100, cmap="Blues")
    ax1.set_xticks(range(len(classes)), classes)
    ax1.set_yticks(range(len(classes)), classes)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("true")
    ax1.set_title("confusion (% of each true class)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax1.text(j, i, f"{cm[i, j]:.0f}", ha="center", va="center", color="white" if cm[i, j] > 50 else "black")
    fig.colorbar(im, ax=ax1, label="%")
    ax2.errorbar(layer_ids, weights.mean(0), yerr=weights.std(0), marker="o", capsize=3, label="mean ± std over folds")
    ax2.axhline(1 / len(layer_ids), color="grey", ls="--", label=f"uniform (1/{len(layer_ids)})")
    ax2.set_ylim(0, max(2 / len(layer_ids), 1.1 * float((weights.mean(0) + weights.std(0)).max())))  # 0 up: noise
    ax2.set_xticks(layer_ids)                                                                     # stays small
    ax2.set_xlabel("wav2vec2 layer")
    ax2.set_ylabel("learned weight")
    ax2.set_title("frames: layer weights")
    ax2.legend(fontsize=8)
    figure = os.path.join(out, "quickstart.png")
    fig.savefig(figure, dpi=100)
    echo(f"figure: {figure}")

    # 6. Use the trained model: export it (one folder), reload it, predict new audio + text.
    model_dir = os.path.join(out, "model")
    if not os.path.exists(model_dir):
        export_run(run, model_dir)
    model = emofuse.load_model(model_dir)
    echo(repr(model))
    new = corpus.utterances[0]
    probs = model.predict(audio=[new.audio_path], text=[new.transcript])
    echo(probs.to_string(index=False))
    return {"store": store, "summary": summary, "figure": figure, "fig": fig, "probs": probs, "model": model}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="emofuse API walk-through (offline, seconds)")
    ap.add_argument("--out", default="quickstart-out", help="working folder (default: quickstart-out)")
    main(ap.parse_args().out)
