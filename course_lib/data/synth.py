"""Small, vectorised synthesis helpers shared by the course's data generators.

Everything here works on NumPy float arrays of samples ``(time,)`` at a given ``sample_rate`` (Hz) and is
vectorised over samples: the only Python loops are over a handful of events or partials. The helpers are
deliberately plain (additive tones, FFT-shaped noise, exponential envelopes) so that a student can read a
generator and know exactly what every clip contains.

Seeds: a clip is addressed by ``(split, index)``. :func:`clip_seed` maps that pair to an integer from a range
that belongs to the split alone (train ``[0, 2**32)``, valid ``[2**32, 2**33)``, test ``[2**33, 3 * 2**32)``),
so two splits can never share a seed, and :func:`make_rng` turns the seed plus a per-dataset stream number
into an independent NumPy generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SEEDS_PER_SPLIT = 2**32
MIN_SAMPLE_RATE = 16_000


# --------------------------------------------------------------------------------------------------------
# Seeds and argument checks
# --------------------------------------------------------------------------------------------------------


def check_split(split: str) -> int:
    """Return the position of ``split`` in :data:`SPLITS`, or raise a ``ValueError`` naming the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


def clip_seed(split: str, index: int) -> int:
    """The integer seed of clip ``index`` of ``split``: ``split_id * 2**32 + index``.

    Each split owns a disjoint range of ``2**32`` seeds, so no train clip can ever share a seed (and hence
    audio) with a valid or test clip. ``index`` must be an int in ``[0, 2**32)``.
    """
    split_id = check_split(split)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < SEEDS_PER_SPLIT:
        raise ValueError(f"index must be an int in [0, 2**32), got {index!r}")
    return split_id * SEEDS_PER_SPLIT + int(index)


def make_rng(seed: int, stream: int) -> np.random.Generator:
    """A NumPy generator for ``seed`` in dataset ``stream`` (so two datasets with one seed stay independent)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def check_clip_args(clip_seconds: float, sample_rate: int, min_seconds: float = 1.0,
                    max_seconds: float = 60.0) -> int:
    """Validate a clip length (s) and sample rate (Hz); return the number of samples.

    Raises a ``ValueError`` that says what was expected: ``clip_seconds`` in ``[min_seconds, max_seconds]``
    and an integer ``sample_rate >= 16000`` (the generators put partials up to ~6 kHz).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not MIN_SAMPLE_RATE <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate must be an int in Hz between {MIN_SAMPLE_RATE} and 192000, "
                         f"got {sample_rate!r}")
    try:
        seconds = float(clip_seconds)
    except (TypeError, ValueError):
        raise ValueError(f"clip_seconds must be a number of seconds, got {clip_seconds!r}") from None
    if not min_seconds <= seconds <= max_seconds:
        raise ValueError(f"clip_seconds must be between {min_seconds} and {max_seconds} s, got {clip_seconds!r}")
    return int(round(seconds * sample_rate))


# --------------------------------------------------------------------------------------------------------
# Levels
# --------------------------------------------------------------------------------------------------------


def rms(x: np.ndarray) -> float:
    """Root-mean-square amplitude of ``x`` (linear)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def to_db(value: float, floor_db: float = -100.0) -> float:
    """``20·log10(value)`` in dB, floored at ``floor_db`` (so silence gives -100 dB, as ``audio.rms_db``)."""
    return max(20.0 * float(np.log10(max(value, 1e-12))), floor_db)


def db_to_gain(db: float) -> float:
    """Linear amplitude gain of ``db`` decibels."""
    return float(10.0 ** (db / 20.0))


# --------------------------------------------------------------------------------------------------------
# Envelopes and placement
# --------------------------------------------------------------------------------------------------------


def time_axis(n: int, sample_rate: int) -> np.ndarray:
    """Times of ``n`` samples in seconds, ``(n,)`` float64."""
    return np.arange(n) / float(sample_rate)


def fades(n: int, sample_rate: int, attack: float, release: float) -> np.ndarray:
    """A gate ``(n,)`` that rises linearly over ``attack`` s, holds at 1 and falls over ``release`` s."""
    t = time_axis(n, sample_rate)
    rise = np.clip(t / max(attack, 1e-6), 0.0, 1.0)
    fall = np.clip((n / sample_rate - t) / max(release, 1e-6), 0.0, 1.0)
    return rise * fall


def decay(n: int, sample_rate: int, tau: float, attack: float = 0.001) -> np.ndarray:
    """An exponential decay ``exp(-t / tau)`` ``(n,)`` (``tau`` in s) with a short linear attack."""
    t = time_axis(n, sample_rate)
    return np.exp(-t / tau) * np.clip(t / max(attack, 1e-6), 0.0, 1.0)


def place(track: np.ndarray, template: np.ndarray, onsets: Sequence[int], gains: Sequence[float] | None = None) -> None:
    """Add ``template`` into ``track`` (in place) at each sample index in ``onsets``, cut at the track's end.

    One Python iteration per event (a handful per clip); the copy itself is a vectorised slice.
    """
    gains = np.ones(len(onsets)) if gains is None else gains
    for onset, gain in zip(onsets, gains):
        onset = int(onset)
        if onset >= len(track):
            continue
        m = min(len(template), len(track) - onset)
        track[onset:onset + m] += gain * template[:m]


def spaced_onsets(rng: np.random.Generator, count: int, spacing: float, clip_seconds: float,
                  event_seconds: float, jitter: float = 0.0, margin: float = 0.1) -> np.ndarray:
    """``count`` onset times (s) ``spacing`` s apart (± ``jitter`` s), starting at a random time.

    The whole pattern (last onset + ``event_seconds``) fits in ``[margin, clip_seconds - margin]``; the
    caller must make sure it can (see :func:`max_count`).
    """
    span = (count - 1) * spacing + event_seconds
    latest = max(clip_seconds - margin - span - jitter, margin)
    start = rng.uniform(margin, latest)
    offsets = rng.uniform(-jitter, jitter, count) if jitter > 0 else np.zeros(count)
    offsets[0] = 0.0
    return start + np.arange(count) * spacing + offsets


def max_count(spacing: float, clip_seconds: float, event_seconds: float, jitter: float = 0.0,
              margin: float = 0.1) -> int:
    """The most events of length ``event_seconds`` that fit ``spacing`` s apart in the clip (see above)."""
    free = clip_seconds - 2 * margin - event_seconds - jitter
    return 0 if free < 0 else int(np.floor(free / spacing + 1e-9)) + 1


# --------------------------------------------------------------------------------------------------------
# Tones and noise
# --------------------------------------------------------------------------------------------------------


def partials(freqs: Sequence[float] | np.ndarray, amps: Sequence[float] | np.ndarray, n: int, sample_rate: int,
             taus: Sequence[float] | np.ndarray | None = None, phases: np.ndarray | None = None) -> np.ndarray:
    """A sum of sinusoids ``Σ_k a_k · exp(-t/τ_k) · sin(2π f_k t + φ_k)`` ``(n,)``; partials at or above
    0.45 · ``sample_rate`` are dropped (no aliasing). ``taus=None`` means no decay.

    Vectorised as one ``(K, n)`` array for ``K`` partials.
    """
    f = np.asarray(freqs, dtype=np.float64)
    a = np.asarray(amps, dtype=np.float64)
    keep = f < 0.45 * sample_rate
    t = time_axis(n, sample_rate)
    phase = np.zeros(len(f)) if phases is None else np.asarray(phases, dtype=np.float64)
    waves = np.sin(2 * np.pi * f[keep, None] * t[None, :] + phase[keep, None]) * a[keep, None]
    if taus is not None:
        tau = np.asarray(taus, dtype=np.float64)[keep]
        waves *= np.exp(-t[None, :] / tau[:, None])
    return waves.sum(axis=0)


def phase_from_frequency(freq: np.ndarray, sample_rate: int) -> np.ndarray:
    """Running phase (radians) of an instantaneous frequency track ``freq`` (Hz, ``(n,)``): ``2π·cumsum(f)/sr``."""
    return 2 * np.pi * np.cumsum(freq) / sample_rate


def harmonic_tone(freq: np.ndarray, amps: Sequence[float], sample_rate: int) -> np.ndarray:
    """A harmonic tone following the frequency track ``freq`` (Hz, ``(n,)``): ``Σ_k a_k sin(k·φ(t))``.

    Harmonics whose frequency would exceed 0.45 · ``sample_rate`` anywhere are dropped.
    """
    phase = phase_from_frequency(freq, sample_rate)
    top = float(np.max(freq)) if freq.size else 0.0
    out = np.zeros_like(phase)
    for k, a in enumerate(amps, start=1):  # a few harmonics: one vectorised line each
        if k * top < 0.45 * sample_rate and a != 0:
            out += a * np.sin(k * phase)
    return out


def shaped_noise(rng: np.random.Generator, n: int, sample_rate: int,
                 gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White Gaussian noise ``(n,)`` filtered in the frequency domain by ``gain(freqs_hz)`` (zero phase).

    The result is scaled to unit RMS, so callers set levels explicitly. The spectrum of white noise is drawn
    directly (independent complex Gaussian bins), which saves the forward FFT.
    """
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spec = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    y = np.fft.irfft(spec * gain(freqs), n)
    return y / max(rms(y), 1e-12)


def band_gain(low: float, high: float, order: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """A Butterworth-like band-pass magnitude response between ``low`` and ``high`` Hz (``low=0``: low-pass)."""

    def gain(f: np.ndarray) -> np.ndarray:
        hp = 1.0 if low <= 0 else 1.0 / np.sqrt(1.0 + (low / np.maximum(f, 1e-3)) ** (2 * order))
        lp = 1.0 / np.sqrt(1.0 + (f / high) ** (2 * order))
        return hp * lp

    return gain


def fft_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution of ``x`` with ``kernel`` via the FFT, trimmed to ``len(x)`` samples."""
    n = len(x) + len(kernel) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(kernel, size), size)
    return y[:len(x)]


def smooth_random(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """A smooth random curve ``(n,)`` in about [-1, 1] that changes on a time scale of ``1 / rate_hz`` s
    (random knots joined by linear interpolation, then low-passed by a moving average)."""
    knots = max(int(np.ceil(n / sample_rate * rate_hz)) + 2, 2)
    values = rng.uniform(-1, 1, knots)
    curve = np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)
    width = max(int(sample_rate / rate_hz / 2), 1)
    padded = np.concatenate([np.full(width, curve[0]), curve, np.full(width, curve[-1])])
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    averaged = (csum[width:] - csum[:-width]) / width  # moving average over `width` samples
    start = width // 2
    return averaged[start:start + n]


# --------------------------------------------------------------------------------------------------------
# Pitch bands (shared by the generators and the probes that read them back)
# --------------------------------------------------------------------------------------------------------

#: Boundaries between the pitch bands in Hz: low < 350 <= mid < 1050 <= high.
BAND_EDGES_HZ: tuple[float, float] = (350.0, 1050.0)
PITCH_BANDS: tuple[str, ...] = ("low", "mid", "high")
#: Where the generators draw pitches for each band (Hz): well inside the band, so that a pitch tracker's
#: small errors (or a siren's ±0.15-octave sweep) never cross a boundary.
BAND_RANGES_HZ: dict[str, tuple[float, float]] = {"low": (140.0, 290.0), "mid": (420.0, 880.0),
                                                  "high": (1260.0, 2600.0)}


def pitch_band(hz: float) -> str:
    """The pitch band of a frequency in Hz: ``"low"`` below 350 Hz, ``"mid"`` below 1050 Hz, else ``"high"``."""
    if isinstance(hz, bool) or not isinstance(hz, (int, float, np.integer, np.floating)) \
            or not np.isfinite(hz) or hz <= 0:
        raise ValueError(f"pitch_band expects a positive frequency in Hz, got {hz!r}")
    return "low" if hz < BAND_EDGES_HZ[0] else "mid" if hz < BAND_EDGES_HZ[1] else "high"
