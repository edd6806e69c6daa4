"""Test helpers that write synthetic corpora in real layouts (used by tests and benchmarks)."""

from .fake_iemocap import FakeCorpus, FakeUtterance, REAL_FOUR_CLASS_COUNTS, make_fake_iemocap

__all__ = ["FakeCorpus", "FakeUtterance", "REAL_FOUR_CLASS_COUNTS", "make_fake_iemocap"]
