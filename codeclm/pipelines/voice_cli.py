"""``codeclm voice add|list|remove``: reusable voices (prepared once, spoken many times).

    codeclm voice add ref.wav --name anna --ref-text "what the reference says"   # [--model FOLDER]
    codeclm voice list
    codeclm voice remove anna
    codeclm clone --voice anna --text "New words." -o out.wav                  # no reference work

Voices live in ``--voices-dir`` (default: ``$CODECLM_VOICES_DIR``, else
``~/.local/share/codeclm/voices``), one ``NAME.voice.json`` each (see
:mod:`codeclm.pipelines.voices`); a voice is tied to the codec of the model it was prepared with.
"""

from __future__ import annotations

import sys
import warnings

from codeclm.errors import CodecLMError

__all__ = ["add_voice_commands"]


def add_voice_commands(subparsers) -> None:
    p = subparsers.add_parser("voice", help="reusable voices for clone/say: add, list, remove",
                              description="Prepare a reference voice once and reuse it with clone/say --voice.")
    sub = p.add_subparsers(dest="voice_command", metavar="ACTION")
    a = sub.add_parser("add", help="prepare a reference clip as a named voice",
                       description="Trim, crop, transcribe (without --ref-text) and encode a reference once.")
    a.add_argument("ref", help="reference audio of the voice (about 3 s; longer is cropped)")
    a.add_argument("--name", required=True, help="name to save the voice under")
    a.add_argument("--ref-text", default=None, help="what the reference says (default: transcribed offline)")
    a.add_argument("--language", default="en", help="language of the reference (default en)")
    a.add_argument("--model", default=None, help="voice-clone folder (default: the shipped checkpoints/voice)")
    a.add_argument("-f", "--force", action="store_true", help="replace a saved voice of that name")
    a.set_defaults(func=run_add)
    ls = sub.add_parser("list", help="the saved voices", description="List the saved voices.")
    ls.set_defaults(func=run_list)
    rm = sub.add_parser("remove", help="delete a saved voice", description="Delete a saved voice.")
    rm.add_argument("name")
    rm.set_defaults(func=run_remove)
    for q in (a, ls, rm):
        q.add_argument("--voices-dir", default=None,
                       help="folder of saved voices (default: $CODECLM_VOICES_DIR or ~/.local/share/codeclm/voices)")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_add(args) -> int:
    from pathlib import Path

    from codeclm.audio import audio_info
    from codeclm.errors import ConfigError
    from codeclm.pipelines.voices import check_name, save_voice, user_voices_dir

    check_name(args.name)
    target = user_voices_dir(args.voices_dir) / f"{args.name}.voice.json"
    if target.exists() and not args.force:
        raise CodecLMError(f"voice {args.name!r} exists ({target}); use --force to replace it")
    if args.model is not None and not Path(args.model).is_dir():
        raise ConfigError(f"{args.model}: no such model folder")
    audio_info(args.ref)  # unreadable: fail before loading the model
    import torch

    from codeclm.pipelines import VoiceClone

    pipe = VoiceClone.from_pretrained(args.model)
    if not hasattr(pipe, "prepare_voice"):
        raise CodecLMError(f"{args.model}: this model clones from a reference each time (no prepared voices)")
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        voice = pipe.prepare_voice(args.ref, args.ref_text, args.language, args.name)
    for w in caught:
        print(f"codeclm voice add: note: {w.message}", file=sys.stderr)
    path = save_voice(voice, args.voices_dir, force=args.force)
    print(f"{path}: voice {voice.name!r}, {voice.seconds:.2f} s, {voice.language}, {voice.transcript!r}",
          file=sys.stderr)
    return 0


def run_list(args) -> int:
    from codeclm.pipelines.voices import list_voices, load_voice

    for name in list_voices(args.voices_dir):
        v = load_voice(name, args.voices_dir)
        print(f"{name}\t{v.language}\t{v.seconds:.2f} s\t{v.codec_identity['name']}\t{v.transcript}")
    return 0


def run_remove(args) -> int:
    from codeclm.pipelines.voices import remove_voice

    path = remove_voice(args.name, args.voices_dir)
    print(f"{path}: removed", file=sys.stderr)
    return 0
