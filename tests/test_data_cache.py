"""The rows one ablate row leaves in memory for the next (``load_train_data``'s cache) serve only
the same content, and at the right utterances."""

import numpy as np
import torch

from emofuse.pipelines.data import load_train_data
from emofuse.store import FeatureStore
from emofuse.testing.synthetic import make_synthetic_store


def test_cached_rows_follow_the_next_rows_utterance_list(tmp_path):
    """Before: a P-only row (whose utterance list keeps the one utterance without speech rows, as
    empty) cached its per-utterance offsets; an F+P+T row (which leaves that utterance out) reused
    them, so every later utterance read the phone rows of the one before it: silently wrong UA."""
    store = tmp_path / "s.h5"
    make_synthetic_store(store, per_class=3, sessions=2, layers=2, dim=4, planted_layer=1, mean_seconds=1.0, no_frames=1)
    cpu = torch.device("cpu")
    with FeatureStore(store) as fs:
        cache = {}
        first = load_train_data(fs, ["P"], "audio", "text", "all", cpu, None, cache)
        after = load_train_data(fs, ["F", "P", "T"], "audio", "text", "all", cpu, None, cache)
        alone = load_train_data(fs, ["F", "P", "T"], "audio", "text", "all", cpu, None, None)
    assert len(first.ids) == len(after.ids) + 1 and list(after.ids) == list(alone.ids)
    for i in range(len(alone.ids)):
        idx = np.array([i])
        assert torch.equal(after.sources["P"].all_rows(idx), alone.sources["P"].all_rows(idx)), alone.ids[i]
    # and the cache did serve the second row (same tensor object), not a fresh read
    assert after.sources["P"].rows is first.sources["P"].rows
