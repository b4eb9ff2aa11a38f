"""Checks for exercise notebook 06, Diffsound: the mask-and-replace transition matrix, the linear schedule and its
per-step terms, the posterior of one token by Bayes' rule, one x_0-parameterised reverse step in log space,
truncation to the top-r probability mass, and the training loss assembled (variational bound + auxiliary term).

Each checker compares the student's function with the course's reference
(:class:`course_lib.diffusion.discrete.MaskReplaceSchedule` and :class:`~course_lib.diffusion.discrete.DiscreteDiffusion`,
or a float64 computation from the definitions where the library works on whole grids) on hand-made and random
inputs, and turns the first mismatch into a hint naming the likeliest mistake: β not divided by K, no β on the
diagonal, a [MASK] row that is not absorbing, the matrix transposed; the ramp spread over t = 0..T or ending
early, per-step terms taken as differences of the cumulative ones or left cumulative; a posterior not
normalised, the prior of the wrong step, rows and columns swapped; log-probabilities averaged instead of
mixed, logits used as log-probabilities, exp/log underflow; the kept set whose mass stays below r, kept
probabilities not renormalised, dropped classes at log 0 = 0, tied classes all kept; the KL the wrong way round,
no factor T, the auxiliary weight without 2 − (t−1)/T, logits as log-probabilities, the auxiliary term on the
reverse step or left out, a loss returned as a float or detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from course_lib.diffusion.discrete import (
    DiscreteDiffusion,
    MaskReplaceSchedule,
    index_to_log_onehot,
)
from course_lib.exercises.checks import CheckContext, WrongAnswer, expect_tensor, register_task, seeded

LESSON = "06_diffsound"

__all__ = [
    "LESSON",
    "MATRIX_CASES",
    "POSTERIOR_CASES",
    "POSTERIOR_SCHEDULES",
    "SCHEDULE_CASES",
    "DROPPED_BELOW",
    "loss_cases",
    "reference_loss",
    "TRUNCATE_CASES",
    "reference_matrix",
    "reference_posterior",
    "reference_reverse_step",
    "reference_schedule",
    "reference_truncate",
    "reverse_step_cases",
]


def _same(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """Same shape and values (float rounding allowed), nothing NaN or infinite in ``got``."""
    if tuple(got.shape) != tuple(expected.shape) or not torch.isfinite(got).all():
        return False
    return bool(torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol))


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where}: your function changed its inputs in place; compute on new tensors "
                          "(no `+=`, no `masked_fill_`, no `x[...] = ...` on an argument)")


def _float_tensor(value: object, fn_name: str, shape: tuple[int, ...], where: str, what: str = "an output",
                  nan_hint: str = "look for 0/0, log of a negative number or −inf − (−inf)") -> torch.Tensor:
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
    return [round(float(v), digits) for v in x.flatten()] if x.dim() <= 1 else [_fmt(row, digits) for row in x]


# --------------------------------------------------------------------------------------------------------
# Task 1: the mask-and-replace matrix
# --------------------------------------------------------------------------------------------------------


def reference_matrix(alpha: float, gamma: float, num_classes: int, *, beta_divisor: float | None = None,
                     beta_on_diagonal: bool = True, absorbing: bool = True, transpose: bool = False) -> torch.Tensor:
    """``(K+1, K+1)`` float64 mask-and-replace matrix, ``Q[i, j] = q(next = j | current = i)`` (VQ-Diffusion eq. 7):
    ``α + β`` on the codes' diagonal, ``β = (1 − α − γ)/K`` elsewhere among the codes, ``γ`` in the [MASK] column,
    the [MASK] row ``(0, …, 0, 1)``. The keywords build the wrong variants the check recognises: another divisor
    of β, no β on the diagonal, a [MASK] row like a code row, the transpose."""
    k = num_classes
    beta = (1.0 - alpha - gamma) / (k if beta_divisor is None else beta_divisor)
    q = torch.full((k + 1, k + 1), beta, dtype=torch.float64)
    q[:, k] = gamma
    q += torch.diag(torch.full((k + 1,), alpha if beta_on_diagonal else alpha - beta, dtype=torch.float64))
    if absorbing:
        q[k] = 0.0
        q[k, k] = 1.0
    else:
        q[k, k] = alpha + beta
    return q.T.contiguous() if transpose else q


def _matrix_cases() -> list[tuple[float, float, int, str]]:
    sched = MaskReplaceSchedule(5, num_steps=10)
    cases = [(0.6, 0.1, 3, "α = 0.6, γ = 0.1, K = 3")]
    for s, t, name in ((0, 6, "the cumulative ᾱ_6, γ̄_6"), (5, 6, "the one-step α_6, γ_6"),
                       (0, 10, "the cumulative ᾱ_10, γ̄_10 (ᾱ ≈ 1e-5)")):
        a, _, c = sched.transition(s, t)
        cases.append((a, c, 5, f"{name} of MaskReplaceSchedule(K=5, T=10): α = {a:.6g}, γ = {c:.6g}, K = 5"))
    cases.append((0.5, 0.3, 1, "α = 0.5, γ = 0.3, K = 1"))
    return cases


MATRIX_CASES = _matrix_cases()


@register_task("mask_replace_matrix", LESSON,
               hint_on_error="β = (1 − α − γ)/K; Q = β everywhere among the codes, + α on their diagonal, γ in the "
                             "last column, last row (0, …, 0, 1).")
def check_mask_replace_matrix_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(alpha, gamma, K)`` must equal :meth:`MaskReplaceSchedule.transition_matrix` for the same (α, γ)."""
    for alpha, gamma, k, name in MATRIX_CASES:
        where = f"for {name}"
        expected = reference_matrix(alpha, gamma, k)
        got = expect_tensor(ctx.call(fn, alpha, gamma, k), "mask_replace_matrix")
        if tuple(got.shape) == (k, k):
            raise WrongAnswer(f"{where}: expected a ({k + 1}, {k + 1}) matrix, got ({k}, {k}): there are K codes PLUS "
                              f"the [MASK] token (id K = {k}), so K + 1 classes")
        got = _float_tensor(got, "mask_replace_matrix", (k + 1, k + 1), where, "a matrix")
        if _same(got, expected):
            continue
        beta = (1.0 - alpha - gamma) / k
        if _same(got, expected.T):
            hint = ("you built the transpose: row i is where a token COMES FROM, Q[i, j] = q(next = j | current = i), so "
                    "every row sums to 1 (and γ sits in the last column)")
        elif not _same(got[k], expected[k]):
            hint = (f"the [MASK] row is {_fmt(got[k])}: [MASK] is absorbing, a masked token stays masked, so the last "
                    "row is (0, …, 0, 1)")
        elif _same(got, reference_matrix(alpha, gamma, k, beta_divisor=1)):
            hint = (f"β must be divided by K: 1 − α − γ = {1 - alpha - gamma:.4g} is the TOTAL replacement mass, "
                    f"spread over the K = {k} codes, β = (1 − α − γ)/K = {beta:.4g}")
        elif _same(got, reference_matrix(alpha, gamma, k, beta_divisor=k + 1)):
            hint = ("β = (1 − α − γ)/K, not /(K + 1): replacement draws one of the K codes; [MASK] is reached through γ "
                    "only")
        elif k > 1 and _same(got, reference_matrix(alpha, gamma, k, beta_divisor=k - 1)):
            hint = ("β = (1 − α − γ)/K, not /(K − 1): the uniform replacement may draw the token itself, so K codes "
                    "share it and the diagonal gets α + β")
        elif _same(got, reference_matrix(alpha, gamma, k, beta_on_diagonal=False)):
            hint = ("the diagonal is α + β, not α: replacement draws uniformly among ALL K codes, the token itself "
                    "included (otherwise a row sums to 1 − β)")
        elif not _same(got[:k, k], expected[:k, k]):
            hint = f"a code becomes [MASK] with probability γ = {gamma:.4g}: the last column of the code rows is γ"
        else:
            sums = got.double().sum(dim=1)
            hint = (f"your rows sum to {_fmt(sums)}; a code row is (β, …, α + β, …, β, γ) with β = (1 − α − γ)/K, "
                    "the [MASK] row (0, …, 0, 1)")
        detail = f"expected {_fmt(expected)}, got {_fmt(got)}: " if k <= 3 else ""
        raise WrongAnswer(f"{where}: {detail}{hint}")


# --------------------------------------------------------------------------------------------------------
# Task 2: the schedule, cumulative and per step
# --------------------------------------------------------------------------------------------------------


def reference_schedule(num_steps: int, alpha_bar_start: float = 0.99999, alpha_bar_end: float = 0.000009,
                       gamma_bar_start: float = 0.000009, gamma_bar_end: float = 0.9
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ᾱ, γ̄, α, γ)``, each float64 ``(T+1,)`` indexed by t = 0..T: :class:`MaskReplaceSchedule`'s terms."""
    s = MaskReplaceSchedule(2, num_steps, alpha_bar_start, alpha_bar_end, gamma_bar_start, gamma_bar_end)
    return s.alpha_bar, s.gamma_bar, s.alpha, s.gamma


SCHEDULE_CASES: list[tuple[int, float, float, float, float]] = [
    (5, 0.9, 0.1, 0.05, 0.5),
    (2, 0.99, 0.01, 0.0, 0.98),
    (100, 0.99999, 0.000009, 0.000009, 0.9),  # Diffsound's
]


def _ramp_hint(got: torch.Tensor, start: float, end: float, num_steps: int, sym: str, name: str, first: float) -> str:
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    if abs(float(got[0]) - first) > 1e-9:
        if _same(got, torch.linspace(start, end, num_steps + 1, dtype=torch.float64)):
            return (f"you spread the ramp over t = 0..T: index 0 is x_0 itself ({sym}_0 = {first:g}), and the ramp runs "
                    f"over t = 1..T, {sym}_t = {name}_start + (t − 1)/(T − 1)·({name}_end − {name}_start)")
        return f"index 0 is x_0 itself, before any step: {sym}_0 = {first:g}"
    if _same(got[1:], start + t / num_steps * (end - start)):
        return (f"off by one: with t/T the ramp misses its ends; use (t − 1)/(T − 1) so that {sym}_1 = {name}_start "
                f"and {sym}_T = {name}_end")
    if _same(got[1:], end + (t - 1) / (num_steps - 1) * (start - end)):
        return f"the ramp runs backwards: {sym}_1 = {name}_start, {sym}_T = {name}_end"
    return (f"{sym}_t = {name}_start + (t − 1)/(T − 1)·({name}_end − {name}_start) for t = 1..T, and {sym}_0 = {first:g}")


@register_task("mask_schedule", LESSON,
               hint_on_error="ᾱ_t = start + (t−1)/(T−1)(end − start) for t = 1..T after ᾱ_0 = 1 (γ̄_0 = 0); "
                             "α_t = ᾱ_t/ᾱ_{t−1}, γ_t = 1 − (1 − γ̄_t)/(1 − γ̄_{t−1}).")
def check_mask_schedule_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(T, ᾱ_start, ᾱ_end, γ̄_start, γ̄_end)`` → ``(ᾱ, γ̄, α, γ)``, each ``(T+1,)``: :class:`MaskReplaceSchedule`'s."""
    names = ("alpha_bar", "gamma_bar", "alpha", "gamma")
    for case in SCHEDULE_CASES:
        steps, a0, a1, g0, g1 = case
        where = (f"for T = {steps}, alpha_bar {a0:g} → {a1:g}, gamma_bar {g0:g} → {g1:g}")
        value = ctx.call(fn, *case)
        if not isinstance(value, (tuple, list)) or len(value) != 4:
            got_len = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
            raise WrongAnswer(f"{where}: mask_schedule should return four tensors (alpha_bar, gamma_bar, alpha, gamma), "
                              f"got {type(value).__name__}{got_len}")
        got = []
        for name, item in zip(names, value):
            tensor = expect_tensor(item, f"mask_schedule ({name})")
            if tuple(tensor.shape) == (steps,):
                raise WrongAnswer(f"{where}: {name} has {steps} entries; it needs T + 1 = {steps + 1}, one per "
                                  "t = 0..T, with index 0 for x_0 itself (ᾱ_0 = 1, γ̄_0 = 0, α_0 = 1, γ_0 = 0)")
            got.append(_float_tensor(tensor, f"mask_schedule ({name})", (steps + 1,), f"{where}: {name}", "a tensor"))
        ab, gb, a, g = got
        r_ab, r_gb, r_a, r_g = reference_schedule(*case)
        if not _same(ab, r_ab):
            raise WrongAnswer(f"{where}: wrong alpha_bar: {_ramp_hint(ab, a0, a1, steps, 'ᾱ', 'alpha_bar', 1.0)}")
        if not _same(gb, r_gb):
            raise WrongAnswer(f"{where}: wrong gamma_bar: {_ramp_hint(gb, g0, g1, steps, 'γ̄', 'gamma_bar', 0.0)}")
        if not _same(a, r_a):
            if _same(a, r_ab):
                hint = ("that is the cumulative ᾱ_t; the per-step α_t is the factor of ONE step, ᾱ_t = α_1·α_2⋯α_t, so "
                        "α_t = ᾱ_t / ᾱ_{t−1}")
            elif _same(a[1:], r_ab[1:] - r_ab[:-1]) or _same(a[1:], r_ab[:-1] - r_ab[1:]):
                hint = ("cumulative probabilities multiply, they do not add: ᾱ_t = α_1⋯α_t, so α_t = ᾱ_t / ᾱ_{t−1}, not a "
                        "difference")
            elif _same(a[1:], r_ab[:-1] / r_ab[1:]):
                hint = "the ratio is upside down: α_t = ᾱ_t / ᾱ_{t−1} ≤ 1"
            elif abs(float(a[0]) - 1.0) > 1e-9:
                hint = "α_0 = 1: index 0 is no step at all"
            else:
                hint = "α_t = ᾱ_t / ᾱ_{t−1} (so that α_1⋯α_t = ᾱ_t)"
            raise WrongAnswer(f"{where}: wrong alpha: {hint}")
        if not _same(g, r_g):
            keep = (1.0 - r_gb[1:]) / (1.0 - r_gb[:-1])
            if _same(g, r_gb):
                hint = ("that is the cumulative γ̄_t; the per-step γ_t is the probability to be masked at step t "
                        "itself: γ_t = 1 − (1 − γ̄_t)/(1 − γ̄_{t−1})")
            elif _same(g[1:], r_gb[1:] - r_gb[:-1]):
                hint = ("what multiplies over steps is the probability of staying UNmasked: 1 − γ̄_t = (1 − γ_1)⋯(1 − γ_t), "
                        "so γ_t = 1 − (1 − γ̄_t)/(1 − γ̄_{t−1}), not γ̄_t − γ̄_{t−1}")
            elif _same(g[1:], keep):
                hint = "that is the probability 1 − γ_t of NOT being masked at step t: γ_t = 1 − (1 − γ̄_t)/(1 − γ̄_{t−1})"
            elif case[3] > 0 and (_same(g[1:], r_gb[1:] / r_gb[:-1].clamp_min(1e-300))
                                  or _same(g[1:], 1.0 - r_gb[1:] / r_gb[:-1].clamp_min(1e-300))):
                hint = ("take the ratio of the UNmasked probabilities 1 − γ̄: γ_t = 1 − (1 − γ̄_t)/(1 − γ̄_{t−1}) "
                        "(γ̄_0 = 0 would divide by zero anyway)")
            elif abs(float(g[0])) > 1e-9:
                hint = "γ_0 = 0: index 0 is no step at all"
            else:
                hint = "γ_t = 1 − (1 − γ̄_t)/(1 − γ̄_{t−1}) (so that (1 − γ_1)⋯(1 − γ_t) = 1 − γ̄_t)"
            raise WrongAnswer(f"{where}: wrong gamma: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 3: the posterior of one token
# --------------------------------------------------------------------------------------------------------


def reference_posterior(schedule: MaskReplaceSchedule, x0: int, x_t: int, t: int, *, normalise: bool = True,
                        prior_step: int | None = None, likelihood_from: int | None = None,
                        likelihood_row: bool = False, prior_column: bool = False) -> torch.Tensor:
    """``q(x_{t−1} = i | x_t, x_0)`` ``(K+1,)`` float64 by Bayes' rule:
    ``∝ Q_t[i, x_t] · Q̄_{t−1}[x_0, i]``. Keywords build wrong variants: no normalisation, the prior of another
    step (``prior_step``), the likelihood from another step (``likelihood_from``: ``s`` in ``Q_{t|s}``), a row
    read where a column is meant and vice versa."""
    prior_step = t - 1 if prior_step is None else prior_step
    likelihood_from = t - 1 if likelihood_from is None else likelihood_from
    q_step = schedule.transition_matrix(likelihood_from, t)
    q_bar = schedule.transition_matrix(0, prior_step)
    likelihood = q_step[x_t, :] if likelihood_row else q_step[:, x_t]
    prior = q_bar[:, x0] if prior_column else q_bar[x0, :]
    joint = likelihood * prior
    return joint / joint.sum() if normalise else joint


POSTERIOR_SCHEDULES = {
    "A": dict(num_classes=3, num_steps=6, alpha_bar_start=0.95, alpha_bar_end=0.1, gamma_bar_start=0.02,
              gamma_bar_end=0.6),
    "B": dict(num_classes=4, num_steps=10),  # Diffsound's ends
}
# (schedule, x0, x_t, t): the first case tells every recognised mistake apart
POSTERIOR_CASES: list[tuple[str, int, int, int]] = [
    ("A", 1, 0, 3), ("A", 1, 1, 3), ("A", 2, 3, 4), ("A", 0, 0, 1), ("A", 0, 3, 1), ("A", 0, 2, 6),
    ("B", 1, 1, 5), ("B", 2, 4, 10), ("B", 3, 0, 2),
]


def _schedule_repr(kwargs: dict) -> str:
    return "MaskReplaceSchedule(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


@register_task("posterior_one_token", LESSON,
               hint_on_error="Q_t = schedule.transition_matrix(t − 1, t), Q̄ = schedule.transition_matrix(0, t − 1); "
                             "p = Q_t[:, x_t] * Q̄[x0, :]; return p / p.sum().")
def check_posterior_one_token_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(schedule, x0, x_t, t)`` → ``q(x_{t−1} | x_t, x_0)`` ``(K+1,)``: Bayes' rule by hand, and the library's
    :meth:`DiscreteDiffusion.log_q_posterior` for a one-hot x_0."""
    schedules = {name: MaskReplaceSchedule(**kw) for name, kw in POSTERIOR_SCHEDULES.items()}
    diffusions = {name: DiscreteDiffusion(s) for name, s in schedules.items()}
    for name, x0, x_t, t in POSTERIOR_CASES:
        sched = schedules[name]
        k = sched.num_classes
        shown = " ([MASK])" if x_t == k else ""
        where = f"for {_schedule_repr(POSTERIOR_SCHEDULES[name])}, x0 = {x0}, x_t = {x_t}{shown}, t = {t}"
        got = _float_tensor(ctx.call(fn, sched, x0, x_t, t), "posterior_one_token", (k + 1,), where,
                            "probabilities over x_{t−1}",
                            nan_hint="0/0, the joint is 0 for every x_{t−1}: you read a row where a column is meant "
                                     "(or the reverse); the likelihood is Q_t[:, x_t], the prior Q̄_{t−1}[x0, :]")
        expected = reference_posterior(sched, x0, x_t, t)
        library = diffusions[name].log_q_posterior(index_to_log_onehot(torch.tensor([[x0]]), k + 1),
                                                   torch.tensor([[x_t]]), torch.tensor([t])).exp()[0, :, 0]
        if _same(got, expected) and _same(got, library, atol=1e-5, rtol=1e-4):
            continue
        variants = [
            (dict(normalise=False), "you did not normalise: divide by the sum over x_{t−1} (that sum is q(x_t | x_0)), "
                                    "so the probabilities add up to 1"),
            (dict(prior_step=t), "the prior of x_{t−1} is q(x_{t−1} | x_0) = row x0 of Q̄_{t−1} = "
                                 "schedule.transition_matrix(0, t − 1), one step BEFORE t"),
            (dict(likelihood_from=0), "the likelihood is ONE step, q(x_t | x_{t−1}) = column x_t of "
                                      "schedule.transition_matrix(t − 1, t), not the cumulative matrix from 0"),
            (dict(likelihood_row=True), "the roles are swapped in Q_t: the likelihood of the observed x_t given "
                                        "x_{t−1} = i is Q_t[i, x_t], a COLUMN of Q_t (rows are where a token comes from)"),
            (dict(prior_column=True), "the roles are swapped in Q̄_{t−1}: q(x_{t−1} = i | x_0) is Q̄_{t−1}[x0, i], the ROW "
                                      "of x0"),
            (dict(likelihood_row=True, prior_column=True), "rows and columns are swapped in both matrices: Q[i, j] = "
                                                           "q(next = j | current = i); use Q_t[:, x_t] and Q̄_{t−1}[x0, :]"),
        ]
        hint = ""
        for kwargs, text in variants:
            if _same(got, reference_posterior(sched, x0, x_t, t, **kwargs)):
                hint = text
                break
        if not hint and x_t < k and _same(got, reference_posterior(sched, x_t, x0, t)):
            hint = "x0 and x_t are swapped: the prior row is x0's, the likelihood column is x_t's"
        if not hint:
            total = float(got.double().sum())
            hint = (f"your probabilities sum to {total:.4g}; " if abs(total - 1.0) > 1e-6 else "") + (
                "q(x_{t−1} = i | x_t, x_0) ∝ Q_t[i, x_t] · Q̄_{t−1}[x0, i], normalised over i")
        raise WrongAnswer(f"{where}: expected {_fmt(expected)}, got {_fmt(got)}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 4: one reverse step, x_0-parameterised, in log space
# --------------------------------------------------------------------------------------------------------


def reference_reverse_step(x0_logits: torch.Tensor, log_posterior: torch.Tensor, *, mean_log: bool = False,
                           normalise: bool = True, hard: bool = False) -> torch.Tensor:
    """``log p(x_{t−1} | x_t) = logsumexp_{x0}(log q(x_{t−1} | x_t, x0) + log p(x0 | x_t))``, float64.

    ``x0_logits`` ``(..., K)``, ``log_posterior`` ``(..., K, K+1)`` (row x0: ``log q(x_{t−1} | x_t, x0)``) →
    ``(..., K+1)``. Keywords build wrong variants: the prediction-weighted mean of the log-probabilities, the
    logits used unnormalised, the max over x0 instead of the log-sum-exp."""
    log_p0 = x0_logits.double()
    if normalise:
        log_p0 = torch.log_softmax(log_p0, dim=-1)
    log_post = log_posterior.double()
    if mean_log:
        return (log_p0.exp().unsqueeze(-1) * log_post).sum(dim=-2)
    joint = log_post + log_p0.unsqueeze(-1)
    return joint.max(dim=-2).values if hard else torch.logsumexp(joint, dim=-2)


def reverse_step_cases() -> list[tuple[torch.Tensor, torch.Tensor, str, torch.Tensor | None]]:
    """``(x0_logits, log_posterior, description, library)``: a hand-made case, one from the library's posteriors
    (with the library's :meth:`DiscreteDiffusion.p_log_prev` as ``library``, ``(N, K+1)``), random batched ones
    and a confident prediction against log-probabilities of −200, whose exp underflows in float32."""
    hand_logits = torch.tensor([0.0, math.log(3.0)])  # p(x0) = (0.25, 0.75)
    hand_post = torch.tensor([[0.5, 0.1, 0.4], [0.2, 0.6, 0.2]]).log()
    cases: list[tuple[torch.Tensor, torch.Tensor, str, torch.Tensor | None]] = [
        (hand_logits, hand_post, "x0_logits = [0, log 3] (p(x0) = [0.25, 0.75]) and posterior rows "
                                 "[0.5, 0.1, 0.4], [0.2, 0.6, 0.2] (K = 2)", None)]
    g = seeded(60)
    k, n, t = 4, 6, 5
    diffusion = DiscreteDiffusion(k, num_steps=10)
    x_t = torch.tensor([[0, 4, 2, 4, 3, 1]])
    logits = torch.randn(1, k, n, generator=g) * 2.0
    rows = [diffusion.log_q_posterior(index_to_log_onehot(torch.full((1, n), x0), k + 1), x_t, torch.tensor([t]))
            for x0 in range(k)]
    log_post = torch.stack(rows, dim=1)[0].permute(2, 0, 1).contiguous()  # (N, K, K+1)
    library = diffusion.p_log_prev(logits, x_t, torch.tensor([t]))[0].T.contiguous()  # (N, K+1)
    cases.append((logits[0].T.contiguous(), log_post, f"the library's posteriors of DiscreteDiffusion(K={k}, T=10) at "
                                                      f"t = {t} for x_t = {x_t[0].tolist()}: x0_logits (N, K) = "
                                                      f"{(n, k)}, log_posterior (N, K, K+1) = {(n, k, k + 1)}", library))
    logits = torch.randn(2, 3, 5, generator=g) * 3.0
    log_post = torch.log_softmax(torch.randn(2, 3, 5, 6, generator=g) * 2.0, dim=-1)
    cases.append((logits, log_post, "random x0_logits (2, 3, K=5) and log_posterior (2, 3, 5, 6)", None))
    # a confident prediction against posteriors whose zeros are log-probabilities of −200 (not floored at
    # LOG_ZERO): the answer holds entries near −200, whose exp is 0 in float32
    confident = torch.tensor([[0.0, -200.0, -150.0, 30.0], [5.0, 5.0, -120.0, -90.0]])
    probs = torch.tensor([[0.6, 0.0, 0.0, 0.0, 0.4], [0.0, 0.7, 0.0, 0.0, 0.3], [0.0, 0.0, 0.5, 0.0, 0.5],
                          [0.0, 0.0, 0.0, 0.9, 0.1]])
    tiny = probs.log().clamp_min(-200.0).expand(2, 4, 5).contiguous()
    cases.append((confident, tiny, f"a confident prediction, x0_logits = {confident.tolist()}, and posteriors "
                                   "holding log-probabilities of −200 (K = 4; exp(−200) is 0 in float32)", None))
    return cases


@register_task("reverse_step", LESSON,
               hint_on_error="log_p0 = torch.log_softmax(x0_logits, -1); return torch.logsumexp(log_posterior + "
                             "log_p0.unsqueeze(-1), dim=-2).")
def check_reverse_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(x0_logits, log_posterior)`` → ``log p(x_{t−1} | x_t)`` ``(..., K+1)``, the log of the posterior mixed over
    the prediction (VQ-Diffusion eq. 11), equal to :meth:`DiscreteDiffusion.p_log_prev` on the library's posteriors."""
    for logits, log_post, name, library in reverse_step_cases():
        shape = tuple(log_post.shape[:-2]) + (log_post.shape[-1],)
        where = f"for {name}"
        args = (logits.clone(), log_post.clone())
        value = expect_tensor(ctx.call(fn, *args), "reverse_step")
        _unchanged((logits, log_post), args, where)
        if tuple(value.shape) == tuple(log_post.shape[:-1]):
            raise WrongAnswer(f"{where}: expected log-probabilities of shape {shape}, got {tuple(value.shape)}: sum over x0 "
                              "(axis −2 of log_posterior) and keep x_{t−1} (the last axis, K + 1 classes)")
        got = _float_tensor(value, "reverse_step", shape, where, "log-probabilities")
        expected = reference_reverse_step(logits, log_post)
        ok = _same(got, expected, atol=1e-4)
        if ok and library is not None:
            ok = _same(got.exp(), library.exp(), atol=1e-5, rtol=1e-4)
        if ok:
            continue
        if torch.isinf(got).any():
            hint = ("you got −inf where the answer is finite: exp() of a very negative log-probability underflows to 0 in "
                    "float32; stay in log space with torch.logsumexp (which never leaves it)")
        elif (got >= 0).all() and _same(got, expected.exp(), atol=1e-5):
            hint = "you returned probabilities; return LOG-probabilities (log p(x_{t−1} | x_t))"
        elif _same(got, reference_reverse_step(logits, log_post, mean_log=True), atol=1e-4):
            hint = ("you averaged the log-probabilities, Σ p(x0) log q: the mixture is over PROBABILITIES, "
                    "log Σ_x0 exp(log q(x_{t−1} | x_t, x0) + log p(x0 | x_t)), a log-sum-exp")
        elif _same(got, reference_reverse_step(logits, log_post, normalise=False), atol=1e-4):
            hint = ("x0_logits are logits, not log-probabilities: normalise the prediction first, "
                    "log p(x0 | x_t) = torch.log_softmax(x0_logits, dim=-1)")
        elif _same(got, torch.logsumexp(log_post.double(), dim=-2) - math.log(log_post.shape[-2]), atol=1e-4):
            hint = ("you weighted every x0 equally: weight each posterior by the prediction p(x0 | x_t) = "
                    "softmax(x0_logits), i.e. add log_softmax(x0_logits) before the log-sum-exp")
        elif _same(got, reference_reverse_step(logits, log_post, hard=True), atol=1e-4) or _same(
                got, reference_reverse_step(logits, log_post, hard=True, normalise=False), atol=1e-4):
            hint = "you took the max over x0; the marginal SUMS over x0: torch.logsumexp(..., dim=-2)"
        else:
            total = torch.logsumexp(got.double(), dim=-1)
            hint = ("log p(x_{t−1} | x_t) = logsumexp over x0 (axis −2) of log_posterior + log_softmax(x0_logits)"
                    "[..., None]")
            if (total.abs() > 1e-4).any():
                hint = f"your output is not normalised (Σ exp = {_fmt(total.exp().flatten()[:3], 3)}…); " + hint
        detail = f"expected {_fmt(expected)}, got {_fmt(got)}: " if logits.dim() == 1 else ""
        raise WrongAnswer(f"{where}: {detail}{hint}")


# --------------------------------------------------------------------------------------------------------
# Task 5: truncation
# --------------------------------------------------------------------------------------------------------


def reference_truncate(log_probs: torch.Tensor, r: float, *, below: bool = False, renormalise: bool = True,
                       unsorted: bool = False, ascending: bool = False, ties: bool = False) -> torch.Tensor:
    """Keep, along the last axis, the smallest set of most likely classes whose mass is ``>= r`` (a class is kept
    while the mass before it is ``< r``), renormalise, dropped classes ``-inf``: the library's
    :meth:`DiscreteDiffusion.truncate` on the last axis (with ``-inf`` for its finite floor). The keywords build
    wrong variants: the set whose mass stays below r, no renormalisation, the decision left in sorted order, an
    ascending sort, every class tied with the crossing one kept."""
    probs = log_probs.double().exp()
    sorted_p, order = probs.sort(dim=-1, descending=not ascending)
    before = sorted_p.cumsum(-1) - sorted_p
    keep_sorted = sorted_p.cumsum(-1) < r if below else before < r
    if not below:
        keep_sorted[..., 0] = True
    if unsorted:
        keep = keep_sorted
    else:
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if ties:
        last = torch.where(keep, probs, torch.inf).min(dim=-1, keepdim=True).values
        keep = probs >= last
    out = torch.where(keep, log_probs.double(), -torch.inf)
    if renormalise:
        out = out - torch.logsumexp(out, dim=-1, keepdim=True)
    return out.to(log_probs.dtype)


def _truncate_cases() -> list[tuple[torch.Tensor, float]]:
    hand = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    tie = torch.tensor([0.1, 0.3, 0.3, 0.3]).log()
    uniform = torch.full((1, 8), 1 / 8).log()
    rand = torch.log_softmax(torch.randn(2, 3, 12, generator=seeded(61)) * 2.0, dim=-1)
    return [(hand, 0.7), (hand, 0.9), (hand, 0.3), (tie, 0.5), (uniform, 0.6), (rand, 0.86), (rand, 0.5), (hand, 1.0)]


TRUNCATE_CASES = _truncate_cases()
TIE_CASES = (3, 4)  # indices of the cases with classes tied at the boundary (any of them may be kept)
DROPPED_BELOW = -50.0
"""A returned log-probability below this (probability < 2e-22) counts as a dropped class: ``-inf``, or a finite
floor such as the library's ``LOG_ZERO − log(kept mass)``."""

TRUNCATE_VARIANTS: list[tuple[dict, str]] = [
    (dict(below=True), "keep the class that CROSSES r too: a class is kept while the mass BEFORE it is < r, so the "
                       "kept mass reaches r (you kept the set whose mass stays below r)"),
    (dict(unsorted=True), "the keep/drop decision was made in sorted order but applied to the classes in their "
                          "original order: map it back with the sort indices (scatter)"),
    (dict(ascending=True), "sort by DEcreasing probability: keep the most likely classes"),
]


def _kept_by(value: object, log_probs: torch.Tensor) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor) and value.shape == log_probs.shape and value.is_floating_point():
        return value.detach() > DROPPED_BELOW
    return None


def _truncate_set_hint(ctx: CheckContext, fn: Callable, log_probs: torch.Tensor, r: float, kept: torch.Tensor) -> str:
    """The hint for a wrong kept set: a known mistake that reproduces the student's sets on every case without ties,
    else the tie mistake on this case, else what is wrong with this set (too little mass, too many, not the most
    likely)."""
    theirs = []
    for i, (x, q) in enumerate(TRUNCATE_CASES):
        if i not in TIE_CASES:
            mine = _kept_by(ctx.call(fn, x.clone(), q), x)
            if mine is not None:
                theirs.append((x, q, mine))
    if theirs and all(mine.all() for _, _, mine in theirs):
        return "you dropped no class: the classes outside the smallest set of mass ≥ r must become −inf"
    for kwargs, hint in TRUNCATE_VARIANTS:
        if theirs and all(torch.equal(mine, reference_truncate(x, q, **kwargs) > -torch.inf) for x, q, mine in theirs):
            return hint
    probs = log_probs.double().exp()
    need = (reference_truncate(log_probs, r) > -torch.inf).sum(-1)
    mass = torch.where(kept, probs, 0.0).sum(-1)
    if torch.equal(kept, reference_truncate(log_probs, r, ties=True) > -torch.inf):
        return ("ties: several classes share the probability of the one that crosses r; keep only as many as needed "
                f"(here {need.flatten().tolist()} class(es), any of the tied ones): decide by position in the sorted "
                "order, not by comparing with a threshold probability")
    if (mass < r - 1e-6).any():
        return (f"the kept mass {_fmt(mass.flatten()[:3], 3)} is below r = {r:g}: keep the most likely classes while "
                "the mass BEFORE them is < r, the one that crosses r included")
    if (kept.sum(-1) > need).any():
        return (f"that is not the SMALLEST set (expected {need.flatten().tolist()} class(es) kept, you kept "
                f"{kept.sum(-1).flatten().tolist()}): stop once the mass before a class reaches r")
    return "keep the MOST likely classes: sort in decreasing order, keep while the mass before is < r"


@register_task("truncate", LESSON,
               hint_on_error="sort the probabilities in decreasing order, keep a class while the mass BEFORE it is < r, "
                             "scatter back, set the others to -inf and renormalise (log_softmax).")
def check_truncate_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(log_probs, r)`` → log-probabilities of the same shape: the smallest set of most likely classes with mass
    ``>= r`` renormalised, the rest ``-inf`` (anything below :data:`DROPPED_BELOW`), as
    :meth:`DiscreteDiffusion.truncate` on the last axis. Classes tied in probability at the boundary may be kept in
    any order, as long as the set is the smallest."""
    for log_probs, r in TRUNCATE_CASES:
        where = f"for log_probs of shape {tuple(log_probs.shape)} and r = {r:g}"
        if log_probs.dim() == 1 or log_probs.shape[0] == 1 and log_probs.dim() == 2:
            where = f"for probabilities {_fmt(log_probs.exp(), 3)} and r = {r:g}"
        arg = log_probs.clone()
        got = _float_tensor(ctx.call(fn, arg, r), "truncate", tuple(log_probs.shape), where, "log-probabilities")
        _unchanged((log_probs,), (arg,), where)
        probs = log_probs.double().exp()
        expected = reference_truncate(log_probs, r)
        need = (expected > -torch.inf).sum(-1)
        kept = got > DROPPED_BELOW
        mass = torch.where(kept, probs, 0.0).sum(-1)
        most_likely = (torch.where(kept, probs, torch.inf).min(-1).values
                       >= torch.where(kept, -torch.inf, probs).max(-1).values - 1e-12)
        right_set = bool((kept.sum(-1) == need).all() and (mass >= r - 1e-6).all() and most_likely.all())
        renormalised = torch.where(kept, log_probs.double() - mass.log().unsqueeze(-1), 0.0)
        if right_set and _same(torch.where(kept, got.double(), 0.0), renormalised, atol=1e-5):
            continue
        if (got >= 0).all() and _same(got, expected.exp(), atol=1e-5):
            hint = "you returned probabilities; return LOG-probabilities (renormalised log p, −inf for dropped classes)"
        elif torch.equal(got == 0, expected == -torch.inf) and (got == 0).any():
            hint = ("a dropped class must get log-probability −inf (probability 0); log-probability 0 means "
                    "probability 1")
        elif right_set and _same(torch.where(kept, got.double(), 0.0), torch.where(kept, log_probs.double(), 0.0)):
            hint = ("you kept the right classes but did not renormalise: their probabilities must sum to 1 again, "
                    "subtract the log of the kept mass (or log_softmax over the kept classes)")
        elif right_set:
            hint = ("you kept the right classes but their values are wrong: each kept class gets log p − log(kept mass) "
                    "(a log_softmax over the kept classes)")
        else:
            hint = _truncate_set_hint(ctx, fn, log_probs, r, kept)
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 6: the training loss, assembled
# --------------------------------------------------------------------------------------------------------


def reference_loss(diffusion: DiscreteDiffusion, x0_logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor, aux_weight: float = 5e-4, *, reverse_kl: bool = False, times_steps: bool = True,
                   adaptive: bool = True, normalise: bool = True, aux_on_posterior: bool = False,
                   no_aux: bool = False) -> torch.Tensor:
    """VQ-Diffusion's / Diffsound's loss, term by term (= :meth:`DiscreteDiffusion.loss` with uniform t). The
    keywords build the wrong variants the check recognises: KL the wrong way round, no ``× T``, the auxiliary term
    without its ``2 − (t−1)/T`` weighting, logits taken as log-probabilities, the auxiliary cross-entropy of the
    reverse step instead of the x_0 prediction, no auxiliary term at all."""
    k, steps = diffusion.num_classes, diffusion.num_steps
    log_p0 = torch.log_softmax(x0_logits, dim=1) if normalise else x0_logits
    log_model = diffusion.log_q_posterior(log_p0, x_t, t)
    log_true = diffusion.log_q_posterior(index_to_log_onehot(x0, k + 1), x_t, t)
    if reverse_kl:
        kl = (log_model.exp() * (log_model - log_true)).sum(dim=1)
    else:
        kl = (log_true.exp() * (log_true - log_model)).sum(dim=1)
    nll = -log_model.gather(1, x0[:, None])[:, 0]
    vb = torch.where((t == 1)[:, None], nll, kl)
    ce = -(log_model if aux_on_posterior else log_p0).gather(1, x0[:, None])[:, 0]
    scale = (2.0 - (t - 1).float() / steps)[:, None] if adaptive else torch.ones_like(t, dtype=torch.float32)[:, None]
    per_token = vb + (0.0 if no_aux else aux_weight) * scale * ce
    return (steps if times_steps else 1) * per_token.mean()


def loss_cases() -> list[tuple[DiscreteDiffusion, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, str]]:
    """(diffusion, x0_logits (B, K, N), x0 (B, N), x_t (B, N), t (B,), aux_weight, description); seeded."""
    g = seeded(606)
    cases = []
    for k, steps, b, n, ts, aux, confidence in ((6, 20, 3, 7, (1, 7, 20), 5e-4, 3.0),
                                                (8, 100, 4, 10, (2, 30, 64, 97), 0.05, 1.0),
                                                (4, 10, 2, 5, (1, 5), 0.5, 6.0)):
        diffusion = DiscreteDiffusion(MaskReplaceSchedule(k, num_steps=steps))
        x0 = torch.randint(0, k, (b, n), generator=g)
        t = torch.tensor(ts)
        x_t = diffusion.q_sample(x0, t, generator=g)
        logits = confidence * torch.randn(b, k, n, generator=g) + 2.0
        cases.append((diffusion, logits, x0, x_t, t, aux,
                      f"K = {k}, T = {steps}, a batch of {b} with t = {list(ts)}, aux_weight = {aux}"))
    return cases


@register_task("diffsound_loss", LESSON,
               hint_on_error="log_p0 = log_softmax(x0_logits, 1); KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)) from "
                             "two log_q_posterior calls (−log p_θ(x0 | x_1) at t = 1) + aux_weight·(2 − (t−1)/T)·CE; "
                             "T × the mean over tokens.")
def check_diffsound_loss_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(diffusion, x0_logits, x0, x_t, t, aux_weight)`` must equal :meth:`DiscreteDiffusion.loss` and carry its
    gradient to the logits."""
    for diffusion, logits, x0, x_t, t, aux, name in loss_cases():
        where = f"for {name}"
        leaf = logits.clone().requires_grad_(True)
        args = (x0.clone(), x_t.clone(), t.clone())
        value = ctx.call(fn, diffusion, leaf, *args, aux)
        _unchanged((x0, x_t, t), args, where)
        if isinstance(value, (int, float)):
            raise WrongAnswer(f"{where}: you returned a Python number ({value:.4g}): training needs a tensor that "
                              "backward() can go through; do not call .item() or float() on the loss")
        got = expect_tensor(value, "diffsound_loss")
        if got.numel() != 1:
            raise WrongAnswer(f"{where}: expected one number (a 0-d tensor), got shape {tuple(got.shape)}: average "
                              "over the batch and the tokens")
        expected, _ = diffusion.loss(logits, x0, x_t, t, aux_weight=aux)
        got_value = float(got.detach())
        if math.isnan(got_value):
            raise WrongAnswer(f"{where}: your loss is NaN: look for 0 · (−inf) in the KL (use the library's log floor, "
                              "not float('-inf')) or log of a negative number")

        def near(other: torch.Tensor, got_value: float = got_value) -> bool:
            return math.isclose(got_value, float(other), rel_tol=1e-4, abs_tol=1e-5)

        if not near(expected):
            variants = [
                (dict(reverse_kl=True), "the KL is the wrong way round: KL(q ‖ p_θ) = Σ q (log q − log p_θ), "
                 "weighted by the TRUE posterior q(x_{t−1} | x_t, x0)"),
                (dict(times_steps=False), "missing the factor T: t is drawn with probability 1/T, so one step's "
                 "L_{t−1} times T estimates the whole bound Σ_t L_{t−1}"),
                (dict(adaptive=False), "the auxiliary term's weight is aux_weight · (2 − (t−1)/T), not aux_weight "
                 "alone (it counts more at small t)"),
                (dict(normalise=False), "x0_logits are logits, not log-probabilities: normalise first, "
                 "log p_θ(x0 | x_t) = torch.log_softmax(x0_logits, dim=1)"),
                (dict(aux_on_posterior=True), "the auxiliary cross-entropy is on the x0 PREDICTION, −log p_θ(x0 | x_t) "
                 "(log_softmax of the logits), not on the reverse step p_θ(x_{t−1} | x_t)"),
                (dict(no_aux=True), "you left out the auxiliary term: + aux_weight · (2 − (t−1)/T) · (−log p_θ(x0 | x_t))"),
            ]
            for kwargs, hint in variants:
                if near(reference_loss(diffusion, logits, x0, x_t, t, aux, **kwargs)):
                    raise WrongAnswer(f"{where}: expected {float(expected):.5f}, got {got_value:.5f}: {hint}")
            raise WrongAnswer(f"{where}: expected {float(expected):.5f}, got {got_value:.5f}: the bound term is "
                              "KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)) per token (−log p_θ(x0 | x_1) at t = 1), "
                              "plus the auxiliary cross-entropy; T × their mean over the batch and the tokens")
        if got.grad_fn is None:
            raise WrongAnswer(f"{where}: the value is right but it carries no gradient (detached, or computed under "
                              "torch.no_grad()): the optimizer could not train the network with it")
        (grad,) = torch.autograd.grad(got, leaf)
        ref_leaf = logits.clone().requires_grad_(True)
        (ref_grad,) = torch.autograd.grad(diffusion.loss(ref_leaf, x0, x_t, t, aux_weight=aux)[0], ref_leaf)
        if not _same(grad, ref_grad, atol=1e-6, rtol=1e-3):
            raise WrongAnswer(f"{where}: the value is right but its gradient is not: part of the loss is detached "
                              "(e.g. the model's posterior or the prediction) and does not train the network")
