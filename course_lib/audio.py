"""Audio in and out, the STFT/mel front end, decibels, plots and listening helpers.

Conventions used across the course (see DESIGN.md):

* audio tensors are float32 in [-1, 1], shaped ``(channels, time)`` for one clip and ``(batch, channels,
  time)`` for a batch; time is counted in samples;
* spectrograms are ``(..., n_freqs, frames)`` and mel spectrograms ``(..., n_mels, frames)``;
* the course's default sample rate is 16 kHz, mono.

Files are read and written with ``soundfile`` (libsndfile), not ``torchaudio.load``: torchaudio's I/O needs
FFmpeg through torchcodec, which a student's laptop may not have. torchaudio is used for transforms only.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000

# --------------------------------------------------------------------------------------------------------
# Input / output
# --------------------------------------------------------------------------------------------------------


def as_tensor(wav: torch.Tensor | np.ndarray | Sequence[float], name: str = "audio") -> torch.Tensor:
    """Return ``wav`` as a float32 torch tensor, rejecting non-numeric or non-finite input by name."""
    if isinstance(wav, np.ndarray):
        if not np.issubdtype(wav.dtype, np.number):
            raise TypeError(f"{name} must be numeric, got a NumPy array of dtype {wav.dtype}")
        wav = torch.from_numpy(np.ascontiguousarray(wav))
    elif not isinstance(wav, torch.Tensor):
        wav = torch.as_tensor(wav)
    if wav.is_complex():
        raise TypeError(f"{name} must be real-valued, got complex dtype {wav.dtype}")
    wav = wav.float()
    if not torch.isfinite(wav).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return wav


def load_audio(path: str | os.PathLike, sample_rate: int | None = SAMPLE_RATE, mono: bool = True) -> torch.Tensor:
    """Read an audio file into a float32 tensor ``(channels, time)`` in [-1, 1].

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        sample_rate: resample to this rate in Hz (``None`` keeps the file's rate; use
            :func:`load_audio_with_rate` to get the rate back).
        mono: average the channels into one (shape ``(1, time)``).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` naming the file for an unreadable or
    zero-length one, or one that holds NaN or infinite samples (with their count).
    """
    wav, _ = load_audio_with_rate(path, sample_rate=sample_rate, mono=mono)
    return wav


def load_audio_with_rate(
    path: str | os.PathLike, sample_rate: int | None = SAMPLE_RATE, mono: bool = True
) -> tuple[torch.Tensor, int]:
    """Like :func:`load_audio` but also return the sample rate of the returned tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (time, channels)
    except Exception as err:  # libsndfile's own errors are terse; say which file
        raise ValueError(f"could not read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} has zero length")
    check_finite_samples(data, f"audio file {path}")
    wav = torch.from_numpy(data.T.copy())  # (channels, time)
    if mono and wav.shape[0] > 1:
        wav = wav.mean(dim=0, keepdim=True)
    if sample_rate is not None and sample_rate != file_rate:
        wav = resample(wav, file_rate, sample_rate)
        file_rate = sample_rate
    return wav, int(file_rate)


def check_finite_samples(data: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and how many samples are NaN or infinite (a float WAV can hold them).

    Such audio cannot be trained on or listened to; found at load time, the error says which file it is
    instead of a NaN loss many steps later.
    """
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise ValueError(f"{name} holds {bad} non-finite sample(s) (NaN or infinity) out of {data.size}; "
                         f"the file is damaged or was written from a broken computation")


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE,
               subtype: str = "PCM_16") -> Path:
    """Write ``wav`` (``(time,)`` or ``(channels, time)``, float in [-1, 1]) to ``path``; return the path.

    Values outside [-1, 1] are clipped (16-bit PCM cannot hold them) with a warning that says by how much.
    """
    wav = as_tensor(wav)
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"save_audio expects (time,) or (channels, time), got shape {tuple(wav.shape)}")
    _check_rate(sample_rate)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak > 1.0:
        import warnings

        warnings.warn(f"clipping audio with peak {peak:.2f} to [-1, 1] while saving {path}", stacklevel=2)
        wav = wav.clamp(-1, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.T.numpy(), sample_rate, subtype=subtype)
    return path


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample rate must be a positive int in Hz, got {sample_rate!r}")


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited (windowed-sinc) resampling along the last axis, from ``orig_rate`` to ``new_rate`` Hz."""
    _check_rate(orig_rate)
    _check_rate(new_rate)
    wav = as_tensor(wav)
    if orig_rate == new_rate:
        return wav
    return AF.resample(wav, int(orig_rate), int(new_rate))


# --------------------------------------------------------------------------------------------------------
# STFT, mel and decibels
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MelConfig:
    """Parameters of the course's mel front end (defaults: 16 kHz, 64 ms window, 16 ms hop, 80 bands).

    The filter bank is librosa's default (Slaney mel scale, Slaney area normalisation), so
    ``librosa.feature.melspectrogram(y, sr, n_fft, hop_length, n_mels=..., fmin, fmax, power)`` gives the
    same numbers (a test checks this).
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None  # None means sample_rate / 2
    power: float = 1.0  # 1: magnitude mel (vocoders, VQ-VAE); 2: power mel

    def __post_init__(self) -> None:
        _check_rate(self.sample_rate)
        if self.hop_length <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            raise ValueError(f"n_fft, hop_length and n_mels must be positive: {self}")
        nyquist = self.sample_rate / 2
        if not 0 <= self.f_min < (self.f_max or nyquist) <= nyquist:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2 = {nyquist} Hz, got {self}")

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)


def num_frames(num_samples: int, hop_length: int, center: bool = True, n_fft: int | None = None) -> int:
    """Number of STFT frames for a signal of ``num_samples`` samples.

    With ``center=True`` (the course's convention, as in librosa and torch) the signal is padded by
    ``n_fft // 2`` on both sides, giving ``1 + num_samples // hop_length`` frames for an even ``n_fft``
    (``1 + (num_samples - 1) // hop_length`` for an odd one). Without centering,
    ``1 + (num_samples - n_fft) // hop_length`` frames (0 if the signal is shorter than one window).
    """
    if center:
        if n_fft is None or n_fft % 2 == 0:
            return 1 + num_samples // hop_length
        return 1 + (num_samples - 1) // hop_length  # odd n_fft pads n_fft // 2 = (n_fft - 1) / 2 per side
    if n_fft is None:
        raise ValueError("n_fft is needed when center=False")
    return 0 if num_samples < n_fft else 1 + (num_samples - n_fft) // hop_length


def stft(wav: torch.Tensor, n_fft: int = 1024, hop_length: int = 256, win_length: int | None = None) -> torch.Tensor:
    """Complex STFT of ``wav`` (``(..., time)``) with a periodic Hann window, centred with reflect padding.

    Returns ``(..., n_fft // 2 + 1, frames)``, frames as given by :func:`num_frames`.
    """
    wav = as_tensor(wav)
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, device=wav.device)
    lead = wav.shape[:-1]
    spec = torch.stft(wav.reshape(-1, wav.shape[-1]), n_fft, hop_length, win_length, window,
                      center=True, pad_mode="reflect", return_complex=True)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, n_fft: int = 1024, hop_length: int = 256, win_length: int | None = None,
          length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stft` (overlap-add); ``length`` trims the output to that many samples."""
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, device=spec.device)
    lead = spec.shape[:-2]
    wav = torch.istft(spec.reshape(-1, *spec.shape[-2:]), n_fft, hop_length, win_length, window,
                      center=True, length=length)
    return wav.reshape(*lead, wav.shape[-1])


def mel_filterbank(config: MelConfig = MelConfig()) -> torch.Tensor:
    """Triangular mel filters ``(n_fft // 2 + 1, n_mels)``: Slaney scale and area normalisation."""
    return AF.melscale_fbanks(
        n_freqs=config.n_fft // 2 + 1,
        f_min=config.f_min,
        f_max=config.f_max or config.sample_rate / 2,
        n_mels=config.n_mels,
        sample_rate=config.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )


class MelSpectrogram(torch.nn.Module):
    """Waveform ``(..., time)`` → mel spectrogram ``(..., n_mels, frames)`` (linear amplitude or power).

    ``frames = 1 + time // hop_length``. Raises a clear error if the input is shorter than half a window
    (reflect padding needs at least ``n_fft // 2 + 1`` samples).
    """

    def __init__(self, config: MelConfig = MelConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("filters", mel_filterbank(config).T.contiguous(), persistent=False)  # (n_mels, F)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = as_tensor(wav).to(self.filters.device)
        need = self.config.n_fft // 2 + 1
        if wav.shape[-1] < need:
            raise ValueError(f"audio has {wav.shape[-1]} samples; the mel front end needs at least {need} "
                             f"(n_fft={self.config.n_fft})")
        mag = stft(wav, self.config.n_fft, self.config.hop_length).abs()
        if self.config.power != 1.0:
            mag = mag.pow(self.config.power)
        return torch.matmul(self.filters, mag)


def mel_spectrogram(wav: torch.Tensor, config: MelConfig = MelConfig()) -> torch.Tensor:
    """Functional form of :class:`MelSpectrogram`."""
    return MelSpectrogram(config)(wav)


def amplitude_to_db(x: torch.Tensor, ref: float | str = 1.0, amin: float = 1e-5, top_db: float | None = 80.0,
                    power: float = 1.0) -> torch.Tensor:
    """Decibels of an amplitude (``power=1``: 20·log10) or power (``power=2``: 10·log10) spectrogram.

    ``ref`` is the 0 dB reference (``"max"`` uses the input's maximum); values below ``amin`` are floored
    to avoid log(0); ``top_db`` clips everything more than that many dB below the maximum.
    """
    x = as_tensor(x, "spectrogram")
    if (x < 0).any():
        raise ValueError("amplitude_to_db expects non-negative magnitudes or powers; take .abs() first")
    factor = 20.0 / power  # |X|^p in dB is 20/p · log10(|X|^p)
    ref_value = x.max().clamp_min(amin) if ref == "max" else torch.tensor(float(ref))
    db = factor * torch.log10(x.clamp_min(amin)) - factor * torch.log10(ref_value.clamp_min(amin))
    if top_db is not None:
        db = torch.maximum(db, db.max() - top_db)
    return db


def db_to_amplitude(db: torch.Tensor, ref: float = 1.0, power: float = 1.0) -> torch.Tensor:
    """Inverse of :func:`amplitude_to_db` (without clipping): ``ref · 10^(dB · power / 20)``."""
    return ref * torch.pow(10.0, as_tensor(db) * power / 20.0)


def log_mel(wav: torch.Tensor, config: MelConfig = MelConfig(), amin: float = 1e-5) -> torch.Tensor:
    """Natural-log mel magnitude ``log(max(mel, amin))`` ``(..., n_mels, frames)``: what the models consume."""
    return torch.log(mel_spectrogram(wav, config).clamp_min(amin))


def rms_db(wav: torch.Tensor, amin: float = 1e-5) -> float:
    """Root-mean-square level of a clip in dBFS (0 dB = a full-scale square wave)."""
    wav = as_tensor(wav)
    return 20.0 * math.log10(max(float(wav.pow(2).mean().sqrt()), amin))


def loudness_matched(clips: Mapping[str, torch.Tensor], target_db: float = -20.0,
                     peak: float = 0.99) -> dict[str, torch.Tensor]:
    """The same clips at one RMS level, ``target_db`` dBFS, lowered together if a peak would pass ``peak``.

    To compare sounds by ear they must be equally loud (a louder clip sounds better) and never clipped: every
    clip gets the gain that brings its RMS to ``target_db``, then all gains are scaled by one common factor
    ``≤ 1`` so that no clip's peak passes ``peak``. Clips are any shape; silent clips are left silent."""
    tensors = {name: as_tensor(clip, name) for name, clip in clips.items()}
    gains = {name: 10 ** ((target_db - rms_db(x)) / 20) if float(x.abs().max()) > 0 else 0.0
             for name, x in tensors.items()}
    loudest = max([float(x.abs().max()) * gains[name] for name, x in tensors.items()] + [0.0])
    common = min(1.0, peak / loudest) if loudest > 0 else 1.0
    return {name: x * gains[name] * common for name, x in tensors.items()}


# --------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_waveform(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, ax=None, title: str | None = None):
    """Plot a mono waveform against time in seconds; returns the matplotlib axes."""
    import matplotlib.pyplot as plt

    y = _np(wav).reshape(-1) if _np(wav).ndim == 1 or _np(wav).shape[0] == 1 else _np(wav)[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2))
    t = np.arange(len(y)) / sample_rate
    ax.plot(t, y, linewidth=0.6)
    ax.set_xlim(0, max(t[-1] if len(t) else 0, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude")
    if title:
        ax.set_title(title)
    return ax


def plot_spectrogram(spec_db: torch.Tensor, sample_rate: int = SAMPLE_RATE, hop_length: int = 256, ax=None,
                     title: str | None = None, mel_config: MelConfig | None = None, colorbar: bool = True):
    """Show a dB spectrogram ``(freqs, frames)`` with time in seconds and frequency in Hz.

    For a mel spectrogram pass ``mel_config``: the y axis is then labelled with the Hz at each band's centre.
    """
    import matplotlib.pyplot as plt

    s = _np(spec_db).squeeze()
    if s.ndim != 2:
        raise ValueError(f"plot_spectrogram expects (freqs, frames), got shape {tuple(_np(spec_db).shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    if mel_config is not None:
        hop_length = mel_config.hop_length
        sample_rate = mel_config.sample_rate
    duration = s.shape[1] * hop_length / sample_rate
    if mel_config is None:
        extent = (0, duration, 0, sample_rate / 2)
        im = ax.imshow(s, origin="lower", aspect="auto", extent=extent, cmap="magma")
    else:
        im = ax.imshow(s, origin="lower", aspect="auto", extent=(0, duration, 0, s.shape[0]), cmap="magma")
        centres = mel_band_centres(mel_config)
        ticks = np.linspace(0, s.shape[0] - 1, 6).astype(int)
        ax.set_yticks(ticks + 0.5)
        ax.set_yticklabels([f"{centres[i]:.0f}" for i in ticks])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, format="%+.0f dB", pad=0.01)
    return ax


def mel_band_centres(config: MelConfig = MelConfig()) -> np.ndarray:
    """Centre frequency in Hz of each mel band (where its triangular filter peaks)."""
    fb = mel_filterbank(config).numpy()  # (F, n_mels)
    freqs = np.linspace(0, config.sample_rate / 2, fb.shape[0])
    return freqs[fb.argmax(axis=0)]


def plot_spectrograms(specs: Mapping[str, torch.Tensor], sample_rate: int = SAMPLE_RATE, hop_length: int = 256,
                      mel_config: MelConfig | None = None, ncols: int | None = None):
    """Several dB spectrograms side by side, one titled panel each, on a shared colour scale.

    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not specs:
        raise ValueError("plot_spectrograms needs at least one spectrogram")
    n = len(specs)
    ncols = ncols or min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, (title, spec) in zip(axes.flat, specs.items()):
        plot_spectrogram(spec, sample_rate, hop_length, ax=ax, title=title, mel_config=mel_config, colorbar=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------
# Listening
# --------------------------------------------------------------------------------------------------------


def wav_bytes(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, normalize: bool = False) -> bytes:
    """Encode a clip as 16-bit WAV bytes (what a browser ``<audio>`` element plays)."""
    y = as_tensor(wav)
    if y.dim() == 1:
        y = y[None]
    if y.dim() != 2:
        raise ValueError(f"expected (time,) or (channels, time), got shape {tuple(y.shape)}")
    if normalize:
        y = y / y.abs().max().clamp_min(1e-8) * 0.9
    buf = io.BytesIO()
    sf.write(buf, y.clamp(-1, 1).T.numpy(), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def play(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, normalize: bool = False):
    """An audio player for one clip (``IPython.display.Audio``) at its true level unless ``normalize``."""
    from IPython.display import Audio

    return Audio(data=wav_bytes(wav, sample_rate, normalize), rate=sample_rate)


#: A clip whose peak stays under this level (dBFS) is near-silent: a player at a matched level would only raise its
#: noise floor, so :func:`listen_panel` leaves it at its own level and says so.
NEAR_SILENT_PEAK_DB = -40.0
LEVELS = ("matched", "true")


def _player_html(label: str, data: bytes, note: str) -> str:
    """One labelled player; the label states the clip's length and level, so they show before the player is
    clicked (``preload="metadata"`` also lets the browser show the length in the player)."""
    src = "data:audio/wav;base64," + base64.b64encode(data).decode("ascii")
    return (f'<div style="display:inline-block;margin:4px 10px 4px 0;vertical-align:top">'
            f'<div style="font:13px sans-serif;margin-bottom:2px">{html.escape(label)} '
            f'<span style="color:#777">({html.escape(note)})</span></div>'
            f'<audio controls preload="metadata" src="{src}" style="width:220px"></audio></div>')


def peak_db(wav: torch.Tensor, amin: float = 1e-5) -> float:
    """Peak level of a clip in dBFS (0 dB = full scale)."""
    return 20.0 * math.log10(max(float(as_tensor(wav).abs().max()), amin))


def listen_panel(clips: Mapping[str, torch.Tensor], sample_rate: int = SAMPLE_RATE, level: str = "matched"):
    """A row of labelled audio players, to compare clips side by side (every lesson uses it).

    ``clips`` maps a label ("original", "reconstruction", ...) to a clip ``(time,)`` or ``(1, time)``.
    ``level="matched"`` (the default): the clips are played equally loud (:func:`loudness_matched`: one RMS
    level, all lowered together so that none clips), each label showing the gain it got, because a louder
    clip sounds better and a comparison by ear must not reward loudness; a near-silent clip (peak under
    :data:`NEAR_SILENT_PEAK_DB`) is left at its own level, labelled so, and named in a printed warning.
    ``level="true"``: the clips as they are (limited to ±1, the label says where that clipped them).
    In JupyterLab this is an ipywidgets panel; in a rendered HTML page (``make course``) the same output
    falls back to plain ``<audio>`` players, so the page plays offline.
    """
    import ipywidgets as widgets

    if not clips:
        raise ValueError("listen_panel needs at least one clip")
    if level not in LEVELS:
        raise ValueError(f"listen_panel: level must be one of {LEVELS}, got {level!r}")
    tensors = {label: as_tensor(w, label) for label, w in clips.items()}
    peaks = {label: peak_db(w) for label, w in tensors.items()}
    quiet = {label for label, p in peaks.items() if p < NEAR_SILENT_PEAK_DB}
    played = dict(tensors)
    if level == "matched":
        played.update(loudness_matched({k: v for k, v in tensors.items() if k not in quiet}))
    players = []
    for label, w in tensors.items():
        note = f"{w.shape[-1] / sample_rate:.1f} s"
        if label in quiet:
            note += f", near-silent: peak {peaks[label]:.0f} dBFS, at its own level"
            print(f"⚠ listen_panel: {label!r} is near-silent (peak {peaks[label]:.0f} dBFS); it plays at its own "
                  "level, not raised to the others'")
        elif level == "matched":
            gain = float(played[label].abs().max()) / max(float(w.abs().max()), 1e-12)
            note += f", {20 * math.log10(max(gain, 1e-12)):+.0f} dB to match"
        elif float(w.abs().max()) > 1.0:
            note += ", clipped at ±1"
        players.append(_player_html(label, wav_bytes(played[label], sample_rate), note))
    return _ListeningPanel([widgets.HTML(value=p) for p in players], fallback_html="".join(players))


@functools.lru_cache(maxsize=1)
def _make_panel_class():
    import ipywidgets as widgets

    class ListeningPanel(widgets.HBox):
        """An HBox of players whose display also carries plain HTML for renderers without widgets."""

        def __init__(self, children, fallback_html: str):
            super().__init__(children=children, layout=widgets.Layout(flex_flow="row wrap"))
            self._fallback_html = fallback_html

        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            bundle = dict(bundle or {})
            bundle["text/html"] = f"<div>{self._fallback_html}</div>"
            return bundle

    return ListeningPanel


def _ListeningPanel(children, fallback_html):  # noqa: N802 - built lazily so importing audio needs no ipywidgets
    return _make_panel_class()(children, fallback_html)
