"""Whisper and decoder-only LM streams through extract → align → train-head (tiny random weights)."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emofuse.pipelines.align import AlignConfig, run_align
from emofuse.pipelines.describe import describe_store
from emofuse.pipelines.extract import ExtractConfig, run_extract
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore


def test_whisper_and_causal_lms_extract_align_train(small_fake, tiny_models, tmp_path):
    store = str(tmp_path / "s.h5")
    quiet = lambda m: None  # noqa: E731
    common = dict(corpus="iemocap", root=str(small_fake.root), out=store, device="cpu", store_dtype="float32")
    run_extract(ExtractConfig(**common, audio_model=tiny_models["whisper"], text_model=tiny_models["llama"],
                              batch_seconds=4))
    run_extract(ExtractConfig(**common, audio_model=None, text_model=tiny_models["gpt2"], text_stream="gpt2"))
    run_align(AlignConfig(store=store, stream="audio", source="iemocap"))
    with FeatureStore(store) as fs:
        info = fs.stream_info("audio")
        assert info["model_type"] == "whisper" and info["frame_hop_s"] == 0.02 and info["window_s"] == 30.0
        ids = fs.ids("audio", "frames")
        assert len(ids) == 25
        utt = small_fake.utterances[0]
        n = sf.info(utt.audio_path).frames
        assert fs.frames("audio", utt.id).shape == (int(np.ceil(n / 320)), 3, 32)  # trimmed to the audio
        words = fs.segments("audio", "word", ids[0])
        assert len(words.symbols) and (words.spans[:, 1] <= len(fs.frames("audio", ids[0]))).all()
        llama, gpt2 = fs.tokens("text", ids[0]), fs.tokens("gpt2", ids[0])
        assert llama.strings[0] == "<s>" and llama.special[0] and not gpt2.special.any()
        assert fs.stream_info("text")["causal"] and fs.stream_info("gpt2")["model_type"] == "gpt2"
    text = describe_store(store)
    assert "family Whisper encoder" in text and "frame hop 20 ms" in text and "input window 30 s (standard)" in text
    assert "family llama (causal LM)" in text and "family gpt2 (causal LM)" in text
    for name, kw in (("late", dict(fusion="late", granularity="W")),
                     ("coatt", dict(fusion="coattention", granularity="F", text_stream="gpt2")),
                     ("frames", dict(fusion="none", granularity="F"))):
        s = run_train(TrainConfig(store=store, out=str(tmp_path / name), repeats=1, epochs=2, patience=2,
                                  folds=("1",), device="cpu", **kw))
        assert s["ua"]["n"] == 1
        p = pd.read_csv(tmp_path / name / "predictions.csv")   # UA as its predictions give it
        recall = [(g["pred"] == label).mean() for label, g in p.groupby("label")]
        assert len(recall) >= 2 and s["ua"]["mean"] == pytest.approx(100 * np.mean(recall), abs=1e-9)


def test_egemaps_frames_are_where_opensmile_says():
    """The hop and window recorded for eGeMAPS (and used to pool its frames into segments) are the
    start/end times openSMILE itself gives each low-level-descriptor frame."""
    from emofuse.extract.encoders import OpenSmileEncoder
    enc = OpenSmileEncoder("opensmile:eGeMAPSv02")
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    df = enc.smile.process_signal(wave, enc.sample_rate)
    start = df.index.get_level_values("start").total_seconds().to_numpy()
    end = df.index.get_level_values("end").total_seconds().to_numpy()
    t = np.arange(len(df))
    hop, window = enc.info["frame_hop_s"], enc.info["frame_window_s"]
    np.testing.assert_allclose(start, t * hop, atol=1e-6)
    np.testing.assert_allclose(end[:-1], t[:-1] * hop + window, atol=1e-6)   # the last frame is cut at the audio's end
    assert enc.encode([wave])[0].shape == (len(df), 1, enc.dim)
