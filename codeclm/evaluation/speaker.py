"""Speaker embeddings (Resemblyzer's d-vector encoder) and their cosine similarity.

>>> a = speaker_embedding(wav_a, 24000)          # float [C, N] or [N] at any rate
>>> a.shape, float(np.linalg.norm(a))
((256,), 1.0)
>>> cosine(a, speaker_embedding(wav_b, 16000))    # same voice: high (about 0.8+); other voices lower

The encoder is Resemblyzer's ``VoiceEncoder`` (a 3-layer LSTM GE2E d-vector model, 256 dims,
weights shipped inside the pip package; it runs on the CPU in about 20 ms per second of audio on
one thread). Audio is mixed to mono, resampled to 16 kHz with soxr, then Resemblyzer's
``preprocess_wav`` raises quiet audio to -30 dBFS and cuts long silences (webrtcvad); when the
voice-activity detector keeps less than 0.3 s (noise, a buzz) the untrimmed audio is embedded
instead. Embeddings are non-negative (ReLU) and unit norm, so cosines lie in [0, 1]; content leaks
into them a little (two voices saying the same sentence score higher than saying different ones),
so compare similarities over different texts.

Resemblyzer pins ``webrtcvad``, which does not build on recent Pythons; install it with
``pip install resemblyzer --no-deps webrtcvad-wheels librosa``. Its import is lazy (the encoder is
built once, on first use, and cached); a missing package raises a one-line
:class:`~codeclm.asr.MissingPackageError` naming that command. The checkpoint is loaded
with ``torch.load(weights_only=True)`` and checked to hold every weight of the model.
Silent audio (peak below -80 dBFS) has no speaker: :class:`~codeclm.errors.AudioError`.
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from codeclm.asr import ASR_SAMPLE_RATE, MissingPackageError, mono_16k
from codeclm.errors import AudioError, CodecLMError

__all__ = ["EMBEDDING_DIM", "INSTALL_HINT", "speaker_embedding", "cosine"]

EMBEDDING_DIM = 256
INSTALL_HINT = "pip install resemblyzer --no-deps webrtcvad-wheels librosa"
_SILENCE_PEAK = 1e-4  # -80 dBFS
_MIN_VOICED = int(0.3 * ASR_SAMPLE_RATE)  # fewer samples kept by the VAD: embed the untrimmed audio
_LOCK = threading.Lock()


def _import_resemblyzer():
    try:
        with warnings.catch_warnings():  # resemblyzer imports scipy.ndimage.morphology (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
            from resemblyzer import audio as rz_audio
    except ImportError as exc:
        missing = f" ({exc.name} is missing)" if getattr(exc, "name", None) else ""
        raise MissingPackageError(f"speaker similarity needs the 'resemblyzer' package{missing}: {INSTALL_HINT}") from None
    return resemblyzer, rz_audio


@functools.lru_cache(maxsize=1)
def _encoder():
    """The cached ``VoiceEncoder`` on the CPU, in eval mode, with every weight checked."""
    resemblyzer, _ = _import_resemblyzer()
    weights = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
    if not weights.is_file():
        raise CodecLMError(f"{weights}: Resemblyzer's pretrained weights are missing; reinstall: {INSTALL_HINT}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)["model_state"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = resemblyzer.VoiceEncoder("cpu", verbose=False, weights_fpath=weights)
        # VoiceEncoder loads with strict=False: load again strictly so that no weight stays random.
        own = encoder.state_dict()
        encoder.load_state_dict({k: state[k] for k in own if k in state}, strict=True)
    except Exception as exc:  # an unpickling error, a truncated file, a missing key
        msg = str(exc).strip().splitlines()
        raise CodecLMError(f"{weights}: cannot load Resemblyzer's weights ({msg[0] if msg else type(exc).__name__})") from None
    return encoder.eval()


def speaker_embedding(wav, sample_rate: int) -> np.ndarray:
    """Unit-norm float32 d-vector ``[256]`` of the voice in ``wav`` (``[C, N]`` or ``[N]`` at ``sample_rate``).

    Raises :class:`~codeclm.errors.AudioError` for empty, NaN or silent audio and a one-line
    :class:`~codeclm.asr.MissingPackageError` when resemblyzer is not installed.
    """
    encoder = _encoder()
    _, rz_audio = _import_resemblyzer()
    mono = mono_16k(wav, sample_rate, "speaker_embedding").numpy().astype(np.float32)
    if float(np.abs(mono).max()) <= _SILENCE_PEAK:
        raise AudioError("speaker_embedding: the audio is silent (no voice to embed)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        voiced = rz_audio.preprocess_wav(mono)  # no source rate: already 16 kHz
        if len(voiced) < _MIN_VOICED:
            voiced = rz_audio.normalize_volume(mono, rz_audio.audio_norm_target_dBFS, increase_only=True)
        with _LOCK, torch.inference_mode():
            emb = encoder.embed_utterance(np.ascontiguousarray(voiced, dtype=np.float32))
    emb = np.asarray(emb, dtype=np.float32)
    norm = float(np.linalg.norm(emb))
    if not np.isfinite(emb).all() or norm == 0.0:
        raise AudioError("speaker_embedding: the encoder found no voice in the audio")
    return emb / norm


def cosine(a, b) -> float:
    """Cosine similarity of two embeddings (1-D arrays or tensors); 0.0 when either is all zeros."""
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel()
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise CodecLMError(f"cosine: embeddings of different sizes {a.size} and {b.size}")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
