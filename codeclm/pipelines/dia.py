"""Dia dialogue TTS and zero-shot voice cloning (Nari Labs' Dia-1.6B, imported from transformers).

    pipe = VoiceClone.from_hf("Dia-1.6B-0626", audio_tokenizer="dac_44khz")   # folders you downloaded
    wav = pipe.generate("[S1] Hello there. [S2] Hi!")                            # [1, samples] at 44.1 kHz
    wav = pipe.generate("[S1] New words.", "ref.wav", ref_text="[S1] What the reference says.")
    pipe.save_pretrained("dia")            # codeclm folder; VoiceClone.from_pretrained("dia") loads it
    codes = pipe.generate_tokens("[S1] Hi.", max_new_tokens=64, do_sample=False)  # [B, 9, frames]

Tokenize -> predict -> decode, like every pipeline: the text is Dia's byte tokens (``[S1]`` and
``[S2]`` mark the speakers; a text that starts with neither gets ``[S1]``), a reference voice is
the transcript written before the text plus its DAC codes as the decoder's prompt, the
:class:`~codeclm.lm.dia.DiaModel` decodes new codes with classifier-free guidance, and the DAC
codec (:mod:`codeclm.codec.dac`) turns them into audio.

Folder layout (``save_pretrained``)::

    pipeline.json   {"type": "dia", "format": 1, "defaults": {guidance_scale, temperature, top_k, top_p}}
    dia/            config.json + model.safetensors
    codec/          the DAC codec (absent in a token-only pipeline)
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from codeclm.errors import AudioError, CodecLMError, ConfigError
from codeclm.lm.dia import DiaModel, encode_text
from codeclm.pipelines.core import BasePipeline, audio_argument
from codeclm.tokenizers.normalize import TextError, check_language

__all__ = ["DiaVoiceClone"]

# Dia's own sampling defaults (nari-labs' generate()); a folder's generation_config.json overrides them
DEFAULTS = {"guidance_scale": 3.0, "temperature": 1.3, "top_k": 35, "top_p": 0.95}
SPEAKER_TAGS = ("[S1]", "[S2]")


class DiaVoiceClone(BasePipeline):
    """Text (+ a reference voice) -> speech ``[1, samples]`` at the codec's rate (44.1 kHz for Dia)."""

    kind = "dia"

    def __init__(self, model: DiaModel, codec=None, defaults: dict | None = None) -> None:
        c = model.config
        if codec is not None:
            if codec.channels != 1:
                raise ConfigError(f"Dia needs a mono codec, got {codec.channels} channels")
            if codec.num_codebooks < c.n_q or codec.cardinality != c.card:
                raise ConfigError(f"codec ({codec.num_codebooks} x {codec.cardinality}) does not fit the Dia model "
                                  f"({c.n_q} x {c.card})")
            codec = codec.eval()
        self.model, self.codec = model.eval(), codec
        self.defaults = {**DEFAULTS, **{k: v for k, v in (defaults or {}).items() if k in DEFAULTS}}
        self.voices: dict = {}
        self.last_text: str | None = None
        self.last_ref_text: str | None = None
        self.last_lengths: list[int] = []
        self.int8 = False

    def quantize_int8(self) -> DiaVoiceClone:
        """Decode with int8 weights from now on (:func:`codeclm.lm.quant.quantize_int8`: every linear
        layer of the encoder, decoder and head, one scale per output channel; a quarter of the bytes
        of a memory-bound decoding step, 1.4-1.7x the float32 steps/s on one CPU thread in
        ``benchmarks/dia_speed.py``). The tokens are not float32's. Inference only: a quantised
        pipeline is not saved (load the folder again instead). Returns ``self``."""
        from codeclm.lm.quant import int8_available, quantize_int8

        if not self.int8:
            if not int8_available():
                raise ConfigError("int8 decoding needs torch._weight_int8pack_mm, which this torch lacks")
            self.model, self.int8 = quantize_int8(self.model), True
        return self

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, model_or_folder, audio_tokenizer=None, device: str | torch.device = "cpu") -> DiaVoiceClone:
        """Import a transformers ``DiaForConditionalGeneration`` (object or folder) and its DAC.

        ``audio_tokenizer``: a ``DacModel`` or its folder, or a codeclm codec. None: the folder's
        ``processor_config.json`` names it; a local folder by that name (absolute, or beside the
        Dia folder) is used, nothing is downloaded. A model object without one gives a token-only
        pipeline (``generate_tokens`` with reference codes).
        """
        from codeclm.lm.dia_hf import dia_from_hf, generation_defaults_from_hf, load_hf_dia

        hf = load_hf_dia(model_or_folder)
        model = dia_from_hf(hf)
        defaults = generation_defaults_from_hf(hf)
        if audio_tokenizer is None and isinstance(model_or_folder, (str, os.PathLike)):
            audio_tokenizer = _named_audio_tokenizer(Path(model_or_folder))
        return cls(model, _codec(audio_tokenizer), defaults).to(device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> DiaVoiceClone:
        folder = Path(folder)
        info = cls._read_info(folder, ("dia",))
        model = DiaModel.from_pretrained(folder / "dia")
        codec = None
        if (folder / "codec").is_dir():
            from codeclm.codec.base import load_model

            codec = load_model(folder / "codec")
        defaults = info.get("defaults") if isinstance(info.get("defaults"), dict) else {}
        return cls(model, codec, defaults).to(device)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        if self.int8:
            raise ConfigError("an int8-quantised Dia pipeline is for decoding only: save the float model instead")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder / "dia", dtype)
        if self.codec is not None:
            self.codec.save_pretrained(folder / "codec", dtype, inference_only=True)
        self._write_info(folder, folder / "codec" if self.codec is not None else None, defaults=self.defaults)
        return folder

    def _modules(self) -> list:
        return [self.model, self.codec]

    @property
    def sample_rate(self) -> int:
        if self.codec is None:
            raise ConfigError("this Dia pipeline has no codec (import it with audio_tokenizer=DAC_FOLDER)")
        return self.codec.sample_rate

    @property
    def languages(self) -> tuple[str, ...]:
        return ("en",)

    # -- inputs ----------------------------------------------------------------------------------
    def _texts(self, text, ref_text: str | None) -> list[str]:
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise TextError("text must be a string or a non-empty list of strings")
        out = []
        for t in texts:
            if not t.strip():
                raise TextError("the text to speak is empty")
            full = t.strip() if ref_text is None else f"{ref_text.strip()} {t.strip()}"
            if not full.startswith(SPEAKER_TAGS):
                full = f"[S1] {full}"
            out.append(full)
        return out

    def _text_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [encode_text(t) for t in texts]
        limit = self.model.config.enc_max_len
        for t, i in zip(texts, ids):
            if len(i) > limit:
                raise TextError(f"the text is {len(i)} bytes, more than this model reads ({limit}); split it")
        T = max(len(i) for i in ids)
        out = torch.zeros(len(ids), T, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.bool)
        for b, i in enumerate(ids):
            out[b, : len(i)] = torch.tensor(i)
            mask[b, : len(i)] = True
        return out, mask

    def _load_reference(self, ref_audio, name: str) -> torch.Tensor:
        """Mono ``[N]`` at the codec's rate."""
        if self.codec is None:
            raise ConfigError("this Dia pipeline has no codec: pass the reference as codes [9, frames]")
        wav = audio_argument(ref_audio, self.sample_rate, 1, name, default_rate=self.sample_rate)[0]
        if wav.numel() == 0 or not torch.isfinite(wav).all():
            raise AudioError(f"{name}: empty, or contains NaN or infinite samples")
        return wav

    def _prompt_codes(self, ref_audio, name: str = "reference audio") -> torch.Tensor:
        """The reference as codes ``[9, frames]``: given codes, or audio encoded by the codec
        (zero-padded to whole frames, as transformers' ``DiaProcessor``)."""
        n_q = self.model.config.n_q
        if torch.is_tensor(ref_audio) and not ref_audio.is_floating_point():
            codes = ref_audio[0] if ref_audio.dim() == 3 and ref_audio.shape[0] == 1 else ref_audio
            if codes.dim() != 2 or codes.shape[0] != n_q:
                raise AudioError(f"{name}: reference codes must be [{n_q}, frames], got {tuple(ref_audio.shape)}")
            return codes.long()
        wav = self._load_reference(ref_audio, name)
        with torch.no_grad():
            return self.codec.encode(wav[None, None].to(self.device), bandwidth=None)[0, :n_q]

    def _transcribe(self, ref_audio, name: str) -> str:
        from codeclm.asr import transcribe

        wav = self._load_reference(ref_audio, name)
        text = transcribe(wav[None], self.sample_rate)
        if not text.strip():
            raise TextError(f"{name}: could not transcribe the reference; pass ref_text (--ref-text)")
        return f"[S1] {text.strip()}"

    # -- generation ------------------------------------------------------------------------------
    def _run(self, text, ref_audio, ref_text, max_new_tokens, do_sample, guidance_scale, seed, temperature,
             top_k, top_p, progress):
        if ref_audio is not None and (ref_text is None or not str(ref_text).strip()):
            raise TextError("ref_text is needed with ref_audio: what the reference says, with its speaker tags")
        texts = self._texts(text, None if ref_audio is None else str(ref_text))
        ids, mask = self._text_ids(texts)
        prompt = None if ref_audio is None else self._prompt_codes(ref_audio)
        c = self.model.config
        P = 1 + (0 if prompt is None else prompt.shape[-1])
        if max_new_tokens is None:
            max_new_tokens = c.max_seq_len - P
        if P + c.max_delay + 2 > c.max_seq_len:
            raise AudioError(f"the reference is too long for this model ({P - 1} frames; "
                             f"at most {c.max_seq_len - c.max_delay - 3})")
        generator = self._generator(seed, do_sample)
        self.last_text = texts[0] if len(texts) == 1 else None
        self.last_ref_text = ref_text
        with self._progress(progress, int(max_new_tokens), "step", "dia") as on_step:
            out = self.model.generate_steps(ids, mask, prompt, max_new_tokens=int(max_new_tokens),
                                            guidance_scale=guidance_scale, top_k=top_k, top_p=top_p,
                                            temperature=float(temperature), do_sample=do_sample,
                                            generator=generator, on_step=on_step)
        self.last_lengths = list(out.lengths)
        return out

    def generate_tokens(self, text, ref_audio=None, ref_text: str | None = None, max_new_tokens: int = 256,
                        do_sample: bool = False, guidance_scale: float | None = 3.0, seed: int | None = 0,
                        temperature: float = 1.0, top_k: int | None = 50, top_p: float | None = None,
                        progress: bool = False) -> torch.Tensor:
        """New codes ``[batch, 9, frames]`` (codec frame order, delays reverted; the prompt excluded).

        The arguments mean what they mean in transformers' ``generate`` (``top_k`` 50 is its
        default, which also filters the guided scores); ``guidance_scale`` None or 1 disables CFG.
        ``ref_audio``: an audio path / tensor (encoded by the codec) or codes ``[9, frames]``; with
        ``ref_text``, what it says. Rows of a batch that end earlier are padded with -1
        (``last_lengths`` holds each row's frames).
        """
        out = self._run(text, ref_audio, ref_text, max_new_tokens, do_sample, guidance_scale, seed,
                        temperature, top_k, top_p, progress)
        return out.codes

    def generate(self, text, ref_audio=None, ref_text: str | None = None, seed: int | None = 0,
                 language: str = "en", temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, guidance_scale: float | None = None,
                 max_new_tokens: int | None = None, progress: bool = False):
        """Speech ``[1, samples]`` (float32, CPU) saying ``text`` (a list gives a list), in the voice
        of ``ref_audio`` if given (without ``ref_text`` it is transcribed offline, with a warning).

        Sampling defaults: the model folder's (``self.defaults``); ``temperature`` 0 is greedy.
        Seeded: the same call gives the same audio.
        """
        if check_language(language) != "en":
            raise TextError(f"language {language!r} is not supported by Dia (English only)")
        if self.codec is None:
            raise ConfigError("this Dia pipeline has no codec (import it with audio_tokenizer=DAC_FOLDER)")
        d = self.defaults
        temperature = d["temperature"] if temperature is None else float(temperature)
        top_k = d["top_k"] if top_k is None else top_k
        top_p = d["top_p"] if top_p is None else top_p
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        name = str(ref_audio) if isinstance(ref_audio, (str, os.PathLike)) else "reference audio"
        if ref_audio is not None and (ref_text is None or not ref_text.strip()):
            ref_text = self._transcribe(ref_audio, name)
            warnings.warn(f"{name}: no reference transcript given; transcribed offline as {ref_text!r}",
                          stacklevel=2)
        out = self._run(text, ref_audio, ref_text, max_new_tokens, temperature > 0, guidance_scale, seed,
                        max(temperature, 0.0), top_k, top_p, progress)
        audios = []
        hop = self.codec.hop_length
        with torch.no_grad():
            for b, n in enumerate(out.lengths):
                if n == 0:
                    raise CodecLMError("the model ended before producing audio; try another seed or text")
                audio = self.codec.decode(out.codes[b:b + 1, :, :n].to(self.device))[0]
                audios.append(audio[..., : n * hop].float().cpu())
        return audios[0] if isinstance(text, str) else audios

    def say(self, text, voice: str | None = None, seed: int | None = 0, **kwargs):
        """Plain TTS (Dia picks a voice; there are no named voices)."""
        if voice is not None:
            self.voice(voice)
        return self.generate(text, None, None, seed, **kwargs)

    def voice(self, name: str):
        raise CodecLMError(f"unknown voice {name!r}; this model has: none (Dia clones from a reference)")


def _codec(audio_tokenizer):
    if audio_tokenizer is None:
        return None
    from codeclm.codec.base import CompressionModel, from_hf, load_model

    if isinstance(audio_tokenizer, CompressionModel):
        return audio_tokenizer
    if isinstance(audio_tokenizer, (str, os.PathLike)):
        return load_model(audio_tokenizer)  # a codeclm codec folder or a transformers DAC folder
    return from_hf(audio_tokenizer)


def _named_audio_tokenizer(folder: Path) -> Path | None:
    """The DAC folder a transformers Dia folder's processor config names, if it is on this disk."""
    path = folder / "processor_config.json"
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get("audio_tokenizer") or {}
        name = entry.get("audio_tokenizer_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc})") from None
    if not name:
        return None
    for candidate in (Path(name), folder / name, folder.parent / name, folder.parent / Path(name).name):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"{folder}: its processor names the audio tokenizer {name!r}, which is not on this disk; "
                      "pass audio_tokenizer=DAC_FOLDER (nothing is downloaded)")
