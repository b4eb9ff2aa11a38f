"""Audio tokenizers built on :mod:`course_lib.quantize`: the mel VQ-VAE (Diffsound stage 1) and the RVQ
waveform codec (AudioGen stage 1). Import the model you need from its module, e.g.
``from course_lib.codecs.mel_vqvae import MelVQVAE``; the names below are re-exported for convenience.
``codec_from_encodec`` loads a Hugging Face ``transformers`` EnCodec model into :class:`Codec`
(:mod:`course_lib.codecs.encodec_hf`; ``transformers`` is imported only when it is called).
"""

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.encodec_hf import codec_config_from_encodec, codec_from_encodec, encodec_n_q
from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig

__all__ = ["Codec", "CodecConfig", "MelVQVAE", "MelVQVAEConfig", "codec_config_from_encodec", "codec_from_encodec",
           "encodec_n_q"]
