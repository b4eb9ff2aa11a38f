"""Gaussian diffusion (course_lib.diffusion.gaussian): schedules against their closed forms and DDPM's discrete
tables, the forward process (analytic and by sampling), exact parameterisation round trips, the DDPM posterior
(Ho et al. eq. 7), DDIM's η = 1 variance, oracle denoisers that must recover x₀ or a known Gaussian, the loss,
condition dropout and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.diffusion.gaussian import (
    ALPHA_BAR_MIN,
    PARAMETERISATIONS,
    SCHEDULES,
    GaussianDiffusion,
    GaussianDiffusionConfig,
    alpha_bar,
    alpha_sigma,
    cosine_alpha_bar,
    ddpm_betas,
    discrete_alpha_bar,
    dynamic_threshold,
    eps_to_x0,
    guided,
    linear_alpha_bar,
    log_snr,
    v_to_eps,
    v_to_x0,
    x0_eps_to_v,
    x0_to_eps,
)

torch.set_num_threads(1)
F64 = torch.float64


# ------------------------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_monotone_with_stated_end_points(schedule):
    t = torch.linspace(0, 1, 1001, dtype=F64)
    ab, snr = alpha_bar(schedule, t), log_snr(schedule, t)
    assert ab[0] == 1.0 and snr[0] == math.inf
    assert (ab.diff() <= 0).all()
    inner = t <= 0.999
    assert (ab[inner].diff() < 0).all() and (snr[inner].diff() < 0).all()
    assert (ab >= ALPHA_BAR_MIN).all() and (snr >= -20.0 - 1e-9).all()
    a, s = alpha_sigma(schedule, t)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(t), rtol=0, atol=1e-12)
    if schedule == "linear":  # exp(−(0.1 t + 9.95 t²)) at t = 1: DDPM's ᾱ_T
        assert ab[-1].item() == pytest.approx(math.exp(-10.05), rel=1e-9)
        assert snr[-1].item() == pytest.approx(-10.05, abs=1e-3)
    else:
        assert ab[-1].item() == pytest.approx(ALPHA_BAR_MIN, rel=1e-9)
        assert snr[-1].item() == pytest.approx(-20.0, abs=1e-6)


def test_cosine_closed_form_and_dtype():
    s = 0.008
    want = math.cos((0.5 + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert cosine_alpha_bar(torch.tensor(0.5, dtype=F64)).item() == pytest.approx(want, rel=1e-12)
    assert cosine_alpha_bar(torch.tensor([0.5])).dtype == torch.float32
    assert linear_alpha_bar(0.5).item() == pytest.approx(math.exp(-(0.05 + 9.95 / 4)), rel=1e-6)


def test_continuous_schedules_match_ddpm_discrete_tables():
    T = 1000
    betas = ddpm_betas("linear", T)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    grid = torch.arange(1, T + 1, dtype=F64) / T
    gap = (discrete_alpha_bar(betas).log() - linear_alpha_bar(grid).log()).abs()
    assert gap.max() < 0.08  # Σ log(1 − β) vs −∫β: the β²/2 terms, ≈ 0.07 at t = 1
    cos_disc = discrete_alpha_bar(ddpm_betas("cosine", T))
    torch.testing.assert_close(cos_disc[:-1], cosine_alpha_bar(grid)[:-1], rtol=1e-9, atol=0)
    assert ddpm_betas("cosine", T).max() <= 0.999


def test_discrete_forward_chain_matches_closed_form():
    """Run x_i = √(1 − β_i) x_{i−1} + √β_i z for 1000 steps; compare with q(x_i | x₀) = N(√ᾱ_i x₀, 1 − ᾱ_i)."""
    g = torch.Generator().manual_seed(0)
    betas = ddpm_betas("linear", 1000)
    ab = discrete_alpha_bar(betas)
    n, x0 = 20000, 0.7
    x = torch.full((n,), x0, dtype=F64)
    for i, b in enumerate(betas):
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(n, generator=g, dtype=F64)
        if i + 1 in (100, 300, 1000):
            mean, var = ab[i].sqrt() * x0, 1 - ab[i]
            assert abs(x.mean() - mean) < 4 * var.sqrt() / math.sqrt(n)
            assert abs(x.var() / var - 1) < 4 * math.sqrt(2 / n)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_q_sample_mean_and_variance(schedule):
    gd = GaussianDiffusion(schedule=schedule)
    t = torch.tensor([0.05, 0.5, 0.95], dtype=F64)
    x0 = torch.tensor([0.9, -0.4, 0.6], dtype=F64).view(3, 1, 1).expand(3, 1, 40000).contiguous()
    mean, var = gd.q_mean_variance(x0, t)
    a, s = alpha_sigma(schedule, t)
    torch.testing.assert_close(mean[:, 0, 0], a * x0[:, 0, 0])
    torch.testing.assert_close(var.flatten(), 1 - alpha_bar(schedule, t))
    xt = gd.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    n = x0.shape[-1]
    for i in range(3):
        assert abs(xt[i].mean() - mean[i, 0, 0]) < 4 * s[i] / math.sqrt(n)
        assert abs(xt[i].var() / var[i].squeeze() - 1) < 4 * math.sqrt(2 / n)


def test_posterior_is_ddpm_equation_7_on_the_discrete_grid():
    """With the cosine schedule the continuous ᾱ(i/T) is DDPM's discrete ᾱ_i, so q(x_s | x_t, x₀) at
    s = t − 1/T must be Ho et al. eq. 7: μ̃ = √ᾱ_{i−1}β_i/(1−ᾱ_i) x₀ + √α_i(1−ᾱ_{i−1})/(1−ᾱ_i) x_t, β̃."""
    T = 1000
    betas = ddpm_betas("cosine", T)
    ab = discrete_alpha_bar(betas)
    gd = GaussianDiffusion(schedule="cosine")
    idx = torch.tensor([2, 10, 500, 990])  # i (1-based), i − 1 ≥ 1
    t, s = idx.to(F64) / T, (idx - 1).to(F64) / T
    x0 = torch.randn(4, 1, 5, dtype=F64)
    xt = torch.randn(4, 1, 5, dtype=F64)
    mean, var = gd.q_posterior_mean_variance(x0, xt, t, s)
    a_i, a_prev, b_i = ab[idx - 1], ab[idx - 2], betas[idx - 1]
    c0 = (a_prev.sqrt() * b_i / (1 - a_i)).view(-1, 1, 1)
    ct = ((1 - b_i).sqrt() * (1 - a_prev) / (1 - a_i)).view(-1, 1, 1)
    torch.testing.assert_close(mean, c0 * x0 + ct * xt, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var.flatten(), (1 - a_prev) / (1 - a_i) * b_i, rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------------------- parameterisations
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t_value", [1e-4, 1e-2, 0.5, 0.99, 0.9999])
def test_conversions_round_trip_exactly(schedule, t_value):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 1, 16, generator=g, dtype=F64) * 2 - 1
    eps = torch.randn(2, 1, 16, generator=g, dtype=F64)
    t = torch.full((2,), t_value, dtype=F64)
    gd = GaussianDiffusion(schedule=schedule)
    a, s = gd.alpha_sigma(t, x0)
    xt = a * x0 + s * eps
    v = x0_eps_to_v(x0, eps, a, s)
    tol = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_to_x0(xt, eps, a, s), x0, **tol)
    torch.testing.assert_close(x0_to_eps(xt, x0, a, s), eps, **tol)
    torch.testing.assert_close(v_to_x0(xt, v, a, s), x0, **tol)
    torch.testing.assert_close(v_to_eps(xt, v, a, s), eps, **tol)
    for p in PARAMETERISATIONS:
        gp = GaussianDiffusion(schedule=schedule, parameterisation=p)
        x0_hat, eps_hat = gp.predict_x0_eps(gp.target(x0, eps, t), xt, t, clip=False)
        torch.testing.assert_close(x0_hat, x0, **tol)
        torch.testing.assert_close(eps_hat, eps, **tol)


def test_clipping_and_dynamic_threshold():
    x = torch.tensor([[[0.5, -3.0, 2.0, 0.1]], [[0.2, -0.3, 0.4, 0.9]]])
    y = dynamic_threshold(x, 1.0)
    assert y.abs().max() <= 1.0
    torch.testing.assert_close(y[0], x[0] / 3.0)  # s = max |x| = 3
    torch.testing.assert_close(y[1], x[1])  # already inside [−1, 1]: s = 1
    gd = GaussianDiffusion(parameterisation="x0", clip_x0=0.5)
    xt, t = torch.zeros(2, 1, 4), torch.full((2,), 0.5)
    x0_hat, eps_hat = gd.predict_x0_eps(x, xt, t)
    assert x0_hat.abs().max() == 0.5
    a, s = gd.alpha_sigma(t, xt)
    torch.testing.assert_close(a * x0_hat + s * eps_hat, xt)  # ε̂ recomputed: still consistent with x_t


# --------------------------------------------------------------------------------------------------- DDIM
def test_ddim_eta_one_has_the_ddpm_posterior_mean_and_variance():
    g = torch.Generator().manual_seed(4)
    gd = GaussianDiffusion(schedule="linear")
    xt = torch.randn(3, 1, 8, generator=g, dtype=F64)
    x0_hat = torch.rand(3, 1, 8, generator=g, dtype=F64) * 2 - 1
    t, s = torch.tensor([0.9, 0.5, 0.02], dtype=F64), torch.tensor([0.7, 0.45, 0.0], dtype=F64)
    a, sig = gd.alpha_sigma(t, xt)
    eps_hat = x0_to_eps(xt, x0_hat, a, sig)
    post_mean, post_var = gd.q_posterior_mean_variance(x0_hat, xt, t, s)
    mean1, var1 = gd.ddim_step_mean_var(xt, x0_hat, eps_hat, t, s, eta=1.0)
    torch.testing.assert_close(var1, post_var, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean1, post_mean, rtol=1e-10, atol=1e-12)
    mean0, var0 = gd.ddim_step_mean_var(xt, x0_hat, eps_hat, t, s, eta=0.0)
    assert (var0 == 0).all()
    a_s, s_s = gd.alpha_sigma(s, xt)
    torch.testing.assert_close(mean0, a_s * x0_hat + s_s * eps_hat)  # Song et al. eq. 12, σ = 0
    _, var_half = gd.ddim_step_mean_var(xt, x0_hat, eps_hat, t, s, eta=0.5)
    torch.testing.assert_close(var_half, 0.25 * post_var)


def _oracle(gd: GaussianDiffusion, x0: torch.Tensor):
    """A model that knows x₀: returns the exact ε / v / x₀ for any x_t."""
    def model_fn(xt, t):
        a, s = gd.alpha_sigma(t, xt)
        eps = (xt - a * x0) / s
        return {"eps": eps, "x0": x0.expand_as(xt), "v": x0_eps_to_v(x0, eps, a, s)}[gd.config.parameterisation]
    return model_fn


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS)
def test_samplers_with_an_oracle_recover_x0(schedule, parameterisation):
    gd = GaussianDiffusion(schedule=schedule, parameterisation=parameterisation)
    x0 = torch.linspace(-0.9, 0.9, 32, dtype=F64).view(1, 1, 32).repeat(2, 1, 1)
    x0[1] = -x0[1]
    fn = _oracle(gd, x0)
    out = gd.ddim_sample(fn, x0.shape, steps=10, eta=0.0, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    out = gd.ddpm_sample(fn, x0.shape, steps=10, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_samplers_with_the_exact_denoiser_of_a_gaussian_reproduce_it(schedule):
    """Data x₀ ~ N(μ, s²): E[x₀ | x_t] is known in closed form. Ancestral sampling (1000 steps) and DDIM
    (η = 0, 200 steps) with that denoiser must give samples with mean μ and standard deviation s."""
    mu, sd, n = 0.3, 0.5, 4096
    gd = GaussianDiffusion(schedule=schedule, parameterisation="eps", clip_x0=False)

    def model_fn(xt, t):
        a, s = gd.alpha_sigma(t, xt)
        x0 = mu + a * sd ** 2 / (a ** 2 * sd ** 2 + s ** 2) * (xt - a * mu)
        return (xt - a * x0) / s

    g = torch.Generator().manual_seed(0)
    ddpm = gd.ddpm_sample(model_fn, (n, 1, 1), steps=1000, generator=g, dtype=F64)
    ddim = gd.ddim_sample(model_fn, (n, 1, 1), steps=200, generator=g, dtype=F64)
    for out in (ddpm, ddim):
        assert abs(out.mean().item() - mu) < 0.02
        assert abs(out.std().item() - sd) < 0.02


def test_ddim_is_deterministic_and_trajectory_is_recorded():
    gd = GaussianDiffusion(schedule="cosine", parameterisation="v")
    model = nn.Conv1d(1, 1, 3, padding=1).double()
    fn = lambda x, t: torch.tanh(model(x))  # noqa: E731
    xT = torch.randn(2, 1, 16, dtype=F64)
    a = gd.ddim_sample(fn, None, steps=5, x_T=xT, generator=torch.Generator().manual_seed(1))
    b, traj = gd.ddim_sample(fn, None, steps=5, x_T=xT, generator=torch.Generator().manual_seed(2),
                             return_trajectory=True)
    assert torch.equal(a, b)
    assert traj["t"][0] == 1.0 and traj["t"][-1] == 0.0 and len(traj["t"]) == 6
    assert len(traj["x_t"]) == 6 and len(traj["x0_hat"]) == 5 and torch.equal(traj["x_t"][-1], b)
    c = gd.ddim_sample(fn, None, steps=5, eta=1.0, x_T=xT, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)


# --------------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS)
def test_loss_is_zero_for_an_oracle(parameterisation):
    gd = GaussianDiffusion(schedule="cosine", parameterisation=parameterisation)
    x0 = torch.rand(4, 1, 32, dtype=F64) * 2 - 1
    t = torch.tensor([0.01, 0.3, 0.7, 0.99], dtype=F64)
    loss, metrics = gd.loss(_oracle(gd, x0), x0, t=t)
    assert loss.item() < 1e-18 and metrics["x0_mse"] < 1e-18
    wrong = gd.loss(lambda xt, t: torch.zeros_like(xt), x0, t=t)[0]
    assert wrong.item() > 0.01


def test_loss_gradient_reaches_the_model_and_targets_are_the_stated_ones():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv1d(8, 1, 3, padding=1))
    x0, noise, t = torch.rand(3, 1, 16) * 2 - 1, torch.randn(3, 1, 16), torch.tensor([0.2, 0.5, 0.8])
    for p in PARAMETERISATIONS:
        gd = GaussianDiffusion(parameterisation=p)
        model.zero_grad()
        loss, _ = gd.loss(lambda xt, tt: model(xt), x0, t=t, noise=noise)
        loss.backward()
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())
        a, s = gd.alpha_sigma(t, x0)
        want = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[p]
        with torch.no_grad():
            expected = (model(a * x0 + s * noise) - want).pow(2).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_drops_the_text_condition_at_the_configured_rate():
    seen = []

    def model_fn(xt, t, text_mask):
        seen.append(text_mask)
        return torch.zeros_like(xt)

    x0, mask = torch.zeros(400, 1, 4), torch.ones(400, 3, dtype=torch.bool)
    _, m = GaussianDiffusion(cond_drop=1.0).loss(model_fn, x0, text_mask=mask)
    assert not seen[-1].any() and m["cond_dropped"] == 1.0
    GaussianDiffusion(cond_drop=0.0).loss(model_fn, x0, text_mask=mask)
    assert seen[-1].all()
    _, m = GaussianDiffusion(cond_drop=0.1).loss(model_fn, x0, text_mask=mask,
                                                 generator=torch.Generator().manual_seed(0))
    assert 0.05 < m["cond_dropped"] < 0.16 and mask.all()  # the caller's mask is not modified


# ----------------------------------------------------------------------------------------------- guidance
def test_guidance_scale_one_is_the_conditional_model():
    calls = []

    def model(xt, t, text, text_mask):
        calls.append(text_mask.clone())
        return xt * 0 + (text * text_mask[..., None]).sum((1, 2)).view(-1, 1, 1) + t.view(-1, 1, 1)

    xt, t = torch.randn(2, 1, 8), torch.tensor([0.3, 0.6])
    text, mask = torch.randn(2, 4, 5), torch.tensor([[True, True, False, False], [True, True, True, True]])
    cond = model(xt, t, text, mask)
    calls.clear()
    assert torch.equal(guided(model, dict(text=text, text_mask=mask), scale=1.0)(xt, t), cond)
    assert len(calls) == 1
    uncond = model(xt, t, text, torch.zeros_like(mask))
    calls.clear()
    torch.testing.assert_close(guided(model, dict(text=text, text_mask=mask), scale=0.0)(xt, t), uncond)
    assert not calls[1].any()  # default null condition: all-False mask
    out = guided(model, dict(text=text, text_mask=mask), scale=3.0)(xt, t)
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))


def test_configs_and_errors():
    cfg = GaussianDiffusionConfig.paper("cascader")
    assert cfg.schedule == "linear" and cfg.parameterisation == "eps" and cfg.cond_drop == 0.1
    assert GaussianDiffusionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="schedule"):
        GaussianDiffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="parameterisation"):
        GaussianDiffusion(parameterisation="score")
    with pytest.raises(ValueError, match="unknown GaussianDiffusionConfig keys"):
        GaussianDiffusionConfig.from_dict({"steps": 3})
    gd = GaussianDiffusion()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gd.q_sample(torch.zeros(2, 1, 4), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="float"):
        gd.q_sample(torch.zeros(2, 1, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        gd.q_sample(torch.zeros(2, 1, 4), torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="text_mask"):
        guided(lambda *a, **k: None, dict(text=torch.zeros(1, 2, 3)))
