"""Text tokenizers for conditioning (``codeclm.tokenizers``; not the Hugging Face ``tokenizers`` package)."""

from codeclm.tokenizers.text import (
    PAD_ID,
    UNK_ID,
    CaptionTokenizer,
    normalize_text,
    train_caption_tokenizer,
)

__all__ = ["PAD_ID", "UNK_ID", "CaptionTokenizer", "normalize_text", "train_caption_tokenizer"]
