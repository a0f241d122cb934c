"""The loop every generation pipeline shares: conditions -> codes (token LM) -> audio (codec).

A pipeline owns a :class:`TokenLM`, a :class:`Codec`, a
:class:`~codeclm.lm.conditioning.ConditioningProvider` (its named conditions: the text, a
melody, ...; none for an unconditional LM) and the LM's codebook pattern. ``_generate_codes``
prepares, encodes and fuses the conditions (and their null for guidance), runs
:func:`codeclm.lm.generate.iter_codes` (KV cache, CFG in one batch of 2B) with a
``torch.Generator`` seeded per call, and ``stream`` decodes frames as they complete when the
codec can stream exactly (causal, constant padding); otherwise audio is decoded at the end.

Folder layout (``save_pretrained`` / ``from_pretrained``)::

    pipeline.json    {"type": ..., "format": 1, ...}
    lm/              config.json + model.safetensors
    codec/           config.json + model.safetensors
    text/            the conditioner's files (conditioner.json names its type)
    melody/          optional: a chroma conditioner (codeclm.lm.melody)
    <name>/          any other condition

``pipeline.json``'s ``conditions`` (``{name: {"type", "fuse", "folder"?, "source"?}}``, in fuse
order) lists them; a folder without it (written before) means ``text`` (its conditioner.json's
type) then ``melody`` if present, both fused by cross-attention.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from codeclm.codec import Codec, load_model
from codeclm.errors import CodecLMError, ConfigError
from codeclm.lm.conditioners import CONDITIONER_FILE, TextConditioner
from codeclm.lm.conditioning import ConditionContext, ConditioningProvider, ConditionSpec
from codeclm.lm.config import LMConfig
from codeclm.lm.generate import iter_codes
from codeclm.lm.logits import CodebookTemperatureLogitsWarper, LogitsProcessorList, check_codebook_temperatures
from codeclm.lm.patterns import Pattern
from codeclm.lm.sampling import check_sampling_params
from codeclm.lm.transformer import TokenLM
from codeclm.pipelines.core import (FORMAT, PIPELINE_FILE, BasePipeline, check_codec_identity,  # noqa: F401
                                    read_pipeline_info, write_pipeline_info)
from codeclm.pretrained import load_folder, read_json, save_folder

__all__ = ["GenerationPipeline", "check_codec_identity", "load_lm", "read_pipeline_info", "save_lm",
           "write_pipeline_info"]


def save_lm(lm: TokenLM, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items()}
    return save_folder(folder, lm.config.to_dict(), state, dtype)


def load_lm(folder: str | os.PathLike) -> TokenLM:
    return load_folder(TokenLM, LMConfig, folder).eval()


class GenerationPipeline(BasePipeline):
    """Conditions -> codes -> audio, batched and seeded. Subclasses define the user-facing API."""

    kind = "generation"
    max_duration = 300.0  # seconds
    # seconds per LM call of long-form generation when the caller names none (pipeline.json's
    # window_seconds; None: the LM's whole context). A model trained on short crops stays musical
    # in windows near its training length and drifts past it.
    window_seconds: float | None = None
    # one sampling temperature per codebook, applied before the call's own temperature / top-k
    # (pipeline.json's codebook_temperatures; None: every codebook alike). A model whose codec has
    # a fine-grained row (the pitch codebook) samples that row more conservatively
    codebook_temperatures: list[float] | None = None

    def __init__(self, lm: TokenLM, codec: Codec, conditioner: TextConditioner | None = None,
                 pattern: Pattern | None = None, melody=None, *,
                 provider: ConditioningProvider | None = None) -> None:
        """``provider``: the conditions; without it, ``conditioner`` (the text) and ``melody``
        (a chroma conditioner) make one, both fused by cross-attention."""
        if codec.num_codebooks < lm.config.n_q:
            raise ConfigError(f"the codec has {codec.num_codebooks} codebooks, the LM needs {lm.config.n_q}")
        if codec.cardinality != lm.config.card:
            raise ConfigError(f"codec codebooks have {codec.cardinality} entries, the LM predicts {lm.config.card}")
        if provider is None:
            provider = self.legacy_provider(lm.config, conditioner, melody)
        elif conditioner is not None or melody is not None:
            raise ConfigError("pass the conditions either as a provider or as conditioner / melody, not both")
        provider.check_lm(lm.config)
        self.lm, self.codec, self.provider = lm.eval(), codec.eval(), provider.eval()
        self._prefix_len: int | None = None  # prepended condition tokens (max_steps measures them once)
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
        return [self.lm, self.codec, self.provider]

    # -- conditions ----------------------------------------------------------------------------
    @staticmethod
    def legacy_provider(config: LMConfig, conditioner=None, melody=None) -> ConditioningProvider:
        """The provider of a text conditioner and an optional melody one, both cross-attended (the
        pipelines made before providers). An LM without cross-attention reads neither."""
        if melody is not None and (conditioner is None or melody.output_dim != conditioner.output_dim):
            raise ConfigError("a melody conditioner needs a text conditioner of the same width")
        conds, specs = {}, {}
        if config.cross_attention:
            if conditioner is None:
                raise ConfigError("this LM is conditioned (cross-attention): pass a text conditioner")
            conds["text"], specs["text"] = conditioner, ConditionSpec(conditioner.kind)
            if melody is not None:
                conds["melody"], specs["melody"] = melody, ConditionSpec(melody.kind)
        return ConditioningProvider(conds, specs)

    @property
    def conditioner(self):
        """The text conditioner (the provider's ``text``), or None."""
        return self.provider.get("text")

    @property
    def melody_conditioner(self):
        return self.provider.get("melody")

    def condition_context(self, n_frames: int | None) -> ConditionContext:
        return ConditionContext(n_frames=n_frames, sample_rate=self.sample_rate, hop_length=self.codec.hop_length)

    def prepare_condition(self, name: str, value, batch: int, n_frames: int | None):
        """One condition's ``prepare`` (e.g. a melody clip -> chroma indices), for callers that
        slice it themselves (long-form windows)."""
        if name not in self.provider:
            raise CodecLMError(f"this model has no {name} conditioning (no {name}/ in its folder)")
        return self.provider.get(name).prepare(value, batch, self.condition_context(n_frames))

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

    @property
    def max_steps(self) -> int:
        """The LM steps one generation can hold: its context less the prepended condition tokens
        (e.g. six caption-attribute tokens), measured once on an empty prompt."""
        if self._prefix_len is None:
            prepend = self.provider.fuser.names("prepend") if self.provider.names else []
            if not prepend:
                self._prefix_len = 0
            else:
                values = {"text": [""]} if "text" in self.provider else {}
                conds = self.provider.encode(values, 1, self.condition_context(1))
                self._prefix_len = sum(int(conds[n].emb.shape[1]) for n in prepend)
        return int(self.lm.config.max_seq_len) - self._prefix_len

    def _n_frames(self, duration: float) -> int:
        duration = self.check_duration(duration)
        n = max(1, round(duration * self.frame_rate))
        steps = self.pattern.num_steps(n)
        if steps > self.max_steps:
            limit = self.pattern.frames_for_steps(self.max_steps) / self.frame_rate
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
    def _condition(self, prompts: list[str], n_frames: int, conditions: dict | None = None):
        """``(fused, null)``: the provider's fused conditions of the prompts (the ``text``
        condition) and of ``conditions`` (name -> value, e.g. ``melody``: chroma indices or
        clips), and their classifier-free-guidance null; ``(None, None)`` without conditions."""
        values = {k: v for k, v in (conditions or {}).items() if v is not None}
        if not self.provider.names:
            if values:
                name = next(iter(values))
                raise CodecLMError(f"this model has no {name} conditioning (no {name}/ in its folder)")
            return None, None
        keys = set(self.provider.specs) | {s.source for s in self.provider.specs.values() if s.source}
        if "text" in keys:  # the prompts are the text condition's values
            values.setdefault("text", prompts)
        for name in values:
            if name not in keys:
                raise CodecLMError(f"this model has no {name} conditioning (no {name}/ in its folder)")
        conds = self.provider.encode(values, len(prompts), self.condition_context(n_frames))
        fuse = self.provider.fuse
        return fuse(conds, self.pattern, n_frames), fuse(self.provider.dropout.nullify(conds), self.pattern, n_frames)

    def _iter_codes(self, prompts: list[str], n_frames: int, seed: int | None, guidance_scale: float,
                    temperature: float, top_k: int, top_p: float, do_sample: bool,
                    prompt_codes: torch.Tensor | None = None, progress: bool = False,
                    melody=None, conditions: dict | None = None) -> Iterator[torch.Tensor]:
        self._check_sampling(guidance_scale, temperature, top_k, top_p)
        conditions = dict(conditions or {})
        if melody is not None:
            conditions["melody"] = melody
        fused, null = self._condition(prompts, n_frames, conditions)
        if fused is None and guidance_scale != 1.0:
            guidance_scale = 1.0  # nothing to guide with: an unconditional LM
        generator = self._generator(seed, do_sample and temperature > 0)
        warp = None
        if self.codebook_temperatures is not None:
            temps = check_codebook_temperatures(self.codebook_temperatures, self.lm.config.n_q, "codebook_temperatures")
            warp = LogitsProcessorList([CodebookTemperatureLogitsWarper(temps)])
        with self._progress(progress, self.pattern.num_steps(n_frames)) as on_step:
            yield from iter_codes(self.lm, self.pattern, len(prompts), n_frames, fused, None, null_cond=null,
                                  guidance_scale=guidance_scale, temperature=temperature, top_k=top_k,
                                  top_p=top_p, do_sample=do_sample, generator=generator,
                                  prompt_codes=prompt_codes, on_step=on_step, logits_processor=warp)

    def _generate_codes(self, prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p, do_sample,
                        prompt_codes=None, progress=False, melody=None, conditions=None) -> torch.Tensor:
        chunks = list(self._iter_codes(prompts, n_frames, seed, guidance_scale, temperature, top_k, top_p,
                                       do_sample, prompt_codes, progress, melody, conditions))
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
        info = {"type": self.kind, "format": FORMAT, "max_duration": self.max_duration}
        if self.window_seconds is not None:
            info["window_seconds"] = self.window_seconds
        if self.codebook_temperatures is not None:
            info["codebook_temperatures"] = list(self.codebook_temperatures)
        return info

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the folder; ``dtype=torch.float16`` halves the LM and codec weights (shipping)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_lm(self.lm, folder / "lm", dtype)
        self.codec.save_pretrained(folder / "codec", dtype, inference_only=True)
        conditions = self.provider.save_folders(folder)
        info = self._pipeline_info()
        if conditions:
            info["conditions"] = conditions
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
        return info, lm, codec, cls._load_provider(folder, info, lm.config)

    @staticmethod
    def _load_provider(folder: Path, info: dict, config: LMConfig) -> ConditioningProvider:
        specs = info.get("conditions")
        if specs is not None:
            if not isinstance(specs, dict):
                raise ConfigError(f"{folder / PIPELINE_FILE}: conditions must be a JSON object")
            return ConditioningProvider.load(folder, specs)
        specs = {}  # a folder from before providers: text (+ melody), cross-attended
        if (folder / "text").is_dir() and config.cross_attention:
            kind = read_json(folder / "text" / CONDITIONER_FILE, "text conditioner").get("type")
            specs["text"] = {"type": kind}
            if (folder / "melody").is_dir():
                specs["melody"] = {"type": "melody"}
        return ConditioningProvider.load(folder, specs)
