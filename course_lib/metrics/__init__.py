"""Measuring generated and reconstructed audio.

``course_lib.metrics.spectral``: the log-mel distance in dB that every lesson uses to compare a reconstruction
(tokenizer, codec, vocoder) with its original.
"""

from course_lib.metrics.spectral import log_mel_distance_db

__all__ = ["log_mel_distance_db"]
