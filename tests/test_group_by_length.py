"""``train-head --group-by-length``: each epoch's shuffled order cut into groups of batches sorted
longest first, so batches pad little; the same generator draws, a permutation of the training
utterances, stacked runs equal to runs alone (tests/test_stacked.py, "transformer-grouped"); the
option is part of the run key only when set, and tables say which rows used it."""

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from emofuse.pipelines import tables
from emofuse.pipelines.ablate import AblateConfig, _plan, load_spec
from emofuse.pipelines.protocol import GROUP_BATCHES, epoch_order, split, utterance_rows
from emofuse.pipelines.train import TrainConfig

from test_stacked import _data, _resolved, store  # noqa: F401  (the module's store fixture)


def test_off_the_order_is_the_protocols_permutation():
    train = np.arange(100, 300)
    got = epoch_order(train, torch.Generator().manual_seed(7), 32)
    want = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(7)).numpy()]
    np.testing.assert_array_equal(got, want)


def test_groups_are_sorted_longest_first_and_draw_what_the_plain_order_draws():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 5000)
    train = np.sort(rng.choice(5000, 3500, replace=False))
    batch = 8
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain, grouped = epoch_order(train, g1, batch), epoch_order(train, g2, batch, lengths)
    assert torch.equal(g1.get_state(), g2.get_state())   # the next epoch draws the same either way
    assert sorted(grouped) == sorted(train)
    size = GROUP_BATCHES * batch
    for a in range(0, len(train), size):
        group = grouped[a:a + size]
        assert set(group) == set(plain[a:a + size])        # the same utterances, reordered
        assert (np.diff(lengths[group]) <= 0).all()         # longest first
    pad = {name: sum(lengths[o[k:k + batch]].max() * len(o[k:k + batch]) for k in range(0, len(o), batch))
           for name, o in (("plain", plain), ("grouped", grouped))}
    assert pad["grouped"] < 0.7 * pad["plain"]


def test_a_run_on_grouped_batches_pads_less_on_the_store(store, tmp_path):  # noqa: F811
    cfg = _resolved(store=store, out=str(tmp_path), fusion="none", granularity="F", batch_size=4)
    data = _data(store, cfg)
    tr, _, _ = split(data, "1", 0, cfg.val_fraction)
    rows = utterance_rows(data)
    padded = {}
    for grouped in (False, True):
        o = epoch_order(tr, torch.Generator().manual_seed(0), 4, rows if grouped else None)
        padded[grouped] = sum(rows[o[k:k + 4]].max() * len(o[k:k + 4]) for k in range(0, len(o), 4))
    assert padded[True] < padded[False]


def test_the_option_enters_the_run_key_only_when_set(store, tmp_path):  # noqa: F811
    cfg = TrainConfig(store=store, out=str(tmp_path), fusion="late", granularity="F+S")
    assert "group_by_length" not in cfg.identity()
    assert replace(cfg, group_by_length=True).identity()["group_by_length"] is True
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndefaults: {repeats: 1, epochs: 1}\ntables:\n- name: a\n  rows:\n"
                    "  - {label: late, fusion: late, granularity: F+S}\n")
    loaded = load_spec(str(spec))
    plain = _plan(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g")), loaded)
    grouped = _plan(AblateConfig(store=store, spec=str(spec), out=str(tmp_path / "g"), group_by_length=True), loaded)
    assert plain[1]["late"] != grouped[1]["late"] and all(c.group_by_length for c in grouped[0].values())


def test_tables_mark_grouped_rows():
    from test_ablate import golden_frame

    df = golden_frame().drop(columns=["best"]).assign(group_by_length=[True, False, False], bf16=[True, True, False])
    md = tables.to_markdown(df, "T")
    assert f"| {df.loc[0, 'label']} ‡ § |" in md
    assert "; ‡ trained under bfloat16 autocast (--bf16); § trained on length-grouped batches (--group-by-length)." in md
    assert r"$^\S$ trained on length-grouped batches (-{}-group-by-length)" in tables.to_latex(df, "T", "t")
    csv = pd.read_csv(__import__("io").StringIO(tables.to_csv(df)))
    assert list(csv["group_by_length"]) == [True, False, False] and list(csv["bf16"]) == [True, True, False]


def test_training_uses_the_grouped_order_alone_and_stacked(store, tmp_path, monkeypatch):  # noqa: F811
    """Both training loops take their batches from ``epoch_order`` with the lengths when the
    option is set (and only then)."""
    from emofuse.pipelines import loop, stacked
    from emofuse.pipelines.loop import Timer, train_one
    from test_stacked import _jobs, _stacked

    seen = []

    def spy(train, gen, batch_size, lengths=None):
        seen.append(lengths is not None)
        return epoch_order(train, gen, batch_size, lengths)

    monkeypatch.setattr(loop, "epoch_order", spy)
    monkeypatch.setattr(stacked, "epoch_order", spy)
    for grouped in (False, True):
        cfg = _resolved(store=store, out=str(tmp_path), fusion="none", granularity="F", epochs=2, patience=2,
                        group_by_length=grouped)
        data = _data(store, cfg)
        jobs = _jobs(data, cfg, ("1", "2"))
        seen.clear()
        train_one(cfg, data, jobs[0].train, jobs[0].val, jobs[0].seed, torch.device("cpu"), jobs[0].norm, Timer())
        _stacked(cfg, data, jobs)
        assert seen == [grouped] * (2 + 2 * 2)   # 2 epochs alone, 2 epochs × 2 runs stacked


def test_listings_name_the_options(store, tmp_path):  # noqa: F811
    from emofuse.pipelines.runs import config_summary
    from emofuse.pipelines.train import describe_config

    cfg = TrainConfig(store=store, out=str(tmp_path), fusion="late", granularity="F+S")
    on = replace(cfg, bf16=True, group_by_length=True)
    assert describe_config(on) == describe_config(cfg) + ", bf16, length-grouped batches"
    assert config_summary(on.identity()) == config_summary(cfg.identity()) + ", bf16, length-grouped batches"
