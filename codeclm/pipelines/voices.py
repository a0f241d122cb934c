"""Reusable voices: a reference prepared once (codes, transcript, phonemes), spoken many times.

    voice = pipe.prepare_voice("ref.wav", ref_text="what it says", name="anna")
    save_voice(voice)                          # ~/.local/share/codeclm/voices/anna.voice.json
    pipe.generate("New words.", voice=load_voice("anna"))   # no loading, trimming, ASR or encoding

A voice file ``NAME.voice.json`` holds ``{"format": 1, "name", "language", "transcript",
"phonemes", "codes": [[...] per codebook], "frame_rate", "codec_identity": {"name", "sha256"},
"source"}``. The codes are the reference's codec codes (trimmed, cropped to the model's prompt
limit), so a voice only fits models on the same codec: :func:`check_voice_codec` refuses any
other in one line. The built-in voices of a model are the same files in its ``voices/`` folder.

The user folder is ``$CODECLM_VOICES_DIR``, else ``$XDG_DATA_HOME/codeclm/voices``, else
``~/.local/share/codeclm/voices``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codeclm.errors import CodecLMError, ConfigError

__all__ = ["VOICE_SUFFIX", "PreparedVoice", "check_voice_codec", "list_voices", "load_voice", "remove_voice",
           "save_voice", "user_voices_dir"]

VOICE_SUFFIX = ".voice.json"
FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def user_voices_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("CODECLM_VOICES_DIR"):
        return Path(os.environ["CODECLM_VOICES_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "codeclm" / "voices"


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("."):
        raise CodecLMError(f"voice name {name!r}: use 1-64 letters, digits, '_', '-' or '.' (starting with a "
                           "letter or digit)")
    return name


@dataclass
class PreparedVoice:
    """A reference, ready to prompt with."""

    name: str
    codes: torch.Tensor  # [K, T] long
    transcript: str
    language: str
    codec_identity: dict
    phonemes: str = ""
    frame_rate: float = 0.0
    source: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def seconds(self) -> float:
        return self.codes.shape[-1] / self.frame_rate if self.frame_rate else 0.0

    def to_dict(self) -> dict:
        return {"format": FORMAT, "name": self.name, "language": self.language, "transcript": self.transcript,
                "phonemes": self.phonemes, "frame_rate": self.frame_rate, "source": self.source,
                "codec_identity": dict(self.codec_identity), "codes": self.codes.cpu().tolist()}

    @classmethod
    def from_dict(cls, d, source: str) -> PreparedVoice:
        try:
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT}")
            codes = torch.tensor(d["codes"], dtype=torch.long)
            if codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1 or int(codes.min()) < 0:
                raise ValueError("codes must be a non-empty [codebooks][frames] list of codes >= 0")
            ident = d["codec_identity"]
            if not isinstance(ident, dict) or not {"name", "sha256"} <= set(ident):
                raise ValueError("codec_identity must hold name and sha256")
            for key in ("name", "transcript", "language"):
                if not isinstance(d[key], str) or not d[key].strip():
                    raise ValueError(f"{key} must be a non-empty string")
            return cls(d["name"], codes, d["transcript"], d["language"], ident, str(d.get("phonemes", "")),
                       float(d.get("frame_rate", 0.0)), str(d.get("source", "")), Path(source))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{source}: not a voice file ({exc})") from None


def _path(name: str, folder: Path) -> Path:
    return folder / f"{check_name(name)}{VOICE_SUFFIX}"


def save_voice(voice: PreparedVoice, folder: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write ``folder/NAME.voice.json`` atomically (refused if it exists, unless ``force``)."""
    folder = user_voices_dir(folder)
    path = _path(voice.name, folder)
    if path.exists() and not force:
        raise CodecLMError(f"voice {voice.name!r} exists ({path}); use --force to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(voice.to_dict()) + "\n", encoding="utf-8")
    tmp.replace(path)
    voice.path = path
    return path


def load_voice(name: str, folder: str | os.PathLike | None = None) -> PreparedVoice:
    folder = user_voices_dir(folder)
    path = _path(name, folder)
    if not path.is_file():
        known = ", ".join(v for v in list_voices(folder)) or "none"
        raise CodecLMError(f"unknown voice {name!r} in {folder} (saved voices: {known}); add it with "
                           "'codeclm voice add REF.wav --name NAME'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a voice file (invalid JSON: {exc})") from None
    return PreparedVoice.from_dict(data, str(path))


def list_voices(folder: str | os.PathLike | None = None) -> list[str]:
    folder = user_voices_dir(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(VOICE_SUFFIX)] for p in folder.glob(f"*{VOICE_SUFFIX}") if not p.name.startswith("."))


def remove_voice(name: str, folder: str | os.PathLike | None = None) -> Path:
    folder = user_voices_dir(folder)
    path = _path(name, folder)
    if not path.is_file():
        raise CodecLMError(f"unknown voice {name!r} in {folder}")
    path.unlink()
    return path


def check_voice_codec(voice: PreparedVoice, identity: dict) -> None:
    """One-line refusal of a voice whose codes come from another codec than ``identity``."""
    a, b = voice.codec_identity, identity
    if (a.get("name"), a.get("sha256")) != (b.get("name"), b.get("sha256")):
        raise ConfigError(f"voice {voice.name!r} was prepared with codec {a.get('name')!r} (sha256 "
                          f"{str(a.get('sha256'))[:12]}), this model uses {b.get('name')!r} (sha256 "
                          f"{str(b.get('sha256'))[:12]}); prepare it again with this model (codeclm voice add "
                          "--model ...)")
