"""What every benchmark does with its figures: a JSON file in benchmarks/results/ and a row in
BENCHMARKS.md. Results measured on a GPU go to ``<name>-cuda.json`` so they never overwrite the
CPU figures."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# Benchmarks\n\nRatios measured side by side in one run; bare times vary with the machine.\n\n"
          "| benchmark | date | machine | size | result | hardware use | overhead | accuracy | memory |\n"
          "|---|---|---|---|---|---|---|---|---|\n")


def record(name: str, res: dict, row: str, device: str = "cpu") -> Path:
    """Write ``res`` as JSON, print it, and append ``row`` to BENCHMARKS.md. Returns the JSON path."""
    out = ROOT / "benchmarks" / "results" / (f"{name}-cuda.json" if device.startswith("cuda") else f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    bench = ROOT / "BENCHMARKS.md"
    if not bench.exists():
        bench.write_text(HEADER)
    with bench.open("a") as f:
        f.write(row + "\n")
    return out


def two_stage(w, unit: dict):
    """A unit of frames committed as extraction commits it on a GPU, for ``BackgroundCommits.submit``:
    staged in the writer thread, and the function that publishes it, for the syncer thread."""
    def stage():
        staged = w.stage("audio", {"frames": unit})
        return lambda: w.publish(staged)
    return stage


def synthetic_table(ids: list[str], seconds: float):
    """The utterance table of a synthetic store whose utterances are all ``seconds`` long (one
    class, session and speaker): what the store benchmarks write their units against."""
    import numpy as np
    import pandas as pd
    return pd.DataFrame({"id": ids, "label": "neu", "session": "1", "speaker": "s", "gender": "F",
                         "transcript": "synthetic", "audio_path": [f"/synthetic/{i}.wav" for i in ids],
                         "start": np.nan, "end": np.nan, "duration": seconds, "audio_bytes": 1})
