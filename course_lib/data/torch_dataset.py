"""PyTorch datasets over captioned clips: fixed-length crops, a collate function, and on-the-fly course data.

Every item is a dict ``{"audio": (1, T) float32, "caption": str, "attributes": dict, "id": str}``;
:func:`collate_captioned` turns a list of them into ``{"audio": (B, 1, T), "caption": [B str], ...}``.

Crops are reproducible: the offset of item ``i`` is drawn from ``numpy.random.default_rng((seed, epoch, i))``,
so it depends on nothing but those three numbers (not on worker processes, batch order or how many items
were read before). A training engine that calls ``dataset.set_epoch(epoch)`` at the start of every epoch
sees exactly the same crops again after a resume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.audio import SAMPLE_RATE, resample
from course_lib.data.clip import Clip
from course_lib.data.loaders import AudioRecord, _check_rate, scan_captioned


def crop_offset(num_samples: int, segment_samples: int, index: int, seed: int = 0, epoch: int = 0,
                random_crop: bool = True) -> int:
    """Start (in samples) of the ``segment_samples`` window taken from a clip of ``num_samples``.

    0 when the clip is not longer than the window or ``random_crop`` is False; otherwise uniform over
    ``[0, num_samples - segment_samples]`` from a generator seeded with ``(seed, epoch, index)``.
    """
    if num_samples <= segment_samples or not random_crop:
        return 0
    rng = np.random.default_rng((int(seed), int(epoch), int(index)))
    return int(rng.integers(0, num_samples - segment_samples + 1))


def fixed_length(audio: np.ndarray | torch.Tensor, segment_samples: int | None, offset: int = 0) -> torch.Tensor:
    """Crop ``audio`` ``(time,)`` to ``[offset, offset + segment_samples)``, zero-padding the end if short.

    Returns float32 ``(1, segment_samples)``; with ``segment_samples=None`` the whole clip ``(1, time)``.
    """
    wav = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio, dtype=torch.float32)
    if wav.dim() != 1:
        raise ValueError(f"expected mono audio (time,), got shape {tuple(wav.shape)}")
    if segment_samples is None:
        return wav[None].clone()
    wav = wav[offset:offset + segment_samples]
    if wav.shape[0] < segment_samples:
        wav = torch.nn.functional.pad(wav, (0, segment_samples - wav.shape[0]))
    return wav[None].contiguous()


class _CroppingDataset(Dataset):
    """Shared crop/epoch logic: subclasses implement ``__len__`` and ``_clip(index) -> Clip``."""

    def __init__(self, segment_samples: int | None, sample_rate: int, random_crop: bool, seed: int,
                 epoch: int) -> None:
        _check_rate(sample_rate)
        if segment_samples is not None and (not isinstance(segment_samples, (int, np.integer))
                                            or isinstance(segment_samples, bool) or segment_samples <= 0):
            raise ValueError(f"segment_samples must be a positive int (samples) or None, got {segment_samples!r}")
        self.segment_samples = None if segment_samples is None else int(segment_samples)
        self.sample_rate = int(sample_rate)
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops ``__getitem__`` returns (call it at the start of every epoch)."""
        self.epoch = int(epoch)

    def _clip(self, index: int) -> Clip:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"index {index!r} out of range for a dataset of {n} clips")
        index = int(index) % n
        clip = self._clip(index)
        audio = clip.audio
        if clip.sample_rate != self.sample_rate:
            audio = resample(torch.as_tensor(audio, dtype=torch.float32), clip.sample_rate, self.sample_rate)
        num = int(audio.shape[-1])
        offset = 0 if self.segment_samples is None else crop_offset(
            num, self.segment_samples, index, self.seed, self.epoch, self.random_crop)
        return {"audio": fixed_length(audio, self.segment_samples, offset), "caption": clip.caption,
                "attributes": dict(clip.attributes), "id": clip.id}


class CaptionedAudioDataset(_CroppingDataset):
    """A map-style dataset of captioned clips, each cut or zero-padded to ``segment_samples``.

    ``clips`` is a list of :class:`Clip` (kept in memory) or a ``source`` as for
    :func:`course_lib.data.loaders.load_captioned` (its metadata and file headers are checked now; the
    audio is decoded lazily, one item at a time, so a large corpus does not have to fit in memory).
    Items are ``{"audio": (1, segment_samples) float32, "caption", "attributes", "id"}`` at
    ``sample_rate`` Hz (clips at other rates are resampled on access). With ``random_crop`` the window's
    start is drawn from ``(seed, epoch, index)`` (see :func:`crop_offset`); otherwise clips are cut from
    their start. ``segment_samples=None`` returns whole clips (batch them only if they have equal lengths).
    ``allow_outside`` lets a source's metadata name audio outside its folder (refused by default).
    """

    def __init__(self, clips: Sequence[Clip] | str | os.PathLike, segment_samples: int | None = None, *,
                 split: str = "train", sample_rate: int = SAMPLE_RATE, random_crop: bool = True, seed: int = 0,
                 epoch: int = 0, audio_column: str | None = None, text_column: str | None = None,
                 audio_root: str | os.PathLike | None = None, load_kwargs: Mapping[str, Any] | None = None,
                 allow_outside: bool = False) -> None:
        super().__init__(segment_samples, sample_rate, random_crop, seed, epoch)
        if isinstance(clips, (str, os.PathLike)):
            self.items: list[Clip] | list[AudioRecord] = scan_captioned(
                clips, split, audio_column, text_column, audio_root=audio_root, load_kwargs=load_kwargs,
                allow_outside=allow_outside)
        else:
            items = list(clips)
            bad = next((i for i, c in enumerate(items) if not isinstance(c, Clip)), None)
            if bad is not None:
                raise TypeError(f"CaptionedAudioDataset expects Clip objects or a source path/name; item {bad} "
                                f"is a {type(items[bad]).__name__}")
            if not items:
                raise ValueError("CaptionedAudioDataset got an empty list of clips")
            self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def _clip(self, index: int) -> Clip:
        item = self.items[index]
        return item.load(self.sample_rate) if isinstance(item, AudioRecord) else item


class GeneratedDataset(_CroppingDataset):
    """Course clips synthesised on the fly by index: no files, no downloads (the training engine's tiny runs).

    Item ``i`` is clip ``i`` of ``course_lib.data.<kind>.generate_clips(split, ...)`` (``kind`` is
    ``"sound_events"`` or ``"music"``), ``clip_seconds`` long at ``sample_rate`` Hz, so it is the same
    clip every time and the same one :func:`course_lib.data.export.export_course_dataset` writes. Items
    are as for :class:`CaptionedAudioDataset`; by default whole clips, ``(1, round(clip_seconds *
    sample_rate))`` if the generator returns that length, or crops when ``segment_samples`` is given.
    ``version`` picks the generator version (:func:`course_lib.data.export.course_generator`; None: default);
    with ``version=2``, ``split="test_heldout"`` gives the test clips captioned by the held-out grammar.
    """

    def __init__(self, kind: str, split: str = "train", size: int = 1000, clip_seconds: float = 4.0,
                 sample_rate: int = SAMPLE_RATE, *, segment_samples: int | None = None, random_crop: bool = False,
                 seed: int = 0, epoch: int = 0, version: int | None = None) -> None:
        from course_lib.data.export import check_split_version, course_generator

        super().__init__(segment_samples, sample_rate, random_crop, seed, epoch)
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int (number of clips), got {size!r}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds!r}")
        course_generator(kind, version)  # fail now, not in a worker, if the kind or version is unknown
        check_split_version(split, version)
        self.kind, self.split, self.size, self.clip_seconds = kind, split, int(size), float(clip_seconds)
        self.version = version

    def __len__(self) -> int:
        return self.size

    def _clip(self, index: int) -> Clip:
        from course_lib.data.export import generate_split

        clips = generate_split(self.kind, self.split, 1, self.clip_seconds, self.sample_rate, start=index,
                               version=self.version)
        clip = next(iter(clips), None)
        if clip is None:
            raise RuntimeError(f"course_lib.data.{self.kind}.generate_clips gave no clip for index {index}")
        return clip


def collate_captioned(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch: ``{"audio": (B, 1, T), "caption": [B], "attributes": [B], "id": [B]}``.

    Captions, attributes and ids stay Python lists. Items must share one length ``T``: give the dataset a
    ``segment_samples`` otherwise (the error says so).
    """
    if not batch:
        raise ValueError("collate_captioned got an empty batch")
    shapes = [tuple(item["audio"].shape) for item in batch]
    if any(len(s) != 2 or s[0] != 1 for s in shapes):
        raise ValueError(f"each item's audio must be (1, T); got shapes {shapes}")
    if len(set(shapes)) > 1:
        raise ValueError(f"cannot stack clips of different lengths {sorted({s[1] for s in shapes})}; give the "
                         "dataset segment_samples=... so every item has the same length")
    return {"audio": torch.stack([item["audio"] for item in batch]),
            "caption": [item["caption"] for item in batch],
            "attributes": [item["attributes"] for item in batch],
            "id": [item["id"] for item in batch]}
