"""The one training engine every model family of the course is trained with.

:class:`Trainer` runs the loop that is the same for every model: data (a ``DistributedSampler`` shard per
process, resumable mid-epoch), AdamW (torch's fused kernel on request: ``Trainer(..., fused_adamw=True)``)
with linear warmup and cosine/constant decay, gradient accumulation and clipping, autocast (bf16, or fp16
with a ``GradScaler``) on GPU and fp32 on CPU, an optional EMA of the weights, opt-in ``torch.compile``,
DDP under ``torchrun``, atomic checkpoints with exact resume, tqdm/TensorBoard/JSONL logging, periodic
evaluation with audio samples, and a final ``summary.json``.
A :class:`~course_lib.train.families.Family` supplies only the model, its loss and its evaluation.

Several optimizers (GANs): when the family's ``optimizer_groups`` returns more than one group, each optimizer
step runs one *phase* per group, in order (a GAN: discriminator, then generator), on the same micro-batches;
each group has its own AdamW, LR schedule, gradient clipping and fp16 ``GradScaler``, all checkpointed (under
``optimizers``/``schedulers``/``scalers`` keyed by group name), and the EMA averages only the groups marked
``ema``. The logged ``loss`` is the last phase's; every phase's loss, gradient norm and LR are logged as
``train/loss_<group>``, ``train/grad_norm_<group>``, ``train/lr_<group>``. A group with ``start_step`` > 0 sits
out the steps before it (a discriminator that joins after a generator warm-up; its LR schedule counts its own
steps). A multi-group family's ``loss_step`` gets ``phase=<group>``; any family's ``loss_step`` that accepts
a ``step`` argument gets ``step=<the 0-based optimizer step being computed>`` (for warm-ups). Under DDP the model is wrapped once, with
``find_unused_parameters=True``. Single-optimizer families train exactly as before.

Resume policy (``resume=``, or the command line's ``--resume`` / ``--no-resume``):

* ``"auto"`` (default): if ``train.run_dir`` holds a checkpoint, continue from the newest one; else start;
* ``"always"`` (``--resume``): continue, and fail if there is no checkpoint;
* ``"never"`` (``--no-resume``): start fresh, and fail if the run directory already holds checkpoints
  (the engine never overwrites or mixes runs; pick a new ``train.run_dir``).

One run per run directory: rank 0 holds ``train.run_dir/run.lock`` (PID, host, start time) from start to
finish, and a second run on the same folder fails at once with :class:`RunInUseError` naming the PID and
host that hold it; a lock left by a killed run (its PID no longer runs on this host) is taken over with a
warning. A folder that holds the logs of an earlier run but no checkpoint (it was killed or failed before
its first save) is reused only by a run with the same config (else :class:`CheckpointError` names the
differing keys), or with ``resume="never"``, which replaces those logs with a warning.

Damaged checkpoints: resume skips a checkpoint whose files cannot be read (truncated weights, empty
``state.pt``, broken ``config.json``), warns naming the file and the checkpoint it continues from instead,
and moves the damaged folder aside to ``checkpoints/damaged_step_XXXXXXXX`` (kept, never deleted).

A checkpoint is continued only with the same family, the same ``model`` section and the same
``data.sample_rate`` (else :class:`CheckpointError` names the differing keys); other changes (more
``max_steps``, another LR, logging intervals) are allowed and listed in a warning, and the config in
effect wins (the LR schedule follows the new config). Resume is exact: with the same config and world
size, an interrupted-and-resumed run ends with bitwise the same weights as an uninterrupted one (CPU, same
``num_threads``; on GPU set ``train.deterministic=true``). With ``data.num_workers`` > 0, datasets that draw
random numbers in workers are reproducible only if they seed per item, as the course datasets do.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from course_lib.train import checkpoint as ckpt
from course_lib.train.config import OptimConfig, RunConfig, config_diff, config_to_dict
from course_lib.train.data import EVAL_SPLIT, TRAIN_SPLIT, build_dataset, check_dataset, default_collate
from course_lib.train.distributed import (
    DistInfo,
    ResumableDistributedSampler,
    all_gather_object,
    any_true,
    barrier,
    cleanup_distributed,
    init_distributed,
    mean_over_ranks,
)
from course_lib.train.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    RunInUseError,
    TrainingError,
)
from course_lib.train.families import Family, get_family
from course_lib.train.families.base import OptimizerGroup

RESUME_MODES = ("auto", "always", "never")
# Keys that must not change when a run is continued (anything under "model." too).
# what the weights were trained on: the audio rate, the frozen tokenizer (codec or mel VQ-VAE) and text encoder
_RESUME_LOCKED = ("data.sample_rate", "tokenizer.codec", "tokenizer.vqvae", "tokenizer.checkpoint",
                  "conditioning.text_encoder")
# Keys that do not change what a run computes: a run restarted with other values is still the same run.
_RESTART_FREE = ("train.run_dir", "train.progress", "train.tensorboard", "train.sleep_per_step", "train.num_threads",
                 "train.check_replicas", "data.num_workers")


# --------------------------------------------------------------------------------------------------------
# Small pieces (each usable and tested on its own)
# --------------------------------------------------------------------------------------------------------


@dataclass
class LRSchedule:
    """Multiplier of ``optim.lr`` after ``k`` optimizer steps (``LambdaLR``'s ``lr_lambda``).

    Linear warmup ``(k + 1) / warmup_steps`` for ``k < warmup_steps``; then 1 (``constant``) or
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p = (k - warmup) / (max_steps - warmup)``
    clipped to [0, 1] (``cosine``).
    """

    warmup_steps: int
    max_steps: int
    schedule: str = "cosine"
    min_ratio: float = 0.0

    def __call__(self, k: int) -> float:
        if self.warmup_steps > 0 and k < self.warmup_steps:
            return (k + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup_steps)
        p = min(max((k - self.warmup_steps) / span, 0.0), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of 2+ dimensions only (group 0) and none on the rest (group 1).

    ``fused=True`` asks for torch's fused AdamW kernel (one kernel per step for all parameters: faster on a GPU,
    the same update up to float rounding); the parameters must already be on a device that has it (see
    :func:`fused_adamw_supported`). Off by default, so runs are computed exactly as before the option existed.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, **extra)


def fused_adamw_supported(device: torch.device | str) -> bool:
    """True when this torch has a fused AdamW kernel for ``device`` (CUDA; the CPU too in recent versions)."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _use_fused_kernel(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """After ``load_state_dict`` (which restores the kernel choice stored in the checkpoint), use the one this run
    asked for; the step counters move to where that kernel keeps them (fused: the parameter's device). A no-op
    when the two agree, as they always do without ``fused_adamw``."""
    for group in optimizer.param_groups:
        if bool(group.get("fused")) == fused:
            continue
        group["fused"] = True if fused else None
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and "step" in state:
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32,
                                             device=param.device if fused else "cpu")


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float, only: Collection[str] | None = None) -> None:
    """``ema = decay * ema + (1 - decay) * param`` for every floating parameter; buffers are copied.

    ``only`` (parameter names, as in ``model.named_parameters()``) limits the average to those parameters;
    the others are copied as they are (a GAN's discriminator, which is not averaged).
    """
    for (name, e), p in zip(ema_model.named_parameters(), model.parameters()):
        if only is None or name in only:
            e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
        else:
            e.copy_(p.detach())
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def resolve_precision(requested: str, device: torch.device) -> str:
    """``train.precision`` for this device: ``auto`` → bf16 on a bf16-capable GPU, fp16 on other GPUs, fp32
    elsewhere. fp16 needs CUDA (a ``GradScaler`` guards its gradients)."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA GPU (this run is on {device.type}); use fp32 or bf16")
    return requested


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a null context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def check_optimizer_groups(groups: list[OptimizerGroup], model: nn.Module, family: str) -> list[OptimizerGroup]:
    """Refuse optimizer groups that cannot train correctly: none, duplicate names, a module that is not part
    of ``model``, a group without trainable parameters, or a parameter in two groups."""
    if not groups:
        raise TrainingError(f"family {family!r}: optimizer_groups returned no groups")
    names = [g.name for g in groups]
    if all(g.start_step > 0 for g in groups):
        raise TrainingError(f"family {family!r}: at least one optimizer group must start at step 0")
    if len(set(names)) != len(names) or not all(names):
        raise TrainingError(f"family {family!r}: optimizer group names must be unique and non-empty, got {names}")
    model_params = {id(p) for p in model.parameters()}
    seen: dict[int, str] = {}
    for g in groups:
        params = [p for p in g.module.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"family {family!r}: optimizer group {g.name!r} has no trainable parameters")
        for p in params:
            if id(p) not in model_params:
                raise TrainingError(f"family {family!r}: optimizer group {g.name!r} holds parameters that are "
                                    f"not the model's (pass a sub-module of the model built by build_model)")
            if id(p) in seen:
                raise TrainingError(f"family {family!r}: a parameter is in optimizer groups {seen[id(p)]!r} and "
                                    f"{g.name!r}; groups must not share parameters")
            seen[id(p)] = g.name
    return groups


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line. On resume, lines after the resumed step are dropped, so
    the file reads as if the run had never been interrupted."""

    def __init__(self, path: Path, keep_up_to_step: int | None) -> None:
        self.path = path
        kept = []
        if path.is_file() and keep_up_to_step is not None:
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash is dropped
                    if json.loads(line).get("step", 0) <= keep_up_to_step:
                        kept.append(line)
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------------


class Trainer:
    """Train ``family`` with ``config``; :meth:`fit` runs to ``train.max_steps`` and returns the summary dict.

    ``train_dataset``/``eval_dataset`` replace the datasets built from ``config.data`` (for notebooks and
    tests); they are checked the same way (non-empty, right sample rate, items ``{"audio": (1, T), ...}``).
    Run under ``torchrun`` and the same call trains with DDP; only rank 0 writes files. ``fused_adamw=True``
    builds every AdamW with torch's fused kernel (:func:`build_optimizer`; check :func:`fused_adamw_supported`
    for the device first; a resumed run uses the kernel it asks for, whichever wrote the checkpoint); the default,
    off, computes exactly as before the option existed.
    """

    def __init__(self, family: str | Family, config: RunConfig, *, resume: str = "auto",
                 train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
                 fused_adamw: bool = False) -> None:
        self.family = get_family(family) if isinstance(family, str) else family
        if not isinstance(config, self.family.config_class):
            raise ConfigError(f"config is a {type(config).__name__}, but family {self.family.name!r} needs a "
                              f"{self.family.config_class.__name__}")
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
        self.family.validate(config)
        self.config = config
        self.resume = resume
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.fused_adamw = bool(fused_adamw)
        self.run_dir = Path(config.train.run_dir)

    # ---- public ---------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train (or continue) to ``train.max_steps``; return the summary also written to ``summary.json``."""
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_threads = torch.get_num_threads()
        info = init_distributed(self.config.train.device)
        lock = None
        try:
            lock = self._lock_run_dir(info)
            return self._fit(info)
        finally:
            if lock is not None:
                lock.release()
            torch.use_deterministic_algorithms(prev_det)
            torch.set_num_threads(prev_threads)
            cleanup_distributed(info)

    def _lock_run_dir(self, info: DistInfo) -> ckpt.RunLock | None:
        """Rank 0 takes ``run.lock``; every rank fails together if it cannot (no rank waits at a barrier)."""
        lock, failure = None, None
        if info.is_main:
            try:
                lock = ckpt.acquire_run_lock(self.run_dir)
            except TrainingError as err:
                failure = err
        failures = [f for f in all_gather_object(None if failure is None else (type(failure).__name__, str(failure)))
                    if f is not None]
        if failures:
            if lock is not None:
                lock.release()
            if failure is not None:
                raise failure
            kind, message = failures[0]
            raise (RunInUseError if kind == RunInUseError.__name__ else CheckpointError)(message)
        return lock

    # ---- set-up ---------------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.info.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"[{self.family.name}] {message}", file=_log_stream())

    def _find_resume_point(self) -> tuple[Path, dict[str, Any], list[Path]] | None:
        """The newest readable checkpoint to continue from, its training state, and the damaged newer ones."""
        ckpts = ckpt.list_checkpoints(self.run_dir)
        if not ckpts:
            if self.resume == "always":
                raise CheckpointError(f"--resume: run_dir {self.run_dir} holds no checkpoint to resume from")
            self._check_leftovers()
            return None
        if self.resume == "never":
            raise CheckpointError(f"run_dir {self.run_dir} already holds checkpoints (latest: {ckpts[-1].name}); "
                                  f"continue it with --resume, or choose a new train.run_dir")
        damaged: list[tuple[Path, str]] = []
        for latest in reversed(ckpts):
            try:
                meta, state = ckpt.check_checkpoint(latest)
                break
            except CheckpointError as err:
                damaged.append((latest, str(err)))
        else:
            raise CheckpointError(f"no checkpoint in {self.run_dir} can be resumed from: "
                                  + "; ".join(reason for _, reason in damaged)
                                  + "; move them away, or choose a new train.run_dir")
        if meta.get("family") != self.family.name:
            raise CheckpointError(f"run_dir {self.run_dir} holds a checkpoint of family '{meta.get('family')}', "
                                  f"not '{self.family.name}'")
        new = config_to_dict(self.config)
        changed = [k for k in config_diff(meta.get("config", {}), new) if k != "train.run_dir"]
        locked = [k for k in changed if k.startswith("model.") or k in _RESUME_LOCKED]
        if locked:
            old = meta.get("config", {})
            detail = ", ".join(f"{k} ({_lookup(old, k)!r} -> {_lookup(new, k)!r})" for k in locked)
            raise CheckpointError(f"run_dir {self.run_dir} holds a checkpoint of an incompatible config: {detail}; "
                                  f"use a new train.run_dir, or set these back to resume")
        if damaged:
            warnings.warn(f"skipped {len(damaged)} damaged checkpoint(s): "
                          + "; ".join(reason for _, reason in damaged)
                          + f"; resuming from {latest} (step {ckpt.checkpoint_step(latest)}) instead; the damaged "
                          f"folder(s) are kept as {ckpt.DAMAGED_PREFIX}step_XXXXXXXX", stacklevel=3)
        if changed:
            warnings.warn(f"resuming {latest} with changed settings (the new values apply): {', '.join(changed)}",
                          stacklevel=3)
        return latest, state, [path for path, _ in damaged]

    def _check_leftovers(self) -> None:
        """A run folder without checkpoints but with another run's ``config.yaml``: refuse to mix the two."""
        previous = self.run_dir / "config.yaml"
        if not previous.is_file():
            return
        try:
            old = yaml.safe_load(previous.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            old = None
        new = {"family": self.family.name, **config_to_dict(self.config)}
        if isinstance(old, dict):
            changed = [k for k in config_diff(old, new) if k not in _RESTART_FREE]
            detail = ", ".join(f"{k} ({_lookup(old, k)!r} -> {_lookup(new, k)!r})" for k in changed)
        else:
            changed, detail = ["config.yaml"], f"its {previous} cannot be read"
        if not changed:
            return  # the same run again (it stopped before its first checkpoint): start it over
        if self.resume == "never":
            warnings.warn(f"starting afresh in {self.run_dir} (resume='never'): the logs of an earlier run there, "
                          f"which saved no checkpoint, are replaced (its config differed: {detail})", stacklevel=3)
            return
        raise CheckpointError(f"run_dir {self.run_dir} holds the logs of another run that saved no checkpoint, with a "
                              f"different config: {detail}; use a new train.run_dir, or pass --no-resume "
                              f"(resume='never') to replace those logs")

    def _build_data(self) -> None:
        cfg, info = self.config, self.info
        source = cfg.data.source
        self.train_ds = self.train_dataset if self.train_dataset is not None else \
            build_dataset(cfg.data, TRAIN_SPLIT, cfg.train.seed)
        check_dataset(self.train_ds, cfg.data, TRAIN_SPLIT, source)
        self.collate = default_collate(self.train_ds)
        self.sampler = ResumableDistributedSampler(self.train_ds, num_replicas=info.world_size, rank=info.rank,
                                                   shuffle=cfg.data.shuffle, seed=cfg.train.seed, drop_last=False)
        self.batches_per_epoch = self.sampler.num_samples // cfg.data.batch_size
        if self.batches_per_epoch == 0:
            raise TrainingError(f"the train split has {len(self.train_ds)} clips: fewer than one batch of "
                                f"data.batch_size={cfg.data.batch_size} per process (world size "
                                f"{info.world_size}); lower data.batch_size or add data")
        self.eval_ds = None
        wants_eval = cfg.eval.every > 0 or cfg.eval.at_end
        if info.is_main and wants_eval:
            if self.eval_dataset is not None:
                self.eval_ds = self.eval_dataset
            elif cfg.data.eval_size > 0 or not cfg.data.source.startswith("generated:"):
                try:
                    self.eval_ds = build_dataset(cfg.data, EVAL_SPLIT, cfg.train.seed)
                except TrainingError as err:
                    raise TrainingError(f"{err}. Point data.eval_source at evaluation data, or train without "
                                        f"evaluation: eval.every=0 eval.at_end=false") from None
            if self.eval_ds is not None:
                check_dataset(self.eval_ds, cfg.data, EVAL_SPLIT, cfg.data.eval_source or source)

    def _epoch_loader(self, epoch: int, start_batch: int) -> DataLoader:
        cfg = self.config
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_batch * cfg.data.batch_size)
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(epoch)
        # A private generator: creating the iterator then draws its worker seed from here, not from the global
        # RNG, so a resumed run (which creates its iterator mid-epoch) keeps the global RNG in step.
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        return DataLoader(self.train_ds, batch_size=cfg.data.batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=cfg.data.num_workers, collate_fn=self.collate, generator=gen,
                          pin_memory=self.info.device.type == "cuda")

    def _batches(self) -> Iterator[Any]:
        """Endless stream of training batches, crossing epochs; keeps ``epoch``/``batch_in_epoch`` current.

        An error while reading the data (a damaged or non-finite audio file) becomes a :class:`TrainingError`
        that names the file, the epoch and the batch.
        """
        while True:
            for batch in _reading(self._epoch_loader(self.epoch, self.batch_in_epoch),
                                  lambda: f"the train data (epoch {self.epoch}, batch {self.batch_in_epoch + 1})"):
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _build_optimizers(self) -> None:
        """One AdamW, LR schedule and (fp16) scaler per optimizer group of the family, checked for overlap."""
        cfg, tc = self.config, self.config.train
        groups = list(self.family.optimizer_groups(self.model, cfg))
        self.groups = check_optimizer_groups(groups, self.model, self.family.name)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.scalers: dict[str, torch.amp.GradScaler | None] = {}
        self._schedules: dict[str, LRSchedule] = {}
        self.group_params: dict[str, list[nn.Parameter]] = {}
        for g in self.groups:
            o = g.optim
            self.optimizers[g.name] = build_optimizer(g.module, o, fused=self.fused_adamw)
            self.group_params[g.name] = [p for p in g.module.parameters() if p.requires_grad]
            self._schedules[g.name] = LRSchedule(o.warmup_steps, tc.max_steps, o.schedule, o.min_lr_ratio)
            self.schedulers[g.name] = torch.optim.lr_scheduler.LambdaLR(self.optimizers[g.name],
                                                                        [self._schedules[g.name]] * 2)
            self.scalers[g.name] = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        params = inspect.signature(self.family.loss_step).parameters
        self._loss_takes_step = "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        first = self.groups[0].name  # single-optimizer names kept for code that reads them
        self.optimizer, self.scheduler, self.scaler = self.optimizers[first], self.schedulers[first], self.scalers[first]
        self.ema_names: set[str] | None = None
        if not all(g.ema for g in self.groups):
            owner = {id(p): g for g in self.groups for p in g.module.parameters()}
            self.ema_names = {n for n, p in self.model.named_parameters() if id(p) in owner and owner[id(p)].ema}

    # ---- checkpoints ----------------------------------------------------------------------------------

    def _scheduler_state(self, name: str) -> dict[str, Any]:
        sched = self.schedulers[name].state_dict()
        sched["lr_lambdas"] = [None] * len(self.optimizers[name].param_groups)  # rebuilt from the config on resume
        return sched

    def _optim_state(self) -> dict[str, Any]:
        """Optimizer, scheduler and scaler states: under ``optimizer``/``scheduler``/``scaler`` for a single
        group (the format of single-optimizer runs), under ``optimizers``/``schedulers``/``scalers`` keyed by
        group name for several."""
        def scaler_state(name: str) -> dict[str, Any]:
            scaler = self.scalers[name]
            return scaler.state_dict() if scaler is not None else {}

        if len(self.groups) == 1:
            name = self.groups[0].name
            return {"optimizer": self.optimizers[name].state_dict(), "scheduler": self._scheduler_state(name),
                    "scaler": scaler_state(name)}
        return {"optimizers": {g.name: self.optimizers[g.name].state_dict() for g in self.groups},
                "schedulers": {g.name: self._scheduler_state(g.name) for g in self.groups},
                "scalers": {g.name: scaler_state(g.name) for g in self.groups}}

    def _state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "family": self.family.name,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_in_epoch": self.batch_in_epoch * cfg.data.batch_size * self.info.world_size,
            "world_size": self.info.world_size,
            **self._optim_state(),
            "rng": rng_states,
            "best": dict(self.best) if self.best else {},
            "train_seconds": self.train_seconds_total,
        }

    def _save_checkpoint(self) -> None:
        barrier()
        rng_states = all_gather_object(ckpt.capture_rng_state())
        if self.info.is_main:
            self.last_ckpt = ckpt.save_checkpoint(
                self.run_dir, self.step, family=self.family.name, config=config_to_dict(self.config),
                model=self.model, state=self._state(rng_states), ema_model=self.ema_model,
                keep_last=self.config.train.keep_last)
        self.last_ckpt_step = self.step
        barrier()

    def _init_from(self, run_dir: str, which: str) -> None:
        """Fine-tuning: load ``which`` weights of another run of this family into the model (and its EMA copy)."""
        ckpt_dir, weights = ckpt.resolve_checkpoint(run_dir, which)
        family = ckpt.read_checkpoint_meta(ckpt_dir)["family"]
        if family != self.family.name:
            raise ConfigError(f"train.init_from: {run_dir} is a {family!r} run; a {self.family.name!r} run can only "
                              f"start from a run of its own family")
        ckpt.load_weights(self.model, weights, device=self.info.device)
        if self.ema_model is not None:
            self.ema_model.load_state_dict(self.model.state_dict())
        self._log(f"initialised from {weights} ({which} weights, step {ckpt.checkpoint_step(ckpt_dir)})")

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        """Load weights (and EMA) from ``path`` and continue from its training ``state`` (already loaded)."""
        cfg, info = self.config, self.info
        ckpt.load_weights(self.model, path / ckpt.MODEL_FILE, info.device)
        if self.ema_model is not None:
            if (path / ckpt.EMA_FILE).is_file():
                ckpt.load_weights(self.ema_model, path / ckpt.EMA_FILE, info.device)
            else:
                self.ema_model.load_state_dict(self.model.state_dict())
        self._restore_optim_state(state, path)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        per_step = cfg.data.batch_size * info.world_size
        self.batch_in_epoch = int(state.get("samples_in_epoch", 0)) // per_step
        self.best = dict(state.get("best") or {}) or None
        self.train_seconds_total = float(state.get("train_seconds", 0.0))
        rngs = state.get("rng") or []
        if int(state.get("world_size", 1)) == info.world_size and len(rngs) == info.world_size:
            ckpt.restore_rng_state(rngs[info.rank])
        else:
            warnings.warn(f"checkpoint was written by {state.get('world_size')} processes, this run has "
                          f"{info.world_size}: RNG streams and data order are re-seeded, so the run continues "
                          f"correctly but not bitwise as before", stacklevel=2)
            _seed_all(cfg.train.seed + info.rank + 7919 * self.step)
        self.resumed_from = self.step
        self.last_ckpt, self.last_ckpt_step = path, self.step

    def _restore_optim_state(self, state: dict[str, Any], path: Path) -> None:
        names = [g.name for g in self.groups]
        if "optimizers" in state:
            stored = {k: (state["optimizers"][k], state["schedulers"][k], state["scalers"].get(k) or {})
                      for k in state["optimizers"]}
        else:
            stored = {names[0]: (state["optimizer"], state["scheduler"], state.get("scaler") or {})}
        if sorted(stored) != sorted(names):
            raise CheckpointError(f"{path} holds optimizers for groups {sorted(stored)}, but family "
                                  f"{self.family.name!r} trains groups {names}; use a new train.run_dir")
        for name in names:
            opt_state, sched_state, scaler_state = stored[name]
            self.optimizers[name].load_state_dict(opt_state)
            self.schedulers[name].load_state_dict(sched_state)
            if self.scalers[name] is not None and scaler_state:
                self.scalers[name].load_state_dict(scaler_state)
            _use_fused_kernel(self.optimizers[name], self.fused_adamw)
        self._apply_optim_config()

    def _apply_optim_config(self) -> None:
        """After loading optimizer/scheduler state, make the hyper-parameters the current config's."""
        for g in self.groups:
            o, optimizer, scheduler, schedule = g.optim, self.optimizers[g.name], self.schedulers[g.name], \
                self._schedules[g.name]
            scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
            scheduler.base_lrs = [o.lr] * len(optimizer.param_groups)
            for i, group in enumerate(optimizer.param_groups):
                group["initial_lr"] = o.lr
                group["lr"] = o.lr * schedule(scheduler.last_epoch)
                group["betas"], group["eps"] = tuple(o.betas), o.eps
                group["weight_decay"] = o.weight_decay if i == 0 else 0.0
            scheduler._last_lr = [pg["lr"] for pg in optimizer.param_groups]

    # ---- evaluation -----------------------------------------------------------------------------------

    def _evaluate(self) -> dict[str, float] | None:
        """Rank 0 evaluates the bare (EMA if on) model; the other ranks wait. Returns the metrics (rank 0)."""
        cfg = self.config
        metrics = None
        if self.info.is_main and self.eval_ds is not None:
            eval_model = self.ema_model if self.ema_model is not None else self.model
            loader = DataLoader(self.eval_ds, batch_size=cfg.data.batch_size, shuffle=False,
                                num_workers=cfg.data.num_workers, collate_fn=self.collate,
                                generator=torch.Generator().manual_seed(0))

            def batches() -> Iterator[Any]:
                for i, batch in enumerate(_reading(loader, lambda: "the eval data")):
                    if i >= cfg.eval.batches:
                        return
                    yield _to_device(batch, self.info.device)

            was_training = eval_model.training
            t0 = time.perf_counter()
            with ckpt.preserved_rng(), torch.no_grad(), autocast_context(self.precision, self.info.device):
                eval_model.eval()
                try:
                    result = self.family.evaluate(eval_model, batches(), cfg)
                finally:
                    eval_model.train(was_training)
            metrics = {k: float(v) for k, v in result.metrics.items()}
            self._write_samples(result.audio, result.sample_rate)
            record = {"step": self.step, "kind": "eval", "eval_seconds": time.perf_counter() - t0,
                      **{f"eval/{k}": v for k, v in metrics.items()}}
            self.metrics_log.write(record)
            if self.writer is not None:
                for k, v in metrics.items():
                    self.writer.add_scalar(f"eval/{k}", v, self.step)
            self._log(f"step {self.step}: eval " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            self._update_best(metrics, eval_model)
        self.last_eval_step = self.step
        barrier()
        return metrics

    def _write_samples(self, audio: dict[str, torch.Tensor], sample_rate: int) -> None:
        from course_lib.audio import save_audio

        folder = self.run_dir / "samples" / ckpt.step_dir_name(self.step)
        for name, wav in audio.items():
            wav = wav.detach().float().cpu().reshape(-1).clamp(-1.0, 1.0)
            save_audio(folder / f"{name}.wav", wav, sample_rate)
            if self.writer is not None:
                self.writer.add_audio(f"samples/{name}", wav[None], self.step, sample_rate=sample_rate)

    def _update_best(self, metrics: dict[str, float], eval_model: nn.Module) -> None:
        key = self.config.eval.best_metric
        if key not in metrics:
            raise TrainingError(f"eval.best_metric: {key!r} is not among the metrics family "
                                f"{self.family.name!r} reports ({', '.join(sorted(metrics))})")
        value = metrics[key]
        if math.isfinite(value) and (self.best is None or value < self.best["value"]):
            self.best = {"step": self.step, "metric": key, "value": value}
            ckpt.save_best(self.run_dir, self.step, family=self.family.name, config=config_to_dict(self.config),
                           model=eval_model, metric=key, value=value)

    # ---- the loop -------------------------------------------------------------------------------------

    def _fit(self, info: DistInfo) -> dict[str, Any]:
        self.info = info
        cfg, tc = self.config, self.config.train
        wall0 = time.perf_counter()
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.precision = resolve_precision(tc.precision, info.device)
        found = self._find_resume_point()
        barrier()
        if found is not None and info.is_main:
            for path in found[2]:  # every rank has looked: move the damaged ones out of the checkpoint list
                ckpt.set_aside_damaged(path)

        torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = self.family.build_model(cfg.model).to(info.device)
        self.ema_model = None
        if tc.ema_decay > 0:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._build_optimizers()
        self._build_data()

        self.step = self.epoch = self.batch_in_epoch = 0
        self.best: dict[str, Any] | None = None
        self.train_seconds_total = 0.0
        self.resumed_from: int | None = None
        self.last_ckpt: Path | None = None
        self.last_ckpt_step = self.last_eval_step = -1
        if found is not None:
            self._restore(found[0], found[1])
            self._log(f"resumed from {found[0]} (step {self.step}, epoch {self.epoch})")
        else:
            if tc.init_from is not None:
                self._init_from(tc.init_from, tc.init_which)
            _seed_all(tc.seed + info.rank)

        train_model: nn.Module = self.model
        if info.distributed:
            ids = [info.device.index] if info.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                              find_unused_parameters=len(self.groups) > 1)
        if tc.compile:
            train_model = torch.compile(train_model)

        self.writer = None
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.run_dir / "config.yaml",
                                   yaml.safe_dump({"family": self.family.name, **config_to_dict(cfg)}, sort_keys=False))
            self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl", self.resumed_from)
            if tc.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                purge = self.resumed_from + 1 if self.resumed_from is not None else None
                self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        barrier()
        try:
            summary = self._loop(train_model, wall0)
        finally:
            if self.writer is not None:
                self.writer.close()
        return summary

    def _loop(self, train_model: nn.Module, wall0: float) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg, tc, info = self.config, self.config.train, self.info
        start_step = self.step
        metrics: dict[str, float] | None = None
        if self.step >= tc.max_steps:  # resumed a finished run: its final eval and checkpoint exist already
            self._log(f"run already at step {self.step} >= train.max_steps={tc.max_steps}; nothing to train")
            self.last_eval_step = self.step
            previous = self.run_dir / "summary.json"
            if all(all_gather_object(previous.is_file())):  # every rank returns here, or none does
                return json.loads(previous.read_text())
        stream = self._batches()
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.family.name, unit="step", dynamic_ncols=True,
                   disable=not (info.is_main and tc.progress), file=sys.stderr)
        session_seconds, last_loss = 0.0, None
        interval: dict[str, float] = {"loss": 0.0, "steps": 0, "seconds": 0.0}
        train_model.train()
        try:
            while self.step < tc.max_steps:
                t0 = time.perf_counter()
                step_loss, extras, grad_norm, lr = self._train_step(train_model, stream)
                dt = time.perf_counter() - t0
                session_seconds += dt
                self.train_seconds_total += dt
                interval["loss"] += step_loss
                interval["steps"] += 1
                interval["seconds"] += dt
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    last_loss = self._log_train(interval, extras, grad_norm, lr, bar)
                    interval = {"loss": 0.0, "steps": 0, "seconds": 0.0}
                if cfg.eval.every > 0 and self.step % cfg.eval.every == 0:
                    metrics = self._evaluate() or metrics
                if self.step % tc.ckpt_every == 0 and self.step < tc.max_steps:  # the last one is saved below
                    self._save_checkpoint()
                if tc.sleep_per_step > 0:
                    time.sleep(tc.sleep_per_step)
        finally:
            stream.close()  # shuts DataLoader workers down now, not at garbage collection
            bar.close()

        if cfg.eval.at_end and self.last_eval_step != self.step:
            metrics = self._evaluate() or metrics
        if self.last_ckpt_step != self.step:
            self._save_checkpoint()
        hashes = all_gather_object(ckpt.state_dict_sha256(self.model)) if tc.check_replicas else []
        if hashes and len(set(hashes)) > 1:
            warnings.warn(f"DDP replicas ended with different weights: {hashes}", stacklevel=2)
        summary = self._summary(start_step, session_seconds, wall0, last_loss, metrics, hashes)
        if info.is_main:
            ckpt.atomic_write_json(self.run_dir / "summary.json", summary)
            self._log(f"done: step {self.step}, {summary['steps_per_second']:.2f} steps/s; "
                      f"summary in {self.run_dir / 'summary.json'}")
        barrier()
        return summary

    def _train_step(self, train_model: nn.Module, stream: Iterator[Any]) -> tuple[float, dict[str, float], float, float]:
        """One optimizer step per group over ``grad_accum`` micro-batches; returns (loss, extras, grad norm, lr)
        of the last group (the only one for single-optimizer families); every group's appear in extras."""
        cfg = self.config
        accum = cfg.optim.grad_accum
        multi = len(self.groups) > 1
        prepare = self.family.prepare_batch
        batches = [prepare(next(stream), cfg) for _ in range(accum)] if multi else None  # same data every phase
        extras: dict[str, float] = {}
        for g in self.groups:
            if self.step < g.start_step:  # e.g. a discriminator that joins after a generator warm-up
                continue
            micro_batches = iter(batches) if multi else (prepare(next(stream), cfg) for _ in range(accum))
            phase_loss, grad_norm, lr = self._phase(train_model, g, micro_batches, extras, phase=g.name if multi else None)
            if multi:
                extras[f"loss_{g.name}"], extras[f"grad_norm_{g.name}"], extras[f"lr_{g.name}"] = phase_loss, grad_norm, lr
        if self.ema_model is not None:
            ema_update(self.ema_model, self.model, cfg.train.ema_decay, only=self.ema_names)
        self.step += 1
        return phase_loss, extras, grad_norm, lr

    def _phase(self, train_model: nn.Module, group: OptimizerGroup, micro_batches: Iterator[Any],
               extras: dict[str, float], phase: str | None) -> tuple[float, float, float]:
        """Accumulate ``grad_accum`` micro-batches of ``loss_step`` and step ``group``'s optimizer once."""
        cfg, info = self.config, self.info
        accum = cfg.optim.grad_accum
        optimizer, scaler = self.optimizers[group.name], self.scalers[group.name]
        kwargs: dict[str, Any] = {} if phase is None else {"phase": phase}
        if self._loss_takes_step:
            kwargs["step"] = self.step
        step_loss = 0.0
        self.model.zero_grad(set_to_none=True)  # a generator phase also leaves gradients on the discriminator
        for micro, batch in enumerate(micro_batches):
            batch = _to_device(batch, info.device)
            last = micro == accum - 1
            # DDP all-reduces gradients in backward; skip that for all but the last micro-batch
            sync = train_model.no_sync() if (info.distributed and not last and hasattr(train_model, "no_sync")) \
                else contextlib.nullcontext()
            with sync:
                with autocast_context(self.precision, info.device):
                    loss, logs = self.family.loss_step(train_model, batch, cfg, **kwargs)
                value = float(loss.detach())
                if any_true(not math.isfinite(value), info.device):  # all ranks stop together
                    self._non_finite("loss" if phase is None else f"{phase} loss", value, micro)
                scaled = loss / accum  # the mean over micro-batches, as one batch of accum x batch_size
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            step_loss += value / accum
            for k, v in logs.items():
                extras[k] = extras.get(k, 0.0) + float(v) / accum
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip = group.optim.grad_clip if group.optim.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.group_params[group.name], clip))
        if scaler is None and any_true(not math.isfinite(grad_norm), info.device):
            self._non_finite("gradient norm" if phase is None else f"{phase} gradient norm", grad_norm, accum - 1)
        if scaler is not None:
            scaler.step(optimizer)  # skipped (and the scale lowered) if fp16 gradients overflowed
            scaler.update()
        else:
            optimizer.step()
        self.model.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        self.schedulers[group.name].step()
        return step_loss, grad_norm, lr

    def _log_train(self, interval: dict[str, float], extras: dict[str, float], grad_norm: float, lr: float,
                   bar: Any) -> float:
        """Mean loss over the interval and all ranks → metrics.jsonl, TensorBoard, progress bar (rank 0)."""
        loss = mean_over_ranks(interval["loss"] / interval["steps"], self.info.device)
        if self.info.is_main:
            rec = {"step": self.step, "kind": "train", "loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "epoch": self.epoch, "steps_per_second": interval["steps"] / max(interval["seconds"], 1e-9),
                   **{f"train/{k}": v for k, v in extras.items()}}
            self.metrics_log.write(rec)
            if self.writer is not None:
                for k in ("loss", "lr", "grad_norm", "steps_per_second"):
                    self.writer.add_scalar(f"train/{k}", rec[k], self.step)
                for k, v in extras.items():
                    self.writer.add_scalar(f"train/{k}", v, self.step)
            bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.3g}")
        return loss

    def _non_finite(self, what: str, value: float, micro: int) -> None:
        step = self.step + 1
        last = ckpt.latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint ({last}) is intact" if last else \
            "no checkpoint had been written yet (--no-resume starts over in the same train.run_dir)"
        raise NonFiniteLossError(
            f"{what} is {value} at step {step} (micro-batch {micro + 1}/{self.config.optim.grad_accum}, epoch "
            f"{self.epoch}); training stopped and {kept}. Try a lower optim.lr, gradient clipping "
            f"(optim.grad_clip), train.precision=fp32, or check the data", step=step)

    def _summary(self, start_step: int, session_seconds: float, wall0: float, last_loss: float | None,
                 metrics: dict[str, float] | None, hashes: list[str]) -> dict[str, Any]:
        cfg, info = self.config, self.info
        steps = self.step - start_step
        per_step = cfg.data.batch_size * cfg.optim.grad_accum * info.world_size
        return {
            "family": self.family.name,
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "steps_this_session": steps,
            "resumed_from_step": self.resumed_from,
            "epochs": self.epoch + self.batch_in_epoch / self.batches_per_epoch,
            "wall_seconds": time.perf_counter() - wall0,
            "train_seconds": session_seconds,
            "steps_per_second": steps / session_seconds if session_seconds > 0 else 0.0,
            "samples_per_second": steps * per_step / session_seconds if session_seconds > 0 else 0.0,
            "global_batch_size": per_step,
            "world_size": info.world_size,
            "device": str(info.device),
            "precision": self.precision,
            "final_train_loss": last_loss,
            "eval": metrics,
            "best": self.best,
            "last_checkpoint": str(self.last_ckpt) if self.last_ckpt else None,
            "replica_sha256": hashes,
            "replicas_identical": len(set(hashes)) <= 1,
        }


def _reading(loader: Any, where: Callable[[], str]) -> Iterator[Any]:
    """Iterate ``loader``; a data error (ValueError, OSError, RuntimeError) becomes a one-line TrainingError."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ValueError, OSError, RuntimeError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = lines[-1] if len(lines) > 1 and "Traceback" in str(err) else " ".join(lines)  # a worker's
            raise TrainingError(f"reading {where()} failed: {detail}") from err
        yield batch


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _log_stream():
    """Where the engine's log lines go: stderr in a terminal (stdout stays the command's JSON summary), stdout in
    a Jupyter kernel (a notebook shows stderr as a pink error box, and these lines are not errors)."""
    ipython = sys.modules.get("IPython")  # only ever imported here if something else imported it first
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return sys.stdout if type(shell).__name__ == "ZMQInteractiveShell" else sys.stderr


def train(family: str | Family, config: RunConfig, *, resume: str = "auto", train_dataset: Dataset | None = None,
          eval_dataset: Dataset | None = None, fused_adamw: bool = False) -> dict[str, Any]:
    """One-call form: ``Trainer(family, config, resume=...).fit()``; returns the run summary."""
    return Trainer(family, config, resume=resume, train_dataset=train_dataset, eval_dataset=eval_dataset,
                   fused_adamw=fused_adamw).fit()
