"""The errors the training engine raises on purpose, each with a message a person can act on.

The command line (``python -m course_lib.train``) prints these as one ``error: ...`` line instead of a
traceback: :class:`ConfigError` exits with status 2 (fix the config), :class:`TrainingError` with 1.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value, key, file or combination is wrong; the message names the key (``optim.lr: ...``)."""


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, incompatible checkpoint, non-finite loss, ...)."""


class CheckpointError(TrainingError):
    """A run directory or checkpoint is missing, incomplete, damaged, or belongs to another family or config."""


class RunInUseError(TrainingError):
    """Another live process holds the run directory's lock (``run.lock``): two runs never write one folder."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; ``step`` is the optimizer step (1-based) that produced it."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
