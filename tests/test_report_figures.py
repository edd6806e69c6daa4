"""Figures checked by what they contain (axes, labels, ticks, series), not by file size."""

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from emofuse.pipelines import report
from emofuse.pipelines.rundir import run_folder


def _runs(folds, repeats=3, epochs=6, layer_ids=None):
    rng = np.random.default_rng(0)
    runs = []
    for r in range(repeats):
        for f in folds:
            n = epochs - (r % 2)   # early stopping: runs of different lengths
            runs.append({"repeat": r, "seed": r, "fold": f, "ua": float(rng.uniform(40, 90)),
                         "history": [{"epoch": e, "val_ua": float(rng.uniform(30, 90))} for e in range(n)],
                         "layer_weights": {"F": list(rng.dirichlet(np.ones(5))), "T": list(rng.dirichlet(np.ones(7))),
                                           "P": [1.0]},
                         "layer_ids": layer_ids or {"F": [0, 3, 6, 9, 12], "T": list(range(7)), "P": [12]}})
    return runs


def _texts(ax_or_fig):
    return [t.get_text() for t in ax_or_fig.texts]


def test_confusion_cells_and_colour_bar_in_percent(tmp_path):
    classes = ["frustrated", "happy", "neutral", "sad", "surprised", "angry"]
    cm = np.diag([10, 20, 30, 40, 50, 60]) + 1
    fig = report.confusion_figure({"confusion": cm.tolist(), "classes": classes}, str(tmp_path / "c.png"), "t")
    ax, bar = fig.axes
    assert bar.get_ylim() == (0.0, 100.0) and "%" in bar.get_ylabel()
    row0 = 100 * cm[0] / cm[0].sum()
    assert _texts(ax)[:6] == [f"{v:.0f}" for v in row0]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())   # long names do not overlap
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"


def test_validation_curves_are_one_mean_and_band_per_fold(tmp_path):
    fig = report.curve_figure(_runs(["1", "2", "3", "4", "5"]), str(tmp_path / "v.png"), "t")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 5                                  # not 15 unlabelled runs
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"S{k} (3 runs)" for k in range(1, 6)]
    assert "std" in ax.get_legend().get_title().get_text()
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "validation UA %"
    assert len(ax.get_lines()[0].get_xdata()) == 6                   # to the longest run's last epoch


def test_layer_weights_one_panel_per_stream_with_true_indices_and_labelled_uniform_level(tmp_path):
    fig = report.layer_weight_figure(_runs(["1", "2"]), str(tmp_path / "l.png"), "t")
    panels = [a for a in fig.axes]
    assert [a.get_title() for a in panels] == ["frames", "text"]     # the one-layer stream is left out
    assert list(panels[0].get_xticks()) == [0, 3, 6, 9, 12]
    for a, L in zip(panels, (5, 7)):
        legend = [t.get_text() for t in a.get_legend().get_texts()]
        assert f"uniform (1/{L})" in legend and "learned (mean ± std)" in legend
        assert a.get_ylim()[0] == 0 and a.get_ylim()[1] > 1 / L
        assert any(np.allclose(line.get_ydata(), 1 / L) for line in a.get_lines())


@pytest.mark.parametrize("folds,labels", [(["1", "2", "3"], ["S1", "S2", "S3"]),
                                          (["sess1", "sess2", "sess3"], ["sess1", "sess2", "sess3"])])
def test_fold_bars_name_sessions_as_written(tmp_path, folds, labels):
    fig = report.fold_figure({"runs": _runs(folds)}, str(tmp_path / "f.png"), "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert len(ax.patches) == 3 and ax.get_ylabel() == "UA %"


def test_run_folders_readable_and_unchanged_for_iemocap():
    assert run_folder(0, "1") == "r0_s1" and run_folder(4, 5) == "r4_s5"
    assert run_folder(0, "sess1") == "r0_sess1" and run_folder(2, "spk_03") == "r2_spk_03"
    a, b = run_folder(0, "a/b"), run_folder(0, "a b")
    assert a != b and "/" not in a and " " not in b and a.startswith("r0_a-b-")


def test_error_bars_and_bands_use_the_tables_std(tmp_path):
    """Before: figures drew the std with ddof=0 (0.91x the tables' ddof=1 std on 6 runs, 0.71x on 2)
    under the same 'mean ± std' caption."""
    runs = _runs(["1", "2"])
    fig = report.layer_weight_figure(runs, str(tmp_path / "l.png"), "t")
    segs = fig.axes[0].containers[0].lines[2][0].get_segments()
    half = [(s[1][1] - s[0][1]) / 2 for s in segs]
    w = np.array([r["layer_weights"]["F"] for r in runs])
    assert np.allclose(half, w.std(0, ddof=1))


def test_a_label_with_dollars_is_printed_as_written(tmp_path):
    """Before: row labels went to matplotlib as mathtext: `Late $F_$ + T` crashed `report`
    (ParseSyntaxException), `$x$` lost its dollars (found by a tables audit)."""
    cm = np.diag([3, 4]) + 1
    fig = report.confusion_figure({"confusion": cm.tolist(), "classes": ["a", "b"]}, str(tmp_path / "c.png"),
                                  "Late $F_$ + T")
    assert fig.axes[0].get_title() == "Late $F_$ + T" and (tmp_path / "c.png").stat().st_size > 0
