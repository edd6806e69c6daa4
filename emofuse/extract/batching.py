"""Group utterances by length into batches that fill a budget of padded audio seconds."""

from __future__ import annotations

from typing import Sequence


def length_batches(ids: Sequence[str], seconds: Sequence[float], budget: float, max_items: int = 256) -> list[list[str]]:
    """Batches of ids, sorted by length, each with ``len(batch) × longest ≤ budget`` (a single
    utterance longer than the budget forms its own batch; ``budget=0``: one utterance per batch).
    Unknown lengths (NaN) go last, alone."""
    if budget < 0:
        raise ValueError(f"batch budget must be >= 0, found {budget}")
    pairs = sorted(zip(ids, seconds), key=lambda p: (p[1] != p[1], p[1]))  # NaN last
    batches: list[list[str]] = []
    cur: list[str] = []
    longest = 0.0
    for uid, sec in pairs:
        if sec != sec:  # NaN: length unknown (unreadable): one per batch, reported on load
            if cur:
                batches.append(cur)
            batches.append([uid])
            cur, longest = [], 0.0
            continue
        if cur and (max(longest, sec) * (len(cur) + 1) > budget or len(cur) >= max_items):
            batches.append(cur)
            cur, longest = [], 0.0
        cur.append(uid)
        longest = max(longest, sec)
    if cur:
        batches.append(cur)
    return batches


def commit_units(batches: list[list[str]], seconds: dict[str, float], unit_seconds: float) -> list[list[list[str]]]:
    """Consecutive whole batches grouped until each group holds ``unit_seconds`` of audio: the
    unit a run commits atomically (and recomputes at most once after a crash)."""
    units: list[list[list[str]]] = []
    cur: list[list[str]] = []
    acc = 0.0
    for b in batches:
        cur.append(b)
        acc += sum(seconds.get(i, 0.0) for i in b if seconds.get(i, 0.0) == seconds.get(i, 0.0))
        if acc >= unit_seconds:
            units.append(cur)
            cur, acc = [], 0.0
    if cur:
        units.append(cur)
    return units
