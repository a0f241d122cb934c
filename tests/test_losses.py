"""Codec training losses, the STFT discriminator and the gradient balancer, on real values."""

import math

import pytest
import torch

from codeclm.training import (
    Balancer,
    MelSpectrogram,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    Discriminators,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
    PeriodDiscriminator,
    PhaseDerivativeLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)

SR = 16000


def harmonic(seconds: float = 0.5, f0: float = 150.0, sr: int = SR, channels: int = 1) -> torch.Tensor:
    """A voiced, speech-like test signal ``[channels, T]``: harmonics of a wobbling pitch."""
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    phase = 2 * math.pi * torch.cumsum(f0 * (1 + 0.1 * torch.sin(2 * math.pi * 3 * t)), 0) / sr
    x = sum(torch.sin(k * phase) / k for k in range(1, 10))
    x = 0.3 * x / x.abs().max()
    return torch.stack([x * (1 - 0.3 * c) for c in range(channels)]).float()


# ----------------------------------------------------------------------------- spectral losses


def test_mel_spectrogram_puts_a_sine_in_the_right_band():
    mel = MelSpectrogram(SR, n_fft=1024, n_mels=40, log=False)
    t = torch.arange(SR) / SR
    out = mel(torch.sin(2 * math.pi * 1000 * t))
    assert out.shape == (40, SR // 256 + 1)
    band = int(out.mean(-1).argmax())
    # the peak of the band's triangle is the frequency with the largest filter weight
    freqs = torch.linspace(0, SR / 2, 513)
    assert abs(float(freqs[mel.filterbank[band].argmax()]) - 1000) < 150
    assert "filterbank" not in mel.state_dict()  # non-persistent buffer
    assert torch.allclose(MelSpectrogram(SR, n_fft=1024, n_mels=40)(torch.zeros(2, 1, 4000)), torch.tensor(-5.0))


@pytest.mark.parametrize("make", [MultiScaleMelLoss.dac, MultiScaleMelLoss.encodec,
                                  lambda sr: MultiResolutionSTFTLoss()])
def test_spectral_losses_zero_then_monotonic_in_noise(make):
    loss_fn = make(SR)
    x = harmonic(channels=2)[None]  # [1, 2, T]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert float(loss_fn(x, x)) == pytest.approx(0.0, abs=1e-6)
    values = [float(loss_fn(x + level * noise, x)) for level in (0.001, 0.01, 0.1)]
    assert 0 < values[0] < values[1] < values[2]


def test_mel_loss_gradient_flows_and_shapes_must_match():
    loss_fn = MultiScaleMelLoss.dac(SR)
    target = harmonic()[None]
    estimate = (0.5 * target).requires_grad_()
    loss = loss_fn(estimate, target)
    loss.backward()
    assert torch.isfinite(estimate.grad).all() and estimate.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        loss_fn(target[..., :-1], target)


def _with_phase(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``x``'s STFT magnitude (512 / 128, Hann) resynthesised with the given phase."""
    window = torch.hann_window(512)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), 512, 128, window=window, return_complex=True)
    y = torch.istft(spec.abs() * torch.exp(1j * phase.expand(spec.shape)), 512, 128, window=window, length=x.shape[-1])
    return y.reshape(x.shape)


def test_phase_loss_sees_whisper_that_magnitude_losses_miss():
    """Same spectral magnitude, noise phase (a whispered rendition of a voiced sound): the phase
    loss is ~1 (unrelated phase), over 30x what a 3-sample delay, a constant phase turn or half
    the level cost."""
    x = harmonic(1.0)[None]
    g = torch.Generator().manual_seed(0)
    window = torch.hann_window(512)
    spec = torch.stft(x[0], 512, 128, window=window, return_complex=True)
    whisper = _with_phase(x, 2 * math.pi * torch.rand(spec.shape, generator=g))
    turned = _with_phase(x, torch.angle(spec) + 0.7)
    phase = PhaseDerivativeLoss()
    assert float(phase(x, x)) < 0.01
    near = [float(phase(z, x)) for z in (torch.roll(x, 3, -1), turned, 0.5 * x)]
    far = float(phase(whisper, x))
    assert 0.9 < far < 1.2 and max(near) < far / 30
    est = whisper.clone().requires_grad_()
    phase(est, x).backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    silent = torch.zeros_like(x).requires_grad_()
    value = phase(silent, x)  # an all-zero estimate: every cosine 0, finite gradients
    value.backward()
    assert float(value) == pytest.approx(2.0, abs=1e-3) and torch.isfinite(silent.grad).all()
    with pytest.raises(ValueError, match="differ in shape"):
        phase(x[..., :-1], x)


# ----------------------------------------------------------------------------- adversarial losses


def test_hinge_losses_known_values():
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[1.0, 1.0]])]
    fake = [torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([[-1.0, 0.0]])]
    # disc 1: real relu(1 - r) = [0, .5, 2] -> 5/6, fake relu(1 + f) = [0, 1, 2] -> 1
    # disc 2: real 0, fake [0, 1] -> 0.5
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx((5 / 6 + 1 + 0.5) / 2)
    # generator relu(1 - f): disc 1 [3, 1, 0] -> 4/3, disc 2 [2, 1] -> 1.5
    assert float(hinge_generator_loss(fake)) == pytest.approx((4 / 3 + 1.5) / 2)
    assert float(hinge_generator_loss(torch.tensor([5.0]))) == 0.0  # a single tensor is one discriminator
    with pytest.raises(ValueError):
        hinge_discriminator_loss(real, fake[:1])


def test_feature_matching_hand_computed():
    real = [[torch.tensor([[1.0, -2.0], [3.0, 4.0]]), torch.tensor([2.0, 2.0])]]
    fake0 = torch.tensor([[0.0, -2.0], [3.0, 6.0]], requires_grad=True)
    fake = [[fake0, torch.tensor([1.0, 3.0])]]
    # layer 1: mean|diff| = 3/4, mean|real| = 10/4 -> 0.3 ; layer 2: 1 / 2 = 0.5 ; mean 0.4
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(0.4)
    loss.backward()
    assert torch.allclose(fake0.grad, torch.tensor([[-1.0, 0.0], [0.0, 1.0]]) / 4 / 2.5 / 2)


# ----------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("channels", [1, 2])
def test_stft_discriminator_shapes_and_gradients(channels):
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(filters=4, in_channels=channels, n_ffts=(128, 256, 64))
    x = harmonic(seconds=0.1, channels=channels)[None].repeat(2, 1, 1).requires_grad_()  # [2, C, 1600]
    logits, features = disc(x)
    assert len(logits) == len(features) == 3
    for n_fft, logit, feats in zip((128, 256, 64), logits, features):
        frames, freqs = 1 + (1600 - n_fft) // (n_fft // 4), n_fft // 2 + 1
        for _ in range(3):  # three convs strided 2 in frequency (kernel 9, padding 4)
            freqs = (freqs - 1) // 2 + 1
        assert logit.shape == (2, 1, frames, freqs)
        assert len(feats) == 5 and all(f.shape[:3] == (2, 4, frames) for f in feats)

    real_logits, real_feats = disc(harmonic(seconds=0.1, f0=200, channels=channels)[None].repeat(2, 1, 1))
    hinge_discriminator_loss(real_logits, logits).backward(retain_graph=True)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    (hinge_generator_loss(logits) + feature_matching_loss(real_feats, features)).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expected audio"):
        disc(x[:, :1] if channels == 2 else x.repeat(1, 2, 1))


def test_default_discriminator_is_encodec_sized():
    disc = MultiScaleSTFTDiscriminator()
    assert [d.n_fft for d in disc.discriminators] == [1024, 2048, 512]
    assert [d.hop_length for d in disc.discriminators] == [256, 512, 128]
    assert sum(p.numel() for p in disc.parameters()) > 100_000


@pytest.mark.parametrize("channels", [1, 2])
def test_period_discriminator_shapes_and_gradients(channels):
    torch.manual_seed(0)
    disc = MultiPeriodDiscriminator(periods=(2, 3, 5), filters=2, in_channels=channels)
    x = harmonic(seconds=0.1, channels=channels)[None, :, :1601].repeat(2, 1, 1).requires_grad_()  # odd length
    logits, features = disc(x)
    assert len(logits) == len(features) == 3
    for p, logit, feats in zip((2, 3, 5), logits, features):
        rows = -(-1601 // p)  # reflect-padded to a multiple of the period, then folded
        for _ in range(4):  # four convs strided 3 in time (kernel 5, padding 2)
            rows = (rows - 1) // 3 + 1
        assert logit.shape == (2, 1, rows, p)
        assert [f.shape[1] for f in feats] == [2, 8, 32, 64, 64] and all(f.shape[-1] == p for f in feats)
    real_logits, real_feats = disc(harmonic(seconds=0.1, f0=200, channels=channels)[None, :, :1601].repeat(2, 1, 1))
    hinge_discriminator_loss(real_logits, logits).backward(retain_graph=True)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    (hinge_generator_loss(logits) + feature_matching_loss(real_feats, features)).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expected audio"):
        disc(x[:, :1] if channels == 2 else x.repeat(1, 2, 1))


def test_period_discriminator_sees_every_pth_sample():
    """The fold puts samples p apart in one column: a p-periodic input gives the same first-layer
    features at every time row (away from the padded edges), any other period does not."""
    torch.manual_seed(0)
    disc = PeriodDiscriminator(5, filters=2)
    one_period = torch.randn(5)
    periodic = one_period.repeat(60)[None, None]  # [1, 1, 300], period 5
    _, feats = disc(periodic)
    rows = feats[0][0, :, 1:-1, :]  # [channels, rows, 5]
    assert torch.allclose(rows, rows[:, :1].expand_as(rows), atol=1e-6)
    _, other = disc(torch.randn(7).repeat(43)[None, None, :300])  # period 7: columns change row to row
    rows = other[0][0, :, 1:-1, :]
    assert (rows - rows[:, :1]).abs().max() > 1e-2


def test_discriminators_concatenate_their_parts():
    torch.manual_seed(0)
    both = Discriminators(MultiScaleSTFTDiscriminator(filters=2, n_ffts=(128, 64)),
                          MultiPeriodDiscriminator(periods=(2, 3, 5), filters=2))
    x = harmonic(seconds=0.1)[None]
    logits, features = both(x)
    assert len(logits) == len(features) == 5
    alone, _ = both.parts[1](x)
    assert all(torch.equal(a, b) for a, b in zip(logits[2:], alone))
    assert sum(p.numel() for p in MultiPeriodDiscriminator().parameters()) > 10 * sum(
        p.numel() for p in MultiPeriodDiscriminator(filters=4).parameters())  # HiFi-GAN width at filters=32


# ----------------------------------------------------------------------------- balancer


def test_balancer_gives_each_loss_its_weight_share_of_the_gradient():
    torch.manual_seed(0)
    scale = torch.randn(1, 8, requires_grad=True)  # a "model" upstream of the output
    output = scale * torch.randn(4, 8)  # [batch, features]
    target = torch.randn(4, 8)
    # wildly different scales, touching disjoint halves of the output so their gradients separate
    losses = {"big": 1e4 * (output[:, :4] - target[:, :4]).pow(2).mean(),
              "small": 1e-4 * (output[:, 4:] - target[:, 4:]).abs().mean()}
    seen = []
    output.register_hook(seen.append)  # also fires for the balancer's per-loss autograd.grad calls
    balancer = Balancer({"big": 3.0, "small": 1.0}, total_norm=2.0, per_batch_item=False)
    norms = balancer.backward(losses, output)

    assert set(norms) == {"big", "small"} and norms["big"] > 1e6 * norms["small"]
    grad = seen[-1]  # the gradient sent back through the model
    # first step: the moving average equals the current norm, so each share is exact
    assert float(grad[:, :4].norm()) == pytest.approx(2.0 * 3 / 4, rel=1e-5)
    assert float(grad[:, 4:].norm()) == pytest.approx(2.0 * 1 / 4, rel=1e-5)
    assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_balancer_per_item_norms_moving_average_and_errors():
    output = torch.ones(3, 5, requires_grad=True)
    balancer = Balancer({"a": 1.0}, ema_decay=0.5)
    balancer.backward({"a": (2 * output).sum()}, output)  # per-item grad norm = 2 * sqrt(5)
    assert float(output.grad[0].norm()) == pytest.approx(1.0, rel=1e-6)
    output.grad = None
    balancer.backward({"a": (4 * output).sum()}, output)  # EMA: (0.5 * 2 + 4) / 1.5 = 10/3 (x sqrt 5)
    assert float(output.grad[0].norm()) == pytest.approx(4 / (10 / 3), rel=1e-6)
    restored = Balancer({"a": 1.0}, ema_decay=0.5)
    restored.load_state_dict(balancer.state_dict())
    assert restored.state_dict() == balancer.state_dict()

    with pytest.raises(KeyError, match="no balancer weight"):
        balancer.backward({"b": output.sum()}, output)
    with pytest.raises(ValueError, match="does not depend"):
        balancer.backward({"a": torch.ones((), requires_grad=True) * 2}, output)
