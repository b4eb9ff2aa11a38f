"""Exercise notebook 07 (Noise2Music): the solution passes every check, the stub says "not implemented", and each
check rejects plausible wrong answers with the hint that names the mistake."""

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
from torch import nn

from course_lib.diffusion.gaussian import (
    GaussianDiffusion,
    GaussianDiffusionConfig,
    alpha_bar,
    alpha_sigma,
    eps_to_x0,
    v_to_eps,
    v_to_x0,
    x0_eps_to_v,
    x0_to_eps,
)
from course_lib.exercises import check
from course_lib.exercises.ex07 import (
    EMBEDDING_CASES,
    LESSON,
    STEP_LR,
    ddim_cases,
    film_cases,
    q_sample_cases,
    reference_ddim_step,
    reference_embedding,
    reference_film,
    reference_q_sample,
    reference_train_step,
    to_x0_eps_cases,
    train_step_cases,
    train_step_net,
)
from course_lib.exercises.grade import grade_many, solution_tasks
from course_lib.nn.transformer import sinusoidal_embedding

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "07_noise2music.ipynb"
EXERCISE = ROOT / "exercises" / "07_noise2music.ipynb"
TASK_IDS = ["q_sample", "to_x0_eps", "ddim_step", "timestep_embedding", "film", "train_step"]
NAMESPACE = {"math": math, "torch": torch, "F": F, "nn": nn, "alpha_sigma": alpha_sigma}  # the solution cells' imports


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def solution_fns() -> dict:
    return notebook_functions(SOLUTION, NAMESPACE)


def test_notebook_tasks_match_the_registry_and_the_exercise_is_fresh():
    assert_generated_and_registered(SOLUTION, EXERCISE, LESSON, TASK_IDS)
    assert solution_tasks(SOLUTION) == {"q_sample": 1, "to_x0_eps": 2, "ddim_step": 2, "timestep_embedding": 2,
                                        "film": 2, "train_step": 2}


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    assert_check_passes_quickly(task_id, solution_fns, capsys)


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    assert_stubs_not_implemented(EXERCISE, TASK_IDS, capsys, NAMESPACE)


def test_checks_leave_the_global_generator_alone(solution_fns, capsys):
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    for task_id in TASK_IDS:
        assert check(task_id, solution_fns[task_id])
    assert torch.equal(torch.random.get_rng_state(), before)


# --- known answers of the solution, and the references against the library ---------------------------------


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    x0, noise = torch.tensor([[[1.0, -0.5, 0.0, 0.25]]]), torch.tensor([[[1.0, 1.0, -1.0, 2.0]]])
    assert torch.allclose(solution_fns["q_sample"](x0, torch.tensor([0.64]), noise),
                          torch.tensor([[[1.4, 0.2, -0.6, 1.4]]]))
    # alpha = 0.6, sigma = 0.8: x0 = 1, eps = 0.5 gives x_t = 1.0 and v = 0.6 * 0.5 - 0.8 * 1 = -0.5
    a, s = torch.tensor([[[0.6]]]), torch.tensor([[[0.8]]])
    x_t, v = torch.tensor([[[1.0]]]), torch.tensor([[[-0.5]]])
    for param, pred in (("v", v), ("eps", torch.tensor([[[0.5]]])), ("x0", torch.tensor([[[1.0]]]))):
        x0_hat, eps_hat = solution_fns["to_x0_eps"](x_t, pred, a, s, param)
        assert torch.allclose(x0_hat, torch.tensor(1.0)) and torch.allclose(eps_hat, torch.tensor(0.5)), param
    with pytest.raises(ValueError, match="'eps', 'v' or 'x0'"):
        solution_fns["to_x0_eps"](x_t, v, a, s, "velocity")
    # DDIM with the true noise walks along the noise path: 0.6·1 + 0.8·0.5 at t, 0.8·1 + 0.6·0.5 at s
    out = solution_fns["ddim_step"](x_t, torch.tensor([[[0.5]]]), a, s, s, a)
    assert torch.allclose(out, torch.tensor([[[1.1]]]))
    emb = solution_fns["timestep_embedding"](torch.tensor([0.0, 0.001]), 4)  # 1000 t = 0 and 1; ω = (1, 0.01)
    assert emb.dtype == torch.float32
    assert torch.allclose(emb, torch.tensor([[1.0, 1.0, 0.0, 0.0],
                                             [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)]]))
    # FiLM with a zero linear layer is the norm itself; a scale of 1 doubles it, a shift of 1 adds 1
    norm, lin = nn.GroupNorm(1, 2, affine=False), nn.Linear(3, 4)
    h, e = torch.randn(1, 2, 5), torch.randn(1, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        assert torch.allclose(solution_fns["film"](h, e, norm, lin), norm(h))
        lin.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]))  # scale (1, 0), shift (0, 1)
        expected = norm(h) * torch.tensor([2.0, 1.0]).view(1, 2, 1) + torch.tensor([0.0, 1.0]).view(1, 2, 1)
        assert torch.allclose(solution_fns["film"](h, e, norm, lin), expected)


def test_references_agree_with_the_library():
    for x0, ab, noise, _, expected in q_sample_cases():
        assert torch.allclose(reference_q_sample(x0, ab, noise), expected.double(), atol=1e-6)
    # q_sample's ᾱ is the library schedule's, and its mean and variance are the closed form's
    t = torch.tensor([0.3])
    diffusion = GaussianDiffusion(GaussianDiffusionConfig(schedule="cosine"))
    mean, var = diffusion.q_mean_variance(torch.ones(1, 1, 1), t)
    assert float(mean) == pytest.approx(float(alpha_bar("cosine", t)) ** 0.5) and float(var) == pytest.approx(
        1 - float(alpha_bar("cosine", t)))
    # the conversion cases: pred is the exact target and every library conversion gives x0, eps back
    for param, schedule, _, x_t, pred, a, s, t, x0, eps in to_x0_eps_cases():
        a_lib, s_lib = alpha_sigma(schedule, t)
        assert torch.allclose(a.flatten(), a_lib, rtol=1e-6, atol=0) and torch.allclose(s.flatten(), s_lib, rtol=1e-6, atol=0)
        assert torch.allclose(v_to_x0(x_t, x0_eps_to_v(x0, eps, a, s), a, s), x0, atol=1e-5)
        assert torch.allclose(v_to_eps(x_t, x0_eps_to_v(x0, eps, a, s), a, s), eps, atol=1e-5)
        if param == "eps":
            assert torch.allclose(eps_to_x0(x_t, pred, a, s), x0, atol=1e-4)
        if param == "x0":
            assert torch.allclose(x0_to_eps(x_t, pred, a, s), eps, atol=1e-4)
    assert float(to_x0_eps_cases()[-1][5].min()) < 1e-4  # the last v case sits at α ≈ 4.5e-5
    # the DDIM reference equals the library's eta = 0 step; the true-noise case lands on the noise path
    for _, args, library, truth in ddim_cases():
        assert torch.allclose(reference_ddim_step(*args), library.double(), atol=1e-5, rtol=1e-5)
        if not torch.isnan(truth).any():
            assert torch.allclose(library.double(), truth, atol=1e-5)
    # the embedding reference is the U-Net's features, cosines first
    for times, dim in EMBEDDING_CASES:
        t = torch.tensor(times)
        assert torch.allclose(reference_embedding(t, dim).float(), sinusoidal_embedding(1000 * t, dim), atol=1e-3)
    # the FiLM reference, put back into the block, reproduces ResBlock1D.forward
    for _, block, x, h, emb in film_cases():
        with torch.no_grad():
            out = block.conv2(F.silu(reference_film(h, emb, block.norm2, block.film))) + block.shortcut(x)
            assert torch.allclose(out, block(x, emb), atol=1e-5)


def test_ddim_eta_zero_has_zero_variance_and_eta_one_the_posterior_variance():
    """What task 3's markdown claims about the library: η = 0 is deterministic, η = 1 has DDPM's variance."""
    diffusion = GaussianDiffusion(GaussianDiffusionConfig(schedule="cosine"))
    x_t, eps = torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    t, s = torch.tensor([0.7, 0.4]), torch.tensor([0.5, 0.1])
    x0 = eps_to_x0(x_t, eps, *diffusion.alpha_sigma(t, x_t))
    _, var0 = diffusion.ddim_step_mean_var(x_t, x0, eps, t, s, eta=0.0)
    _, var1 = diffusion.ddim_step_mean_var(x_t, x0, eps, t, s, eta=1.0)
    assert torch.equal(var0, torch.zeros_like(var0))
    assert torch.allclose(var1, diffusion.q_posterior_mean_variance(x0, x_t, t, s)[1])


# --- plausible wrong answers -------------------------------------------------------------------------


def _q(signal=torch.sqrt, noise_scale=lambda ab: (1 - ab).sqrt()):
    return lambda x0, ab, noise: reference_q_sample(x0, ab, noise, signal=signal, noise_scale=noise_scale).float()


def _q_no_reshape(x0, ab, noise):
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def _q_in_place(x0, ab, noise):
    ab = ab.view(-1, 1, 1)
    return x0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * noise)


def _conv(param_fix=None, *, v_sign=1.0, swap=False, order=False, divide=False):
    """A to_x0_eps with one mistake: v's sign, α/σ swapped in the v formulas, outputs reversed, or the v → x0
    conversion through a division by α."""
    def fn(x_t, pred, a, s, p):
        if swap:
            a, s = s, a
        if p == "eps":
            out = ((x_t - s * pred) / a, pred)
        elif p == "x0":
            out = (pred, (x_t - a * pred) / s)
        elif p == "v":
            eps = s * x_t + v_sign * a * pred
            x0 = (x_t - s * eps) / a if divide else a * x_t - v_sign * s * pred
            out = (x0, eps)
        else:
            raise ValueError("parameterisation must be 'eps', 'v' or 'x0'")
        return out[::-1] if order else out
    return fn


def _conv_eps_only(mistake):
    right = _conv()

    def fn(x_t, pred, a, s, p):
        if p == "eps":
            return mistake(x_t, pred, a, s), pred
        return right(x_t, pred, a, s, p)
    return fn


def _conv_x0_only(mistake):
    right = _conv()

    def fn(x_t, pred, a, s, p):
        if p == "x0":
            return pred, mistake(x_t, pred, a, s)
        return right(x_t, pred, a, s, p)
    return fn


def _conv_unknown(behaviour):
    right = _conv()

    def fn(x_t, pred, a, s, p):
        if p in ("eps", "v", "x0"):
            return right(x_t, pred, a, s, p)
        if behaviour == "return":
            return right(x_t, pred, a, s, "eps")
        if behaviour == "key":
            return {"eps": 1}[p]
        raise ValueError(f"unknown parameterisation {p}")
    return fn


def _ddim(fn_of):
    """``fn_of(x_t, e, a_t, s_t, a_s, s_s, x0_hat)`` as a ddim_step."""
    return lambda x_t, e, a_t, s_t, a_s, s_s: fn_of(x_t, e, a_t, s_t, a_s, s_s, (x_t - s_t * e) / a_t)


def _ddim_posterior(x_t, e, a_t, s_t, a_s, s_s):
    x0 = (x_t - s_t * e) / a_t
    a_ts = a_t / a_s
    var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    return a_ts * s_s ** 2 / s_t ** 2 * x_t + a_s * var_ts / s_t ** 2 * x0


def _emb(**kwargs):
    return lambda t, dim: reference_embedding(t, dim, **kwargs).float()


def _film(**kwargs):
    return lambda h, emb, norm, lin: reference_film(h, emb, norm, lin, **kwargs)


def _film_no_unsqueeze(h, emb, norm, lin):
    scale, shift = lin(F.silu(emb)).chunk(2, dim=1)
    return norm(h) * (1 + scale) + shift


def _film_new_linear(h, emb, norm, lin):
    return reference_film(h, emb, norm, nn.Linear(lin.in_features, lin.out_features))


def _step(target: str = "v", reduce: str = "mean", zero_grad: bool = True, clip: bool = True, step: bool = True,
          step_first: bool = False, detach_pred: bool = False, returns: str = "item"):
    """A train_step with one plausible mistake."""
    def train_step(net, optimiser, x0, t, noise, max_norm=1.0):
        alpha, sigma = (s.view(-1, 1, 1) for s in alpha_sigma("cosine", t))
        if target == "alpha_bar":
            alpha, sigma = alpha ** 2, sigma ** 2
        x_t = alpha * x0 + sigma * noise
        y = {"v": alpha * noise - sigma * x0, "alpha_bar": alpha * noise - sigma * x0, "-v": sigma * x0 - alpha * noise,
             "eps": noise, "x0": x0}[target]
        pred = net(x_t, t)
        if detach_pred:
            pred = pred.detach().requires_grad_()
        err = (pred - y).pow(2)
        loss = err.mean() if reduce == "mean" else err.sum()
        if step_first:
            optimiser.zero_grad()
            optimiser.step()
            loss.backward()
            return loss.item()
        if zero_grad:
            optimiser.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
        if step:
            optimiser.step()
        return [loss.item()] if returns == "tensor_list" else loss.item()

    return train_step


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("q_sample", _q(signal=lambda ab: ab, noise_scale=lambda ab: 1 - ab), "those are the VARIANCES"),
    ("q_sample", _q(signal=lambda ab: ab), "the signal scale is α = √ᾱ, not ᾱ"),
    ("q_sample", _q(noise_scale=lambda ab: 1 - ab), "the noise scale is σ = √(1 − ᾱ), not 1 − ᾱ"),
    ("q_sample", _q(noise_scale=lambda ab: 1 - ab.sqrt()), "not 1 − √ᾱ"),
    ("q_sample", _q(signal=lambda ab: (1 - ab).sqrt(), noise_scale=torch.sqrt), "scales are swapped"),
    ("q_sample", _q_no_reshape, "you broadcast it along TIME"),
    ("q_sample", lambda x0, ab, noise: x0.clone(), "you returned x0 unchanged"),
    ("q_sample", lambda x0, ab, noise: noise.clone(), "you returned the noise"),
    ("q_sample", _q_in_place, "changed its inputs in place"),
    ("q_sample", lambda x0, ab, noise: _q()(x0, ab, noise).tolist(), "should return a torch.Tensor"),
    ("q_sample", lambda x0, ab, noise: None, "forget the `return`"),
    ("q_sample", lambda x0, ab, noise: _q()(x0, ab, noise)[0], "expected x_t of shape"),
    ("q_sample", lambda x0, ab, noise: torch.cat([x0, ab]), "raised RuntimeError"),
    ("q_sample", lambda x0, ab, noise: torch.cat([x0, ab]), "reshape it to (B, 1, 1)"),
    ("to_x0_eps", _conv(v_sign=-1.0), "the sign of v"),
    ("to_x0_eps", _conv(swap=True), "α and σ are swapped: x_t = α·x0 + σ·ε, so x0 = (x_t − σ·ε)/α"),
    ("to_x0_eps", _conv(order=True), "in the wrong order"),
    ("to_x0_eps", _conv(divide=True), "you divided by α"),
    ("to_x0_eps", _conv_eps_only(lambda x_t, p, a, s: x_t - s * p), "divide by α"),
    ("to_x0_eps", _conv_eps_only(lambda x_t, p, a, s: (x_t + s * p) / a), "the sign: x_t = α·x0 + σ·ε"),
    ("to_x0_eps", _conv_x0_only(lambda x_t, p, a, s: x_t - a * p), "divide by σ"),
    ("to_x0_eps", _conv_x0_only(lambda x_t, p, a, s: (x_t - s * p) / a), "α and σ are swapped"),
    ("to_x0_eps", lambda x_t, p, a, s, kind: p.clone(), "should return two tensors (x0, eps)"),
    ("to_x0_eps", _conv_unknown("return"), "your function returned a value; raise ValueError"),
    ("to_x0_eps", _conv_unknown("key"), "expected a ValueError, got KeyError"),
    ("to_x0_eps", _conv_unknown("vague"), "name the three that work"),
    ("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: x_t.clone(), "you returned x_t unchanged"),
    ("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: a_s * x_t + s_s * e, "you used x_t as the clean signal"),
    ("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: x_t - (s_t - s_s) * e, "you only took noise away"),
    ("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: a_s / a_t * x_t, "you dropped the noise term"),
    ("ddim_step", _ddim(lambda x_t, e, a_t, s_t, a_s, s_s, x0: a_t * x0 + s_s * e), "the old signal scale α_t"),
    ("ddim_step", _ddim(lambda x_t, e, a_t, s_t, a_s, s_s, x0: a_s * x0 + s_t * e), "is σ_s, not σ_t"),
    ("ddim_step", _ddim(lambda x_t, e, a_t, s_t, a_s, s_s, x0: a_s.sqrt() * x0 + s_s.sqrt() * e),
     "do not take square roots again"),
    ("ddim_step", _ddim(lambda x_t, e, a_t, s_t, a_s, s_s, x0: a_s ** 2 * x0 + s_s ** 2 * e), "you used α_s² = ᾱ_s"),
    ("ddim_step", _ddim(lambda x_t, e, a_t, s_t, a_s, s_s, x0: x0), "that is x̂0"),
    ("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: a_s * (x_t - s_t * e) + s_s * e, "divide by α_t"),
    ("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: a_s * (x_t - a_t * e) / s_t + s_s * e, "swapped in x̂0"),
    ("ddim_step", _ddim_posterior, "DDPM's posterior mean"),
    ("timestep_embedding", _emb(layout="sin_cos"), "the course puts the COSINES first"),
    ("timestep_embedding", _emb(layout="interleave"), "the features are not interleaved: the first half"),
    ("timestep_embedding", _emb(layout="interleave_sin"), "not interleaved, and cosines come first"),
    ("timestep_embedding", _emb(scale=1.0), "scale t by 1000 first"),
    ("timestep_embedding", _emb(spacing="half-1"), "not i/(half − 1)"),
    ("timestep_embedding", _emb(spacing="dim"), "not by dim"),
    ("timestep_embedding", _emb(base=1000.0), "the frequency base is max_period = 10000"),
    ("timestep_embedding", _emb(increasing=True), "a NEGATIVE exponent"),
    ("timestep_embedding", _emb(layout="sin_cos", scale=1.0), "two things"),
    ("timestep_embedding", lambda t, dim: _emb()(t, dim)[:, : dim // 2], "expected an embedding (B, dim) of shape"),
    ("film", _film(plus_one=False), "the +1 is missing"),
    ("film", _film(swap=True), "scale and shift are swapped: the first half"),
    ("film", _film(plus_one=False, swap=True), "swapped (the first half is the scale) and the +1 is missing"),
    ("film", _film(silu=False), "apply SiLU to the embedding"),
    ("film", _film(normalise=False), "normalise first"),
    ("film", _film(norm_last=True), "the norm comes BEFORE the modulation"),
    ("film", _film(plain_norm=True), "use the norm passed in"),
    ("film", _film_no_unsqueeze, "add a time axis, .unsqueeze(-1)"),
    ("film", _film_new_linear, "do not create new ones inside your function"),
    ("train_step", _step(target="eps"), "not the noise ε"),
    ("train_step", _step(target="x0"), "not the clean signal x0"),
    ("train_step", _step(target="-v"), "the sign of v"),
    ("train_step", _step(target="alpha_bar"), "you squared them"),
    ("train_step", _step(reduce="sum"), "take the MEAN"),
    ("train_step", _step(zero_grad=False), "call optimiser.zero_grad() before loss.backward()"),
    ("train_step", _step(clip=False), "the gradient was not clipped"),
    ("train_step", _step(zero_grad=False, clip=False), "zero the old gradients before backward"),
    ("train_step", _step(step=False), "the weights did not move"),
    ("train_step", _step(step_first=True), "the weights did not move"),
    ("train_step", _step(detach_pred=True), "the weights did not move"),
    ("train_step", _step(returns="tensor_list"), "should return the loss as a number"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out, out


def test_exact_float64_and_rearranged_answers_pass(capsys):
    """Algebraically equal answers pass: float64 outputs, DDIM written as one linear map of x_t and ε̂, v
    conversions written with an explicit (α² + σ²) normaliser."""
    assert check("q_sample", lambda x0, ab, noise: reference_q_sample(x0, ab, noise))
    assert check("timestep_embedding", lambda t, dim: reference_embedding(t, dim))
    assert check("ddim_step", lambda x_t, e, a_t, s_t, a_s, s_s: a_s / a_t * x_t + (s_s - a_s * s_t / a_t) * e)
    right = _conv()

    def normalised(x_t, pred, a, s, p):
        if p == "v":
            n = a ** 2 + s ** 2
            return (a * x_t - s * pred) / n, (s * x_t + a * pred) / n
        return right(x_t, pred, a, s, p)

    assert check("to_x0_eps", normalised)
    assert check("train_step", _step(returns="item"))  # the same step written here, returning a float
    capsys.readouterr()


def test_the_train_step_reference_is_the_library_loss_and_a_real_optimiser_step():
    """reference_train_step's loss is GaussianDiffusion.loss (cosine, v) and its update is torch.optim.SGD's after
    clip_grad_norm_; and the check's max_norm really clips (the step's gradient norm is above it)."""
    net, twin = train_step_net(), train_step_net()
    _, x0, t, noise = train_step_cases()[0]
    library = GaussianDiffusion(GaussianDiffusionConfig(schedule="cosine", parameterisation="v", cond_drop=0.0))
    loss, _ = library.loss(twin, x0, t=t, noise=noise)
    optimiser = torch.optim.SGD(twin.parameters(), lr=STEP_LR)
    optimiser.zero_grad()
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5))
    assert norm > 0.5
    optimiser.step()
    got = reference_train_step(net, x0, t, noise, 0.5)
    assert got == pytest.approx(float(loss.detach()), rel=1e-6)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(net.parameters(), twin.parameters()))


@pytest.mark.slow
def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_exercise(tmp_path):
    """Notebook 07 end to end in fresh kernels: the solution runs top to bottom (library cell included) and scores
    every point, the untouched exercise scores none."""
    paths = []
    for kind, folder in (("solution", "solutions"), ("untouched", "exercises")):
        target = tmp_path / f"{kind}_07_noise2music.ipynb"
        target.write_text((ROOT / folder / "07_noise2music.ipynb").read_text(encoding="utf-8"), encoding="utf-8")
        paths.append(target)
    full, empty = grade_many(paths, jobs=2, solutions_dir=ROOT / "solutions", timeout=120, cell_timeout=60)
    assert full.status == "completed", full.detail
    assert full.total == full.max_total == 11
    assert empty.status == "completed", empty.detail  # the untouched exercise runs top to bottom, no error
    assert empty.total == 0 and empty.max_total == 11
    assert all(s.message.startswith("not implemented") for s in empty.scores)
