"""Audio tokenizers built on :mod:`course_lib.quantize`: the mel VQ-VAE (Diffsound stage 1) and the RVQ
waveform codec (AudioGen stage 1). Import the model you need from its module, e.g.
``from course_lib.codecs.mel_vqvae import MelVQVAE``; the names below are re-exported for convenience.
"""

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig

__all__ = ["Codec", "CodecConfig", "MelVQVAE", "MelVQVAEConfig"]
