"""From ``data.source`` to a checked map-style dataset of ``{"audio": (1, T), "caption", "attributes", "id"}``.

Sources (see :class:`~course_lib.train.config.DataConfig`): ``generated:<kind>`` builds
``course_lib.data.torch_dataset.GeneratedDataset`` (synthesised on the fly, no files; ``generated:mixed`` is
half sound events, half music; ``data.version`` picks the generator, 1 by default, 2 for SoundFont music and
sound events in a room); a local folder or
table and ``hub:<name>`` build ``CaptionedAudioDataset`` (which reads the course exports, any audiofolder,
Clotho/AudioCaps tables or a Hugging Face dataset, decoding lazily); ``py:<module>:<function>`` calls your
own factory. Every clip is cut or zero-padded to ``round(clip_seconds * sample_rate)`` samples. A local
folder or table may name only audio files inside its folder unless ``data.allow_outside_paths=true``; a
file with non-finite samples (NaN, infinity) stops training with an error that names it.

Sample rate policy: the model is trained at ``data.sample_rate`` only. Files stored at another rate are
**resampled** while loading (band-limited, by ``CaptionedAudioDataset``); a dataset object that declares a
different ``sample_rate`` (a custom factory, or one passed to the trainer) is **refused** with an error,
never trained on silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from course_lib.train.config import DataConfig
from course_lib.train.errors import ConfigError, TrainingError

TRAIN_SPLIT = "train"
EVAL_SPLIT = "valid"
MIXED_SOURCE = "generated:mixed"


def segment_samples(data: DataConfig) -> int:
    """Length of every training clip in samples: ``round(clip_seconds * sample_rate)``."""
    return int(round(data.clip_seconds * data.sample_rate))


class _MixedDataset(ConcatDataset):
    """Sound events then music, concatenated; forwards ``set_epoch`` and declares its ``sample_rate``."""

    def __init__(self, parts: list[Dataset], sample_rate: int) -> None:
        super().__init__(parts)
        self.sample_rate = sample_rate

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


def generator_version(data: DataConfig) -> int | None:
    """The course generator version for ``generated:*`` sources: None (each kind's default, 1) for
    ``data.version`` 1, exactly as before the key existed, else ``data.version`` (2: SoundFont music, sound events
    in a room)."""
    version = getattr(data, "version", 1)
    return None if version == 1 else int(version)


def mixed_generated(data: DataConfig, split: str, seed: int = 0) -> Dataset:
    """``data.source=generated:mixed``: half generated sound events, half generated music
    (``data.train_size`` / ``data.eval_size`` clips in all), ``(1, T)`` at ``data.sample_rate``, from generator
    ``data.version``."""
    from course_lib.data.torch_dataset import GeneratedDataset

    size = data.train_size if split == "train" else data.eval_size
    n_music = size // 2
    parts = [GeneratedDataset(kind, split, size=n, clip_seconds=data.clip_seconds, sample_rate=data.sample_rate,
                              segment_samples=segment_samples(data), random_crop=False, seed=seed,
                              version=generator_version(data))
             for kind, n in (("sound_events", size - n_music), ("music", n_music)) if n > 0]
    return _MixedDataset(parts, data.sample_rate)


def build_dataset(data: DataConfig, split: str, seed: int = 0) -> Dataset:
    """The dataset for ``split`` (``"train"`` or ``"valid"``) described by ``data``.

    The eval split uses ``data.eval_source`` when set, else the same source's ``"valid"`` split
    (``data.eval_size`` clips for generated sets). Crops of longer clips are random for ``train`` (drawn from
    ``(seed, epoch, index)``, so they repeat exactly after a resume) and from the start for ``valid``.
    """
    source = data.eval_source if (split != TRAIN_SPLIT and data.eval_source) else data.source
    key = "data.eval_source" if (split != TRAIN_SPLIT and data.eval_source) else "data.source"
    seg = segment_samples(data)
    train = split == TRAIN_SPLIT
    if source == MIXED_SOURCE:
        return mixed_generated(data, split, seed)
    if source.startswith("generated:"):
        from course_lib.data.torch_dataset import GeneratedDataset

        size = data.train_size if train else data.eval_size
        try:
            return GeneratedDataset(source.split(":", 1)[1], split, size=size, clip_seconds=data.clip_seconds,
                                    sample_rate=data.sample_rate, segment_samples=seg, random_crop=False,
                                    seed=seed, version=generator_version(data))
        except ValueError as err:
            raise TrainingError(f"{key} {source!r}: {err}") from None
    if source.startswith("py:"):
        _, module, name = source.split(":")
        try:
            factory: Callable[..., Dataset] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{key}: cannot import {module}:{name} ({err})") from None
        return factory(data, split, seed)
    from course_lib.data.torch_dataset import CaptionedAudioDataset

    name = source[4:] if source.startswith("hub:") else source
    try:
        return CaptionedAudioDataset(name, seg, split=split, sample_rate=data.sample_rate, random_crop=train,
                                     seed=seed, allow_outside=data.allow_outside_paths)
    except (FileNotFoundError, ValueError) as err:
        raise TrainingError(f"{key} {source!r}, split {split!r}: {err}") from None


def check_dataset(dataset: Dataset, data: DataConfig, split: str, source: str) -> None:
    """Refuse a dataset the engine cannot train on correctly, with a message that names the problem.

    Checks: not empty; its ``sample_rate`` attribute (if any) equals ``data.sample_rate``; its first item
    is a dict whose ``"audio"`` is a float tensor ``(1, T)`` (and whose ``"sample_rate"``, if present,
    matches too).
    """
    try:
        n = len(dataset)
    except TypeError:
        raise TrainingError(f"the {split} dataset from {source!r} has no len(); the engine needs a map-style "
                            f"dataset") from None
    if n == 0:
        raise TrainingError(f"data source {source!r} gave an empty {split} split (0 clips); check the path and "
                            f"the split's folder/metadata")
    rate = getattr(dataset, "sample_rate", None)
    if rate is not None and int(rate) != data.sample_rate:
        raise TrainingError(_rate_message(source, split, int(rate), data.sample_rate))
    try:
        item = dataset[0]
    except (ValueError, OSError, RuntimeError) as err:
        raise TrainingError(f"cannot read item 0 of the {split} dataset from {source!r} (check the data.* "
                            f"settings): {err}") from None
    if not isinstance(item, dict) or "audio" not in item:
        raise TrainingError(f"items of the {split} dataset from {source!r} must be dicts with an 'audio' entry "
                            f"(1, T); got {type(item).__name__}")
    audio = item["audio"]
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or audio.shape[0] != 1 or not audio.is_floating_point():
        shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise TrainingError(f"item 0 of the {split} dataset from {source!r}: 'audio' must be a float tensor "
                            f"(1, T), got {shape}")
    if "sample_rate" in item and int(item["sample_rate"]) != data.sample_rate:
        raise TrainingError(_rate_message(source, split, int(item["sample_rate"]), data.sample_rate))


def _rate_message(source: str, split: str, rate: int, wanted: int) -> str:
    return (f"the {split} dataset from {source!r} delivers audio at {rate} Hz but data.sample_rate is {wanted} Hz; "
            f"the engine refuses rather than train at the wrong rate: resample the data (course_lib.audio.resample) "
            f"or set data.sample_rate={rate} (and the model's sample_rate) to train at that rate")


def default_collate(dataset: Dataset) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The dataset's own ``collate_fn`` attribute if it has one, else ``collate_captioned``."""
    own = getattr(dataset, "collate_fn", None)
    if own is not None:
        return own
    from course_lib.data.torch_dataset import collate_captioned

    return collate_captioned
