"""Probes that read a music prompt's attributes back from audio: tempo, instrument, key and mode.

Lesson 07 measures whether generated music followed its prompt ("a calm flute melody in D minor at 84
bpm"), as :mod:`course_lib.data.probes` does for sound events, and reuses its pieces: the tempo is
:func:`~course_lib.data.probes.estimate_tempo`, the instrument classifier is an
:class:`~course_lib.data.probes.EventClassifier` (log-mel statistics → MLP) trained on the six instruments
of :mod:`course_lib.data.music`. New here is a pitch-class profile and the key / mode read from it:

* :func:`pitch_class_profile`: the share of tonal frames whose strongest spectral peak (the fundamental, for
  every instrument of the music generator) falls on each of the 12 pitch classes ``(12,)`` (C = 0);
* :func:`estimate_mode` given the prompt's tonic: a melody in a major key uses the major third, sixth and
  seventh above the tonic (4, 9, 11 semitones), one in a (natural) minor key the minor ones (3, 8, 10);
  the mode is the set with more weight. Relative keys (C major, A minor) share all seven notes, so the
  tonic has to come from the prompt: the probe asks "is this melody major or minor *on the tonic you
  were asked for*".

:func:`music_adherence` checks one clip against its attributes, :func:`summarise_adherence` turns a list
of checks into the rates the measures report. Every function takes one mono clip ``(time,)`` or ``(1,
time)`` (NumPy or torch, float) and its ``sample_rate`` in Hz; rates down to 3.2 kHz (Noise2Music's
low-rate stage) work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from course_lib.audio import resample
from course_lib.data import music
from course_lib.data.probes import EventClassifier, EventClassifierConfig, _mono, estimate_tempo

__all__ = ["TEMPO_TOLERANCE", "pitch_class_profile", "estimate_mode",
           "tempo_error", "instrument_classifier_config", "music_training_audio", "train_instrument_classifier",
           "music_adherence", "summarise_adherence"]

TEMPO_TOLERANCE = 0.08  # a tempo within ±8% of the prompt's counts as followed
PITCH_CLASSES = music.KEYS  # C, C#, D, Eb, ... in semitones above C
_MAJOR_DEGREES, _MINOR_DEGREES = np.array([4, 9, 11]), np.array([3, 8, 10])  # where the two modes differ


def pitch_class_profile(audio: Any, sample_rate: int, fmin: float = 45.0, fmax: float = 2000.0,
                        window_seconds: float = 0.16, tonal_db: float = 15.0) -> np.ndarray:
    """How often each pitch class is the clip's dominant pitch: ``(12,)`` summing to 1 (C = index 0).

    Hann frames of ``window_seconds`` (hop a quarter of it), zero-padded 4x; in each *active* frame (within
    20 dB of the loudest) the strongest peak between ``fmin`` and ``fmax`` Hz (capped at 0.45 ·
    ``sample_rate``) is located by parabolic interpolation of the log magnitude, and counts if it stands
    ``tonal_db`` above the median of its neighbourhood (so drum hits and noise do not count). Its frequency
    becomes the nearest equal-tempered pitch class (A4 = 440 Hz). All zeros when no frame is tonal.
    """
    x = _mono(audio, sample_rate, min_seconds=window_seconds)
    win = int(round(window_seconds * sample_rate))
    n_fft = 4 * (1 << (win - 1).bit_length())
    hop = max(win // 4, 1)
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hanning(win)
    mag = np.abs(np.fft.rfft(frames, n_fft, axis=1))
    power = (mag ** 2).sum(axis=1)
    profile = np.zeros(12)
    if power.max() <= 1e-20:
        return profile
    active = np.flatnonzero(power >= power.max() * 0.01)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo = max(int(np.searchsorted(freqs, fmin)), 1)
    hi = min(int(np.searchsorted(freqs, min(fmax, 0.45 * sample_rate))), len(freqs) - 2)
    if hi <= lo:
        raise ValueError(f"no frequencies between fmin={fmin} and fmax={fmax} Hz at sample_rate={sample_rate}")
    logmag = np.log(mag[active] + 1e-12)
    k = lo + np.argmax(logmag[:, lo:hi], axis=1)
    rows = np.arange(len(active))
    # neighbourhood: 1.5 to 6 main-lobe widths away (the main lobe of a Hann window is 4 padded bins wide here)
    offsets = np.concatenate([np.arange(-48, -11), np.arange(12, 49)])
    edged = np.pad(logmag, ((0, 0), (48, 48)), mode="edge")
    neighbourhood = np.median(edged[rows[:, None], 48 + k[:, None] + offsets[None, :]], axis=1)
    tonal = (logmag[rows, k] - neighbourhood) * (20 / math.log(10)) >= tonal_db
    if not tonal.any():
        return profile
    a, b, c = logmag[rows, k - 1], logmag[rows, k], logmag[rows, k + 1]
    shift = 0.5 * (a - c) / np.where(np.abs(a - 2 * b + c) > 1e-12, a - 2 * b + c, 1e-12)
    hz = (k + np.clip(shift, -0.5, 0.5))[tonal] * sample_rate / n_fft
    classes = np.round(69 + 12 * np.log2(hz / 440.0)).astype(int) % 12
    profile = np.bincount(classes, minlength=12).astype(np.float64)
    return profile / profile.sum()


def _check_tonic(tonic: str) -> int:
    if tonic not in PITCH_CLASSES:
        raise ValueError(f"tonic must be one of {PITCH_CLASSES} (the music generator's key names), got {tonic!r}")
    return PITCH_CLASSES.index(tonic)


def estimate_mode(audio: Any, sample_rate: int, tonic: str) -> str | None:
    """``"major"`` or ``"minor"`` of a clip whose tonic is ``tonic`` (a key name of
    :data:`course_lib.data.music.KEYS`: the prompt's), or ``None`` when undecided.

    The weight of the :func:`pitch_class_profile` on the major third, sixth and seventh above the tonic (4,
    9, 11 semitones) against the minor ones (3, 8, 10): the larger wins; equal weights (no tonal frame, or
    none on those degrees) give ``None``. The tonic is taken from the prompt because relative keys (C major,
    A minor) share all seven notes: on a melody of a dozen notes the Krumhansl-Schmuckler key finder (24
    correlated key profiles) named the right key of only 9 of 48 test clips, while this reads the mode of
    all 48 (4-s clips, at 16 kHz and at 3.2 kHz).
    """
    t = _check_tonic(tonic)
    profile = pitch_class_profile(audio, sample_rate)
    major = profile[(t + _MAJOR_DEGREES) % 12].sum()
    minor = profile[(t + _MINOR_DEGREES) % 12].sum()
    if math.isclose(major, minor, abs_tol=1e-9):
        return None
    return "major" if major > minor else "minor"


def tempo_error(audio: Any, sample_rate: int, target_bpm: float) -> float:
    """``|estimated − target|`` in BPM, with :func:`~course_lib.data.probes.estimate_tempo`; ``inf`` when no
    tempo is found (a flat onset envelope), so such a clip never counts as on tempo."""
    if isinstance(target_bpm, bool) or not isinstance(target_bpm, (int, float, np.integer, np.floating)) \
            or not target_bpm > 0:
        raise ValueError(f"target_bpm must be a positive number of beats per minute, got {target_bpm!r}")
    bpm = estimate_tempo(audio, sample_rate)
    return abs(bpm - float(target_bpm)) if np.isfinite(bpm) else float("inf")


# ---- the instrument classifier ----------------------------------------------------------------------------


def instrument_classifier_config(sample_rate: int = 16_000, version: int = 1) -> EventClassifierConfig:
    """An :class:`EventClassifierConfig` over the instruments of music generator ``version`` (1:
    :data:`course_lib.data.music.INSTRUMENTS`, six; 2: :data:`course_lib.data.music_sf2.INSTRUMENTS`, those
    and strings and brass) at ``sample_rate`` Hz: 16 kHz uses the sound-event probe's front end (64 ms frames,
    64 mels); lower rates (Noise2Music's 3.2 kHz) keep 64 ms frames with 32 mels, as many as their narrower
    band holds."""
    classes = music.INSTRUMENTS
    if music.check_version(version) == 2:
        from course_lib.data import music_sf2

        classes = music_sf2.INSTRUMENTS
    if sample_rate >= 16_000:
        return EventClassifierConfig(classes=classes, sample_rate=sample_rate)
    n_fft = 1 << int(round(math.log2(0.064 * sample_rate)))
    return EventClassifierConfig(classes=classes, sample_rate=sample_rate, n_fft=n_fft,
                                 hop_length=n_fft // 4, n_mels=32, stat_bands=16)


def music_training_audio(clips: list, sample_rate: int = 16_000, peak: float | None = None) -> torch.Tensor:
    """Music clips (16 kHz :class:`~course_lib.data.clip.Clip` s of equal length) as ``(N, T)`` float32 at
    ``sample_rate`` Hz, band-limited by resampling as the low-rate stage sees them; ``peak`` rescales each
    clip to that peak level first (None keeps the level)."""
    wav = torch.from_numpy(np.stack([c.audio for c in clips])).float()
    if peak is not None:
        wav = wav * (peak / wav.abs().amax(dim=1, keepdim=True).clamp_min(1e-8))
    return resample(wav, clips[0].sample_rate, sample_rate) if sample_rate != clips[0].sample_rate else wav


def train_instrument_classifier(n_per_class: int = 40, seed: int = 0, epochs: int = 300, clip_seconds: float = 4.0,
                                sample_rate: int = 16_000, lr: float = 3e-3, version: int = 1) -> EventClassifier:
    """Train an instrument probe: an :class:`EventClassifier` over the instruments of music generator
    ``version`` (1, the default and what the shipped cards' probe is trained on: six; 2: eight, played on
    SoundFont instruments) at ``sample_rate`` Hz.

    Its data are ``n_per_class · len(classes)`` train-split music clips, indices ``seed·10⁶ …`` (instruments
    cycle with the index, so the classes are balanced), made at 16 kHz and resampled to ``sample_rate``; half
    of them carry drums, as in the generator. Full-batch AdamW on cross-entropy, ``epochs`` steps (as
    :func:`~course_lib.data.probes.train_event_classifier`); ``seed`` also seeds the weights.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 4000:
        raise ValueError(f"seed must be an int in [0, 4000), got {seed!r}")
    config = instrument_classifier_config(sample_rate, version)
    classes = config.classes
    clips = list(music.generate_clips("train", n_per_class * len(classes), clip_seconds, 16_000,
                                      start=seed * 10**6, version=version))
    labels = torch.tensor([classes.index(c.attributes["instrument"]) for c in clips])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EventClassifier(config)
    with torch.no_grad():
        feats = model.features(music_training_audio(clips, sample_rate), sample_rate)
        model.feature_mean.copy_(feats.mean(dim=0))
        model.feature_std.copy_(feats.std(dim=0).clamp_min(1e-3))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    model.train()
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(feats), labels)
            loss.backward()
            opt.step()
    return model.eval()


# ---- did the music follow its prompt? -------------------------------------------------------------------


def music_adherence(audio: Any, sample_rate: int, attributes: dict[str, Any], classifier: EventClassifier | None = None,
                    tempo_tolerance: float = TEMPO_TOLERANCE) -> dict[str, Any]:
    """Check one clip against its prompt's attributes (a music :class:`Clip`'s ``attributes``).

    Returns ``tempo_error_bpm`` (:func:`tempo_error`) and ``tempo`` (within ``tempo_tolerance``, relative)
    when the attributes hold ``tempo_bpm``; ``mode`` (:func:`estimate_mode` with the prompt's ``key`` as the
    tonic equals ``mode``) when they hold both; ``instrument`` (the ``classifier``'s answer equals
    ``instrument``) when a classifier is given. Absent attributes are not checked.
    """
    if not isinstance(attributes, dict):
        raise TypeError(f"attributes must be a dict (a music Clip's .attributes), got {type(attributes).__name__}")
    x = _mono(audio, sample_rate)
    result: dict[str, Any] = {}
    if attributes.get("tempo_bpm") is not None:
        err = tempo_error(x, sample_rate, attributes["tempo_bpm"])
        result["tempo_error_bpm"] = err
        result["tempo"] = bool(err <= tempo_tolerance * float(attributes["tempo_bpm"]))
    if attributes.get("mode") is not None and attributes.get("key") is not None:
        result["mode"] = estimate_mode(x, sample_rate, tonic=attributes["key"]) == attributes["mode"]
    if classifier is not None and attributes.get("instrument") is not None:
        result["instrument"] = classifier.predict(x.astype(np.float32), sample_rate) == attributes["instrument"]
    return result


def summarise_adherence(checks: list[dict[str, Any]]) -> dict[str, float]:
    """Rates over many :func:`music_adherence` results: ``tempo_accuracy`` (share within the tolerance),
    ``tempo_error_bpm`` (median absolute error; ``inf`` if most clips have no tempo), ``mode_accuracy``,
    ``instrument_accuracy``; a key no check holds is left out. Rounded to 4 decimals."""
    out: dict[str, float] = {}
    for key in ("tempo", "mode", "instrument"):
        hits = [c[key] for c in checks if key in c]
        if hits:
            out[f"{key}_accuracy"] = round(sum(hits) / len(hits), 4)
    errors = [c["tempo_error_bpm"] for c in checks if "tempo_error_bpm" in c]
    if errors:
        out["tempo_error_bpm"] = round(float(np.median(errors)), 3)
    return out
