"""Exercise 03 (MelGAN): the solution passes every check quickly, the untouched exercise says "not implemented",
and every check rejects plausible wrong answers with a hint that names the mistake."""

from __future__ import annotations

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
from course_lib.exercises.ex03 import LESSON, TCONV_CASES, reference_transposed_conv_length

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "03_melgan.ipynb"
EXERCISE = ROOT / "exercises" / "03_melgan.ipynb"
TASK_IDS = ["stack_receptive_field", "transposed_conv_length", "hinge_losses", "feature_matching"]
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
    assert solution_fns["stack_receptive_field"](3, [1, 3, 9]) == 27
    assert solution_fns["transposed_conv_length"](10, 16, 8, 4, 0) == 80  # MelGAN's r = 8: exactly 8 x
    assert [reference_transposed_conv_length(*case) for case in TCONV_CASES] == [80, 66, 35, 11, 37, 8]
    d, g = solution_fns["hinge_losses"]([torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])])
    assert float(d) == pytest.approx(0.75) and float(g) == pytest.approx(1.0)
    fm = solution_fns["feature_matching"]([[torch.zeros(4), torch.zeros(100)]], [[torch.ones(4), torch.zeros(100)]])
    assert float(fm) == pytest.approx(0.5)  # each layer counts once, whatever its size


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


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("stack_receptive_field", lambda k, d: k * sum(d), "widens the field by k - 1 (not k)"),
    ("stack_receptive_field", lambda k, d: (k - 1) * sum(d), "one sample short"),
    ("stack_receptive_field", lambda k, d: 1 + (k - 1) * len(d), "you ignored the dilations"),
    ("stack_receptive_field", lambda k, d: 27.0, "should return an int"),
    ("transposed_conv_length", lambda n, k, s, p, o: n * s, "length x stride is what MelGAN's choice"),
    ("transposed_conv_length", lambda n, k, s, p, o: (n - 1) * s - p + k + o, "subtract 2 x padding"),
    ("transposed_conv_length", lambda n, k, s, p, o: (n - 1) * s - 2 * p + k, "you forgot output_padding"),
    ("hinge_losses", _sum_scales_hinge, "you summed the scales"),
    ("hinge_losses", _no_relu_hinge, "it is not a hinge: clip each term"),
    ("hinge_losses", _hinge_generator, "the generator's term is not a hinge"),
    ("hinge_losses", lambda r, f: _hinge_generator(r, f)[0], "should return a pair"),
    ("feature_matching", lambda r, f: _fm(r, f, F.mse_loss), "that is a squared (L2) distance"),
    ("feature_matching", _fm_flat, "big layers dominate"),
    ("feature_matching", lambda r, f: _fm(r, f, detach=False), "the gradient reaches the real features"),
    ("feature_matching", lambda r, f: _fm(r, f).detach(), "your loss carries no gradient"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out
