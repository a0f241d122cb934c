"""Text normalisation for speech (the front end of phoneme-based voice cloning, VALL-E X style).

    normalize_text("Dr. Smith paid $5.20 on 2024-03-05 at 10:30.")
    # 'doctor Smith paid five dollars twenty cents on March fifth, twenty twenty-four at ten thirty.'
    normalize_text("Es kostet 3,50 € (21%).", language="de")
    # 'Es kostet drei Euro fünfzig Cent (einundzwanzig Prozent).'

Numbers become words so that the phonemizer (espeak-ng) reads them the same way every time:
integers (with thousands separators), negative numbers, decimals, ordinals, years, ISO and
"5 March 2024"/"March 5, 2024" dates, clock times, currency amounts, percentages; common
abbreviations are expanded; quotes, dashes and ellipses get one canonical form; whitespace is
collapsed. English has the full rule set; German, French and Spanish expand numbers, decimals,
percentages, currency, times and a few abbreviations. Words keep their case (espeak does not care,
and German nouns stay readable); expansions are lower case except month names.

Number words come from ``num2words`` (pip package ``num2words``). Errors are :class:`TextError`
(a ``CodecLMError`` and ``ValueError``) with a one-line message: unsupported language code, text
that is not a string, or empty/whitespace-only text.
"""

from __future__ import annotations

import re
import unicodedata

from codeclm.errors import CodecLMError

__all__ = ["SUPPORTED_LANGUAGES", "TextError", "check_language", "normalize_text"]

SUPPORTED_LANGUAGES: tuple[str, ...] = ("de", "en", "es", "fr")


class TextError(CodecLMError, ValueError):
    """Text that cannot be turned into speech tokens (empty, unsupported language, no phonemes...)."""


def check_language(language: str) -> str:
    """Canonical two-letter code for ``language`` ("EN", "en-US", "en_gb" -> "en"), or TextError."""
    if not isinstance(language, str):
        raise TextError(f"language must be a string code such as 'en', got {type(language).__name__}")
    code = language.strip().lower().replace("_", "-").split("-")[0]
    if code not in SUPPORTED_LANGUAGES:
        raise TextError(f"unsupported language {language!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
    return code


def _n2w(number, language: str, to: str = "cardinal") -> str:
    try:
        from num2words import num2words
    except ImportError as e:  # pragma: no cover - dependency missing
        raise TextError("number normalisation needs the 'num2words' package: pip install num2words") from e
    return num2words(number, lang=language, to=to)


# ---------------------------------------------------------------------------------------------
# Per-language word tables
# ---------------------------------------------------------------------------------------------

_MONTHS = {
    "en": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"],
    "de": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
           "Oktober", "November", "Dezember"],
    "fr": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"],
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
           "octubre", "noviembre", "diciembre"],
}
_DECIMAL_WORD = {"en": "point", "de": "Komma", "fr": "virgule", "es": "coma"}
_PERCENT_WORD = {"en": "percent", "de": "Prozent", "fr": "pour cent", "es": "por ciento"}
_MINUS_WORD = {"en": "minus", "de": "minus", "fr": "moins", "es": "menos"}
_AND_WORD = {"en": "and", "de": "und", "fr": "et", "es": "y"}
# symbol -> (singular, plural, cents singular, cents plural)
_CURRENCY = {
    "en": {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
           "£": ("pound", "pounds", "penny", "pence")},
    "de": {"$": ("Dollar", "Dollar", "Cent", "Cent"), "€": ("Euro", "Euro", "Cent", "Cent"),
           "£": ("Pfund", "Pfund", "Penny", "Pence")},
    "fr": {"$": ("dollar", "dollars", "centime", "centimes"), "€": ("euro", "euros", "centime", "centimes"),
           "£": ("livre", "livres", "penny", "pence")},
    "es": {"$": ("dólar", "dólares", "centavo", "centavos"), "€": ("euro", "euros", "céntimo", "céntimos"),
           "£": ("libra", "libras", "penique", "peniques")},
}
_ABBREVIATIONS = {  # case-sensitive, matched as whole tokens including the final dot
    "en": {"Dr.": "doctor", "Mr.": "mister", "Mrs.": "missus", "Ms.": "miz", "Prof.": "professor",
           "Jr.": "junior", "Sr.": "senior", "Mt.": "mount", "vs.": "versus", "etc.": "et cetera",
           "e.g.": "for example", "i.e.": "that is", "approx.": "approximately", "Ave.": "avenue", "Rd.": "road", "Co.": "company", "Inc.": "incorporated",
           "Ltd.": "limited", "Dept.": "department"},
    "de": {"Dr.": "Doktor", "Prof.": "Professor", "Nr.": "Nummer", "Str.": "Straße", "z.B.": "zum Beispiel",
           "z. B.": "zum Beispiel", "d.h.": "das heißt", "d. h.": "das heißt", "usw.": "und so weiter",
           "bzw.": "beziehungsweise", "ca.": "circa", "Hr.": "Herr", "Fr.": "Frau", "evtl.": "eventuell"},
    "fr": {"M.": "monsieur", "Mme": "madame", "Mlle": "mademoiselle", "Dr": "docteur", "Dr.": "docteur",
           "etc.": "et cetera", "p.ex.": "par exemple", "n°": "numéro"},
    "es": {"Sr.": "señor", "Sra.": "señora", "Srta.": "señorita", "Dr.": "doctor", "Dra.": "doctora",
           "etc.": "etcétera", "p.ej.": "por ejemplo", "Ud.": "usted", "Uds.": "ustedes"},
}
_SUFFIX_RE = {"en": r"(?:st|nd|rd|th)", "fr": r"(?:er|re|e|ème)", "es": r"(?:º|ª|o|a)", "de": None}

# ---------------------------------------------------------------------------------------------
# Character-level clean-up
# ---------------------------------------------------------------------------------------------

_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‟": '"', "«": '"', "»": '"', "‹": "'", "›": "'",
                         "‘": "'", "’": "'", "‚": "'", "‛": "'", "`": "'", "´": "'"})
_WS = re.compile(r"\s+")
_ELLIPSIS = re.compile(r"\.{3,}|…")
_DASH = re.compile(r"\s*(?:--+|[–—―])\s*|\s+-\s+")


def _clean(text: str) -> str:
    s = unicodedata.normalize("NFKC", text)  # also turns no-break spaces into spaces
    s = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Zs") else c for c in s)
    s = s.translate(_QUOTES)
    s = _ELLIPSIS.sub("…", s)
    s = _DASH.sub(" — ", s)
    return _WS.sub(" ", s).strip()


# ---------------------------------------------------------------------------------------------
# Number expansion
# ---------------------------------------------------------------------------------------------

def _int_words(digits: str, lang: str) -> str:
    return _n2w(int(digits), lang).replace(",", "")  # "one million, two hundred" -> no pause


def _digits_words(digits: str, lang: str) -> str:
    return " ".join(_n2w(int(d), lang) for d in digits)


def _decimal_words(int_part: str, frac: str, lang: str) -> str:
    return f"{_int_words(int_part or '0', lang)} {_DECIMAL_WORD[lang]} {_digits_words(frac, lang)}"


def _year_words(digits: str, lang: str) -> str:
    return _n2w(int(digits), lang, to="year").replace("oh-", "oh ")


def _ordinal_words(digits: str, lang: str) -> str:
    return _n2w(int(digits), lang, to="ordinal").replace(",", "")


def _number_regexes(lang: str) -> tuple[str, str]:
    """(thousands separator, decimal separator) as regex fragments."""
    return (r",", r"\.") if lang == "en" else (r"\.", r",")


def _date(day: int, month: int, year: str | None, lang: str) -> str:
    name = _MONTHS[lang][month - 1]
    y = f" {_year_words(year, lang)}" if year else ""
    if lang == "en":
        return f"{name} {_ordinal_words(str(day), 'en')}" + (f",{y}" if y else "")
    if lang == "de":
        return f"{_ordinal_words(str(day), 'de')}r {name}{y}"  # "fünfter März"
    if lang == "fr":
        d = "premier" if day == 1 else _int_words(str(day), "fr")
        return f"{d} {name}{y}"
    return f"{_int_words(str(day), 'es')} de {name}" + (f" de {_int_words(year, 'es')}" if y else "")


def _time(h: str, m: str, suffix: str | None, lang: str) -> str:
    hh, mm = int(h), int(m)
    if lang == "en":
        if mm == 0:
            words = f"{_int_words(h, lang)} o'clock" if not suffix else _int_words(h, lang)
        elif mm < 10:
            words = f"{_int_words(h, lang)} oh {_int_words(m, lang)}"
        else:
            words = f"{_int_words(h, lang)} {_int_words(m, lang)}"
        if suffix:
            words += " " + " ".join(c for c in suffix.lower() if c.isalpha())
        return words
    hour = {"de": "Uhr", "fr": "heures" if hh != 1 else "heure", "es": ""}[lang]
    hw = "ein" if lang == "de" and hh == 1 else _int_words(h, lang)
    parts = [hw, hour] if hour else [hw]
    if mm:
        parts.append(_int_words(m, lang) if lang != "es" else f"y {_int_words(m, lang)}")
    return " ".join(parts)


def _currency(symbol: str, int_part: str, cents: str | None, lang: str) -> str:
    one, many, c_one, c_many = _CURRENCY[lang][symbol]
    n = int(int_part.replace(",", "").replace(".", "") or "0")
    words = f"{_int_words(str(n), lang)} {one if n == 1 else many}"
    if cents and int(cents):
        c = int(cents.ljust(2, "0"))
        words += f" {_int_words(str(c), lang)} {c_one if c == 1 else c_many}"
    return words


def _expand_numbers(s: str, lang: str) -> str:
    thou, dec = _number_regexes(lang)
    months = _MONTHS[lang]
    month_re = "|".join(months + ([m[:3] + r"\.?" for m in months] if lang == "en" else []))

    # ISO dates 2024-03-05
    def iso(m: re.Match) -> str:
        y, mo, d = m.group(1), int(m.group(2)), int(m.group(3))
        if not (1 <= mo <= 12 and 1 <= d <= 31):
            return m.group(0)
        return _date(d, mo, y, lang)
    s = re.sub(r"\b(\d{4})-(\d{2})-(\d{2})\b", iso, s)

    def month_index(name: str) -> int:
        name = name.rstrip(".").lower()
        for i, full in enumerate(months):
            if full.lower() == name or (lang == "en" and full[:3].lower() == name):
                return i + 1
        raise AssertionError(name)  # pragma: no cover

    # "5 March 2024", "5. März 2024", "5th of March"
    day_suffix = r"(?:st|nd|rd|th)?(?: of)?" if lang == "en" else r"\.?" if lang == "de" else r"(?:er)?"
    s = re.sub(rf"\b(\d{{1,2}}){day_suffix} ({month_re})(?: (\d{{4}}))?\b",
               lambda m: _date(int(m.group(1)), month_index(m.group(2)), m.group(3), lang), s)
    if lang == "en":  # "March 5, 2024", "March 5th"
        s = re.sub(rf"\b({month_re}) (\d{{1,2}})(?:st|nd|rd|th)?(?:,? (\d{{4}}))?\b",
                   lambda m: _date(int(m.group(2)), month_index(m.group(1)), m.group(3), lang), s)

    # times 10:30, 9:05 pm
    # (a final "p.m." dot that ends the sentence is kept as punctuation; German "10:30 Uhr" drops "Uhr")
    s = re.sub(r"\b([01]?\d|2[0-3]):([0-5]\d)(?: ?([AaPp]\.?[Mm](?:\.(?!\s*$|\s+[A-Z]))?))?(?!\d)"
               + (r"(?: Uhr\b)?" if lang == "de" else ""),
               lambda m: _time(m.group(1), m.group(2), m.group(3), lang), s)

    # currency: $5.20, € 3, 3,50 €, 5$
    num = rf"(\d{{1,3}}(?:{thou}\d{{3}})+|\d+)(?:{dec}(\d{{1,2}}))?"
    sym = r"([$€£])"
    s = re.sub(rf"{sym} ?{num}(?![\d])", lambda m: _currency(m.group(1), m.group(2), m.group(3), lang), s)
    s = re.sub(rf"(?<![\d.,]){num} ?{sym}", lambda m: _currency(m.group(3), m.group(1), m.group(2), lang), s)

    # years: a bare 4-digit number 1100..2099 ("two thousand" for 2000; "1999th" is an ordinal)
    if lang in ("en", "de"):
        def year(m: re.Match) -> str:
            v = int(m.group(0))
            return _year_words(m.group(0), lang) if 1100 <= v <= 2099 else _int_words(m.group(0), lang)
        s = re.sub(r"(?<![\w.,-])\d{4}(?![\d%]|[.,]\d|st|nd|rd|th)", year, s)

    # strip thousands separators: 1,000,000 -> 1000000
    s = re.sub(rf"\b\d{{1,3}}(?:{thou}\d{{3}})+\b(?!{dec}\d)", lambda m: re.sub(r"\D", "", m.group(0)), s)
    s = re.sub(rf"\b\d{{1,3}}(?:{thou}\d{{3}})+(?={dec}\d)", lambda m: re.sub(r"\D", "", m.group(0)), s)

    # percentages (before plain numbers; decimals handled inside)
    def percent(m: re.Match) -> str:
        sign = f"{_MINUS_WORD[lang]} " if m.group(1) else ""
        n = _decimal_words(m.group(2), m.group(3), lang) if m.group(3) else _int_words(m.group(2), lang)
        return f"{sign}{n} {_PERCENT_WORD[lang]}"
    s = re.sub(rf"(?<![\w.,])(-)?(\d+)(?:{dec}(\d+))? ?%", percent, s)

    # ordinals
    suffix = _SUFFIX_RE[lang]
    if suffix:
        s = re.sub(rf"\b(\d+){suffix}\b" if lang != "es" else rf"\b(\d+){suffix}",
                   lambda m: _ordinal_words(m.group(1), lang), s)

    # decimals and negative numbers
    def decimal(m: re.Match) -> str:
        sign = f"{_MINUS_WORD[lang]} " if m.group(1) else ""
        return sign + _decimal_words(m.group(2), m.group(3), lang)
    s = re.sub(rf"(?<![\w.,])(-)?(\d*){dec}(\d+)\b", decimal, s)

    # remaining integers (with a sign)
    s = re.sub(r"(?<![\w.,])-(\d+)\b", lambda m: f"{_MINUS_WORD[lang]} {_int_words(m.group(1), lang)}", s)
    s = re.sub(r"\d+", lambda m: _int_words(m.group(0), lang), s)
    return s


# ---------------------------------------------------------------------------------------------
# Abbreviations and symbols
# ---------------------------------------------------------------------------------------------

def _expand_abbreviations(s: str, lang: str) -> str:
    if lang == "en":  # "St. Louis" -> Saint, "Baker St." -> Street
        s = re.sub(r"(?<!\w)St\.(?= [A-Z])", "saint", s)
        s = re.sub(r"(?<!\w)St\.(?=\s*$)", "street.", s)
        s = re.sub(r"(?<!\w)St\.", "street", s)
        s = re.sub(r"(?<!\w)[Nn]o\. ?(?=\d)", "number ", s)  # "No. 5" (but not "No. I won't")
    for abbr, full in sorted(_ABBREVIATIONS[lang].items(), key=lambda kv: -len(kv[0])):
        pat = rf"(?<![\w.]){re.escape(abbr)}" + (r"(?!\w)" if abbr[-1].isalnum() else "")
        s = re.sub(pat + r"(?=\s*$)", full + ".", s) if abbr.endswith(".") else s
        s = re.sub(pat, full, s)
    s = re.sub(r"\s*&\s*", f" {_AND_WORD[lang]} ", s)
    return s


def normalize_text(text: str, language: str = "en") -> str:
    """Normalise ``text`` for speech in ``language`` (see the module docstring); TextError for an
    unsupported language code or empty text. The result is non-empty, single-spaced and stripped."""
    lang = check_language(language)
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    s = _clean(text)
    if not s:
        raise TextError("text is empty (nothing to speak)")
    s = _expand_abbreviations(s, lang)
    s = _expand_numbers(s, lang)
    s = _WS.sub(" ", s)
    s = re.sub(r" ([,.;:!?…])", r"\1", s)  # no space before closing punctuation
    s = s.strip()
    if not s:  # pragma: no cover - expansions never produce empty text
        raise TextError("text is empty after normalisation")
    return s
