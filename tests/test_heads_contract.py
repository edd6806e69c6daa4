"""One contract test over every head: shapes, padding invariance, gradients to the layer
weights, and it can overfit 32 examples."""

import pytest
import torch

from emofuse.heads import build_head
from emofuse.heads.functional import GatheredRows, masked_mean, pad_rows, stats_pool, weight_layers

DIMS = {"F": (4, 12), "P": (4, 12), "S": (4, 12), "W": (4, 12), "T": (3, 10), "F1": (1, 12), "T1": (1, 10),
        "T12": (3, 12)}
# (fusion, head, keys, options): the papers' sizes where the widths allow, the projected variants too
HEADS = [("none", "linear", ["F"], {}), ("none", "transformer", ["T"], {"heads": 2}),
         ("none", "transformer", ["T"], {"proj": 8, "heads": 4, "ff": 16}),
         ("late", "linear", ["F", "S", "T"], {}), ("late", "transformer", ["F", "P"], {"heads": 4}),
         ("concat", "linear", ["F", "T12"], {}), ("concat", "linear", ["F", "T"], {"proj": 8}),
         ("coattention", "linear", ["F", "P", "T12"], {"heads": 4}),
         ("coattention", "linear", ["F", "P", "T"], {"proj": 8, "heads": 4, "ff": 16}),
         ("cma", "linear", ["F1", "T1"], {"proj": 8, "heads": 2, "ff": 8}),
         ("cma", "linear", ["F", "T"], {"proj": 8, "heads": 2, "ff": 8, "weighting": "learned"}),
         ("none", "cnn-blstm", ["F1"], {"proj": 8}), ("none", "proj-stats", ["T1"], {"proj": 8}),
         ("none", "cnn-blstm", ["F"], {"proj": 8, "weighting": "learned"})]
IDS = [f"{f}-{h}-{'+'.join(k)}" + ("-" + ",".join(f"{a}={b}" for a, b in o.items()) if o else "")
       for f, h, k, o in HEADS]


def head_of(fusion, head, keys, options, **kw):
    """build_head with the text key named T and the speech keys as the heads expect them."""
    return build_head(fusion, DIMS_FOR(keys), [canon(k) for k in keys], n_classes=4, head=head, **options, **kw)


def canon(k):
    return {"F1": "F", "T1": "T", "T12": "T"}.get(k, k)


def DIMS_FOR(keys):
    return {canon(k): DIMS[k] for k in keys}


def make_batch(keys, lengths_by_key, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in keys:
        lengths = torch.tensor(lengths_by_key[k])
        L, D = DIMS[k]
        out[canon(k)] = (torch.randn(int(lengths.sum()), L, D, generator=g) * (1 + torch.arange(L))[None, :, None], lengths)
    return out


def lengths_for(keys, B, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in keys:
        hi = {"F": 40, "T": 12}.get(canon(k), 8)
        lens = torch.randint(1, hi, (B,), generator=g)
        if k == "P" and B > 1:
            lens[1] = 0   # an utterance with no segment at this granularity
        out[k] = lens.tolist()
    return out


def select(batch, i):
    """Utterance i alone, as a batch of one."""
    out = {}
    for k, (rows, lengths) in batch.items():
        o = int(lengths[:i].sum())
        out[k] = (rows[o:o + lengths[i]], lengths[i:i + 1])
    return out


@pytest.mark.parametrize("fusion,head,keys,options", HEADS, ids=IDS)
def test_shapes_and_padding_invariance(fusion, head, keys, options):
    torch.manual_seed(0)
    model = head_of(fusion, head, keys, options).eval()
    batch = make_batch(keys, lengths_for(keys, 5, seed=1))
    with torch.no_grad():
        logits = model(batch)
        assert logits.shape == (5, 4) and torch.isfinite(logits).all()
        for i in range(5):
            alone = model(select(batch, i))
            assert torch.allclose(alone[0], logits[i], atol=1e-5), f"utterance {i}: padding changed the output"


@pytest.mark.parametrize("fusion,head,keys,options", HEADS, ids=IDS)
def test_gradients_reach_layer_weights(fusion, head, keys, options):
    torch.manual_seed(0)
    model = head_of(fusion, head, keys, options).train()
    batch = make_batch(keys, lengths_for(keys, 6, seed=2))
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    learned = [k for k, w in model.weighting.items() if w.learned]
    assert learned == ([] if all(DIMS[k][0] == 1 for k in keys) else [canon(k) for k in keys])
    for k in learned:
        w = model.weighting[k]
        assert w.logits.grad is not None and w.logits.grad.abs().sum() > 0, f"no gradient reached {k}'s layer weights"
    assert all(p.grad is not None for n, p in model.named_parameters()), "a parameter got no gradient"


@pytest.mark.parametrize("fusion,head,keys,options", HEADS, ids=IDS)
def test_overfits_32_examples(fusion, head, keys, options):
    torch.manual_seed(0)
    model = head_of(fusion, head, keys, options, dropout=0.0)
    batch = make_batch(keys, lengths_for(keys, 32, seed=3), seed=3)
    y = torch.arange(32) % 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.train()(batch), y)
        loss.backward()
        opt.step()
        if step % 20 == 19:
            with torch.no_grad():
                if (model.eval()(batch).argmax(1) == y).all():
                    break
    with torch.no_grad():
        assert (model.eval()(batch).argmax(1) == y).float().mean() == 1.0


def test_functional_hand_examples():
    rows = torch.tensor([[1.0], [3.0], [5.0], [7.0], [9.0]])
    x, mask = pad_rows(rows, torch.tensor([2, 0, 3]))
    assert x.shape == (3, 3, 1) and mask.tolist() == [[True, True, False], [False] * 3, [True] * 3]
    assert masked_mean(x, mask)[:, 0].tolist() == [2.0, 0.0, 7.0]
    sp = stats_pool(x, mask, eps=0.0)
    assert sp[2].tolist() == pytest.approx([7.0, (8 / 3) ** 0.5])
    with pytest.raises(ValueError, match="lengths sum"):
        pad_rows(rows, torch.tensor([1, 1]))


@pytest.mark.parametrize("normalised", [False, "global", "speaker"])
def test_gathered_rows_weight_like_dense_rows(normalised):
    """The chunked gather-and-weight path equals weighting the materialised rows, forward and backward."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(500, 5, 7, generator=g).half()
    index = torch.randint(0, 500, (300,), generator=g)
    stats = {}
    if normalised:
        G = 3 if normalised == "speaker" else 1
        stats = {"mean": torch.randn(G, 5, 7, generator=g), "std": torch.rand(G, 5, 7, generator=g) + 0.5,
                 "group": torch.randint(0, G, (300,), generator=g) if G > 1 else None}
    rows = GatheredRows(table, index, **stats)
    dense = table[index].float()
    if normalised:
        grp = stats["group"] if stats["group"] is not None else torch.zeros(300, dtype=torch.long)
        dense = (dense - stats["mean"][grp]) / stats["std"][grp]
    assert torch.equal(rows.materialise(), dense) and rows.shape == (300, 5, 7)
    logits = torch.randn(5, generator=g)
    w1 = torch.softmax(logits.clone().requires_grad_(), 0)
    w2 = torch.softmax(logits.clone().requires_grad_(), 0)
    up = torch.randn(300, 7, generator=g)
    a, b = weight_layers(rows, w1), weight_layers(dense, w2)
    assert torch.allclose(a, b, atol=1e-5)
    ga, = torch.autograd.grad((a * up).sum(), w1)
    gb, = torch.autograd.grad((b * up).sum(), w2)
    assert torch.allclose(ga, gb, atol=1e-4)
