"""A harmonic oscillator branch for the frame-rate codec, and the pitch tracker that teaches it.

A decoder that predicts each 20 ms frame's short-time spectrum (magnitude and phase, the
inverse-STFT head) and is trained with spectral-magnitude losses learns spectral envelopes but not
harmonics: the phase that carries a partial from one frame to the next is ill-posed for a
magnitude loss, so voiced speech comes out whispery (PESQ ~1 at every bitrate). A harmonic
oscillator makes the phase a running sum instead of a prediction (DDSP, NHV):

* per frame the decoder predicts a fundamental ``f0`` (log-uniform in ``[f0_min, f0_max]``) and
  the amplitudes of ``harmonics`` partials;
* between a frame and the next, ``f0`` and the amplitudes move linearly; the phase is the exact
  integral of that ``f0`` (a closed form per sample, so no cumulative sum over the signal) and
  is carried from hop to hop; partials above 0.45 of the sample rate are silent;
* ``f0`` is taught by :func:`yin` on the input (octaves, voiced frames only: the oscillator uses
  it detached, since a phase's gradient with respect to frequency is useless); the amplitudes by
  the codec's spectral losses through the audio. In training the oscillator may play YIN's pitch
  on voiced frames instead (teacher forcing, DDSP's setting), so the amplitudes learn from
  harmonics at the right places before the predicted pitch is good.

Frame ``t``'s parameters describe the signal at sample ``t * hop`` (the centre of its two-hop
analysis window), so hop ``t`` runs from frame ``t``'s parameters to frame ``t + 1``'s: the
same one-frame look-ahead as the inverse-STFT head, and the last hop holds the last frame's.

Exact streaming: :meth:`HarmonicHead.stream` (every inference path) evaluates each hop with
element-wise arithmetic on a fixed per-hop grid, sines through
:func:`~codeclm.codec.layers.pointwise_exact`, the partials added one after another and the hop
phases carried in float64 one hop at a time, so a hop's samples do not depend on how the frames
were grouped into calls. ``forward`` (training) computes the same function with batched kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from codeclm.codec.layers import fft_rows, pack_linear, pointwise_exact, stream_plan
from codeclm.streaming import StreamingModule

__all__ = ["HarmonicHead", "analyse_pitch", "harmonic_amplitudes", "pitch_feature_values", "pitch_features",
           "pitch_from_tokens", "pitch_token_features", "pitch_tokens", "yin"]

_AMP_OFFSET = -5.0  # log-amplitude of a partial at a zero output: exp(-5) ~ 0.007, a speech partial's order
_OUT_SCALE = 4.0  # the head's outputs x 4: Adam moves a weight by ~lr a step, so a new head on a trained
#                   decoder reaches its targets (log-amplitudes several nats away) 4x sooner
_MAX_LOG_AMP = 1.0  # a partial's amplitude is at most e
_NYQUIST_FRACTION = 0.45
_JUMP_RATIO = 2 ** 0.1  # a pitch change above 0.1 octave between frames is a jump, not a glide: cross-faded
_SHARE_BIAS = 1.1  # a shared-envelope head starts with ~3/4 of each voiced band harmonic (sigmoid(1.1) = 0.75)


@torch.no_grad()
def yin(frames: torch.Tensor, sample_rate: int, f0_min: float, f0_max: float, threshold: float = 0.15,
        silence_db: float = -50.0) -> tuple[torch.Tensor, torch.Tensor]:
    """YIN pitch (de Cheveigne and Kawahara 2002) of ``frames [..., L]`` -> ``(f0 [...], voiced [...])``.

    Difference function over lags up to ``sample_rate / f0_min`` with an integration window of
    ``L - max_lag`` samples (``L`` must exceed the largest lag), cumulative-mean normalised; the
    first local minimum under ``threshold`` in ``[sample_rate / f0_max, sample_rate / f0_min]``,
    refined by a parabola, gives the period. Frames with no such minimum, or quieter than
    ``silence_db`` (RMS, dB full scale), are unvoiced (their ``f0`` is 0).
    """
    f0, voiced, _ = _yin(frames, sample_rate, f0_min, f0_max, threshold, silence_db, False)
    return f0, voiced


@torch.no_grad()
def pitch_features(frames: torch.Tensor, sample_rate: int, f0_min: float, f0_max: float,
                   exact: bool = False) -> torch.Tensor:
    """``[voiced, voiced * log2(f0 / f0_min) / log2(f0_max / f0_min), periodicity]`` of each frame
    ``[..., L]`` -> ``[..., 3]`` (:func:`yin`; periodicity = 1 - the smallest normalised difference in
    the pitch range, in [0, 1]). ``exact``: every row's bits independent of the other rows (the
    frame codec's streaming front end)."""
    return pitch_feature_values(*analyse_pitch(frames, sample_rate, f0_min, f0_max, exact), f0_min, f0_max, exact)


@torch.no_grad()
def analyse_pitch(frames: torch.Tensor, sample_rate: int, f0_min: float, f0_max: float,
                  exact: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`yin`'s ``(f0, voiced)`` and each frame's periodicity, from one analysis."""
    return _yin(frames, sample_rate, f0_min, f0_max, 0.15, -50.0, exact)


def pitch_feature_values(f0: torch.Tensor, voiced: torch.Tensor, clarity: torch.Tensor, f0_min: float,
                         f0_max: float, exact: bool = False) -> torch.Tensor:
    """:func:`pitch_features` from an :func:`analyse_pitch` result."""
    pitch = torch.where(voiced, f0, torch.full_like(f0, f0_min)) / f0_min
    log_pitch = (pointwise_exact(torch.log2, pitch) if exact else torch.log2(pitch)) / math.log2(f0_max / f0_min)
    v = voiced.to(f0.dtype)
    return torch.stack([v, v * log_pitch, clarity], -1)


def _yin(frames, sample_rate, f0_min, f0_max, threshold, silence_db, exact):
    """:func:`yin`, and each frame's periodicity; ``exact``: row-invariant kernels (FFT rows,
    sequential cumulative sums, :func:`pointwise_exact`)."""
    lead, length = frames.shape[:-1], frames.shape[-1]
    x = frames.reshape(-1, length).float()
    lag_min, lag_max = max(2, int(sample_rate / f0_max)), int(math.ceil(sample_rate / f0_min))
    window = length - lag_max
    if window < lag_max // 2:
        raise ValueError(f"yin: frames of {length} samples are too short for f0_min {f0_min} Hz")
    n_fft = 1 << (length + window).bit_length()
    if exact:
        spectrum = fft_rows(torch.fft.rfft, x, n=n_fft) * fft_rows(torch.fft.rfft, x[:, :window], n=n_fft).conj()
        corr = fft_rows(torch.fft.irfft, spectrum, n=n_fft)
    else:
        corr = torch.fft.irfft(torch.fft.rfft(x, n_fft) * torch.fft.rfft(x[:, :window], n_fft).conj(), n_fft)
    corr = corr[:, : lag_max + 1]  # r(tau) = sum_{n < W} x[n] x[n + tau]
    energy = F.pad(torch.cumsum(x * x, -1), (1, 0))
    shifted = energy[:, window: window + lag_max + 1] - energy[:, : lag_max + 1]  # sum_{n < W} x[n + tau]^2
    diff = (shifted[:, :1] + shifted - 2 * corr).clamp(min=0)  # d(tau), d(0) = 0
    lags = torch.arange(lag_max + 1, device=x.device, dtype=x.dtype)
    cmnd = diff * lags / torch.cumsum(diff, -1).clamp(min=1e-12)
    cmnd[:, 0] = 1.0
    inner = cmnd[:, 1:-1]
    minimum = (inner <= cmnd[:, :-2]) & (inner < cmnd[:, 2:]) & (inner < threshold)
    minimum[:, : lag_min - 1] = False
    voiced = minimum.any(-1)
    tau = minimum.int().argmax(-1) + 1  # the first qualifying lag
    rows = torch.arange(x.shape[0], device=x.device)
    left, mid, right = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, (tau + 1).clamp(max=lag_max)]
    curvature = left - 2 * mid + right
    shift = torch.where(curvature > 1e-9, 0.5 * (left - right) / curvature.clamp(min=1e-9), torch.zeros_like(mid))
    period = tau.to(x.dtype) + shift.clamp(-0.5, 0.5)
    power = energy[:, -1] / length + 1e-12
    rms_db = 10 * (pointwise_exact(torch.log10, power) if exact else torch.log10(power))
    voiced &= rms_db > silence_db
    f0 = torch.where(voiced, sample_rate / period, torch.zeros_like(period))
    clarity = (1 - cmnd[:, lag_min: lag_max + 1].amin(-1)).clamp(0, 1)
    clarity = torch.where(rms_db > silence_db, clarity, torch.zeros_like(clarity))
    return f0.view(lead), voiced.view(lead), clarity.view(lead)


def _elementwise(fn, exact: bool):
    """``fn``, or its row-invariant form (:func:`~codeclm.codec.layers.pointwise_exact`) for ``exact``."""
    return (lambda t: pointwise_exact(fn, t)) if exact else fn


def _lerp(values: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """``values [..., P]`` read at fractional indices ``position [..., M]`` (clamped into the
    table), linear between neighbours; element-wise and gathers, so row-invariant."""
    position = position.clamp(0, values.shape[-1] - 1.001)
    low = position.floor().long()
    frac = (position - low).to(values.dtype)
    return torch.gather(values, -1, low) * (1 - frac) + torch.gather(values, -1, low + 1) * frac


# -- the pitch codebook: YIN's pitch sent as one code per frame -----------------------------------
PITCH_TOKEN_FEATURES = 8  # [voiced, voiced * u, voiced * sin(k pi u), voiced * cos(k pi u) for k = 1..3]


def _log_range(f0_min: float, f0_max: float) -> float:
    return math.log2(f0_max / f0_min)


@torch.no_grad()
def pitch_tokens(f0: torch.Tensor, voiced: torch.Tensor, f0_min: float, f0_max: float, bins: int,
                 exact: bool = False) -> torch.Tensor:
    """A frame's pitch as one code: 0 unvoiced, else ``1 + round((bins - 2) u)`` with ``u`` the
    position of ``log2 f0`` in ``[log2 f0_min, log2 f0_max]`` (1024 bins: steps of 4.2 cents over
    50-600 Hz, far below a listener's pitch resolution). ``exact``: row-invariant ``log2``."""
    ratio = f0.float().clamp(f0_min, f0_max) / f0_min
    u = _elementwise(torch.log2, exact)(ratio) / _log_range(f0_min, f0_max)
    token = 1 + torch.round(u.clamp(0, 1) * (bins - 2)).long()
    return torch.where(voiced, token, torch.zeros_like(token))


def _token_position(tokens: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    voiced = tokens > 0
    return voiced, (tokens - 1).clamp(min=0).float() / (bins - 2)


def pitch_from_tokens(tokens: torch.Tensor, f0_min: float, f0_max: float, bins: int,
                      exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pitch_tokens`' inverse: ``(f0, voiced)`` (an unvoiced frame's ``f0`` is ``f0_min``)."""
    voiced, u = _token_position(tokens, bins)
    scale = _log_range(f0_min, f0_max) * math.log(2)
    f0 = f0_min * _elementwise(torch.exp, exact)(u * scale)
    return f0, voiced


def pitch_token_features(tokens: torch.Tensor, bins: int, exact: bool = False) -> torch.Tensor:
    """What the decoder reads from the pitch code ``[...]`` -> ``[..., 8]``: voicing, the log-pitch
    position ``u`` and three Fourier pairs of it (so a linear layer can place a pitch finely)."""
    voiced, u = _token_position(tokens, bins)
    v = voiced.float()
    k = torch.arange(1, 4, dtype=u.dtype, device=u.device)
    angle = math.pi * u[..., None] * k
    sin, cos = _elementwise(torch.sin, exact)(angle), _elementwise(torch.cos, exact)(angle)
    return torch.cat([v[..., None], (v * u)[..., None], v[..., None] * sin, v[..., None] * cos], -1)


@torch.no_grad()
def harmonic_amplitudes(frames: torch.Tensor, f0: torch.Tensor, sample_rate: int, harmonics: int) -> torch.Tensor:
    """Amplitude of partial ``k = 1..harmonics`` of ``f0 [...]`` in ``frames [..., L]``: the periodic-
    Hann-windowed DFT magnitude at ``k f0``, ``2 |X| / sum(window)`` -> ``[..., K]`` (zero-padded 4x and
    linear between those bins: within ~1 % of a partial's amplitude, no half-bin scalloping)."""
    length = frames.shape[-1]
    k = torch.arange(length, dtype=torch.float64, device=frames.device)
    window = (0.5 - 0.5 * torch.cos(2 * math.pi * k / length)).to(frames.dtype)
    mag = torch.fft.rfft(frames * window, n=4 * length).abs() * (2.0 / float(window.sum()))  # [..., 2 L + 1]
    position = (f0[..., None] * torch.arange(1, harmonics + 1, device=frames.device) * (4 * length / sample_rate))
    return _lerp(mag, position)


class HarmonicHead(StreamingModule):
    """Decoder features ``[B, F, D]`` -> per-frame ``f0 [B, F]`` and partial amplitudes ``[B, F, K]``,
    and the oscillator that turns them into audio (see the module notes)."""

    def __init__(self, dim: int, hop: int, sample_rate: int, harmonics: int, f0_min: float, f0_max: float,
                 bands: int = 0):
        super().__init__()
        self.hop, self.sample_rate, self.harmonics = hop, sample_rate, harmonics
        self.f0_min, self.f0_max = float(f0_min), float(f0_max)
        # bands > 0 (the pitch codebook: the pitch is given): a shared-envelope head (see mix); else
        # the f0 logit, the voicing logit and one log-amplitude per partial
        self.bands = bands
        self.out = nn.Linear(dim, 2 * bands if bands else 2 + harmonics)
        s = torch.arange(hop, dtype=torch.float64)
        self.register_buffer("ramp", (s / hop).float(), persistent=False)  # alpha(s): frame t's weight 1 - alpha
        # phase(s) - phase(0) = 2 pi / sr * (f_t s + (f_{t+1} - f_t) s (s - 1) / (2 hop)): the sum of the
        # linearly moving frequency over the hop's first s samples (exact at every sample)
        self.register_buffer("phase_start", (2 * math.pi / sample_rate * s).float(), persistent=False)
        self.register_buffer("phase_slope", (2 * math.pi / sample_rate * s * (s - 1) / (2 * hop)).float(),
                             persistent=False)
        self.register_buffer("orders", torch.arange(1, harmonics + 1, dtype=torch.float32), persistent=False)
        # a jump's incoming partials at s: the next hop's start phase minus what they gain over hop - s samples
        self.register_buffer("phase_back", (2 * math.pi / sample_rate * (s - hop)).float(), persistent=False)
        self._hop_advance = (2 * math.pi / sample_rate * hop, 2 * math.pi / sample_rate * (hop - 1) / 2)

    def _init_streaming_state(self, batch_size: int) -> dict:
        return {"pending": None, "phase": None, "plan": None}

    # -- per-frame parameters ---------------------------------------------------------------------
    def _params(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Linear outputs ``[B, F, 2 + K]`` -> f0 ``[B, F]``, voicing logit, log-amplitudes of the
        partials ``[B, F, K]`` (before the voicing gate and the Nyquist limit)."""
        h = h.float() * _OUT_SCALE
        f0 = self.f0_min * (self.f0_max / self.f0_min) ** torch.sigmoid(h[..., 0])
        return {"f0": f0, "voicing_logit": h[..., 1],
                "log_amp": (h[..., 2:] + _AMP_OFFSET).clamp(max=_MAX_LOG_AMP)}

    # -- the shared envelope (harmonic-plus-noise): one spectrum, split between partials and noise ----
    def _read(self, values: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """``values [B, F, P]`` at ``P`` points evenly from 0 Hz to half the rate, read (linear between
        points) at ``freqs [B, F, M]`` Hz -> ``[B, F, M]``; element-wise, so row-invariant."""
        return _lerp(values, freqs * ((values.shape[-1] - 1) / (0.5 * self.sample_rate)))

    def mix(self, x: torch.Tensor, log_mag: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor,
            exact: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Harmonic-plus-noise from the inverse-STFT head's spectrum (a shared-envelope head).

        ``log_mag [B, F, n_bins]``: the head's log-magnitudes (bins from 0 Hz to half the rate);
        ``f0, voiced [B, F]``: the given pitch. Per frame this head predicts, in ``bands`` bands
        (linear between band centres), the harmonic share ``alpha`` of the spectrum and a log-gain
        correction. A partial of ``f0`` gets ``alpha`` times the amplitude of the head's spectrum
        around it (``2 M / N * sqrt(f0 / bin width)``: the power of a band one ``f0`` wide, times
        the correction); the head keeps ``1 - alpha`` of its magnitude on voiced frames, all of it
        on unvoiced ones. -> ``(amplitudes [B, F, K], head share [B, F, n_bins], log-amplitudes
        [B, F, K] of the partials, alpha included)``."""
        b, n = x.shape[:2]
        h = self._out_exact(x) if exact else self.out(x).float() * _OUT_SCALE
        exp, log, sigmoid = (_elementwise(f, exact) for f in (torch.exp, torch.log, torch.sigmoid))
        alpha_points = sigmoid(h[..., : self.bands] + _SHARE_BIAS)
        gain_points = h[..., self.bands:]
        n_bins = log_mag.shape[-1]
        bin_hz = 0.5 * self.sample_rate / (n_bins - 1)
        freqs = f0[..., None] * self.orders  # [B, F, K]
        alpha = self._read(alpha_points, freqs)
        head_log_mag = self._read(log_mag, freqs)  # its bins are such points too
        band = math.log(2.0 / (2 * (n_bins - 1))) + 0.5 * log(f0 / bin_hz)  # one f0-wide band's amplitude
        log_amp = (head_log_mag + band[..., None] + self._read(gain_points, freqs)).clamp(max=_MAX_LOG_AMP)
        on = voiced[..., None].to(alpha.dtype)
        amps = alpha * exp(log_amp) * on * self.audible(f0)
        bins = torch.arange(n_bins, device=x.device, dtype=torch.float32) * bin_hz
        share = 1 - self._read(alpha_points, bins.expand(b, n, n_bins)) * on
        return amps, share, log_amp + log(alpha.clamp(min=1e-6))

    def _out_exact(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer on ``x [B, n, D]`` with row-invariant packed weights (read once a stream), x 4."""
        plan = stream_plan(self, lambda: pack_linear(self.out.weight, self.out.bias))
        b, n, c = x.shape
        return plan(x.reshape(b * n, c)).view(b, n, -1).float() * _OUT_SCALE

    def _params_exact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._out_exact(x)
        f0 = self.f0_min * pointwise_exact(torch.exp, math.log(self.f0_max / self.f0_min)
                                           * pointwise_exact(torch.sigmoid, h[..., 0]))
        gate = pointwise_exact(torch.sigmoid, h[..., 1])
        amps = pointwise_exact(torch.exp, (h[..., 2:] + _AMP_OFFSET).clamp(max=_MAX_LOG_AMP))
        return f0, amps * gate[..., None] * self.audible(f0)

    def audible(self, f0: torch.Tensor) -> torch.Tensor:
        """Which partials of ``f0 [...]`` lie below the Nyquist limit (0.45 of the rate) -> ``[..., K]``."""
        return (self.orders * f0[..., None]) < _NYQUIST_FRACTION * self.sample_rate

    # -- training ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, teacher: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: features ``[B, F, D]`` -> ``(audio [B, 1, F * hop], predictions)`` (see
        :meth:`_params`). ``teacher = (f0, voiced)`` (``[B, F]`` each): the partials play ``f0`` on
        the voiced frames and are silent elsewhere, instead of the predicted pitch and voicing. (A
        shared-envelope head is driven by the codec through :meth:`mix` and :meth:`oscillate`.)"""
        pred = self._params(self.out(x))
        amps = torch.exp(pred["log_amp"])
        if teacher is None:
            f0 = pred["f0"].detach()
            amps = amps * torch.sigmoid(pred["voicing_logit"])[..., None]
        else:
            f0 = torch.where(teacher[1], teacher[0].to(amps), pred["f0"].detach())
            amps = amps * teacher[1][..., None]
        return self.oscillate(f0, amps * self.audible(f0)), pred

    @staticmethod
    def _jumps(f0: torch.Tensor, f0_next: torch.Tensor) -> torch.Tensor:
        """Hops whose pitch moves more than 0.1 octave (octave errors, onsets after an unvoiced
        frame): a partial swept linearly across such a change would carry its amplitude to
        frequencies where the envelope has none (e.g. above a band-limited input's top)."""
        return (f0_next > f0 * _JUMP_RATIO) | (f0 > f0_next * _JUMP_RATIO)

    def _glide_end(self, f0: torch.Tensor, f0_next: torch.Tensor, jump: torch.Tensor) -> torch.Tensor:
        return torch.where(jump, f0, f0_next)  # a jump's outgoing partials hold their pitch

    def oscillate(self, f0: torch.Tensor, amps: torch.Tensor) -> torch.Tensor:
        """Training: per-frame ``f0 [B, F]`` and amplitudes ``[B, F, K]`` -> audio ``[B, 1, F * hop]``.

        Hop ``t`` glides from frame ``t``'s pitch and amplitudes to frame ``t + 1``'s; across a
        pitch jump (:meth:`_jumps`) it cross-fades instead: frame ``t``'s partials at its pitch fade
        out while frame ``t + 1``'s fade in at theirs, phased to continue into hop ``t + 1``."""
        f0_next = torch.cat([f0[:, 1:], f0[:, -1:]], 1)
        amps_next = torch.cat([amps[:, 1:], amps[:, -1:]], 1)
        jump = self._jumps(f0, f0_next)
        end = self._glide_end(f0, f0_next, jump)
        a, c = self._hop_advance
        advance = (a * f0 + c * (end - f0)).double()  # phase gained over each hop
        start = torch.remainder(torch.cumsum(advance, 1) - advance, 2 * math.pi).float()
        phase = start[..., None] + f0[..., None] * self.phase_start + (end - f0)[..., None] * self.phase_slope
        b, n, hop = phase.shape
        with torch.no_grad():
            sines = torch.sin(phase[..., None] * self.orders).view(b * n, hop, self.harmonics)  # [B F, hop, K]
        glide_to = torch.where(jump[..., None], torch.zeros_like(amps_next), amps_next)
        here = torch.bmm(sines, amps.reshape(b * n, self.harmonics, 1)).view(b, n, hop)
        there = torch.bmm(sines, glide_to.reshape(b * n, self.harmonics, 1)).view(b, n, hop)
        audio = here + self.ramp * (there - here)
        rows = jump.reshape(-1).nonzero()[:, 0]
        if rows.numel():  # the incoming partials of the jump hops
            start_next = torch.remainder(start.double() + advance, 2 * math.pi).float().reshape(-1)[rows]
            incoming = start_next[:, None] + f0_next.reshape(-1)[rows][:, None] * self.phase_back
            with torch.no_grad():
                sines_in = torch.sin(incoming[..., None] * self.orders)  # [J, hop, K]
            fade_in = torch.bmm(sines_in, amps_next.reshape(b * n, self.harmonics, 1)[rows])[..., 0] * self.ramp
            audio = audio.reshape(b * n, hop).index_add(0, rows, fade_in).view(b, n, hop)
        return audio.reshape(b, 1, n * hop)

    # -- inference --------------------------------------------------------------------------------
    def stream(self, x: torch.Tensor, final: bool,
               params: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Inference (inside ``streaming()``): the hops completed by these frames' features, and at
        the end (``final``) the last one; the same hops as :meth:`ISTFTHead.stream`. ``params``:
        these frames' ``(f0 [B, n], amplitudes [B, n, K])`` when the caller has them (:meth:`mix`)."""
        state = self._streaming_state
        b = x.shape[0]
        pending, phase = state["pending"], state["phase"]
        if x.shape[1]:
            f0, amps = params if params is not None else self._params_exact(x)
            if pending is not None:
                f0 = torch.cat([pending[0], f0], 1)
                amps = torch.cat([pending[1], amps], 1)
        elif pending is not None:
            f0, amps = pending
        else:
            return x.new_zeros(b, 1, 0)
        if phase is None:
            phase = torch.zeros(b, dtype=torch.float64, device=x.device)
        f0_next, amps_next = f0[:, 1:], amps[:, 1:]  # hop t: frame t's parameters to frame t + 1's
        pending = (f0[:, -1:], amps[:, -1:])
        if final:  # the last hop holds the last frame's parameters
            f0_next, amps_next = torch.cat([f0_next, f0[:, -1:]], 1), torch.cat([amps_next, amps[:, -1:]], 1)
        f0 = f0[:, : f0_next.shape[1]]
        amps = amps[:, : f0_next.shape[1]]
        starts = []
        for t in range(f0.shape[1]):  # hop phases one after another, in float64
            starts.append(phase)
            phase = self._advance(phase, f0[:, t], f0_next[:, t])
        state["pending"], state["phase"] = (None, None) if final else (pending, phase)
        if not starts:
            return x.new_zeros(b, 1, 0)
        audio = self._hops(f0, f0_next, amps, amps_next, torch.stack(starts + [phase], 1))
        return audio.reshape(b, 1, -1)

    def _advance(self, phase: torch.Tensor, f0: torch.Tensor, f0_next: torch.Tensor) -> torch.Tensor:
        a, c = self._hop_advance
        end = self._glide_end(f0, f0_next, self._jumps(f0, f0_next))
        advance = a * f0 + c * (end - f0)
        return torch.remainder(phase + advance.double(), 2 * math.pi)

    def _hops(self, f0, f0_next, amps, amps_next, phases) -> torch.Tensor:
        """Hops ``[B, n, hop]`` from their frames' parameters (:meth:`oscillate`'s function) and the
        phases ``[B, n + 1]`` at their starts and at the end of the last.

        Exact under any chunking: every partial's term is element-wise arithmetic (``pointwise_exact``
        sines), computed for all partials at once, and the terms are added to the output one partial
        after another in a fixed order. Partials above the last one with an amplitude in these hops
        are left out (their terms are exact zeros, which add nothing)."""
        phase, start_next = phases[:, :-1], phases[:, 1:]
        jump = self._jumps(f0, f0_next)
        end = self._glide_end(f0, f0_next, jump)
        base = (phase.float()[..., None] + f0[..., None] * self.phase_start
                + (end - f0)[..., None] * self.phase_slope)  # [B, n, hop]
        out = torch.zeros_like(base)
        live = ((amps > 0) | (amps_next > 0)).flatten(0, -2).any(0).nonzero()
        if not live.numel():
            return out  # unvoiced or silent in every hop of every item
        k = int(live[-1, 0]) + 1  # partials 0 .. k-1
        orders = self.orders[:k]
        a, a_next = amps[..., :k], amps_next[..., :k]  # [B, n, k]
        glide_to = torch.where(jump[..., None], torch.zeros_like(a_next), a_next)
        amp = a[..., None] + self.ramp * (glide_to - a)[..., None]  # [B, n, k, hop]
        terms = amp * pointwise_exact(torch.sin, base[..., None, :] * orders[:, None])
        terms_in = None  # across a pitch jump: the incoming partials, each added after its outgoing one
        if bool(jump.any()):
            incoming = start_next.float()[..., None] + f0_next[..., None] * self.phase_back
            fade_in = jump[..., None].to(base.dtype) * self.ramp  # [B, n, hop]
            terms_in = (fade_in[..., None, :] * a_next[..., None]) * pointwise_exact(
                torch.sin, incoming[..., None, :] * orders[:, None])
        for i in range(k):
            out += terms[..., i, :]
            if terms_in is not None:
                out += terms_in[..., i, :]
        return out
