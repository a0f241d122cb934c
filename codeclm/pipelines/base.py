"""The loop every generation pipeline shares: conditions -> codes (token LM) -> audio (codec).

A pipeline owns a :class:`TokenLM`, a :class:`Codec`, an optional :class:`TextConditioner` and
the LM's codebook pattern. ``_generate_codes`` tokenizes and encodes the conditions, runs
:func:`codeclm.lm.generate.iter_codes` (KV cache, CFG in one batch of 2B) with a
``torch.Generator`` seeded per call, and ``stream`` decodes frames as they complete when the
codec can stream exactly (causal, constant padding); otherwise audio is decoded at the end.

Folder layout (``save_pretrained`` / ``from_pretrained``)::

    pipeline.json    {"type": ..., "format": 1, ...}
    lm/              config.json + model.safetensors
    codec/           config.json + model.safetensors
    text/            the conditioner's files (conditioner.json names its type)
    melody/          optional: a chroma conditioner (codeclm.lm.melody), appended to text/'s states
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from codeclm.codec import Codec, load_model
from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.conditioners import TextConditioner, load_conditioner
from codeclm.lm.config import LMConfig
from codeclm.lm.generate import iter_codes
from codeclm.lm.melody import MelodyConditioner
from codeclm.lm.patterns import Pattern
from codeclm.lm.sampling import check_sampling_params
from codeclm.lm.transformer import TokenLM
from codeclm.pipelines.core import (FORMAT, PIPELINE_FILE, BasePipeline, check_codec_identity,  # noqa: F401
                                    read_pipeline_info, write_pipeline_info)
from codeclm.pretrained import load_weights_into, read_config, read_weights, save_folder

__all__ = ["GenerationPipeline", "check_codec_identity", "load_lm", "read_pipeline_info", "save_lm",
           "write_pipeline_info"]


def save_lm(lm: TokenLM, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items()}
    return save_folder(folder, lm.config.to_dict(), state, dtype)


def load_lm(folder: str | os.PathLike) -> TokenLM:
    folder = Path(folder)
    config = LMConfig.from_dict(read_config(folder), source=str(folder / "config.json"))
    lm = TokenLM(config)
    load_weights_into(lm, read_weights(folder), str(folder))
    return lm.eval()


class GenerationPipeline(BasePipeline):
    """Conditions -> codes -> audio, batched and seeded. Subclasses define the user-facing API."""

    kind = "generation"
    max_duration = 300.0  # seconds

    def __init__(self, lm: TokenLM, codec: Codec, conditioner: TextConditioner | None = None,
                 pattern: Pattern | None = None, melody: MelodyConditioner | None = None) -> None:
        if codec.num_codebooks < lm.config.n_q:
            raise ConfigError(f"the codec has {codec.num_codebooks} codebooks, the LM needs {lm.config.n_q}")
        if codec.cardinality != lm.config.card:
            raise ConfigError(f"codec codebooks have {codec.cardinality} entries, the LM predicts {lm.config.card}")
        if lm.config.cross_attention and conditioner is None:
            raise ConfigError("this LM is conditioned (cross-attention): pass a text conditioner")
        if conditioner is not None and lm.config.cross_attention and conditioner.output_dim != lm.config.condition_dim:
            raise ConfigError(f"conditioner gives width {conditioner.output_dim}, the LM expects "
                              f"{lm.config.condition_dim}")
        if melody is not None and (conditioner is None or melody.output_dim != conditioner.output_dim):
            raise ConfigError("a melody conditioner needs a text conditioner of the same width")
        self.lm, self.codec, self.conditioner = lm.eval(), codec.eval(), conditioner
        self.melody_conditioner = melody.eval() if melody is not None else None
        if conditioner is not None:
            conditioner.eval()
        self.pattern = pattern if pattern is not None else lm.config.get_pattern()
        if self.pattern.n_q != lm.config.n_q:
            raise ConfigError(f"pattern is for {self.pattern.n_q} codebooks, the LM has {lm.config.n_q}")

    # -- properties ----------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    def _modules(self) -> list:
        return [self.lm, self.codec, self.conditioner, self.melody_conditioner]

    # -- input checks --------------------------------------------------------------------------
    @staticmethod
    def _prompts(prompts) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts is None or not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
            raise CodecLMError("prompts must be a non-empty list of strings")
        if not all(isinstance(p, str) for p in prompts):
            raise CodecLMError("prompts must be strings")
        return list(prompts)

    def check_duration(self, duration) -> float:
        """``duration`` as seconds in ``(0, max_duration]``, else a one-line CodecLMError."""
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise CodecLMError(f"duration must be a number of seconds, got {duration!r}") from None
        if not duration > 0 or duration > self.max_duration:
            raise CodecLMError(f"duration must be in (0, {self.max_duration:g}] seconds, got {duration:g}")
        return duration

    def _n_frames(self, duration: float) -> int:
        duration = self.check_duration(duration)
        n = max(1, round(duration * self.frame_rate))
        steps = self.pattern.num_steps(n)
        if steps > self.lm.config.max_seq_len:
            limit = self.pattern.frames_for_steps(self.lm.config.max_seq_len) / self.frame_rate
            raise CodecLMError(f"duration {duration:g} s needs {steps} steps; this model handles at most "
                               f"{limit:.2f} s")
        return n

    @staticmethod
    def _check_sampling(guidance_scale: float, temperature: float, top_k: int, top_p: float) -> None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise CodecLMError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        for name, value in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise CodecLMError(f"{name} must be a finite number, got {value}")
        check_sampling_params(temperature, top_k, top_p)

    # -- the loop ------------------------------------------------------------------------------
    def _condition(self, prompts: list[str], melody: torch.Tensor | None = None):
        """Cross-attention input ``(emb, mask)``; ``melody [B, T]`` chroma indices (-1: none) are
        appended after the text when the pipeline has a melody conditioner."""
        if not self.lm.config.cross_attention:
            return None, None
        emb, mask = self.conditioner.encode(prompts)
        if self.melody_conditioner is not None:
            if melody is None:
                melody = self.melody_conditioner.null(len(prompts), 1)
            with torch.no_grad():
                m, m_mask = self.melody_conditioner(melody)
            emb = torch.cat([emb, m.to(device=emb.device, dtype=emb.dtype)], 1)
            mask = torch.cat([mask, m_mask.to(mask.device)], 1)
        elif melody is not None:
            raise CodecLMError("this model has no melody conditioning (no melody/ in its folder)")
        return emb, mask

    def _iter_codes(self, prompts: list[str], n_frames: int, seed: int | None, guidance_scale: float,
                    temperature: float, top_k: int, top_p: float, do_sample: bool,
                    prompt_codes: torch.Tensor | None = None, progress: bool = False,
                    melody: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        self._check_sampling(guidance_scale, temperature, top_k, top_p)
        emb, mask = self._condition(prompts, melody)
        if emb is None and guidance_scale != 1.0:
            guidance_scale = 1.0  # nothing to guide with: an unconditional LM
        generator = self._generator(seed, do_sample and temperature > 0)
        with self._progress(progress, self.pattern.num_steps(n_frames)) as on_step:
            yield from iter_codes(self.lm, self.pattern, len(prompts), n_frames, emb, mask,
                                  guidance_scale=guidance_scale, temperature=temperature, top_k=top_k,
                                  top_p=top_p, do_sample=do_sample, generator=generator,
                                  prompt_codes=prompt_codes, on_step=on_step)

    def _generate_codes(self, prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p, do_sample,
                        prompt_codes=None, progress=False, melody=None) -> torch.Tensor:
        chunks = list(self._iter_codes(prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p,
                                       do_sample, prompt_codes, progress, melody))
        return torch.cat(chunks, 2)

    @torch.no_grad()
    def _decode(self, codes: torch.Tensor, n_samples: int | None = None) -> list[torch.Tensor]:
        audio = self.codec.decode(codes)
        if n_samples is not None:
            audio = audio[..., :n_samples]
        return [a.float().cpu() for a in audio]

    def _stream_audio(self, chunks: Iterator[torch.Tensor], batch: int) -> Iterator[torch.Tensor]:
        """Audio ``[B, C, n]`` per chunk of frames (exact streaming), or once at the end."""
        if self.codec.streamable:
            with torch.no_grad(), self.codec.streaming(batch):
                for codes in chunks:
                    yield self.codec.decode(codes).float().cpu()
                yield self.codec.flush_decoder().float().cpu()  # what a look-ahead decoder still holds
        else:
            codes = torch.cat(list(chunks), 2)
            with torch.no_grad():
                yield self.codec.decode(codes).float().cpu()

    # -- folders -------------------------------------------------------------------------------
    def _pipeline_info(self) -> dict:
        return {"type": self.kind, "format": FORMAT, "max_duration": self.max_duration}

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the folder; ``dtype=torch.float16`` halves the LM and codec weights (shipping)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_lm(self.lm, folder / "lm", dtype)
        self.codec.save_pretrained(folder / "codec", dtype, inference_only=True)
        if self.conditioner is not None:
            self.conditioner.save_folder(folder / "text")
        if self.melody_conditioner is not None:
            self.melody_conditioner.save_folder(folder / "melody")
        info = self._pipeline_info()
        info.pop("type", None)
        info.pop("format", None)
        self._write_info(folder, folder / "codec", **info)  # the codec as saved
        return folder

    @classmethod
    def _load_parts(cls, folder: str | os.PathLike):
        folder = Path(folder)
        info = cls._read_info(folder, ("lm", "codec"))
        lm = load_lm(folder / "lm")
        codec = load_model(folder / "codec")
        check_codec_identity(info, codec, folder)
        conditioner = load_conditioner(folder / "text") if (folder / "text").is_dir() else None
        melody = MelodyConditioner.load(folder / "melody") if (folder / "melody").is_dir() else None
        return info, lm, codec, conditioner, melody
