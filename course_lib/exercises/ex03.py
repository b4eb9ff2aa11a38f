"""Checks for exercise notebook 03, MelGAN: receptive field, transposed-conv lengths, hinge losses, feature matching.

Each checker compares the student's function with the course's reference (:mod:`course_lib.vocoders.melgan`,
:mod:`course_lib.nn.gan`, or torch's own ``conv_transpose1d`` for lengths) on hand-made and random inputs, and
turns the first mismatch into a hint naming the likeliest mistake: kernel instead of kernel − 1, a forgotten
dilation, padding counted once, a missing ``output_padding``, a hinge on the generator, a sum over scales, L2
instead of L1, a mean over all elements instead of per layer, a real feature that still carries a gradient.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.exercises.checks import CheckContext, WrongAnswer, register_task
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from course_lib.vocoders.melgan import receptive_field

LESSON = "03_melgan"

__all__ = ["LESSON", "reference_transposed_conv_length"]


def _int(value: object, fn_name: str) -> int:
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise WrongAnswer(f"{fn_name} should return an int, got {type(value).__name__} {value!r}: use integer "
                      "arithmetic (+, -, *, //) only")


def _scalar(value: object, fn_name: str) -> torch.Tensor:
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")
    if not isinstance(value, torch.Tensor):
        raise WrongAnswer(f"{fn_name} should return a torch.Tensor (so that it can be backpropagated), got "
                          f"{type(value).__name__}")
    if value.numel() != 1:
        raise WrongAnswer(f"{fn_name} should return a scalar (one number), got shape {tuple(value.shape)}: "
                          "average (.mean()) what is left")
    return value.reshape(())


def _close(a: torch.Tensor | float, b: torch.Tensor | float, tol: float = 1e-5) -> bool:
    a, b = (float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in (a, b))
    return abs(a - b) <= tol * max(1.0, abs(b))


# --------------------------------------------------------------------------------------------------------
# Task 1: receptive field of a residual stack
# --------------------------------------------------------------------------------------------------------

RF_CASES: list[tuple[int, tuple[int, ...]]] = [(3, (1, 3, 9)), (3, (1,)), (5, (1, 2, 4)), (7, (1,)),
                                               (3, (1, 3, 9, 27)), (2, (1, 2)), (3, (2, 2))]


@register_task("stack_receptive_field", LESSON,
               hint_on_error="each conv adds (kernel_size - 1) x dilation samples to the field of a single sample.")
def check_stack_receptive_field_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(kernel_size, dilations)`` must equal :func:`course_lib.vocoders.melgan.receptive_field`."""
    for kernel, dilations in RF_CASES:
        expected = receptive_field(kernel, dilations)
        got = _int(ctx.call(fn, kernel, list(dilations)), "stack_receptive_field")
        if got == expected:
            continue
        where = f"for kernel_size={kernel} and dilations={list(dilations)} expected {expected} samples, got {got}"
        s = sum(dilations)
        if got == kernel * s:
            hint = "a conv of kernel k widens the field by k - 1 (not k) times its dilation, and the field starts at 1"
        elif got == (kernel - 1) * s:
            hint = "one sample short: a single output sample already sees 1 input sample before any conv (the + 1)"
        elif got == 1 + kernel * s:
            hint = "the widening per conv is (kernel_size - 1) x dilation: a kernel of 1 adds nothing"
        elif got == 1 + (kernel - 1) * len(dilations) or got == kernel * len(dilations):
            hint = "you ignored the dilations: a dilated conv's taps are `dilation` samples apart"
        elif got == 1 + (kernel - 1) * math.prod(dilations) or got == kernel * math.prod(dilations):
            hint = "stacked convs ADD their widenings (sum of the dilations), they do not multiply them"
        else:
            hint = "receptive field = 1 + sum over the convs of (kernel_size - 1) x dilation"
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 2: output length of a transposed convolution
# --------------------------------------------------------------------------------------------------------


def reference_transposed_conv_length(length: int, kernel_size: int, stride: int, padding: int = 0,
                                     output_padding: int = 0) -> int:
    """Output length of ``torch.nn.ConvTranspose1d`` measured by running it (the ground truth of task 2)."""
    weight = torch.zeros(1, 1, kernel_size)
    out = F.conv_transpose1d(torch.zeros(1, 1, length), weight, stride=stride, padding=padding,
                             output_padding=output_padding)
    return int(out.shape[-1])


TCONV_CASES: list[tuple[int, int, int, int, int]] = [
    (10, 16, 8, 4, 0),  # MelGAN's r = 8: kernel 2r, padding r/2 -> exactly 8 x longer
    (33, 4, 2, 1, 0),  # r = 2
    (7, 10, 5, 3, 1),  # an odd ratio r = 5: padding r//2 + 1, output_padding 1
    (5, 3, 2, 0, 0),  # no padding at all
    (12, 7, 3, 2, 1),
    (1, 16, 8, 4, 0),
]


@register_task("transposed_conv_length", LESSON,
               hint_on_error="out = (length - 1) * stride - 2 * padding + kernel_size + output_padding.")
def check_transposed_conv_length_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(length, kernel_size, stride, padding, output_padding)`` must equal ConvTranspose1d's output length."""
    for length, kernel, stride, padding, out_pad in TCONV_CASES:
        expected = reference_transposed_conv_length(length, kernel, stride, padding, out_pad)
        got = _int(ctx.call(fn, length, kernel, stride, padding, out_pad), "transposed_conv_length")
        if got == expected:
            continue
        where = (f"for length={length}, kernel_size={kernel}, stride={stride}, padding={padding}, "
                 f"output_padding={out_pad} expected {expected} samples, got {got}")
        base = (length - 1) * stride + kernel
        if got == length * stride:
            hint = ("length x stride is what MelGAN's choice of kernel and padding achieves, not the general rule: "
                    "derive it from (length - 1) x stride + kernel_size, then padding and output_padding")
        elif got == base - padding + out_pad:
            hint = "padding trims BOTH ends of the output: subtract 2 x padding"
        elif got == base - 2 * padding:
            hint = "you forgot output_padding, the extra samples added at one end"
        elif got == base + 2 * padding + out_pad:
            hint = "in a transposed conv, padding removes samples (it is the padding of the forward conv it inverts)"
        elif got == (length - 1) // stride + 1 or got == (length + 2 * padding - kernel) // stride + 1:
            hint = "that is the length of an ordinary (strided) conv, which shrinks; a transposed conv grows"
        else:
            hint = "each input sample places kernel_size taps, `stride` apart from the previous sample's"
        raise WrongAnswer(f"{where}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 3: hinge losses
# --------------------------------------------------------------------------------------------------------


def _hinge_cases() -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(3)
    hand = ([torch.tensor([[[2.0, 0.5, -1.0]]])], [torch.tensor([[[-2.0, 0.0, 0.5]]])])
    # three scales of different lengths, logits on both sides of +-1 so every hinge is active somewhere
    random = ([torch.randn(2, 1, n, generator=g) * 2 for n in (32, 16, 8)],
              [torch.randn(2, 1, n, generator=g) * 2 for n in (32, 16, 8)])
    lopsided = ([torch.full((1, 1, 4), 3.0), torch.full((1, 1, 2), -0.5)],
                [torch.full((1, 1, 4), -4.0), torch.full((1, 1, 2), 2.0)])
    return [hand, random, lopsided]


@register_task("hinge_losses", LESSON,
               hint_on_error="return (discriminator loss, generator loss), each a scalar averaged over the scales.")
def check_hinge_losses_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(real_logits, fake_logits)`` → ``(d_loss, g_loss)`` as :mod:`course_lib.nn.gan` (mean over scales)."""
    for real, fake in _hinge_cases():
        d_ref = discriminator_hinge_loss(real, fake)
        g_ref = generator_hinge_loss(fake)
        out = ctx.call(fn, [r.clone() for r in real], [f.clone() for f in fake])
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise WrongAnswer(f"hinge_losses should return a pair (d_loss, g_loss), got {type(out).__name__}")
        d, g = _scalar(out[0], "hinge_losses (d_loss)"), _scalar(out[1], "hinge_losses (g_loss)")
        where = f"for {len(real)} scale(s) of logits shaped {[tuple(r.shape) for r in real]}"
        if not _close(d, d_ref):
            n = len(real)
            no_relu = sum(float((1 - r).mean() + (1 + f).mean()) for r, f in zip(real, fake)) / n
            swapped = float(discriminator_hinge_loss(fake, real))
            lsgan = sum(float(((r - 1) ** 2).mean() + (f ** 2).mean()) for r, f in zip(real, fake)) / n
            if _close(d, d_ref * n) and n > 1:
                hint = "you summed the scales: average them (divide by the number of scales)"
            elif _close(d, no_relu):
                hint = "without max(0, .) it is not a hinge: clip each term with torch.relu (F.relu)"
            elif _close(d, swapped):
                hint = "real and fake are swapped: real logits should be pushed ABOVE +1, fake ones BELOW -1"
            elif _close(d, lsgan):
                hint = "that is the least-squares GAN loss; MelGAN uses the hinge max(0, 1 - D(x)) + max(0, 1 + D(G(s)))"
            else:
                hint = "per scale: mean(relu(1 - real)) + mean(relu(1 + fake)); then the mean over scales"
            raise WrongAnswer(f"{where} expected d_loss {float(d_ref):.4f}, got {float(d.detach()):.4f}: {hint}")
        if not _close(g, g_ref):
            n = len(fake)
            hinge_g = sum(float(F.relu(1 - f).mean()) for f in fake) / n
            if _close(g, -g_ref):
                hint = "wrong sign: the generator wants D(G(s)) large, so it minimises -D(G(s))"
            elif _close(g, hinge_g):
                hint = "the generator's term is not a hinge: MelGAN's generator minimises -mean(D(G(s))), unclipped"
            elif _close(g, g_ref * n) and n > 1:
                hint = "you summed the scales: average them (divide by the number of scales)"
            else:
                hint = "per scale: -mean(fake logits); then the mean over scales"
            raise WrongAnswer(f"{where} expected g_loss {float(g_ref):.4f}, got {float(g.detach()):.4f}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 4: feature matching
# --------------------------------------------------------------------------------------------------------


def _fm_case(seed: int) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    # layers of very different sizes, so a mean over all elements at once differs from a mean per layer
    shapes = [[(2, 4, 64), (2, 16, 16), (2, 1, 4)], [(2, 4, 32), (2, 16, 8), (2, 1, 2)]]
    real = [[torch.randn(*s, generator=g) for s in scale] for scale in shapes]
    fake = [[torch.randn(*s, generator=g) * 3 + 1 for s in scale] for scale in shapes]
    return real, fake


@register_task("feature_matching", LESSON,
               hint_on_error="mean |real - fake| per layer, mean over the layers, mean over the scales.")
def check_feature_matching_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(real_feats, fake_feats)`` must equal :func:`course_lib.nn.gan.feature_matching_loss`, real detached."""
    for seed in (0, 1):
        real, fake = _fm_case(seed)
        expected = feature_matching_loss(real, fake)
        real_in = [[t.clone().requires_grad_(True) for t in scale] for scale in real]
        fake_in = [[t.clone().requires_grad_(True) for t in scale] for scale in fake]
        got = _scalar(ctx.call(fn, real_in, fake_in), "feature_matching")
        if not _close(got, expected):
            l2 = sum(sum(float(F.mse_loss(f, r)) for r, f in zip(rs, fs)) / len(rs)
                     for rs, fs in zip(real, fake)) / len(real)
            flat = sum(float(torch.cat([(f - r).abs().flatten() for r, f in zip(rs, fs)]).mean())
                       for rs, fs in zip(real, fake)) / len(real)
            summed = sum(sum(float(F.l1_loss(f, r)) for r, f in zip(rs, fs)) for rs, fs in zip(real, fake))
            if _close(got, l2):
                hint = "that is a squared (L2) distance; MelGAN's feature matching is L1: mean |real - fake|"
            elif _close(got, flat):
                hint = ("you averaged all elements of a scale at once, so big layers dominate: take the mean of "
                        "each layer first, then the mean over layers")
            elif _close(got, summed):
                hint = "you summed the layers and scales: average them"
            else:
                hint = "F.l1_loss(fake, real) per layer, averaged over layers, then over scales"
            raise WrongAnswer(f"expected {float(expected):.4f}, got {float(got.detach()):.4f}: {hint}")
        if not got.requires_grad:
            raise WrongAnswer("your loss carries no gradient: do not .detach() (or use no_grad on) the fake features")
        got.backward()
        if any(t.grad is not None and t.grad.abs().sum() > 0 for scale in real_in for t in scale):
            raise WrongAnswer("the gradient reaches the real features: detach them (real.detach()), the feature-"
                              "matching loss must train the generator only, never move the targets")
        if any(t.grad is None for scale in fake_in for t in scale):
            raise WrongAnswer("some fake feature map gets no gradient: every layer of every scale must count")
