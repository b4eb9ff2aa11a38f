"""Checks for exercise notebook 00, audio basics: STFT frame count, mel filter bank, decibels, onset count.

Each checker compares the student's function with the course's reference (``course_lib.audio``) or with
a known answer on a few inputs, edge cases included, and turns the first mismatch into a hint that says
what was expected, what came back, and the likeliest cause. The onset task is checked on synthetic clips
(:func:`make_event_clip`) whose number of events is known by construction.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

from course_lib.audio import MelConfig, amplitude_to_db, mel_filterbank, num_frames
from course_lib.exercises.checks import DEFAULT_TIME_LIMIT, CheckContext, WrongAnswer, check, register_task

LESSON = "00_audio_basics"


def _returned(value: object, fn_name: str) -> None:
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")


def _as_array(value: object, fn_name: str) -> np.ndarray:
    """The student's array-like return value as float64 NumPy, or a WrongAnswer that says why not."""
    _returned(value, fn_name)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise WrongAnswer(f"{fn_name} should return a tensor or array of numbers, got {type(value).__name__} "
                          f"({err})") from None
    return array


def _as_int(value: object, fn_name: str) -> int:
    """The student's integer return value, or a WrongAnswer asking for an int."""
    _returned(value, fn_name)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise WrongAnswer(f"{fn_name} should return an int, got {type(value).__name__} {value!r}: "
                      "use integer division `//` (or int(...)) instead of `/`")


# --------------------------------------------------------------------------------------------------------
# Task 1: number of STFT frames
# --------------------------------------------------------------------------------------------------------

N_FRAMES_CASES: list[tuple[int, int, int, bool]] = [
    (16000, 256, 1024, True),
    (16000, 256, 1024, False),
    (22050, 512, 2048, True),
    (22050, 512, 2048, False),
    (4000, 160, 400, True),
    (4000, 160, 400, False),
    (1024, 256, 1024, False),  # exactly one window
    (1000, 256, 1024, False),  # shorter than one window: no frame fits
    (600, 256, 1024, True),  # short, but centring pads it
]


@register_task("n_frames", LESSON, hint_on_error="n_frames should only need integer arithmetic (//, +, -).")
def check_n_frames_impl(ctx: CheckContext, fn: Callable) -> None:
    """Compare ``fn(num_samples, hop_length, n_fft, center)`` with :func:`course_lib.audio.num_frames`."""
    for num_samples, hop, n_fft, center in N_FRAMES_CASES:
        expected = num_frames(num_samples, hop, center=center, n_fft=n_fft)
        got = _as_int(ctx.call(fn, num_samples, hop, n_fft, center), "n_frames")
        if got == expected:
            continue
        where = (f"for {num_samples} samples with hop {hop}, n_fft {n_fft} and center={center} "
                 f"expected {expected} frames, got {got}")
        other = num_frames(num_samples, hop, center=not center, n_fft=n_fft)
        if center and got == other:
            hint = "did you forget the padding? center=True first pads n_fft // 2 samples on each side"
        elif not center and got == other:
            hint = "with center=False there is no padding: frames must fit inside the raw signal"
        elif got < 0:
            hint = "a signal shorter than one window (n_fft samples) has 0 frames, never a negative number"
        elif got == expected - 1:
            hint = "one frame short: the first frame starts at sample 0, count it too (the + 1)"
        elif got == expected + 1:
            hint = "one frame too many: a frame only counts if all n_fft samples fit in the (padded) signal"
        else:
            hint = "frame m covers samples m·hop ... m·hop + n_fft - 1 of the (padded) signal; count the m that fit"
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 2: Slaney mel filter bank
# --------------------------------------------------------------------------------------------------------

MEL_CASES: list[tuple[int, int, int, float, float]] = [
    (16000, 1024, 80, 0.0, 8000.0),
    (16000, 512, 40, 300.0, 6000.0),
    (22050, 2048, 128, 0.0, 11025.0),
]
MEL_TOLERANCE = 5e-5  # absolute, relative to the largest filter value (float32 reference: errors ~5e-6)


def _fbank_variant(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, scale: str,
                   norm: str | None) -> np.ndarray:
    return AF.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm=norm,
                              mel_scale=scale).double().numpy()


def _close(got: np.ndarray, ref: np.ndarray) -> bool:
    return ref.shape == got.shape and np.allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@register_task("mel_filterbank", LESSON,
               hint_on_error="compute the band edges in mel, convert them to Hz, then build the triangles.")
def check_mel_filterbank_impl(ctx: CheckContext, fn: Callable) -> None:
    """Compare ``fn(sample_rate, n_fft, n_mels, f_min, f_max)`` with :func:`course_lib.audio.mel_filterbank`."""
    for sample_rate, n_fft, n_mels, f_min, f_max in MEL_CASES:
        config = MelConfig(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max)
        expected = mel_filterbank(config).double().numpy()
        got = _as_array(ctx.call(fn, sample_rate, n_fft, n_mels, f_min, f_max), "mel_filterbank")
        where = f"for sample_rate={sample_rate}, n_fft={n_fft}, n_mels={n_mels}, f_min={f_min:g}, f_max={f_max:g}"
        if got.shape != expected.shape:
            if got.shape == expected.shape[::-1]:
                raise WrongAnswer(f"{where} expected shape (n_fft // 2 + 1, n_mels) = {expected.shape}, got "
                                  f"{got.shape}: transpose your result (rows are FFT bins, columns are bands)")
            raise WrongAnswer(f"{where} expected shape (n_fft // 2 + 1, n_mels) = {expected.shape}, got {got.shape}")
        if not np.isfinite(got).all():
            raise WrongAnswer(f"{where} your filters contain NaN or inf: a division by zero? (two band edges "
                              "at the same frequency, or a triangle of zero width)")
        scale = float(np.abs(expected).max())
        if np.allclose(got, expected, rtol=0, atol=MEL_TOLERANCE * scale):
            continue
        args = (sample_rate, n_fft, n_mels, f_min, f_max)
        if _close(got, _fbank_variant(*args, "htk", "slaney")):
            hint = ("you used the HTK mel scale 2595·log10(1 + f/700); this task asks for the Slaney scale "
                    "(linear 3f/200 below 1 kHz, logarithmic above)")
        elif _close(got, _fbank_variant(*args, "slaney", None)):
            hint = ("your triangles peak at 1: you forgot the area normalisation, multiply band m by "
                    "2 / (f[m+2] - f[m]) (its width in Hz)")
        elif _close(got, _fbank_variant(*args, "htk", None)):
            hint = "you used the HTK mel scale and no area normalisation; this task asks for Slaney scale and area norm"
        else:
            error = np.abs(got - expected)
            band = int(error.max(axis=0).argmax())
            hint = (f"band {band} differs most (max error {error.max():.3g}, largest filter value {scale:.3g}): use "
                    "n_mels + 2 edges equally spaced in mel between mel(f_min) and mel(f_max), and evaluate the "
                    "triangles at the FFT bin frequencies k·sample_rate/n_fft")
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 3: decibels
# --------------------------------------------------------------------------------------------------------


def _db_cases() -> list[tuple[torch.Tensor, float, float | None]]:
    gen = torch.Generator().manual_seed(0)
    spec = torch.rand(6, 20, generator=gen) * 10
    spec[0, :5] = 0.0  # silence: needs the amin floor, and then top_db clips it
    ramp = torch.logspace(-8, 0, 17)  # 1e-8 ... 1: floor at amin, no clipping
    small = torch.rand(50, generator=gen) * 2
    small[::7] = 0.0
    return [(spec, 1e-5, 80.0), (ramp, 1e-6, None), (small, 1e-3, 30.0)]


DB_TOLERANCE = 1e-3  # dB


def _clip(db: np.ndarray, top_db: float | None) -> np.ndarray:
    return db if top_db is None else np.maximum(db, db.max() - top_db)


@register_task("to_db", LESSON, hint_on_error="remember that top_db may be None (no clipping).")
def check_to_db_impl(ctx: CheckContext, fn: Callable) -> None:
    """Compare ``fn(magnitude, amin, top_db)`` with :func:`course_lib.audio.amplitude_to_db` (``ref=1``)."""
    for magnitude, amin, top_db in _db_cases():
        expected = amplitude_to_db(magnitude, ref=1.0, amin=amin, top_db=top_db).double().numpy()
        given = magnitude.clone()
        got = _as_array(ctx.call(fn, given, amin, top_db), "to_db")
        where = f"for a magnitude of shape {tuple(magnitude.shape)} with amin={amin:g}, top_db={top_db}"
        if not torch.equal(given, magnitude):
            raise WrongAnswer(f"{where} your to_db changed its input in place (e.g. clamp_ or x[x < amin] = ...): "
                              "work on a new tensor (torch.clamp(x, min=amin)) so the caller's data stays intact")
        if got.shape != expected.shape:
            raise WrongAnswer(f"{where} expected an output of the same shape {expected.shape}, got {got.shape}")
        if np.isnan(got).any() or np.isneginf(got).any():
            raise WrongAnswer(f"{where} your output has -inf or NaN: floor the magnitude before the log, "
                              "20·log10(max(x, amin))")
        if np.allclose(got, expected, rtol=0, atol=DB_TOLERANCE):
            continue
        x = magnitude.double().numpy()
        clip = functools.partial(_clip, top_db=top_db)
        variants = {
            "that is 10·log10, the formula for power; a magnitude (amplitude) needs 20·log10":
                clip(10 * np.log10(np.maximum(x, amin))),
            "you did not apply top_db: values below max(dB) - top_db must be raised to max(dB) - top_db":
                20 * np.log10(np.maximum(x, amin)),
            "top_db is measured down from the loudest value (max of your dB), not from 0 dB":
                np.maximum(20 * np.log10(np.maximum(x, amin)), -top_db if top_db is not None else -np.inf),
            "floor with max(x, amin), not x + amin (adding amin shifts quiet values)":
                clip(20 * np.log10(x + amin)),
            "the natural log is not log10: dB = 20·log10(x)":
                clip(20 * np.log(np.maximum(x, amin))),
        }
        for hint, variant in variants.items():
            if np.allclose(got, variant, rtol=0, atol=DB_TOLERANCE):
                raise WrongAnswer(f"{where}: {hint}")
        error = np.abs(got - expected)
        index = np.unravel_index(int(error.argmax()), error.shape)
        raise WrongAnswer(f"{where}: at index {tuple(int(i) for i in index)} (magnitude {x[index]:.3g}) expected "
                          f"{expected[index]:.2f} dB, got {got[index]:.2f} dB; dB = 20·log10(max(x, amin)), then "
                          "clip at max(dB) - top_db")


# --------------------------------------------------------------------------------------------------------
# Task 4: counting events
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One sound event in a synthetic clip: onset in seconds, ``"beep"`` or ``"click"``, peak level in dBFS.

    A beep is a sine at ``freq`` Hz lasting ``duration`` s with 5 ms fades; a click is a 60 ms noise burst
    decaying with an 8 ms time constant (``duration`` and ``freq`` are ignored).
    """

    onset: float
    kind: str = "beep"
    level_db: float = -6.0
    duration: float = 0.2
    freq: float = 880.0


def make_event_clip(events: Sequence[Event], duration: float, sample_rate: int = 16000, seed: int = 0,
                    noise_db: float = -80.0) -> torch.Tensor:
    """A clip ``(time,)`` of beeps and clicks over faint white noise (``noise_db`` dBFS RMS); float32.

    Events are placed at their onsets and cut at the clip's end; the clip has ``round(duration ·
    sample_rate)`` samples. The same arguments always give the same clip.
    """
    if duration <= 0 or sample_rate <= 0:
        raise ValueError(f"duration (s) and sample_rate (Hz) must be positive, got {duration}, {sample_rate}")
    gen = torch.Generator().manual_seed(seed)
    length = round(duration * sample_rate)
    clip = torch.randn(length, generator=gen, dtype=torch.float64) * 10 ** (noise_db / 20)
    for event in events:
        if event.kind == "beep":
            n = round(event.duration * sample_rate)
            t = torch.arange(n, dtype=torch.float64) / sample_rate
            sound = torch.sin(2 * math.pi * event.freq * t)
            fade = min(round(0.005 * sample_rate), n // 2)
            ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, fade, dtype=torch.float64))
            sound[:fade] *= ramp
            sound[n - fade:] *= ramp.flip(0)
        elif event.kind == "click":
            n = round(0.060 * sample_rate)
            t = torch.arange(n, dtype=torch.float64) / sample_rate
            sound = torch.randn(n, generator=gen, dtype=torch.float64) * torch.exp(-t / 0.008)
            sound = sound / sound.abs().max()
        else:
            raise ValueError(f"event kind must be 'beep' or 'click', got {event.kind!r}")
        start = round(event.onset * sample_rate)
        if not 0 <= start < length:
            raise ValueError(f"event onset {event.onset} s is outside the clip (0 ... {duration} s)")
        stop = min(length, start + n)
        clip[start:stop] += sound[: stop - start] * 10 ** (event.level_db / 20)
    return clip.float()


@dataclass(frozen=True)
class OnsetCase:
    """A synthetic clip for the onset check and the number of events it holds."""

    name: str
    events: tuple[Event, ...]
    duration: float
    sample_rate: int = 16000


ONSET_CASES: list[OnsetCase] = [
    OnsetCase("three equally loud beeps", (Event(0.2), Event(0.6), Event(1.0)), 1.5),
    OnsetCase("five clicks and beeps between -26 and 0 dBFS",
              (Event(0.1, "click", 0.0), Event(0.45, "beep", -20.0, 0.15, 1200.0), Event(0.8, "click", -26.0),
               Event(1.2, "beep", -10.0, 0.25, 500.0), Event(1.7, "click", -16.0)), 2.0),
    OnsetCase("a silent clip (faint -80 dBFS noise only)", (), 1.0),
    OnsetCase("a clip that starts and ends in the middle of a beep",
              (Event(0.0, "beep", -6.0, 0.15), Event(0.9, "beep", -12.0, 0.3, 660.0)), 1.0),
    OnsetCase("four quiet clicks at -30 dBFS, 8 kHz", tuple(Event(t, "click", -30.0) for t in (0.15, 0.45, 0.75, 1.0)),
              1.2, 8000),
    OnsetCase("six clicks 150 ms apart, 22.05 kHz", tuple(Event(0.1 + 0.15 * i, "click", -10.0) for i in range(6)),
              1.2, 22050),
]


@register_task("count_onsets", LESSON,
               hint_on_error="frame the signal, measure each frame's level in dB, count the rises above a threshold.")
def check_count_onsets_impl(ctx: CheckContext, fn: Callable) -> None:
    """Run ``fn(audio, sample_rate)`` on clips with known event counts (:data:`ONSET_CASES`)."""
    for seed, case in enumerate(ONSET_CASES):
        clip = make_event_clip(case.events, case.duration, case.sample_rate, seed=seed)
        expected = len(case.events)
        got = _as_int(ctx.call(fn, clip.clone(), case.sample_rate), "count_onsets")
        if got == expected:
            continue
        where = f"in {case.name} (expected {expected}) you counted {got}"
        if got > 3 * expected + 3:
            hint = ("that is far too many: are you counting samples (or zero crossings) above a threshold? Cut the "
                    "signal into frames (e.g. 10 ms), measure each frame's level, and count the frames where the "
                    "level rises above the threshold")
        elif expected == 0:
            hint = ("a clip with no events must give 0: is your threshold only relative to the loudest frame? Add "
                    "an absolute floor (e.g. ignore frames below -60 dBFS)")
        elif case.events[0].onset == 0.0 and got == expected - 1:
            hint = "an event already sounding at the first sample counts too: treat the clip as silent before it"
        elif got < expected:
            hint = ("you missed events: quiet ones? Events can be 30 dB below the loudest, so set the threshold "
                    "relative to the loudest frame (e.g. 40 dB below it) or in absolute dBFS (e.g. -60)")
        else:
            hint = ("some events were counted more than once: use frames long enough (around 10 ms) to smooth the "
                    "waveform, and count only the frames where the level goes from below to above the threshold")
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Per-task entry points (what the notebook's check cells may call directly)
# --------------------------------------------------------------------------------------------------------


def _entry(task_id: str) -> Callable[..., bool]:
    def run(fn: Callable | None = None, time_limit: float = DEFAULT_TIME_LIMIT) -> bool:
        if fn is not None:
            return check(task_id, fn, time_limit=time_limit)
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        return check(task_id, time_limit=time_limit, namespace=caller.f_globals if caller else {})

    run.__name__ = run.__qualname__ = f"check_{task_id}"
    run.__doc__ = (f"Check the student's ``{task_id}`` function (default: the one named ``{task_id}`` in the "
                   f"caller's namespace): print ✅ or ❌ with a hint and return the result, like "
                   f"``check({task_id!r}, fn)``.")
    return run


check_n_frames = _entry("n_frames")
check_mel_filterbank = _entry("mel_filterbank")
check_to_db = _entry("to_db")
check_count_onsets = _entry("count_onsets")
