"""The heads as the paper specs build them, checked against an independent reading of the papers:
parameter counts computed here from the sizes the papers state, tensor shapes after each stage,
which encoder layers reach the head, per-stream normalisation from training folds only, layer
labels in the report, bad options refused before anything is written, and both paper specs
running end to end on synthetic stores with the real dimensions."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from emofuse.errors import EmofuseError
from emofuse.heads.cma import AudioFeatureEncoder, TextProjection
from emofuse.pipelines.ablate import AblateConfig, load_spec, run_ablate
from emofuse.pipelines.data import fit_normaliser, load_train_data
from emofuse.pipelines.protocol import split
from emofuse.pipelines.train import TrainConfig, run_train
from emofuse.store import FeatureStore
from emofuse.testing.synthetic import make_synthetic_store

C = 4   # classes


# -- parameter counts from the papers' stated sizes ----------------------------------------------
def linear(i, o):
    return i * o + o


def layer_norm(d):
    return 2 * d


def attention(d, kv=None):
    """nn.MultiheadAttention: Q, K, V and output projections with biases (K, V from kv-wide input)."""
    kv = kv or d
    return linear(d, d) + 2 * linear(kv, d) + linear(d, d)


def encoder_layer(d, ff):
    """A post-LN transformer-encoder layer: attention, LayerNorm, feed-forward d→ff→d, LayerNorm."""
    return attention(d) + layer_norm(d) + linear(d, ff) + linear(ff, d) + layer_norm(d)


def weighting(L, d):
    """Eq. 1: one weight per layer and a LayerNorm."""
    return L + layer_norm(d)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def paper_cfg(spec, label, **over):
    """The TrainConfig a bundled spec gives a row (defaults, then the row)."""
    s = load_spec(spec)
    row = dict(s["_labels"][label])
    params = {**s.get("defaults", {}), **{k: v for k, v in row.items() if k not in ("label", "published")}}
    params.update(over)
    return TrainConfig(store="unused.h5", out="unused", **params)


MG_DIMS = {k: (12, 768) for k in "FPSWT"}   # hidden states 1-12 of wav2vec2-base and BERT-base


def test_linear_branch_is_peppinos_model():
    cfg = paper_cfg("paper-multilevel", "Frame, linear")
    model = cfg.build({"F": MG_DIMS["F"]}, C)
    expected = weighting(12, 768) + linear(768, 128) + linear(128, 128) + linear(128, C)
    assert n_params(model) == expected


def test_late_fusion_is_one_linear_branch_per_stream():
    cfg = paper_cfg("paper-multilevel", "Late F+S")
    model = cfg.build({k: MG_DIMS[k] for k in "FST"}, C)
    one = weighting(12, 768) + linear(768, 128) + linear(128, 128) + linear(128, C)
    assert cfg.keys() == ["F", "S", "T"] and n_params(model) == 3 * one


@pytest.mark.parametrize("gran,n", [("F", 1), ("F+P", 2), ("F+P+S+W", 4)])
def test_coattention_works_on_the_768d_embeddings(gran, n):
    """Eq. 4: Q/K/V act on the Eq. 1 embeddings (no projection); 3 repeated layers per branch,
    two branches per speech granularity; c and g are 768-d per granularity."""
    cfg = paper_cfg("paper-multilevel", f"Coattention {gran}")
    keys = cfg.keys()
    model = cfg.build({k: MG_DIMS[k] for k in keys}, C)
    c = 768 * n
    expected = (weighting(12, 768) * len(keys) + n * 2 * 3 * encoder_layer(768, 4 * 768)
                + linear(c, c) + layer_norm(c) + linear(c, C))
    assert n_params(model) == expected
    assert model.text_proj is None and model.speech_proj is None
    attn = model.text_queries["F"][0].attn
    assert attn.embed_dim == 768 and attn.kdim == 768 and attn.num_heads == 8
    assert model.w4.in_features == c


def test_concatenation_is_one_late_fusion_branch_over_joined_sequences():
    cfg = paper_cfg("paper-multilevel", "Concatenation F+P")
    keys = cfg.keys()
    model = cfg.build({k: MG_DIMS[k] for k in keys}, C)
    expected = weighting(12, 768) * 3 + linear(768, 128) + linear(128, 128) + linear(128, C)
    assert keys == ["F", "P", "T"] and model.proj is None and n_params(model) == expected
    # the joined sequence is as long as the streams together
    torch.manual_seed(0)
    seen = {}
    model.branch.ff.register_forward_hook(lambda m, i, o: seen.update(T=o.shape[1]) or None)
    batch = {k: (torch.randn(n, 12, 768), torch.tensor([n])) for k, n in (("F", 9), ("P", 4), ("T", 5))}
    model.eval()(batch)
    assert seen["T"] == 18


def test_transformer_encoder_baseline():
    """Table 1: three transformer-encoder layers, then two feed-forward layers, then the output."""
    cfg = paper_cfg("paper-multilevel", "Frame, transformer")
    model = cfg.build({"F": MG_DIMS["F"]}, C)
    expected = (weighting(12, 768) + 3 * encoder_layer(768, 4 * 768) + linear(768, 128) + linear(128, 128)
                + linear(128, C))
    assert n_params(model) == expected


def cma_expected(audio_dim, text_dim, width=256, ff=256, lstm=128, block="transformer"):
    conv_block = lambda i: i * width * 3 + width + 2 * width  # noqa: E731  conv k3 + BatchNorm affine
    bilstm = 2 * (4 * lstm * width + 4 * lstm * lstm + 2 * 4 * lstm)
    cma_block = layer_norm(width) * 2 + attention(width)   # LayerNorm of queries and of keys/values, Eqs. 4-5
    if block == "transformer":   # and the feed-forward sublayer with its own LayerNorm
        cma_block += layer_norm(width) + linear(width, ff) + linear(ff, width)
    return (conv_block(audio_dim) + conv_block(width) + bilstm + linear(text_dim, width)  # Conv1d k1 = linear
            + 2 * cma_block + linear(4 * width, C))


def test_cma_head_as_the_paper_describes():
    """CMA §2, §4 on frozen encoders: the last wav2vec2-large layer (1024-d) and BERT's output."""
    cfg = paper_cfg("paper-cma", "CMA, both encoders frozen (last layers)")
    r = cfg.resolved()
    assert (r["audio_layers"], r["text_layers"], r["weighting"]) == ("last", "last", "none")
    assert (r["lr"], r["scheduler"]) == (1e-5, "plateau")
    model = cfg.build({"F": (1, 1024), "T": (1, 768)}, C)
    assert n_params(model) == cma_expected(1024, 768)
    m = model.model
    assert m.fusion.cma1.attn.num_heads == 8 and m.fusion.cma1.norm_ctx is not None   # LayerNorm before attention
    assert m.audio_encoder.lstm.hidden_size == 128 and m.audio_encoder.lstm.bidirectional


def test_cma_block_of_eqs_4_and_5_alone():
    """The paper's other reading of its CMA block (--cma-block attention): LayerNorm, then
    A = Concat(A_1 … A_M) W0 with A_i = softmax(Q_i K_iᵀ / √d) V_i (Eqs. 4-5), A as it is: no
    residual, no feed-forward layer beside W0. Checked against the equations written out."""
    cfg = paper_cfg("paper-cma", "CMA, frozen, Eqs. 4-5 block alone (the paper's other reading)")
    assert cfg.cma_block == "attention" and cfg.identity()["cma_block"] == "attention"
    model = cfg.build({"F": (1, 1024), "T": (1, 768)}, C)
    assert n_params(model) == cma_expected(1024, 768, block="attention")
    block = model.model.fusion.cma1.eval()
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 6, 256), torch.randn(2, 5, 256)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    got = block(x, ctx, mask)
    ln = lambda m, v: torch.nn.functional.layer_norm(v, (256,), m.weight, m.bias)  # noqa: E731
    q_in, kv_in = ln(block.norm1, x), ln(block.norm_ctx, ctx)
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    q, k, v = (t @ w[i * 256:(i + 1) * 256].T + b[i * 256:(i + 1) * 256] for i, t in enumerate((q_in, kv_in, kv_in)))
    heads, d = 8, 32
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / d ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    a = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(2, 6, 256)
    want = a @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the default reading is unchanged, and its run key does not name the option
    default = paper_cfg("paper-cma", "CMA, both encoders frozen (last layers)")
    assert "cma_block" not in default.identity()
    with pytest.raises(EmofuseError, match="--cma-block is the attention block of --fusion cma, found --fusion late"):
        TrainConfig(store="s.h5", out="o", fusion="late", granularity="F", cma_block="attention")
    # no feed-forward layer in this block: --ff is refused, and its width is no part of the key
    assert cfg.identity()["ff"] is None
    with pytest.raises(EmofuseError, match="--ff is the width of the transformer block's feed-forward layer"):
        TrainConfig(store="s.h5", out="o", fusion="cma", granularity="F", cma_block="attention", ff=128)


def test_cma_stages_shapes():
    enc = AudioFeatureEncoder(1024, 256).eval()
    x = torch.randn(2, 101, 1024)
    mask = torch.arange(101)[None] < torch.tensor([[101], [37]])
    h, m = enc(x, mask)
    # two stride-2 convolutions: 101 → 51 → 26, 37 → 19 → 10
    assert h.shape == (2, 26, 256) and m.sum(1).tolist() == [26, 10]
    t, tm = TextProjection(768, 256)(torch.randn(2, 7, 768), torch.ones(2, 7, dtype=torch.bool))
    assert t.shape == (2, 7, 256)


def test_unimodal_cma_systems():
    audio = paper_cfg("paper-cma", "Audio only, CNN + BLSTM on frozen wav2vec2 (paper: 60.01 fine-tuned)")
    text = paper_cfg("paper-cma", "Text only, projection + statistics pooling on frozen BERT (paper: 71.01 fine-tuned)")
    a = audio.build({"F": (1, 1024)}, C)
    t = text.build({"T": (1, 768)}, C)
    conv_block = lambda i: i * 256 * 3 + 256 + 2 * 256  # noqa: E731
    bilstm = 2 * (4 * 128 * 256 + 4 * 128 * 128 + 2 * 4 * 128)
    assert n_params(a) == conv_block(1024) + conv_block(256) + bilstm + linear(512, C)
    assert n_params(t) == linear(768, 256) + linear(512, C)


# -- stores with the real dimensions ---------------------------------------------------------------
@pytest.fixture(scope="module")
def mg_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mg") / "mg.h5"
    facts = make_synthetic_store(path, per_class=2, layers=13, dim=768, planted_layer=7, strength=2.0,
                                 mean_seconds=0.4, max_seconds=0.8, seed=3)
    return str(path), facts


@pytest.fixture(scope="module")
def cma_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cma") / "cma.h5"
    make_synthetic_store(path, per_class=2, layers=25, dim=1024, text_layers=13, text_dim=768, planted_layer=24,
                         strength=2.0, mean_seconds=0.4, max_seconds=0.8, seed=4, audio_stream="w2v2-large")
    return str(path)


def test_paper_layers_reach_the_head(mg_store, cma_store):
    path, _ = mg_store
    cfg = paper_cfg("paper-multilevel", "Late F+S")
    with FeatureStore(path) as fs:
        data = load_train_data(fs, cfg.keys(), "audio", "text", cfg.layer_specs(), memory_budget=0)
    assert data.layers == {"F": list(range(1, 13)), "S": list(range(1, 13)), "T": list(range(1, 13))}
    assert data.dims["F"] == (12, 768)
    cma = paper_cfg("paper-cma", "CMA, both encoders frozen (last layers)")
    with FeatureStore(cma_store) as fs:
        data = load_train_data(fs, cma.keys(), "w2v2-large", "text", cma.layer_specs(), memory_budget=0)
    assert data.layers == {"F": [24], "T": [12]} and data.dims == {"F": (1, 1024), "T": (1, 768)}


def test_speech_normalisation_uses_training_folds_only(tmp_path):
    path = tmp_path / "n.h5"
    make_synthetic_store(path, per_class=3, layers=2, dim=4, planted_layer=1, seed=5)
    cfg = TrainConfig(store=str(path), out="x", fusion="late", granularity="F", norm="global")
    assert cfg.norm_keys() == ["F"]      # speech only: the text stream is not normalised
    with FeatureStore(path) as fs:
        data = load_train_data(fs, ["F", "T"], "audio", "text")
        tr, va, te = split(data, "2", 0, 0.1)
        train = np.sort(np.concatenate([tr, va]))
        norm = fit_normaliser(data, "global", train, cfg.norm_keys())
        assert set(norm) == {"F"}
        rows = np.concatenate([fs.frames("audio", i).astype(np.float64) for i in data.ids[train]])
    assert np.allclose(norm["F"].mean[0].numpy(), rows.mean(0), atol=1e-4)
    assert np.allclose(norm["F"].std[0].numpy(), rows.std(0), atol=1e-4)
    # the test session's rows do not move the statistics: change them and fit again
    src = data.sources["F"]
    src.rows[torch.from_numpy(src.flat_index(te))] += 100
    again = fit_normaliser(data, "global", train, cfg.norm_keys())
    assert torch.equal(again["F"].mean, norm["F"].mean)


def test_layer_subset_run_is_labelled_with_true_layers(mg_store, tmp_path, monkeypatch):
    from emofuse.pipelines import report

    path, _ = mg_store
    cfg = TrainConfig(store=path, out=str(tmp_path / "run"), fusion="none", granularity="F", layers="6-12",
                      repeats=1, epochs=2, folds=("1", "2"), device="cpu")
    s = run_train(cfg)
    m = json.loads((tmp_path / "run" / "runs" / "r0_s1" / "metrics.json").read_text())
    assert m["layer_ids"] == {"F": list(range(6, 13))} and len(m["layer_weights"]["F"]) == 7
    from safetensors import safe_open
    with safe_open(str(tmp_path / "run" / "runs" / "r0_s1" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["layer_ids"]) == {"F": list(range(6, 13))}
    figs = []
    monkeypatch.setattr(report, "_save", lambda plt, fig, p: figs.append(fig))
    assert report.layer_weight_figure(s["runs"] and [m], str(tmp_path / "l.png"), "t")
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(6, 13)]
    assert "uniform (1/7)" in [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.mark.parametrize("kw,match", [
    ({"audio_layers": "1-13"}, r"--audio-layers 1-13: layers \[13\] do not exist"),
    ({"layers": "1-13"}, r"--layers 1-13: layers \[13\] do not exist"),   # the option typed, not --audio-layers
    ({"text_layers": "x"}, "--text-layers must look like"),
    ({"fusion": "coattention", "granularity": "F", "heads": 5}, "5 attention heads do not divide the width 16"),
    ({"fusion": "none", "granularity": "T", "norm": "global"}, "uses no speech stream"),
    ({"fusion": "none", "granularity": "F", "norm": "global", "norm_streams": "text"}, "uses no text stream"),
    ({"fusion": "cma", "granularity": "F", "weighting": "none", "layers": "all"}, "exactly one layer per stream"),
    ({"fusion": "late", "granularity": "F", "head": "cnn-blstm"}, "goes with --fusion none"),
])
def test_bad_head_options_refused_before_anything_is_written(tmp_path, kw, match):
    path = tmp_path / "b.h5"
    make_synthetic_store(path, per_class=1, layers=13, dim=16, seed=6)
    out = tmp_path / "out"
    with pytest.raises(EmofuseError, match=match):
        run_train(TrainConfig(store=str(path), out=str(out), repeats=1, epochs=1, device="cpu", **kw))
    assert not out.exists()


def test_last_on_a_one_layer_stream_is_refused(tmp_path):
    path = tmp_path / "one.h5"
    make_synthetic_store(path, per_class=1, layers=1, dim=8, planted_layer=0, seed=7)
    with pytest.raises(EmofuseError, match="single layer"):
        run_train(TrainConfig(store=str(path), out=str(tmp_path / "o"), fusion="none", granularity="F",
                              layers="last", device="cpu"))
    # the CMA heads' default 'last' takes a one-layer stream's layer (eGeMAPS + the audio-only head)
    cfg = TrainConfig(store=str(path), out=str(tmp_path / "c"), fusion="none", granularity="F", head="cnn-blstm",
                      proj=8, repeats=1, epochs=1, folds=("1", "2"), device="cpu")
    assert cfg.layer_specs()["defaults"] == ("audio", "text")
    s = run_train(cfg)
    assert s["ua"]["n"] == 2


@pytest.mark.parametrize("spec", ["paper-multilevel", "paper-cma"])
def test_every_paper_row_builds_on_the_real_dimensions(spec, mg_store, cma_store):
    """Every training row of the bundled specs resolves its layers on a store with the real
    dimensions and builds its head (on the meta device: structure only, no memory)."""
    from emofuse.pipelines.data import select_layers

    s = load_spec(spec)
    store = mg_store[0] if spec == "paper-multilevel" else cma_store
    rows = [label for label, r in s["_labels"].items() if "combine" not in r and not r.get("finetune")]
    assert len(rows) == (27 if spec == "paper-multilevel" else 5)   # frozen rows (fine-tuned: test_finetune.py)
    with FeatureStore(store) as fs:
        for label in rows:
            cfg = paper_cfg(spec, label)
            chosen = select_layers(fs, cfg.keys(), cfg.audio_stream, cfg.text_stream, cfg.layer_specs())
            with torch.device("meta"):
                model = cfg.build({k: (len(pos), D) for k, (pos, _, D) in chosen.items()}, C)
            assert n_params(model) > 0
            if spec == "paper-multilevel":
                assert all(ids == list(range(1, 13)) for _, ids, _ in chosen.values()), label
            elif cfg.resolved()["weighting"] == "none":
                assert {k: ids for k, (_, ids, _) in chosen.items()} in ({"F": [24]}, {"T": [12]},
                                                                        {"F": [24], "T": [12]}), label


def test_paper_specs_run_end_to_end(mg_store, cma_store, tmp_path):
    """ablate runs the paper specs' heads on the real dimensions: paper-cma whole, and from
    paper-multilevel one row of every head kind plus Table 3's reuse and score combination (the
    whole 27-row grid is the same code 27 times; it ran once at this scale in 16 min on 2 loaded cores)."""
    import yaml

    path, _ = mg_store
    s = load_spec("paper-multilevel")
    keep = {"Text, linear", "Frame, transformer", "Coattention F+P", "Late F+S", "Concatenation F+P"}
    for t in s["tables"]:
        t["rows"] = [r for r in t["rows"] if r["label"] in keep or "same_as" in r or "combine" in r]
    small = tmp_path / "mg-small.yaml"
    small.write_text(yaml.safe_dump({k: v for k, v in s.items() if k != "_labels"}))
    res = run_ablate(AblateConfig(store=path, spec=str(small), out=str(tmp_path / "mg"), repeats=1, epochs=1,
                                  folds=("1", "2"), device="cpu"))
    assert set(res) == {"table1", "table2", "table3"}
    assert res["table3"]["published"].tolist() == [71.29, 74.57, 75.80, 76.31]
    for df in res.values():
        assert df["n"].eq(2).all() and df["ua_mean"].notna().all()
    # every trained row recorded the paper's layers 1-12 for every stream it read
    some = res["table2"].iloc[0]["run_dir"]
    m = json.loads(open(os.path.join(some, "runs", "r0_s1", "metrics.json")).read())
    assert m["layer_ids"] and all(ids == list(range(1, 13)) for ids in m["layer_ids"].values())
    res = run_ablate(AblateConfig(store=cma_store, spec="paper-cma", out=str(tmp_path / "cma"), repeats=1, epochs=1,
                                  folds=("1", "2"), device="cpu"))
    df = res["cma"]
    assert len(df) == 5 and df["published"].iloc[0] == 71.20 and df["n"].eq(2).all()
    cfg = json.loads(open(os.path.join(df.iloc[0]["run_dir"], "config.json")).read())
    assert cfg["layer_ids"] == {"F": [24], "T": [12]} and cfg["identity"]["scheduler"] == "plateau"
    # the other reading of the CMA block trains, is keyed apart, and its fold models load again
    eq5 = df.iloc[2]["run_dir"]
    assert json.loads(open(os.path.join(eq5, "config.json")).read())["identity"]["cma_block"] == "attention"
    assert "cma_block" not in cfg["identity"]
    from emofuse.pipelines.predict import TrainedModel
    model = TrainedModel.from_run(eq5)
    preds = pd.read_csv(os.path.join(eq5, "predictions.csv"), dtype={"id": str})
    first = preds[(preds["repeat"] == 0) & (preds["fold"].astype(str) == "1")].set_index("id")
    with FeatureStore(cma_store) as fs:
        data = load_train_data(fs, ["F", "T"], "w2v2-large", "text", {"audio": "24", "text": "12"}, memory_budget=0)
    idx = np.array([list(data.ids).index(u) for u in first.index])
    np.testing.assert_allclose(model.member_logits(data, idx)[0], first[[f"logit_{c}" for c in model.classes]],
                               atol=2e-4)
