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
