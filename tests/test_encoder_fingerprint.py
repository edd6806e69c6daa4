"""A stream's fingerprint says what the encoder computes, not where its checkpoint was loaded from
or with which transformers version; stores and models fingerprinted by the recipe before (the
whole ``config.to_dict()``, path and version included) stay usable under their fingerprints."""

import json
import os
import shutil

import pytest

from emofuse.errors import EmofuseError, StoreError
from emofuse.extract import encoders as enc_mod
from emofuse.extract import whisper as whisper_mod
from emofuse.extract.encoders import HFAudioEncoder, HFTextEncoder
from emofuse.extract.whisper import WhisperAudioEncoder
from emofuse.pipelines.extract import ExtractConfig, run_extract
from emofuse.pipelines.predict import TrainedModel, run_evaluate
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore, digest, merge_stores, same_encoder
from emofuse.testing import make_fake_iemocap

COUNTS = {s: {"ang": 2, "hap": 2, "neu": 2, "sad": 2} for s in range(1, 6)}


def old_recipe(monkeypatch):
    """Fingerprint as emofuse did before: the config hash over the whole to_dict() (the path as
    typed, the running transformers version), no configuration recorded."""
    old = lambda config: {"config_hash": digest(config.to_dict())}  # noqa: E731
    monkeypatch.setattr(enc_mod, "config_identity", old)
    monkeypatch.setattr(whisper_mod, "config_identity", old)


def transformers_upgrade(monkeypatch, version="5.99.0"):
    import transformers
    import transformers.configuration_utils as cu
    monkeypatch.setattr(cu, "__version__", version)
    monkeypatch.setattr(transformers, "__version__", version)


@pytest.fixture
def models(tiny_models, tmp_path, monkeypatch):
    """Copies of the tiny checkpoints under tmp_path, the working directory: (relative, absolute) names."""
    for name in ("bert", "group", "whisper"):
        shutil.copytree(tiny_models[name], tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return {name: (name, str(tmp_path / name)) for name in ("bert", "group", "whisper")}


def test_one_fingerprint_whatever_the_path_or_transformers_version(models, monkeypatch):
    rel, ab = models["bert"]
    a, b = HFTextEncoder(rel, device="cpu"), HFTextEncoder(ab, device="cpu")
    assert a.fingerprint_fields() == b.fingerprint_fields()
    assert a.info["config"]["_name_or_path"] == "bert" and b.info["config"]["_name_or_path"] == ab   # recorded
    for cls, (rel, ab) in ((HFAudioEncoder, models["group"]), (WhisperAudioEncoder, models["whisper"])):
        assert cls(rel, device="cpu").fingerprint_fields() == cls(ab, device="cpu").fingerprint_fields()
    transformers_upgrade(monkeypatch)
    assert HFTextEncoder("bert", device="cpu").fingerprint_fields() == a.fingerprint_fields()


def test_audio_streams_record_the_resampler_outside_their_fingerprint(models):
    """Audio at another rate goes through soxr; which resampler (and version) made the encoder's
    input is provenance in the stream's info, as the transformers version is (found by an
    extraction audit: nothing recorded it, and another resampler moved activations by up to 1.0 on
    a tiny random model fed noise)."""
    import soxr
    for cls, (rel, _) in ((HFAudioEncoder, models["group"]), (WhisperAudioEncoder, models["whisper"])):
        enc = cls(rel, device="cpu")
        assert enc.info["resampler"].startswith(f"soxr {soxr.__version__}, quality HQ")
        assert "resampler" not in enc.fingerprint_fields()
    smile = enc_mod.OpenSmileEncoder("opensmile:eGeMAPSv02")   # the stream resampling moves most (~40 %)
    assert smile.info["resampler"].startswith(f"soxr {soxr.__version__}")
    assert "resampler" not in smile.fingerprint_fields()


def edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_a_real_configuration_change_still_changes_the_fingerprint(models, tmp_path):
    base = HFTextEncoder("bert", device="cpu").fingerprint_fields()
    shutil.copytree("bert", "bert-eps")
    edit_config("bert-eps", layer_norm_eps=1e-5)   # the same weights, another computation
    eps = HFTextEncoder("bert-eps", device="cpu").fingerprint_fields()
    assert eps["weights_hash"] == base["weights_hash"] and eps["config_hash"] != base["config_hash"]
    shutil.copytree("group", "group-eps")
    edit_config("group-eps", layer_norm_eps=1e-3)
    assert HFAudioEncoder("group-eps", device="cpu").fingerprint_fields()["config_hash"] != \
        HFAudioEncoder("group", device="cpu").fingerprint_fields()["config_hash"]
    shutil.copytree("whisper", "whisper-act")
    edit_config("whisper-act", activation_function="relu")
    assert WhisperAudioEncoder("whisper-act", device="cpu").fingerprint_fields()["config_hash"] != \
        WhisperAudioEncoder("whisper", device="cpu").fingerprint_fields()["config_hash"]


def extract(root, out, audio, text, **kw):
    return run_extract(ExtractConfig(corpus="iemocap", root=str(root), out=str(out), audio_model=audio,
                                     text_model=text, device="cpu", **kw))


def test_a_store_from_the_recipe_before_is_extended_predicted_and_evaluated(models, tmp_path, monkeypatch):
    corpus = make_fake_iemocap(tmp_path / "iemo", counts=COUNTS, seconds=0.8, seed=3)
    store = tmp_path / "s.h5"
    with monkeypatch.context() as m:   # written by the emofuse before, checkpoints typed as relative paths
        old_recipe(m)
        extract(corpus.root, store, "group", "bert", limit=20)
    with FeatureStore(store) as fs:
        before = {s: fs.stream_info(s) for s in ("audio", "text")}
        assert len(fs.ids("text", "tokens")) == 20 and "config" not in before["text"]

    # extended with the same checkpoints typed as absolute paths, after a transformers upgrade
    with monkeypatch.context() as m:
        transformers_upgrade(m)
        extract(corpus.root, store, models["group"][1], models["bert"][1])
    with FeatureStore(store) as fs:
        assert len(fs.ids("text", "tokens")) == len(fs.utterances) == 40
        for s in ("audio", "text"):   # the recorded fingerprints, and so the run keys, are kept
            assert fs.stream_info(s)["fingerprint"] == before[s]["fingerprint"]
            assert fs.stream_info(s)["config_hash"] == before[s]["config_hash"]

    # a real configuration change is still another encoder
    shutil.copytree("bert", "bert-eps")
    edit_config("bert-eps", layer_norm_eps=1e-5)
    with pytest.raises(StoreError, match="config_hash"):
        extract(corpus.root, store, "none", "bert-eps")

    run = str(tmp_path / "run")
    run_train(TrainConfig(store=str(store), out=run, fusion="late", granularity="F+T", layers="1-", repeats=1,
                          epochs=2, patience=2, folds=("1", "2"), device="cpu"))
    model = TrainedModel.from_run(run)
    with FeatureStore(store) as fs:
        utts = fs.utterances.iloc[:3]
    audio, text = list(utts["audio_path"]), list(utts["transcript"])
    # predict with the checkpoints typed otherwise than extraction typed them
    model.features(audio=audio, text=text, audio_model=models["group"][1], text_model=models["bert"][1])
    with pytest.raises(EmofuseError, match="does not match the one this model was trained on"):
        model.features(audio=audio, text=text, text_model="bert-eps")

    # a store of another corpus written now (new recipe) evaluates the model trained on the old one
    other_corpus = make_fake_iemocap(tmp_path / "other", counts={s: {"ang": 1, "neu": 1, "sad": 1, "hap": 1}
                                                                 for s in range(1, 3)}, seconds=0.8, seed=9)
    other = tmp_path / "o.h5"
    extract(other_corpus.root, other, models["group"][1], models["bert"][1])
    with FeatureStore(other) as fs:
        assert fs.stream_info("text")["fingerprint"] != before["text"]["fingerprint"]   # the new recipe
        assert fs.stream_info("text")["config"]
    assert run_evaluate(run, str(other), str(tmp_path / "ev"))["ua"]["n"] == 2
    other_eps = tmp_path / "o-eps.h5"
    extract(other_corpus.root, other_eps, models["group"][1], "bert-eps")
    with pytest.raises(EmofuseError, match="cross-corpus evaluation needs the same encoders"):
        run_evaluate(run, str(other_eps), str(tmp_path / "ev2"))
    # before: only the compute dtype differed, and the advice was the --audio-model already used
    other_bf16 = tmp_path / "o-bf16.h5"
    extract(other_corpus.root, other_bf16, models["group"][1], "none", dtype="bfloat16")
    with pytest.raises(EmofuseError, match=r"compute_dtype: 'bfloat16' there, 'float32' for the model\]: "
                                           r"cross-corpus evaluation needs .*; extract \S+ with --audio-model \S+ "
                                           r"--dtype float32$"):
        run_evaluate(run, str(other_bf16), str(tmp_path / "ev3"))


def test_same_encoder_rebuilds_the_recipe_before_only_from_what_is_recorded(models, tmp_path, monkeypatch):
    """Two recorded stream infos (shards merged, evaluate): old and new recipe of one checkpoint
    typed two ways are one encoder, either way round; another configuration is not."""
    corpus = make_fake_iemocap(tmp_path / "iemo", counts={1: {"ang": 1, "neu": 1}}, seconds=0.8, seed=3)
    with monkeypatch.context() as m:
        old_recipe(m)
        extract(corpus.root, tmp_path / "old.h5", "none", "bert", shard="0/2", text_batch=1)
    extract(corpus.root, tmp_path / "new.h5", "none", models["bert"][1], shard="1/2", text_batch=1)
    with FeatureStore(tmp_path / "old.h5") as a, FeatureStore(tmp_path / "new.h5") as b:
        old, new = a.stream_info("text"), b.stream_info("text")
    assert old["fingerprint"] != new["fingerprint"]
    assert same_encoder(old, new) and same_encoder(new, old)
    assert not same_encoder(old, {**new, "config": {**new["config"], "layer_norm_eps": 1e-5}})
    assert not same_encoder(old, {**new, "store_dtype": "float32"})
    # the shards merge; the stream keeps the info of the first
    merge_stores(tmp_path / "all.h5", [tmp_path / "old.h5", tmp_path / "new.h5"])
    with FeatureStore(tmp_path / "all.h5") as fs:
        assert len(fs.ids("text", "tokens")) == 2 and fs.stream_info("text")["fingerprint"] == old["fingerprint"]
    # before: "stream 'text' in old.h5 holds bert (fingerprint …); new.h5 holds … : cannot be merged"
    shutil.copytree("bert", "bert-eps")
    edit_config("bert-eps", layer_norm_eps=1e-5)
    extract(corpus.root, tmp_path / "eps.h5", "none", "bert-eps", shard="1/2", text_batch=1)
    with pytest.raises(StoreError, match="cannot be merged"):
        merge_stores(tmp_path / "all2.h5", [tmp_path / "old.h5", tmp_path / "eps.h5"])
