"""Fine-tuning (pipelines/finetune.py) on tiny random encoders saved with save_pretrained."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from emofuse.errors import EmofuseError
from emofuse.pipelines import finetune as ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(repeats=1, epochs=3, patience=5, batch_size=4, micro_batch=2, proj=16, heads=2, ff=16, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """32 utterances (2 sessions x 4 classes x 4), a store (table + frozen streams), tiny encoders."""
    from emofuse.pipelines.extract import ExtractConfig, run_extract
    from emofuse.testing import make_fake_iemocap
    from emofuse.testing.tiny_models import tiny_bert, tiny_data2vec_audio, tiny_mhubert, tiny_wav2vec2

    base = tmp_path_factory.mktemp("ft")
    counts = {s: {"ang": 4, "hap": 4, "neu": 4, "sad": 4} for s in (1, 2)}
    make_fake_iemocap(base / "iemo", counts=counts, seconds=0.4, seed=3)
    m = {"layer": tiny_wav2vec2(base / "w2v", "layer"), "group": tiny_wav2vec2(base / "w2vg", "group"),
         "d2v": tiny_data2vec_audio(base / "d2v"), "bert": tiny_bert(base / "bert"),
         "mhubert": tiny_mhubert(base / "mhubert")}
    store = str(base / "s.h5")
    run_extract(ExtractConfig(corpus="iemocap", root=str(base / "iemo"), out=store, audio_model=m["layer"],
                              text_model=m["bert"], audio_stream="w2v2-large", device="cpu"))
    return {"base": base, "store": store, **m}


def _cfg(setup, out="", **kw):
    d = dict(SMALL, store=setup["store"], out=out, audio_model=setup["layer"], text_model=setup["bert"])
    d.update(kw)
    return ft.FinetuneConfig(**d)


def _model(cfg, seed=0):
    enc = ft.Encoders(cfg)
    data = ft.load_finetune_data(cfg.store, cfg, enc)
    torch.manual_seed(seed)
    model = ft.FinetuneModel(enc, ft.build_head(cfg, enc, len(data.classes)))
    return enc, data, model


def test_the_cma_block_of_eqs_4_and_5_alone_is_trained_jointly_too(setup):
    """finetune --cma-block attention builds the paper's other reading of its CMA block (no
    feed-forward sublayer) on top of the encoders, and gradients reach it and the encoders."""
    from emofuse.heads.cma import CrossAttention
    from emofuse.heads.options import HEAD_DEFAULTS
    # the block has no feed-forward layer: --ff left at its default (another is refused)
    enc, data, model = _model(_cfg(setup, dropout=0.0, cma_block="attention", ff=HEAD_DEFAULTS["cma"]["ff"]))
    assert isinstance(model.head.fusion.cma1, CrossAttention) and isinstance(model.head.fusion.cma2, CrossAttention)
    batch = ft.collate(data, np.arange(4), torch.device("cpu"))
    torch.nn.functional.cross_entropy(model.train()(batch), batch["y"]).backward()
    for mod in (model.head.fusion, model.text.encoder, model.audio.encoder):
        assert sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.requires_grad) > 0


def test_gradients_reach_encoders_and_head_and_the_cnn_stays_frozen(setup):
    cfg = _cfg(setup, dropout=0.0)
    enc, data, model = _model(cfg)
    assert enc.options["audio_used"]["mask_time_prob"] == 0.0 and enc.options["audio_used"]["layerdrop"] == 0.0
    cnn = {k: v.clone() for k, v in model.audio.feature_extractor.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    batch = ft.collate(data, np.arange(4), torch.device("cpu"))
    torch.nn.functional.cross_entropy(model(batch), batch["y"]).backward()
    for name, mod in (("wav2vec2 context network", model.audio.encoder), ("BERT", model.text.encoder),
                      ("CMA head", model.head)):
        grads = [p.grad for p in mod.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.audio.feature_extractor.parameters())
    opt.step()
    after = model.state_dict()
    for k, v in model.audio.feature_extractor.state_dict().items():
        assert torch.equal(v, cnn[k]), k
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("audio.encoder.layers") for k in changed)
    assert any(k.startswith("text.encoder.layer") for k in changed)
    assert any(k.startswith("head.") for k in changed)


@pytest.mark.parametrize("kind,freeze", [("layer", "cnn"), ("group", "cnn"), ("d2v", "cnn"),
                                         ("mhubert", "audio-layers:1"), ("mhubert", "audio")])
def test_padded_batch_equals_one_at_a_time(setup, kind, freeze):
    """Loss and gradients of a padded batch = the sum over its utterances alone (eval mode: no
    dropout, BatchNorm on running statistics), within 1e-5. data2vec-audio: before, its stack of
    positional convolutions read the padding (logits 2.7e-3 apart). mHuBERT (a BatchNorm before
    the positional convolution), frozen beneath its blocks: before, refused."""
    cfg = _cfg(setup, audio_model=setup[kind], freeze=freeze)
    enc, data, model = _model(cfg)
    model.eval()
    by_len = {len(t): i for i, t in enumerate(data.tokens)}   # transcripts of different lengths
    idx = np.array(sorted(set(list(by_len.values())[:3]) | {0, 9}))
    assert len({len(data.waves[i]) for i in idx}) > 1 and len({len(data.tokens[i]) for i in idx}) > 1
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(parts):
        model.zero_grad()
        total = 0
        for p in parts:
            b = ft.collate(data, p, torch.device("cpu"))
            loss = torch.nn.functional.cross_entropy(model(b), b["y"], reduction="sum")
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in params]

    l1, g1 = loss_and_grads([idx])
    l2, g2 = loss_and_grads([idx[i:i + 1] for i in range(len(idx))])
    assert abs(l1 - l2) < 1e-5 * max(1, abs(l1))
    worst = max(float((a - b).abs().max()) for a, b in zip(g1, g2))
    assert worst < 1e-5, worst


def test_fine_tuned_runs_key_both_results_versions_and_record_what_they_used(setup):
    """A fix to finetune's own code (FINETUNE_RESULTS_VERSION) or to what it shares with train-head
    (RESULTS_VERSION) re-keys fine-tuned runs; the encoders' dropout rates are recorded."""
    from emofuse.pipelines import rundir
    assert _cfg(setup).identity()["results_version"] == f"{rundir.RESULTS_VERSION}.{rundir.FINETUNE_RESULTS_VERSION}"
    enc = ft.Encoders(_cfg(setup))
    assert set(ft.AUDIO_DROPOUTS) <= set(enc.options["audio_used"]) and enc.options["audio_used"]["hidden_dropout"] > 0
    assert enc.options["audio_checkpoint"]["apply_spec_augment"] is not None
    assert set(ft.TEXT_DROPOUTS) <= set(enc.options["text_used"])


def test_checkpoint_training_options_are_reproducible_from_the_seed(setup):
    """--training-options checkpoint: transformers draws SpecAugment's masks with numpy's global
    generator. Before, nothing seeded it: the same seed gave another loss in every process."""
    cfg = _cfg(setup, system="audio", training_options="checkpoint")
    losses = []
    for draw in range(2):
        enc, data, model = _model(cfg)
        assert enc.options["audio_used"]["mask_time_prob"] > 0   # the tiny checkpoint masks
        model.train()
        np.random.seed(draw)   # whatever drew from numpy before
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        losses.append([float(ft.train_step(model, model, opt, data, np.arange(8), cfg, torch.device("cpu"), s))
                       for s in range(3)])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("kind,options", [("layer", "off"), ("group", "off"), ("group", "checkpoint")])
def test_freezing_the_first_blocks_freezes_what_lies_beneath_them(setup, kind, options):
    """--freeze audio-layers:N: before, the positional convolution (and a post-LN model's LayerNorm
    before the first block, and with the checkpoint's options the mask embedding) below the
    frozen blocks still trained."""
    cfg = _cfg(setup, system="audio", audio_model=setup[kind], freeze="cnn,audio-layers:2",   # both blocks
               training_options=options)
    enc, _, model = _model(cfg)
    trained = [n for n, p in model.audio.named_parameters() if p.requires_grad]
    # large-style (stable) models normalise after the last block: that LayerNorm is above the frozen ones
    assert trained == (["encoder.layer_norm.weight", "encoder.layer_norm.bias"] if kind == "layer" else [])


def test_frozen_encoders_run_in_eval_mode_while_the_rest_trains(setup):
    """--freeze audio,text is the frozen system: before, the frozen encoders kept their dropout on."""
    cfg = _cfg(setup, freeze="cnn,audio,text")
    enc, data, model = _model(cfg)
    model.train()
    assert model.head.training and not model.audio.training and not model.text.training
    assert not any(m.training for m in model.audio.modules()) and not any(m.training for m in model.text.modules())
    assert all(v in (0.0, None) for v in enc.options["audio_used"].values())
    assert all(v in (0.0, None) for v in enc.options["text_used"].values())
    b = ft.collate(data, np.arange(4), torch.device("cpu"))
    with torch.no_grad():   # the encoders' outputs do not depend on the draw
        torch.manual_seed(1)
        a1 = model.audio(b["audio"]).last_hidden_state
        torch.manual_seed(2)
        a2 = model.audio(b["audio"]).last_hidden_state
    assert torch.equal(a1, a2)
    part = _cfg(setup, freeze="cnn,text-layers:1")
    _, _, model = _model(part)
    model.train()
    assert not model.text.embeddings.training and not model.text.encoder.layer[0].training
    assert model.text.encoder.layer[1].training and model.audio.encoder.training


def test_accumulated_micro_batches_equal_one_batch(setup):
    """train_step with one micro-batch of 4 and two of 2 (gradient accumulation) gives the same
    step when nothing depends on the micro-batch: the text system (no BatchNorm), dropout off.
    (BatchNorm's batch statistics do depend on it: micro_batch is part of the run key.)"""
    cfg1 = _cfg(setup, system="text", dropout=0.0, micro_batch=4)
    cfg2 = replace(cfg1, micro_batch=2)
    out = []
    for cfg in (cfg1, cfg2):
        enc, data, model = _model(cfg)
        model.train()
        model.text.eval()   # BERT's own dropout off
        # plain SGD, lr 1: the step is the gradient (Adam's first step is ~sign(g), which amplifies noise)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        loss = ft.train_step(model, model, opt, data, np.array([0, 5, 9, 14]), cfg, torch.device("cpu"), 7)
        out.append((loss, {k: v.clone() for k, v in model.state_dict().items()}))
    assert abs(out[0][0] - out[1][0]) < 1e-5
    for k in out[0][1]:
        assert torch.allclose(out[0][1][k], out[1][1][k], atol=1e-5), k


@pytest.mark.parametrize("system", ["cma", "audio"])
def test_uneven_micro_batches_weight_utterances_not_micro_batches(setup, system):
    """The joint and audio systems, cut into uneven micro-batches (3 + 3 + 1, and by a padded-seconds
    cap), give the gradient of one pass over the global batch: the mean loss over its utterances,
    not over micro-batches. The head's BatchNorm is held in eval mode here (its batch statistics do
    depend on the cut: micro_batch is part of the run key), and dropout is off. (The fine-tuning
    audit of 2026-11-25 found this right; the test above covers only the text system, evenly cut.)"""
    class Captured(torch.optim.Optimizer):   # keeps the step's gradients instead of stepping
        def __init__(self, params):
            super().__init__(params, {})
            self.grads = None

        def step(self, closure=None):
            self.grads = [p.grad.clone() for g in self.param_groups for p in g["params"]]

    dev = torch.device("cpu")
    idx = np.array([0, 5, 9, 14, 2, 7, 11])
    for extra in ({"micro_batch": 3}, {"micro_batch": 8, "micro_batch_seconds": 1.0}):
        cfg = _cfg(setup, system=system, dropout=0.0, batch_size=8, **extra)   # 7 utterances: a partial batch
        _, data, model = _model(cfg)
        model.train()
        for m in [model.audio, model.text, *ft._bns(model)]:
            if m is not None:
                m.eval()   # the encoders' dropout off, the head's BatchNorm on its running statistics
        params = [p for p in model.parameters() if p.requires_grad]
        batch = ft.collate(data, idx, dev)
        torch.nn.functional.cross_entropy(model(batch), batch["y"]).backward()
        want = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
        sizes = [len(m) for m in ft.micro_batches(idx, data.seconds, cfg.micro_batch, True, cfg.micro_batch_seconds)]
        assert len(sizes) > 1 and len(set(sizes)) > 1, sizes   # really cut, and unevenly
        opt = Captured(params)
        ft.train_step(model, model, opt, data, idx, cfg, dev, 3)
        for w, g in zip(want, opt.grads):
            assert torch.allclose(w, g, atol=1e-6, rtol=1e-4)


def test_micro_batches_under_a_padded_seconds_cap():
    secs = np.array([1.0, 9.0, 2.0, 4.0, 3.0, 1.5, 30.0, 2.5])
    idx = np.arange(8)
    assert [m.tolist() for m in ft.micro_batches(idx, secs, 3)] == [[6, 1, 3], [4, 7, 2], [5, 0]]
    got = ft.micro_batches(idx, secs, 4, max_seconds=10.0)
    # longest first; each micro-batch's utterances × its longest ≤ 10 s, at most 4; 30 s goes alone
    assert [m.tolist() for m in got] == [[6], [1], [3, 4], [7, 2, 5, 0]]
    assert sorted(np.concatenate(got).tolist()) == idx.tolist()
    for m in got:
        assert len(m) == 1 or len(m) * secs[m].max() <= 10.0


def test_a_padded_seconds_cap_keys_only_when_set_and_only_where_there_is_audio(setup):
    """Left at 0 the cap stays out of the run key (older keys stay valid). The text system has no
    audio: before, its token counts were capped as seconds (other micro-batches, other dropout
    draws, another key); now it ignores the cap. (That a cap only re-cuts the accumulation of one
    step: test_accumulated_micro_batches_equal_one_batch; how it cuts: the test above.)"""
    cfg1 = _cfg(setup, system="audio", micro_batch=4)
    cfg2 = replace(cfg1, micro_batch_seconds=float(1e-3))   # every utterance alone
    assert "micro_batch_seconds" not in cfg1.identity() and cfg2.identity()["micro_batch_seconds"] == 1e-3
    assert ft._audio_cap(cfg2) == 1e-3
    text = replace(cfg1, system="text")
    assert replace(text, micro_batch_seconds=1e-3).identity() == text.identity()
    assert ft._audio_cap(replace(text, micro_batch_seconds=1e-3)) == 0.0
    # an integer from a spec keys as the same number from the command line
    from emofuse.pipelines.ablate import run_key
    assert (run_key(replace(cfg1, micro_batch_seconds=480).identity(), {}) ==
            run_key(replace(cfg1, micro_batch_seconds=480.0).identity(), {}))
    assert isinstance(replace(cfg1, micro_batch_seconds=480).micro_batch_seconds, float)
    with pytest.raises(EmofuseError, match="--micro-batch-seconds must be 0"):
        replace(cfg1, micro_batch_seconds=-1.0)


def test_compiled_blocks_train_the_same_step(setup):
    """--compile: every transformer block compiled in place (traced by dynamo with dynamic shapes;
    the aot_eager backend here, no C compiler needed) gives the eager step's loss and weights over
    two micro-batches of different lengths, the parameter names unchanged."""
    cfg = _cfg(setup, dropout=0.0, micro_batch=2)
    out = []
    for compiled in (False, True):
        enc, data, model = _model(cfg)
        names = [n for n, _ in model.named_parameters()]
        if compiled:
            assert ft.compile_blocks(enc.audio, enc.text, backend="aot_eager") == (
                len(enc.audio.encoder.layers) + len(enc.text.encoder.layer))
            assert [n for n, _ in model.named_parameters()] == names
        model.train()
        model.audio.eval()
        model.text.eval()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        from torch._dynamo.utils import counters
        counters.clear()
        loss = ft.train_step(model, model, opt, data, np.array([0, 5, 9, 14]), cfg, torch.device("cpu"), 7)
        out.append((float(loss), {k: v.clone() for k, v in model.state_dict().items()}))
        if compiled:   # the blocks really ran compiled: graphs were captured, none fell back
            assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert abs(out[0][0] - out[1][0]) < 1e-5
    for k in out[0][1]:
        assert torch.allclose(out[0][1][k], out[1][1][k], atol=1e-5), k


def test_overfits_32_utterances(setup):
    cfg = _cfg(setup, dropout=0.0, lr=5e-3, batch_size=32, micro_batch=32)
    enc, data, model = _model(cfg)
    assert len(data.ids) == 32
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    idx = np.arange(32)
    losses = []
    for step in range(30):
        model.train()
        losses.append(ft.train_step(model, model, opt, data, idx, cfg, torch.device("cpu"), step))
        if losses[-1] < 0.1:
            break
    acc = (ft.predict(model, data, idx, cfg, torch.device("cpu")).argmax(1) == data.y).mean()
    assert losses[-1] < 0.1 < losses[0] and acc == 1.0, (losses, acc)
    assert len(losses) < 30


def _metrics(out):
    runs = {}
    for d in sorted(os.listdir(os.path.join(out, "runs"))):
        with open(os.path.join(out, "runs", d, "metrics.json")) as f:
            runs[d] = json.load(f)
    return runs


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "emofuse", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _args(setup, out, system="cma"):
    return ["finetune", "--store", setup["store"], "--out", str(out), "--system", system, "--audio-model",
            setup["layer"], "--text-model", setup["bert"], "--repeats", "1", "--epochs", "3", "--patience", "5",
            "--batch-size", "4", "--micro-batch", "2", "--proj", "16", "--heads", "2", "--ff", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """One uninterrupted run, in this process (threads as set by the test run)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    torch.set_num_threads(1)
    ft.run_finetune(_cfg(setup, out=str(out)))
    return out


def test_run_layout_same_seed_identical_and_head_reloads(setup, reference, tmp_path):
    for name in ("config.json", "summary.json", "predictions.csv", "runs/r0_s1/metrics.json",
                 "runs/r0_s1/predictions.csv", "runs/r0_s1/model.safetensors"):
        assert os.path.exists(os.path.join(reference, name)), name
    assert not os.path.exists(os.path.join(reference, "runs/r0_s1/checkpoint.pt"))
    with open(os.path.join(reference, "config.json")) as f:
        config = json.load(f)
    assert config["training_options"]["audio_used"]["layerdrop"] == 0.0
    assert config["frozen_parameters"]["audio"]["frozen"] > 0
    again = tmp_path / "again"
    ft.run_finetune(_cfg(setup, out=str(again)))
    assert _metrics(again) == _metrics(reference)
    assert {m["cpu_threads"] for m in _metrics(again).values()} == {torch.get_num_threads()}   # as train-head's
    # the saved head + the pretrained encoders it was trained with are not enough to reproduce the
    # logits (the encoders were fine-tuned too): the run saves them on request and they reload
    enc_out = tmp_path / "enc"
    cfg = _cfg(setup, out=str(enc_out), save_encoders=True, folds=("1",), epochs=1)
    ft.run_finetune(cfg)
    from safetensors.torch import load_file
    rdir = enc_out / "runs" / "r0_s1"
    # each folder a whole checkpoint (before: no preprocessor or tokenizer, so the text folder could
    # not be a --text-model, and the audio one fell back to a default preprocessor)
    assert (rdir / "audio_encoder" / "preprocessor_config.json").exists()
    assert (rdir / "text_encoder" / "tokenizer.json").exists()
    enc = ft.Encoders(replace(cfg, audio_model=str(rdir / "audio_encoder"), text_model=str(rdir / "text_encoder")))
    assert "audio_preprocessing_default" not in enc.options
    data = ft.load_finetune_data(cfg.store, cfg, enc)
    model = ft.FinetuneModel(enc, ft.build_head(cfg, enc, len(data.classes)))
    model.head.load_state_dict(load_file(rdir / "model.safetensors"))
    p = pd.read_csv(rdir / "predictions.csv", dtype={"fold": str})
    idx = np.array([list(data.ids).index(i) for i in p["id"]])
    logits = ft.predict(model, data, idx, cfg, torch.device("cpu"))
    assert np.allclose(logits, p[[c for c in p.columns if c.startswith("logit_")]].to_numpy(), atol=1e-4)


def test_sigkill_and_resume_equals_uninterrupted(setup, reference, tmp_path):
    out = tmp_path / "killed"
    proc = _cli(_args(setup, out))
    ckpt = out / "runs" / "r0_s1" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in 120 s"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill landed"
    assert not (out / "summary.json").exists()
    done = _cli(_args(setup, out))
    log = done.communicate()[0]
    assert done.returncode == 0, log
    assert "resumed after epoch" in log
    assert _metrics(out) == _metrics(reference)
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(setup, reference, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "emofuse", *_args(setup, out)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out / "config.json") as f:
        assert json.load(f)["world_size"] == 2
    a = pd.read_csv(reference / "predictions.csv", dtype={"fold": str})
    b = pd.read_csv(out / "predictions.csv", dtype={"fold": str})
    cols = [c for c in a.columns if c.startswith("logit_")]
    assert list(a["id"]) == list(b["id"])
    assert np.allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-4), np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max()
    ha, hb = _metrics(reference), _metrics(out)
    for k in ha:
        for ea, eb in zip(ha[k]["history"], hb[k]["history"]):
            assert abs(ea["train_loss"] - eb["train_loss"]) < 1e-4 and abs(ea["val_loss"] - eb["val_loss"]) < 1e-4


def test_bad_input_gets_one_sentence(setup, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmofuseError, match="not a loadable transformers checkpoint"):
        ft.Encoders(_cfg(setup, audio_model=str(tmp_path / "empty")))
    # a text model with a slow (Python) tokenizer only
    import types

    import transformers
    slow = types.SimpleNamespace(is_fast=False, model_max_length=512)   # what a Python-only tokenizer reports
    real = transformers.AutoTokenizer.from_pretrained
    transformers.AutoTokenizer.from_pretrained = lambda *a, **k: slow
    try:
        with pytest.raises(EmofuseError, match="has no fast tokenizer"):
            ft.Encoders(_cfg(setup, system="text"))
    finally:
        transformers.AutoTokenizer.from_pretrained = real
    with pytest.raises(EmofuseError, match="longer than|more than --max-audio-s"):
        cfg = _cfg(setup, system="audio", max_audio_s=0.1)
        ft.load_finetune_data(cfg.store, cfg, ft.Encoders(cfg))
    enc = ft.Encoders(_cfg(setup, system="text"))
    enc.max_tokens = 3
    with pytest.raises(EmofuseError, match="refuses it rather than cutting"):
        ft.load_finetune_data(setup["store"], _cfg(setup, system="text"), enc)
    # out of device memory: one sentence naming the micro-batch size, the epoch checkpoint kept
    cfg = _cfg(setup, system="text", micro_batch=2)
    enc, data, model = _model(cfg)

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model.head.fuse = boom
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(EmofuseError, match=r"micro-batch of 2 utterances; lower --micro-batch \(now 2"):
        ft.train_step(model, model, opt, data, np.arange(4), cfg, torch.device("cpu"), 0)
    with pytest.raises(EmofuseError, match="--freeze"):
        _cfg(setup, freeze="cnn,everything")
    # before: accepted, freezing what :2 freezes under another run key
    for kind in ("audio", "text"):
        with pytest.raises(EmofuseError, match=rf"--freeze {kind}-layers:99: the {kind} model has 2 transformer "
                                               rf"blocks; freeze at most that many"):
            ft.Encoders(_cfg(setup, freeze=f"cnn,{kind}-layers:99"))
    ft.Encoders(_cfg(setup, freeze="cnn,audio-layers:2,text-layers:2"))   # every block: accepted
    with pytest.raises(EmofuseError, match="needs --text-model"):
        _cfg(setup, text_model=None)


def test_a_text_model_with_its_blocks_elsewhere_trains_and_refuses_freezing_some_blocks(setup, tmp_path):
    """GPT-2 keeps its blocks in ``h``, not ``encoder.layer``: the check of --freeze text-layers:N
    crashed every such text model (AttributeError) even with no block frozen; now it trains, and
    freezing its first blocks is refused in one sentence (before: AttributeError on embeddings)."""
    from emofuse.testing.tiny_models import tiny_gpt2
    gpt2 = tiny_gpt2(tmp_path / "gpt2")
    enc = ft.Encoders(_cfg(setup, system="text", text_model=gpt2))
    assert not any(m is enc.text for m in enc.frozen)
    with pytest.raises(EmofuseError, match=r"--freeze text-layers:1: GPT2Model keeps its blocks elsewhere"):
        ft.Encoders(_cfg(setup, system="text", text_model=gpt2, freeze="cnn,text-layers:1"))
    ft.Encoders(_cfg(setup, system="text", text_model=gpt2, freeze="cnn,text"))   # the whole model: accepted


def test_ablate_runs_the_three_fine_tuned_rows_of_paper_cma(setup, tmp_path):
    from emofuse.pipelines.ablate import AblateConfig, load_spec, run_ablate

    spec = load_spec("paper-cma")
    tuned = [r for r in spec["_labels"].values() if r.get("finetune")]
    assert sorted(r["published"] for r in tuned) == [60.01, 71.01, 74.71]
    cfg = AblateConfig(store=setup["store"], spec="paper-cma", out=str(tmp_path / "g"), device="cpu", repeats=1,
                       epochs=1, folds=("1",))
    res = run_ablate(cfg)   # without --finetune: frozen rows only, no failure
    assert len(res["cma"]) == 5
    res = run_ablate(replace(cfg, finetune=True, audio_model=setup["layer"], text_model=setup["bert"]))
    df = res["cma"]
    assert len(df) == 8 and df["ua_mean"].notna().all()
    assert set(df["published"].dropna()) >= {74.71, 60.01, 71.01}


def test_ablate_passes_how_options_to_fine_tuned_rows_without_changing_their_keys(setup, tmp_path, monkeypatch):
    """ablate --grad-checkpointing / --compile reach the fine-tuned rows' configurations and leave
    their run keys (the row folders) as they are: they change how, not what, is computed."""
    from emofuse.pipelines.ablate import AblateConfig, run_ablate
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 1, folds: ['1'], batch_size: 8, "
                    "proj: 16}\ntables:\n  - name: x\n    rows:\n      - {label: text, finetune: true, system: text}\n")
    seen = []
    monkeypatch.setattr(ft, "run_finetune", lambda c: seen.append(c))
    base = AblateConfig(store=setup["store"], spec=str(spec), out=str(tmp_path / "g"), device="cpu", finetune=True,
                        text_model=setup["bert"])
    run_ablate(base)
    run_ablate(replace(base, grad_checkpointing=True, compile=True))
    assert [(c.grad_checkpointing, c.compile) for c in seen] == [(False, False), (True, True)]
    assert seen[0].out == seen[1].out


def test_new_weights_under_the_same_folder_are_another_run(setup, tmp_path, caplog):
    """Before: a run was keyed by the checkpoint's name, so new weights saved under the same folder
    got the old folds back as their results, from finetune and from ablate alike."""
    import logging
    import shutil
    from emofuse.pipelines.ablate import AblateConfig, run_ablate
    from emofuse.testing.tiny_models import tiny_bert
    bert = str(tmp_path / "bert")
    shutil.copytree(setup["bert"], bert)
    cfg = _cfg(setup, out=str(tmp_path / "run"), system="text", text_model=bert, epochs=1, folds=("1",))
    ft.run_finetune(cfg)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 1, folds: ['1'], batch_size: 8, "
                    "proj: 16}\ntables:\n  - name: x\n    rows:\n      - {label: text, finetune: true, system: text}\n")
    acfg = AblateConfig(store=setup["store"], spec=str(spec), out=str(tmp_path / "g"), device="cpu", finetune=True,
                        text_model=bert)
    first = run_ablate(acfg)["x"]
    shutil.rmtree(bert)
    tiny_bert(bert, seed=7)   # other weights, same folder, same name
    with pytest.raises(EmofuseError, match=r"another configuration \(differs in encoder checkpoint files "
                                           r"\(text_checkpoint\)\)"):
        ft.run_finetune(cfg)
    caplog.set_level(logging.INFO, "emofuse")
    second = run_ablate(acfg)["x"]
    assert any("1 configurations, 0 already finished, 1 to run (1 fine-tuned)" in r.getMessage() for r in caplog.records)
    assert first["ua_mean"].notna().all() and second["ua_mean"].notna().all()
    assert len(os.listdir(tmp_path / "g" / "runs")) == 2   # a new row folder, the old one kept


def test_positional_convolution_as_matmul_equals_the_convolution(tiny_models):
    """--pos-conv matmul: the grouped convolution unfolded into batched products gives the
    convolution's values and gradients (float64: to the last bits), and switches exactly the
    wav2vec2 positional convolution of a loaded model, leaving its parameters and names alone."""
    import torch.nn.functional as F
    from transformers import AutoModel
    from emofuse.extract.posconv import grouped_conv1d_matmul, use_matmul_pos_conv
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 50, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(64, 16, 16, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(64, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(3, 64, 51, dtype=torch.float64, generator=g)
    y1 = F.conv1d(x, w, b, padding=8, groups=4)
    y2 = grouped_conv1d_matmul(x, w, b, 8, 4)
    assert y1.shape == y2.shape and torch.allclose(y1, y2, rtol=0, atol=1e-12)
    for a, c in zip(torch.autograd.grad((y1 * up).sum(), (x, w, b)), torch.autograd.grad((y2 * up).sum(), (x, w, b))):
        assert torch.allclose(a, c, rtol=0, atol=1e-11)
    model = AutoModel.from_pretrained(tiny_models["group"]).double().eval()
    names = [n for n, _ in model.named_parameters()]
    wave = torch.randn(2, 8000, dtype=torch.float64, generator=g)
    before = model(wave).last_hidden_state
    assert use_matmul_pos_conv(model) == 1 and [n for n, _ in model.named_parameters()] == names
    assert torch.allclose(model(wave).last_hidden_state, before, rtol=0, atol=1e-10)
    assert use_matmul_pos_conv(AutoModel.from_pretrained(tiny_models["bert"])) == 0
    with pytest.raises(EmofuseError, match="--pos-conv must be conv or matmul"):
        ft.FinetuneConfig(store="s.h5", out="o", audio_model="a", text_model="t", pos_conv="fft")


def test_changed_or_missing_audio_is_refused_before_training(setup, tmp_path):
    """Before: the wavs were read from the store's paths unchecked, so changed audio was trained on
    silently (new --out) or an existing --out reused folds trained on the old audio, and a wav gone
    after fold 1 left later folds on another utterance set. Now: one sentence, nothing trained."""
    import soundfile as sf
    from emofuse.store import FeatureStore
    cfg = _cfg(setup, out=str(tmp_path / "run"), system="audio", epochs=1, folds=("1",))
    ft.run_finetune(cfg)
    with FeatureStore(setup["store"]) as fs:
        table = fs.utterances
    uid = next(i for i in table.index if str(table.at[i, "session"]) == "2")   # a training utterance of fold 1
    wav = str(table.at[uid, "audio_path"])
    saved = open(wav, "rb").read()
    x, sr = sf.read(wav)
    fresh = tmp_path / "fresh"
    try:
        sf.write(wav, np.random.default_rng(0).standard_normal(len(x)) * 0.1, sr)   # re-recorded: same length
        changed = rf"1 utterances differ from the store \(1 audio content changed; e\.g\. {uid}: audio content changed"
        for out in (cfg.out, str(fresh)):
            with pytest.raises(EmofuseError, match=changed + r".*--update-corpus"):
                ft.run_finetune(replace(cfg, out=out))
        assert not fresh.exists()   # refused before anything is written
        with pytest.raises(EmofuseError, match=changed):
            ft.load_finetune_data(cfg.store, cfg, ft.Encoders(cfg))
        os.remove(wav)   # gone between folds: a resumed run would train the next folds without it
        missing = rf"1 utterances differ from the store \(1 audio file missing or unreadable; e\.g\. {uid}: "
        with pytest.raises(EmofuseError, match=missing + rf"audio file missing or unreadable \({re.escape(wav)}\)"):
            ft.run_finetune(replace(cfg, folds=("1", "2")))
    finally:
        with open(wav, "wb") as f:
            f.write(saved)
    ft.check_audio(setup["store"], table)   # the same bytes again: accepted
    # a file extraction could not read (no digest) that still cannot be read is no change: left out as before
    gone = table.copy()
    gone.loc[uid, ["audio_path", "audio_digest"]] = [str(tmp_path / "never.wav"), ""]
    ft.check_audio(setup["store"], gone)
    gone.loc[uid, "audio_digest"] = table.at[uid, "audio_digest"]
    with pytest.raises(EmofuseError, match="1 utterances differ"):
        ft.check_audio(setup["store"], gone)
    # the text system reads no audio: not checked
    assert len(ft.load_finetune_data(cfg.store, replace(cfg, system="text"),
                                     ft.Encoders(replace(cfg, system="text"))).ids) == 32


def test_a_moved_corpus_is_found_with_root(setup, tmp_path):
    """Before: finetune read each wav where extraction found it, so a corpus moved since then was
    refused as missing with no way on but re-running extract-embeddings. Now --root names the new
    folder: the same wavs (digests still checked), the same run key, the same data."""
    cfg = _cfg(setup, system="audio")
    enc = ft.Encoders(cfg)
    before = ft.load_finetune_data(cfg.store, cfg, enc)
    old, new = setup["base"] / "iemo", tmp_path / "moved"
    os.rename(old, new)
    try:
        with pytest.raises(EmofuseError, match=r"32 utterances differ .*audio file missing.*pass --root of the folder"):
            ft.load_finetune_data(cfg.store, cfg, enc)
        moved = replace(cfg, root=str(new))
        assert moved.identity() == cfg.identity()   # where the corpus lies is no part of the run key
        after = ft.load_finetune_data(cfg.store, moved, enc)
        assert list(after.ids) == list(before.ids) and all(np.array_equal(a, b) for a, b in zip(after.waves, before.waves))
        with pytest.raises(EmofuseError, match=r"--root .*nowhere is not a folder"):
            ft.load_finetune_data(cfg.store, replace(cfg, root=str(tmp_path / "nowhere")), enc)
    finally:
        os.rename(new, old)


def test_a_checkpoint_folder_is_keyed_by_its_bytes_not_its_path_spelling(setup, tmp_path, monkeypatch):
    """Before: the same checkpoint folder named by a relative path (or moved) was 'another
    configuration' and a finished fine-tuning was refused or trained again."""
    cfg = _cfg(setup, system="audio")
    monkeypatch.chdir(os.path.dirname(setup["layer"]))
    rel = replace(cfg, audio_model=os.path.basename(setup["layer"]))
    assert rel.identity() == cfg.identity() and rel.identity()["audio_model"] is None
    moved = tmp_path / "moved-w2v"
    shutil.copytree(setup["layer"], moved)
    assert replace(cfg, audio_model=str(moved)).identity() == cfg.identity()
    assert replace(cfg, audio_model="facebook/wav2vec2-large-lv60").identity()["audio_model"] == \
        "facebook/wav2vec2-large-lv60"   # a hub id is a name: kept
    # a run folder recorded before (the path in its identity) resumes: its config is read as keyed now
    from emofuse.pipelines.rundir import check_run_dir
    older = {**cfg.identity(), "audio_model": cfg.audio_model}
    (tmp_path / "config.json").write_text(json.dumps({"type": "emofuse.train-head", "identity": older,
                                                      "fingerprints": {}, "config": asdict(cfg)}, default=list))
    now = {"type": "emofuse.train-head", "identity": json.loads(json.dumps(cfg.identity())), "fingerprints": {}}
    check_run_dir(str(tmp_path), now, lambda c: ft.FinetuneConfig(**c).identity())


def test_saved_group_norm_encoder_reloads_as_trained(setup, tmp_path):
    """--save-encoders on a group-norm wav2vec2: before, the first conv layer's GroupNorm was saved
    under the MaskedGroupNorm's names (layer_norm.norm.*) and from_pretrained re-initialised it."""
    from emofuse.extract.masking import MaskedGroupNorm
    cfg = _cfg(setup, system="audio", audio_model=setup["group"])
    enc = ft.Encoders(cfg)
    model = ft.FinetuneModel(enc, ft.build_head(cfg, enc, 4))
    # "trained": every weight moved, the GroupNorm's affine ones included
    _train_save_and_reload(model, tmp_path, lambda k: k.replace(".layer_norm.norm.", ".layer_norm."), batch=2)
    assert isinstance(model.audio.feature_extractor.conv_layers[0].layer_norm, MaskedGroupNorm)   # put back


def _train_save_and_reload(model, tmp_path, saved_name=lambda k: k, batch: int = 1) -> None:
    """Move every audio weight ("trained"), save the encoders, reload the audio one with
    transformers: the same weights under the checkpoint's own names (``saved_name`` of ours) and
    the same output on ``batch`` random waves."""
    from transformers import AutoModel
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.audio.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ft.save_encoders(model, str(tmp_path))
    reloaded = AutoModel.from_pretrained(tmp_path / "audio_encoder").eval()
    trained = {saved_name(k): v for k, v in model.audio.state_dict().items()}
    got = reloaded.state_dict()
    assert sorted(got) == sorted(trained)
    for k in trained:
        assert torch.equal(got[k], trained[k]), k
    wave = torch.randn(batch, 8000, generator=g)
    with torch.no_grad():
        assert torch.equal(reloaded(wave).last_hidden_state, model.audio.eval()(wave).last_hidden_state)


def test_mhubert_trains_only_with_its_positional_batch_norm_frozen_and_saves_under_its_own_names(setup, tmp_path):
    """Trained, a BatchNorm's batch statistics would mix in padding: refused. Frozen, it runs on
    its running statistics (MaskedBatchNorm zeroes the padding after it), and --save-encoders
    writes it under the checkpoint's names (batch_norm.*, not batch_norm.norm.*)."""
    from emofuse.extract.masking import MaskedBatchNorm
    with pytest.raises(EmofuseError, match=r"BatchNorm .* freeze it \(--freeze audio, or audio-layers:N"):
        ft.Encoders(_cfg(setup, system="audio", audio_model=setup["mhubert"]))
    cfg = _cfg(setup, system="audio", audio_model=setup["mhubert"], freeze="audio-layers:1")
    enc = ft.Encoders(cfg)
    model = ft.FinetuneModel(enc, ft.build_head(cfg, enc, 4))
    assert isinstance(model.audio.encoder.pos_conv_embed.batch_norm, MaskedBatchNorm)
    assert not any(p.requires_grad for p in model.audio.encoder.pos_conv_embed.parameters())
    model.train()
    assert not model.audio.encoder.pos_conv_embed.training and model.audio.encoder.layers[1].training
    assert model.audio.encoder.pos_conv_embed.batch_norm.norm not in ft._bns(model) and ft._bns(model)   # head's kept
    plain = lambda k: k.replace(".batch_norm.norm.", ".batch_norm.").replace(".layer_norm.norm.", ".layer_norm.")  # noqa: E731
    _train_save_and_reload(model, tmp_path, plain, batch=2)
    assert isinstance(model.audio.encoder.pos_conv_embed.batch_norm, MaskedBatchNorm)   # put back


def test_saved_data2vec_encoder_reloads_as_trained(setup, tmp_path):
    """data2vec-audio trains with its positional convolutions wrapped (MaskedConvStack, padding
    zeroed between them): saved, it reloads under the checkpoint's own names and computes the same."""
    from emofuse.extract.masking import MaskedConvStack
    cfg = _cfg(setup, system="audio", audio_model=setup["d2v"])
    enc = ft.Encoders(cfg)
    model = ft.FinetuneModel(enc, ft.build_head(cfg, enc, 4))
    assert isinstance(model.audio.encoder.pos_conv_embed, MaskedConvStack)
    _train_save_and_reload(model, tmp_path)


def test_a_second_run_on_the_same_out_is_refused(setup, tmp_path):
    from emofuse.pipelines.rundir import run_lock
    out = tmp_path / "run"
    with run_lock(str(out), "finetune"):
        with pytest.raises(EmofuseError, match=rf"{out} is in use: process {os.getpid()} on \S+ is running finetune "
                                               rf"there \(it holds {out}/run.lock\); wait for it to finish or choose"):
            ft.run_finetune(_cfg(setup, out=str(out), system="text", epochs=1, folds=("1",)))
        assert sorted(os.listdir(out)) == ["run.lock"]   # nothing written by the refused run


def test_resume_from_finished_folds_equals_uninterrupted_byte_for_byte(setup, reference, tmp_path):
    """Before: a reused fold read back from its CSV was float64 and a fresh one float32, so the
    resumed run's predictions.csv printed other digits than the uninterrupted run's."""
    import shutil
    out = tmp_path / "resumed"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "runs" / "r0_s2")
    for name in ("predictions.csv", "summary.json"):
        os.remove(out / name)
    ft.run_finetune(_cfg(setup, out=str(out)))
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    for name in ("predictions.csv", "metrics.json"):
        assert (out / "runs" / "r0_s2" / name).read_bytes() == (reference / "runs" / "r0_s2" / name).read_bytes()
    with open(out / "summary.json") as f, open(reference / "summary.json") as g:
        a, b = json.load(f), json.load(g)
    assert a["runs"] == b["runs"] and a["ua"] == b["ua"]


def test_ablate_passes_root_to_fine_tuned_rows_outside_their_key():
    """`ablate --root` reaches a fine-tuned row (the check_audio message names --root), and where
    the corpus lies is no part of its key."""
    row = {"finetune": True, "system": "text", "text_model": "bert-base-uncased"}
    here = ft.ablate_config("s.h5", "o", {}, row, "cpu")
    moved = ft.ablate_config("s.h5", "o", {}, row, "cpu", root="/new/place")
    assert moved.root == "/new/place" and moved.identity() == here.identity()


def test_saved_encoders_hold_the_checkpoints_preprocessor_not_one_emofuse_defaulted(setup, tmp_path):
    """A checkpoint without preprocessor_config.json trains with a default one (warned, recorded):
    --save-encoders must not write that default as if the checkpoint had shipped it."""
    bare = tmp_path / "bare-w2v"
    shutil.copytree(setup["layer"], bare)
    (bare / "preprocessor_config.json").unlink()
    cfg = _cfg(setup, audio_model=str(bare))
    enc = ft.Encoders(cfg)
    assert enc.options["audio_preprocessing_default"]
    model = ft.FinetuneModel(enc, ft.build_head(cfg, enc, 4))
    ft.save_encoders(model, str(tmp_path / "out"), enc)
    assert not (tmp_path / "out" / "audio_encoder" / "preprocessor_config.json").exists()
    assert (tmp_path / "out" / "text_encoder" / "tokenizer.json").exists()
    assert "audio_preprocessing_default" in ft.Encoders(replace(cfg, audio_model=str(tmp_path / "out" / "audio_encoder"))).options
