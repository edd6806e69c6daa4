"""ARPAbet phones → syllables, within one word.

Rule: every vowel (and the syllabic consonants EL, EM, EN, ER) is one nucleus; consonants between
two nuclei are split by the *maximal onset principle*: the longest run that ends the cluster and
is a legal English onset begins the next syllable, the rest closes the previous one. Word-initial
consonants join the first syllable, word-final ones the last. Legal onsets are the single
consonants except NG, and the clusters in ``ONSETS`` (stop/fricative + liquid or glide, s-clusters,
s + stop + liquid/glide). Vowel hiatus (``create`` K R IY | EY T) splits between the vowels. A
word with no nucleus (``hmm``: HH M) is one syllable. Stress digits are ignored.
"""

from __future__ import annotations

from typing import Sequence

VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW", "AX", "AXR", "IX",
          "UX", "EL", "EM", "EN"}
ONSETS = {
    ("P", "R"), ("P", "L"), ("B", "R"), ("B", "L"), ("T", "R"), ("D", "R"), ("K", "R"), ("K", "L"), ("G", "R"),
    ("G", "L"), ("F", "R"), ("F", "L"), ("TH", "R"), ("SH", "R"),
    ("T", "W"), ("D", "W"), ("K", "W"), ("G", "W"), ("TH", "W"), ("S", "W"),
    ("P", "Y"), ("B", "Y"), ("F", "Y"), ("V", "Y"), ("K", "Y"), ("G", "Y"), ("M", "Y"), ("N", "Y"), ("HH", "Y"),
    ("L", "Y"),
    ("S", "P"), ("S", "T"), ("S", "K"), ("S", "M"), ("S", "N"), ("S", "L"), ("S", "F"),
    ("S", "P", "R"), ("S", "P", "L"), ("S", "P", "Y"), ("S", "T", "R"), ("S", "K", "R"), ("S", "K", "W"),
    ("S", "K", "Y"), ("S", "K", "L"),
}


def base_phone(p: str) -> str:
    """``AH0`` → ``AH``."""
    return p.rstrip("012").upper()


def is_nucleus(p: str) -> bool:
    return base_phone(p) in VOWELS


def legal_onset(cluster: Sequence[str]) -> bool:
    c = tuple(base_phone(p) for p in cluster)
    if len(c) == 0:
        return True
    if len(c) == 1:
        return c[0] != "NG" and c[0] not in VOWELS
    return c in ONSETS


def syllabify(phones: Sequence[str]) -> list[list[int]]:
    """Indices of ``phones`` grouped into syllables (every index exactly once, in order)."""
    nuclei = [i for i, p in enumerate(phones) if is_nucleus(p)]
    if not nuclei:
        return [list(range(len(phones)))] if len(phones) else []
    bounds = [0]  # start index of each syllable
    for a, b in zip(nuclei, nuclei[1:]):
        cluster = list(range(a + 1, b))
        split = b  # default: all consonants to the coda (hiatus: split right before b)
        for k in range(len(cluster) + 1):  # longest legal onset first
            if legal_onset([phones[i] for i in cluster[k:]]):
                split = cluster[k] if k < len(cluster) else b
                break
        bounds.append(split)
    bounds.append(len(phones))
    return [list(range(s, e)) for s, e in zip(bounds, bounds[1:])]
