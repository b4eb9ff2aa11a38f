"""Fréchet audio distance (FAD) and its sample-size-free extrapolation FAD∞.

FAD (Kilgour et al. 2019) fits one Gaussian to the embeddings of reference audio and one to the embeddings
of generated audio, and reports the Fréchet (2-Wasserstein) distance between the two Gaussians::

    FAD = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

The papers used 128-d VGGish embeddings (google-research ``frechet_audio_distance``); here any
``(N, D)`` array of embeddings works (the course's own classifier, or a Hugging Face model through
:mod:`course_lib.metrics.embeddings`), so numbers are only comparable when the embedding model is the same.

Two practical points this module takes care of:

* **A stable trace of the matrix square root.** ``(Σ_r Σ_g)^{1/2}`` is the square root of a product that is
  not symmetric; ``scipy.linalg.sqrtm`` on it can return complex values or NaN when a covariance is
  near-singular (always the case when there are fewer clips than dimensions). Only its *trace* is needed,
  and ``Tr((Σ_r Σ_g)^{1/2}) = Tr((A Σ_g A)^{1/2})`` with ``A = Σ_r^{1/2}``: a symmetric positive
  semi-definite matrix, whose eigenvalues are computed with ``eigh`` and clamped at 0 before the square root.
  No complex number, no NaN, no ``eps·I`` fudge (which pytorch-fid adds when ``sqrtm`` fails).
* **The sample-size bias.** The estimate is biased upwards, roughly by ``b/n`` for ``n`` generated clips, so
  two sets from the *same* distribution read ``FAD > 0`` and a model scored on more clips looks better.
  :func:`sample_size_bias` measures this; :func:`fad_infinity` (Gui et al. 2023, microsoft/fadtk) computes
  FAD at several ``n``, fits a line in ``1/n`` and reports its intercept, the value at ``n → ∞``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = ["gaussian_stats", "sqrtm_psd", "trace_sqrt_product", "frechet_distance", "fad", "fit_inverse_n",
           "fad_infinity", "sample_size_bias"]

_REL_TOL = 1e-9  # relative round-off allowed below 0 before a distance is reported as suspicious


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """A real, finite 2-D float64 NumPy array from a NumPy array, a torch tensor or nested lists."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N clips, D dimensions), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def gaussian_stats(embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``embeddings`` ``(N, D)`` (N clips), in float64.

    The covariance is the unbiased sample covariance (divided by ``N − 1``), as in ``np.cov(rowvar=False)``,
    which the reference implementations (google-research FAD, pytorch-fid, fadtk) use. ``N`` may be smaller
    than ``D``: the covariance is then rank-deficient, which :func:`frechet_distance` handles. Raises
    ``ValueError`` for anything but a finite 2-D array with at least 2 rows.
    """
    x = _as_matrix(embeddings, "embeddings")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings (rows) to estimate a covariance, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError("embeddings have 0 dimensions (shape (N, 0))")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _check_covariance(sigma: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a covariance: square, matching ``dim``, symmetric to round-off, positive semi-definite."""
    s = _as_matrix(sigma, name)
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"{name} must be a square (D, D) covariance, got shape {s.shape}")
    if dim is not None and s.shape[0] != dim:
        raise ValueError(f"{name} is {s.shape[0]}x{s.shape[0]} but the means have D = {dim}")
    scale = max(float(np.abs(s).max()), 1e-300)
    if np.abs(s - s.T).max() > 1e-6 * scale:
        raise ValueError(f"{name} is not symmetric (max |Σ − Σᵀ| = {np.abs(s - s.T).max():.3g}); pass a covariance")
    return 0.5 * (s + s.T)


def _psd_eigh(sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clamped at 0) and eigenvectors of a symmetric PSD matrix; a clear error if it is not PSD."""
    w, v = np.linalg.eigh(sigma)
    top = max(float(w.max()), 0.0)
    if w.min() < -1e-6 * max(top, 1e-300) - 1e-12:
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}, largest "
                         f"{top:.3g}); a covariance from gaussian_stats always is")
    return np.clip(w, 0.0, None), v


def sqrtm_psd(sigma: Any) -> np.ndarray:
    """Symmetric square root ``S`` (``S @ S = Σ``, ``S = Sᵀ``) of a positive semi-definite ``(D, D)`` matrix.

    Computed from the eigendecomposition ``Σ = V diag(w) Vᵀ`` as ``V diag(√max(w, 0)) Vᵀ``: eigenvalues that
    round-off pushed slightly below zero are clamped, so the result is always real.
    """
    s = _check_covariance(sigma, "sigma")
    w, v = _psd_eigh(s, "sigma")
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: Any, sigma2: Any) -> float:
    """``Tr((Σ1 Σ2)^{1/2})`` for two PSD ``(D, D)`` covariances, computed stably (always real, ≥ 0).

    ``Σ1 Σ2`` is similar to the symmetric PSD matrix ``M = Σ1^{1/2} Σ2 Σ1^{1/2}`` (``M = A⁻¹(Σ1Σ2)A`` when
    ``A = Σ1^{1/2}`` is invertible, and by continuity otherwise), so the two share their eigenvalues ``λ ≥ 0``
    and the trace of the principal square root is ``Σ √λ``. The ``λ`` come from ``eigh`` of ``M`` and are
    clamped at 0, which is what keeps rank-deficient covariances (fewer clips than dimensions) finite.
    """
    s1 = _check_covariance(sigma1, "sigma1")
    s2 = _check_covariance(sigma2, "sigma2", s1.shape[0])
    w1, v1 = _psd_eigh(s1, "sigma1")
    _psd_eigh(s2, "sigma2")  # only the check
    root1 = (v1 * np.sqrt(w1)) @ v1.T
    m = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between ``N(μ1, Σ1)`` and ``N(μ2, Σ2)``: ``‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2})``.

    Means ``(D,)``, covariances ``(D, D)`` (NumPy or torch; computed in float64). Equation 1 of Kilgour et
    al. (2019), the squared 2-Wasserstein distance between the Gaussians; for diagonal covariances it is
    ``Σ (μ1−μ2)² + Σ (√a − √b)²``. The trace of the square root comes from :func:`trace_sqrt_product`, so the
    result is real and finite even for singular covariances. It is ≥ 0 in exact arithmetic; a negative
    result from round-off is **clamped to 0** (and a warning is issued if it was more negative than round-off
    can explain, which means the inputs were not valid covariances). Symmetric in its two Gaussians.
    """
    m1 = np.asarray(mu1.detach().cpu().numpy() if hasattr(mu1, "detach") else mu1, dtype=np.float64)
    m2 = np.asarray(mu2.detach().cpu().numpy() if hasattr(mu2, "detach") else mu2, dtype=np.float64)
    if m1.ndim != 1 or m2.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be 1-D means (D,), got shapes {m1.shape} and {m2.shape}")
    if m1.shape != m2.shape:
        raise ValueError(f"mu1 and mu2 differ in dimension: {m1.shape} vs {m2.shape}")
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2))):
        raise ValueError("mu1 or mu2 contains NaN or infinite values")
    s1 = _check_covariance(sigma1, "sigma1", m1.shape[0])
    s2 = _check_covariance(sigma2, "sigma2", m1.shape[0])
    diff = m1 - m2
    traces = float(np.trace(s1) + np.trace(s2))
    value = float(diff @ diff) + traces - 2.0 * trace_sqrt_product(s1, s2)
    if value < 0.0:
        scale = float(diff @ diff) + traces
        if value < -_REL_TOL * max(scale, 1.0) * max(1, m1.shape[0]):
            warnings.warn(f"Fréchet distance came out at {value:.3g} < 0 beyond round-off; clamped to 0 "
                          f"(are sigma1 and sigma2 covariances of the same embedding space?)", stacklevel=2)
        value = 0.0
    return value


def fad(emb_a: Any, emb_b: Any) -> float:
    """Fréchet audio distance between two embedding sets ``(N_a, D)`` and ``(N_b, D)``: the Fréchet distance
    of their Gaussian fits (:func:`gaussian_stats`, :func:`frechet_distance`). Lower is closer; 0 only for
    identical statistics. Biased upwards for small sets (see :func:`sample_size_bias`, :func:`fad_infinity`)."""
    a = _as_matrix(emb_a, "emb_a")
    b = _as_matrix(emb_b, "emb_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two embedding sets differ in dimension: {a.shape[1]} vs {b.shape[1]} "
                         f"(were they made by the same embedding model?)")
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def fit_inverse_n(sizes: Any, values: Any) -> dict[str, float]:
    """Least-squares line ``value ≈ intercept + slope / n`` through ``(sizes, values)``.

    Returns ``{"intercept", "slope", "r2"}``; the intercept is the extrapolation to ``n → ∞`` (FAD∞ when the
    values are FADs). Needs at least two distinct sizes > 0.
    """
    n = np.asarray(sizes, dtype=np.float64).reshape(-1)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if n.shape != y.shape:
        raise ValueError(f"sizes and values must have the same length, got {n.size} and {y.size}")
    if np.any(n <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("sizes must be > 0 and values finite")
    if np.unique(n).size < 2:
        raise ValueError(f"need at least two distinct sizes to fit a line in 1/n, got {np.unique(n).tolist()}")
    x = 1.0 / n
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / total if total > 0 else 1.0
    return {"intercept": float(intercept), "slope": float(slope), "r2": r2}


def _check_sizes(sizes: Any, upper: int, replace: bool) -> list[int]:
    out = [int(s) for s in np.asarray(sizes).reshape(-1)]
    if not out or any(s < 2 for s in out):
        raise ValueError(f"every sample size must be an int >= 2, got {out}")
    if not replace and max(out) > upper:
        raise ValueError(f"sample size {max(out)} exceeds the {upper} embeddings available (without replacement)")
    return out


def fad_infinity(emb_real: Any, emb_gen: Any, sizes: Any = None, n_sizes: int = 25, min_size: int | None = None,
                 seed: int = 0, replace: bool = True) -> dict[str, Any]:
    """FAD∞ (Gui et al. 2023, "Adapting Frechet Audio Distance for generative music evaluation").

    The reference statistics come from all of ``emb_real`` ``(N_r, D)``. For each sample size ``n`` in
    ``sizes`` (default: ``n_sizes`` sizes evenly spaced from ``min_size`` to ``N_g``, with ``min_size``
    defaulting to ``min(500, max(2, N_g // 4))``, as fadtk does with 25 sizes from 500), ``n`` rows of
    ``emb_gen`` ``(N_g, D)`` are drawn (with replacement by default, as in fadtk) and FAD is computed; a line
    ``FAD ≈ FAD∞ + slope/n`` is fitted and its intercept returned. Returns ``{"fad_inf", "slope", "r2",
    "sizes", "values"}`` (sizes and values as lists, for plotting). Seeded: the same ``seed`` gives the same
    draws. The intercept can come out slightly negative for two sets of the same distribution (it is an
    extrapolation, not a distance): it is *not* clamped.
    """
    real = _as_matrix(emb_real, "emb_real")
    gen = _as_matrix(emb_gen, "emb_gen")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"emb_real and emb_gen differ in dimension: {real.shape[1]} vs {gen.shape[1]}")
    n_gen = gen.shape[0]
    if sizes is None:
        if isinstance(n_sizes, bool) or not isinstance(n_sizes, int) or n_sizes < 2:
            raise ValueError(f"n_sizes must be an int >= 2, got {n_sizes!r}")
        lo = min(500, max(2, n_gen // 4)) if min_size is None else int(min_size)
        if not 2 <= lo < n_gen:
            raise ValueError(f"min_size must be in [2, {n_gen}) for {n_gen} generated embeddings, got {lo}")
        sizes = np.unique(np.linspace(lo, n_gen, min(n_sizes, n_gen - lo + 1)).astype(int))
    ns = _check_sizes(sizes, n_gen, replace)
    mu_r, sigma_r = gaussian_stats(real)
    rng = np.random.default_rng(seed)
    values = []
    for n in ns:
        rows = rng.choice(n_gen, size=n, replace=replace)
        values.append(frechet_distance(mu_r, sigma_r, *gaussian_stats(gen[rows])))
    fit = fit_inverse_n(ns, values)
    return {"fad_inf": fit["intercept"], "slope": fit["slope"], "r2": fit["r2"], "sizes": ns, "values": values}


def sample_size_bias(emb_a: Any, emb_b: Any, sizes: Any, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """FAD between ``n`` rows of ``emb_a`` and ``n`` rows of ``emb_b`` for each ``n`` in ``sizes``, ``repeats``
    times with fresh draws (without replacement): how the *measured* distance depends on the sample size.

    Pass two independent sets from the same distribution (e.g. the embeddings of two disjoint halves of the
    test clips) to see the bias: the true distance is 0, yet FAD is positive and falls roughly like ``1/n``.
    Returns ``{"sizes", "mean", "std", "values" (repeats per size), "fit"}`` where ``fit`` is
    :func:`fit_inverse_n` of the means (its intercept estimates the unbiased distance).
    """
    a = _as_matrix(emb_a, "emb_a")
    b = _as_matrix(emb_b, "emb_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"emb_a and emb_b differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    ns = _check_sizes(sizes, min(a.shape[0], b.shape[0]), replace=False)
    rng = np.random.default_rng(seed)
    values = [[fad(a[rng.choice(a.shape[0], n, replace=False)], b[rng.choice(b.shape[0], n, replace=False)])
               for _ in range(repeats)] for n in ns]
    means = [float(np.mean(v)) for v in values]
    stds = [float(np.std(v)) for v in values]
    fit = fit_inverse_n(ns, means) if len(set(ns)) >= 2 else {"intercept": math.nan, "slope": math.nan, "r2": math.nan}
    return {"sizes": ns, "mean": means, "std": stds, "values": values, "fit": fit}
