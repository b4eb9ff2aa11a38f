"""Captioned music (MusicCaps-like): short melodies with optional drums, captioned from their tags.

Noise2Music had no captions for most of its training audio, so it *pseudo-labelled* it: a music-text model
scored genre, mood and instrument tags for every clip, and the tags were turned into sentences. This
generator does the same from tags it knows exactly: an ``instrument`` (:data:`INSTRUMENTS`), a
``tempo_bpm`` (70-160), a ``key`` (12 tonics) and ``mode`` (major/minor), a ``mood`` derived from mode and
tempo (major + fast = happy, major + slow = calm, minor + fast = tense, minor + slow = sad) and
``has_drums``; the caption reads e.g. "an upbeat piano melody in C major at 120 bpm with drums".

The melody is a random walk on the scale, one note per beat (the third beat of a 4/4 bar sometimes held for
two), so the beat is the fastest regular pulse and :func:`course_lib.data.probes.estimate_tempo` can find it;
the first beat of every bar is accented. Drums, when present, are synthesised: kick on beats 1 and 3, snare on 2 and 4,
a closed hi-hat on every beat. Attributes also list every note as ``[midi, onset_s, duration_s]``.
Determinism and split-disjoint seeds work exactly as in :mod:`course_lib.data.sound_events`; the
instrument of clip ``index`` is ``INSTRUMENTS[index % len(INSTRUMENTS)]`` unless overridden.

Two versions (``version=`` of :func:`generate_clip` / :func:`generate_clips`): 1, the default and what the
shipped models were trained on, synthesises every note here (additive tones, noise drums); 2
(:mod:`course_lib.data.music_sf2`) plays the same kind of score on real sampled instruments from a General
MIDI SoundFont, with more instruments (strings, brass) and a humanised performance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from course_lib.data import synth
from course_lib.data.clip import Clip

GENERATOR = "music/v1"
STREAM = 2
VERSIONS: tuple[int, ...] = (1, 2)  # 1: synthesised here (the default); 2: SoundFont (course_lib.data.music_sf2)

INSTRUMENTS: tuple[str, ...] = ("piano", "organ", "guitar", "flute", "synth lead", "bass")
KEYS: tuple[str, ...] = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES: tuple[str, ...] = ("major", "minor")
MOODS: tuple[str, ...] = ("happy", "calm", "tense", "sad")
TEMPO_RANGE: tuple[int, int] = (70, 160)
FAST_BPM = 110  # mood boundary: at or above is "fast"
OVERRIDE_KEYS: tuple[str, ...] = ("instrument", "tempo_bpm", "key", "mode", "has_drums")

_SCALES = {"major": np.array([0, 2, 4, 5, 7, 9, 11]), "minor": np.array([0, 2, 3, 5, 7, 8, 10])}
_BASE_MIDI = {"piano": 60, "organ": 60, "guitar": 48, "flute": 72, "synth lead": 60, "bass": 36,  # C of an octave
              "strings": 60, "brass": 60}  # strings and brass: music v2 only


def mood_of(mode: str, tempo_bpm: float) -> str:
    """The mood tag of a mode and tempo: happy (major, >= 110 bpm), calm (major, slower), tense (minor,
    >= 110 bpm) or sad (minor, slower)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    fast = tempo_bpm >= FAST_BPM
    return ("happy" if fast else "calm") if mode == "major" else ("tense" if fast else "sad")


def midi_to_hz(midi: float | np.ndarray) -> float | np.ndarray:
    """Equal-tempered frequency in Hz of a MIDI note number (69 = A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69) / 12)


# --------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------

_MOOD_WORDS = {"happy": ("happy", "upbeat", "cheerful", "joyful"), "calm": ("calm", "peaceful", "relaxed", "gentle"),
               "tense": ("tense", "dramatic", "urgent", "dark"), "sad": ("sad", "melancholic", "gloomy", "sorrowful")}
_INSTRUMENT_WORDS = {"piano": ("piano",), "organ": ("organ", "electric organ"), "guitar": ("guitar", "plucked guitar"),
                     "flute": ("flute",), "synth lead": ("synth lead", "square-wave synth"),
                     "bass": ("bass", "bass guitar"),
                     "strings": ("strings", "bowed strings"), "brass": ("brass", "brass section")}  # v2 only
_WITH_DRUMS = (" with drums", " with a drum beat", " over a steady drum beat", " accompanied by drums")
_NO_DRUMS = (" without drums", ", no drums", " with no percussion")
_TEMPLATES = (
    "{a_mood} {instrument} melody in {key} {mode} at {bpm} bpm{drums}",
    "{instrument}, {mood}, {key} {mode}, {bpm} bpm, {drum_tag}",
    "a {tempo} {mood} tune played on the {instrument}{drums}",
    "{mood} music in {key} {mode}: a {instrument} plays at a {tempo} tempo{drums}",
    "{a_tempo} {mode}-key {instrument} piece, {mood}, around {bpm} bpm{drums}",
)


def tempo_word(tempo_bpm: float) -> str:
    """"slow" below 95 bpm, "moderate" up to 125 bpm, "fast" above."""
    return "slow" if tempo_bpm < 95 else "moderate" if tempo_bpm <= 125 else "fast"


def caption(attributes: dict[str, Any], rng: np.random.Generator | int = 0) -> str:
    """A Noise2Music-style sentence from a clip's tags (instrument, mood, key, mode, tempo, drums).

    Every stated fact comes from ``attributes``; ``rng`` picks the template and synonyms.
    """
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    mood = pick(_MOOD_WORDS[attributes["mood"]])
    bpm = attributes["tempo_bpm"]
    drums = attributes["has_drums"]
    fields = {"mood": mood, "a_mood": "a " + mood, "instrument": pick(_INSTRUMENT_WORDS[attributes["instrument"]]),
              "key": attributes["key"], "mode": attributes["mode"], "bpm": f"{bpm:g}",
              "tempo": tempo_word(bpm), "a_tempo": "a " + tempo_word(bpm),
              "drums": pick(_WITH_DRUMS if drums else _NO_DRUMS), "drum_tag": "drums" if drums else "no drums"}
    text = " ".join(pick(_TEMPLATES).format(**fields).split())
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


# --------------------------------------------------------------------------------------------------------
# Instruments: one note ``(m,)`` at ``f`` Hz lasting ``dur`` s (plus its release)
# --------------------------------------------------------------------------------------------------------


def _piano(rng, f, dur, sr):
    m = int((dur + 0.3) * sr)
    k = np.arange(1, 11)
    tau = 0.9 * (261.6 / f) ** 0.3
    tone = synth.partials(f * k * np.sqrt(1 + 1e-4 * k ** 2), 1.0 / k ** 1.6, m, sr, taus=tau / k ** 0.5,
                          phases=rng.uniform(0, 2 * np.pi, len(k)))
    return tone * synth.decay(m, sr, 1e9, attack=0.002) * _release(m, sr, dur, 0.08)


def _organ(rng, f, dur, sr):
    m = int((dur + 0.03) * sr)
    tone = synth.partials(f * np.array([1, 2, 3, 4, 6, 8]), [1.0, 0.7, 0.5, 0.35, 0.25, 0.2], m, sr)
    return tone * synth.fades(m, sr, 0.01, 0.03)


def _guitar(rng, f, dur, sr):
    m = int((dur + 0.2) * sr)
    k = np.arange(1, 13)
    amps = np.abs(np.sin(np.pi * k * 0.18)) / k ** 1.1
    amps = amps / amps[0] * np.where(k == 1, 1.0, 0.8)  # keep the fundamental the strongest partial
    tone = synth.partials(f * k, amps, m, sr, taus=0.6 / k ** 0.7, phases=rng.uniform(0, 2 * np.pi, len(k)))
    return tone * synth.decay(m, sr, 1e9, attack=0.001) * _release(m, sr, dur, 0.05)


def _flute(rng, f, dur, sr):
    m = int((dur + 0.04) * sr)
    t = synth.time_axis(m, sr)
    freq = f * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi)))
    tone = synth.harmonic_tone(freq, [1.0, 0.25, 0.1], sr)
    breath = synth.shaped_noise(rng, m, sr, synth.band_gain(1.5 * f, 4 * f, 2)) * 0.03
    return (tone + breath) * synth.fades(m, sr, 0.05, 0.04)


def _synth_lead(rng, f, dur, sr):
    m = int((dur + 0.02) * sr)
    k = np.arange(1, 16, 2)
    amps = 1.0 / k / (1 + (k * f / 3000.0) ** 2)
    return synth.partials(f * k, amps, m, sr) * synth.fades(m, sr, 0.005, 0.02)


def _bass(rng, f, dur, sr):
    m = int((dur + 0.1) * sr)
    k = np.arange(1, 9)
    tone = synth.partials(f * k, 1.0 / k ** 1.5, m, sr, taus=0.7 / k ** 0.5)
    return tone * synth.decay(m, sr, 1e9, attack=0.003) * _release(m, sr, dur, 0.05)


def _release(m: int, sr: int, dur: float, release: float) -> np.ndarray:
    """A gate that is 1 for ``dur`` s and then falls to 0 over ``release`` s."""
    t = synth.time_axis(m, sr)
    return np.clip(1 - (t - dur) / release, 0.0, 1.0)


_VOICES: dict[str, Callable] = {"piano": _piano, "organ": _organ, "guitar": _guitar, "flute": _flute,
                                "synth lead": _synth_lead, "bass": _bass}


def _drum_kit(rng, sr):
    """Kick, snare and hi-hat one-shots (each ``(m,)``)."""
    m = int(0.3 * sr)
    t = synth.time_axis(m, sr)
    kick_f = 50 + 90 * np.exp(-t / 0.03)
    kick = np.sin(synth.phase_from_frequency(kick_f, sr)) * np.exp(-t / 0.12)
    snare = (synth.shaped_noise(rng, m, sr, synth.band_gain(1000, 6000)) * 0.5 * np.exp(-t / 0.06)
             + synth.partials([185.0], [0.6], m, sr, taus=[0.04]))
    hat = synth.shaped_noise(rng, m, sr, synth.band_gain(5000, 0.49 * sr, 4)) * 0.25 * np.exp(-t / 0.02)
    return kick, snare, hat


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator, index: int, overrides: dict,
          instruments: tuple[str, ...] = INSTRUMENTS) -> dict[str, Any]:
    """The clip's tags (instrument cycling through ``instruments`` with the index) with ``overrides`` applied."""
    bad = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if bad:
        raise ValueError(f"unknown override(s) {bad}; the music generator accepts {OVERRIDE_KEYS} "
                         f"(mood follows from mode and tempo)")
    a: dict[str, Any] = {}
    a["instrument"] = overrides.get("instrument", instruments[index % len(instruments)])
    if a["instrument"] not in instruments:
        raise ValueError(f"unknown instrument {a['instrument']!r}; expected one of {instruments}")
    bpm = overrides.get("tempo_bpm", int(rng.integers(TEMPO_RANGE[0], TEMPO_RANGE[1] + 1)))
    if isinstance(bpm, bool) or not isinstance(bpm, (int, float, np.integer)) or not 40 <= bpm <= 240:
        raise ValueError(f"tempo_bpm must be a number of beats per minute in [40, 240], got {bpm!r}")
    a["tempo_bpm"] = int(bpm) if float(bpm).is_integer() else float(bpm)
    a["key"] = overrides.get("key", KEYS[int(rng.integers(len(KEYS)))])
    if a["key"] not in KEYS:
        raise ValueError(f"unknown key {a['key']!r}; expected one of {KEYS}")
    a["mode"] = overrides.get("mode", MODES[int(rng.integers(len(MODES)))])
    if a["mode"] not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {a['mode']!r}")
    a["mood"] = mood_of(a["mode"], a["tempo_bpm"])
    drums = overrides.get("has_drums", bool(rng.random() < 0.6))
    if not isinstance(drums, (bool, np.bool_)):
        raise ValueError(f"has_drums must be True or False, got {drums!r}")
    a["has_drums"] = bool(drums)
    return a


def _melody(rng: np.random.Generator, a: dict, clip_seconds: float) -> list[list[float]]:
    """Notes ``[midi, onset_s, duration_s]`` of a scale random walk on the beat grid."""
    beat = 60.0 / a["tempo_bpm"]
    start = rng.uniform(0.02, 0.1)
    n_beats = max(int(np.floor((clip_seconds - start) / beat)), 1)
    # one note per beat, except that the third beat of a bar may hold for two beats: every bar then has at
    # least three onsets one beat apart, so the beat (not the half-beat or the bar) is the clear pulse
    held = (np.arange(n_beats) % 4 == 2) & (rng.random(n_beats) < 0.4) & (np.arange(n_beats) + 1 < n_beats)
    skipped = np.concatenate([[False], held[:-1]])
    onsets_beats = np.flatnonzero(~skipped)
    lengths = np.where(held[onsets_beats], 2, 1)
    steps = rng.choice([-2, -1, 0, 1, 2], size=len(onsets_beats), p=[0.15, 0.3, 0.1, 0.3, 0.15])
    steps[0] = rng.choice([0, 2, 4])
    degrees = np.clip(np.cumsum(steps), -3, 9)
    scale = _SCALES[a["mode"]]
    tonic = _BASE_MIDI[a["instrument"]] + KEYS.index(a["key"])
    midi = tonic + scale[degrees % 7] + 12 * (degrees // 7)
    notes = []
    for m, b, n in zip(midi, onsets_beats, lengths):
        notes.append([int(m), round(float(start + b * beat), 4), round(float(min(n * beat * 0.9, clip_seconds)), 4)])
    return notes


def check_version(version: int) -> int:
    """``version`` if it is one of :data:`VERSIONS`, else a ``ValueError`` naming them."""
    if isinstance(version, bool) or version not in VERSIONS:
        raise ValueError(f"music generator version must be one of {VERSIONS} (1: synthesised, the default; "
                         f"2: SoundFont instruments), got {version!r}")
    return int(version)


def generate_clip(index: int, split: str = "train", clip_seconds: float = 4.0, sample_rate: int = 16000,
                  version: int = 1, **overrides: Any) -> Clip:
    """Synthesise music clip ``index`` of ``split``: audio ``(time,)`` float32, a caption and its tags.

    ``time = round(clip_seconds * sample_rate)``; the same arguments always give bit-identical audio.
    ``overrides`` force tags (keys in :data:`OVERRIDE_KEYS`: ``instrument``, ``tempo_bpm``, ``key``,
    ``mode``, ``has_drums``); the mood always follows from mode and tempo (:func:`mood_of`). Unknown keys or
    values raise a ``ValueError`` naming what is allowed. Peak level is between -6 and -1 dBFS.
    ``version=2`` renders the clip through a SoundFont instead (:func:`course_lib.data.music_sf2.generate_clip`).
    """
    if check_version(version) == 2:
        from course_lib.data import music_sf2  # imported on demand: it imports this module

        return music_sf2.generate_clip(index, split, clip_seconds, sample_rate, **overrides)
    if "grammar" in overrides:  # the held-out caption grammar belongs to the version 2 captions
        raise ValueError("grammar= picks a version 2 caption grammar (course_lib.data.captions_v2); "
                         "pass version=2 as well")
    n = synth.check_clip_args(clip_seconds, sample_rate)
    seed = synth.clip_seed(split, index)
    rng = synth.make_rng(seed, STREAM)
    a = _draw(rng, int(index), overrides)
    notes = _melody(rng, a, n / sample_rate)
    beat = 60.0 / a["tempo_bpm"]

    melody = np.zeros(n)
    voice = _VOICES[a["instrument"]]
    for m, onset, dur in notes:  # one iteration per note (a dozen or so)
        gain = 1.0 if round((onset - notes[0][1]) / beat) % 4 == 0 else 0.75  # accent the bar's first beat
        synth.place(melody, voice(rng, float(midi_to_hz(m)), dur, sample_rate), [int(onset * sample_rate)], [gain])
    mix = melody / max(float(np.max(np.abs(melody))), 1e-12)
    if a["has_drums"]:
        kick, snare, hat = _drum_kit(rng, sample_rate)
        drums = np.zeros(n)
        first = notes[0][1]
        beats = first + beat * np.arange(int(np.floor((n / sample_rate - first) / beat)) + 1)
        idx = (beats * sample_rate).astype(int)
        synth.place(drums, kick, idx[0::2])
        synth.place(drums, snare, idx[1::2])
        synth.place(drums, hat, idx)
        mix = mix + drums * rng.uniform(0.4, 0.6) / max(float(np.max(np.abs(drums))), 1e-12)
    mix *= synth.db_to_gain(rng.uniform(-6.0, -1.0)) / max(float(np.max(np.abs(mix))), 1e-12)

    a.update(notes=notes, duration=round(n / sample_rate, 4), loudness_db=round(synth.to_db(synth.rms(mix)), 2),
             seed=seed, split=split, index=int(index), generator=GENERATOR)
    text = caption(a, rng)
    return Clip(audio=mix.astype(np.float32), sample_rate=sample_rate, caption=text, attributes=a,
                id=f"music-{split}-{seed}")


def generate_clips(split: str, n: int, clip_seconds: float = 4.0, sample_rate: int = 16000, start: int = 0,
                   version: int = 1, **overrides: Any) -> Iterator[Clip]:
    """Yield ``n`` music clips of ``split`` with indices ``start, ..., start + n - 1`` (see :func:`generate_clip`;
    ``version`` picks the generator, 1 by default)."""
    synth.check_split(split)
    check_version(version)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    for i in range(start, start + n):
        yield generate_clip(i, split, clip_seconds, sample_rate, version, **overrides)
