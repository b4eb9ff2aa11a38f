"""Exercise notebook 01 (VQ-VAE): the solution passes every check, the stub says "not implemented", and
each check rejects plausible wrong answers with the hint that names the mistake (for the two assembling
tasks, vqvae_loss and vqvae_train_step, at least two named wrong answers each)."""

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
from course_lib.exercises.ex01 import (
    LESSON,
    TRAIN_STEP_MAX_NORM,
    PlainSGD,
    reference_ema_update,
    reference_vq_loss,
    reference_vqvae_loss,
    reference_vqvae_train_step,
    train_step_model,
    vqvae_loss_cases,
)
from course_lib.exercises.grade import grade_many
from course_lib.quantize import VectorQuantizer

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_vq_vae.ipynb"
EXERCISE = ROOT / "exercises" / "01_vq_vae.ipynb"
TASK_IDS = ["vq_loss", "ema_update", "codebook_perplexity", "vqvae_loss", "vqvae_train_step"]
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


def test_the_assembled_references_agree_with_the_library():
    # reference_vqvae_loss = L1 + the VQ loss of a learned-codebook VectorQuantizer, gradients included
    encoder, decoder, codebook, x, beta = vqvae_loss_cases()[0]
    vq = VectorQuantizer(dim=codebook.shape[1], codebook_size=codebook.shape[0], beta=beta, ema=False).eval()
    with torch.no_grad():
        vq.embedding.copy_(codebook)
    out = vq(encoder(x))
    library = (decoder(out.quantized) - x).abs().mean() + out.loss
    ours = reference_vqvae_loss(encoder, decoder, codebook, x, beta)
    assert ours.item() == pytest.approx(library.item(), rel=1e-6)
    params = list(encoder.parameters()) + list(decoder.parameters())
    for a, b in zip(torch.autograd.grad(ours, params + [codebook]), torch.autograd.grad(library, params + [vq.embedding])):
        torch.testing.assert_close(a, b)
    # the check's nearest codes are far from ties, so any correct distance formula picks the same ones
    for encoder, _, codebook, x, _ in vqvae_loss_cases():
        flat = encoder(x).detach().movedim(1, -1).reshape(-1, codebook.shape[1])
        two = torch.cdist(flat.double(), codebook.detach().double()).pow(2).topk(2, largest=False).values
        assert float((two[:, 1] - two[:, 0]).min()) > 1e-3
    # PlainSGD updates like torch.optim.SGD, and every step of the check is clipped
    a, b = train_step_model(), train_step_model()
    batch = -5.0 + 2.0 * torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(0))
    reference_vqvae_train_step(a, PlainSGD(a.parameters(), lr=0.05), batch, TRAIN_STEP_MAX_NORM)
    reference_vqvae_train_step(b, torch.optim.SGD(b.parameters(), lr=0.05), batch, TRAIN_STEP_MAX_NORM)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    model = train_step_model()
    recon, out = model(batch)
    (F.l1_loss(recon, batch) + out.loss).backward()
    assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))) > 10 * TRAIN_STEP_MAX_NORM


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    assert solution_fns["codebook_perplexity"](torch.tensor([0, 0, 1, 2]), 16) == pytest.approx(2 ** 1.5)
    size, total, code = solution_fns["ema_update"](torch.tensor([1.0, 1.0]), torch.tensor([[0.0], [10.0]]),
                                                   torch.tensor([[1.0], [2.0], [9.0]]), torch.tensor([0, 0, 1]),
                                                   0.5, 1e-9)
    assert size.tolist() == [1.5, 1.0] and total[:, 0].tolist() == [1.5, 9.5]
    assert code[:, 0].tolist() == pytest.approx([1.0, 9.5])
    # identity encoder and decoder, codes 0 and 1: L1 (0.2 + 0.1) / 2 + 0.025 + 0.25 · 0.025
    x = torch.tensor([[[[0.2, 0.9]]]])
    loss = solution_fns["vqvae_loss"](lambda v: v, lambda v: v, torch.tensor([[0.0], [1.0]], requires_grad=True), x, 0.25)
    assert loss.item() == pytest.approx(0.15 + 0.025 + 0.25 * 0.025)


# --- plausible wrong answers -------------------------------------------------------------------------


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


def _vqvae(kind):
    """A plausible wrong vqvae_loss: the decoder fed z, z_q without straight-through, the straight-through
    sum without .detach(), β on the codebook term, the latent flattened without moving channels last, MSE
    reconstruction, no VQ terms."""
    def loss(encoder, decoder, codebook, x, beta=0.25):
        z = encoder(x)
        b, d, h, w = z.shape
        flat = z.reshape(-1, d) if kind == "flatten" else z.movedim(1, -1).reshape(-1, d)
        e = codebook[torch.cdist(flat.detach(), codebook.detach()).argmin(dim=1)]
        z_q = e.reshape(b, d, h, w) if kind == "flatten" else e.reshape(b, h, w, d).movedim(-1, 1)
        inputs = {"skip": z, "z_q": z_q, "no_detach": z + (z_q - z)}
        recon = decoder(inputs.get(kind, z + (z_q - z).detach()))
        rec = F.mse_loss(recon, x) if kind == "mse" else (recon - x).abs().mean()
        if kind == "no_vq":
            return rec
        if kind == "legacy":
            return rec + beta * F.mse_loss(e, flat.detach()) + F.mse_loss(flat, e.detach())
        return rec + F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    return loss


def _step(kind):
    """A plausible wrong vqvae_train_step: no zero_grad, no clip, clip after the step, step before backward,
    no vq.loss, MSE reconstruction, the loss returned as a tensor."""
    def step(model, optimizer, log_mel, max_norm=1.0):
        recon, vq = model(log_mel)
        loss = (F.mse_loss if kind == "mse" else F.l1_loss)(recon, log_mel) + (0.0 if kind == "no_vq" else vq.loss)
        if kind != "no_zero_grad":
            optimizer.zero_grad()
        if kind == "step_before_backward":
            optimizer.step()
        loss.backward()
        if kind not in ("no_clip", "clip_after_step"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if kind != "step_before_backward":
            optimizer.step()
        if kind == "clip_after_step":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return loss if kind == "tensor" else loss.item()
    return step


@pytest.mark.parametrize("task_id, wrong, hint", [
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
    ("vqvae_loss", _vqvae("skip"), "the decoder got the encoder output z itself"),
    ("vqvae_loss", _vqvae("z_q"), "the encoder gets no gradient from the reconstruction"),
    ("vqvae_loss", _vqvae("no_detach"), "the encoder gets no gradient from the reconstruction"),
    ("vqvae_loss", _vqvae("legacy"), "β multiplies the codebook term"),
    ("vqvae_loss", _vqvae("flatten"), "z.reshape(-1, D) mixes channels and grid positions"),
    ("vqvae_loss", _vqvae("mse"), "the L1 distance"),
    ("vqvae_loss", _vqvae("no_vq"), "only the reconstruction term"),
    ("vqvae_train_step", _step("no_zero_grad"), "the gradients of the previous step were added"),
    ("vqvae_train_step", _step("no_clip"), "the update was not clipped"),
    ("vqvae_train_step", _step("clip_after_step"), "the update was not clipped"),
    ("vqvae_train_step", _step("step_before_backward"), "the weights did not change"),
    ("vqvae_train_step", _step("no_vq"), "the reconstruction term alone"),
    ("vqvae_train_step", _step("mse"), "not the squared error"),
    ("vqvae_train_step", _step("tensor"), "you returned a tensor"),
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
        "vq_loss": 2, "ema_update": 3, "codebook_perplexity": 2, "vqvae_loss": 3, "vqvae_train_step": 2}
    assert empty.total == 0 and empty.max_total == 12


def test_vqvae_loss_check_names_a_backward_inside_the_function(solution_fns, capsys):
    def with_backward(encoder, decoder, codebook, x, beta=0.25):
        loss = solution_fns["vqvae_loss"](encoder, decoder, codebook, x, beta)
        loss.backward()
        return loss
    assert check("vqvae_loss", with_backward) is False
    assert "did you call .backward() inside the function?" in capsys.readouterr().out
