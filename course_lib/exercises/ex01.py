"""Checks for exercise notebook 01, the VQ-VAE: nearest code, straight-through, VQ loss, EMA update, perplexity.

Each checker compares the student's function with the course's reference (:mod:`course_lib.quantize`, or
a closed form written out here) on small hand-made and random inputs, gradients included where the task is
about gradients, and turns the first mismatch into a hint naming the likeliest mistake: an inner product
instead of a distance, a missing ``.detach()``, β on the wrong term (taming-transformers' ``legacy`` loss),
a sum instead of a mean, swapped EMA weights, division by unsmoothed counts, entropy instead of perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from course_lib.exercises.checks import CheckContext, WrongAnswer, expect_tensor, register_task, seeded
from course_lib.quantize import is_nearest, laplace_smoothing, nearest_code, perplexity

LESSON = "01_vq_vae"

__all__ = ["LESSON", "reference_ema_update", "reference_vq_loss"]


# --------------------------------------------------------------------------------------------------------
# Task 1: nearest code
# --------------------------------------------------------------------------------------------------------


def _nearest_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = seeded(1)
    hand = (torch.tensor([[0.4], [0.6], [7.0], [-3.0]]), torch.tensor([[0.0], [1.0], [10.0]]))
    scaled = torch.randn(12, 4, generator=g) * torch.linspace(0.2, 3.0, 12)[:, None]  # codes of very different norms
    return [hand, (torch.randn(64, 4, generator=g), scaled), (torch.randn(500, 8, generator=g) * 2,
                                                              torch.randn(32, 8, generator=g))]


@register_task("nearest_code", LESSON, hint_on_error="compute all N×K squared distances, then argmin over the codes.")
def check_nearest_code_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(z (N, D), codebook (K, D))`` must return the long ``(N,)`` indices of the nearest codes."""
    for z, codebook in _nearest_cases():
        expected = nearest_code(z, codebook)
        z_in, cb_in = z.clone(), codebook.clone()
        got = expect_tensor(ctx.call(fn, z_in, cb_in), "nearest_code", "a tensor of code indices")
        where = f"for z of shape {tuple(z.shape)} and a codebook of shape {tuple(codebook.shape)}"
        if not (torch.equal(z_in, z) and torch.equal(cb_in, codebook)):
            raise WrongAnswer(f"{where} your function changed its inputs in place; compute on new tensors")
        if got.shape != expected.shape:
            hint = (" (one index per codebook entry: take the argmin over the codes, dim=1, not over the inputs)"
                    if got.shape == (codebook.shape[0],) else "")
            raise WrongAnswer(f"{where} expected indices of shape (N,) = {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}{hint}")
        if got.is_floating_point():
            raise WrongAnswer(f"{where} expected integer indices (torch.long), got {got.dtype}: return the argmin, "
                              "not the distances")
        got = got.long()
        if torch.equal(got, expected) or is_nearest(z, codebook, got):  # a near-tie may round either way
            continue
        if torch.equal(got, (z @ codebook.T).argmax(dim=1)):
            hint = ("you picked the largest inner product z·e; the nearest code minimises ‖z − e‖² = ‖z‖² − 2 z·e "
                    "+ ‖e‖², and the ‖e‖² term matters when codes have different lengths")
        elif torch.equal(got, torch.cdist(z, codebook, p=1).argmin(dim=1)):
            hint = "that is the L1 (Manhattan) distance; use the squared Euclidean distance ‖z − e‖²"
        elif torch.equal(got, (codebook.pow(2).sum(1)[None, :] + 2 * z @ codebook.T).argmin(1)):
            hint = "sign error: ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖² (minus the cross term)"
        else:
            bad = int((got != expected).nonzero()[0, 0])
            hint = (f"row {bad}: expected code {int(expected[bad])}, got {int(got[bad])}; the distance of z_n to "
                    "code k is ((z[n] - codebook[k]) ** 2).sum()")
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 2: straight-through estimator
# --------------------------------------------------------------------------------------------------------


@register_task("straight_through", LESSON,
               hint_on_error="one line: z plus a detached difference (z_q − z).")
def check_straight_through_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(z, z_q)``: forward value ``z_q``; the gradient w.r.t. ``z`` is the identity; none reaches ``z_q``."""
    g = seeded(2)
    for shape in [(2, 3, 5), (4, 8)]:
        z = torch.randn(*shape, generator=g, requires_grad=True)
        codebook_out = torch.randn(*shape, generator=g).requires_grad_(True)  # stands for e_{k*}: a leaf with grad
        got = expect_tensor(ctx.call(fn, z, codebook_out), "straight_through")
        where = f"for inputs of shape {shape}"
        if got.shape != z.shape:
            raise WrongAnswer(f"{where} expected an output of the same shape, got {tuple(got.shape)}")
        if not torch.allclose(got.detach(), codebook_out.detach(), atol=1e-6):
            if torch.allclose(got.detach(), z.detach(), atol=1e-6):
                raise WrongAnswer(f"{where} your output equals z: the forward value must be z_q (the decoder sees "
                                  "the quantized vectors), only the gradient should be z's")
            raise WrongAnswer(f"{where} the forward value must equal z_q exactly (z + (z_q − z) = z_q)")
        if not got.requires_grad:
            raise WrongAnswer(f"{where} no gradient flows through your output (did you detach everything?): the "
                              "encoder must get the decoder's gradient, return z + (z_q − z).detach()")
        weight = torch.randn(*shape, generator=g)
        (got * weight).sum().backward()
        if z.grad is None or z.grad.abs().max() == 0:
            hint = ("z gets no gradient: z + (z_q − z) without .detach() cancels z out of the graph"
                    if z.grad is not None  # z is in the graph, but its two paths cancel
                    else "z gets no gradient: returning z_q cuts the encoder off from the loss")
            raise WrongAnswer(f"{where} {hint}; return z + (z_q − z).detach()")
        if not torch.allclose(z.grad, weight, atol=1e-6):
            raise WrongAnswer(f"{where} the gradient w.r.t. z must be copied unchanged (identity), got a different "
                              "gradient; return z + (z_q − z).detach()")
        if codebook_out.grad is not None and codebook_out.grad.abs().max() > 0:
            raise WrongAnswer(f"{where} the decoder's gradient also reaches z_q: the codebook must learn only from "
                              "its own loss (or the EMA), detach the (z_q − z) term")


# --------------------------------------------------------------------------------------------------------
# Task 3: the VQ loss with β
# --------------------------------------------------------------------------------------------------------


def reference_vq_loss(z: torch.Tensor, z_q: torch.Tensor, beta: float) -> torch.Tensor:
    """``mean((sg[z] − z_q)²) + β · mean((z − sg[z_q])²)``: codebook loss + β · commitment loss (a scalar)."""
    return ((z.detach() - z_q) ** 2).mean() + beta * ((z - z_q.detach()) ** 2).mean()


def _grads(loss: torch.Tensor, z: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gz, gq = torch.autograd.grad(loss, (z, z_q), allow_unused=True)
    return (torch.zeros_like(z) if gz is None else gz), (torch.zeros_like(z_q) if gq is None else gq)


@register_task("vq_loss", LESSON,
               hint_on_error="two mean squared errors, each with one side detached, β on the commitment term.")
def check_vq_loss_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(z, z_q, beta)`` → scalar; value and gradients compared with :func:`reference_vq_loss`."""
    g = seeded(3)
    for shape, beta in [((2, 4, 6), 0.25), ((3, 5), 0.5)]:
        z = torch.randn(*shape, generator=g, requires_grad=True)
        z_q = torch.randn(*shape, generator=g, requires_grad=True)
        got = expect_tensor(ctx.call(fn, z, z_q, beta), "vq_loss", "a scalar tensor")
        where = f"for z, z_q of shape {shape} and beta={beta}"
        if got.numel() != 1:
            raise WrongAnswer(f"{where} expected a scalar (one number), got shape {tuple(got.shape)}: take the mean")
        expected = reference_vq_loss(z, z_q, beta)
        n = z.numel()
        got_v, exp_v = float(got.detach()), float(expected.detach())
        if not math.isclose(got_v, exp_v, rel_tol=1e-4, abs_tol=1e-6):
            mse = float(((z - z_q) ** 2).mean().detach())
            if math.isclose(got_v, exp_v * n, rel_tol=1e-4):
                hint = "you summed the squared errors: use the mean (the paper's ‖·‖², averaged over all elements)"
            elif any(math.isclose(got_v, c * mse, rel_tol=1e-4) for c in (1.0, 2.0)):
                hint = "you forgot β: the loss is codebook term + β · commitment term"
            else:
                hint = "expected mean((sg[z] − z_q)²) + β·mean((z − sg[z_q])²)"
            raise WrongAnswer(f"{where} expected {exp_v:.5f}, got {got_v:.5f}: {hint}")
        if not got.requires_grad:
            raise WrongAnswer(f"{where} your loss has no gradient: detach only one side of each term")
        gz, gq = _grads(got.reshape(()), z, z_q)
        ez, eq = _grads(expected, z, z_q)
        if torch.allclose(gz, ez, atol=1e-6) and torch.allclose(gq, eq, atol=1e-6):
            continue
        if torch.allclose(gz, ez / beta, atol=1e-6) and torch.allclose(gq, eq * beta, atol=1e-6):
            hint = ("β multiplies the codebook term instead of the commitment term (the `legacy` loss of "
                    "taming-transformers): β scales ‖z − sg[e]‖², the gradient that reaches the encoder")
        elif torch.allclose(gz, ez * (1 + beta) / beta, atol=1e-6) and torch.allclose(gq, eq * (1 + beta), atol=1e-6):
            hint = ("without stop-gradients both terms push both z and z_q: detach z in the codebook term and z_q "
                    "in the commitment term")
        elif gz.abs().max() == 0:
            hint = "z gets no gradient: the commitment term is (z − z_q.detach())², with z not detached"
        elif gq.abs().max() == 0:
            hint = "z_q gets no gradient: the codebook term is (z.detach() − z_q)², with z_q not detached"
        else:
            hint = "the gradients differ from those of mean((sg[z] − z_q)²) + β·mean((z − sg[z_q])²)"
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 4: one EMA codebook update with Laplace smoothing
# --------------------------------------------------------------------------------------------------------


def reference_ema_update(cluster_size: torch.Tensor, embed_sum: torch.Tensor, z: torch.Tensor, codes: torch.Tensor,
                         decay: float, epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VQ-VAE appendix: ``N ← γN + (1−γ)n``, ``m ← γm + (1−γ)Σz``, ``e = m / Ñ`` with Laplace-smoothed ``Ñ``."""
    k = cluster_size.shape[0]
    counts = torch.bincount(codes, minlength=k).to(cluster_size.dtype)
    sums = torch.zeros_like(embed_sum).index_add_(0, codes, z.to(embed_sum.dtype))
    new_size = decay * cluster_size + (1 - decay) * counts
    new_sum = decay * embed_sum + (1 - decay) * sums
    return new_size, new_sum, new_sum / laplace_smoothing(new_size, epsilon)[:, None]


def _ema_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float]]:
    # hand case: 3 codes of dim 1, code 2 has never been used (count 0): needs the smoothing
    hand = (torch.tensor([2.0, 1.0, 0.0]), torch.tensor([[2.0], [10.0], [0.0]]),
            torch.tensor([[1.0], [2.0], [9.0]]), torch.tensor([0, 0, 1]), 0.5, 0.1)
    g = seeded(4)
    k, d, n = 8, 3, 40
    size = torch.rand(k, generator=g) * 5
    size[5] = 0.0
    z = torch.randn(n, d, generator=g)
    codes = torch.randint(0, k, (n,), generator=g)
    codes[codes == 5] = 0
    return [hand, (size, torch.randn(k, d, generator=g) * size[:, None], z, codes, 0.9, 0.1)]


@register_task("ema_update", LESSON,
               hint_on_error="counts with torch.bincount, sums with index_add_, then the two EMAs and the smoothing.")
def check_ema_update_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(cluster_size (K,), embed_sum (K, D), z (N, D), codes (N,), decay, epsilon)`` → the three new tensors."""
    for cluster_size, embed_sum, z, codes, decay, eps in _ema_cases():
        inputs = [t.clone() for t in (cluster_size, embed_sum, z, codes)]
        out = ctx.call(fn, *inputs, decay, eps)
        where = f"for K={cluster_size.shape[0]} codes, decay={decay}, epsilon={eps:g}"
        if any(not torch.equal(a, b) for a, b in zip(inputs, (cluster_size, embed_sum, z, codes))):
            raise WrongAnswer(f"{where} your function changed its inputs in place (mul_, add_, +=): return new "
                              "tensors")
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise WrongAnswer(f"{where} expected a tuple (new_cluster_size, new_embed_sum, new_codebook), got "
                              f"{type(out).__name__}")
        got_size, got_sum, got_code = (expect_tensor(t, "ema_update") for t in out)
        exp_size, exp_sum, exp_code = reference_ema_update(cluster_size, embed_sum, z, codes, decay, eps)
        counts = torch.bincount(codes, minlength=cluster_size.shape[0]).float()
        if got_size.shape != exp_size.shape or not torch.allclose(got_size.float(), exp_size, atol=1e-5):
            swapped = (1 - decay) * cluster_size + decay * counts
            if got_size.shape == exp_size.shape and torch.allclose(got_size.float(), swapped, atol=1e-5):
                hint = "the weights are swapped: keep γ = decay of the OLD value, N ← γ·N + (1 − γ)·n"
            elif got_size.shape == exp_size.shape and torch.allclose(got_size.float(), counts, atol=1e-5):
                hint = "that is this batch's counts n_k; the new cluster size is their EMA γ·N + (1 − γ)·n"
            else:
                hint = "expected γ·cluster_size + (1 − γ)·n_k with n_k = how many z chose code k"
            raise WrongAnswer(f"{where} new_cluster_size is wrong: {hint}")
        if got_sum.shape != exp_sum.shape or not torch.allclose(got_sum.float(), exp_sum, atol=1e-5):
            raise WrongAnswer(f"{where} new_embed_sum is wrong: expected γ·embed_sum + (1 − γ)·Σ_{{n: code n = k}} z_n "
                              "(torch.zeros(K, D).index_add_(0, codes, z) gives the per-code sums)")
        if got_code.shape != exp_code.shape:
            raise WrongAnswer(f"{where} new_codebook should have shape (K, D) = {tuple(exp_code.shape)}, got "
                              f"{tuple(got_code.shape)}")
        if not torch.isfinite(got_code).all():
            raise WrongAnswer(f"{where} your codebook has inf or NaN: a code that was never used has cluster size 0; "
                              "divide by the Laplace-smoothed size (N_k + ε) / (n + K·ε) · n instead")
        if torch.allclose(got_code.float(), exp_code, rtol=1e-4, atol=1e-5):
            continue
        n = exp_size.sum()
        variants = {
            "you divided by the unsmoothed cluster size; use (N_k + ε) / (n + K·ε) · n":
                exp_sum / exp_size.clamp_min(1e-12)[:, None],
            "your smoothed sizes are probabilities: multiply (N_k + ε) / (n + K·ε) by n = Σ_k N_k":
                exp_sum / ((exp_size + eps) / (n + exp_size.numel() * eps))[:, None],
            "you smoothed with N_k + ε only; Laplace smoothing is (N_k + ε) / (n + K·ε) · n":
                exp_sum / (exp_size + eps)[:, None],
        }
        for hint, variant in variants.items():
            if torch.isfinite(variant).all() and torch.allclose(got_code.float(), variant, rtol=1e-4, atol=1e-5):
                raise WrongAnswer(f"{where} new_codebook is wrong: {hint}")
        raise WrongAnswer(f"{where} new_codebook is wrong: expected new_embed_sum / smoothed_size[:, None]")


# --------------------------------------------------------------------------------------------------------
# Task 5: perplexity
# --------------------------------------------------------------------------------------------------------


def _perplexity_cases() -> list[tuple[torch.Tensor, int]]:
    g = seeded(5)
    skewed = torch.cat([torch.zeros(60, dtype=torch.long), torch.randint(0, 16, (40,), generator=g)])
    return [(torch.zeros(10, dtype=torch.long), 8), (torch.arange(8).repeat(4), 8),
            (torch.tensor([0, 0, 1, 2]), 16), (skewed.reshape(2, 5, 10), 16)]


@register_task("codebook_perplexity", LESSON,
               hint_on_error="histogram with torch.bincount, probabilities, entropy, then exp.")
def check_codebook_perplexity_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(codes (any shape), codebook_size)`` → ``exp(−Σ p log p)`` as a float or 0-d tensor."""
    for codes, size in _perplexity_cases():
        value = ctx.call(fn, codes.clone(), size)
        if value is None:
            raise WrongAnswer("codebook_perplexity returned None: did you forget the `return` statement?")
        try:
            got = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise WrongAnswer(f"codebook_perplexity should return one number, got {type(value).__name__}") from None
        expected = float(perplexity(codes, size))
        where = f"for codes of shape {tuple(codes.shape)} and codebook_size={size}"
        if math.isclose(got, expected, rel_tol=1e-4):
            continue
        if math.isnan(got):
            hint = "NaN: unused codes have p = 0 and 0·log 0 must count as 0 (clamp p before the log, or drop them)"
        elif math.isclose(got, math.log(expected), rel_tol=1e-4, abs_tol=1e-6):
            hint = "that is the entropy H; the perplexity is exp(H)"
        elif expected > 1 and math.isclose(got, math.log2(expected), rel_tol=1e-4):
            hint = "that is the entropy in bits; the perplexity is 2^H (bits) = exp(H) (nats)"
        elif math.isclose(got, float(torch.unique(codes).numel()), rel_tol=1e-6):
            hint = ("that is the number of codes used; the perplexity weighs codes by how often they are used "
                    "(it is smaller when use is uneven)")
        else:
            hint = "p_k = count_k / total over all codes (flatten first), perplexity = exp(−Σ p_k log p_k)"
        raise WrongAnswer(f"{where} expected {expected:.4f}, got {got:.4f}: {hint}")
