"""Checks for exercise notebook 08, evaluation: the Fréchet distance of two Gaussians, a stable square root of a
positive semi-definite matrix, the paired KL of a classifier's label distributions, the FAD∞ extrapolation in
1/n, the symmetric InfoNCE (CLIP) loss.

Each checker compares the student's function with the course's library (:mod:`course_lib.metrics.fad`,
:mod:`course_lib.metrics.kl`, :mod:`course_lib.metrics.agreement`) on hand-made and random inputs, and turns
the first mismatch into a hint naming the likeliest mistake: the factor 2 forgotten, the mean term not
squared, the trace of the product instead of its square root, the product of the roots; eigenvalues not
clamped (NaN), ``eig`` instead of ``eigh`` (complex), ``V Λ V`` instead of ``V Λ Vᵀ``, an element-wise or a
Cholesky root; the KL's direction reversed, logits used as probabilities or log-probabilities, a sum over pairs,
a KL of the averaged distributions, ``log(softmax)`` underflowing; a line fitted against ``n`` instead of
``1/n``, the slope returned; one direction of InfoNCE only, the temperature in the wrong place, labels that
are not the diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.exercises.checks import CheckContext, WrongAnswer, register_task, seeded
from course_lib.metrics.agreement import info_nce_loss as library_info_nce_loss
from course_lib.metrics.fad import fit_inverse_n, gaussian_stats
from course_lib.metrics.fad import frechet_distance as library_frechet_distance
from course_lib.metrics.fad import sqrtm_psd as library_sqrtm_psd
from course_lib.metrics.kl import paired_kl as library_paired_kl

LESSON = "08_evaluation"

__all__ = [
    "EXTRAPOLATE_CASES",
    "FRECHET_CASES",
    "INFO_NCE_CASES",
    "KL_CASES",
    "LESSON",
    "SQRTM_CASES",
    "reference_extrapolate",
    "reference_frechet",
    "reference_info_nce",
    "reference_kl",
    "reference_sqrtm",
]


def _close(got: float, expected: float, atol: float, rtol: float) -> bool:
    return math.isfinite(got) and abs(got - expected) <= atol + rtol * abs(expected)


def _number(value: object, fn_name: str, where: str, array_hint: str, complex_hint: str = "",
            container_hint: str = "") -> float:
    """The student's return value as one real float (Python, NumPy or 0-d torch), or a hint saying what came back."""
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")
    if isinstance(value, (dict, tuple, list, str, bytes)):
        raise WrongAnswer(f"{where}: {fn_name} should return one number (a float), got a {type(value).__name__}"
                          f"{': ' + container_hint if container_hint else ''}")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.double() if value.dtype in (torch.float16, torch.bfloat16) else value
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise WrongAnswer(f"{where}: {fn_name} should return one number (a float), got {type(value).__name__}")
    if arr.size != 1:
        raise WrongAnswer(f"{where}: expected one number, got an array of shape {arr.shape}: {array_hint}")
    if np.iscomplexobj(arr):
        raise WrongAnswer(f"{where}: your result is complex ({complex(arr.reshape(())):.6g}): {complex_hint}")
    return float(arr.reshape(()))


def _matrix(value: object, fn_name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The student's ``(D, D)`` result as a NumPy array (complex kept, so the caller can say why)."""
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise WrongAnswer(f"{where}: {fn_name} should return a NumPy array {shape}, got {type(value).__name__}")
    if value.dtype == bool or not np.issubdtype(value.dtype, np.number):
        raise WrongAnswer(f"{where}: expected a matrix of numbers, got dtype {value.dtype}")
    if value.shape != shape:
        raise WrongAnswer(f"{where}: expected a matrix of shape {shape} (the same as Σ), got {value.shape}")
    return value


def _unchanged_np(before: Sequence[np.ndarray], after: Sequence[np.ndarray], where: str) -> None:
    if not all(np.array_equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where}: your function changed its inputs in place (`+=`, `x[...] = ...` on an "
                          "argument): compute on new arrays, the caller's covariance must not change")


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b.detach()) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where}: your function changed its inputs in place; compute on new tensors "
                          "(no `+=`, no `x[...] = ...` on an argument)")


# --------------------------------------------------------------------------------------------------------
# Task 1: the Fréchet distance of two Gaussians
# --------------------------------------------------------------------------------------------------------


def _eigen_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def reference_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                      mean_term: str = "squared", traces: bool = True, cross: str = "sqrt",
                      factor: float = 2.0) -> float:
    """``‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1Σ2)^{1/2})`` in float64 (the library's
    :func:`~course_lib.metrics.fad.frechet_distance` for the defaults). The keywords build the wrong variants the
    check recognises: ``mean_term`` ``"norm"`` (not squared) or ``"none"``; no ``traces``; ``cross`` ``"product"``
    (``Tr(Σ1Σ2)``), ``"roots"`` (``Tr(Σ1^{1/2} Σ2^{1/2})``), ``"sqrt_trace"`` (``√Tr(Σ1Σ2)``), ``"elementwise"``
    (``Tr(np.sqrt(Σ1Σ2))``, NaN for negative entries); another ``factor`` in front of the cross term."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    mean = {"squared": float(diff @ diff), "norm": float(np.sqrt(diff @ diff)), "none": 0.0}[mean_term]
    product = s1 @ s2
    with np.errstate(invalid="ignore"):
        cross_value = {
            "sqrt": lambda: float(np.sqrt(np.clip(np.linalg.eigvalsh(_eigen_sqrt(s1) @ s2 @ _eigen_sqrt(s1)), 0,
                                                  None)).sum()),
            "product": lambda: float(np.trace(product)),
            "roots": lambda: float(np.trace(_eigen_sqrt(s1) @ _eigen_sqrt(s2))),
            "sqrt_trace": lambda: float(np.sqrt(np.trace(product))),
            "elementwise": lambda: float(np.trace(np.sqrt(product))),
        }[cross]()
    return mean + (float(np.trace(s1) + np.trace(s2)) if traces else 0.0) - factor * cross_value


def _frechet_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]]:
    rng = np.random.default_rng(80)
    cases = [(np.array([0.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]]),
              "N(μ1 = [0], Σ1 = [[4]]) and N(μ2 = [3], Σ2 = [[1]]) (D = 1)"),
             (np.array([1.0, 0.0, -1.0]), np.diag([1.0, 4.0, 9.0]), np.array([0.0, 0.0, 1.0]), np.diag([4.0, 1.0, 1.0]),
              "μ1 = [1, 0, −1], Σ1 = diag(1, 4, 9) and μ2 = [0, 0, 1], Σ2 = diag(4, 1, 1)")]
    mu, sigma = gaussian_stats(rng.standard_normal((50, 4)) @ rng.standard_normal((4, 4)))
    cases.append((mu, sigma, mu.copy(), sigma.copy(), "two identical Gaussians (D = 4, a full covariance)"))
    mu1, sigma1 = gaussian_stats(rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)))
    mu2, sigma2 = gaussian_stats(rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) * 0.7 + 0.5)
    cases.append((mu1, sigma1, mu2, sigma2, "the Gaussian fits of two sets of 40 random 6-d embeddings (means (6,), "
                                            "covariances (6, 6) that do not commute)"))
    return cases


FRECHET_CASES = _frechet_cases()

FRECHET_VARIANTS: list[tuple[dict, str]] = [
    (dict(factor=1.0), "the cross term is −2·Tr((Σ1Σ2)^{1/2}): you forgot the factor 2"),
    (dict(factor=-2.0), "the cross term is SUBTRACTED: ‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1Σ2)^{1/2})"),
    (dict(mean_term="norm"), "the mean term is the SQUARED distance ‖μ1 − μ2‖² (diff @ diff), not the norm ‖μ1 − μ2‖"),
    (dict(mean_term="none"), "you left out the mean term ‖μ1 − μ2‖²: Gaussians with the same covariance and different "
                             "means are not at distance 0"),
    (dict(traces=False), "you left out Tr(Σ1) + Tr(Σ2)"),
    (dict(cross="product"), "the cross term is the trace of the matrix SQUARE ROOT of Σ1Σ2 "
                            "(scipy.linalg.sqrtm(sigma1 @ sigma2)), not the trace of the product itself"),
    (dict(cross="roots"), "(Σ1Σ2)^{1/2} is not Σ1^{1/2} Σ2^{1/2} unless the covariances commute (diagonal ones do, "
                          "these do not): take the square root of the PRODUCT, scipy.linalg.sqrtm(sigma1 @ sigma2)"),
    (dict(cross="sqrt_trace"), "you took the square root of the trace, √Tr(Σ1Σ2); the formula needs the trace of the "
                               "matrix square root, Tr((Σ1Σ2)^{1/2}): sqrtm first, then the trace"),
    (dict(cross="elementwise"), "np.sqrt works element by element; the matrix square root of Σ1Σ2 is "
                                "scipy.linalg.sqrtm(sigma1 @ sigma2)"),
]


@register_task("frechet_distance", LESSON,
               hint_on_error="diff = mu1 - mu2; covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real; return diff @ diff "
                             "+ np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).")
def check_frechet_distance_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(mu1, sigma1, mu2, sigma2)`` (NumPy float64, ``(D,)`` and ``(D, D)``) must return the float
    :func:`course_lib.metrics.fad.frechet_distance` gives, within 1e-6 (relative)."""
    for mu1, sigma1, mu2, sigma2, name in FRECHET_CASES:
        where = f"for {name}"
        inputs = (mu1, sigma1, mu2, sigma2)
        args = tuple(a.copy() for a in inputs)
        with np.errstate(all="ignore"):
            value = ctx.call(fn, *args)
        _unchanged_np(inputs, args, where)
        got = _number(value, "frechet_distance", where,
                      "the distance is one number: take np.trace of the matrix terms (and diff @ diff for the means)",
                      complex_hint="scipy.linalg.sqrtm returned a complex matrix whose imaginary part is round-off: "
                                   "keep its real part (.real)")
        expected = library_frechet_distance(*inputs)
        if _close(got, expected, 1e-6, 1e-6):
            continue
        if math.isnan(got):
            if math.isnan(reference_frechet(*inputs, cross="elementwise")):
                hint = ("NaN: np.sqrt works element by element (NaN for a negative entry); the matrix square root of "
                        "Σ1Σ2 is scipy.linalg.sqrtm(sigma1 @ sigma2)")
            else:
                hint = "NaN: look for the square root of a negative number"
            raise WrongAnswer(f"{where}: {hint}")
        hint = next((h for kw, h in FRECHET_VARIANTS if _close(got, reference_frechet(*inputs, **kw), 1e-6, 1e-6)),
                    "d² = ‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1Σ2)^{1/2})")
        raise WrongAnswer(f"{where}: expected {expected:.6g}, got {got:.6g}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 2: a stable square root of a PSD matrix
# --------------------------------------------------------------------------------------------------------


def reference_sqrtm(sigma: np.ndarray, *, clamp: str = "zero", order: str = "V w Vt", root: bool = True) -> np.ndarray:
    """``V diag(√max(λ, 0)) Vᵀ`` from ``np.linalg.eigh(Σ)`` (the library's :func:`~course_lib.metrics.fad.sqrtm_psd`
    for the defaults). The keywords build wrong variants: ``clamp`` ``"none"`` (NaN for a negative λ) or ``"abs"``
    (``√|λ|``); ``order`` ``"V w V"`` or ``"Vt w V"``; no ``root`` (``V diag(λ) Vᵀ = Σ``)."""
    w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    w = {"zero": np.clip(w, 0.0, None), "none": w, "abs": np.abs(w)}[clamp]
    with np.errstate(invalid="ignore"):
        d = np.sqrt(w) if root else w
    return {"V w Vt": (v * d) @ v.T, "V w V": (v * d) @ v, "Vt w V": (v.T * d) @ v}[order]


def _psd_with_eigenvalues(w: Sequence[float], seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(w), len(w))))
    sigma = (q * np.asarray(w)) @ q.T
    return 0.5 * (sigma + sigma.T)


def _elementwise_sqrt(sigma: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(sigma)


def _sqrtm_cases() -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(81)
    _, full = gaussian_stats(rng.standard_normal((30, 5)) @ rng.standard_normal((5, 5)))
    _, low = gaussian_stats(rng.standard_normal((10, 16)) * 1.5)
    return [
        (np.diag([4.0, 9.0, 0.25]), "Σ = diag(4, 9, 0.25)"),
        (np.array([[2.0, 1.0], [1.0, 2.0]]), "Σ = [[2, 1], [1, 2]] (eigenvalues 3 and 1)"),
        (full, "the covariance (5, 5) of 30 random 5-d embeddings (full rank)"),
        (low, "the covariance (16, 16) of 10 embeddings in 16 dimensions (rank 9: seven eigenvalues are 0 up to "
              "round-off)"),
        (_psd_with_eigenvalues([2.5, 1.0, 0.3, 3e-8, -1e-8, -4e-8], 82),
         "a covariance (6, 6) that is PSD up to round-off: eigenvalues 2.5, 1, 0.3, 3e-8, −1e-8, −4e-8 (a covariance "
         "accumulated in float32 looks like this)"),
    ]


SQRTM_CASES = _sqrtm_cases()

SQRTM_VARIANTS: list[tuple[Callable[[np.ndarray], np.ndarray], str]] = [
    (lambda s: reference_sqrtm(s, order="V w V"), "Σ = V diag(λ) Vᵀ, with the eigenvectors as the COLUMNS of V: rebuild "
                                                   "V diag(√λ) Vᵀ, (v * np.sqrt(w)) @ v.T, not V diag(√λ) V"),
    (lambda s: reference_sqrtm(s, order="Vt w V"), "the eigenvectors are the COLUMNS of V (v[:, i]): rebuild "
                                                    "V diag(√λ) Vᵀ, not Vᵀ diag(√λ) V"),
    (lambda s: reference_sqrtm(s, root=False), "you rebuilt Σ itself, V diag(λ) Vᵀ: take the square root of the "
                                               "eigenvalues, V diag(√λ) Vᵀ"),
    (lambda s: reference_sqrtm(s, clamp="abs"), "the eigenvalues below 0 are round-off of 0: clamp them to 0 "
                                                "(np.clip(w, 0, None)), don't take their absolute value"),
    (lambda s: _elementwise_sqrt(s), "np.sqrt works element by element; the matrix square root S satisfies "
                                                "S @ S = Σ: V diag(√λ) Vᵀ from np.linalg.eigh"),
]


@register_task("sqrtm_psd", LESSON,
               hint_on_error="w, v = np.linalg.eigh(sigma); return (v * np.sqrt(np.clip(w, 0, None))) @ v.T.")
def check_sqrtm_psd_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(sigma)`` for a symmetric PSD ``(D, D)`` float64 array must return the real symmetric root ``S`` with
    ``S @ S = Σ`` that :func:`course_lib.metrics.fad.sqrtm_psd` gives (within 1e-5), also when round-off leaves
    eigenvalues slightly below 0."""
    for sigma, name in SQRTM_CASES:
        where = f"for {name}"
        arg = sigma.copy()
        with np.errstate(all="ignore"):
            value = ctx.call(fn, arg)
        _unchanged_np((sigma,), (arg,), where)
        got = _matrix(value, "sqrtm_psd", sigma.shape, where)
        if np.iscomplexobj(got):
            raise WrongAnswer(f"{where}: your result is complex: np.linalg.eig (made for any square matrix) can return "
                              "complex eigenvalues and eigenvectors with round-off imaginary parts: use "
                              "np.linalg.eigh (symmetric matrices: real eigenvalues, orthonormal eigenvectors) and clamp "
                              "the eigenvalues at 0 before the square root")
        got = got.astype(np.float64)
        expected = library_sqrtm_psd(sigma)
        if np.isfinite(got).all() and np.allclose(got, expected, atol=1e-5, rtol=1e-5):
            continue
        if not np.isfinite(got).all():
            elementwise = _elementwise_sqrt(sigma)
            if np.isnan(elementwise).any() and np.array_equal(np.isnan(got), np.isnan(elementwise)):
                hint = ("NaN where Σ is negative: np.sqrt works element by element; the matrix square root S satisfies "
                        "S @ S = Σ: V diag(√λ) Vᵀ from np.linalg.eigh")
            else:
                smallest = float(np.linalg.eigvalsh(sigma).min())
                hint = (f"your result holds NaN or inf: round-off leaves eigenvalues of this matrix slightly below 0 "
                        f"(the smallest is {smallest:.1e}), and the square root of a negative number is NaN: clamp the "
                        "eigenvalues at 0 first, np.clip(w, 0, None)")
            raise WrongAnswer(f"{where}: {hint}")
        hint = next((h for variant, h in SQRTM_VARIANTS if np.allclose(got, variant(sigma), atol=1e-5, rtol=1e-5)), None)
        if hint is None:
            scale = max(1.0, float(np.abs(sigma).max()))
            if np.allclose(got @ got.T, sigma, atol=1e-6 * scale) and not np.allclose(got, got.T, atol=1e-6 * scale):
                hint = ("that is a factor L with L Lᵀ = Σ (like np.linalg.cholesky); the square root S must be symmetric "
                        "with S @ S = Σ: V diag(√λ) Vᵀ")
            elif not np.allclose(got, got.T, atol=1e-6 * scale):
                hint = "the square root of a symmetric matrix is symmetric (S = Sᵀ): V diag(√λ) Vᵀ from np.linalg.eigh"
            elif np.allclose(got @ got, sigma, atol=1e-6 * scale):
                hint = ("S @ S = Σ holds, but S is not the positive semi-definite root: take the non-negative root "
                        "√max(λ, 0) of every eigenvalue")
            else:
                hint = "S = V diag(√max(λ, 0)) Vᵀ with w, V from np.linalg.eigh(Σ)"
        detail = f"expected {np.round(expected, 4).tolist()}, got {np.round(got, 4).tolist()}: " if len(sigma) <= 3 else ""
        raise WrongAnswer(f"{where}: {detail}{hint}")


# --------------------------------------------------------------------------------------------------------
# Task 3: paired KL of label distributions
# --------------------------------------------------------------------------------------------------------


def reference_kl(logits_ref: torch.Tensor, logits_gen: torch.Tensor, *, reverse: bool = False, reduce: str = "mean",
                 normalise: bool = True, dim: int = 1, pool: bool = False, symmetric: bool = False, eps: float = 0.0,
                 per_element: bool = False) -> float:
    """Mean over pairs of ``KL(softmax(logits_ref) ‖ softmax(logits_gen))`` in float64 (the library's
    :func:`~course_lib.metrics.kl.paired_kl` with ``from_logits=True, eps=0`` for the defaults). The keywords
    build wrong variants: the direction ``reverse``d, ``reduce="sum"`` over pairs, logits used as log-probabilities
    (no ``normalise``), the softmax over ``dim=0``, the KL of the ``pool``ed (averaged) distributions, both
    directions added (``symmetric``), ``eps`` added to ``p_gen`` inside the log, a mean over ``N·C``
    (``per_element``, F.kl_div's ``reduction="mean"``)."""
    a, b = logits_ref.detach().double(), logits_gen.detach().double()
    if reverse:
        a, b = b, a
    log_p = torch.log_softmax(a, dim=dim) if normalise else a
    log_q = torch.log_softmax(b, dim=dim) if normalise else b
    if pool:
        log_p, log_q = log_p.exp().mean(0, keepdim=True).log(), log_q.exp().mean(0, keepdim=True).log()
    if eps:
        log_q = (log_q.exp() + eps).log()
    per_pair = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if symmetric:
        per_pair = per_pair + (log_q.exp() * (log_q - log_p)).sum(dim=1)
    if per_element:
        return float(per_pair.sum() / a.numel())
    return float(per_pair.sum() if reduce == "sum" else per_pair.mean())


def _kl_cases() -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    g = seeded(83)
    p_ref, p_gen = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.2, 0.5, 0.3]])
    same = torch.randn(3, 4, generator=g) * 2.0
    rand_ref, rand_gen = torch.randn(6, 12, generator=g) * 3.0, torch.randn(6, 12, generator=g) * 3.0
    confident_ref, confident_gen = torch.zeros(3, 5), torch.zeros(3, 5)
    confident_ref[0, 1] = confident_ref[1, 3] = confident_ref[2, 0] = 120.0
    confident_gen[0, 1] = confident_gen[1, 2] = 120.0
    confident_gen[2, 4] = 110.0
    return [
        (p_ref.log() + 2.0, p_gen.log() - 1.0, "one pair with p_ref = [0.7, 0.2, 0.1] and p_gen = [0.2, 0.5, 0.3] "
                                               "(logits log p_ref + 2 and log p_gen − 1)"),
        (same, same.clone(), "3 pairs of identical logits (C = 4 classes)"),
        (rand_ref, rand_gen, "random logits of N = 6 pairs × C = 12 classes"),
        (confident_ref, confident_gen, "a confident classifier: logits (N = 3, C = 5) whose top class is 110 to 120 above "
                                       "the others, so softmax gives exactly 0 in float32 for the other classes"),
    ]


KL_CASES = _kl_cases()
CONFIDENT_KL_CASE = 3  # the case where softmax underflows in float32

KL_VARIANTS: list[tuple[dict, str]] = [
    (dict(reverse=True), "the direction is KL(p_ref ‖ p_gen) = Σ_c p_ref,c (log p_ref,c − log p_gen,c): the reference "
                         "weighs the log-ratio (you computed KL(p_gen ‖ p_ref))"),
    (dict(reduce="sum"), "you summed over the pairs; report the MEAN over pairs"),
    (dict(per_element=True), "you divided by N·C (F.kl_div's reduction='mean'); average over the N pairs only "
                             "(reduction='batchmean')"),
    (dict(normalise=False), "logits are not log-probabilities: normalise them first, log p = torch.log_softmax(logits, "
                            "dim=1)"),
    (dict(dim=0), "the softmax runs over the classes (dim=1: each row is one clip), not over the pairs (dim=0)"),
    (dict(pool=True), "that is the KL of the AVERAGED distributions; the paired KL compares each generated clip with its "
                      "own reference: one KL per row, then the mean"),
    (dict(symmetric=True), "you added both directions (audiocraft's kld_both); the paired KL is KL(p_ref ‖ p_gen) alone"),
    (dict(eps=1e-6), "adding ε inside the log, log(p_gen + 1e-6) (audiocraft's and the library's default), changes "
                     "the value where p_gen is tiny: with log-probabilities from torch.log_softmax no ε is needed"),
]


@register_task("paired_kl", LESSON,
               hint_on_error="log_p = torch.log_softmax(logits_ref, dim=1); log_q = torch.log_softmax(logits_gen, "
                             "dim=1); return float((log_p.exp() * (log_p - log_q)).sum(dim=1).mean()).")
def check_paired_kl_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(logits_ref, logits_gen)`` (``(N, C)`` float32 classifier logits, row ``i`` of each a pair) must return the
    mean over pairs of ``KL(softmax(ref_i) ‖ softmax(gen_i))``, equal to :func:`course_lib.metrics.kl.paired_kl`
    with ``from_logits=True, eps=0`` within 1e-4 (relative)."""
    for index, (ref, gen, name) in enumerate(KL_CASES):
        where = f"for {name}"
        args = (ref.clone(), gen.clone())
        value = ctx.call(fn, *args)
        _unchanged((ref, gen), args, where)
        got = _number(value, "paired_kl", where, "one KL per pair: average them over the pairs (.mean())",
                      container_hint="return the mean KL over the pairs")
        expected = library_paired_kl(ref, gen, from_logits=True, eps=0.0)
        if _close(got, expected, 1e-4, 1e-4):
            continue
        if not math.isfinite(got):
            if index == CONFIDENT_KL_CASE:
                hint = ("softmax underflows to exactly 0 for a confident classifier, and log(0) = −inf (0·log 0 then "
                        "gives NaN): compute log-probabilities with torch.log_softmax (no exp, no log of a 0), and "
                        "p_ref as their exp")
            else:
                hint = ("logits are not probabilities (they can be negative: log of a negative logit is NaN): turn them "
                        "into log-probabilities with torch.log_softmax(logits, dim=1)")
            raise WrongAnswer(f"{where}: your result is {got}: {hint}")
        hint = next((h for kw, h in KL_VARIANTS if _close(got, reference_kl(ref, gen, **kw), 1e-4, 1e-4)),
                    "KL = mean over pairs i of Σ_c p_ref[i, c] · (log p_ref[i, c] − log p_gen[i, c]), with "
                    "log p = torch.log_softmax(logits, dim=1)")
        raise WrongAnswer(f"{where}: expected {expected:.6g}, got {got:.6g}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 4: FAD∞, the extrapolation in 1/n
# --------------------------------------------------------------------------------------------------------


def reference_extrapolate(sizes: Sequence[float], values: Sequence[float], *, x: str = "inverse",
                          take: str = "intercept", fit: str = "lstsq") -> float:
    """The intercept of the least-squares line ``value ≈ a + b/n`` (the library's
    :func:`~course_lib.metrics.fad.fit_inverse_n` for the defaults). The keywords build wrong variants: a line in
    ``x="n"``; ``take="slope"``; ``fit`` ``"endpoints"`` (through the first and last points), ``"last"`` (the value
    at the largest n), ``"swapped"`` (1/n fitted against the values)."""
    n = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    xs = 1.0 / n if x == "inverse" else n
    if fit == "last":
        return float(y[np.argmax(n)])
    if fit == "endpoints":
        i, j = int(np.argmin(n)), int(np.argmax(n))
        slope = (y[j] - y[i]) / (xs[j] - xs[i])
        intercept = y[i] - slope * xs[i]
    elif fit == "swapped":
        slope, intercept = np.polyfit(y, xs, 1)
    else:
        slope, intercept = np.polyfit(xs, y, 1)
    return float(intercept if take == "intercept" else slope)


def _extrapolate_cases() -> list[tuple[list[int], list[float], str]]:
    rng = np.random.default_rng(84)
    sizes = [int(n) for n in np.linspace(50, 500, 25).astype(int)]
    noisy = [round(0.8 + 40.0 / n + float(rng.normal(0, 0.01)), 6) for n in sizes]
    return [([10, 20, 50], [5.0, 3.5, 2.6], "sizes [10, 20, 50] and FADs [5.0, 3.5, 2.6] (exactly 2 + 30/n)"),
            ([100, 400], [1.5, 0.75], "sizes [100, 400] and FADs [1.5, 0.75]"),
            (sizes, noisy, "FADs measured at 25 sizes from 50 to 500 (about 0.8 + 40/n, with noise)")]


EXTRAPOLATE_CASES = _extrapolate_cases()

EXTRAPOLATE_VARIANTS: list[tuple[dict, str]] = [
    (dict(x="n"), "fit against x = 1/n, not n: FAD_n ≈ FAD∞ + b/n is a straight line in 1/n, and n → ∞ is 1/n → 0, its "
                  "intercept (a line in n extrapolates to n = 0 clips)"),
    (dict(take="slope"), "you returned the slope b; FAD∞ is the intercept (np.polyfit returns the coefficients highest "
                         "degree first: slope, intercept = np.polyfit(x, y, 1))"),
    (dict(x="n", take="slope"), "fit FAD against x = 1/n (not n) and return the intercept (not the slope)"),
    (dict(fit="last"), "that is the FAD at the largest n, which still carries the bias b/n: extrapolate the line to "
                       "1/n = 0"),
    (dict(fit="endpoints"), "a line through the first and last points only; fit all points by least squares "
                            "(np.polyfit(x, y, 1))"),
    (dict(fit="swapped"), "x is 1/n and y the FAD: np.polyfit(1 / n, fad, 1), not the other way round"),
]


@register_task("extrapolate_fad", LESSON,
               hint_on_error="x = 1 / np.asarray(sizes, dtype=float); slope, intercept = np.polyfit(x, np.asarray(values, "
                             "dtype=float), 1); return float(intercept).")
def check_extrapolate_fad_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(sizes, values)`` (lists: sample sizes ``n`` and the FAD measured at each) must return the intercept of the
    least-squares line ``FAD ≈ FAD∞ + b/n``, equal to :func:`course_lib.metrics.fad.fit_inverse_n`'s within 1e-6."""
    for sizes, values, name in EXTRAPOLATE_CASES:
        where = f"for {name}"
        args = (list(sizes), list(values))
        value = ctx.call(fn, *args)
        if args != (list(sizes), list(values)):
            raise WrongAnswer(f"{where}: your function changed the lists it was given; work on copies")
        got = _number(value, "extrapolate_fad", where, "FAD∞ is one number, the intercept of the line",
                      container_hint="return the intercept alone (FAD∞), not the whole fit")
        expected = fit_inverse_n(sizes, values)["intercept"]
        if _close(got, expected, 1e-6, 1e-6):
            continue
        hint = next((h for kw, h in EXTRAPOLATE_VARIANTS
                     if _close(got, reference_extrapolate(sizes, values, **kw), 1e-6, 1e-6)),
                    "fit the line FAD ≈ a + b·x with x = 1/n by least squares and return a, its value at 1/n = 0")
        raise WrongAnswer(f"{where}: expected {expected:.6g}, got {got:.6g}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 5: the symmetric InfoNCE (CLIP) loss
# --------------------------------------------------------------------------------------------------------


def reference_info_nce(similarity: torch.Tensor, temperature: float | torch.Tensor, *, rows: bool = True,
                       cols: bool = True, combine: str = "mean", temp: str = "divide", labels: str = "diagonal",
                       softmax_first: bool = False) -> float:
    """Symmetric InfoNCE of a ``(B, B)`` similarity matrix in float64 (the library's
    :func:`~course_lib.metrics.agreement.info_nce_loss` for the defaults). The keywords build wrong variants: one
    direction only (``rows`` or ``cols`` False), the two directions added (``combine="sum"``), the temperature
    multiplied, ignored or dividing the loss (``temp`` ``"multiply"``, ``"none"``, ``"loss"``), ``labels="zeros"``,
    a softmax before the cross-entropy (``softmax_first``)."""
    s = similarity.detach().double()
    t = float(temperature.detach()) if isinstance(temperature, torch.Tensor) else float(temperature)
    logits = {"divide": s / t, "multiply": s * t, "none": s, "loss": s}[temp]
    if softmax_first:
        logits = logits.softmax(dim=1)
    target = torch.arange(len(s)) if labels == "diagonal" else torch.zeros(len(s), dtype=torch.long)
    parts = ([F.cross_entropy(logits, target)] if rows else []) + ([F.cross_entropy(logits.T, target)] if cols else [])
    loss = sum(parts) / (len(parts) if combine == "mean" else 1)
    return float(loss / t if temp == "loss" else loss)


def _info_nce_cases() -> list[tuple[torch.Tensor, float | torch.Tensor, bool, str]]:
    g = seeded(85)
    rand = torch.tanh(torch.randn(8, 8, generator=g) + 1.5 * torch.eye(8))
    other = torch.tanh(torch.randn(6, 6, generator=g))
    return [
        (torch.full((4, 4), 0.3), 0.1, False, "a constant 4 × 4 similarity matrix (0.3 everywhere) and τ = 0.1"),
        (torch.tensor([[0.9, 0.1], [0.5, 0.4]]), 0.5, False, "similarity [[0.9, 0.1], [0.5, 0.4]] and τ = 0.5"),
        (rand, 0.07, True, "a random 8 × 8 cosine-similarity matrix (requires_grad) and τ = 0.07 (CLIP's start)"),
        (other, torch.tensor(0.2), False, "a random 6 × 6 similarity matrix and a learnable τ = torch.tensor(0.2)"),
    ]


INFO_NCE_CASES = _info_nce_cases()

INFO_NCE_VARIANTS: list[tuple[dict, str]] = [
    (dict(cols=False), "you computed only the audio → text direction (rows); CLIP averages it with text → audio "
                       "(the columns: F.cross_entropy(logits.T, labels))"),
    (dict(rows=False), "you computed only the text → audio direction (columns); CLIP averages it with audio → text "
                       "(the rows: F.cross_entropy(logits, labels))"),
    (dict(combine="sum"), "average the two directions, 0.5 · (rows + columns); don't add them"),
    (dict(temp="multiply"), "divide the similarities by the temperature (logits = similarity / τ), don't multiply"),
    (dict(temp="loss"), "the temperature scales the LOGITS before the softmax (logits = similarity / τ), not the loss"),
    (dict(temp="none"), "you ignored the temperature: logits = similarity / τ"),
    (dict(labels="zeros"), "the targets are the diagonal: row i's match is column i (labels = torch.arange(B)), not "
                           "class 0"),
    (dict(softmax_first=True), "F.cross_entropy takes LOGITS (it applies log_softmax itself): don't softmax first"),
]


@register_task("info_nce_loss", LESSON,
               hint_on_error="logits = similarity / temperature; labels = torch.arange(len(logits)); return 0.5 * "
                             "(F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)).")
def check_info_nce_loss_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(similarity, temperature)`` (``(B, B)``, the matching pairs on the diagonal) must return a 0-d tensor equal to
    :func:`course_lib.metrics.agreement.info_nce_loss` within 1e-5 (relative), carrying the gradient to
    ``similarity``."""
    for sim, temperature, needs_grad, name in INFO_NCE_CASES:
        where = f"for {name}"
        arg = sim.clone().requires_grad_(needs_grad)
        t_arg = temperature.clone() if isinstance(temperature, torch.Tensor) else temperature
        value = ctx.call(fn, arg, t_arg)
        _unchanged((sim,), (arg,), where)
        if value is None:
            raise WrongAnswer("info_nce_loss returned None: did you forget the `return` statement?")
        if not isinstance(value, torch.Tensor):
            raise WrongAnswer(f"{where}: info_nce_loss should return the loss as a torch.Tensor (training backpropagates "
                              f"through it), got {type(value).__name__}: no .item(), no float()")
        if value.dim() != 0:
            raise WrongAnswer(f"{where}: expected a scalar (0-d) loss, got shape {tuple(value.shape)}: average over the "
                              "batch (F.cross_entropy does by default) and over the two directions")
        if needs_grad and not value.requires_grad:
            raise WrongAnswer(f"{where}: your loss carries no gradient back to the similarities (.detach(), NumPy or "
                              "a new tensor built from numbers?): keep the whole computation in torch")
        got = float(value.detach())
        expected = float(library_info_nce_loss(sim, temperature))
        if _close(got, expected, 1e-5, 1e-5):
            continue
        if not math.isfinite(got):
            raise WrongAnswer(f"{where}: your loss is {got}: use F.cross_entropy on the logits (it is stable), not "
                              "log(softmax)")
        hint = next((h for kw, h in INFO_NCE_VARIANTS
                     if _close(got, reference_info_nce(sim, temperature, **kw), 1e-4, 1e-4)),
                    "logits = similarity / τ; loss = ½ · (cross_entropy(logits, arange(B)) + "
                    "cross_entropy(logits.T, arange(B)))")
        raise WrongAnswer(f"{where}: expected {expected:.6g}, got {got:.6g}: {hint}")
