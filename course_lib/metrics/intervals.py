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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["beats_baseline", "bootstrap_interval", "rate_interval", "wilson_interval"]


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


def rate_interval(rate: float, n: int) -> tuple[float, float]:
    """Wilson's interval for a rate that is a share of ``n`` prompts (``rate · n`` hits, rounded)."""
    return wilson_interval(int(round(rate * n)), n)


def beats_baseline(rows: Mapping[Any, Mapping[str, float]], counts: Mapping[str, int], baseline: Any,
                   ) -> list[tuple[Any, str, float, tuple[float, float], float, tuple[float, float]]]:
    """Settings that beat ``baseline`` beyond chance on some rate: ``rows`` maps a setting (a CFG scale, a number
    of steps) to its rates (``{"class_accuracy": 0.5, ...}``), ``counts`` each rate's number of prompts.
    Returns ``(setting, key, value, interval, baseline value, baseline interval)`` for every setting and rate
    whose Wilson interval lies wholly above the baseline's (empty: nothing beats it by more than its interval)."""
    base = rows[baseline]
    out = []
    for setting, row in rows.items():
        if setting == baseline:
            continue
        for key, n in counts.items():
            if key not in row or key not in base or not n:
                continue
            mine, theirs = rate_interval(row[key], n), rate_interval(base[key], n)
            if mine[0] > theirs[1]:
                out.append((setting, key, row[key], mine, base[key], theirs))
    return out
