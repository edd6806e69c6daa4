import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def fake_iemocap(tmp_path_factory):
    """A small fake IEMOCAP copy (nested root) shared by read-only tests."""
    from emofuse.testing import make_fake_iemocap

    root = tmp_path_factory.mktemp("iemocap")
    return make_fake_iemocap(root, nested=True, seed=1)
