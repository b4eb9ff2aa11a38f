"""The captioned sound-event generator: determinism, seeds, levels, captions, overrides, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from course_lib.data import sound_events as se
from course_lib.data.synth import SEEDS_PER_SPLIT, SPLITS, clip_seed

SR = 16_000
# written out independently of the module, so a caption-word bug in the module cannot hide here
COUNT_WORDS = {1: ["once", "one", "a single"], 2: ["twice", "two"], 3: ["three"], 4: ["four"], 5: ["five"],
               6: ["six"], 7: ["seven"], 8: ["eight"]}
STEMS = {"siren": "siren", "bell": "bell", "beeps": "beep", "footsteps": "step", "rain": "rain", "wind": "wind",
         "engine": r"engine|motor", "birds": "bird", "clock": "clock", "horn": "horn", "knocking": "knock",
         "dog": "dog"}
BAND_WORDS = {"low": ["low", "deep"], "mid": ["mid-pitched", "medium-pitched"], "high": ["high", "shrill"]}


def has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{word}\b", text) is not None


@pytest.fixture(scope="module")
def clips():
    return list(se.generate_clips("train", 96))  # 8 of each class


def test_class_list():
    required = {"siren", "bell", "beeps", "footsteps", "rain", "wind", "engine", "birds", "clock", "horn",
                "knocking"}
    assert required <= set(se.EVENT_CLASSES) and len(se.EVENT_CLASSES) >= 11
    assert set(STEMS) == set(se.EVENT_CLASSES)


def test_deterministic_and_index_dependent():
    a, b = se.generate_clip(7, "train"), se.generate_clip(7, "train")
    assert np.array_equal(a.audio, b.audio) and a.caption == b.caption and a.attributes == b.attributes
    c = se.generate_clip(7 + len(se.EVENT_CLASSES), "train")  # same class, another seed
    assert c.attributes["class"] == a.attributes["class"] and not np.array_equal(a.audio, c.audio)


def test_splits_never_share_a_seed():
    ranges = [(clip_seed(s, 0), clip_seed(s, SEEDS_PER_SPLIT - 1)) for s in SPLITS]
    for (_, hi1), (lo2, _) in zip(ranges, ranges[1:]):
        assert hi1 < lo2  # disjoint, ordered ranges, so no index pair can collide
    seeds = {s: {clip_seed(s, i) for i in range(2000)} for s in SPLITS}
    assert not (seeds["train"] & seeds["valid"]) and not (seeds["train"] & seeds["test"]) \
        and not (seeds["valid"] & seeds["test"])
    clips = {s: se.generate_clip(3, s) for s in SPLITS}
    assert len({c.attributes["seed"] for c in clips.values()}) == 3
    assert clips["train"].attributes["seed"] == clip_seed("train", 3)
    assert not np.array_equal(clips["train"].audio, clips["test"].audio)
    assert clips["test"].attributes["split"] == "test" and "test" in clips["test"].id
    with pytest.raises(ValueError, match="index"):
        se.generate_clip(SEEDS_PER_SPLIT, "train")


def test_shapes_dtype_peak_and_json(clips):
    assert [c.attributes["class"] for c in clips[:12]] == list(se.EVENT_CLASSES)  # class-balanced
    for c in clips:
        assert c.audio.shape == (4 * SR,) and c.audio.dtype == np.float32 and c.sample_rate == SR
        assert 0 < np.abs(c.audio).max() <= 1.0
        json.dumps(c.attributes)
    other = se.generate_clip(5, "valid", clip_seconds=2.5, sample_rate=22050)
    assert other.audio.shape == (55125,) and other.attributes["duration"] == 2.5


def test_levels_are_truthful(clips):
    for c in clips:
        a = c.attributes
        x = c.audio.astype(np.float64)
        measured = 20 * np.log10(np.sqrt(np.mean(x ** 2)))
        if a["background"] is None:
            assert measured == pytest.approx(a["loudness_db"], abs=0.02)
            assert 20 * np.log10(np.abs(x).max()) == pytest.approx(a["peak_db"], abs=0.02)
            assert a["background_db"] is None and a["snr_db"] is None
        else:  # the background sits 15-25 dB under the event
            assert 15 <= a["snr_db"] <= 25
            assert a["background_db"] == pytest.approx(a["loudness_db"] - a["snr_db"], abs=0.02)
            assert measured == pytest.approx(a["loudness_db"], abs=0.3)
        assert a["level"] == ("loud" if a["peak_db"] >= -4 else "quiet" if a["peak_db"] <= -16 else "moderate")


def test_mix_that_would_clip_is_scaled_and_stays_truthful():
    c = se.generate_clip(0, "train", level="loud", background="engine", snr_db=0.0)  # siren + engine at 0 dB
    a = c.attributes
    assert np.abs(c.audio).max() <= 0.99 + 1e-6 and a["peak_db"] <= 0.0
    measured = 20 * np.log10(np.sqrt(np.mean(c.audio.astype(np.float64) ** 2)))
    expected = 10 * np.log10(10 ** (a["loudness_db"] / 10) + 10 ** (a["background_db"] / 10))  # uncorrelated
    assert measured == pytest.approx(expected, abs=0.5)
    assert a["background_db"] == pytest.approx(a["loudness_db"], abs=0.02)


def test_attributes_are_consistent(clips):
    for c in clips:
        a = c.attributes
        if a["pitch_hz"] is not None:
            lo, hi = {"low": (0, 350), "mid": (350, 1050), "high": (1050, 1e9)}[a["pitch_band"]]
            assert lo <= a["pitch_hz"] < hi
        if a["count"] is not None:
            assert len(a["onsets"]) == a["count"]
            onsets = np.array(a["onsets"])
            assert onsets.min() >= 0.1 - 1e-6 and onsets.max() <= a["duration"] - 0.1
            if a["count"] > 1:
                assert np.diff(onsets).min() >= 0.17  # events never run together
        assert (a["rate_hz"] is not None) == (a["class"] in ("footsteps", "clock"))


def test_captions_tell_the_truth(clips):
    for c in clips:
        a, text = c.attributes, c.caption
        assert re.search(STEMS[a["class"]], text), text
        if a["count"] is not None:
            assert any(has_word(text, w) for w in COUNT_WORDS[a["count"]]), text
            others = [w for n, ws in COUNT_WORDS.items() if n != a["count"] for w in ws]
            assert not any(has_word(text, w) for w in others), text
        if a["pitch_band"] is not None and a["class"] != "birds":
            assert any(has_word(text, w) for w in BAND_WORDS[a["pitch_band"]]), text
        for band, words in BAND_WORDS.items():
            if band != a["pitch_band"]:
                assert not any(has_word(text, w) for w in words), text
        for bg, stem in (("rain", "rain"), ("wind", "wind"), ("engine", "engine")):
            if bg != a["class"]:
                assert (stem in text) == (a["background"] == bg), text
        if a["level"] != "loud":
            assert not re.search(r"\bloud", text), text
        if a["level"] != "quiet":
            assert not re.search(r"\b(quiet|soft|faint)", text), text


def test_several_phrasings_per_class():
    for name in se.EVENT_CLASSES:
        attrs = se.generate_clip(0, "train", **{"class": name}).attributes
        phrasings = {se.caption(attrs, rng=i) for i in range(40)}
        assert len(phrasings) >= 3, (name, phrasings)


def test_overrides_are_honoured():
    c = se.generate_clip(4, "valid", **{"class": "bell", "count": 2, "pitch_band": "high", "background": "rain",
                                         "level": "quiet", "snr_db": 20.0})
    a = c.attributes
    assert (a["class"], a["count"], a["pitch_band"], a["background"], a["level"]) == ("bell", 2, "high", "rain", "quiet")
    assert a["background_db"] == pytest.approx(a["loudness_db"] - 20, abs=0.02)
    assert has_word(c.caption, "twice") or has_word(c.caption, "two")
    steps = se.generate_clip(4, "valid", **{"class": "footsteps", "count": 5, "rate_hz": 2.0, "background": None})
    assert steps.attributes["count"] == 5 and steps.attributes["rate_hz"] == 2.0
    assert np.diff(steps.attributes["onsets"]) == pytest.approx(0.5, abs=0.02)
    assert se.generate_clip(4, "valid", **{"class": "siren", "pitch_hz": 500.0}).attributes["pitch_band"] == "mid"
    # forcing one attribute leaves the others as drawn
    base = se.generate_clip(9, "train")
    loud = se.generate_clip(9, "train", level="loud")
    assert loud.attributes["level"] == "loud"
    assert {k: v for k, v in base.attributes.items() if k in ("class", "count", "pitch_hz", "background")} == \
        {k: v for k, v in loud.attributes.items() if k in ("class", "count", "pitch_hz", "background")}


@pytest.mark.parametrize("kwargs, message", [
    ({"class": "trumpet"}, "unknown event class 'trumpet'; expected one of"),
    ({"colour": "red"}, r"unknown override\(s\) \['colour'\]"),
    ({"class": "rain", "count": 2}, "continuous and has no count"),
    ({"class": "rain", "pitch_band": "low"}, "has no pitch"),
    ({"class": "bell", "count": 50}, r"must be an int in \[1, 4\]"),
    ({"class": "bell", "pitch_band": "ultra"}, "pitch_band for 'bell' must be one of"),
    ({"class": "bell", "pitch_hz": 200.0, "pitch_band": "high"}, "is in band 'low'"),
    ({"class": "wind", "background": "wind"}, "background must be None or one of"),
    ({"level": "deafening"}, "level must be one of"),
])
def test_bad_overrides_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        se.generate_clip(0, "train", **kwargs)


def test_bad_split_and_clip_arguments():
    with pytest.raises(ValueError, match=r"unknown split 'training'; expected one of \('train', 'valid', 'test'\)"):
        se.generate_clip(0, "training")
    with pytest.raises(ValueError, match="unknown split"):
        next(se.generate_clips("dev", 1))
    with pytest.raises(ValueError, match="sample_rate"):
        se.generate_clip(0, sample_rate=8000)
    with pytest.raises(ValueError, match="clip_seconds"):
        se.generate_clip(0, clip_seconds=0.2)


def test_generate_clips_indices():
    got = list(se.generate_clips("valid", 3, start=10))
    assert [c.attributes["index"] for c in got] == [10, 11, 12]
    assert np.array_equal(got[1].audio, se.generate_clip(11, "valid").audio)
    assert se.max_events("bell", 4.0) == 4 and se.max_events("rain") == 0


def test_event_class_is_an_alias_for_the_class_override():
    a = se.generate_clip(3, event_class="bell", count=2)
    b = se.generate_clip(3, **{"class": "bell", "count": 2})
    assert a.attributes["class"] == "bell" and np.array_equal(a.audio, b.audio)
    with pytest.raises(ValueError, match="once"):
        se.generate_clip(3, event_class="bell", **{"class": "bell"})


def test_count_range_and_pitch_bands_describe_what_clips_are_drawn_from():
    assert se.count_range("bell") == (1, 4) and se.count_range("rain") is None
    assert se.pitch_bands("bell") == se.PITCH_BANDS and se.pitch_bands("siren") == ("mid", "high")
    assert se.pitch_bands("rain") == ()
    counts = {se.generate_clip(i, event_class="bell").attributes["count"] for i in range(40)}
    assert counts <= set(range(1, 5)) and len(counts) > 1
    with pytest.raises(ValueError, match="unknown event class"):
        se.count_range("trumpet")
