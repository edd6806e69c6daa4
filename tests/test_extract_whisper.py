import numpy as np
import pytest
import torch

from emofuse.align.frames import segment_frames
from emofuse.errors import EmofuseError
from emofuse.extract.encoders import load_audio_encoder
from emofuse.extract.whisper import WhisperAudioEncoder


@pytest.fixture(scope="module")
def whisper_dir(tiny_models):
    return tiny_models["whisper"]


def waves(seed=0, lengths=(16000, 5000, 12345, 700, 48000)):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


def test_default_reproduces_the_standard_pipeline(whisper_dir):
    """30 s windows: exactly transformers' encoder on the feature extractor's padded log-mel."""
    from transformers import AutoFeatureExtractor, WhisperModel
    enc = load_audio_encoder(whisper_dir, device="cpu")
    assert isinstance(enc, WhisperAudioEncoder) and enc.standard
    model = WhisperModel.from_pretrained(whisper_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(whisper_dir)
    w = waves()[2]
    with torch.no_grad():
        feats = torch.from_numpy(fe(w, sampling_rate=16000, return_tensors="np")["input_features"])
        ref = torch.stack(model.get_encoder()(feats, output_hidden_states=True).hidden_states, 2)[0].numpy()
    got = enc.encode([w])[0]
    assert ref.shape == (1500, 3, 32) and got.shape == (int(np.ceil(len(w) / 320)), 3, 32)
    assert np.abs(ref[:len(got)] - got).max() <= 1e-5
    info = enc.info
    assert (info["frame_hop_s"], info["window_s"], info["num_layers"], info["family"]) == (0.02, 30.0, 3, "Whisper encoder")
    assert info["frame_offset_s"] == -info["frame_window_s"] / 2


def test_batched_equals_single_and_long_audio_is_windowed(whisper_dir):
    enc = load_audio_encoder(whisper_dir, device="cpu")
    ws = waves() + waves(seed=1, lengths=(31 * 16000 + 123,))  # one utterance longer than 30 s
    single = [enc.encode([w])[0] for w in ws]
    batched = enc.encode(ws)
    for w, s, b in zip(ws, single, batched):
        assert s.shape == b.shape == (int(np.ceil(len(w) / 320)), 3, 32)
        assert np.abs(s - b).max() <= 1e-4
    long = ws[-1]
    assert len(batched[-1]) == 1550 + 1  # nothing truncated: 1500 frames, then the 1.0077 s tail
    tail = enc.encode([long[480000:]])[0]
    assert np.abs(batched[-1][1500:] - tail).max() <= 1e-5


def test_shorter_window_option(whisper_dir):
    fast = load_audio_encoder(whisper_dir + "#window=2", device="cpu")
    assert not fast.standard and fast.info["window_s"] == 2.0 and fast.window_samples == 32000
    ws = waves()
    out = fast.encode(ws)
    assert [len(o) for o in out] == [int(np.ceil(len(w) / 320)) for w in ws]
    # the hand-written short-window forward equals transformers' at the full window
    std = load_audio_encoder(whisper_dir, device="cpu")
    full = std.encode([ws[0]])[0]
    std.standard = False
    assert np.abs(std.encode([ws[0]])[0] - full).max() <= 1e-5
    # and a shorter window changes the activations (why it is not the default)
    assert np.abs(out[0] - full).max() > 1e-3
    for bad in ("#window=0.01", "#window=31", "#window=abc", "#size=3"):
        with pytest.raises(EmofuseError):
            load_audio_encoder(whisper_dir + bad, device="cpu")


def test_segment_frames_with_centred_frames():
    # Whisper frame t is centred on t * 20 ms: a word over [0.10, 0.20) s holds frames 5..9
    spans, clipped = segment_frames(np.array([0.10]), np.array([0.20]), 100, 0.02, 0.065, offset=-0.0325)
    assert spans.tolist() == [[5, 10]] and clipped == 0
