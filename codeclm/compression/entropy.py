"""Lossless entropy coding of codec codes: an adaptive context model driving a range coder.

The codes of one file (``[n_q, frames]``, values in ``[0, bins)``) are coded frame by frame with
``constriction``'s range coder. The probability of each code comes from :class:`AdaptiveCodeModel`,
which learns from the codes already coded, identically in the encoder and the decoder:

* a **unigram** count table per codebook, ``U[k, x]`` (starts at 1 for every symbol);
* a **bigram** count table per codebook, ``T[k, prev, x]``: how often code ``x`` followed code
  ``prev`` in the previous frame of the same codebook (first :data:`BIGRAM_CODEBOOKS` codebooks
  only, and only for ``bins <= MAX_BIGRAM_BINS``, to bound memory).

Per chunk and codebook the encoder picks one of four *modes* and sends it (2 bits) at the start of
the chunk: ``uniform`` (raw, ``log2(bins)`` bits), ``unigram`` (``U``), or a bigram/unigram mix
``p(x) ∝ T[prev, x] * sum(U) + beta * U[x]`` with ``beta`` = 64 (``mix-weak``) or 4 (``mix-strong``).
The choice is made by measuring each mode's cost on the chunk, so the coder adapts to the codec
and to the signal without any float arithmetic having to agree between machines: probabilities
are built from integer counts only, and ``constriction`` quantises them deterministically.

The state carries over from chunk to chunk (a chunk is an integrity unit, not a random-access
point). Counts are halved at chunk ends when a codebook's unigram total passes
:data:`UNIGRAM_LIMIT` or a bigram row passes :data:`ROW_LIMIT`, which also favours recent
statistics on long files.
"""

from __future__ import annotations

import constriction
import numpy as np

from codeclm.errors import BitstreamError

__all__ = ["ADAPTIVE_MODEL_ID", "MAX_CHUNK_FRAMES", "MODES", "AdaptiveCodeModel"]

ADAPTIVE_MODEL_ID = 1  # the header's ``entropy_model`` field for this model
MODES = ("uniform", "unigram", "mix-weak", "mix-strong")
_BETAS = {2: 64, 3: 4}  # mode -> weight of the unigram in the bigram mix (smaller: trust bigram more)
BIGRAM_CODEBOOKS = 8
MAX_BIGRAM_BINS = 1024
UNIGRAM_LIMIT = 1 << 16
ROW_LIMIT = 1 << 12
MAX_CHUNK_FRAMES = 1 << 14  # ROW_LIMIT + MAX_CHUNK_FRAMES must fit the uint16 bigram counts

_FAMILY = constriction.stream.model.Categorical(perfect=False)
_MODE_MODEL = constriction.stream.model.Categorical(np.ones(len(MODES)), perfect=False)


class AdaptiveCodeModel:
    """Adaptive unigram + previous-frame bigram model of ``n_q`` codebooks of ``bins`` codes.

    Use one instance per file on each side: :meth:`encode_chunk` and :meth:`decode_chunk` update
    the state, so chunks must be decoded in the order they were encoded.
    Memory: ``n_q * bins * 16`` bytes plus ``min(n_q, 8) * bins**2 * 2`` bytes for the bigram
    table (16 MiB for 1024 bins; pages never touched are never allocated).
    """

    def __init__(self, n_q: int, bins: int):
        if not (1 <= n_q and 2 <= bins):
            raise ValueError(f"need n_q >= 1 and bins >= 2, got {n_q}, {bins}")
        self.n_q, self.bins = n_q, bins
        self.n_ctx = min(n_q, BIGRAM_CODEBOOKS) if bins <= MAX_BIGRAM_BINS else 0
        self.unigram = np.ones((n_q, bins), dtype=np.int64)
        self.total = np.full(n_q, bins, dtype=np.int64)
        self.bigram = np.zeros((self.n_ctx, bins, bins), dtype=np.uint16)
        self.rows = np.zeros((self.n_ctx, bins), dtype=np.int64)
        self.prev = np.zeros(n_q, dtype=np.int64)
        self._ctx = np.arange(self.n_ctx)
        self._all = np.arange(n_q)

    # -- public --------------------------------------------------------------------------------
    def encode_chunk(self, codes: np.ndarray) -> bytes:
        """Code ``codes`` (``[n_q, frames]`` ints in range) and return the payload bytes."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.n_q or not 1 <= codes.shape[1] <= MAX_CHUNK_FRAMES:
            raise ValueError(f"expected codes [{self.n_q}, 1..{MAX_CHUNK_FRAMES}], got {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.bins:
            raise ValueError(f"codes out of range [0, {self.bins})")
        codes = codes.astype(np.int64)
        modes = self.choose_modes(codes)
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(modes.astype(np.int32), _MODE_MODEL)
        symbols = codes.T.astype(np.int32)
        for t in range(codes.shape[1]):
            encoder.encode(symbols[t], _FAMILY, self._probabilities(modes))
            self._update(codes[:, t])
        self._age()
        return encoder.get_compressed().astype("<u4").tobytes()

    def decode_chunk(self, payload: bytes, frames: int) -> np.ndarray:
        """Inverse of :meth:`encode_chunk`: ``frames`` frames of codes ``[n_q, frames]`` (int64).

        The payload must be exactly what :meth:`encode_chunk` writes for the codes it decodes to:
        the decoded symbols are re-encoded in step, so a decoder that would read past the end of
        its words (a decompression bomb: a few bytes claiming thousands of frames) is stopped as
        soon as the re-encoding outgrows the payload, and words left unread after the last frame
        are refused too. Raises :class:`BitstreamError` for any payload that is not such a stream.
        """
        if len(payload) % 4 or not payload:
            raise BitstreamError(f"payload of {len(payload)} bytes is not a whole number of 32-bit words")
        if not 1 <= frames <= MAX_CHUNK_FRAMES:
            raise BitstreamError(f"chunk of {frames} frames (allowed 1..{MAX_CHUNK_FRAMES})")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        out = np.empty((self.n_q, frames), dtype=np.int64)
        try:
            decoder = constriction.stream.queue.RangeDecoder(words)
            check = constriction.stream.queue.RangeEncoder()  # the canonical coding of what is decoded
            modes = np.asarray(decoder.decode(_MODE_MODEL, self.n_q), dtype=np.int64)
            self._check_modes(modes)
            check.encode(modes.astype(np.int32), _MODE_MODEL)
            for t in range(frames):
                probs = self._probabilities(modes)
                symbols = np.asarray(decoder.decode(_FAMILY, probs), dtype=np.int64)
                check.encode(symbols.astype(np.int32), _FAMILY, probs)
                if check.num_words() > len(words):
                    raise BitstreamError(f"{frames} frames claimed from {len(words)} words, but frame {t} already "
                                         "needs more: the range decoder would read past its data (the file is "
                                         "corrupt or hostile)")
                out[:, t] = symbols
                self._update(symbols)
            canonical = check.get_compressed()
        except BitstreamError:
            raise
        except Exception as exc:  # constriction: AssertionError/ValueError on invalid data
            raise BitstreamError(f"entropy-coded payload is corrupt ({exc})") from None
        if len(canonical) != len(words) or not np.array_equal(canonical, words):
            more = len(canonical) > len(words)
            raise BitstreamError(f"payload of {len(words)} words is not the coding of its {frames} frames "
                                 f"({len(canonical)} words): " + ("the range decoder read past its data" if more
                                                                 else "words are left unread or altered"))
        self._age()
        return out

    def choose_modes(self, codes: np.ndarray) -> np.ndarray:
        """Cheapest mode per codebook for the chunk ``codes`` (state is left unchanged)."""
        frames = codes.shape[1]
        cost = np.zeros((len(MODES), self.n_q))
        cost[0] = frames * np.log2(self.bins)
        if self.n_ctx < self.n_q:
            cost[2:, self.n_ctx:] = np.inf  # no bigram table for these codebooks
        prev0 = self.prev.copy()
        c, all_, ctx = self._ctx, self._all, self.n_ctx
        for t in range(frames):
            x = codes[:, t]
            u = self.unigram[all_, x].astype(np.float64)
            cost[1] -= np.log2(u / self.total)
            if ctx:
                pair = self.bigram[c, self.prev[:ctx], x[:ctx]].astype(np.float64) * self.total[:ctx]
                row = self.rows[c, self.prev[:ctx]] * self.total[:ctx]
                for mode, beta in _BETAS.items():
                    cost[mode, :ctx] -= np.log2((pair + beta * u[:ctx]) / (row + beta * self.total[:ctx]))
            self._update(x)
        self._revert(codes, prev0)
        return np.argmin(cost, axis=0)

    def clone(self) -> AdaptiveCodeModel:
        """An independent copy of the current state (for tests and what-if coding)."""
        other = AdaptiveCodeModel.__new__(AdaptiveCodeModel)
        other.__dict__ = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        return other

    # -- state ---------------------------------------------------------------------------------
    def _probabilities(self, modes: np.ndarray) -> np.ndarray:
        """Unnormalised integer-valued probabilities ``[n_q, bins]`` (float64, exact)."""
        probs = np.empty((self.n_q, self.bins), dtype=np.float64)
        probs[modes == 0] = 1.0
        probs[modes == 1] = self.unigram[modes == 1]
        for mode, beta in _BETAS.items():
            idx = np.flatnonzero(modes == mode)
            if idx.size:
                pair = self.bigram[idx, self.prev[idx]].astype(np.float64)
                probs[idx] = pair * self.total[idx, None] + beta * self.unigram[idx]
        return probs

    def _update(self, x: np.ndarray) -> None:
        self.unigram[self._all, x] += 1
        self.total += 1
        if self.n_ctx:
            c, p = self._ctx, self.prev[: self.n_ctx]
            self.bigram[c, p, x[: self.n_ctx]] += 1
            self.rows[c, p] += 1
        self.prev = x.astype(np.int64, copy=True)

    def _revert(self, codes: np.ndarray, prev0: np.ndarray) -> None:
        """Undo the :meth:`_update` calls of a chunk (no ageing happens inside a chunk)."""
        frames = codes.shape[1]
        np.subtract.at(self.unigram, (np.repeat(self._all, frames), codes.reshape(-1)), 1)
        self.total -= frames
        if self.n_ctx:
            ctx_codes = codes[: self.n_ctx]
            prevs = np.concatenate([prev0[: self.n_ctx, None], ctx_codes[:, :-1]], axis=1)
            k = np.repeat(self._ctx, frames)
            np.subtract.at(self.bigram, (k, prevs.reshape(-1), ctx_codes.reshape(-1)), 1)
            np.subtract.at(self.rows, (k, prevs.reshape(-1)), 1)
        self.prev = prev0

    def _age(self) -> None:
        """Halve counts that grew past their limits (only ever at chunk ends)."""
        for k in np.flatnonzero(self.total > UNIGRAM_LIMIT):
            self.unigram[k] = (self.unigram[k] + 1) // 2
            self.total[k] = self.unigram[k].sum()
        for k, p in zip(*np.nonzero(self.rows > ROW_LIMIT)):
            self.bigram[k, p] //= 2
            self.rows[k, p] = int(self.bigram[k, p].sum())

    def _check_modes(self, modes: np.ndarray) -> None:
        if modes.min() < 0 or modes.max() >= len(MODES) or (modes[self.n_ctx:] >= 2).any():
            raise BitstreamError(f"invalid entropy-coding modes {modes.tolist()}")
