"""Zero-shot voice cloning and text-to-speech (VALL-E) on the shared pipeline pieces.

    pipe = VoiceClone.from_pretrained()                       # the shipped checkpoints/voice
    wav = pipe.generate("New sentence.", "ref.wav", ref_text="What the reference says.")
    wav = pipe.say("Hello there.", voice="allison")           # a built-in named voice
    wavs = pipe.generate_batch(["a", "b"], ["r1.wav", "r2.wav"], seed=0)

Tokenize -> predict -> decode, like every pipeline: the text (reference transcript + new text) is
normalised and phonemised (:class:`~codeclm.tokenizers.TextToPhonemes`, the vocabulary saved with
the model), the reference is encoded by the codec into the acoustic prompt, the VALL-E model
(:class:`~codeclm.lm.valle.Valle`, AR + NAR on the token-LM core) predicts the new codes, and the
codec decodes them.

The reference: mono, resampled to the codec's rate, leading/trailing silence trimmed. Longer than
the model's ``max_prompt_seconds`` it is cropped there (at the quietest 20 ms within the last
second before the limit, so a word is rarely cut); its transcript is then re-made for the kept
part by the offline recogniser when the language is English (else the words are cut in
proportion, with a warning). Shorter than ``min_prompt_seconds`` or silent: refused with one
line. Without ``ref_text`` the reference is transcribed offline (pocketsphinx, English) and a
warning says so; ``pipe.last_ref_text`` holds the transcript used.

Folder layout (written by the ``valle`` training task)::

    pipeline.json   {"type": "voice-clone", "format": 1, "languages": [...]}
    valle/          config.json + model.safetensors
    phonemes/       phoneme_vocab.json
    codec/          the codec
    voices/         voices.json + NAME.wav (named voices for ``say``)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch

from codeclm.codec import Codec, load_model
from codeclm.errors import AudioError, CodecLMError, ConfigError
from codeclm.lm.valle import Valle
from codeclm.pipelines.base import PIPELINE_FILE, check_codec_identity, read_pipeline_info
from codeclm.pretrained import default_checkpoint
from codeclm.tokenizers.normalize import TextError, check_language
from codeclm.tokenizers.phonemes import PhonemeVocab, TextToPhonemes, split_phonemes

__all__ = ["VoiceClone"]

DEFAULT_VOICE_MODEL = "voice"
SILENCE_DBFS = -50.0  # a reference whose RMS is below this is "silent"
TRIM_DBFS = -40.0  # leading/trailing 20 ms frames this far below the loudest frame are trimmed


def _pipeline_type(folder: Path) -> str | None:
    """``pipeline.json``'s type, or None when it is missing or unreadable (read_pipeline_info says why)."""
    try:
        return json.loads((folder / PIPELINE_FILE).read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def _frame_db(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """RMS in dBFS of consecutive ``hop``-sample frames of mono ``wav [N]``."""
    n = wav.shape[-1] // hop
    frames = wav[: n * hop].reshape(n, hop)
    return 10 * torch.log10(frames.pow(2).mean(-1).clamp(min=1e-12))


class VoiceClone:
    """Text + a reference voice -> speech ``[channels, samples]`` at ``sample_rate``."""

    kind = "voice-clone"

    def __init__(self, model: Valle, codec: Codec, vocab: PhonemeVocab, voices: dict | None = None,
                 voices_dir: Path | None = None) -> None:
        if codec.cardinality != model.config.card or codec.num_codebooks < model.config.n_q:
            raise ConfigError(f"codec ({codec.num_codebooks} x {codec.cardinality}) does not fit the model "
                              f"({model.config.n_q} x {model.config.card})")
        if len(vocab) != model.config.vocab_size:
            raise ConfigError(f"phoneme vocabulary has {len(vocab)} tokens, the model {model.config.vocab_size}")
        self.model, self.codec, self.vocab = model.eval(), codec.eval(), vocab
        self.front = TextToPhonemes(vocab.languages, vocab)
        self.voices = dict(voices or {})
        self.voices_dir = voices_dir
        self.last_ref_text: str | None = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> VoiceClone:
        """Load a voice-clone folder; None loads the shipped default (``checkpoints/voice``)."""
        folder = Path(folder) if folder is not None else default_checkpoint(DEFAULT_VOICE_MODEL)
        if _pipeline_type(folder) == "dia":  # a Dia folder (codeclm.pipelines.dia) loads as its own class
            from codeclm.pipelines.dia import DiaVoiceClone

            return DiaVoiceClone.from_pretrained(folder, device)
        info = read_pipeline_info(folder, cls.kind, ("valle", "codec", "phonemes"))
        model = Valle.from_pretrained(folder / "valle")
        codec = load_model(folder / "codec")
        check_codec_identity(info, codec, folder)
        vocab = PhonemeVocab.load(folder / "phonemes")
        voices, voices_dir = {}, folder / "voices"
        if (voices_dir / "voices.json").is_file():
            try:
                voices = json.loads((voices_dir / "voices.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{voices_dir / 'voices.json'}: invalid JSON ({exc})") from None
        return cls(model, codec, vocab, voices, voices_dir).to(device)

    @classmethod
    def from_hf(cls, model_or_folder, audio_tokenizer=None, device: str | torch.device = "cpu"):
        """Import a transformers Dia (``DiaForConditionalGeneration`` object or folder) and its DAC
        (``audio_tokenizer``: a ``DacModel`` or folder); returns a
        :class:`~codeclm.pipelines.dia.DiaVoiceClone`."""
        from codeclm.pipelines.dia import DiaVoiceClone

        return DiaVoiceClone.from_hf(model_or_folder, audio_tokenizer=audio_tokenizer, device=device)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        import shutil

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder / "valle", dtype)
        self.codec.save_pretrained(folder / "codec", dtype, inference_only=True)
        self.vocab.save(folder / "phonemes" / "phoneme_vocab.json")
        if (self.voices_dir is not None and self.voices_dir.is_dir()
                and self.voices_dir.resolve() != (folder / "voices").resolve()):
            shutil.copytree(self.voices_dir, folder / "voices", dirs_exist_ok=True)
        info = {"type": self.kind, "format": 1, "languages": list(self.vocab.languages),
                "codec_identity": load_model(folder / "codec").identity()}  # the codec as saved
        (folder / PIPELINE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return folder

    def to(self, device: str | torch.device) -> VoiceClone:
        self.model.to(device)
        self.codec.to(device)
        return self

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def languages(self) -> tuple[str, ...]:
        return self.vocab.languages

    # -- inputs ----------------------------------------------------------------------------------
    def _language(self, language: str) -> str:
        code = check_language(language)
        if code not in self.vocab.languages:
            raise TextError(f"language {language!r} is not supported by this model ({', '.join(self.vocab.languages)})")
        return code

    def _reference(self, ref_audio, name: str) -> torch.Tensor:
        """Mono ``[N]`` at the codec rate, silence trimmed, checked for length and level."""
        from codeclm.audio import load_audio, resample

        if isinstance(ref_audio, (str, os.PathLike)):
            wav, _ = load_audio(ref_audio, self.sample_rate, 1)
        else:
            wav, rate = ref_audio if isinstance(ref_audio, tuple) else (ref_audio, self.sample_rate)
            if not torch.is_tensor(wav) or not wav.is_floating_point() or wav.dim() not in (1, 2) or wav.numel() == 0:
                raise AudioError(f"{name}: must be an audio path or a float tensor [channels, samples]")
            wav = wav.detach().float().cpu()
            wav = wav.mean(0) if wav.dim() == 2 else wav
            if int(rate) != self.sample_rate:
                wav = resample(wav[None], int(rate), self.sample_rate)[0]
            wav = wav[None]
        if not torch.isfinite(wav).all():
            raise AudioError(f"{name}: contains NaN or infinite samples")
        wav = wav[0]
        hop = self.sample_rate // 50  # 20 ms
        db = _frame_db(wav, hop)
        rms_db = 10 * math.log10(max(float(wav.pow(2).mean()), 1e-12))
        if db.numel() == 0 or rms_db < SILENCE_DBFS:
            raise AudioError(f"{name}: the reference is silent (RMS {rms_db:.0f} dBFS); record the voice louder")
        loud = torch.nonzero(db > db.max() + TRIM_DBFS).flatten()
        wav = wav[int(loud[0]) * hop: (int(loud[-1]) + 1) * hop]
        c = self.model.config
        seconds = wav.shape[-1] / self.sample_rate
        if seconds < c.min_prompt_seconds:
            raise AudioError(f"{name}: the reference has {seconds:.2f} s of voice; at least "
                             f"{c.min_prompt_seconds:g} s is needed (about 3 s works best)")
        return wav

    def _crop(self, wav: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Crop to ``max_prompt_seconds`` at the quietest 20 ms within the last second before it."""
        limit = int(self.model.config.max_prompt_seconds * self.sample_rate)
        if wav.shape[-1] <= limit:
            return wav, False
        hop = self.sample_rate // 50
        lo = max(limit - self.sample_rate, hop)
        db = _frame_db(wav[lo:limit], hop)
        cut = lo + int(db.argmin()) * hop + hop // 2 if db.numel() else limit
        return wav[:cut], True

    def _transcribe(self, wav: torch.Tensor, language: str, name: str) -> str:
        if language != "en":
            raise TextError(f"{name}: pass ref_text (--ref-text): the offline transcriber knows English only")
        from codeclm.evaluation.asr import transcribe

        text = transcribe(wav[None], self.sample_rate)
        if not text.strip():
            raise TextError(f"{name}: could not transcribe the reference; pass ref_text (--ref-text)")
        return text

    def _prompt(self, ref_audio, ref_text: str | None, language: str, name: str) -> tuple[torch.Tensor, str]:
        """``(codes [K, Tp], transcript)`` of the reference."""
        wav = self._reference(ref_audio, name)
        full = wav.shape[-1]
        wav, cropped = self._crop(wav)
        if ref_text is not None and not ref_text.strip():
            ref_text = None
        if ref_text is None:
            ref_text = self._transcribe(wav, language, name)
            warnings.warn(f"{name}: no reference transcript given; transcribed offline as {ref_text!r}", stacklevel=3)
        elif cropped:
            seconds = self.model.config.max_prompt_seconds
            heard = None
            if language == "en":
                try:
                    heard = self._transcribe(wav, language, name)
                except (TextError, CodecLMError):
                    pass
            if heard is not None:
                ref_text, how = heard, f"transcribed the kept part offline as {heard!r}"
            else:  # the words in proportion to the audio kept
                words = ref_text.split()
                ref_text = " ".join(words[: max(1, round(len(words) * wav.shape[-1] / full))])
                how = f"kept the first words of the transcript ({ref_text!r})"
            warnings.warn(f"{name}: reference cropped to {wav.shape[-1] / self.sample_rate:.2f} s (model limit "
                          f"{seconds:g} s); {how}", stacklevel=3)
        with torch.no_grad():
            codes = self.codec.encode(wav[None, None].to(self.device), bandwidth=None)[0, : self.model.config.n_q]
        return codes, ref_text

    def _phonemes(self, ref_text: str, text: str, language: str) -> tuple[torch.Tensor, int]:
        """Ids of ``ref_text + text`` (as in training: one utterance) and the target's phoneme count."""
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text to speak is empty")
        both, target = self.front.phonemes([f"{ref_text.strip()} {text.strip()}", text.strip()], language)
        n_target = len(split_phonemes(target))
        if n_target == 0:
            raise TextError(f"the text {text!r} has nothing to pronounce")
        ids = self.vocab.encode(both, language, bos=True, eos=True)
        if len(ids) > 4 * self.model.config.max_frames:
            raise TextError(f"the text is too long for this model ({len(ids)} phonemes); split it into sentences")
        return torch.tensor(ids), n_target

    # -- generation ------------------------------------------------------------------------------
    def generate(self, text: str, ref_audio, ref_text: str | None = None, seed: int | None = 0,
                 language: str = "en", temperature: float = 1.0, top_k: int = 50, top_p: float = 0.0,
                 progress: bool = False) -> torch.Tensor:
        """Speech ``[channels, samples]`` (float32, CPU) saying ``text`` in the voice of ``ref_audio``
        (an audio path, a tensor ``[channels, samples]`` at ``sample_rate``, or ``(tensor, rate)``).

        ``ref_text`` is what the reference says (None: transcribed offline, English). Seeded: the
        same call gives the same audio. ``temperature`` 0 is greedy (prone to loops: VALL-E samples).
        """
        language = self._language(language)
        name = str(ref_audio) if isinstance(ref_audio, (str, os.PathLike)) else "reference audio"
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text to speak is empty")
        prompt, ref_text = self._prompt(ref_audio, ref_text, language, name)
        self.last_ref_text = ref_text
        ids, n_target = self._phonemes(ref_text, text, language)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0 if seed is None else int(seed))
        bar = None
        on_frame = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(unit="frame", desc="voice-clone", leave=False)

            def on_frame(n):
                bar.update(1)

        try:
            codes = self.model.generate(ids, prompt, target_phonemes=n_target, temperature=temperature,
                                        top_k=top_k, top_p=top_p, do_sample=temperature > 0,
                                        generator=generator, on_frame=on_frame)
        finally:
            if bar is not None:
                bar.close()
        with torch.no_grad():
            audio = self.codec.decode(codes[None])[0]
        return audio.float().cpu()

    def generate_batch(self, texts: list[str], ref_audios: list, ref_texts: list | None = None,
                       seed: int | None = 0, language: str | list[str] = "en", **kwargs) -> list[torch.Tensor]:
        """One waveform per (text, reference); item ``i`` uses seed ``seed + i`` (as the sharded CLI)."""
        n = len(texts)
        ref_texts = list(ref_texts) if ref_texts is not None else [None] * n
        languages = [language] * n if isinstance(language, str) else list(language)
        if not (len(ref_audios) == len(ref_texts) == len(languages) == n) or n == 0:
            raise CodecLMError("generate_batch needs one reference (and transcript, language) per text")
        base = 0 if seed is None else int(seed)
        return [self.generate(t, r, rt, base + i, lang, **kwargs)
                for i, (t, r, rt, lang) in enumerate(zip(texts, ref_audios, ref_texts, languages))]

    def voice(self, name: str) -> tuple[Path, str, str]:
        """``(audio file, transcript, language)`` of a named voice."""
        if name not in self.voices or self.voices_dir is None:
            known = ", ".join(sorted(self.voices)) or "none"
            raise CodecLMError(f"unknown voice {name!r}; this model has: {known}")
        v = self.voices[name]
        return self.voices_dir / v["file"], v["text"], v.get("language", "en")

    def say(self, text: str, voice: str | None = None, seed: int | None = 0, **kwargs) -> torch.Tensor:
        """Plain TTS with a built-in named voice (default: the first one)."""
        if voice is None:
            if not self.voices:
                raise CodecLMError("this model has no named voices; use generate() with a reference")
            voice = next(iter(self.voices))
        path, ref_text, language = self.voice(voice)
        kwargs.setdefault("language", language)
        return self.generate(text, path, ref_text, seed, **kwargs)
