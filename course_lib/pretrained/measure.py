"""How each shipped model's card metrics are measured (and re-measured by the tests).

Every measurement uses test-split clips from the course generators: never seen in training (train split)
nor in the training run's periodic evaluation (valid split). Half sound events, half music.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from course_lib.data import music, sound_events

DB_PER_NAT = 20.0 / math.log(10.0)  # a log-magnitude difference of 1 nat is 8.69 dB


def heldout_audio(n_clips: int, clip_seconds: float, sample_rate: int, start: int = 0) -> torch.Tensor:
    """``(n_clips, 1, T)`` test-split clips: the first half sound events, the second half music."""
    n_music = n_clips // 2
    clips = list(sound_events.generate_clips("test", n_clips - n_music, clip_seconds, sample_rate, start=start))
    clips += list(music.generate_clips("test", n_music, clip_seconds, sample_rate, start=start))
    return torch.from_numpy(np.stack([c.audio for c in clips]))[:, None]


@torch.no_grad()
def measure_mel_vqvae(model, n_clips: int = 24, clip_seconds: float = 4.0, batch_size: int = 8) -> dict[str, float]:
    """Mel VQ-VAE: held-out log-mel L1 (nats and dB), codebook usage and perplexity over all tokens."""
    from course_lib.quantize import perplexity

    cfg = model.config
    audio = heldout_audio(n_clips, clip_seconds, cfg.sample_rate)
    l1, codes = [], []
    for batch in audio.split(batch_size):
        mel = model.features(batch[:, 0])
        recon, vq = model(mel)
        l1.append((recon - mel).abs().mean(dim=(1, 2)))
        codes.append(vq.codes.flatten())
    l1_nats = float(torch.cat(l1).mean())
    tokens = torch.cat(codes)
    return {
        "mel_l1_nats": round(l1_nats, 4),
        "mel_l1_db": round(l1_nats * DB_PER_NAT, 3),
        "codebook_usage": round(tokens.unique().numel() / cfg.codebook_size, 4),
        "perplexity": round(float(perplexity(tokens, cfg.codebook_size)), 2),
    }
