"""Codec training pieces: reconstruction/adversarial losses, the STFT and period discriminators, the loss balancer."""

from codeclm.training.balancer import Balancer
from codeclm.training.discriminator import (
    Discriminators,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
    PeriodDiscriminator,
    STFTDiscriminator,
)
from codeclm.training.losses import (
    MelSpectrogram,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    PhaseDerivativeLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)

__all__ = [
    "Balancer",
    "Discriminators",
    "MultiPeriodDiscriminator",
    "MultiScaleSTFTDiscriminator",
    "PeriodDiscriminator",
    "STFTDiscriminator",
    "MelSpectrogram",
    "MultiScaleMelLoss",
    "MultiResolutionSTFTLoss",
    "PhaseDerivativeLoss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "feature_matching_loss",
]
