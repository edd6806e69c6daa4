"""Every head's sizes and training defaults in one place, with where each value comes from.

``HEAD_DEFAULTS[name]`` holds what a configuration gets when it leaves an option unset. ``name``
is the branch of ``none``/``late`` fusion (``linear``, ``transformer``, ``cnn-blstm``,
``proj-stats``) or the fusion (``concat``, ``coattention``, ``cma``). The two papers:

- MG = the multi-granularity / multi-level fusion paper (wav2vec2-base + BERT-base, frozen).
- CMA = the cross-modal attention paper (wav2vec2-large + BERT-base).
- Pepino = Pepino et al. 2021, whose linear model MG adopts for every late-fusion branch.

``SOURCES`` says, value by value, whether a paper states it or we chose it (and why); it is what
``docs/reproducing.md`` is written from.

Options (``None`` = take the default below):

- ``hidden``: width of the linear branch's two position-wise feed-forward layers.
- ``proj``: width that streams are projected to before the head; ``0`` = no projection, the
  encoders' own width (MG's reading for coattention, concatenation and the transformer encoder).
- ``heads``: attention heads; ``ff``: feed-forward width inside an attention block (``None`` with
  ``ff_mult``: ``ff_mult`` × the block's width); ``depth``: attention blocks per branch.
- ``weighting``: ``learned`` (Eq. 1 of MG: softmax layer weights, the softmax not stated, then
  LayerNorm) or ``none`` (one selected layer used as it is: CMA feeds the *last* layer, no
  weighting, no LayerNorm).
- ``layers``: the layers a head reads when the configuration does not say (``all`` or ``last``).
- ``lr``, ``scheduler`` (``none`` or ``plateau``: decay on validation loss).
"""

from __future__ import annotations

HEAD_NAMES = ("linear", "transformer", "cnn-blstm", "proj-stats")   # branches of --fusion none / late
FUSION_HEADS = ("concat", "coattention", "cma")

HEAD_DEFAULTS: dict[str, dict] = {
    "linear":      {"hidden": 128, "proj": 0, "heads": None, "ff": None, "ff_mult": None, "depth": None,
                    "weighting": "learned", "layers": "all", "lr": 1e-3, "scheduler": "none"},
    "transformer": {"hidden": 128, "proj": 0, "heads": 8, "ff": None, "ff_mult": 4, "depth": 3,
                    "weighting": "learned", "layers": "all", "lr": 5e-5, "scheduler": "none"},
    "concat":      {"hidden": 128, "proj": 0, "heads": None, "ff": None, "ff_mult": None, "depth": None,
                    "weighting": "learned", "layers": "all", "lr": 1e-3, "scheduler": "none"},
    "coattention": {"hidden": None, "proj": 0, "heads": 8, "ff": None, "ff_mult": 4, "depth": 3,
                    "weighting": "learned", "layers": "all", "lr": 5e-5, "scheduler": "none"},
    "cma":         {"hidden": None, "proj": 256, "heads": 8, "ff": 256, "ff_mult": None, "depth": 1,
                    "weighting": "none", "layers": "last", "lr": 1e-5, "scheduler": "plateau"},
    "cnn-blstm":   {"hidden": None, "proj": 256, "heads": None, "ff": None, "ff_mult": None, "depth": None,
                    "weighting": "none", "layers": "last", "lr": 1e-5, "scheduler": "plateau"},
    "proj-stats":  {"hidden": None, "proj": 256, "heads": None, "ff": None, "ff_mult": None, "depth": None,
                    "weighting": "none", "layers": "last", "lr": 1e-5, "scheduler": "plateau"},
}

#: learning-rate decay on a plateau of the validation loss (CMA §4 says "decayed … based on test
#: loss"; we never look at the test set). Factor and patience are not stated: chosen so that the
#: rate can halve a few times inside the early-stopping patience of 10 epochs. ``ReduceLROnPlateau``
#: with patience 2 halves on the 3rd epoch in a row without a better validation loss, so up to 3
#: times before early stopping.
PLATEAU = {"factor": 0.5, "patience": 2}

#: the protocol's training defaults shared by ``train-head`` and ``finetune``: dropout 0.2, batch
#: 32 and early stopping (MG §3.2), 5 repeats per fold (MG's tables: the mean of 5 × CV), 10 %
#: validation (MG §3.1); at most 100 epochs and a patience of 10 are not stated: ours
PROTOCOL = {"repeats": 5, "seed": 0, "epochs": 100, "patience": 10, "batch_size": 32, "dropout": 0.2,
            "val_fraction": 0.1}

SOURCES: dict[str, dict[str, str]] = {
    "linear": {
        "hidden": "not stated in MG (it adopts Pepino's model); 128 as in Pepino et al.'s downstream model",
        "structure": "MG §2.2, Eq. 2-3: two position-wise feed-forward layers with ReLU, dropout 0.2, global average, output layer",
        "lr": "MG §3.2: 1e-3 for feed-forward models",
    },
    "transformer": {
        "structure": "MG §3.3: three transformer-encoder layers followed by two feed-forward layers",
        "proj": "not stated; none (the 768-d embeddings enter the encoder layers, as in coattention)",
        "heads": "not stated; 8, as in the classic transformer encoder MG cites",
        "ff": "not stated; 4 × width (3072 for 768-d), the classic transformer encoder's ratio",
        "lr": "MG §3.2: 5e-5 for transformer-based models",
    },
    "concat": {
        "structure": "MG §2.3 / Table 3 (F+P): text and speech (frame, phone) embeddings concatenated, then one "
                     "late-fusion branch; joined along time (streams of different lengths cannot be joined along "
                     "features), no projection",
        "lr": "MG §3.2: 1e-3 (a feed-forward model)",
    },
    "coattention": {
        "structure": "MG §2.3, Eq. 4, Fig. 3: Q/K/V on the Eq. 1 embeddings (768-d, no projection), 3 repeated "
                     "coattention layers, mean of the two branches' global averages, c and g 768-d per granularity",
        "heads": "not stated; 8, as in the classic transformer encoder MG cites",
        "ff": "not stated; 4 × width, the classic transformer encoder's ratio",
        "granularities": "not stated whether they share weights; one coattention model per speech granularity, text "
                         "side included (our reading of 'sent to the coattention model with text embeddings "
                         "respectively'; W_6^i, W_7^j, W_8^j indexed by modality could also share the text side)",
        "lr": "MG §3.2: 5e-5 for transformer-based models",
    },
    "cma": {
        "structure": "CMA §2.2-2.5, §4: last wav2vec2 layer → 2 × Conv1d k3 s2 256 + BatchNorm + ReLU → BiLSTM 128 "
                     "per direction (dropout 0.2); BERT output → Conv1d k1 → 256; CMA-1 and CMA-2 single layer, "
                     "8 heads, LayerNorm before attention, feed-forward 256; statistics pooling; concatenation; classifier",
        "padding": "not stated; convolutions padded by 1 (lengths follow ⌊(T − 1)/2⌋ + 1)",
        "lr": "CMA §4: Adam 1e-5, decayed on the loss (validation loss here)",
    },
    "cnn-blstm": {"structure": "CMA §5, Table 2: wav2vec2 + audio feature encoder (CNN + BLSTM), no cross-modal "
                               "attention, statistics pooling, classifier"},
    "proj-stats": {"structure": "CMA §5, Table 2: BERT + projection (Conv1d k1 → 256), statistics pooling, classifier"},
}


def head_name(fusion: str, head: str) -> str:
    """The key into ``HEAD_DEFAULTS``: the branch for none/late fusion, the fusion otherwise."""
    return head if fusion in ("none", "late") else fusion


def head_defaults(fusion: str, head: str) -> dict:
    return dict(HEAD_DEFAULTS[head_name(fusion, head)])


def _fmt(v) -> str:
    if isinstance(v, float) and v < 0.01:
        return f"{v:.0e}".replace("e-0", "e-")    # 1e-3, 5e-5
    return str(v)


def default_text(option: str) -> str:
    """What ``option`` defaults to, read from ``HEAD_DEFAULTS`` for help texts: the default head's
    (late fusion, linear branches; else the first head that sets it), then the heads that differ,
    e.g. ``none; plateau for cma, cnn-blstm and proj-stats``. ``ff`` left unset is ``N x width``."""
    def value(d):
        if option == "ff" and d["ff"] is None and d["ff_mult"]:
            return f"{d['ff_mult']} x width"
        return d[option]

    by_value: dict = {}
    for name, d in HEAD_DEFAULTS.items():
        if value(d) is not None:
            by_value.setdefault(value(d), []).append(name)
    first = value(HEAD_DEFAULTS["linear"])
    if first is None:
        first = next(iter(by_value))
    parts = [_fmt(first)]
    for v, names in by_value.items():
        if v != first:
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            parts.append(f"{_fmt(v)} for {listed}")
    return "; ".join(parts)
