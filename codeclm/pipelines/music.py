"""Text to music: a MusicGen-style pipeline (T5 or built-in text conditioner, token LM, codec).

    pipe = TextToMusic.from_hf("facebook/musicgen-small folder", tokenizer)   # or from_pretrained
    wavs = pipe.generate(["calm piano"], duration=8.0, seed=0)                # [C, samples] each
    for chunk in pipe.stream("calm piano", duration=8.0): ...                 # [C, n] chunks
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.logits import check_codebook_temperatures
from codeclm.pipelines.base import GenerationPipeline
from codeclm.pretrained import default_checkpoint

__all__ = ["TextToMusic"]

DEFAULT_MUSIC = "music"


class TextToMusic(GenerationPipeline):
    """Text prompts -> music. ``generate`` returns one float tensor ``[channels, samples]`` per prompt."""

    kind = "text-to-music"

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> TextToMusic:
        """Load a pipeline folder; None loads the shipped default (``checkpoints/music``)."""
        folder = Path(folder) if folder is not None else default_checkpoint(DEFAULT_MUSIC)
        info, lm, codec, provider = cls._load_parts(folder)
        pipe = cls(lm, codec, provider=provider)
        pipe.max_duration = float(info.get("max_duration", cls.max_duration))
        if "window_seconds" in info:  # checked by the pipeline.json reader
            pipe.window_seconds = float(info["window_seconds"])
        if "codebook_temperatures" in info:
            pipe.codebook_temperatures = check_codebook_temperatures(info["codebook_temperatures"], lm.config.n_q,
                                                                     str(Path(folder) / "pipeline.json"), ConfigError)
        return pipe.to(device)

    @classmethod
    def from_hf(cls, model_or_folder, tokenizer=None) -> TextToMusic:
        """Convert a transformers ``MusicgenForConditionalGeneration`` (object or folder)."""
        from codeclm.lm.hf import musicgen_from_hf

        lm, codec, conditioner = musicgen_from_hf(model_or_folder, tokenizer)
        return cls(lm, codec, conditioner)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompts, duration: float = 8.0, seed: int | None = 0, melody=None,
                 guidance_scale: float | None = 3.0, temperature: float = 1.0, top_k: int = 250,
                 top_p: float = 0.0, do_sample: bool = True, progress: bool = False,
                 conditions: dict | None = None) -> list[torch.Tensor]:
        """One waveform ``[channels, round(duration * sample_rate)]`` (float32, CPU) per prompt.

        Sampling is seeded per call (``seed``): the same call gives the same audio. ``do_sample``
        False (or ``temperature`` 0) is greedy. ``guidance_scale`` 1 or None (transformers'
        MusicGen convention) disables classifier-free guidance.

        ``melody`` (a model with melody conditioning): an audio file path or a float tensor
        ``[channels, samples]`` at ``sample_rate`` (or ``(tensor, rate)``), or one such per prompt
        (None entries: no melody). Its chromagram's dominant pitch classes, one per codec frame,
        condition the LM (MusicGen-melody); a clip shorter than ``duration`` conditions only the
        start.

        ``conditions``: the model's other conditions by name (its ``pipeline.json`` lists them),
        each value as that conditioner's ``prepare`` takes it (usually one entry per prompt).
        """
        prompts = self._prompts(prompts)
        if melody is not None and not self.has_melody:
            raise CodecLMError("this model has no melody conditioning (no melody/ in its folder); "
                               "drop --melody or use a melody model")
        n_frames = self._n_frames(duration)
        chroma = self.melody_indices(melody, len(prompts), n_frames) if melody is not None else None
        codes = self._generate_codes(prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p,
                                     do_sample, progress=progress, melody=chroma, conditions=conditions)
        return self._decode(codes, round(float(duration) * self.sample_rate))

    def _iter_codes(self, prompts, n_frames, seed, guidance_scale, *args, **kwargs):
        # transformers' MusicGen: guidance_scale=None means no guidance, as 1.0 does (also for
        # codeclm.pipelines.longform, which calls this through _generate_codes)
        return super()._iter_codes(prompts, n_frames, seed, 1.0 if guidance_scale is None else guidance_scale,
                                   *args, **kwargs)

    @property
    def has_melody(self) -> bool:
        return "melody" in self.provider

    def melody_indices(self, melody, batch: int, n_frames: int) -> torch.Tensor:
        """``[batch, n_frames]`` chroma indices (-1: no melody) of one melody or one per prompt
        (the melody condition's ``prepare``)."""
        if not self.has_melody:
            raise CodecLMError("this model has no melody conditioning (no melody/ in its folder); "
                               "drop --melody or use a melody model")
        return self.prepare_condition("melody", melody, batch, n_frames).to(self.device)

    def generate_tokens(self, prompts, max_new_tokens: int = 256, do_sample: bool = False,
                        guidance_scale: float | None = 3.0, temperature: float = 1.0, top_k: int = 250,
                        top_p: float = 0.0, seed: int | None = 0) -> torch.Tensor:
        """Codes ``[batch, n_q, frames]`` after ``max_new_tokens`` LM steps (transformers' count:
        with the delay pattern, ``frames = max_new_tokens - (n_q - 1)``). Greedy by default;
        ``guidance_scale`` None or 1: no classifier-free guidance."""
        prompts = self._prompts(prompts)
        n_frames = self.pattern.frames_for_steps(int(max_new_tokens))
        if n_frames < 1:
            raise CodecLMError(f"max_new_tokens={max_new_tokens} gives no complete frame "
                               f"(need > {self.pattern.num_steps(1) - 1})")
        if self.pattern.num_steps(n_frames) > self.max_steps:
            raise CodecLMError(f"max_new_tokens={max_new_tokens} exceeds the LM's max_seq_len={self.lm.config.max_seq_len}"
                               + (f" less its {self.lm.config.max_seq_len - self.max_steps} prepended condition tokens"
                                  if self.max_steps < self.lm.config.max_seq_len else ""))
        return self._generate_codes(prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p, do_sample)

    def stream(self, prompt, duration: float = 8.0, seed: int | None = 0, guidance_scale: float | None = 3.0,
               temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0,
               do_sample: bool = True) -> Iterator[torch.Tensor]:
        """Audio chunks ``[channels, n]`` as frames complete (a streamable codec), else one chunk at
        the end. Concatenated, they equal ``generate`` with the same arguments (before trimming)."""
        prompts = self._prompts(prompt)
        if len(prompts) != 1:
            raise CodecLMError("stream() takes one prompt")
        n_frames = self._n_frames(duration)
        chunks = self._iter_codes(prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p, do_sample)
        for audio in self._stream_audio(chunks, 1):
            yield audio[0]
