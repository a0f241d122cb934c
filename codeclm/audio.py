"""Reading, writing and resampling audio: soundfile for I/O, soxr for resampling.

Audio inside codeclm is a float32 tensor ``[channels, samples]`` (or ``[batch, channels, samples]``
for models). Every failure becomes an :class:`~codeclm.errors.AudioError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from codeclm.errors import AudioError, CodecLMError
from codeclm.fileio import atomic_output, os_error

__all__ = ["load_audio", "save_audio", "format_for_path", "resample", "convert_channels", "check_waveform", "audio_info"]


def resample(wav: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample ``[..., samples]`` from ``orig_sr`` to ``target_sr`` with soxr (high quality)."""
    if orig_sr == target_sr:
        return wav
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    shape = wav.shape
    flat = wav.reshape(-1, shape[-1]).detach().cpu().double().numpy().T  # soxr wants [samples, ch]
    out = soxr.resample(np.ascontiguousarray(flat), orig_sr, target_sr, quality="HQ")
    out = torch.from_numpy(np.ascontiguousarray(out.T)).to(wav.dtype)
    return out.reshape(*shape[:-1], out.shape[-1])


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Mix down to mono (mean) or duplicate mono to ``channels``; ``wav`` is ``[C, T]``."""
    have = wav.shape[0]
    if have == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=0, keepdim=True)
    if have == 1:
        return wav.expand(channels, -1).contiguous()
    if have > channels:
        return wav[:channels]
    raise AudioError(f"cannot convert {have}-channel audio to {channels} channels")


def check_waveform(wav: torch.Tensor, name: str = "audio") -> None:
    """Raise AudioError if ``wav`` is empty or holds NaN/inf samples."""
    if wav.numel() == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """soundfile's header info (sample rate, channels, frames), with codeclm errors."""
    path = _existing_file(path)
    try:
        return sf.info(str(path))
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from None


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int | None = None,
    *,
    start: float = 0.0,
    duration: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Load ``path`` as float32 ``[channels, samples]``; returns ``(wav, sample_rate)``.

    ``sample_rate`` resamples with soxr, ``channels`` mixes down or duplicates, ``start`` and
    ``duration`` (seconds) read only a segment. Errors are one-line :class:`AudioError` s.
    """
    path = _existing_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            first = int(round(start * sr))
            if first:
                f.seek(min(first, f.frames))
            frames = -1 if duration is None else int(round(duration * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from None
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    check_waveform(wav, str(path))
    if channels is not None:
        wav = convert_channels(wav, channels)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, sr


def save_audio(
    path: str | os.PathLike,
    wav: torch.Tensor,
    sample_rate: int,
    *,
    subtype: str | None = None,
    clip: bool = True,
) -> Path:
    """Write ``wav`` (``[C, T]`` or ``[T]``) atomically: a temp file in the same folder, then rename.

    The format follows the extension (.wav, .flac, .ogg, ...). Never leaves a half-written file.
    """
    path = Path(path)
    wav = torch.as_tensor(wav).detach().float().cpu()
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise AudioError(f"{path}: expected audio shaped [channels, samples], got {tuple(wav.shape)}")
    check_waveform(wav, str(path))
    if clip:
        wav = wav.clamp(-1.0, 1.0)
    fmt = format_for_path(path)
    if path.parent and not path.parent.exists():
        raise AudioError(f"{path}: folder {path.parent} does not exist")
    try:
        with atomic_output(path) as tmp:
            sf.write(str(tmp), wav.numpy().T, sample_rate, format=fmt, subtype=subtype)
    except CodecLMError:
        raise
    except OSError as exc:
        raise AudioError(str(os_error(path, exc))) from None
    except Exception as exc:
        raise AudioError(f"{path}: could not write audio ({_short(exc)})") from None
    return path


_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG", ".mp3": "MP3",
            ".aiff": "AIFF", ".aif": "AIFF"}


def format_for_path(path: Path) -> str:
    """soundfile format name for a file extension (AudioError if unknown)."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unknown audio extension {path.suffix!r} (use one of {', '.join(_FORMATS)})")
    return fmt


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    return path


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def audio_argument(audio, sample_rate: int, channels: int | None = None, name: str = "audio",
                   default_rate: int | None = None) -> torch.Tensor:
    """Float32 CPU ``[C, N]`` at ``sample_rate`` from an audio path, a float tensor ``[C, N]`` /
    ``[N]`` at ``default_rate`` (None: the rate must be given), or ``(tensor, rate)``.
    ``channels`` mixes down / duplicates (None: as given). Empty or NaN/inf audio: AudioError."""
    if isinstance(audio, (str, os.PathLike)):
        wav, _ = load_audio(audio, sample_rate, channels)
    else:
        wav, rate = audio if isinstance(audio, tuple) and len(audio) == 2 else (audio, default_rate)
        if not torch.is_tensor(wav) or not wav.is_floating_point() or wav.dim() not in (1, 2) or wav.numel() == 0:
            raise AudioError(f"{name}: must be an audio path, a float tensor [channels, samples] or (tensor, rate)")
        if rate is None:
            raise AudioError(f"{name}: a tensor needs its sample rate: pass (tensor, rate)")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise AudioError(f"{name}: sample rate must be a positive number, got {rate!r}")
        wav = wav.detach().float().cpu()
        wav = wav[None] if wav.dim() == 1 else wav
        if channels is not None:
            wav = convert_channels(wav, channels)
        if int(rate) != sample_rate:
            wav = resample(wav, int(rate), sample_rate)
    check_waveform(wav, name)
    return wav
