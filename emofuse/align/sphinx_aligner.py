"""Forced alignment with pocketsphinx (its wheel ships the US-English acoustic model and CMUdict).

Words missing from the dictionary and utterances that do not align are reported with the reason,
never dropped silently. Alignments can be written as Sphinx ``.wdseg/.phseg`` files and TextGrids.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import EmofuseError
from ..extract.audio import BadInput, pick_channel, segment_samples
from .records import AlignmentItem
from .sphinx_seg import ALTERNATE_RE, FRAME_RATE, write_seg
from .textgrid import write_textgrid

PAD_S = 0.5  # silence added around the audio: the decoder needs lead-in to settle its normalisation
DITHER = 1e-3  # noise floor (-60 dBFS) added before aligning: digital silence (exact zeros, in the
# padding and in synthetic or gated recordings) throws the decoder's live cepstral normalisation off.
# The noise is seeded by the length, so an alignment is reproducible.
BEAM, WIDE_BEAM = 1e-48, 1e-80   # the decoder's beams, and the wider ones of the second try
TAG_RE = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
#: Bump when a rule of this module that changes alignments changes and no setting below names it
#: (how transcripts become words, how times are rounded): ``settings()`` carries it.
RULES = 2   # 2: curly apostrophes and accents (words_of); a word placed in the padding refused
#: ``settings()`` as they were when align-segments' digests first named the aligner (pocketsphinx's
#: version) but not its settings: an aligner whose settings equal these adds nothing to a digest,
#: so segments pooled since keep theirs; any change (a setting, ``RULES``, num2words installed or
#: not) changes the digest of every utterance the aligner aligns, and they are aligned again.
DIGEST_BASELINE = {"pad_s": 0.5, "dither": 1e-3, "beam": 1e-48, "wide_beam": 1e-80, "bestpath": False,
                   "rules": 1, "numbers_spelled": True}


def _filler(name: str) -> bool:
    """A silence or noise item of the decoder's alignment (``<sil>``, ``<s>``, ``[NOISE]``, ``++UH++``),
    not a word of the transcript."""
    return name.startswith(("<", "[", "+"))


class _SearchFailed(Exception):
    """The decoder's search did not reach the end of the transcript."""


def sphinx_available() -> bool:
    return importlib.util.find_spec("pocketsphinx") is not None


def settings() -> dict:
    """What of this aligner, besides pocketsphinx's version, decides the alignments it gives: the
    padding, noise floor and beams, the rules' version, and whether numbers are spelled out
    (num2words installed). align-segments digests them (``DIGEST_BASELINE``)."""
    return {"pad_s": PAD_S, "dither": DITHER, "beam": BEAM, "wide_beam": WIDE_BEAM, "bestpath": False,
            "rules": RULES, "numbers_spelled": importlib.util.find_spec("num2words") is not None}


NUMBER_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th|s)?(%)?")


def _say_number(m: re.Match) -> str:
    from num2words import num2words

    whole, frac, suffix, percent = m.group(1).replace(",", ""), m.group(2), m.group(3), m.group(4)
    n = int(whole)
    if frac is not None:
        said = num2words(n) + " point " + " ".join(num2words(int(d)) for d in frac)
    elif suffix in ("st", "nd", "rd", "th"):
        said = num2words(n, to="ordinal")
    elif len(whole) == 4 and "," not in m.group(1) and 1100 <= n <= 2099 and n % 1000 >= 10:
        said = num2words(n, to="year")       # 1990 → nineteen ninety (as said), 2019 → twenty nineteen
    else:
        said = num2words(n)
    if suffix == "s":                         # the 1990s, 80s
        said = said[:-1] + "ies" if said.endswith("y") else said + "s"
    return " " + said + (" percent" if percent else "") + " "


def spell_numbers(text: str) -> str:
    """Numbers written as words, as they are spoken, so that the pronunciation dictionary has
    them: ``44`` → forty four, ``3rd`` → third, ``2.5`` → two point five, ``10%`` → ten percent,
    ``1990`` → nineteen ninety, ``44kHz`` → forty four khz. Unchanged when num2words is not
    installed (the numbers are then reported as missing from the dictionary)."""
    if importlib.util.find_spec("num2words") is None:
        return text
    return NUMBER_RE.sub(_say_number, text).replace("-", " ")


#: apostrophes as typed or decoded (a cp1252 transcript's 0x92 is U+2019), read as the dictionary's '
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})


def words_of(transcript: str) -> list[str]:
    """Dictionary-style words: lower case, tags like ``[LAUGHTER]`` and punctuation removed,
    numbers spelled out (``spell_numbers``), curly apostrophes read as ``'`` (``don’t`` is
    ``don't``) and accents dropped (``naïve`` is ``naive``). A letter still outside a–z stays in
    its word, which the dictionary then lacks (the utterance is refused, naming it): before, it
    split the word in two (``don’t`` was aligned as ``don`` + ``t``, both in the dictionary)."""
    text = unicodedata.normalize("NFKD", TAG_RE.sub(" ", transcript.translate(APOSTROPHES)).lower())
    text = spell_numbers("".join(c for c in text if not unicodedata.combining(c)))
    return [w.strip("'") for w in re.sub(r"[^\w' ]+|_", " ", text).split() if w.strip("'")]


class SphinxAligner:
    def __init__(self, write_to: str | None = None):
        if not sphinx_available():
            raise EmofuseError("the sphinx aligner needs pocketsphinx: pip install pocketsphinx")
        self._new_decoder()
        self.write_to = Path(write_to) if write_to else None
        if self.write_to:
            self.write_to.mkdir(parents=True, exist_ok=True)

    def _new_decoder(self, wide: bool = False) -> None:
        from pocketsphinx import Decoder

        # pocketsphinx 5.1.1 defaults are tuned for recognition and break alignment: ``bestpath``
        # re-segments the result from a lattice that can give a phone fewer frames than its HMM has
        # states (the second pass then fails: cmusphinx/pocketsphinx#500), and a word beam narrower
        # than the state beam empties word segments (#464). Upstream's alignment settings, here:
        beam = WIDE_BEAM if wide else BEAM
        self.decoder = Decoder(lm=None, loglevel="FATAL", bestpath=False, beam=beam, pbeam=beam, wbeam=beam)

    def _run(self, pcm: bytes) -> None:
        try:
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
        except RuntimeError as e:  # the search failed inside pocketsphinx
            raise _SearchFailed(f"the aligner failed on this audio ({e})") from e

    def align(self, uid: str, audio_path: str, transcript: str, start: float | None = None,
              end: float | None = None, channel: int | None = None) -> dict[str, list[AlignmentItem]]:
        """``{"word": items, "phone": items}`` in seconds from the start of the utterance: its
        ``start``/``end`` segment of the file when given (cut as extraction cuts it, so the times
        meet the frames), else the whole file; its ``channel`` when given, else every channel mixed
        (as extraction reads it). A failed search is tried once more with a fresh
        decoder and wider beams."""
        try:
            return self._align(uid, audio_path, transcript, start, end, channel)
        except _SearchFailed:
            self._new_decoder(wide=True)
            try:
                return self._align(uid, audio_path, transcript, start, end, channel)
            except _SearchFailed as e:
                raise EmofuseError(str(e)) from None
            finally:
                self._new_decoder()

    def _align(self, uid: str, audio_path: str, transcript: str, start: float | None = None,
               end: float | None = None, channel: int | None = None) -> dict[str, list[AlignmentItem]]:
        words = words_of(transcript)
        if not words:
            raise EmofuseError("empty transcript: nothing to align")
        oov = sorted({w for w in words if self.decoder.lookup_word(w) is None})
        if oov:
            spelled = ("" if importlib.util.find_spec("num2words") else
                       " (numbers are not spelled out: pip install num2words)")
            raise EmofuseError(f"words missing from the pronunciation dictionary{spelled}: {', '.join(oov[:10])}"
                               + (f" and {len(oov) - 10} more" if len(oov) > 10 else ""))
        try:
            first, stop = segment_samples(start, end, sf.info(audio_path))
            audio, sr = sf.read(audio_path, start=first, stop=stop, dtype="float32", always_2d=True)
            audio = pick_channel(audio, channel, audio_path)
        except BadInput as e:
            raise EmofuseError(e.reason) from None
        except Exception as e:
            raise EmofuseError(f"unreadable audio for alignment ({type(e).__name__})") from e
        if sr != 16000:
            audio = soxr.resample(audio, sr, 16000)
        duration = len(audio) / 16000
        pad = np.zeros(int(PAD_S * 16000), np.float32)
        audio = np.concatenate([pad, audio.astype(np.float32), pad])
        audio += np.random.default_rng(len(audio)).normal(0.0, DITHER, len(audio)).astype(np.float32)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
        self.decoder.set_align_text(" ".join(words))
        self._run(pcm)
        hyp = self.decoder.hyp()
        got = len(hyp.hypstr.split()) if hyp else 0
        if got < len(words):
            raise _SearchFailed(f"the aligner could not align the whole transcript ({got} of {len(words)} words)")
        try:
            self.decoder.set_alignment()
        except RuntimeError as e:
            raise _SearchFailed(f"the aligner could not build the phone alignment ({e})") from e
        self._run(pcm)
        tiers: dict[str, list[AlignmentItem]] = {"word": [], "phone": []}
        for w in self.decoder.get_alignment():
            # "your(2)": the dictionary's second pronunciation; the word is "your" (its phones say which)
            tiers["word"].append(self._item(ALTERNATE_RE.sub("", w.name), w.start, w.duration, duration))
            for p in w:
                tiers["phone"].append(self._item(p.name, p.start, p.duration, duration))
        lost = [i.symbol for i in tiers["word"] if i.duration <= 0 and not _filler(i.symbol)]
        if lost:   # wholly in the padding: before, dropped with its phones without a word
            raise _SearchFailed(f"the aligner placed {', '.join(repr(w) for w in lost[:5])} outside the audio (in the "
                                "silence padded around it): a word of the transcript that is not spoken, or an "
                                "utterance cut too tightly")
        tiers = {k: [i for i in v if i.duration > 0] for k, v in tiers.items()}
        if self.write_to:
            self._write(uid, tiers, duration)
        return tiers

    @staticmethod
    def _item(name: str, start: int, dur: int, duration: float) -> AlignmentItem:
        s = min(max(start / FRAME_RATE - PAD_S, 0.0), duration)
        e = min(max((start + dur) / FRAME_RATE - PAD_S, 0.0), duration)
        return AlignmentItem(name, round(s, 4), round(e - s, 4))

    def _write(self, uid: str, tiers: dict[str, list[AlignmentItem]], duration: float) -> None:
        write_seg(self.write_to / f"{uid}.wdseg", tiers["word"], "word")
        write_seg(self.write_to / f"{uid}.phseg", tiers["phone"], "phone")
        write_textgrid(self.write_to / f"{uid}.TextGrid", tiers, duration)
