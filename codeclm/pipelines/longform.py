"""Long-form generation and continuation: audio longer than the LM's context, or after a clip.

The LM sees at most ``window`` frames at once. :func:`generate_long` generates the first window,
then repeatedly generates another window whose first frames are *forced* to the tail of the codes
so far (``prompt_codes``: at least ``overlap`` frames) and appends only the new frames. The audio
is decoded once from the concatenated codes, so the seam is continuous by construction: the
codec never sees a cut, only one long code sequence.

    audio = generate_long(pipe, "calm lo-fi piano", duration=60, window_seconds=30, overlap_seconds=10)
    clip = encode_clip(pipe, "intro.wav")                       # codes [1, K, P] of a clip
    audio = generate_long(pipe, "calm piano", duration=20, prompt_codes=clip)  # starts with the clip

Seeds: window 0 uses ``seed`` (a single window equals ``pipe.generate(..., seed=seed)``), window
``j`` a seed derived from ``(seed, j)``; the result depends only on the arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from codeclm.errors import AudioError, CodecLMError

__all__ = ["context_frames", "encode_clip", "generate_long", "window_seed"]

DEFAULT_OVERLAP = 0.4  # fraction of the window kept as the next window's prompt (MusicGen: 12 s of 30 s)


def context_frames(pipe) -> int:
    """The most frames the pipeline's LM generates in one window (its context less any prepended
    condition tokens)."""
    steps = getattr(pipe, "max_steps", None)
    return int(pipe.pattern.frames_for_steps(pipe.lm.config.max_seq_len if steps is None else steps))


def window_seed(seed: int | None, index: int) -> int:
    """Seed of window ``index`` (0: ``seed`` itself)."""
    seed = 0 if seed is None else int(seed)
    if index == 0:
        return seed
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


def encode_clip(pipe, clip, sample_rate: int | None = None) -> torch.Tensor:
    """Codes ``[1, K, P]`` of a clip (a path, or a ``[C, T]`` tensor at ``sample_rate``) with the
    pipeline's codec, keeping the LM's K codebooks. The last partial frame is zero-padded."""
    from codeclm.pipelines.core import audio_argument

    codec = pipe.codec
    if torch.is_tensor(clip) or hasattr(clip, "__array__"):
        clip = torch.as_tensor(clip)
        if clip.dim() not in (1, 2):
            raise AudioError(f"clip must be [channels, samples], got {tuple(clip.shape)}")
        if sample_rate is None:
            raise AudioError("clip tensor: pass its sample_rate")
        clip = (clip.float(), sample_rate)
    wav = audio_argument(clip, codec.sample_rate, codec.channels, "clip")
    if getattr(getattr(codec, "config", None), "normalize", False):  # EnCodec 48 kHz: per-chunk scales
        raise CodecLMError("continuation is not available with a codec that normalises loudness per chunk")
    with torch.no_grad():
        codes = codec.encode(wav[None].to(pipe.device))
    return codes[:, : pipe.lm.config.n_q].long()


def _frames(pipe, seconds: float, name: str) -> int:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise CodecLMError(f"{name} must be a number of seconds, got {seconds!r}") from None
    if not seconds > 0:
        raise CodecLMError(f"{name} must be > 0 seconds, got {seconds:g}")
    return max(1, round(seconds * pipe.frame_rate))


def generate_long(pipe, prompt: str, duration: float, window_seconds: float | None = None,
                  overlap_seconds: float | None = None, seed: int | None = 0, guidance_scale: float = 3.0,
                  temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0, do_sample: bool = True,
                  prompt_codes: torch.Tensor | None = None, progress: bool = False,
                  on_window: Callable[[int, torch.Tensor], None] | None = None,
                  return_codes: bool = False, melody=None):
    """Audio ``[C, round(duration * sample_rate)]`` for one prompt, of any length up to the
    pipeline's ``max_duration``, generated window by window.

    ``window_seconds`` (default: the pipeline's ``window_seconds``, else the LM's context) frames
    per LM call; every window after the first is prompted with at least ``overlap_seconds``
    (default 40% of the window) of the codes so far, as many as fit beside its new frames. ``prompt_codes [1, K, P]`` (e.g.
    :func:`encode_clip`) start the output: ``duration`` counts them. ``on_window(j, codes)``
    receives each window's codes (its prompt frames included). ``return_codes``: return
    ``(audio, codes [1, K, F], windows)`` instead, ``windows`` being the list passed to on_window.
    ``melody`` (a melody model): an audio path or tensor, as for ``TextToMusic.generate``; each
    window is conditioned on the chroma of the span of the output it covers.
    """
    if not isinstance(prompt, str):
        raise CodecLMError("prompt must be a string")
    duration = pipe.check_duration(duration)
    total = max(1, round(duration * pipe.frame_rate))
    limit = context_frames(pipe)
    if window_seconds is None:  # the pipeline's own default window (pipeline.json), within the context
        default = getattr(pipe, "window_seconds", None)
        window = limit if default is None else min(limit, _frames(pipe, default, "window"))
    else:
        window = _frames(pipe, window_seconds, "window")
    if window > limit:
        raise CodecLMError(f"window {window / pipe.frame_rate:g} s is longer than the model's context "
                           f"({limit / pipe.frame_rate:.2f} s)")
    if window < 2:
        raise CodecLMError(f"window must hold at least 2 frames ({2 / pipe.frame_rate:g} s)")
    overlap = round(DEFAULT_OVERLAP * window) if overlap_seconds is None else _frames(pipe, overlap_seconds, "overlap")
    overlap = max(1, overlap)
    if overlap >= window:
        raise CodecLMError(f"overlap ({overlap} frames) must be shorter than the window ({window} frames)")

    K = pipe.lm.config.n_q
    if prompt_codes is None:
        codes = torch.zeros(1, K, 0, dtype=torch.long, device=pipe.device)
    else:
        codes = torch.as_tensor(prompt_codes).to(device=pipe.device, dtype=torch.long)
        if codes.dim() != 3 or codes.shape[0] != 1 or codes.shape[1] != K:
            raise CodecLMError(f"prompt_codes must be [1, {K}, P], got {tuple(codes.shape)}")
        if codes.shape[2] >= total:
            raise CodecLMError(f"the clip ({codes.shape[2] / pipe.frame_rate:.2f} s) is not shorter than the "
                               f"requested duration ({duration:g} s): nothing to generate")
    chroma = pipe.melody_indices(melody, 1, total) if melody is not None else None
    windows: list[torch.Tensor] = []
    while codes.shape[2] < total:
        new = min(window - overlap, total - codes.shape[2]) if codes.shape[2] else min(window, total)
        ctx = min(codes.shape[2], window - new)  # as much context as fits, at least `overlap`
        context = codes[:, :, codes.shape[2] - ctx:] if ctx else None
        out = pipe._generate_codes([prompt], ctx + new, window_seed(seed, len(windows)), guidance_scale,
                                   temperature, top_k, top_p, do_sample, prompt_codes=context, progress=progress,
                                   melody=None if chroma is None else
                                   chroma[:, codes.shape[2] - ctx: codes.shape[2] + new])
        windows.append(out)
        if on_window is not None:
            on_window(len(windows) - 1, out)
        codes = torch.cat([codes, out[:, :, ctx:]], 2)
    audio = pipe._decode(codes, round(duration * pipe.sample_rate))[0]
    return (audio, codes, windows) if return_codes else audio
