"""The helpers several layers share (one home each): devices, key and seed recipes, offsets,
the encoder registry, and the untrained encoder's seeding."""

import numpy as np
import pytest
import torch

from emofuse.arrays import offsets_from_lengths
from emofuse.devices import resolve_device
from emofuse.errors import EmofuseError
from emofuse.hashing import sha256_hex, sha256_int


def test_device_resolution_is_one_rule_for_every_stage():
    from emofuse.extract import encoders, whisper
    from emofuse.pipelines import finetune, train
    assert encoders.resolve_device is whisper.resolve_device is train.resolve_device is finetune.resolve_device \
        is resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EmofuseError, match="--device must be auto, cpu, cuda or cuda:N, found 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(EmofuseError, match="--device cuda:1 was asked for, but torch .* sees no CUDA device"):
            resolve_device("cuda:1")


def test_key_and_seed_recipes_never_change():
    """Run directories, grid folders and validation draws are named by these: pinned values."""
    from emofuse.store import digest
    assert sha256_int("0/1", 4) == 4269095081            # train-head's validation draw, seed 0, session 1
    assert sha256_int("3/2/1", 7) == 44623385837424714   # finetune's seeds
    assert digest({"a": 1}) == sha256_hex('{"a":1}', 16) == "015abd7f5cc57a2d"
    assert sha256_hex("abc+def", 12) == sha256_hex(b"abc+def", 12) == "03fb0f371984"   # ablate's combine keys


def test_validation_split_still_draws_what_it_drew():
    from types import SimpleNamespace

    from emofuse.pipelines.protocol import split
    data = SimpleNamespace(sessions=np.array(["1", "2", "3"] * 10))
    tr, va, te = split(data, "1", 0, 0.1)
    key = 4269095081
    rest = np.flatnonzero(data.sessions != "1")
    perm = np.random.default_rng(key).permutation(rest)
    assert list(va) == sorted(perm[:2]) and list(tr) == sorted(perm[2:]) and list(te) == list(range(0, 30, 3))


@pytest.mark.parametrize("lengths", [[], [0], [3], [2, 0, 5, 1]])
def test_offsets_from_lengths(lengths):
    out = offsets_from_lengths(lengths)
    assert out.dtype == np.int64 and len(out) == len(lengths)
    assert list(out) == [sum(lengths[:k]) for k in range(len(lengths))]


def test_encoder_registry_by_prefix(monkeypatch):
    from emofuse.extract import encoders
    seen = []
    monkeypatch.setitem(encoders.AUDIO_KINDS, "fake:", lambda spec, device, dtype: seen.append((spec, device, dtype)))
    encoders.load_audio_encoder("fake:thing", device="cpu", dtype="float32")
    assert seen == [("fake:thing", "cpu", "float32")]
    assert encoders._kind_loader("opensmile:eGeMAPSv02", encoders.AUDIO_KINDS, None) is encoders.OpenSmileEncoder
    assert encoders._kind_loader("facebook/wav2vec2-base", encoders.AUDIO_KINDS, "hub") == "hub"
    assert encoders._kind_loader("packaged:all-MiniLM-L6-v2", encoders.TEXT_KINDS, None) is encoders.HFTextEncoder
    for cls in (encoders.HFAudioEncoder, encoders.OpenSmileEncoder, encoders.HFTextEncoder):
        assert isinstance(cls.default_stream, str) and cls.stored_dtype in (None, "float32")


def test_untrained_encoder_leaves_the_callers_random_state_alone():
    """Before: HFAudioEncoder('untrained:…') called torch.manual_seed(0), resetting the caller's
    RNG. Its weights must stay exactly those (the demo's table depends on them): pinned hash."""
    from emofuse.extract.encoders import HFAudioEncoder
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    enc = HFAudioEncoder("untrained:wav2vec2-small", device="cpu")
    assert torch.equal(torch.rand(3), expected)
    assert enc.info["weights_hash"] == "40826f6b8ad3dfe1960c0a6aa81e1482"


def test_cuda_device_comes_back_with_its_index_and_a_missing_gpu_is_one_sentence(monkeypatch):
    """Tensors report cuda:N, and torch.device("cuda") != torch.device("cuda:0"): a device without
    its index made every "rows already on the device" test fail on a GPU."""
    import torch
    from emofuse.devices import resolve_device
    from emofuse.errors import EmofuseError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 0) == resolve_device("auto")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(EmofuseError, match="has 1 CUDA device"):
        resolve_device("cuda:3")
    assert resolve_device("cpu") == torch.device("cpu")


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch, caplog):
    """Under torchrun an explicit --device cuda:0 used to put every rank of the node on GPU 0
    (extraction); now any GPU request means cuda:<LOCAL_RANK>, for extraction and fine-tuning alike."""
    import logging
    import torch
    from emofuse.devices import rank_device
    from emofuse.errors import EmofuseError
    from emofuse.pipelines import finetune
    from emofuse.pipelines.extract import distributed
    assert finetune.rank_device is distributed.rank_device is rank_device
    assert rank_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert rank_device("auto", 1) == torch.device("cpu")
        with pytest.raises(EmofuseError, match="--device cuda was asked for, but torch .* sees no CUDA device"):
            rank_device("cuda:0", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    caplog.set_level(logging.INFO, "emofuse")
    for spec in ("auto", "cuda", "cuda:2"):
        assert rank_device(spec, 2) == torch.device("cuda", 2)
    assert not caplog.records                  # local rank 2 never warns
    assert rank_device("cuda:0", 0) == torch.device("cuda", 0) and not caplog.records
    assert rank_device("cuda:1", 0) == torch.device("cuda", 0)
    assert ["each process uses its own GPU" in r.getMessage() for r in caplog.records] == [True]
    with pytest.raises(EmofuseError, match="local rank 4, but this machine has 4 CUDA device.*--nproc-per-node 4"):
        rank_device("cuda", 4)


def test_global_statistics_read_in_slices_equal_one_pass():
    """On a GPU the fold's rows are standardised from slices (the float64 copy of a whole fold
    does not fit beside the rows); the statistics are those of one pass."""
    import numpy as np
    import torch
    from emofuse.pipelines.data import MemorySource, _chunked_moments, _moments
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 50)
    rows = torch.from_numpy(rng.standard_normal((int(lengths.sum()), 3, 8)).astype(np.float16) * 4 + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    src = MemorySource(rows, offsets, lengths)
    idx = np.arange(3, 47)
    m1, s1 = _moments(src.all_rows(idx))
    m2, s2 = _chunked_moments(src, idx, per=7)
    assert torch.allclose(m1, m2, rtol=1e-6, atol=1e-6) and torch.allclose(s1, s2, rtol=1e-6, atol=1e-6)
