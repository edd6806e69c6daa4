import numpy as np
import pytest
import torch

from emofuse.extract.encoders import HFAudioEncoder, HFTextEncoder
from emofuse.extract.masking import conv_output_lengths, masked_instance_norm, receptive_field


def waves(seed=0, lengths=(16000, 5000, 12345, 401, 23456)):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("kind", ["group", "layer", "hubert", "wavlm", "data2vec-audio"])
def test_batched_equals_single(tiny_models, kind):
    """Every audio family we name: batched = one at a time at every hidden state (float32)."""
    enc = HFAudioEncoder(tiny_models[kind], device="cpu")
    ws = waves()
    single = [enc.encode([w])[0] for w in ws]
    batched = enc.encode(ws)
    for w, s, b in zip(ws, single, batched):
        assert s.shape == b.shape == (int(conv_output_lengths(torch.tensor([len(w)]), enc.kernels, enc.strides)), 3, 32)
        assert np.abs(s - b).max() <= 1e-4
    # and single equals the plain transformers forward (no wrapper, no mask)
    from transformers import AutoFeatureExtractor, AutoModel
    model = AutoModel.from_pretrained(tiny_models[kind]).eval()
    fe = AutoFeatureExtractor.from_pretrained(tiny_models[kind])
    with torch.no_grad():
        x = torch.from_numpy(fe(ws[0], sampling_rate=16000, return_tensors="np")["input_values"])
        out = model(x, output_hidden_states=True)
    ref = torch.stack(out.hidden_states[:-1], 2)[0].numpy()
    assert np.abs(ref - single[0][:, :-1]).max() <= 1e-4
    # the last layer is the model's output; for a pre-LayerNorm ("layer") model transformers 5's
    # hidden_states[-1] is the last block before the final LayerNorm, not what a paper calls the last layer
    assert np.abs(out.last_hidden_state[0].numpy() - single[0][:, -1]).max() <= 1e-4
    if getattr(model.config, "do_stable_layer_norm", False):
        assert enc.info["last_layer"] == "last_hidden_state" and "last_layer" in enc.fingerprint_fields()
    else:
        assert "last_layer" not in enc.fingerprint_fields()   # fingerprints of stores from before unchanged


def test_naive_padding_would_change_group_norm_outputs(tiny_models):
    """The problem the masking solves is real: plain padded batching drifts on the group kind."""
    from transformers import AutoModel
    model = AutoModel.from_pretrained(tiny_models["group"]).eval()
    ws = waves(lengths=(16000, 4000))
    norm = lambda w: (w - w.mean()) / np.sqrt(w.var() + 1e-7)  # noqa: E731
    x = torch.zeros(2, 16000)
    for i, w in enumerate(ws):
        x[i, :len(w)] = torch.from_numpy(norm(w))
    with torch.no_grad():
        padded = model(x, output_hidden_states=True).hidden_states[-1][1, :12]
        alone = model(x[1:, :4000], output_hidden_states=True).hidden_states[-1][0, :12]
    assert (padded - alone).abs().max() > 1e-2


def test_naive_padding_would_change_data2vec_audio_outputs(tiny_models):
    """data2vec-audio's stacked positional convolutions carry padding into real frames unless masked."""
    from transformers import AutoModel
    model = AutoModel.from_pretrained(tiny_models["data2vec-audio"]).eval()
    x = torch.zeros(2, 16000)
    x[0] = torch.from_numpy(waves(lengths=(16000,))[0])
    x[1, :6000] = torch.from_numpy(waves(seed=1, lengths=(6000,))[0])
    with torch.no_grad():
        padded = model(x, attention_mask=(x != 0).long(), output_hidden_states=True).hidden_states[-1][1, :18]
        alone = model(x[1:, :6000], output_hidden_states=True).hidden_states[-1][0, :18]
    assert (padded - alone).abs().max() > 1e-2


def test_masked_instance_norm_matches_group_norm_per_item():
    torch.manual_seed(0)
    gn = torch.nn.GroupNorm(6, 6)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    x = torch.randn(3, 6, 50)
    lengths = torch.tensor([50, 20, 7])
    y = masked_instance_norm(x, lengths, gn.weight, gn.bias, gn.eps)
    for b, n in enumerate(lengths):
        assert torch.allclose(y[b, :, :n], gn(x[b:b + 1, :, :n])[0], atol=1e-5)


def test_receptive_field_of_wav2vec2():
    assert receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == (400, 320)
    assert int(conv_output_lengths(torch.tensor([16000]), (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))) == 49
    assert int(conv_output_lengths(torch.tensor([399]), (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))) == 0


def test_text_batched_equals_single_and_offsets(tiny_models):
    enc = HFTextEncoder(tiny_models["bert"], device="cpu")
    texts = ["Excuse me.", "I can't believe you did that again!", "Hi"]
    single = [enc.encode([t])[0] for t in texts]
    batched = enc.encode(texts)
    for t, s, b in zip(texts, single, batched):
        assert np.abs(s["data"] - b["data"]).max() <= 1e-4
        assert s["data"].shape[1:] == (3, 32)
        assert s["special"][0] and s["special"][-1] and s["word_ids"][0] == -1
        for tok, (a, e), sp in zip(s["strings"], s["offsets"], s["special"]):
            if not sp:
                assert t[a:e].lower() == tok.replace("##", "")


def test_long_transcript_is_windowed_not_truncated(tiny_models):
    enc = HFTextEncoder(tiny_models["bert"], device="cpu")  # 64 positions
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    n = enc.n_tokens(text)
    assert n > enc.max_len
    out = enc.encode([text])[0]
    assert out["data"].shape[0] == n and len(out["strings"]) == n
    ids = enc.tok(text)["input_ids"]
    size = enc.max_len - 2
    first = enc._run([ids[:1] + ids[1:1 + size] + ids[-1:]])[0]
    last = enc._run([ids[:1] + ids[-1 - size:-1] + ids[-1:]])[0]
    # early tokens come from the first window, late ones (and [SEP]) from the last
    assert np.abs(out["data"][:10] - first[:10]).max() < 1e-4
    assert np.abs(out["data"][-10:] - last[-10:]).max() < 1e-4
    assert list(out["strings"][:2]) == ["[CLS]", "the"] and out["strings"][-1] == "[SEP]"


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_lm_batched_equals_single_every_layer(tiny_models, kind):
    """Decoder-only LMs: every hidden state per token, batched = alone = the plain forward;
    token strings, word ids, offsets; a BOS (Llama-style) flagged special, none assumed (GPT-2)."""
    from transformers import AutoModel
    enc = HFTextEncoder(tiny_models[kind], device="cpu")
    assert enc.info["causal"] and enc.info["family"].startswith(kind)
    texts = ["Excuse me.", "I can't believe you did that again!", "Hi", "Oh, that's wonderful news."]
    single = [enc.encode([t])[0] for t in texts]
    batched = enc.encode(texts)
    model = AutoModel.from_pretrained(tiny_models[kind]).eval()
    for t, s, b in zip(texts, single, batched):
        assert s["data"].shape[1:] == (3, 32) and np.abs(s["data"] - b["data"]).max() <= 1e-4
        ids = enc.tok(t)["input_ids"]
        with torch.no_grad():
            ref = torch.stack(model(torch.tensor([ids]), output_hidden_states=True).hidden_states, 2)[0].numpy()
        assert np.abs(ref - s["data"]).max() <= 1e-4
        assert s["special"][0] == (kind == "llama") and not s["special"][1:].any()
        assert (s["strings"][0] == "<s>") == (kind == "llama")
        words = t.replace(",", " ,").replace(".", " .").replace("!", " !").replace("'", " '").split()
        for w in range(int(s["word_ids"].max()) + 1):  # each word id spans one word of the text
            span = s["offsets"][s["word_ids"] == w]
            assert t[span[:, 0].min():span[:, 1].max()].strip() == words[w]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_lm_long_transcript_is_windowed(tiny_models, kind):
    enc = HFTextEncoder(tiny_models[kind], device="cpu")  # 64 positions
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    ids = enc.tok(text)["input_ids"]
    assert len(ids) > enc.max_len
    out = enc.encode([text])[0]
    assert out["data"].shape[0] == len(ids) == len(out["strings"])
    head = int(kind == "llama")
    size = enc.max_len - head
    first = enc._run([ids[:head] + ids[head:head + size]])[0]
    last = enc._run([ids[:head] + ids[-size:]])[0]
    # a causal token takes the window with the most tokens before it: the first window for its
    # first half, the last window for the tail
    assert np.abs(out["data"][:size] - first[:size]).max() < 1e-4
    assert np.abs(out["data"][-5:] - last[-5:]).max() < 1e-4


def test_wrong_kind_of_model_is_refused(tiny_models):
    from emofuse.errors import EmofuseError
    from emofuse.extract.encoders import load_audio_encoder, load_text_encoder
    with pytest.raises(EmofuseError, match="--text-model .* is a wav2vec2 speech model; --text-model expects"):
        load_text_encoder(tiny_models["group"], device="cpu")
    with pytest.raises(EmofuseError, match="is a whisper speech model"):
        load_text_encoder(tiny_models["whisper"], device="cpu")
    with pytest.raises(EmofuseError, match="--audio-model .* is a gpt2 text model; --audio-model expects a speech"):
        load_audio_encoder(tiny_models["gpt2"], device="cpu")
    with pytest.raises(EmofuseError, match="is a bert text model"):
        load_audio_encoder(tiny_models["bert"], device="cpu")


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import SEWConfig

    from emofuse.errors import EmofuseError
    from emofuse.extract.encoders import load_audio_encoder, load_text_encoder
    SEWConfig().save_pretrained(tmp_path)
    with pytest.raises(EmofuseError, match="architecture 'sew', which emofuse does not support; supported audio "
                                           "families: wav2vec2 .*Whisper encoder"):
        load_audio_encoder(str(tmp_path), device="cpu")
    from transformers import PegasusConfig
    PegasusConfig().save_pretrained(tmp_path / "pegasus")
    with pytest.raises(EmofuseError, match="is a pegasus encoder-decoder model, which emofuse does not support"):
        load_text_encoder(str(tmp_path / "pegasus"), device="cpu")


def test_hubert_with_a_positional_batch_norm_loads_and_batches_exactly(tmp_path):
    """mHuBERT-style checkpoints (``conv_pos_batch_norm``): before, loading crashed hashing the
    BatchNorm's 0-d ``num_batches_tracked``, and once loaded, the BatchNorm mapped padded frames to
    non-zero values the positional convolution carried into the real ones (batched vs one at a
    time up to 3 apart). Fine-tuning its BatchNorm is refused (its batch statistics would mix in
    padding; test_finetune.py trains it frozen)."""
    from transformers import HubertModel

    from emofuse.errors import EmofuseError
    from emofuse.extract.encoders import weights_hash
    from emofuse.testing.tiny_models import tiny_mhubert
    tiny_mhubert(tmp_path)
    enc = HFAudioEncoder(str(tmp_path), device="cpu")
    assert enc.info["weights_hash"] == weights_hash(HubertModel.from_pretrained(tmp_path))
    ws = waves(lengths=(16000, 6000, 9000))
    single = [enc.encode([w])[0] for w in ws]
    for s, b in zip(single, enc.encode(ws)):
        assert np.abs(s - b).max() <= 1e-4
    from emofuse.pipelines.finetune import Encoders, FinetuneConfig
    with pytest.raises(EmofuseError, match=r"normalises its positional convolution's input with a BatchNorm"):
        Encoders(FinetuneConfig(store="x", out="y", system="audio", audio_model=str(tmp_path)))   # trained
