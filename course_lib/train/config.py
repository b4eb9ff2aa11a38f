"""Typed, nested run configs: dataclasses loaded from YAML, overridden with ``key.sub=value``, checked by key.

A run config has five sections. Four are shared by every family and live here (``data``, ``optim``,
``train``, ``eval``); ``model`` is the family's own dataclass. A family declares its config by subclassing
:class:`RunConfig` and giving ``model`` its type::

    @dataclass
    class MelAutoencoderRunConfig(RunConfig):
        model: MelAutoencoderConfig = field(default_factory=MelAutoencoderConfig)

Values are checked against the field's type annotation (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``tuple[...]``/``list[...]`` and nested dataclasses), both when they come
from YAML and when they come from the command line as strings, so a mistake is reported by key before
anything is built: ``optim.lr: expected float, got 'fast'``, ``unknown key model.chanels (did you mean
model.channels?)``. PyYAML reads ``1e-3`` as a string (YAML 1.1); strings are therefore parsed by the
field's type wherever the field is not a ``str``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from course_lib.train.errors import ConfigError

C = TypeVar("C", bound="RunConfig")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


# --------------------------------------------------------------------------------------------------------
# The shared sections
# --------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the audio comes from and how it is batched.

    ``source`` is one of ``"generated:sound_events"`` / ``"generated:music"`` / ``"generated:mixed"`` (the
    course's synthetic captioned sets, mixed = half each; ``train_size``/``eval_size`` clips), ``"hub:<name>"`` (a Hugging Face dataset
    read through ``datasets``), ``"py:<module>:<function>"`` (your own factory, called as
    ``function(data_config, split, seed)`` and returning a map-style dataset), or anything else, read as a
    local audiofolder or metadata table (``.csv``/``.jsonl``/``.parquet``), which must exist. ``eval_source`` defaults to the same source's
    validation split. Every clip is ``clip_seconds`` long at ``sample_rate`` Hz; ``batch_size`` is per
    process (the global batch is ``batch_size * world_size * optim.grad_accum``).

    A local folder or table may only name audio files inside its own folder: a row such as
    ``../../secret.wav``, an absolute path elsewhere, or a symlink that leads out of the folder is refused
    (without looking at the file). ``allow_outside_paths=true`` lifts that for a table you trust (one that
    points into a shared audio store).

    ``version`` picks the course generator of the ``generated:*`` sources (``data.source`` and
    ``data.eval_source``; :func:`course_lib.data.export.course_generator`): 1 (the default: synthesised music,
    dry sound events, what every config before it trained on) or 2 (music from a real SoundFont,
    :mod:`course_lib.data.music_sf2`; sound events in a room, :mod:`course_lib.data.sound_events_v2`). It must
    stay 1 when no source is generated. A config at version 1 is written without the key (``config.yaml``,
    checkpoints), exactly as before the key existed.
    """

    source: str = "generated:sound_events"
    eval_source: str | None = None
    sample_rate: int = 16_000
    clip_seconds: float = 1.0
    train_size: int = 256
    eval_size: int = 16
    batch_size: int = 16
    num_workers: int = 0
    shuffle: bool = True
    allow_outside_paths: bool = False
    version: int = field(default=1, metadata={"omit_if_default": True})


@dataclass
class OptimConfig:
    """AdamW, its learning-rate schedule, gradient clipping and accumulation.

    The learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` optimizer
    steps, then stays (``schedule="constant"``) or follows a half cosine down to ``lr * min_lr_ratio`` at
    ``train.max_steps``. ``grad_clip`` is the max global L2 norm (0 turns clipping off). ``grad_accum``
    micro-batches are summed into one optimizer step. Weight decay applies to weights with 2 or more
    dimensions only (not to biases or norm gains).
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class TrainConfig:
    """The run itself: where it writes, how long, on what, and how often it logs and checkpoints.

    ``device="auto"`` takes CUDA (the process's ``LOCAL_RANK`` GPU under torchrun) if present, else CPU.
    ``precision="auto"`` is bf16 autocast on a GPU that supports it (fp16 with a GradScaler otherwise) and
    fp32 on CPU; ``fp16`` needs CUDA. ``ema_decay`` > 0 keeps an exponential moving average of the weights,
    used for evaluation, the ``best`` checkpoint and ``load_from_run(which="ema")``. ``deterministic`` turns
    on ``torch.use_deterministic_algorithms`` (exact resume on GPU needs it; on CPU results are already
    reproducible at a fixed ``num_threads``). ``init_from`` (a run directory of the same family) starts a *fresh* run
    from that run's ``init_which`` weights (``"ema"``, ``"last"`` or ``"best"``; the EMA copy starts from them too)
    with new optimizer state and schedule: fine-tuning, e.g. a vocoder on a VQ-VAE's reconstructions; a resumed
    run ignores it (its own checkpoint holds the weights). ``num_threads`` sets torch's CPU threads (0 leaves them as the caller set
    them: ``python -m course_lib.train`` applies the course's policy, one thread or ``$COURSE_NUM_THREADS``). ``sleep_per_step`` (seconds) only exists so tests and demos can interrupt a run mid-way.
    """

    run_dir: str = "runs/run"
    max_steps: int = 1000
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    ema_decay: float = 0.0
    compile: bool = False
    deterministic: bool = False
    num_threads: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    progress: bool = True
    tensorboard: bool = True
    check_replicas: bool = True
    sleep_per_step: float = 0.0
    init_from: str | None = None
    init_which: Literal["ema", "last", "best"] = "ema"


@dataclass
class EvalConfig:
    """Periodic evaluation: every ``every`` optimizer steps (0: never periodically) and at the end.

    ``batches`` eval batches are scored; ``num_samples`` clips are written as audio. ``best_metric`` is the
    key of the family's metrics (lower is better) that picks the ``best`` checkpoint. Families that need
    more eval settings subclass this section.
    """

    every: int = 500
    at_end: bool = True
    batches: int = 4
    num_samples: int = 2
    best_metric: str = "loss"


@dataclass
class RunConfig:
    """A complete run config: ``model`` (the family's dataclass), ``data``, ``optim``, ``train``, ``eval``.

    Families subclass this and override ``model`` (and, if needed, ``eval``) with their own dataclasses;
    :meth:`validate` checks values that a type alone cannot (positive sizes, existing data folders), and
    families extend it for cross-section rules (``model.sample_rate`` must equal ``data.sample_rate``).
    """

    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key whose value cannot work."""
        d, o, t, e = self.data, self.optim, self.train, self.eval
        _positive("data.sample_rate", d.sample_rate)
        _positive("data.clip_seconds", d.clip_seconds)
        _positive("data.batch_size", d.batch_size)
        _positive("data.train_size", d.train_size)
        _non_negative("data.eval_size", d.eval_size)
        _non_negative("data.num_workers", d.num_workers)
        check_data_source("data.source", d.source)
        if d.eval_source is not None:
            check_data_source("data.eval_source", d.eval_source)
        check_data_version("data.version", d.version, d.source, d.eval_source)
        _positive("optim.lr", o.lr)
        _positive("optim.eps", o.eps)
        _non_negative("optim.weight_decay", o.weight_decay)
        _non_negative("optim.warmup_steps", o.warmup_steps)
        _non_negative("optim.grad_clip", o.grad_clip)
        _positive("optim.grad_accum", o.grad_accum)
        if not all(0.0 <= b < 1.0 for b in o.betas):
            raise ConfigError(f"optim.betas: each beta must be in [0, 1), got {o.betas}")
        if not 0.0 <= o.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio: must be in [0, 1], got {o.min_lr_ratio}")
        if not t.run_dir:
            raise ConfigError("train.run_dir: must be a folder path, got ''")
        check_run_dir("train.run_dir", t.run_dir)
        _positive("train.max_steps", t.max_steps)
        _non_negative("train.seed", t.seed)
        _positive("train.log_every", t.log_every)
        _positive("train.ckpt_every", t.ckpt_every)
        _positive("train.keep_last", t.keep_last)
        if t.init_from is not None and not str(t.init_from).strip():
            raise ConfigError("train.init_from: must be a run directory or null, got ''")
        _non_negative("train.num_threads", t.num_threads)
        _non_negative("train.sleep_per_step", t.sleep_per_step)
        if not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: must be in [0, 1) (0 turns EMA off), got {t.ema_decay}")
        device_kind = t.device.split(":")[0]
        if device_kind not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda[:N]' or 'mps', got {t.device!r}")
        _non_negative("eval.every", e.every)
        _positive("eval.batches", e.batches)
        _non_negative("eval.num_samples", e.num_samples)


def _positive(key: str, value: float) -> None:
    if not math.isfinite(value):  # NaN compares False with everything: `value <= 0` would let it through
        raise ConfigError(f"{key}: must be a finite number > 0, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")


def _non_negative(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number >= 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")


def check_run_dir(key: str, run_dir: str | os.PathLike) -> None:
    """Refuse a run directory that cannot be a folder: an existing file, or a path under a file."""
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}: {path} is inside {parent}, which is a file, not a folder")
            break


def check_data_source(key: str, source: str) -> None:
    """Check a ``data.source`` string: known ``generated:`` kind, ``hub:``/``py:`` form, or an existing folder."""
    if source.startswith("generated:"):
        kind = source.split(":", 1)[1]
        if kind not in ("sound_events", "music", "mixed"):
            raise ConfigError(f"{key}: unknown generated set {kind!r}; expected 'generated:sound_events', "
                              f"'generated:music' or 'generated:mixed'")
    elif source.startswith("hub:"):
        if not source[4:]:
            raise ConfigError(f"{key}: 'hub:' needs a dataset name, e.g. 'hub:user/my_audiofolder'")
    elif source.startswith("py:"):
        if source.count(":") != 2 or not all(source.split(":")[1:]):
            raise ConfigError(f"{key}: expected 'py:<module>:<function>', got {source!r}")
    elif not source:
        raise ConfigError(f"{key}: empty; expected 'generated:sound_events', a folder, 'hub:<name>' or "
                          f"'py:<module>:<function>'")
    elif not Path(source).expanduser().exists():
        raise ConfigError(f"{key}: folder {source!r} does not exist (for a Hugging Face dataset write "
                          f"'hub:{source}')")


def check_data_version(key: str, version: int, source: str, eval_source: str | None = None) -> None:
    """Check ``data.version``: a generator version every course kind has (1 or 2), and 1 unless a source is
    ``generated:*`` (the version means nothing for a folder, a hub dataset or your own factory)."""
    from course_lib.data.export import GENERATOR_VERSIONS

    known = sorted(set.intersection(*(set(v) for v in GENERATOR_VERSIONS.values())))
    if isinstance(version, bool) or not isinstance(version, int) or version not in known:
        raise ConfigError(f"{key}: the course generators have versions {', '.join(map(str, known))}, got {version!r}")
    generated = [s for s in (source, eval_source) if s is not None and s.startswith("generated:")]
    if version != 1 and not generated:
        raise ConfigError(f"{key}: picks the generator of the generated:* sources, but data.source is {source!r}"
                          + (f" and data.eval_source is {eval_source!r}" if eval_source else "")
                          + f"; leave it at 1 (got {version})")


# --------------------------------------------------------------------------------------------------------
# Building configs from dicts, YAML and overrides
# --------------------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as err:
        raise TypeError(f"cannot resolve the type annotations of config class {cls.__qualname__} ({err}); "
                        f"define config dataclasses at module level") from None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, key + "."))
    return keys


def _unknown_key(key: str, root: type) -> ConfigError:
    keys = _all_keys(root)
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f" (did you mean {match[0]}?)" if match else f"; known sections: {', '.join(_top_keys(root))}"
    return ConfigError(f"unknown key {key}{hint}")


def _top_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, from_string: bool = False) -> Any:
    """Return ``value`` converted to the annotation ``tp``, or raise ``ConfigError`` naming ``key``.

    ``from_string=True`` treats ``value`` as command-line text (``"true"``, ``"1e-3"``, ``"0.9,0.95"``,
    ``"none"``); YAML values are checked as they are, except strings, which are parsed like command-line
    text wherever the field is not a ``str``.
    """
    fail = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if isinstance(value, str) and tp is not str and origin is not Literal:
        from_string = True
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_string and str(value).strip().lower() in _NONE)):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, from_string)
            except ConfigError:
                continue
        raise fail
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    if origin in (tuple, list):
        items = _split_sequence(value, fail) if from_string else value
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise fail
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(items)} ({value!r})")
            return tuple(coerce(v, a, f"{key}[{i}]", from_string) for i, (v, a) in enumerate(zip(items, args)))
        elem = args[0] if args else Any
        out = [coerce(v, elem, f"{key}[{i}]", from_string) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{key}: is a section, not a value; set its keys, e.g. {key}.{_top_keys(tp)[0]}=...")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_string and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_string:
            try:
                return int(str(value).strip())
            except ValueError:
                pass
        raise fail
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):
                number = float(value)
        elif from_string:
            with contextlib.suppress(ValueError, OverflowError):
                number = float(str(value).strip())
        if number is None:
            raise fail
        if not math.isfinite(number):  # no setting of the course means anything at NaN or infinity
            raise ConfigError(f"{key}: expected a finite float, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise ConfigError(f"{key}: fields of type {tp!r} are not supported by the config loader")


def _split_sequence(value: Any, fail: ConfigError) -> list:
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            raise fail from None
        if not isinstance(parsed, list):
            raise fail
        return [str(v) for v in parsed]
    return [v.strip() for v in text.split(",")] if text else []


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None, prefix: str = "", root: type | None = None) -> C:
    """Build the dataclass ``cls`` from a nested mapping, checking every key and value.

    Missing keys keep their defaults. Unknown keys raise ``ConfigError("unknown key model.chanels (did you
    mean model.channels?)")``; values of the wrong type raise ``ConfigError("optim.lr: expected float, got
    'fast'")``.
    """
    root = root or cls
    data = data or {}
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key(key, root)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = config_from_dict(tp, value, key + ".", root)
        else:
            kwargs[name] = coerce(value, tp, key)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (JSON and YAML serialisable; tuples become lists).

    A field marked ``metadata={"omit_if_default": True}`` (``data.version``) is left out while it has its default
    value, so configs written before the field existed compare equal to today's (resume, run folders)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if not (f.metadata.get("omit_if_default") and getattr(v, f.name) == f.default)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def apply_overrides(cfg: C, overrides: Sequence[str]) -> C:
    """Return a copy of ``cfg`` with ``key.sub=value`` strings applied, each value parsed by the field's type."""
    cfg = _deepcopy(cfg)
    root = type(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-3")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts):
            if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
                raise _unknown_key(key, root)
            if i == len(parts) - 1:
                tp = _hints(type(node))[part]
                setattr(node, part, coerce(text, tp, key, from_string=True))
            else:
                node = getattr(node, part)
    return cfg


def _deepcopy(cfg: C) -> C:
    import copy

    return copy.deepcopy(cfg)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict; a missing file or a syntax error is a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                family: str | None = None, validate: bool = True) -> C:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None), apply overrides, validate.

    A top-level ``family:`` key in the file is optional; when present it must equal ``family``.
    """
    data = read_yaml(path) if path is not None else {}
    named = data.pop("family", None)
    if named is not None and family is not None and named != family:
        raise ConfigError(f"config file {path} is for family {named!r}, not {family!r}")
    cfg = config_from_dict(cls, data)
    cfg = apply_overrides(cfg, overrides)
    if validate:
        cfg.validate()
    return cfg


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``config_to_dict`` outputs (missing keys count)."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(config_diff(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out
