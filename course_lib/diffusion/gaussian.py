"""Gaussian diffusion in continuous time: schedules, the forward process, ε / v / x₀ parameterisations, the
training loss, and the ancestral (DDPM) and DDIM samplers, as Imagen and Noise2Music use them.

**One convention throughout** (variance preserving, Kingma et al. 2021 "VDM" notation, continuous time
``t ∈ [0, 1]``, ``t = 0`` data and ``t = 1`` noise)::

    x_t = α_t x₀ + σ_t ε,     ε ~ N(0, I),     α_t² + σ_t² = 1
    ᾱ(t) = α_t²               (DDPM's "alpha-bar", Ho et al. 2020 eq. 4: q(x_t|x₀) = N(√ᾱ x₀, (1 − ᾱ) I))
    log_snr(t) = log(α_t² / σ_t²) = log(ᾱ / (1 − ᾱ))

Schedules (``SCHEDULES``), each with ``ᾱ(0) = 1`` (``log_snr(0) = +∞``) and ``ᾱ`` decreasing in ``t``:

* ``"linear"``: the continuous-time limit of DDPM's β linear from 1e-4 to 0.02 over T = 1000 steps
  (Song et al. 2021's VP SDE with β_min = 0.1, β_max = 20): ``ᾱ(t) = exp(−(0.1 t + 9.95 t²))``,
  ``ᾱ(1) ≈ 4.3e-5`` (``log_snr(1) ≈ −10.05``). DDPM's own discrete schedule is :func:`ddpm_betas` +
  :func:`discrete_alpha_bar`; at ``t = i / T`` the two agree to within 0.07 in ``log ᾱ``.
* ``"cosine"``: Nichol & Dhariwal 2021 eq. 17, ``ᾱ(t) = cos²((t + s)/(1 + s)·π/2) / cos²(s/(1 + s)·π/2)``
  with ``s = 0.008``. It reaches 0 at ``t = 1``; like Nichol & Dhariwal's clipping of β at 0.999, ``ᾱ`` is
  clipped from below at :data:`ALPHA_BAR_MIN` ``= sigmoid(−20) ≈ 2.1e-9`` (``log_snr ≥ −20``), which is
  about where their T = 1000 discrete schedule ends.

Parameterisations: the network predicts ``ε`` (Ho et al. 2020), ``v = α_t ε − σ_t x₀`` (Salimans & Ho 2022,
§4) or ``x₀``; the conversions below are exact identities given ``(x_t, α_t, σ_t)``. Near ``t = 1`` the
ε → x₀ conversion divides by ``α_t ≈ 0`` and near ``t = 0`` the x₀ → ε one divides by ``σ_t ≈ 0``; the v
conversions never divide, which is why v-prediction behaves at both ends.

Noise2Music's choices (Huang et al. 2023) — *unconfirmed here*, the course could not read the paper's
appendix: ε-prediction, the cosine schedule for the generator and the linear one for the cascaders, 10%
condition dropout (zeroed cross-attention: the course's all-False text mask), guidance scales near 10
(generator) and 5 (cascader). They are :meth:`GaussianDiffusionConfig.paper`'s values. Static clipping
of x₀ to ``[−1, 1]`` is Imagen's (Saharia et al. 2022 §2.3); dynamic thresholding is optional.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from course_lib.nn.guidance import cfg_mix, drop_condition, null_mask_like

__all__ = [
    "ALPHA_BAR_MIN", "SCHEDULES", "PARAMETERISATIONS", "alpha_bar", "log_snr", "alpha_sigma",
    "linear_alpha_bar", "cosine_alpha_bar", "ddpm_betas", "discrete_alpha_bar",
    "eps_to_x0", "x0_to_eps", "v_to_x0", "v_to_eps", "x0_eps_to_v", "dynamic_threshold",
    "GaussianDiffusionConfig", "GaussianDiffusion", "guided",
]

SCHEDULES = ("linear", "cosine")
PARAMETERISATIONS = ("eps", "v", "x0")
LOG_SNR_MIN = -20.0
ALPHA_BAR_MIN = 1.0 / (1.0 + math.exp(-LOG_SNR_MIN))  # sigmoid(−20) ≈ 2.06e-9

ModelFn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------------- schedules
def _as_time(t: Tensor | float) -> tuple[Tensor, torch.dtype]:
    """``t`` as a float64 tensor (for precision near the ends) and the dtype to return."""
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    out_dtype = t.dtype if t.is_floating_point() else torch.float32
    t64 = t.to(torch.float64)
    if t64.numel() and (t64.min() < 0 or t64.max() > 1 or torch.isnan(t64).any()):
        raise ValueError(f"diffusion time t must lie in [0, 1] (0 = data, 1 = noise), got values in "
                         f"[{t64.min().item():.4g}, {t64.max().item():.4g}]")
    return t64, out_dtype


def linear_alpha_bar(t: Tensor | float, beta_start: float = 1e-4, beta_end: float = 0.02,
                     num_steps: int = 1000) -> Tensor:
    """``ᾱ(t)`` of DDPM's linear β schedule in continuous time, same shape as ``t`` (values in [0, 1]).

    ``ᾱ(t) = exp(−∫₀ᵗ β(u) du)`` with ``β(u) = num_steps · (beta_start + (beta_end − beta_start) u)``: the
    limit of ``Π (1 − β_i)`` for DDPM's ``β_i`` linear from ``beta_start`` to ``beta_end`` over ``num_steps``
    (Ho et al. 2020 §4; Song et al. 2021 eq. 11 with β_min = 0.1, β_max = 20). Clipped below at
    :data:`ALPHA_BAR_MIN`.
    """
    t64, dtype = _as_time(t)
    integral = num_steps * (beta_start * t64 + 0.5 * (beta_end - beta_start) * t64 ** 2)
    return torch.exp(-integral).clamp(min=ALPHA_BAR_MIN).to(dtype)


def _cosine_raw(t64: Tensor, s: float) -> Tensor:
    f = torch.cos((t64 + s) / (1 + s) * (math.pi / 2)) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_alpha_bar(t: Tensor | float, s: float = 0.008) -> Tensor:
    """``ᾱ(t)`` of Nichol & Dhariwal's cosine schedule (2021, eq. 17), same shape as ``t``, in [ᾱ_min, 1].

    ``ᾱ(t) = f(t) / f(0)``, ``f(t) = cos²((t + s)/(1 + s) · π/2)``, ``s = 0.008`` (their offset that keeps β
    from being too small near ``t = 0``). ``ᾱ(0) = 1``; it is clipped below at :data:`ALPHA_BAR_MIN` (the
    continuous counterpart of their β ≤ 0.999 clip), which only bites for ``t > 0.99999``.
    """
    t64, dtype = _as_time(t)
    return _cosine_raw(t64, s).clamp(min=ALPHA_BAR_MIN, max=1.0).to(dtype)


def alpha_bar(schedule: str, t: Tensor | float) -> Tensor:
    """``ᾱ(t) = α_t²`` of the named schedule (``"linear"`` or ``"cosine"``), same shape as ``t``."""
    if schedule == "linear":
        return linear_alpha_bar(t)
    if schedule == "cosine":
        return cosine_alpha_bar(t)
    raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {SCHEDULES}")


def _float64(t: Tensor | float) -> tuple[Tensor, torch.dtype]:
    """``t`` as float64 and the float dtype results are returned in (``t``'s own, or float32)."""
    t = t if isinstance(t, Tensor) else torch.tensor(float(t))
    return t.to(torch.float64), (t.dtype if t.is_floating_point() else torch.float32)


def log_snr(schedule: str, t: Tensor | float) -> Tensor:
    """``log(α_t² / σ_t²) = log ᾱ − log(1 − ᾱ)`` (natural log), same shape as ``t``; ``+∞`` at ``t = 0``."""
    t64, dtype = _float64(t)
    ab = alpha_bar(schedule, t64)
    return (torch.log(ab) - torch.log1p(-ab)).to(dtype)


def alpha_sigma(schedule: str, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """``(α_t, σ_t) = (√ᾱ, √(1 − ᾱ))``, each the shape of ``t``: the signal and noise scales of ``x_t``."""
    t64, dtype = _float64(t)
    ab = alpha_bar(schedule, t64)
    return ab.sqrt().to(dtype), (1 - ab).clamp(min=0).sqrt().to(dtype)


def ddpm_betas(schedule: str = "linear", num_steps: int = 1000) -> Tensor:
    """Discrete β_1..β_T (float64, shape ``(num_steps,)``) of DDPM's schedules.

    ``"linear"``: Ho et al. 2020's ``linspace(1e-4, 0.02, T)`` (scaled by ``1000 / T`` for other T, as in
    Nichol & Dhariwal's code, so the total noise stays the same). ``"cosine"``: Nichol & Dhariwal eq. 17,
    ``β_i = 1 − ᾱ(i/T) / ᾱ((i−1)/T)`` clipped at 0.999.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"ddpm_betas: num_steps must be a positive int, got {num_steps!r}")
    if schedule == "linear":
        scale = 1000 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    if schedule == "cosine":
        f = _cosine_raw(torch.linspace(0, 1, num_steps + 1, dtype=torch.float64), 0.008)
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {SCHEDULES}")


def discrete_alpha_bar(betas: Tensor) -> Tensor:
    """``ᾱ_i = Π_{j ≤ i} (1 − β_j)`` for ``i = 1..T`` (Ho et al. 2020 eq. 4), same shape as ``betas`` ``(T,)``."""
    if not isinstance(betas, Tensor) or betas.dim() != 1 or (betas <= 0).any() or (betas >= 1).any():
        raise ValueError("discrete_alpha_bar expects a 1-D tensor of betas in (0, 1)")
    return torch.cumprod(1 - betas, dim=0)


# -------------------------------------------------------------------------------------- parameterisations
def eps_to_x0(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``x₀ = (x_t − σ ε) / α`` (Ho et al. 2020 eq. 15); ``alpha``, ``sigma`` broadcast against ``x_t``."""
    return (x_t - sigma * eps) / alpha


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``ε = (x_t − α x₀) / σ``; ``alpha``, ``sigma`` broadcast against ``x_t``."""
    return (x_t - alpha * x0) / sigma


def v_to_x0(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``x₀ = α x_t − σ v`` (Salimans & Ho 2022 §4, using α² + σ² = 1): no division anywhere."""
    return alpha * x_t - sigma * v


def v_to_eps(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``ε = σ x_t + α v`` (Salimans & Ho 2022 §4): no division anywhere."""
    return sigma * x_t + alpha * v


def x0_eps_to_v(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The velocity ``v = α ε − σ x₀`` (Salimans & Ho 2022 eq. in §4): the v-prediction target."""
    return alpha * eps - sigma * x0


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022 §2.3) of an x₀ estimate ``(B, ...)``.

    Per item, ``s = max(1, quantile(|x₀|, percentile))``; returns ``clamp(x₀, −s, s) / s``, so values stay
    in [−1, 1] and saturated items are pulled in rather than flattened. Imagen's percentile is not stated
    in what the course could read (imagen-pytorch uses 0.9–0.95); ``percentile`` must be in (0, 1].
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_threshold: percentile must be in (0, 1], got {percentile}")
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat.float(), percentile, dim=1).to(x0.dtype).clamp(min=1.0)
    s = s.view(-1, *([1] * (x0.dim() - 1)))
    return x0.clamp(-s, s) / s


# ------------------------------------------------------------------------------------------------- config
@dataclass
class GaussianDiffusionConfig:
    """Settings of :class:`GaussianDiffusion`.

    ``schedule``: ``"cosine"`` or ``"linear"`` (module docstring). ``parameterisation``: what the network
    predicts, ``"eps"``, ``"v"`` or ``"x0"``. ``num_steps``: default number of sampling steps (DDPM and
    DDIM). ``clip_x0``: ``True`` clips the x₀ estimate to [−1, 1] while sampling (Imagen's static
    thresholding; audio lives in [−1, 1]), a float ``c`` clips to [−c, c], ``False`` does not clip.
    ``dynamic_threshold``: ``None`` or a percentile in (0, 1] for Imagen's dynamic thresholding (replaces
    the static clip). ``cond_drop``: probability of replacing the text by the null condition in
    :meth:`GaussianDiffusion.loss` (10%, as Imagen and, unconfirmed, Noise2Music). ``guidance_scale``: the
    classifier-free guidance scale the caller is meant to sample with (read by pipelines; 1 = no guidance;
    the default 3 is the course's choice for small models, :meth:`paper` has Noise2Music's).
    """

    schedule: str = "cosine"
    parameterisation: str = "eps"
    num_steps: int = 50
    clip_x0: bool | float = True
    dynamic_threshold: float | None = None
    cond_drop: float = 0.1
    guidance_scale: float = 3.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"GaussianDiffusionConfig.schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"GaussianDiffusionConfig.parameterisation: expected one of {PARAMETERISATIONS}, "
                             f"got {self.parameterisation!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"GaussianDiffusionConfig.num_steps: must be a positive int, got {self.num_steps!r}")
        if not isinstance(self.clip_x0, bool) and (not isinstance(self.clip_x0, (int, float)) or self.clip_x0 <= 0):
            raise ValueError(f"GaussianDiffusionConfig.clip_x0: must be a bool or a positive float, got "
                             f"{self.clip_x0!r}")
        if self.dynamic_threshold is not None and not 0.0 < self.dynamic_threshold <= 1.0:
            raise ValueError(f"GaussianDiffusionConfig.dynamic_threshold: must be None or in (0, 1], got "
                             f"{self.dynamic_threshold!r}")
        if not 0.0 <= self.cond_drop <= 1.0:
            raise ValueError(f"GaussianDiffusionConfig.cond_drop: must be a probability, got {self.cond_drop!r}")
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)):
            raise ValueError(f"GaussianDiffusionConfig.guidance_scale: must be a number, got {self.guidance_scale!r}")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GaussianDiffusionConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown GaussianDiffusionConfig keys {unknown}; known keys: {sorted(names)}")
        return cls(**data)

    @classmethod
    def paper(cls, stage: str = "generator") -> GaussianDiffusionConfig:
        """Noise2Music's settings for ``stage`` ``"generator"`` or ``"cascader"`` — UNCONFIRMED (the course's
        reference notes list them as still to be checked in the paper's appendix): ε-prediction, cosine (generator) / linear (cascader) schedule,
        10% condition dropout, guidance scale 10 (generator) / 5 (cascader). ``num_steps`` is the course's."""
        if stage == "generator":
            return cls(schedule="cosine", parameterisation="eps", cond_drop=0.1, guidance_scale=10.0)
        if stage == "cascader":
            return cls(schedule="linear", parameterisation="eps", cond_drop=0.1, guidance_scale=5.0)
        raise ValueError(f"unknown Noise2Music stage {stage!r}; expected 'generator' or 'cascader'")


# ------------------------------------------------------------------------------------------------ diffusion
class GaussianDiffusion:
    """The forward process, loss and samplers of a continuous-time Gaussian diffusion (module docstring).

    Holds no network: the loss and samplers take a ``model_fn(x_t, t) → prediction`` with ``x_t`` ``(B, C,
    T)`` (any ``(B, ...)`` works) and ``t`` ``(B,)`` float in [0, 1]; the prediction has ``x_t``'s shape and
    is ε, v or x₀ according to ``config.parameterisation``. Conditioning and classifier-free guidance live
    in ``model_fn`` (see :func:`guided`).
    """

    def __init__(self, config: GaussianDiffusionConfig | None = None, **overrides) -> None:
        config = config or GaussianDiffusionConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        config.validate()
        self.config = config

    # -- forward process
    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(α_t, σ_t)`` for ``t`` ``(B,)``, shaped ``(B, 1, …, 1)`` to broadcast against ``like`` ``(B, ...)``."""
        t = self._check_t(t, like)
        a, s = alpha_sigma(self.config.schedule, t)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a.to(like.dtype).view(shape), s.to(like.dtype).view(shape)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t = α_t x₀ + σ_t ε`` from q(x_t | x₀) (Ho et al. 2020 eq. 4); ``x₀`` ``(B, ...)``, ``t`` ``(B,)``.

        ``noise`` (same shape as ``x₀``) is ε; if omitted it is drawn from ``generator``.
        """
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"q_sample: noise has shape {tuple(noise.shape)}, x0 has {tuple(x0.shape)}")
        a, s = self.alpha_sigma(t, x0)
        return a * x0 + s * noise

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``α_t x₀`` ``(B, ...)`` and variance ``σ_t² = 1 − ᾱ(t)`` ``(B, 1, …, 1)`` of q(x_t | x₀)."""
        a, s = self.alpha_sigma(t, x0)
        return a * x0, s ** 2

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(B, ...)`` and variance ``(B, 1, …, 1)`` of q(x_s | x_t, x₀) for ``0 ≤ s < t`` (VDM eq. 30–33).

        With ``α_{t|s} = α_t / α_s`` and ``σ²_{t|s} = σ_t² − α²_{t|s} σ_s²``: mean ``= (α_{t|s} σ_s² / σ_t²)
        x_t + (α_s σ²_{t|s} / σ_t²) x₀``, variance ``= σ²_{t|s} σ_s² / σ_t²``. With ``s = t − 1/T`` on DDPM's
        grid this is Ho et al. 2020 eq. 6–7 (μ̃_t and β̃_t).
        """
        if (s >= t).any():
            raise ValueError("q_posterior_mean_variance needs s < t for every item")
        return _posterior(x0, x_t, *self.alpha_sigma(t, x_t), *self.alpha_sigma(s, x_t))

    # -- parameterisations
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of ``config.parameterisation`` for ``x_t = α_t x₀ + σ_t ε``: ε, v or x₀."""
        p = self.config.parameterisation
        if p == "eps":
            return noise
        if p == "x0":
            return x0
        a, s = self.alpha_sigma(t, x0)
        return x0_eps_to_v(x0, noise, a, s)

    def predict_x0_eps(self, pred: Tensor, x_t: Tensor, t: Tensor, clip: bool = True) -> tuple[Tensor, Tensor]:
        """The model's x₀ and ε estimates ``(x̂₀, ε̂)``, both shaped like ``x_t``, from its prediction ``pred``.

        With ``clip`` (and ``config.clip_x0`` / ``config.dynamic_threshold`` set), x̂₀ is clipped or
        thresholded and ε̂ recomputed from the clipped x̂₀, so the pair stays consistent with ``x_t``
        (as DDIM does; Song et al. 2021 eq. 12).
        """
        return self._x0_eps(pred, x_t, *self.alpha_sigma(t, x_t), clip)

    def _x0_eps(self, pred: Tensor, x_t: Tensor, a: Tensor, s: Tensor, clip: bool) -> tuple[Tensor, Tensor]:
        if not isinstance(pred, Tensor) or pred.shape != x_t.shape:
            got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ValueError(f"model prediction has shape {got}, expected x_t's {tuple(x_t.shape)}")
        p = self.config.parameterisation
        if p == "eps":
            x0, eps = eps_to_x0(x_t, pred, a, s), pred
        elif p == "v":
            x0, eps = v_to_x0(x_t, pred, a, s), v_to_eps(x_t, pred, a, s)
        else:
            x0, eps = pred, x0_to_eps(x_t, pred, a, s)
        if clip:
            clipped = self._clip(x0)
            if clipped is not x0:
                x0, eps = clipped, x0_to_eps(x_t, clipped, a, s)
        return x0, eps

    def _clip(self, x0: Tensor) -> Tensor:
        c = self.config
        if c.dynamic_threshold is not None:
            return dynamic_threshold(x0, c.dynamic_threshold)
        if c.clip_x0 is False:
            return x0
        bound = 1.0 if c.clip_x0 is True else float(c.clip_x0)
        return x0.clamp(-bound, bound)

    # -- training
    def loss(self, model_fn: Callable[..., Tensor], x0: Tensor, *, t: Tensor | None = None,
             noise: Tensor | None = None, generator: torch.Generator | None = None,
             **model_kwargs) -> tuple[Tensor, dict[str, float]]:
        """The denoising loss ``E_{t, ε} ‖f(x_t, t) − target‖²`` (mean over all elements) and its metrics.

        ``t ~ U(0, 1)`` and ``ε ~ N(0, I)`` are drawn (from ``generator``) unless given; the target is ε, v
        or x₀ (``config.parameterisation``) with uniform weight over ``t``: Ho et al.'s "simple" loss for ε,
        which for v is the "SNR + 1" weighting of the x₀ error (Salimans & Ho 2022 §4). ``model_fn`` is
        called as ``model_fn(x_t, t, **model_kwargs)``. A ``text_mask`` keyword (bool ``(B, L)``) is the one
        argument the loss touches: each row becomes all False (the null condition) with probability
        ``config.cond_drop``, classifier-free guidance's condition dropout. Metrics: ``loss``, ``x0_mse``
        (the implied x₀ error, comparable across parameterisations), ``cond_dropped`` (fraction dropped).
        """
        if not isinstance(x0, Tensor) or x0.dim() < 2 or not x0.is_floating_point():
            raise ValueError(f"loss expects float x0 of shape (B, C, T), got "
                             f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}")
        b = x0.shape[0]
        if t is None:
            t = torch.rand(b, generator=generator, device=x0.device, dtype=x0.dtype)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        dropped = 0.0
        if model_kwargs.get("text_mask") is not None and self.config.cond_drop > 0:
            mask = model_kwargs["text_mask"]
            model_kwargs = dict(model_kwargs, text_mask=drop_condition(mask, self.config.cond_drop, generator))
            dropped = float((mask.any(1) & ~model_kwargs["text_mask"].any(1)).float().mean())
        x_t = self.q_sample(x0, t, noise)
        pred = model_fn(x_t, t, **model_kwargs)
        if not isinstance(pred, Tensor) or pred.shape != x0.shape:
            raise ValueError(f"model_fn returned {tuple(pred.shape) if isinstance(pred, Tensor) else type(pred)}"
                             f", expected x0's shape {tuple(x0.shape)}")
        loss = (pred.float() - self.target(x0, noise, t).float()).pow(2).mean()
        with torch.no_grad():
            x0_hat, _ = self.predict_x0_eps(pred.detach(), x_t, t, clip=False)
            x0_mse = float((x0_hat.float() - x0.float()).pow(2).mean())
        return loss, {"loss": float(loss.detach()), "x0_mse": x0_mse, "cond_dropped": dropped}

    # -- sampling
    def ddim_step_mean_var(self, x_t: Tensor, x0_hat: Tensor, eps_hat: Tensor, t: Tensor, s: Tensor,
                           eta: float = 0.0) -> tuple[Tensor, Tensor]:
        """Mean ``(B, ...)`` and variance ``(B, 1, …, 1)`` of one DDIM step t → s (Song et al. 2021 eq. 12).

        ``x_s = α_s x̂₀ + √(σ_s² − c²) ε̂ + c z`` with ``c² = η² · σ²_{t|s} σ_s² / σ_t²`` (eq. 16): ``η = 0`` is
        deterministic, ``η = 1`` has exactly the DDPM posterior variance (and mean, when ε̂ is consistent
        with x̂₀ and x_t).
        """
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        return _ddim(x0_hat, eps_hat, *self.alpha_sigma(t, x_t), *self.alpha_sigma(s, x_t), eta)

    def time_grid(self, steps: int | None = None, device: torch.device | str | None = None) -> Tensor:
        """``steps + 1`` times from 1 down to 0 (float32 ``(steps + 1,)``), evenly spaced in ``t``."""
        steps = self.config.num_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"number of sampling steps must be a positive int, got {steps!r}")
        return torch.linspace(1.0, 0.0, steps + 1, device=device)

    @torch.no_grad()
    def ddpm_sample(self, model_fn: ModelFn, shape: tuple[int, ...], steps: int | None = None,
                    generator: torch.Generator | None = None, *, x_T: Tensor | None = None,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                    return_trajectory: bool = False) -> Tensor | tuple[Tensor, dict[str, list[Tensor]]]:
        """Ancestral sampling (Ho et al. 2020 Alg. 2) from ``x_1 ~ N(0, I)`` of ``shape`` ``(B, C, T)``.

        Each step t → s draws from q(x_s | x_t, x̂₀), the posterior with the model's (clipped) x̂₀: mean
        μ̃ and variance β̃ (DDPM's "σ² = β̃" choice), on ``steps`` evenly spaced times (``config.num_steps`` by
        default; fewer than 1000 is the same posterior on a coarser grid). The last step lands on x̂₀.
        Returns ``x₀`` ``shape``, or ``(x₀, trajectory)`` with lists ``"t"``, ``"x_t"``, ``"x0_hat"``.
        """
        return self._sample(model_fn, shape, steps, generator, None, x_T, device, dtype, return_trajectory)

    @torch.no_grad()
    def ddim_sample(self, model_fn: ModelFn, shape: tuple[int, ...], steps: int | None = None,
                    eta: float = 0.0, generator: torch.Generator | None = None, *, x_T: Tensor | None = None,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                    return_trajectory: bool = False) -> Tensor | tuple[Tensor, dict[str, list[Tensor]]]:
        """DDIM sampling (Song et al. 2021 eq. 12) from ``x_1 ~ N(0, I)`` in ``steps`` steps, ``shape`` ``(B, C, T)``.

        ``eta = 0`` is deterministic (the same ``x_T`` always gives the same sample), ``eta = 1`` matches
        DDPM's posterior variance. Returns ``x₀`` or ``(x₀, trajectory)`` as :meth:`ddpm_sample`.
        """
        return self._sample(model_fn, shape, steps, generator, float(eta), x_T, device, dtype, return_trajectory)

    def _sample(self, model_fn, shape, steps, generator, eta, x_T, device, dtype, return_trajectory):
        if x_T is not None:
            x = x_T.clone()
            shape, device, dtype = tuple(x.shape), x.device, x.dtype
        else:
            shape = tuple(shape)
            if len(shape) < 2 or any(int(n) <= 0 for n in shape):
                raise ValueError(f"sample shape must be (B, C, T) with positive sizes, got {shape}")
            x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if eta is not None and eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        times = self.time_grid(steps, device=x.device).to(dtype)
        # α, σ on the whole grid at once (float64 inside alpha_sigma), as 0-d tensors that broadcast
        alphas, sigmas = (v.to(dtype) for v in alpha_sigma(self.config.schedule, times.to(torch.float64)))
        traj: dict[str, list[Tensor]] = {"t": [times[0].item()], "x_t": [x.cpu()], "x0_hat": []}
        b = shape[0]
        for i in range(len(times) - 1):
            a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
            x0_hat, eps_hat = self._x0_eps(model_fn(x, times[i].expand(b)), x, a_t, s_t, clip=True)
            if i == len(times) - 2:  # s = 0: α_s = 1, σ_s = 0, the step lands on x̂₀
                x = x0_hat
            else:
                if eta is None:
                    mean, var = _posterior(x0_hat, x, a_t, s_t, a_s, s_s)
                else:
                    mean, var = _ddim(x0_hat, eps_hat, a_t, s_t, a_s, s_s, eta)
                if eta is None or eta > 0:
                    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                    mean = mean + var.sqrt() * noise
                x = mean
            if return_trajectory:
                traj["t"].append(times[i + 1].item())
                traj["x_t"].append(x.cpu())
                traj["x0_hat"].append(x0_hat.cpu())
        return (x, traj) if return_trajectory else x

    def _check_t(self, t: Tensor, like: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.full((like.shape[0],), float(t), device=like.device)
        if t.dim() == 0:
            t = t.expand(like.shape[0])
        if t.dim() != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"diffusion time t must have shape (B,) = ({like.shape[0]},), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"GaussianDiffusion uses continuous time: t must be float in [0, 1], got {t.dtype}")
        return t


def _posterior(x0: Tensor, x_t: Tensor, a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_s | x_t, x₀) from the four scales (see ``q_posterior_mean_variance``)."""
    a_ts = a_t / a_s
    var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    mean = (a_ts * s_s ** 2 / s_t ** 2) * x_t + (a_s * var_ts / s_t ** 2) * x0
    return mean, var_ts * s_s ** 2 / s_t ** 2


def _ddim(x0: Tensor, eps: Tensor, a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor,
          eta: float) -> tuple[Tensor, Tensor]:
    """Mean and variance of one DDIM step from the four scales (see ``ddim_step_mean_var``)."""
    a_ts = a_t / a_s
    var = (eta ** 2) * (s_t ** 2 - a_ts ** 2 * s_s ** 2) * s_s ** 2 / s_t ** 2
    return a_s * x0 + (s_s ** 2 - var).clamp(min=0).sqrt() * eps, var


def guided(model: Callable[..., Tensor], cond: dict, null_cond: dict | None = None,
           scale: float = 1.0) -> ModelFn:
    """Wrap a conditional model into a ``model_fn(x_t, t)`` with classifier-free guidance (Ho & Salimans 2022).

    Returns ``x_t, t ↦ cfg_mix(model(x_t, t, **cond), model(x_t, t, **null_cond), scale)``, i.e. ``uncond +
    scale · (cond − uncond)`` applied to the model's raw prediction (ε or v), as Imagen does. ``null_cond``
    defaults to ``cond`` with its ``text_mask`` replaced by an all-False mask (the course's null condition).
    ``scale == 1`` calls the model once, without the unconditional branch.
    """
    if not isinstance(cond, dict):
        raise ValueError("guided: cond must be a dict of keyword arguments for the model (text=..., text_mask=...)")
    if null_cond is None:
        if cond.get("text_mask") is None:
            raise ValueError("guided: without null_cond, cond must hold a bool 'text_mask' (B, L) to null out")
        null_cond = dict(cond, text_mask=null_mask_like(cond["text_mask"]))

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        c = model(x_t, t, **cond)
        if scale == 1:
            return c
        return cfg_mix(c, model(x_t, t, **null_cond), scale)

    return model_fn
