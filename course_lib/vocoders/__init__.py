"""Vocoders: log-mel spectrogram → waveform.

Every vocoder here follows the :class:`Vocoder` protocol: it knows the mel front end it reads
(``mel_config``, a ``course_lib.audio.MelConfig``) and turns ``log_mel`` ``(B, n_mels, frames)`` — as made by
``course_lib.audio.log_mel(audio, vocoder.mel_config)`` — into audio ``(B, 1, frames · hop_length)``.

* :class:`GriffinLimVocoder` (``griffin_lim``): no training; pseudo-inverse mel + Griffin-Lim phase.
* :class:`MelGAN` (``melgan``): Kumar et al. 2019, a GAN-trained conv generator; train it with
  ``python -m course_lib.train melgan --config course``.
* :class:`Vocos` (``vocos``): Siuzdak 2023, what later work moved to: a ConvNeXt over the mel frames predicts
  an STFT (magnitude and phase) that an iSTFT turns into audio, no upsampling convolutions; train it with
  ``python -m course_lib.train vocos --config course``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from course_lib.audio import MelConfig
from course_lib.vocoders.griffin_lim import GriffinLimVocoder
from course_lib.vocoders.melgan import (
    MelGAN,
    MelGANConfig,
    MelGANGenerator,
    MultiScaleDiscriminator,
    ResidualStack,
    generator_output_length,
    receptive_field,
)
from course_lib.vocoders.vocos import ISTFTHead, Vocos, VocosConfig


@runtime_checkable
class Vocoder(Protocol):
    """Anything that maps a log-mel ``(B, n_mels, frames)`` to audio ``(B, 1, frames · hop_length)``."""

    @property
    def mel_config(self) -> MelConfig: ...

    @property
    def hop_length(self) -> int: ...

    def __call__(self, log_mel: Tensor) -> Tensor: ...


__all__ = [
    "GriffinLimVocoder", "MelGAN", "MelGANConfig", "MelGANGenerator", "MultiScaleDiscriminator", "ResidualStack",
    "Vocoder", "generator_output_length", "receptive_field", "ISTFTHead", "Vocos", "VocosConfig",
]
