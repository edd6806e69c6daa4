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


def test_egemaps_of_audio_not_at_16khz_says_it_was_resampled(tmp_path, caplog):
    """openSMILE reads 16 kHz audio here, as every encoder does; its own tools run at the file's
    rate, and loudness or spectral flux then differ by ~40 % at 44.1 kHz. Before: nothing said
    so, so a stream was compared with published eGeMAPS numbers of other values."""
    import soundfile as sf

    from emofuse.pipelines.extract import ExtractConfig, run_extract
    rng = np.random.default_rng(0)
    for name, sr in (("a", 44100), ("b", 16000)):
        sf.write(tmp_path / f"{name}.wav", (rng.standard_normal(sr) * 0.1).astype(np.float32), sr)
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session\na,a.wav,x,ang,s,1\nb,b.wav,x,neu,s,2\n")
    with caplog.at_level("WARNING"):
        run_extract(ExtractConfig(corpus="manifest", manifest=str(tmp_path / "m.csv"), out=str(tmp_path / "s.h5"),
                                  audio_model="opensmile:eGeMAPSv02", text_model=None, device="cpu"))
    assert "egemaps: audio at 44100 Hz was resampled to 16000 Hz before openSMILE" in caplog.text


def _text_of(enc, n):
    """A transcript of exactly ``n`` tokens (special tokens included)."""
    words = " ".join(["Okay, fine. I can't believe you did that again! the quick brown fox"] * 12)
    for k in range(len(words)):
        if enc.n_tokens(words[:k]) == n:
            return words[:k]
    raise AssertionError(f"no prefix of {n} tokens")


@pytest.mark.parametrize("family, max_positions, tokenizer_max, limit", [
    ("bert", 64, 64, 64),                 # bert-base: 512 positions, tokenizer 512 -> 512, as before
    ("roberta", 66, 64, 64),              # roberta-base: 514 positions, tokenizer 512 -> 512 (was 510)
    ("roberta", 66, None, 64),            # position ids start after the padding index 1
    ("xlm-roberta", 66, 64, 64),
    ("camembert", 66, None, 64),          # was 66: a 65-token transcript went past the positions
    ("data2vec-text", 66, None, 64),
    ("mpnet", 66, None, 64),
    ("ibert", 66, None, 64),
    ("gpt2", 64, 64, 64),
    ("llama", 64, 64, 64),
])
def test_a_transcript_at_the_models_token_limit_is_one_window(tmp_path, family, max_positions, tokenizer_max, limit):
    """Exactly the model's limit goes through in one forward (the plain model's activations);
    one token more is windowed (each window within the limit). RoBERTa-style models embed
    positions from padding index + 1: roberta-base takes 512 tokens, not 510."""
    import torch
    from transformers import AutoModel
    from emofuse.extract.encoders import load_text_encoder, stacked_layers
    from emofuse.testing import tiny_models as tm
    if family in ("bert", "gpt2", "llama"):
        path = getattr(tm, f"tiny_{family}")(tmp_path / family, max_positions=max_positions)
    else:
        path = tm.tiny_roberta(tmp_path / family, family, max_positions=max_positions, tokenizer_max=tokenizer_max)
    enc = load_text_encoder(path, device="cpu")
    assert enc.max_len == enc.info["max_tokens"] == limit
    forwards = []
    run = enc._run
    enc._run = lambda ids: forwards.append([len(i) for i in ids]) or run(ids)
    model = AutoModel.from_pretrained(path).eval()
    text = _text_of(enc, limit)
    got = enc.encode([text])[0]["data"]
    assert forwards == [[limit]]
    with torch.no_grad():
        ids = torch.tensor([enc.tok(text)["input_ids"]])
        plain = stacked_layers(model(input_ids=ids, output_hidden_states=True))[0].numpy()
        np.testing.assert_allclose(got, plain, atol=1e-5)
        longer = _text_of(enc, limit + 1)
        if family != "llama":   # rotary positions have no table to run past
            with pytest.raises((IndexError, RuntimeError)):
                model(input_ids=torch.tensor([enc.tok(longer)["input_ids"]]))
    forwards.clear()
    assert len(enc.encode([longer])[0]["data"]) == limit + 1
    assert len(forwards[0]) >= 2 and max(forwards[0]) <= limit


def test_a_checkpoint_without_preprocessor_config_is_said_at_extraction_and_in_info(small_fake, tiny_models,
                                                                                     tmp_path, caplog):
    """Before: the per-utterance normalisation it falls back to was only in the stream's notes,
    which nothing printed."""
    import logging
    import shutil
    from emofuse.testing import logged_messages
    folder = tmp_path / "w2v-no-fe"
    shutil.copytree(tiny_models["group"], folder)
    (folder / "preprocessor_config.json").unlink()
    store = str(tmp_path / "s.h5")
    with caplog.at_level(logging.WARNING, logger="emofuse"):
        run_extract(ExtractConfig(corpus="iemocap", root=str(small_fake.root), out=store, device="cpu",
                                  audio_model=str(folder), text_model=None))
    assert any(m.startswith(f"{folder} has no preprocessor_config.json: its input is normalised per utterance")
               for m in logged_messages(caplog))
    text = describe_store(store)
    assert "    input: do_normalize True, padding_value 0.0, sampling_rate 16000" in text
    assert "    note: no preprocessor_config.json: used do_normalize=True at 16 kHz" in text


def test_audio_too_short_for_opensmile_is_skipped_as_nan_not_as_overflow(tmp_path):
    """openSMILE's IS10 set describes 65 ms of audio (past the 60 ms window checked first) with one
    frame of NaN. Before: skipped as "no frame, or values that are not finite … (--store-dtype
    float32 keeps values beyond float16's range)", advice that could not help; now the reason
    names NaN and audio too short to describe."""
    import soundfile as sf

    from emofuse.pipelines.extract import ExtractConfig, run_extract
    from emofuse.store import FeatureStore
    rng = np.random.default_rng(0)
    for name, seconds in (("a", 0.065), ("b", 1.0), ("c", 1.0)):
        sf.write(tmp_path / f"{name}.wav", (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session\na,a.wav,x,ang,s,1\nb,b.wav,x,neu,s,2\n"
                                    "c,c.wav,x,ang,s,1\n")
    run_extract(ExtractConfig(corpus="manifest", manifest=str(tmp_path / "m.csv"), out=str(tmp_path / "s.h5"),
                              audio_model="opensmile:IS10", audio_stream="is10", text_model=None, device="cpu"))
    with FeatureStore(tmp_path / "s.h5") as fs:
        skipped = fs.skipped("is10")
        assert sorted(fs.ids("is10", "frames")) == ["b", "c"]
    assert list(skipped["id"]) == ["a"]
    assert skipped["reason"].item() == ("the encoder produced 38 of 38 values that are not numbers (NaN) for this audio "
                                        "(openSMILE: audio too short or too degenerate to describe)")


def test_each_cause_of_values_that_are_not_finite_has_its_own_words():
    """Each cause, and its remedy: beyond a float16 store (a float32 store keeps them); an overflow
    inside an encoder computing in float16 (a float32 store would not help); NaN or inf from an
    encoder computing in float32 (no option helps); openSMILE's short audio. Before: one sentence
    for all, advising --store-dtype float32; then (a review found) --dtype float32 advised to runs
    that already computed in float32."""
    from emofuse.pipelines.extract.stream import not_finite
    inf16, inf32 = np.full((2, 1, 3), np.inf, np.float16), np.full((2, 1, 3), np.inf, np.float32)
    nan16 = np.full((1, 1, 3), np.nan, np.float16)
    assert not_finite(inf16, "frames", "audio").reason == (
        "the encoder produced values beyond the store's dtype (float16: largest 65504) for this audio, infinite once "
        "stored (--store-dtype float32 keeps them)")
    for kept in (inf16, inf32, nan16):   # computing in float16: an overflow inside, whatever the store
        assert not_finite(kept, "tokens", "transcript", "float16").reason.endswith(
            "for this transcript: an overflow inside it, computing in float16 (--dtype float32 avoids it)")
    assert not_finite(inf32, "frames", "audio").reason == (
        "the encoder produced 6 of 6 values that are not finite (NaN or infinite) for this audio, computing in "
        "float32 (its checkpoint, or this input, is damaged or out of what it takes)")
    assert "3 of 3 values that are not numbers (NaN) for this audio, computing in bfloat16 (its coarse rounding " \
           "can; --dtype float32 avoids it)" in not_finite(nan16, "frames", "audio", "bfloat16").reason
    assert "(openSMILE: audio too short" in not_finite(nan16, "frames", "audio", descriptors=True).reason
    assert not_finite(np.zeros((0, 1, 3), np.float16), "frames", "audio").reason == \
        "the encoder produced no frame for this audio"
