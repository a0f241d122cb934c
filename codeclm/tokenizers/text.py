"""Caption tokenizer: text normalisation + a small SentencePiece model trained on captions.

    texts = [normalize_text(c) for c in captions]
    model = train_caption_tokenizer(captions, "runs/x/text_tokenizer/spm", vocab_size=512)
    tok = CaptionTokenizer(model, max_len=64)
    ids, mask = tok.encode(["a calm piano piece", ""])    # [2, T] long, [2, T] bool
    tok.decode(ids)                                       # ["a calm piano piece", ""]

Every text goes through :func:`normalize_text` (NFKC, optional lowercasing, punctuation spacing,
collapsed whitespace) before SentencePiece sees it, and SentencePiece's own normalisation is
switched off (``identity``), so ``decode(encode(x)) == normalize_text(x)`` for any text made of
characters seen in training. Id 0 is padding, id 1 unknown; there is no BOS/EOS.

Training is deterministic (one thread, no input sampling or shuffling): the same captions and
options give byte-identical model files.
"""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from codeclm.errors import ConfigError
from codeclm.pretrained import read_json

__all__ = ["PAD_ID", "UNK_ID", "CaptionTokenizer", "normalize_text", "train_caption_tokenizer"]

PAD_ID, UNK_ID = 0, 1
MODEL_NAME, CONFIG_NAME = "tokenizer.model", "tokenizer.json"
_PUNCT_BEFORE = re.compile(r"\s+([,.;:!?)\]}])")  # no space before closing punctuation
_PUNCT_AFTER = re.compile(r"([,;:!?])(?=[^\s\d,.;:!?)\]}])")  # one space after , ; : ! ? (not in 1,000 or 3:4)
_OPEN_AFTER = re.compile(r"([(\[{])\s+")  # no space after opening brackets
_WS = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool = True) -> str:
    """NFKC, optional lowercasing, control characters dropped, punctuation spacing, one space
    between words, no leading/trailing space. Idempotent."""
    if not isinstance(text, str):
        raise ConfigError(f"text must be a string, got {type(text).__name__}")
    s = unicodedata.normalize("NFKC", text)
    if lowercase:
        s = s.lower()
    s = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in s)
    s = _WS.sub(" ", s)
    s = _PUNCT_BEFORE.sub(r"\1", s)
    s = _PUNCT_AFTER.sub(r"\1 ", s)
    s = _OPEN_AFTER.sub(r"\1", s)
    return _WS.sub(" ", s).strip()


def _train_bytes(texts: list[str], vocab_size: int, model_type: str, seed: int) -> bytes:
    import sentencepiece as spm

    # SentencePiece's trainer has no seed option: with one thread, no sampling and no shuffling it
    # is deterministic. ``seed`` is kept in the API (and ordering is the caller's) for the record.
    del seed

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, minloglevel=2, max_sentence_length=1 << 16,
        hard_vocab_limit=True)
    return buf.getvalue()


def train_caption_tokenizer(texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int = 1024,
                            model_type: str = "unigram", seed: int = 0, lowercase: bool = True) -> Path:
    """Train a SentencePiece model on ``texts`` (normalised, empty ones skipped); writes
    ``out_prefix.model`` and returns its path.

    When the corpus is too small for ``vocab_size``, SentencePiece names the largest size it
    can reach; training is retried once at that size with a warning.
    """
    if model_type not in ("unigram", "bpe"):
        raise ConfigError(f"caption tokenizer: model_type must be unigram or bpe, got {model_type!r}")
    if vocab_size < 3:
        raise ConfigError(f"caption tokenizer: vocab_size must be >= 3, got {vocab_size}")
    corpus = [t for t in (normalize_text(x, lowercase) for x in texts) if t]
    if not corpus:
        raise ConfigError("caption tokenizer: no non-empty text to train on")
    try:
        data = _train_bytes(corpus, vocab_size, model_type, seed)
    except RuntimeError as exc:
        m = re.search(r"value <= (\d+)", str(exc))
        if not m:
            raise ConfigError(f"caption tokenizer: sentencepiece failed ({str(exc).splitlines()[0]})") from None
        smaller = int(m.group(1))
        warnings.warn(f"caption tokenizer: {len(corpus)} texts cannot fill a vocabulary of {vocab_size}; "
                      f"training with vocab_size={smaller}", stacklevel=2)
        data = _train_bytes(corpus, smaller, model_type, seed)
    path = Path(f"{out_prefix}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


class CaptionTokenizer:
    """A trained SentencePiece model: ``encode(texts) -> (ids [B, T], mask [B, T])``, ``decode(ids)``.

    ``T`` is the longest encoded text of the batch (at least 1), cut at ``max_len`` tokens;
    padding is :data:`PAD_ID` with ``mask`` False. An empty text is a row of padding.
    """

    def __init__(self, model_file: str | os.PathLike | bytes, max_len: int = 64, lowercase: bool = True):
        import sentencepiece as spm

        if max_len < 1:
            raise ConfigError(f"caption tokenizer: max_len must be >= 1, got {max_len}")
        if isinstance(model_file, bytes):
            self.model_bytes = model_file
        else:
            path = Path(model_file)
            if not path.is_file():
                raise ConfigError(f"{path}: no such sentencepiece model file")
            self.model_bytes = path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except (RuntimeError, OSError) as exc:
            raise ConfigError(f"caption tokenizer: unreadable sentencepiece model ({exc})") from None
        if self.sp.pad_id() != PAD_ID:
            raise ConfigError(f"caption tokenizer: the model's pad id is {self.sp.pad_id()}, expected {PAD_ID}")
        self.max_len, self.lowercase = int(max_len), bool(lowercase)

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.lowercase)

    def encode_one(self, text: str) -> list[int]:
        norm = self.normalize(text)
        return self.sp.encode(norm)[: self.max_len] if norm else []

    def encode(self, texts: Sequence[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode_one(t) for t in texts]
        T = max([1, *(len(r) for r in rows)])
        ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]], mask: torch.Tensor | None = None) -> list[str]:
        """Texts of ``ids [B, T]`` (padding, i.e. id 0 or ``mask`` False, is skipped)."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        if rows and not isinstance(rows[0], list):
            rows = [rows]
        masks = mask.tolist() if mask is not None else [[True] * len(r) for r in rows]
        return [self.sp.decode([int(t) for t, m in zip(r, mk) if m and t != PAD_ID]) for r, mk in zip(rows, masks)]

    # -- files ------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"type": "sentencepiece", "model_file": MODEL_NAME, "vocab_size": self.vocab_size,
                "max_len": self.max_len, "lowercase": self.lowercase, "pad_id": PAD_ID, "unk_id": UNK_ID}

    def save(self, folder: str | os.PathLike) -> Path:
        """``folder/tokenizer.model`` (the SentencePiece model) + ``folder/tokenizer.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in ((MODEL_NAME, self.model_bytes), (CONFIG_NAME, (json.dumps(self.config(), indent=2) + "\n").encode())):
            tmp = folder / f".{name}.tmp{os.getpid()}"
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CaptionTokenizer:
        folder = Path(folder)
        cfg = read_json(folder / CONFIG_NAME, "caption tokenizer")
        return cls(folder / cfg.get("model_file", MODEL_NAME), max_len=int(cfg.get("max_len", 64)),
                   lowercase=bool(cfg.get("lowercase", True)))

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})"
