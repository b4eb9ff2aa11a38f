"""Probes that read attributes back from audio: pitch, event count, rate, loudness, tempo, class.

Later lessons use these to measure whether *generated* audio followed its prompt ("the model made a
high-pitched bell ring twice in 83% of the clips"), so each probe is simple enough to trust and is tested
against closed forms (a 440 Hz sine, N clicks, a full-scale sine's -3.01 dBFS) and against fresh test-split
clips of :mod:`course_lib.data.sound_events` and :mod:`course_lib.data.music`.

Every function takes one mono clip, ``(time,)`` (or ``(1, time)``), as a NumPy array or torch tensor of
float samples, and its ``sample_rate`` in Hz.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.audio import MelConfig, log_mel, resample
from course_lib.data import sound_events
from course_lib.data.synth import BAND_EDGES_HZ, PITCH_BANDS, pitch_band

__all__ = ["BAND_EDGES_HZ", "PITCH_BANDS", "pitch_band", "loudness_db", "estimate_pitch", "event_onsets",
           "count_events", "event_rate", "onset_strength", "estimate_tempo", "EventClassifierConfig", "EventClassifier",
           "train_event_classifier", "adherence"]


# --------------------------------------------------------------------------------------------------------
# Input checks and framing
# --------------------------------------------------------------------------------------------------------


def _mono(audio: Any, sample_rate: int | None = None, min_seconds: float = 0.0) -> np.ndarray:
    """Return one mono clip as float64 ``(time,)``; raise a clear error for anything else."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    x = np.asarray(audio)
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise TypeError(f"audio must be real float samples, got dtype {x.dtype}")
    if x.ndim > 1 and all(s == 1 for s in x.shape[:-1]):
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(f"expected one mono clip shaped (time,) or (1, time), got shape {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinite values")
    if sample_rate is not None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int in Hz, got {sample_rate!r}")
        if len(x) < min_seconds * sample_rate:
            raise ValueError(f"audio is {len(x) / sample_rate:.3f} s long; this probe needs at least "
                             f"{min_seconds} s")
    return x.astype(np.float64)


def _frame_energy(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Mean square of ``x`` over frames of ``frame`` samples every ``hop`` samples ``(frames,)``."""
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(0, max(len(x) - frame, 0) + 1, hop)
    return (csum[np.minimum(starts + frame, len(x))] - csum[starts]) / frame


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Magnitude STFT ``(frames, n_fft // 2 + 1)`` with a Hann window (no centring; zero-padded if short)."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1))


# --------------------------------------------------------------------------------------------------------
# Level, pitch, events, tempo
# --------------------------------------------------------------------------------------------------------


def loudness_db(audio: Any) -> float:
    """RMS level of the whole clip in dBFS: ``20·log10(rms)``, floored at -100 dB.

    0 dB is a full-scale square wave, so a full-scale sine reads ``20·log10(1/√2) = -3.01`` dB. This is the
    definition of the sound-event attribute ``loudness_db`` (measured on the event track alone).
    """
    x = _mono(audio)
    value = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return max(20.0 * math.log10(max(value, 1e-12)), -100.0)


def estimate_pitch(audio: Any, sample_rate: int, fmin: float = 60.0, fmax: float = 8000.0,
                   tonal_db: float = 20.0) -> float | None:
    """Frequency in Hz of the dominant pitched component of a clip, or ``None`` if it is not pitched.

    The clip is cut into 64 ms Hann frames (hop 16 ms); only the *active* frames, within 12 dB of the
    loudest, are looked at. In each, the strongest spectral peak between ``fmin`` and ``fmax`` is located to
    a fraction of a bin by parabolic interpolation of the log magnitude; the frame is *tonal* if that peak
    stands ``tonal_db`` above the median of its neighbourhood (4 to 24 bins away), which noise never does.
    If at least 30% of the active frames are tonal, the answer is the median (in log frequency) of their
    peaks; otherwise ``None``. A pure 440 Hz tone reads 440 Hz to well within 1%. For harmonic sounds this
    is the strongest partial, which for every pitched class of the course's generators is the fundamental.
    """
    x = _mono(audio, sample_rate, min_seconds=0.05)
    n_fft = 1 << int(round(math.log2(0.064 * sample_rate)))
    mag = _stft_mag(x, n_fft, n_fft // 4)
    power = (mag ** 2).sum(axis=1)
    if power.max() <= 1e-20:
        return None
    active = np.flatnonzero(power >= power.max() * 10 ** (-12 / 10))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo = max(int(np.searchsorted(freqs, fmin)), 1)
    hi = min(int(np.searchsorted(freqs, min(fmax, 0.48 * sample_rate))), len(freqs) - 2)
    if hi <= lo:
        raise ValueError(f"no frequencies between fmin={fmin} and fmax={fmax} Hz at sample_rate={sample_rate}")
    logmag = np.log(mag[active] + 1e-12)
    k = lo + np.argmax(logmag[:, lo:hi], axis=1)  # (active,) peak bins
    rows = np.arange(len(active))
    offsets = np.concatenate([np.arange(-24, -3), np.arange(4, 25)])
    edged = np.pad(logmag, ((0, 0), (24, 24)), mode="edge")
    neighbourhood = np.median(edged[rows[:, None], 24 + k[:, None] + offsets[None, :]], axis=1)
    tonal = (logmag[rows, k] - neighbourhood) * (20 / math.log(10)) >= tonal_db
    if tonal.sum() < max(1, 0.3 * len(active)):
        return None
    a, b, c = logmag[rows, k - 1], logmag[rows, k], logmag[rows, k + 1]
    shift = 0.5 * (a - c) / np.where(np.abs(a - 2 * b + c) > 1e-12, a - 2 * b + c, 1e-12)
    peaks = (k + np.clip(shift, -0.5, 0.5)) * sample_rate / n_fft
    return float(np.exp(np.median(np.log(peaks[tonal]))))


def event_onsets(audio: Any, sample_rate: int, rise_db: float = 8.0, range_db: float = 30.0,
                 floor_db: float = 12.0, min_gap: float = 0.1) -> np.ndarray:
    """Onset times (s) of the distinct events in a clip, from its energy envelope ``(onsets,)``.

    The envelope is the mean square over 40 ms frames every 5 ms, in dB. A frame belongs to an onset when
    its level has risen by at least ``rise_db`` over the quietest of the previous 60 ms, is within
    ``range_db`` of the loudest frame and at least ``floor_db`` above the clip's floor (its 10th-percentile
    frame). Each run of such frames is one onset; onsets closer than ``min_gap`` s to the previous one are
    merged. A continuous background 15 dB or more below the events neither adds nor hides onsets.
    """
    x = _mono(audio, sample_rate, min_seconds=0.05)
    frame, hop = int(0.04 * sample_rate), int(0.005 * sample_rate)
    level = 10 * np.log10(_frame_energy(x, frame, hop) + 1e-12)
    back = int(round(0.06 / 0.005))
    padded = np.concatenate([np.full(back, level[0]), level])
    previous_min = np.lib.stride_tricks.sliding_window_view(padded[:-1], back).min(axis=1)
    floor = np.percentile(level, 10)
    hot = (level - previous_min >= rise_db) & (level >= level.max() - range_db) & (level >= floor + floor_db)
    starts = np.flatnonzero(hot & ~np.concatenate([[False], hot[:-1]]))  # first frame of each run
    onsets: list[float] = []
    for t in starts * hop / sample_rate:  # a handful of runs
        if not onsets or t - onsets[-1] >= min_gap:
            onsets.append(float(t))
    return np.asarray(onsets)


def count_events(audio: Any, sample_rate: int) -> int:
    """Number of distinct events (strikes, beeps, steps, knocks, ...) in a clip: see :func:`event_onsets`."""
    return len(event_onsets(audio, sample_rate))


def event_rate(audio: Any, sample_rate: int) -> float | None:
    """Events per second of a periodic sound (steps, ticks): 1 / median inter-onset interval.

    ``None`` when fewer than three onsets are found (no rate can be trusted from one interval).
    """
    onsets = event_onsets(audio, sample_rate)
    if len(onsets) < 3:
        return None
    return float(1.0 / np.median(np.diff(onsets)))


def onset_strength(audio: Any, sample_rate: int, hop_seconds: float = 0.008) -> tuple[np.ndarray, float]:
    """Spectral-flux onset envelope of a clip and its frame rate: ``(frames,)`` and frames per second.

    Flux is the sum over frequency of the positive change in log-compressed magnitude (64 ms frames),
    minus its local (0.5 s) mean and half-wave rectified, so that only sudden changes remain.
    """
    x = _mono(audio, sample_rate, min_seconds=0.5)
    n_fft = 1 << int(round(math.log2(0.064 * sample_rate)))
    hop = max(int(round(hop_seconds * sample_rate)), 1)
    logmag = np.log1p(100.0 * _stft_mag(x, n_fft, hop) / max(np.abs(x).max(), 1e-9))
    flux = np.maximum(np.diff(logmag, axis=0), 0.0).sum(axis=1)
    width = max(int(0.5 * sample_rate / hop), 1)
    csum = np.concatenate([[0.0], np.cumsum(np.pad(flux, (width // 2, width - width // 2 - 1), mode="edge"))])
    local = (csum[width:] - csum[:-width]) / width
    return np.maximum(flux - local, 0.0), sample_rate / hop


def estimate_tempo(audio: Any, sample_rate: int, min_bpm: float = 55.0, max_bpm: float = 200.0,
                   fast_ratio: float = 0.7) -> float:
    """Tempo of a clip in beats per minute, from the autocorrelation of its onset envelope.

    The autocorrelation of :func:`onset_strength` peaks at the beat period and at its multiples. Among the
    peaks whose lag lies in ``[60/max_bpm, 60/min_bpm]`` s, the *shortest* lag whose height is at least
    ``fast_ratio`` times the highest is taken (a beat period also repeats at twice the period, so the
    highest peak alone is often an octave too slow), refined by parabolic interpolation. Returns ``nan``
    when the envelope is flat (no onsets).
    """
    if not 0 < min_bpm < max_bpm:
        raise ValueError(f"need 0 < min_bpm < max_bpm, got {min_bpm}, {max_bpm}")
    env, rate = onset_strength(audio, sample_rate)
    env = env - env.mean()
    size = 1 << (2 * len(env) - 1).bit_length()
    spec = np.fft.rfft(env, size)
    acf = np.fft.irfft(spec * np.conj(spec), size)[:len(env)]
    if acf[0] <= 1e-12:
        return float("nan")
    acf = acf / acf[0]
    lo, hi = int(math.floor(rate * 60 / max_bpm)), min(int(math.ceil(rate * 60 / min_bpm)), len(acf) - 2)
    lags = np.arange(max(lo, 1), hi + 1)
    is_peak = (acf[lags] > acf[lags - 1]) & (acf[lags] >= acf[lags + 1]) & (acf[lags] > 0)
    peaks = lags[is_peak]
    if len(peaks) == 0:
        return float("nan")
    best = acf[peaks].max()
    lag = int(peaks[np.argmax(acf[peaks] >= fast_ratio * best)])
    a, b, c = acf[lag - 1], acf[lag], acf[lag + 1]
    denom = a - 2 * b + c
    shift = 0.5 * (a - c) / denom if abs(denom) > 1e-12 else 0.0
    return float(60.0 * rate / (lag + np.clip(shift, -0.5, 0.5)))


# --------------------------------------------------------------------------------------------------------
# A small event classifier over log-mel statistics
# --------------------------------------------------------------------------------------------------------


_PEAK_OFFSETS = torch.arange(-12, 13)
_ENVELOPE_DB = torch.tensor([3.0, 6.0, 12.0, 24.0, 36.0])
_N_SHAPE = len(_PEAK_OFFSETS) + len(_ENVELOPE_DB) + 9


def _shape_features(lm: torch.Tensor) -> torch.Tensor:
    """Pitch-independent summaries of a log-mel ``(B, n_mels, frames)`` whose maximum is 0: ``(B, _N_SHAPE)``.

    The spectrum around each frame's strongest band (aligned on that band, so a beep at 300 Hz and at 2 kHz
    look alike) averaged over active frames; the share of frames within 3 ... 36 dB of the loudest; the
    envelope's mean rise and fall; the spread of the peak band over time; the spectral flatness.
    """
    to_db = 20.0 / math.log(10.0)
    bsz, n_mels, _ = lm.shape
    envelope = torch.logsumexp(2 * lm, dim=1) / 2  # (B, frames), log amplitude
    envelope = (envelope - envelope.amax(dim=1, keepdim=True)) * to_db
    active = (envelope > -12.0).float()
    weight = active / active.sum(dim=1, keepdim=True)
    peak = lm.argmax(dim=1)  # (B, frames)
    idx = (peak[:, None, :] + _PEAK_OFFSETS[None, :, None].to(lm.device)).clamp(0, n_mels - 1)
    around = torch.gather(lm, 1, idx) - lm.amax(dim=1, keepdim=True)  # (B, offsets, frames)
    aligned = (around * weight[:, None, :]).sum(dim=2)
    shares = (envelope[:, None, :] > -_ENVELOPE_DB.to(lm.device)[None, :, None]).float().mean(dim=2)
    step = envelope.diff(dim=1)
    peak_pos = peak.float() / n_mels
    peak_mean = (peak_pos * weight).sum(dim=1)
    peak_spread = ((peak_pos - peak_mean[:, None]) ** 2 * weight).sum(dim=1).sqrt()
    flatness = (lm.mean(dim=1) - torch.logsumexp(lm, dim=1) + math.log(n_mels)) * to_db
    extras = torch.stack([step.clamp_min(0).mean(dim=1), (-step).clamp_min(0).mean(dim=1),
                          step.amax(dim=1), envelope.std(dim=1), peak_mean, peak_spread,
                          (flatness * weight).sum(dim=1), flatness.std(dim=1),
                          active.diff(dim=1).clamp_min(0).sum(dim=1) / lm.shape[2] * 100], dim=1)
    return torch.cat([aligned, shares, extras], dim=1)


@dataclass(frozen=True)
class EventClassifierConfig:
    """Settings of :class:`EventClassifier`: its classes, the mel front end and the MLP sizes."""

    classes: tuple[str, ...] = sound_events.EVENT_CLASSES
    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    stat_bands: int = 16  # the per-band statistics are averaged over groups of n_mels / stat_bands bands
    hidden: int = 128
    embed_dim: int = 64

    def __post_init__(self) -> None:
        if self.n_mels % self.stat_bands:
            raise ValueError(f"n_mels={self.n_mels} must be a multiple of stat_bands={self.stat_bands}")

    @property
    def n_features(self) -> int:
        """Length of the feature vector: 4 statistics per band group plus the shape statistics."""
        return 4 * self.stat_bands + _N_SHAPE

    def mel(self) -> MelConfig:
        """The mel front end (:class:`course_lib.audio.MelConfig`) the features are computed with."""
        return MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                         n_mels=self.n_mels)


class EventClassifier(nn.Module):
    """Sound-event classifier: log-mel statistics → MLP → class logits.

    The log-mel spectrogram ``(n_mels, frames)`` of a clip is shifted so its loudest bin is 0 (so the level
    does not matter) and summarised two ways: per group of mel bands (``stat_bands`` groups) by its mean,
    standard deviation, maximum and mean absolute frame-to-frame change; and by pitch-independent shape
    statistics (the spectrum aligned on each frame's peak band, how much of the clip is loud, how the
    envelope rises and falls, spectral flatness). The ``4 · stat_bands + 39`` features are standardised with
    the training set's statistics (kept as buffers, so they are saved with the weights). Two hidden layers follow; the second's activations
    ``(batch, embed_dim)`` are the clip *embedding* (:meth:`embed`), used like a tiny PANN/VGGish for
    FAD-style distances.
    """

    def __init__(self, config: EventClassifierConfig = EventClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        self.body = nn.Sequential(nn.Linear(config.n_features, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.embed_dim), nn.ReLU())
        self.head = nn.Linear(config.embed_dim, len(config.classes))

    def features(self, audio: torch.Tensor | np.ndarray, sample_rate: int | None = None) -> torch.Tensor:
        """Raw (unstandardised) log-mel statistics ``(batch, n_features)`` of clips ``(batch, time)``
        (or one clip ``(time,)``), resampled to the classifier's rate first if ``sample_rate`` differs."""
        wav = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio).float()
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2:
            raise ValueError(f"expected clips (batch, time), (batch, 1, time) or (time,), got {tuple(wav.shape)}")
        rate = sample_rate or self.config.sample_rate
        if rate != self.config.sample_rate:
            wav = resample(wav, rate, self.config.sample_rate)
        if len(wav) > 64:  # bound the memory of the complex STFT: 64 clips at a time
            return torch.cat([self.features(chunk) for chunk in wav.split(64)])
        lm = log_mel(wav.to(self.feature_mean.device), self.config.mel(), amin=1e-6)  # (B, n_mels, frames)
        lm = lm - lm.amax(dim=(1, 2), keepdim=True)
        delta = lm.diff(dim=2).abs().mean(dim=2)
        per_band = torch.stack([lm.mean(dim=2), lm.std(dim=2), lm.amax(dim=2), delta], dim=1)  # (B, 4, n_mels)
        per_band = per_band.reshape(len(lm), 4, self.config.stat_bands, -1).mean(dim=3).flatten(1)
        return torch.cat([per_band, _shape_features(lm)], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits ``(batch, n_classes)`` from raw features ``(batch, n_features)``."""
        return self.head(self.body((features - self.feature_mean) / self.feature_std))

    @torch.no_grad()
    def embed(self, audio: torch.Tensor | np.ndarray, sample_rate: int | None = None) -> torch.Tensor:
        """Penultimate-layer embeddings ``(batch, embed_dim)`` of clips ``(batch, time)`` or ``(time,)``."""
        return self.body((self.features(audio, sample_rate) - self.feature_mean) / self.feature_std)

    @torch.no_grad()
    def predict_proba(self, audio: torch.Tensor | np.ndarray, sample_rate: int | None = None) -> torch.Tensor:
        """Class probabilities ``(batch, n_classes)`` of clips ``(batch, time)`` or ``(time,)``."""
        return self(self.features(audio, sample_rate)).softmax(dim=-1)

    def predict(self, audio: torch.Tensor | np.ndarray, sample_rate: int | None = None) -> str | list[str]:
        """The most likely class name of one clip ``(time,)``, or a list of names for a batch ``(batch, time)``."""
        was_single = (audio.dim() if isinstance(audio, torch.Tensor) else np.ndim(audio)) == 1
        names = [self.config.classes[i] for i in self.predict_proba(audio, sample_rate).argmax(dim=-1).tolist()]
        return names[0] if was_single else names

    def save(self, path_dir: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``path_dir`` (created); return the folder."""
        from safetensors.torch import save_file

        path = Path(path_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))
        return path

    @classmethod
    def load(cls, path_dir: str | Path) -> EventClassifier:
        """Rebuild a classifier saved by :meth:`save` (no pickle: JSON config + safetensors weights)."""
        from safetensors.torch import load_file

        path = Path(path_dir)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} not found; expected a folder written by EventClassifier.save")
        raw = json.loads((path / "config.json").read_text())
        raw["classes"] = tuple(raw["classes"])
        model = cls(EventClassifierConfig(**raw))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()


def train_event_classifier(n_per_class: int = 40, seed: int = 0, epochs: int = 300, clip_seconds: float = 4.0,
                           sample_rate: int = 16_000, lr: float = 3e-3, version: int = 1) -> EventClassifier:
    """Train an :class:`EventClassifier` on ``n_per_class`` generated train-split clips of each class.

    The clips are train-split indices ``seed·10⁶ … seed·10⁶ + n_per_class·12 - 1`` (class-balanced, since
    consecutive indices cycle through the classes) of sound-event generator ``version`` (1, the default and
    what the shipped cards' probe is trained on, or 2); ``seed`` also seeds the weights. Full-batch Adam with a
    little weight decay, ``epochs`` steps on cross-entropy: a few seconds on one CPU core.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 4000:
        raise ValueError(f"seed must be an int in [0, 4000), got {seed!r}")
    config = EventClassifierConfig(sample_rate=sample_rate)
    classes = config.classes
    clips = list(sound_events.generate_clips("train", n_per_class * len(classes), clip_seconds, sample_rate,
                                             start=seed * 10**6, version=version))
    labels = torch.tensor([classes.index(c.attributes["class"]) for c in clips])
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's global RNG
        torch.manual_seed(seed)
        model = EventClassifier(config)
    with torch.no_grad():
        feats = model.features(np.stack([c.audio for c in clips]), sample_rate)
        model.feature_mean.copy_(feats.mean(dim=0))
        model.feature_std.copy_(feats.std(dim=0).clamp_min(1e-3))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    model.train()
    for _ in range(epochs):  # full batch: the features of a few hundred clips fit easily
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(feats), labels)
        loss.backward()
        opt.step()
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# Did the audio follow its prompt?
# --------------------------------------------------------------------------------------------------------


def adherence(audio: Any, sample_rate: int, attributes: dict[str, Any], classifier: EventClassifier | None = None,
              tempo_tolerance: float = 0.04) -> dict[str, bool]:
    """For each attribute the probes can check, whether ``audio`` matches it.

    Checks ``class`` (only with a ``classifier``), ``count`` (:func:`count_events` equals it),
    ``pitch_band`` (:func:`estimate_pitch` finds a pitch in that band) and ``tempo_bpm`` (as ``"tempo"``:
    :func:`estimate_tempo` within ``tempo_tolerance``, relative). Attributes that are absent or ``None`` are
    not checked, so the dict holds only the checks that apply.
    """
    if not isinstance(attributes, dict):
        raise TypeError(f"attributes must be a dict (a Clip's .attributes), got {type(attributes).__name__}")
    x = _mono(audio, sample_rate)
    result: dict[str, bool] = {}
    if classifier is not None and attributes.get("class") is not None:
        result["class"] = classifier.predict(x.astype(np.float32), sample_rate) == attributes["class"]
    if attributes.get("count") is not None:
        result["count"] = count_events(x, sample_rate) == int(attributes["count"])
    if attributes.get("pitch_band") is not None:
        hz = estimate_pitch(x, sample_rate)
        result["pitch_band"] = hz is not None and pitch_band(hz) == attributes["pitch_band"]
    if attributes.get("tempo_bpm") is not None:
        bpm = estimate_tempo(x, sample_rate)
        target = float(attributes["tempo_bpm"])
        result["tempo"] = bool(np.isfinite(bpm) and abs(bpm - target) <= tempo_tolerance * target)
    return result
