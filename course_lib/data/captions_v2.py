"""Captions with variety for the version 2 generators, and a held-out part of the grammar to test generalisation.

Version 1's captions (:func:`course_lib.data.sound_events.caption`, :func:`course_lib.data.music.caption`) use
four or five templates per class and two or three words per fact, so an encoder trained on them reads "a car
horn honks twice" but turns "a hooter, two toots" into ``[UNK]``. Version 2 captions (sound events v2 and
music v2; version 1 is untouched) are written from a small grammar, all of it data in this module:

* **words** for every sound-event class: names ("a bell", "a metal bell"), verbs ("rings", "chimes",
  "dings"), counted event nouns ("bell strikes", "dings"), uncounted phrases ("a ringing bell"), and words
  true of one recipe only ("a church bell", footsteps "on gravel", "a downpour"); for every attribute value
  ("twice", "2 times", "three", "3"; "high-pitched", "low"; "quietly"; "slow"; "in the rain", "over engine
  noise"; "in a small room", "with some echo"). For music: instrument words per family and per General
  MIDI program ("piano", "keys", "grand piano"; "strings", "violin", "string section"), moods, tempo words
  and numbers ("fast", "at 120 bpm", "around 90 beats per minute"), key and mode ("in A minor", "in the key
  of D", "minor-key", "E flat"), drums ("with a drum beat", "no drums", "with a drum machine");
* **templates**, 20 per domain (:data:`EVENT_TEMPLATES`, :data:`MUSIC_TEMPLATES`): sentences with the facts
  in different orders ("with rain in the background, a dog barks twice"), what people type ("dog barking
  twice, small room", "piano, calm, 80 bpm, no drums"), requests and questions ("make a sound of a bell
  ringing three times", "generate calm piano music", "can you play something sad on the violin?");
* **optional facts**: each fact (count, pitch, loudness, ...) is stated with its own probability, so a
  caption may leave any of them out ("a dog barks" says nothing about how often). The caption records what
  it states (:class:`Caption` ``.states``, stored as the clip attribute ``caption_states``), so a probe checks
  only what was asked; the clip's attributes keep every fact.

A caption never states something false: every word that states a fact is looked up from the attribute it
states (numbers are the attribute's own), and words true of one recipe, program or drum kit only are used
only for it.

**Held-out grammar.** A fifth of the templates (:data:`HELD_OUT_TEMPLATES`, 4 of 20 per domain) and about
one word option in six (:data:`HELD_OUT_PHRASES`: 88 phrases, spread over the classes and attributes)
are never used by the default ``"seen"`` grammar, which writes the
captions of every split. ``grammar="heldout"`` (test split only, see :func:`check_grammar`) writes a
caption from a held-out template and, in every slot that has held-out words, only from those: a caption
split for measuring how a model trained on seen captions copes with new words and sentence shapes. Every
held-out phrase and template contains at least one word the seen grammar never uses
(:data:`HELD_OUT_WORDS`), so a caption is held-out material exactly when it contains one of them; they
include version 1's held-out synonyms (:data:`course_lib.text.captions.HELD_OUT_WORDS`) and no word of a
version 1 caption, so an encoder trained on version 1 or on seen version 2 captions has never read one.

Captions are drawn from their own random stream (:func:`caption_rng`), never from the audio's, so a
caption is deterministic per ``(split, index)`` and the audio does not depend on the caption.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from course_lib.data import music, synth

GRAMMARS: tuple[str, ...] = ("seen", "heldout")
CAPTION_STREAMS = {"sound_events": 101, "music": 102}  # NumPy streams of the captions (audio uses 1 and 2)

#: What ``Caption.states`` may name, in this order. Sound events: ``class``, ``recipe`` (a word true of the
#: clip's recipe only), ``count``, ``pitch_band``, ``level``, ``rate_hz`` (its pace word: slow, steady or
#: quick), ``background`` and ``room_rt60_s`` (a room word of one band, see :func:`room_band`). Music:
#: ``instrument``, ``program`` (a word of the GM program only), ``mood``, ``tempo`` (a tempo word, see
#: :func:`course_lib.data.music.tempo_word`), ``tempo_bpm`` (the number), ``key``, ``mode``, ``has_drums`` and
#: ``drum_kit`` (a word of the kit only).
EVENT_STATES: tuple[str, ...] = ("class", "recipe", "count", "pitch_band", "level", "rate_hz", "background",
                                 "room_rt60_s")
MUSIC_STATES: tuple[str, ...] = ("instrument", "program", "mood", "tempo", "tempo_bpm", "key", "mode", "has_drums",
                                 "drum_kit")


class Caption(NamedTuple):
    """A written caption: its ``text``, the facts it ``states`` (names from :data:`EVENT_STATES` or
    :data:`MUSIC_STATES`), the id of its ``template`` and the ``grammar`` part it was drawn from."""

    text: str
    states: tuple[str, ...]
    template: str
    grammar: str

    def attributes(self) -> dict[str, Any]:
        """The clip attributes that record this caption: ``caption_states``, ``caption_template``,
        ``caption_grammar``."""
        return {"caption_states": list(self.states), "caption_template": self.template,
                "caption_grammar": self.grammar}


# ==========================================================================================================
# The held-out part of the grammar: about one option in six of the slots' words, four templates per domain
# ==========================================================================================================
# A phrase here is held out wherever it appears in the tables below (verbs and event nouns by their first
# form: "tolls" holds out ("tolls", "toll", "tolling")). Each contains a word the seen grammar never uses.

HELD_OUT_PHRASES: frozenset[str] = frozenset({
    # sound-event names, verbs, event nouns and surfaces
    "a warning siren", "a nee-naw siren", "whoops",  # siren
    "tolls", "clangs", "bong", "toll of a bell",  # bell
    "a gadget", "bleeps", "bleep", "blip",  # beeps
    "a walker", "treads", "footfall", "on a rug",  # footsteps
    "a rain shower", "a cloudburst", "splashes",  # rain
    "a gentle breeze", "whooshes",  # wind
    "a combustion engine", "purrs",  # engine ("motor" is no candidate: version 1 captions use it)
    "a songbird", "cheeps", "twitters", "cheep",  # birds
    "a timepiece", "clicks",  # clock
    "a hooter", "a klaxon", "a lorry", "toots", "toot",  # horn
    "raps", "rap", "at the front door",  # knocking
    "a pooch", "a hound", "a medium-sized dog", "woofs", "woof",  # dog
    # counts, pitch, loudness, pace, background, room
    "a single time", "thrice", "a single", "a pair of",
    "deep", "medium-pitched", "shrill", "with a deep tone", "with a shrill tone",
    "faint", "noisy", "faintly", "at a medium volume", "medium volume",
    "leisurely", "hurried", "hurriedly",
    "amid the rain", "amid the wind", "amid engine noise",
    "in a reverberant room", "echoey",
    # music
    "keyboard", "Hammond organ", "cathedral organ", "Spanish guitar", "hollow-body guitar", "woodwind", "panpipes",
    "synthesiser", "bassline", "contrabass", "fiddle", "string orchestra", "brass band",
    "joyful", "gentle", "urgent", "sorrowful",
    "leisurely-paced", "medium-paced", "rapid", " at roughly {bpm} bpm",
    " set in {key} {mode}", " with percussion", " with no percussion", "no percussion",
})
HELD_OUT_TEMPLATES: frozenset[str] = frozenset({"e17", "e18", "e19", "e20", "m17", "m18", "m19", "m20"})


def _held(option: Any) -> bool:
    """Is a grammar option (a phrase, or a tuple of forms led by its phrase) in the held-out part?"""
    return (option if isinstance(option, str) else option[0]) in HELD_OUT_PHRASES


def check_grammar(grammar: str, split: str) -> str:
    """``grammar`` if it is one of :data:`GRAMMARS` and allowed for ``split``: the held-out grammar only
    captions test-split clips, so no train or valid caption ever contains a held-out word. Else ``ValueError``."""
    if grammar not in GRAMMARS:
        raise ValueError(f"grammar must be one of {GRAMMARS} ('seen': the captions of every split; 'heldout': "
                         f"the held-out caption split, test clips only), got {grammar!r}")
    if grammar == "heldout" and split != "test":
        raise ValueError(f"grammar='heldout' captions only test-split clips (held-out words never reach "
                         f"train or valid captions), got split={split!r}")
    return grammar


def caption_rng(seed: int, domain: str) -> np.random.Generator:
    """The caption's own random generator for clip seed ``seed`` of ``domain`` (``"sound_events"``/``"music"``)."""
    return synth.make_rng(seed, CAPTION_STREAMS[domain])


# ==========================================================================================================
# Sound events: words
# ==========================================================================================================


@dataclass(frozen=True)
class EventWords:
    """The words for one sound-event class.

    ``names``: singular subjects ("a bell"; adjectives go after the article); ``plural``: plural subjects
    ("raindrops", which take the plural verb); ``by_recipe``: singular subjects true of one recipe only;
    ``verbs``: (he ..., they ..., ...ing); ``events``: countable classes' event nouns (one, several);
    ``uncounted``: noun phrases that name the sound without a count ("a barking dog", "birdsong");
    ``weather``: whole clauses for continuous sounds ("it is raining"); ``surfaces``: recipe -> where the
    person's sound happens ("on gravel"); ``person``: the subjects are people (someone knocks), who take no
    sound adjectives; ``times``: "<verb> twice" reads right (not "someone walks twice"); ``short``: the
    events are short enough to be called "short beeps".
    """

    names: tuple[str, ...]
    verbs: tuple[tuple[str, str, str], ...]
    plural: tuple[str, ...] = ()
    by_recipe: dict[str, tuple[str, ...]] = field(default_factory=dict)
    events: tuple[tuple[str, str], ...] = ()
    uncounted: tuple[str, ...] = ()
    weather: tuple[str, ...] = ()
    surfaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    person: bool = False
    times: bool = True
    short: bool = False


EVENT_WORDS: dict[str, EventWords] = {
    "siren": EventWords(
        names=("a siren", "an emergency siren", "an alarm siren", "an emergency vehicle's siren", "a warning siren"),
        by_recipe={"wail": ("a wailing siren",), "yelp": ("a yelping siren", "a warbling siren"),
                   "hi-lo": ("a two-tone siren", "a hi-lo siren", "a nee-naw siren")},
        verbs=(("wails", "wail", "wailing"), ("sounds", "sound", "sounding"), ("blares", "blare", "blaring"),
               ("goes off", "go off", "going off"), ("whoops", "whoop", "whooping"))),
    "bell": EventWords(
        names=("a bell", "a metal bell"),
        by_recipe={"handbell": ("a handbell", "a hand bell"), "church bell": ("a church bell",),
                   "chime bar": ("a chime bar", "a chime")},
        verbs=(("rings", "ring", "ringing"), ("chimes", "chime", "chiming"), ("dings", "ding", "dinging"),
               ("is struck", "are struck", "being struck"), ("strikes", "strike", "striking"),
               ("tolls", "toll", "tolling"), ("clangs", "clang", "clanging")),
        events=(("bell strike", "bell strikes"), ("strike of a bell", "strikes of a bell"), ("chime", "chimes"),
                ("ding", "dings"), ("ring of a bell", "rings of a bell"), ("bong", "bongs"),
                ("toll of a bell", "tolls of a bell")),
        uncounted=("a ringing bell", "bell chimes", "a chiming bell")),
    "beeps": EventWords(
        names=("a device", "an electronic device", "a machine", "a timer", "an alarm", "a gadget"),
        by_recipe={"square": ("a buzzer",), "piezo": ("a beeper", "a piezo buzzer"), "sine": ("a sine tone",)},
        verbs=(("beeps", "beep", "beeping"), ("goes beep", "go beep", "going beep"), ("sounds", "sound", "sounding"),
               ("bleeps", "bleep", "bleeping")),
        events=(("beep", "beeps"), ("electronic beep", "electronic beeps"), ("beeping tone", "beeping tones"),
                ("tone", "tones"), ("bleep", "bleeps"), ("blip", "blips")),
        uncounted=("beeping", "electronic beeping", "a beeping device"), short=True),
    "footsteps": EventWords(
        names=("someone", "a person", "somebody", "a walker"),
        verbs=(("walks", "walk", "walking"), ("walks along", "walk along", "walking along"),
               ("treads", "tread", "treading")),
        events=(("footstep", "footsteps"), ("step", "steps"), ("footfall", "footfalls")),
        uncounted=("footsteps", "the footsteps of someone walking", "walking"),
        surfaces={"hard floor": ("on a hard floor", "on tiles", "on a tiled floor"),
                  "wood floor": ("on a wooden floor", "on floorboards", "on wood"),
                  "gravel": ("on gravel", "on a gravel path"), "carpet": ("on carpet", "on a carpet", "on a rug")},
        person=True, times=False),
    "rain": EventWords(
        names=("rain", "rainfall", "the rain", "a rain shower"), plural=("raindrops", "drops of rain"),
        by_recipe={"steady": ("steady rain", "constant rain"),
                   "drizzle": ("drizzle", "a light drizzle", "light rain"),
                   "downpour": ("a downpour", "heavy rain", "pouring rain", "a cloudburst"),
                   "on a roof": ("rain on a roof", "rain on the roof")},
        verbs=(("falls", "fall", "falling"), ("patters", "patter", "pattering"), ("comes down", "come down", "coming down"),
               ("splashes", "splash", "splashing")),
        weather=("it is raining", "it's raining", "rainy weather")),
    "wind": EventWords(
        names=("wind", "the wind", "a wind"),
        by_recipe={"gusty": ("a gusty wind", "gusty wind"), "howling": ("a howling wind", "a whistling wind"),
                   "breeze": ("a breeze", "a light breeze", "a gentle breeze")},
        verbs=(("blows", "blow", "blowing"), ("rushes", "rush", "rushing"), ("swirls", "swirl", "swirling"),
               ("whooshes", "whoosh", "whooshing")),
        weather=("it is windy", "windy weather", "wind noise")),
    "engine": EventWords(
        names=("an engine", "an idling engine", "a running engine", "a motor", "a combustion engine"),
        by_recipe={"car": ("a car engine", "a car"), "diesel": ("a diesel engine", "a diesel"),
                   "small engine": ("a small engine", "a small motor")},
        verbs=(("idles", "idle", "idling"), ("runs", "run", "running"), ("rumbles", "rumble", "rumbling"),
               ("hums", "hum", "humming"), ("purrs", "purr", "purring")),
        weather=("engine noise", "the hum of an engine", "the rumble of an idling engine")),
    "birds": EventWords(
        names=("a bird", "a small bird", "a little bird", "a songbird"),
        by_recipe={"whistle": ("a whistling bird",)},
        verbs=(("chirps", "chirp", "chirping"), ("tweets", "tweet", "tweeting"), ("sings", "sing", "singing"),
               ("calls", "call", "calling"), ("cheeps", "cheep", "cheeping"), ("twitters", "twitter", "twittering")),
        events=(("chirp", "chirps"), ("tweet", "tweets"), ("bird call", "bird calls"), ("bird chirp", "bird chirps"),
                ("cheep", "cheeps")),
        uncounted=("birdsong", "a chirping bird", "a singing bird"), short=True),
    "clock": EventWords(
        names=("a clock", "the clock", "a timepiece"),
        by_recipe={"mantel": ("a mantel clock", "a mantelpiece clock"), "quartz": ("a quartz clock", "a wall clock"),
                   "pendulum": ("a pendulum clock", "a grandfather clock")},
        verbs=(("ticks", "tick", "ticking"), ("tick-tocks", "tick-tock", "tick-tocking"),
               ("goes tick tock", "go tick tock", "going tick tock"), ("clicks", "click", "clicking")),
        weather=("the ticking of a clock", "tick tock")),
    "horn": EventWords(
        names=("a horn", "a vehicle horn", "a hooter", "a klaxon"),
        by_recipe={"two-tone car horn": ("a car horn", "a car", "a two-tone car horn"),
                   "single car horn": ("a car horn", "a car"),
                   "truck air horn": ("a truck horn", "an air horn", "a truck", "a lorry")},
        verbs=(("honks", "honk", "honking"), ("beeps", "beep", "beeping"), ("blares", "blare", "blaring"),
               ("sounds", "sound", "sounding"), ("toots", "toot", "tooting")),
        events=(("honk", "honks"), ("horn blast", "horn blasts"), ("blast of a horn", "blasts of a horn"),
                ("toot", "toots")),
        uncounted=("a honking horn", "honking")),
    "knocking": EventWords(
        names=("someone", "somebody", "a person"),
        verbs=(("knocks", "knock", "knocking"), ("taps", "tap", "tapping"), ("raps", "rap", "rapping")),
        events=(("knock", "knocks"), ("tap", "taps"), ("knocking sound", "knocking sounds"), ("rap", "raps")),
        uncounted=("knocking", "a knocking sound", "tapping"),
        surfaces={"door": ("on a door", "at the door", "on the door", "at the front door"),
                  "table": ("on a table", "on a tabletop", "on a wooden table"),
                  "heavy fist": ("on a heavy door", "with a fist on a door")},
        person=True, short=True),
    "dog": EventWords(
        names=("a dog", "the dog", "a pet dog", "a pooch", "a hound"),
        by_recipe={"small dog": ("a small dog", "a little dog"), "medium dog": ("a mid-sized dog", "a medium-sized dog"),
                   "big dog": ("a big dog", "a large dog")},
        verbs=(("barks", "bark", "barking"), ("woofs", "woof", "woofing")),
        events=(("bark", "barks"), ("dog bark", "dog barks"), ("bark from a dog", "barks from a dog"), ("woof", "woofs")),
        uncounted=("a barking dog", "barking", "dog barking"), short=True),
}

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
                10: "ten"}
_TIMES = {1: ("once", "one time", "just once", "a single time"), 2: ("twice", "two times", "2 times"),
          3: ("three times", "3 times", "thrice")}
_NUMBERS = {1: ("one", "just one", "1", "a single"), 2: ("two", "2", "a pair of")}


def times_words(count: int) -> tuple[str, ...]:
    """How a caption may say that something happens ``count`` times ("twice", "2 times", "thrice"...)."""
    return _TIMES.get(count, (f"{NUMBER_WORDS[count]} times", f"{count} times"))


def number_words(count: int) -> tuple[str, ...]:
    """How a caption may count ``count`` events before their noun ("two", "2", "a pair of", "a single")."""
    return _NUMBERS.get(count, (NUMBER_WORDS[count], str(count)))


PITCH_ADJ = {"low": ("low", "low-pitched", "low-toned", "deep"), "mid": ("mid-pitched", "mid-range", "medium-pitched"),
             "high": ("high", "high-pitched", "high-toned", "shrill")}
PITCH_TAIL = {"low": ("at a low pitch", "in a low tone", "with a deep tone"),
              "mid": ("at a mid pitch", "in a middle register"),
              "high": ("at a high pitch", "in a high tone", "with a shrill tone")}
# no words for a moderate level as an adjective ("a moderate bell" says nothing); "low"/"high volume" are
# avoided: those words already mean pitch
LEVEL_ADJ = {"quiet": ("quiet", "soft", "faint"), "moderate": (), "loud": ("loud", "very loud", "noisy")}
LEVEL_ADV = {"quiet": ("quietly", "softly", "faintly"), "moderate": ("at moderate volume", "at normal volume",
                                                                     "at a medium volume"),
             "loud": ("loudly", "very loudly", "at full volume")}
LEVEL_TAG = {"quiet": ("quiet", "soft", "faint"), "moderate": ("moderate volume", "normal volume", "medium volume"),
             "loud": ("loud", "very loud", "noisy")}
PACE_ADJ = {"slow": ("slow", "slow-paced", "leisurely"), "steady": ("steady", "regular", "even"),
            "quick": ("quick", "fast", "brisk", "hurried")}
PACE_ADV = {"slow": ("slowly", "at a slow pace"), "steady": ("steadily", "regularly", "evenly", "at a steady pace"),
            "quick": ("quickly", "fast", "briskly", "hurriedly")}
# The background: phrases that work after the event ("a dog barks in the rain") and before it ("in the rain,
# a dog barks"); clauses for a second sentence ("Rain falls in the background."); typed tags.
BACKGROUND = {
    "rain": ("while rain falls", "in the rain", "over the sound of rain", "with rain in the background", "as it rains",
             "amid the rain"),
    "wind": ("while wind blows", "in the wind", "over wind noise", "with wind in the background", "as the wind blows",
             "amid the wind"),
    "engine": ("while an engine idles", "over engine noise", "with an engine running in the background",
               "with an engine idling nearby", "amid engine noise"),
}
BACKGROUND_CLAUSE = {"rain": ("rain falls", "it rains"), "wind": ("wind blows", "the wind blows"),
                     "engine": ("an engine idles", "an engine runs")}
BACKGROUND_TAG = {"rain": ("rain in the background", "background rain", "rain"),
                  "wind": ("wind in the background", "background wind", "wind"),
                  "engine": ("engine noise", "engine in the background", "engine running")}
# The room: RT60 below ROOM_BANDS_S[0] is a small, dry room, at or above ROOM_BANDS_S[1] an echoing one; "any"
# words are true of every version 2 clip (all are in a room) and state no band.
ROOM_BANDS_S: tuple[float, float] = (0.4, 0.55)
ROOM = {"small": ("in a small room", "in a small space"),
        "echoing": ("in an echoing room", "with some echo", "with reverb", "in a reverberant room"),
        "any": ("indoors", "in a room", "inside")}
ROOM_TAG = {"small": ("small room", "dry room"), "echoing": ("echo", "reverb", "echoey"), "any": ("indoors",)}


def room_band(rt60_s: float | None) -> str | None:
    """``"small"`` below 0.4 s of reverberation time, ``"echoing"`` from 0.55 s, else ``None``."""
    if rt60_s is None:
        return None
    return "small" if rt60_s < ROOM_BANDS_S[0] else "echoing" if rt60_s >= ROOM_BANDS_S[1] else None


def pace_of(rate_hz: float | None) -> str | None:
    """Version 1's pace bands of a rate (steps or ticks per second): slow below 1.8/s, quick above 2.4/s."""
    if rate_hz is None:
        return None
    return "slow" if rate_hz < 1.8 else "quick" if rate_hz > 2.4 else "steady"


# Templates. Slots: {clause} ("a dog barks twice"), {gerund} ("a dog barking twice"), {noun} ("two loud dog
# barks"), {tags} (a typed list: "dog barking, twice, loud, rain in the background"); {bg} / {room} after the
# event, {bg_lead} / {room_lead} before it, {bg_sentence} a second sentence. "?" marks a slot the caption may
# leave out; a leading "^" capitalises the caption. Held out: HELD_OUT_TEMPLATES.
EVENT_TEMPLATES: dict[str, str] = {
    "e01": "{clause}{bg?}{room?}",
    "e02": "{gerund}{bg?}{room?}",
    "e03": "{noun}{bg?}{room?}",
    "e04": "the sound of {gerund}{bg?}",
    "e05": "{bg_lead?}{clause}",
    "e06": "{room_lead?}{clause}{bg?}",
    "e07": "^{clause}{room?}.{bg_sentence?}",
    "e08": "{tags}",
    "e09": "make a sound of {gerund}{bg?}",
    "e10": "generate {noun}{bg?}{room?}",
    "e11": "can you make the sound of {gerund}{bg?}?",
    "e12": "a recording of {gerund}{room?}{bg?}",
    "e13": "sound effect: {noun}{bg?}",
    "e14": "i want to hear {gerund}{bg?}",
    "e15": "{bg_lead?}{gerund}",
    "e16": "{noun}, {room_tag}",
    # held out
    "e17": "please create {noun}{bg?}",
    "e18": "what does {gerund} sound like?",
    "e19": "sfx: {noun}{room?}{bg?}",
    "e20": "listen: {gerund}{bg?}",
}
# How often a caption states each optional fact (when the clip has it and the template has room for it)
EVENT_STATE_P = {"count": 0.85, "pitch_band": 0.7, "level": 0.65, "level_moderate": 0.2, "rate_hz": 0.6,
                 "recipe": 0.35, "background": 0.75, "room_rt60_s": 0.3}


# ==========================================================================================================
# Music: words
# ==========================================================================================================

# Words true of every General MIDI program a family is played by (course_lib.data.music_sf2.GM_PROGRAMS) ...
INSTRUMENT_WORDS: dict[str, tuple[str, ...]] = {
    "piano": ("piano", "keys", "keyboard"),
    "organ": ("organ",),
    "guitar": ("guitar",),
    "flute": ("flute", "wind instrument", "woodwind"),
    "synth lead": ("synth lead", "synth", "synthesizer", "lead synth", "synthesiser"),
    "bass": ("bass", "bass line", "bassline"),
    "strings": ("strings",),
    "brass": ("brass",),
}
# ... and words true of one program only
PROGRAM_WORDS: dict[int, tuple[str, ...]] = {
    0: ("grand piano", "acoustic piano", "acoustic grand piano"), 2: ("electric grand piano", "electric grand"),
    4: ("electric piano", "Rhodes piano"), 5: ("electric piano",),
    16: ("drawbar organ", "Hammond organ"), 17: ("percussive organ",),
    19: ("church organ", "pipe organ", "cathedral organ"),
    24: ("nylon-string guitar", "classical guitar", "acoustic guitar", "Spanish guitar"),
    25: ("steel-string guitar", "acoustic guitar", "folk guitar"),
    26: ("jazz guitar", "electric guitar", "hollow-body guitar"),
    72: ("piccolo",), 73: ("concert flute",), 74: ("recorder",), 75: ("pan flute", "pan pipes", "panpipes"),
    80: ("square-wave synth", "square lead"), 81: ("sawtooth synth", "saw lead"), 83: ("chiff lead",),
    32: ("upright bass", "double bass", "acoustic bass", "contrabass"),
    33: ("electric bass", "bass guitar", "fingered bass"), 35: ("fretless bass",), 38: ("synth bass", "synthesizer bass"),
    40: ("violin", "fiddle"), 41: ("viola",), 45: ("pizzicato strings", "plucked strings"),
    48: ("string section", "string ensemble", "violins", "orchestral strings", "string orchestra"),
    60: ("French horn", "horn"), 61: ("brass section", "horns", "brass ensemble", "brass band"),
    62: ("synth brass", "brass synth"), 63: ("synth brass", "brass synth"),
}
# number for "a violin plays" / "strings play" / "brass plays"
_PLURAL_INSTRUMENTS = {"keys", "strings", "pizzicato strings", "plucked strings", "violins", "orchestral strings",
                       "pan pipes", "panpipes", "horns"}
_MASS_INSTRUMENTS = {"brass", "synth brass"}

MOOD_WORDS = {"happy": ("happy", "upbeat", "cheerful", "bright", "uplifting", "joyful"),
              "calm": ("calm", "peaceful", "relaxed", "soothing", "mellow", "gentle"),
              "tense": ("tense", "dramatic", "dark", "suspenseful", "ominous", "urgent"),
              "sad": ("sad", "melancholic", "gloomy", "mournful", "somber", "sorrowful")}
# bands of course_lib.data.music.tempo_word: slow below 95 bpm, moderate to 125, fast above
TEMPO_ADJ = {"slow": ("slow", "slow-paced", "leisurely-paced"), "moderate": ("mid-tempo", "moderately paced", "medium-paced"),
             "fast": ("fast", "up-tempo", "quick", "rapid")}
TEMPO_TAIL = {"slow": (" at a slow tempo", " at a slow pace"), "moderate": (" at a moderate tempo", " at a walking pace"),
              "fast": (" at a fast tempo", " at a quick tempo")}
BPM = ("{bpm} bpm", "{bpm} beats per minute", "{bpm}bpm")
AT_BPM = (" at {bpm} bpm", " at {bpm} beats per minute", " around {bpm} bpm", " at a tempo of {bpm} bpm",
          " at roughly {bpm} bpm")
KEY_SPELLINGS = {"C#": ("C#", "C sharp"), "Eb": ("Eb", "E flat"), "F#": ("F#", "F sharp"), "Ab": ("Ab", "A flat"),
                 "Bb": ("Bb", "B flat")}
# (phrase, facts it states). Never "a" right before "major"/"minor": typed lowercase, "a minor" is A minor.
IN_KEY = ((" in {key} {mode}", ("key", "mode")), (" in the key of {key} {mode}", ("key", "mode")),
          (" in the key of {key}", ("key",)), (" in {mode}", ("mode",)), (" set in {key} {mode}", ("key", "mode")))
KEY_ADJ = (("{key} {mode}", ("key", "mode")), ("{mode}-key", ("mode",)))
KEY_TAG = (("{key} {mode}", ("key", "mode")), ("{mode} key", ("mode",)), ("key of {key}", ("key",)))
WITH_DRUMS = (" with drums", " with a drum beat", " over a steady drum beat", " accompanied by drums",
              " backed by a drum kit", " with a beat", " with percussion")
DRUM_KIT_WORDS = {24: (" with electronic drums", " with a drum machine"), 25: (" with a drum machine", " with 808 drums")}
NO_DRUMS = (" without drums", ", no drums", " with no drums", " with no percussion")
DRUM_TAG = {True: ("drums", "with drums", "drum beat", "drum kit"), False: ("no drums", "without drums", "no percussion")}

# Slots: {instrument} ("violin"), {player} ("a violin plays"), {mood}, {tempo} (a word), {tempo_tail} (" at a
# slow tempo"), {bpm} ("120 bpm"), {at_bpm} (" at 120 bpm"), {in_key} (" in A minor"), {keymode} ("A minor" or
# "minor-key"), {drums} (" with drums" / " without drums"), {drums_lead}, {tags} (a typed list). "?" and "^"
# as for sound events. Held out: HELD_OUT_TEMPLATES.
MUSIC_TEMPLATES: dict[str, str] = {
    "m01": "a {mood?} {instrument} melody{in_key?}{at_bpm?}{drums?}",
    "m02": "{tags}",
    "m03": "a {tempo?} {mood?} tune played on the {instrument}{drums?}",
    "m04": "{mood} music{in_key?}: {player}{tempo_tail?}{drums?}",
    "m05": "generate {mood?} {instrument} music{drums?}",
    "m06": "make a {tempo?} song with {instrument}{drums?}",
    "m07": "{instrument} piece{in_key?}, around {bpm}",
    "m08": "can you play something {mood} on the {instrument}?",
    "m09": "{bpm} {mood?} {instrument}{drums?}",
    "m10": "{drums_lead?}{player} a {mood?} melody{in_key?}",
    "m11": "a {mood} {keymode} melody for {instrument}",
    "m12": "{instrument} music, {tempo?}, {mood?}{drums?}",
    "m13": "background music: {mood?} {instrument}{at_bpm?}",
    "m14": "a {tempo?} {instrument} track{in_key?}{drums?}",
    "m15": "i want a {mood?} {instrument} piece{in_key?}",
    "m16": "^{instrument} playing a {mood?} tune{in_key?}{at_bpm?}",
    # held out
    "m17": "compose a {mood?} piece for {instrument}{in_key?}{at_bpm?}",
    "m18": "looking for {mood?} {instrument} music{drums?}",
    "m19": "soundtrack idea: {mood} {instrument}{in_key?}",
    "m20": "{tempo} {mood?} {instrument} jam{drums?}",
}
MUSIC_STATE_P = {"program": 0.4, "mood": 0.8, "tempo": 0.5, "tempo_bpm": 0.6, "key": 0.65, "has_drums": 0.7,
                 "drum_kit": 0.5}


# ==========================================================================================================
# Writing a caption
# ==========================================================================================================

_SLOT = re.compile(r"\{(\w+)(\??)\}")
_VOWEL_SOUND = re.compile(r"^(?:[aeiou](?!ni|se|sua)|8|11\b|18\b)", re.IGNORECASE)  # "an organ", "an 80", not "a unison"


def _fix_articles(text: str) -> str:
    """"a"/"an" to match the next word's sound, after adjectives moved in or out ("a" + "idling" -> "an idling")."""
    def repl(m: re.Match) -> str:
        article, word = m.group(1), m.group(2)
        sentence_start = m.start() == 0 or text[max(m.start() - 2, 0):m.start()] == ". "
        if (article[0] == "A" and not sentence_start) or word.lower() in ("major", "minor", "flat", "sharp"):
            return m.group(0)  # the key of A ("in the key of A at 90 bpm", "a minor"), not an article
        an = bool(_VOWEL_SOUND.match(word)) and not word.lower().startswith("one")
        new = "an" if an else "a"
        return (new.capitalize() if article[0].isupper() else new) + " " + word
    return re.sub(r"\b([Aa]n?) (\w+)", repl, text)


def _tidy(text: str, capitalise: bool) -> str:
    """Spaces, commas and articles after empty slots have been dropped."""
    text = " ".join(text.split())
    text = re.sub(r"\s+([,.?:])", r"\1", text)
    text = re.sub(r",(\s*,)+", ",", text)
    text = re.sub(r"([:,])([.?])", r"\2", text)
    text = re.sub(r"^[,\s]+|[,\s]+$", "", text)
    text = re.sub(r",\s*:", ":", text)
    text = _fix_articles(text)
    return text[:1].upper() + text[1:] if capitalise else text


class _Writer:
    """Shared machinery: draws words from the allowed part of the grammar and records what gets stated."""

    def __init__(self, rng: np.random.Generator, grammar: str):
        self.rng, self.heldout = rng, grammar == "heldout"
        self.stated: set[str] = set()

    def maybe(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def allowed(self, options: Iterable[Any]) -> list[Any]:
        """The options this grammar may use: the seen grammar never a held-out one; the held-out grammar only
        held-out ones when the slot has any (so its captions are as new as the grammar allows)."""
        options = list(options)
        held = [o for o in options if _held(o)]
        seen = [o for o in options if not _held(o)]
        return (held or seen) if self.heldout else seen

    def pick(self, options: Iterable[Any]) -> Any:
        pool = self.allowed(options)
        if not pool:
            raise ValueError(f"no usable option among {list(options)!r}")
        return pool[int(self.rng.integers(len(pool)))]

    def template(self, templates: dict[str, str]) -> tuple[str, str]:
        ids = [t for t in templates if (t in HELD_OUT_TEMPLATES) == self.heldout]
        tid = ids[int(self.rng.integers(len(ids)))]
        return tid, templates[tid]

    def render(self, template: str, slots: dict[str, Callable[[], str]], wanted: dict[str, bool],
               slot_fact: dict[str, str]) -> str:
        """Fill ``template`` left to right: a required slot always, an optional one ("?") only when the caption
        states its fact (``wanted[slot_fact[slot]]``)."""
        def fill(m: re.Match) -> str:
            name, optional = m.group(1), m.group(2) == "?"
            if optional and not wanted.get(slot_fact.get(name, name), False):
                return ""
            return slots[name]()
        return _tidy(_SLOT.sub(fill, template.lstrip("^")), template.startswith("^"))


def _with_adjectives(phrase: str, adjectives: list[str]) -> str:
    """Adjectives after a leading article ("a bell" -> "a loud bell"), else in front ("rain" -> "loud rain")."""
    if not adjectives:
        return phrase
    first, _, rest = phrase.partition(" ")
    if first in ("a", "an", "the") and rest:
        return f"{first} {' '.join(adjectives)} {rest}"
    return f"{' '.join(adjectives)} {phrase}"


def _bare(phrase: str) -> str:
    """A noun phrase without its article, as people type it ("a dog" -> "dog")."""
    first, _, rest = phrase.partition(" ")
    return rest if first in ("a", "an", "the") and rest else phrase


class _EventCaption(_Writer):
    """One sound-event caption being written (see :func:`event_caption`)."""

    def __init__(self, a: dict[str, Any], rng: np.random.Generator, grammar: str):
        super().__init__(rng, grammar)
        self.a, self.w = a, EVENT_WORDS[a["class"]]
        self.recipe = a.get("recipe")
        self.pace = pace_of(a.get("rate_hz"))
        self.band = room_band(a.get("room_rt60_s"))
        has_recipe_words = bool(self.allowed(self.w.by_recipe.get(self.recipe, ()))
                                or self.allowed(self.w.surfaces.get(self.recipe, ())))
        p = EVENT_STATE_P
        u = rng.random(7)  # one draw per fact, always all seven (so each decision stays put as others change)
        self.wanted = {
            "count": a.get("count") is not None and u[0] < p["count"],
            "pitch_band": a.get("pitch_band") is not None and u[1] < p["pitch_band"],
            "level": u[2] < (p["level_moderate"] if a.get("level", "moderate") == "moderate" else p["level"]),
            "rate_hz": self.pace is not None and u[3] < p["rate_hz"],
            "recipe": has_recipe_words and u[4] < p["recipe"],
            "background": a.get("background") is not None and u[5] < p["background"],
            "room_rt60_s": "room_rt60_s" in a and u[6] < p["room_rt60_s"],
        }
        self.pending = {k for k in ("count", "pitch_band", "level", "rate_hz", "recipe") if self.wanted[k]}

    def state(self, fact: str) -> None:
        self.stated.add(fact)
        self.pending.discard(fact)

    # ---- the pieces that state one fact --------------------------------------------------------------------

    def _adjectives(self, p: float = 0.6, pace: bool = False) -> list[str]:
        """Adjectives for the facts still to be stated, each placed here with probability ``p``."""
        out = []
        if "level" in self.pending and self.allowed(LEVEL_ADJ[self.a["level"]]) and self.maybe(p):
            out.append(self.pick(LEVEL_ADJ[self.a["level"]]))
            self.state("level")
        if pace and "rate_hz" in self.pending and self.maybe(p):
            out.append(self.pick(PACE_ADJ[self.pace]))
            self.state("rate_hz")
        if "pitch_band" in self.pending and self.maybe(p):
            out.append(self.pick(PITCH_ADJ[self.a["pitch_band"]]))
            self.state("pitch_band")
        return out

    def _subject(self, bare: bool = False) -> tuple[str, bool]:
        """The thing that sounds, with adjectives where it takes them: (phrase, is it plural)."""
        w = self.w
        recipe_names = self.allowed(w.by_recipe.get(self.recipe, ()))
        if "recipe" in self.pending and recipe_names:
            name, plural = self.pick(recipe_names), False
            self.state("recipe")
        else:
            name, plural = self.pick([(n, False) for n in w.names] + [(n, True) for n in w.plural])
        if bare:
            name = _bare(name)
        return (name if w.person else _with_adjectives(name, self._adjectives())), plural

    def _surface(self) -> str:
        if "recipe" in self.pending and self.allowed(self.w.surfaces.get(self.recipe, ())):
            self.state("recipe")
            return " " + self.pick(self.w.surfaces[self.recipe])
        return ""

    def _after_verb(self) -> str:
        """What follows the verb, in a random order: how often, where, how loud, how fast, how high."""
        parts = []
        if "count" in self.pending and self.w.times:
            parts.append(self.pick(times_words(self.a["count"])))
            self.state("count")
        surface = self._surface()
        if surface:
            parts.append(surface.strip())
        # one manner adverb at most ("walks slowly", not "walks slowly loudly"); the other becomes a tail
        if "rate_hz" in self.pending and self.maybe(0.8):
            parts.append(self.pick(PACE_ADV[self.pace]))
            self.state("rate_hz")
        elif "level" in self.pending and self.maybe(0.8):
            parts.append(self.pick(LEVEL_ADV[self.a["level"]]))
            self.state("level")
        if "pitch_band" in self.pending and self.maybe(0.6):
            parts.append(self.pick(PITCH_TAIL[self.a["pitch_band"]]))
            self.state("pitch_band")
        order = self.rng.permutation(len(parts))
        return "".join(" " + parts[i] for i in order)

    def _counted(self, bare: bool = False) -> str:
        """``count`` events as a noun phrase: "two loud dog barks", "a single high-pitched beep"."""
        n = self.a["count"]
        one, several = self.pick(self.w.events)
        adjectives = (["short"] if self.w.short and self.maybe(0.25) else []) + self._adjectives(pace=True)
        self.state("count")
        number = str(n) if bare and self.maybe(0.5) else self.pick(number_words(n))
        return f"{number} {' '.join(adjectives)} {one if n == 1 else several}{self._surface()}"

    def _tails(self) -> str:
        """The facts that found no place in the sentence, as trailing tags (", loud", ", five steps in all")."""
        tails = []
        if "count" in self.pending:
            n = self.a["count"]
            one, several = self.pick(self.w.events)
            tails.append(f"{self.pick(number_words(n))} {one if n == 1 else several}" + (" in all" if self.maybe(0.5) else ""))
            self.state("count")
        for fact, words in (("level", LEVEL_TAG), ("rate_hz", PACE_ADJ), ("pitch_band", PITCH_ADJ)):
            if fact in self.pending:
                value = self.pace if fact == "rate_hz" else self.a[fact]
                tails.append(self.pick(words[value]))
                self.state(fact)
        self.pending.discard("recipe")  # a recipe word only goes where it reads naturally
        return "".join(", " + t for t in tails)

    # ---- the slots ----------------------------------------------------------------------------------------

    def _verb_for(self, subject: str) -> tuple[str, str, str]:
        # never "a wailing siren wails" or "an idling engine idles"
        verbs = [v for v in self.w.verbs if v[2].split()[0] not in subject] or list(self.w.verbs)
        return self.pick(verbs)

    def clause(self) -> str:
        self.state("class")
        if self.w.weather and self.maybe(0.2):
            return self.pick(self.w.weather) + self._surface() + self._tails()
        subject, plural = self._subject()
        verb = self._verb_for(subject)
        if self.maybe(0.25):  # "a dog is barking" as well as "a dog barks"
            said = ("are " if plural else "is ") + verb[2]
        else:
            said = verb[1] if plural else verb[0]
        return f"{subject} {said}{self._after_verb()}{self._tails()}"

    def gerund(self, bare: bool = False) -> str:
        self.state("class")
        subject, _ = self._subject(bare)
        return f"{subject} {self._verb_for(subject)[2]}{self._after_verb()}{'' if bare else self._tails()}"

    def noun(self) -> str:
        self.state("class")
        if "count" in self.pending and self.w.events:
            return self._counted() + self._tails()
        if self.w.uncounted:
            phrase = _with_adjectives(self.pick(self.w.uncounted), self._adjectives(pace=True)) + self._surface()
        else:
            phrase, _ = self._subject()
        return phrase + self._tails()

    def tags(self) -> str:
        """What people type: a head ("dog barking twice", "3 dog barks", "rain") then the other facts as
        comma-separated tags in a random order, all lower case."""
        self.state("class")
        shape = self.rng.integers(3)
        if shape == 0 or (shape == 1 and not ("count" in self.pending and self.w.events)):
            head = self.gerund(bare=True)
        elif shape == 1:
            head = self._counted(bare=True)
        elif self.w.uncounted:  # "barking dog", "footsteps on gravel" (not just "someone")
            head = _with_adjectives(_bare(self.pick(self.w.uncounted)), self._adjectives(pace=True)) + self._surface()
        else:
            head = self._subject(bare=True)[0] + self._surface()
        tags = []
        if "count" in self.pending:
            n = self.a["count"]
            tags.append(self.pick(times_words(n) + ((f"x{n}",) if n > 1 else ())))
            self.state("count")
        for fact, words in (("level", LEVEL_TAG), ("rate_hz", PACE_ADJ), ("pitch_band", PITCH_ADJ)):
            if fact in self.pending:
                tags.append(self.pick(words[self.pace if fact == "rate_hz" else self.a[fact]]))
                self.state(fact)
        if self.wanted["room_rt60_s"]:
            tags.append(self.room_tag())
        tags = [tags[i] for i in self.rng.permutation(len(tags))]
        text = ", ".join([head, *tags])
        if self.wanted["background"]:
            self.state("background")
            bg = self.a["background"]
            text += f" + {BACKGROUND_TAG[bg][-1]}" if self.maybe(0.3) else ", " + self.pick(BACKGROUND_TAG[bg])
        self.pending.discard("recipe")
        return text.lower()

    def bg(self) -> str:
        self.state("background")
        return " " + self.pick(BACKGROUND[self.a["background"]])

    def bg_lead(self) -> str:
        self.state("background")
        return self.pick(BACKGROUND[self.a["background"]]) + ", "

    def bg_sentence(self) -> str:
        self.state("background")
        clause = self.pick(BACKGROUND_CLAUSE[self.a["background"]])
        return f" {clause[0].upper()}{clause[1:]} in the background."

    def _room_words(self, table: dict[str, tuple[str, ...]]) -> str:
        if self.band and self.allowed(table[self.band]):
            self.state("room_rt60_s")
            return self.pick(table[self.band])
        return self.pick(table["any"])

    def room(self) -> str:
        return " " + self._room_words(ROOM)

    def room_lead(self) -> str:
        return self._room_words(ROOM) + ", "

    def room_tag(self) -> str:
        return self._room_words(ROOM_TAG)

    def write(self) -> tuple[str, str]:
        tid, template = self.template(EVENT_TEMPLATES)
        slots = {"clause": self.clause, "gerund": self.gerund, "noun": self.noun, "tags": self.tags, "bg": self.bg,
                 "bg_lead": self.bg_lead, "bg_sentence": self.bg_sentence, "room": self.room,
                 "room_lead": self.room_lead, "room_tag": self.room_tag}
        slot_fact = {"bg": "background", "bg_lead": "background", "bg_sentence": "background",
                     "room": "room_rt60_s", "room_lead": "room_rt60_s"}
        return tid, self.render(template, slots, self.wanted, slot_fact)


def event_caption(attributes: dict[str, Any], rng: np.random.Generator | int = 0, grammar: str = "seen") -> Caption:
    """A caption of a sound-event clip's ``attributes`` from the version 2 grammar (module doc).

    Uses ``class``, ``count``, ``pitch_band``, ``level``, ``rate_hz``, ``background`` and, when present,
    ``recipe`` and ``room_rt60_s`` (so version 1 attributes work too). ``rng`` (a generator or a seed) picks
    the template, which facts to state and the words; ``grammar`` is ``"seen"`` or ``"heldout"``.
    """
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    if grammar not in GRAMMARS:
        check_grammar(grammar, "test")
    writer = _EventCaption(attributes, rng, grammar)
    tid, text = writer.write()
    return Caption(text, tuple(s for s in EVENT_STATES if s in writer.stated), tid, grammar)


class _MusicCaption(_Writer):
    """One music caption being written (see :func:`music_caption`)."""

    def __init__(self, a: dict[str, Any], rng: np.random.Generator, grammar: str):
        super().__init__(rng, grammar)
        self.a = a
        self.tempo_band = music.tempo_word(a["tempo_bpm"])
        program_words = PROGRAM_WORDS.get(a.get("program"), ())
        kit_words = DRUM_KIT_WORDS.get(a.get("drum_kit"), ()) if a["has_drums"] else ()
        p = MUSIC_STATE_P
        u = rng.random(7)
        self.wanted = {"instrument": True, "program": bool(self.allowed(program_words)) and u[0] < p["program"],
                       "mood": u[1] < p["mood"], "tempo": u[2] < p["tempo"], "tempo_bpm": u[3] < p["tempo_bpm"],
                       "key": u[4] < p["key"], "has_drums": u[5] < p["has_drums"],
                       "drum_kit": bool(self.allowed(kit_words)) and u[6] < p["drum_kit"]}

    def _word(self) -> str:
        family = INSTRUMENT_WORDS[self.a["instrument"]]
        program = PROGRAM_WORDS.get(self.a.get("program"), ())
        if self.heldout:  # any held-out word for the instrument, family or program
            word = self.pick(family + program)
        else:
            word = self.pick(program if self.wanted["program"] else family)
        self.stated.add("instrument")
        if word in program and word not in family:
            self.stated.add("program")
        return word

    def instrument(self) -> str:
        return self._word()

    def player(self) -> str:
        word = self._word()
        if word in _PLURAL_INSTRUMENTS:
            return f"{word} play"
        return f"{word} plays" if word in _MASS_INSTRUMENTS else f"a {word} plays"

    def mood(self) -> str:
        self.stated.add("mood")
        return self.pick(MOOD_WORDS[self.a["mood"]])

    def tempo(self) -> str:
        self.stated.add("tempo")
        return self.pick(TEMPO_ADJ[self.tempo_band])

    def tempo_tail(self) -> str:
        self.stated.add("tempo")
        return self.pick(TEMPO_TAIL[self.tempo_band])

    def _bpm(self, options: tuple[str, ...]) -> str:
        self.stated.add("tempo_bpm")
        return self.pick(options).format(bpm=f"{self.a['tempo_bpm']:g}")

    def bpm(self) -> str:
        return self._bpm(BPM)

    def at_bpm(self) -> str:
        return self._bpm(AT_BPM)

    def _key(self, options: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
        phrase, states = self.pick(options)
        self.stated.update(states)
        key = self.pick(KEY_SPELLINGS.get(self.a["key"], (self.a["key"],)))
        return phrase.format(key=key, mode=self.a["mode"])

    def in_key(self) -> str:
        return self._key(IN_KEY)

    def keymode(self) -> str:
        return self._key(KEY_ADJ)

    def _drum_phrase(self) -> str:
        self.stated.add("has_drums")
        if not self.a["has_drums"]:
            return self.pick(NO_DRUMS)
        if self.wanted["drum_kit"]:
            self.stated.add("drum_kit")
            return self.pick(DRUM_KIT_WORDS[self.a["drum_kit"]])
        return self.pick(WITH_DRUMS)

    def drums(self) -> str:
        return self._drum_phrase()

    def drums_lead(self) -> str:
        return self._drum_phrase().strip(" ,") + ", "

    def tags(self) -> str:
        """What people type: the instrument, then the other facts as tags in a random order, lower case."""
        head = self._word() + (" music" if self.maybe(0.3) else "")
        tags = []
        if self.wanted["mood"]:
            tags.append(self.mood())
        if self.wanted["tempo"]:
            tags.append(self.tempo())
        if self.wanted["tempo_bpm"]:
            tags.append(self.bpm())
        if self.wanted["key"]:
            tags.append(self._key(KEY_TAG))
        if self.wanted["has_drums"]:
            self.stated.add("has_drums")
            if self.wanted["drum_kit"]:
                self.stated.add("drum_kit")
                tags.append(self.pick(DRUM_KIT_WORDS[self.a["drum_kit"]]).strip())
            else:
                tags.append(self.pick(DRUM_TAG[self.a["has_drums"]]))
        tags = [tags[i] for i in self.rng.permutation(len(tags))]
        return ", ".join([head, *tags]).lower()

    def write(self) -> tuple[str, str]:
        tid, template = self.template(MUSIC_TEMPLATES)
        slots = {name: getattr(self, name) for name in ("instrument", "player", "mood", "tempo", "tempo_tail", "bpm",
                                                        "at_bpm", "in_key", "keymode", "drums", "drums_lead", "tags")}
        slot_fact = {"tempo_tail": "tempo", "at_bpm": "tempo_bpm", "bpm": "tempo_bpm", "in_key": "key",
                     "keymode": "key", "drums": "has_drums", "drums_lead": "has_drums"}
        return tid, self.render(template, slots, self.wanted, slot_fact)


def music_caption(attributes: dict[str, Any], rng: np.random.Generator | int = 0, grammar: str = "seen") -> Caption:
    """A caption of a music clip's tags from the version 2 grammar (module doc).

    Uses ``instrument``, ``mood``, ``tempo_bpm``, ``key``, ``mode``, ``has_drums`` and, when present,
    ``program`` and ``drum_kit`` (so version 1 tags work too). ``rng`` and ``grammar`` as for
    :func:`event_caption`.
    """
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    if grammar not in GRAMMARS:
        check_grammar(grammar, "test")
    writer = _MusicCaption(attributes, rng, grammar)
    tid, text = writer.write()
    return Caption(text, tuple(s for s in MUSIC_STATES if s in writer.stated), tid, grammar)


def caption(attributes: dict[str, Any], rng: np.random.Generator | int = 0, grammar: str = "seen") -> Caption:
    """:func:`event_caption` or :func:`music_caption`, whichever domain ``attributes`` come from."""
    return (event_caption if "class" in attributes else music_caption)(attributes, rng, grammar)


# ==========================================================================================================
# The grammar's vocabulary
# ==========================================================================================================


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` as the course tokenizer splits them (letters only: "high-pitched" gives
    "high", "pitched"; digits and punctuation are not words)."""
    return re.findall(r"[a-z]+", text.lower())


def _options() -> Iterable[Any]:
    """Every option of every slot of the grammar (a phrase, or a tuple of forms led by its phrase)."""
    for w in EVENT_WORDS.values():
        yield from (*w.names, *w.plural, *w.uncounted, *w.weather, *w.verbs, *w.events)
        for group in (*w.by_recipe.values(), *w.surfaces.values()):
            yield from group
    for table in (_TIMES, _NUMBERS, PITCH_ADJ, PITCH_TAIL, LEVEL_ADJ, LEVEL_ADV, LEVEL_TAG, PACE_ADJ, PACE_ADV,
                  BACKGROUND, BACKGROUND_CLAUSE, BACKGROUND_TAG, ROOM, ROOM_TAG, INSTRUMENT_WORDS, PROGRAM_WORDS,
                  MOOD_WORDS, TEMPO_ADJ, TEMPO_TAIL, KEY_SPELLINGS, DRUM_KIT_WORDS, DRUM_TAG):
        for group in table.values():
            yield from group
    yield from (*NUMBER_WORDS.values(), *music.KEYS, *music.MODES, *BPM, *AT_BPM, *WITH_DRUMS, *NO_DRUMS)
    yield from (phrase for phrase, _ in (*IN_KEY, *KEY_ADJ, *KEY_TAG))


def _texts(part: str) -> list[str]:
    """The literal text of every phrase and template of the grammar's ``part`` (``"seen"``/``"heldout"``),
    slots removed."""
    phrases = [o if isinstance(o, str) else " ".join(o) for o in _options() if _held(o) == (part == "heldout")]
    phrases += [t for tid, t in (*EVENT_TEMPLATES.items(), *MUSIC_TEMPLATES.items())
                if (tid in HELD_OUT_TEMPLATES) == (part == "heldout")]
    return [_SLOT.sub(" ", p) for p in phrases]


def _vocabulary(part: str) -> frozenset[str]:
    return frozenset(w for p in _texts(part) for w in words(p))


#: The words that only the held-out grammar uses ("hooter", "thrice", "shrill", "compose", ...): no seen-grammar
#: caption contains one, and every held-out caption contains at least one (its template's, at the least).
HELD_OUT_WORDS: frozenset[str] = _vocabulary("heldout") - _vocabulary("seen")
SEEN_WORDS: frozenset[str] = _vocabulary("seen")
