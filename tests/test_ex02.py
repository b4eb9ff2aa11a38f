"""Exercise notebook 02 (neural codec): the solution passes every check, the stub says "not implemented", and
each check rejects plausible wrong answers with the hint that names the mistake."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from exercise_notebooks import (
    assert_check_passes_quickly,
    assert_generated_and_registered,
    assert_stubs_not_implemented,
    notebook_functions,
)

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.exercises import check
from course_lib.exercises.ex02 import (
    LESSON,
    PlainSGD,
    reference_codec_train_step,
    reference_mr_stft_loss,
    train_step_codec,
    train_step_mel_loss,
)
from course_lib.exercises.grade import grade_many

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "02_neural_codec.ipynb"
EXERCISE = ROOT / "exercises" / "02_neural_codec.ipynb"
TASK_IDS = ["codec_bitrate", "codec_train_step", "multi_resolution_stft_loss", "mu_law_encode"]
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


@pytest.mark.float_path
def test_references_and_known_answers_agree_with_the_library(solution_fns):
    bitrate = solution_fns["codec_bitrate"]
    assert bitrate(24_000, [8, 5, 4, 2], 8, 1024) == pytest.approx(6.0)
    assert bitrate(16_000, [8, 5, 4, 2], 4, 2048) == pytest.approx(2.2)
    codec = Codec(CodecConfig(n_filters=2, dimension=4, lstm=0, n_q=3, codebook_size=16))
    assert bitrate(16_000, [8, 5, 4, 2], 2, 16) * 1000 == pytest.approx(codec.bitrate(2))
    # the training-step reference is the lesson's loss: 0.1·L1 + 2·mel + commitment; the solution gives the same
    # loss and the same weights, and with stale gradients left in .grad the update is still the clean one
    losses, weights = [], []
    for step_fn in (solution_fns["codec_train_step"], reference_codec_train_step):
        model, mel_loss = train_step_codec(), train_step_mel_loss()
        wav = 0.3 * torch.randn(2, 1, 960, generator=torch.Generator().manual_seed(1))
        losses.append(step_fn(model, PlainSGD(model.parameters(), lr=0.1), wav, mel_loss, 0.5))
        weights.append([p.detach().clone() for p in model.parameters()])
        recon, q = train_step_codec()(wav)
        assert losses[-1] == pytest.approx(float((0.1 * F.l1_loss(recon, wav) + 2 * mel_loss(recon, wav) + q.loss).detach()),
                                           rel=1e-5)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(*weights))
    x = torch.randn(2, 3000)
    assert float(solution_fns["multi_resolution_stft_loss"](x, x, (256, 512))) == 0.0
    assert float(reference_mr_stft_loss(0.5 * x, x, (256,))) > 0
    levels = solution_fns["mu_law_encode"](torch.tensor([-1.0, 0.0, 1.0]), 255)
    assert levels.tolist() == [0, 128, 255] == AF.mu_law_encoding(torch.tensor([-1.0, 0.0, 1.0]), 256).tolist()


# --- plausible wrong answers -------------------------------------------------------------------------


def _bits(rate, ratios, n_q, k):
    return rate / math.prod(ratios) * n_q * math.log2(k)


def _sum_of_ratios(rate, ratios, n_q, k):
    return rate / sum(ratios) * n_q * math.log2(k) / 1000


def _k_not_log(rate, ratios, n_q, k):
    return rate / math.prod(ratios) * n_q * k / 1000


def _wrong_step(**wrong):
    def step(codec, optimizer, wav, mel_loss, max_norm):
        return reference_codec_train_step(codec, optimizer, wav, mel_loss, max_norm, **wrong)
    return step


def _tensor_loss(codec, optimizer, wav, mel_loss, max_norm):
    recon, q = codec(wav)
    loss = 0.1 * F.l1_loss(recon, wav) + 2.0 * mel_loss(recon, wav) + q.loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(codec.parameters(), max_norm)
    optimizer.step()
    return loss


def _clip_after_step(codec, optimizer, wav, mel_loss, max_norm):
    recon, q = codec(wav)
    loss = 0.1 * F.l1_loss(recon, wav) + 2.0 * mel_loss(recon, wav) + q.loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    torch.nn.utils.clip_grad_norm_(codec.parameters(), max_norm)
    return loss.item()


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
    ("codec_train_step", _wrong_step(vq=False), "your loss has no commitment term"),
    ("codec_train_step", _wrong_step(weights=(1.0, 1.0)), "weigh the terms: 0.1 × the waveform L1"),
    ("codec_train_step", _wrong_step(weights=(0.0, 2.0)), "the waveform L1 term is missing"),
    ("codec_train_step", _wrong_step(clip=False), "the update was not clipped"),
    ("codec_train_step", _clip_after_step, "the update was not clipped"),
    ("codec_train_step", _wrong_step(zero_grad=False), "call optimizer.zero_grad() before loss.backward()"),
    ("codec_train_step", _tensor_loss, "return loss.item(), a Python float"),
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
        "codec_bitrate": 1, "codec_train_step": 3, "multi_resolution_stft_loss": 2, "mu_law_encode": 2}
    assert empty.total == 0 and empty.max_total == 8
