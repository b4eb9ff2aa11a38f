"""What a model family gives the engine: a config class, a model builder, a loss step and an eval hook.

The engine (``course_lib.train.engine``) owns everything that is the same for every model: data loading,
AdamW and its schedule, mixed precision, accumulation, clipping, EMA, DDP, checkpoints, logging. A family
owns only what is specific to its model. To add one, copy ``mel_autoencoder.py`` (the template), then:

1. write the model's config dataclass and a :class:`~course_lib.train.config.RunConfig` subclass whose
   ``model`` field has that type;
2. subclass :class:`Family`: set ``name`` and ``config_class``, implement :meth:`Family.build_model`,
   :meth:`Family.loss_step` and (for audio samples and extra metrics) :meth:`Family.evaluate`;
3. decorate it with ``@register_family`` and add its module to ``_BUILTIN`` in ``families/__init__.py``;
4. add ``configs/<name>_tiny.yaml`` (seconds on a CPU, used by the tests) and ``configs/<name>_paper.yaml``.

Several optimizers (GANs): a family whose :meth:`Family.optimizer_groups` returns more than one
:class:`OptimizerGroup` (e.g. ``discriminator`` then ``generator``, each a sub-module with its own
:class:`~course_lib.train.config.OptimConfig`) is trained in *phases*: every optimizer step, for each group in
order, the engine zeroes all gradients, calls ``loss_step(model, batch, config, phase=group.name)`` on the same
micro-batches, backpropagates, and unscales, clips and steps that group's optimizer (its own scheduler and
fp16 scaler). The EMA covers only the groups with ``ema=True``. ``families/melgan.py`` is the example.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from course_lib.train.config import OptimConfig, RunConfig, config_from_dict, load_config
from course_lib.train.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

Batch = Mapping[str, Any]


@dataclass
class EvalResult:
    """What an evaluation returns: scalar ``metrics`` (lower is better for the one that picks ``best``) and
    named ``audio`` clips ``(time,)`` in [-1, 1] at ``sample_rate`` Hz, which the engine writes as WAV files
    and TensorBoard audio."""

    metrics: dict[str, float]
    audio: dict[str, torch.Tensor] = field(default_factory=dict)
    sample_rate: int = 16_000


@dataclass
class OptimizerGroup:
    """One optimizer of a family: the parameters of ``module`` (a sub-module of the model, or the model),
    trained with ``optim`` (AdamW, its schedule, clipping). ``name`` is the phase passed to
    :meth:`Family.loss_step` and the key of this group in checkpoints and logs. ``ema=False`` leaves the group
    out of the weight EMA (a GAN's discriminator: only the generator is averaged). ``start_step`` > 0 skips the
    group's phase before that optimizer step (a discriminator that joins after a generator warm-up)."""

    name: str
    module: nn.Module
    optim: OptimConfig
    ema: bool = True
    start_step: int = 0


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class Family:
    """Base class of a model family. Subclasses set ``name``/``config_class`` and implement three hooks.

    ``loss_step`` receives the model as the engine trains it (possibly DDP- or compile-wrapped): call
    ``model(...)`` (its ``forward``) for everything that needs gradients, so DDP sees the call; use
    :func:`unwrap_model` only for gradient-free helpers such as feature extraction.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[RunConfig]] = RunConfig
    description: ClassVar[str] = ""

    # ---- the three hooks a family implements ---------------------------------------------------------

    def build_model(self, model_config: Any) -> nn.Module:
        """Build the model from ``config.model`` (random init; the engine seeds torch first)."""
        raise NotImplementedError

    def loss_step(self, model: nn.Module, batch: Batch, config: RunConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch: return ``(scalar loss to minimise, extra scalars to log)``.

        Families with several :meth:`optimizer_groups` take a keyword ``phase`` (the group's name) and return
        the loss of that phase; only that group's parameters are stepped with the resulting gradients. If it
        also has a ``step`` parameter, it gets the 0-based optimizer step being computed. Under
        DDP, do everything a phase needs in ONE ``model(...)`` call (the model is wrapped whole, with
        ``find_unused_parameters=True``).

        ``batch`` is the collated batch on the training device: ``batch["audio"]`` is ``(B, 1, T)`` float32
        at ``config.data.sample_rate``, ``batch["caption"]`` a list of ``B`` strings, ``batch["id"]`` ids.
        The engine runs this under autocast, scales, accumulates and steps; the family only computes.
        """
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: RunConfig) -> EvalResult:
        """Score the (bare, eval-mode, EMA-if-on) model on eval ``batches`` under ``torch.no_grad``.

        The default averages :meth:`loss_step` into ``{"loss": ...}`` and writes no audio; families
        override it to add metrics and audio samples. Called on rank 0 only, with the training RNG
        state saved and restored around it.
        """
        total, n = 0.0, 0
        for batch in batches:
            loss, _ = self.loss_step(model, batch, config)
            total, n = total + float(loss), n + 1
        return EvalResult(metrics={"loss": total / max(n, 1)}, sample_rate=config.data.sample_rate)

    def prepare_batch(self, batch: Batch, config: RunConfig) -> Batch:
        """Transform a training micro-batch once, on the CPU, before any phase sees it (default: unchanged).

        For per-step augmentation such as MelGAN's random 8192-sample crops: every phase of a multi-optimizer
        step then sees the same crops. Draw random numbers from torch's global RNG only (it is saved in
        checkpoints, so resume stays exact). Not applied to evaluation batches.
        """
        return batch

    def optimizer_groups(self, model: nn.Module, config: RunConfig) -> list[OptimizerGroup]:
        """The optimizers to train ``model`` (the bare module) with, stepped in list order every step.

        Default: one group, ``"model"``, over all parameters with ``config.optim`` (and ``loss_step`` is called
        without ``phase``). A GAN returns e.g. ``[OptimizerGroup("discriminator", model.discriminator,
        config.disc_optim, ema=False), OptimizerGroup("generator", model.generator, config.optim)]``. Groups
        must not share parameters. ``config.optim.grad_accum`` applies to all groups.
        """
        return [OptimizerGroup("model", model, config.optim)]

    # ---- config helpers (usually inherited as they are) ----------------------------------------------

    def validate(self, config: RunConfig) -> None:
        """Cross-section checks, after :meth:`RunConfig.validate`. Default: a model with a ``sample_rate``
        must run at ``data.sample_rate`` (the engine refuses to train a model on audio at another rate)."""
        config.validate()
        rate = getattr(config.model, "sample_rate", None)
        if rate is not None and rate != config.data.sample_rate:
            raise ConfigError(f"model.sample_rate ({rate} Hz) must equal data.sample_rate "
                              f"({config.data.sample_rate} Hz): the data is delivered at data.sample_rate")
        names = self.metric_names(config)
        if names is not None and config.eval.best_metric not in names:
            raise ConfigError(f"eval.best_metric: {config.eval.best_metric!r} is not a metric family {self.name!r} "
                              f"reports; expected one of {', '.join(sorted(names))}")

    def metric_names(self, config: RunConfig) -> Collection[str] | None:
        """The metric keys :meth:`evaluate` reports for ``config``, or None if they are known only once it runs.

        :meth:`validate` checks ``eval.best_metric`` against them, so a typo fails before anything is built
        (with None, the engine checks it at the first evaluation). Default: ``("loss",)`` for the default
        :meth:`evaluate`; None for a family that overrides :meth:`evaluate` but not this.
        """
        return ("loss",) if type(self).evaluate is Family.evaluate else None

    def config_from_dict(self, data: Mapping[str, Any], validate: bool = True) -> RunConfig:
        """Build this family's config from a nested dict (e.g. a checkpoint's stored config)."""
        data = dict(data)
        named = data.pop("family", None)
        if named not in (None, self.name):
            raise ConfigError(f"config is for family {named!r}, not {self.name!r}")
        cfg = config_from_dict(self.config_class, data)
        if validate:
            self.validate(cfg)
        return cfg

    def load_config(self, path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                    validate: bool = True) -> RunConfig:
        """Load this family's config from YAML (``"tiny"``/``"paper"``, or another ``<size>`` for which a
        ``configs/<family>_<size>.yaml`` is packaged, name the packaged files), apply
        ``key=value`` overrides, validate."""
        if isinstance(path, str) and (path in ("tiny", "paper") or _is_packaged_name(self.name, path)):
            path = self.packaged_config(path)
        cfg = load_config(self.config_class, path, list(overrides), family=self.name, validate=False)
        if validate:
            self.validate(cfg)
        return cfg

    def packaged_config(self, size: str = "tiny") -> Path:
        """Path of ``configs/<family>_<size>.yaml`` shipped with the library."""
        path = CONFIG_DIR / f"{self.name}_{size}.yaml"
        if not path.is_file():
            raise ConfigError(f"no packaged config {path.name} for family {self.name!r}")
        return path


def _is_packaged_name(family: str, name: str) -> bool:
    """True when ``name`` is a bare word (no path, no suffix) naming a packaged ``<family>_<name>.yaml``."""
    return name.isidentifier() and not Path(name).exists() and (CONFIG_DIR / f"{family}_{name}.yaml").is_file()
