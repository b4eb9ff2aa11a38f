"""The course's log-mel distance and the μ-law baseline codec."""

import math

import pytest
import torch

from course_lib.audio import MelConfig
from course_lib.codecs.baselines import mu_law_codec
from course_lib.metrics import log_mel_distance_db
from course_lib.metrics.spectral import DB_PER_NAT
from course_lib.runtime import real_time_factor


def tone(freq: float = 440.0, seconds: float = 0.5, amp: float = 0.5, rate: int = 16_000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def test_log_mel_distance_is_zero_for_identical_audio_and_ignores_phase():
    x = tone()[None, None]
    assert float(log_mel_distance_db(x, x)) == 0.0
    flipped = -x  # same magnitude spectrum, opposite phase: the waveform L1 is large, the mel distance ~0
    assert float(log_mel_distance_db(flipped, x)) < 1e-3
    assert float((flipped - x).abs().mean()) > 0.3


def test_a_gain_change_costs_its_decibels_where_the_floor_does_not_clip():
    x = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(0))  # every band far above the floor
    quieter = x * 10 ** (-6 / 20)  # −6 dB everywhere
    d = float(log_mel_distance_db(quieter, x, top_db=None))
    assert d == pytest.approx(6.0, abs=0.01)
    # with the 80 dB floor, bins more than 80 dB under the peak are clamped for both: the mean error is ≤ 6 dB
    assert float(log_mel_distance_db(quieter, x)) <= 6.0 + 1e-4


def test_the_floor_stops_silence_against_faint_hiss_from_dominating():
    x = torch.cat([tone(), torch.zeros(8000)])  # half tone, half digital silence
    hiss = x + 1e-4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert float(log_mel_distance_db(hiss, x, top_db=None)) > 10.0  # −100 dB floor vs −80 dB hiss
    assert float(log_mel_distance_db(hiss, x)) < 3.0
    assert DB_PER_NAT == pytest.approx(8.6859, abs=1e-4)


def test_log_mel_distance_shapes_and_errors():
    x = torch.stack([tone(), tone(880.0)])
    assert log_mel_distance_db(x, x).shape == (2,)
    assert log_mel_distance_db(x[:, None], x[:, None]).shape == (2,)
    with pytest.raises(ValueError, match="same shape"):
        log_mel_distance_db(x[:, :4000], x)
    with pytest.raises(ValueError, match="mono"):
        log_mel_distance_db(x[None].expand(2, 2, -1), x[None].expand(2, 2, -1))
    with pytest.raises(TypeError, match="float"):
        log_mel_distance_db(x.long(), x)
    with pytest.raises(ValueError, match="top_db"):
        log_mel_distance_db(x, x, top_db=0)
    assert log_mel_distance_db(x, x, MelConfig(n_mels=40)).shape == (2,)


def test_mu_law_bitrate_and_quality_ordering():
    x = tone(300.0, seconds=1.0)[None, None] + 0.1 * tone(1200.0, seconds=1.0)[None, None]
    full, kbps = mu_law_codec(x, 16_000, 16_000, 8)
    assert kbps == 128.0 and full.shape == x.shape
    assert float((full - x).abs().max()) < 0.02  # 8-bit μ-law: small error at every sample
    coarse, kbps_coarse = mu_law_codec(x, 16_000, 16_000, 4)
    assert kbps_coarse == 64.0
    assert float(log_mel_distance_db(full, x)) < float(log_mel_distance_db(coarse, x))  # more bits, less noise
    low, kbps_low = mu_law_codec(x, 16_000, 2_000, 8)  # 1 kHz bandwidth: the 1200 Hz partial is gone
    assert kbps_low == 16.0
    spectrum = torch.fft.rfft(low[0, 0]).abs()  # 1 Hz per bin for a 1-s clip
    assert spectrum[1200] < 0.01 * spectrum[300]
    with pytest.raises(ValueError, match="bits"):
        mu_law_codec(x, 16_000, 8_000, 0)
    with pytest.raises(ValueError, match="codec_rate"):
        mu_law_codec(x, 16_000, 32_000, 8)


def test_real_time_factor_measures_audio_seconds_per_wall_second():
    import time

    rtf = real_time_factor(lambda: time.sleep(0.02), audio_seconds=1.0, repeats=2)
    assert 10 < rtf < 55  # 1 s of "audio" in ~0.02 s
    with pytest.raises(ValueError):
        real_time_factor(lambda: None, audio_seconds=0)
