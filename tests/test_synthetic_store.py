"""Synthetic stores: every generation parameter that changes what a store holds changes its
fingerprints, so two stores of other content never share a run key (before, the stream
fingerprint was ``synthetic-audio-{seed}`` whatever was planted, and the corpus fingerprint did
not follow the seed: a grid over planted signals reused one store's results for another)."""

from emofuse.pipelines.ablate import run_key
from emofuse.pipelines.train import TrainConfig, store_fingerprints, with_store_defaults
from emofuse.store import FeatureStore
from emofuse.testing.synthetic import make_synthetic_store

SMALL = dict(per_class=1, sessions=2, layers=4, dim=4, mean_seconds=1.0, max_seconds=1.5)


def facts(path, **kw):
    make_synthetic_store(path, **{**SMALL, **kw})
    with FeatureStore(path) as fs:
        cfg = with_store_defaults(fs, TrainConfig(store=str(path), out="x", fusion="late", granularity="F+T"))
        fps = store_fingerprints(fs, cfg)
        return {"corpus": fs.corpus_fingerprint, "audio": fs.stream_info("audio")["fingerprint"],
                "text": fs.stream_info("text")["fingerprint"], "key": run_key(cfg.identity(), fps)}


def test_every_content_parameter_is_in_the_fingerprints(tmp_path):
    base = facts(tmp_path / "base.h5")
    assert facts(tmp_path / "again.h5") == base   # the same parameters: the same store, the same key
    for name, kw, changed in [("layer", dict(planted_layer=1), {"audio"}),
                              ("strength", dict(strength=0.5), {"audio"}),
                              ("text", dict(planted_stream="text"), {"audio", "text"}),
                              ("seed", dict(seed=1), {"corpus", "audio", "text"}),
                              ("fps", dict(fps=100.0), {"audio", "text"}),
                              ("no-frames", dict(no_frames=1), {"audio"})]:
        got = facts(tmp_path / f"{name}.h5", **kw)
        assert {k for k in ("corpus", "audio", "text") if got[k] != base[k]} == changed, name
        assert got["key"] != base["key"], name
