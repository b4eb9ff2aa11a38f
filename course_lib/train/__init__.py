"""The course's training engine: one :class:`Trainer`, one registered family per model, config files.

Command line (also installed as ``course-train``)::

    python -m course_lib.train --list
    python -m course_lib.train mel_autoencoder --config tiny train.run_dir=runs/mae optim.lr=1e-3
    torchrun --nproc_per_node=8 -m course_lib.train mel_autoencoder --config paper train.run_dir=runs/big

From Python (a notebook)::

    from course_lib.train import get_family, train, load_from_run
    family = get_family("mel_autoencoder")
    cfg = family.load_config("tiny", ["train.run_dir=runs/mae"])
    summary = train(family, cfg)
    model = load_from_run("runs/mae", which="best")

Modules: :mod:`.config` (typed YAML configs and overrides), :mod:`.engine` (the loop), :mod:`.checkpoint`
(atomic checkpoints, ``load_from_run``), :mod:`.distributed` (torchrun/DDP helpers), :mod:`.data` (datasets
from ``data.source``), :mod:`.families` (the registry; ``mel_autoencoder`` is the template to copy).
"""

from course_lib.train.checkpoint import latest_checkpoint, list_checkpoints, load_from_run
from course_lib.train.config import (
    DataConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from course_lib.train.engine import Trainer, train
from course_lib.train.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    RunInUseError,
    TrainingError,
)
from course_lib.train.families import EvalResult, Family, get_family, list_families, register_family

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "EvalConfig", "EvalResult", "Family", "NonFiniteLossError",
    "OptimConfig", "RunConfig", "RunInUseError", "TrainConfig", "Trainer", "TrainingError", "apply_overrides",
    "config_from_dict",
    "config_to_dict", "get_family", "latest_checkpoint", "list_checkpoints", "list_families", "load_config",
    "load_from_run", "register_family", "train",
]
