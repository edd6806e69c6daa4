import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emofuse.align.frames import segment_frames
from emofuse.align.pooling import pool_many, pool_segments
from emofuse.align.sphinx_seg import AlignmentFormatError, read_seg, sphinx_frames_to_seconds, write_seg
from emofuse.align.syllabify import syllabify
from emofuse.align.tiers import syllables_from
from emofuse.align.records import AlignmentItem

# 36 hand-checked words (CMUdict phones, stress removed) → syllables, by the maximal-onset rule
SYLLABLES = {
    "extra": "EH K | S T R AH", "instruct": "IH N | S T R AH K T", "create": "K R IY | EY T",
    "happy": "HH AE | P IY", "water": "W AO | T ER", "apple": "AE | P AH L", "button": "B AH | T AH N",
    "table": "T EY | B AH L", "bottle": "B AA | T EL", "rhythm": "R IH | DH AH M", "atlas": "AE T | L AH S",
    "athlete": "AE TH | L IY T", "window": "W IH N | D OW", "mister": "M IH | S T ER", "string": "S T R IH NG",
    "strengths": "S T R EH NG K TH S", "banana": "B AH | N AE | N AH", "emotion": "IH | M OW | SH AH N",
    "recognition": "R EH | K AH G | N IH | SH AH N", "employ": "EH M | P L OY", "explain": "IH K | S P L EY N",
    "children": "CH IH L | D R AH N", "hundred": "HH AH N | D R AH D", "idea": "AY | D IY | AH",
    "poem": "P OW | AH M", "science": "S AY | AH N S", "beautiful": "B Y UW | T AH | F AH L",
    "computer": "K AH M | P Y UW | T ER", "music": "M Y UW | Z IH K", "describe": "D IH | S K R AY B",
    "improve": "IH M | P R UW V", "quiet": "K W AY | AH T", "squirrel": "S K W ER | AH L",
    "display": "D IH | S P L EY", "anxious": "AE NG K | SH AH S", "hmm": "HH M",
    "everything": "EH V | R IY | TH IH NG", "thousand": "TH AW | Z AH N D",
}


@pytest.mark.parametrize("word", sorted(SYLLABLES))
def test_syllabifier_hand_checked(word):
    expected = [s.split() for s in SYLLABLES[word].split(" | ")]
    phones = [p for s in expected for p in s]
    got = [[phones[i] for i in group] for group in syllabify(phones)]
    assert got == expected


def test_syllabifier_ignores_stress_digits():
    assert syllabify(["EH1", "K", "S", "T", "R", "AH0"]) == [[0, 1], [2, 3, 4, 5]]


# the same words in the IPA phones of MFA's english_mfa model: the same syllables. Before, no IPA
# phone counted as a vowel, so every word was one "syllable" and S equalled W without a word.
IPA_SYLLABLES = {
    "banana": "b ə | n æ | n ə", "extra": "ɛ k | s t ɹ ə", "hello": "h ə | l ow", "button": "b ʌ | t n̩",
    "create": "kʰ ɹ iː | ej t", "beautiful": "b j uː | ɾ ə | f ə l", "children": "tʃ ɪ l | d ɹ ə n",
    "quiet": "kʷ w aj | ə t", "hmm": "h m̩", "eye": "aj",
    "water (MFA English India)": "w ɔ | ʈ ə", "very (MFA English India)": "ʋ ɛ | ɹ i",
    "tutu (French: y is a vowel, not ARPAbet Y)": "t y | t y", "by": "b aj",
}


@pytest.mark.parametrize("word", sorted(IPA_SYLLABLES))
def test_syllabifier_reads_ipa_phones(word):
    expected = [s.split() for s in IPA_SYLLABLES[word].split(" | ")]
    phones = [p for s in expected for p in s]
    assert [[phones[i] for i in group] for group in syllabify(phones)] == expected


def test_a_phone_set_neither_arpabet_nor_ipa_is_refused_not_one_syllable_per_word():
    from emofuse.align.syllabify import UnknownPhone
    from emofuse.errors import EmofuseError
    assert syllabify(["hh", "ah0", "l", "ow1"]) == [[0, 1], [2, 3]]   # lower-case ARPAbet is ARPAbet
    with pytest.raises(UnknownPhone):
        syllabify(["h", "@", "l", "@U"])   # X-SAMPA
    words = [AlignmentItem("HELLO", 0.0, 0.4)]
    phones = [AlignmentItem(p, 0.1 * k, 0.1) for k, p in enumerate(["h", "@", "l", "@U"])]
    with pytest.raises(EmofuseError, match=r"phone '@' of the word 'HELLO' is neither ARPAbet nor IPA"):
        syllables_from(words, phones)


def test_kept_silence_is_kept_in_derived_syllables_too():
    """--keep-silence kept silence and fillers in the word and phone tiers but the syllables built
    from them still dropped them; now a silent word is one syllable-tier segment of its own."""
    words = [AlignmentItem("<s>", 0, 0.1), AlignmentItem("OK", 0.1, 0.2), AlignmentItem("++LAUGHTER++", 0.3, 0.2)]
    phones = [AlignmentItem("SIL", 0, 0.1), AlignmentItem("OW", 0.1, 0.1), AlignmentItem("K", 0.2, 0.1),
              AlignmentItem("+LAUGHTER+", 0.3, 0.2)]
    assert [s.symbol for s in syllables_from(words, phones)] == ["OW_K"]
    assert [(s.symbol, s.start, round(s.end, 6)) for s in syllables_from(words, phones, keep_silence=True)] == [
        ("<s>", 0, 0.1), ("OW_K", 0.1, 0.3), ("++LAUGHTER++", 0.3, 0.5)]


def test_sphinx_seg_reader(tmp_path):
    p = tmp_path / "u.wdseg"
    p.write_text("\t SFrm  EFrm    SegAScr Word\n\t    0    40     -81234 <s>\n\t   41    72     -17530 WHAT(2)\n"
                 "\t   73    80      -9021 <sil>\n\t   81    99      -9021 ++LAUGHTER++\n Total score:    -1234567\n")
    items = read_seg(p, "word")
    assert [i.symbol for i in items] == ["<s>", "WHAT", "<sil>", "++LAUGHTER++"]
    assert (items[1].start, round(items[1].end, 6)) == (0.41, 0.73)
    assert sphinx_frames_to_seconds(0, 40) == (0.0, 0.41)
    ph = tmp_path / "u.phseg"
    ph.write_text("\t SFrm  EFrm    SegAScr Phone\n\t    0     9    -1234 SIL\n\t   10    19    -1234 W SIL AH b\n"
                  "\t   20    29    -1234 AH W T i\n Total score:    -1\n")
    assert [i.symbol for i in read_seg(ph, "phone")] == ["SIL", "W", "AH"]


@pytest.mark.parametrize("body,match", [
    ("\t    0    40     -81234 <s>\n\t   30    72     -17530 HI\n", r"line 3: frames out of order"),
    ("\t    0    40     -81234 <s>\n\t  garbage here\n", r"line 3: expected 'SFrm EFrm SegAScr Word'"),
    ("\t   50    40     -81234 <s>\n", r"line 2: frames 50..40 are not an increasing span"),
])
def test_bad_seg_files_name_file_and_line(tmp_path, body, match):
    p = tmp_path / "bad.wdseg"
    p.write_text("\t SFrm  EFrm    SegAScr Word\n" + body)
    with pytest.raises(AlignmentFormatError, match=match) as e:
        read_seg(p, "word")
    assert str(p) in str(e.value)


def test_seg_round_trip(tmp_path):
    items = [AlignmentItem("<s>", 0.0, 0.2), AlignmentItem("HELLO", 0.2, 0.35), AlignmentItem("</s>", 0.55, 0.1)]
    write_seg(tmp_path / "x.wdseg", items, "word")
    back = read_seg(tmp_path / "x.wdseg", "word")
    assert [(i.symbol, round(i.start, 4), round(i.duration, 4)) for i in back] == \
        [(i.symbol, i.start, i.duration) for i in items]


def test_syllables_from_words_and_phones():
    words = [AlignmentItem("<s>", 0, 0.1), AlignmentItem("EXTRA", 0.1, 0.6), AlignmentItem("</s>", 0.7, 0.1)]
    phones = [AlignmentItem("SIL", 0, 0.1)] + [AlignmentItem(p, 0.1 + 0.1 * k, 0.1)
                                                for k, p in enumerate("EH K S T R AH".split())] + [AlignmentItem("SIL", 0.7, 0.1)]
    syl = syllables_from(words, phones)
    assert [(s.symbol, round(s.start, 6), round(s.end, 6)) for s in syl] == [("EH_K", 0.1, 0.3), ("S_T_R_AH", 0.3, 0.7)]


def test_frames_hand_example():
    # wav2vec2: frame t covers [0.02t, 0.02t + 0.025), centre 0.02t + 0.0125
    spans, clipped = segment_frames(np.array([0.0, 0.1, 0.105, 0.5]), np.array([0.1, 0.105, 0.3, 0.9]), 30, 0.02, 0.025)
    # [0, .1): centres .0125 .. .0925 → frames 0..4; [.1, .105): no centre → nearest the midpoint .1025 → frame 4;
    # [.105, .3): centres .1125 .. .2925 → 5..14; [.5, .9): 25..29 then clipped at T=30 (.9 > last frame end .605)
    assert spans.tolist() == [[0, 5], [4, 5], [5, 15], [25, 30]]
    assert clipped == 1


def test_a_segment_ending_with_the_audio_is_not_counted_as_clipped():
    """Before: a segment ending exactly at the audio's end counted as ending "after the stream's
    last frame" for half of all audio lengths (those leaving more than half a hop after the last
    frame's window: the encoder drops a partial frame), found by a pooling audit."""
    for samples in range(15760, 16080, 7):   # every length that gives 49 frames (1 s among them)
        n_frames = (samples - 400) // 320 + 1
        assert n_frames == 49
        _, clipped = segment_frames(np.array([0.5]), np.array([samples / 16000]), n_frames, 0.02, 0.025)
        assert clipped == 0, samples
    # past any audio that gives 49 frames: counted
    assert segment_frames(np.array([0.5]), np.array([16080 / 16000 + 0.001]), 49, 0.02, 0.025)[1] == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.001, 0.5), min_size=1, max_size=30), st.integers(1, 200), st.floats(0.0, 0.2),
       st.sampled_from([(0.02, 0.025), (0.01, 0.02), (0.01, 0.06)]))
def test_frame_spans_properties(durations, n_frames, offset, geometry):
    hop, window = geometry
    edges = offset + np.concatenate([[0], np.cumsum(durations)])
    spans, clipped = segment_frames(edges[:-1], edges[1:], n_frames, hop, window)
    assert spans.shape == (len(durations), 2)
    assert (spans[:, 0] >= 0).all() and (spans[:, 1] <= n_frames).all()
    assert (spans[:, 1] > spans[:, 0]).all()                       # never empty
    assert (np.diff(spans[:, 0]) >= 0).all() and (np.diff(spans[:, 1]) >= 0).all()  # ordered
    assert 0 <= clipped <= len(durations)
    centres = np.arange(n_frames) * hop + window / 2
    for (s, e), a, b in zip(spans, edges[:-1], edges[1:]):
        if np.min(np.abs(np.concatenate([centres - a, centres - b]))) < 1e-6:
            continue  # a centre on a boundary: float rounding decides, either answer is right
        inside = np.flatnonzero((centres >= a) & (centres < b))
        if len(inside):
            assert (s, e) == (inside[0], inside[-1] + 1)            # exactly the frames whose centre is inside


def slow_pool(frames, spans):
    out = np.zeros((len(spans),) + frames.shape[1:])
    for k, (s, e) in enumerate(spans):
        for layer in range(frames.shape[1]):
            out[k, layer] = frames[s:e, layer].astype(np.float64).mean(axis=0)
    return out


def test_pooling_hand_example():
    frames = np.arange(2 * 6 * 1, dtype=np.float32).reshape(6, 2, 1)  # frame t, layer l: 2t + l
    pooled = pool_segments(frames, np.array([[0, 2], [2, 5], [5, 6]]))
    assert pooled[:, 0, 0].tolist() == [1.0, 6.0, 10.0] and pooled[:, 1, 0].tolist() == [2.0, 7.0, 11.0]
    assert pool_segments(frames, np.zeros((0, 2), int)).shape == (0, 2, 1)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 80), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_pooling_matches_slow_reference(T, n_seg, seed):
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((T, 3, 8)).astype(np.float16)
    starts = rng.integers(0, T, n_seg)
    ends = np.minimum(starts + rng.integers(1, 10, n_seg), T)
    spans = np.stack([starts, ends], 1)
    assert np.allclose(pool_segments(frames, spans), slow_pool(frames, spans), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 120), st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_pool_many_granularities_in_one_pass_match_reference(T, counts, seed):
    """Several overlapping span sets (phone, syllable, word …) pooled together equal each pooled alone."""
    rng = np.random.default_rng(seed)
    frames = (rng.standard_normal((T, 2, 5)) * 10).astype(np.float16)
    sets = []
    for n in counts:
        starts = rng.integers(0, T, n)
        sets.append(np.stack([starts, np.minimum(starts + rng.integers(1, 30, n), T)], 1).reshape(-1, 2))
    pooled = pool_many(frames, sets)
    assert [p.shape for p in pooled] == [(len(s), 2, 5) for s in sets]
    for p, s in zip(pooled, sets):
        assert p.dtype == np.float32 and np.allclose(p, slow_pool(frames, s), atol=1e-4)


def test_numbers_are_spelled_out_as_said():
    from emofuse.align.sphinx_aligner import spell_numbers, words_of

    assert words_of("It's 44 kHz, 44kHz") == ["it's", "forty", "four", "khz", "forty", "four", "khz"]
    assert words_of("the 3rd of 1990, the 1990s, 2.5 and 10%") == [
        "the", "third", "of", "nineteen", "ninety", "the", "nineteen", "nineties", "two", "point", "five", "and",
        "ten", "percent"]
    assert words_of("1,000 people in 2000 and 1905, 101") == [
        "one", "thousand", "people", "in", "two", "thousand", "and", "nineteen", "oh", "five", "one", "hundred",
        "and", "one"]
    assert spell_numbers("mp3") == "mp3"   # digits inside a word stay (reported as missing if not in the dictionary)


def test_spelled_numbers_are_in_the_sphinx_dictionary():
    pytest.importorskip("pocketsphinx")
    from emofuse.align.sphinx_aligner import SphinxAligner, words_of

    decoder = SphinxAligner().decoder
    text = " ".join(f"{n} {n}th" if n else "0" for n in list(range(0, 1000)) + [1066, 1905, 1990, 2000, 2019, 12345]) + " 2.75 50%"
    words = set(words_of(text))
    assert not {w for w in words if decoder.lookup_word(w) is None}
    with pytest.raises(Exception, match=r"missing from the pronunciation dictionary: khzz"):
        SphinxAligner().align("x", "unused.wav", "44 khzz")   # what remains missing is named, the number is not


def test_only_derived_syllables_carry_the_new_syllable_rules_in_their_digest():
    """The IPA and --keep-silence syllable rules re-pool derived syllables once. Before the review,
    they were folded into every granularity's digest, so phone and word segments were pooled again
    too and every P/W run key changed; .syseg syllables and unaligned utterances were re-done too."""
    from emofuse.pipelines.align import AlignConfig, UtteranceInputs, syllable_inputs
    where = UtteranceInputs(alignments={"tg": {"textgrid": "a.TextGrid"}, "seg": {"word": "a.wdseg", "phone": "a.phseg"},
                                        "syseg": {"word": "b.wdseg", "phone": "b.phseg", "syllable": "b.syseg"},
                                        "none": {}}, audio={}, from_store=True)
    inputs = {u: f"d-{u}" for u in where.alignments}
    plain = syllable_inputs(AlignConfig(store="s"), inputs, where, None)
    assert {u for u in inputs if plain[u] != inputs[u]} == {"tg"}   # IPA may be in a TextGrid's phones
    kept = syllable_inputs(AlignConfig(store="s", keep_silence=True), inputs, where, None)
    assert {u for u in inputs if kept[u] != inputs[u]} == {"tg", "seg"}   # derived syllables only
    assert kept["tg"] != plain["tg"]


def test_the_sphinx_aligners_settings_are_in_its_digest(monkeypatch):
    """Before: the aligner's digest named its class and pocketsphinx's version, not its padding,
    noise floor or beams, so a change to them reused alignments made under the old ones. Now its
    settings are in the digest where they differ from those of every digest so far (those keep
    theirs, and the run keys that read them)."""
    from importlib.metadata import version

    import pandas as pd

    from emofuse.align import sphinx_aligner
    from emofuse.pipelines.align import AlignConfig, UtteranceInputs, alignment_inputs
    from emofuse.store import digest
    aligner = object.__new__(sphinx_aligner.SphinxAligner)   # no decoder: only its settings are read
    table = pd.DataFrame({"transcript": ["hello there"], "audio_digest": ["ab12"]}, index=["u"])
    where = UtteranceInputs(alignments={"u": {}}, audio={"u": "u.wav"}, from_store=True)
    cfg = AlignConfig(store="s", source="sphinx")

    def got():
        return alignment_inputs(cfg, ["u"], where, table, aligner)["u"]

    before = {"source": "sphinx", "keep_silence": False, "tiers": {}, "aligner": "SphinxAligner",
              "pocketsphinx": version("pocketsphinx"), "audio": "ab12", "transcript": "hello there"}
    now = got()   # today's rules (2) differ from the baseline's: every sphinx segment is pooled again once
    monkeypatch.setattr(sphinx_aligner, "RULES", 1)
    assert sphinx_aligner.settings() == sphinx_aligner.DIGEST_BASELINE and got() != now
    assert got() == digest(before, 16)   # as every digest so far
    seen = {got()}
    for name, value in (("PAD_S", 0.25), ("DITHER", 1e-4), ("BEAM", 1e-40), ("WIDE_BEAM", 1e-70), ("RULES", 3)):
        with monkeypatch.context() as m:
            m.setattr(sphinx_aligner, name, value)
            seen.add(got())
    with monkeypatch.context() as m:   # numbers left as digits (skipped as missing words) without num2words
        real = sphinx_aligner.importlib.util.find_spec
        m.setattr(sphinx_aligner.importlib.util, "find_spec", lambda n, *a: None if n == "num2words" else real(n, *a))
        seen.add(got())
    assert len(seen) == 7   # each setting changes the digest


def test_a_textgrid_of_several_speakers_is_read_by_the_utterances_speaker(tmp_path):
    """MFA aligning a conversation writes tiers per speaker (``A - words``). Before, no tier was
    found, and ``--word-tier "A - words"`` read A's words for B's utterances too, silently."""
    from praatio import textgrid as ptg
    from praatio.utilities.constants import Interval

    from emofuse.align.textgrid import read_textgrid, speaker_tiers, write_textgrid
    from emofuse.errors import EmofuseError
    tg = ptg.Textgrid()
    for spk, word, (s, e) in (("A", "hello", (0.1, 0.5)), ("B", "mhm", (0.6, 0.9))):
        tg.addTier(ptg.IntervalTier(f"{spk} - words", [Interval(s, e, word)], 0, 2.0))
        tg.addTier(ptg.IntervalTier(f"{spk} - phones", [Interval(s, e, "AH0")], 0, 2.0))
    path = tmp_path / "conv.TextGrid"
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)
    assert speaker_tiers(path)
    for spk, word in (("A", "hello"), ("B", "mhm")):
        assert [i.symbol for i in read_textgrid(path, speaker=spk)["word"] if i.symbol] == [word]
    with pytest.raises(EmofuseError, match=r"tier 'A - words' is speaker 'A''s .* this utterance's speaker is 'B'; "
                                           r"name the tier without its speaker \('words'"):
        read_textgrid(path, {"word": ("A - words",), "phone": ("A - phones",)}, speaker="B")
    with pytest.raises(EmofuseError, match=r"tiers named per speaker are read by the utterance's speaker, here 'C'"):
        read_textgrid(path, speaker="C")
    plain = tmp_path / "plain.TextGrid"
    write_textgrid(plain, {"word": [AlignmentItem("hi", 0.1, 0.3)]}, 1.0)
    assert not speaker_tiers(plain)
    assert [i.symbol for i in read_textgrid(plain, speaker="A")["word"] if i.symbol] == ["hi"]


def test_sphinx_refuses_a_word_it_places_outside_the_audio_and_reads_curly_apostrophes():
    """Before: a word the decoder placed wholly in the silence padded around the audio (a word not
    spoken, an utterance cut tightly) was clipped to nothing and dropped with its phones, without a
    word; ``don’t`` (a cp1252 transcript's 0x92) was aligned as ``don`` + ``t``, both in the
    dictionary. The rules' version is in the aligner's digest, so such segments are pooled again."""
    pytest.importorskip("pocketsphinx")
    from emofuse.align import sphinx_aligner
    from emofuse.align.sphinx_aligner import DIGEST_BASELINE, SphinxAligner, settings, words_of
    from emofuse.corpora import demo_root
    from emofuse.errors import EmofuseError

    wav = str(demo_root() / "Session5/sentences/wav/Ses05M_script02_2/Ses05M_script02_2_F001.wav")
    aligner = SphinxAligner()
    plain = aligner.align("u", wav, "We talked about it yesterday")
    assert [w.symbol for w in plain["word"] if not sphinx_aligner._filler(w.symbol)] == \
        ["we", "talked", "about", "it", "yesterday"]
    for extra in ("we talked about it yesterday oh", "uh we talked about it yesterday"):
        with pytest.raises(EmofuseError, match=r"the aligner placed '(oh|uh)' outside the audio \(in the silence "
                                               r"padded around it\)"):
            aligner.align("u", wav, extra)
    assert words_of("We don’t know, naïve ‘so’") == ["we", "don't", "know", "naive", "so"]
    with pytest.raises(EmofuseError, match=r"missing from the pronunciation dictionary.*: straße"):
        aligner.align("u", wav, "we talked about straße")
    assert settings()["rules"] != DIGEST_BASELINE["rules"]


def test_sphinx_aligns_the_utterances_own_channel(tmp_path):
    """A speaker's channel of a two-channel recording is aligned as that channel alone (before
    channels were named, the aligner mixed every channel, as extraction did)."""
    pytest.importorskip("pocketsphinx")
    import soundfile as sf

    from emofuse.align.sphinx_aligner import SphinxAligner
    from emofuse.corpora import demo_root
    wav = str(demo_root() / "Session5/sentences/wav/Ses05M_script02_2/Ses05M_script02_2_F001.wav")
    speech, sr = sf.read(wav, dtype="float32")
    noise = np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32) * 0.3
    sf.write(tmp_path / "st.wav", np.stack([noise, speech], 1), sr, subtype="FLOAT")
    sf.write(tmp_path / "one.wav", speech, sr, subtype="FLOAT")
    text = "We talked about it yesterday"
    aligner = SphinxAligner()
    alone = aligner.align("u", str(tmp_path / "one.wav"), text)
    assert aligner.align("u", str(tmp_path / "st.wav"), text, None, None, channel=1) == alone
