"""ARPAbet or IPA phones → syllables, within one word.

Rule: every vowel (and the syllabic consonants EL, EM, EN, ER) is one nucleus; consonants between
two nuclei are split by the *maximal onset principle*: the longest run that ends the cluster and
is a legal English onset begins the next syllable, the rest closes the previous one. Word-initial
consonants join the first syllable, word-final ones the last. Legal onsets are the single
consonants except NG, and the clusters in ``ONSETS`` (stop/fricative + liquid or glide, a nasal, L
or HH + Y as in music, nuance, lurid, huge; s-clusters, s + stop + liquid/glide), so ``million`` is
M IH | L Y AH N and ``canyon`` K AE | N Y AH N. Vowel hiatus (``create`` K R IY | EY T) splits between the vowels. A
word with no nucleus (``hmm``: HH M) is one syllable. Stress digits are ignored.

IPA phones (the Montreal Forced Aligner's ``english_mfa`` model and its other languages: ``h ə l
ow``) follow the same rule: a phone holding an IPA vowel letter or the syllabic mark (``n̩``) is a
nucleus, and consonants are mapped onto their ARPAbet counterparts for the onset test (``j`` → Y,
``ɹ`` → R, ``tʃ`` → CH; aspiration, palatalisation, labialisation and length marks are ignored).
The onsets are English ones whatever the language. A word's phones are read as ARPAbet when every
one of them is an ARPAbet phone, else as IPA; a phone that is neither raises ``UnknownPhone``, so
a phone set we cannot read never turns each word into one "syllable" silently.
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


CONSONANTS = {"B", "CH", "D", "DH", "DX", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "NX", "P", "Q", "R", "S",
              "SH", "T", "TH", "V", "W", "WH", "Y", "Z", "ZH"}
#: IPA vowel letters (a phone holding one is a nucleus: ``ow``, ``aj``, ``iː``, ``ɚ``)
IPA_VOWELS = set("aeiouyæɑɒɐəɚɛɜɝɞɪʊɔʌɤɯɨʉøœɶɵɘʏᵻᵿ")
SYLLABIC_MARKS = ("\u0329", "\u030d")   # combining vertical line below / above: n̩, l̩
#: IPA consonants → the ARPAbet consonant whose onset rules they follow
IPA_CONSONANTS = {
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "ɡ": "G", "c": "K", "ɟ": "G", "q": "K", "ʔ": "Q",
    "f": "F", "v": "V", "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "ɦ": "HH",
    "ç": "HH", "x": "HH", "ɣ": "G", "χ": "HH", "ʁ": "R", "m": "M", "ɱ": "M", "n": "N", "ɲ": "N", "ɳ": "N",
    "ŋ": "NG", "l": "L", "ɫ": "L", "ʎ": "L", "ɭ": "L", "ɹ": "R", "r": "R", "ɾ": "DX", "ɽ": "DX", "ʀ": "R",
    "w": "W", "ʍ": "WH", "j": "Y", "ɥ": "Y", "tʃ": "CH", "dʒ": "JH", "ts": "T", "dz": "D", "pf": "P",
    # MFA's English (India, nonnative) and other languages' dictionaries
    "ʈ": "T", "ɖ": "D", "ʋ": "V", "β": "V", "ɸ": "F", "ɕ": "SH", "ʑ": "ZH", "ʂ": "SH", "ʐ": "ZH", "ʝ": "Y",
    "ɬ": "L", "ɮ": "L", "ħ": "HH", "ʕ": "HH", "ɴ": "NG", "ɢ": "G", "ɰ": "W", "ʧ": "CH", "ʤ": "JH", "tɕ": "CH",
    "dʑ": "JH", "ʈʂ": "CH", "ɖʐ": "JH", "ɟʝ": "JH", "cç": "CH", "ʃʲ": "SH", "ɺ": "DX",
}
#: marks that do not change a phone's class: length, stress, aspiration, secondary articulations, ties
IPA_MARKS = set("ːˑˈˌʰʷʲˠˤʼʱⁿˡ̃̚͡‿") | {"\u0303", "\u031a", "\u0361", "\u032a", "\u0325", "\u0324", "\u0330",
                                   "\u0339", "\u031c", "\u031f", "\u0320", "\u0318", "\u0319", "\u02de"}


NUCLEUS = "*"   # phone_classes' mark for a nucleus (no ARPAbet phone is spelt so)


class UnknownPhone(ValueError):
    """A phone that is neither ARPAbet nor IPA: syllables cannot be derived from it."""


def base_phone(p: str) -> str:
    """``AH0`` → ``AH``."""
    return p.rstrip("012").upper()


def _ipa_class(p: str) -> str:
    """``NUCLEUS`` for an IPA nucleus, else the ARPAbet consonant an IPA consonant maps to."""
    if any(m in p for m in SYLLABIC_MARKS):
        return NUCLEUS
    core = "".join(ch for ch in p if ch not in IPA_MARKS)
    if any(ch in IPA_VOWELS for ch in core):
        return NUCLEUS
    if core in IPA_CONSONANTS:
        return IPA_CONSONANTS[core]
    raise UnknownPhone(p)


def phone_classes(phones: Sequence[str]) -> list[str]:
    """Per phone, ``NUCLEUS`` or its ARPAbet consonant: the word's phones read as ARPAbet
    when every one is an ARPAbet phone (any case, stress digits aside) and the word looks like
    ARPAbet (an upper-case letter, a stress digit or a two-letter symbol: lower-case ``t y t y``
    is IPA, where ``y`` is a vowel), else as IPA. Raises ``UnknownPhone`` naming the first phone
    that is neither."""
    arpa = [base_phone(p) for p in phones]
    looks = any(p != p.lower() or p[-1:].isdigit() or len(b) > 1 for p, b in zip(phones, arpa))
    if looks and all(b in VOWELS or b in CONSONANTS for b in arpa) or not phones:
        return [NUCLEUS if b in VOWELS else b for b in arpa]
    if all(b in CONSONANTS for b in arpa) and not any("y" in p for p in phones):
        return arpa   # single-letter consonants: the same in both sets
    return [_ipa_class(p) for p in phones]


def is_nucleus(p: str) -> bool:
    return phone_classes([p])[0] == NUCLEUS


def legal_onset(cluster: Sequence[str]) -> bool:
    """``cluster``: ARPAbet consonants (or ``phone_classes`` values)."""
    c = tuple(base_phone(p) for p in cluster)
    if len(c) == 0:
        return True
    if len(c) == 1:
        return c[0] != "NG" and c[0] not in VOWELS and c[0] != NUCLEUS
    return c in ONSETS


def syllabify(phones: Sequence[str]) -> list[list[int]]:
    """Indices of ``phones`` (ARPAbet or IPA) grouped into syllables (every index exactly once, in
    order). ``UnknownPhone`` for a phone that is neither."""
    classes = phone_classes(phones)
    nuclei = [i for i, c in enumerate(classes) if c == NUCLEUS]
    if not nuclei:
        return [list(range(len(phones)))] if len(phones) else []
    bounds = [0]  # start index of each syllable
    for a, b in zip(nuclei, nuclei[1:]):
        cluster = list(range(a + 1, b))
        split = b  # default: all consonants to the coda (hiatus: split right before b)
        for k in range(len(cluster) + 1):  # longest legal onset first
            if legal_onset([classes[i] for i in cluster[k:]]):
                split = cluster[k] if k < len(cluster) else b
                break
        bounds.append(split)
    bounds.append(len(phones))
    return [list(range(s, e)) for s, e in zip(bounds, bounds[1:])]
