"""Read captioned audio corpora (the course's exports, AudioCaps, Clotho, MusicCaps, any audiofolder) as Clips.

Three kinds of ``source`` are understood:

* a **local folder** in the Hugging Face "audiofolder" layout: ``<source>/<split>/metadata.jsonl`` (or
  ``.csv``/``.parquet``) whose ``file_name`` column names audio files beside it (what
  :func:`course_lib.data.export.export_clips` writes), or one ``<source>/metadata.*`` whose file names start
  with the split folder (``train/a.wav``), or a flat folder (all of it is the ``train`` split). A folder with
  no metadata but with ``*.parquet``/``*.arrow`` files (a hub snapshot on disk) goes to ``load_dataset``;
* a **local table** ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet`` with an audio-path column and a text
  column (Clotho's ``clotho_captions_development.csv`` with ``audio_root="development"``);
* anything else is a **hub name** passed straight to ``datasets.load_dataset(source, split=...)``.

Why the audio is decoded here and not by ``datasets`` (checked with datasets 5.2.0): its ``Audio`` feature
decodes through ``torchcodec`` (FFmpeg), and even *encoding* a path into an ``Audio`` column imports
``torchcodec.encoders``, so ``load_dataset("audiofolder", ...)`` cannot build a split at all without
torchcodec (``streaming=True`` still lists the splits and columns; it fails on the first row). So
metadata tables are read with datasets' own ``json``/``csv``/``parquet`` builders (streaming, so nothing is
written to the cache), an ``Audio`` column of a hub dataset is cast to ``Audio(decode=False)`` (which
hands back ``{"bytes", "path"}`` untouched), and the bytes or file are decoded with soundfile through
:mod:`course_lib.audio`.

What happens to bad rows (documented per case, never silent):

* an audio path that leads outside the dataset folder (``../../etc/passwd``, an absolute path elsewhere, a
  symlink out of the folder, a URL in a local table): :class:`PathOutsideDatasetError` (a ``ValueError``)
  naming the row, raised before the file is looked at, so the message never tells whether it exists. The
  dataset folder is the source folder (or a table's folder), or ``audio_root`` when given. Pass
  ``allow_outside=True`` for a table you trust that points into a shared audio store;
* missing audio file: ``FileNotFoundError`` naming the file, the row and the metadata file;
* unreadable audio file: ``ValueError`` naming the same;
* audio with NaN or infinite samples (a float WAV can hold them): ``ValueError`` naming the file and the
  number of such samples, when the clip is decoded;
* a row without text (missing, empty, NaN): ``ValueError`` naming the row and its audio file;
* a zero-length clip: **skipped**, with one ``UserWarning`` giving the count and the first names (one
  empty file in a 50 000-clip corpus should not stop a training run);
* a folder with no metadata and no tables, a table with no rows, or nothing left after skipping:
  ``FileNotFoundError``/``ValueError`` that says what was expected.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from course_lib.audio import SAMPLE_RATE, check_finite_samples, load_audio_with_rate, resample
from course_lib.data.clip import Clip

AUDIO_COLUMNS = ("file_name", "audio", "path", "audio_path", "filepath", "file_path", "filename", "file",
                 "audio_file", "wav")
TEXT_COLUMNS = ("text", "caption", "caption_1", "captions", "description", "prompt", "sentence",
                "transcription")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
# Folder names datasets treats as the same split (datasets.data_files.SPLIT_KEYWORDS); "valid" is the course's.
SPLIT_ALIASES = (("train", "training"), ("valid", "validation", "val", "dev"),
                 ("test", "testing", "eval", "evaluation"))
_MAX_NAMES_IN_WARNING = 5


class PathOutsideDatasetError(ValueError):
    """A metadata row names audio outside the dataset folder (refused unless ``allow_outside=True``)."""


def split_aliases(split: str) -> tuple[str, ...]:
    """The names a split may have on disk or on the hub: ``"valid"`` → ``("valid", "validation", "val", "dev")``."""
    for group in SPLIT_ALIASES:
        if split in group:
            return (split,) + tuple(name for name in group if name != split)
    return (split,)


@dataclass(frozen=True)
class AudioRecord:
    """One row of a captioned corpus with its audio not yet decoded (what a lazy dataset keeps in memory).

    Attributes:
        audio: a local file path, or the encoded bytes of an audio file (hub datasets embed them).
        caption: the row's text.
        attributes: the row's ``attributes`` JSON (course exports) or, for other corpora, its remaining
            columns (Clotho's ``caption_2``..``caption_5``, AudioCaps' ``youtube_id``...).
        id: the row's ``id`` column, else the audio file's stem, else ``"<split>-<row>"``.
        name: how error messages name the row (file and metadata row).
        num_frames: length of the stored audio in samples at ``file_rate`` (read from the header).
        file_rate: the stored sample rate in Hz.
    """

    audio: str | bytes
    caption: str
    attributes: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    name: str = ""
    num_frames: int = 0
    file_rate: int = SAMPLE_RATE

    def load(self, sample_rate: int = SAMPLE_RATE) -> Clip:
        """Decode to a :class:`Clip`: mono (channels averaged), resampled to ``sample_rate`` Hz, float32 ``(time,)``."""
        if isinstance(self.audio, bytes):
            try:
                data, rate = sf.read(io.BytesIO(self.audio), dtype="float32", always_2d=True)  # (time, channels)
            except Exception as err:
                raise ValueError(f"could not decode the audio bytes of {self.name}: {err}") from err
            check_finite_samples(data, f"the audio of {self.name}")
            wav = resample(data.mean(axis=1), int(rate), sample_rate).numpy()
        else:
            try:
                tensor, _ = load_audio_with_rate(self.audio, sample_rate=sample_rate, mono=True)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"{err} (row {self.name})") from err
            wav = tensor[0].numpy()
        return Clip(audio=np.ascontiguousarray(wav, dtype=np.float32), sample_rate=sample_rate,
                    caption=self.caption, attributes=dict(self.attributes), id=self.id)


def load_captioned(source: str | os.PathLike, split: str = "train", sample_rate: int = SAMPLE_RATE,
                   audio_column: str | None = None, text_column: str | None = None, streaming: bool = False,
                   *, audio_root: str | os.PathLike | None = None,
                   load_kwargs: Mapping[str, Any] | None = None,
                   allow_outside: bool = False) -> list[Clip] | Iterator[Clip]:
    """Load a captioned corpus as :class:`Clip` objects: mono float32 ``(time,)`` at ``sample_rate`` Hz.

    ``source`` is a local audiofolder, a local ``.csv``/``.tsv``/``.jsonl``/``.parquet`` table, or a hub name
    (see the module docstring). ``split`` accepts datasets' aliases (``"valid"`` finds a ``validation``
    folder and the reverse). Stereo files are down-mixed by averaging the channels; other sample rates are
    resampled (windowed sinc). The audio column is found among ``AUDIO_COLUMNS`` and the text among
    ``TEXT_COLUMNS`` (the first caption of Clotho's ``caption_1``..``caption_5``; a list takes its first
    entry) unless given; if none matches, the error lists the columns that exist. Relative audio paths are
    resolved against ``audio_root`` (default: the metadata file's folder); a path without a suffix is tried
    with ``.wav``, ``.flac``, ... A path that leads outside the dataset folder (or ``audio_root``) is refused
    unless ``allow_outside=True``. ``load_kwargs`` go to ``datasets.load_dataset`` for hub names
    (``name=``, ``revision=``, ``cache_dir=``...). Returns a list, or with ``streaming=True`` an iterator
    that reads and decodes one row at a time. Errors and skips: see the module docstring.
    """
    _check_rate(sample_rate)
    records = iter_records(source, split, audio_column, text_column, audio_root=audio_root,
                           load_kwargs=load_kwargs, streaming=streaming, allow_outside=allow_outside)
    clips = (record.load(sample_rate) for record in records)
    return clips if streaming else list(clips)


def scan_captioned(source: str | os.PathLike, split: str = "train", audio_column: str | None = None,
                   text_column: str | None = None, *, audio_root: str | os.PathLike | None = None,
                   load_kwargs: Mapping[str, Any] | None = None, allow_outside: bool = False) -> list[AudioRecord]:
    """Read and check a corpus's metadata (and every audio file's header) without decoding any audio.

    Same arguments and errors as :func:`load_captioned`; returns one :class:`AudioRecord` per usable row,
    which :class:`course_lib.data.torch_dataset.CaptionedAudioDataset` decodes lazily.
    """
    return list(iter_records(source, split, audio_column, text_column, audio_root=audio_root,
                             load_kwargs=load_kwargs, allow_outside=allow_outside))


def iter_records(source: str | os.PathLike, split: str = "train", audio_column: str | None = None,
                 text_column: str | None = None, *, audio_root: str | os.PathLike | None = None,
                 load_kwargs: Mapping[str, Any] | None = None, streaming: bool = True,
                 allow_outside: bool = False) -> Iterator[AudioRecord]:
    """Lazy form of :func:`scan_captioned`: yields records row by row; warns about skipped clips at the end.

    ``streaming`` only matters for hub names (stream rather than download the whole split first).
    """
    rows, base_dir, label = _open_rows(source, split, load_kwargs, streaming)
    local = Path(source).expanduser() if base_dir is not None else None
    root = None if local is None else (local if local.is_dir() else local.parent)  # the dataset folder
    if audio_root is not None:
        base_dir = root = Path(audio_root).expanduser()
        if not base_dir.is_dir():
            raise FileNotFoundError(f"audio_root {base_dir} is not a folder")
    return _records(rows, base_dir, label, split, audio_column, text_column, None if allow_outside else root)


# --------------------------------------------------------------------------------------------------------
# Finding the rows
# --------------------------------------------------------------------------------------------------------

_HUB_HINT = "a local folder or table that exists, or a hub name like 'owner/dataset'"


def _open_rows(source: str | os.PathLike, split: str, load_kwargs: Mapping[str, Any] | None,
               streaming: bool) -> tuple[Iterator[dict], Path | None, str]:
    """Return (rows, folder relative audio paths are resolved against, label for messages)."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a hub name (str), got {type(source).__name__}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'train', got {split!r}")
    path = Path(source).expanduser()
    if path.is_file():
        return _table_rows(path, split), path.parent, str(path)
    if path.is_dir():
        return _folder_rows(path, split)
    text = os.fspath(source)
    if isinstance(source, Path) or text.startswith(("/", ".", "~")) or path.suffix.lower() in TABLE_BUILDERS:
        raise FileNotFoundError(f"no such local folder or file: {path} (expected {_HUB_HINT})")
    return _load_dataset_rows(text, split, load_kwargs, streaming), None, text


def _table_rows(path: Path, split: str) -> Iterator[dict]:
    """Rows of one metadata table, read with datasets' json/csv/parquet builder (streaming: no cache)."""
    builder = TABLE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"cannot read metadata table {path}: expected one of {sorted(TABLE_BUILDERS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"metadata table {path} is empty")
    import datasets

    extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **extra)
    except Exception as err:
        raise ValueError(f"could not read metadata table {path}: {err}") from err
    return iter(table)


def _folder_rows(root: Path, split: str) -> tuple[Iterator[dict], Path | None, str]:
    aliases = split_aliases(split)
    for name in aliases:  # <root>/<split>/metadata.*
        for meta in METADATA_FILES:
            if (root / name / meta).is_file():
                return _table_rows(root / name / meta, split), root / name, str(root / name / meta)
    for meta in METADATA_FILES:  # <root>/metadata.* with "train/a.wav" file names, or a flat folder
        if (root / meta).is_file():
            return _root_metadata_rows(root / meta, split), root, str(root / meta)
    if any(root.glob("*.parquet")) or any(root.glob("*/*.parquet")) or any(root.glob("*.arrow")):
        return _load_dataset_rows(str(root), split, None, True), root, str(root)
    splits = sorted(d.name for d in root.iterdir() if d.is_dir() and any((d / m).is_file() for m in METADATA_FILES))
    audio = [p.name for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES][:3]
    if splits:
        raise FileNotFoundError(f"{root} has no split {split!r} (looked for {list(aliases)}); its splits are {splits}")
    found = f"it has audio files ({', '.join(audio)}, ...) but no captions" if audio else "it is empty of those"
    raise FileNotFoundError(
        f"no captioned data in {root}: expected <folder>/<split>/metadata.jsonl (or .csv/.parquet) naming "
        f"audio files in a 'file_name' column, or parquet/arrow files; {found}")


def _root_metadata_rows(meta: Path, split: str) -> Iterator[dict]:
    """Rows of a root-level metadata file: those under the split's folder, or all of them for ``train``."""
    rows = _table_rows(meta, split)
    first = next(rows, None)
    if first is None:
        return
    aliases = split_aliases(split)
    all_aliases = {name for group in SPLIT_ALIASES for name in group}
    column = next((c for c in AUDIO_COLUMNS if isinstance(first.get(c), str)), None)
    top = (lambda row: Path(str(row.get(column, ""))).parts[:1]) if column else (lambda row: ())
    if not set(top(first)) & all_aliases:  # flat: the whole table is "train", as in audiofolder
        if "train" not in aliases:
            raise FileNotFoundError(f"{meta} describes one split ('train'); asked for {split!r}")
        yield from _chain(first, rows)
        return
    for row in _chain(first, rows):
        if set(top(row)) & set(aliases):
            yield row


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _load_dataset_rows(name: str, split: str, load_kwargs: Mapping[str, Any] | None,
                       streaming: bool) -> Iterator[dict]:
    """Rows of ``datasets.load_dataset(name, split=...)``, its Audio columns cast to ``decode=False``.

    A local folder is always streamed (nothing is copied into the cache); a hub dataset is streamed only
    when asked, otherwise downloaded and cached by datasets as usual.
    """
    import datasets

    kwargs = dict(load_kwargs or {})
    streaming = bool(kwargs.pop("streaming", streaming))
    errors = []
    for candidate in split_aliases(split):
        try:
            ds = datasets.load_dataset(name, split=candidate, streaming=streaming, **kwargs)
            break
        except ValueError as err:  # datasets: 'Unknown split "valid". Should be one of [...]'
            if "split" not in str(err).lower():
                raise ValueError(f"could not load {name!r} with datasets.load_dataset: {err}") from err
            errors.append(str(err))
        except Exception as err:
            raise ValueError(f"could not load {name!r} with datasets.load_dataset (it is not a local path "
                             f"either; expected {_HUB_HINT}): {err}") from err
    else:
        raise ValueError(f"{name!r} has no split {split!r} (tried {list(split_aliases(split))}): {errors[-1]}")
    features = ds.features or {}
    for column, feature in features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            ds = ds.cast_column(column, datasets.Audio(decode=False))  # {"bytes", "path"}; no torchcodec
    return iter(ds)


# --------------------------------------------------------------------------------------------------------
# Turning rows into records
# --------------------------------------------------------------------------------------------------------


def _records(rows: Iterator[dict], base_dir: Path | None, label: str, split: str, audio_column: str | None,
             text_column: str | None, root: Path | None = None) -> Iterator[AudioRecord]:
    skipped: list[str] = []
    count = 0
    try:
        for index, row in enumerate(_guarded(rows, label)):
            if index == 0:
                audio_column = _pick_column(row, audio_column, AUDIO_COLUMNS, "audio_column", "an audio path", label)
                text_column = _pick_column(row, text_column, TEXT_COLUMNS, "text_column", "a caption", label)
            record = _record(row, index, base_dir, label, split, audio_column, text_column, root)
            if record.num_frames == 0:
                skipped.append(record.name)
                continue
            count += 1
            yield record
        if count == 0:
            reason = f"all {len(skipped)} clips are zero-length" if skipped else "it has no rows"
            raise ValueError(f"no clips in {label} (split {split!r}): {reason}")
    finally:
        if skipped:
            first = ", ".join(skipped[:_MAX_NAMES_IN_WARNING]) + (", ..." if len(skipped) > _MAX_NAMES_IN_WARNING else "")
            warnings.warn(f"skipped {len(skipped)} zero-length clip(s) in {label} (split {split!r}): {first}",
                          UserWarning, stacklevel=2)


def _guarded(rows: Iterator[dict], label: str) -> Iterator[dict]:
    """Re-raise a parser's error (pyarrow's "JSON parse error", pandas') as one that names the metadata."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"could not read the metadata of {label}: {err}") from err
        yield row


def _pick_column(row: Mapping[str, Any], given: str | None, candidates: tuple[str, ...], argument: str,
                 what: str, label: str) -> str:
    columns = list(row)
    if given is not None:
        if given not in row:
            raise ValueError(f"{argument}={given!r} is not a column of {label}; its columns are {columns}")
        return given
    for name in candidates:
        if name in row:
            return name
    raise ValueError(f"cannot tell which column of {label} holds {what}: none of {list(candidates)} is among "
                     f"its columns {columns}; pass {argument}=...")


def _record(row: Mapping[str, Any], index: int, base_dir: Path | None, label: str, split: str,
            audio_column: str, text_column: str, root: Path | None = None) -> AudioRecord:
    value = row.get(audio_column)
    where = f"row {index} of {label}"
    audio, display = _resolve_audio(value, base_dir, where, root)
    name = f"{display} ({where})"
    caption = _text(row.get(text_column))
    if caption is None:
        raise ValueError(f"{where} (audio {display}) has no text in column {text_column!r}")
    try:
        info = sf.info(io.BytesIO(audio) if isinstance(audio, bytes) else audio)
    except Exception as err:  # libsndfile says "Format not recognised"; say which file
        raise ValueError(f"could not read audio file {name}: {err}") from err
    attributes = _attributes(row, audio_column, text_column, where)
    stem = Path(display).stem if display and not display.startswith("<") else ""
    row_id = row.get("id")
    row_id = str(row_id) if row_id not in (None, "") else (stem or f"{split}-{index}")
    return AudioRecord(audio=audio, caption=caption, attributes=attributes, id=row_id, name=name,
                       num_frames=int(info.frames), file_rate=int(info.samplerate))


def _resolve_audio(value: Any, base_dir: Path | None, where: str,
                   root: Path | None = None) -> tuple[str | bytes, str]:
    """A local path (checked to exist) or encoded bytes, and how to name it in messages.

    With ``root`` (the dataset folder), a path that leads outside it is refused before the file system is
    asked anything about it: first by its spelling (``..``, an absolute path elsewhere), then with symlinks
    resolved (a link inside the folder that points out of it).
    """
    if isinstance(value, Mapping):  # an Audio(decode=False) cell: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"]), str(value.get("path") or "<embedded bytes>")
        value = value.get("path")
        if isinstance(value, str) and "://" in value:  # a remote file of a streamed hub dataset
            if root is not None:  # a local table naming a URL (file:///etc/passwd reads anything)
                raise _outside(value, root, where)
            import fsspec

            with fsspec.open(value, "rb") as handle:
                return handle.read(), value
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"{where} has no audio path (got {value!r})")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if root is not None and not _inside(path, root):
        raise _outside(value, root, where)
    if not path.is_file() and not path.suffix:
        for candidate in (path.with_suffix(s) for s in AUDIO_SUFFIXES):
            if root is not None and not _inside(candidate, root):
                if os.path.lexists(candidate):  # a link inside the folder that points out of it
                    raise _outside(candidate, root, where)
                continue
            if candidate.is_file():
                path = candidate
                break
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path} ({where})")
    return str(path), str(path)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` stays inside ``root``: by its spelling (no file-system access), then by its real path."""
    lexical, lexical_root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not lexical.is_relative_to(lexical_root):
        return False
    return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))


def _outside(value: Any, root: Path, where: str) -> PathOutsideDatasetError:
    return PathOutsideDatasetError(
        f"{where}: audio path {str(value)!r} leads outside the dataset folder {root}; refused without opening "
        f"it (a metadata table may only name files inside its folder; if you trust this table, pass "
        f"allow_outside=True, or data.allow_outside_paths=true when training)")


def _text(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if _text(v) is not None), None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _attributes(row: Mapping[str, Any], audio_column: str, text_column: str, where: str) -> dict[str, Any]:
    if "attributes" in row:
        value = row["attributes"]
        if value is None or value == "":
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: column 'attributes' is not a JSON object: {value!r}") from err
        if not isinstance(parsed, dict):
            raise ValueError(f"{where}: column 'attributes' is not a JSON object: {value!r}")
        return parsed
    skip = {audio_column, text_column, "id"}
    return {k: v for k, v in row.items() if k not in skip and not isinstance(v, (bytes, Mapping))}


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int in Hz, got {sample_rate!r}")
