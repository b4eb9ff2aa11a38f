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

Atomicity: every file is written to a temporary file in the same folder, flushed, ``fsync``-ed and moved
into place with ``os.replace``; a checkpoint folder is assembled under a temporary name and renamed to
``step_XXXXXXXX`` only when complete, and older checkpoints are deleted only after that rename. A crash
therefore leaves either the previous checkpoints or the new one, never a half-written file. Stale
temporary folders of a crashed write are removed at the next save.

``state.pt`` holds only tensors, lists, dicts and numbers (NumPy's RNG state is stored as a tensor), so it
loads with ``torch.load(path, weights_only=True)``: nothing in a checkpoint is ever unpickled blindly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from course_lib.train.errors import CheckpointError

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
BEST_POINTER = "best.json"
_STEP_RE = re.compile(r"^step_(\d{8,})$")
FORMAT_VERSION = 1


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
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != final:
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


def read_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``best.json`` pointer of a run (``dir``, ``step``, ``metric``, ``value``), or None."""
    path = Path(run_dir) / CHECKPOINTS / BEST_POINTER
    return json.loads(path.read_text()) if path.is_file() else None


def read_checkpoint_meta(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder: ``family``, ``step``, ``config`` (the run config dict)."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def load_training_state(ckpt_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``state.pt`` with ``weights_only=True`` (tensors and plain containers only, no arbitrary pickle)."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no training state ({STATE_FILE}); cannot resume from it")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_weights(module: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Load a ``.safetensors`` file into ``module`` strictly (every key must match)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        missing, unexpected = load_model(module, str(path), strict=False, device=str(device))
    except RuntimeError as err:  # shape mismatches: keep the first lines, they name the tensors
        lines = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
        raise CheckpointError(f"{path} does not fit the model built from its config: {detail}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model built from its config: missing keys {missing}, "
                              f"unexpected keys {unexpected}")


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A SHA-256 over every tensor of ``module.state_dict()`` (names, dtypes, shapes, bytes) in key order.

    Two processes get the same digest exactly when their weights are bitwise identical.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Loading a trained model back
# --------------------------------------------------------------------------------------------------------


def resolve_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> tuple[Path, Path]:
    """Return ``(checkpoint folder, weights file)`` for ``which`` in ``"last"``, ``"best"``, ``"ema"``."""
    run_dir = Path(run_dir)
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
    if which == "best":
        best = read_best(run_dir)
        if best is None:
            raise CheckpointError(f"run_dir {run_dir} has no best checkpoint (no evaluation has run yet)")
        ckpt = run_dir / CHECKPOINTS / best["dir"]
        return ckpt, ckpt / MODEL_FILE
    raise ValueError(f"which must be 'last', 'best' or 'ema', got {which!r}")


def load_from_run(run_dir: str | os.PathLike, which: str = "last", device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained model from a run directory in one call (for notebooks): ``nn.Module`` in eval mode.

    ``which`` picks the newest checkpoint's weights (``"last"``), its EMA weights (``"ema"``), or the
    best-evaluated weights (``"best"``). The family is looked up in the registry by the name stored in the
    checkpoint's ``config.json`` and builds the model from the stored model config; weights come from
    safetensors, so nothing is unpickled.
    """
    from course_lib.train.families import get_family

    ckpt, weights = resolve_checkpoint(run_dir, which)
    meta = read_checkpoint_meta(ckpt)
    family = get_family(meta["family"])
    cfg = family.config_from_dict(meta["config"], validate=False)
    model = family.build_model(cfg.model)
    load_weights(model, weights)
    return model.to(device).eval()
