"""Write captioned clips to disk in the Hugging Face "audiofolder" layout, and the course datasets with them.

The layout (one folder per split, one JSON line per clip)::

    out_dir/
      course_dataset.json          # what made it: kind, sizes, clip length, rate, course_lib version
      train/metadata.jsonl         # {"file_name": "train-000000.wav", "text": caption, "id": ..., "attributes": "{...}"}
      train/train-000000.wav       # 16-bit PCM, mono
      train/.course_export.json    # the files this export wrote: the only ones ``overwrite=True`` deletes
      valid/...  test/...

Overwriting never deletes a file the course did not write: ``overwrite=True`` removes exactly the files
listed in the split's ``.course_export.json`` (for exports made before that file existed: the files named by
the ``metadata.jsonl`` of a split listed in ``course_dataset.json``). A split folder holding a metadata file
of anyone else (no such record) is refused with ``FileExistsError`` and left as it is; other audio files in a
course split folder are left in place, with a warning.

``datasets.load_dataset("audiofolder", data_dir=out_dir)`` sees the splits (``valid`` is reported as
``validation``) and the ``text``/``id``/``attributes`` columns; ``attributes`` is one JSON *string* per row
so that clips with different attribute keys share one schema. Decoding through datasets needs torchcodec;
:func:`course_lib.data.loaders.load_captioned` reads the same folder without it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from course_lib.audio import save_audio
from course_lib.data.clip import Clip
from course_lib.data.loaders import SPLIT_ALIASES

COURSE_KINDS = ("sound_events", "music")
GENERATOR_VERSIONS = {"sound_events": (1, 2), "music": (1, 2)}  # the first of each is the default
DEFAULT_SIZES = {"train": 1000, "valid": 100, "test": 100}
#: The split of test clips captioned by the held-out part of the version 2 caption grammar
#: (:mod:`course_lib.data.captions_v2`): the same audio as ``test`` (same indices), captions in templates and
#: words no training caption uses, to measure how a model generalises to new wordings. Hugging Face datasets
#: does not know the folder name as a split (export warns): load it with ``load_captioned(out, "test_heldout")``
#: or ``load_dataset("audiofolder", data_files={"test_heldout": "<out>/test_heldout/**"})``.
HELDOUT_SPLIT = "test_heldout"
METADATA_NAME = "metadata.jsonl"
MANIFEST_NAME = ".course_export.json"  # hidden: audiofolder readers skip it
CARD_NAME = "course_dataset.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def export_clips(clips: Iterable[Clip], out_dir: str | os.PathLike, split: str, *, overwrite: bool = False,
                 progress: bool = False, total: int | None = None) -> Path:
    """Write ``clips`` as ``out_dir/<split>/*.wav`` (16-bit PCM) plus ``out_dir/<split>/metadata.jsonl``.

    Each clip (mono float32 ``(time,)`` in [-1, 1], any sample rate) becomes ``<id>.wav`` (the id made
    filename-safe; ``<split>-<index>`` when the id is empty) and one metadata line with ``file_name``,
    ``text`` (the caption), ``id`` and ``attributes`` (a JSON string; NumPy scalars and arrays become plain
    numbers and lists, tuples become lists). Values beyond [-1, 1] are clipped with a warning (16-bit PCM
    cannot hold them). Clips are consumed one at a time, so a generator of thousands is fine; the metadata
    file appears only once every clip is written. A split folder that already holds a metadata file is an
    error unless ``overwrite=True``, which first deletes the files an earlier export wrote there (listed in
    its ``.course_export.json``) and nothing else; a split the course did not write is refused with
    ``FileExistsError`` (see the module docstring). ``out_dir`` that is a file raises ``NotADirectoryError``. Raises
    ``ValueError`` naming the clip for an empty, non-1-D or non-finite audio array, an empty caption,
    attributes that are not JSON-serialisable, or two ids that map to the same file name.
    Returns the split folder.
    """
    if not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise ValueError(f"split must be a plain folder name such as 'train', 'valid' or 'test', got {split!r}")
    if not any(split in group for group in SPLIT_ALIASES):
        warnings.warn(f"split {split!r} is not a folder name Hugging Face datasets recognises as a split "
                      f"({[name for group in SPLIT_ALIASES for name in group]}): load_captioned reads it, "
                      "datasets.load_dataset('audiofolder') will not", UserWarning, stacklevel=2)
    out = check_out_dir(out_dir)
    split_dir = out / split
    _prepare_split_dir(split_dir, overwrite)
    items: Iterable[Clip] = clips
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(clips, total=total, desc=f"{split_dir.parent.name}/{split}", unit="clip")
    seen: dict[str, str] = {}
    partial = split_dir / (METADATA_NAME + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as meta:
            for index, clip in enumerate(items):
                row = _write_clip(clip, index, split, split_dir, seen)
                meta.write(json.dumps(row, ensure_ascii=False) + "\n")
    except BaseException:
        partial.unlink(missing_ok=True)  # no metadata: the half-written split is never mistaken for a whole one
        raise
    if not seen:
        partial.unlink()
        raise ValueError(f"export_clips got no clips for split {split!r}")
    from course_lib import __version__

    manifest = {"written_by": "course_lib.data.export", "course_lib_version": __version__, "files": sorted(seen)}
    (split_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    partial.replace(split_dir / METADATA_NAME)
    return split_dir


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path; ``NotADirectoryError`` if it is a file or lies under a file."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"output folder {out} is inside {parent}, which is a file")
            break
    return out


def _plain_file_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def course_written_files(split_dir: Path) -> list[str] | None:
    """Names of the files an earlier export wrote into ``split_dir``, or None if the course did not write it.

    From the split's ``.course_export.json``; for older exports (no such file) from the ``file_name`` column
    of its ``metadata.jsonl`` when ``course_dataset.json`` above it lists the split. Only plain file names
    (no folders, no ``..``) are returned: nothing outside the split folder can be named.
    """
    manifest = split_dir / MANIFEST_NAME
    names: list[Any] = []
    try:
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            names = list(data["files"])
        else:
            card = json.loads((split_dir.parent / CARD_NAME).read_text(encoding="utf-8"))
            if split_dir.name not in card.get("sizes", {}):
                return None
            lines = (split_dir / METADATA_NAME).read_text(encoding="utf-8").splitlines()
            names = [json.loads(line).get("file_name") for line in lines if line.strip()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return [name for name in names if _plain_file_name(name)]


def _prepare_split_dir(split_dir: Path, overwrite: bool) -> None:
    if split_dir.exists() and not split_dir.is_dir():
        raise NotADirectoryError(f"split folder {split_dir} is a file, not a folder")
    existing = [split_dir / name for name in ("metadata.jsonl", "metadata.csv", "metadata.parquet")]
    if any(p.exists() for p in existing):
        if not overwrite:
            raise FileExistsError(f"{split_dir} already holds an exported split; pass overwrite=True "
                                  "(or --overwrite) to replace it")
        ours = course_written_files(split_dir)
        if ours is None:
            raise FileExistsError(
                f"{split_dir} holds a metadata file the course did not write (no {MANIFEST_NAME} in it, and "
                f"no {CARD_NAME} above it listing this split); overwrite only replaces the course's own "
                f"exports, so nothing was deleted: move those files away or export to another folder")
        for path in [*(split_dir / name for name in ours), *existing, split_dir / MANIFEST_NAME]:
            path.unlink(missing_ok=True)
        from course_lib.data.loaders import AUDIO_SUFFIXES

        foreign = sorted(p.name for p in split_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if foreign:
            warnings.warn(f"left {len(foreign)} audio file(s) that the course did not write in {split_dir} "
                          f"untouched ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); the new "
                          "metadata does not list them", UserWarning, stacklevel=3)
    split_dir.mkdir(parents=True, exist_ok=True)


def _write_clip(clip: Clip, index: int, split: str, split_dir: Path, seen: dict[str, str]) -> dict[str, str]:
    if not isinstance(clip, Clip):
        raise TypeError(f"export_clips expects Clip objects; item {index} is a {type(clip).__name__}")
    clip_id = clip.id or f"{split}-{index:06d}"
    label = f"clip {index} (id {clip_id!r})"
    audio = clip.audio.detach().cpu().numpy() if isinstance(clip.audio, torch.Tensor) else np.asarray(clip.audio)
    if audio.ndim != 1:
        raise ValueError(f"{label}: audio must be mono (time,), got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{label}: audio has zero length")
    if not np.issubdtype(audio.dtype, np.number) or not np.isfinite(audio).all():
        raise ValueError(f"{label}: audio must be finite numbers (dtype {audio.dtype})")
    if not isinstance(clip.caption, str) or not clip.caption.strip():
        raise ValueError(f"{label}: caption is empty; every exported clip needs text")
    try:
        attributes = json.dumps(clip.attributes, sort_keys=True, default=_jsonable, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{label}: attributes are not JSON-serialisable: {err}") from err
    file_name = _SAFE.sub("_", clip_id).strip("._") + ".wav"
    if file_name in seen:
        raise ValueError(f"{label}: file name {file_name} is already used by id {seen[file_name]!r}; ids must be "
                         "unique (after replacing characters other than letters, digits, '.', '_', '-')")
    seen[file_name] = clip_id
    save_audio(split_dir / file_name, audio.astype(np.float32), int(clip.sample_rate))
    return {"file_name": file_name, "text": clip.caption, "id": clip_id, "attributes": attributes}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def course_generator(kind: str, version: int | None = None) -> Callable[..., Iterator[Clip]]:
    """The ``generate_clips(split, n, clip_seconds, sample_rate, start)`` function of a course dataset.

    ``kind`` is ``"sound_events"`` (:mod:`course_lib.data.sound_events`) or ``"music"``
    (:mod:`course_lib.data.music`); the module is imported only when asked for. ``version`` picks the
    generator version (:data:`GENERATOR_VERSIONS`: music 1, synthesised, or 2, SoundFont instruments;
    sound events 1, or 2, several recipes per class in a room); None is the kind's default (1).
    """
    if kind not in COURSE_KINDS:
        raise ValueError(f"unknown course dataset kind {kind!r}; expected one of {COURSE_KINDS}")
    if version is not None and (isinstance(version, bool) or version not in GENERATOR_VERSIONS[kind]):
        raise ValueError(f"{kind} has generator version(s) {GENERATOR_VERSIONS[kind]}, got {version!r}")
    module = importlib.import_module(f"course_lib.data.{kind}")
    if version is None or version == GENERATOR_VERSIONS[kind][0]:
        return module.generate_clips
    return functools.partial(module.generate_clips, version=version)


def check_split_version(split: str, version: int | None) -> None:
    """Refuse :data:`HELDOUT_SPLIT` unless ``version`` is 2 (only version 2 captions have a held-out grammar)."""
    if split == HELDOUT_SPLIT and version != 2:
        raise ValueError(f"split {HELDOUT_SPLIT!r} (test clips with held-out-grammar captions) needs generator "
                         f"version 2, the one with a caption grammar; got version {version!r}")


def generate_split(kind: str, split: str, n: int, clip_seconds: float = 4.0, sample_rate: int = 16_000,
                   start: int = 0, version: int | None = None) -> Iterator[Clip]:
    """Clips ``start … start + n - 1`` of a course dataset's ``split``: one of the generator's splits, or
    :data:`HELDOUT_SPLIT`, the ``test`` clips captioned by the held-out grammar (``version=2`` only)."""
    check_split_version(split, version)
    generate = course_generator(kind, version)
    if split == HELDOUT_SPLIT:
        return generate("test", n, clip_seconds=clip_seconds, sample_rate=sample_rate, start=start,
                        grammar="heldout")
    return generate(split, n, clip_seconds=clip_seconds, sample_rate=sample_rate, start=start)


def export_course_dataset(kind: str, out_dir: str | os.PathLike, sizes: Mapping[str, int] | None = None,
                          clip_seconds: float = 4.0, sample_rate: int = 16_000, *, overwrite: bool = False,
                          progress: bool = False, version: int | None = None) -> Path:
    """Generate a course dataset and export every split: ``out_dir/<split>/`` as in :func:`export_clips`.

    ``sizes`` maps split name to number of clips (default ``{"train": 1000, "valid": 100, "test": 100}``);
    with ``version=2`` it may also name :data:`HELDOUT_SPLIT` (``"test_heldout"``: the test clips again, captioned
    by the held-out grammar);
    clips are ``clip_seconds`` long at ``sample_rate`` Hz and addressed by (split, index), so the same
    arguments always give the same files. Also writes ``out_dir/course_dataset.json`` recording kind, sizes,
    clip length, rate and the course_lib version. ``progress`` shows one tqdm bar per split. ``version``
    picks the generator version (see :func:`course_generator`; None: the default, and the card then has
    no ``version`` entry, as before versions existed). Returns ``out_dir``.
    """
    from course_lib import __version__

    out = check_out_dir(out_dir)
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    for split, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"size of split {split!r} must be a positive int, got {n!r}")
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds!r}")
    for split in sizes:
        check_split_version(split, version)
    for split, n in sizes.items():
        clips = generate_split(kind, split, int(n), clip_seconds, sample_rate, start=0, version=version)
        export_clips(clips, out, split, overwrite=overwrite, progress=progress, total=int(n))
    card = {"kind": kind, "sizes": {k: int(v) for k, v in sizes.items()}, "clip_seconds": clip_seconds,
            "sample_rate": sample_rate, "course_lib_version": __version__}
    if version is not None:
        card["version"] = int(version)
    (out / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return out
