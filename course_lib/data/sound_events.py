"""Captioned sound events (AudioCaps-like), synthesised from parameters so every fact is known.

Each clip is one event class (a siren, a bell rung twice, three footsteps, rain, ...) optionally mixed with a
quieter continuous background (rain, wind or an engine 15-25 dB below the event), and a caption written
from the attributes it was made from ("a high-pitched bell rings twice while rain falls"). Because the
attributes are exact, the probes in :mod:`course_lib.data.probes` can check whether audio, including audio
a model generated from the caption, has the class, count and pitch band the caption asked for.

Clips are addressed by ``(split, index)``: the same call always returns bit-identical audio, and the seed
comes from a range that belongs to the split alone (see :func:`course_lib.data.synth.clip_seed`). The class
of clip ``index`` is ``EVENT_CLASSES[index % len(EVENT_CLASSES)]``, so any run of consecutive indices is
class-balanced.

Attributes of every clip (JSON-serialisable):

* ``class``: one of :data:`EVENT_CLASSES`;
* ``pitch_hz`` / ``pitch_band``: fundamental in Hz and ``"low"``/``"mid"``/``"high"`` for pitched classes
  (siren, bell, beeps, horn, birds), else ``None``;
* ``count``: number of events (bell strikes, beeps, steps, knocks, honks, chirps, barks) or ``None`` for
  continuous classes; ``onsets``: their start times in s (``[]`` when continuous);
* ``rate_hz``: steps or ticks per second for footsteps and clock, else ``None``;
* ``duration``: clip length in s; ``loudness_db``: RMS of the event track over the whole clip in dBFS
  (0 dB = full-scale square wave, so a full-scale sine is -3.01 dB); ``peak_db``: the event's peak in dBFS;
  ``level``: ``"quiet"`` (peak <= -16 dBFS), ``"moderate"`` or ``"loud"`` (peak >= -4 dBFS);
* ``background`` / ``background_db`` / ``snr_db``: the background class, its RMS in dBFS and the event's
  RMS over it in dB (15-25 dB; all ``None`` when there is no background);
* ``seed``, ``split``, ``index``, ``generator`` (name and version of this generator).

Two versions (``version=`` of :func:`generate_clip` / :func:`generate_clips`): 1, the default and what the
shipped models were trained on, is described above; 2 (:mod:`course_lib.data.sound_events_v2`) makes the
same facts sound less like test signals: several recipes per class, a small room's reverberation, backgrounds
at more varied levels and a room tone under everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from course_lib.data import synth
from course_lib.data.clip import Clip
from course_lib.data.synth import BAND_RANGES_HZ, PITCH_BANDS, pitch_band

GENERATOR = "sound_events/v1"
STREAM = 1  # the NumPy stream of this generator (music uses another)
VERSIONS: tuple[int, ...] = (1, 2)  # 1: this module (the default); 2: course_lib.data.sound_events_v2

EVENT_CLASSES: tuple[str, ...] = ("siren", "bell", "beeps", "footsteps", "rain", "wind", "engine", "birds",
                                  "clock", "horn", "knocking", "dog")
BACKGROUND_CLASSES: tuple[str, ...] = ("rain", "wind", "engine")
LEVELS: tuple[str, ...] = ("quiet", "moderate", "loud")
OVERRIDE_KEYS: tuple[str, ...] = ("class", "count", "pitch_hz", "pitch_band", "rate_hz", "level", "background",
                                  "snr_db")

_LEVEL_PEAK_DB = {"quiet": (-26.0, -18.0), "moderate": (-12.0, -7.0), "loud": (-3.0, -0.5)}
_LOUD_DB, _QUIET_DB = -4.0, -16.0
_SNR_DB = (15.0, 25.0)
_MARGIN = 0.1  # s of clip kept free at each end


# --------------------------------------------------------------------------------------------------------
# The event kinds: how each is drawn, synthesised and described
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """What the generator knows about one class (internal)."""

    name: str
    counts: tuple[int, int] | None = None  # inclusive range of event counts; None = continuous
    spacing: tuple[float, float] = (0.0, 0.0)  # onset-to-onset time range (s) for countable kinds
    event_seconds: float = 0.0  # longest single event (s), for fitting counts into a clip
    bands: tuple[str, ...] = ()  # pitch bands it is drawn from; () = unpitched
    pitch_range: tuple[float, float] | None = None  # override BAND_RANGES_HZ (birds)
    rates: tuple[float, float] | None = None  # events per second for periodic kinds
    templates: tuple[str, ...] = ()

    @property
    def pitched(self) -> bool:
        return bool(self.bands)


_KINDS: dict[str, _Kind] = {k.name: k for k in [
    _Kind("siren", bands=("mid", "high"), templates=(
        "{A} siren wails {loudly}{bg}",
        "{A} siren sweeps up and down{bg}",
        "an emergency vehicle's {adj} siren{bg}",
        "{A} siren rises and falls {loudly}{bg}",
    )),
    _Kind("bell", counts=(1, 4), spacing=(0.6, 0.85), event_seconds=0.4, bands=PITCH_BANDS, templates=(
        "{A} bell rings {times}{bg}",
        "{num} {adj} bell strike{s}{bg}",
        "a {loud} {pitch} bell is struck {times}{bg}",
        "{A} bell chimes {times}{bg}",
    )),
    _Kind("beeps", counts=(1, 6), spacing=(0.32, 0.5), event_seconds=0.22, bands=PITCH_BANDS, templates=(
        "{num} {adj} beep{s}{bg}",
        "{A} beeping, {num} beep{s}{bg}",
        "an electronic device beeps {times} {loudly}, {pitch}{bg}",
        "{A} tone beeps {times}{bg}",
    )),
    _Kind("footsteps", counts=(3, 8), event_seconds=0.15, rates=(1.4, 2.6), templates=(
        "{num} {pace} {loud} footstep{s}{bg}",
        "a person takes {num} {pace} step{s}{bg}",
        "someone walks, {num} {loud} {pace} footstep{s}{bg}",
        "{pace} footsteps, {num} step{s} in all{bg}",
    )),
    _Kind("rain", templates=(
        "{loud} rain falls steadily{bg}",
        "the sound of {loud} rainfall{bg}",
        "rain pours down {loudly}{bg}",
        "{loud} rain patters{bg}",
    )),
    _Kind("wind", templates=(
        "{loud} wind blows in gusts{bg}",
        "the wind howls {loudly}{bg}",
        "{loud} gusts of wind{bg}",
        "wind whistles {loudly}{bg}",
    )),
    _Kind("engine", templates=(
        "{A} car engine idles{bg}",
        "an engine rumbles {loudly}{bg}",
        "the {loud} hum of an idling engine{bg}",
        "a motor runs {loudly} at idle{bg}",
    )),
    _Kind("birds", counts=(1, 6), spacing=(0.25, 0.4), event_seconds=0.14, bands=("high",),
          pitch_range=(2600.0, 5000.0), templates=(
        "a bird chirps {times} {loudly}{bg}",
        "{num} {adj} bird chirp{s}{bg}",
        "a small bird sings {num} {pitch} note{s}{bg}",
        "{num} {loud} tweet{s} from a bird{bg}",
    )),
    _Kind("clock", rates=(1.0, 4.0), templates=(
        "{A} clock ticks {pace_adv}{bg}",
        "the {pace} ticking of a {loud} clock{bg}",
        "a clock ticking {loudly}, {pace_adv}{bg}",
        "a {loud} clock goes tick tock {pace_adv}{bg}",
    )),
    _Kind("horn", counts=(1, 4), spacing=(0.65, 0.9), event_seconds=0.5, bands=("low", "mid"), templates=(
        "{A} horn honks {times}{bg}",
        "{num} {adj} honk{s} of a car horn{bg}",
        "a driver sounds a {pitch} horn {times} {loudly}{bg}",
        "{A} horn blares {times}{bg}",
    )),
    _Kind("knocking", counts=(1, 6), spacing=(0.18, 0.3), event_seconds=0.08, templates=(
        "someone knocks {times} on a door {loudly}{bg}",
        "{num} {loud} knock{s} on wood{bg}",
        "a knock at the door, {num} knock{s}{bg}",
        "{loud} knocking on a door, {times}{bg}",
    )),
    _Kind("dog", counts=(1, 5), spacing=(0.35, 0.6), event_seconds=0.22, templates=(
        "a dog barks {times} {loudly}{bg}",
        "{num} {loud} dog bark{s}{bg}",
        "a dog lets out {num} bark{s}{bg}",
        "{A} dog barking, {times}{bg}",
    )),
]}

_NUM_WORDS = {1: ("a single", "one"), 2: ("two",), 3: ("three",), 4: ("four",), 5: ("five",), 6: ("six",),
              7: ("seven",), 8: ("eight",), 9: ("nine",), 10: ("ten",)}
_TIMES_WORDS = {1: ("once",), 2: ("twice",)}
_PITCH_WORDS = {"low": ("low", "low-pitched", "deep"), "mid": ("mid-pitched", "medium-pitched"),
                "high": ("high", "high-pitched", "shrill")}
_LOUD_ADJ = {"quiet": ("quiet", "faint", "soft"), "moderate": ("",), "loud": ("loud",)}
_LOUD_ADV = {"quiet": ("quietly", "softly", "faintly"), "moderate": ("",), "loud": ("loudly",)}
_BG_PHRASES = {
    "rain": (" while rain falls", " over the sound of rain", " with rain in the background", " as rain pours"),
    "wind": (" while wind blows", " over the sound of wind", " with wind in the background"),
    "engine": (" while an engine idles", " over engine noise", " with a car engine running in the background"),
}


def count_words(count: int) -> tuple[str, ...]:
    """The words a caption may use for ``count`` events ("twice", "two", ...), for checking captions."""
    return _TIMES_WORDS.get(count, (f"{_NUM_WORDS[count][0]} times",)) + _NUM_WORDS[count]


def _pace(rate_hz: float | None) -> tuple[str, str]:
    """Adjective and adverb for a periodic rate (steps or ticks per second)."""
    if rate_hz is None:
        return "", ""
    if rate_hz < 1.8:
        return "slow", "slowly"
    if rate_hz > 2.4:
        return "quick", "quickly"
    return "steady", "steadily"


def caption(attributes: dict[str, Any], rng: np.random.Generator | int = 0) -> str:
    """Write a natural-language caption for a clip's ``attributes`` (choice of template and words by ``rng``).

    Every word that states a fact is taken from the attributes: the class noun, the count ("twice", "three
    beeps"), the pitch band ("high-pitched"), the level ("quietly", "loud"; nothing for moderate), the pace
    of footsteps and clocks, and the background ("while rain falls"). Different ``rng`` values give
    different phrasings of the same facts.
    """
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    kind = _KINDS[attributes["class"]]
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    count = attributes.get("count")
    band = attributes.get("pitch_band")
    level = attributes.get("level", "moderate")
    loud, pitch = pick(_LOUD_ADJ[level]), pick(_PITCH_WORDS[band]) if band else ""
    adj = " ".join(w for w in (loud, pitch) if w)
    pace, pace_adv = _pace(attributes.get("rate_hz"))
    fields = {
        "adj": adj, "A": "a " + adj, "loud": loud, "loudly": pick(_LOUD_ADV[level]), "pitch": pitch,
        "num": pick(_NUM_WORDS[count]) if count else "", "s": "" if count == 1 else "s",
        "times": pick(count_words(count)[:1]) if count else "", "pace": pace, "pace_adv": pace_adv,
        "bg": pick(_BG_PHRASES[attributes["background"]]) if attributes.get("background") else "",
    }
    text = pick(kind.templates).format(**fields)
    text = " ".join(text.split())  # collapse the gaps left by empty words
    text = re.sub(r" ,", ",", text).strip(" ,")
    text = re.sub(r",(\s*,)+", ",", text)
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


# --------------------------------------------------------------------------------------------------------
# Synthesis of each class (event track only, unnormalised; onsets in seconds)
# --------------------------------------------------------------------------------------------------------


def _siren(rng, n, sr, a):
    t = synth.time_axis(n, sr)
    period, depth = rng.uniform(1.5, 3.0), rng.uniform(0.1, 0.15)
    freq = a["pitch_hz"] * 2.0 ** (depth * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))
    return synth.harmonic_tone(freq, [1.0, 0.25, 0.12], sr) * synth.fades(n, sr, 0.05, 0.05), []


def _bell(rng, n, sr, a):
    f0, tau = a["pitch_hz"], rng.uniform(0.22, 0.32)
    m = int(1.5 * sr)
    ratios = np.array([1.0, 2.0, 2.76, 3.9, 5.4])
    tone = synth.partials(f0 * ratios, [1.0, 0.45, 0.3, 0.18, 0.1], m, sr, taus=tau * np.array([1, .6, .45, .35, .3]),
                          phases=rng.uniform(0, 2 * np.pi, 5))
    click = rng.standard_normal(m) * synth.decay(m, sr, 0.002) * 0.2
    return _repeat(rng, n, sr, a, tone + click, gains=(0.85, 1.0))


def _beeps(rng, n, sr, a):
    length = rng.uniform(0.08, 0.2)
    m = int(length * sr)
    tone = synth.partials([a["pitch_hz"]], [1.0], m, sr) * synth.fades(m, sr, 0.005, 0.005)  # pure sine
    return _repeat(rng, n, sr, a, tone, min_spacing=length + 0.12)


def _horn(rng, n, sr, a):
    length = rng.uniform(0.2, 0.45)
    m = int(length * sr)
    k = np.arange(1, 13)  # a two-tone horn: a bright tone and a weaker one a major third above
    freqs = np.concatenate([a["pitch_hz"] * k, 1.26 * a["pitch_hz"] * k])
    amps = np.concatenate([1.0 / k ** 1.2, 0.5 / k ** 1.2])
    tone = synth.partials(freqs, amps, m, sr) * synth.fades(m, sr, 0.01, 0.02)
    return _repeat(rng, n, sr, a, tone, min_spacing=length + 0.18)


def _birds(rng, n, sr, a):
    length, sweep = rng.uniform(0.06, 0.14), rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)
    m = int(length * sr)
    u = np.linspace(0, 1, m)
    freq = a["pitch_hz"] * 2.0 ** (sweep * np.exp(-u / 0.12))  # a quick glide into a held note
    tone = np.sin(synth.phase_from_frequency(freq, sr)) * np.sin(np.pi * u) ** 2
    return _repeat(rng, n, sr, a, tone, gains=(0.7, 1.0), min_spacing=length + 0.1)


def _dog(rng, n, sr, a):
    length, f0 = rng.uniform(0.12, 0.2), rng.uniform(350, 600)
    m = int(length * sr)
    u = np.linspace(0, 1, m)
    freq = f0 * (1.15 - 0.3 * u)
    voiced = synth.harmonic_tone(freq, [0.6, 1.0, 0.8, 0.5, 0.35, 0.2, 0.12], sr)
    noise = synth.shaped_noise(rng, m, sr, synth.band_gain(500, 2500)) * 0.3
    env = synth.fades(m, sr, 0.008, 0.02) * np.exp(-u * 1.5)
    return _repeat(rng, n, sr, a, (voiced + noise) * env, gains=(0.8, 1.0))


def _knocking(rng, n, sr, a):
    m = int(0.08 * sr)
    f1 = rng.uniform(150, 300)
    body = synth.partials([f1, 2.7 * f1, 5.1 * f1], [1.0, 0.5, 0.25], m, sr, taus=[0.025, 0.012, 0.006])
    click = rng.standard_normal(m) * synth.decay(m, sr, 0.0015) * 0.5
    return _repeat(rng, n, sr, a, body + click, gains=(0.8, 1.0))


def _footsteps(rng, n, sr, a):
    m = int(0.15 * sr)
    thud = synth.shaped_noise(rng, m, sr, synth.band_gain(80, 1200)) * synth.decay(m, sr, 0.03, attack=0.003)
    thump = synth.partials([rng.uniform(60, 90)], [1.5], m, sr, taus=[0.035])
    grit = synth.shaped_noise(rng, m, sr, synth.band_gain(2000, 6000)) * synth.decay(m, sr, 0.012) * 0.15
    spacing = 1.0 / a["rate_hz"]
    onsets = synth.spaced_onsets(rng, a["count"], spacing, n / sr, 0.15, jitter=0.03 * spacing, margin=_MARGIN)
    return _stamp(rng, n, sr, thud + thump + grit, onsets, (0.8, 1.0))


def _clock(rng, n, sr, a):
    m = int(0.03 * sr)
    f = rng.uniform(2200, 3500)
    tick = synth.partials([f, 1.6 * f], [1.0, 0.5], m, sr, taus=[0.004, 0.003])
    tock = synth.partials([0.75 * f, 1.2 * f], [1.0, 0.5], m, sr, taus=[0.004, 0.003])
    period = 1.0 / a["rate_hz"]
    onsets = np.arange(rng.uniform(0.05, 0.05 + period), n / sr - 0.05, period)
    track = np.zeros(n)
    synth.place(track, tick, (onsets[0::2] * sr).astype(int))
    synth.place(track, tock, (onsets[1::2] * sr).astype(int))
    return track, []


def _rain(rng, n, sr, a=None):
    hiss = synth.shaped_noise(rng, n, sr, lambda f: synth.band_gain(300, 7000, 1)(f) / np.sqrt(1 + f / 2000))
    drops = np.zeros(n)
    k = rng.poisson(400 * n / sr)
    drops[rng.integers(0, n, k)] = rng.exponential(1.0, k)
    m = int(0.01 * sr)
    kernel = synth.partials([rng.uniform(2500, 4500)], [1.0], m, sr, taus=[0.002])
    pitter = synth.fft_convolve(drops, kernel)
    return hiss + 0.5 * pitter / max(synth.rms(pitter), 1e-12), []


def _wind(rng, n, sr, a=None):
    out = np.zeros(n)
    centre = rng.uniform(250, 600)
    for ratio in (1.0, 1.7, 2.9):  # three whistling bands with their own slow gusts
        band = synth.shaped_noise(rng, n, sr, synth.band_gain(centre * ratio / 1.25, centre * ratio * 1.25, 4))
        gust = 0.6 + 0.4 * synth.smooth_random(rng, n, sr, rng.uniform(0.5, 1.2))
        out += band * gust / ratio
    rumble = synth.shaped_noise(rng, n, sr, synth.band_gain(0, 200, 2))
    return out + 0.7 * rumble, []


def _engine(rng, n, sr, a=None):
    fire = rng.uniform(25, 55) * (1 + 0.01 * synth.smooth_random(rng, n, sr, 2.0))
    phase = synth.phase_from_frequency(fire, sr) % (2 * np.pi)
    pulses = np.exp(-phase / rng.uniform(0.4, 0.8))
    rumble = synth.shaped_noise(rng, n, sr, synth.band_gain(30, 400, 2)) * (0.4 + pulses)
    spec = np.fft.rfft(pulses - pulses.mean())
    body = np.fft.irfft(spec * synth.band_gain(20, 900, 2)(np.fft.rfftfreq(n, 1 / sr)), n)
    return body / max(synth.rms(body), 1e-12) + 0.3 * rumble, []


def _repeat(rng, n, sr, a, template, gains=(0.9, 1.0), min_spacing=0.0):
    """Place ``a['count']`` copies of ``template`` at evenly spaced onsets that fit the clip."""
    kind = _KINDS[a["class"]]
    count, clip_seconds = a["count"], n / sr
    lo = max(kind.spacing[0], min_spacing)
    spacing = rng.uniform(lo, max(lo, kind.spacing[1]))
    if count > 1:  # squeeze towards the minimum spacing if the pattern would not fit
        spacing = max(min(spacing, (clip_seconds - 2 * _MARGIN - kind.event_seconds) / (count - 1)), lo)
    onsets = synth.spaced_onsets(rng, count, spacing, clip_seconds, kind.event_seconds, margin=_MARGIN)
    return _stamp(rng, n, sr, template, onsets, gains)


def _stamp(rng, n, sr, template, onsets, gains):
    track = np.zeros(n)
    synth.place(track, template, (onsets * sr).astype(int), rng.uniform(*gains, len(onsets)))
    return track, [round(float(o), 4) for o in onsets]


_SYNTHS: dict[str, Callable] = {"siren": _siren, "bell": _bell, "beeps": _beeps, "footsteps": _footsteps,
                                "rain": _rain, "wind": _wind, "engine": _engine, "birds": _birds,
                                "clock": _clock, "horn": _horn, "knocking": _knocking, "dog": _dog}


# --------------------------------------------------------------------------------------------------------
# Drawing attributes (with overrides) and the public API
# --------------------------------------------------------------------------------------------------------


def max_events(event_class: str, clip_seconds: float = 4.0) -> int:
    """The most events of ``event_class`` that fit in a clip of ``clip_seconds`` (0 for continuous classes)."""
    kind = _kind(event_class)
    if kind.counts is None:
        return 0
    if kind.rates:  # periodic (footsteps): fastest rate, plus room for the timing jitter
        fit = synth.max_count(1.0 / kind.rates[1], clip_seconds, kind.event_seconds + 0.1, margin=_MARGIN)
    else:
        fit = synth.max_count(kind.spacing[0], clip_seconds, kind.event_seconds, margin=_MARGIN)
    return min(kind.counts[1], fit)


def count_range(event_class: str) -> tuple[int, int] | None:
    """The inclusive range of event counts a clip of ``event_class`` is drawn from (bell: (1, 4)), or None for a
    continuous class (rain, wind, engine, siren) whose captions name no count. Unknown classes raise ``ValueError``."""
    return _kind(event_class).counts


def pitch_bands(event_class: str) -> tuple[str, ...]:
    """The pitch bands (of ``PITCH_BANDS``) a clip of ``event_class`` is drawn from; () for an unpitched class."""
    return _kind(event_class).bands


def _kind(event_class: Any) -> _Kind:
    if event_class not in _KINDS:
        raise ValueError(f"unknown event class {event_class!r}; expected one of {EVENT_CLASSES}")
    return _KINDS[event_class]


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating)) and np.isfinite(x)


def _draw_attributes(rng: np.random.Generator, index: int, clip_seconds: float, overrides: dict) -> dict:
    """Draw a clip's attributes, then apply ``overrides``.

    Every random number is drawn whether or not it is overridden (in a fixed order), so forcing one attribute
    leaves the others as they were: ``generate_clip(i, level="loud")`` is clip ``i`` made loud.
    """
    bad = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if bad:
        raise ValueError(f"unknown override(s) {bad}; the sound-event generator accepts {OVERRIDE_KEYS}")
    kind = _kind(overrides.get("class", EVENT_CLASSES[index % len(EVENT_CLASSES)]))
    u_band, u_pitch, u_count, u_rate, u_level, u_bg, u_bg_class, u_snr = rng.random(8)
    a: dict[str, Any] = {"class": kind.name, "pitch_hz": None, "pitch_band": None, "count": None, "rate_hz": None}

    # pitch
    hz, band = overrides.get("pitch_hz"), overrides.get("pitch_band")
    if (hz is not None or band is not None) and not kind.pitched:
        raise ValueError(f"class {kind.name!r} has no pitch; pitched classes are "
                         f"{tuple(k for k in EVENT_CLASSES if _KINDS[k].pitched)}")
    if kind.pitched:
        if band is not None and band not in kind.bands:
            raise ValueError(f"pitch_band for {kind.name!r} must be one of {kind.bands}, got {band!r}")
        if hz is not None:
            if not _is_number(hz) or not 40 <= hz <= 6000:
                raise ValueError(f"pitch_hz must be a number of Hz in [40, 6000], got {hz!r}")
            if band is not None and pitch_band(hz) != band:
                raise ValueError(f"pitch_hz={hz} is in band {pitch_band(hz)!r}, not the requested {band!r}")
        else:
            band = band or kind.bands[int(u_band * len(kind.bands))]
            lo, hi = kind.pitch_range or BAND_RANGES_HZ[band]
            hz = float(np.exp(np.log(lo) + u_pitch * (np.log(hi) - np.log(lo))))
        a["pitch_hz"], a["pitch_band"] = round(float(hz), 2), pitch_band(float(hz))

    # count
    count = overrides.get("count")
    if kind.counts is None:
        if count is not None:
            raise ValueError(f"class {kind.name!r} is continuous and has no count; countable classes are "
                             f"{tuple(k for k in EVENT_CLASSES if _KINDS[k].counts)}")
    else:
        most = max_events(kind.name, clip_seconds)
        if most < 1:
            raise ValueError(f"no {kind.name!r} event fits in a {clip_seconds:g} s clip")
        if count is None:
            least = min(kind.counts[0], most)
            count = least + int(u_count * (most - least + 1))
        elif isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= most:
            raise ValueError(f"count for {kind.name!r} in a {clip_seconds:g} s clip must be an int in "
                             f"[1, {most}], got {count!r}")
        a["count"] = int(count)

    # rate (footsteps, clock)
    rate = overrides.get("rate_hz")
    if kind.rates is None:
        if rate is not None:
            raise ValueError(f"class {kind.name!r} has no rate; classes with a rate are "
                             f"{tuple(k for k in EVENT_CLASSES if _KINDS[k].rates)}")
    else:
        lo, hi = kind.rates
        if rate is not None and (not _is_number(rate) or not 0.5 <= rate <= 8):
            raise ValueError(f"rate_hz must be a number of events per second in [0.5, 8], got {rate!r}")
        if kind.counts is not None:  # footsteps: the steps must fit in the clip at this rate
            lo = max(lo, (a["count"] - 1) / max(clip_seconds - 2 * _MARGIN - kind.event_seconds - 0.1, 1e-6))
            if rate is not None and rate < lo:
                raise ValueError(f"{a['count']} {kind.name} at rate_hz={rate} do not fit in {clip_seconds:g} s; "
                                 f"need rate_hz >= {lo:.2f}")
        a["rate_hz"] = round(float(rate if rate is not None else lo + u_rate * max(hi - lo, 0.0)), 3)

    # level, background and its level
    level = overrides.get("level", LEVELS[int(u_level * len(LEVELS))])
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    a["level"] = level
    options = [b for b in BACKGROUND_CLASSES if b != kind.name]
    background = overrides.get("background", options[int(u_bg_class * len(options))] if u_bg < 0.5 else None)
    if background is not None and background not in options:
        raise ValueError(f"background must be None or one of {tuple(options)} (a continuous class other than "
                         f"the event itself), got {background!r}")
    a["background"] = background
    snr = overrides.get("snr_db")
    if snr is not None and (not _is_number(snr) or not 0 <= snr <= 60):
        raise ValueError(f"snr_db (event RMS over background RMS, dB) must be a number in [0, 60], got {snr!r}")
    a["snr_db"] = round(float(snr if snr is not None else _SNR_DB[0] + u_snr * (_SNR_DB[1] - _SNR_DB[0])), 2)
    return a


def check_version(version: int) -> int:
    """``version`` if it is one of :data:`VERSIONS`, else a ``ValueError`` naming them."""
    if isinstance(version, bool) or version not in VERSIONS:
        raise ValueError(f"sound-event generator version must be one of {VERSIONS} (1: the default; 2: recipes, "
                         f"a room and varied backgrounds), got {version!r}")
    return int(version)


def generate_clip(index: int, split: str = "train", clip_seconds: float = 4.0, sample_rate: int = 16000,
                  version: int = 1, **overrides: Any) -> Clip:
    """Synthesise sound-event clip ``index`` of ``split``: audio ``(time,)`` float32, caption and attributes.

    ``time = round(clip_seconds * sample_rate)``. The same arguments always give bit-identical audio;
    different splits draw from disjoint seed ranges. ``overrides`` force attributes (keys in
    :data:`OVERRIDE_KEYS`: ``class`` (or ``event_class=``, since ``class`` is a Python keyword), ``count``, ``pitch_hz``, ``pitch_band``, ``rate_hz``, ``level``,
    ``background`` (``None`` for none), ``snr_db`` (event over background, dB)); anything not forced is drawn
    from the clip's seed. Unknown keys, classes, splits or impossible values (a count that does not fit,
    a pitch for an unpitched class) raise a ``ValueError`` that says what is allowed. The peak is at most 1:
    if the mix would clip, event and background are scaled down together and the attributes report the
    levels actually in the audio. ``version=2`` makes the clip with
    :func:`course_lib.data.sound_events_v2.generate_clip` instead (which also takes ``recipe`` and
    ``room_rt60_s`` overrides).
    """
    if check_version(version) == 2:
        from course_lib.data import sound_events_v2  # imported on demand: it imports this module

        return sound_events_v2.generate_clip(index, split, clip_seconds, sample_rate, **overrides)
    if "grammar" in overrides:  # the held-out caption grammar belongs to the version 2 captions
        raise ValueError("grammar= picks a version 2 caption grammar (course_lib.data.captions_v2); "
                         "pass version=2 as well")
    if "event_class" in overrides:  # ``class`` is a Python keyword: event_class="bell" reads better in code
        if "class" in overrides:
            raise ValueError("give the class once, as event_class=... or as 'class'")
        overrides["class"] = overrides.pop("event_class")
    n = synth.check_clip_args(clip_seconds, sample_rate)
    seed = synth.clip_seed(split, index)
    rng = synth.make_rng(seed, STREAM)
    a = _draw_attributes(rng, int(index), float(clip_seconds), overrides)

    event, onsets = _SYNTHS[a["class"]](rng, n, sample_rate, a)
    peak = float(np.max(np.abs(event)))
    event *= synth.db_to_gain(rng.uniform(*_LEVEL_PEAK_DB[a["level"]])) / max(peak, 1e-12)
    mix = event.copy()
    background = None
    if a["background"] is not None:
        background, _ = _SYNTHS[a["background"]](rng, n, sample_rate)
        background *= synth.rms(event) * synth.db_to_gain(-a["snr_db"]) / max(synth.rms(background), 1e-12)
        mix += background
    scale = min(1.0, 0.99 / max(float(np.max(np.abs(mix))), 1e-12))
    mix *= scale
    event *= scale

    peak_db = synth.to_db(float(np.max(np.abs(event))))
    a.update(
        onsets=onsets,
        duration=round(n / sample_rate, 4),
        loudness_db=round(synth.to_db(synth.rms(event)), 2),
        peak_db=round(peak_db, 2),
        level="loud" if peak_db >= _LOUD_DB else "quiet" if peak_db <= _QUIET_DB else "moderate",
        background_db=None if background is None else round(synth.to_db(synth.rms(background * scale)), 2),
        seed=seed, split=split, index=int(index), generator=GENERATOR,
    )
    if a["background"] is None:
        a["snr_db"] = None
    text = caption(a, rng)
    return Clip(audio=mix.astype(np.float32), sample_rate=sample_rate, caption=text, attributes=a,
                id=f"sound_events-{split}-{seed}")


def generate_clips(split: str, n: int, clip_seconds: float = 4.0, sample_rate: int = 16000, start: int = 0,
                   version: int = 1, **overrides: Any) -> Iterator[Clip]:
    """Yield ``n`` clips of ``split`` with indices ``start, ..., start + n - 1`` (see :func:`generate_clip`;
    ``version`` picks the generator, 1 by default).

    Consecutive indices cycle through :data:`EVENT_CLASSES`, so ``n = k * len(EVENT_CLASSES)`` clips hold
    exactly ``k`` of each class (unless ``class`` is overridden).
    """
    synth.check_split(split)
    check_version(version)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    for i in range(start, start + n):
        yield generate_clip(i, split, clip_seconds, sample_rate, version, **overrides)
