"""Probes: closed-form checks, then accuracy on FRESH test-split clips (never used to tune thresholds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.data import music as mu
from course_lib.data import probes as pr
from course_lib.data import sound_events as se

SR = 16_000


def sine(hz: float, seconds: float = 1.0, sr: int = SR, amp: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def clicks(n: int, spacing: float = 0.3, sr: int = SR, seconds: float = 4.0) -> np.ndarray:
    x = np.zeros(int(seconds * sr), np.float32)
    x[((0.2 + spacing * np.arange(n)) * sr).astype(int)] = 0.9
    return x


# ------------------------------------------------------------------------------------------------ closed forms


def test_loudness_closed_forms():
    assert pr.loudness_db(sine(440.0)) == pytest.approx(-3.0103, abs=0.01)  # 20·log10(1/√2)
    assert pr.loudness_db(np.sign(sine(100.0)) * 0.5) == pytest.approx(-6.0206, abs=0.05)
    assert pr.loudness_db(np.zeros(1000)) == -100.0
    assert pr.loudness_db(torch.from_numpy(sine(440.0))[None]) == pytest.approx(-3.0103, abs=0.01)


@pytest.mark.parametrize("hz, sr", [(440.0, 16000), (150.0, 16000), (1000.0, 22050), (3000.0, 16000), (97.0, 44100)])
def test_pitch_of_pure_tones(hz, sr):
    est = pr.estimate_pitch(sine(hz, sr=sr, amp=0.3), sr)
    assert est == pytest.approx(hz, rel=0.01)


def test_pitch_of_noise_and_silence_is_none():
    rng = np.random.default_rng(0)
    assert pr.estimate_pitch(rng.standard_normal(SR).astype(np.float32) * 0.1, SR) is None
    assert pr.estimate_pitch(np.zeros(SR, np.float32), SR) is None
    # a tone 20 dB above white noise is still found
    noisy = sine(440.0, amp=0.5) + 0.05 * rng.standard_normal(SR).astype(np.float32)
    assert pr.estimate_pitch(noisy, SR) == pytest.approx(440.0, rel=0.01)


def test_pitch_band_edges():
    assert [pr.pitch_band(h) for h in (100, 349.9, 350, 1049.9, 1050, 5000)] == \
        ["low", "low", "mid", "mid", "high", "high"]
    with pytest.raises(ValueError, match="positive frequency"):
        pr.pitch_band(-3.0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_count_of_clicks(n):
    assert pr.count_events(clicks(n), SR) == n
    rng = np.random.default_rng(n)  # a steady background 20 dB under the clicks' frames changes nothing
    noisy = clicks(n) + 0.003 * rng.standard_normal(4 * SR).astype(np.float32)
    assert pr.count_events(noisy, SR) == n


def test_event_rate_and_silence():
    assert pr.event_rate(clicks(7, spacing=0.5), SR) == pytest.approx(2.0, rel=0.02)
    assert pr.event_rate(clicks(2), SR) is None
    assert pr.count_events(np.zeros(SR, np.float32), SR) == 0


def test_tempo_of_a_click_track():
    for bpm in (72, 120, 150):
        track = clicks(int(4 * bpm / 60) - 1, spacing=60 / bpm)
        assert pr.estimate_tempo(track, SR) == pytest.approx(bpm, rel=0.02)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"mono clip shaped \(time,\)"):
        pr.count_events(np.zeros((2, SR)), SR)
    with pytest.raises(ValueError, match="NaN"):
        pr.estimate_pitch(np.full(SR, np.nan), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        pr.estimate_pitch(sine(440.0), 0)
    with pytest.raises(ValueError, match="at least"):
        pr.estimate_tempo(sine(440.0, seconds=0.1), SR)
    with pytest.raises(TypeError, match="attributes must be a dict"):
        pr.adherence(sine(440.0), SR, ["bell"])


# --------------------------------------------------------------------------------- accuracy on fresh clips


@pytest.fixture(scope="module")
def classifier() -> pr.EventClassifier:
    torch.manual_seed(0)
    return pr.train_event_classifier(n_per_class=30, seed=0, epochs=300)


@pytest.fixture(scope="module")
def fresh_clips():
    return list(se.generate_clips("test", 16 * len(se.EVENT_CLASSES)))  # 192 fresh clips, 16 per class


def test_classifier_accuracy_on_test_split(classifier, fresh_clips):
    audio = np.stack([c.audio for c in fresh_clips])
    predicted = classifier.predict(audio, SR)
    accuracy = np.mean([p == c.attributes["class"] for p, c in zip(predicted, fresh_clips)])
    assert accuracy >= 0.95, accuracy


def test_count_accuracy_on_test_split(fresh_clips):
    countable = [c for c in fresh_clips if c.attributes["count"] is not None]
    assert len(countable) >= 100
    accuracy = np.mean([pr.count_events(c.audio, SR) == c.attributes["count"] for c in countable])
    assert accuracy >= 0.95, accuracy


def test_pitch_band_accuracy_on_test_split(fresh_clips):
    pitched = [c for c in fresh_clips if c.attributes["pitch_band"] is not None]
    assert len(pitched) >= 70
    estimates = [pr.estimate_pitch(c.audio, SR) for c in pitched]
    accuracy = np.mean([h is not None and pr.pitch_band(h) == c.attributes["pitch_band"]
                        for h, c in zip(estimates, pitched)])
    assert accuracy >= 0.95, accuracy
    # and the pitch itself, not just the band: within 3% on the steady-pitched classes
    steady = [(h, c) for h, c in zip(estimates, pitched) if c.attributes["class"] in ("beeps", "bell", "horn")]
    assert np.mean([h is not None and abs(h / c.attributes["pitch_hz"] - 1) < 0.03 for h, c in steady]) >= 0.95


def test_tempo_accuracy_on_test_split():
    clips = list(mu.generate_clips("test", 48))
    errors = np.array([pr.estimate_tempo(c.audio, SR) / c.attributes["tempo_bpm"] for c in clips])
    assert np.mean(np.abs(errors - 1) <= 0.04) >= 0.95, errors


def test_adherence(classifier, fresh_clips):
    bell = next(c for c in fresh_clips if c.attributes["class"] == "bell")
    checks = pr.adherence(bell.audio, SR, bell.attributes, classifier)
    assert set(checks) == {"class", "count", "pitch_band"} and all(checks.values()), checks
    wrong = dict(bell.attributes, count=bell.attributes["count"] + 1, pitch_band="low" if
                 bell.attributes["pitch_band"] != "low" else "high", **{"class": "dog"})
    assert pr.adherence(bell.audio, SR, wrong, classifier) == {"class": False, "count": False, "pitch_band": False}
    rain = next(c for c in fresh_clips if c.attributes["class"] == "rain")
    assert pr.adherence(rain.audio, SR, rain.attributes) == {}  # nothing checkable without a classifier
    song = mu.generate_clip(0, "test")
    assert pr.adherence(song.audio, SR, song.attributes) == {"tempo": True}


def test_classifier_save_load_roundtrip(classifier, fresh_clips, tmp_path):
    classifier.save(tmp_path / "clf")
    loaded = pr.EventClassifier.load(tmp_path / "clf")
    assert loaded.config == classifier.config
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    audio = np.stack([c.audio for c in fresh_clips[:6]])
    assert torch.equal(classifier.embed(audio, SR), loaded.embed(audio, SR))
    assert classifier.embed(audio, SR).shape == (6, classifier.config.embed_dim)
    assert loaded.predict(audio[0], SR) == classifier.predict(audio[0], SR)
    assert isinstance(loaded.predict(audio[0], SR), str) and len(loaded.predict(audio, SR)) == 6
    with pytest.raises(FileNotFoundError, match="config.json"):
        pr.EventClassifier.load(tmp_path / "nothing")


def test_classifier_accepts_other_rates(classifier, fresh_clips):
    clip = fresh_clips[1]
    from course_lib.audio import resample

    up = resample(torch.from_numpy(clip.audio), SR, 22050).numpy()
    assert classifier.predict(up, 22050) == classifier.predict(clip.audio, SR)
