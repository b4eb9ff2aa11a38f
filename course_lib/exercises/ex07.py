"""Checks for exercise notebook 07, Noise2Music: sampling q(x_t | x_0), the ε / v / x_0 conversions, one
deterministic DDIM step, the sinusoidal timestep embedding, a FiLM layer, the v-prediction loss with one training
step.

Each checker compares the student's function with the course's reference (:mod:`course_lib.diffusion.gaussian`:
:meth:`GaussianDiffusion.q_sample`, :meth:`~GaussianDiffusion.predict_x0_eps`,
:meth:`~GaussianDiffusion.ddim_step_mean_var`; :func:`course_lib.nn.transformer.sinusoidal_embedding` as the
U-Net's time embedding uses it; :class:`course_lib.diffusion.unet1d.ResBlock1D`'s FiLM) on hand-made and random
inputs, and turns the first mismatch into a hint naming the likeliest mistake: ᾱ and 1 − ᾱ used as scales
instead of their square roots, 1 − √ᾱ, signal and noise swapped, ᾱ broadcast along time; the sign of v, α and σ
swapped, a division by α ≈ 0 where v needs none, the outputs in the wrong order; x_t taken for x̂_0, the old
time's scales for the new point, DDPM's posterior mean; sines first, interleaved features, no ×1000, another
frequency base or spacing; FiLM without the +1, scale and shift swapped, no SiLU, no time axis, new layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.diffusion.gaussian import (
    GaussianDiffusion,
    GaussianDiffusionConfig,
    alpha_bar,
    alpha_sigma,
    eps_to_x0,
    x0_eps_to_v,
)
from course_lib.diffusion.unet1d import ResBlock1D, UNet1D, UNet1DConfig
from course_lib.exercises.checks import (
    CheckContext,
    PlainSGD,
    WrongAnswer,
    expect_tensor,
    register_task,
    seeded,
)
from course_lib.nn.transformer import sinusoidal_embedding

LESSON = "07_noise2music"

__all__ = [
    "EMBEDDING_CASES",
    "LESSON",
    "PlainSGD",
    "ddim_cases",
    "film_cases",
    "q_sample_cases",
    "reference_ddim_step",
    "reference_embedding",
    "reference_film",
    "reference_q_sample",
    "to_x0_eps_cases",
    "reference_train_step",
    "train_step_cases",
    "train_step_net",
]

EMBEDDING_SCALE = 1000.0  # the U-Net feeds sinusoidal_embedding(1000 · t): DDPM's step count


def _diffusion(schedule: str, parameterisation: str = "eps") -> GaussianDiffusion:
    return GaussianDiffusion(GaussianDiffusionConfig(schedule=schedule, parameterisation=parameterisation,
                                                     clip_x0=False))


def _same(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Same shape and values (float rounding allowed), nothing NaN or infinite in ``got``."""
    if tuple(got.shape) != tuple(expected.shape) or not torch.isfinite(got).all():
        return False
    return bool(torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol))


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where}: your function changed its inputs in place; compute on new tensors "
                          "(no `+=`, `mul_` or `x[...] = ...` on an argument)")


def _float_tensor(value: object, fn_name: str, shape: tuple[int, ...], where: str, what: str = "an output",
                  nan_hint: str = "look for a division by zero (σ = 0 at t = 0, α ≈ 0 at t = 1)") -> torch.Tensor:
    got = expect_tensor(value, fn_name)
    if tuple(got.shape) != shape:
        raise WrongAnswer(f"{where}: expected {what} of shape {shape}, got {tuple(got.shape)}")
    if not got.is_floating_point():
        raise WrongAnswer(f"{where}: expected float values, got {got.dtype}")
    got = got.detach()
    if torch.isnan(got).any():
        raise WrongAnswer(f"{where}: your output holds NaN: {nan_hint}")
    return got


def _fmt(x: torch.Tensor, digits: int = 4) -> list:
    return [round(float(v), digits) for v in x.flatten()]


def _per_item(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` → ``(B, 1, …, 1)`` broadcasting against ``like`` ``(B, ...)``."""
    return x.reshape(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------------------------
# Task 1: q(x_t | x_0)
# --------------------------------------------------------------------------------------------------------


def reference_q_sample(x0: torch.Tensor, alpha_bar_t: torch.Tensor, noise: torch.Tensor, *,
                       signal: Callable[[torch.Tensor], torch.Tensor] = torch.sqrt,
                       noise_scale: Callable[[torch.Tensor], torch.Tensor] = lambda ab: (1 - ab).sqrt(),
                       along_time: bool = False) -> torch.Tensor:
    """``x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε`` (Ho et al. 2020 eq. 4) in float64, ``ᾱ`` ``(B,)`` per item. The keywords build
    the wrong variants the check recognises: other signal / noise scales as functions of ᾱ, and ᾱ broadcast
    along the last (time) axis instead of per item."""
    ab = alpha_bar_t.double()
    ab = ab.reshape(*([1] * (x0.dim() - 1)), -1) if along_time else _per_item(ab, x0)
    return signal(ab) * x0.double() + noise_scale(ab) * noise.double()


def q_sample_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, torch.Tensor]]:
    """``(x0, alpha_bar_t, noise, description, expected)``: one hand-made case (ᾱ = 0.64, so α = 0.8, σ = 0.6),
    then random clips at times of the cosine and linear schedules with :meth:`GaussianDiffusion.q_sample`'s
    answer (the second has T = B, where ᾱ broadcast along time runs silently)."""
    x0 = torch.tensor([[[1.0, -0.5, 0.0, 0.25]]])
    noise = torch.tensor([[[1.0, 1.0, -1.0, 2.0]]])
    ab = torch.tensor([0.64])
    cases = [(x0, ab, noise, "x0 = [1, -0.5, 0, 0.25], noise = [1, 1, -1, 2], alpha_bar_t = [0.64]",
              torch.tensor([[[1.4, 0.2, -0.6, 1.4]]], dtype=torch.float64))]
    g = seeded(70)
    for schedule, times, shape in (("cosine", [0.1, 0.5, 0.9], (3, 1, 3)), ("linear", [0.0, 1.0], (2, 2, 16)),
                                   ("cosine", [0.25, 0.75, 0.02, 0.98], (4, 1, 32))):
        t = torch.tensor(times)
        x0 = torch.rand(shape, generator=g) * 2 - 1
        noise = torch.randn(shape, generator=g)
        expected = _diffusion(schedule).q_sample(x0, t, noise)
        cases.append((x0, alpha_bar(schedule, t), noise,
                       f"x0 of shape (B, C, T) = {shape}, alpha_bar_t of the {schedule} schedule at t = {times}",
                       expected))
    return cases


Q_SAMPLE_VARIANTS: list[tuple[dict, str]] = [
    (dict(signal=lambda ab: ab, noise_scale=lambda ab: 1 - ab),
     "you used ᾱ and 1 − ᾱ as the scales; those are the VARIANCES of the signal and noise parts, the scales are "
     "their square roots: x_t = √ᾱ·x0 + √(1 − ᾱ)·ε"),
    (dict(signal=lambda ab: ab),
     "the signal scale is α = √ᾱ, not ᾱ: ᾱ = α² is what multiplies the signal's variance"),
    (dict(noise_scale=lambda ab: 1 - ab),
     "the noise scale is σ = √(1 − ᾱ), not 1 − ᾱ: the noise's VARIANCE is 1 − ᾱ, so that α² + σ² = 1 and x_t keeps "
     "unit variance"),
    (dict(noise_scale=lambda ab: 1 - ab.sqrt()),
     "σ = √(1 − ᾱ), not 1 − √ᾱ: it is α² + σ² = 1 that holds (variances add), not α + σ = 1"),
    (dict(signal=lambda ab: (1 - ab).sqrt(), noise_scale=torch.sqrt),
     "the signal and noise scales are swapped: ᾱ → 1 at t = 0 (clean data), so √ᾱ multiplies x0 and √(1 − ᾱ) "
     "multiplies ε"),
]


@register_task("q_sample", LESSON,
               hint_on_error="alpha_bar_t has shape (B,): reshape it to (B, 1, 1) (alpha_bar_t.view(-1, 1, 1)); then "
                             "x_t = √ᾱ·x0 + √(1 − ᾱ)·noise.")
def check_q_sample_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(x0, alpha_bar_t, noise)`` must equal :meth:`GaussianDiffusion.q_sample` ``(x0, t, noise)`` for
    ``alpha_bar_t = alpha_bar(schedule, t)``: ``√ᾱ·x0 + √(1 − ᾱ)·noise`` with ᾱ ``(B,)`` per clip."""
    for x0, ab, noise, name, expected in q_sample_cases():
        where = f"for {name}"
        args = (x0.clone(), ab.clone(), noise.clone())
        got = _float_tensor(ctx.call(fn, *args), "q_sample", tuple(x0.shape), where, "x_t")
        _unchanged((x0, ab, noise), args, where)
        if _same(got, expected):
            continue
        hint = None
        variants = list(Q_SAMPLE_VARIANTS)
        if x0.shape[-1] == x0.shape[0] > 1:
            variants.append((dict(along_time=True),
                             "alpha_bar_t holds one value per clip (shape (B,)), but you broadcast it along TIME (the "
                             "last axis): reshape it to (B, 1, 1) with alpha_bar_t.view(-1, 1, 1) before multiplying"))
        for kwargs, text in variants:
            if _same(got, reference_q_sample(x0, ab, noise, **kwargs)):
                hint = text
                break
        if hint is None and _same(got, x0):
            hint = "you returned x0 unchanged: add the noise, x_t = √ᾱ·x0 + √(1 − ᾱ)·ε"
        if hint is None and _same(got, noise):
            hint = "you returned the noise: x_t = √ᾱ·x0 + √(1 − ᾱ)·ε mixes both"
        if hint is None:
            hint = "x_t = √ᾱ·x0 + √(1 − ᾱ)·ε, with ᾱ reshaped to (B, 1, 1)"
        detail = f"expected {_fmt(expected)}, got {_fmt(got)}: " if x0.numel() <= 4 else ""
        raise WrongAnswer(f"{where}: {detail}{hint}")


# --------------------------------------------------------------------------------------------------------
# Task 2: ε / v / x0 → (x0, ε)
# --------------------------------------------------------------------------------------------------------


def to_x0_eps_cases() -> list[tuple[str, str, str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(parameterisation, schedule, description, x_t, pred, alpha, sigma, t, x0, eps)`` with ``alpha``, ``sigma``
    ``(B, 1, 1)`` from :meth:`GaussianDiffusion.alpha_sigma`, ``x_t = α x0 + σ ε`` and ``pred`` the exact target
    (ε, v = α ε − σ x0, or x0). The last v case sits at t = 1 of the cosine schedule, α ≈ 4.5e-5."""
    g = seeded(71)
    cases = []
    for param, schedule, times, shape in (("eps", "cosine", [0.3, 0.6], (2, 1, 8)),
                                          ("v", "cosine", [0.2, 0.5, 0.8], (3, 1, 8)),
                                          ("x0", "linear", [0.1, 0.9], (2, 2, 8)),
                                          ("eps", "linear", [0.05, 0.95], (2, 1, 16)),
                                          ("x0", "cosine", [0.02, 0.7], (2, 1, 16)),
                                          ("v", "cosine", [1.0, 0.999], (2, 1, 64))):
        diffusion = _diffusion(schedule, param)
        t = torch.tensor(times)
        x0 = torch.rand(shape, generator=g) * 2 - 1
        eps = torch.randn(shape, generator=g)
        a, s = diffusion.alpha_sigma(t, x0)
        x_t = a * x0 + s * eps
        pred = {"eps": eps, "x0": x0, "v": x0_eps_to_v(x0, eps, a, s)}[param]
        name = (f"parameterisation = {param!r}, the {schedule} schedule at t = {times} (alpha = {_fmt(a, 6)}, "
                f"sigma = {_fmt(s, 6)}), x_t of shape {shape}")
        cases.append((param, schedule, name, x_t, pred, a, s, t, x0, eps))
    return cases


def _conversion_variants(param: str, x_t: torch.Tensor, pred: torch.Tensor, a: torch.Tensor,
                         s: torch.Tensor) -> list[tuple[str, torch.Tensor, str]]:
    """Wrong answers for ``param``: ``(which output, its wrong value, hint)``, in float64."""
    x_t, p, a, s = x_t.double(), pred.double(), a.double(), s.double()
    if param == "eps":
        return [
            ("x0", (x_t - a * p) / s, "α and σ are swapped: x_t = α·x0 + σ·ε, so x0 = (x_t − σ·ε)/α"),
            ("x0", x_t - s * p, "after removing the noise σ·ε, divide by α: x0 = (x_t − σ·ε)/α"),
            ("x0", (x_t + s * p) / a, "the sign: x_t = α·x0 + σ·ε, so x0 = (x_t − σ·ε)/α"),
            ("eps", (x_t - s * p) / a, "for ε-prediction the ε estimate IS the prediction: return (x0, pred)"),
        ]
    if param == "x0":
        return [
            ("eps", (x_t - s * p) / a, "α and σ are swapped: x_t = α·x0 + σ·ε, so ε = (x_t − α·x0)/σ"),
            ("eps", x_t - a * p, "after removing the signal α·x0, divide by σ: ε = (x_t − α·x0)/σ"),
            ("eps", (x_t + a * p) / s, "the sign: x_t = α·x0 + σ·ε, so ε = (x_t − α·x0)/σ"),
            ("x0", (x_t - a * p) / s, "for x0-prediction the x0 estimate IS the prediction: return (pred, eps)"),
        ]
    sign = "the sign of v: v = α·ε − σ·x0 (Salimans & Ho 2022), so x0 = α·x_t − σ·v and ε = σ·x_t + α·v"
    swap = "α and σ are swapped: with v = α·ε − σ·x0 and α² + σ² = 1, x0 = α·x_t − σ·v and ε = σ·x_t + α·v"
    return [
        ("x0", a * x_t + s * p, sign), ("eps", s * x_t - a * p, sign),
        ("x0", s * x_t - a * p, swap), ("eps", a * x_t + s * p, swap),
        ("x0", p, "v is neither x0 nor ε: x0 = α·x_t − σ·v"), ("eps", p, "v is neither x0 nor ε: ε = σ·x_t + α·v"),
        ("x0", -p, "v ≈ −x0 only near t = 1: in general x0 = α·x_t − σ·v"),
    ]


def _pair(value: object, where: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        got_len = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
        raise WrongAnswer(f"{where}: to_x0_eps should return two tensors (x0, eps), got "
                          f"{type(value).__name__}{got_len}")
    return tuple(_float_tensor(item, f"to_x0_eps ({name})", shape, where, name)  # type: ignore[return-value]
                 for item, name in zip(value, ("x0", "eps")))


@register_task("to_x0_eps", LESSON,
               hint_on_error="x_t = α·x0 + σ·ε and v = α·ε − σ·x0: 'eps' → x0 = (x_t − σ·ε)/α; "
                             "'x0' → ε = (x_t − α·x0)/σ; "
                             "'v' → x0 = α·x_t − σ·v, ε = σ·x_t + α·v.")
def check_to_x0_eps_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(x_t, pred, alpha, sigma, parameterisation)`` → ``(x0, eps)`` must equal
    :meth:`GaussianDiffusion.predict_x0_eps` ``(pred, x_t, t, clip=False)`` (and the true x0, ε the case was
    built from) for each of ``"eps"``, ``"v"``, ``"x0"``."""
    for param, schedule, name, x_t, pred, a, s, t, x0_true, eps_true in to_x0_eps_cases():
        where = f"for {name}"
        args = (x_t.clone(), pred.clone(), a.clone(), s.clone())
        got_x0, got_eps = _pair(ctx.call(fn, *args, param), where, tuple(x_t.shape))
        _unchanged((x_t, pred, a, s), args, where)
        lib_x0, lib_eps = _diffusion(schedule, param).predict_x0_eps(pred, x_t, t, clip=False)
        ok_x0 = _same(got_x0, lib_x0) and _same(got_x0, x0_true, atol=1e-4)
        ok_eps = _same(got_eps, lib_eps) and _same(got_eps, eps_true, atol=1e-4)
        if ok_x0 and ok_eps:
            continue
        if _same(got_x0, lib_eps) and _same(got_eps, lib_x0):
            raise WrongAnswer(f"{where}: your two outputs are in the wrong order: return (x0, eps)")
        which = "x0" if not ok_x0 else "eps"
        got = got_x0 if which == "x0" else got_eps
        hint = next((text for part, value, text in _conversion_variants(param, x_t, pred, a, s)
                     if part == which and _same(got, value)), None)
        if hint is None and param == "v" and which == "x0" and float(a.min()) < 1e-3 and _same(got, x0_true, atol=0.1):
            hint = (f"close, but not accurate: you divided by α = {float(a.min()):.1e} (t = 1), which multiplies "
                    "float32 rounding errors by 1/α. Use x0 = α·x_t − σ·v: with α² + σ² = 1 the v conversions never "
                    "divide, which is why v-prediction behaves at both ends")
        if hint is None:
            hint = {"eps": "x0 = (x_t − σ·ε)/α, and ε is the prediction itself",
                    "x0": "ε = (x_t − α·x0)/σ, and x0 is the prediction itself",
                    "v": "x0 = α·x_t − σ·v and ε = σ·x_t + α·v (from v = α·ε − σ·x0 and α² + σ² = 1)"}[param]
        raise WrongAnswer(f"{where}: wrong {which}: {hint}")
    _check_unknown_parameterisation(fn, to_x0_eps_cases()[0])


def _check_unknown_parameterisation(fn: Callable, case: tuple) -> None:
    """An unknown parameterisation must raise ``ValueError`` (a clear error, not a silent wrong answer)."""
    _, _, _, x_t, pred, a, s, *_ = case
    where = "for parameterisation = 'velocity' (not one of 'eps', 'v', 'x0')"
    try:
        fn(x_t.clone(), pred.clone(), a.clone(), s.clone(), "velocity")
    except ValueError as err:
        if not all(name in str(err) for name in ("eps", "x0")):
            raise WrongAnswer(f"{where}: your ValueError says {str(err)!r}; name the three that work: 'eps', 'v', "
                              "'x0'") from None
        return
    except Exception as err:  # noqa: BLE001 - any other error is the student's, reported as a hint
        raise WrongAnswer(f"{where}: expected a ValueError, got {type(err).__name__}: raise ValueError(...) that "
                          "names 'eps', 'v' and 'x0'") from None
    raise WrongAnswer(f"{where}: your function returned a value; raise ValueError(...) naming 'eps', 'v' and 'x0', "
                      "so that a typo cannot give a silently wrong answer")


# --------------------------------------------------------------------------------------------------------
# Task 3: one DDIM step
# --------------------------------------------------------------------------------------------------------


def reference_ddim_step(x_t: torch.Tensor, eps_hat: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
                        alpha_s: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (η = 0, Song et al. 2021 eq. 12) in float64: ``x̂₀ = (x_t − σ_t ε̂)/α_t``, then
    ``x_s = α_s x̂₀ + σ_s ε̂``; the scales broadcast against ``x_t``."""
    x_t, e = x_t.double(), eps_hat.double()
    x0 = (x_t - sigma_t.double() * e) / alpha_t.double()
    return alpha_s.double() * x0 + sigma_s.double() * e


def ddim_cases() -> list[tuple[str, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]]:
    """``(description, (x_t, eps_hat, alpha_t, sigma_t, alpha_s, sigma_s), library_mean, true_or_nan)``.

    The library mean is :meth:`GaussianDiffusion.ddim_step_mean_var` with ``eta = 0`` and ``x̂₀`` from ε̂; the
    first case uses the true noise as ε̂, where the step must land on ``α_s x0 + σ_s ε`` (its last item)."""
    g = seeded(72)
    cases = []
    for schedule, times, steps_to, shape, exact in (("cosine", [0.5], [0.3], (1, 1, 8), True),
                                                     ("cosine", [0.7, 0.5, 0.2], [0.6, 0.1, 0.0], (3, 1, 16), False),
                                                     ("linear", [0.9, 0.35], [0.8, 0.3], (2, 2, 8), False)):
        diffusion = _diffusion(schedule)
        t, s = torch.tensor(times), torch.tensor(steps_to)
        x0 = torch.rand(shape, generator=g) * 2 - 1
        eps = torch.randn(shape, generator=g)
        a_t, s_t = diffusion.alpha_sigma(t, x0)
        a_s, s_s = diffusion.alpha_sigma(s, x0)
        if exact:
            x_t, eps_hat = a_t * x0 + s_t * eps, eps
            truth = a_s.double() * x0.double() + s_s.double() * eps.double()
            name = (f"x_t = α_t·x0 + σ_t·ε of the {schedule} schedule at t = {times[0]} and the TRUE noise ε as "
                    "eps_hat, "
                    f"stepping to s = {steps_to[0]} (the answer is α_s·x0 + σ_s·ε)")
        else:
            x_t, eps_hat = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            truth = torch.full(shape, float("nan"), dtype=torch.float64)
            name = f"random x_t, eps_hat of shape {shape}, the {schedule} schedule from t = {times} to s = {steps_to}"
        mean, _ = diffusion.ddim_step_mean_var(x_t, eps_to_x0(x_t, eps_hat, a_t, s_t), eps_hat, t, s, eta=0.0)
        cases.append((name, (x_t, eps_hat, a_t, s_t, a_s, s_s), mean, truth))
    return cases


def _ddim_variants(x_t, e, a_t, s_t, a_s, s_s) -> list[tuple[torch.Tensor, str]]:
    x_t, e, a_t, s_t, a_s, s_s = (v.double() for v in (x_t, e, a_t, s_t, a_s, s_s))
    x0 = (x_t - s_t * e) / a_t
    rederive = "first re-derive the clean estimate x̂0 = (x_t − σ_t·ε̂)/α_t, then x_s = α_s·x̂0 + σ_s·ε̂"
    var_ts = s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2
    posterior_mean = (a_t / a_s) * s_s ** 2 / s_t ** 2 * x_t + a_s * var_ts / s_t ** 2 * x0
    return [
        (x_t, "you returned x_t unchanged (α_t·x̂0 + σ_t·ε̂ is x_t itself): the new point is built with the NEW "
              "time's scales, x_s = α_s·x̂0 + σ_s·ε̂"),
        (a_s * x_t + s_s * e, f"you used x_t as the clean signal: {rederive}"),
        (x_t - (s_t - s_s) * e,
         f"you only took noise away (that is α_t·x̂0 + σ_s·ε̂: the old signal scale α_t kept); the signal must be "
         f"rescaled from α_t to α_s too: {rederive}"),
        (a_s / a_t * x_t, "you dropped the noise term: x_s = α_s·x̂0 + σ_s·ε̂ keeps σ_s of the predicted noise "
                          "(η = 0 puts all of it back, deterministically)"),
        (a_s * x0 + s_t * e, "the noise scale of the new point is σ_s, not σ_t: x_s = α_s·x̂0 + σ_s·ε̂"),
        (a_s.sqrt() * x0 + s_s.sqrt() * e, "alpha and sigma are already the scales (√ᾱ and √(1 − ᾱ)): do not take "
                                           "square roots again"),
        (a_s ** 2 * x0 + s_s ** 2 * e, "you used α_s² = ᾱ_s and σ_s² = 1 − ᾱ_s: the scales are α_s and σ_s"),
        (a_s * (x_t - s_t * e) + s_s * e, "x̂0 = (x_t − σ_t·ε̂)/α_t: divide by α_t"),
        (a_s * (x_t - a_t * e) / s_t + s_s * e, "α_t and σ_t are swapped in x̂0: x_t = α_t·x0 + σ_t·ε, so "
                                                "x̂0 = (x_t − σ_t·ε̂)/α_t"),
        (a_s * (x_t + s_t * e) / a_t + s_s * e, "the sign in x̂0: x̂0 = (x_t − σ_t·ε̂)/α_t"),
        (x0, "that is x̂0; one step goes to x_s = α_s·x̂0 + σ_s·ε̂ (only the last step, s = 0, lands on x̂0)"),
        (posterior_mean, "that is DDPM's posterior mean μ̃ (η = 1 without its noise); deterministic DDIM (η = 0) puts "
                         "all of σ_s on the predicted noise: x_s = α_s·x̂0 + σ_s·ε̂"),
    ]


@register_task("ddim_step", LESSON,
               hint_on_error="x0_hat = (x_t − sigma_t·eps_hat)/alpha_t; return alpha_s·x0_hat + sigma_s·eps_hat.")
def check_ddim_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(x_t, eps_hat, alpha_t, sigma_t, alpha_s, sigma_s)`` → ``x_s`` must equal the mean of
    :meth:`GaussianDiffusion.ddim_step_mean_var` at ``eta = 0`` (its variance is then 0)."""
    for name, args, expected, truth in ddim_cases():
        where = f"for {name}"
        inputs = tuple(a.clone() for a in args)
        got = _float_tensor(ctx.call(fn, *inputs), "ddim_step", tuple(args[0].shape), where, "x_s")
        _unchanged(args, inputs, where)
        exact = not torch.isnan(truth).any()
        if _same(got, expected) and (not exact or _same(got, truth, atol=1e-4)):
            continue
        hint = next((text for value, text in _ddim_variants(*args) if _same(got, value)), None)
        if hint is None:
            hint = "x̂0 = (x_t − σ_t·ε̂)/α_t, then x_s = α_s·x̂0 + σ_s·ε̂"
        detail = ""
        if exact:
            detail = f"expected {_fmt(expected[0, 0, :4])}… (α_s·x0 + σ_s·ε), got {_fmt(got[0, 0, :4])}…: "
        raise WrongAnswer(f"{where}: {detail}{hint}")


# --------------------------------------------------------------------------------------------------------
# Task 4: the timestep embedding
# --------------------------------------------------------------------------------------------------------


def reference_embedding(t: torch.Tensor, dim: int, *, scale: float = EMBEDDING_SCALE, base: float = 10_000.0,
                        layout: str = "cos_sin", spacing: str = "half", increasing: bool = False) -> torch.Tensor:
    """``(B, dim)`` float64: ``[cos(1000 t ω_i), sin(1000 t ω_i)]`` with ``ω_i = 10000^(−i/half)``, ``i < half =
    dim/2``, as the U-Net feeds :func:`sinusoidal_embedding`. Keywords build the wrong variants the check
    recognises: another scale of t, another base, sines first (``"sin_cos"``) or interleaved (``"interleave"``,
    ``"interleave_sin"``), exponents ``i/(half − 1)`` (``"half-1"``) or ``i/dim`` (``"dim"``), frequencies
    rising."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    denom = {"half": half, "half-1": half - 1, "dim": dim}[spacing]
    exponent = i / denom if denom else torch.zeros_like(i) * float("nan")
    freqs = base ** (exponent if increasing else -exponent)
    args = scale * t.double()[:, None] * freqs
    cos, sin = torch.cos(args), torch.sin(args)
    if layout == "cos_sin":
        return torch.cat([cos, sin], dim=-1)
    if layout == "sin_cos":
        return torch.cat([sin, cos], dim=-1)
    first, second = (cos, sin) if layout == "interleave" else (sin, cos)
    return torch.stack([first, second], dim=-1).reshape(t.shape[0], dim)


EMBEDDING_CASES: list[tuple[list[float], int]] = [
    ([0.0, 0.5, 1.0], 8),
    ([0.013, 0.25, 0.4, 0.77, 0.999], 32),
    ([0.0005, 0.25], 2),
]

EMBEDDING_VARIANTS: list[tuple[dict, str]] = [
    (dict(layout="sin_cos"), "the course puts the COSINES first: [cos(1000 t ω_0..ω_{half−1}), sin(…)], so t = 0 "
                             "gives [1, …, 1, 0, …, 0]"),
    (dict(layout="interleave"), "the features are not interleaved: the first half holds all the cosines, the second "
                                "half all the sines (torch.cat([cos, sin], dim=-1))"),
    (dict(layout="interleave_sin"), "the features are not interleaved, and cosines come first: "
                                    "torch.cat([cos, sin], dim=-1)"),
    (dict(scale=1.0), "scale t by 1000 first: t ∈ [0, 1] moves the slowest features by almost nothing, so the U-Net "
                      "embeds 1000·t (DDPM's step count), as sinusoidal_embedding(1000 * t, dim)"),
    (dict(spacing="half-1"), "ω_i = 10000^(−i/half) with half = dim/2 (i = 0..half−1), not i/(half − 1)"),
    (dict(spacing="dim"), "ω_i = 10000^(−i/half) with half = dim/2: divide the exponent by half, not by dim"),
    (dict(base=1000.0), "the frequency base is max_period = 10000: ω_i = 10000^(−i/half)"),
    (dict(increasing=True), "the frequencies fall from 1 to about 1/10000: ω_i = 10000^(−i/half), a NEGATIVE exponent"),
    (dict(layout="sin_cos", scale=1.0), "two things: scale t by 1000, and put the cosines first"),
]


@register_task("timestep_embedding", LESSON,
               hint_on_error="half = dim // 2; freqs = exp(−log(10000)·arange(half)/half); "
                             "args = 1000·t[:, None]·freqs; "
                             "return torch.cat([cos(args), sin(args)], dim=-1).")
def check_timestep_embedding_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(t, dim)`` → ``(B, dim)`` must equal ``sinusoidal_embedding(1000 * t, dim)``, the features the U-Net's
    time MLP reads (cosines first, ``ω_i = 10000^(−i/half)``)."""
    for times, dim in EMBEDDING_CASES:
        t = torch.tensor(times)
        where = f"for t = {times} and dim = {dim}"
        arg = t.clone()
        got = _float_tensor(ctx.call(fn, arg, dim), "timestep_embedding", (len(times), dim), where,
                            "an embedding (B, dim)",
                            nan_hint="0/0 somewhere: with dim = 2, half − 1 = 0; the exponent is i/half, i = 0..half−1")
        _unchanged((t,), (arg,), where)
        expected = reference_embedding(t, dim)
        library = sinusoidal_embedding(EMBEDDING_SCALE * t, dim)
        if _same(got, expected, atol=2e-3, rtol=0) and _same(got, library, atol=2e-3, rtol=0):
            continue
        hint = next((text for kwargs, text in EMBEDDING_VARIANTS
                     if _same(got, reference_embedding(t, dim, **kwargs), atol=2e-3, rtol=0)), None)
        if hint is None:
            hint = "emb = [cos(1000 t ω_i) for i < half] + [sin(1000 t ω_i) for i < half], ω_i = 10000^(−i/half)"
        detail = f"expected row 0 = {_fmt(expected[0], 3)}, got {_fmt(got[0], 3)}: " if dim <= 8 else ""
        raise WrongAnswer(f"{where}: {detail}{hint}")


# --------------------------------------------------------------------------------------------------------
# Task 5: FiLM
# --------------------------------------------------------------------------------------------------------


def reference_film(h: torch.Tensor, emb: torch.Tensor, norm: nn.Module, to_scale_shift: nn.Module, *,
                   plus_one: bool = True, swap: bool = False, silu: bool = True, normalise: bool = True,
                   norm_last: bool = False, along_time: bool = False, plain_norm: bool = False) -> torch.Tensor:
    """``norm(h)·(1 + γ) + β`` with ``(γ, β) = to_scale_shift(SiLU(emb))`` split along channels and broadcast over
    time, as :class:`ResBlock1D` does. Keywords build the wrong variants the check recognises: no +1, (β, γ)
    swapped, no SiLU, no norm, the norm after the modulation, scale/shift broadcast along the wrong axes, a
    GroupNorm without the given one's learned affine parameters."""
    with torch.no_grad():
        out = to_scale_shift(F.silu(emb) if silu else emb)
        scale, shift = out.chunk(2, dim=1)
        if swap:
            scale, shift = shift, scale
        if along_time:  # (B, C) broadcast against (B, C, T) as (1, B, C)
            scale, shift = scale.unsqueeze(0), shift.unsqueeze(0)
        else:
            scale, shift = scale.unsqueeze(-1), shift.unsqueeze(-1)
        if plain_norm:
            norm = nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=False)
        x = norm(h) if normalise and not norm_last else h
        y = x * ((1 + scale) if plus_one else scale) + shift
        return norm(y) if norm_last else y


def _film_block(c: int, emb_dim: int, groups: int, g: torch.Generator) -> ResBlock1D:
    """A :class:`ResBlock1D` with seeded random weights (GroupNorm affine and FiLM included), built without
    touching torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        block = ResBlock1D(c, c, emb_dim, num_groups=groups)
    with torch.no_grad():
        for name, p in block.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = name.startswith("norm") and name.endswith("weight")
            p.copy_(1.0 + 0.3 * noise if is_norm_weight else 0.5 * noise)
    return block.eval()


def film_cases() -> list[tuple[str, ResBlock1D, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(description, block, x, h, emb)``: ``h = conv1(SiLU(norm1(x)))`` is what the block's FiLM modulates; the
    first case has B = C = T, where scale and shift without a time axis broadcast silently."""
    g = seeded(73)
    cases = []
    for b, c, t, e, groups in ((4, 4, 4, 6, 2), (2, 8, 5, 16, 4), (1, 16, 12, 8, 8)):
        block = _film_block(c, e, groups, g)
        x = torch.randn(b, c, t, generator=g)
        emb = torch.randn(b, e, generator=g) * 2
        with torch.no_grad():
            h = block.conv1(F.silu(block.norm1(x)))
        name = (f"h of shape (B, C, T) = {(b, c, t)}, emb of shape (B, emb_dim) = {(b, e)}, "
                f"norm = GroupNorm({groups}, {c}), to_scale_shift = Linear({e}, {2 * c})")
        cases.append((name, block, x, h, emb))
    return cases


FILM_VARIANTS: list[tuple[dict, str]] = [
    (dict(plus_one=False), "the +1 is missing: h·(1 + scale) + shift, so that scale = 0 (a fresh, zero-initialised "
                           "FiLM) leaves the normalised features unchanged instead of zeroing them"),
    (dict(swap=True), "scale and shift are swapped: the first half of to_scale_shift's output (chunk(2, dim=1)[0]) is "
                      "the scale, the second the shift"),
    (dict(plus_one=False, swap=True), "scale and shift are swapped (the first half is the scale) and the +1 is "
                                      "missing: norm(h)·(1 + scale) + shift"),
    (dict(silu=False), "apply SiLU to the embedding before the linear layer: (scale, shift) = "
                       "to_scale_shift(F.silu(emb))"),
    (dict(normalise=False), "normalise first: the modulation acts on norm(h), not on h"),
    (dict(norm_last=True), "the norm comes BEFORE the modulation: norm(h)·(1 + scale) + shift (normalising after it "
                           "would undo the shift)"),
    (dict(along_time=True), "scale and shift have shape (B, C): add a time axis, .unsqueeze(-1) → (B, C, 1), so they "
                            "broadcast over T (one value per clip and channel)"),
    (dict(plain_norm=True), "use the norm passed in, norm(h): a new GroupNorm lacks its learned scale and bias"),
]


@register_task("film", LESSON,
               hint_on_error="scale, shift = to_scale_shift(F.silu(emb)).chunk(2, dim=1); return "
                             "norm(h) * (1 + scale[..., None]) + shift[..., None].")
def check_film_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(h, emb, norm, to_scale_shift)`` → ``(B, C, T)`` must equal the FiLM inside :class:`ResBlock1D`
    (``block.norm2``, ``block.film``): plugged into the block, it must reproduce ``block(x, emb)``."""
    for name, block, x, h, emb in film_cases():
        where = f"for {name}"
        args = (h.clone(), emb.clone())
        with torch.no_grad():
            got = _float_tensor(ctx.call(fn, *args, block.norm2, block.film), "film", tuple(h.shape), where,
                                "modulated features")
        _unchanged((h, emb), args, where)
        expected = reference_film(h, emb, block.norm2, block.film)
        with torch.no_grad():
            again = ctx.call(fn, h.clone(), emb.clone(), block.norm2, block.film)
        if not (isinstance(again, torch.Tensor) and torch.equal(again.detach(), got)):
            raise WrongAnswer(f"{where}: two calls with the same inputs gave different outputs: use the layers "
                              "passed in (norm, to_scale_shift), do not create new ones inside your function")
        if _same(got, expected, atol=1e-4):
            with torch.no_grad():
                out = block.conv2(F.silu(got)) + block.shortcut(x)
                library = block(x, emb)
            if not _same(out, library, atol=1e-4):  # the reference itself disagrees with the library: a course bug
                raise RuntimeError("ex07's FiLM reference no longer matches ResBlock1D")
            continue
        hint = next((text for kwargs, text in FILM_VARIANTS
                     if (not kwargs.get("along_time") or h.shape[0] == h.shape[1] == h.shape[2])
                     and _same(got, reference_film(h, emb, block.norm2, block.film, **kwargs), atol=1e-4)), None)
        if hint is None:
            hint = ("scale, shift = to_scale_shift(SiLU(emb)) split in two along channels, each (B, C, 1); "
                    "return norm(h)·(1 + scale) + shift")
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 6: the v-prediction loss and one training step
# --------------------------------------------------------------------------------------------------------


STEP_LR = 0.05
STALE_GRAD = 0.3  # what the check leaves in every .grad before calling the step: a missed zero_grad shows


def train_step_net() -> UNet1D:
    """The toy U-Net the check trains (unconditional, 64-sample signals), random weights from a fixed seed; its
    output convolution is random too (a fresh one is zero, and then no gradient reaches the inner layers)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(76)
        net = UNet1D(UNet1DConfig(in_channels=1, out_channels=1, channels=8, channel_mults=[1, 2], strides=[4, 4],
                                  num_res_blocks=[1, 1], self_attn_stages=[False, False],
                                  cross_attn_stages=[False, False], text_dim=None, num_heads=2, num_groups=4))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return net


def train_step_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(description, x0, t, noise)``: toy sines (B, 1, 64) of amplitude 0.8 at times that include both ends."""
    g = seeded(76)
    cases = []
    for times in ([0.02, 0.3, 0.55, 0.8, 0.97, 1.0], [0.1, 0.45, 0.9]):
        b = len(times)
        k = torch.arange(64, dtype=torch.float32)
        cycles = torch.tensor([2.0, 6.0])[torch.randint(0, 2, (b,), generator=g)]
        phase = 2 * torch.pi * torch.rand(b, generator=g)
        x0 = (0.8 * torch.sin(2 * torch.pi * cycles[:, None] * k / 64 + phase[:, None]))[:, None]
        cases.append((f"x0 of shape {tuple(x0.shape)} (toy sines), t = {times}", x0, torch.tensor(times),
                      torch.randn(x0.shape, generator=g)))
    return cases


def reference_train_step(net: UNet1D, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, max_norm: float,
                         *, target: str = "v", zero_grad: bool = True, clip: bool = True,
                         reduce: str = "mean", step: bool = True) -> float:
    """One step on ``net`` in place: ``GaussianDiffusion.loss`` (cosine, v) → backward → clip → :class:`PlainSGD`.
    ``net``'s ``.grad`` hold :data:`STALE_GRAD` on entry, as in the check. Keywords build the wrong variants the
    check recognises: another target (``"eps"``, ``"x0"``, ``"-v"``, ``"alpha_bar"``: ᾱ and 1 − ᾱ as the scales),
    the squared error summed, no ``zero_grad``, no clipping, no step. Returns the loss."""
    a, s = alpha_sigma("cosine", t)
    a, s = a.view(-1, 1, 1), s.view(-1, 1, 1)
    if target == "alpha_bar":
        a, s = a ** 2, s ** 2
    x_t = a * x0 + s * noise
    y = {"v": a * noise - s * x0, "-v": s * x0 - a * noise, "eps": noise, "x0": x0, "alpha_bar": a * noise - s * x0}
    err = (net(x_t, t) - y[target]).pow(2)
    loss = err.mean() if reduce == "mean" else err.sum()
    optimiser = PlainSGD(net.parameters(), STEP_LR)
    if zero_grad:
        optimiser.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if step:
        optimiser.step()
    return float(loss.detach())


TRAIN_STEP_VARIANTS: list[tuple[dict, str]] = [
    (dict(target="eps"), "the target is the velocity v = α·ε − σ·x0, not the noise ε (that is ε-prediction's loss)"),
    (dict(target="x0"), "the target is the velocity v = α·ε − σ·x0, not the clean signal x0"),
    (dict(target="-v"), "the sign of v: v = α·ε − σ·x0 (Salimans & Ho 2022), not σ·x0 − α·ε"),
    (dict(target="alpha_bar"), "alpha_sigma gives the scales α and σ; you squared them (ᾱ and 1 − ᾱ are their "
                               "variances): x_t = α·x0 + σ·ε and v = α·ε − σ·x0"),
    (dict(reduce="sum"), "take the MEAN of the squared error, not the sum: the loss must not grow with the batch and "
                         "the clip length"),
]
STEP_VARIANTS: list[tuple[dict, str]] = [
    (dict(zero_grad=False), "the gradients from before your step were still in .grad: call optimiser.zero_grad() "
                            "before loss.backward(), or they accumulate"),
    (dict(clip=False), "the gradient was not clipped: call torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm) "
                       "after backward and before the optimiser's step"),
    (dict(zero_grad=False, clip=False), "zero the old gradients before backward (optimiser.zero_grad()) and clip "
                                        "after it (clip_grad_norm_) before the step"),
    (dict(step=False), "the weights did not move: call optimiser.step() after backward (and after clipping)"),
]


def _stale(net: UNet1D) -> UNet1D:
    for p in net.parameters():
        p.grad = torch.full_like(p, STALE_GRAD)
    return net


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, atol=1e-6, rtol=1e-4) for p, q in zip(a.parameters(), b.parameters()))


@register_task("train_step", LESSON,
               hint_on_error="alpha, sigma = alpha_sigma('cosine', t), each .view(-1, 1, 1); x_t = alpha·x0 + sigma·noise; "
                             "v = alpha·noise − sigma·x0; loss = ((net(x_t, t) − v)²).mean(); then zero_grad, "
                             "backward, clip_grad_norm_(net.parameters(), max_norm), step; return loss.item().")
def check_train_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(net, optimiser, x0, t, noise, max_norm)`` → the loss (a float) must equal ``GaussianDiffusion.loss``
    (cosine schedule, v-prediction) on the same ``t`` and ``noise``, and afterwards ``net``'s weights must be the
    reference step's: old gradients cleared, backward, the gradient norm clipped to ``max_norm``, one SGD step."""
    base = train_step_net()
    library = GaussianDiffusion(GaussianDiffusionConfig(schedule="cosine", parameterisation="v", cond_drop=0.0))
    for name, x0, t, noise in train_step_cases():
        reference = _stale(train_step_net())
        probe = train_step_net()
        loss_lib, _ = library.loss(probe, x0, t=t, noise=noise)
        loss_lib.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(probe.parameters(), float("inf")))
        max_norm = round(0.5 * grad_norm, 4)  # a limit the step's gradient exceeds: clipping matters here
        where = f"for {name}, max_norm = {max_norm}"
        expected = reference_train_step(reference, x0, t, noise, max_norm)
        if abs(expected - float(loss_lib.detach())) > 1e-5 * max(1.0, abs(expected)):  # the reference vs the library
            raise RuntimeError("ex07's train_step reference no longer matches GaussianDiffusion.loss")
        student = _stale(train_step_net())
        inputs = (x0.clone(), t.clone(), noise.clone())
        value = ctx.call(fn, student, PlainSGD(student.parameters(), STEP_LR), *inputs, max_norm)
        _unchanged((x0, t, noise), inputs, where)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value.detach())
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise WrongAnswer(f"{where}: train_step should return the loss as a number (loss.item()), got "
                              f"{type(value).__name__}")
        if not abs(value - expected) <= 1e-4 * max(1.0, abs(expected)):
            hint = None
            for kwargs, text in TRAIN_STEP_VARIANTS:
                if abs(value - reference_train_step(_stale(train_step_net()), x0, t, noise, max_norm, **kwargs)) \
                        <= 1e-4 * max(1.0, abs(value)):
                    hint = text
                    break
            raise WrongAnswer(f"{where}: expected the loss {expected:.5f}, got {value:.5f}: "
                              f"{hint or 'x_t = α·x0 + σ·ε, the target v = α·ε − σ·x0, the mean squared error'}")
        if _same_weights(student, reference):
            continue
        hint = None
        if _same_weights(student, base):
            hint = STEP_VARIANTS[-1][1]
        for kwargs, text in STEP_VARIANTS[:-1]:
            if hint is None:
                variant = _stale(train_step_net())
                reference_train_step(variant, x0, t, noise, max_norm, **kwargs)
                if _same_weights(student, variant):
                    hint = text
        raise WrongAnswer(f"{where}: the loss is right, but the weights after your step are not the reference's: "
                          f"{hint or 'zero_grad, backward, clip_grad_norm_(..., max_norm), then step, in that order'}")
