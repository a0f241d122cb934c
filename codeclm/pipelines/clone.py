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
from codeclm.pipelines.core import BasePipeline, audio_argument, check_codec_identity, pipeline_type
from codeclm.pipelines.longform import window_seed
from codeclm.pipelines.voices import PreparedVoice, check_voice_codec, load_voice, user_voices_dir
from codeclm.pretrained import default_checkpoint
from codeclm.tokenizers.normalize import TextError, check_language
from codeclm.tokenizers.phonemes import PhonemeVocab, TextToPhonemes, split_phonemes
from codeclm.tokenizers.sentences import Piece, fit_pieces, split_sentences

__all__ = ["VoiceClone"]

DEFAULT_VOICE_MODEL = "voice"
SILENCE_DBFS = -50.0  # a reference whose RMS is below this is "silent"
TRIM_DBFS = -40.0  # leading/trailing 20 ms frames this far below the loudest frame are trimmed


_pipeline_type = pipeline_type  # the one reader of pipeline.json's type (kept for old imports)
MAX_BATCH = 8  # sentences decoded together in one AR batch
PHONEMES_PER_SECOND = 12.0  # typical speech rate: how long a sentence is expected to take


def _load_model(folder: Path):
    """The VALL-E of a folder: the duration-guided one (``codeclm-valle-dur``) or the original."""
    from codeclm.lm.valle_dur import MODEL_TYPE as DUR_TYPE
    from codeclm.lm.valle_dur import DurValle

    try:
        kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        kind = None  # Valle.from_pretrained reports the problem
    return DurValle.from_pretrained(folder) if kind == DUR_TYPE else Valle.from_pretrained(folder)


def _frame_db(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """RMS in dBFS of consecutive ``hop``-sample frames of mono ``wav [N]``."""
    n = wav.shape[-1] // hop
    frames = wav[: n * hop].reshape(n, hop)
    return 10 * torch.log10(frames.pow(2).mean(-1).clamp(min=1e-12))


class VoiceClone(BasePipeline):
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
        self._codec_identity: dict | None = None

    def _modules(self) -> list:
        return [self.model, self.codec]

    @property
    def codec_identity(self) -> dict:
        """Name and weight hash of the codec (what a prepared voice must match)."""
        if self._codec_identity is None:
            self._codec_identity = self.codec.identity()
        return self._codec_identity

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> VoiceClone:
        """Load a voice-clone folder; None loads the shipped default (``checkpoints/voice``)."""
        folder = Path(folder) if folder is not None else default_checkpoint(DEFAULT_VOICE_MODEL)
        if _pipeline_type(folder) == "dia":  # a Dia folder (codeclm.pipelines.dia) loads as its own class
            from codeclm.pipelines.dia import DiaVoiceClone

            return DiaVoiceClone.from_pretrained(folder, device)
        info = cls._read_info(folder, ("valle", "codec", "phonemes"))
        model = _load_model(folder / "valle")
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
        self._write_info(folder, folder / "codec", languages=list(self.vocab.languages))  # the codec as saved
        return folder

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

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
        wav = audio_argument(ref_audio, self.sample_rate, 1, name, default_rate=self.sample_rate)
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
        from codeclm.asr import transcribe

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
            crop = (f"reference cropped to {wav.shape[-1] / self.sample_rate:.2f} s (model limit "
                    f"{self.model.config.max_prompt_seconds:g} s); " if cropped else "")
            warnings.warn(f"{name}: {crop}no reference transcript given; transcribed offline as {ref_text!r}",
                          stacklevel=3)
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

    def _phonemes(self, ref_text: str, text: str, language: str,
                  check_length: bool = True) -> tuple[torch.Tensor, int]:
        """Ids of ``ref_text + text`` (as in training: one utterance) and the target's phoneme count."""
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text to speak is empty")
        both, target = self.front.phonemes([f"{ref_text.strip()} {text.strip()}", text.strip()], language)
        n_target = len(split_phonemes(target))
        if n_target == 0:
            raise TextError(f"the text {text!r} has nothing to pronounce")
        ids = self.vocab.encode(both, language, bos=True, eos=True)
        if check_length and len(ids) > 4 * self.model.config.max_frames:
            raise TextError(f"the text is too long for this model ({len(ids)} phonemes); split it into sentences")
        return torch.tensor(ids), n_target

    # -- voices ----------------------------------------------------------------------------------
    def prepare_voice(self, ref_audio, ref_text: str | None = None, language: str = "en",
                      name: str = "voice") -> PreparedVoice:
        """The reference's prompt (trimmed, cropped, encoded; transcribed when ``ref_text`` is
        None) as a :class:`~codeclm.pipelines.voices.PreparedVoice` to save and reuse."""
        language = self._language(language)
        label = str(ref_audio) if isinstance(ref_audio, (str, os.PathLike)) else "reference audio"
        codes, ref_text = self._prompt(ref_audio, ref_text, language, label)
        phonemes = self.front.phonemes([ref_text.strip()], language)[0]
        return PreparedVoice(name, codes.cpu(), ref_text, language, dict(self.codec_identity), phonemes,
                             float(self.codec.frame_rate), label if label != "reference audio" else "")

    def find_voice(self, name: str, voices_dir: str | os.PathLike | None = None):
        """A named voice: this model's prepared built-in (``voices/NAME.voice.json``), a saved user
        voice (``voices_dir``, default the user folder), or a built-in listed in ``voices.json``
        (returned as ``(audio file, transcript, language)``, prepared on use)."""
        from codeclm.pipelines.voices import VOICE_SUFFIX

        if self.voices_dir is not None and (self.voices_dir / f"{name}{VOICE_SUFFIX}").is_file():
            return load_voice(name, self.voices_dir)
        if name in self.voices:
            return self.voice(name)
        folder = user_voices_dir(voices_dir)
        if (folder / f"{name}{VOICE_SUFFIX}").is_file():
            return load_voice(name, folder)
        known = sorted(set(self.voices) | set(self._builtin_prepared()))
        raise CodecLMError(f"unknown voice {name!r}; this model has: {', '.join(known) or 'none'} (saved voices: "
                           f"codeclm voice list)")

    def _builtin_prepared(self) -> list[str]:
        from codeclm.pipelines.voices import list_voices

        return list_voices(self.voices_dir) if self.voices_dir is not None else []

    def _voice_prompt(self, voice) -> tuple[torch.Tensor, str, str]:
        """``(codes, transcript, language)`` of a prepared voice, refused if made with another codec."""
        check_voice_codec(voice, self.codec_identity)
        if voice.codes.shape[0] < self.model.config.n_q:
            raise ConfigError(f"voice {voice.name!r} has {voice.codes.shape[0]} codebooks, this model needs "
                              f"{self.model.config.n_q}")
        return voice.codes[: self.model.config.n_q].to(self.device), voice.transcript, voice.language

    # -- long text -------------------------------------------------------------------------------
    def plan_text(self, text: str, ref_text: str, language: str, prompt_frames: int) -> list[Piece]:
        """The text as pieces the model can speak at once (sentences; a sentence longer than the
        model's frames after this prompt is split at commas, else between words, with a warning)."""
        c = self.model.config
        budget = c.max_frames - prompt_frames
        per_phoneme = max(c.min_frames_per_phoneme, c.frame_rate / PHONEMES_PER_SECOND)

        def fits(piece: str) -> bool:
            try:
                ids, n_target = self._phonemes(ref_text, piece, language, check_length=False)
            except TextError:
                return True  # nothing to pronounce: refused later with its own message
            return n_target * per_phoneme <= budget and len(ids) <= 4 * c.max_frames

        pieces = fit_pieces(split_sentences(text), fits)
        words = [p.text for p in pieces if p.split == "words"]
        if words:
            warnings.warn(f"a sentence is longer than this model speaks at once (about {budget / c.frame_rate:.1f} s "
                          f"after the reference); split between words into {len(words)} parts", stacklevel=3)
        return pieces

    # -- generation ------------------------------------------------------------------------------
    def _job(self, text, ref_audio, ref_text, language, voice, voices_dir):
        """``(prompt codes, transcript, language)`` of one job, from a prepared voice or a reference."""
        if isinstance(text, str) and not text.strip() or not isinstance(text, str):
            raise TextError("the text to speak is empty")
        if isinstance(ref_audio, PreparedVoice):
            voice, ref_audio = ref_audio, None
        if voice is not None:
            if ref_audio is not None:
                raise CodecLMError("give a reference or a voice, not both")
            if isinstance(voice, str):
                voice = self.find_voice(voice, voices_dir)
            if isinstance(voice, tuple):  # a built-in listed in voices.json: prepared now
                ref_audio, ref_text, voice_language = voice
                language = self._language(language or voice_language)
            else:
                codes, ref_text, voice_language = self._voice_prompt(voice)
                return codes, ref_text, self._language(language or voice_language)
        if ref_audio is None:
            raise CodecLMError("give a reference voice (ref_audio) or a voice name")
        language = self._language(language or "en")
        name = str(ref_audio) if isinstance(ref_audio, (str, os.PathLike)) else "reference audio"
        prompt, ref_text = self._prompt(ref_audio, ref_text, language, name)
        return prompt, ref_text, language

    @property
    def duration_guided(self) -> bool:
        from codeclm.lm.valle_dur import DurValle

        return isinstance(self.model, DurValle)

    def _synthesize(self, jobs: list[tuple], seeds: list[int | None], temperature: float, top_k: int,
                    top_p: float, progress: bool, speed: float | str | None) -> list[torch.Tensor]:
        if self.duration_guided:
            from codeclm.pipelines.clone_dur import synthesize_dur

            return synthesize_dur(self, jobs, seeds, temperature, top_k, top_p, progress, speed)
        if speed is not None:
            raise CodecLMError("speed is for the duration-guided model; this VALL-E sets its own pace")
        return self._synthesize_valle(jobs, seeds, temperature, top_k, top_p, progress)

    def _synthesize_valle(self, jobs: list[tuple], seeds: list[int | None], temperature: float, top_k: int,
                          top_p: float, progress: bool) -> list[torch.Tensor]:
        """Audio per job ``(text, prompt, ref_text, language)``: each text split into pieces, all
        pieces decoded by the AR in batches (pieces of one voice share one batch), joined with pauses.
        Piece ``j`` of job ``i`` samples with ``window_seed(seeds[i], j)`` (piece 0: the seed itself)."""
        c = self.model.config
        plans, flat = [], []
        for i, (text, prompt, ref_text, language) in enumerate(jobs):
            pieces = self.plan_text(text, ref_text, language, prompt.shape[1])
            plans.append(pieces)
            for j, piece in enumerate(pieces):
                ids, n_target = self._phonemes(ref_text, piece.text, language)
                flat.append((i, j, ids, n_target, prompt, seeds[i]))
        codes: list[torch.Tensor] = []
        with self._progress(progress, None, "frame", "voice-clone") as on_step:
            for start in range(0, len(flat), MAX_BATCH):
                part = flat[start: start + MAX_BATCH]
                gens = [self._generator(window_seed(seed, j)) for _, j, _, _, _, seed in part]
                codes += self.model.generate_batch([x[2] for x in part], [x[4] for x in part], [x[3] for x in part],
                                                   temperature=temperature, top_k=top_k, top_p=top_p,
                                                   do_sample=temperature > 0, generators=gens,
                                                   on_frame=(lambda n: on_step()) if on_step else None)
        for (i, j, _, n_target, prompt, _), out in zip(flat, codes):
            limit = min(c.max_frames - prompt.shape[1], int(c.max_frames_per_phoneme * n_target))
            if out.shape[1] >= limit and out.shape[1] >= c.max_frames - prompt.shape[1]:
                warnings.warn(f"{plans[i][j].text[:40]!r}: reached the model's length limit ({limit / c.frame_rate:.1f} s) "
                              "before the end of the utterance; its end may be missing", stacklevel=3)
        audios, k = [], 0
        with torch.no_grad():
            for pieces in plans:
                parts = []
                for j, piece in enumerate(pieces):
                    wav = self.codec.decode(codes[k][None])[0].float().cpu()
                    k += 1
                    parts.append(wav)
                    if j < len(pieces) - 1:
                        parts.append(wav.new_zeros(wav.shape[0], round(piece.pause * self.sample_rate)))
                audios.append(torch.cat(parts, -1))
        return audios

    def generate(self, text: str, ref_audio=None, ref_text: str | None = None, seed: int | None = 0,
                 language: str | None = None, temperature: float = 1.0, top_k: int = 50, top_p: float = 0.0,
                 progress: bool = False, voice=None, voices_dir: str | os.PathLike | None = None,
                 speed: float | str | None = None) -> torch.Tensor:
        """Speech ``[channels, samples]`` (float32, CPU) saying ``text`` in the voice of ``ref_audio``
        (an audio path, a tensor ``[channels, samples]`` at ``sample_rate``, ``(tensor, rate)``, or
        a :class:`~codeclm.pipelines.voices.PreparedVoice`) or of ``voice`` (a prepared voice or a
        name: built-in, or saved with ``codeclm voice add``; no reference work then).

        Any length: the text is split into sentences (a sentence too long for the model at commas,
        else between words, with a warning), each spoken in the same voice and joined with pauses
        of 0.25-0.4 s by punctuation. ``ref_text`` is what the reference says (None: transcribed
        offline, English). ``language``: default the voice's, else English. Seeded: the same call
        gives the same audio. ``temperature`` 0 is greedy (prone to loops: VALL-E samples).
        ``speed`` (the duration-guided model): pace relative to espeak-ng's default (None: 1; 1.25
        is 25 % faster; 0.5-2), or ``"reference"`` for the reference's own speaking rate.
        """
        job = self._job(text, ref_audio, ref_text, language, voice, voices_dir)
        self.last_ref_text = job[1]
        return self._synthesize([(text, *job)], [seed], temperature, top_k, top_p, progress, speed)[0]

    def generate_batch(self, texts: list[str], ref_audios: list, ref_texts: list | None = None,
                       seed: int | None = 0, language: str | list[str] | None = None,
                       temperature: float = 1.0, top_k: int = 50, top_p: float = 0.0,
                       progress: bool = False, speed: float | str | None = None) -> list[torch.Tensor]:
        """One waveform per (text, reference); item ``i`` uses seed ``seed + i`` (as the sharded CLI)
        and equals ``generate`` of that item with that seed. References of one prompt length (e.g.
        one voice) decode in one AR batch. A reference may be a prepared voice or its name."""
        n = len(texts)
        ref_texts = list(ref_texts) if ref_texts is not None else [None] * n
        languages = [language] * n if language is None or isinstance(language, str) else list(language)
        if not (len(ref_audios) == len(ref_texts) == len(languages) == n) or n == 0:
            raise CodecLMError("generate_batch needs one reference (and transcript, language) per text")
        jobs = []
        for t, r, rt, lang in zip(texts, ref_audios, ref_texts, languages):
            by_name = isinstance(r, str) and not os.path.exists(r) and self._is_voice_name(r)
            jobs.append((t, *self._job(t, None if by_name else r, rt, lang, r if by_name else None, None)))
        base = 0 if seed is None else int(seed)
        return self._synthesize(jobs, [base + i for i in range(n)], temperature, top_k, top_p, progress, speed)

    def _is_voice_name(self, name: str) -> bool:
        try:
            self.find_voice(name)
        except CodecLMError:
            return False
        return True

    def voice(self, name: str) -> tuple[Path, str, str]:
        """``(audio file, transcript, language)`` of a built-in voice listed in ``voices.json``."""
        if name not in self.voices or self.voices_dir is None:
            known = ", ".join(sorted(set(self.voices) | set(self._builtin_prepared()))) or "none"
            raise CodecLMError(f"unknown voice {name!r}; this model has: {known}")
        v = self.voices[name]
        return self.voices_dir / v["file"], v["text"], v.get("language", "en")

    def voice_names(self) -> list[str]:
        """This model's built-in voices: prepared files first, then those of ``voices.json``."""
        return list(dict.fromkeys(self._builtin_prepared() + list(self.voices)))

    def say(self, text: str, voice=None, seed: int | None = 0, voices_dir: str | os.PathLike | None = None,
            **kwargs) -> torch.Tensor:
        """Plain TTS with a named voice (default: the model's first built-in one): built-in,
        saved with ``codeclm voice add`` (``voices_dir``), or a prepared voice."""
        if voice is None:
            names = self.voice_names()
            if not names:
                raise CodecLMError("this model has no named voices; use generate() with a reference")
            voice = names[0]
        return self.generate(text, None, None, seed, voice=voice, voices_dir=voices_dir, **kwargs)
