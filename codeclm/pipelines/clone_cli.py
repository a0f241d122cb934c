"""``codeclm clone`` / ``codeclm say`` (and ``python generate.py clone|say``): speech from text.

    codeclm clone --ref ref.wav --ref-text "what the reference says" --text "new sentence" -o out.wav
    codeclm clone --ref ref.wav --text "new sentence" -o out.wav          # transcribes ref.wav offline
    codeclm clone --jobs-file jobs.jsonl --out-dir out/                  # {"text", "ref", "ref_text", "language"}
    torchrun --nproc_per_node 2 generate.py clone --jobs-file jobs.jsonl --out-dir out/
    codeclm say "Hello there." --voice allison -o hello.wav               # built-in named voices
    codeclm say --list-voices
    codeclm voice add ref.wav --name anna --ref-text "what it says"      # prepare a voice once
    codeclm clone --voice anna --text "new sentence" -o out.wav          # then no reference work

Job ``i`` of a jobs file (from 0) uses seed ``--seed + i`` and writes ``OUT_DIR/{i:03d}_{slug}.wav``;
under a launcher the jobs are split across processes and the files are the same as with one.
Paths in a jobs file are relative to the file's folder. Notes from the pipeline (a transcribed
or cropped reference) go to stderr unless ``--quiet``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from codeclm.errors import CodecLMError, ConfigError
from codeclm.pipelines.cli import batch_outputs, output_file

__all__ = ["add_clone_commands", "read_jobs"]


def _common(p) -> None:
    p.add_argument("--model", default=None, help="voice-clone folder (default: the shipped checkpoints/voice)")
    p.add_argument("--voices-dir", default=None,
                   help="folder of saved voices (default: $CODECLM_VOICES_DIR or ~/.local/share/codeclm/voices)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; job i of a jobs file uses seed + i")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (0: greedy; default: the model's, VALL-E 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (0: off; default: the model's, VALL-E 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (0: off; default: the model's, VALL-E 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")


def add_clone_commands(subparsers) -> None:
    p = subparsers.add_parser("clone", help="speak text in the voice of a short reference clip (zero-shot)",
                              description="Zero-shot voice cloning (VALL-E, or a Dia folder): --text in the voice of --ref.")
    p.add_argument("--ref", default=None, help="reference audio of the voice (about 3 s; longer is cropped)")
    p.add_argument("--voice", default=None,
                   help="a saved voice (codeclm voice add) or built-in voice instead of --ref")
    p.add_argument("--ref-text", default=None, help="what the reference says (default: transcribed offline)")
    p.add_argument("--text", default=None, help="the text to speak")
    p.add_argument("--language", default="en", help="language of the texts (en, de, ...; default en)")
    p.add_argument("-o", "--output", default=None, help="audio file to write (.wav/.flac/.ogg)")
    p.add_argument("--jobs-file", default=None, help="JSON lines {text, ref, ref_text?, language?}; one file each")
    p.add_argument("--out-dir", default=None, help="folder for --jobs-file outputs")
    _common(p)
    p.set_defaults(func=run_clone)

    p = subparsers.add_parser("say", help="text to speech with a built-in named voice",
                              description="Text to speech with one of the model's named voices.")
    p.add_argument("text", nargs="?", default=None, help="the text to speak")
    p.add_argument("--voice", default=None, help="named voice (default: the model's first; see --list-voices)")
    p.add_argument("--list-voices", action="store_true", help="print the named voices and exit")
    p.add_argument("-o", "--output", default=None, help="audio file to write (.wav/.flac/.ogg)")
    _common(p)
    p.set_defaults(func=run_say)


# -- jobs -------------------------------------------------------------------------------------------
def read_jobs(path: str | Path) -> list[dict]:
    """Jobs of a JSON-lines file, the format of ``codeclm eval clone``'s pairs: ``ref`` and ``text``
    required, ``ref_text`` / ``language`` / ``speaker`` optional, ``ref`` relative to the file."""
    from codeclm.evaluation.clone_eval import read_pairs

    return [p._asdict() for p in read_pairs(path)]


def _clone_jobs(args) -> list[tuple[dict, Path]]:
    if args.jobs_file is not None:
        if any(v is not None for v in (args.ref, args.text, args.output, args.ref_text, args.voice)):
            raise CodecLMError("give either --ref/--text/-o, or --jobs-file with --out-dir, not both")
        if args.out_dir is None:  # before reading the file: the usage error comes first
            raise CodecLMError("--jobs-file needs --out-dir")
        jobs = read_jobs(args.jobs_file)
        return list(zip(jobs, batch_outputs(args.out_dir, "--jobs-file", [j["text"] for j in jobs])))
    if args.ref is None and args.voice is None:
        raise CodecLMError("give the reference voice with --ref or --voice (or --jobs-file)")
    if args.ref is not None and args.voice is not None:
        raise CodecLMError("give either --ref or --voice, not both")
    if args.text is None or not args.text.strip():
        raise CodecLMError("the text is empty (give --text)")
    return [({"text": args.text, "ref": args.ref, "ref_text": args.ref_text, "language": args.language,
              "voice": args.voice}, output_file(args.output))]


def _check_model_arg(args) -> None:
    if args.model is not None and not Path(args.model).is_dir():
        raise ConfigError(f"{args.model}: no such model folder")
    from codeclm.lm.sampling import check_sampling_params

    check_sampling_params(1.0 if args.temperature is None else args.temperature,
                          0 if args.top_k is None else args.top_k, 0.0 if args.top_p is None else args.top_p)


def _generate(pipe, job: dict, seed: int, args) -> object:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                      ("top_p", args.top_p)) if v is not None}  # None: the pipeline's default
        if job.get("voice") is not None:  # a prepared voice: no reference work
            audio = pipe.generate(job["text"], seed=seed, language=job.get("language"), progress=not args.quiet,
                                  voice=job["voice"], voices_dir=args.voices_dir, **sampling)
        else:
            audio = pipe.generate(job["text"], job["ref"], job.get("ref_text"), seed=seed,
                                  language=job.get("language", "en"), progress=not args.quiet, **sampling)
    if not args.quiet:
        for w in caught:
            print(f"codeclm {args.command}: note: {w.message}", file=sys.stderr)
    return audio


def run_clone(args) -> int:
    from codeclm.audio import audio_info
    from codeclm.pipelines.sharding import job_seed, process_shard

    _check_model_arg(args)
    jobs = _clone_jobs(args)
    for job, _ in jobs:  # unreadable references: fail before loading the model
        if job.get("voice") is None:
            audio_info(job["ref"])
    shard = process_shard(jobs, args.device)
    try:
        mine = shard.items
        if not args.force:
            for _, (_, out) in mine:
                if out.exists():
                    raise CodecLMError(f"{out}: exists (use --force to overwrite)")
        if not mine:
            return 0
        import torch

        from codeclm.audio import save_audio
        from codeclm.pipelines import VoiceClone

        pipe = VoiceClone.from_pretrained(args.model, device=shard.device)
        if args.out_dir is not None:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        for index, (job, out) in mine:
            seed = job_seed(args.seed, index)
            with torch.inference_mode():
                audio = _generate(pipe, job, seed, args)
            save_audio(out, audio, pipe.sample_rate)
            if not args.quiet:
                where = f" [process {shard.rank}/{shard.world}]" if shard.world > 1 else ""
                who = job["ref"] if job.get("voice") is None else job["voice"]
                print(f"{out}: {audio.shape[-1] / pipe.sample_rate:.2f} s, seed {seed}, voice of {who}{where}",
                      file=sys.stderr)
        return 0
    finally:
        shard.close()


def run_say(args) -> int:
    _check_model_arg(args)
    if not args.list_voices:
        if args.text is None or not args.text.strip():
            raise CodecLMError("the text is empty")
        out = output_file(args.output)
        if out.exists() and not args.force:
            raise CodecLMError(f"{out}: exists (use --force to overwrite)")
    import torch

    from codeclm.audio import save_audio
    from codeclm.pipelines import VoiceClone

    from codeclm.devices import resolve_device

    pipe = VoiceClone.from_pretrained(args.model, device=resolve_device(args.device))
    if args.list_voices:
        for name in getattr(pipe, "voice_names", lambda: list(pipe.voices))():
            v = pipe.voices.get(name)
            if v is not None:
                print(f"{name}\t{v.get('language', 'en')}\t{v.get('speaker', '')}\t{v['text']}")
            else:
                voice = pipe.find_voice(name)
                print(f"{name}\t{voice.language}\tprepared\t{voice.transcript}")
        if hasattr(pipe, "find_voice"):
            from codeclm.pipelines.voices import list_voices, load_voice

            for name in list_voices(args.voices_dir):
                voice = load_voice(name, args.voices_dir)
                print(f"{name}\t{voice.language}\tsaved\t{voice.transcript}")
        return 0
    if not hasattr(pipe, "find_voice"):  # Dia: no named voices
        pipe.voice(args.voice or "")
    name = args.voice or next(iter(pipe.voice_names()), None)
    if name is None:
        raise CodecLMError("this model has no named voices; use codeclm clone --ref")
    job = {"text": args.text, "ref": None, "language": None, "voice": name}
    with torch.inference_mode():
        audio = _generate(pipe, job, args.seed, args)
    save_audio(out, audio, pipe.sample_rate)
    if not args.quiet:
        print(f"{out}: {audio.shape[-1] / pipe.sample_rate:.2f} s, voice {name}", file=sys.stderr)
    return 0
