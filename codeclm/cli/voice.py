"""``codeclm clone``, ``codeclm say`` (also ``python generate.py clone|say``) and ``codeclm voice
add|list|remove``: speech from text in the voice of a reference clip, a named voice or a saved one.

Job i of a jobs file (from 0) uses seed ``--seed + i`` and writes ``OUT_DIR/{i:03d}_{slug}.wav``;
under a launcher the jobs are split across processes and the files are the same as with one.
Notes from the pipeline (a transcribed or cropped reference) go to stderr unless ``--quiet``.
"""

from __future__ import annotations

from pathlib import Path

from codeclm.cli.common import (UsageError, add_command, add_device, add_force, add_model, add_output, add_quiet,
                                add_sampling, add_seed, batch_outputs, model_folder, notes, output_file,
                                refuse_existing, report, run_jobs, shipped_voice_facts)
from codeclm.errors import CodecLMError

CLONE_USAGE = """%(prog)s (--ref CLIP | --voice NAME) --text TEXT -o FILE [options]
       %(prog)s --jobs-file FILE --out-dir FOLDER [options]"""
CLONE_EXAMPLES = """examples:
  codeclm clone --ref ref.wav --ref-text "what the reference says" --text "New words." -o out.wav
  codeclm clone --ref ref.wav --text "New words." -o out.wav       # transcribes ref.wav offline
  codeclm voice add ref.wav --name anna --ref-text "what it says"   # prepare a voice once ...
  codeclm clone --voice anna --text "New words." -o out.wav         # ... then no reference work
  codeclm clone --jobs-file jobs.jsonl --out-dir out/               # {"text", "ref", "ref_text", "language"}
  torchrun --nproc_per_node 2 generate.py clone --jobs-file jobs.jsonl --out-dir out/

Job i of a jobs file (from 0) uses seed --seed + i and writes OUT_DIR/000_slug-of-the-text.wav;
paths in a jobs file are relative to its folder. Several processes split the jobs and write the
same files as one."""
VOICES_DIR_HELP = ("folder of saved voices (default: $CODECLM_VOICES_DIR, else $XDG_DATA_HOME/codeclm/voices, "
                   "else ~/.local/share/codeclm/voices)")


def _ref_help(what: str) -> str:
    facts = shipped_voice_facts()
    limits = (f"; the shipped model needs at least {facts['min']:g} s and crops longer clips at {facts['max']:g} s"
              if facts else "; longer clips are cropped at the model's limit")
    return f"{what}{limits}"


def _language_help(what: str) -> str:
    facts = shipped_voice_facts()
    has = f"{facts['languages']} for the shipped model, en for Dia" if facts else "en for Dia"
    return f"{what}, one the model has: {has}"


def _voices_dir(p) -> None:
    p.add_argument("--voices-dir", default=None, metavar="FOLDER", help=VOICES_DIR_HELP)


VALLE_HELP = "VALL-E voice-cloning model folder (default: the shipped checkpoints/voice)"


def _sampling(p, seed_help: str, model_help: str | None = None) -> None:
    """Options of clone and say: the model, sampling, device, outputs."""
    add_model(p, "voice", model_help)
    _voices_dir(p)
    add_seed(p, seed_help)
    add_sampling(p, None, None, None, "; default: the model's own")
    p.add_argument("--speed", default=None, metavar="X",
                   help="pace of the duration-guided model: 0.5-2 times espeak-ng's default (default 1; 1.25 is "
                        "25%% faster), or 'reference' for the reference's own speaking rate")
    add_device(p)
    add_force(p)
    add_quiet(p)


def register(sub) -> None:
    p = add_command(sub, "clone", "speak text in the voice of a short reference clip (zero-shot)",
                    "Zero-shot voice cloning (VALL-E, or a Dia model folder): say --text in the voice of --ref "
                    "or of a saved --voice.", usage=CLONE_USAGE)
    p.epilog = CLONE_EXAMPLES
    one = p.add_argument_group("one clip (required unless --jobs-file)")
    one.add_argument("--ref", default=None, metavar="CLIP", help=_ref_help("reference audio of the voice"))
    one.add_argument("--voice", default=None, metavar="NAME",
                     help="a saved voice (codeclm voice add) or a named voice of the model, instead of --ref")
    one.add_argument("--text", default=None, help="the text to speak")
    add_output(one)
    one.add_argument("--ref-text", default=None, help="what the reference says (default: transcribed offline)")
    one.add_argument("--language", default="en", help=_language_help("language of the text"))
    many = p.add_argument_group("many clips")
    many.add_argument("--jobs-file", default=None, metavar="FILE",
                      help="JSON lines {text, ref, ref_text (optional), language (optional)}; one output each")
    many.add_argument("--out-dir", default=None, metavar="FOLDER", help="folder for the --jobs-file outputs")
    _sampling(p, "sampling seed; job i of a jobs file uses seed + i")
    p.add_argument("--int8", action="store_true",
                   help="Dia folders: decode with int8 weights (1.4-1.7x faster on CPU; the tokens are not float32's). "
                        "The shipped VALL-E's AR always decodes in int8 on CPU")
    p.set_defaults(func=run_clone)

    p = add_command(sub, "say", "text to speech with a named voice of the model or a saved voice",
                    usage="%(prog)s TEXT -o FILE [--voice NAME] [options]\n       %(prog)s --list-voices [options]")
    p.add_argument("text", nargs="?", default=None, help="the text to speak")
    p.add_argument("--voice", default=None, metavar="NAME",
                   help="named or saved voice (default: the model's first; see --list-voices)")
    p.add_argument("--list-voices", action="store_true", help="print the voices and exit")
    add_output(p, "audio file to write (.wav, .flac or .ogg); required with TEXT")
    _sampling(p, "sampling seed", VALLE_HELP)
    p.set_defaults(func=run_say)

    group = add_command(sub, "voice", "reusable voices for clone and say: add, list, remove",
                        "Prepare a reference voice once and reuse it with clone --voice and say --voice.")
    actions = group.add_subparsers(dest="voice_command", metavar="ACTION")
    actions.required = True
    a = add_command(actions, "add", "prepare a reference clip as a named voice",
                    "Trim, crop, transcribe (without --ref-text) and encode a reference clip once, and save it "
                    "under a name. A voice belongs to the codec of the model it was prepared with.")
    a.add_argument("ref", help=_ref_help("reference audio of the voice"))
    a.add_argument("--name", required=True, help="name to save the voice under")
    a.add_argument("--ref-text", default=None, help="what the reference says (default: transcribed offline)")
    a.add_argument("--language", default="en", help=_language_help("language of the reference"))
    add_model(a, "voice", VALLE_HELP)
    add_device(a)
    add_force(a, "replace a saved voice of that name")
    add_quiet(a, "no messages")
    a.set_defaults(func=run_add)
    ls = add_command(actions, "list", "list the saved voices")
    ls.set_defaults(func=run_list)
    rm = add_command(actions, "remove", "delete a saved voice")
    rm.add_argument("name")
    rm.set_defaults(func=run_remove)
    for q in (a, ls, rm):
        _voices_dir(q)


# -- clone --------------------------------------------------------------------------------------------
def _clone_jobs(args) -> list[tuple[dict, Path]]:
    if args.jobs_file is not None:
        if any(v is not None for v in (args.ref, args.text, args.output, args.ref_text, args.voice)):
            raise UsageError("give either --ref/--voice, --text and -o, or --jobs-file with --out-dir, not both")
        if args.out_dir is None:  # before reading the file: the usage error comes first
            raise UsageError("--jobs-file needs --out-dir")
        from codeclm.evaluation.clone_eval import read_pairs  # the format of codeclm eval clone's pairs

        jobs = [pair._asdict() for pair in read_pairs(args.jobs_file)]
        return list(zip(jobs, batch_outputs(args.out_dir, "--jobs-file", [j["text"] for j in jobs])))
    if args.ref is None and args.voice is None:
        raise UsageError("give the reference voice with --ref or --voice (or --jobs-file)")
    if args.ref is not None and args.voice is not None:
        raise UsageError("give either --ref or --voice, not both")
    if args.text is None or not args.text.strip():
        raise CodecLMError("the text is empty (give --text)")
    return [({"text": args.text, "ref": args.ref, "ref_text": args.ref_text, "language": args.language,
              "voice": args.voice}, output_file(args.output))]


def _check_args(args) -> None:
    from codeclm.lm.sampling import check_sampling_params

    model_folder(args.model)
    check_sampling_params(1.0 if args.temperature is None else args.temperature,
                          0 if args.top_k is None else args.top_k, 0.0 if args.top_p is None else args.top_p)
    if getattr(args, "speed", None) is not None:
        from codeclm.pipelines.clone_dur import check_speed

        args.speed = check_speed(args.speed)


def _stored_voices(pipe, args) -> None:
    """A model that clones from a reference each time (Dia) has no saved or named voices."""
    if not hasattr(pipe, "find_voice"):
        raise CodecLMError(f"{args.model or 'the default model'}: a Dia model has no saved or named voices "
                           f"(it clones from a reference each time); use --ref CLIP --ref-text TEXT")


def _generate(pipe, job: dict, seed: int, args, progress: bool):
    import torch

    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                  ("top_p", args.top_p), ("speed", args.speed)) if v is not None}  # None: the default
    if args.speed is not None and not getattr(pipe, "duration_guided", False):
        raise CodecLMError(f"{args.model or 'the default model'}: --speed is for the duration-guided VALL-E "
                           "(the shipped model); this model sets its own pace")
    with notes(f"{args.prog} {args.command}", args.quiet), torch.inference_mode():
        if job.get("voice") is not None:  # a prepared or named voice: no reference work
            return pipe.generate(job["text"], seed=seed, language=job.get("language"), progress=progress,
                                 voice=job["voice"], voices_dir=args.voices_dir, **sampling)
        return pipe.generate(job["text"], job["ref"], job.get("ref_text"), seed=seed,
                             language=job.get("language", "en"), progress=progress, **sampling)


def run_clone(args) -> int:
    from codeclm.audio import audio_info

    _check_args(args)
    jobs = _clone_jobs(args)
    for job, _ in jobs:  # unreadable references: fail before loading the model
        if job.get("voice") is None:
            audio_info(job["ref"])

    def load(device):
        from codeclm.pipelines import VoiceClone

        pipe = VoiceClone.from_pretrained(args.model, device=device)
        if args.int8 and hasattr(pipe, "quantize_int8"):
            pipe.quantize_int8()
        if any(job.get("voice") is not None for job, _ in jobs):
            _stored_voices(pipe, args)
        return pipe

    def describe(job) -> str:
        return f"voice of {job['ref'] if job.get('voice') is None else job['voice']}"

    return run_jobs(jobs, args, load, lambda pipe, job, seed, progress: _generate(pipe, job, seed, args, progress),
                    describe)


# -- say ----------------------------------------------------------------------------------------------
def _saved_voices(args):
    """(name, PreparedVoice) of every voice in --voices-dir."""
    from codeclm.pipelines.voices import list_voices, load_voice

    return [(name, load_voice(name, args.voices_dir)) for name in list_voices(args.voices_dir)]


def _list_voices(pipe, args) -> int:
    for name in pipe.voice_names():
        v = pipe.voices.get(name)
        if v is not None:
            print(f"{name}\t{v.get('language', 'en')}\t{v.get('speaker', '')}\t{v['text']}")
        else:
            voice = pipe.find_voice(name)
            print(f"{name}\t{voice.language}\tprepared\t{voice.transcript}")
    for name, voice in _saved_voices(args):
        print(f"{name}\t{voice.language}\tsaved\t{voice.transcript}")
    return 0


def run_say(args) -> int:
    from codeclm.audio import save_audio
    from codeclm.devices import resolve_device
    from codeclm.pipelines import VoiceClone

    _check_args(args)
    if not args.list_voices:
        if args.text is None or not args.text.strip():
            raise CodecLMError("the text is empty")
        out = output_file(args.output)
        refuse_existing([out], args.force)
    pipe = VoiceClone.from_pretrained(args.model, device=resolve_device(args.device))
    _stored_voices(pipe, args)
    if args.list_voices:
        return _list_voices(pipe, args)
    name = args.voice or next(iter(pipe.voice_names()), None)
    if name is None:
        raise CodecLMError("this model has no named voices; use codeclm clone --ref")
    audio = _generate(pipe, {"text": args.text, "ref": None, "language": None, "voice": name}, args.seed, args,
                      not args.quiet)
    save_audio(out, audio, pipe.sample_rate)
    report(f"{out}: {audio.shape[-1] / pipe.sample_rate:.2f} s, voice {name}", args.quiet)
    return 0


# -- voice add|list|remove ----------------------------------------------------------------------------
def run_add(args) -> int:
    import torch

    from codeclm.audio import audio_info
    from codeclm.devices import resolve_device
    from codeclm.pipelines import VoiceClone
    from codeclm.pipelines.voices import check_name, save_voice, user_voices_dir

    check_name(args.name)
    target = user_voices_dir(args.voices_dir) / f"{args.name}.voice.json"
    if target.exists() and not args.force:
        raise CodecLMError(f"voice {args.name!r} exists ({target}); use --force to replace it")
    model_folder(args.model)
    audio_info(args.ref)  # unreadable: fail before loading the model
    pipe = VoiceClone.from_pretrained(args.model, device=resolve_device(args.device))
    _stored_voices(pipe, args)
    with notes(f"{args.prog} voice add", args.quiet), torch.inference_mode():
        voice = pipe.prepare_voice(args.ref, args.ref_text, args.language, args.name)
    path = save_voice(voice, args.voices_dir, force=args.force)
    report(f"{path}: voice {voice.name!r}, {voice.seconds:.2f} s, {voice.language}, {voice.transcript!r}",
           args.quiet)
    return 0


def run_list(args) -> int:
    for name, v in _saved_voices(args):
        print(f"{name}\t{v.language}\t{v.seconds:.2f} s\t{v.codec_identity['name']}\t{v.transcript}")
    return 0


def run_remove(args) -> int:
    from codeclm.pipelines.voices import remove_voice

    report(f"{remove_voice(args.name, args.voices_dir)}: removed")
    return 0
