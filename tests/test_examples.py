"""examples/quickstart.py runs (offline, tiny encoders) and shows what it says it shows."""

import importlib.util
from pathlib import Path

import numpy as np

from emofuse.store.reader import Ragged

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    said = []
    res = mod.main(str(tmp_path / "qs"), echo=said.append)
    text = "\n".join(said)
    assert "FeatureStore(" in text and "audio:" in text and "text:" in text and "5 fold models" in text
    s = res["summary"]
    assert s["ua"]["n"] == 5 and s["classes"] == ["ang", "hap", "neu", "sad"]
    # the figure: a confusion matrix with the class names and a layer-weight plot with the layers
    ax1, ax2 = [a for a in res["fig"].axes if a.get_title()]
    assert ax1.get_xlabel() == "predicted" and [t.get_text() for t in ax1.get_xticklabels()] == s["classes"]
    assert len(ax1.texts) == 16   # a percentage in every cell
    assert ax2.get_xlabel() == "wav2vec2 layer" and [t.get_text() for t in ax2.get_xticklabels()] == ["0", "1", "2"]
    assert ax2.get_ylim()[0] == 0 and {t.get_text() for t in ax2.get_legend().get_texts()} == \
        {"mean ± std over folds", "uniform (1/3)"}
    assert Path(res["figure"]).stat().st_size > 0
    p = res["probs"]
    assert len(p) == 1 and abs(p[[f"prob_{c}" for c in s["classes"]]].to_numpy().sum() - 1) < 1e-9


def test_ragged_iteration_and_padding():
    data = np.arange(2 * 5 * 3, dtype=np.float32).reshape(5, 2, 3)
    r = Ragged(np.array(["a", "b", "c"]), data, np.array([0, 2, 2]), np.array([2, 0, 3]))
    items = list(r)
    assert [i for i, _ in items] == ["a", "b", "c"] and [len(x) for _, x in items] == [2, 0, 3]
    np.testing.assert_array_equal(items[2][1], data[2:5])
    x, mask = r.padded()
    assert x.shape == (3, 3, 2, 3) and mask.tolist() == [[True, True, False], [False] * 3, [True] * 3]
    np.testing.assert_array_equal(x[0, :2], data[:2])
    assert (x[0, 2] == 0).all() and (x[1] == 0).all()
    x2, m2 = r.padded(max_len=2, value=-1.0)
    assert x2.shape == (3, 2, 2, 3) and m2.sum() == 4 and (x2[1] == -1).all()
