"""Music probes: known answers on pure tones and scales, then on FRESH test-split music clips with known
tempo, key, mode and instrument, at 16 kHz and at Noise2Music's 3.2 kHz."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.audio import resample
from course_lib.data import music
from course_lib.data import music_probes as mp

SR, LOW = 16_000, 3_200


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tones(midis: list[int], sr: int = SR, note_seconds: float = 0.3) -> np.ndarray:
    """One sine per MIDI note, one after the other, with 20 ms fades."""
    n = int(note_seconds * sr)
    t = np.arange(n) / sr
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    return np.concatenate([0.5 * env * np.sin(2 * np.pi * music.midi_to_hz(m) * t) for m in midis]).astype(np.float32)


def low(audio: np.ndarray) -> np.ndarray:
    return resample(torch.from_numpy(audio), SR, LOW).numpy()


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
C_MINOR = [60, 62, 63, 65, 67, 68, 70, 72]


# ---- closed forms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [SR, LOW])
def test_profile_of_a_pure_tone_is_its_pitch_class(sr):
    profile = mp.pitch_class_profile(tones([69, 69, 69], sr), sr)  # A4 = 440 Hz
    assert profile.shape == (12,) and profile[9] == pytest.approx(1.0)
    profile = mp.pitch_class_profile(tones([41, 53], sr), sr)  # F2 (87 Hz, the bass register) and F3
    assert profile.argmax() == 5 and profile[5] > 0.9


@pytest.mark.parametrize("sr", [SR, LOW])
def test_mode_of_scales_depends_on_the_tonic(sr):
    major, minor = tones(C_MAJOR, sr), tones(C_MINOR, sr)
    assert set(np.flatnonzero(mp.pitch_class_profile(major, sr) > 0.05)) == {0, 2, 4, 5, 7, 9, 11}
    assert mp.estimate_mode(major, sr, "C") == "major"
    assert mp.estimate_mode(minor, sr, "C") == "minor"
    assert mp.estimate_mode(major, sr, "A") == "minor"  # the same seven notes read on A: A natural minor
    assert mp.estimate_mode(minor, sr, "Eb") == "major"  # C minor's relative major


def test_noise_and_silence_have_no_profile_and_no_mode():
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    for x in (noise, np.zeros(SR, np.float32)):
        assert mp.pitch_class_profile(x, SR).sum() == 0
        assert mp.estimate_mode(x, SR, "C") is None


def test_tempo_error_of_a_click_track():
    for bpm in (80.0, 120.0, 150.0):
        x = np.zeros(4 * SR, np.float32)
        x[((0.1 + 60.0 / bpm * np.arange(int(3.8 * bpm / 60))) * SR).astype(int)] = 0.9
        assert mp.tempo_error(x, SR, bpm) < 0.02 * bpm
    assert mp.tempo_error(np.zeros(SR, np.float32), SR, 100) == float("inf")  # no onsets: never on tempo


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="tonic must be one of"):
        mp.estimate_mode(tones(C_MAJOR), SR, "H")
    with pytest.raises(ValueError, match="target_bpm must be a positive number"):
        mp.tempo_error(tones(C_MAJOR), SR, 0)
    with pytest.raises(TypeError, match="attributes must be a dict"):
        mp.music_adherence(tones(C_MAJOR), SR, ["piano"])
    with pytest.raises(ValueError, match="expected one mono clip"):
        mp.pitch_class_profile(np.zeros((2, SR)), SR)
    with pytest.raises(ValueError, match="n_per_class must be a positive int"):
        mp.train_instrument_classifier(n_per_class=0)


def test_summarise_adherence_closed_form():
    checks = [{"tempo": True, "tempo_error_bpm": 1.0, "mode": True, "instrument": False},
              {"tempo": False, "tempo_error_bpm": 30.0, "mode": True},
              {"tempo": False, "tempo_error_bpm": float("inf"), "mode": False}]
    assert mp.summarise_adherence(checks) == {"tempo_accuracy": 0.3333, "mode_accuracy": 0.6667,
                                              "instrument_accuracy": 0.0, "tempo_error_bpm": 30.0}
    assert mp.summarise_adherence([]) == {}


# ---- known clips of the music generator --------------------------------------------------------------------


@pytest.mark.parametrize("sr", [SR, LOW])
def test_mode_of_generated_clips_with_known_tags(sr):
    """Fresh test-split clips with forced tags, every instrument, with and without drums: the mode on the
    prompt's tonic is always right, and at 16 kHz so is the tempo (within 8%)."""
    cases = [dict(instrument=i, tempo_bpm=bpm, key=k, mode=m, has_drums=d) for i, bpm, k, m, d in zip(
        music.INSTRUMENTS, (72, 96, 120, 144, 100, 132), ("C", "F#", "A", "Eb", "G", "B"),
        ("major", "minor", "minor", "major", "minor", "major"), (True, False, True, False, True, False))]
    for index, tags in enumerate(cases):
        clip = music.generate_clip(1000 + index, "test", 4.0, **tags)
        x = clip.audio if sr == SR else low(clip.audio)
        assert mp.estimate_mode(x, sr, tags["key"]) == tags["mode"], tags
        checks = mp.music_adherence(x, sr, clip.attributes)
        assert set(checks) == {"tempo", "tempo_error_bpm", "mode"} and checks["mode"]
        if sr == SR:
            assert checks["tempo"] and checks["tempo_error_bpm"] <= mp.TEMPO_TOLERANCE * tags["tempo_bpm"], tags


@pytest.mark.parametrize("sr, least", [(SR, 0.9), (LOW, 0.85)])
def test_tempo_and_mode_accuracy_on_fresh_test_clips(sr, least):
    """24 fresh 4-s test clips: the tempo is within 8% for most (measured on 48: 98% at 16 kHz, 94% at 3.2 kHz,
    where soft organ and flute attacks lose the partials above 1.6 kHz) and the mode is right for all."""
    clips = list(music.generate_clips("test", 24, 4.0, SR, start=500))
    audio = mp.music_training_audio(clips, sr, peak=0.9).numpy()
    rates = mp.summarise_adherence([mp.music_adherence(a, sr, c.attributes) for a, c in zip(audio, clips)])
    assert rates["tempo_accuracy"] >= least and rates["tempo_error_bpm"] < 1.0, rates
    assert rates["mode_accuracy"] == 1.0


@pytest.mark.parametrize("sr", [SR, LOW])
def test_instrument_probe_on_fresh_test_clips(sr):
    classifier = mp.train_instrument_classifier(n_per_class=12, epochs=200, clip_seconds=2.0, sample_rate=sr)
    assert classifier.config.classes == music.INSTRUMENTS and classifier.config.sample_rate == sr
    clips = list(music.generate_clips("test", 24, 2.0, SR))
    audio = mp.music_training_audio(clips, sr, peak=0.9)
    peaks = audio.abs().amax(1)
    assert audio.shape == (24, 2 * sr) and bool((peaks <= 1.05).all())
    if sr == SR:  # the peak is set at 16 kHz; band-limiting to 3.2 kHz moves it (0.56 to 1.01 here)
        assert torch.allclose(peaks, torch.full((24,), 0.9))
    predicted = classifier.predict(audio, sr)
    accuracy = np.mean([p == c.attributes["instrument"] for p, c in zip(predicted, clips)])
    assert accuracy >= 0.75, accuracy
    checks = [mp.music_adherence(a.numpy(), sr, c.attributes, classifier) for a, c in zip(audio[:6], clips[:6])]
    assert all("instrument" in c for c in checks)
