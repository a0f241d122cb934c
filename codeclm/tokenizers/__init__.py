"""Text tokenizers for conditioning (``codeclm.tokenizers``; not the Hugging Face ``tokenizers`` package).

Captions: :class:`CaptionTokenizer` (SentencePiece) with its :func:`normalize_text`. Speech (VALL-E X
style phonemes): :func:`normalize_speech_text` (numbers, dates, abbreviations...), :class:`Phonemizer`
(espeak-ng), :class:`PhonemeVocab` and :class:`TextToPhonemes`.
"""

from codeclm.tokenizers.normalize import SUPPORTED_LANGUAGES, TextError
from codeclm.tokenizers.normalize import normalize_text as normalize_speech_text
from codeclm.tokenizers.phonemes import (
    PhonemeVocab,
    Phonemizer,
    TextToPhonemes,
    espeak_available,
)
from codeclm.tokenizers.text import (
    PAD_ID,
    UNK_ID,
    CaptionTokenizer,
    normalize_text,
    train_caption_tokenizer,
)

__all__ = [
    "PAD_ID",
    "SUPPORTED_LANGUAGES",
    "UNK_ID",
    "CaptionTokenizer",
    "PhonemeVocab",
    "Phonemizer",
    "TextError",
    "TextToPhonemes",
    "espeak_available",
    "normalize_speech_text",
    "normalize_text",
    "train_caption_tokenizer",
]
