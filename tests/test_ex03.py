"""Exercise 03 (MelGAN): the solution passes every check quickly, the untouched exercise says "not implemented",
and every check rejects plausible wrong answers with a hint that names the mistake."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exercise_notebooks import (
    assert_check_passes_quickly,
    assert_generated_and_registered,
    assert_stubs_not_implemented,
    notebook_functions,
)

from course_lib.exercises import check
from course_lib.exercises.ex03 import (
    LESSON,
    gan_step_case,
    reference_discriminator_step,
    reference_generator_step,
)

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "03_melgan.ipynb"
EXERCISE = ROOT / "exercises" / "03_melgan.ipynb"
TASK_IDS = ["hinge_losses", "feature_matching", "discriminator_step", "generator_step"]
NAMESPACE = {"math": math, "np": np, "torch": torch, "F": F}  # what the solution cells assume is imported


def _functions(path: Path) -> dict:
    return notebook_functions(path, NAMESPACE)


@pytest.fixture(scope="module")
def solution_fns() -> dict:
    return _functions(SOLUTION)


def test_notebook_tasks_match_the_registry_and_the_exercise_is_fresh():
    assert_generated_and_registered(SOLUTION, EXERCISE, LESSON, TASK_IDS)


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    assert_check_passes_quickly(task_id, solution_fns, capsys)


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    assert_stubs_not_implemented(EXERCISE, TASK_IDS, capsys, NAMESPACE)


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    d, g = solution_fns["hinge_losses"]([torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])])
    assert float(d) == pytest.approx(0.75) and float(g) == pytest.approx(1.0)
    fm = solution_fns["feature_matching"]([[torch.zeros(4), torch.zeros(100)]], [[torch.ones(4), torch.zeros(100)]])
    assert float(fm) == pytest.approx(0.5)  # each layer counts once, whatever its size


def test_the_solution_phases_match_the_reference_phases(solution_fns):
    """On the checker's tiny MelGAN, the solution's phases give the reference's loss and move the same weights."""
    for name, reference, args in (("discriminator_step", reference_discriminator_step, ()),
                                  ("generator_step", reference_generator_step, (2.5,))):
        generator, discriminator, log_mel, audio = gan_step_case(0)
        trained = 1 if name == "generator_step" else 0
        mine = [copy.deepcopy(generator), copy.deepcopy(discriminator)]
        ref = [copy.deepcopy(generator), copy.deepcopy(discriminator)]
        loss = solution_fns[name](*mine, torch.optim.SGD(mine[trained].parameters(), lr=0.1), log_mel, audio, *args)
        expected = reference(*ref, torch.optim.SGD(ref[trained].parameters(), lr=0.1), log_mel, audio, *args)
        assert isinstance(loss, float) and loss == pytest.approx(expected, rel=1e-5)
        for a, b in zip(mine[trained].parameters(), ref[trained].parameters()):
            torch.testing.assert_close(a, b)
        assert not torch.equal(next(mine[trained].parameters()), next(generator.parameters() if trained else
                                                                          discriminator.parameters()))


def test_a_tiny_case_makes_more_samples_than_the_audio_has():
    generator, _, log_mel, audio = gan_step_case(0)
    assert generator(log_mel).shape[-1] > audio.shape[-1]  # so a phase that forgets to crop is caught


def _sum_scales_hinge(real, fake):
    d = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake))
    return d, sum(-f.mean() for f in fake) / len(fake)


def _no_relu_hinge(real, fake):
    d = torch.stack([(1 - r).mean() + (1 + f).mean() for r, f in zip(real, fake)]).mean()
    return d, torch.stack([-f.mean() for f in fake]).mean()


def _hinge_generator(real, fake):
    d = torch.stack([F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]).mean()
    return d, torch.stack([F.relu(1 - f).mean() for f in fake]).mean()


def _fm(real_feats, fake_feats, distance=F.l1_loss, detach=True):
    return torch.stack([torch.stack([distance(f, r.detach() if detach else r) for r, f in zip(rs, fs)]).mean()
                        for rs, fs in zip(real_feats, fake_feats)]).mean()


def _fm_flat(real_feats, fake_feats):
    return torch.stack([torch.cat([(f - r.detach()).abs().flatten() for r, f in zip(rs, fs)]).mean()
                        for rs, fs in zip(real_feats, fake_feats)]).mean()


def _d_step(detach=True, crop=True, zero_grad=True, step=True, loss="hinge"):
    """A discriminator phase with one plausible mistake switched on."""
    def phase(generator, discriminator, optimizer, log_mel, audio):
        with torch.set_grad_enabled(not detach):
            fake = generator(log_mel)
        fake = fake[..., : audio.shape[-1]] if crop else fake
        real_logits, _ = discriminator(audio)
        fake_logits, _ = discriminator(fake)
        pairs = list(zip(real_logits, fake_logits))
        terms = {
            "hinge": [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in pairs],
            "swapped": [F.relu(1 + r).mean() + F.relu(1 - f).mean() for r, f in pairs],
            "least_squares": [((r - 1) ** 2).mean() + (f ** 2).mean() for r, f in pairs],
            "cross_entropy": [F.softplus(-r).mean() + F.softplus(f).mean() for r, f in pairs],
        }[loss]
        d_loss = torch.stack(terms).mean()
        if zero_grad:
            optimizer.zero_grad()
        d_loss.backward()
        if step:
            optimizer.step()
        return d_loss.item()
    return phase


def _g_step(detach=False, zero_grad=True, adversarial="plain", use_lambda=True, real_grad=False):
    """A generator phase with one plausible mistake switched on."""
    def phase(generator, discriminator, optimizer, log_mel, audio, lambda_fm=10.0):
        fake = generator(log_mel)[..., : audio.shape[-1]]
        fake = fake.detach() if detach else fake
        fake_logits, fake_feats = discriminator(fake)
        with torch.set_grad_enabled(real_grad):
            _, real_feats = discriminator(audio)
        adv = torch.stack([{"plain": -f.mean(), "hinge": F.relu(1 - f).mean(), "plus": f.mean()}[adversarial]
                           for f in fake_logits]).mean()
        fm = _fm(real_feats, fake_feats)
        g_loss = adv + (lambda_fm if use_lambda else 1.0) * fm
        if zero_grad:
            optimizer.zero_grad()
        g_loss.backward()
        optimizer.step()
        return g_loss.item()
    return phase


def test_a_generator_phase_with_gradients_into_the_real_features_is_still_right(capsys):
    # the real side does not depend on the generator, so forgetting no_grad there wastes compute but is not wrong
    assert check("generator_step", _g_step(real_grad=True)) is True


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("hinge_losses", _sum_scales_hinge, "you summed the scales"),
    ("hinge_losses", _no_relu_hinge, "it is not a hinge: clip each term"),
    ("hinge_losses", _hinge_generator, "the generator's term is not a hinge"),
    ("hinge_losses", lambda r, f: _hinge_generator(r, f)[0], "should return a pair"),
    ("feature_matching", lambda r, f: _fm(r, f, F.mse_loss), "that is a squared (L2) distance"),
    ("feature_matching", _fm_flat, "big layers dominate"),
    ("feature_matching", lambda r, f: _fm(r, f, detach=False), "the gradient reaches the real features"),
    ("feature_matching", lambda r, f: _fm(r, f).detach(), "your loss carries no gradient"),
    ("discriminator_step", _d_step(detach=False), "sent gradients into the generator"),
    ("discriminator_step", _d_step(loss="swapped"), "the hinge signs are swapped"),
    ("discriminator_step", _d_step(loss="least_squares"), "least-squares GAN loss"),
    ("discriminator_step", _d_step(loss="cross_entropy"), "cross-entropy (original GAN) loss"),
    ("discriminator_step", _d_step(crop=False), "crop the fake audio to the real length"),
    ("discriminator_step", _d_step(zero_grad=False), "call optimizer.zero_grad() before loss.backward()"),
    ("discriminator_step", _d_step(step=False), "call optimizer.step()"),
    ("discriminator_step", lambda *args: None, "returned None"),
    ("generator_step", _g_step(adversarial="hinge"), "adversarial term is not a hinge"),
    ("generator_step", _g_step(adversarial="plus"), "wrong sign on the adversarial term"),
    ("generator_step", _g_step(use_lambda=False), "weighted by lambda_fm"),
    ("generator_step", _g_step(detach=True), "no gradient of this loss reached the generator"),
    ("generator_step", _g_step(zero_grad=False), "call optimizer.zero_grad() before loss.backward()"),
    ("generator_step", lambda g, d, o, m, a, lam=10.0: _g_step()(g, d, o, m, a, 10.0), "with lambda_fm=2.5"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out
