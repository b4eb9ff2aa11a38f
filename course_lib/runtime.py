"""Run size, seeding and device selection: decided in exactly one place.

The course runs at two sizes. ``default`` is what a student runs (a few minutes on a 2-core CPU, results
worth hearing); ``quick`` is what the tests run (seconds, just enough to prove every cell works). The size
is read from the environment variable ``COURSE_RUN_SIZE`` and nowhere else::

    COURSE_RUN_SIZE=quick jupyter lab     # or: make test, which sets it for you

Lessons ask for sizes with :func:`pick`, e.g. ``steps = pick(default=2000, quick=20)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

ENV_VAR = "COURSE_RUN_SIZE"
RUN_SIZES = ("default", "quick")

T = TypeVar("T")


def run_size() -> str:
    """Return the current run size, ``"default"`` or ``"quick"``, from ``$COURSE_RUN_SIZE``.

    An unset or empty variable means ``"default"``. Anything else is an error that names the valid values,
    so a typo never silently runs the long version in CI.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower() or "default"
    if value not in RUN_SIZES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a run size; expected one of {RUN_SIZES}")
    return value


def is_quick() -> bool:
    """True when running at test size (``COURSE_RUN_SIZE=quick``)."""
    return run_size() == "quick"


def pick(default: T, quick: T) -> T:
    """Choose a value by run size: ``pick(default=2000, quick=20)``."""
    return quick if is_quick() else default


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh seeded ``torch.Generator``.

    Every lesson calls this once at the top so that running it twice gives the same numbers.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


THREADS_ENV_VAR = "COURSE_NUM_THREADS"


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's CPU threads by the course's one policy and return the number set.

    The policy: ``num_threads`` if given, else ``$COURSE_NUM_THREADS`` if set, else **one thread**. The course's
    models are small, so a second thread gains little, and when another process shares a 2-core laptop
    (a browser, a second kernel) torch's default of one thread per core makes generation up to 20× slower
    (measured: 28 s with 2 threads against 1.2 s with one). Every entry point calls this (the lessons and
    exercise notebooks at the top, the ``python -m course_lib.*`` commands, the README's snippets); library
    classes and functions never change the thread count behind your back. Export ``COURSE_NUM_THREADS=8`` on
    a big machine to use more. Results are reproducible for a fixed thread count; between thread counts
    they agree to float rounding, not bit for bit.
    """
    if num_threads is None:
        raw = os.environ.get(THREADS_ENV_VAR, "").strip()
        try:
            num_threads = int(raw) if raw else 1
        except ValueError:
            raise ValueError(f"{THREADS_ENV_VAR}={raw!r} is not a whole number of threads; expected e.g. 1 or 4") \
                from None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
    torch.set_num_threads(num_threads)
    return num_threads


def pick_device(prefer: str | None = None) -> torch.device:
    """Pick the compute device: ``prefer`` if given, else CUDA, then Apple MPS, then CPU.

    ``prefer`` may be ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``; asking for one that is not available
    raises an error that says what is available instead of failing later inside a kernel.
    The environment variable ``COURSE_DEVICE`` overrides the automatic choice (not an explicit ``prefer``).
    """
    prefer = prefer or os.environ.get("COURSE_DEVICE") or None
    available = ["cpu"]
    if torch.cuda.is_available():
        available.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        available.append("mps")
    if prefer is None:
        return torch.device(available[1] if len(available) > 1 else "cpu")
    kind = prefer.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {prefer!r}; expected 'cpu', 'cuda[:N]' or 'mps'")
    if kind not in available:
        raise RuntimeError(f"device {prefer!r} is not available here; available: {available}")
    return torch.device(prefer)


METRICS_PREFIX = "course-metrics: "


def report_metrics(**metrics: float | int | str | bool) -> dict:
    """Print a lesson's measured numbers on one machine-readable line and return them.

    Lessons call this in their last cell, next to the assertions, e.g.
    ``report_metrics(probe_accuracy=0.97, seconds=41.2)``; ``make course`` collects these lines from every
    executed notebook into its summary table.
    """
    import json

    clean = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"metric {key!r} must be a number, string or bool, got {type(value).__name__}")
        clean[key] = round(value, 4) if isinstance(value, float) else value
    print(METRICS_PREFIX + json.dumps(clean, sort_keys=True))
    return MetricsReport(clean)


class MetricsReport(dict):
    """The dict :func:`report_metrics` returns. Jupyter does not display it again when it is a cell's last
    value: its numbers were just printed on the line above."""

    def _ipython_display_(self) -> None:
        pass


def real_time_factor(synthesize: Callable[[], object], audio_seconds: float, repeats: int = 3,
                     num_threads: int | None = None) -> float:
    """How many times faster than real time ``synthesize()`` makes ``audio_seconds`` of audio on this machine.

    Runs ``synthesize`` once to warm up, then ``repeats`` times, and returns ``audio_seconds / best wall
    time`` (the best run: the least disturbed by other processes). Above 1 is faster than real time. The
    MelGAN paper reports the same quantity as samples per second (51.9 kHz on a CPU = 2.35 × real time at
    22.05 kHz). ``num_threads`` sets torch's intra-op threads for the measurement and restores them after.
    """
    import time

    if audio_seconds <= 0 or repeats < 1:
        raise ValueError(f"need audio_seconds > 0 and repeats >= 1, got {audio_seconds} and {repeats}")
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.inference_mode():
            synthesize()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                synthesize()
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return audio_seconds / best
