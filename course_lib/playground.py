"""A playground: type a prompt, pick a model, hear and see what it made and what the course's probes hear in it.

:class:`Playground` is one ipywidgets panel (``notebooks/playground.ipynb`` shows it)::

    from course_lib.playground import Playground
    from course_lib.runtime import configure_threads
    configure_threads()
    Playground()          # the last expression of a cell: the panel appears

Inputs: a prompt; the system (AudioGen, Diffsound, Diffsound's autoregressive baseline, Noise2Music, or a
model you trained, by its run folder); seconds; the guidance scale (classifier-free guidance, 1 = none); the
sampling steps where the system has them (Diffsound's reverse steps, Noise2Music's DDIM steps per stage;
the two language models take one step per token, so the field is off for them); the seed. **Generate**
shows a progress bar while it works, then a player (loudness-matched with the history, never clipped), a mel
spectrogram, the generation time, the text encoder's warnings about the prompt in plain words
(:func:`course_lib.text.prompts.prompt_report`: empty, cut short, unknown words), and what the course's
probes hear in the clip next to what the prompt asked for, with ✓/✗ per attribute:

* sound events: the class (the cards' event classifier, :func:`course_lib.pretrained.measures.event_probe`,
  with its probability), the number of events and the pitch band, checked with
  :func:`course_lib.data.probes.adherence` exactly as the generator cards check them;
* music: the tempo, the mode on the prompt's tonic and the instrument (the Noise2Music card's instrument
  classifier, :func:`course_lib.pretrained.measures.instrument_probe`), checked with
  :func:`course_lib.data.music_probes.music_adherence`.

What the prompt asked for comes from :func:`parse_prompt`, a small reader of the course's own words (class
nouns and verbs, counts, pitch words, instruments, "120 bpm", "in D minor"), built from the vocabulary tables of
:mod:`course_lib.data.sound_events`, :mod:`course_lib.data.music` and :mod:`course_lib.data.captions_v2`; an
attribute the prompt does not state shows "—" and is not checked. **Save** writes the clip as a WAV file and
its prompt and settings as JSON beside it, in the folder you type (default ``generated/``), under a name
that never overwrites an earlier one. The last few clips stay in a history, to compare by ear.

Everything the panel does is also a plain function, testable without a browser: :func:`generate_clip`
(pipeline + settings → :class:`GenerationResult`), :func:`listen` (the probes' readout), :func:`save_clip`,
:func:`load_run` (a training run folder → a pipeline) and :meth:`Playground.generate` (by system name, with the
pipelines loaded lazily and cached). Models are reached only through the pipelines' public API
(:mod:`course_lib.pipelines`). Like every library module it leaves torch's thread count alone: the notebook calls
:func:`course_lib.runtime.configure_threads`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import html
import io
import json
import math
import os
import re
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from course_lib.runtime import pick

__all__ = ["System", "SYSTEMS", "DEFAULT_SECONDS", "RUN_FAMILIES", "GenerationResult", "PlaygroundError",
           "parse_prompt", "listen", "seconds_limits", "generate_clip", "save_clip", "load_run", "readout_rows",
           "Playground", "PROBE_SECONDS", "NOT_STATED"]

NOT_STATED = "—"  # what the readout shows for an attribute the prompt does not state
PROBE_RATE = 16_000  # the probes are trained at 16 kHz (other rates are resampled by the classifiers)
PROBE_SECONDS = {"events": 2.0, "music": 4.0}  # the cards' probes' clip length (measure_audiogen, measure_noise2music)
MIN_SECONDS = {"events": 0.5, "music": 1.0}  # the probes need this much audio (tempo: 0.5 s of onsets, and a beat)
# the panel's seconds when a system is chosen: the cards' clip lengths (2 s of sound events, 4 s of music)
DEFAULT_SECONDS = {"events": pick(default=2.0, quick=1.0), "music": pick(default=4.0, quick=1.0)}
N2M_MAX_SECONDS = 20.0  # Noise2Music's U-Net has no length limit; past this a CPU takes minutes
MAX_STEPS = 1000  # DDIM steps: the U-Nets were trained on 1000 noise levels
MAX_CFG = 20.0
HISTORY = 5


class PlaygroundError(ValueError):
    """An input the playground cannot generate from (seconds out of range, steps 0, no such run folder...);
    its message says what to change, in plain words."""


@dataclass(frozen=True)
class System:
    """One generator the playground can run: ``key`` (``"audiogen"``, ``"diffsound"``, ``"diffsound_ar"``,
    ``"noise2music"`` or ``"run"``), ``label`` (shown in the menu and the history), ``domain`` (``"events"`` or
    ``"music"``: which probes listen), ``kind`` (which pipeline call: one of the first four keys), ``has_steps``
    (Diffsound's and Noise2Music's sampling steps; the two LMs take one step per token) and ``default_steps``
    at the current run size."""

    key: str
    label: str
    domain: str
    kind: str
    has_steps: bool
    default_steps: int | None = None


def _systems() -> dict[str, System]:
    return {
        "audiogen": System("audiogen", "AudioGen: LM over codec tokens (sound events)", "events", "audiogen", False),
        "diffsound": System("diffsound", "Diffsound: discrete diffusion over mel tokens (sound events)", "events",
                            "diffsound", True, pick(default=25, quick=5)),
        "diffsound_ar": System("diffsound_ar", "Diffsound's AR baseline: LM over the same mel tokens (sound events)",
                               "events", "diffsound_ar", False),
        "noise2music": System("noise2music", "Noise2Music: 1-D U-Net diffusion cascade (music)", "music",
                              "noise2music", True, pick(default=25, quick=4)),
    }


SYSTEMS: dict[str, System] = _systems()
RUN_LABEL = "A model you trained (its run folder)"

# training family of a run folder -> (pipeline kind, domain, has steps)
RUN_FAMILIES: dict[str, tuple[str, str, bool]] = {
    "audiogen": ("audiogen", "events", False), "diffsound": ("diffsound", "events", True),
    "diffsound_ar": ("diffsound_ar", "events", False), "n2m_generator": ("noise2music", "music", True),
    "n2m_cascader": ("noise2music", "music", True),
}


def _load_shipped(key: str) -> Any:
    """The shipped pipeline of ``key`` (the models the cards and ``course_lib.compare`` measure), on the CPU."""
    from course_lib.pipelines import AudioGenPipeline, DiffsoundPipeline, Noise2MusicPipeline

    if key == "audiogen":
        return AudioGenPipeline.from_pretrained()
    if key == "diffsound":
        return DiffsoundPipeline.from_pretrained()
    if key == "diffsound_ar":
        return DiffsoundPipeline.from_pretrained(decoder="diffsound_ar_course")
    if key == "noise2music":
        return Noise2MusicPipeline.from_pretrained()
    raise PlaygroundError(f"unknown system {key!r}; choose one of {[*SYSTEMS, 'run']}")


# ==========================================================================================================
# What the prompt asks for
# ==========================================================================================================

_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
            "ten": 10, "eleven": 11, "twelve": 12}
_COUNT_PHRASES = {"once": 1, "twice": 2, "thrice": 3, "one time": 1, "a single time": 1, "just once": 1,
                  "a single": 1, "just one": 1, "a pair of": 2}
_STOP = {"a", "an", "the", "of", "is", "are", "being", "goes", "go", "going", "it", "its", "it's", "on", "at", "in",
         "to", "and", "with", "from", "by", "for", "someone", "somebody", "person", "sound", "sounds", "noise",
         "weather", "some", "s", "up", "down", "out", "off", "along"}


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("’", "'"))


def _match(tokens: list[str], phrase: list[str], used: set[int]) -> int | None:
    """Position of the first occurrence of ``phrase`` in ``tokens`` that touches no ``used`` position."""
    n = len(phrase)
    for i in range(len(tokens) - n + 1):
        if tokens[i:i + n] == phrase and not used.intersection(range(i, i + n)):
            return i
    return None


def _first(tokens: list[str], phrases: dict[str, Any], used: set[int]) -> tuple[Any, int] | None:
    """The value of the phrase of ``phrases`` found earliest in ``tokens`` (longer phrases first at one position);
    its positions are added to ``used``. None when none is found."""
    best: tuple[int, int, Any, int] | None = None  # (position, -length, value, length)
    for phrase, value in phrases.items():
        words = _tokens(phrase)
        at = _match(tokens, words, used) if words else None
        if at is not None and (best is None or (at, -len(words)) < best[:2]):
            best = (at, -len(words), value, len(words))
    if best is None:
        return None
    used.update(range(best[0], best[0] + best[3]))
    return best[2], best[0]


def _heads(phrase: str) -> list[str]:
    """The nouns that name a sound in a vocabulary phrase: its last word, and the word before 'of' ("strikes of a
    bell": strikes, bell), leaving out words that name no class (someone, sound, noise...)."""
    words = _tokens(phrase)
    found = [words[-1]] if words else []
    found += [words[i - 1] for i, w in enumerate(words) if w == "of" and i > 0]
    return [w for w in found if w not in _STOP]


@functools.lru_cache(maxsize=1)
def _event_lexicon() -> dict[str, dict[str, int]]:
    """word -> {class: weight}: the class's own name 4, a noun that names it 3 (names, recipes, uncounted phrases),
    an event noun 2 (bark, chime, step), a verb 1 (rings, barks), from :data:`captions_v2.EVENT_WORDS` plus
    version 1's caption nouns."""
    from course_lib.data import captions_v2, sound_events

    lexicon: dict[str, dict[str, int]] = {}

    def add(word: str, cls: str, weight: int) -> None:
        if word and word not in _STOP:
            lexicon.setdefault(word, {})
            lexicon[word][cls] = max(lexicon[word].get(cls, 0), weight)

    for cls in sound_events.EVENT_CLASSES:
        ew = captions_v2.EVENT_WORDS[cls]
        add(cls, cls, 4)
        nouns = [*ew.names, *ew.plural, *(p for ps in ew.by_recipe.values() for p in ps), *ew.uncounted, *ew.weather]
        for phrase in nouns:
            for head in _heads(phrase):
                add(head, cls, 3)
        for one, many in ew.events:
            for head in _heads(one) + _heads(many):
                add(head, cls, 2)
        for forms in ew.verbs:
            for form in forms:
                words = [w for w in _tokens(form) if w not in _STOP]
                if words:
                    add(words[0], cls, 1)
    # version 1's caption nouns and a few everyday words the tables above leave out
    extra = {"rain": ("rainy", "raining", "rainfall", "drizzle", "downpour", "shower"),
             "wind": ("windy", "gust", "gusts", "breeze", "gale"), "engine": ("motor", "idle", "idling"),
             "birds": ("bird", "note", "notes", "birdsong"), "clock": ("tick", "ticks", "ticking", "tock"),
             "horn": ("honk", "honks", "honking"), "knocking": ("knock", "knocks", "door"),
             "dog": ("bark", "barks", "barking", "woof", "puppy"), "footsteps": ("footstep", "step", "steps"),
             "beeps": ("beep", "beeping", "bleep"), "siren": ("sirens", "wail", "wails", "wailing")}
    for cls, words in extra.items():
        for word in words:
            add(word, cls, 2)
    return lexicon


@functools.lru_cache(maxsize=1)
def _event_phrases() -> tuple[dict[str, str], dict[str, str]]:
    """(background phrase -> background class, pitch phrase -> band) from both caption grammars."""
    from course_lib.data import captions_v2, sound_events

    background = {p.strip(): cls for cls, ps in sound_events._BG_PHRASES.items() for p in ps}
    background.update({p: cls for cls, ps in captions_v2.BACKGROUND.items() for p in ps})
    background.update({p: cls for cls, ps in captions_v2.BACKGROUND_TAG.items() for p in ps if " " in p})
    pitch = {p: band for band, ps in sound_events._PITCH_WORDS.items() for p in ps}
    for table in (captions_v2.PITCH_ADJ, captions_v2.PITCH_TAIL):
        pitch.update({p: band for band, ps in table.items() for p in ps})
    pitch.update({"medium pitch": "mid", "mid pitch": "mid", "high pitch": "high", "low pitch": "low"})
    return background, pitch


def _count(tokens: list[str], used: set[int]) -> int | None:
    """The number of events a prompt asks for: 'once', 'twice', 'three times', '3 barks', 'a single'..."""
    phrases: dict[str, int] = dict(_COUNT_PHRASES)
    for word, n in _NUMBERS.items():
        phrases[f"{word} times"] = n
    for n in range(1, 13):
        phrases[f"{n} times"] = n
    found = _first(tokens, phrases, used)
    bare = None
    for i, tok in enumerate(tokens):  # a bare number: "two beeps", "3 knocks" (not "120 bpm")
        if i in used or (i + 1 < len(tokens) and tokens[i + 1] in ("bpm", "beats", "hz", "seconds", "s", "khz")):
            continue
        n = _NUMBERS.get(tok, int(tok) if tok.isdigit() and 0 < int(tok) <= 12 else None)
        if n is not None:
            bare = (n, i)
            break
    candidates = [c for c in (found, bare) if c is not None]
    return min(candidates, key=lambda c: c[1])[0] if candidates else None


def _event_class(tokens: list[str], skip: set[int]) -> str | None:
    lexicon = _event_lexicon()
    scores: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if i in skip:
            continue
        entry = lexicon.get(tok)
        if entry is None and tok.endswith("s"):  # a plural the tables do not list ("sirens", "clocks")
            entry = lexicon.get(tok[:-1]) or (lexicon.get(tok[:-2]) if tok.endswith("es") else None)
        for cls, weight in (entry or {}).items():
            scores[cls] = scores.get(cls, 0) + weight
            first.setdefault(cls, i)
    if not scores:
        return None
    return min(scores, key=lambda c: (-scores[c], first[c]))


_KEY_NAMES = {"C": "C", "C#": "C#", "Db": "C#", "D": "D", "D#": "Eb", "Eb": "Eb", "E": "E", "Fb": "E", "E#": "F",
              "F": "F", "F#": "F#", "Gb": "F#", "G": "G", "G#": "Ab", "Ab": "Ab", "A": "A", "A#": "Bb", "Bb": "Bb",
              "B": "B", "Cb": "B", "B#": "C"}
_ACCIDENTAL = r"(?:\s?(?:#|♯|sharp)|\s?(?:♭|flat)|b(?=[\s-]*(?:major|minor)\b))?"
_KEY_MODE = re.compile(r"(?<![\w'])([A-Ga-g])(" + _ACCIDENTAL + r")[\s-]*(major|minor)\b", re.IGNORECASE)
_KEY_OF = re.compile(r"\bkey of ([A-Ga-g])((?:\s?(?:#|♯|sharp)|\s?(?:♭|flat)|b)?)(?![\w#♯♭])", re.IGNORECASE)
_MODE = re.compile(r"\b(major|minor)\b", re.IGNORECASE)
_BPM = re.compile(r"(\d+(?:\.\d+)?)\s*-?\s*(?:bpm|beats per minute|beats a minute)\b", re.IGNORECASE)


def _key_name(letter: str, accidental: str) -> str:
    acc = accidental.strip().lower()
    sign = "#" if acc in ("#", "♯", "sharp") else "b" if acc in ("b", "♭", "flat") else ""
    return _KEY_NAMES[letter.upper() + sign]


@functools.lru_cache(maxsize=1)
def _instrument_phrases() -> dict[str, str]:
    """phrase -> instrument of :data:`course_lib.data.music.INSTRUMENTS` (the instrument probe's classes): version 1's
    caption words, version 2's family words and the General MIDI program words of those families."""
    from course_lib.data import captions_v2, music, music_sf2

    phrases: dict[str, str] = {}
    for inst in music.INSTRUMENTS:
        words = [*music._INSTRUMENT_WORDS[inst], *captions_v2.INSTRUMENT_WORDS[inst]]
        words += [w for p in music_sf2.GM_PROGRAMS[inst] for w in captions_v2.PROGRAM_WORDS.get(p, ())]
        for word in words:
            phrases.setdefault(word.lower(), inst)
    return phrases


def parse_prompt(prompt: str, domain: str) -> dict[str, Any]:
    """What a free-text ``prompt`` asks for, in the attributes the probes check; ``None`` where it says nothing.

    ``domain="events"``: ``class`` (one of :data:`course_lib.data.sound_events.EVENT_CLASSES`, the class whose
    nouns and verbs the prompt uses most, background phrases such as "while rain falls" left out), ``count``
    ("twice", "three times", "two barks", "a single", "3 knocks") and ``pitch_band`` ("low", "deep",
    "mid-pitched", "high-pitched", "shrill", "at a high pitch"). ``domain="music"``: ``instrument`` (one of
    :data:`course_lib.data.music.INSTRUMENTS`, by its caption words: "bass guitar" is a bass, "keys" a piano),
    ``tempo_bpm`` ("120 bpm", "90 beats per minute"), ``key`` (a name of :data:`course_lib.data.music.KEYS`: "in D
    minor", "E flat major", "key of G"; flats and sharps spelled either way; "a minor" is A minor only after
    "in") and ``mode`` ("major"/"minor", also alone: "a minor-key melody"). Words are the course's own
    (:mod:`course_lib.data.captions_v2` and version 1's caption tables), so every course caption reads back as
    the attributes it was written from; other phrasings may be missed, and then show "—".
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if domain == "events":
        tokens = _tokens(prompt)
        background, pitch = _event_phrases()
        bg_used: set[int] = set()
        while _first(tokens, background, bg_used) is not None:
            pass
        used = set(bg_used)
        band = _first(tokens, pitch, used)
        count = _count(tokens, used)
        cls = _event_class(tokens, used) or _event_class(tokens, used - bg_used)
        return {"class": cls, "count": count, "pitch_band": band[0] if band else None}
    if domain == "music":
        tokens = _tokens(prompt)
        inst = _first(tokens, _instrument_phrases(), set())
        bpm_match = _BPM.search(prompt)
        bpm = float(bpm_match.group(1)) if bpm_match else None
        key = mode = None
        for m in _KEY_MODE.finditer(prompt):
            before = prompt[:m.start()].rstrip().lower()
            if m.group(1) == "a" and not m.group(2) and not before.endswith(("in", "of", "key")):
                continue  # "a minor melody": the article, not A minor
            key, mode = _key_name(m.group(1), m.group(2)), m.group(3).lower()
            break
        if key is None:
            m = _KEY_OF.search(prompt)
            if m is not None:
                key = _key_name(m.group(1), m.group(2))
        if mode is None:
            m = _MODE.search(prompt)
            mode = m.group(1).lower() if m else None
        return {"instrument": inst[0] if inst else None,
                "tempo_bpm": None if bpm is None else (int(bpm) if bpm.is_integer() else bpm),
                "key": key, "mode": mode}
    raise ValueError(f"domain must be 'events' or 'music', got {domain!r}")


# ==========================================================================================================
# What the probes hear
# ==========================================================================================================


def _probe(domain: str):
    """The cards' probe of ``domain``, trained once per process (about 5 s on one thread)."""
    from course_lib.pretrained.measures import event_probe, instrument_probe

    if domain == "events":
        return event_probe(PROBE_SECONDS["events"], PROBE_RATE)
    return instrument_probe(PROBE_SECONDS["music"], PROBE_RATE)


def listen(audio: Any, sample_rate: int, asked: dict[str, Any], domain: str) -> tuple[dict[str, Any], dict[str, bool]]:
    """What the course's probes hear in one clip ``audio`` ``(T,)`` at ``sample_rate`` Hz, and whether it matches
    what the prompt ``asked`` (:func:`parse_prompt`): ``(heard, checks)``.

    Sound events: ``heard`` holds ``class`` and ``class_probability`` (the generator cards' event classifier,
    :func:`~course_lib.pretrained.measures.event_probe`), ``count`` (:func:`~course_lib.data.probes.count_events`),
    ``pitch_hz`` and ``pitch_band`` (:func:`~course_lib.data.probes.estimate_pitch`; None when no pitch is found);
    ``checks`` is :func:`course_lib.data.probes.adherence` of the clip against the stated attributes, with that
    classifier: the generator cards' own check. Music: ``heard`` holds ``tempo_bpm``
    (:func:`~course_lib.data.probes.estimate_tempo`; NaN when no beat is found), ``mode`` (on the prompt's key, None
    without one) and ``instrument`` / ``instrument_probability`` (the Noise2Music card's instrument classifier);
    ``checks`` is :func:`course_lib.data.music_probes.music_adherence` (tempo within ±8%, mode on the prompt's
    tonic, instrument). An attribute the prompt does not state is not checked.
    """
    from course_lib.data.probes import (
        _mono,
        adherence,
        count_events,
        estimate_pitch,
        estimate_tempo,
        pitch_band,
    )

    x = _mono(audio, sample_rate)
    stated = {k: v for k, v in asked.items() if v is not None}
    classifier = _probe(domain)
    proba = classifier.predict_proba(x.astype(np.float32), sample_rate)[0]
    best = int(proba.argmax())
    name = classifier.config.classes[best]
    if domain == "events":
        hz = estimate_pitch(x, sample_rate)
        heard = {"class": name, "class_probability": round(float(proba[best]), 4),
                 "count": count_events(x, sample_rate), "pitch_hz": None if hz is None else round(hz, 1),
                 "pitch_band": None if hz is None else pitch_band(hz)}
        checks = adherence(x, sample_rate, {k: stated[k] for k in ("class", "count", "pitch_band") if k in stated},
                           classifier)
        return heard, {k: bool(v) for k, v in checks.items()}
    from course_lib.data.music_probes import estimate_mode, music_adherence

    bpm = estimate_tempo(x, sample_rate)
    heard = {"tempo_bpm": round(bpm, 1) if math.isfinite(bpm) else float("nan"),
             "mode": estimate_mode(x, sample_rate, stated["key"]) if "key" in stated else None,
             "instrument": name, "instrument_probability": round(float(proba[best]), 4)}
    checks = music_adherence(x, sample_rate, stated, classifier)
    return heard, {k: bool(v) for k, v in checks.items() if k in ("tempo", "mode", "instrument")}


# ==========================================================================================================
# Generating one clip
# ==========================================================================================================


@dataclass
class GenerationResult:
    """One generated clip and everything the playground shows about it.

    ``audio``: the pipeline's output, ``(T,)`` float32 in [-1, 1] at ``sample_rate`` Hz, at its own level (the
    players are loudness-matched, this is not). ``generation_seconds``: wall-clock time of the pipeline call,
    text in to audio out (the probes and drawing not included). ``prompt_issues``: ``(kind, message)`` of each
    problem the text encoder has with the prompt (:func:`course_lib.text.prompts.prompt_report`: ``"empty"``,
    ``"truncated"``, ``"unknown_words"``). ``asked``/``heard``/``checks``: :func:`parse_prompt` and
    :func:`listen`. ``run_folder``: the training run, for a model you trained.
    """

    system: str
    label: str
    domain: str
    prompt: str
    seconds: float
    cfg_scale: float
    steps: int | None
    seed: int
    audio: np.ndarray
    sample_rate: int
    generation_seconds: float
    prompt_issues: list[tuple[str, str]] = field(default_factory=list)
    asked: dict[str, Any] = field(default_factory=dict)
    heard: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    run_folder: str | None = None
    created: str = ""
    notes: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """Everything but the audio, JSON-serialisable (what :func:`save_clip` writes beside the WAV)."""
        heard = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.heard.items()}
        return {"prompt": self.prompt, "system": self.system, "system_label": self.label, "domain": self.domain,
                "run_folder": self.run_folder, "seconds": self.seconds, "cfg_scale": self.cfg_scale,
                "steps": self.steps, "seed": self.seed, "sample_rate": self.sample_rate,
                "generation_seconds": round(self.generation_seconds, 4), "created": self.created,
                "prompt_issues": [{"kind": k, "message": m} for k, m in self.prompt_issues],
                "asked": self.asked, "heard": heard, "checks": self.checks, "notes": self.notes,
                "threads": torch.get_num_threads()}


def seconds_limits(pipeline: Any, system: System) -> tuple[float, float]:
    """The shortest and longest clip ``system`` may make, in seconds: the probes' minimum (0.5 s for sound
    events, 1 s for music) and the pipeline's own ``max_seconds`` (the LM's context, the Diffsound grid's
    columns), or :data:`N2M_MAX_SECONDS` for Noise2Music, whose convolutional U-Net has no limit of its own."""
    longest = getattr(pipeline, "max_seconds", None)
    return MIN_SECONDS[system.domain], float(longest) if longest is not None else N2M_MAX_SECONDS


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise PlaygroundError(f"{name} must be a number, got {value!r}")
    return float(value)


def _check_settings(pipeline: Any, system: System, prompt: Any, seconds: Any, cfg_scale: Any, steps: Any,
                    seed: Any) -> tuple[str, float, float, int | None, int]:
    """Validate the settings before any model runs; a :class:`PlaygroundError` says what to change."""
    if not isinstance(prompt, str):
        raise PlaygroundError(f"the prompt must be text, got {type(prompt).__name__}")
    seconds = _number(seconds, "seconds")
    shortest, longest = seconds_limits(pipeline, system)
    name = system.label.split(":")[0]
    if seconds <= 0:
        raise PlaygroundError(f"seconds must be more than 0 (you asked for {seconds:g}): try {min(2.0, longest):g}")
    if seconds < shortest:
        raise PlaygroundError(f"{seconds:g} s is too short for the probes to hear anything: at least {shortest:g} s")
    if seconds > longest + 1e-9:
        why = ("its model has a fixed context" if hasattr(pipeline, "max_seconds") else
               "longer clips take minutes on a CPU")
        raise PlaygroundError(f"{name} makes at most {longest:.3g} s ({why}); you asked for {seconds:g} s")
    cfg_scale = _number(cfg_scale, "the guidance scale")
    if not 0.0 <= cfg_scale <= MAX_CFG:
        raise PlaygroundError(f"the guidance scale must be between 0 and {MAX_CFG:g} (1 = no guidance, 3 = the "
                              f"course's default), got {cfg_scale:g}")
    if system.has_steps:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise PlaygroundError(f"steps must be a whole number, got {steps!r}")
        most = pipeline.decoder.config.num_steps if system.kind == "diffsound" else MAX_STEPS
        if not 1 <= int(steps) <= most:
            raise PlaygroundError(f"steps must be between 1 and {most} for {name} (you asked for {steps}); fewer "
                                  f"steps are faster and rougher")
        steps = int(steps)
    else:
        steps = None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise PlaygroundError(f"the seed must be a whole number from 0 up, got {seed!r}")
    return prompt, seconds, cfg_scale, steps, int(seed)


def _call(pipeline: Any, kind: str, prompt: str, seconds: float, cfg_scale: float, steps: int | None,
          seed: int) -> torch.Tensor:
    """The pipeline's public ``generate`` with the arguments its kind takes: ``(1, 1, T)`` audio."""
    if kind in ("audiogen", "diffsound_ar"):
        return pipeline.generate([prompt], seconds=seconds, cfg_scale=cfg_scale, seed=seed)
    if kind == "diffsound":
        return pipeline.generate([prompt], seconds=seconds, steps=steps, cfg_scale=cfg_scale, seed=seed)
    if kind == "noise2music":  # one steps value for both stages; the guidance is the generator's (the cascader's own)
        return pipeline.generate([prompt], seconds=seconds, steps=steps, casc_steps=steps, cfg_scale=cfg_scale,
                                 seed=seed)
    raise PlaygroundError(f"unknown pipeline kind {kind!r}")


def generate_clip(pipeline: Any, system: System, prompt: str, seconds: float, cfg_scale: float = 3.0,
                  steps: int | None = None, seed: int = 0, run_folder: str | None = None,
                  progress: Callable[[int, str], None] | None = None) -> GenerationResult:
    """Generate one clip of ``seconds`` s from ``prompt`` with ``pipeline`` (a :mod:`course_lib.pipelines`
    pipeline of ``system.kind``) and measure it: a :class:`GenerationResult`.

    The settings are checked first (:class:`PlaygroundError` with a plain message: seconds out of
    :func:`seconds_limits`, steps below 1 or above the model's, a guidance scale outside [0, 20], a negative seed);
    an empty prompt is allowed (it generates unconditionally) and reported with the prompt's other problems
    (:func:`course_lib.text.prompts.prompt_report`). The pipeline's own :class:`~course_lib.text.PromptWarning`
    is caught (the result carries the same findings), then the probes listen (:func:`listen`). ``steps`` is
    ignored by systems without steps; for Noise2Music it is each stage's DDIM steps and ``cfg_scale`` the
    generator's guidance (the cascader keeps its own). ``progress(stage, text)``, if given, is called before
    each stage (1 generating, 2 listening, 3 done).
    """
    from course_lib.text.prompts import PromptWarning, prompt_report

    prompt, seconds, cfg_scale, steps, seed = _check_settings(pipeline, system, prompt, seconds, cfg_scale, steps,
                                                              seed)
    report = progress or (lambda stage, text: None)
    issues = [(issue.kind, issue.message) for issue in prompt_report(pipeline.text_encoder, [prompt])]
    report(1, f"generating {seconds:g} s with {system.label.split(':')[0]}…")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        with torch.no_grad():
            out = _call(pipeline, system.kind, prompt, seconds, cfg_scale, steps, seed)
        elapsed = time.perf_counter() - start
    notes += [str(w.message) for w in caught if not issubclass(w.category, PromptWarning)]
    audio = out.detach().float().cpu().reshape(-1).numpy()
    if not np.all(np.isfinite(audio)):
        raise PlaygroundError("the model produced NaN or infinite samples; try another seed or fewer steps")
    report(2, "listening with the probes (the first time, they train: about 5 s)…")
    asked = parse_prompt(prompt, system.domain)
    heard, checks = listen(audio, int(pipeline.sample_rate), asked, system.domain)
    report(3, "done")
    return GenerationResult(system=system.key, label=system.label, domain=system.domain, prompt=prompt,
                            seconds=seconds, cfg_scale=cfg_scale, steps=steps, seed=seed, audio=audio,
                            sample_rate=int(pipeline.sample_rate), generation_seconds=elapsed, prompt_issues=issues,
                            asked=asked, heard=heard, checks=checks, run_folder=run_folder,
                            created=_dt.datetime.now().isoformat(timespec="seconds"), notes=notes)


# ==========================================================================================================
# Saving
# ==========================================================================================================


def _slug(text: str, width: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:width].rstrip("-")
    return slug or "unconditional"


def save_clip(result: GenerationResult, folder: str | os.PathLike = "generated") -> tuple[Path, Path]:
    """Write ``result`` into ``folder`` (created if needed): the audio as a 16-bit WAV (soundfile) and its prompt and
    settings (:meth:`GenerationResult.settings`) as JSON beside it, both named
    ``<date>-<time>_<system>_<prompt>`` with ``_2``, ``_3``... added if that name is taken, so nothing is ever
    overwritten. Returns ``(wav_path, json_path)``; a :class:`PlaygroundError` if the folder cannot be used."""
    import soundfile as sf

    if not str(folder).strip():
        raise PlaygroundError("type a folder to save into, e.g. generated")
    root = Path(folder).expanduser()
    if root.exists() and not root.is_dir():
        raise PlaygroundError(f"{root} is a file, not a folder: type a folder to save into")
    try:
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{result.system}_{_slug(result.prompt)}"
        for n in range(1, 10_000):
            name = stem if n == 1 else f"{stem}_{n}"
            wav, meta = root / f"{name}.wav", root / f"{name}.json"
            if wav.exists() or meta.exists():
                continue
            try:
                with meta.open("x", encoding="utf-8") as f:  # claims the name: another save cannot take it
                    json.dump({**result.settings(), "audio_file": wav.name}, f, indent=2, ensure_ascii=False)
                    f.write("\n")
            except FileExistsError:
                continue
            sf.write(str(wav), np.clip(result.audio, -1.0, 1.0), result.sample_rate, subtype="PCM_16")
            return wav, meta
    except OSError as err:
        raise PlaygroundError(f"cannot save into {root}: {err.strerror or err}") from None
    raise PlaygroundError(f"{root} already holds 9999 clips named {stem}; choose another folder")


# ==========================================================================================================
# A model you trained
# ==========================================================================================================


def load_run(run_folder: str | os.PathLike, which: str = "last") -> tuple[Any, System]:
    """A pipeline around the generator a training run folder holds, and its :class:`System`.

    ``run_folder`` is a ``train.run_dir`` of ``python -m course_lib.train`` (its ``checkpoints/``); ``which``:
    ``"last"``, ``"best"`` or ``"ema"`` (:func:`course_lib.train.load_from_run`). The family stored in the
    checkpoint picks the pipeline, and the run's own config its frozen tools (what it was trained on): an
    ``audiogen`` LM gets the run's codec (``tokenizer.codec``) and text encoder in an
    :class:`~course_lib.pipelines.AudioGenPipeline`; a ``diffsound`` or ``diffsound_ar`` decoder the run's mel
    VQ-VAE, Griffin-Lim and its text encoder in a :class:`~course_lib.pipelines.DiffsoundPipeline`; an
    ``n2m_generator`` the shipped cascader and an ``n2m_cascader`` the shipped generator in a
    :class:`~course_lib.pipelines.Noise2MusicPipeline`. Anything else (a missing folder, no checkpoint, a codec
    or vocoder run) raises :class:`PlaygroundError` saying so.
    """
    text = str(run_folder).strip() if isinstance(run_folder, (str, os.PathLike)) else ""
    if not text:
        raise PlaygroundError("type the folder of a training run (its train.run_dir, e.g. runs/audiogen_tiny)")
    path = Path(text).expanduser()
    if not path.exists():
        raise PlaygroundError(f"there is no folder {path} (relative paths start in {Path.cwd()}): type the "
                              f"train.run_dir of a run of python -m course_lib.train")
    if not path.is_dir():
        raise PlaygroundError(f"{path} is a file; type the run's folder (the train.run_dir that holds checkpoints/)")
    from course_lib.pipelines.diffsound import GRIFFIN_LIM, DiffsoundPipeline, load_vocoder
    from course_lib.pipelines.noise2music import Noise2MusicPipeline, load_stage
    from course_lib.train import get_family, load_from_run
    from course_lib.train.checkpoint import read_checkpoint_meta, resolve_checkpoint
    from course_lib.train.errors import TrainingError

    try:
        ckpt, _ = resolve_checkpoint(path, which)
        meta = read_checkpoint_meta(ckpt)
    except (TrainingError, ValueError, OSError) as err:
        raise PlaygroundError(f"{path} is not a training run the playground can read: {err}") from None
    family_name = meta["family"]
    if family_name not in RUN_FAMILIES:
        raise PlaygroundError(f"{path} trained a {family_name!r} model, not a text-to-audio generator; the "
                              f"playground plays runs of {', '.join(RUN_FAMILIES)}")
    kind, domain, has_steps = RUN_FAMILIES[family_name]
    try:
        family = get_family(family_name)
        config = family.config_from_dict(meta["config"], validate=False)
        model = load_from_run(path, which=which)
        if family_name == "audiogen":
            from course_lib.pipelines import AudioGenPipeline

            pipe = AudioGenPipeline(model, family.codec(config), family.text_encoder(config))
        elif kind in ("diffsound", "diffsound_ar"):
            vqvae = family.vqvae(config)
            pipe = DiffsoundPipeline(model, vqvae, load_vocoder(GRIFFIN_LIM, vqvae.config.mel_config()),
                                     family.text_encoder(config))
        elif family_name == "n2m_generator":
            pipe = Noise2MusicPipeline(model, load_stage("n2m_cascader_course"), family.text_encoder(config))
        else:
            pipe = Noise2MusicPipeline(load_stage("n2m_generator_course"), model, family.text_encoder(config))
    except (TrainingError, ValueError, TypeError, OSError) as err:
        raise PlaygroundError(f"cannot build a pipeline from {path}: {err}") from None
    partner = {"n2m_generator": " + shipped cascader", "n2m_cascader": " (shipped generator +)"}.get(family_name, "")
    steps = SYSTEMS["diffsound" if kind == "diffsound" else "noise2music"].default_steps if has_steps else None
    label = f"your {family_name}{partner}: run {path.name}, step {meta.get('step', '?')} ({which})"
    return pipe, System("run", label, domain, kind, has_steps, steps)


def _peek_run_family(run_folder: str) -> str | None:
    """The family of a run folder's newest checkpoint (its config.json only), or None; never raises."""
    try:
        path = Path(run_folder).expanduser()
        if not str(run_folder).strip() or not path.is_dir():
            return None
        from course_lib.train.checkpoint import latest_checkpoint, read_checkpoint_meta

        ckpt = latest_checkpoint(path)
        return None if ckpt is None else read_checkpoint_meta(ckpt)["family"]
    except Exception:  # noqa: BLE001 - a peek for the steps field only
        return None


# ==========================================================================================================
# The widget
# ==========================================================================================================

_ATTRIBUTE_NAMES = {"class": "class", "count": "count", "pitch_band": "pitch band", "tempo": "tempo",
                    "mode": "key / mode", "instrument": "instrument"}
_ISSUE_TITLES = {"empty": "Empty prompt", "truncated": "Prompt cut short", "unknown_words": "Unknown words"}


def _fmt_asked(result: GenerationResult, attribute: str) -> str:
    a = result.asked
    if attribute == "tempo":
        return NOT_STATED if a.get("tempo_bpm") is None else f"{a['tempo_bpm']:g} bpm"
    if attribute == "mode":
        if a.get("key") and a.get("mode"):
            return f"{a['key']} {a['mode']}"
        if a.get("mode"):
            return f"{a['mode']} (no key: the probe needs the tonic)"
        return NOT_STATED if not a.get("key") else f"key of {a['key']} (no mode)"
    value = a.get(attribute)
    return NOT_STATED if value is None else str(value)


def _fmt_heard(result: GenerationResult, attribute: str) -> str:
    h = result.heard
    if attribute == "class":
        return f"{h['class']} (p = {h['class_probability']:.2f})"
    if attribute == "count":
        return f"{h['count']} event{'s' * (h['count'] != 1)}"
    if attribute == "pitch_band":
        return "no pitch found" if h["pitch_hz"] is None else f"{h['pitch_band']} ({h['pitch_hz']:,.0f} Hz)"
    if attribute == "tempo":
        return "no beat found" if not math.isfinite(h["tempo_bpm"]) else f"{h['tempo_bpm']:.0f} bpm"
    if attribute == "mode":
        if h.get("mode") is None:
            return NOT_STATED if not result.asked.get("key") else "undecided"
        return f"{h['mode']} on {result.asked['key']}"
    return f"{h['instrument']} (p = {h['instrument_probability']:.2f})"


def readout_rows(result: GenerationResult) -> list[tuple[str, str, str, str]]:
    """The probe readout as rows ``(attribute, asked, heard, mark)``; mark ``"✓"``, ``"✗"`` or ``"—"`` (not
    asked, so not checked)."""
    attributes = ("class", "count", "pitch_band") if result.domain == "events" else ("tempo", "mode", "instrument")
    rows = []
    for attribute in attributes:
        mark = NOT_STATED if attribute not in result.checks else "✓" if result.checks[attribute] else "✗"
        rows.append((_ATTRIBUTE_NAMES[attribute], _fmt_asked(result, attribute), _fmt_heard(result, attribute), mark))
    return rows


def _readout_html(result: GenerationResult) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(asked)}</td><td>{html.escape(heard)}</td>"
        f"<td style='text-align:center;font-weight:bold;color:{ {'✓': 'green', '✗': '#c00'}.get(mark, '#888') }'>"
        f"{mark}</td></tr>" for a, asked, heard, mark in readout_rows(result))
    probes = ("the generator cards' event classifier, onset counter and pitch tracker" if result.domain == "events"
              else "the Noise2Music card's instrument classifier, tempo and mode probes")
    return ("<table style='border-collapse:collapse' border='1' cellpadding='4'>"
            "<tr><th>attribute</th><th>the prompt asked</th><th>the probes hear</th><th></th></tr>"
            f"{cells}</table><div style='font-size:12px;color:#666'>Heard by {probes} "
            f"({NOT_STATED}: the prompt does not say, so it is not checked).</div>")


def _issues_html(issues: list[tuple[str, str]], notes: list[str] = ()) -> str:
    items = []
    for kind, message in issues:
        title = _ISSUE_TITLES.get(kind, kind)
        if message.lower().startswith(title.lower() + ": "):  # "empty prompt: generating ..." says it already
            message = message[len(title) + 2:]
        items.append(f"<li><b>{html.escape(title)}:</b> {html.escape(message)}</li>")
    items += [f"<li>{html.escape(note)}</li>" for note in notes]
    if not items:
        return ""
    return ("<div style='background:#fff6e0;border-left:4px solid #e0a000;padding:4px 8px'>"
            f"⚠ What the text encoder makes of this prompt:<ul style='margin:2px 0'>{''.join(items)}</ul></div>")


def _spectrogram_png(result: GenerationResult) -> bytes:
    """A mel spectrogram (dB re the clip's maximum) of the clip as PNG bytes."""
    from matplotlib.figure import Figure

    from course_lib import audio as A

    config = A.MelConfig(sample_rate=result.sample_rate, n_fft=1024 if result.sample_rate >= 16_000 else 256,
                         hop_length=256 if result.sample_rate >= 16_000 else 64,
                         n_mels=80 if result.sample_rate >= 16_000 else 40)
    spec = A.amplitude_to_db(A.mel_spectrogram(torch.from_numpy(result.audio), config), ref="max")
    fig = Figure(figsize=(8, 2.6), layout="constrained")
    ax = fig.subplots()
    title = (result.prompt or "(empty prompt)")[:80].replace("$", r"\$")  # a $ would start matplotlib's mathtext
    A.plot_spectrogram(spec, ax=ax, mel_config=config, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


class Playground:
    """The playground panel (module docstring): prompt, system, seconds, guidance, steps, seed; Generate, Save;
    a progress bar, a status line, the prompt's warnings, a player, the generation time, the probes' readout, a
    spectrogram, and the history of the last ``history`` clips.

    Display it as a cell's last expression (or ``display(pg)``). Every control is an attribute, so a test or a
    notebook can drive it: set ``pg.prompt.value``, ``pg.system.value`` (a key of :data:`SYSTEMS`, or ``"run"``
    with ``pg.run_folder.value``), ``pg.seconds``, ``pg.cfg_scale``, ``pg.steps``, ``pg.seed``, then
    ``pg.generate_button.click()``; ``pg.result`` is the last :class:`GenerationResult`, ``pg.message`` the status
    line as plain text (``pg.status.value`` as shown). :meth:`generate` and :meth:`save` do the same from Python.
    Pipelines are loaded on first use and cached per system (a run folder per folder and checkpoint);
    ``pipelines`` may hand in ready ones by key.
    """

    def __init__(self, save_folder: str | os.PathLike = "generated", history: int = HISTORY,
                 pipelines: dict[str, Any] | None = None, run_checkpoint: str = "last") -> None:
        import ipywidgets as w

        self._cache: dict[tuple, tuple[Any, System]] = {}
        for key, pipe in (pipelines or {}).items():
            if key not in SYSTEMS:
                raise ValueError(f"pipelines: unknown system {key!r}; systems: {list(SYSTEMS)}")
            self._cache[(key,)] = (pipe, SYSTEMS[key])
        self.run_checkpoint = run_checkpoint
        self.result: GenerationResult | None = None
        self.history: deque[GenerationResult] = deque(maxlen=max(1, int(history)))
        self.saved: list[tuple[Path, Path]] = []
        wide = w.Layout(width="95%")
        style = {"description_width": "initial"}
        self.prompt = w.Textarea(value="a dog barks twice", placeholder="describe a sound or a piece of music",
                                 description="Prompt", layout=w.Layout(width="95%", height="3.2em"), style=style)
        self.system = w.Dropdown(options=[(s.label, k) for k, s in SYSTEMS.items()] + [(RUN_LABEL, "run")],
                                 value="audiogen", description="System", layout=wide, style=style)
        self.run_folder = w.Text(value="", placeholder="runs/audiogen_tiny (a train.run_dir)",
                                 description="Run folder", layout=w.Layout(width="95%", display="none"), style=style)
        self._domain = "events"
        self.seconds = w.FloatText(value=DEFAULT_SECONDS["events"], step=0.5, description="Seconds",
                                   layout=w.Layout(width="150px"), style=style)
        self.cfg_scale = w.FloatText(value=3.0, step=0.5, description="Guidance (cfg)",
                                     layout=w.Layout(width="190px"), style=style)
        self.steps = w.IntText(value=1, description="Steps", layout=w.Layout(width="140px"), style=style)
        self.seed = w.IntText(value=0, description="Seed", layout=w.Layout(width="140px"), style=style)
        self.steps_note = w.HTML()
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=5, layout=w.Layout(width="200px"))
        self.progress_label = w.Label(value="")
        self.status = w.HTML(value="")
        self.message = ""  # the status line as plain text
        self.prompt_warnings = w.HTML(value="")
        self.player = w.VBox()
        self.timing = w.HTML(value="")
        self.readout = w.HTML(value="")
        self.spectrogram = w.Output()
        self.save_folder = w.Text(value=str(save_folder), description="Save into", style=style,
                                  layout=w.Layout(width="60%"))
        self.save_button = w.Button(description="Save WAV + JSON", icon="save", disabled=True)
        self.save_status = w.HTML(value="")
        self.history_box = w.VBox()
        self.generate_button.on_click(lambda _b: self._on_generate())
        self.save_button.on_click(lambda _b: self._on_save())
        self.system.observe(lambda _c: self._on_system(), names="value")
        self.run_folder.observe(lambda _c: self._on_system(), names="value")
        self._on_system()
        self.widget = w.VBox([
            w.HTML("<b>Playground</b>: type a prompt, pick a model, press Generate."),
            self.prompt, self.system, self.run_folder,
            w.HBox([self.seconds, self.cfg_scale, self.steps, self.seed]), self.steps_note,
            w.HBox([self.generate_button, self.progress, self.progress_label]),
            self.status, self.prompt_warnings, self.player, self.timing, self.readout, self.spectrogram,
            w.HBox([self.save_folder, self.save_button]), self.save_status,
            w.HTML(f"<b>History</b> (the last {self.history.maxlen}, loudness-matched, newest first)"),
            self.history_box,
        ])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- pure parts ----------------------------------------------------------------------------------------

    def pipeline(self, system: str, run_folder: str | None = None) -> tuple[Any, System]:
        """The pipeline of ``system`` (a key of :data:`SYSTEMS`, or ``"run"`` with ``run_folder``) and its
        :class:`System`, loaded on first use and cached (a run folder again after it gets a new checkpoint)."""
        if system == "run":
            path = Path(str(run_folder or "")).expanduser()
            stamp = None
            with_ckpt = path / "checkpoints"
            if with_ckpt.is_dir():
                stamp = max((p.stat().st_mtime_ns for p in with_ckpt.iterdir()), default=None)
            key: tuple = ("run", str(path.resolve()) if str(run_folder or "").strip() else "", self.run_checkpoint,
                          stamp)
            if key not in self._cache:
                self._cache[key] = load_run(run_folder or "", self.run_checkpoint)
            return self._cache[key]
        if system not in SYSTEMS:
            raise PlaygroundError(f"unknown system {system!r}; choose one of {[*SYSTEMS, 'run']}")
        if (system,) not in self._cache:
            self._cache[(system,)] = (_load_shipped(system), SYSTEMS[system])
        return self._cache[(system,)]

    def generate(self, prompt: str, system: str = "audiogen", seconds: float | None = None, cfg_scale: float = 3.0,
                 steps: int | None = None, seed: int = 0, run_folder: str | None = None,
                 progress: Callable[[int, str], None] | None = None) -> GenerationResult:
        """:func:`generate_clip` by system name (pipeline from :meth:`pipeline`): ``steps`` None is the system's
        default, ``seconds`` None the domain's (:data:`DEFAULT_SECONDS`: the cards' 2 s of sound events, 4 s of
        music; 1 s at quick size). The result becomes :attr:`result` and enters the history. Raises
        :class:`PlaygroundError` for settings it cannot use."""
        report = progress or (lambda stage, text: None)
        report(0, "loading the model (once per session)…")
        pipe, info = self.pipeline(system, run_folder)
        seconds = DEFAULT_SECONDS[info.domain] if seconds is None else seconds
        steps = info.default_steps if steps is None else steps
        result = generate_clip(pipe, info, prompt, seconds, cfg_scale, steps, seed,
                               run_folder=str(run_folder) if system == "run" else None, progress=report)
        self.result = result
        self.history.appendleft(result)
        return result

    def save(self, folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """:func:`save_clip` of the last result into ``folder`` (None: the Save-into field); returns the two paths."""
        if self.result is None:
            raise PlaygroundError("nothing to save yet: press Generate first")
        paths = save_clip(self.result, self.save_folder.value if folder is None else folder)
        self.saved.append(paths)
        return paths

    # ---- widget wiring -------------------------------------------------------------------------------------

    def _on_system(self) -> None:
        key = self.system.value
        self.run_folder.layout.display = "" if key == "run" else "none"
        family = None
        if key == "run":
            family = _peek_run_family(self.run_folder.value)
            has_steps = family is not None and RUN_FAMILIES.get(family, ("", "", False))[2]
            default = (SYSTEMS["diffsound" if family == "diffsound" else "noise2music"].default_steps
                       if has_steps else None)
            domain = RUN_FAMILIES[family][1] if family in RUN_FAMILIES else self._domain
        else:
            has_steps, default, domain = SYSTEMS[key].has_steps, SYSTEMS[key].default_steps, SYSTEMS[key].domain
        if domain != self._domain and self.seconds.value == DEFAULT_SECONDS[self._domain]:
            self.seconds.value = DEFAULT_SECONDS[domain]  # a length you typed stays; the default follows the domain
        self._domain = domain
        self.steps.disabled = not has_steps
        if has_steps:
            self.steps.value = default
            self.steps_note.value = ""
        else:
            self.steps_note.value = ("<span style='font-size:12px;color:#666'>Steps: not used; this model is a "
                                     "language model and takes one step per token.</span>"
                                     if key != "run" or family in RUN_FAMILIES else "")

    def _set_progress(self, stage: int, text: str) -> None:
        self.progress.value = min(stage + 1, self.progress.max)
        self.progress_label.value = text

    def _message(self, text: str, kind: str = "error") -> None:
        self.message = text
        colour = {"error": "#c00", "ok": "green", "info": "#555"}[kind]
        icon = {"error": "✗ ", "ok": "✓ ", "info": ""}[kind]
        self.status.value = f"<span style='color:{colour}'>{icon}{html.escape(text)}</span>"

    def _on_generate(self) -> None:
        self.generate_button.disabled = True
        self.progress.bar_style = "info"
        self.progress.value = 0
        self._message("working…", "info")
        try:
            result = self.generate(self.prompt.value, self.system.value, self.seconds.value, self.cfg_scale.value,
                                   self.steps.value if not self.steps.disabled else None, self.seed.value,
                                   self.run_folder.value, progress=self._set_progress)
            self._set_progress(4, "drawing…")
            self._show(result)
        except PlaygroundError as err:
            self.progress.bar_style = "danger"
            self.progress_label.value = ""
            self._message(str(err))
        except Exception as err:  # noqa: BLE001 - a message in the panel, never a traceback
            self.progress.bar_style = "danger"
            self.progress_label.value = ""
            self._message(f"generation failed: {type(err).__name__}: {err}")
        else:
            self.progress.value = self.progress.max
            self.progress.bar_style = "success"
            self.progress_label.value = f"done in {result.generation_seconds:.1f} s"
            self._message(f"{result.label.split(':')[0]}: {result.seconds:g} s from "
                          f"{result.prompt!r}" if result.prompt else
                          f"{result.label.split(':')[0]}: {result.seconds:g} s, unconditional (empty prompt)", "ok")
        finally:
            self.generate_button.disabled = False

    def _players(self) -> list[Any]:
        from course_lib.audio import NEAR_SILENT_PEAK_DB, listen_panel, loudness_matched, peak_db

        clips = {f"{i}": torch.from_numpy(r.audio) for i, r in enumerate(self.history)}
        # one level for all, lowered together so none clips; a near-silent clip keeps its level (and its label
        # says so: listen_panel flags it)
        matched = {**clips, **loudness_matched({k: v for k, v in clips.items() if peak_db(v) >= NEAR_SILENT_PEAK_DB})}
        panels = []
        for i, r in enumerate(self.history):
            label = f"{r.label.split(':')[0]} · {r.seconds:g} s · seed {r.seed} · {r.prompt or '(empty prompt)'}"
            panels.append(listen_panel({label[:90]: matched[str(i)]}, r.sample_rate, level="true"))
        return panels

    def _show(self, result: GenerationResult) -> None:
        self.prompt_warnings.value = _issues_html(result.prompt_issues, result.notes)
        panels = self._players()
        self.player.children = [panels[0]]
        self.history_box.children = panels
        per_second = result.generation_seconds / result.seconds
        self.timing.value = (f"Generated {result.seconds:g} s of audio in <b>{result.generation_seconds:.2f} s</b> "
                             f"({per_second:.2f} s per second of audio, {torch.get_num_threads()} thread(s), this "
                             f"machine); player loudness-matched, the saved WAV is at the model's own level.")
        self.readout.value = _readout_html(result)
        png = base64.b64encode(_spectrogram_png(result)).decode("ascii")
        self.spectrogram.outputs = ({"output_type": "display_data", "metadata": {},
                                     "data": {"image/png": png, "text/plain": "<mel spectrogram>"}},)
        self.save_button.disabled = False
        self.save_status.value = ""

    def _on_save(self) -> None:
        try:
            wav, meta = self.save()
        except PlaygroundError as err:
            self.save_status.value = f"<span style='color:#c00'>✗ {html.escape(str(err))}</span>"
        except Exception as err:  # noqa: BLE001 - a message in the panel, never a traceback
            self.save_status.value = (f"<span style='color:#c00'>✗ saving failed: {html.escape(type(err).__name__)}: "
                                      f"{html.escape(str(err))}</span>")
        else:
            self.save_status.value = (f"<span style='color:green'>✓ saved {html.escape(str(wav))} and "
                                      f"{html.escape(meta.name)}</span>")
