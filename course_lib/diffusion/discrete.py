"""Mask-and-replace discrete diffusion (VQ-Diffusion, Gu et al. 2022), the process Diffsound runs over mel tokens.

Tokens are categorical: ``K`` codes (ids ``0..K-1``) plus a ``[MASK]`` token with id ``K``. One forward step
``t`` (``t = 1..T``) keeps a code with probability ``α_t + β_t``, replaces it by each of the ``K`` codes with
``β_t`` (so by another one with ``(K−1)β_t``) and masks it with ``γ_t``; ``[MASK]`` stays ``[MASK]``
(VQ-Diffusion's mask-and-replace strategy). As a matrix over the ``K + 1`` classes, ``q(x_t = j | x_{t-1} = i) = Q_t[i, j]``::

          ┌ α_t+β_t   β_t    …   β_t    γ_t ┐
    Q_t = │   β_t   α_t+β_t  …   β_t    γ_t │        α_t + K·β_t + γ_t = 1
          │    …                             │
          └    0       0     …    0      1  ┘

Products of such matrices have the same form, so ``q(x_t | x_0)`` is closed form (VQ-Diffusion's ``q_pred``) with the cumulative
``ᾱ_t = Π α``, ``1 − γ̄_t = Π (1 − γ)`` and ``β̄_t = (1 − ᾱ_t − γ̄_t) / K``; more generally the transition from
``s`` to ``t > s`` is mask-and-replace with ``α_{t|s} = ᾱ_t / ᾱ_s``, ``1 − γ_{t|s} = (1 − γ̄_t) / (1 − γ̄_s)``.
The schedule (:class:`MaskReplaceSchedule`, VQ-Diffusion's ``alpha_schedule``) is linear in the cumulative
terms: ``ᾱ`` from 0.99999 down to 0.000009 and ``γ̄`` from 0.000009 up to ``γ̄_T`` over ``T = 100`` steps
(``γ̄_T = 0.9`` in Diffsound, 0.99999 in VQ-Diffusion).

The posterior ``q(x_{t-1} | x_t, x_0) = q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0)`` (Bayes' rule) drives
both the loss and sampling. The network predicts ``p_θ(x_0 | x_t)`` and the reverse step marginalises the
posterior over that prediction (the "x_0-parameterisation", VQ-Diffusion's ``q_posterior``):
``p_θ(x_{t-1} | x_t) = Σ_{x̃_0} q(x_{t-1} | x_t, x̃_0) p_θ(x̃_0 | x_t)``.

Everything is computed on log-probabilities (``logaddexp``/``logsumexp``) with exact zeros floored at
:data:`LOG_ZERO` ``= log(1e-30)`` instead of ``-inf``, so the schedule's extreme ends (``ᾱ`` near 1e-5,
``β̄_1`` near 4e-9) never give ``NaN``, ``-inf − (-inf)`` or negative probabilities. :class:`DiscreteDiffusion`
holds the schedule as float32 log tables (non-persistent buffers: a model's checkpoint holds no schedule, the
config rebuilds it) and has no parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOG_ZERO", "DiscreteDiffusion", "MaskReplaceSchedule", "index_to_log_onehot", "log_add_exp"]

LOG_ZERO = math.log(1e-30)
"""The log-probability used for an exact zero (VQ-Diffusion's floor): finite, so no ``-inf`` arithmetic."""


def log_add_exp(a: Tensor, b: Tensor) -> Tensor:
    """``log(exp(a) + exp(b))`` elementwise without overflow (broadcasting; :func:`torch.logaddexp`)."""
    return torch.logaddexp(a, b)


def index_to_log_onehot(x: Tensor, num_classes: int) -> Tensor:
    """Ids ``(B, *)`` long → log one-hot ``(B, num_classes, *)`` float32: 0 at the id, :data:`LOG_ZERO` elsewhere."""
    if not isinstance(x, Tensor) or x.is_floating_point() or x.dtype == torch.bool or x.dim() < 1:
        raise ValueError(f"index_to_log_onehot expects integer ids (B, ...), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
        raise ValueError(f"index_to_log_onehot: ids must be in [0, {num_classes - 1}], got [{int(x.min())}, "
                         f"{int(x.max())}]")
    onehot = F.one_hot(x.long(), num_classes).movedim(-1, 1)
    return torch.where(onehot.bool(), 0.0, LOG_ZERO).to(torch.float32)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class MaskReplaceSchedule:
    """The mask-and-replace noise schedule, linear in the cumulative terms (VQ-Diffusion's ``alpha_schedule``).

    ``num_classes`` = K codes (the [MASK] id is K), ``num_steps`` = T. For ``t = 1..T``:
    ``ᾱ_t = ᾱ_start + (t−1)/(T−1) · (ᾱ_end − ᾱ_start)`` and likewise ``γ̄_t`` (the cumulative products of
    the closed form, chosen linear); ``β̄_t = (1 − ᾱ_t − γ̄_t) / K``. Per step: ``α_t = ᾱ_t / ᾱ_{t−1}``,
    ``γ_t = 1 − (1 − γ̄_t) / (1 − γ̄_{t−1})``, ``β_t = (1 − α_t − γ_t) / K`` with ``ᾱ_0 = 1``, ``γ̄_0 = 0``.
    Defaults are Diffsound's (``γ̄_T = 0.9``; VQ-Diffusion's is 0.99999). The ``/ K`` is VQ-Diffusion's
    (``N = num_classes − 1``); Diffsound's copy divides by ``K + 1``, so its rows sum to slightly less than 1.
    Every tensor property is float64
    of length ``T + 1`` indexed by ``t`` (index 0 is the identity: ``ᾱ_0 = α_0 = 1``, the rest 0).

    Validation (``ValueError`` naming the argument): probabilities in [0, 1]; ``ᾱ`` must not rise and ``γ̄``
    must not fall; ``ᾱ + γ̄ < 1`` at both ends, i.e. ``β̄_t > 0`` (the posterior divides by ``q(x_t | x_0)``,
    which a pure-mask schedule makes zero for every other code; keep a tiny replacement mass instead); and
    every per-step ``β_t ≥ 0``.
    """

    num_classes: int
    num_steps: int = 100
    alpha_bar_start: float = 0.99999
    alpha_bar_end: float = 0.000009
    gamma_bar_start: float = 0.000009
    gamma_bar_end: float = 0.9

    def __post_init__(self) -> None:
        for name, low in (("num_classes", 2), ("num_steps", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MaskReplaceSchedule.{name}: must be an int >= {low}, got {value!r}")
        for name in ("alpha_bar_start", "alpha_bar_end", "gamma_bar_start", "gamma_bar_end"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"MaskReplaceSchedule.{name}: must be a probability in [0, 1], got {value!r}")
        if self.alpha_bar_end > self.alpha_bar_start:
            raise ValueError(f"MaskReplaceSchedule: alpha_bar_end={self.alpha_bar_end} must be <= alpha_bar_start="
                             f"{self.alpha_bar_start} (the kept mass ᾱ_t falls with t)")
        if self.gamma_bar_end < self.gamma_bar_start:
            raise ValueError(f"MaskReplaceSchedule: gamma_bar_end={self.gamma_bar_end} must be >= gamma_bar_start="
                             f"{self.gamma_bar_start} (the masked mass γ̄_t rises with t)")
        for end in ("start", "end"):
            a, c = getattr(self, f"alpha_bar_{end}"), getattr(self, f"gamma_bar_{end}")
            if a + c >= 1.0:
                raise ValueError(f"MaskReplaceSchedule: alpha_bar_{end} + gamma_bar_{end} = {a + c} must be < 1 so "
                                 f"that the replacement mass K·β̄ = 1 − ᾱ − γ̄ stays > 0 (VQ-Diffusion: "
                                 f"alpha_bar_end=0.000009, gamma_bar_end=0.99999)")
        beta = self.beta
        if (beta < -1e-12).any():
            t = int((beta < -1e-12).nonzero()[0])
            raise ValueError(f"MaskReplaceSchedule: the per-step replacement probability β_{t} = {float(beta[t]):.3g} "
                             f"< 0 with alpha_bar_start/end={self.alpha_bar_start}/{self.alpha_bar_end} and "
                             f"gamma_bar_start/end={self.gamma_bar_start}/{self.gamma_bar_end}: ᾱ must fall at least "
                             "as fast as 1 − γ̄ (α_t + γ_t <= 1)")

    # ---- cumulative terms, index t = 0..T -----------------------------------------------------------------

    def _ramp(self, start: float, end: float, first: float) -> Tensor:
        # Always on the CPU (also inside a ``with torch.device("meta")`` block): the schedule is data, not a layer.
        steps = torch.arange(self.num_steps, dtype=torch.float64, device="cpu") / (self.num_steps - 1)
        return torch.cat([torch.tensor([first], dtype=torch.float64, device="cpu"), start + steps * (end - start)])

    @property
    def alpha_bar(self) -> Tensor:
        """``ᾱ_t`` (T+1,) float64: the probability that a code is still itself *by the α path* after t steps."""
        return self._ramp(self.alpha_bar_start, self.alpha_bar_end, 1.0)

    @property
    def gamma_bar(self) -> Tensor:
        """``γ̄_t`` (T+1,) float64: the probability that a code is [MASK] at step t (the mask rate)."""
        return self._ramp(self.gamma_bar_start, self.gamma_bar_end, 0.0)

    @property
    def beta_bar(self) -> Tensor:
        """``β̄_t = (1 − ᾱ_t − γ̄_t) / K`` (T+1,) float64: the probability of each particular code by replacement."""
        return ((1.0 - self.alpha_bar - self.gamma_bar) / self.num_classes).clamp_min(0.0)

    # ---- per-step terms, index t = 0..T (index 0: identity) ----------------------------------------------

    @property
    def alpha(self) -> Tensor:
        """``α_t = ᾱ_t / ᾱ_{t−1}`` (T+1,) float64 (0 where ``ᾱ_{t−1} = 0``)."""
        ab = self.alpha_bar
        prev = ab[:-1]
        ratio = torch.where(prev > 0, ab[1:] / prev.clamp_min(1e-300), torch.zeros_like(prev))
        return torch.cat([ab.new_ones(1), ratio])

    @property
    def gamma(self) -> Tensor:
        """``γ_t = 1 − (1 − γ̄_t) / (1 − γ̄_{t−1})`` (T+1,) float64: the per-step masking probability."""
        keep = 1.0 - self.gamma_bar
        return torch.cat([keep.new_zeros(1), 1.0 - keep[1:] / keep[:-1]])

    @property
    def beta(self) -> Tensor:
        """``β_t = (1 − α_t − γ_t) / K`` (T+1,) float64: the per-step probability of each particular code."""
        return (1.0 - self.alpha - self.gamma) / self.num_classes

    # ---- any interval s -> t --------------------------------------------------------------------------------

    def transition(self, s: int, t: int) -> tuple[float, float, float]:
        """``(α_{t|s}, β_{t|s}, γ_{t|s})`` of the transition from step ``s`` to step ``t`` (``0 <= s <= t <= T``).

        ``α_{t|s} = ᾱ_t / ᾱ_s``, ``1 − γ_{t|s} = (1 − γ̄_t) / (1 − γ̄_s)``, ``β_{t|s} = (1 − α − γ) / K``;
        ``s = t`` is the identity ``(1, 0, 0)``, ``s = 0`` the cumulative terms, ``s = t − 1`` one step.
        """
        if not (isinstance(s, int) and isinstance(t, int) and 0 <= s <= t <= self.num_steps):
            raise ValueError(f"transition needs ints 0 <= s <= t <= T={self.num_steps}, got s={s!r}, t={t!r}")
        if s == t:
            return 1.0, 0.0, 0.0
        ab, gb = self.alpha_bar, self.gamma_bar
        a = float(ab[t] / ab[s]) if ab[s] > 0 else 0.0
        keep = float((1.0 - gb[t]) / (1.0 - gb[s]))
        return a, max((keep - a) / self.num_classes, 0.0), 1.0 - keep

    def transition_matrix(self, s: int, t: int) -> Tensor:
        """``Q_{t|s}`` ``(K+1, K+1)`` float64 with ``Q[i, j] = q(x_t = j | x_s = i)`` (rows sum to 1)."""
        a, b, c = self.transition(s, t)
        k = self.num_classes
        q = torch.zeros(k + 1, k + 1, dtype=torch.float64, device="cpu")
        q[:k, :k] = b
        q[:k, :k] += a * torch.eye(k, dtype=torch.float64, device="cpu")
        q[:k, k] = c
        q[k, k] = 1.0
        return q


def _log(x: Tensor) -> Tensor:
    """``log`` of a float64 probability tensor, exact zeros floored at :data:`LOG_ZERO`, as float32."""
    return torch.log(x.clamp_min(0.0)).clamp_min(LOG_ZERO).to(torch.float32)


class DiscreteDiffusion(nn.Module):
    """The mask-and-replace process of a :class:`MaskReplaceSchedule`: forward q, posterior, loss and sampling.

    Build it from a schedule or from its arguments: ``DiscreteDiffusion(MaskReplaceSchedule(256))`` or
    ``DiscreteDiffusion(256, num_steps=100)``. Shapes: ``B`` batch, ``N`` token positions (any grid, flattened),
    ``K`` codes; a distribution over the classes is a log-probability tensor ``(B, K+1, N)`` (a ``(B, K, N)``
    one is read as having zero mass on [MASK]); timesteps ``t`` are long ``(B,)`` in ``1..T``.

    * :meth:`log_q_xt_given_x0`, :meth:`log_q_xt_given_xtm1`, :meth:`log_q_xt_given_xs`: forward marginals;
    * :meth:`q_sample`: draw ``x_t ~ q(x_t | x_0)``;
    * :meth:`log_q_posterior`: ``q(x_s | x_t, x_0)`` (``s = t − 1`` by default), x_0 one-hot or a prediction;
    * :meth:`loss`: VQ-Diffusion's training loss (variational bound + auxiliary x_0 term);
    * :meth:`p_log_prev`, :meth:`truncate`, :meth:`sample`: the reverse process from an all-[MASK] grid.

    The schedule lives in non-persistent float32 buffers: ``log_a``, ``log_b``, ``log_c`` ``(T+1, T+1)``, the
    log of ``α_{t|s}``, ``β_{t|s}``, ``γ_{t|s}`` at ``[s, t]`` for every ``s <= t`` (computed in float64), and
    ``gamma_bar``, ``k_beta_bar`` ``(T+1,)`` for :meth:`q_sample`.
    """

    def __init__(self, schedule: MaskReplaceSchedule | int, **schedule_kwargs: float) -> None:
        super().__init__()
        if isinstance(schedule, int) and not isinstance(schedule, bool):
            schedule = MaskReplaceSchedule(schedule, **schedule_kwargs)
        elif schedule_kwargs:
            raise ValueError("DiscreteDiffusion: pass either a MaskReplaceSchedule or num_classes with its keyword "
                             "arguments, not both")
        if not isinstance(schedule, MaskReplaceSchedule):
            raise ValueError(f"DiscreteDiffusion expects a MaskReplaceSchedule or num_classes (int), got "
                             f"{type(schedule).__name__}")
        self.schedule = schedule
        k, steps = schedule.num_classes, schedule.num_steps
        ab, gb = schedule.alpha_bar, schedule.gamma_bar
        # Transition s -> t for every pair, in float64: alpha = ab_t / ab_s, 1 - gamma = (1 - gb_t) / (1 - gb_s).
        idx = torch.arange(steps + 1, device="cpu")
        s_idx, t_idx = torch.meshgrid(idx, idx, indexing="ij")
        valid = s_idx < t_idx
        ab_s, ab_t = ab[s_idx], ab[t_idx]
        a = torch.where(ab_s > 0, ab_t / ab_s.clamp_min(1e-300), torch.zeros_like(ab_s))
        keep = (1.0 - gb[t_idx]) / (1.0 - gb[s_idx])
        b = ((keep - a) / k).clamp_min(0.0)
        c = (1.0 - keep).clamp(0.0, 1.0)
        a = torch.where(valid, a, torch.ones_like(a))  # s >= t: the identity (s = t is used; s > t never is)
        b = torch.where(valid, b, torch.zeros_like(b))
        c = torch.where(valid, c, torch.zeros_like(c))
        self.register_buffer("log_a", _log(a), persistent=False)
        self.register_buffer("log_b", _log(b), persistent=False)
        self.register_buffer("log_c", _log(c), persistent=False)
        self.register_buffer("gamma_bar", gb.to(torch.float32), persistent=False)
        self.register_buffer("k_beta_bar", (k * schedule.beta_bar).to(torch.float32), persistent=False)

    # ---- basic properties -----------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """K, the number of codes (the [MASK] id is K)."""
        return self.schedule.num_classes

    @property
    def mask_id(self) -> int:
        """The [MASK] token id: ``K``."""
        return self.schedule.num_classes

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return self.schedule.num_steps

    def extra_repr(self) -> str:
        s = self.schedule
        return (f"num_classes={s.num_classes}, num_steps={s.num_steps}, alpha_bar={s.alpha_bar_start}->"
                f"{s.alpha_bar_end}, gamma_bar={s.gamma_bar_start}->{s.gamma_bar_end}")

    # ---- argument checks ------------------------------------------------------------------------------------

    def _check_t(self, t: Tensor, batch: int, name: str = "t", low: int = 1) -> Tensor:
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((batch,), t, dtype=torch.long, device=self.log_a.device)
        if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool or tuple(t.shape) != (batch,):
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be integer timesteps of shape (B={batch},), got {got}")
        if int(t.min()) < low or int(t.max()) > self.num_steps:
            raise ValueError(f"{name} must be in [{low}, T={self.num_steps}], got values in [{int(t.min())}, "
                             f"{int(t.max())}]")
        return t.long().to(self.log_a.device)

    def _check_ids(self, x: Tensor, name: str, high: int) -> None:
        if not isinstance(x, Tensor) or x.is_floating_point() or x.dtype == torch.bool or x.dim() < 2:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be integer token ids (B, N), got {got}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > high):
            raise ValueError(f"{name} ids must be in [0, {high}] (K = {self.num_classes}, [MASK] = {self.mask_id}), "
                             f"got values in [{int(x.min())}, {int(x.max())}]")

    def _as_log_dist(self, log_x: Tensor, name: str) -> Tensor:
        """``(B, K, N)`` or ``(B, K+1, N)`` log-probs → ``(B, K+1, N)`` float32 (a missing [MASK] row = zero mass)."""
        k = self.num_classes
        if not isinstance(log_x, Tensor) or log_x.dim() != 3 or log_x.shape[1] not in (k, k + 1):
            got = tuple(log_x.shape) if isinstance(log_x, Tensor) else type(log_x).__name__
            raise ValueError(f"{name} must be log-probabilities (B, K={k} or K+1={k + 1}, N), got {got}")
        log_x = log_x.float()
        if log_x.shape[1] == k:
            log_x = torch.cat([log_x, log_x.new_full((log_x.shape[0], 1, log_x.shape[2]), LOG_ZERO)], dim=1)
        return log_x

    def _gather(self, table: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return table[s, t].view(-1, 1, 1)

    # ---- forward process ----------------------------------------------------------------------------------

    def _log_forward(self, log_x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Distribution of ``x_t`` when ``x_s ~ exp(log_x)``: ``log(exp(log_x) Q_{t|s})``, ``(B, K+1, N)``.

        ``p(x_t = k) = α x_k + β Σ_{j<K} x_j`` for a code k and ``p(x_t = [MASK]) = x_K + γ Σ_{j<K} x_j``.
        """
        k = self.num_classes
        la, lb, lc = (self._gather(tab, s, t) for tab in (self.log_a, self.log_b, self.log_c))
        codes = torch.logsumexp(log_x[:, :k], dim=1, keepdim=True)  # log Σ_{j<K} x_j
        out_codes = log_add_exp(log_x[:, :k] + la, lb + codes)
        out_mask = log_add_exp(log_x[:, k:], lc + codes)
        return torch.cat([out_codes, out_mask], dim=1).clamp_min(LOG_ZERO)

    def _log_likelihood(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """``log q(x_t = observed | x_s = i)`` for every class ``i`` of ``x_s``: ``(B, K+1, N)`` (not a distribution).

        Observed code ``j``: ``α_{t|s} + β_{t|s}`` at ``i = j``, ``β_{t|s}`` at other codes, 0 at [MASK] (a mask
        never turns back into a code). Observed [MASK]: ``γ_{t|s}`` at every code, 1 at [MASK].
        """
        k = self.num_classes
        la, lb, lc = (self._gather(tab, s, t) for tab in (self.log_a, self.log_b, self.log_c))
        ids = torch.arange(k, device=x_t.device).view(1, k, 1)
        is_mask = (x_t == k).unsqueeze(1)  # (B, 1, N)
        same = ids == x_t.unsqueeze(1)  # (B, K, N)
        codes = torch.where(same, log_add_exp(la, lb), lb)
        codes = torch.where(is_mask, lc.expand_as(codes), codes)
        mask_row = torch.where(is_mask, 0.0, LOG_ZERO).to(codes.dtype)
        return torch.cat([codes, mask_row], dim=1)

    def log_q_xt_given_x0(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """``log q(x_t | x_0)`` ``(B, K+1, N)`` in closed form (VQ-Diffusion's ``q_pred``) for ``log_x0`` ``(B, K(+1), N)``.

        ``log_x0`` is a log one-hot (:func:`index_to_log_onehot`) or any distribution (e.g. a prediction with
        no mass on [MASK]); ``t`` long ``(B,)`` in ``1..T``. Each position's result sums to 1 over the classes.
        """
        log_x0 = self._as_log_dist(log_x0, "log_x0")
        t = self._check_t(t, log_x0.shape[0])
        return self._log_forward(log_x0, torch.zeros_like(t), t)

    def log_q_xt_given_xtm1(self, log_xtm1: Tensor, t: Tensor) -> Tensor:
        """One forward step ``log q(x_t | x_{t−1})`` ``(B, K+1, N)`` applied to ``log_xtm1`` (the matrix ``Q_t``)."""
        log_xtm1 = self._as_log_dist(log_xtm1, "log_xtm1")
        t = self._check_t(t, log_xtm1.shape[0])
        return self._log_forward(log_xtm1, t - 1, t)

    def log_q_xt_given_xs(self, log_xs: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """``log q(x_t | x_s)`` ``(B, K+1, N)`` for ``0 <= s <= t`` (both long ``(B,)``): the strided transition."""
        log_xs = self._as_log_dist(log_xs, "log_xs")
        t = self._check_t(t, log_xs.shape[0])
        s = self._check_t(s, log_xs.shape[0], "s", low=0)
        if (s > t).any():
            raise ValueError("log_q_xt_given_xs needs s <= t")
        return self._log_forward(log_xs, s, t)

    def sample_t(self, batch: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Uniform timesteps long ``(batch,)`` in ``1..T`` (VQ-Diffusion's ``'uniform'`` ``sample_time``)."""
        device = self.log_a.device if device is None else device
        return torch.randint(1, self.num_steps + 1, (batch,), device=device, generator=generator)

    def q_sample(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)``: ids ``(B, *)`` in ``0..K−1`` → ids ``(B, *)`` in ``0..K`` (same shape).

        Each token independently becomes [MASK] with probability ``γ̄_t``, a uniformly drawn code (possibly
        itself) with ``K·β̄_t``, and stays with the remaining ``ᾱ_t`` — the closed form read as a
        story. ``generator`` (on the tokens' device) makes the draw reproducible.
        """
        self._check_ids(x0, "x0", self.num_classes - 1)
        t = self._check_t(t, x0.shape[0]).to(x0.device)
        view = (-1,) + (1,) * (x0.dim() - 1)
        gb = self.gamma_bar.to(x0.device)[t].view(view)
        kb = self.k_beta_bar.to(x0.device)[t].view(view)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        random_code = torch.randint(0, self.num_classes, x0.shape, generator=generator, device=x0.device)
        out = torch.where(u < gb + kb, random_code, x0.long())
        return torch.where(u < gb, torch.full_like(out, self.mask_id), out)

    # ---- posterior ----------------------------------------------------------------------------------------

    def log_q_posterior(self, log_x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """``log q(x_s | x_t, x_0)`` ``(B, K+1, N)``; ``s = t − 1`` by default (Bayes' rule), any ``0 <= s < t`` allowed.

        ``x_t`` long ``(B, N)`` ids in ``0..K``; ``log_x0`` ``(B, K(+1), N)``: a log one-hot gives the exact
        posterior, a distribution ``p(x_0)`` gives ``Σ_{x_0} q(x_s | x_t, x_0) p(x_0)`` (VQ-Diffusion's
        ``q_posterior``). Computed as ``q(x_t | x_s) · Σ_{x_0} [p(x_0) / q(x_t | x_0)] q(x_s | x_0)``, in
        log space, then normalised; any [MASK] mass in ``log_x0`` is ignored (x_0 is a code). ``s = 0`` returns
        ``log p(x_0)`` itself (with :data:`LOG_ZERO` on [MASK]): the last reverse step samples the prediction.
        Strided ``s < t − 1`` uses the exact ``s → t`` transition (fast sampling, see :meth:`sample`).
        """
        k = self.num_classes
        log_x0 = self._as_log_dist(log_x0, "log_x0")
        b, _, n = log_x0.shape
        self._check_ids(x_t, "x_t", k)
        if tuple(x_t.shape) != (b, n):
            raise ValueError(f"x_t must be ids (B={b}, N={n}) matching log_x0 {tuple(log_x0.shape)}, got "
                             f"{tuple(x_t.shape)}")
        t = self._check_t(t, b)
        s = t - 1 if s is None else self._check_t(s, b, "s", low=0)
        if (s >= t).any():
            raise ValueError("log_q_posterior needs s < t")
        x_t = x_t.to(log_x0.device)
        t, s = t.to(log_x0.device), s.to(log_x0.device)
        log_p = torch.log_softmax(log_x0[:, :k], dim=1)  # p(x_0) over the K codes
        # w(x_0) ∝ p(x_0) / q(x_t | x_0), normalised over the K codes.
        w = log_p - self._log_likelihood(x_t, torch.zeros_like(t), t)[:, :k]
        w_sum = torch.logsumexp(w, dim=1, keepdim=True)
        w = torch.cat([w - w_sum, w.new_full((b, 1, n), LOG_ZERO)], dim=1)
        marginal = self._log_forward(w, torch.zeros_like(s), s)  # Σ_{x_0} w(x_0) q(x_s | x_0)
        # q(x_t | x_s) · marginal · Σ w sums to 1 over x_s; normalising instead of adding log Σ w back keeps
        # float32 log values small (exact, and better rounded at the schedule's ends).
        out = torch.log_softmax(self._log_likelihood(x_t, s, t) + marginal, dim=1)
        first = torch.cat([log_p, log_p.new_full((b, 1, n), LOG_ZERO)], dim=1)
        out = torch.where((s == 0).view(-1, 1, 1), first, out)
        return out.clamp_min(LOG_ZERO)

    def p_log_prev(self, log_x0_pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """The reverse step ``log p_θ(x_s | x_t)`` ``(B, K+1, N)`` (``s = t − 1`` by default), the x_0-parameterised reverse step.

        ``log_x0_pred`` ``(B, K, N)``: the network's ``log p_θ(x_0 | x_t)`` (logits are normalised here).
        """
        log_pred = self._as_log_dist(log_x0_pred, "log_x0_pred")[:, :self.num_classes]
        return self.log_q_posterior(torch.log_softmax(log_pred, dim=1), x_t, t, s)

    # ---- loss ---------------------------------------------------------------------------------------------

    def loss(self, log_x0_pred: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, aux_weight: float = 5e-4,
             adaptive_aux: bool = True, t_prob: Tensor | None = None,
             mask_weight: tuple[float, float] = (1.0, 1.0)) -> tuple[Tensor, dict[str, Tensor]]:
        """VQ-Diffusion's training loss (``_train_loss``) for one drawn ``t`` per item; returns ``(loss, metrics)``.

        ``log_x0_pred`` ``(B, K, N)`` the network's output (log-probs or logits; normalised here), ``x0`` ``(B, N)``
        the clean ids, ``x_t`` ``(B, N)`` the corrupted ids it saw, ``t`` ``(B,)``. Per position:

        * bound term ``L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))`` for ``t > 1`` and the decoder
          term ``L_0 = −log p_θ(x_0 | x_1)`` for ``t = 1`` (the variational bound's terms; at t = 1 the KL
          against the one-hot posterior is the same number);
        * auxiliary ``−log p_θ(x_0 | x_t)`` on **every** position (masked or not; VQ-Diffusion's ``kl_aux``,
          whose one-hot KL is this cross-entropy), weighted by ``aux_weight`` (5e-4 in Diffsound's and
          VQ-Diffusion's configs) times ``2 − (t−1)/T`` when ``adaptive_aux`` (their ``adaptive_auxiliary_loss``:
          from 2 at t = 1 down to 1 + 1/T at t = T), else 1;
        * ``mask_weight = (w_masked, w_unmasked)`` scales both terms at positions where ``x_t`` is / is not
          [MASK] (VQ-Diffusion's ``mask_weight``; both 1 in the papers' configs).

        Both are divided by ``t_prob`` ``(B,)``, the probability with which ``t`` was drawn (default ``1/T``:
        uniform, :meth:`sample_t`), summed over positions and averaged over ``B·N`` tokens, so the loss is an
        unbiased estimate of the whole bound ``Σ_t L_t`` (minus the constant prior term) in nats per token, as
        in VQ-Diffusion. VQ-Diffusion draws ``t`` by **importance sampling** (``∝ sqrt(E[L_t²])``, after 10
        visits of every t); this module samples uniformly (pass ``t_prob`` to use another sampler).

        Metrics (detached): ``vb`` (the bound estimate alone), ``lt`` (mean per-token ``L_{t−1}`` at the drawn
        t, not divided by ``t_prob``), ``aux_ce`` (mean ``−log p_θ(x_0 | x_t)``), ``accuracy`` (argmax of the x_0
        prediction = x_0, all positions), ``accuracy_masked`` (at [MASK] positions; NaN-free: 0 if none),
        ``mask_rate`` (fraction of [MASK] in ``x_t``).
        """
        k = self.num_classes
        if not isinstance(log_x0_pred, Tensor) or log_x0_pred.dim() != 3 or log_x0_pred.shape[1] != k:
            got = tuple(log_x0_pred.shape) if isinstance(log_x0_pred, Tensor) else type(log_x0_pred).__name__
            raise ValueError(f"log_x0_pred must be the network's output (B, K={k}, N), got {got}")
        b, _, n = log_x0_pred.shape
        self._check_ids(x0, "x0", k - 1)
        if tuple(x0.shape) != (b, n) or tuple(x_t.shape) != (b, n):
            raise ValueError(f"x0 and x_t must be ids (B={b}, N={n}) matching log_x0_pred, got {tuple(x0.shape)} and "
                             f"{tuple(x_t.shape)}")
        if not _is_real(aux_weight) or aux_weight < 0:
            raise ValueError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
        t = self._check_t(t, b).to(log_x0_pred.device)
        x0, x_t = x0.long().to(log_x0_pred.device), x_t.long().to(log_x0_pred.device)
        log_pred = torch.log_softmax(log_x0_pred.float(), dim=1)  # (B, K, N)
        log_model = self.log_q_posterior(log_pred, x_t, t)  # (B, K+1, N)
        log_true = self.log_q_posterior(index_to_log_onehot(x0, k + 1), x_t, t)
        kl = (log_true.exp() * (log_true - log_model)).sum(dim=1)  # (B, N)
        nll = -log_model.gather(1, x0.unsqueeze(1)).squeeze(1)  # −log p_θ(x_0 | x_1) at t = 1
        first = (t == 1).unsqueeze(1)
        is_mask = x_t == k
        weight = torch.where(is_mask, float(mask_weight[0]), float(mask_weight[1]))
        lt = torch.where(first, nll, kl) * weight
        ce = -log_pred.gather(1, x0.unsqueeze(1)).squeeze(1) * weight
        if t_prob is None:
            t_prob = torch.full((b,), 1.0 / self.num_steps, device=lt.device)
        elif not isinstance(t_prob, Tensor) or tuple(t_prob.shape) != (b,) or bool((t_prob <= 0).any()):
            raise ValueError(f"t_prob must be positive probabilities (B={b},) of the drawn t")
        aux_scale = (2.0 - (t - 1).float() / self.num_steps) if adaptive_aux else torch.ones_like(t_prob)
        vb_item = lt.sum(dim=1) / t_prob
        aux_item = aux_weight * aux_scale * ce.sum(dim=1) / t_prob
        loss = (vb_item + aux_item).sum() / (b * n)
        with torch.no_grad():
            correct = log_pred.argmax(dim=1) == x0
            masked = is_mask.sum()
            metrics = {
                "vb": vb_item.sum() / (b * n),
                "lt": lt.mean(),
                "aux_ce": ce.mean(),
                "accuracy": correct.float().mean(),
                "accuracy_masked": (correct & is_mask).sum() / masked.clamp_min(1),
                "mask_rate": is_mask.float().mean(),
            }
        return loss, metrics

    # ---- sampling -----------------------------------------------------------------------------------------

    @staticmethod
    def truncate(log_probs: Tensor, r: float) -> Tensor:
        """Truncation sampling (VQ-Diffusion's ``top{r}r``): keep, per position, the smallest set of classes whose
        probability mass is ``>= r``, drop the rest (to :data:`LOG_ZERO`), renormalise. Classes on axis 1.

        ``log_probs`` ``(B, C, *)`` log-probabilities; classes are sorted by probability and a class is kept
        while the mass before it is ``< r`` (the most likely one always is). ``r = 1`` keeps everything.
        VQ-Diffusion's README samples with ``r = 0.86``.
        """
        if not _is_real(r) or not 0.0 < r <= 1.0:
            raise ValueError(f"truncation r must be a probability mass in (0, 1], got {r!r}")
        if not isinstance(log_probs, Tensor) or log_probs.dim() < 2:
            raise ValueError("truncate expects log-probabilities with classes on axis 1, (B, C, ...)")
        log_probs = torch.log_softmax(log_probs.float(), dim=1)
        if r >= 1.0:
            return log_probs
        sorted_lp, order = log_probs.sort(dim=1, descending=True)
        probs = sorted_lp.exp()
        mass_before = probs.cumsum(dim=1) - probs
        keep_sorted = mass_before < r
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        return torch.log_softmax(torch.where(keep, log_probs, LOG_ZERO), dim=1).clamp_min(LOG_ZERO)

    def timesteps(self, steps: int | None = None) -> list[int]:
        """The reverse schedule ``[T, …, 0]`` with ``steps`` jumps (``None``: all T): ``round(linspace(T, 0,
        steps + 1))``, strictly decreasing. ``steps = 10`` of ``T = 100`` visits 100, 90, …, 10, 0."""
        steps = self.num_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be an int in [1, T={self.num_steps}] or None, got {steps!r}")
        times = torch.linspace(self.num_steps, 0, steps + 1, dtype=torch.float64).round().long().tolist()
        return times

    @staticmethod
    def _draw(log_probs: Tensor, generator: torch.Generator | None) -> Tensor:
        """One class per position from ``(B, C, N)`` log-probs by the Gumbel-max trick → ids ``(B, N)``."""
        u = torch.rand(log_probs.shape, generator=generator, device=log_probs.device)
        gumbel = -torch.log((-torch.log(u.clamp(1e-30, 1.0))).clamp_min(1e-30))
        return (log_probs + gumbel).argmax(dim=1)

    @torch.no_grad()
    def sample(self, denoise_fn: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int] | int,
               steps: int | None = None, truncation: float | None = 0.86, temperature: float = 1.0,
               generator: torch.Generator | None = None, return_trajectory: bool = False,
               device: torch.device | str | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Generate token ids of ``shape`` ``(B, *grid)`` (an int ``N`` means ``(1, N)``) from an all-[MASK] grid.

        At each jump ``t → s`` of :meth:`timesteps` (``steps`` jumps, ``None`` = all T): ``denoise_fn(x_t, t)``
        (ids of ``shape``, ``t`` long ``(B,)``) returns logits of ``x_0`` ``(B, K, *grid)`` (classifier-free
        guidance, if any, is the caller's: return the guided log-probs); they are divided by
        ``temperature``, truncated to the top-``truncation`` mass (:meth:`truncate`, ``None`` = off),
        turned into ``p_θ(x_s | x_t)`` by :meth:`log_q_posterior` and sampled. With ``steps < T`` the jump
        uses the exact strided posterior ``q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0)`` — the same idea as
        VQ-Diffusion's fast sampling (``sample_fast``, ``skip_step``), which instead reuses the one-step
        posterior of step ``t − Δ`` on the current grid. The last jump (``s = 0``) samples the x_0 prediction
        over the K codes only, so the result holds no [MASK]. Note that Diffsound's ``γ̄_T = 0.9`` makes
        ``q(x_T | x_0)`` 90 % mask, not 100 %: starting from all-[MASK] (as Diffsound and VQ-Diffusion do) is
        then a slight mismatch with the prior.

        Returns ids ``(B, *grid)`` in ``0..K−1``, and with ``return_trajectory`` also the list of the grids
        ``x_T (all mask), …, x_0`` (``steps + 1`` tensors).
        """
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (1, shape)
        shape = tuple(shape)
        if len(shape) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
            raise ValueError(f"shape must be positive ints (B, N) or (B, H, W), got {shape!r}")
        if not _is_real(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if truncation is not None and (not _is_real(truncation) or not 0.0 < truncation <= 1.0):
            raise ValueError(f"truncation must be a probability mass in (0, 1] or None, got {truncation!r}")
        times = self.timesteps(steps)
        k, batch = self.num_classes, shape[0]
        device = self.log_a.device if device is None else torch.device(device)
        x = torch.full(shape, self.mask_id, dtype=torch.long, device=device)
        trajectory = [x.clone()]
        for t, s in zip(times[:-1], times[1:]):
            t_vec = torch.full((batch,), t, dtype=torch.long, device=device)
            logits = denoise_fn(x, t_vec)
            if not isinstance(logits, Tensor) or tuple(logits.shape) != (batch, k, *shape[1:]):
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"denoise_fn must return logits (B, K={k}, *grid) = {(batch, k, *shape[1:])}, got {got}")
            log_x0 = torch.log_softmax(logits.float().reshape(batch, k, -1) / temperature, dim=1)
            if truncation is not None:
                log_x0 = self.truncate(log_x0, truncation)
            log_prev = self.log_q_posterior(log_x0, x.reshape(batch, -1), t_vec, torch.full_like(t_vec, s))
            if s == 0:
                log_prev = log_prev[:, :k]
            x = self._draw(log_prev, generator).view(shape)
            trajectory.append(x.clone())
        return (x, trajectory) if return_trajectory else x
