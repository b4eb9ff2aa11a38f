"""A naive codec to measure the neural one against: μ-law PCM at a low sample rate.

Telephony's G.711 sends 8-bit μ-law samples at 8 kHz (64 kbit/s). Lower either number and the bitrate falls:
``bits × codec_rate`` bits per second. To meet a neural codec at 1.6 kbit/s this way you must keep very few
samples (e.g. 4 bits at 400 Hz: everything above 200 Hz is gone) — which is the point of the comparison.

μ-law (ITU-T G.711): ``F(x) = sign(x) · ln(1 + μ|x|) / ln(1 + μ)`` with μ = 2^bits − 1, then uniform
quantization of ``F(x)`` to ``2^bits`` levels; decoding inverts both. Here through
``torchaudio.functional.mu_law_encoding`` / ``mu_law_decoding`` and the course's resampler.
"""

from __future__ import annotations

import torch

from course_lib.audio import resample


def mu_law_codec(wav: torch.Tensor, sample_rate: int, codec_rate: int, bits: int) -> tuple[torch.Tensor, float]:
    """Encode ``wav`` ``(..., T)`` at ``sample_rate`` Hz as ``bits``-bit μ-law at ``codec_rate`` Hz, decode it
    back to ``sample_rate``: returns ``(reconstruction (..., T), kbit/s = codec_rate · bits / 1000)``."""
    import torchaudio.functional as AF

    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise TypeError(f"mu_law_codec expects float audio in [-1, 1], got {getattr(wav, 'dtype', type(wav).__name__)}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if not 0 < codec_rate <= sample_rate:
        raise ValueError(f"codec_rate must be in (0, sample_rate={sample_rate}] Hz, got {codec_rate}")
    length = wav.shape[-1]
    low = resample(wav.float(), sample_rate, codec_rate) if codec_rate != sample_rate else wav.float()
    codes = AF.mu_law_encoding(low.clamp(-1.0, 1.0), 2 ** bits)  # integers in [0, 2^bits)
    decoded = AF.mu_law_decoding(codes, 2 ** bits)
    back = resample(decoded, codec_rate, sample_rate) if codec_rate != sample_rate else decoded
    if back.shape[-1] < length:
        back = torch.nn.functional.pad(back, (0, length - back.shape[-1]))
    return back[..., :length], codec_rate * bits / 1000.0
