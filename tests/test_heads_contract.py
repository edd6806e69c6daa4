"""One contract test over every head: shapes, padding invariance, gradients to the layer
weights, and it can overfit 32 examples."""

import pytest
import torch

from emofuse.heads import build_head
from emofuse.heads.functional import masked_mean, pad_rows, stats_pool

DIMS = {"F": (4, 12), "P": (4, 12), "S": (4, 12), "W": (4, 12), "T": (3, 10)}
HEADS = [("none", "linear", ["F"]), ("none", "transformer", ["T"]), ("late", "linear", ["F", "S", "T"]),
         ("late", "transformer", ["F", "P"]), ("concat", "linear", ["F", "T"]),
         ("coattention", "linear", ["F", "P", "T"]), ("cma", "linear", ["F", "T"])]
IDS = [f"{f}-{h}-{'+'.join(k)}" for f, h, k in HEADS]


def make_batch(keys, lengths_by_key, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in keys:
        lengths = torch.tensor(lengths_by_key[k])
        L, D = DIMS[k]
        out[k] = (torch.randn(int(lengths.sum()), L, D, generator=g) * (1 + torch.arange(L))[None, :, None], lengths)
    return out


def lengths_for(keys, B, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in keys:
        hi = {"F": 40, "T": 12}.get(k, 8)
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


@pytest.mark.parametrize("fusion,head,keys", HEADS, ids=IDS)
def test_shapes_and_padding_invariance(fusion, head, keys):
    torch.manual_seed(0)
    model = build_head(fusion, DIMS, keys, n_classes=4, head=head).eval()
    batch = make_batch(keys, lengths_for(keys, 5, seed=1))
    with torch.no_grad():
        logits = model(batch)
        assert logits.shape == (5, 4) and torch.isfinite(logits).all()
        for i in range(5):
            alone = model(select(batch, i))
            assert torch.allclose(alone[0], logits[i], atol=1e-5), f"utterance {i}: padding changed the output"


@pytest.mark.parametrize("fusion,head,keys", HEADS, ids=IDS)
def test_gradients_reach_layer_weights(fusion, head, keys):
    torch.manual_seed(0)
    model = build_head(fusion, DIMS, keys, n_classes=4, head=head).train()
    batch = make_batch(keys, lengths_for(keys, 6, seed=2))
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    for k, w in model.weighting.items():
        assert w.logits.grad is not None and w.logits.grad.abs().sum() > 0, f"no gradient reached {k}'s layer weights"


@pytest.mark.parametrize("fusion,head,keys", HEADS, ids=IDS)
def test_overfits_32_examples(fusion, head, keys):
    torch.manual_seed(0)
    model = build_head(fusion, DIMS, keys, n_classes=4, head=head, dropout=0.0)
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
