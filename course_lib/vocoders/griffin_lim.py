"""Griffin-Lim: the baseline vocoder that needs no training (Griffin & Lim, 1984).

A log-mel spectrogram has lost two things: the fine frequency detail inside each mel band and the phase.
This vocoder undoes the first with the **pseudo-inverse of the mel filter bank** (the minimum-norm least-squares
magnitude spectrogram, clamped at 0; ``torchaudio.transforms.InverseMelScale`` solves the same least-squares
problem, more slowly) and estimates the second with **Griffin-Lim**: alternate between the time domain and a
spectrogram whose magnitude is forced back to the target, ``X ← STFT(ISTFT(|S| · e^{i∠X}))``, with the
"fast" momentum of Perraudin et al. 2013 (``torchaudio.transforms.GriffinLim``, momentum 0.99, zero initial
phase so results are deterministic). MelGAN's paper puts it at MOS 1.57 against MelGAN's 3.61 on LJ Speech.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.audio import MelConfig, mel_filterbank
from course_lib.vocoders.melgan import check_log_mel

__all__ = ["GriffinLimVocoder", "griffin_lim"]


class GriffinLimVocoder(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` → audio ``(B, 1, frames · hop_length)`` by pseudo-inverse + Griffin-Lim.

    ``mel_config`` (default: the course's ``MelConfig()``) must be the front end that made the log-mel (``course_lib.audio.log_mel(audio, mel_config)``,
    natural log of a magnitude mel); ``n_iter`` Griffin-Lim iterations (32 is a good trade-off; more is
    slower and only slightly better). Same interface as :class:`~course_lib.vocoders.melgan.MelGAN`.
    """

    def __init__(self, mel_config: MelConfig | None = None, n_iter: int = 32, momentum: float = 0.99) -> None:
        super().__init__()
        import torchaudio.transforms as T

        mel_config = MelConfig() if mel_config is None else mel_config
        if not isinstance(mel_config, MelConfig):
            raise TypeError(f"mel_config must be a course_lib.audio.MelConfig, got {type(mel_config).__name__}")
        if mel_config.power != 1.0:
            raise ValueError(f"GriffinLimVocoder expects a magnitude mel (MelConfig.power=1), got power={mel_config.power}")
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.mel_config, self.n_iter = mel_config, n_iter
        fb = mel_filterbank(mel_config).double()  # (n_freqs, n_mels): mel = fb.T @ magnitude
        self.register_buffer("inverse", torch.linalg.pinv(fb.T).float(), persistent=False)  # (n_freqs, n_mels)
        self.griffin_lim = T.GriffinLim(n_fft=mel_config.n_fft, n_iter=n_iter, hop_length=mel_config.hop_length,
                                        power=1.0, momentum=momentum, rand_init=False)

    @property
    def hop_length(self) -> int:
        """Samples per mel frame."""
        return self.mel_config.hop_length

    def magnitude(self, log_mel: Tensor) -> Tensor:
        """Log-mel ``(B, n_mels, frames)`` → linear magnitude spectrogram ``(B, n_fft // 2 + 1, frames)`` (≥ 0)."""
        log_mel = check_log_mel(log_mel, self.mel_config.n_mels, "GriffinLimVocoder")
        return torch.matmul(self.inverse, torch.exp(log_mel.float())).clamp_min(0.0)

    @torch.no_grad()
    def forward(self, log_mel: Tensor) -> Tensor:
        log_mel = check_log_mel(log_mel, self.mel_config.n_mels, "GriffinLimVocoder")
        frames = log_mel.shape[-1]
        # a centred STFT of T samples has 1 + T // hop frames: T = frames * hop - 1 is the longest signal that
        # re-analyses to the same frames; one zero sample then makes frames * hop, as for every vocoder here
        self.griffin_lim.length = frames * self.hop_length - 1
        audio = self.griffin_lim(self.magnitude(log_mel))
        return torch.nn.functional.pad(audio.clamp(-1.0, 1.0), (0, 1))[:, None]


def griffin_lim(log_mel: Tensor, mel_config: MelConfig, n_iter: int = 32, length: int | None = None) -> Tensor:
    """Functional form of :class:`GriffinLimVocoder` for listening: log-mel ``(B, n_mels, frames)`` or
    ``(n_mels, frames)`` → audio ``(B, T)``, with ``T = length`` if given (cropped or zero-padded) else
    ``frames · hop_length``. The models' ``to_audio`` methods call this, so the course has one Griffin-Lim."""
    if log_mel.dim() == 2:
        log_mel = log_mel[None]
    vocoder = GriffinLimVocoder(mel_config, n_iter=n_iter).to(log_mel.device)
    audio = vocoder(log_mel)[:, 0]
    if length is not None:
        audio = audio[..., :length] if audio.shape[-1] >= length else nn.functional.pad(audio, (0, length - audio.shape[-1]))
    return audio
