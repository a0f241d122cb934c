"""Speech recognition and word error rate: :mod:`codeclm.asr`, re-exported under its former name.

The recogniser moved below the pipelines and the evaluation (both use it; see docs/architecture.md).
"""

from codeclm.asr import (  # noqa: F401  (re-exported, with the decoder caches)
    ASR_LANGUAGES,
    ASR_SAMPLE_RATE,
    ASRError,
    MissingPackageError,
    _decoder,
    _vocabulary_decoder,
    asr_supports,
    mono_16k,
    normalize_words,
    transcribe,
    vocabulary_of,
    word_edit_distance,
    word_error_rate,
)
from codeclm.asr import __all__  # noqa: F401
