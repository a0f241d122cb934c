"""Codec training pieces: reconstruction/adversarial losses, the STFT discriminator, the loss balancer."""

from codeclm.training.balancer import Balancer
from codeclm.training.discriminator import MultiScaleSTFTDiscriminator, STFTDiscriminator
from codeclm.training.losses import (
    MelSpectrogram,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
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
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "feature_matching_loss",
]
