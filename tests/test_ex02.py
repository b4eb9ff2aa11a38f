"""Exercise notebook 02 (neural codec): the solution passes every check, the stub says "not implemented", and
each check rejects plausible wrong answers with the hint that names the mistake."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchaudio.functional as AF
from exercise_notebooks import (
    assert_check_passes_quickly,
    assert_generated_and_registered,
    assert_stubs_not_implemented,
    notebook_functions,
)

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.exercises import check
from course_lib.exercises.ex02 import LESSON, _is_nearest_path, reference_mr_stft_loss, reference_rvq_encode
from course_lib.exercises.grade import grade_many
from course_lib.quantize import ResidualVectorQuantizer

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "02_neural_codec.ipynb"
EXERCISE = ROOT / "exercises" / "02_neural_codec.ipynb"
TASK_IDS = ["codec_bitrate", "rvq_encode", "multi_resolution_stft_loss", "mu_law_encode"]
NAMESPACE = {"math": math, "torch": torch}  # what the solution cells assume is imported


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
def test_references_and_known_answers_agree_with_the_library(solution_fns):
    bitrate = solution_fns["codec_bitrate"]
    assert bitrate(24_000, [8, 5, 4, 2], 8, 1024) == pytest.approx(6.0)
    assert bitrate(16_000, [8, 5, 4, 2], 4, 2048) == pytest.approx(2.2)
    codec = Codec(CodecConfig(n_filters=2, dimension=4, lstm=0, n_q=3, codebook_size=16))
    assert bitrate(16_000, [8, 5, 4, 2], 2, 16) * 1000 == pytest.approx(codec.bitrate(2))
    # the RVQ reference is the library quantizer's encode, given the same codebooks
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=4, n_q=3, codebook_size=8).eval()
    books = torch.stack([layer.codebook for layer in rvq.layers])
    z = torch.randn(2, 4, 9)
    assert torch.equal(reference_rvq_encode(z, books), rvq.encode(z))  # the same nearest_code calls: same path
    solution = solution_fns["rvq_encode"](z, books)  # its own distance formula: the same choices up to rounding
    assert solution.shape == (2, 3, 9) and _is_nearest_path(z, books, solution)
    hand = solution_fns["rvq_encode"](torch.tensor([[[4.9, 7.2, -0.6]]]),
                                      torch.tensor([[[0.0], [4.0], [8.0]], [[-1.0], [0.0], [1.0]]]))
    assert hand.tolist() == [[[1, 2, 0], [2, 0, 0]]]  # 4.9 → 4 + 1, 7.2 → 8 − 1, −0.6 → 0 − 1
    x = torch.randn(2, 3000)
    assert float(solution_fns["multi_resolution_stft_loss"](x, x, (256, 512))) == 0.0
    assert float(reference_mr_stft_loss(0.5 * x, x, (256,))) > 0
    levels = solution_fns["mu_law_encode"](torch.tensor([-1.0, 0.0, 1.0]), 255)
    assert levels.tolist() == [0, 128, 255] == AF.mu_law_encoding(torch.tensor([-1.0, 0.0, 1.0]), 256).tolist()


@pytest.mark.float_path
def test_rvq_check_accepts_ties_broken_the_other_way(capsys):
    def cdist_rvq(z, codebooks):  # float64 distances: may break near-ties differently from the reference
        b, d, t = z.shape
        residual = z.movedim(1, -1).reshape(-1, d).double()
        codes = []
        for codebook in codebooks.double():
            index = torch.cdist(residual, codebook).argmin(dim=1)
            residual = residual - codebook[index]
            codes.append(index)
        return torch.stack(codes, 1).reshape(b, t, -1).permute(0, 2, 1)

    assert check("rvq_encode", cdist_rvq) is True


# --- plausible wrong answers -------------------------------------------------------------------------


def _bits(rate, ratios, n_q, k):
    return rate / math.prod(ratios) * n_q * math.log2(k)


def _sum_of_ratios(rate, ratios, n_q, k):
    return rate / sum(ratios) * n_q * math.log2(k) / 1000


def _k_not_log(rate, ratios, n_q, k):
    return rate / math.prod(ratios) * n_q * k / 1000


def _no_residual(z, codebooks):
    b, d, t = z.shape
    flat = z.movedim(1, -1).reshape(-1, d)
    codes = [torch.cdist(flat, cb).argmin(dim=1) for cb in codebooks]
    return torch.stack(codes, 1).reshape(b, t, -1).permute(0, 2, 1)


def _inner_product_rvq(z, codebooks):
    b, d, t = z.shape
    residual = z.movedim(1, -1).reshape(-1, d)
    codes = []
    for cb in codebooks:
        index = (residual @ cb.T).argmax(dim=1)
        residual = residual - cb[index]
        codes.append(index)
    return torch.stack(codes, 1).reshape(b, t, -1).permute(0, 2, 1)


def _wrong_layout(z, codebooks):
    return reference_rvq_encode(z, codebooks).permute(0, 2, 1)


def _summed_resolutions(estimate, target, sizes):
    return reference_mr_stft_loss(estimate, target, sizes, mean=False)


def _linear_magnitude(estimate, target, sizes):
    return reference_mr_stft_loss(estimate, target, sizes, log=False)


def _power(estimate, target, sizes):
    return reference_mr_stft_loss(estimate, target, sizes, power=2.0)


def _truncating(x, mu):
    return ((torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu) + 1) / 2 * mu).long()


def _uniform(x, mu):
    return torch.floor((x + 1) / 2 * mu + 0.5).long()


def _no_sign(x, mu):
    return torch.floor((torch.log1p(mu * x.abs()) / math.log1p(mu) + 1) / 2 * mu + 0.5).long()


def _float_levels(x, mu):
    return AF.mu_law_encoding(x, mu + 1).float()


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("codec_bitrate", _bits, "that is bits per second"),
    ("codec_bitrate", _sum_of_ratios, "the hop is the PRODUCT of the strides"),
    ("codec_bitrate", _k_not_log, "carries log2(K) bits, not K"),
    ("codec_bitrate", lambda r, ratios, n, k: _bits(r, ratios, n, k) / 1024, "a kilobit here is 1000 bits"),
    ("rvq_encode", _no_residual, "every stage quantized z itself"),
    ("rvq_encode", _inner_product_rvq, "not the largest inner product"),
    ("rvq_encode", _wrong_layout, "expected codes of shape (B, K, T)"),
    ("rvq_encode", lambda z, books: reference_rvq_encode(z, books).float(), "return integer indices"),
    ("multi_resolution_stft_loss", _summed_resolutions, "not sum them"),
    ("multi_resolution_stft_loss", _linear_magnitude, "compares LOG magnitudes"),
    ("multi_resolution_stft_loss", _power, "not the power"),
    ("mu_law_encode", _truncating, "do not truncate"),
    ("mu_law_encode", _uniform, "that is uniform (linear) quantization"),
    ("mu_law_encode", _no_sign, "keep the sign of x"),
    ("mu_law_encode", _float_levels, "return integer levels"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out


@pytest.mark.slow
def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_exercise(tmp_path):
    solution = tmp_path / "solution_02_neural_codec.ipynb"
    untouched = tmp_path / "untouched_02_neural_codec.ipynb"
    solution.write_text(SOLUTION.read_text(encoding="utf-8"), encoding="utf-8")
    untouched.write_text(EXERCISE.read_text(encoding="utf-8"), encoding="utf-8")
    full, empty = grade_many([solution, untouched], jobs=2, solutions_dir=ROOT / "solutions", timeout=120,
                             cell_timeout=30)
    assert full.status == "completed" and {s.task: s.points for s in full.scores} == {
        "codec_bitrate": 1, "rvq_encode": 3, "multi_resolution_stft_loss": 2, "mu_law_encode": 2}
    assert empty.total == 0 and empty.max_total == 8
