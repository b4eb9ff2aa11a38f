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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from course_lib.train.config import RunConfig, config_from_dict, load_config
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

    # ---- config helpers (usually inherited as they are) ----------------------------------------------

    def validate(self, config: RunConfig) -> None:
        """Cross-section checks, after :meth:`RunConfig.validate`. Default: a model with a ``sample_rate``
        must run at ``data.sample_rate`` (the engine refuses to train a model on audio at another rate)."""
        config.validate()
        rate = getattr(config.model, "sample_rate", None)
        if rate is not None and rate != config.data.sample_rate:
            raise ConfigError(f"model.sample_rate ({rate} Hz) must equal data.sample_rate "
                              f"({config.data.sample_rate} Hz): the data is delivered at data.sample_rate")

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
        """Load this family's config from YAML (``"tiny"``/``"paper"`` name the packaged files), apply
        ``key=value`` overrides, validate."""
        if path in ("tiny", "paper"):
            path = self.packaged_config(str(path))
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
