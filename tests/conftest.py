import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def fake_iemocap(tmp_path_factory):
    """A small fake IEMOCAP copy (nested root) shared by read-only tests."""
    from emofuse.testing import make_fake_iemocap

    root = tmp_path_factory.mktemp("iemocap")
    return make_fake_iemocap(root, nested=True, seed=1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random encoders in folders: {'group': w2v2 base-style, 'layer': lv60-style, 'bert': BERT,
    'hubert', 'wavlm', 'data2vec-audio', 'whisper', 'gpt2', 'llama'}."""
    from emofuse.testing import tiny_models as tm

    base = tmp_path_factory.mktemp("models")
    return {"group": tm.tiny_wav2vec2(base / "w2v-group", "group"), "layer": tm.tiny_wav2vec2(base / "w2v-layer", "layer"),
            "bert": tm.tiny_bert(base / "bert"), "hubert": tm.tiny_hubert(base / "hubert"),
            "wavlm": tm.tiny_wavlm(base / "wavlm"), "data2vec-audio": tm.tiny_data2vec_audio(base / "data2vec-audio"),
            "whisper": tm.tiny_whisper(base / "whisper"), "gpt2": tm.tiny_gpt2(base / "gpt2"),
            "llama": tm.tiny_llama(base / "llama")}


@pytest.fixture(scope="session")
def small_fake(tmp_path_factory):
    """A fake IEMOCAP copy with 1-2 s utterances for extraction tests."""
    from emofuse.testing import make_fake_iemocap

    root = tmp_path_factory.mktemp("iemocap-small")
    counts = {s: {"ang": 1, "hap": 1, "exc": 1, "neu": 1, "sad": 1, "xxx": 1} for s in range(1, 6)}
    return make_fake_iemocap(root, counts=counts, seconds=1.2, seed=4)
