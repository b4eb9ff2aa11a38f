"""Captioned music v2: the music generator's scores played on real sampled instruments (a SoundFont).

Version 1 (:mod:`course_lib.data.music`) synthesises every note from a few sine partials, so a generator
trained on it never hears a real attack, a bow or a breath. This version keeps the score and the tags of
version 1 exactly (the same tag draw, the same scale random walk on the beat grid, so ``tempo_bpm``, ``key``,
``mode`` and ``instrument`` stay true by construction) and changes how the score is *performed* (and
captioned, see below):

* each instrument family (:data:`INSTRUMENTS`: version 1's six plus strings and brass) is played by one of
  several General MIDI programs (:data:`GM_PROGRAMS`) of the SoundFont ``TimGM6mb.sf2``, drawn per clip;
* timing and loudness are humanised: every onset moves by a few milliseconds (:data:`TIMING_JITTER_S`),
  every note gets its own MIDI velocity around a per-clip level, the first beat of a bar is accented;
* drums, when the tags say so, are version 1's pattern (kick on beats 1 and 3, snare on 2 and 4, closed
  hi-hat on every beat) played on one of the SoundFont's drum kits (bank 128, :data:`DRUM_KITS`).

Notes are rendered by :mod:`course_lib.data.soundfont` (a NumPy sample player). Attributes are version 1's
plus ``program`` / ``program_name`` (the GM program that played), ``velocities`` (one per note),
``drum_kit`` (the kit's program in bank 128, or None) and ``soundfont``; ``notes`` lists the notes *as
played*, ``[midi, onset_s, duration_s]`` with the humanised onsets. The tags and the score of clip
``(split, index)`` come from the same random stream as version 1, so the same index and instrument give
the same notes in both versions.

Captions come from the version 2 caption grammar (:mod:`course_lib.data.captions_v2`): instrument words
per family and per GM program ("strings", "violin", "string section"), tempo words and numbers, key and
mode wording, moods, drums, in many templates with facts that may be left out. ``caption_states``,
``caption_template`` and ``caption_grammar`` record the caption; ``grammar="heldout"`` (test split only)
writes it from the held-out part of the grammar. The caption has its own random stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.data import captions_v2, music, soundfont, synth
from course_lib.data.clip import Clip

GENERATOR = "music/v2"
INSTRUMENTS: tuple[str, ...] = (*music.INSTRUMENTS, "strings", "brass")

#: General MIDI programs (0-based) per instrument family, all in TimGM6mb's bank 0. Chosen so that the
#: fundamental (or an octave of it) is each note's strongest partial over the family's range, which the
#: mode probe (:func:`course_lib.data.music_probes.pitch_class_profile`) needs: Organ 3 (18, a strong
#: fifth), Clean Guitar (27), Picked Bass (34), Trumpet (56) and Trombone (57) fail that and are left out.
GM_PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": (0, 2, 4, 5),  # acoustic grand, electric grand, electric pianos 1 and 2
    "organ": (16, 17, 19),  # drawbar, percussive, church organ
    "guitar": (24, 25, 26),  # nylon, steel, jazz guitar
    "flute": (72, 73, 74, 75),  # piccolo, flute, recorder, pan flute
    "synth lead": (80, 81, 83, 87),  # square, sawtooth, chiffer, bass + lead
    "bass": (32, 33, 35, 38),  # acoustic, finger, fretless, synth bass 1
    "strings": (40, 41, 45, 48),  # violin, viola, pizzicato, string ensemble 1
    "brass": (60, 61, 62, 63),  # French horn, brass section, synth brass 1 and 2
}
DRUM_KITS: tuple[int, ...] = (0, 8, 16, 24, 25)  # bank-128 programs: standard, room, power, electronic, TR-808
KICK, SNARE, CLOSED_HI_HAT = 36, 38, 42  # General MIDI percussion keys (channel 10)

TIMING_JITTER_S = 0.006  # standard deviation of an onset's humanisation (s); clipped at 2.5 of them
VELOCITY_RANGE = (70, 100)  # a clip's base MIDI velocity is drawn from here
VELOCITY_JITTER = 6.0  # standard deviation of a note's velocity around the base
ACCENT = 12  # velocity added on the first beat of a bar
MAX_RELEASE_S = 0.5  # a note's release tail is cut here (s): enough to ring on, short enough to stay cheap
DRUM_HOLD_S = 0.1  # how long a drum key is held; the kit's one-shot samples ring on by themselves


def _humanised_onsets(rng: np.random.Generator, onsets: np.ndarray) -> np.ndarray:
    """Onsets (s) moved by Gaussian jitter of :data:`TIMING_JITTER_S`, clipped to ±2.5 of it and at 0."""
    jitter = np.clip(rng.normal(0.0, TIMING_JITTER_S, len(onsets)), -2.5 * TIMING_JITTER_S, 2.5 * TIMING_JITTER_S)
    return np.maximum(onsets + jitter, 0.0)


def _velocities(rng: np.random.Generator, base: int, accented: np.ndarray) -> np.ndarray:
    """MIDI velocities ``(n,)`` in [1, 127]: ``base`` plus :data:`ACCENT` where ``accented``, plus jitter."""
    raw = base + ACCENT * accented + rng.normal(0.0, VELOCITY_JITTER, len(accented))
    return np.clip(np.round(raw), 1, 127).astype(int)


def _perform_melody(rng: np.random.Generator, score: list[list[float]], beat: float) -> tuple[list[list[float]], list[int]]:
    """The score's notes ``[midi, onset_s, duration_s]`` as played (humanised onsets and lengths) and their
    MIDI velocities (the bar's first beat accented, as version 1 does)."""
    midi = [int(m) for m, _, _ in score]
    onsets = _humanised_onsets(rng, np.array([o for _, o, _ in score]))
    durations = np.array([d for _, _, d in score]) * rng.uniform(0.9, 1.05, len(score))
    first = score[0][1]
    accented = np.array([round((o - first) / beat) % 4 == 0 for _, o, _ in score])
    velocities = _velocities(rng, int(rng.integers(*VELOCITY_RANGE, endpoint=True)), accented)
    played = [[m, round(float(o), 4), round(float(d), 4)] for m, o, d in zip(midi, onsets, durations)]
    return played, [int(v) for v in velocities]


def _render_melody(sf: soundfont.SoundFont, program: int, notes: list[list[float]], velocities: list[int],
                   n: int, sample_rate: int) -> np.ndarray:
    """The notes played on GM ``program``, mixed into a track ``(n,)`` (float64, unnormalised)."""
    track = np.zeros(n)
    for (midi, onset, duration), velocity in zip(notes, velocities):  # a dozen or so notes
        note = soundfont.render_note(0, program, midi, velocity, duration, sample_rate, sf, MAX_RELEASE_S)
        synth.place(track, note, [int(round(onset * sample_rate))])
    return track


def _render_drums(rng: np.random.Generator, sf: soundfont.SoundFont, kit: int, first_onset: float, beat: float,
                  n: int, sample_rate: int) -> np.ndarray:
    """Version 1's pattern on drum kit ``kit`` (bank 128) from ``first_onset`` s: kick on beats 1 and 3, snare
    on 2 and 4, closed hi-hat on every beat; humanised like the melody. Returns ``(n,)`` float64."""
    beats = first_onset + beat * np.arange(int(np.floor((n / sample_rate - first_onset) / beat)) + 1)
    track = np.zeros(n)
    base = int(rng.integers(*VELOCITY_RANGE, endpoint=True))
    bar_start = np.arange(len(beats)) % 4 == 0  # accented: the kick and hi-hat on a bar's first beat
    pattern = ((KICK, beats[0::2], bar_start[0::2]), (SNARE, beats[1::2], np.zeros(len(beats[1::2]), bool)),
               (CLOSED_HI_HAT, beats, bar_start))
    for key, hits, accented in pattern:
        onsets = _humanised_onsets(rng, hits)
        for onset, velocity in zip(onsets, _velocities(rng, base, accented)):
            hit = soundfont.render_note(soundfont.PERCUSSION_BANK, kit, key, int(velocity), DRUM_HOLD_S,
                                        sample_rate, sf, MAX_RELEASE_S)
            synth.place(track, hit, [int(round(onset * sample_rate))])
    return track


def _peak_normalised(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.max(np.abs(x))), 1e-12)


def draw_attributes(index: int, split: str = "train", clip_seconds: float = 4.0, sample_rate: int = 16000,
                    **overrides: Any) -> dict[str, Any]:
    """The tags a caption of clip ``index`` states (``instrument``, ``tempo_bpm``, ``key``, ``mode``, ``mood``,
    ``has_drums``, ``program``, ``drum_kit``), plus ``seed``, ``split`` and ``index``, drawn exactly as
    :func:`generate_clip` draws them but without loading the SoundFont or rendering a note."""
    n = synth.check_clip_args(clip_seconds, sample_rate)
    seed = synth.clip_seed(split, index)
    rng = synth.make_rng(seed, music.STREAM)
    a = music._draw(rng, int(index), overrides, instruments=INSTRUMENTS)
    score = music._melody(rng, a, n / sample_rate)
    a["program"] = int(rng.choice(GM_PROGRAMS[a["instrument"]]))
    _perform_melody(rng, score, 60.0 / a["tempo_bpm"])  # the same draws as generate_clip, in the same order
    a["drum_kit"] = int(rng.choice(DRUM_KITS)) if a["has_drums"] else None
    a.update(seed=seed, split=split, index=int(index))
    return a


def caption_of(attributes: dict[str, Any], grammar: str = "seen") -> captions_v2.Caption:
    """The caption :func:`generate_clip` writes for a clip with these tags (``seed`` picks the caption's
    random stream; ``grammar="heldout"`` only for ``split`` ``"test"``)."""
    captions_v2.check_grammar(grammar, attributes["split"])
    return captions_v2.music_caption(attributes, captions_v2.caption_rng(attributes["seed"], "music"), grammar)


def generate_clip(index: int, split: str = "train", clip_seconds: float = 4.0, sample_rate: int = 16000,
                  grammar: str = "seen", **overrides: Any) -> Clip:
    """Music clip ``index`` of ``split`` played through the SoundFont: audio ``(time,)`` float32, caption, tags.

    ``time = round(clip_seconds * sample_rate)``; the same arguments always give bit-identical audio.
    Overrides and errors as :func:`course_lib.data.music.generate_clip`, with ``instrument`` one of
    :data:`INSTRUMENTS`; clip ``index`` plays ``INSTRUMENTS[index % 8]`` unless overridden. The melody is
    normalised to peak 1, drums (when present) are mixed at 0.4-0.6 of that, and the mix is set to a peak
    between -6 and -1 dBFS, as in version 1. Raises :class:`~course_lib.data.soundfont.SoundFontNotFoundError`
    when pretty_midi (which carries the SoundFont) is not installed. ``grammar``: ``"seen"`` (the default) or
    ``"heldout"`` (test split only: the caption comes from the held-out part of the caption grammar,
    :mod:`course_lib.data.captions_v2`; audio and tags unchanged).
    """
    captions_v2.check_grammar(grammar, split)
    n = synth.check_clip_args(clip_seconds, sample_rate)
    seed = synth.clip_seed(split, index)
    rng = synth.make_rng(seed, music.STREAM)  # version 1's stream: the same tags and score for the same index
    a = music._draw(rng, int(index), overrides, instruments=INSTRUMENTS)
    score = music._melody(rng, a, n / sample_rate)
    beat = 60.0 / a["tempo_bpm"]
    sf = soundfont.load_soundfont()

    program = int(rng.choice(GM_PROGRAMS[a["instrument"]]))
    notes, velocities = _perform_melody(rng, score, beat)
    mix = _peak_normalised(_render_melody(sf, program, notes, velocities, n, sample_rate))
    kit = None
    if a["has_drums"]:
        kit = int(rng.choice(DRUM_KITS))
        drums = _render_drums(rng, sf, kit, score[0][1], beat, n, sample_rate)
        mix = mix + _peak_normalised(drums) * rng.uniform(0.4, 0.6)
    mix = _peak_normalised(mix) * synth.db_to_gain(rng.uniform(-6.0, -1.0))

    a.update(notes=notes, velocities=velocities, program=program, program_name=sf.preset_name(0, program),
             drum_kit=kit, soundfont=sf.path.name, duration=round(n / sample_rate, 4),
             loudness_db=round(synth.to_db(synth.rms(mix)), 2), seed=seed, split=split, index=int(index),
             generator=GENERATOR)
    written = caption_of(a, grammar)
    a.update(written.attributes())
    return Clip(audio=mix.astype(np.float32), sample_rate=sample_rate, caption=written.text, attributes=a,
                id=f"music-v2-{split}-{seed}")  # not version 1's id: the two may share a folder
