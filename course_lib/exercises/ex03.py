"""Checks for exercise notebook 03, MelGAN: the hinge losses, feature matching, and the two phases of a GAN step.

Tasks 1 and 2 compare the student's losses with :mod:`course_lib.nn.gan` on hand-made and random inputs. Tasks 3
and 4 run the student's training phases on a tiny :class:`course_lib.vocoders.MelGAN` (a few thousand
parameters, milliseconds a step) beside the reference phase on an exact copy, with plain SGD so that every
parameter's change is its gradient, and compare the returned loss, the parameters after the step, and where
gradients went. Each mismatch becomes a hint naming the likeliest mistake: a hinge on the generator, a sum over
scales, L2 instead of L1, a real feature that still carries a gradient; in the phases, a fake that was not
detached in the discriminator's phase, hinge signs swapped, a least-squares or cross-entropy GAN loss instead
of the hinge, a fake not cropped to the real audio, a missing ``zero_grad`` or ``step``, a missing
``lambda_fm``, a fake detached in the generator's phase.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.exercises.checks import CheckContext, PlainSGD, WrongAnswer, register_task
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from course_lib.vocoders.melgan import MelGAN, MelGANConfig

LESSON = "03_melgan"

__all__ = ["LESSON", "TINY_CONFIG", "PlainSGD", "gan_step_case", "reference_discriminator_step", "reference_generator_step"]


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
# Task 1: hinge losses
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
# Task 2: feature matching
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


# --------------------------------------------------------------------------------------------------------
# Tasks 3 and 4: the two phases of a training step, on a tiny MelGAN
# --------------------------------------------------------------------------------------------------------

# hop 64 = 4 x 4 x 4, 32 mels, 2 discriminator scales: the course's `tiny` config, a few thousand parameters
TINY_CONFIG = MelGANConfig(sample_rate=16_000, n_fft=256, hop_length=64, n_mels=32, ngf=4, upsample_ratios=(4, 4, 4),
                           dilations=(1, 3), num_scales=2, disc_channels=4, disc_layers=2, disc_max_channels=32)
LEARNING_RATE = 0.05  # plain SGD: a parameter's change is exactly lr x its gradient
STALE_GRAD = 0.5  # what the checker leaves in .grad before the call, as an earlier step would


def gan_step_case(seed: int) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """``(generator, discriminator, log_mel, audio)`` of a tiny MelGAN initialised from ``seed`` (the discriminator's
    last layers scaled so that its logits spread over +-1): audio ``(2, 1, 1000)`` (a tone in noise) and its log-mel
    ``(2, 32, 16)``, whose 16 frames make 1024 samples, 24 more than the audio."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MelGAN(TINY_CONFIG)
    with torch.no_grad():  # an untrained discriminator scores everything near 0, where a wrong loss barely shows:
        for scale in model.discriminator.scales:  # spread its logits over +-1 (the hinge clips some)
            scale.blocks[-1].parametrizations.weight.original0.mul_(300.0)
            scale.blocks[-1].bias.zero_()
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1000) / TINY_CONFIG.sample_rate
    audio = (0.4 * torch.sin(2 * torch.pi * (300 + 200 * torch.rand(2, 1, 1, generator=g)) * t)
             + 0.05 * torch.randn(2, 1, 1000, generator=g))
    with torch.no_grad():
        log_mel = model.features(audio)
    return model.generator, model.discriminator, log_mel, audio


def reference_discriminator_step(generator: nn.Module, discriminator: nn.Module, optimizer,
                                 log_mel: torch.Tensor, audio: torch.Tensor) -> float:
    """One discriminator phase: the fake audio generated without gradients and cropped to the real length, the
    hinge loss (mean over scales), ``zero_grad``, ``backward``, ``step``; returns the loss before the step."""
    with torch.no_grad():
        fake = generator(log_mel)[..., : audio.shape[-1]]
    real_logits, _ = discriminator(audio)
    fake_logits, _ = discriminator(fake)
    loss = discriminator_hinge_loss(real_logits, fake_logits)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_generator_step(generator: nn.Module, discriminator: nn.Module, optimizer,
                             log_mel: torch.Tensor, audio: torch.Tensor, lambda_fm: float = 10.0) -> float:
    """One generator phase: ``-D(G(s)) + lambda_fm * L_FM`` with the fake cropped to the real length and the real
    feature maps computed without gradients; ``zero_grad``, ``backward``, ``step``; returns the loss."""
    fake = generator(log_mel)[..., : audio.shape[-1]]
    fake_logits, fake_feats = discriminator(fake)
    with torch.no_grad():
        _, real_feats = discriminator(audio)
    loss = generator_hinge_loss(fake_logits) + lambda_fm * feature_matching_loss(real_feats, fake_feats)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _loss_value(value: object, fn_name: str) -> float:
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: return the loss (loss.item(), or the tensor)")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise WrongAnswer(f"{fn_name} should return the loss, one number; got a tensor of shape "
                              f"{tuple(value.shape)}")
        return float(value.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise WrongAnswer(f"{fn_name} should return the loss as a number (loss.item()), got {type(value).__name__}")


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-5) -> bool:
    return all(torch.allclose(x, y, rtol=tol, atol=tol) for x, y in zip(a, b))


def _with_stale_grads(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = torch.full_like(p, STALE_GRAD)


def _got_gradient(module: nn.Module) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


def _check_update(module: nn.Module, before: list[torch.Tensor], expected: list[torch.Tensor], who: str,
                  optimizer_name: str) -> None:
    """The student's phase must leave ``module`` where one SGD step on the right loss from fresh gradients does."""
    after = _params(module)
    if _same(after, expected):
        return
    if _same(after, before):
        raise WrongAnswer(f"the {who}'s weights did not change: after loss.backward(), call {optimizer_name}.step()")
    stale = [e - LEARNING_RATE * STALE_GRAD for e in expected]
    if _same(after, stale):
        raise WrongAnswer(f"the {who}'s update also contains gradients left over from an earlier step: call "
                          f"{optimizer_name}.zero_grad() before loss.backward()")
    raise WrongAnswer(f"the {who}'s weights after your step differ from one optimizer step on the loss you "
                      f"returned: call {optimizer_name}.zero_grad(), loss.backward() and {optimizer_name}.step() once "
                      "each, on that loss, with no gradient clipping")


def _d_loss_variants(real: list[torch.Tensor], fake: list[torch.Tensor], uncropped: list[torch.Tensor]) -> list[tuple[float, str]]:
    n = len(real)
    mean = lambda terms: float(sum(terms)) / n  # noqa: E731 - the mean over scales
    return [
        (float(discriminator_hinge_loss(fake, real)),
         "the hinge signs are swapped: real logits should be pushed ABOVE +1 (relu(1 - D(x))) and fake ones BELOW -1 "
         "(relu(1 + D(G(s))))"),
        (mean(((r - 1) ** 2).mean() + (f ** 2).mean() for r, f in zip(real, fake)),
         "that is the least-squares GAN loss (LSGAN); MelGAN's discriminator uses the hinge: "
         "mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))"),
        (mean(((r - 1) ** 2).mean() + ((f + 1) ** 2).mean() for r, f in zip(real, fake)),
         "that is a least-squares loss with targets +1 and -1; MelGAN's discriminator uses the hinge: "
         "mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))"),
        (mean(F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake)),
         "that is the cross-entropy (original GAN) loss; MelGAN's discriminator uses the hinge: "
         "mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))"),
        (mean((1 - r).mean() + (1 + f).mean() for r, f in zip(real, fake)),
         "without max(0, .) it is not a hinge: clip each term with torch.relu (F.relu)"),
        (float(discriminator_hinge_loss(real, fake, reduction="sum")),
         "you summed the scales: average them (divide by the number of scales)"),
        (float(discriminator_hinge_loss(real, uncropped)),
         "the generator makes frames x hop samples, more than the real audio has: crop the fake audio to the real "
         "length (fake[..., :audio.shape[-1]]) before the discriminator sees it"),
    ]


@register_task("discriminator_step", LESSON,
               hint_on_error="discriminator(audio) returns (logits, feature maps), each a list with one entry per "
                             "scale; crop the fake to audio.shape[-1] samples.")
def check_discriminator_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(generator, discriminator, optimizer, log_mel, audio)`` must do one discriminator phase: the loss it returns,
    the discriminator's weights after the step and the generator's untouched gradients must match the reference."""
    for seed in (0, 1):
        generator, discriminator, log_mel, audio = gan_step_case(seed)
        ref_g, ref_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
        with torch.no_grad():
            fake_full = ref_g(log_mel)
            real_logits, _ = ref_d(audio)
            fake_logits, _ = ref_d(fake_full[..., : audio.shape[-1]])
            uncropped_logits, _ = ref_d(fake_full)
        expected = reference_discriminator_step(ref_g, ref_d, PlainSGD(ref_d.parameters(), LEARNING_RATE),
                                                log_mel, audio)
        before_g, before_d = _params(generator), _params(discriminator)
        _with_stale_grads(discriminator)
        optimizer = PlainSGD(discriminator.parameters(), LEARNING_RATE)
        got = _loss_value(ctx.call(fn, generator, discriminator, optimizer, log_mel.clone(), audio.clone()),
                          "discriminator_step")
        if not _close(got, expected):
            hint = "per scale: mean(relu(1 - real logits)) + mean(relu(1 + fake logits)); then the mean over scales"
            for value, why in _d_loss_variants(real_logits, fake_logits, uncropped_logits):
                if _close(got, value):
                    hint = why
                    break
            raise WrongAnswer(f"expected the discriminator's loss {expected:.4f}, got {got:.4f}: {hint}")
        if _got_gradient(generator):
            raise WrongAnswer("the discriminator's loss sent gradients into the generator: generate the fake audio "
                              "under torch.no_grad() (or .detach() it). Attached, they would push the generator "
                              "towards sounding fake, and cost a backward pass through it")
        if not _same(_params(generator), before_g, tol=0.0):
            raise WrongAnswer("the generator's weights changed in the discriminator's phase: step only the "
                              "discriminator's optimizer")
        _check_update(discriminator, before_d, _params(ref_d), "discriminator", "optimizer")


def _g_loss_variants(real_feats, fake_logits, fake_feats, lambda_fm: float) -> list[tuple[float, str]]:
    n = len(fake_logits)
    adv = float(generator_hinge_loss(fake_logits))
    fm = float(feature_matching_loss(real_feats, fake_feats))
    hinge = float(sum(F.relu(1 - f).mean() for f in fake_logits)) / n
    return [
        (-adv + lambda_fm * fm, "wrong sign on the adversarial term: the generator wants D(G(s)) large, so it "
                                "minimises -mean(D(G(s)))"),
        (hinge + lambda_fm * fm, "the generator's adversarial term is not a hinge: it is -mean(D(G(s))), unclipped"),
        (adv + fm, "feature matching is weighted by lambda_fm: loss = adversarial + lambda_fm * feature matching"),
        (lambda_fm * adv + fm, "lambda_fm weighs the feature-matching term, not the adversarial one"),
        (adv, "the feature-matching term is missing: add lambda_fm * feature matching between the discriminator's "
              "maps on real and on generated audio"),
        (lambda_fm * fm, "the adversarial term -mean(D(G(s))) is missing"),
        (float(generator_hinge_loss(fake_logits, reduction="sum")) + lambda_fm * fm,
         "you summed the adversarial term over the scales: average it"),
    ]


@register_task("generator_step", LESSON,
               hint_on_error="crop the fake audio to audio.shape[-1] samples, so that its feature maps have the "
                             "real ones' shapes; discriminator(x) returns (logits, feature maps).")
def check_generator_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(generator, discriminator, optimizer, log_mel, audio, lambda_fm)`` must do one generator phase: the loss it
    returns and the generator's weights after the step must match the reference; the discriminator must not move."""
    for seed, lambda_fm in ((0, 10.0), (1, 2.5)):
        generator, discriminator, log_mel, audio = gan_step_case(seed)
        ref_g, ref_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
        with torch.no_grad():
            fake_logits, fake_feats = ref_d(ref_g(log_mel)[..., : audio.shape[-1]])
            _, real_feats = ref_d(audio)
        expected = reference_generator_step(ref_g, ref_d, PlainSGD(ref_g.parameters(), LEARNING_RATE),
                                            log_mel, audio, lambda_fm)
        before_g, before_d = _params(generator), _params(discriminator)
        _with_stale_grads(generator)
        optimizer = PlainSGD(generator.parameters(), LEARNING_RATE)
        got = _loss_value(ctx.call(fn, generator, discriminator, optimizer, log_mel.clone(), audio.clone(), lambda_fm),
                          "generator_step")
        if not _close(got, expected):
            hint = "loss = -mean over scales of mean(D(G(s))) + lambda_fm * feature_matching(real maps, fake maps)"
            for value, why in _g_loss_variants(real_feats, fake_logits, fake_feats, lambda_fm):
                if _close(got, value):
                    hint = why
                    break
            raise WrongAnswer(f"with lambda_fm={lambda_fm} expected the generator's loss {expected:.4f}, got "
                              f"{got:.4f}: {hint}")
        if not _same(_params(discriminator), before_d, tol=0.0):
            raise WrongAnswer("the discriminator's weights changed in the generator's phase: step only the "
                              "generator's optimizer")
        after = _params(generator)
        unchanged_without_gradient = _same(after, before_g, tol=0.0) and not _got_gradient(generator)
        if unchanged_without_gradient or _same(after, [b - LEARNING_RATE * STALE_GRAD for b in before_g]):
            raise WrongAnswer("no gradient of this loss reached the generator (its update is only the gradients left "
                              "over from an earlier step): do not detach the fake audio or run the generator under "
                              "torch.no_grad() in its own phase, and call optimizer.zero_grad() before backward")
        _check_update(generator, before_g, _params(ref_g), "generator", "optimizer")
