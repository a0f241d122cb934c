"""Long text for speech: sentences, the pause after each, and splits that fit a model.

    split_sentences("Hello there. How are you? Fine!")
    # [Piece('Hello there.', 0.3), Piece('How are you?', 0.35), Piece('Fine!', 0.35)]
    fit_pieces(pieces, fits)   # a piece too long for the model: split at commas, else at words

A sentence ends at ``.``, ``!``, ``?`` or an ellipsis followed by a space (not after a common
abbreviation such as "Dr." or "e.g.", a single initial, or inside a number like 5.20), or at a
line break. Pauses: 0.30 s after a period, 0.35 s after ``?`` / ``!``, 0.40 s after an ellipsis
or at the end of a paragraph, 0.25 s at a comma / semicolon / colon where a long sentence had to
be split, 0.10 s between the word groups of a sentence without any of those. Nothing is dropped:
joined with spaces, the pieces are the words of the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from codeclm.tokenizers.normalize import TextError

__all__ = ["Piece", "fit_pieces", "split_sentences"]

PAUSES = {".": 0.30, "!": 0.35, "?": 0.35, "…": 0.40, "paragraph": 0.40, ",": 0.25, "words": 0.10}
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "fig", "mt",
                 "approx", "dept", "inc", "ltd", "co", "hr", "herr", "frau", "z.b", "bzw", "usw", "mme", "mlle", "sra",
                 "sr", "dra"}
_END = re.compile(r"(\.\.\.|…|[.!?]+)([\"'”’»)\]]*)(\s+)")


class Piece(NamedTuple):
    text: str
    pause: float  # seconds of silence after it
    split: str = ""  # "", "comma" or "words": how a too-long sentence was split


def _pause(mark: str) -> float:
    if mark in ("...", "…"):
        return PAUSES["…"]
    return PAUSES["?"] if ("?" in mark or "!" in mark) else PAUSES["."]


def split_sentences(text: str) -> list[Piece]:
    """The sentences of ``text`` with the pause after each (the last one's too)."""
    if not isinstance(text, str) or not text.strip():
        raise TextError("the text to speak is empty")
    pieces: list[Piece] = []
    for paragraph in re.split(r"\n\s*\n|\r\n\s*\r\n", text.strip()):
        lines = [ln.strip() for ln in paragraph.splitlines() if ln.strip()]
        if not lines:
            continue
        body = " ".join(lines)  # a single line break inside a paragraph is a space
        start = 0
        for m in _END.finditer(body + " "):
            before = body[start: m.start()].split()
            word = before[-1].lower().rstrip(".") if before else ""
            if m.group(1) == "." and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
                continue
            piece = body[start: m.end(2)].strip()
            if piece:
                pieces.append(Piece(piece, _pause(m.group(1))))
            start = m.end()
        rest = body[start:].strip()
        if rest:
            pieces.append(Piece(rest, PAUSES["."]))
        if pieces:
            pieces[-1] = pieces[-1]._replace(pause=max(pieces[-1].pause, PAUSES["paragraph"]))
    if not pieces:
        raise TextError("the text to speak is empty")
    return pieces


def _groups(words: list[str], fits: Callable[[str], bool]) -> list[str]:
    out, cur = [], []
    for w in words:
        if cur and not fits(" ".join(cur + [w])):
            out.append(" ".join(cur))
            cur = []
        cur.append(w)
    out.append(" ".join(cur))
    return out


def fit_pieces(pieces: list[Piece], fits: Callable[[str], bool]) -> list[Piece]:
    """Pieces that ``fits(text)`` accepts: a sentence that does not fit is split at commas /
    semicolons / colons (clauses merged while they fit), a clause that still does not fit at
    words (``split="words"``; the caller warns). A single word that does not fit is kept as it is."""
    out: list[Piece] = []
    for piece in pieces:
        if fits(piece.text):
            out.append(piece)
            continue
        clauses = [c for c in re.split(r"(?<=[,;:])\s+", piece.text) if c]
        merged: list[tuple[str, str]] = []
        for clause in clauses:
            if merged and merged[-1][1] == "comma" and fits(f"{merged[-1][0]} {clause}"):
                merged[-1] = (f"{merged[-1][0]} {clause}", "comma")
            elif fits(clause):
                merged.append((clause, "comma"))
            else:
                merged.extend((g, "words") for g in _groups(clause.split(), fits))
        for i, (chunk, how) in enumerate(merged):
            last = i == len(merged) - 1
            pause = piece.pause if last else (PAUSES[","] if chunk.endswith((",", ";", ":")) else PAUSES["words"])
            out.append(Piece(chunk, pause, how if len(merged) > 1 else piece.split))
    return out
