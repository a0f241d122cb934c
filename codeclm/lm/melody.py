"""Melody conditioning (MusicGen-melody style): a reference clip's chromagram as LM conditioning.

    idx = chroma_indices(wav, sample_rate=24000, hop_length=480)     # [B, T] in 0..12 (12: silent)
    cond = MelodyConditioner(dim=128)
    emb, mask = cond(idx)                                              # [B, T, 128], [B, T] bool

The chromagram folds an STFT power spectrum (55 Hz .. 4.2 kHz) onto the 12 pitch classes
(C = 0, ..., B = 11) with a triangular weight around each semitone. As in MusicGen-melody, only
the dominant pitch class of each frame is kept (``argmax``): the melody/harmony line, without
the timbre, so a model cannot copy the reference's sound. Frames quieter than
``silence_db`` below the clip's loudest frame get index 12 (no pitch). One chroma frame per
codec frame (``hop_length`` samples), so the melody lines up with the generated codes.

:class:`MelodyConditioner` embeds the indices (13 rows: 12 pitch classes + silence), adds
sinusoidal positions (time alignment for cross-attention) and a LayerNorm. Pipelines append its
output to the text conditioning along the cross-attention axis; the null condition (CFG, or a
prompt without melody) is all zeros with an all-False mask, like the text's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.layers import sinusoidal_embedding
from codeclm.pretrained import fused_state_dict, load_weights_into, read_json, read_weights, save_folder

__all__ = ["MODEL_TYPE", "N_CHROMA", "SILENT", "MelodyConditioner", "chroma_filterbank", "chroma_indices"]

MODEL_TYPE = "codeclm-melody"
N_CHROMA = 12
SILENT = 12  # index of a frame with no pitch
F_MIN, F_MAX = 55.0, 4200.0


def chroma_filterbank(sample_rate: int, n_fft: int) -> torch.Tensor:
    """``[12, n_fft // 2 + 1]``: weight of each FFT bin for each pitch class (C = 0).

    A bin at frequency f sits at MIDI pitch ``p = 69 + 12 log2(f / 440)``; it counts for pitch
    class c with weight ``max(0, 1 - d)``, d the circular distance in semitones between p and c.
    Bins outside [55 Hz, 4.2 kHz] get no weight.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    valid = (freqs >= F_MIN) & (freqs <= F_MAX)
    pitch = 69.0 + 12.0 * torch.log2(freqs.clamp(min=1e-6) / 440.0)
    classes = torch.arange(N_CHROMA, dtype=torch.float64)[:, None]
    d = torch.remainder(pitch[None, :] - classes, 12.0)
    d = torch.minimum(d, 12.0 - d)
    fb = (1.0 - d).clamp(min=0.0) * valid[None, :]
    return fb.float()


def chroma_indices(wav: torch.Tensor, sample_rate: int, hop_length: int, n_frames: int | None = None,
                   n_fft: int | None = None, silence_db: float = 40.0) -> torch.Tensor:
    """Dominant pitch class per frame: ``wav [B, C, N]`` (or ``[C, N]``, ``[N]``) -> ``[B, T]`` long.

    Frame t is centred on sample ``(t + 0.5) * hop_length``; ``T = ceil(N / hop_length)`` (a
    codec's frame count) unless ``n_frames`` is given (extra frames are silent). Channels are
    averaged. ``n_fft`` defaults to the power of two covering >= 300 ms (8192 at 24 kHz: 2.9 Hz
    bins, fine enough to tell semitones apart at 55 Hz; MusicGen's chroma uses a long window too).
    """
    if not torch.is_tensor(wav) or not wav.is_floating_point():
        raise CodecLMError("melody audio must be a float tensor")
    if wav.dim() == 1:
        wav = wav[None, None]
    elif wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3 or wav.shape[-1] == 0:
        raise CodecLMError(f"melody audio must be [B, C, N] with N > 0, got {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise CodecLMError("melody audio contains NaN or infinite samples")
    x = wav.float().mean(dim=1)  # [B, N]
    B, N = x.shape
    T = math.ceil(N / hop_length)
    n_fft = n_fft or 2 ** math.ceil(math.log2(0.3 * sample_rate))
    # pad so that frame t's window is centred on (t + 0.5) * hop
    left = n_fft // 2 - hop_length // 2
    total = (T - 1) * hop_length + n_fft
    x = nn.functional.pad(x, (max(left, 0), max(total - N - left, 0)))
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop_length, window=window, center=False, return_complex=True)[..., :T]
    power = spec.abs().pow(2)  # [B, F, T]
    chroma = torch.einsum("cf,bft->bct", chroma_filterbank(sample_rate, n_fft).to(x.device), power)
    idx = chroma.argmax(dim=1)  # [B, T]
    energy = chroma.sum(dim=1)
    floor = energy.amax(dim=1, keepdim=True) * 10 ** (-silence_db / 10)
    idx = torch.where((energy > floor) & (energy > 1e-10), idx, torch.full_like(idx, SILENT))
    if n_frames is not None:
        if n_frames > T:
            idx = torch.cat([idx, idx.new_full((B, n_frames - T), SILENT)], dim=1)
        idx = idx[:, :n_frames]
    return idx


class MelodyConditioner(nn.Module):
    """``forward(indices [B, T]) -> (emb [B, T, dim], mask [B, T])``; mask is False where an index
    is negative (padding / no melody)."""

    kind = "melody"

    def __init__(self, dim: int = 128, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"melody conditioner: dim must be even and >= 2, got {dim}")
        self.dim, self.max_period = int(dim), float(max_period)
        self.output_dim = self.dim
        self.emb = nn.Embedding(N_CHROMA + 1, dim)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def forward(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = indices.to(self.device)
        if indices.dim() != 2:
            raise CodecLMError(f"melody indices must be [B, T], got {tuple(indices.shape)}")
        mask = indices >= 0
        x = self.emb(indices.clamp(0, N_CHROMA)) * self.dim ** 0.5  # as the text encoder: content ~ positions
        x = x + sinusoidal_embedding(torch.arange(indices.shape[1], device=x.device), self.dim,
                                     self.max_period).to(x.dtype)
        x = self.norm(x) * mask[..., None].to(x.dtype)
        return x, mask

    def null(self, batch: int, frames: int) -> torch.Tensor:
        """Indices meaning "no melody" (all masked)."""
        return torch.full((batch, frames), -1, dtype=torch.long, device=self.device)

    # -- files ------------------------------------------------------------------------------------
    def save_folder(self, folder: str | os.PathLike) -> Path:
        config = {"model_type": MODEL_TYPE, "dim": self.dim, "max_period": self.max_period}
        return save_folder(folder, config, {k: v.detach().cpu() for k, v in fused_state_dict(self).items()})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> MelodyConditioner:
        folder = Path(folder)
        cfg = read_json(folder / "config.json", "melody conditioner")
        if cfg.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"{folder}: holds a {cfg.get('model_type')!r} model, not {MODEL_TYPE!r}")
        model = cls(dim=int(cfg["dim"]), max_period=float(cfg.get("max_period", 10_000.0)))
        load_weights_into(model, read_weights(folder), str(folder))
        return model.eval()
