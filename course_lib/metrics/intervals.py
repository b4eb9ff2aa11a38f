"""95% intervals for the numbers on the cards: a rate over n clips or prompts, a mean over items.

A probe rate of 0.79 over 48 clips is 38 hits of 48, and another 48 clips would give another rate: a card
that states a target met or missed must say how far that number could move. Two standard intervals:

* :func:`wilson_interval` for a share of ``n`` trials (Wilson 1927): unlike the normal approximation
  ``p ± 1.96·sqrt(p(1−p)/n)`` it stays inside [0, 1] and does not collapse to a point at 0 or 1 hits;
* :func:`bootstrap_interval` for the mean of per-item values (Efron 1979, the percentile bootstrap): resample
  the items with replacement, take the 2.5th and 97.5th percentiles of the resampled means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_interval", "wilson_interval"]


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``hits`` successes in ``n`` trials (95% for the default ``z``).

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z·sqrt(p(1−p)/n + z²/4n²) / (1 + z²/n)``, ``p = hits / n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"wilson_interval: n must be a positive int, got {n!r}")
    if not 0 <= hits <= n:
        raise ValueError(f"wilson_interval: hits must be in [0, n={n}], got {hits}")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval ``(low, high)`` of the mean of ``values`` (``resamples`` draws, seeded)."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size < 2:
        raise ValueError(f"bootstrap_interval: need a 1-D sequence of at least 2 values, got shape {data.shape}")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
