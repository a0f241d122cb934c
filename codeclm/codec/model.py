"""The codec: SEANet encoder -> residual vector quantizer -> SEANet decoder.

>>> codec = Codec.from_pretrained()                 # the shipped default (checkpoints/codec)
>>> codes = codec.encode(wav, bandwidth=6.0)         # wav [B, C, T] -> LongTensor [B, n_q, F]
>>> audio = codec.decode(codes)                      # -> [B, C, F * hop]
>>> with codec.streaming(batch_size=1):              # chunk in, chunk out, same bits as offline
...     for chunk in chunks:
...         out = codec.decode(codec.encode(chunk))
...     tail = codec.decode(codec.flush())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrizations, parametrize

from codeclm.codec.base import CompressionModel, from_hf
from codeclm.codec.config import MODEL_TYPE, CodecConfig
from codeclm.codec.layers import StreamingConv1d, StreamingConvTranspose1d
from codeclm.codec.quantizer import QuantizerOutput, ResidualVectorQuantizer
from codeclm.codec.seanet import SEANetDecoder, SEANetEncoder
from codeclm.errors import AudioError, CodesError, ConfigError
from codeclm.pretrained import fused_state_dict
from codeclm.streaming import StreamingError

DEFAULT_CODEC = "codec"
_OFFLINE_BLOCK_FRAMES = 48  # frames per block in offline frame-synchronous passes (~0.6 s at 24 kHz): activations
# of a few MB stay in cache and the allocator reuses their memory (1500-frame blocks: tens of MB of fresh
# temporaries per layer); on 2 s, one thread, a busy machine, 48 measured ~1.1-1.2x faster than 1500 (noisy)


@dataclass
class CodecOutput:
    """Result of a training pass: reconstruction, codes, commitment loss, codebooks used."""

    audio: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    n_q: int
    latent: torch.Tensor
    aux_losses: dict = field(default_factory=dict)  # the model's own extra losses (name -> scalar), unweighted


class Codec(CompressionModel):
    """EnCodec-style neural audio codec with exact streaming and several bandwidths."""

    model_type = MODEL_TYPE
    config_class = CodecConfig
    shipped_default = DEFAULT_CODEC
    dtype_tensor = "quantizer.layers.0.embed"

    def __init__(self, config: CodecConfig | None = None, **overrides):
        super().__init__()
        config = config or CodecConfig(**overrides)
        self.config = config
        self.encoder = SEANetEncoder(config)
        self.decoder = SEANetDecoder(config)
        self.quantizer = ResidualVectorQuantizer(
            config.dimension, config.n_q, config.bins, decay=config.ema_decay, kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters, dead_code_threshold=config.dead_code_threshold)

    # -- properties (sample_rate, channels, hop_length, num_codebooks, cardinality: the config's) --
    @property
    def target_bandwidths(self) -> list[float]:
        return list(self.config.target_bandwidths)

    @property
    def latency(self) -> float:
        """Algorithmic latency in seconds: one frame (a frame's codes need its samples)."""
        return self.hop_length / self.sample_rate

    @property
    def streamable(self) -> bool:
        return self.config.streamable

    @property
    def _reflect_stream(self) -> bool:
        """A causal reflect-padded model (EnCodec's own 24 kHz weights): streams exactly too, with a
        start-up delay (the left reflect pads wait for their first samples) and ``flush()``
        applying the right pads of the last frame; offline runs the same path."""
        cfg = self.config
        return (cfg.causal and cfg.pad_mode == "reflect" and cfg.norm != "time_group_norm"
                and cfg.trim_right_ratio == 1.0 and not cfg.normalize and cfg.chunk_length is None)

    @property
    def can_stream(self) -> bool:
        """``streaming()`` works and gives exactly the offline bits (``streamable`` or reflect-padded causal)."""
        return self.streamable or self._reflect_stream

    @property
    def start_delay_frames(self) -> tuple[int, int]:
        """(encoder, decoder) frames a stream holds back at its start (reflect padding; 0 otherwise)."""
        def frames(layers, rate: int) -> int:
            delay, length = 0, rate  # samples per frame at each depth
            for m in layers.modules():
                if isinstance(m, StreamingConv1d):
                    delay = max(delay, -(-m.start_delay // length))
                    length //= m.stride
                elif isinstance(m, StreamingConvTranspose1d):
                    length *= m.stride
            return delay
        return frames(self.encoder, self.hop_length), frames(self.decoder, 1)

    def num_codebooks_for(self, bandwidth: float | None) -> int:
        """Codebooks used at ``bandwidth`` kbps (None: all). EnCodec's mapping."""
        if bandwidth is None:
            return self.num_codebooks
        if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
            raise CodesError(f"bandwidth must be a positive number of kbps, got {bandwidth!r}")
        per_q = math.ceil(self.frame_rate) * self.config.bits_per_codebook
        n_q = int(max(1, math.floor(bandwidth * 1000 / per_q)))
        if n_q > self.num_codebooks:
            raise CodesError(f"bandwidth {bandwidth} kbps needs {n_q} codebooks but the model has "
                             f"{self.num_codebooks} (max {max(self.config.target_bandwidths)} kbps)")
        return n_q

    def bandwidth_of(self, n_q: int) -> float:
        """Bitrate in kbps of ``n_q`` raw (not entropy-coded) codebooks."""
        return n_q * self.frame_rate * self.config.bits_per_codebook / 1000

    # -- encode / decode -----------------------------------------------------------------------
    def encode(self, wav: torch.Tensor, bandwidth: float | None = None, return_scales: bool = False):
        """Audio ``[B, C, T]`` -> codes ``[B, n_q, ceil(T / hop)]`` (int64).

        Inside ``streaming()`` returns the codes of the frames completed so far. Models that
        normalise loudness per chunk (EnCodec 48 kHz) need ``return_scales=True`` and give
        ``(codes, scales [B, chunks])``.
        """
        wav = self.check_wav(wav, self._dtype)
        n_q = self.num_codebooks_for(bandwidth)
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            if self.is_streaming:
                codes = self._encode_stream(wav, n_q)
            elif self.streamable:
                pad = (-wav.shape[-1]) % self.hop_length
                codes = self._frame_synchronous(F.pad(wav, (0, pad)), self._encode_stream, n_q,
                                                self.hop_length, wav.shape[0])
            elif self._reflect_stream:  # the stream itself: chunked == offline, bit for bit
                codes = self._frame_synchronous(wav, self._encode_stream, n_q, self.hop_length, wav.shape[0],
                                                end=lambda: self.flush(n_q=n_q))
            else:
                codes, scales = self._encode_offline(wav, n_q)
                return (codes, scales) if return_scales else codes
        return (codes, None) if return_scales else codes

    def decode(self, codes: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, K, F]`` -> audio ``[B, C, F * hop]`` (K <= n_q: fewer codebooks, lower quality)."""
        codes = self.check_codes(codes)
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            if self.is_streaming:
                return self._decode_stream(codes)
            if codes.shape[-1] == 0:  # no frames: no audio (as FrameCodec, DacCodec)
                return torch.zeros(codes.shape[0], self.channels, 0, dtype=self._dtype, device=codes.device)
            if self.streamable:
                return self._frame_synchronous(codes, self._decode_stream, None, 1, codes.shape[0])
            if self._reflect_stream:
                return self._frame_synchronous(codes, self._decode_stream, None, 1, codes.shape[0],
                                               end=self.flush_decoder)
            return self._decode_offline(codes, scales)

    def flush(self, bandwidth: float | None = None, *, n_q: int | None = None) -> torch.Tensor:
        """End of stream: codes of the last partial frame, padded as offline ``encode`` does.

        Constant-padded models zero-pad it to a whole frame. Reflect-padded models (imported
        EnCodec) apply each layer's right reflect pad, emit every frame still held back, and make
        the next ``decode`` call the decoder's last (it then emits all remaining audio)."""
        if not self.is_streaming:
            raise StreamingError("flush() is only meaningful inside a streaming() block")
        n_q = n_q or self.num_codebooks_for(bandwidth)
        state = self._streaming_state
        buf = state["buffer"]
        if self._reflect_stream:
            if state["encoder_done"]:
                raise StreamingError("flush() was already called for this stream (reset_streaming() starts a new one)")
            state["encoder_done"] = state["decoder_final"] = True
            rows = buf if buf is not None else torch.zeros(self._streaming_batch_size, self.channels, 0,
                                                           dtype=self._dtype)
            _set_final(self.encoder)
            state["buffer"] = None
            with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
                return self.quantizer.encode(self.encoder(rows), n_q)
        if buf is None or buf.shape[-1] == 0:
            return torch.zeros(self._streaming_batch_size, n_q, 0, dtype=torch.long)
        pad = buf.new_zeros(buf.shape[0], buf.shape[1], self.hop_length - buf.shape[-1])
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            return self._encode_stream(pad, n_q)

    def flush_decoder(self, _unused=None) -> torch.Tensor:
        """End of a decoding stream (reflect-padded models): the audio still held back ``[B, C, n]``.

        Needed only for streams that decode codes without ``flush()`` (after ``flush()`` the next
        ``decode`` already emits everything); constant-padded models hold nothing back."""
        if not self.is_streaming:
            raise StreamingError("flush_decoder() is only meaningful inside a streaming() block")
        batch = self._streaming_batch_size
        state = self._streaming_state
        if not self._reflect_stream or state["decoder_done"]:
            return torch.zeros(batch, self.channels, 0, dtype=self._dtype)
        state["decoder_final"] = True
        with torch.inference_mode(not torch.is_grad_enabled() or not self.training):
            return self._decode_stream(torch.zeros(batch, 1, 0, dtype=torch.long))

    # -- streaming path (time-major rows, row-invariant kernels: see codeclm.codec.layers) --------
    def _init_streaming_state(self, batch_size: int) -> dict:
        if not self.can_stream:
            raise StreamingError(
                f"this codec cannot stream exactly (causal={self.config.causal}, pad_mode="
                f"{self.config.pad_mode!r}, norm={self.config.norm!r}, normalize={self.config.normalize}); "
                "streaming needs a causal model without time group norm or per-chunk normalisation")
        return {"buffer": None, "encoder_done": False, "decoder_final": False, "decoder_done": False}

    def _encode_stream(self, wav: torch.Tensor, n_q: int) -> torch.Tensor:
        frames = self._whole_frames(wav)
        if frames.shape[-1] == 0:
            return torch.zeros(wav.shape[0], n_q, 0, dtype=torch.long, device=wav.device)
        latent = self.encoder(frames)  # [B, D, N]
        if latent.shape[-1] == 0:  # held back (reflect padding start-up)
            return torch.zeros(wav.shape[0], n_q, 0, dtype=torch.long, device=wav.device)
        return self.quantizer.encode(latent, n_q)

    def _decode_stream(self, codes: torch.Tensor, _unused=None) -> torch.Tensor:
        self._check_stream_batch(codes.shape[0])
        state = self._streaming_state
        if state["decoder_done"]:
            raise StreamingError("decode() after the stream's last decode (after flush()); reset_streaming() "
                                 "starts a new one")
        final = state["decoder_final"]
        if codes.shape[-1] == 0 and not final:
            return torch.zeros(codes.shape[0], self.channels, 0, device=codes.device, dtype=self._dtype)
        if final:
            _set_final(self.decoder)
            state["decoder_done"] = True
            latent = (self.quantizer.decode(codes) if codes.shape[-1] else
                      torch.zeros(codes.shape[0], self.config.dimension, 0, dtype=self._dtype, device=codes.device))
        else:
            latent = self.quantizer.decode(codes)  # [B, D, N]
        return self.decoder(latent)

    def _frame_synchronous(self, x: torch.Tensor, step, n_q, samples_per_frame: int, batch: int,
                           end=None) -> torch.Tensor:
        """Offline pass of a streamable model = one stream over the whole input, in blocks."""
        block = _OFFLINE_BLOCK_FRAMES * samples_per_frame
        with self.streaming(batch):
            outs = [step(x[..., i: i + block], n_q) for i in range(0, x.shape[-1], block)]
            if end is not None:
                outs.append(end())
        return torch.cat(outs, -1)

    # -- offline path (non-causal / reflect-padded / chunked models, e.g. imported EnCodec) -----
    def _encode_offline(self, wav: torch.Tensor, n_q: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        length = wav.shape[-1]
        chunk = cfg.chunk_length or length
        stride = cfg.chunk_stride or length
        codes, scales = [], []
        for offset in range(0, length, stride):
            frame = wav[..., offset: offset + chunk]
            scale = None
            if cfg.normalize:
                mono = frame.mean(dim=1, keepdim=True)
                scale = mono.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8
                frame = frame / scale
                scales.append(scale.view(-1))
            codes.append(self.quantizer.encode(self.encoder(frame), n_q))
        return torch.cat(codes, -1), (torch.stack(scales, 1) if scales else None)

    def _decode_offline(self, codes: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        if cfg.normalize and scales is None:
            raise CodesError("this codec normalises loudness per chunk: pass the scales from encode(..., "
                             "return_scales=True)")
        if cfg.chunk_length is None:
            out = self.decoder(self.quantizer.decode(codes))
            return out * scales.view(-1, 1, 1) if scales is not None else out
        per_chunk = math.ceil(cfg.chunk_length / self.hop_length)
        pieces = []
        for i, start in enumerate(range(0, codes.shape[-1], per_chunk)):
            out = self.decoder(self.quantizer.decode(codes[..., start: start + per_chunk]))
            pieces.append(out * scales[:, i].view(-1, 1, 1) if scales is not None else out)
        return linear_overlap_add(pieces, cfg.chunk_stride)

    # -- training ------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, n_q: int | None = None) -> CodecOutput:
        """Training pass: encode, quantize (EMA updates in train mode), decode, same length as input."""
        length = wav.shape[-1]
        x = F.pad(wav, (0, (-length) % self.hop_length))
        latent = self.encoder(x)
        q: QuantizerOutput = self.quantizer(latent, n_q)
        audio = self.decoder(q.quantized)[..., :length]
        return CodecOutput(audio, q.codes, q.commitment_loss, q.n_q, latent)

    def sample_n_q(self, generator: torch.Generator | None = None) -> int:
        """Quantizer dropout: a random bandwidth from the config's targets, as codebooks."""
        choices = sorted({self.num_codebooks_for(b) for b in self.config.target_bandwidths})
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]

    def apply_weight_norm(self) -> "Codec":
        """Reparametrise conv weights with weight norm (training); saving folds it back."""
        if self.config.norm == "weight_norm":
            for m in self.modules():
                if isinstance(m, StreamingConv1d) and not parametrize.is_parametrized(m.conv):
                    parametrizations.weight_norm(m.conv)
                elif isinstance(m, StreamingConvTranspose1d) and not parametrize.is_parametrized(m.convtr):
                    parametrizations.weight_norm(m.convtr)
        return self

    def remove_weight_norm(self) -> "Codec":
        for m in self.modules():
            for conv in (getattr(m, "conv", None), getattr(m, "convtr", None)):
                if isinstance(conv, torch.nn.Module) and parametrize.is_parametrized(conv):
                    parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        return self

    # -- folders -------------------------------------------------------------------------------
    def state_dict_fused(self) -> dict[str, torch.Tensor]:
        return fused_state_dict(self)

    # identity(), save_pretrained(inference_only=...), from_pretrained(folder=None): CompressionModel's

    @classmethod
    def from_hf(cls, model_or_folder) -> CompressionModel:
        """Import a ``transformers`` codec (object or saved folder): an EncodecModel gives a Codec,
        a DacModel a :class:`~codeclm.codec.dac.DacCodec` (dispatch on ``config.model_type``)."""
        return from_hf(model_or_folder)


def _set_final(module: torch.nn.Module) -> None:
    """Mark every conv of ``module`` as receiving the end of its signal (reflect-padded streams)."""
    for m in module.modules():
        if isinstance(m, StreamingConv1d) and m._streaming_state is not None:
            m._streaming_state.final = True


def linear_overlap_add(frames: list[torch.Tensor], stride: int) -> torch.Tensor:
    """Overlap-add chunks with triangular weights (EnCodec's chunked decoding)."""
    if not frames:
        raise CodesError("nothing to decode")
    frame_len = frames[0].shape[-1]
    total = stride * (len(frames) - 1) + frames[-1].shape[-1]
    t = torch.linspace(0, 1, frame_len + 2, dtype=frames[0].dtype, device=frames[0].device)[1:-1]
    weight = 0.5 - (t - 0.5).abs()
    out = frames[0].new_zeros(*frames[0].shape[:-1], total)
    weight_sum = frames[0].new_zeros(total)
    for i, frame in enumerate(frames):
        n = frame.shape[-1]
        out[..., i * stride: i * stride + n] += weight[:n] * frame
        weight_sum[i * stride: i * stride + n] += weight[:n]
    if weight_sum.min() <= 0:
        raise ConfigError("chunk stride leaves gaps between chunks")
    return out / weight_sum
