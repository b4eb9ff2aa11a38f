"""Exercise notebook 01 (VQ-VAE): the solution passes every check, the stub says "not implemented", and
each check rejects plausible wrong answers with the hint that names the mistake."""

from __future__ import annotations

import math
from pathlib import Path

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
from course_lib.exercises.ex01 import LESSON, reference_ema_update, reference_vq_loss
from course_lib.exercises.grade import grade_many
from course_lib.quantize import VectorQuantizer

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_vq_vae.ipynb"
EXERCISE = ROOT / "exercises" / "01_vq_vae.ipynb"
TASK_IDS = ["nearest_code", "straight_through", "vq_loss", "ema_update", "codebook_perplexity"]
NAMESPACE = {"math": math, "torch": torch, "F": F}  # what the solution cells assume is imported


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


def test_reference_answers_agree_with_the_library():
    torch.manual_seed(0)
    # the VQ loss of a learned-codebook VectorQuantizer is reference_vq_loss(z, e_k*, beta)
    vq = VectorQuantizer(dim=3, codebook_size=5, beta=0.25, ema=False).eval()
    z = torch.randn(2, 3, 7)
    out = vq(z)
    z_q = vq.decode(out.codes)
    assert out.loss.item() == pytest.approx(reference_vq_loss(z, z_q, 0.25).item(), rel=1e-5)
    # one training step of an EMA VectorQuantizer is reference_ema_update
    ema = VectorQuantizer(dim=3, codebook_size=5, decay=0.9, epsilon=0.01).train()
    size, sums = ema.cluster_size.clone(), ema.embed_avg.clone()
    codes = ema(z).codes.reshape(-1)
    flat = z.movedim(1, -1).reshape(-1, 3)
    new_size, new_sum, new_code = reference_ema_update(size, sums, flat, codes, 0.9, 0.01)
    assert torch.allclose(ema.cluster_size, new_size) and torch.allclose(ema.embed_avg, new_sum, atol=1e-6)
    assert torch.allclose(ema.codebook, new_code, atol=1e-6)


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    assert solution_fns["nearest_code"](torch.tensor([[0.4], [7.0]]), torch.tensor([[0.0], [1.0], [10.0]])).tolist() \
        == [0, 2]
    assert solution_fns["codebook_perplexity"](torch.tensor([0, 0, 1, 2]), 16) == pytest.approx(2 ** 1.5)
    size, total, code = solution_fns["ema_update"](torch.tensor([1.0, 1.0]), torch.tensor([[0.0], [10.0]]),
                                                   torch.tensor([[1.0], [2.0], [9.0]]), torch.tensor([0, 0, 1]),
                                                   0.5, 1e-9)
    assert size.tolist() == [1.5, 1.0] and total[:, 0].tolist() == [1.5, 9.5]
    assert code[:, 0].tolist() == pytest.approx([1.0, 9.5])


# --- plausible wrong answers -------------------------------------------------------------------------


def _inner_product(z, codebook):
    return (z @ codebook.T).argmax(dim=1)


def _l1(z, codebook):
    return torch.cdist(z, codebook, p=1).argmin(dim=1)


def _distances(z, codebook):
    return torch.cdist(z, codebook).min(dim=1).values


def _no_detach(z, z_q):
    return z + (z_q - z)


def _just_zq(z, z_q):
    return z_q


def _legacy_beta(z, z_q, beta):
    return F.mse_loss(z, z_q.detach()) + beta * F.mse_loss(z_q, z.detach())


def _no_stop_gradient(z, z_q, beta):
    return (1 + beta) * F.mse_loss(z, z_q)


def _summed(z, z_q, beta):
    return ((z.detach() - z_q) ** 2).sum() + beta * ((z - z_q.detach()) ** 2).sum()


def _ema_swapped(size, total, z, codes, decay, eps):
    return reference_ema_update(size, total, z, codes, 1 - decay, eps)


def _ema_unsmoothed(size, total, z, codes, decay, eps):
    new_size, new_sum, _ = reference_ema_update(size, total, z, codes, decay, eps)
    return new_size, new_sum, new_sum / new_size[:, None]


def _ema_probabilities(size, total, z, codes, decay, eps):
    new_size, new_sum, _ = reference_ema_update(size, total, z, codes, decay, eps)
    n = new_size.sum()
    return new_size, new_sum, new_sum / ((new_size + eps) / (n + len(new_size) * eps))[:, None]


def _ema_in_place(size, total, z, codes, decay, eps):
    out = reference_ema_update(size, total, z, codes, decay, eps)
    size.mul_(decay)
    return out


def _entropy(codes, k):
    p = torch.bincount(codes.reshape(-1), minlength=k).double() / codes.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _nan_entropy(codes, k):
    p = torch.bincount(codes.reshape(-1), minlength=k).double() / codes.numel()
    return float(torch.exp(-(p * p.log()).sum()))


def _used(codes, k):
    return len(torch.unique(codes))


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("nearest_code", _inner_product, "largest inner product"),
    ("nearest_code", _l1, "L1 (Manhattan)"),
    ("nearest_code", _distances, "return the argmin, not the distances"),
    ("straight_through", _no_detach, "without .detach() cancels z out"),
    ("straight_through", _just_zq, "returning z_q cuts the encoder off"),
    ("straight_through", lambda z, z_q: z, "your output equals z"),
    ("vq_loss", _legacy_beta, "β multiplies the codebook term"),
    ("vq_loss", _no_stop_gradient, "without stop-gradients"),
    ("vq_loss", _summed, "you summed the squared errors"),
    ("ema_update", _ema_swapped, "the weights are swapped"),
    ("ema_update", _ema_unsmoothed, "has inf or NaN"),
    ("ema_update", _ema_probabilities, "your smoothed sizes are probabilities"),
    ("ema_update", _ema_in_place, "changed its inputs in place"),
    ("codebook_perplexity", _entropy, "that is the entropy H"),
    ("codebook_perplexity", _nan_entropy, "0·log 0 must count as 0"),
    ("codebook_perplexity", _used, "that is the number of codes used"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out


@pytest.mark.slow
def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_exercise(tmp_path):
    solution = tmp_path / "solution_01_vq_vae.ipynb"
    untouched = tmp_path / "untouched_01_vq_vae.ipynb"
    solution.write_text(SOLUTION.read_text(encoding="utf-8"), encoding="utf-8")
    untouched.write_text(EXERCISE.read_text(encoding="utf-8"), encoding="utf-8")
    full, empty = grade_many([solution, untouched], jobs=2, solutions_dir=ROOT / "solutions", timeout=120,
                             cell_timeout=30)
    assert full.status == "completed" and {s.task: s.points for s in full.scores} == {
        "nearest_code": 1, "straight_through": 2, "vq_loss": 2, "ema_update": 3, "codebook_perplexity": 2}
    assert empty.total == 0 and empty.max_total == 10
