"""The captioned music generator: determinism, seeds, the notes it claims, captions, overrides, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from course_lib.data import music as mu

SR = 16_000
MAJOR, MINOR = {0, 2, 4, 5, 7, 9, 11}, {0, 2, 3, 5, 7, 8, 10}
PITCH_CLASS = {"C": 0, "C#": 1, "D": 2, "Eb": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "Ab": 8, "A": 9, "Bb": 10, "B": 11}


@pytest.fixture(scope="module")
def clips():
    return list(mu.generate_clips("train", 24))


def test_instruments():
    assert len(mu.INSTRUMENTS) >= 4 and {"piano", "organ", "flute"} <= set(mu.INSTRUMENTS)
    assert len(mu.KEYS) == 12 and set(mu.MODES) == {"major", "minor"}


def test_deterministic_and_split_disjoint():
    a, b = mu.generate_clip(5, "train"), mu.generate_clip(5, "train")
    assert np.array_equal(a.audio, b.audio) and a.caption == b.caption and a.attributes == b.attributes
    c = mu.generate_clip(5, "test")
    assert c.attributes["seed"] != a.attributes["seed"] and not np.array_equal(a.audio, c.audio)
    assert a.attributes["seed"] < 2**32 <= 2 * 2**32 <= c.attributes["seed"]


def test_shapes_dtype_peak_and_json(clips):
    assert [c.attributes["instrument"] for c in clips[:len(mu.INSTRUMENTS)]] == list(mu.INSTRUMENTS)
    for c in clips:
        assert c.audio.shape == (4 * SR,) and c.audio.dtype == np.float32
        assert 10 ** (-6.01 / 20) <= np.abs(c.audio).max() <= 10 ** (-0.99 / 20)
        json.dumps(c.attributes)
    assert mu.generate_clip(0, clip_seconds=3.0, sample_rate=24000).audio.shape == (72000,)


def test_notes_follow_key_mode_and_beat(clips):
    for c in clips:
        a = c.attributes
        assert mu.TEMPO_RANGE[0] <= a["tempo_bpm"] <= mu.TEMPO_RANGE[1]
        scale = MAJOR if a["mode"] == "major" else MINOR
        tonic = PITCH_CLASS[a["key"]]
        beat = 60.0 / a["tempo_bpm"]
        first = a["notes"][0][1]
        for midi, onset, duration in a["notes"]:
            assert (midi - tonic) % 12 in scale
            beats = (onset - first) / beat
            assert abs(beats - round(beats)) < 1e-3  # every onset on the beat grid
            assert 0 < duration <= 2 * beat
        gaps = np.diff([n[1] for n in a["notes"]]) / beat
        assert np.all(np.isin(np.round(gaps), [1, 2]))


def test_mood_rule():
    assert mu.mood_of("major", 120) == "happy" and mu.mood_of("major", 80) == "calm"
    assert mu.mood_of("minor", 150) == "tense" and mu.mood_of("minor", 70) == "sad"
    assert mu.mood_of("major", 110) == "happy" and mu.mood_of("major", 109) == "calm"


def test_captions_tell_the_truth(clips):
    mood_words = {"happy": "happy|upbeat|cheerful|joyful", "calm": "calm|peaceful|relaxed|gentle",
                  "tense": "tense|dramatic|urgent|dark", "sad": "sad|melancholic|gloomy|sorrowful"}
    for c in clips:
        a, text = c.attributes, c.caption
        assert a["mood"] == mu.mood_of(a["mode"], a["tempo_bpm"])
        assert a["instrument"].split()[0] in text, text
        assert re.search(rf"\b({mood_words[a['mood']]})\b", text), text
        for mood, words in mood_words.items():
            if mood != a["mood"]:
                assert not re.search(rf"\b({words})\b", text), text
        says_no_drums = re.search(r"no drums|without drums|no percussion", text) is not None
        assert says_no_drums != a["has_drums"], text
        if re.search(r"\d+ bpm", text):
            assert f"{a['tempo_bpm']} bpm" in text
        assert re.search(r"\b(major|minor)\b", text) is None or a["mode"] in text
    phrasings = {mu.caption(clips[0].attributes, rng=i) for i in range(30)}
    assert len(phrasings) >= 3


def test_overrides_are_honoured_and_keep_the_rest():
    c = mu.generate_clip(3, "valid", instrument="flute", tempo_bpm=100, key="A", mode="minor", has_drums=False)
    a = c.attributes
    assert (a["instrument"], a["tempo_bpm"], a["key"], a["mode"], a["mood"], a["has_drums"]) == \
        ("flute", 100, "A", "minor", "sad", False)
    with_drums = mu.generate_clip(3, "valid", instrument="flute", tempo_bpm=100, key="A", mode="minor",
                                  has_drums=True)
    assert with_drums.attributes["notes"] == a["notes"]  # same melody, drums added

    def share(x, lo_hz, hi_hz):
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        return spec[(f >= lo_hz) & (f < hi_hz)].sum() / spec.sum()

    assert share(with_drums.audio, 30, 150) > 10 * share(c.audio, 30, 150)  # the kick (a flute has no bass)
    assert share(with_drums.audio, 5000, 8000) > 2 * share(c.audio, 5000, 8000)  # the hi-hat


@pytest.mark.parametrize("kwargs, message", [
    ({"instrument": "kazoo"}, "unknown instrument 'kazoo'; expected one of"),
    ({"key": "H"}, "unknown key 'H'"),
    ({"mode": "dorian"}, "mode must be one of"),
    ({"mood": "happy"}, r"unknown override\(s\) \['mood'\].*mood follows from mode and tempo"),
    ({"tempo_bpm": 500}, r"tempo_bpm must be .* \[40, 240\]"),
    ({"has_drums": "yes"}, "has_drums must be True or False"),
])
def test_bad_overrides_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mu.generate_clip(0, "train", **kwargs)


def test_bad_split():
    with pytest.raises(ValueError, match="unknown split"):
        mu.generate_clip(0, "eval")
    assert [c.attributes["index"] for c in mu.generate_clips("test", 2, start=4)] == [4, 5]
