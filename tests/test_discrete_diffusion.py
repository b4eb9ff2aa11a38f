"""Mask-and-replace discrete diffusion (course_lib.diffusion.discrete) against independent references.

The references are built here, in float64, from the definitions: VQ-Diffusion's ``alpha_schedule`` (numpy),
explicit (K+1) x (K+1) one-step matrices Q_t, their products, and Bayes' rule on small K.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.diffusion.discrete import (
    LOG_ZERO,
    DiscreteDiffusion,
    MaskReplaceSchedule,
    index_to_log_onehot,
)

K, T = 4, 10


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vq_alpha_schedule(time_step, n, att_1=0.99999, att_t=0.000009, ctt_1=0.000009, ctt_t=0.9):
    """VQ-Diffusion's ``alpha_schedule`` (image_synthesis/modeling/transformers/diffusion_transformer.py),
    with Diffsound's ctt_T = 0.9: per-step (at, bt, ct) for t = 1..T and cumulative (att, btt, ctt)."""
    att = np.arange(0, time_step) / (time_step - 1) * (att_t - att_1) + att_1
    att = np.concatenate(([1], att))
    at = att[1:] / att[:-1]
    ctt = np.arange(0, time_step) / (time_step - 1) * (ctt_t - ctt_1) + ctt_1
    ctt = np.concatenate(([0], ctt))
    one_minus_ct = (1 - ctt)[1:] / (1 - ctt)[:-1]
    ct = 1 - one_minus_ct
    bt = (1 - at - ct) / n
    att, ctt = att[1:], ctt[1:]
    btt = (1 - att - ctt) / n
    return at, bt, ct, att, btt, ctt


def step_matrix(sched: MaskReplaceSchedule, t: int) -> torch.Tensor:
    """Q_t[i, j] = q(x_t = j | x_{t-1} = i), built from the per-step α_t, β_t, γ_t (float64)."""
    k = sched.num_classes
    a, b, c = float(sched.alpha[t]), float(sched.beta[t]), float(sched.gamma[t])
    q = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            q[i, j] = b + (a if i == j else 0.0)
        q[i, k] = c
    q[k, k] = 1.0
    return q


def product(sched: MaskReplaceSchedule, s: int, t: int) -> torch.Tensor:
    """Q_{s+1} Q_{s+2} ... Q_t (identity when s = t)."""
    q = torch.eye(sched.num_classes + 1, dtype=torch.float64)
    for u in range(s + 1, t + 1):
        q = q @ step_matrix(sched, u)
    return q


def brute_posterior(sched: MaskReplaceSchedule, x0_dist: torch.Tensor, x_t: int, t: int, s: int) -> torch.Tensor:
    """Σ_{x0} p(x0) q(x_s | x_t, x0), with q(x_s | x_t, x0) ∝ q(x_t | x_s) q(x_s | x0) by Bayes' rule."""
    q_ts, q_s0 = product(sched, s, t), product(sched, 0, s)
    out = torch.zeros(sched.num_classes + 1, dtype=torch.float64)
    for x0 in range(sched.num_classes):
        joint = q_ts[:, x_t] * q_s0[x0, :]
        out += x0_dist[x0] * joint / joint.sum()
    return out


# ---- schedule ---------------------------------------------------------------------------------------------


def test_schedule_matches_vq_diffusion_alpha_schedule_and_its_ends():
    sched = MaskReplaceSchedule(256, 100)
    at, bt, ct, att, btt, ctt = vq_alpha_schedule(100, 256)
    np.testing.assert_allclose(sched.alpha[1:].numpy(), at, rtol=1e-12)
    np.testing.assert_allclose(sched.beta[1:].numpy(), bt, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(sched.gamma[1:].numpy(), ct, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(sched.alpha_bar[1:].numpy(), att, rtol=1e-12)
    np.testing.assert_allclose(sched.beta_bar[1:].numpy(), btt, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(sched.gamma_bar[1:].numpy(), ctt, rtol=1e-12)
    assert float(sched.alpha_bar[1]) == pytest.approx(0.99999) and float(sched.alpha_bar[100]) == pytest.approx(9e-6)
    assert float(sched.gamma_bar[1]) == pytest.approx(9e-6) and float(sched.gamma_bar[100]) == pytest.approx(0.9)
    assert (sched.alpha_bar[0], sched.gamma_bar[0]) == (1.0, 0.0)


@pytest.mark.parametrize("gamma_end", [0.9, 0.99999])
def test_schedule_monotone_and_per_step_probabilities_valid(gamma_end):
    sched = MaskReplaceSchedule(256, 100, gamma_bar_end=gamma_end)
    assert (sched.alpha_bar.diff() < 0).all() and (sched.gamma_bar.diff() > 0).all()
    for p in (sched.alpha, sched.beta, sched.gamma, sched.alpha_bar, sched.beta_bar, sched.gamma_bar):
        assert ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(sched.alpha + 256 * sched.beta + sched.gamma, torch.ones(101, dtype=torch.float64))
    assert (sched.beta_bar[1:] > 0).all()


@pytest.mark.parametrize("kwargs, name", [
    (dict(alpha_bar_start=1.5), "alpha_bar_start"),
    (dict(gamma_bar_end=-0.1), "gamma_bar_end"),
    (dict(alpha_bar_end=0.999999), "alpha_bar_end"),
    (dict(gamma_bar_start=0.95), "gamma_bar_end"),
    (dict(alpha_bar_end=0.2), "alpha_bar_end + gamma_bar_end"),
    (dict(num_steps=1), "num_steps"),
    (dict(num_classes=1), "num_classes"),
    (dict(alpha_bar_start=0.5, alpha_bar_end=0.5, gamma_bar_start=0.1, gamma_bar_end=0.4), "β_2"),
])
def test_schedule_rejects_bad_arguments_by_name(kwargs, name):
    args = dict(num_classes=K, num_steps=T) | kwargs
    with pytest.raises(ValueError, match=name.replace("+", r"\+")):
        MaskReplaceSchedule(**args)


# ---- forward process ----------------------------------------------------------------------------------------


def test_closed_form_equals_product_of_single_step_matrices():
    diff = DiscreteDiffusion(K, num_steps=T)
    sched = diff.schedule
    log_x0 = index_to_log_onehot(torch.arange(K).view(1, K), K + 1)  # (1, K+1, N=K): every code once
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64)  # a distribution over x0 (no mask mass)
    for t in range(1, T + 1):
        q_bar = product(sched, 0, t)
        closed = diff.log_q_xt_given_x0(log_x0, torch.tensor([t])).exp()[0].T.double()  # (x0, x_t)
        torch.testing.assert_close(closed, q_bar[:K], atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(closed.sum(dim=1), torch.ones(K, dtype=torch.float64), atol=1e-6, rtol=0)
        mixed = diff.log_q_xt_given_x0(p.log().float().view(1, K + 1, 1), torch.tensor([t])).exp()[0, :, 0]
        torch.testing.assert_close(mixed.double(), p @ q_bar, atol=2e-6, rtol=1e-5)
        # the schedule's own matrix for 0 -> t agrees too
        torch.testing.assert_close(sched.transition_matrix(0, t), q_bar, atol=1e-12, rtol=1e-9)


def test_one_step_and_strided_transitions_and_mask_is_absorbing():
    diff = DiscreteDiffusion(K, num_steps=T)
    sched = diff.schedule
    every = index_to_log_onehot(torch.arange(K + 1).view(1, K + 1), K + 1)  # includes [MASK]
    for t in (1, 4, T):
        one = diff.log_q_xt_given_xtm1(every, torch.tensor([t])).exp()[0].T.double()
        torch.testing.assert_close(one, step_matrix(sched, t), atol=2e-6, rtol=1e-5)
        assert one[K, K] == pytest.approx(1.0, abs=1e-6) and one[K, :K].max() < 1e-20  # mask stays mask
    for s, t in ((0, 7), (3, 9), (5, 5)):
        strided = diff.log_q_xt_given_xs(every, torch.tensor([s]), torch.tensor([t])).exp()[0].T.double()
        torch.testing.assert_close(strided, product(sched, s, t), atol=2e-6, rtol=1e-5)


def test_q_sample_frequencies_follow_the_closed_form_and_the_mask_schedule():
    diff = DiscreteDiffusion(K, num_steps=T)
    n = 20000
    x0 = torch.full((3, n), 2)
    t = torch.tensor([1, 5, T])
    gen = torch.Generator().manual_seed(0)
    xt = diff.q_sample(x0, t, generator=gen)
    assert xt.shape == x0.shape and xt.dtype == torch.long and int(xt.min()) >= 0 and int(xt.max()) <= K
    closed = diff.log_q_xt_given_x0(index_to_log_onehot(x0[:, :1], K + 1), t).exp()[:, :, 0]  # (3, K+1)
    for row in range(3):
        freq = torch.bincount(xt[row], minlength=K + 1).double() / n
        tol = 4 * torch.sqrt(closed[row].double() * (1 - closed[row].double()) / n) + 1e-4
        assert ((freq - closed[row].double()).abs() <= tol).all(), (row, freq, closed[row])
        mask_rate = float(diff.schedule.gamma_bar[int(t[row])])
        assert float(freq[K]) == pytest.approx(mask_rate, abs=4 * math.sqrt(mask_rate * (1 - mask_rate) / n) + 1e-4)
    again = diff.q_sample(x0, t, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xt, again)


def test_q_sample_rejects_bad_input():
    diff = DiscreteDiffusion(K, num_steps=T)
    with pytest.raises(ValueError, match=r"x0 ids must be in \[0, 3\]"):
        diff.q_sample(torch.full((1, 3), K), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"t must be in \[1, T=10\]"):
        diff.q_sample(torch.zeros(1, 3, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"shape \(B=2,\)"):
        diff.q_sample(torch.zeros(2, 3, dtype=torch.long), torch.tensor([1]))


# ---- posterior ------------------------------------------------------------------------------------------------


def test_posterior_equals_bayes_rule_on_small_matrices():
    diff = DiscreteDiffusion(K, num_steps=T)
    sched = diff.schedule
    x0s, xts = torch.meshgrid(torch.arange(K), torch.arange(K + 1), indexing="ij")
    x0s, xts = x0s.reshape(1, -1), xts.reshape(1, -1)  # every (x0, x_t) pair as one position
    pred = torch.tensor([0.05, 0.6, 0.3, 0.05], dtype=torch.float64)  # a prediction p(x0)
    for t in (1, 2, 5, T):
        post = diff.log_q_posterior(index_to_log_onehot(x0s, K + 1), xts, torch.tensor([t])).exp()[0].double()
        marg = diff.log_q_posterior(pred.log().float().view(1, K, 1).expand(1, K, xts.shape[1]), xts,
                                    torch.tensor([t])).exp()[0].double()
        for col in range(xts.shape[1]):
            x0, x_t = int(x0s[0, col]), int(xts[0, col])
            onehot = torch.nn.functional.one_hot(torch.tensor(x0), K).double()
            torch.testing.assert_close(post[:, col], brute_posterior(sched, onehot, x_t, t, t - 1), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(marg[:, col], brute_posterior(sched, pred, x_t, t, t - 1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(post.sum(0), torch.ones(post.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
        torch.testing.assert_close(marg.sum(0), torch.ones(marg.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    # t = 1 returns the x0 distribution itself
    at_one = diff.log_q_posterior(pred.log().float().view(1, K, 1), torch.tensor([[3]]), torch.tensor([1])).exp()
    torch.testing.assert_close(at_one[0, :K, 0].double(), pred, atol=1e-6, rtol=0)


def test_strided_posterior_equals_bayes_rule():
    diff = DiscreteDiffusion(K, num_steps=T)
    pred = torch.tensor([0.25, 0.25, 0.4, 0.1], dtype=torch.float64)
    for s, t in ((0, 6), (2, 9), (6, T)):
        for x_t in range(K + 1):
            got = diff.log_q_posterior(pred.log().float().view(1, K, 1), torch.tensor([[x_t]]), torch.tensor([t]),
                                       torch.tensor([s])).exp()[0, :, 0].double()
            want = brute_posterior(diff.schedule, pred, x_t, t, s) if s > 0 else torch.cat([pred, pred.new_zeros(1)])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("gamma_end", [0.9, 0.99999])
def test_no_nan_at_the_schedule_ends(gamma_end):
    k = 256
    diff = DiscreteDiffusion(k, num_steps=100, gamma_bar_end=gamma_end)
    gen = torch.Generator().manual_seed(0)
    n = 64
    x0 = torch.randint(0, k, (5, n), generator=gen)
    x_t = torch.randint(0, k + 1, (5, n), generator=gen)
    x_t[:, :8] = k  # some masks
    x_t[:, 8:16] = x0[:, 8:16]  # some kept tokens
    t = torch.tensor([1, 2, 50, 99, 100])
    sharp = torch.randn(5, k, n, generator=gen) * 30  # near one-hot predictions
    for log_x0 in (index_to_log_onehot(x0, k + 1), torch.log_softmax(sharp, 1), torch.log_softmax(sharp / 30, 1)):
        post = diff.log_q_posterior(log_x0, x_t, t)
        assert torch.isfinite(post).all() and (post <= 1e-6).all() and (post >= LOG_ZERO - 1e-3).all()
        # float32 log-space rounding at these ends (log β̄ ≈ −19) is ~1e-5 relative, nothing worse
        torch.testing.assert_close(post.exp().sum(1), torch.ones(5, n), atol=5e-5, rtol=0)
        assert torch.isfinite(diff.log_q_xt_given_x0(log_x0, t)).all()
    loss, metrics = diff.loss(sharp, x0, x_t, t)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())


# ---- loss -------------------------------------------------------------------------------------------------------


def test_loss_is_zero_for_the_true_prediction_and_positive_otherwise():
    diff = DiscreteDiffusion(K, num_steps=T)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, K, (T, 200), generator=gen)
    t = torch.arange(1, T + 1)
    x_t = diff.q_sample(x0, t, generator=gen)
    perfect = torch.nn.functional.one_hot(x0, K).permute(0, 2, 1).float() * 100.0  # logits, argmax = x0
    loss, metrics = diff.loss(perfect, x0, x_t, t)
    assert float(loss) < 1e-6 and float(metrics["vb"]) < 1e-6 and float(metrics["aux_ce"]) < 1e-6
    assert float(metrics["accuracy"]) == 1.0
    assert float(metrics["mask_rate"]) == pytest.approx(float((x_t == K).float().mean()))
    random = torch.randn(T, K, 200, generator=gen, requires_grad=True)
    loss, metrics = diff.loss(random, x0, x_t, t)
    assert torch.isfinite(loss) and float(loss.detach()) > 0.1 and float(metrics["lt"]) > 0
    loss.backward()
    assert torch.isfinite(random.grad).all() and random.grad.abs().sum() > 0


def test_loss_terms_equal_brute_force_kl_and_nll():
    diff = DiscreteDiffusion(K, num_steps=T)
    sched = diff.schedule
    pred = torch.tensor([0.1, 0.5, 0.3, 0.1], dtype=torch.float64)
    logits = pred.log().float().view(1, K, 1)
    for t, x0, x_t in ((5, 1, K), (5, 2, 2), (7, 0, 3), (T, 3, K)):
        true = brute_posterior(sched, torch.nn.functional.one_hot(torch.tensor(x0), K).double(), x_t, t, t - 1)
        model = brute_posterior(sched, pred, x_t, t, t - 1)
        keep = true > 0
        kl = float((true[keep] * (true[keep] / model[keep]).log()).sum())
        _, metrics = diff.loss(logits, torch.tensor([[x0]]), torch.tensor([[x_t]]), torch.tensor([t]))
        assert float(metrics["lt"]) == pytest.approx(kl, rel=1e-3, abs=1e-6)
        assert float(metrics["vb"]) == pytest.approx(T * kl, rel=1e-3, abs=1e-5)  # divided by p(t) = 1/T
        assert float(metrics["aux_ce"]) == pytest.approx(-math.log(float(pred[x0])), rel=1e-5)
    # t = 1: the decoder term −log p(x0 | x1)
    _, metrics = diff.loss(logits, torch.tensor([[2]]), torch.tensor([[2]]), torch.tensor([1]))
    assert float(metrics["lt"]) == pytest.approx(-math.log(0.3), rel=1e-5)


@pytest.mark.parametrize("adaptive", [True, False])
def test_aux_term_weight(adaptive):
    diff = DiscreteDiffusion(K, num_steps=T)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, K, (3, 50), generator=gen)
    t = torch.tensor([2, 5, 9])
    x_t = diff.q_sample(x0, t, generator=gen)
    logits = torch.randn(3, K, 50, generator=gen)
    base, m0 = diff.loss(logits, x0, x_t, t, aux_weight=0.0)
    with_aux, _ = diff.loss(logits, x0, x_t, t, aux_weight=0.1, adaptive_aux=adaptive)
    assert float(base) == pytest.approx(float(m0["vb"]), rel=1e-6)
    ce = -torch.log_softmax(logits, 1).gather(1, x0.unsqueeze(1)).squeeze(1)  # (3, 50)
    w = (2 - (t - 1) / T) if adaptive else torch.ones(3)
    want = 0.1 * T * (w * ce.sum(1)).sum() / (3 * 50)
    assert float(with_aux - base) == pytest.approx(float(want), rel=1e-4)


# ---- truncation and sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("r, kept", [(0.86, [0.5, 0.3, 0.15]), (0.8, [0.5, 0.3]), (0.1, [0.5]),
                                     (1.0, [0.5, 0.3, 0.15, 0.05])])
def test_truncation_keeps_the_smallest_set_over_r(r, kept):
    probs = torch.tensor([0.15, 0.05, 0.5, 0.3])  # shuffled on purpose
    out = DiscreteDiffusion.truncate(probs.log().view(1, 4, 1), r).exp()[0, :, 0]
    want = torch.where(torch.isin(probs, torch.tensor(kept)), probs, torch.zeros(4))
    torch.testing.assert_close(out, want / want.sum(), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="truncation r"):
        DiscreteDiffusion.truncate(probs.log().view(1, 4, 1), 0.0)


def test_timesteps_strided_schedule():
    diff = DiscreteDiffusion(K, num_steps=100)
    assert diff.timesteps(10) == list(range(100, -1, -10))
    assert diff.timesteps() == list(range(100, -1, -1))
    three = diff.timesteps(3)
    assert three[0] == 100 and three[-1] == 0 and len(three) == 4 and all(a > b for a, b in zip(three, three[1:]))
    with pytest.raises(ValueError, match="steps must be an int in"):
        diff.timesteps(101)


@pytest.mark.parametrize("steps, truncation", [(None, 0.86), (10, None), (1, 0.5)])
def test_oracle_denoiser_generates_exactly_x0(steps, truncation):
    k = 8
    diff = DiscreteDiffusion(k, num_steps=100)
    x0 = torch.randint(0, k, (2, 3, 5), generator=torch.Generator().manual_seed(3))
    seen = []

    def oracle(x_t, t):
        seen.append(int(t[0]))
        assert x_t.shape == x0.shape
        return torch.nn.functional.one_hot(x0, k).movedim(-1, 1).float() * 50.0  # (B, K, 3, 5)

    out, traj = diff.sample(oracle, x0.shape, steps=steps, truncation=truncation,
                            generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert torch.equal(out, x0)
    assert len(traj) == (steps or 100) + 1 and bool((traj[0] == k).all()) and seen == diff.timesteps(steps)[:-1]


def test_strided_sampling_follows_the_true_reverse_marginals():
    """With the exact x0 predicted, x_s given x_T = [MASK] is distributed as q(x_s | x_T = mask, x0): mask with
    probability γ̄_s / γ̄_T and equal to x0 with γ_{T|s} (ᾱ_s + β̄_s) / γ̄_T, however coarse the jumps."""
    k = 8
    diff = DiscreteDiffusion(k, num_steps=100)
    sched = diff.schedule
    n = 4000
    x0 = torch.randint(0, k, (1, n), generator=torch.Generator().manual_seed(4))

    def oracle(x_t, t):
        return torch.nn.functional.one_hot(x0, k).movedim(-1, 1).float() * 50.0

    _, traj = diff.sample(oracle, (1, n), steps=4, truncation=None, generator=torch.Generator().manual_seed(5),
                          return_trajectory=True)
    gamma_t = float(sched.gamma_bar[100])
    for s, x in zip(diff.timesteps(4), traj):
        if s in (0, 100):
            continue
        p_mask = float(sched.gamma_bar[s]) / gamma_t
        _, _, g = sched.transition(s, 100)
        p_x0 = g * float(sched.alpha_bar[s] + sched.beta_bar[s]) / gamma_t
        for got, want in (((x == k).float().mean(), p_mask), ((x == x0).float().mean(), p_x0)):
            assert float(got) == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / n) + 1e-3), (s, got, want)


def test_sample_leaves_no_mask_and_checks_its_arguments():
    k = 16
    diff = DiscreteDiffusion(k, num_steps=20)
    gen = torch.Generator().manual_seed(6)

    def noisy(x_t, t):
        return torch.randn(x_t.shape[0], k, *x_t.shape[1:], generator=gen)

    out = diff.sample(noisy, (3, 40), steps=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 40) and out.dtype == torch.long and int(out.min()) >= 0 and int(out.max()) < k
    assert diff.sample(noisy, 7, steps=2).shape == (1, 7)
    with pytest.raises(ValueError, match=r"denoise_fn must return logits \(B, K=16"):
        diff.sample(lambda x, t: torch.zeros(3, k - 1, 40), (3, 40))
    with pytest.raises(ValueError, match="temperature"):
        diff.sample(noisy, (3, 40), temperature=0.0)
    with pytest.raises(ValueError, match="truncation"):
        diff.sample(noisy, (3, 40), truncation=1.5)
