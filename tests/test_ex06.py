"""Exercise notebook 06 (Diffsound): the solution passes every check, the stub says "not implemented", and each
check rejects plausible wrong answers with the hint that names the mistake."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from exercise_notebooks import (
    assert_check_passes_quickly,
    assert_generated_and_registered,
    assert_stubs_not_implemented,
    notebook_functions,
)

from course_lib.diffusion.discrete import (
    LOG_ZERO,
    DiscreteDiffusion,
    MaskReplaceSchedule,
    index_to_log_onehot,
)
from course_lib.exercises import check
from course_lib.exercises.ex06 import (
    DROPPED_BELOW,
    LESSON,
    MATRIX_CASES,
    POSTERIOR_CASES,
    POSTERIOR_SCHEDULES,
    TIE_CASES,
    TRUNCATE_CASES,
    loss_cases,
    reference_loss,
    reference_matrix,
    reference_posterior,
    reference_reverse_step,
    reference_schedule,
    reference_truncate,
    reverse_step_cases,
)
from course_lib.exercises.grade import grade_many, solution_tasks

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "06_diffsound.ipynb"
EXERCISE = ROOT / "exercises" / "06_diffsound.ipynb"
TASK_IDS = ["mask_replace_matrix", "mask_schedule", "posterior_one_token", "reverse_step", "truncate", "diffsound_loss"]
NAMESPACE = {"math": math, "torch": torch, "MaskReplaceSchedule": MaskReplaceSchedule,
             "DiscreteDiffusion": DiscreteDiffusion, "index_to_log_onehot": index_to_log_onehot}  # the solution cells' imports


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
    assert solution_tasks(SOLUTION) == {"mask_replace_matrix": 1, "mask_schedule": 2, "posterior_one_token": 2,
                                        "reverse_step": 2, "truncate": 2, "diffsound_loss": 2}


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    assert_check_passes_quickly(task_id, solution_fns, capsys)


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    assert_stubs_not_implemented(EXERCISE, TASK_IDS, capsys, NAMESPACE)


# --- the references the checks use, against the library and hand-made answers ------------------------------


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    assert torch.allclose(solution_fns["mask_replace_matrix"](0.6, 0.1, 3), torch.tensor(
        [[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0, 0, 0, 1]], dtype=torch.float64))
    matrix = solution_fns["mask_replace_matrix"](0.7, 0.2, 2)
    assert torch.allclose(matrix, torch.tensor([[0.75, 0.05, 0.2], [0.05, 0.75, 0.2], [0.0, 0.0, 1.0]],
                                               dtype=torch.float64))
    ab, gb, a, g = solution_fns["mask_schedule"](5, 0.9, 0.1, 0.05, 0.5)
    assert torch.allclose(ab, torch.tensor([1.0, 0.9, 0.7, 0.5, 0.3, 0.1], dtype=torch.float64))
    assert torch.allclose(torch.cumprod(a, 0), ab) and torch.allclose(torch.cumprod(1 - g, 0), 1 - gb)
    # the posterior of one token equals a brute-force joint count over (x_{t-1}, x_t) from x0
    sched = MaskReplaceSchedule(3, num_steps=6, alpha_bar_start=0.95, alpha_bar_end=0.1, gamma_bar_start=0.02,
                                gamma_bar_end=0.6)
    x0, x_t, t = 1, 0, 3
    joint = torch.zeros(4, 4, dtype=torch.float64)  # [x_{t-1}, x_t]
    for i in range(4):
        for j in range(4):
            joint[i, j] = sched.transition_matrix(0, t - 1)[x0, i] * sched.transition_matrix(t - 1, t)[i, j]
    assert torch.allclose(solution_fns["posterior_one_token"](sched, x0, x_t, t), joint[:, x_t] / joint[:, x_t].sum())
    logits, post = torch.tensor([0.0, math.log(3.0)]), torch.tensor([[0.5, 0.1, 0.4], [0.2, 0.6, 0.2]]).log()
    assert torch.allclose(solution_fns["reverse_step"](logits, post).exp(), torch.tensor([0.275, 0.475, 0.25]))
    kept = solution_fns["truncate"](torch.tensor([0.05, 0.5, 0.15, 0.3]).log(), 0.7).exp()
    assert torch.allclose(kept, torch.tensor([0.0, 0.625, 0.0, 0.375]))


def test_references_agree_with_the_library():
    sched = MaskReplaceSchedule(5, num_steps=10)
    for s, t in ((0, 6), (5, 6), (0, 10), (3, 3)):
        a, _, c = sched.transition(s, t)
        assert torch.allclose(reference_matrix(a, c, 5), sched.transition_matrix(s, t), atol=1e-15)
    for alpha, gamma, k, _ in MATRIX_CASES:
        assert torch.allclose(reference_matrix(alpha, gamma, k).sum(1), torch.ones(k + 1, dtype=torch.float64))
    # the schedule reference is VQ-Diffusion's alpha_schedule (see test_discrete_diffusion): spot-check its ends
    ab, gb, a, g = reference_schedule(100)
    assert float(ab[1]) == pytest.approx(0.99999) and float(ab[100]) == pytest.approx(0.000009)
    assert float(gb[100]) == pytest.approx(0.9) and torch.allclose(torch.cumprod(a, 0), ab)
    # the posterior reference equals the library's posterior for a one-hot x0
    schedules = {name: MaskReplaceSchedule(**kw) for name, kw in POSTERIOR_SCHEDULES.items()}
    for name, x0, x_t, t in POSTERIOR_CASES:
        k = schedules[name].num_classes
        lib = DiscreteDiffusion(schedules[name]).log_q_posterior(index_to_log_onehot(torch.tensor([[x0]]), k + 1),
                                                                 torch.tensor([[x_t]]), torch.tensor([t]))
        assert torch.allclose(reference_posterior(schedules[name], x0, x_t, t), lib.exp()[0, :, 0].double(),
                              atol=1e-6)
    # the reverse-step reference equals DiscreteDiffusion.p_log_prev on the library's posteriors, and the
    # confident case really underflows a naive float32 exp/sum/log
    cases = reverse_step_cases()
    logits, post, _, library = cases[1]
    assert torch.allclose(reference_reverse_step(logits, post).exp(), library.double().exp(), atol=1e-6)
    logits, post, _, _ = cases[-1]
    naive = (post.exp() * torch.softmax(logits, -1).unsqueeze(-1)).sum(-2).log()
    assert torch.isinf(naive).any() and torch.isfinite(reference_reverse_step(logits, post)).all()
    # the truncation reference equals DiscreteDiffusion.truncate (classes on axis 1 there) away from ties
    for log_probs, r in TRUNCATE_CASES:
        if log_probs.dim() == 3:
            lib = DiscreteDiffusion.truncate(log_probs.movedim(-1, 1), r).movedim(1, -1)
            ref = reference_truncate(log_probs, r)
            assert torch.equal(lib > DROPPED_BELOW, ref > -math.inf) and (lib[ref == -math.inf] < LOG_ZERO + 1).all()
            assert torch.allclose(lib[ref > -math.inf], ref[ref > -math.inf], atol=1e-5)


def test_truncate_cases_stay_away_from_the_boundary():
    """No case has a cumulative mass within 1e-4 of r: float32 and float64 answers cannot disagree."""
    for log_probs, r in TRUNCATE_CASES:
        cum = log_probs.double().exp().sort(-1, descending=True).values.cumsum(-1)
        assert (cum - r).abs().min() > 1e-4 or r == 1.0


def test_each_posterior_mistake_shows_on_some_case_and_is_told_apart_there():
    """Every recognised mistake differs from the truth on some case, and on the first such case from every other
    recognised mistake that is diagnosed before it (the matrices are symmetric among the codes, so a swapped row
    and column differ only through [MASK])."""
    schedules = {name: MaskReplaceSchedule(**kw) for name, kw in POSTERIOR_SCHEDULES.items()}
    variants = [dict(normalise=False), dict(prior_step=-1), dict(likelihood_from=0), dict(likelihood_row=True),
                dict(prior_column=True)]

    def run(kw, case):
        name, x0, x_t, t = case
        kw = dict(kw, prior_step=t) if kw.get("prior_step") == -1 else kw
        return reference_posterior(schedules[name], x0, x_t, t, **kw)

    for i, kw in enumerate(variants):
        first = next(c for c in POSTERIOR_CASES if not torch.allclose(run(kw, c), run({}, c), atol=1e-4))
        for earlier in variants[:i]:
            assert not torch.allclose(run(kw, first), run(earlier, first), atol=1e-4), (kw, earlier, first)


def test_tie_cases_have_ties_at_the_boundary():
    for i, (log_probs, r) in enumerate(TRUNCATE_CASES):
        probs = log_probs.exp()
        kept = reference_truncate(log_probs, r) > -math.inf
        smallest_kept = torch.where(kept, probs, 2.0).min(-1).values
        largest_dropped = torch.where(kept, -1.0, probs).max(-1).values
        assert bool((smallest_kept == largest_dropped).any()) == (i in TIE_CASES)


# --- plausible wrong answers -------------------------------------------------------------------------


def _matrix_double_beta(alpha, gamma, K):
    q = reference_matrix(alpha, gamma, K)
    return q + torch.diag(torch.cat([torch.full((K,), (1 - alpha - gamma) / K), torch.zeros(1)]).double())


def _matrix_no_mask_row(alpha, gamma, K):
    q = reference_matrix(alpha, gamma, K)
    q[K] = 0.0
    return q


def _schedule(num_steps, ab0=0.99999, ab1=0.000009, gb0=0.000009, gb1=0.9, *, ramp="right", alpha="ratio",
              gamma="ratio", drop_first=False, dtype=torch.float64):
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    frac = t / num_steps if ramp == "t/T" else (t - 1) / (num_steps - 1)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    if ramp == "0..T":
        ab = torch.linspace(ab0, ab1, num_steps + 1, dtype=torch.float64)
        gb = torch.cat([zero, gb0 + (t - 1) / (num_steps - 1) * (gb1 - gb0)])
    else:
        ab = torch.cat([one, ab0 + frac * (ab1 - ab0)])
        gb = torch.cat([zero, gb0 + frac * (gb1 - gb0)])
    a = {"ratio": torch.cat([one, ab[1:] / ab[:-1]]), "cumulative": ab,
         "difference": torch.cat([one, ab[:-1] - ab[1:]])}[alpha]
    g = {"ratio": torch.cat([zero, 1 - (1 - gb[1:]) / (1 - gb[:-1])]), "cumulative": gb,
         "difference": torch.cat([zero, gb[1:] - gb[:-1]]), "keep": torch.cat([zero, (1 - gb[1:]) / (1 - gb[:-1])])}[gamma]
    out = (ab, gb, a, g)
    return tuple(x[1:].to(dtype) if drop_first else x.to(dtype) for x in out)


def _posterior(**kwargs):
    return lambda schedule, x0, x_t, t: reference_posterior(schedule, x0, x_t, t, **kwargs)


def _posterior_naive_prior(schedule, x0, x_t, t):
    """Q̄_t's row used as the prior AND normalised: the 'wrong step' mistake."""
    return reference_posterior(schedule, x0, x_t, t, prior_step=t)


def _reverse_naive(x0_logits, log_posterior):
    p0 = torch.softmax(x0_logits, dim=-1)
    return (log_posterior.exp() * p0.unsqueeze(-1)).sum(dim=-2).log()


def _reverse(**kwargs):
    return lambda logits, post: reference_reverse_step(logits, post, **kwargs).float()


def _truncate(**kwargs):
    return lambda log_probs, r: reference_truncate(log_probs, r, **kwargs)


def _truncate_zero(log_probs, r):
    out = reference_truncate(log_probs, r)
    return out.masked_fill(out == -math.inf, 0.0)


def _truncate_in_place(log_probs, r):
    out = reference_truncate(log_probs, r)
    return log_probs.copy_(out)


def _loss(**kwargs):
    return lambda d, lg, x0, xt, t, aux: reference_loss(d, lg, x0, xt, t, aux, **kwargs)


def _loss_detached_model(d, lg, x0, xt, t, aux):
    """The right value, but the model's posterior computed from detached logits: no gradient through the bound."""
    k, steps = d.num_classes, d.num_steps
    log_p0 = torch.log_softmax(lg, dim=1)
    log_model = d.log_q_posterior(log_p0.detach(), xt, t)
    log_true = d.log_q_posterior(index_to_log_onehot(x0, k + 1), xt, t)
    kl = (log_true.exp() * (log_true - log_model)).sum(dim=1)
    vb = torch.where((t == 1)[:, None], -log_model.gather(1, x0[:, None])[:, 0], kl)
    ce = -log_p0.gather(1, x0[:, None])[:, 0]
    return steps * (vb + aux * (2.0 - (t - 1).float() / steps)[:, None] * ce).mean()


def test_loss_reference_is_the_library_and_its_mistakes_differ_on_every_case():
    for d, lg, x0, xt, t, aux, _ in loss_cases():
        expected = float(d.loss(lg, x0, xt, t, aux_weight=aux)[0])
        assert math.isclose(float(reference_loss(d, lg, x0, xt, t, aux)), expected, rel_tol=1e-5)
        for kwargs in (dict(reverse_kl=True), dict(times_steps=False), dict(adaptive=False), dict(normalise=False),
                       dict(aux_on_posterior=True), dict(no_aux=True)):
            wrong = float(reference_loss(d, lg, x0, xt, t, aux, **kwargs))
            assert not math.isclose(wrong, expected, rel_tol=1e-4), kwargs


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("diffsound_loss", _loss(reverse_kl=True), "the KL is the wrong way round"),
    ("diffsound_loss", _loss(times_steps=False), "missing the factor T"),
    ("diffsound_loss", _loss(adaptive=False), "not aux_weight alone"),
    ("diffsound_loss", _loss(normalise=False), "normalise first"),
    ("diffsound_loss", _loss(aux_on_posterior=True), "on the x0 PREDICTION"),
    ("diffsound_loss", _loss(no_aux=True), "you left out the auxiliary term"),
    ("diffsound_loss", lambda *a: reference_loss(*a).item(), "you returned a Python number"),
    ("diffsound_loss", lambda *a: reference_loss(*a).detach(), "carries no gradient"),
    ("diffsound_loss", _loss_detached_model, "its gradient is not"),
    ("diffsound_loss", lambda *a: reference_loss(*a).expand(2), "expected one number"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k, beta_divisor=1), "β must be divided by K"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k, beta_divisor=k + 1), "not /(K + 1)"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k, beta_divisor=k - 1), "not /(K − 1)"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k, beta_on_diagonal=False),
     "the diagonal is α + β, not α"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k, absorbing=False), "[MASK] is absorbing"),
    ("mask_replace_matrix", _matrix_no_mask_row, "[MASK] is absorbing"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k, transpose=True), "you built the transpose"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g, k)[:k, :k], "PLUS the [MASK] token"),
    ("mask_replace_matrix", lambda a, g, k: reference_matrix(a, g / 2, k), "the last column of the code rows is γ"),
    ("mask_replace_matrix", _matrix_double_beta, "your rows sum to"),
    ("mask_schedule", lambda *c: _schedule(*c, ramp="0..T"), "you spread the ramp over t = 0..T"),
    ("mask_schedule", lambda *c: _schedule(*c, ramp="t/T"), "off by one"),
    ("mask_schedule", lambda *c: _schedule(*c, drop_first=True), "it needs T + 1"),
    ("mask_schedule", lambda *c: _schedule(*c, alpha="cumulative"), "that is the cumulative ᾱ_t"),
    ("mask_schedule", lambda *c: _schedule(*c, alpha="difference"), "multiply, they do not add"),
    ("mask_schedule", lambda *c: _schedule(*c, gamma="cumulative"), "that is the cumulative γ̄_t"),
    ("mask_schedule", lambda *c: _schedule(*c, gamma="difference"), "not γ̄_t − γ̄_{t−1}"),
    ("mask_schedule", lambda *c: _schedule(*c, gamma="keep"), "the probability 1 − γ_t of NOT being masked"),
    ("mask_schedule", lambda *c: _schedule(*c)[:2], "should return four tensors"),
    ("mask_schedule", lambda *c: tuple(x.tolist() for x in _schedule(*c)), "should return a torch.Tensor"),
    ("posterior_one_token", _posterior(normalise=False), "you did not normalise"),
    ("posterior_one_token", _posterior_naive_prior, "one step BEFORE t"),
    ("posterior_one_token", _posterior(likelihood_from=0), "the likelihood is ONE step"),
    ("posterior_one_token", _posterior(likelihood_row=True), "a COLUMN of Q_t"),
    ("posterior_one_token", _posterior(prior_column=True), "the ROW of x0"),
    ("posterior_one_token", _posterior(likelihood_row=True, prior_column=True), "a row where a column is meant"),
    ("posterior_one_token", lambda s, x0, x_t, t: reference_posterior(s, x_t, x0, t), "x0 and x_t are swapped"),
    ("posterior_one_token", lambda s, x0, x_t, t: reference_posterior(s, x0, x_t, t)[:-1], "of shape"),
    ("reverse_step", _reverse(mean_log=True), "you averaged the log-probabilities"),
    ("reverse_step", _reverse(normalise=False), "normalise the prediction first"),
    ("reverse_step", _reverse(hard=True), "you took the max over x0"),
    ("reverse_step", lambda lg, lp: reference_reverse_step(lg, lp).exp().float(), "you returned probabilities"),
    ("reverse_step", _reverse_naive, "stay in log space with torch.logsumexp"),
    ("reverse_step", lambda lg, lp: torch.logsumexp(lp + torch.log_softmax(lg, -1)[..., None], dim=-1),
     "keep x_{t−1} (the last axis"),
    ("reverse_step", lambda lg, lp: torch.logsumexp(lp, dim=-2) - math.log(lp.shape[-2]), "weighted every x0 equally"),
    ("reverse_step", lambda lg, lp: torch.logsumexp(lp + lg.unsqueeze(-1), dim=-2) * 0.5, "not normalised"),
    ("truncate", _truncate(below=True), "keep the class that CROSSES r"),
    ("truncate", _truncate(renormalise=False), "did not renormalise"),
    ("truncate", _truncate(unsorted=True), "map it back with the sort indices"),
    ("truncate", _truncate(ascending=True), "sort by DEcreasing probability"),
    ("truncate", _truncate(ties=True), "ties: several classes share"),
    ("truncate", _truncate_zero, "log-probability 0 means probability 1"),
    ("truncate", lambda lp, r: reference_truncate(lp, r).exp(), "you returned probabilities"),
    ("truncate", lambda lp, r: lp.clone(), "you dropped no class"),
    ("truncate", _truncate_in_place, "changed its inputs in place"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out, out


@pytest.mark.slow
def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_exercise(tmp_path):
    """Notebook 06 end to end in fresh kernels: the solution runs top to bottom (library cell included) and scores
    every point, the untouched exercise scores none."""
    paths = []
    for kind, folder in (("solution", "solutions"), ("untouched", "exercises")):
        target = tmp_path / f"{kind}_06_diffsound.ipynb"
        target.write_text((ROOT / folder / "06_diffsound.ipynb").read_text(encoding="utf-8"), encoding="utf-8")
        paths.append(target)
    full, empty = grade_many(paths, jobs=2, solutions_dir=ROOT / "solutions", timeout=120, cell_timeout=60)
    assert full.status == "completed", full.detail
    assert full.total == full.max_total == 11
    assert empty.status == "completed", empty.detail  # the untouched exercise runs top to bottom, no error
    assert empty.total == 0 and empty.max_total == 11
    assert all(s.message.startswith("not implemented") for s in empty.scores)
