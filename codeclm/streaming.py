"""One streaming protocol for every stateful module in codeclm (codec layers, LM attention).

A :class:`StreamingModule` keeps its state in ``self._streaming_state`` while a
``with model.streaming(batch_size):`` block is open: a causal convolution keeps its last input
samples, a transposed convolution its overlap-add tail, an LSTM its hidden state, an attention
layer its KV cache. Outside the block the state is ``None`` and modules run offline.

Each subclass overrides :meth:`_init_streaming_state` to return a fresh state object (any
object: a dataclass, a dict) for a batch size. The context manager creates the state of every
streaming submodule, and drops it on exit, even on error, so a model is never left half-streaming.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

from codeclm.errors import CodecLMError

__all__ = ["StreamingModule", "StreamingError"]


class StreamingError(CodecLMError, RuntimeError):
    """A streaming call made out of protocol (nested streaming, wrong batch size...)."""


class StreamingModule(nn.Module):
    """Base class of modules that can run chunk by chunk with internal state."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming_state: Any = None
        self._streaming_batch_size: int | None = None

    # -- to override -------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> Any:
        """Fresh state for ``batch_size`` items. Tensors may be created lazily on first input."""
        return {}

    # -- protocol ----------------------------------------------------------------------------
    @property
    def is_streaming(self) -> bool:
        return self._streaming_state is not None

    def _streaming_children(self) -> list["StreamingModule"]:
        return [m for m in self.modules() if isinstance(m, StreamingModule)]

    @contextmanager
    def streaming(self, batch_size: int = 1) -> Iterator["StreamingModule"]:
        """Run this module and all its streaming submodules chunk by chunk inside the block."""
        if batch_size < 1:
            raise StreamingError(f"batch_size must be >= 1, got {batch_size}")
        if self.is_streaming:
            raise StreamingError("already streaming: streaming() blocks cannot be nested")
        modules = self._streaming_children()
        try:
            for m in modules:
                m._streaming_state = m._init_streaming_state(batch_size)
                m._streaming_batch_size = batch_size
            yield self
        finally:
            for m in modules:
                m._streaming_state = None
                m._streaming_batch_size = None

    def reset_streaming(self) -> None:
        """Start over inside an open streaming block (new stream, same batch size)."""
        if not self.is_streaming:
            raise StreamingError("reset_streaming() called outside a streaming() block")
        for m in self._streaming_children():
            m._streaming_state = m._init_streaming_state(m._streaming_batch_size)

    def _check_stream_batch(self, batch: int) -> None:
        if self._streaming_batch_size is not None and batch != self._streaming_batch_size:
            raise StreamingError(
                f"streaming was opened for batch_size={self._streaming_batch_size}, got a chunk of batch {batch}"
            )
