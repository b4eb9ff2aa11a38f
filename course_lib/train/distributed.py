"""One process or many: the small layer that makes the same training script run under ``torchrun``.

``torchrun --nproc_per_node=N -m course_lib.train ...`` starts N copies of the script and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in each; :func:`init_distributed` reads them, joins the process group
(NCCL on GPUs, Gloo on CPU) and picks this process's device. Without those variables everything here
degrades to a single process: ``barrier`` does nothing, ``all_gather_object`` returns ``[obj]``.

Rank 0 alone logs, evaluates and writes checkpoints; the others wait at :func:`barrier`. Each rank reads
its own shard of every epoch through :class:`ResumableDistributedSampler` (a ``DistributedSampler`` that
can also start mid-epoch, for exact resume).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from course_lib.train.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, its ``local_rank`` on the machine,
    the ``device`` it computes on, and whether this module initialised the process group (``owns_group``)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """Turn ``train.device`` (``auto``/``cpu``/``cuda``/``cuda:N``/``mps``) into a device for this process.

    ``auto`` and ``cuda`` mean this process's GPU ``cuda:LOCAL_RANK`` when CUDA is present; asking for a
    device that is missing raises ``ConfigError`` naming ``train.device``.
    """
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    kind = requested.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' was asked for but CUDA is not available here; use "
                              "train.device=cpu or auto")
        return torch.device(requested if ":" in requested else f"cuda:{local_rank}")
    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("train.device: 'mps' was asked for but is not available here")
        return torch.device("mps")
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if this process was started by one; return where we are.

    Reads ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; with ``WORLD_SIZE`` > 1 it initialises
    ``torch.distributed`` (backend ``nccl`` for CUDA devices, ``gloo`` otherwise) unless a group already
    exists, and pins the CUDA device to ``LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
    elif dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device, owns_group=owns)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_true(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so all ranks can stop together instead of hanging)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of a Python float over all ranks (the value itself in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can start at an offset, so a resumed run reads the same clips.

    The order of epoch ``e`` is a permutation seeded by ``seed + e`` (exactly ``DistributedSampler``'s),
    split across ranks; :meth:`set_start` skips the first ``start`` indices of this rank's share, which a
    resumed run uses to continue at the batch where the checkpoint was taken. In a single process pass
    ``num_replicas=1, rank=0``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the current epoch."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
