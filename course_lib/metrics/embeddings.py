"""Audio embedding models for FAD and label distributions for KL, behind one interface.

The papers measure FAD on VGGish (or PANNs) embeddings and KL on PaSST (or PANNs) label distributions; none
of those weights can be downloaded here. So the course trains its own model on its own data, and keeps the
real route open:

* :class:`CourseAudioClassifier`: a small CNN over the course log-mel (16 kHz) whose penultimate layer is the
  embedding ``(B, embed_dim)`` and whose head gives class probabilities over the course's sound-event
  classes (and, by default, the six music instruments). Trained by :func:`train_course_classifier` in a
  minute or two on one CPU core. Its numbers are **not comparable** with VGGish / PANNs / PaSST numbers in
  the papers: a different embedding space gives different FADs, a different label set different KLs.
* :class:`HFAudioEmbedder`: any ``transformers`` audio model by hub name or saved folder (a CLAP audio
  tower, AST, wav2vec 2.0, HuBERT, ...), e.g. ``HFAudioEmbedder.from_pretrained("laion/clap-htsat-unfused")``
  on a machine with network access; tested offline on tiny random models built by :func:`save_random_tiny_audio`.
* :func:`load_audio_embedder` picks one from a spec string: ``"course:FOLDER"``, ``"hf:NAME_OR_PATH"``.

The interface, :class:`AudioEmbedder`: ``embed(audio, sample_rate) -> (B, D)``, ``predict_proba(audio,
sample_rate) -> (B, C)`` (where a classifier head exists), and the attributes ``sample_rate`` (Hz, what the
model runs at: audio at another rate is resampled), ``dim`` (``D``) and ``classes`` (the ``C`` label names,
or ``None``). Audio is float in [-1, 1], one clip ``(T,)``, a batch ``(B, T)`` or ``(B, 1, T)``, or a list
of clips of different lengths; multi-channel clips ``(B, C, T)`` are averaged to mono.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.audio import MelConfig, log_mel, resample
from course_lib.runtime import configure_threads

__all__ = ["AudioEmbedder", "prepare_audio", "AudioClassifierConfig", "ConvAudioEncoder", "CourseAudioClassifier",
           "course_label_set", "course_clips", "train_course_classifier", "measure_audio_classifier",
           "HFAudioEmbedder", "save_random_tiny_audio", "load_audio_embedder", "publish_model", "SHIPPED_CLASSIFIER"]

SHIPPED_CLASSIFIER = "audio_classifier_course"  # the folder name under course_lib/pretrained/ once shipped
#: The shipped classifier trained on each version of the course data (version 2: SoundFont music, v2 events).
SHIPPED_CLASSIFIERS = {1: SHIPPED_CLASSIFIER, 2: "audio_classifier_v2"}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
_CHUNK = 64  # clips per forward pass inside embed / predict_proba (bounds the memory of the STFT)


# --------------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------------


def prepare_audio(audio: Any, sample_rate: int, target_rate: int) -> list[torch.Tensor]:
    """Validate clips and bring them to mono float32 at ``target_rate``; return a list of equal-length batches.

    ``audio``: one clip ``(T,)``, a batch ``(B, T)``, ``(B, C, T)`` (channels averaged), or a list of 1-D clips
    of any lengths (grouped into batches of equal length, in order). ``sample_rate`` is the audio's rate in
    Hz; clips are resampled to ``target_rate`` when it differs. Raises ``TypeError``/``ValueError`` naming
    what was expected for anything else (non-finite samples, an empty batch, a wrong rank).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int in Hz, got {sample_rate!r}")
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("got an empty list of clips")
        clips = [prepare_audio(a, sample_rate, target_rate) for a in audio]
        flat = [c for group in clips for c in group]
        if any(c.shape[0] != 1 for c in flat):
            raise ValueError("a list must hold single clips (T,), not batches")
        batches: list[torch.Tensor] = []
        for c in flat:  # consecutive clips of equal length share a batch
            if batches and batches[-1].shape[1] == c.shape[1]:
                batches[-1] = torch.cat([batches[-1], c])
            else:
                batches.append(c)
        return batches
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.number) or np.iscomplexobj(audio):
            raise TypeError(f"audio must be real float samples, got dtype {audio.dtype}")
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch tensor, a NumPy array or a list of clips, got {type(audio).__name__}")
    if audio.is_complex() or audio.dtype == torch.bool:
        raise TypeError(f"audio must be real float samples, got dtype {audio.dtype}")
    wav = audio.detach().float()
    if wav.dim() == 1:
        wav = wav[None]
    elif wav.dim() == 3:
        wav = wav.mean(dim=1)
    elif wav.dim() != 2:
        raise ValueError(f"expected audio (T,), (B, T) or (B, C, T), got shape {tuple(wav.shape)}")
    if wav.shape[0] == 0 or wav.shape[1] == 0:
        raise ValueError(f"got an empty batch of audio, shape {tuple(audio.shape)}")
    if not torch.isfinite(wav).all():
        raise ValueError("audio contains NaN or infinite values")
    if int(sample_rate) != int(target_rate):
        wav = resample(wav, int(sample_rate), int(target_rate))
    return [wav]


class AudioEmbedder:
    """What FAD and KL need from an audio model: ``embed`` → ``(B, D)``, ``predict_proba`` → ``(B, C)``.

    Subclasses set :attr:`sample_rate` (Hz), :attr:`dim` (``D``), :attr:`classes` (label names or ``None``)
    and implement :meth:`_embed_batch` / :meth:`_proba_batch` on ``(B, T)`` float32 audio at
    :attr:`sample_rate`; this class validates, resamples, downmixes and chunks the input (64 clips per pass).
    """

    sample_rate: int = 16_000
    dim: int = 0
    classes: tuple[str, ...] | None = None

    def _embed_batch(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _proba_batch(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no classifier head, so no class probabilities")

    def _run(self, fn: Any, audio: Any, sample_rate: int | None) -> torch.Tensor:
        batches = prepare_audio(audio, self.sample_rate if sample_rate is None else sample_rate, self.sample_rate)
        with torch.no_grad():
            return torch.cat([fn(chunk).float().cpu() for wav in batches for chunk in wav.split(_CHUNK)])

    def embed(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Embeddings ``(B, dim)`` float32 of clips (see :func:`prepare_audio` for the accepted shapes);
        ``sample_rate`` is the audio's rate in Hz (default: the model's own)."""
        return self._run(self._embed_batch, audio, sample_rate)

    def predict_proba(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Class probabilities ``(B, len(classes))`` (rows sum to 1: a softmax over the head's logits, the
        convention of AudioGen's KL); raises ``NotImplementedError`` for a model without a head."""
        if self.classes is None:
            raise NotImplementedError(f"{type(self).__name__} has no classifier head, so no class probabilities")
        return self._run(self._proba_batch, audio, sample_rate)


# --------------------------------------------------------------------------------------------------------
# The course's CNN classifier
# --------------------------------------------------------------------------------------------------------


def course_label_set(music: bool = True, version: int = 1) -> tuple[str, ...]:
    """The course's class names: the 12 sound-event classes, then (``music=True``) ``"music/<instrument>"``
    for each music instrument of data ``version`` (1: the 6 of :mod:`course_lib.data.music`; 2: those and
    strings and brass, :data:`course_lib.data.music_sf2.INSTRUMENTS`)."""
    from course_lib.data import music as music_data
    from course_lib.data import sound_events

    events = tuple(sound_events.EVENT_CLASSES)
    instruments = music_data.INSTRUMENTS
    if music_data.check_version(version) == 2:
        from course_lib.data import music_sf2

        instruments = music_sf2.INSTRUMENTS
    return events + tuple(f"music/{name}" for name in instruments) if music else events


@dataclass
class AudioClassifierConfig:
    """Settings of :class:`ConvAudioEncoder` / :class:`CourseAudioClassifier` (saved as ``config.json``).

    ``classes``: label names of the head (``()`` for an encoder without head); the log-mel front end
    (``sample_rate`` Hz, ``n_fft``, ``hop_length`` samples, ``n_mels``); ``channels``: the width of each 1-D conv
    block over time (see :class:`ConvAudioEncoder`); ``embed_dim``: width of the embedding (penultimate layer).
    """

    classes: tuple[str, ...] = field(default_factory=course_label_set)
    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    channels: tuple[int, ...] = (128, 128, 128, 128)
    embed_dim: int = 128

    def __post_init__(self) -> None:
        self.classes = tuple(str(c) for c in self.classes)
        self.channels = tuple(int(c) for c in self.channels)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "embed_dim"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")

    def mel(self) -> MelConfig:
        """The :class:`course_lib.audio.MelConfig` of the front end (magnitude mel, natural log)."""
        return MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                         n_mels=self.n_mels)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioClassifierConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ConvAudioEncoder(nn.Module):
    """Waveform ``(B, T)`` at ``config.sample_rate`` → embedding ``(B, embed_dim)``: log-mel, CNN, pooling.

    The natural-log mel magnitude ``(B, n_mels, frames)`` (floored at 1e-5, i.e. -100 dB, and mapped by a
    fixed affine to roughly [-1, 1]: absolute level is kept, so a clip that is too quiet embeds differently)
    is read as a sequence of ``frames`` vectors of ``n_mels`` values, and goes through ``len(channels)``
    1-D convolution blocks over time (kernel 3, batch norm, ReLU; every block after the first halves the
    frame rate), as in TDNN-style audio encoders. 1-D convolutions with the mel bands as input channels
    are several times faster on a CPU than 2-D convolutions over the spectrogram image, and the bands
    keep their absolute position (a high and a low bell differ). The time axis is then summarised by its
    mean and its maximum, so any clip length works, and a linear layer + ReLU gives the embedding
    (VGGish/PANNs-style: a post-ReLU penultimate layer). Also the audio tower of the agreement model.
    """

    def __init__(self, config: AudioClassifierConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        c_in = config.n_mels
        for i, c in enumerate(config.channels):
            blocks += [nn.Conv1d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm1d(c),
                       nn.ReLU()]
            c_in = c
        self.cnn = nn.Sequential(*blocks)
        self.proj = nn.Linear(2 * c_in, config.embed_dim)
        self._mel = config.mel()

    def min_samples(self) -> int:
        """Shortest input in samples (half a window: what the centred STFT needs)."""
        return self.config.n_fft // 2 + 1

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """The scaled log-mel ``(B, n_mels, frames)`` the CNN reads, from audio ``(B, T)``."""
        if wav.shape[-1] < self.min_samples():
            raise ValueError(f"clips of {wav.shape[-1]} samples are too short for this encoder: it needs at least "
                             f"{self.min_samples()} ({self.min_samples() / self.config.sample_rate:.3f} s)")
        lm = log_mel(wav.to(self.proj.weight.device), self._mel, amin=1e-5)
        return (lm + 3.0) / 8.0

    def encode_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Embedding ``(B, embed_dim)`` from :meth:`features` ``(B, n_mels, frames)`` (training reuses them)."""
        h = self.cnn(feats)  # (B, C, frames')
        return F.relu(self.proj(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.encode_features(self.features(wav))


class CourseAudioClassifier(nn.Module, AudioEmbedder):
    """The course's audio classifier: :class:`ConvAudioEncoder` → embedding ``(B, embed_dim)`` → linear head
    → logits ``(B, len(classes))``. ``embed`` gives the penultimate layer (for FAD), ``predict_proba`` the
    softmax of the head (for KL). Runs at ``config.sample_rate`` (16 kHz); other rates are resampled.
    Saved as ``config.json`` + ``model.safetensors`` (nothing unpickled)."""

    def __init__(self, config: AudioClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or AudioClassifierConfig()
        if not self.config.classes:
            raise ValueError("a classifier needs at least one class name in config.classes")
        self.encoder = ConvAudioEncoder(self.config)
        self.head = nn.Linear(self.config.embed_dim, len(self.config.classes))
        self.sample_rate = self.config.sample_rate
        self.dim = self.config.embed_dim
        self.classes = self.config.classes

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, len(classes))`` of audio ``(B, T)`` at the model's rate (no checks: use ``embed`` /
        ``predict_proba`` for arbitrary input)."""
        return self.head(self.encoder(wav))

    def _embed_batch(self, wav: torch.Tensor) -> torch.Tensor:
        return self.encoder(wav)

    def _proba_batch(self, wav: torch.Tensor) -> torch.Tensor:
        return self(wav).softmax(dim=-1)

    def embed(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Penultimate-layer embeddings ``(B, embed_dim)`` (computed in eval mode)."""
        with _eval(self):
            return AudioEmbedder.embed(self, audio, sample_rate)

    def predict_proba(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Softmax class probabilities ``(B, len(classes))`` (computed in eval mode)."""
        with _eval(self):
            return AudioEmbedder.predict_proba(self, audio, sample_rate)

    def predict(self, audio: Any, sample_rate: int | None = None) -> list[str]:
        """The most likely class name of each clip, a list of ``B`` names."""
        return [self.classes[i] for i in self.predict_proba(audio, sample_rate).argmax(dim=1).tolist()]

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created); return it."""
        return _save(self, self.config.to_dict(), folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None) -> CourseAudioClassifier:
        """Load a classifier written by :meth:`save_pretrained` (``None``: the shipped one), in eval mode."""
        folder = _shipped(SHIPPED_CLASSIFIER) if folder is None else Path(folder)
        model = cls(AudioClassifierConfig.from_dict(_read_config(folder, cls.__name__)))
        return _load_weights(model, folder)

    save = save_pretrained
    load = from_pretrained


class _eval:
    """Context manager: put a module in eval mode, restore its mode afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was = module, module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was)


def _save(model: nn.Module, config: dict[str, Any], folder: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS_FILE))
    return path


def _read_config(folder: Path, what: str) -> dict[str, Any]:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: expected a folder written by {what}.save_pretrained")
    return json.loads((folder / CONFIG_FILE).read_text())


def _load_weights(model: nn.Module, folder: Path) -> Any:
    from safetensors.torch import load_file

    state = load_file(str(folder / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.float().eval()


def _shipped(name: str) -> Path:
    folder = Path(__file__).resolve().parents[1] / "pretrained" / name
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"the shipped model {name!r} is not in this checkout ({folder}); train one with "
                                f"`python -m course_lib.metrics.embeddings --out DIR` and pass that folder")
    return folder


# --------------------------------------------------------------------------------------------------------
# Training on the course data
# --------------------------------------------------------------------------------------------------------


def course_clips(split: str, n_per_class: int, clip_seconds: float = 2.0, sample_rate: int = 16_000, start: int = 0,
                 music: bool = True, version: int = 1, grammar: str = "seen") -> tuple[np.ndarray, list[str], list[Any]]:
    """Class-balanced generated clips: ``n_per_class`` of each sound-event class (and of each music instrument
    when ``music``), indices ``start ...`` of ``split``, from data ``version`` (1 or 2; with 2, ``grammar=
    "heldout"`` captions test clips with the held-out caption grammar). Returns audio ``(N, T)`` float32, the
    label of each clip (a name of :func:`course_label_set`) and the :class:`~course_lib.data.Clip` records."""
    from course_lib.data import music as music_data
    from course_lib.data import sound_events

    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    extra = {} if grammar == "seen" else {"grammar": grammar}  # version 1 has no grammar and says so
    clips = list(sound_events.generate_clips(split, n_per_class * len(sound_events.EVENT_CLASSES), clip_seconds,
                                             sample_rate, start=start, version=version, **extra))
    labels = [c.attributes["class"] for c in clips]
    if music:
        n_instruments = len(course_label_set(True, version)) - len(sound_events.EVENT_CLASSES)
        tunes = list(music_data.generate_clips(split, n_per_class * n_instruments, clip_seconds,
                                               sample_rate, start=start, version=version, **extra))
        clips += tunes
        labels += [f"music/{c.attributes['instrument']}" for c in tunes]
    return np.stack([c.audio for c in clips]).astype(np.float32), labels, clips


@torch.no_grad()
def measure_audio_classifier(model: CourseAudioClassifier, split: str = "test", n_per_class: int = 16,
                             clip_seconds: float = 2.0, start: int = 0, version: int = 1) -> dict[str, float]:
    """Accuracy of ``model`` on fresh class-balanced clips of ``split`` (the held-out test split by default)
    of data ``version``: ``{"accuracy", "accuracy_events", "accuracy_music", "n_clips"}`` (music accuracy
    only when the model has music classes). Chance is ``1 / len(classes)``."""
    music = any(c.startswith("music/") for c in model.classes)
    audio, labels, _ = course_clips(split, n_per_class, clip_seconds, model.sample_rate, start, music, version)
    unknown = sorted(set(labels) - set(model.classes))
    if unknown:
        raise ValueError(f"the model has no class for {unknown}; its classes are {model.classes}")
    pred = model.predict(audio, model.sample_rate)
    hit = np.array([p == y for p, y in zip(pred, labels)])
    is_music = np.array([y.startswith("music/") for y in labels])
    out = {"accuracy": float(hit.mean()), "accuracy_events": float(hit[~is_music].mean()), "n_clips": float(len(hit))}
    if is_music.any():
        out["accuracy_music"] = float(hit[is_music].mean())
    return out


def train_course_classifier(split: str = "train", n_per_class: int = 32, clip_seconds: float = 2.0,
                            steps: int = 300, seed: int = 0, music: bool = True, batch_size: int = 48,
                            lr: float = 3e-3, config: AudioClassifierConfig | None = None,
                            eval_per_class: int = 16, progress: bool = False,
                            version: int = 1) -> tuple[CourseAudioClassifier, dict]:
    """Train a :class:`CourseAudioClassifier` on generated clips; return it (eval mode) and its metrics.

    Data: ``n_per_class`` clips of ``clip_seconds`` per class of :func:`course_label_set` (``music`` adds the
    instruments) from data ``version`` (1 or 2), ``split`` indices ``seed·10⁶ …`` (as :func:`course_lib.data.probes.train_event_classifier`
    draws them; consecutive indices cycle through the classes). Each step: a random mini-batch of
    ``batch_size`` clips, their log-mels circularly shifted in time by a random number of frames (a cheap
    augmentation; the log-mels are computed once), AdamW on
    cross-entropy with a cosine learning-rate decay from ``lr``. ``seed`` also seeds the weights and the
    batches (the caller's global RNG is left alone). ``eval_per_class > 0`` then measures test-split
    accuracy (:func:`measure_audio_classifier`). Metrics: ``loss_first``, ``loss_last`` (mean of the first /
    last 10 steps), ``train_accuracy``, the test accuracies, ``seconds``, ``n_train``, ``steps``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 4000:
        raise ValueError(f"seed must be an int in [0, 4000), got {seed!r}")
    t0 = time.perf_counter()
    config = config or AudioClassifierConfig(classes=course_label_set(music, version))
    audio, labels, _ = course_clips(split, n_per_class, clip_seconds, config.sample_rate, seed * 10**6, music,
                                    version)
    missing = sorted(set(labels) - set(config.classes))
    if missing:
        raise ValueError(f"config.classes lacks {missing}: use course_label_set(music={music}, version={version})")
    y = torch.tensor([config.classes.index(label) for label in labels])
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CourseAudioClassifier(config)
    with torch.no_grad():  # the log-mels are computed once; the augmentation is a roll of their frames
        feats = torch.cat([model.encoder.features(chunk) for chunk in torch.from_numpy(audio).split(_CHUNK)])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    bar = _progress(steps, progress, "classifier")
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(feats), (min(batch_size, len(feats)),), generator=gen)
        shift = int(torch.randint(feats.shape[2], (1,), generator=gen))
        logits = model.head(model.encoder.encode_features(feats[idx].roll(shift, dims=2)))
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
    bar.close()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model.head(model.encoder.encode_features(chunk)).argmax(1) for chunk in feats.split(_CHUNK)])
    metrics: dict[str, Any] = {"loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
                               "train_accuracy": float((pred == y).float().mean()), "n_train": len(feats), "steps": steps,
                               "n_per_class": n_per_class, "clip_seconds": clip_seconds, "seed": seed}
    if eval_per_class:
        metrics.update({f"test_{k}": v for k, v in measure_audio_classifier(
            model, "test", eval_per_class, clip_seconds, version=version).items()})
    metrics["seconds"] = time.perf_counter() - t0
    return model, metrics


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


# --------------------------------------------------------------------------------------------------------
# The real route: a Hugging Face audio model
# --------------------------------------------------------------------------------------------------------


class HFAudioEmbedder(nn.Module, AudioEmbedder):
    """A ``transformers`` audio model + its feature extractor behind the :class:`AudioEmbedder` interface.

    Which output is the embedding depends on the model: a CLAP model (``model_type == "clap"``) gives its
    projected, L2-normalised audio embedding (what CLAP scores compare); an ``...ForAudioClassification``
    model (AST, wav2vec 2.0 heads, ...) the time-average of its last hidden layer, and ``predict_proba`` the
    softmax of its logits, with :attr:`classes` from ``config.id2label``; any other audio model (``AutoModel``)
    the time-average of ``last_hidden_state``. :attr:`sample_rate` is the feature extractor's, and its own
    rules apply (AST pads or cuts every clip to its ``max_length`` frames, 10.24 s for the AudioSet models;
    CLAP's extractor repeats short clips and crops long ones).
    """

    def __init__(self, model: nn.Module, feature_extractor: Any, kind: str, name: str = "") -> None:
        super().__init__()
        if kind not in ("clap", "classifier", "encoder"):
            raise ValueError(f"kind must be 'clap', 'classifier' or 'encoder', got {kind!r}")
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.kind = kind
        self.name = name or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.sample_rate = int(getattr(feature_extractor, "sampling_rate", 16_000))
        cfg = model.config
        if kind == "clap":
            self.dim = int(cfg.projection_dim)
        else:
            self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0))
        labels = getattr(cfg, "id2label", None) if kind == "classifier" else None
        self.classes = tuple(labels[i] for i in sorted(labels)) if labels else None
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, local_files_only: bool = False,
                        **model_kwargs: Any) -> HFAudioEmbedder:
        """Load a hub name or a folder written by ``save_pretrained`` (model + feature extractor), frozen, in
        eval mode. ``local_files_only=True`` never touches the network. Raises ``FileNotFoundError`` naming
        the path when no config can be read, ``ValueError`` when the model is not an audio model."""
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

        source = str(name_or_path)
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"cannot read a transformers config from {source!r} (a hub name or a folder "
                                    f"with config.json): {err}") from err
        try:
            extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ValueError(f"{source!r} has no audio feature extractor (preprocessor_config.json): is it an "
                             f"audio model? ({err})") from err
        archs = tuple(getattr(config, "architectures", None) or ())
        if config.model_type == "clap":
            from transformers import ClapModel

            model, kind = ClapModel.from_pretrained(source, local_files_only=local_files_only, **model_kwargs), "clap"
        elif any(a.endswith("ForAudioClassification") for a in archs):
            model = AutoModelForAudioClassification.from_pretrained(source, local_files_only=local_files_only,
                                                                    **model_kwargs)
            kind = "classifier"
        else:
            model, kind = AutoModel.from_pretrained(source, local_files_only=local_files_only, **model_kwargs), "encoder"
        return cls(model, extractor, kind, name=source)

    def _inputs(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        arrays = [w.numpy() for w in wav]
        inputs = self.feature_extractor(arrays, sampling_rate=self.sample_rate, return_tensors="pt")
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    def _embed_batch(self, wav: torch.Tensor) -> torch.Tensor:
        inputs = self._inputs(wav)
        if self.kind == "clap":
            pooled = self.model.audio_model(**inputs).pooler_output
            return F.normalize(self.model.audio_projection(pooled), dim=-1)
        if self.kind == "classifier":
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]
        else:
            hidden = self.model(**inputs).last_hidden_state
        return hidden.mean(dim=1)

    def _proba_batch(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model(**self._inputs(wav)).logits.softmax(dim=-1)


def save_random_tiny_audio(kind: str, folder: str | os.PathLike, classes: tuple[str, ...] = ("a", "b", "c"),
                           seed: int = 0) -> Path:
    """Write a tiny, randomly initialised ``transformers`` audio model and its feature extractor to ``folder``
    in the layout :meth:`HFAudioEmbedder.from_pretrained` reads: ``"ast"`` (an AST classifier over
    ``classes``, 16 kHz), ``"wav2vec2"`` (an encoder, 16 kHz) or ``"clap"`` (CLAP, 48 kHz, with a WordPiece
    tokenizer so the text side loads too). For offline tests and the lesson: it shows the plumbing, not
    what a trained model knows. Returns ``folder``."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "ast":
        config = tf.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              num_mel_bins=32, max_length=100, id2label=dict(enumerate(classes)),
                              label2id={c: i for i, c in enumerate(classes)})
        model, extractor = tf.ASTForAudioClassification(config), tf.ASTFeatureExtractor(num_mel_bins=32, max_length=100)
    elif kind == "wav2vec2":
        config = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                   num_conv_pos_embedding_groups=2)
        model, extractor = tf.Wav2Vec2Model(config), tf.Wav2Vec2FeatureExtractor(sampling_rate=16_000)
    elif kind == "clap":
        from course_lib.text.course_encoder import train_tokenizer

        corpus = ["a dog barks twice", "a bell rings", "rain falls", "a calm piano melody", "two beeps"] * 4
        tok = train_tokenizer(corpus, vocab_size=120, prune=False)
        text = tf.ClapTextConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                 pad_token_id=0, projection_dim=16)
        audio = tf.ClapAudioConfig(spec_size=128, window_size=4, num_mel_bins=64, patch_size=4, patch_stride=(4, 4),
                                   depths=[1, 1], num_attention_heads=[2, 2], hidden_size=32,
                                   patch_embeds_hidden_size=16, projection_dim=16, enable_fusion=False)
        model = tf.ClapModel(tf.ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16))
        extractor = tf.ClapFeatureExtractor(feature_size=64, sampling_rate=48_000, max_length_s=1,
                                            truncation="rand_trunc", padding="repeatpad")
        tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    else:
        raise ValueError(f"kind must be 'ast', 'wav2vec2' or 'clap', got {kind!r}")
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return Path(folder)


def load_audio_embedder(spec: Any = "course", local_files_only: bool = False) -> AudioEmbedder:
    """An :class:`AudioEmbedder` from a spec: ``"course"`` (the shipped course classifier), ``"course:FOLDER"``
    (one written by :meth:`CourseAudioClassifier.save_pretrained`), ``"hf:NAME_OR_PATH"`` (a ``transformers``
    audio model, :meth:`HFAudioEmbedder.from_pretrained`), or an object that already has ``embed`` (returned
    as it is). Anything else raises a ``ValueError`` listing what is accepted."""
    if not isinstance(spec, (str, os.PathLike)):
        if callable(getattr(spec, "embed", None)):
            return spec
        raise ValueError(f"spec must be 'course', 'course:FOLDER', 'hf:NAME_OR_PATH' or an object with .embed, "
                         f"got {type(spec).__name__}")
    kind, _, where = str(spec).strip().partition(":")
    if kind == "course":
        return CourseAudioClassifier.from_pretrained(where or None)
    if kind == "hf" and where:
        return HFAudioEmbedder.from_pretrained(where, local_files_only=local_files_only)
    raise ValueError(f"unknown audio embedder spec {spec!r}: expected 'course', 'course:FOLDER' or 'hf:NAME_OR_PATH'")


# --------------------------------------------------------------------------------------------------------
# Shipping a trained model with its card (the format of course_lib.pretrained.publish, outside the engine)
# --------------------------------------------------------------------------------------------------------


def publish_model(model: nn.Module, folder: str | os.PathLike, *, name: str, model_class: str, description: str,
                  measure: Any, settings: dict[str, Any], command: str, train_metrics: dict[str, Any], data: str,
                  half: bool = True, notes: list[str] | None = None) -> dict[str, Any]:
    """Save ``model`` (eval mode) into ``folder`` as a shipped model and write ``card.json`` + ``CARD.md``.

    The card has the keys :mod:`course_lib.pretrained.publish` writes for engine runs (``name``,
    ``description``, ``model_class``, ``parameters``, ``weights_dtype``, ``training`` {``command``, ``steps``,
    ``train_seconds``, ...}, ``evaluation`` {``split``, ``settings``, ``metrics``, ``relative_tolerance``}), so
    :func:`course_lib.pretrained.measure` and the tests re-measure it. ``measure(model, **settings)`` is run on
    the float32 weights, then (``half=True``) the weights are stored as float16
    (:func:`course_lib.pretrained.publish.to_half_precision`), reloaded with ``type(model).from_pretrained``
    and measured again: the card's metrics are those of exactly the shipped file, the float32 ones are listed
    beside them in ``CARD.md``. ``train_metrics`` (what the training function returned: ``steps``,
    ``seconds``, losses...) goes into the card's training section; ``notes`` are extra bullet lines.
    Returns the card (a dict)."""
    import platform

    from course_lib.pretrained.measures import tolerance_text  # card wording shared by every card
    from course_lib.pretrained.publish import to_half_precision

    if "steps" not in train_metrics or "seconds" not in train_metrics:
        raise ValueError("train_metrics must hold the training function's 'steps' and 'seconds'")
    folder = model.save_pretrained(folder)
    metrics_float32 = measure(model.eval(), **settings)
    if half:
        to_half_precision(folder / WEIGHTS_FILE)
        model = type(model).from_pretrained(folder)
    metrics = measure(model, **settings)
    dtype = "float16 (computed in float32)" if half else "float32"
    card = {
        "name": name,
        "description": description,
        "model_class": model_class,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_dtype": dtype,
        "training": {
            "command": command,
            "checkpoint": "last",
            "steps": train_metrics["steps"],
            "train_seconds": round(float(train_metrics["seconds"]), 1),
            "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s) "
                       "(2-core machine, shared)",
            "data": data,
        },
        "evaluation": {"split": "test (held out: never used in training)", "settings": settings, "metrics": metrics,
                       "relative_tolerance": 0.02, "tolerance": tolerance_text(0.02, 0)},
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    size_mb = (folder / WEIGHTS_FILE).stat().st_size / 1e6
    lines = [f"# {name}", "", description, "", f"- class: `{model_class}`",
             f"- parameters: {card['parameters']:,} (weights stored as {dtype}; `{WEIGHTS_FILE}` {size_mb:.2f} MB)",
             *[f"- {note}" for note in notes or []], f"- trained with: `{command}`",
             f"- steps: {card['training']['steps']}, training time (data generation included): "
             f"{card['training']['train_seconds']} s on {card['training']['machine']}", f"- data: {data}", "",
             "## Held-out metrics", "", "Test split, fixed clip indices (deterministic); re-measured by the tests "
             f"(`tests/test_pretrained.py`) with `course_lib.pretrained.measure({name!r})`, settings "
             f"`{json.dumps(settings)}`:", "", f"| metric | shipped ({dtype.split()[0]}) | float32 before rounding |",
             "|---|---|---|"]
    lines += [f"| {k} | {round(v, 4)} | {round(metrics_float32[k], 4)} |" for k, v in metrics.items()]
    lines += ["", "## Training run", "", "```yaml", *[f"{k}: {round(v, 4) if isinstance(v, float) else v}"
                                                  for k, v in train_metrics.items()], "```", ""]
    (folder / "CARD.md").write_text("\n".join(lines))
    return card


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m course_lib.metrics.embeddings --out DIR``: train the course classifier, save it to ``DIR``
    with ``metrics.json`` (the test-split accuracies), and print the metrics. With ``--publish``: write the
    shipped model's card (``card.json`` + ``CARD.md``, :func:`publish_model`) instead of ``metrics.json``,
    with weights stored as float16 unless ``--float32``; the card's command is this command line."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="folder to write config.json, model.safetensors, metrics.json")
    parser.add_argument("--n-per-class", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--eval-per-class", type=int, default=16,
                        help="test clips per class measured after training (and for the card with --publish)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-music", action="store_true", help="sound-event classes only")
    parser.add_argument("--data-version", type=int, default=1, choices=sorted(SHIPPED_CLASSIFIERS),
                        help="course data version to train and measure on (1, the default; 2: SoundFont music and "
                             f"v2 events, published as {SHIPPED_CLASSIFIERS[2]})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $COURSE_NUM_THREADS, else 1; see course_lib.runtime.configure_threads)")
    parser.add_argument("--publish", action="store_true",
                        help="write card.json + CARD.md (as audio_classifier_course, or audio_classifier_v2 with "
                             "--data-version 2)")
    parser.add_argument("--float32", action="store_true", help="with --publish: keep float32 weights")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    model, metrics = train_course_classifier(n_per_class=args.n_per_class, steps=args.steps,
                                             clip_seconds=args.clip_seconds, seed=args.seed,
                                             music=not args.no_music,
                                             eval_per_class=0 if args.publish else args.eval_per_class,
                                             progress=True, version=args.data_version)
    if args.publish:
        n_music = sum(c.startswith("music/") for c in model.classes)
        settings = {"split": "test", "n_per_class": args.eval_per_class, "clip_seconds": args.clip_seconds}
        if args.data_version != 1:  # version 1 cards keep their settings as they were
            settings["version"] = args.data_version
        data_name = ("the course's generated clips" if args.data_version == 1 else
                     "the course's data version 2 (SoundFont music, several recipes per event class in a room)")
        role = ("The course's audio classifier, the default embedding model of FAD" if args.data_version == 1 else
                "The course's audio classifier for data version 2, the embedding model of FAD for models trained "
                "on that data")
        after = ("" if args.data_version == 1 else " The shipped generators, trained on version 1, are measured "
                 "with audio_classifier_course.")
        card = publish_model(
            model, args.out, name=SHIPPED_CLASSIFIERS[args.data_version], model_class="course_lib.metrics.embeddings:CourseAudioClassifier",
            description=(role + f" (its {model.dim}-wide "
                         f"penultimate layer) and KL (its softmax over {len(model.classes)} classes: "
                         f"{len(model.classes) - n_music} sound events + {n_music} music instruments): "
                         f"{len(model.config.channels)} 1-D conv blocks over a {model.config.n_mels}-band log-mel at "
                         f"{model.sample_rate // 1000} kHz, mean + max pooling. Trained on {data_name}: its FAD "
                         "and KL values are not comparable with the papers' VGGish / PANNs / PaSST ones." + after),
            measure=measure_audio_classifier, settings=settings,
            command="python -m course_lib.metrics.embeddings " + " ".join(sys.argv[1:] if argv is None else argv),
            train_metrics=metrics, half=not args.float32,
            data=(f"{data_name.removeprefix('the ')}, train split: {args.n_per_class} clips per class x {len(model.classes)} "
                  f"classes, {args.clip_seconds} s at {model.sample_rate} Hz, indices from seed x 10^6; log-mels "
                  "rolled in time by a random number of frames (augmentation)"))
        metrics = {**metrics, **{f"test_{k}": v for k, v in card["evaluation"]["metrics"].items()}}
    else:
        out = model.save_pretrained(args.out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
