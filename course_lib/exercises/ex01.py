"""Checks for exercise notebook 01, the VQ-VAE: VQ loss, EMA update, perplexity, then the whole VQ-VAE loss
assembled from an encoder, a codebook and a decoder, and one training step.

Each checker compares the student's function with the course's reference (:mod:`course_lib.quantize`,
:class:`~course_lib.codecs.mel_vqvae.MelVQVAE`, or a closed form written out here) on small hand-made and
random inputs, gradients and updated weights included where the task is about them, and turns the first
mismatch into a hint naming the likeliest mistake: β on the wrong term (taming-transformers' ``legacy``
loss), a missing ``.detach()``, a sum instead of a mean, swapped EMA weights, division by unsmoothed counts,
entropy instead of perplexity, a decoder fed the unquantized latent, a straight-through that sends the
gradient to the codebook, a latent flattened with its channels mixed in, no gradient clipping, gradients
left to accumulate between steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig
from course_lib.exercises.checks import (
    CheckContext,
    PlainSGD,
    WrongAnswer,
    expect_tensor,
    register_task,
    seeded,
)
from course_lib.quantize import laplace_smoothing, nearest_code, perplexity

LESSON = "01_vq_vae"

__all__ = ["LESSON", "reference_ema_update", "reference_vq_loss", "reference_vqvae_loss",
           "reference_vqvae_train_step", "train_step_model", "vqvae_loss_cases", "PlainSGD"]


# --------------------------------------------------------------------------------------------------------
# Task 1: the VQ loss with β
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
# Task 2: one EMA codebook update with Laplace smoothing
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
# Task 3: perplexity
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


# --------------------------------------------------------------------------------------------------------
# Task 4: the VQ-VAE loss, assembled from an encoder, a codebook and a decoder
# --------------------------------------------------------------------------------------------------------


def _flatten_latent(z: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W)`` → ``(B·H·W, D)``: one D-vector per grid cell (channel axis moved last first)."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def reference_vqvae_loss(encoder: Callable, decoder: Callable, codebook: torch.Tensor, x: torch.Tensor,
                         beta: float = 0.25) -> torch.Tensor:
    """The VQ-VAE loss of eq. 3 with L1 reconstruction: ``mean|x − dec(z + sg[e − z])| + mean((sg[z] − e)²)
    + β · mean((z − sg[e])²)``, with ``z = enc(x)`` ``(B, D, H', W')`` and ``e`` the nearest codebook rows."""
    z = encoder(x)
    flat = _flatten_latent(z)
    e = codebook[nearest_code(flat.detach(), codebook.detach())]
    vq = ((flat.detach() - e) ** 2).mean() + beta * ((flat - e.detach()) ** 2).mean()
    z_q = e.reshape(z.shape[0], *z.shape[2:], z.shape[1]).movedim(-1, 1)
    recon = decoder(z + (z_q - z).detach())
    return (recon - x).abs().mean() + vq


def _vqvae_wrong(kind: str) -> Callable:
    """Plausible wrong versions of :func:`reference_vqvae_loss`, to recognise a student's mistake."""

    def loss(encoder: Callable, decoder: Callable, codebook: torch.Tensor, x: torch.Tensor, beta: float):
        z = encoder(x)
        b, d, h, w = z.shape
        flat = z.reshape(-1, d) if kind == "flatten" else _flatten_latent(z)
        e = codebook[nearest_code(flat.detach(), codebook.detach())]
        codebook_term, commitment = ((flat.detach() - e) ** 2).mean(), ((flat - e.detach()) ** 2).mean()
        vq = {"legacy": beta * codebook_term + commitment, "no_stop": (1 + beta) * ((flat - e) ** 2).mean(),
              "no_beta": codebook_term + commitment, "no_vq": 0.0}.get(kind, codebook_term + beta * commitment)
        z_q = e.reshape(b, d, h, w) if kind == "flatten" else e.reshape(b, h, w, d).movedim(-1, 1)
        decoder_input = {"skip": z, "no_straight_through": z_q}.get(kind, z + (z_q - z).detach())
        recon = decoder(decoder_input)
        if kind == "mse":
            return ((recon - x) ** 2).mean() + vq
        if kind == "sum":
            return (recon - x).abs().sum() + ((flat.detach() - e) ** 2).sum() + beta * ((flat - e.detach()) ** 2).sum()
        return (recon - x).abs().mean() + vq

    return loss


_VQVAE_HINTS = {
    "skip": "the decoder got the encoder output z itself: it must get the quantized vectors (through the "
            "straight-through z + (z_q − z).detach()), or the decoder never learns to read codes",
    "no_straight_through": "the encoder gets no gradient from the reconstruction and the codebook gets the "
                           "decoder's: feed the decoder z + (z_q − z).detach() (z_q alone, or the sum without "
                           ".detach(), sends the decoder's gradient to the codebook instead of the encoder)",
    "legacy": "β multiplies the codebook term instead of the commitment term (taming-transformers' `legacy` "
              "loss): β scales ‖z − sg[e]‖², the term that pulls the encoder",
    "no_stop": "without stop-gradients both VQ terms push both z and the codes: detach z in the codebook term "
               "and the codes in the commitment term",
    "no_beta": "you forgot β: the VQ part is codebook term + β · commitment term",
    "no_vq": "only the reconstruction term: add the codebook term and β · the commitment term",
    "flatten": "z.reshape(-1, D) mixes channels and grid positions: move the channel axis last first, "
               "z.movedim(1, -1).reshape(-1, D) (or permute(0, 2, 3, 1)), and undo it the same way",
    "mse": "the reconstruction term is the L1 distance mean|x̂ − x| (Diffsound's), not the squared error",
    "sum": "you summed: every term is a mean over its elements",
}


def vqvae_loss_cases() -> list[tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, float]]:
    """(encoder, decoder, codebook, x, beta) for the check: a stride-2 conv encoder and a transposed-conv
    decoder with seeded weights, a learned codebook (``requires_grad``) and a batch of one-channel images."""
    g = seeded(6)
    cases = []
    for (b, h, w), d, k, beta in [((2, 6, 8), 3, 5, 0.25), ((3, 4, 4), 4, 6, 0.5)]:
        encoder, decoder = nn.Conv2d(1, d, 2, stride=2), nn.ConvTranspose2d(d, 1, 2, stride=2)
        with torch.no_grad():
            for p in [*encoder.parameters(), *decoder.parameters()]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        codebook = (torch.randn(k, d, generator=g) * 0.7).requires_grad_(True)
        cases.append((encoder, decoder, codebook, torch.randn(b, 1, h, w, generator=g), beta))
    return cases


def _loss_and_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _same(a: tuple[float, list[torch.Tensor]], b: tuple[float, list[torch.Tensor]]) -> bool:
    return math.isclose(a[0], b[0], rel_tol=1e-4, abs_tol=1e-6) and all(
        torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(a[1], b[1]))


@register_task("vqvae_loss", LESSON,
               hint_on_error="encode, flatten (channels last), nearest code, straight-through, decode, then "
                             "L1 + codebook term + β·commitment.")
def check_vqvae_loss_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(encoder, decoder, codebook, x, beta)`` → scalar; value and gradients (encoder, decoder, codebook)
    compared with :func:`reference_vqvae_loss`, and with named wrong versions to pick the hint."""
    for encoder, decoder, codebook, x, beta in vqvae_loss_cases():
        params = [*encoder.parameters(), *decoder.parameters(), codebook]
        where = (f"for x of shape {tuple(x.shape)}, a {tuple(codebook.shape)} codebook and beta={beta} "
                 f"(encoder: Conv2d stride 2, decoder: ConvTranspose2d)")
        x_in, codebook_before = x.clone(), codebook.detach().clone()
        got = expect_tensor(ctx.call(fn, encoder, decoder, codebook, x_in, beta), "vqvae_loss", "a scalar tensor")
        if not (torch.equal(x_in, x) and torch.equal(codebook.detach(), codebook_before)):
            raise WrongAnswer(f"{where} your function changed x or the codebook: the loss only reads them")
        if got.numel() != 1:
            raise WrongAnswer(f"{where} expected a scalar (one number), got shape {tuple(got.shape)}: take the means")
        if not got.requires_grad:
            raise WrongAnswer(f"{where} your loss has no gradient: detach only what the stop-gradients say")
        try:
            got_lg = _loss_and_grads(got.reshape(()), params)
        except RuntimeError:
            raise WrongAnswer(f"{where} the gradients of your loss cannot be computed (did you call .backward() "
                              "inside the function?): return the loss, the training step calls backward") from None
        if _same(got_lg, _loss_and_grads(reference_vqvae_loss(encoder, decoder, codebook, x, beta), params)):
            continue
        for kind, hint in _VQVAE_HINTS.items():
            if _same(got_lg, _loss_and_grads(_vqvae_wrong(kind)(encoder, decoder, codebook, x, beta), params)):
                raise WrongAnswer(f"{where}: {hint}")
        expected = float(reference_vqvae_loss(encoder, decoder, codebook, x, beta).detach())
        if not math.isclose(got_lg[0], expected, rel_tol=1e-4, abs_tol=1e-6):
            raise WrongAnswer(f"{where} expected the loss {expected:.5f}, got {got_lg[0]:.5f}: L1 between the "
                              "decoded straight-through latent and x, + mean((sg[z] − e)²) + β·mean((z − sg[e])²)")
        raise WrongAnswer(f"{where} the value is right but the gradients are not: check the .detach() calls "
                          "(straight-through: z + (z_q − z).detach(); codebook term: z detached; commitment: "
                          "codes detached)")


# --------------------------------------------------------------------------------------------------------
# Task 5: one training step
# --------------------------------------------------------------------------------------------------------

TRAIN_STEP_CONFIG = MelVQVAEConfig(sample_rate=8000, n_fft=64, hop_length=16, n_mels=8, channels=4, ch_mult=(1, 2),
                                   num_res_blocks=1, embed_dim=4, codebook_size=8, ema=False, kmeans_init=False,
                                   dead_code_threshold=0.0)
TRAIN_STEP_MAX_NORM = 0.05  # small on purpose: every step of the check is clipped
TRAIN_STEP_LR = 0.05


def train_step_model() -> MelVQVAE:
    """The tiny mel VQ-VAE the check trains (learned codebook), with weights drawn from a fixed seed."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        return MelVQVAE(copy.deepcopy(TRAIN_STEP_CONFIG)).train()


def _train_step_batches() -> list[torch.Tensor]:
    g = seeded(8)
    return [-5.0 + 2.0 * torch.randn(2, 8, 12, generator=g) for _ in range(2)]


def reference_vqvae_train_step(model: nn.Module, optimizer: torch.optim.Optimizer | PlainSGD, log_mel: torch.Tensor,
                               max_norm: float = 1.0, *, clip: bool = True, zero_grad: bool = True,
                               vq: bool = True) -> float:
    """One step: forward, ``L1(x̂, x) + vq.loss``, clear the gradients, backward, clip their global norm to
    ``max_norm``, optimizer step; returns the loss as a float. The keywords switch parts off (wrong versions)."""
    recon, out = model(log_mel)
    loss = F.l1_loss(recon, log_mel) + (out.loss if vq else 0.0)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return float(loss.detach())


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


def _run_reference(steps: int, **wrong: bool) -> tuple[list[float], list[list[torch.Tensor]]]:
    model = train_step_model()
    optimizer = PlainSGD(model.parameters(), lr=TRAIN_STEP_LR)
    losses, params = [], []
    for batch in _train_step_batches()[:steps]:
        losses.append(reference_vqvae_train_step(model, optimizer, batch, TRAIN_STEP_MAX_NORM, **wrong))
        params.append(_params(model))
    return losses, params


@register_task("vqvae_train_step", LESSON,
               hint_on_error="forward, loss = L1 + vq.loss, zero_grad, backward, clip_grad_norm_, step, "
                             "return loss.item().")
def check_vqvae_train_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(model, optimizer, log_mel, max_norm)`` → float, called for two steps on a tiny ``MelVQVAE``
    (learned codebook, :class:`PlainSGD`); the returned losses and the weights after each step are compared with
    :func:`reference_vqvae_train_step` and with named wrong versions."""
    model = train_step_model()
    before = _params(model)
    optimizer = PlainSGD(model.parameters(), lr=TRAIN_STEP_LR)
    expected_losses, expected_params = _run_reference(2)
    where = (f"on a tiny MelVQVAE trained with SGD (lr {TRAIN_STEP_LR}) and max_norm={TRAIN_STEP_MAX_NORM}, "
             "for log-mel batches of shape (2, 8, 12)")
    for step, batch in enumerate(_train_step_batches()):
        value = ctx.call(fn, model, optimizer, batch.clone(), TRAIN_STEP_MAX_NORM)
        if value is None:
            raise WrongAnswer("vqvae_train_step returned None: return the loss as a float, loss.item()")
        if isinstance(value, torch.Tensor):
            raise WrongAnswer(f"{where} you returned a tensor: return loss.item(), a Python float (a tensor keeps "
                              "its whole graph alive in a list of losses)")
        if not isinstance(value, (int, float)):
            raise WrongAnswer(f"{where} expected a float (loss.item()), got {type(value).__name__}")
        at = f"{where}, step {step + 1}:"
        if not math.isclose(value, expected_losses[step], rel_tol=1e-4, abs_tol=1e-6):
            if step == 0:
                recon, out = train_step_model()(batch)
                l1, mse, vq = (float(t.detach()) for t in (F.l1_loss(recon, batch), F.mse_loss(recon, batch), out.loss))
                if math.isclose(value, l1, rel_tol=1e-4):
                    raise WrongAnswer(f"{at} your loss is the reconstruction term alone: add vq.loss (the "
                                      "commitment and codebook terms), or the encoder and the codes drift apart")
                if any(math.isclose(value, v, rel_tol=1e-4) for v in (mse, mse + vq)):
                    raise WrongAnswer(f"{at} the reconstruction term is the L1 distance F.l1_loss(recon, log_mel) "
                                      "(Diffsound's), not the squared error")
            raise WrongAnswer(f"{at} returned loss {value:.5f}, expected {expected_losses[step]:.5f} (the loss "
                              "computed before the update: L1(recon, log_mel) + vq.loss)")
        params = _params(model)
        if _close(params, expected_params[step]):
            continue
        if step == 0 and _close(params, before):
            raise WrongAnswer(f"{at} the weights did not change: call optimizer.step() after loss.backward(), and "
                              "do not zero the gradients between them")
        if step == 0 and _close(params, _run_reference(1, clip=False)[1][0]):
            raise WrongAnswer(f"{at} the update was not clipped: call torch.nn.utils.clip_grad_norm_("
                              "model.parameters(), max_norm) between loss.backward() and optimizer.step()")
        if step == 1 and _close(params, _run_reference(2, zero_grad=False)[1][1]):
            raise WrongAnswer(f"{at} the gradients of the previous step were added to this one's: call "
                              "optimizer.zero_grad() before loss.backward() (gradients accumulate in .grad)")
        raise WrongAnswer(f"{at} the weights after your step differ from one SGD step on the clipped gradient "
                          "of L1 + vq.loss: order zero_grad, backward, clip, step")
