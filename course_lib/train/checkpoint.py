"""Checkpoints that survive a crash at any instant, and loading a trained model back in one call.

Layout of a run directory (``train.run_dir``)::

    config.yaml                      the resolved run config (what was actually trained)
    checkpoints/step_00000500/       one complete checkpoint per saved step (the last ``keep_last`` kept)
        model.safetensors            weights (safetensors: no pickle)
        ema.safetensors              EMA weights, when ``train.ema_decay`` > 0
        config.json                  {"family", "step", "config": the full run config}
        state.pt                     optimizer, scheduler, step, epoch, data position, RNG states, scaler
    checkpoints/best_step_00000400/  weights + config.json of the best eval so far (EMA weights if EMA is on)
    checkpoints/best.json            which ``best_step_*`` folder is current, and its metric
    samples/step_00000500/*.wav      audio written at each evaluation
    tb/                              TensorBoard event files
    metrics.jsonl                    one JSON line per logged step / evaluation
    summary.json                     written at the end: steps, time, steps per second, metrics
    run.lock                         while a run writes here: {"pid", "host", "started", ...} of its process

Atomicity: every file is written to a temporary file in the same folder, flushed, ``fsync``-ed and moved
into place with ``os.replace``; a checkpoint folder is assembled under a temporary name and renamed to
``step_XXXXXXXX`` only when complete, and older checkpoints are deleted only after that rename. A crash
therefore leaves either the previous checkpoints or the new one, never a half-written file. Stale
temporary folders of a crashed write are removed at the next save.

``state.pt`` holds only tensors, lists, dicts and numbers (NumPy's RNG state is stored as a tensor), so it
loads with ``torch.load(path, weights_only=True)``: nothing in a checkpoint is ever unpickled blindly.

One writer per run directory: a run holds ``run.lock`` (its PID, host and start time) while it trains
(:func:`acquire_run_lock`); a second run on the same folder is refused with :class:`RunInUseError`. A lock
left by a run that was killed (its PID no longer runs on this host) is taken over with a warning, so a
SIGKILL never leaves a folder stuck.

Damaged files (a truncated or renamed ``model.safetensors``, an empty ``state.pt``, a ``config.json`` that is
not JSON, a ``best.json`` that points outside the run) raise :class:`CheckpointError` naming the file and what
is wrong with it. :func:`load_from_run` (``"last"``/``"ema"``) and the engine's resume fall back to the newest
checkpoint that loads, with a warning naming the skipped one and the one used; a resumed run moves the
damaged newer folders aside to ``checkpoints/damaged_step_XXXXXXXX`` (kept for inspection, never deleted).
A model config is checked before the model is built: a config whose model would hold more than
:data:`MAX_PARAMETERS` values (a tampered ``channels=200000``) is refused instead of allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from course_lib.train.errors import CheckpointError, RunInUseError

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
BEST_POINTER = "best.json"
LOCK_FILE = "run.lock"
DAMAGED_PREFIX = "damaged_"
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_BEST_RE = re.compile(r"^best_step_(\d{8,})$")
FORMAT_VERSION = 1
# A model config from a checkpoint is refused before it is built if its model would hold more values than this
# (2e9 float32 values = 8 GB; the largest paper-scale model of the course has about 0.42e9).
MAX_PARAMETERS = 2_000_000_000


# --------------------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp_path)`` into a temp file beside it, fsync, then ``os.replace``.

    If ``write`` raises, the temp file is removed and any existing ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file (UTF-8)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------------
# RNG state as plain tensors and lists
# --------------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if CUDA is in use) the current CUDA device's RNG states, as
    tensors/lists/numbers only. Only the current device: under torchrun each process owns one GPU, and
    touching the others would create a CUDA context on each of them."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (evaluation, sampling) without disturbing any global RNG the training loop uses."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


# --------------------------------------------------------------------------------------------------------
# Saving and finding checkpoints
# --------------------------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint at optimizer step ``step``: ``step_00000500``."""
    return f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders of a crashed write excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(ckpt_dir: str | os.PathLike) -> int:
    """The optimizer step of a ``step_XXXXXXXX`` (or ``best_step_XXXXXXXX``) folder, from its name."""
    name = Path(ckpt_dir).name
    m = _STEP_RE.match(name) or _BEST_RE.match(name)
    if m is None:
        raise ValueError(f"{ckpt_dir} is not a checkpoint folder name (step_XXXXXXXX)")
    return int(m.group(1))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _write_folder(final: Path, write_files: Callable[[Path], None]) -> Path:
    """Assemble a folder under a temp name (each file atomic), then rename it to ``final`` in one step."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        write_files(tmp)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step: move the old one aside first, delete it after
            trash = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    return final


def _save_weights(module: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    atomic_write(path, lambda p: save_model(module, str(p), metadata=metadata))


def _remove_stale_temporaries(root: Path) -> None:
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, family: str, config: Mapping[str, Any],
                    model: torch.nn.Module, state: Mapping[str, Any], ema_model: torch.nn.Module | None = None,
                    keep_last: int = 3) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically, then delete all but the newest ``keep_last``.

    ``model``/``ema_model`` are the bare modules (not DDP- or compile-wrapped); ``config`` is the full run
    config as a dict (``config_to_dict``); ``state`` the training state (tensors, lists, dicts, numbers).
    Returns the checkpoint folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    meta = {"family": family, "step": int(step), "format_version": FORMAT_VERSION, "config": dict(config),
            "has_ema": ema_model is not None}
    st_meta = {"family": family, "step": str(step)}

    def write_files(tmp: Path) -> None:
        _save_weights(model, tmp / MODEL_FILE, st_meta)
        if ema_model is not None:
            _save_weights(ema_model, tmp / EMA_FILE, st_meta)
        atomic_write(tmp / STATE_FILE, lambda p: torch.save(dict(state), p))
        atomic_write_json(tmp / CONFIG_FILE, meta)  # written last: its presence marks a complete folder

    final = _write_folder(root / step_dir_name(step), write_files)
    # prune only checkpoints older than this one: never a newer folder (which this run did not write)
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < step]
    for old in older[:max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(run_dir: str | os.PathLike, step: int, *, family: str, config: Mapping[str, Any],
              model: torch.nn.Module, metric: str, value: float) -> Path:
    """Keep ``model`` (the weights that were evaluated) as the run's best, by ``metric`` = ``value``.

    Written as ``checkpoints/best_step_XXXXXXXX`` plus an atomically replaced ``best.json`` pointer; the
    previous best folder is removed only after the pointer moved.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = "best_" + step_dir_name(step)
    meta = {"family": family, "step": int(step), "format_version": FORMAT_VERSION, "config": dict(config),
            "metric": metric, "value": float(value)}

    def write_files(tmp: Path) -> None:
        _save_weights(model, tmp / MODEL_FILE, {"family": family, "step": str(step)})
        atomic_write_json(tmp / CONFIG_FILE, meta)

    folder = _write_folder(root / name, write_files)
    atomic_write_json(root / BEST_POINTER, {"dir": name, "step": int(step), "metric": metric, "value": float(value)})
    for old in root.glob("best_step_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _reason(err: BaseException) -> str:
    """What went wrong reading a file, in a few words: the loader's first sentence, never its advice.

    (torch's ``UnpicklingError`` suggests retrying with ``weights_only=False``, which would run arbitrary code
    from the file: that text must not reach the user as advice.)
    """
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    if isinstance(err, pickle.UnpicklingError):
        detail = next((line.strip() for line in str(err).splitlines()
                       if line.strip().startswith(("Trying to load unsupported", "Unsupported"))), "")
        return ("it holds Python objects other than tensors and plain containers, which a checkpoint never "
                "needs and the course never unpickles" + (f" ({detail})" if detail else ""))
    text = " ".join(str(err).split()) or type(err).__name__
    first = re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0]
    return first[:300].rstrip(".")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged {what}: not valid JSON ({_reason(err)})") from None


def read_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``best.json`` pointer of a run (``dir``, ``step``, ``metric``, ``value``), or None.

    Raises :class:`CheckpointError` naming the file when it is not JSON, or when ``dir`` is not the name of a
    ``best_step_XXXXXXXX`` folder inside the run's ``checkpoints/`` (``"../../other_run"`` would load another
    run's weights).
    """
    path = Path(run_dir) / CHECKPOINTS / BEST_POINTER
    if not path.is_file():
        return None
    best = _read_json(path, "best-checkpoint pointer")
    name = best.get("dir") if isinstance(best, dict) else None
    if not isinstance(name, str) or not _BEST_RE.match(name):
        raise CheckpointError(f"{path}: 'dir' must name a best_step_XXXXXXXX folder inside {path.parent}, got "
                              f"{name!r}; the file is damaged or was edited")
    return best


def read_checkpoint_meta(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder: ``family``, ``step``, ``config`` (the run config dict).

    Raises :class:`CheckpointError` naming the file when it is missing, not JSON, or lacks those keys.
    """
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint (no {CONFIG_FILE})")
    meta = _read_json(path, "checkpoint config")
    if not (isinstance(meta, dict) and isinstance(meta.get("family"), str) and isinstance(meta.get("config"), dict)
            and isinstance(meta.get("step", 0), int)):
        raise CheckpointError(f"{path}: damaged checkpoint config: expected a JSON object with 'family' (a name), "
                              f"'step' (an int) and 'config' (the run config)")
    return meta


def load_training_state(ckpt_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``state.pt`` with ``weights_only=True`` (tensors and plain containers only, no arbitrary pickle).

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated, or holds anything
    but tensors and plain containers.
    """
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no training state ({STATE_FILE}); cannot resume from it")
    try:
        with warnings.catch_warnings():  # torch's notes about pickle protocols: noise around the real error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # EOFError, UnpicklingError, RuntimeError (zip), ...: one message, no torch advice
        raise CheckpointError(f"{path}: cannot be loaded: {_reason(err)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: damaged training state: expected a dict, got {type(state).__name__}")
    return state


def check_weights_file(path: str | os.PathLike) -> int:
    """Read a ``.safetensors`` file's header (not its tensors); return how many values it holds.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, or not safetensors (a
    pickle renamed to ``.safetensors`` is refused here, before anything reads it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({_reason(err)})") from None


def load_weights(module: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Load a ``.safetensors`` file into ``module`` strictly (every key must match).

    Raises :class:`CheckpointError` naming the file when it is missing, damaged, or does not fit ``module``.
    """
    path = Path(path)
    check_weights_file(path)
    try:
        missing, unexpected = load_model(module, str(path), strict=False, device=str(device))
    except RuntimeError as err:  # shape mismatches: keep the first lines, they name the tensors
        lines = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
        raise CheckpointError(f"{path} does not fit the model built from its config: {detail}") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({_reason(err)})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model built from its config: missing keys {missing}, "
                              f"unexpected keys {unexpected}")


def check_checkpoint(ckpt_dir: str | os.PathLike, *, state: bool = True,
                     map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Check that every file of a checkpoint folder can be read; return ``(config.json, state.pt or None)``.

    Reads ``config.json``, the headers of ``model.safetensors`` (and ``ema.safetensors`` when the config says
    the run had EMA) and, with ``state=True``, loads ``state.pt``. The first problem raises
    :class:`CheckpointError` naming the file.
    """
    ckpt_dir = Path(ckpt_dir)
    meta = read_checkpoint_meta(ckpt_dir)
    check_weights_file(ckpt_dir / MODEL_FILE)
    if meta.get("has_ema") or (ckpt_dir / EMA_FILE).exists():
        check_weights_file(ckpt_dir / EMA_FILE)
    return meta, (load_training_state(ckpt_dir, map_location) if state else None)


def set_aside_damaged(ckpt_dir: str | os.PathLike) -> Path:
    """Rename a damaged checkpoint folder to ``damaged_step_XXXXXXXX`` (kept for inspection, no longer listed)."""
    ckpt_dir = Path(ckpt_dir)
    target, n = ckpt_dir.with_name(DAMAGED_PREFIX + ckpt_dir.name), 1
    while target.exists():
        target, n = ckpt_dir.with_name(f"{DAMAGED_PREFIX}{ckpt_dir.name}.{n}"), n + 1
    os.replace(ckpt_dir, target)
    return target


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A SHA-256 over every tensor of ``module.state_dict()`` (names, dtypes, shapes, bytes) in key order.

    Two processes get the same digest exactly when their weights are bitwise identical.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Loading a trained model back
# --------------------------------------------------------------------------------------------------------


def resolve_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> tuple[Path, Path]:
    """Return ``(checkpoint folder, weights file)`` for ``which`` in ``"last"``, ``"best"``, ``"ema"``.

    ``"last"``/``"ema"`` name the newest checkpoint (whether or not its files are intact: see
    :func:`load_from_run` for the fallback); ``"best"`` follows ``best.json``, which must point at a
    ``best_step_XXXXXXXX`` folder inside this run's ``checkpoints/``.
    """
    run_dir = Path(run_dir)
    if which not in ("last", "best", "ema"):
        raise ValueError(f"which must be 'last', 'best' or 'ema', got {which!r}")
    if not run_dir.is_dir():
        raise CheckpointError(f"run_dir {run_dir} does not exist")
    if which == "last":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"run_dir {run_dir} holds no checkpoint yet")
        return ckpt, ckpt / MODEL_FILE
    if which == "ema":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"run_dir {run_dir} holds no checkpoint yet")
        if not (ckpt / EMA_FILE).is_file():
            raise CheckpointError(f"run_dir {run_dir} was trained without EMA (train.ema_decay=0); use "
                                  f"which='last' or 'best'")
        return ckpt, ckpt / EMA_FILE
    best = read_best(run_dir)
    if best is None:
        raise CheckpointError(f"run_dir {run_dir} has no best checkpoint (no evaluation has run yet)")
    root = run_dir / CHECKPOINTS
    ckpt = root / best["dir"]
    if ckpt.resolve().parent != root.resolve():  # a symlink out of the run
        raise CheckpointError(f"{root / BEST_POINTER}: {best['dir']!r} leads outside {root}; refusing to load it")
    return ckpt, ckpt / MODEL_FILE


class _LargeTensorsOnMeta(torch.overrides.TorchFunctionMode):
    """Create every tensor of more than ``threshold`` values on the ``meta`` device (shape only, no memory).

    Small tensors (a mel filter bank, a positional table) stay real, so building code that computes with them
    still runs; the big weight matrices a model is made of cost nothing.
    """

    _FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.empty_strided)

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES and kwargs.get("device") is None:
            size = kwargs.get("size", args[0] if args else None)
            dims = size if isinstance(size, (tuple, list, torch.Size)) else \
                [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
            if dims and all(isinstance(d, int) for d in dims) and math.prod(dims) > self.threshold:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def estimate_parameters(build: Callable[[], torch.nn.Module], thresholds: tuple[int, ...] = (1 << 16, 1 << 22)
                        ) -> int | None:
    """How many parameter values the module ``build()`` returns would hold, without allocating its big tensors.

    ``build`` runs with every factory-made tensor of more than ``threshold`` values created on the ``meta``
    device (the first threshold that works; a constructor that computes with a mid-sized factory tensor needs
    a larger one). Returns None when the model cannot be built that way at all; the caller then cannot bound
    the size in advance.
    """
    for threshold in thresholds:
        try:
            with _LargeTensorsOnMeta(threshold):
                model = build()
            return int(sum(p.numel() for p in model.parameters()))
        except Exception:  # noqa: BLE001, S112 - a failure means "cannot tell this way", never a verdict
            continue
    return None


def _model_from_checkpoint(ckpt: Path, weights: Path) -> torch.nn.Module:
    """Build the model a checkpoint's ``config.json`` describes (checked first) and load ``weights`` into it."""
    from course_lib.train.families import get_family

    config_path = ckpt / CONFIG_FILE
    meta = read_checkpoint_meta(ckpt)
    try:
        family = get_family(meta["family"])
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    try:
        cfg = family.config_from_dict(meta["config"], validate=False)
        check = getattr(cfg.model, "validate", None)
        if callable(check):
            check()
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{config_path}: invalid model config: {err}") from None
    check_weights_file(weights)
    count = estimate_parameters(lambda: family.build_model(cfg.model))
    if count is not None and count > MAX_PARAMETERS:
        ints = [(k, v) for k, v in (meta["config"].get("model") or {}).items()
                if isinstance(v, int) and not isinstance(v, bool)]
        largest = ", ".join(f"model.{k}={v}" for k, v in sorted(ints, key=lambda kv: -kv[1])[:2])
        raise CheckpointError(
            f"{config_path}: the model it describes would have {count:.3g} parameters ({count * 4 / 1e9:.3g} GB "
            f"as float32), more than the {MAX_PARAMETERS:.0e} a course checkpoint may ask for; the file looks "
            f"damaged or edited (largest model values: {largest})")
    try:
        model = family.build_model(cfg.model)
    except ValueError as err:  # a combination of values the model's own checks refuse
        raise CheckpointError(f"{config_path}: invalid model config: {err}") from None
    load_weights(model, weights)
    return model


def load_from_run(run_dir: str | os.PathLike, which: str = "last", device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained model from a run directory in one call (for notebooks): ``nn.Module`` in eval mode.

    ``which`` picks the newest checkpoint's weights (``"last"``), its EMA weights (``"ema"``), or the
    best-evaluated weights (``"best"``). The family is looked up in the registry by the name stored in the
    checkpoint's ``config.json`` and builds the model from the stored model config, after checking it (a
    model over :data:`MAX_PARAMETERS` values is refused, not allocated); weights come from safetensors, so
    nothing is unpickled. For ``"last"``/``"ema"`` a damaged checkpoint (truncated weights, broken
    ``config.json``) is skipped with a warning naming it and the checkpoint used instead; ``"best"`` has no
    fallback and raises :class:`CheckpointError` naming the damaged file.
    """
    run_dir = Path(run_dir)
    ckpt, weights = resolve_checkpoint(run_dir, which)
    if which == "best":
        return _model_from_checkpoint(ckpt, weights).to(device).eval()
    skipped: list[str] = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        weights = ckpt / (EMA_FILE if which == "ema" else MODEL_FILE)
        try:
            model = _model_from_checkpoint(ckpt, weights)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        if skipped:
            warnings.warn(f"skipped {len(skipped)} damaged checkpoint(s) of {run_dir}: {'; '.join(skipped)}; "
                          f"loaded {weights} (step {checkpoint_step(ckpt)}) instead", UserWarning, stacklevel=2)
        return model.to(device).eval()
    raise CheckpointError(f"no checkpoint of {run_dir} can be loaded: {'; '.join(skipped)}")


# --------------------------------------------------------------------------------------------------------
# One writer per run directory
# --------------------------------------------------------------------------------------------------------


@dataclass
class RunLock:
    """The lock a training run holds on its run directory: the file ``run.lock`` with its PID and host.

    :meth:`release` deletes the file only if it is still this lock (its random ``token``), so a run never
    removes a lock another process took over. Usable as a context manager.
    """

    path: Path
    token: str
    info: dict[str, Any]

    def release(self) -> None:
        """Remove ``run.lock`` if it is still ours (safe to call twice)."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(self.path.read_text(encoding="utf-8")).get("token") == self.token:
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (Linux), or None where there is no such file."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused PID apart."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of /proc/<pid>/stat
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (zombies count as dead; unknown counts as alive)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def _lock_is_stale(holder: dict[str, Any] | None) -> bool:
    """A lock whose process is gone: same host, and its PID no longer runs (or now belongs to another process)."""
    if not isinstance(holder, dict):
        return True  # unreadable: written by no run of this course
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine: its processes cannot be checked from here
    if not _pid_alive(pid):
        return True
    started, now = holder.get("proc_start"), _process_start(pid)
    return started is not None and now is not None and started != now


def _create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` only if it does not exist (atomically, complete); False if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, path)  # appears complete, or not at all
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            return True
    finally:
        tmp.unlink(missing_ok=True)


def _read_lock(path: Path) -> tuple[dict[str, Any] | None, bytes | None]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError:
        return None, b""
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        holder = None
    return (holder if isinstance(holder, dict) else None), raw


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Take ``run_dir/run.lock`` for this process (creating ``run_dir``), or raise :class:`RunInUseError`.

    The lock records PID, host, start time and command line. If another live process holds it, the error
    names that PID, host and start time. A lock left by a process that no longer runs on this host (killed
    with SIGKILL, crashed) is taken over with a warning; a lock from another host is never taken over (its
    process cannot be checked from here): delete the file by hand once that run is gone.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"train.run_dir {run_dir}: cannot create the folder ({err.strerror or err})") from None
    path = run_dir / LOCK_FILE
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "proc_start": _process_start(os.getpid()), "command": " ".join(sys.argv)[:500], "token": token}
    text = json.dumps(info, indent=2) + "\n"
    for _ in range(10):
        if _create_exclusive(path, text):
            return RunLock(path, token, info)
        holder, raw = _read_lock(path)
        if raw is None:  # released between our two looks: try again
            continue
        if not _lock_is_stale(holder):
            holder = holder or {}
            raise RunInUseError(
                f"run folder {run_dir} is in use by PID {holder.get('pid')} on host {holder.get('host')} (started "
                f"{holder.get('started')}); wait for it or use another train.run_dir (if no run is using it any "
                f"more, delete {path})")
        # stale: move it aside, and make sure what we moved is the lock we judged (not a fresh one)
        aside = path.with_name(f".{LOCK_FILE}.stale-{token[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        moved = aside.read_bytes()
        if moved != raw:  # another process took it over meanwhile: put its lock back and look again
            with contextlib.suppress(OSError):
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            continue
        aside.unlink(missing_ok=True)
        who = (f"PID {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"
               if holder else "an unreadable lock file")
        warnings.warn(f"took over the stale lock {path} of {who}: that process no longer runs", UserWarning,
                      stacklevel=2)
    raise RunInUseError(f"could not take the lock {path}: other processes keep taking it; use another train.run_dir")
