"""Test helpers that write synthetic corpora in real layouts (used by tests and benchmarks)."""

from .fake_iemocap import FakeCorpus, FakeUtterance, REAL_FOUR_CLASS_COUNTS, make_fake_iemocap


def logged_messages(caplog) -> list[str]:
    """The sentences emofuse's stages logged (what the command-line tools print), from pytest's
    ``caplog``."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("emofuse")]


__all__ = ["FakeCorpus", "FakeUtterance", "REAL_FOUR_CLASS_COUNTS", "make_fake_iemocap", "logged_messages"]
