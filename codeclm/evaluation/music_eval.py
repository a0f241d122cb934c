"""Reading musical attributes back from audio: the yardstick of text-to-music adherence.

    from codeclm.evaluation.music_eval import estimate_tempo, estimate_key, tonality, InstrumentClassifier
    bpm = estimate_tempo(wav, 24000)                      # librosa's beat tracker, BPM
    key = estimate_key(wav, 24000)                        # KeyEstimate(tonic=2, mode="major", ...)
    scores = tonality(wav, 24000)                         # flatness, onsets, harmonicity, chroma clarity
    clf = InstrumentClassifier.load()                     # checkpoints/music_eval: lead family
    clf.predict(wav, 24000)                               # "pipe" (flute), "reed", ...

Every estimator takes a waveform (numpy or torch; ``[N]``, ``[C, N]`` or ``[1, C, N]``) and its
sample rate; audio is mixed to mono and resampled to :data:`EVAL_SR` (the synthetic corpus's
rate) first, so models at other rates are measured the same way.

* **Tempo** (:func:`estimate_tempo`): ``librosa.beat.beat_track`` on the onset envelope;
  :func:`fold_tempo` maps it into one octave ([80, 160) BPM) where the tracker's octave is ambiguous.
* **Key and mode** (:func:`estimate_key`): a Krumhansl-Schmuckler key-profile estimator: the
  clip's mean chromagram (``librosa.feature.chroma_cqt`` on the harmonic part of an HPSS split)
  correlated with the 24 rotated major / minor profiles (Krumhansl-Kessler, or Temperley's).
  :meth:`KeyEstimate.mode_given_tonic` answers "major or minor?" for a known tonic.
* **Instrument family** (:class:`InstrumentClassifier`): a small MLP (one hidden layer) over
  clip statistics of log-mel bands (mean, std, percentiles), MFCCs, attacks, HPSS sustain and
  envelope modulation (:func:`instrument_features_v2`), trained on renders of the synthetic
  corpus (``codeclm data synth-music``) and the same renders through the music codec, to name
  the General MIDI family of the piece's *lead* instrument (the first one its caption names);
  :func:`train_instrument_classifier` and ``python -m codeclm.evaluation.music_eval train``.
  Folders of the first classifier (logistic regression over :func:`instrument_features_v1`)
  still load.
* **Tonality** (:func:`tonality`): spectral flatness, onset peakiness and onset rate, HPSS
  harmonicity and chroma clarity: "notes like the training corpus" vs "noise" as numbers.
* **Melody** (:func:`pitch_class_agreement`, :func:`melody_agreement`): how often the dominant
  pitch class per codec frame (:func:`codeclm.chroma.chroma_indices`) equals a reference's.
* **Held-out captions** (:func:`corpus_pieces`, :func:`vary`, :func:`training_captions`):
  pieces drawn like the corpus's (``codeclm.data.synth_music.plan_piece``) from a seed the
  training corpus did not use, varied one attribute at a time, and checked against the
  training captions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codeclm.errors import CodecLMError

__all__ = [
    "EVAL_SR", "FAMILIES", "KeyEstimate", "InstrumentClassifier", "DEFAULT_CLASSIFIER",
    "to_mono", "estimate_tempo", "estimate_key", "tonality", "instrument_features", "family_of",
    "train_instrument_classifier", "fit_mlp", "fit_logistic", "FEATURE_V1", "FEATURE_V2",
    "instrument_features_v1", "instrument_features_v2", "pitch_class_agreement", "melody_agreement", "spearman",
    "corpus_pieces", "training_captions", "vary", "lead_choices", "render_piece", "key_from_chroma",
    "mean_chroma", "default_classifier_folder", "melody_following", "scale_melody", "noise",
    "tonality_reference", "TONALITY_KEYS", "fold_tempo", "TEMPO_FOLD", "benchmark_captions", "split_manifest",
]

EVAL_SR = 24000
DEFAULT_CLASSIFIER = "music_eval"  # under checkpoints/
# General MIDI families (program // 8).
FAMILIES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
            "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive",
            "sound effects")
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Key profiles, index 0 = tonic.
PROFILES = {
    "krumhansl": (np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
                  np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])),
    "temperley": (np.array([5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0]),
                  np.array([5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0])),
}


def _quiet(fn):
    """Silence librosa's warnings about short clips / tuning (the estimates are what we report)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    return wrapper


def family_of(program: int) -> str:
    """General MIDI family name of a (0-based) program number."""
    if not 0 <= int(program) < 128:
        raise CodecLMError(f"GM program must be in 0..127, got {program}")
    return FAMILIES[int(program) // 8]


# -- audio in ------------------------------------------------------------------------------------
def to_mono(wav, sample_rate: int, target_sr: int = EVAL_SR) -> np.ndarray:
    """float32 mono ``[N]`` at ``target_sr`` from ``[N]``, ``[C, N]`` or ``[1, C, N]`` (numpy/torch)."""
    if torch.is_tensor(wav):
        wav = wav.detach().float().cpu().numpy()
    x = np.asarray(wav, dtype=np.float32)
    while x.ndim > 1:
        if x.ndim == 3 and x.shape[0] != 1:
            raise CodecLMError(f"one clip at a time, got a batch of {x.shape[0]}")
        x = x[0] if x.ndim == 3 else x.mean(axis=0)
    if x.size == 0:
        raise CodecLMError("empty audio")
    if not np.isfinite(x).all():
        raise CodecLMError("audio contains NaN or infinite samples")
    if int(sample_rate) != target_sr:
        import soxr

        x = soxr.resample(x, int(sample_rate), target_sr).astype(np.float32)
    return np.ascontiguousarray(x)


def _normalized(x: np.ndarray, rms_db: float = -20.0) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return x * (10 ** (rms_db / 20) / rms) if rms > 1e-8 else x


# -- tempo ---------------------------------------------------------------------------------------
@_quiet
def estimate_tempo(wav, sample_rate: int, hop_length: int = 256) -> float:
    """Tempo in BPM from librosa's beat tracker (0.0 for silence)."""
    import librosa

    x = to_mono(wav, sample_rate)
    if float(np.abs(x).max()) < 1e-6:
        return 0.0
    env = librosa.onset.onset_strength(y=_normalized(x), sr=EVAL_SR, hop_length=hop_length)
    tempo, _ = librosa.beat.beat_track(onset_envelope=env, sr=EVAL_SR, hop_length=hop_length)
    return float(np.atleast_1d(tempo)[0])


TEMPO_FOLD = (80.0, 160.0)


def fold_tempo(bpm: float, low: float = TEMPO_FOLD[0], high: float = TEMPO_FOLD[1]) -> float:
    """``bpm`` doubled or halved into ``[low, high)`` (an octave): a beat tracker's octave is
    ambiguous (60 bpm with eighth-note hi-hats reads as 120), so asked tempos inside one octave
    are compared with estimates folded into it. 0 stays 0."""
    if bpm <= 0:
        return 0.0
    if high != 2 * low:
        raise CodecLMError(f"tempo fold range must be one octave, got [{low}, {high})")
    while bpm < low:
        bpm *= 2
    while bpm >= high:
        bpm /= 2
    return float(bpm)


# -- key and mode --------------------------------------------------------------------------------
@dataclass
class KeyEstimate:
    """Best of 24 keys; ``scores [2, 12]`` are the correlations (row 0 major, row 1 minor, column
    the tonic pitch class, C = 0)."""

    tonic: int
    mode: str
    score: float
    scores: np.ndarray

    @property
    def name(self) -> str:
        return f"{_NOTE_NAMES[self.tonic]} {self.mode}"

    def mode_given_tonic(self, tonic: int) -> str:
        """Major or minor, the tonic being known."""
        return "major" if self.scores[0, int(tonic) % 12] >= self.scores[1, int(tonic) % 12] else "minor"


@_quiet
def mean_chroma(wav, sample_rate: int, harmonic: bool = True) -> np.ndarray:
    """``[12]`` mean CQT chromagram (C = 0) of the clip (its harmonic part by default)."""
    import librosa

    x = _normalized(to_mono(wav, sample_rate))
    if harmonic:
        x = librosa.effects.harmonic(x, margin=2.0)
    chroma = librosa.feature.chroma_cqt(y=x, sr=EVAL_SR, hop_length=512, fmin=librosa.note_to_hz("C1"),
                                        n_octaves=7, norm=None)
    return chroma.mean(axis=1)


def key_from_chroma(chroma: np.ndarray, profile: str = "krumhansl") -> KeyEstimate:
    """Krumhansl-Schmuckler: Pearson correlation of a ``[12]`` chroma with each rotated profile."""
    if profile not in PROFILES:
        raise CodecLMError(f"unknown key profile {profile!r} (choose from {sorted(PROFILES)})")
    c = np.asarray(chroma, dtype=np.float64)
    scores = np.zeros((2, 12))
    for m, prof in enumerate(PROFILES[profile]):
        for tonic in range(12):
            p = np.roll(prof, tonic)  # p[pc] = weight of pitch class pc in the key on `tonic`
            scores[m, tonic] = 0.0 if c.std() < 1e-12 else float(np.corrcoef(c, p)[0, 1])
    m, tonic = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return KeyEstimate(int(tonic), ("major", "minor")[int(m)], float(scores[m, tonic]), scores)


def estimate_key(wav, sample_rate: int, profile: str = "krumhansl") -> KeyEstimate:
    """Tonic pitch class and major/minor of a clip (see :func:`key_from_chroma`)."""
    return key_from_chroma(mean_chroma(wav, sample_rate), profile)


# -- tonality proxies ----------------------------------------------------------------------------
def _peak_harmonicity(x: np.ndarray, threshold_db: float = 10.0, width: int = 31) -> float:
    import librosa
    from scipy.ndimage import median_filter

    S = np.abs(librosa.stft(x, n_fft=4096, hop_length=1024)) ** 2
    freqs = np.fft.rfftfreq(4096, 1.0 / EVAL_SR)
    S = S[(freqs >= 50.0) & (freqs <= 5000.0)]
    local = median_filter(S, size=(width, 1), mode="nearest")
    peaks = S > local * 10 ** (threshold_db / 10)
    return float((S * peaks).sum() / max(float(S.sum()), 1e-20))


@_quiet
def tonality(wav, sample_rate: int) -> dict[str, float]:
    """Numbers that tell notes from noise (the clip is mixed to mono, 24 kHz, -20 dBFS RMS).

    * ``flatness``: median spectral flatness (geometric / arithmetic mean of the power spectrum;
      1 for white noise, near 0 for a few partials).
    * ``harmonicity``: share of the power (50 Hz - 5 kHz, 4096-point STFT) in spectral peaks, bins
      at least 10 dB above the median of their 31 neighbours across frequency: partials near 1,
      noise of any colour (white, pink, brown, a low rumble) below 0.06. (An HPSS harmonic/percussive
      ratio does not do this: brown noise's steep spectrum reads 0.96 "harmonic".)
    * ``onset_peakiness``: 95th percentile / median of the onset-strength envelope: note attacks
      stand out of it (music), a noise's flux does not.
    * ``onset_rate``: onsets per second (librosa's onset detector).
    * ``chroma_clarity``: mean over loud frames of the largest pitch class's share of the STFT
      chromagram: 1/12 = 0.083 for a flat spectrum, higher when a few pitch classes dominate.
    """
    import librosa

    x = _normalized(to_mono(wav, sample_rate))
    if float(np.abs(x).max()) < 1e-6:
        return {"flatness": 0.0, "harmonicity": 0.0, "onset_peakiness": 0.0, "onset_rate": 0.0,
                "chroma_clarity": 0.0}
    S = np.abs(librosa.stft(x, n_fft=2048, hop_length=512))
    flat = librosa.feature.spectral_flatness(S=S, power=2.0)[0]
    harm = _peak_harmonicity(x)
    env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(
        librosa.feature.melspectrogram(S=S ** 2, sr=EVAL_SR), ref=np.max), sr=EVAL_SR)
    peaky = float(np.percentile(env, 95) / max(np.median(env), 1e-6))
    onsets = librosa.onset.onset_detect(onset_envelope=env, sr=EVAL_SR, hop_length=512)
    chroma = librosa.feature.chroma_stft(S=S ** 2, sr=EVAL_SR, norm=None, tuning=0.0)
    energy = chroma.sum(axis=0)
    loud = energy > energy.max() * 1e-3
    clarity = float((chroma.max(axis=0)[loud] / energy[loud]).mean()) if loud.any() else 0.0
    return {"flatness": float(np.median(flat)), "harmonicity": harm, "onset_peakiness": peaky,
            "onset_rate": float(len(onsets) / (len(x) / EVAL_SR)), "chroma_clarity": clarity}


TONALITY_KEYS = ("flatness", "harmonicity", "onset_peakiness", "onset_rate", "chroma_clarity")


def noise(kind: str, seconds: float, sample_rate: int = EVAL_SR, seed: int = 0) -> np.ndarray:
    """White or brown (integrated white, DC removed over 0.1 s) noise at -20 dBFS RMS."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    x = rng.standard_normal(n)
    if kind == "brown":
        x = np.cumsum(x)
        k = max(3, int(0.1 * sample_rate) | 1)
        x = x - np.convolve(x, np.ones(k) / k, mode="same")
    elif kind != "white":
        raise CodecLMError(f"noise kind must be white or brown, got {kind!r}")
    return _normalized(x.astype(np.float32))


def tonality_reference(clips, sample_rate: int = EVAL_SR, seconds: float = 8.0) -> dict:
    """``{"corpus": {score: {min, p5, median, p95, max}}, "noise": {"white": ..., "brown": ...}}``
    of an iterable of clips (e.g. training-corpus renders) and of noise of ``seconds``."""
    rows = [tonality(w, sample_rate) for w in clips]
    if not rows:
        raise CodecLMError("tonality_reference needs at least one clip")
    corpus = {k: {"min": round(float(np.min([r[k] for r in rows])), 4),
                  "p5": round(float(np.percentile([r[k] for r in rows], 5)), 4),
                  "median": round(float(np.median([r[k] for r in rows])), 4),
                  "p95": round(float(np.percentile([r[k] for r in rows], 95)), 4),
                  "max": round(float(np.max([r[k] for r in rows])), 4)} for k in TONALITY_KEYS}
    noises = {kind: {k: round(v, 4) for k, v in tonality(noise(kind, seconds), EVAL_SR).items()}
              for kind in ("white", "brown")}
    return {"n": len(rows), "corpus": corpus, "noise": noises}


# -- instrument family ---------------------------------------------------------------------------
FEATURE_V1 = "mel64+mfcc20+delta+contrast+spectral mean/std v1"
FEATURE_V2 = "mel96 mean/std/p10/p90+mfcc+delta+contrast+band onsets+mel hpss+modulation v2"


@_quiet
def instrument_features_v1(wav, sample_rate: int) -> np.ndarray:
    """``[236]`` float32 (the first classifier's features): mean and std over time of 64 log-mel
    bands, 20 MFCCs and their deltas, spectral contrast (7 bands), and mean/std of centroid,
    bandwidth, rolloff and flatness."""
    import librosa

    x = _normalized(to_mono(wav, sample_rate))
    S = np.abs(librosa.stft(x, n_fft=2048, hop_length=512)) ** 2
    mel = librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=EVAL_SR, n_mels=64, fmax=12000),
                              ref=1.0, top_db=80.0)
    mfcc = librosa.feature.mfcc(S=mel, n_mfcc=20)
    d_mfcc = librosa.feature.delta(mfcc, width=min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2)))\
        if mfcc.shape[1] >= 3 else np.zeros_like(mfcc)
    mag = np.sqrt(S)
    contrast = librosa.feature.spectral_contrast(S=mag, sr=EVAL_SR)
    spec = _spectral_shape(mag)
    parts = [mel, mfcc, d_mfcc, contrast, spec]
    return np.concatenate([np.concatenate([p.mean(axis=1), p.std(axis=1)]) for p in parts]).astype(np.float32)


def _spectral_shape(mag: np.ndarray) -> np.ndarray:
    """``[4, T]``: spectral centroid, bandwidth, rolloff (kHz) and log flatness of a magnitude STFT."""
    import librosa

    return np.stack([librosa.feature.spectral_centroid(S=mag, sr=EVAL_SR)[0] / 1000.0,
                     librosa.feature.spectral_bandwidth(S=mag, sr=EVAL_SR)[0] / 1000.0,
                     librosa.feature.spectral_rolloff(S=mag, sr=EVAL_SR)[0] / 1000.0,
                     np.log(librosa.feature.spectral_flatness(S=mag)[0] + 1e-6)])


def _band_groups(n: int, k: int) -> list[slice]:
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@_quiet
def instrument_features_v2(wav, sample_rate: int) -> np.ndarray:
    """``[F]`` float32 over the clip (mono, 24 kHz, -20 dBFS RMS; 2048-point STFT, hop 512):

    * 96 log-mel bands (to 12 kHz): mean, std, 10th and 90th percentile over time (the 90th
      follows the loud lead notes above the accompaniment);
    * 20 MFCCs: mean, std; their deltas: std and mean absolute value;
    * spectral contrast (7 bands), centroid, bandwidth, rolloff, flatness: mean and std;
    * attacks: onset strength (log-mel flux) in 8 band groups: mean, std, 95th percentile;
    * sustain vs attack: an HPSS split of the mel power: the harmonic share in 16 band groups;
    * modulation: the log-energy envelope of 8 band groups, its power in 1-3, 3-8 and 8-16 Hz
      (tremolo / vibrato / repeated attacks), relative to the envelope's total variance.
    """
    import librosa

    x = _normalized(to_mono(wav, sample_rate))
    S = np.abs(librosa.stft(x, n_fft=2048, hop_length=512)) ** 2
    melp = librosa.feature.melspectrogram(S=S, sr=EVAL_SR, n_mels=96, fmax=12000)
    mel = librosa.power_to_db(melp, ref=1.0, top_db=80.0)
    T = mel.shape[1]
    mfcc = librosa.feature.mfcc(S=mel, n_mfcc=20)
    d_mfcc = librosa.feature.delta(mfcc, width=min(9, T - (1 - T % 2))) if T >= 3 else np.zeros_like(mfcc)
    mag = np.sqrt(S)
    contrast = librosa.feature.spectral_contrast(S=mag, sr=EVAL_SR)
    spec = _spectral_shape(mag)
    out = [mel.mean(1), mel.std(1), np.percentile(mel, 10, axis=1), np.percentile(mel, 90, axis=1),
           mfcc.mean(1), mfcc.std(1), d_mfcc.std(1), np.abs(d_mfcc).mean(1),
           contrast.mean(1), contrast.std(1), spec.mean(1), spec.std(1)]
    flux = np.maximum(0.0, np.diff(mel, axis=1, prepend=mel[:, :1]))
    on = np.stack([flux[g].mean(0) for g in _band_groups(96, 8)])
    out += [on.mean(1), on.std(1), np.percentile(on, 95, axis=1)]
    harm, perc = librosa.decompose.hpss(melp, kernel_size=(17, 9)) if T >= 17 else (melp, 0 * melp)
    out.append(np.array([harm[g].sum() / max(float(harm[g].sum() + perc[g].sum()), 1e-12)
                         for g in _band_groups(96, 16)]))
    fps = EVAL_SR / 512
    freqs = np.fft.rfftfreq(T, 1 / fps)
    mods = []
    for g in _band_groups(96, 8):
        env = np.log(melp[g].sum(0) + 1e-8)
        env = env - env.mean()
        P = np.abs(np.fft.rfft(env * np.hanning(T))) ** 2
        tot = float(P[freqs >= 0.5].sum()) + 1e-12
        mods += [float(P[(freqs >= lo) & (freqs < hi)].sum()) / tot for lo, hi in ((1, 3), (3, 8), (8, 16))]
    out.append(np.array(mods))
    return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in out]).astype(np.float32)


_FEATURES = {FEATURE_V1: instrument_features_v1, FEATURE_V2: instrument_features_v2}


def instrument_features(wav, sample_rate: int, feature: str = FEATURE_V2) -> np.ndarray:
    """``[F]`` float32 clip features of the classifier kind ``feature`` (default: the current one,
    :func:`instrument_features_v2`; :data:`FEATURE_V1` for :func:`instrument_features_v1`)."""
    if feature not in _FEATURES:
        raise CodecLMError(f"unknown instrument features {feature!r} (known: {sorted(_FEATURES)})")
    return _FEATURES[feature](wav, sample_rate)


def default_classifier_folder() -> Path:
    """``checkpoints/music_eval`` (or under ``$CODECLM_CHECKPOINTS``)."""
    from codeclm.pretrained import CHECKPOINTS_DIR

    return Path(os.environ.get("CODECLM_CHECKPOINTS", CHECKPOINTS_DIR)) / DEFAULT_CLASSIFIER


class InstrumentClassifier:
    """Lead-family classifier over standardized :func:`instrument_features`: a small MLP (ReLU
    hidden layers, then a softmax layer), or with no hidden layer a multinomial logistic
    regression (the first shipped classifier).

    Folder, format 2: ``model.safetensors`` (``mean [F]``, ``std [F]``, ``layer{i}.weight``,
    ``layer{i}.bias``) and ``classes.json`` (``{"format": 2, "classes": [...], "feature": ...,
    "sample_rate": ..., "command": ...}``). Format 1 (no ``"format"`` key; ``weight [K, F]``,
    ``bias [K]``, ``mean``, ``std``: the logistic classifier over :data:`FEATURE_V1`) still loads.
    """

    FORMAT = 2
    FEATURE = FEATURE_V2  # what new classifiers are trained on

    def __init__(self, classes: list[str], layers, mean: torch.Tensor, std: torch.Tensor,
                 info: dict | None = None, feature: str = FEATURE_V2) -> None:
        self.classes = list(classes)
        self.layers = [(torch.as_tensor(w).float(), torch.as_tensor(b).float()) for w, b in layers]
        self.mean, self.std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()
        self.info = dict(info or {})
        if feature not in _FEATURES:
            raise CodecLMError(f"unknown instrument features {feature!r} (known: {sorted(_FEATURES)})")
        self.feature = feature
        n_in = self.mean.numel()
        if not self.layers:
            raise CodecLMError("classifier needs at least one layer")
        for i, (w, b) in enumerate(self.layers):
            if w.dim() != 2 or w.shape[1] != n_in or b.shape != (w.shape[0],):
                raise CodecLMError(f"classifier layer {i}: weight {tuple(w.shape)} / bias {tuple(b.shape)} "
                                   f"do not follow {n_in} inputs")
            n_in = w.shape[0]
        if n_in != len(self.classes):
            raise CodecLMError(f"classifier ends in {n_in} outputs for {len(self.classes)} classes")

    @property
    def kind(self) -> str:
        return "logistic" if len(self.layers) == 1 else "mlp"

    def features(self, wav, sample_rate: int) -> np.ndarray:
        """This classifier's features of a clip."""
        return instrument_features(wav, sample_rate, self.feature)

    def logits_of_features(self, feats) -> torch.Tensor:
        f = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        if f.dim() == 1:
            f = f[None]
        h = (f - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def probabilities(self, wav, sample_rate: int) -> dict[str, float]:
        p = self.logits_of_features(self.features(wav, sample_rate)).softmax(-1)[0]
        return {c: float(v) for c, v in zip(self.classes, p)}

    def predict(self, wav, sample_rate: int, among=None) -> str:
        """The most probable family (``among``: only these class names compete)."""
        return self.predict_features(self.features(wav, sample_rate), among)

    def predict_features(self, feats, among=None) -> str:
        logits = self.logits_of_features(feats)[0]
        if among is not None:
            unknown = [c for c in among if c not in self.classes]
            if unknown:
                raise CodecLMError(f"classifier does not know {unknown} (it knows {self.classes})")
            keep = torch.tensor([c in set(among) for c in self.classes])
            logits = logits.masked_fill(~keep, float("-inf"))
        return self.classes[int(logits.argmax())]

    # files
    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean.contiguous(), "std": self.std.contiguous()}
        for i, (w, b) in enumerate(self.layers):
            tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"] = w.contiguous(), b.contiguous()
        save_file(tensors, str(folder / "model.safetensors"))
        info = {"format": self.FORMAT, "classes": self.classes, "feature": self.feature, "sample_rate": EVAL_SR,
                "model": self.kind, "layers": [list(w.shape) for w, _ in self.layers], **self.info}
        (folder / "classes.json").write_text(json.dumps(info, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None) -> InstrumentClassifier:
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else default_classifier_folder()
        if not (folder / "classes.json").is_file() or not (folder / "model.safetensors").is_file():
            raise CodecLMError(f"{folder}: not an instrument classifier folder "
                               "(needs classes.json and model.safetensors)")
        info = json.loads((folder / "classes.json").read_text())
        fmt = int(info.get("format", 1))
        feature = info.get("feature")
        if fmt not in (1, 2):
            raise CodecLMError(f"{folder}: classifier folder format {fmt} is newer than this code (reads 1, 2)")
        if feature not in _FEATURES or (fmt == 1 and feature != FEATURE_V1):
            raise CodecLMError(f"{folder}: classifier made for features {feature!r}, "
                               f"this code computes {sorted(_FEATURES)}")
        w = load_file(str(folder / "model.safetensors"))
        if fmt == 1:
            layers = [(w["weight"], w["bias"])]
        else:
            n = len([k for k in w if k.startswith("layer") and k.endswith(".weight")])
            layers = [(w[f"layer{i}.weight"], w[f"layer{i}.bias"]) for i in range(n)]
        extra = {k: v for k, v in info.items()
                 if k not in ("format", "classes", "feature", "sample_rate", "model", "layers")}
        return cls(info["classes"], layers, w["mean"], w["std"], extra, feature=feature)


def fit_logistic(X: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2, steps: int = 300,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardize ``X [N, F]`` and fit softmax regression (L-BFGS, L2 ``l2`` on the weights, class
    weights inverse to frequency). Returns ``(weight [K, F], bias [K], mean [F], std [F])``."""
    torch.manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.long)
    mean, std = Xt.mean(0), Xt.std(0).clamp(min=1e-6)
    Z = (Xt - mean) / std
    cw = _class_weights(yt, n_classes)
    W = torch.zeros(n_classes, Z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Z @ W.T + b, yt, weight=cw) + l2 * W.pow(2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().float(), b.detach().float(), mean.float(), std.float()


def _class_weights(yt: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(yt, minlength=n_classes).double()
    return torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))


def fit_mlp(X: np.ndarray, y: np.ndarray, n_classes: int, hidden: int = 128, weight_decay: float = 1e-3,
            dropout: float = 0.2, input_noise: float = 0.1, epochs: int = 400, lr: float = 3e-3,
            seed: int = 0) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Standardize ``X [N, F]`` and fit a one-hidden-layer ReLU MLP (full-batch AdamW, input
    dropout and Gaussian noise on the standardized features, class weights inverse to
    frequency), deterministic under ``seed``. Returns ``([(W0, b0), (W1, b1)], mean, std)``."""
    gen = torch.Generator().manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    mean, std = Xt.mean(0), Xt.std(0).clamp(min=1e-6)
    Z = (Xt - mean) / std
    cw = _class_weights(yt, n_classes).float()
    F = Z.shape[1]
    W0 = (torch.randn(hidden, F, generator=gen) * math.sqrt(2.0 / F)).requires_grad_()
    b0 = torch.zeros(hidden, requires_grad=True)
    W1 = (torch.randn(n_classes, hidden, generator=gen) * math.sqrt(1.0 / hidden)).requires_grad_()
    b1 = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.AdamW([W0, b0, W1, b1], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        keep = (torch.rand(Z.shape, generator=gen) >= dropout).float() / (1 - dropout)
        zin = (Z + input_noise * torch.randn(Z.shape, generator=gen)) * keep
        h = torch.relu(zin @ W0.T + b0)
        loss = torch.nn.functional.cross_entropy(h @ W1.T + b1, yt, weight=cw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return [(W0.detach(), b0.detach()), (W1.detach(), b1.detach())], mean, std


def _lead_labels(records) -> list[str]:
    """Lead family of each manifest record (from its caption: the first instrument named)."""
    from codeclm.data.synth_music import GM_NAMES

    by_name = {name: family_of(p) for p, name in GM_NAMES.items()}
    out = []
    for r in records:
        cap = r.caption or ""
        if " with " not in cap:
            raise CodecLMError(f"{r.path}: caption {cap!r} is not a synthetic-corpus caption")
        lead = cap.split(" with ", 1)[1].split(",")[0].strip()
        if lead not in by_name:
            raise CodecLMError(f"{r.path}: unknown lead instrument {lead!r} in {cap!r}")
        out.append(by_name[lead])
    return out


def manifest_features(manifest: str | os.PathLike, progress: bool = True, feature: str = FEATURE_V2,
                      cache: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str], list]:
    """Features, lead labels and records of a synthetic-corpus manifest's captioned clips;
    ``cache``: an ``.npz`` file keeping each clip's features by path, size and mtime."""
    from tqdm.auto import tqdm

    from codeclm.audio import load_audio
    from codeclm.data.manifest import read_manifest

    records = [r for r in read_manifest(manifest) if r.caption]
    if not records:
        raise CodecLMError(f"{manifest}: no captioned records")
    labels = _lead_labels(records)
    known: dict[str, np.ndarray] = {}
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as z:
            known = {k: z[k] for k in z.files}

    def key(path) -> str:
        st = os.stat(path)
        return f"{feature}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"

    feats, fresh = [], 0
    for r in tqdm(records, desc="features", unit="clip", disable=not progress):
        k = key(r.path)
        if k not in known:
            wav, sr = load_audio(r.path)
            known[k] = instrument_features(wav, sr, feature)
            fresh += 1
        feats.append(known[k])
    if cache is not None and fresh:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache).with_suffix(".tmp.npz")
        np.savez(tmp, **known)
        os.replace(tmp, cache)
    return np.stack(feats), labels, records


def train_instrument_classifier(train_manifests, heldout_manifests=(), l2: float = 1e-2,
                                progress: bool = True, command: str | None = None, model: str = "mlp",
                                hidden: int = 128, epochs: int = 400, seed: int = 0,
                                feature: str | None = None, exclude_captions=(), cache=None):
    """Fit the lead-family classifier on synthetic-corpus manifests (e.g. renders and the same
    renders through a codec); returns ``(classifier, report)``, the report holding each held-out
    manifest's accuracy (overall, and among each style's own lead families).

    ``model``: ``"mlp"`` (one hidden layer of ``hidden`` ReLUs, :func:`fit_mlp`, weight decay
    ``l2``) or ``"logistic"`` (:func:`fit_logistic`); ``feature``: :data:`FEATURE_V2` (default
    for the MLP) or :data:`FEATURE_V1` (default for logistic). Training clips whose caption is in
    ``exclude_captions`` (e.g. the benchmark's held-out captions) are dropped."""
    if isinstance(train_manifests, (str, os.PathLike)):
        train_manifests = [train_manifests]
    if isinstance(heldout_manifests, (str, os.PathLike)):
        heldout_manifests = [heldout_manifests]
    if model not in ("mlp", "logistic"):
        raise CodecLMError(f"model must be mlp or logistic, got {model!r}")
    feature = feature or (FEATURE_V2 if model == "mlp" else FEATURE_V1)
    exclude = set(exclude_captions or ())
    parts = [manifest_features(m, progress, feature, cache) for m in train_manifests]
    X = np.concatenate([x for x, _, _ in parts])
    labels = [lab for _, labs, _ in parts for lab in labs]
    keep = np.array([r.caption not in exclude for _, _, recs in parts for r in recs])
    X, labels = X[keep], [lab for lab, k in zip(labels, keep) if k]
    classes = sorted(set(labels), key=FAMILIES.index)
    y = np.array([classes.index(lab) for lab in labels])
    info = {"trained_on": [str(m) for m in train_manifests], "n_train": int(len(y)),
            "n_excluded": int((~keep).sum()), "seed": seed,
            "label": "GM family of the lead instrument (the first instrument of the caption)"}
    if model == "mlp":
        layers, mean, std = fit_mlp(X, y, len(classes), hidden=hidden, weight_decay=l2, epochs=epochs, seed=seed)
        info.update({"weight_decay": l2, "hidden": hidden, "epochs": epochs})
    else:
        W, b, mean, std = fit_logistic(X, y, len(classes), l2=l2, seed=seed)
        layers = [(W, b)]
        info["l2"] = l2
    if command:
        info["command"] = command
    clf = InstrumentClassifier(classes, layers, mean, std, info, feature=feature)
    pred = clf.logits_of_features(X).argmax(-1).numpy()
    report = {"n_train": int(len(y)), "classes": classes, "model": model,
              "train_accuracy": round(float(np.mean(pred == y)), 4), "heldout": {}}
    for m in heldout_manifests:
        Xh, lh, recs = manifest_features(m, progress, feature, cache)
        report["heldout"][str(m)] = classifier_accuracy(clf, Xh, lh, [r.caption for r in recs])
    clf.info["heldout"] = report["heldout"]
    return clf, report


def classifier_accuracy(clf: InstrumentClassifier, feats, labels, captions) -> dict:
    """Accuracy over all classes, and among the lead families of each clip's own style (the
    benchmark's question: which of this style's instruments is it?), with that task's chance."""
    styles = [c.split(" track", 1)[0].split()[-1] for c in captions]
    known = [i for i, lab in enumerate(labels) if lab in clf.classes]
    acc = float(np.mean([clf.predict_features(feats[i]) == labels[i] for i in known])) if known else 0.0
    within, chance = [], []
    for i in known:
        among = lead_choices(styles[i])
        if len(among) < 2:
            continue
        within.append(clf.predict_features(feats[i], among) == labels[i])
        chance.append(1.0 / len(among))
    return {"n_heldout": len(known), "heldout_accuracy": round(acc, 4),
            "heldout_accuracy_within_style": round(float(np.mean(within)), 4) if within else None,
            "chance_within_style": round(float(np.mean(chance)), 4) if chance else None,
            "chance": round(1.0 / len(clf.classes), 4)}


# -- melody --------------------------------------------------------------------------------------
def pitch_class_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of frames, both voiced, whose dominant pitch classes (``chroma_indices``) agree."""
    from codeclm.chroma import SILENT

    n = min(a.shape[-1], b.shape[-1])
    a, b = a[..., :n], b[..., :n]
    keep = (a != SILENT) & (b != SILENT)
    return float((a[keep] == b[keep]).float().mean()) if keep.any() else 0.0


def melody_agreement(reference, output, sample_rate: int, hop_length: int, n_frames: int | None = None) -> float:
    """:func:`pitch_class_agreement` of two clips at ``sample_rate``, one chroma frame per
    ``hop_length`` samples (the codec's frames)."""
    from codeclm.chroma import chroma_indices

    ref = chroma_indices(torch.as_tensor(reference).float(), sample_rate, hop_length, n_frames=n_frames)[0]
    out = chroma_indices(torch.as_tensor(output).float(), sample_rate, hop_length, n_frames=n_frames)[0]
    return pitch_class_agreement(ref, out)


def melody_following(pipe, items, seconds: float, seed: int = 0, guidance_scale: float | None = 3.0,
                     batch: int = 1) -> dict:
    """Generate each ``(caption, melody wav [C, N] at pipe.sample_rate)`` with and without its
    melody (same seed) and measure :func:`pitch_class_agreement` of each output with the melody
    over ``seconds``. Returns ``{"with": [...], "without": [...], "gen_s": ..., "audio_s": ...}``
    (``gen_s``: the with-melody generation time)."""
    import time

    from codeclm.chroma import chroma_indices

    hop, sr = pipe.codec.hop_length, pipe.sample_rate
    frames = round(seconds * pipe.frame_rate)
    with_m, without, gen_s = [], [], 0.0
    for i in range(0, len(items), batch):
        chunk = items[i: i + batch]
        caps, wavs = [c for c, _ in chunk], [w[..., : int(round(seconds * sr))] for _, w in chunk]
        t = time.perf_counter()
        outs = pipe.generate(caps, duration=seconds, melody=wavs, seed=seed, guidance_scale=guidance_scale)
        gen_s += time.perf_counter() - t
        plain = pipe.generate(caps, duration=seconds, seed=seed, guidance_scale=guidance_scale)
        for wav, out, pl in zip(wavs, outs, plain):
            ref = chroma_indices(wav, sr, hop, n_frames=frames)[0]
            with_m.append(pitch_class_agreement(ref, chroma_indices(out, sr, hop, n_frames=frames)[0]))
            without.append(pitch_class_agreement(ref, chroma_indices(pl, sr, hop, n_frames=frames)[0]))
    return {"with": with_m, "without": without, "gen_s": gen_s, "audio_s": seconds * len(items)}


def scale_melody(seconds: float, sample_rate: int, note_s: float = 0.5) -> torch.Tensor:
    """``[1, N]``: a C-major scale (C4 upwards, repeating) of sine tones with their 2nd-4th partials."""
    n = int(round(seconds * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    steps = (0, 2, 4, 5, 7, 9, 11, 12)
    midi = torch.tensor([60 + steps[int(k) % len(steps)] for k in (t // note_s)], dtype=torch.float64)
    f = 440.0 * 2 ** ((midi - 69) / 12)
    phase = 2 * math.pi * torch.cumsum(f / sample_rate, 0)
    wav = sum(torch.sin(h * phase) / h for h in range(1, 5))
    return (0.2 * wav / wav.abs().max()).float()[None]


# -- statistics ----------------------------------------------------------------------------------
def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties; 0.0 if either side is constant)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for val in np.unique(v):
            idx = v == val
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


# -- held-out captions ---------------------------------------------------------------------------
def corpus_pieces(seed: int, n: int):
    """The ``n`` pieces ``codeclm data synth-music --seed seed`` plans (no rendering)."""
    from codeclm.data.synth_music import plan_piece

    return [plan_piece(np.random.default_rng([seed, i])) for i in range(n)]


def training_captions(spec: str) -> set[str]:
    """Captions of a training corpus given as ``"SEED:N,SEED:N"`` (``synth-music`` runs)."""
    caps = set()
    for part in filter(None, (s.strip() for s in spec.split(","))):
        seed, _, n = part.partition(":")
        caps |= {p.caption for p in corpus_pieces(int(seed), int(n))}
    return caps


def lead_choices(style: str) -> list[str]:
    """The lead families a style's pieces can have, in GM order."""
    from codeclm.data.synth_music import STYLES

    return sorted({family_of(p) for p in STYLES[style]["lead"]}, key=FAMILIES.index)


def vary(piece, **changes):
    """``piece`` with some attributes changed; the mood follows the corpus's rule (it is drawn from
    the mode and whether bpm >= 110), keeping the same position in its word list."""
    from codeclm.data.synth_music import _MOODS, _PROGRESSIONS

    new = dataclasses.replace(piece, **changes)
    old_list = _MOODS[(piece.mode, piece.bpm >= 110)]
    k = old_list.index(piece.mood) if piece.mood in old_list else 0
    new = dataclasses.replace(new, mood=_MOODS[(new.mode, new.bpm >= 110)][k])
    if new.mode != piece.mode and "progression" not in changes:
        progs = _PROGRESSIONS[new.mode]
        j = _PROGRESSIONS[piece.mode].index(piece.progression) if piece.progression in _PROGRESSIONS[piece.mode] else 0
        new = dataclasses.replace(new, progression=progs[j % len(progs)])
    return new


def benchmark_captions(seed: int = 1717, n: int = 400, tempos=(80, 95, 110, 125, 140)) -> set[str]:
    """Every caption ``benchmarks/music_adherence.py --heldout-seed seed`` can ask: the ``n``
    pieces of ``seed``, each as is and varied in tempo (``tempos``: the default sweep), mode, or lead instrument
    (any of its style's). Training data for the yardstick's classifier leaves these out."""
    from codeclm.data.synth_music import STYLES

    caps = set()
    for p in corpus_pieces(seed, n):
        caps.add(p.caption)
        caps |= {vary(p, bpm=int(b)).caption for b in tempos}
        caps |= {vary(p, mode=m).caption for m in ("major", "minor")}
        caps |= {vary(p, lead=q).caption for q in STYLES[p.style]["lead"]}
    return caps


def render_piece(piece, duration: float, seed: int, folder: str | os.PathLike, name: str,
                 soundfont=None) -> torch.Tensor:
    """Render a planned piece with the corpus's own MIDI writer and fluidsynth settings: ``[C, N]``
    at 24 kHz, cut and levelled like the corpus (``codeclm.data.synth_music``)."""
    from codeclm.audio import load_audio
    from codeclm.data.synth_music import _finish, _render, find_soundfont, piece_to_midi

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10_000])
    piece_to_midi(piece, duration, rng, folder / f"{name}.mid")
    raw = folder / f"{name}.render.wav"
    try:
        _render(folder / f"{name}.mid", raw, find_soundfont(soundfont), EVAL_SR)
        wav, _ = load_audio(raw)
    finally:
        raw.unlink(missing_ok=True)
    return _finish(wav, int(round(duration * EVAL_SR)), EVAL_SR)


def codec_round_trip_corpus(manifest, codec_folder, bandwidth: float, out_dir, n: int | None = None,
                            progress: bool = True) -> Path:
    """Write ``out_dir/wavs/*.wav`` (the clips through the codec at ``bandwidth`` kbps) and
    ``out_dir/manifest.jsonl`` with the same captions; existing outputs are kept (resumable)."""
    from tqdm.auto import tqdm

    from codeclm.audio import load_audio, save_audio
    from codeclm.codec import load_model
    from codeclm.data.manifest import AudioRecord, read_manifest, write_manifest

    codec = load_model(codec_folder)
    out_dir = Path(out_dir)
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    records = [r for r in read_manifest(manifest) if r.caption][:n]
    out = []
    for r in tqdm(records, desc="codec", unit="clip", disable=not progress):
        dst = out_dir / "wavs" / Path(r.path).name
        if not dst.is_file():
            wav, _ = load_audio(r.path, codec.sample_rate, codec.channels)
            with torch.no_grad():
                y = codec.decode(codec.encode(wav[None], bandwidth=bandwidth))[0, :, : wav.shape[-1]]
            save_audio(dst, y, codec.sample_rate)
        out.append(AudioRecord.from_info(dst, caption=r.caption))
    write_manifest(out, out_dir / "manifest.jsonl")
    return out_dir / "manifest.jsonl"


def split_manifest(manifest, out_dir, heldout_percent: int = 15) -> tuple[Path, Path]:
    """``out_dir/train.jsonl`` and ``out_dir/heldout.jsonl``: the manifest's records split by a
    hash of the file name (``sha1(name) % 100 < heldout_percent`` is held out), so the split
    does not move when the corpus grows."""
    import hashlib

    from codeclm.data.manifest import read_manifest, write_manifest

    records = read_manifest(manifest)
    held = [int(hashlib.sha1(Path(r.path).name.encode()).hexdigest(), 16) % 100 < heldout_percent for r in records]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest([r for r, h in zip(records, held) if not h], out_dir / "train.jsonl")
    write_manifest([r for r, h in zip(records, held) if h], out_dir / "heldout.jsonl")
    return out_dir / "train.jsonl", out_dir / "heldout.jsonl"


# -- command line: train the classifier -----------------------------------------------------------
def main(argv=None) -> int:
    import argparse
    import shlex
    import sys

    p = argparse.ArgumentParser(prog="python -m codeclm.evaluation.music_eval",
                                description="Train the lead-instrument-family classifier on synth-music renders.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("train_manifest", nargs="+")
    t.add_argument("--heldout", nargs="*", default=[], help="manifests of pieces made with another seed")
    t.add_argument("-o", "--out", default="checkpoints/music_eval")
    t.add_argument("--model", choices=("mlp", "logistic"), default="mlp")
    t.add_argument("--l2", type=float, default=1e-2, help="weight decay (mlp) / L2 (logistic)")
    t.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP")
    t.add_argument("--epochs", type=int, default=400, help="full-batch steps of the MLP")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--exclude-heldout-seed", type=int, default=1717,
                   help="drop training clips whose caption is a variation the adherence benchmark can ask "
                        "(pieces of this synth-music seed; -1: none)")
    t.add_argument("--cache", default=None, help="an .npz file caching each clip's features")
    t.add_argument("--reference-n", type=int, default=120,
                   help="training clips whose tonality scores make reference.json (the corpus range)")
    t.add_argument("--codec-reference", default=None,
                   help="a manifest of the same training clips through the LM's codec (`codec` below): its "
                        "first --reference-n clips make reference.json's corpus_codec, the range a model "
                        "that speaks that codec's tokens can reach")
    c = sub.add_parser("codec", help="a manifest's clips through a codec (training / held-out data for the classifier)")
    c.add_argument("manifest")
    c.add_argument("--codec", default="checkpoints/music/codec")
    c.add_argument("-b", "--bandwidth", type=float, default=2.0)
    c.add_argument("-n", type=int, default=None, help="only the first N clips")
    c.add_argument("-o", "--out", required=True)
    sp = sub.add_parser("split", help="train / held-out manifests by a hash of each file name")
    sp.add_argument("manifest")
    sp.add_argument("--heldout-percent", type=int, default=15)
    sp.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "split":
        print(*split_manifest(args.manifest, args.out, args.heldout_percent))
        return 0
    if args.cmd == "codec":
        print(codec_round_trip_corpus(args.manifest, args.codec, args.bandwidth, args.out, args.n))
        return 0
    command = "python -m codeclm.evaluation.music_eval " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    exclude = benchmark_captions(args.exclude_heldout_seed) if args.exclude_heldout_seed >= 0 else set()
    clf, report = train_instrument_classifier(args.train_manifest, args.heldout, l2=args.l2, command=command,
                                              model=args.model, hidden=args.hidden, epochs=args.epochs,
                                              seed=args.seed, exclude_captions=exclude, cache=args.cache)
    clf.save(args.out)
    from codeclm.audio import load_audio
    from codeclm.data.manifest import read_manifest

    records = [r for r in read_manifest(args.train_manifest[0]) if r.caption][: args.reference_n]
    ref = tonality_reference(load_audio(r.path)[0] for r in records)
    ref.update({"clips": f"the first {len(records)} of {args.train_manifest[0]}", "command": command})
    if args.codec_reference:
        coded = [r for r in read_manifest(args.codec_reference) if r.caption][: args.reference_n]
        ref["corpus_codec"] = tonality_reference(load_audio(r.path)[0] for r in coded)["corpus"]
        ref["clips_codec"] = f"the first {len(coded)} of {args.codec_reference}"
    (Path(args.out) / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    report["tonality_reference"] = ref
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
