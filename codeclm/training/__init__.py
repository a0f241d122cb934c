"""Codec training pieces: reconstruction/adversarial losses, the STFT discriminator, the loss balancer."""

from codeclm.training.balancer import Balancer
from codeclm.training.discriminator import MultiScaleSTFTDiscriminator, STFTDiscriminator
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
    "MultiScaleSTFTDiscriminator",
    "STFTDiscriminator",
    "MelSpectrogram",
    "MultiScaleMelLoss",
    "MultiResolutionSTFTLoss",
    "PhaseDerivativeLoss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "feature_matching_loss",
]
