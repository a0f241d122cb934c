"""Speech text front end: normalisation, espeak-ng phonemes, phoneme vocabulary (VALL-E X style)."""

import json

import pytest

pytest.importorskip("num2words")

from codeclm.errors import CodecLMError, ConfigError
from codeclm.tokenizers.normalize import (
    SUPPORTED_LANGUAGES,
    TextError,
    check_language,
    normalize_text,
)
from codeclm.tokenizers.phonemes import (
    SPECIAL_TOKENS,
    VOCAB_NAME,
    WORD_SEP,
    PhonemeVocab,
    Phonemizer,
    TextToPhonemes,
    espeak_available,
    split_phonemes,
)

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="phonemizer / espeak-ng not installed")


@pytest.mark.parametrize("text, expected", [
    ("Dr. Smith paid $5.20 on 2024-03-05 at 10:30.",
     "doctor Smith paid five dollars twenty cents on March fifth, twenty twenty-four at ten thirty."),
    ("In 1999 I was 21, ranked 1st, 2nd and 23rd.",
     "In nineteen ninety-nine I was twenty-one, ranked first, second and twenty-third."),
    ("It grew by 12.5% to 1,500 units -- wow...",
     "It grew by twelve point five percent to one thousand five hundred units — wow…"),
    ("Meet me on 5 March 2024 at 9:05 pm.", "Meet me on March fifth, twenty twenty-four at nine oh five p m."),
    ("He lives on Baker St. near St. Paul, e.g. with Mrs. Jones etc.",
     "He lives on Baker street near saint Paul, for example with missus Jones et cetera."),
    ("It is -5 degrees & 3.14 at 10:00.", "It is minus five degrees and three point one four at ten o'clock."),
    ("  “Hello”\n\t  ‘world’  ", "\"Hello\" 'world'"),
    ("The years 2000 and 1905, and 12345.",
     "The years two thousand and nineteen oh five, and twelve thousand three hundred and forty-five."),
])
def test_normalize_english(text, expected):
    assert normalize_text(text) == expected
    assert normalize_text(text, "EN-us") == expected


@pytest.mark.parametrize("text, language, expected", [
    ("Es kostet 3,50 € (21%).", "de", "Es kostet drei Euro fünfzig Cent (einundzwanzig Prozent)."),
    ("Am 5. März 2024 um 10:30 Uhr kamen 1.234 Leute.", "de",
     "Am fünfter März zweitausendvierundzwanzig um zehn Uhr dreißig kamen eintausendzweihundertvierunddreißig Leute."),
    ("Dr. Müller wohnt in Nr. 7, z.B. im Jahr 1999.", "de",
     "Doktor Müller wohnt in Nummer sieben, zum Beispiel im Jahr neunzehnhundertneunundneunzig."),
    ("  Hallo   Welt  ", "de", "Hallo Welt"),
    ("Il est 10:30, le 1er mars, 3,5 % et 12 €.", "fr",
     "Il est dix heures trente, le premier mars, trois virgule cinq pour cent et douze euros."),
    ("Cuesta 3,50 € y el 25%.", "es", "Cuesta tres euros cincuenta céntimos y el veinticinco por ciento."),
])
def test_normalize_other_languages(text, language, expected):
    assert normalize_text(text, language) == expected


def test_normalize_is_idempotent():
    for lang, text in [("en", "Dr. Smith paid $5.20 at 10:30..."), ("de", "Es kostet 3,50 €.")]:
        once = normalize_text(text, lang)
        assert normalize_text(once, lang) == once


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_an_error(text):
    with pytest.raises(TextError, match="empty"):
        normalize_text(text)


def test_language_errors():
    with pytest.raises(TextError, match=r"unsupported language 'xx'; supported: de, en, es, fr"):
        normalize_text("hello", "xx")
    with pytest.raises(TextError):
        check_language(None)
    with pytest.raises(TextError, match="must be a string"):
        normalize_text(5)
    assert issubclass(TextError, CodecLMError) and issubclass(TextError, ValueError)
    assert check_language("de_DE") == "de" and set(SUPPORTED_LANGUAGES) >= {"en", "de"}


# ------------------------------------------------------------------------- vocabulary (no espeak)

def _vocab():
    return PhonemeVocab.build(["h ə l ˈ oʊ , | w ˈ ɜː l d !", "ɡ ˈ uː t ə n | t ˈ ɑː k"])


def test_vocab_layout_and_round_trip():
    v = _vocab()
    assert v.tokens[:5] == list(SPECIAL_TOKENS) and WORD_SEP in v.tokens
    assert {f"<lang:{lang}>" for lang in SUPPORTED_LANGUAGES} <= set(v.tokens)
    assert v == PhonemeVocab.build(["ɡ ˈ uː t ə n | t ˈ ɑː k", "h ə l ˈ oʊ , | w ˈ ɜː l d !"])  # order-free
    x = "h ə l ˈ oʊ , | w ˈ ɜː l d !"
    ids = v.encode(x, "en")
    assert ids[0] == v.lang_id("en") == v.index["<lang:en>"]
    assert v.decode(ids) == x
    assert v.decode(ids, skip_special=False).split() == ["<lang:en>"] + x.split()
    ids = v.encode(x.split(), "de", bos=True, eos=True)
    assert ids[0] == v.bos_id and ids[1] == v.index["<lang:de>"] and ids[-1] == v.eos_id
    assert v.decode(ids) == x


def test_vocab_unknown_and_errors():
    v = _vocab()
    ids = v.encode("h ʒ oʊ", "en")
    assert ids[2] == v.unk_id and v.decode(ids) == "h <unk> oʊ"
    with pytest.raises(TextError, match="unsupported language"):
        v.encode("h", "xx")
    with pytest.raises(TextError, match="not in this phoneme vocabulary"):
        PhonemeVocab(["h"], languages=("en",)).encode("h", "de")
    with pytest.raises(TextError, match="out of range"):
        v.decode([len(v)])


def test_vocab_save_load(tmp_path):
    v = _vocab()
    path = v.save(tmp_path)
    assert path.name == VOCAB_NAME
    w = PhonemeVocab.load(tmp_path)
    assert w == v and w.tokens == v.tokens and PhonemeVocab.load(path) == v
    assert w.encode("h ə l ˈ oʊ", "en") == v.encode("h ə l ˈ oʊ", "en")
    assert path.read_bytes() == v.save(tmp_path / "again.json").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError):
        PhonemeVocab.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        PhonemeVocab.load(tmp_path / "missing.json")


def test_split_phonemes():
    assert split_phonemes("h ˈoʊ, | w") == ["h", "ˈ", "oʊ", ",", "|", "w"]


# ------------------------------------------------------------------------- espeak-ng

@needs_espeak
def test_phonemize_english():
    out = Phonemizer("en").phonemize(["Hello, world!", "hello"])
    assert len(out) == 2 and all(out)
    toks = out[1].split()
    assert "h" in toks and "l" in toks and ("oʊ" in toks or "əʊ" in toks)
    assert "," in out[0].split() and "!" in out[0].split() and WORD_SEP in out[0].split()


@needs_espeak
def test_phonemize_german():
    out = Phonemizer("de")("Guten Tag")
    toks = out.split()
    assert "t" in toks and "n" in toks and WORD_SEP in toks and any("ː" in t for t in toks)


@needs_espeak
def test_phonemizer_errors():
    with pytest.raises(TextError, match="empty"):
        Phonemizer("en").phonemize(["ok", "  "])
    with pytest.raises(TextError, match="unsupported language"):
        Phonemizer("klingon")


@needs_espeak
def test_text_to_phonemes(tmp_path):
    t2p = TextToPhonemes(("en", "de"))
    with pytest.raises(TextError, match="no phoneme vocabulary"):
        t2p.encode("hello", "en")
    vocab = t2p.build_vocab([("Hello world, Dr. Smith paid $5.", "en"), ("Guten Tag, 21 Leute.", "de")])
    ids = t2p.encode("Hello world", "en", eos=True)
    assert ids[0] == vocab.index["<lang:en>"] and ids[-1] == vocab.eos_id
    assert vocab.unk_id not in ids
    assert vocab.decode(ids) == t2p.phonemes("Hello world", "en")[0]
    de = t2p.encode_batch(["Guten Tag"], "de")[0]
    assert de[0] == vocab.index["<lang:de>"]
    with pytest.raises(TextError, match="empty"):
        t2p.encode("   ", "en")
    with pytest.raises(TextError, match="not enabled"):
        t2p.encode("bonjour", "fr")
    again = TextToPhonemes(("en", "de"), PhonemeVocab.load(vocab.save(tmp_path)))
    assert again.encode("Hello world", "en", eos=True) == ids
