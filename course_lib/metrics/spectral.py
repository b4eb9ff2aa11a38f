"""Spectral distances between a reconstruction and its original.

:func:`log_mel_distance_db` is the course's one number for "how far is this audio from that audio, as an ear
with a mel-band resolution would see it": the mean absolute difference of the two natural-log mel spectrograms
of the course front end (``course_lib.audio.MelConfig``: 16 kHz, 1024-point window, hop 256, 80 Slaney
bands, magnitude mel), converted to decibels (× 20 / ln 10 = 8.69 dB per nat), with both spectrograms
clamped at 80 dB below the target clip's loudest mel bin (``top_db``, librosa's default for the same reason).
Without that floor, digital silence in the target (log-mel at the −100 dB ``amin``) against a reconstruction's
inaudible −70 dB hiss counts as a 30 dB error on every silent frame, and the number ranks reconstructions by
how silent their silences are rather than by how they sound. It ignores phase
on purpose: two waveforms that sound the same but differ in phase are at distance ~0, which a sample-wise
error (L1, SNR) would call very different. 0 dB means identical mels; a few dB is a good neural
reconstruction; above ~10 dB the difference is easy to hear.
"""

from __future__ import annotations

import math

import torch

from course_lib.audio import MelConfig, log_mel

DB_PER_NAT = 20.0 / math.log(10.0)  # a log-magnitude difference of 1 nat is 8.69 dB


def _as_batch(wav: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise TypeError(f"log_mel_distance_db: {name} must be a float tensor (B, 1, T), (B, T) or (T,), got "
                        f"{getattr(wav, 'dtype', type(wav).__name__)}")
    if wav.dim() == 3:
        if wav.shape[1] != 1:
            raise ValueError(f"log_mel_distance_db: {name} must be mono (B, 1, T), got shape {tuple(wav.shape)}")
        return wav[:, 0]
    if wav.dim() == 1:
        return wav[None]
    if wav.dim() != 2:
        raise ValueError(f"log_mel_distance_db: {name} must be (B, 1, T), (B, T) or (T,), got {tuple(wav.shape)}")
    return wav


def log_mel_distance_db(estimate: torch.Tensor, target: torch.Tensor, mel_config: MelConfig | None = None,
                        top_db: float | None = 80.0, amin: float = 1e-5) -> torch.Tensor:
    """Mean |log-mel(estimate) − log-mel(target)| in dB, one value per clip: ``(B,)``.

    ``estimate`` and ``target``: audio ``(B, 1, T)``, ``(B, T)`` or ``(T,)`` at ``mel_config.sample_rate``
    with the same shape (crop a vocoder's or codec's output to the input length first). ``mel_config``
    defaults to the course front end; ``top_db`` the floor below each target clip's peak (``None``: no floor
    but ``amin``, the magnitude floor before the log, 1e-5 = −100 dB).
    """
    mel_config = MelConfig() if mel_config is None else mel_config
    est, tgt = _as_batch(estimate, "estimate"), _as_batch(target, "target")
    if est.shape != tgt.shape:
        raise ValueError(f"log_mel_distance_db: estimate {tuple(estimate.shape)} and target {tuple(target.shape)} "
                         "must have the same shape (crop the longer one to the other's length)")
    est_mel, tgt_mel = log_mel(est.float(), mel_config, amin=amin), log_mel(tgt.float(), mel_config, amin=amin)
    if top_db is not None:
        if top_db <= 0:
            raise ValueError(f"log_mel_distance_db: top_db must be > 0 dB (or None), got {top_db}")
        floor = tgt_mel.amax(dim=(-2, -1), keepdim=True) - top_db / DB_PER_NAT
        est_mel, tgt_mel = est_mel.maximum(floor), tgt_mel.maximum(floor)
    return (est_mel - tgt_mel).abs().mean(dim=(-2, -1)) * DB_PER_NAT
