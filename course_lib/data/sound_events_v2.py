"""Captioned sound events v2: the same classes and attributes as version 1, in a room, with several
sources per class and captions with variety.

Version 1 (:mod:`course_lib.data.sound_events`) makes every clip of a class with one recipe, dry, over
digital silence, so it sounds like a set of test signals. Version 2 keeps version 1's facts exactly (the same
attribute draw from the same random stream, so clip ``(split, index)`` has the same class, count, pitch,
rate, level and background in both versions) and changes how they sound, and how they are captioned:

* **varied sources**: each class has three or four synthesis recipes (:data:`RECIPES`: a wailing, yelping
  or two-tone siren; a handbell, church bell or chime bar; footsteps on a hard floor, wood, gravel or
  carpet; a car, diesel or small engine; ...), one drawn per clip, and every event of a clip is drawn afresh
  (no two barks or footsteps are identical). Pitched classes keep ``pitch_hz`` as the strongest partial
  (the fundamental, or a bell's strike note), so the label stays exact;
* **a room**: the event is convolved with a small room's impulse response (early reflections and an
  exponentially decaying noise tail whose highs die first), reverberation time ``room_rt60_s`` drawn in
  :data:`RT60_RANGE_S`, mixed under the direct sound at ``room_drr_db`` (direct-to-reverberant ratio);
* **backgrounds at varied levels**: the named background (rain, wind or engine, half the clips, as in
  version 1, each with its own recipe) sits ``snr_db`` below the event, drawn in :data:`SNR_RANGE_DB`;
* **no digital silence**: a low room tone (a soft rumble and hiss, ``room_tone_db`` dBFS) runs under
  every clip, so no stretch of the audio is exactly zero (no caption says "then silence").

Counts stay exact: events are placed at least their own length plus a gap apart, within version 1's
spacing ranges, and ``onsets`` lists when each starts. Timing is a little irregular for the things people
and animals do (knocks, barks, chirps, honks, strikes), steady for clocks.

Attributes are version 1's (see :mod:`course_lib.data.sound_events`: ``class``, ``pitch_hz``,
``pitch_band``, ``count``, ``onsets``, ``rate_hz``, ``duration``, ``loudness_db``, ``peak_db``, ``level``,
``background``, ``background_db``, ``snr_db``, ``seed``, ``split``, ``index``, ``generator``), measured on
the reverberant event track, plus ``recipe`` and ``background_recipe`` (names from :data:`RECIPES`),
``room_rt60_s``, ``room_drr_db`` and ``room_tone_db``. Clip ids are ``sound_events-v2-<split>-<seed>``,
distinct from version 1's, so both versions can share a folder.

Captions come from the version 2 caption grammar (:mod:`course_lib.data.captions_v2`): many names, verbs
and word orders per class, facts that may be left out, typed fragments and requests. Three attributes
record the caption: ``caption_states`` (the facts it states: a probe should check only those),
``caption_template`` and ``caption_grammar``. ``grammar="heldout"`` (test split only) captions the same clip
from the held-out part of the grammar, the held-out caption split. The caption has its own random stream,
so it never changes the audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from course_lib.data import captions_v2, synth
from course_lib.data import sound_events as v1
from course_lib.data.clip import Clip

GENERATOR = "sound_events/v2"
EVENT_CLASSES = v1.EVENT_CLASSES
V2_OVERRIDE_KEYS: tuple[str, ...] = ("recipe", "room_rt60_s")
OVERRIDE_KEYS: tuple[str, ...] = (*v1.OVERRIDE_KEYS, *V2_OVERRIDE_KEYS)

RT60_RANGE_S: tuple[float, float] = (0.2, 0.8)  # reverberation time of a small furnished room (s)
RT60_OVERRIDE_RANGE_S: tuple[float, float] = (0.1, 1.5)
# Direct-to-reverberant energy ratio (dB): a source within a metre or so of the microphone, as in most
# phone and camera recordings; further away the room would take over.
DRR_RANGE_DB: tuple[float, float] = (3.0, 12.0)
SNR_RANGE_DB: tuple[float, float] = (10.0, 30.0)  # event RMS over the named background's RMS (dB)
ROOM_TONE_RANGE_DB: tuple[float, float] = (-60.0, -45.0)  # room tone RMS relative to the event's peak (dB)
EVENT_GAP_S = 0.1  # shortest quiet-ish gap between the sounding parts of two events (s)
_MARGIN = v1._MARGIN


# --------------------------------------------------------------------------------------------------------
# Small building blocks (all float64 arrays of samples; times in s, frequencies in Hz)
# --------------------------------------------------------------------------------------------------------


def _samples(seconds: float, sample_rate: int) -> int:
    return max(int(round(seconds * sample_rate)), 1)


def _unit_peak(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.max(np.abs(x))), 1e-12)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(synth.rms(x), 1e-12)


def _click(rng: np.random.Generator, m: int, sample_rate: int, low: float, high: float, tau: float) -> np.ndarray:
    """A short band-limited noise burst ``(m,)`` (a strike, a heel, a knuckle): unit RMS noise between
    ``low`` and ``high`` Hz under an exponential decay of ``tau`` s."""
    return synth.shaped_noise(rng, m, sample_rate, synth.band_gain(low, high)) * synth.decay(m, sample_rate, tau)


def _formant_gain(centres_hz: list[float], widths_hz: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    """A vocal-tract-like spectral envelope: one resonance per formant (Lorentzian), plus a small floor."""

    def gain(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        return 0.05 + sum(1.0 / (1.0 + ((f - c) / w) ** 2) for c, w in zip(centres_hz, widths_hz))

    return gain


def _harmonic_amps(f0: float, count: int, envelope: Callable[[np.ndarray], np.ndarray],
                   ceiling: float | None = None) -> list[float]:
    """Amplitudes of harmonics ``1..count`` of ``f0`` read off a spectral ``envelope``, scaled so the
    fundamental is 1; with a ``ceiling``, every other harmonic is held at or below it (for pitched classes,
    where ``pitch_hz`` is the fundamental and the pitch probe reads the strongest partial)."""
    amps = envelope(f0 * np.arange(1, count + 1))
    amps = amps / amps[0]
    if ceiling is not None:
        amps[1:] = np.minimum(amps[1:], ceiling)
    return [float(v) for v in amps]


def _narrowband_noise(rng: np.random.Generator, n: int, sample_rate: int, centre_hz: np.ndarray,
                      bandwidth_hz: float) -> np.ndarray:
    """Noise ``(n,)`` of about ``bandwidth_hz`` around a centre that moves along ``centre_hz`` (``(n,)``, Hz):
    complex low-pass noise shifted up by the centre's running phase (a whistling gust)."""
    lowpass = synth.band_gain(0, bandwidth_hz / 2, 2)
    baseband = synth.shaped_noise(rng, n, sample_rate, lowpass) + 1j * synth.shaped_noise(rng, n, sample_rate, lowpass)
    return _unit_rms(np.real(baseband * np.exp(1j * synth.phase_from_frequency(centre_hz, sample_rate))))


def _sparse_impacts(rng: np.random.Generator, n: int, sample_rate: int, per_second: float) -> np.ndarray:
    """A track ``(n,)`` of Poisson-timed impulses (``per_second`` on average) with exponential sizes."""
    track = np.zeros(n)
    k = rng.poisson(per_second * n / sample_rate)
    np.add.at(track, rng.integers(0, n, k), rng.exponential(1.0, k))
    return track


def _pulse_train(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float, sharpness: float,
                 drift: float) -> np.ndarray:
    """An engine's firing pulses ``(n,)``: ``exp(-phase / sharpness)`` once per cycle of a rate that wanders
    by about ``drift`` (relative) and whose strokes differ a little in strength (an idle is never perfect)."""
    rate = rate_hz * (1 + drift * synth.smooth_random(rng, n, sample_rate, 1.5))
    phase = synth.phase_from_frequency(rate, sample_rate)
    strength = 1 + 0.15 * synth.smooth_random(rng, n, sample_rate, rate_hz)
    return np.exp(-(phase % (2 * np.pi)) / sharpness) * strength


def _filtered(x: np.ndarray, sample_rate: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``x`` filtered in the frequency domain by the magnitude response ``gain(freqs_hz)`` (zero phase)."""
    spec = np.fft.rfft(x - x.mean())
    return np.fft.irfft(spec * gain(np.fft.rfftfreq(len(x), 1 / sample_rate)), len(x))


# --------------------------------------------------------------------------------------------------------
# Countable events: one function per recipe makes ONE event, called afresh for every event of a clip
# --------------------------------------------------------------------------------------------------------
# Each takes (rng, sample_rate, voice) where ``voice`` holds the clip-wide choices (the pitch, a dog's size)
# drawn once by the recipe's voice function, and returns the event's samples, starting at its onset.

_BELLS = {  # partial ratios to the strike note, amplitudes (the strike note strongest), decay times relative
    "handbell": ([1.0, 2.0, 3.0, 4.2, 5.4], [1.0, 0.25, 0.45, 0.12, 0.08], [1.0, 0.7, 0.5, 0.35, 0.3]),
    "church bell": ([0.5, 1.0, 1.19, 1.5, 2.0, 2.51, 2.66], [0.35, 1.0, 0.5, 0.25, 0.6, 0.2, 0.15],
                    [1.6, 1.0, 0.8, 0.6, 0.5, 0.35, 0.3]),  # hum, prime, minor third, fifth, nominal, ...
    "chime bar": ([1.0, 2.76, 5.40, 8.93], [1.0, 0.5, 0.3, 0.15], [1.0, 0.45, 0.25, 0.15]),  # a free bar's modes
}
_BELL_TAU_S = {"handbell": (0.3, 0.5), "church bell": (0.4, 0.6), "chime bar": (0.25, 0.45)}


def _bell_voice(rng, sample_rate, a, recipe):
    """A bell of ``recipe`` (:data:`_BELLS`) struck at ``pitch_hz``: its partials and how long they ring."""
    ratios, amps, taus = (np.array(v) for v in _BELLS[recipe])
    # every partial is a slightly mistuned pair (a real bell is never perfectly round): a slow shimmer
    beat_hz = rng.uniform(0.7, 3.0, len(ratios))
    return {"freqs": a["pitch_hz"] * ratios, "amps": amps, "taus": taus * rng.uniform(*_BELL_TAU_S[recipe]),
            "beat_hz": beat_hz, "beat_amp": rng.uniform(0.2, 0.35)}


def _bell_strike(rng, sample_rate, v):
    """One strike: the partials ring down from a hammer click; a harder or softer blow brightens or dulls the
    partials above the strike note (which stays the strongest). Rings for up to 3 s, fading at the end."""
    m = _samples(min(5 * float(v["taus"].max()), 3.0), sample_rate)
    brightness = np.where(v["freqs"] > v["freqs"][np.argmax(v["amps"])], rng.uniform(0.75, 1.1), 1.0)
    amps = np.minimum(v["amps"] * brightness, np.where(v["amps"] >= 1.0, 1.0, 0.9))  # the strike note stays on top
    phases = rng.uniform(0, 2 * np.pi, 2 * len(amps))
    tone = synth.partials(np.concatenate([v["freqs"], v["freqs"] + v["beat_hz"]]),
                          np.concatenate([amps, amps * v["beat_amp"]]), m, sample_rate,
                          taus=np.concatenate([v["taus"], v["taus"]]), phases=phases)
    hammer = _click(rng, m, sample_rate, 1000, 6000, 0.002) * rng.uniform(0.1, 0.25)
    return tone * synth.fades(m, sample_rate, 0.001, 0.3) + hammer


def _beep_voice(rng, sample_rate, a, recipe):
    """A device's beep: a pure sine, a band-limited square (a buzzer) or a piezo sounder's slightly sagging
    tone with a few harmonics; one length for all its beeps (a device repeats itself exactly)."""
    lengths = {"sine": (0.08, 0.2), "square": (0.06, 0.15), "piezo": (0.1, 0.2)}[recipe]
    harmonics = {"sine": [1.0], "square": [1.0, 0.0, 1 / 3, 0.0, 1 / 5, 0.0, 1 / 7],
                 "piezo": [1.0, rng.uniform(0.15, 0.35), rng.uniform(0.1, 0.25)]}[recipe]
    return {"pitch_hz": a["pitch_hz"], "length": rng.uniform(*lengths), "harmonics": harmonics,
            "decay": recipe == "piezo"}


def _beep(rng, sample_rate, v):
    """One beep with 4-6 ms edges (no clicks)."""
    m = _samples(v["length"], sample_rate)
    tone = synth.harmonic_tone(np.full(m, v["pitch_hz"]), v["harmonics"], sample_rate)
    envelope = synth.fades(m, sample_rate, 0.004, 0.006)
    if v["decay"]:  # a piezo sounder sags a little while it sounds
        envelope = envelope * np.exp(-synth.time_axis(m, sample_rate) / 0.25)
    return tone * envelope


def _bird_voice(rng, sample_rate, a, recipe):
    """A bird's call shape and a faint second harmonic; each chirp's length is drawn afresh."""
    lengths = {"glide": (0.06, 0.14), "whistle": (0.1, 0.15), "chip": (0.04, 0.07)}[recipe]
    return {"pitch_hz": a["pitch_hz"], "recipe": recipe, "length": lengths, "overtone": rng.uniform(0.03, 0.12)}


def _chirp(rng, sample_rate, v):
    """One chirp that settles on ``pitch_hz``: a glide into the note, a held whistle with vibrato, or a
    short 'chip' that drops onto the note from up to half an octave above."""
    m = _samples(rng.uniform(*v["length"]), sample_rate)
    u = np.linspace(0, 1, m)
    if v["recipe"] == "glide":
        sweep = rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)
        octaves = sweep * np.exp(-u / 0.12)
    elif v["recipe"] == "whistle":
        t = synth.time_axis(m, sample_rate)
        octaves = rng.uniform(0.015, 0.035) * np.sin(2 * np.pi * rng.uniform(8, 15) * t)  # vibrato
    else:  # starts higher (but well below the Nyquist frequency) and drops fast
        highest = np.log2(0.42 * sample_rate / v["pitch_hz"])
        octaves = min(rng.uniform(0.3, 0.6), highest) * np.exp(-u / 0.15)
    freq = v["pitch_hz"] * 2.0 ** octaves
    return synth.harmonic_tone(freq, [1.0, v["overtone"]], sample_rate) * np.sin(np.pi * u) ** 2


def _horn_voice(rng, sample_rate, a, recipe):
    """A horn's partials (frequency and amplitude) with its fundamental at ``pitch_hz``, the strongest."""
    f0 = a["pitch_hz"]
    k = np.arange(1, 16)
    if recipe == "two-tone car horn":  # two horns a major third apart, the lower one louder
        freqs, amps = np.concatenate([f0 * k, 1.26 * f0 * k]), np.concatenate([1 / k ** 1.2, 0.5 / k ** 1.2])
    elif recipe == "single car horn":  # one brassy horn: a bright buzz with a resonance near 2.5 kHz, held
        # 6 dB under the fundamental so a room's colouring cannot make a harmonic the strongest partial
        resonance = _formant_gain([f0, rng.uniform(2000, 3000)], [f0, 600])
        amps = np.array(_harmonic_amps(f0, len(k), resonance, ceiling=0.5))
        freqs = f0 * k
    else:  # truck air horn: a rich sawtooth-like tone that scoops up to pitch as the air comes in
        freqs, amps = f0 * k, 1 / k
    return {"freqs": freqs, "amps": amps, "scoop": recipe == "truck air horn",
            "length": (0.3, 0.5) if recipe == "truck air horn" else (0.2, 0.45)}


def _honk(rng, sample_rate, v):
    """One honk of its own length (a driver never presses twice the same), with soft edges."""
    m = _samples(rng.uniform(*v["length"]), sample_rate)
    t = synth.time_axis(m, sample_rate)
    ratio = 1 - 0.03 * np.exp(-t / 0.04) if v["scoop"] else np.ones(m)  # the pitch settles within ~0.1 s
    out = np.zeros(m)
    for f, amp in zip(v["freqs"], v["amps"]):  # a few dozen partials, each one vectorised line
        if f < 0.45 * sample_rate:
            out += amp * np.sin(synth.phase_from_frequency(f * ratio, sample_rate) + rng.uniform(0, 2 * np.pi))
    return out * synth.fades(m, sample_rate, rng.uniform(0.008, 0.02), rng.uniform(0.02, 0.04))


_KNOCKS = {  # first body mode range (Hz), mode ratios, mode decays (s), click band (Hz)
    "door": ((150, 300), [1.0, 2.7, 5.1], [0.025, 0.012, 0.006], (800, 5000)),
    "table": ((300, 600), [1.0, 1.9, 3.3, 4.6], [0.015, 0.009, 0.006, 0.004], (1500, 7000)),
    "heavy fist": ((70, 140), [1.0, 2.3, 4.1], [0.04, 0.02, 0.01], (200, 2000)),
}


def _knock_voice(rng, sample_rate, a, recipe):
    """The knocked surface of ``recipe`` (:data:`_KNOCKS`): its first body mode is drawn once per clip."""
    (lo, hi), ratios, taus, band = _KNOCKS[recipe]
    return {"f1": rng.uniform(lo, hi), "ratios": np.array(ratios), "taus": np.array(taus), "band": band}


def _knock(rng, sample_rate, v):
    """One knock: the surface's body modes ringing briefly under the click of the knuckle."""
    m = _samples(0.25, sample_rate)
    f1 = v["f1"] * rng.uniform(0.97, 1.03)  # each knock lands on a slightly different spot
    amps = 1.0 / np.arange(1, len(v["ratios"]) + 1) * rng.uniform(0.7, 1.0, len(v["ratios"]))
    body = synth.partials(f1 * v["ratios"], amps, m, sample_rate, taus=v["taus"],
                          phases=rng.uniform(0, 2 * np.pi, len(amps)))
    return body + _click(rng, m, sample_rate, *v["band"], 0.0015) * rng.uniform(0.3, 0.6)


_DOGS = {  # f0 range (Hz), first two formants (Hz), bark length (s), breath noise level
    "small dog": ((600, 1000), ((1000, 1400), (2500, 3200)), (0.07, 0.13), (0.1, 0.25)),
    "medium dog": ((350, 600), ((600, 1000), (1500, 2200)), (0.1, 0.2), (0.2, 0.35)),
    "big dog": ((150, 300), ((400, 700), (1100, 1600)), (0.15, 0.25), (0.35, 0.6)),
}


def _dog_voice(rng, sample_rate, a, recipe):
    """A dog of ``recipe`` (:data:`_DOGS`): its voice pitch, formants and breathiness, drawn once per clip."""
    f0_range, formants, length, noise = _DOGS[recipe]
    centres = [rng.uniform(*f) for f in formants]
    return {"f0": rng.uniform(*f0_range), "envelope": _formant_gain(centres, [c * 0.3 for c in centres]),
            "length": length, "noise": rng.uniform(*noise)}


def _bark(rng, sample_rate, v):
    """One bark: a voiced tone whose pitch jumps up and falls, shaped by the dog's formants, plus breath."""
    m = _samples(rng.uniform(*v["length"]), sample_rate)
    u = np.linspace(0, 1, m)
    f0 = v["f0"] * rng.uniform(0.93, 1.07)
    freq = f0 * (1.0 + 0.2 * np.sin(np.pi * np.minimum(u * 1.4, 1.0)) - 0.15 * u)  # rises, then drops
    voiced = synth.harmonic_tone(freq, _harmonic_amps(f0, 30, v["envelope"]), sample_rate)
    breath = synth.shaped_noise(rng, m, sample_rate, lambda f: v["envelope"](f) * synth.band_gain(300, 4000)(f))
    envelope = synth.fades(m, sample_rate, 0.008, 0.03) * np.exp(-u * rng.uniform(1.0, 2.0))
    return (_unit_rms(voiced) + v["noise"] * breath) * envelope


# ---- footsteps (rate-based, one function per surface) ----------------------------------------------------


def _step_hard_floor(rng, sample_rate):
    """Shoes on tile or concrete: a heel click and thud, then a softer toe 40-80 ms later."""
    m = _samples(0.2, sample_rate)
    heel = _click(rng, m, sample_rate, 80, 1200, 0.02) + 0.4 * _click(rng, m, sample_rate, 2000, 7000, 0.003)
    toe_at = _samples(rng.uniform(0.04, 0.08), sample_rate)
    toe = np.zeros(m)
    toe[toe_at:] = _click(rng, m - toe_at, sample_rate, 300, 4000, 0.01) * rng.uniform(0.25, 0.45)
    return heel + toe


def _step_wood(rng, sample_rate):
    """A step on floorboards: a thud that sets the boards ringing low for a moment."""
    m = _samples(0.2, sample_rate)
    f = rng.uniform(90, 200)
    boards = synth.partials([f, 2.3 * f, 3.9 * f], [1.0, 0.5, 0.25], m, sample_rate, taus=[0.05, 0.03, 0.015],
                            phases=rng.uniform(0, 2 * np.pi, 3))
    return _click(rng, m, sample_rate, 60, 1500, 0.025) + 0.8 * boards


def _step_gravel(rng, sample_rate):
    """A crunch: a dense spray of tiny grain impacts that swells in 10 ms and dies away over ~0.1 s."""
    m = _samples(0.22, sample_rate)
    grains = _sparse_impacts(rng, m, sample_rate, rng.uniform(800, 1500)) * synth.decay(m, sample_rate, 0.05, 0.01)
    crunch = synth.fft_convolve(grains, _click(rng, _samples(0.003, sample_rate), sample_rate, 1500, 7000, 0.001))
    return _unit_peak(crunch) + 0.5 * _unit_peak(_click(rng, m, sample_rate, 60, 600, 0.02))


def _step_carpet(rng, sample_rate):
    """A muffled step on carpet: a soft, low thud with a slow attack and almost no highs."""
    m = _samples(0.2, sample_rate)
    thud = synth.shaped_noise(rng, m, sample_rate, synth.band_gain(40, 450, 3))
    return thud * synth.decay(m, sample_rate, rng.uniform(0.03, 0.05), attack=rng.uniform(0.006, 0.012))


_STEPS: dict[str, Callable] = {"hard floor": _step_hard_floor, "wood floor": _step_wood, "gravel": _step_gravel,
                               "carpet": _step_carpet}


# --------------------------------------------------------------------------------------------------------
# Continuous sounds: one function per recipe makes the whole track ``(n,)``
# --------------------------------------------------------------------------------------------------------


def _siren(rng, n, sample_rate, a, recipe):
    """A siren centred on ``pitch_hz`` (the geometric middle of its sweep, which stays inside the band):
    a slow wail that rises longer than it falls, a fast yelp, or a two-tone hi-lo a third or fourth apart."""
    t = synth.time_axis(n, sample_rate)
    if recipe == "hi-lo":
        half_interval = np.log2(rng.uniform(1.19, 1.335)) / 2  # a minor third to a fourth, in octaves
        period = rng.uniform(0.8, 1.4)
        steepness = period / (np.pi * 0.03)  # a squashed sine: the tones slide into each other in ~30 ms
        octaves = half_interval * np.tanh(steepness * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))) \
            / np.tanh(steepness)
    else:
        depth = rng.uniform(0.1, 0.15)
        period = rng.uniform(1.5, 3.0) if recipe == "wail" else rng.uniform(0.15, 0.35)
        rise = rng.uniform(0.55, 0.7) if recipe == "wail" else 0.5
        u = (t / period + rng.uniform(0, 1)) % 1.0
        up = 0.5 - 0.5 * np.cos(np.pi * np.minimum(u / rise, 1.0))
        down = 0.5 + 0.5 * np.cos(np.pi * np.clip((u - rise) / (1 - rise), 0.0, 1.0))
        octaves = depth * (2 * np.where(u < rise, up, down) - 1)
    harmonics = [[1.0, 0.25, 0.12], [1.0, 0.05, 0.3, 0.03, 0.18]][int(rng.integers(2))]  # mechanical / electronic
    tone = synth.harmonic_tone(a["pitch_hz"] * 2.0 ** octaves, harmonics, sample_rate)
    passing = 0.75 + 0.25 * synth.smooth_random(rng, n, sample_rate, 0.4)  # it comes closer, then recedes
    return tone * passing * synth.fades(n, sample_rate, 0.05, 0.05)


def _drops(rng: np.random.Generator, n: int, sample_rate: int, per_second: float, ring_hz: tuple[float, float],
           ring_tau: float, sizes: int = 8) -> np.ndarray:
    """Raindrops ``(n,)``: Poisson-timed impacts, each ringing briefly (``ring_tau`` s) from a pitch in
    ``ring_hz`` upwards, as the bubble a drop traps does. Drops come in many sizes (one pitch for all would
    sound like a tone): they are shared out over ``sizes`` starting pitches, one FFT convolution each."""
    out = np.zeros(n)
    m = _samples(0.03, sample_rate)
    t = synth.time_axis(m, sample_rate)
    for ring in np.exp(rng.uniform(*np.log(ring_hz), sizes)):  # a handful of drop sizes
        glide = ring * (1 + 0.6 * t / 0.01)  # the pitch rises by ~60% per 10 ms while it rings
        kernel = np.sin(synth.phase_from_frequency(np.minimum(glide, 0.45 * sample_rate), sample_rate)) \
            * np.exp(-t / ring_tau)
        out += synth.fft_convolve(_sparse_impacts(rng, n, sample_rate, per_second / sizes), kernel)
    return out


def _rain(rng, n, sample_rate, a, recipe):
    """Rain: a hiss of countless distant drops plus near drops, each one a small resonant impact."""
    drops_per_s, hiss_level, kernel_hz, kernel_tau = {
        "steady": ((300, 500), 1.0, (2500, 4500), 0.002),
        "drizzle": ((150, 300), 0.4, (1500, 4000), 0.004),  # fewer, clearer drops; the bubbles ring longer
        "downpour": ((2000, 4000), 1.5, (1000, 2500), 0.0015),
        "on a roof": ((300, 700), 0.7, (400, 1200), 0.008),  # drops tapping a wooden or metal roof
    }[recipe]
    tilt = rng.uniform(1000, 3000)
    hiss = synth.shaped_noise(rng, n, sample_rate,
                              lambda f: synth.band_gain(150 if recipe == "downpour" else 300, 7000, 1)(f)
                              / np.sqrt(1 + f / tilt))
    drops = _drops(rng, n, sample_rate, rng.uniform(*drops_per_s), kernel_hz, kernel_tau)
    swell = 1 + 0.15 * synth.smooth_random(rng, n, sample_rate, 0.3)  # showers thicken and thin
    return (hiss_level * hiss + _unit_rms(drops)) * swell


def _wind(rng, n, sample_rate, a, recipe):
    """Wind: gusty whistling bands, a howl whose pitch drifts, or a soft broadband breeze in leaves."""
    rumble = synth.shaped_noise(rng, n, sample_rate, synth.band_gain(0, 200, 2))
    if recipe == "gusty":  # version 1's wind
        out = np.zeros(n)
        centre = rng.uniform(250, 600)
        for ratio in (1.0, 1.7, 2.9):  # three whistling bands with their own slow gusts
            band = synth.shaped_noise(rng, n, sample_rate, synth.band_gain(centre * ratio / 1.25, centre * ratio * 1.25, 4))
            out += band * (0.6 + 0.4 * synth.smooth_random(rng, n, sample_rate, rng.uniform(0.5, 1.2))) / ratio
        return out + 0.7 * rumble
    if recipe == "howling":
        centre = rng.uniform(300, 800) * 2.0 ** (0.35 * synth.smooth_random(rng, n, sample_rate, 0.5))
        howl = _narrowband_noise(rng, n, sample_rate, centre, rng.uniform(20, 60))
        howl += 0.4 * _narrowband_noise(rng, n, sample_rate, centre * rng.uniform(1.4, 1.8), 60)
        gusts = 0.45 + 0.55 * (1 + synth.smooth_random(rng, n, sample_rate, rng.uniform(0.3, 0.8))) / 2
        return howl * gusts + 0.6 * rumble
    rustle = synth.shaped_noise(rng, n, sample_rate, lambda f: synth.band_gain(200, 5000, 1)(f) / np.sqrt(1 + f / 800))
    flutter = 1 + 0.2 * synth.smooth_random(rng, n, sample_rate, rng.uniform(6, 12))  # leaves shaking
    gusts = 0.6 + 0.4 * synth.smooth_random(rng, n, sample_rate, rng.uniform(0.3, 0.8))
    return rustle * flutter * gusts + 0.3 * rumble


def _engine(rng, n, sample_rate, a, recipe):
    """An idling engine: firing pulses (rate and sharpness per engine), their low-passed body, and noise
    that each firing stirs up; a diesel adds the clatter of its injectors."""
    fire_hz, sharpness, body_hz, rasp = {
        "car": ((25, 55), (0.4, 0.8), 900, 0.3),
        "diesel": ((20, 35), (0.2, 0.4), 600, 0.3),  # a 4- or 6-cylinder diesel at 600-800 rpm
        "small engine": ((45, 90), (0.3, 0.5), 2000, 0.6),  # a scooter, a mower, a motorbike
    }[recipe]
    pulses = _pulse_train(rng, n, sample_rate, rng.uniform(*fire_hz), rng.uniform(*sharpness), 0.01)
    body = _unit_rms(_filtered(pulses, sample_rate, synth.band_gain(20, body_hz, 2)))
    noise_band = (300, 3000) if recipe == "small engine" else (30, 400)
    rumble = synth.shaped_noise(rng, n, sample_rate, synth.band_gain(*noise_band, 2)) * (0.4 + pulses)
    out = body + rasp * rumble
    if recipe == "diesel":
        clatter = synth.shaped_noise(rng, n, sample_rate, synth.band_gain(1500, 4000, 2)) * pulses ** 2
        out += rng.uniform(0.3, 0.5) * _unit_rms(clatter)
    return out


def _clock(rng, n, sample_rate, a, recipe):
    """A clock ticking at exactly ``rate_hz``: a mantel clock's tick-tock (version 1's), a quartz wall
    clock's identical faint clicks, or a pendulum clock's low wooden tick and tock."""
    if recipe == "mantel":
        f, taus, m = rng.uniform(2200, 3500), [0.004, 0.003], _samples(0.03, sample_rate)
        tick = synth.partials([f, 1.6 * f], [1.0, 0.5], m, sample_rate, taus=taus)
        tock = synth.partials([0.75 * f, 1.2 * f], [1.0, 0.5], m, sample_rate, taus=taus)
    elif recipe == "quartz":
        f, m = rng.uniform(3000, 5000), _samples(0.02, sample_rate)
        tick = synth.partials([f, 1.45 * f], [1.0, 0.4], m, sample_rate, taus=[0.002, 0.0015]) \
            + 0.3 * _click(rng, m, sample_rate, 2000, 7000, 0.0007)
        tock = tick
    else:
        f, m = rng.uniform(800, 1600), _samples(0.08, sample_rate)
        tick = synth.partials([f, 2.1 * f, 3.4 * f], [1.0, 0.6, 0.3], m, sample_rate, taus=[0.015, 0.008, 0.005]) \
            + 0.3 * _click(rng, m, sample_rate, 500, 5000, 0.002)
        tock = synth.partials([0.8 * f, 1.9 * f], [1.0, 0.5], m, sample_rate, taus=[0.015, 0.008]) * 0.8
    period = 1.0 / a["rate_hz"]
    onsets = np.arange(rng.uniform(0.05, 0.05 + period), n / sample_rate - 0.05, period)
    track = np.zeros(n)
    gains = rng.uniform(0.9, 1.0, len(onsets))
    synth.place(track, tick, (onsets[0::2] * sample_rate).astype(int), gains[0::2])
    synth.place(track, tock, (onsets[1::2] * sample_rate).astype(int), gains[1::2])
    return track


# --------------------------------------------------------------------------------------------------------
# The recipe table and event placement
# --------------------------------------------------------------------------------------------------------

# Countable classes: recipe -> (voice, one_event, longest sounding part of an event in s). The sounding
# part plus EVENT_GAP_S is never more than version 1's shortest spacing for the class, so events never run
# together and every count version 1 allows still fits.
_COUNTABLE: dict[str, dict[str, tuple[Callable, Callable, float]]] = {
    "bell": {r: (_bell_voice, _bell_strike, 0.4) for r in _BELLS},
    "beeps": {r: (_beep_voice, _beep, 0.2) for r in ("sine", "square", "piezo")},
    "birds": {r: (_bird_voice, _chirp, 0.15) for r in ("glide", "whistle", "chip")},
    "horn": {r: (_horn_voice, _honk, 0.5) for r in ("two-tone car horn", "single car horn", "truck air horn")},
    "knocking": {r: (_knock_voice, _knock, 0.08) for r in _KNOCKS},
    "dog": {r: (_dog_voice, _bark, 0.25) for r in _DOGS},
}
_CONTINUOUS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "siren": (_siren, ("wail", "yelp", "hi-lo")),
    "rain": (_rain, ("steady", "drizzle", "downpour", "on a roof")),
    "wind": (_wind, ("gusty", "howling", "breeze")),
    "engine": (_engine, ("car", "diesel", "small engine")),
    "clock": (_clock, ("mantel", "quartz", "pendulum")),
}

#: The recipes of every class, in the order of :data:`EVENT_CLASSES` (the ``recipe`` attribute is one of them).
RECIPES: dict[str, tuple[str, ...]] = {
    c: tuple(_COUNTABLE[c]) if c in _COUNTABLE else tuple(_STEPS) if c == "footsteps" else _CONTINUOUS[c][1]
    for c in EVENT_CLASSES}
# How irregular the timing of each countable class is: each interval is lengthened by up to this fraction
_IRREGULARITY = {"bell": 0.1, "beeps": 0.0, "birds": 0.3, "horn": 0.25, "knocking": 0.2, "dog": 0.35}


def _pattern_onsets(rng: np.random.Generator, event_class: str, count: int, clip_seconds: float,
                    sounding_seconds: float) -> np.ndarray:
    """Onset times (s) of ``count`` events of ``event_class`` that fit in the clip.

    The spacing is drawn from version 1's range for the class (never less than the event's sounding part
    plus :data:`EVENT_GAP_S`); each interval is then lengthened by a random part of it (up to the class's
    irregularity). If the pattern would not fit, the irregularity goes first, then the spacing shrinks
    towards version 1's minimum, which :func:`course_lib.data.sound_events.max_events` guarantees fits.
    """
    kind = v1._KINDS[event_class]
    shortest = max(kind.spacing[0], sounding_seconds + EVENT_GAP_S)
    spacing = rng.uniform(shortest, max(shortest, kind.spacing[1]))
    extra = rng.uniform(0.0, _IRREGULARITY[event_class], max(count - 1, 0)) * spacing
    free = clip_seconds - 2 * _MARGIN - kind.event_seconds
    if count > 1:
        if (count - 1) * spacing > free:
            spacing, extra = max(free / (count - 1), kind.spacing[0]), extra * 0.0
        elif (count - 1) * spacing + extra.sum() > free:
            extra *= (free - (count - 1) * spacing) / extra.sum()
    offsets = np.concatenate([[0.0], np.cumsum(spacing + extra)])
    latest = clip_seconds - _MARGIN - kind.event_seconds - offsets[-1]
    return rng.uniform(_MARGIN, max(latest, _MARGIN)) + offsets


def _place_events(rng: np.random.Generator, n: int, sample_rate: int, onsets: np.ndarray,
                  one_event: Callable[[np.random.Generator], np.ndarray], gains: tuple[float, float]) -> np.ndarray:
    """A track ``(n,)`` with a freshly made event (``one_event(rng)``) at each onset (s), each at its own gain."""
    track = np.zeros(n)
    for onset, gain in zip(onsets, rng.uniform(*gains, len(onsets))):  # a handful of events
        synth.place(track, one_event(rng), [int(onset * sample_rate)], [gain])
    return track


def _event_track(rng: np.random.Generator, n: int, sample_rate: int, a: dict[str, Any]) -> tuple[np.ndarray, list]:
    """The dry event track ``(n,)`` of a clip with attributes ``a`` (class, recipe, count, ...) and its
    onsets in s (``[]`` for continuous classes)."""
    name, recipe, clip_seconds = a["class"], a["recipe"], n / sample_rate
    if name in _CONTINUOUS:
        return _CONTINUOUS[name][0](rng, n, sample_rate, a, recipe), []
    if name == "footsteps":  # steady gait: version 1's timing, a new step sound each time
        spacing = 1.0 / a["rate_hz"]
        onsets = synth.spaced_onsets(rng, a["count"], spacing, clip_seconds, 0.15, jitter=0.03 * spacing,
                                     margin=_MARGIN)
        track = _place_events(rng, n, sample_rate, onsets, lambda r: _STEPS[recipe](r, sample_rate), (0.75, 1.0))
    else:
        make_voice, one_event, sounding = _COUNTABLE[name][recipe]
        voice = make_voice(rng, sample_rate, a, recipe)
        onsets = _pattern_onsets(rng, name, a["count"], clip_seconds, sounding)
        track = _place_events(rng, n, sample_rate, onsets, lambda r: one_event(r, sample_rate, voice), (0.75, 1.0))
    return track, [round(float(o), 4) for o in onsets]


# --------------------------------------------------------------------------------------------------------
# The room and its tone
# --------------------------------------------------------------------------------------------------------


def room_impulse_response(rng: np.random.Generator, sample_rate: int, rt60_s: float) -> np.ndarray:
    """The reverberant part of a small room's impulse response ``(round(rt60_s * sample_rate),)``, unit energy.

    Six early reflections off the nearest walls and furniture (3-30 ms, alternating signs, weaker with
    time), then a dense tail of Gaussian noise that decays by 60 dB in ``rt60_s`` seconds below 2 kHz and
    twice as fast above it (air and soft furnishings absorb the highs first). The direct sound is not in
    it: the caller mixes it in at the direct-to-reverberant ratio it wants.
    """
    n = _samples(rt60_s, sample_rate)
    t = synth.time_axis(n, sample_rate)
    first = rng.uniform(0.003, 0.008)  # the first reflection (s): the source is a metre or two away
    build_up = np.clip((t - first) / 0.01, 0.0, 1.0)  # the tail grows dense over ~10 ms
    ln_1000 = np.log(1000.0)  # amplitude falls by 60 dB (a factor 1000) in one RT60
    lows = synth.shaped_noise(rng, n, sample_rate, synth.band_gain(0, 2000, 2)) * np.exp(-ln_1000 * t / rt60_s)
    highs = synth.shaped_noise(rng, n, sample_rate, synth.band_gain(2000, 0.45 * sample_rate, 2)) \
        * np.exp(-2 * ln_1000 * t / rt60_s)
    ir = (lows + 0.7 * highs) * build_up * 0.3
    times = np.sort(rng.uniform(first, 0.03, 6))
    signs = np.where(np.arange(6) % 2 == 0, 1.0, -1.0)
    ir[(times * sample_rate).astype(int)] += signs * rng.uniform(0.3, 0.7, 6) * np.exp(-ln_1000 * times / rt60_s)
    return ir / np.sqrt(np.sum(ir ** 2))


def in_room(rng: np.random.Generator, dry: np.ndarray, sample_rate: int, rt60_s: float, drr_db: float) -> np.ndarray:
    """``dry`` ``(n,)`` as heard in a room: the direct sound plus its reverberation (:func:`room_impulse_response`),
    the reverberation ``drr_db`` dB below the direct sound in energy. Same length; the tail past the end is cut."""
    wet = synth.fft_convolve(dry, room_impulse_response(rng, sample_rate, rt60_s))
    return dry + wet * synth.rms(dry) / max(synth.rms(wet), 1e-12) * synth.db_to_gain(-drr_db)


def room_tone(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """The faint sound of a quiet room ``(n,)``, unit RMS: a soft low rumble (ventilation, distant traffic)
    falling towards a little hiss, never exactly zero."""
    return synth.shaped_noise(rng, n, sample_rate, lambda f: synth.band_gain(20, 6000, 1)(f) / np.sqrt(1 + f / 150))


# --------------------------------------------------------------------------------------------------------
# Attributes of the scene, and the public API
# --------------------------------------------------------------------------------------------------------


def _pick(options: tuple[str, ...], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


def _draw_scene(rng: np.random.Generator, a: dict[str, Any], v2_overrides: dict[str, Any],
                snr_overridden: bool) -> None:
    """Add version 2's attributes to ``a`` (in place): recipes, room and background level.

    Every random number is drawn whether or not it is overridden, so forcing one leaves the rest as drawn.
    """
    u_recipe, u_bg_recipe, u_rt60, u_drr, u_snr, u_tone = rng.random(6)
    recipe = v2_overrides.get("recipe", _pick(RECIPES[a["class"]], u_recipe))
    if recipe not in RECIPES[a["class"]]:
        raise ValueError(f"recipe for {a['class']!r} must be one of {RECIPES[a['class']]}, got {recipe!r}")
    rt60 = v2_overrides.get("room_rt60_s")
    if rt60 is not None and (not v1._is_number(rt60) or not RT60_OVERRIDE_RANGE_S[0] <= rt60 <= RT60_OVERRIDE_RANGE_S[1]):
        raise ValueError(f"room_rt60_s must be a number of seconds in {list(RT60_OVERRIDE_RANGE_S)}, got {rt60!r}")
    lerp = lambda lo_hi, u: lo_hi[0] + u * (lo_hi[1] - lo_hi[0])  # noqa: E731
    a["recipe"] = recipe
    a["background_recipe"] = _pick(RECIPES[a["background"]], u_bg_recipe) if a["background"] else None
    a["room_rt60_s"] = round(float(rt60 if rt60 is not None else lerp(RT60_RANGE_S, u_rt60)), 3)
    a["room_drr_db"] = round(float(lerp(DRR_RANGE_DB, u_drr)), 2)
    if not snr_overridden:
        a["snr_db"] = round(float(lerp(SNR_RANGE_DB, u_snr)), 2)
    a["room_tone_db"] = float(lerp(ROOM_TONE_RANGE_DB, u_tone))  # relative to the peak for now


def draw_attributes(index: int, split: str = "train", clip_seconds: float = 4.0, **overrides: Any) -> dict[str, Any]:
    """The facts a caption of clip ``index`` states, as :func:`generate_clip` draws them, without making the
    audio (a fraction of a millisecond instead of tens): ``class``, ``count``, ``pitch_hz``, ``pitch_band``,
    ``rate_hz``, ``level``, ``background``, ``snr_db``, ``recipe``, ``background_recipe``, ``room_rt60_s``,
    ``room_drr_db``, ``seed``, ``split`` and ``index``. ``level`` is the level drawn, which the audio keeps
    (scaling a clip down to avoid clipping never takes a loud event below -4 dBFS)."""
    overrides = dict(overrides)
    if "event_class" in overrides:
        overrides["class"] = overrides.pop("event_class")
    v2_overrides = {k: overrides.pop(k) for k in V2_OVERRIDE_KEYS if k in overrides}
    seed = synth.clip_seed(split, index)
    rng = synth.make_rng(seed, v1.STREAM)
    a = v1._draw_attributes(rng, int(index), float(clip_seconds), overrides)
    _draw_scene(rng, a, v2_overrides, snr_overridden="snr_db" in overrides)
    del a["room_tone_db"]  # only known relative to the peak until the audio is made
    if a["background"] is None:
        a["snr_db"] = None
    a.update(seed=seed, split=split, index=int(index))
    return a


def caption_of(attributes: dict[str, Any], grammar: str = "seen") -> captions_v2.Caption:
    """The caption :func:`generate_clip` writes for a clip with these ``attributes`` (it reads ``seed`` for the
    caption's own random stream, and ``split`` to allow ``grammar="heldout"`` on test clips only)."""
    captions_v2.check_grammar(grammar, attributes["split"])
    return captions_v2.event_caption(attributes, captions_v2.caption_rng(attributes["seed"], "sound_events"), grammar)


def generate_clip(index: int, split: str = "train", clip_seconds: float = 4.0, sample_rate: int = 16000,
                  grammar: str = "seen", **overrides: Any) -> Clip:
    """Sound-event clip ``index`` of ``split``, version 2: audio ``(time,)`` float32, caption and attributes.

    ``time = round(clip_seconds * sample_rate)``; the same arguments always give bit-identical audio, and
    the class, count, pitch, rate, level and background are version 1's for the same index. Overrides are
    version 1's (``class`` or ``event_class``, ``count``, ``pitch_hz``, ``pitch_band``, ``rate_hz``,
    ``level``, ``background``, ``snr_db``) plus ``recipe`` (one of ``RECIPES[class]``) and ``room_rt60_s``
    (s, in :data:`RT60_OVERRIDE_RANGE_S`); bad ones raise a ``ValueError`` naming what is allowed. The peak is
    at most 0.99: if the mix would clip, everything is scaled down together and the attributes report the
    levels in the audio. ``grammar``: ``"seen"`` (the default) or ``"heldout"`` (test split only: the caption
    comes from the held-out part of the caption grammar, :mod:`course_lib.data.captions_v2`; the audio and
    the other attributes are the same).
    """
    captions_v2.check_grammar(grammar, split)
    overrides = dict(overrides)
    if "event_class" in overrides:  # as in version 1: ``class`` is a Python keyword
        if "class" in overrides:
            raise ValueError("give the class once, as event_class=... or as 'class'")
        overrides["class"] = overrides.pop("event_class")
    bad = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if bad:
        raise ValueError(f"unknown override(s) {bad}; the sound-event generator (version 2) accepts {OVERRIDE_KEYS}")
    v2_overrides = {k: overrides.pop(k) for k in V2_OVERRIDE_KEYS if k in overrides}
    n = synth.check_clip_args(clip_seconds, sample_rate)
    seed = synth.clip_seed(split, index)
    rng = synth.make_rng(seed, v1.STREAM)  # version 1's stream: the same facts for the same index
    a = v1._draw_attributes(rng, int(index), float(clip_seconds), overrides)
    _draw_scene(rng, a, v2_overrides, snr_overridden="snr_db" in overrides)

    dry, onsets = _event_track(rng, n, sample_rate, a)
    event = in_room(rng, dry, sample_rate, a["room_rt60_s"], a["room_drr_db"])
    event *= synth.db_to_gain(rng.uniform(*v1._LEVEL_PEAK_DB[a["level"]])) / max(float(np.max(np.abs(event))), 1e-12)
    mix = event.copy()
    background = None
    if a["background"] is not None:
        bg = {"class": a["background"], "rate_hz": None, "pitch_hz": None}
        background = _CONTINUOUS[a["background"]][0](rng, n, sample_rate, bg, a["background_recipe"])
        background *= synth.rms(event) * synth.db_to_gain(-a["snr_db"]) / max(synth.rms(background), 1e-12)
        mix += background
    tone = room_tone(rng, n, sample_rate) * float(np.max(np.abs(event))) * synth.db_to_gain(a["room_tone_db"])
    mix += tone
    scale = min(1.0, 0.99 / max(float(np.max(np.abs(mix))), 1e-12))
    mix *= scale
    event *= scale

    peak_db = synth.to_db(float(np.max(np.abs(event))))
    a.update(
        onsets=onsets,
        duration=round(n / sample_rate, 4),
        loudness_db=round(synth.to_db(synth.rms(event)), 2),
        peak_db=round(peak_db, 2),
        level="loud" if peak_db >= v1._LOUD_DB else "quiet" if peak_db <= v1._QUIET_DB else "moderate",
        background_db=None if background is None else round(synth.to_db(synth.rms(background * scale)), 2),
        room_tone_db=round(synth.to_db(synth.rms(tone * scale), floor_db=-200.0), 2),
        seed=seed, split=split, index=int(index), generator=GENERATOR,
    )
    if a["background"] is None:
        a["snr_db"] = None
    written = caption_of(a, grammar)
    a.update(written.attributes())
    return Clip(audio=mix.astype(np.float32), sample_rate=sample_rate, caption=written.text, attributes=a,
                id=f"sound_events-v2-{split}-{seed}")  # not version 1's id: the two may share a folder


def generate_clips(split: str, n: int, clip_seconds: float = 4.0, sample_rate: int = 16000, start: int = 0,
                   **overrides: Any) -> Iterator[Clip]:
    """Yield ``n`` version 2 clips of ``split`` with indices ``start, ..., start + n - 1`` (see
    :func:`generate_clip`, which also takes ``grammar``); consecutive indices cycle through :data:`EVENT_CLASSES`."""
    synth.check_split(split)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    for i in range(start, start + n):
        yield generate_clip(i, split, clip_seconds, sample_rate, **overrides)
