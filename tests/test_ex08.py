"""Exercise notebook 08 (evaluation): the solution passes every check, the stub says "not implemented", the checks'
references agree with the library and with SciPy, and each check rejects plausible wrong answers with the hint that
names the mistake."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
import torch.nn.functional as F
from exercise_notebooks import (
    assert_check_passes_quickly,
    assert_generated_and_registered,
    assert_stubs_not_implemented,
    notebook_functions,
)

from course_lib.exercises import check
from course_lib.exercises.ex08 import (
    EXTRAPOLATE_CASES,
    FRECHET_CASES,
    INFO_NCE_CASES,
    KL_CASES,
    LESSON,
    SQRTM_CASES,
    reference_extrapolate,
    reference_frechet,
    reference_info_nce,
    reference_kl,
    reference_sqrtm,
)
from course_lib.exercises.grade import grade_many, solution_tasks
from course_lib.metrics.agreement import info_nce_loss
from course_lib.metrics.fad import (
    fit_inverse_n,
    frechet_distance,
    gaussian_stats,
    sqrtm_psd,
    trace_sqrt_product,
)
from course_lib.metrics.kl import paired_kl

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "08_evaluation.ipynb"
EXERCISE = ROOT / "exercises" / "08_evaluation.ipynb"
TASK_IDS = ["frechet_distance", "sqrtm_psd", "paired_kl", "extrapolate_fad", "info_nce_loss"]
NAMESPACE = {"np": np, "scipy": scipy, "torch": torch, "F": F}  # the solution cells' imports


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
    assert solution_tasks(SOLUTION) == {"frechet_distance": 2, "sqrtm_psd": 2, "paired_kl": 2, "extrapolate_fad": 1,
                                        "info_nce_loss": 2}


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    assert_check_passes_quickly(task_id, solution_fns, capsys)


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    assert_stubs_not_implemented(EXERCISE, TASK_IDS, capsys, NAMESPACE)


# --- the solution's known answers, and the references against the library and SciPy -------------------------


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    fd = solution_fns["frechet_distance"]
    assert fd(np.array([0.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == pytest.approx(10.0)
    # diagonal covariances: sum (mu1 - mu2)^2 + sum (sqrt a - sqrt b)^2 = 5 + 6
    args = (np.array([1.0, 0.0, -1.0]), np.diag([1.0, 4.0, 9.0]), np.array([0.0, 0.0, 1.0]), np.diag([4.0, 1.0, 1.0]))
    assert fd(*args) == pytest.approx(11.0)
    assert fd(*args[2:], *args[:2]) == pytest.approx(11.0)  # symmetric
    root = solution_fns["sqrtm_psd"](np.array([[2.0, 1.0], [1.0, 2.0]]))
    r3 = math.sqrt(3.0)
    assert np.allclose(root, 0.5 * np.array([[r3 + 1, r3 - 1], [r3 - 1, r3 + 1]]))
    ref, gen = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.2, 0.5, 0.3]])
    expected = 0.7 * math.log(3.5) + 0.2 * math.log(0.4) + 0.1 * math.log(1 / 3)
    assert solution_fns["paired_kl"](ref.log() + 2.0, gen.log() - 1.0) == pytest.approx(expected, abs=1e-6)
    assert solution_fns["extrapolate_fad"]([10, 20, 50], [5.0, 3.5, 2.6]) == pytest.approx(2.0)
    assert solution_fns["extrapolate_fad"]([100, 400], [1.5, 0.75]) == pytest.approx(0.5)
    nce = solution_fns["info_nce_loss"]
    assert float(nce(torch.full((4, 4), 0.3), 0.1)) == pytest.approx(math.log(4.0))
    # [[0.9, 0.1], [0.5, 0.4]] / 0.5: rows log(1 + e^-1.6), log(1 + e^0.2); columns log(1 + e^-0.8), log(1 + e^-0.6)
    closed = 0.25 * sum(math.log1p(math.exp(v)) for v in (-1.6, 0.2, -0.8, -0.6))
    assert float(nce(torch.tensor([[0.9, 0.1], [0.5, 0.4]]), 0.5)) == pytest.approx(closed, abs=1e-6)


def test_frechet_reference_agrees_with_the_library_and_a_direct_scipy_computation():
    for mu1, s1, mu2, s2, _ in FRECHET_CASES:
        assert reference_frechet(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), abs=1e-9)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5)), rng.standard_normal((150, 5)) + 0.3
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    scipy_value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))
    assert reference_frechet(mu1, s1, mu2, s2) == pytest.approx(scipy_value, rel=1e-8)
    assert reference_frechet(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_sqrtm_reference_agrees_with_the_library_and_scipy_and_the_cases_need_clamping():
    for sigma, _ in SQRTM_CASES:
        ref = reference_sqrtm(sigma)
        assert np.allclose(ref, sqrtm_psd(sigma), atol=1e-12) and np.allclose(ref, ref.T)
        assert np.allclose(ref @ ref, sigma, atol=1e-7)
    for sigma, _ in SQRTM_CASES[:3]:  # full rank: SciPy's general sqrtm gives the same root
        assert np.allclose(reference_sqrtm(sigma), scipy.linalg.sqrtm(sigma).real, atol=1e-10)
    w = np.linalg.eigvalsh(SQRTM_CASES[-1][0])
    assert w.min() < -3e-8 and np.isnan(reference_sqrtm(SQRTM_CASES[-1][0], clamp="none")).any()


def test_kl_reference_agrees_with_the_library_and_scipy():
    for ref, gen, _ in KL_CASES:
        assert reference_kl(ref, gen) == pytest.approx(paired_kl(ref, gen, from_logits=True, eps=0.0), abs=1e-9)
        assert reference_kl(ref, gen, eps=1e-6) == pytest.approx(paired_kl(ref, gen, from_logits=True), abs=1e-9)
        p, q = torch.softmax(ref.double(), 1).numpy(), torch.softmax(gen.double(), 1).numpy()
        assert reference_kl(ref, gen) == pytest.approx(scipy.special.rel_entr(p, q).sum(1).mean(), abs=1e-9)
    assert reference_kl(*KL_CASES[1][:2]) == pytest.approx(0.0, abs=1e-12)  # identical distributions
    confident = KL_CASES[3]
    naive = (torch.softmax(confident[0], 1) * (torch.softmax(confident[0], 1).log()
                                               - torch.softmax(confident[1], 1).log())).sum(1).mean()
    assert not torch.isfinite(naive) and 70 < reference_kl(*confident[:2]) < 80  # float32 softmax underflows


def test_extrapolate_and_info_nce_references_agree_with_the_library():
    for sizes, values, _ in EXTRAPOLATE_CASES:
        fit = fit_inverse_n(sizes, values)
        assert reference_extrapolate(sizes, values) == pytest.approx(fit["intercept"], abs=1e-9)
        assert reference_extrapolate(sizes, values, take="slope") == pytest.approx(fit["slope"], abs=1e-7)
    for sim, t, _, _ in INFO_NCE_CASES:
        assert reference_info_nce(sim, t) == pytest.approx(float(info_nce_loss(sim, t)), abs=1e-5)


# --- plausible wrong answers -------------------------------------------------------------------------


def _frechet(**kwargs):
    return lambda m1, s1, m2, s2: reference_frechet(m1, s1, m2, s2, **kwargs)


def _frechet_elementwise(m1, s1, m2, s2):
    d = m1 - m2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.sqrt(s1 @ s2)))


def _frechet_matrix(m1, s1, m2, s2):
    d = m1 - m2
    return d @ d + s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real


def _frechet_in_place(m1, s1, m2, s2):
    s1 += 1e-6 * np.eye(len(s1))
    return frechet_distance(m1, s1, m2, s2)


def _sqrtm_no_clamp(sigma):
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(w)) @ v.T


def _sqrtm_eig(sigma):
    w, v = np.linalg.eig(sigma)
    return (v * np.sqrt(w)) @ v.T


def _sqrtm_negative_root(sigma):
    w, v = np.linalg.eigh(sigma)
    return -(v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _kl(**kwargs):
    return lambda ref, gen: reference_kl(ref, gen, **kwargs)


def _kl_per_pair(ref, gen):
    log_p, log_q = torch.log_softmax(ref, 1), torch.log_softmax(gen, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _kl_log_softmax_of_probs(ref, gen):
    p, q = torch.softmax(ref, 1), torch.softmax(gen, 1)
    return float((p * (p.log() - q.log())).sum(1).mean())


def _kl_log_of_logits(ref, gen):
    return float((torch.softmax(ref, 1) * (ref.log() - gen.log())).sum(1).mean())


def _kl_div_mean(ref, gen):
    with warnings.catch_warnings():  # torch warns that "mean" is not the KL's mean: that is the mistake
        warnings.simplefilter("ignore", UserWarning)
        return F.kl_div(torch.log_softmax(gen, 1), torch.softmax(ref, 1), reduction="mean")


def _extrapolate(**kwargs):
    return lambda sizes, values: reference_extrapolate(sizes, values, **kwargs)


def _nce(**kwargs):
    return lambda sim, t: torch.tensor(reference_info_nce(sim, t, **kwargs), requires_grad=True)


def _nce_item(sim, t):
    return float(info_nce_loss(sim, t))


def _nce_per_row(sim, t):
    labels = torch.arange(len(sim))
    return 0.5 * (F.cross_entropy(sim / t, labels, reduction="none") + F.cross_entropy(sim.T / t, labels,
                                                                                       reduction="none"))


def _nce_detached(sim, t):
    return torch.tensor(float(info_nce_loss(sim, t).detach()))


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("frechet_distance", _frechet(factor=1.0), "you forgot the factor 2"),
    ("frechet_distance", _frechet(factor=-2.0), "the cross term is SUBTRACTED"),
    ("frechet_distance", _frechet(mean_term="norm"), "the SQUARED distance"),
    ("frechet_distance", _frechet(mean_term="none"), "you left out the mean term"),
    ("frechet_distance", _frechet(traces=False), "you left out Tr(Σ1) + Tr(Σ2)"),
    ("frechet_distance", _frechet(cross="product"), "not the trace of the product itself"),
    ("frechet_distance", _frechet(cross="roots"), "unless the covariances commute"),
    ("frechet_distance", _frechet(cross="sqrt_trace"), "you took the square root of the trace"),
    ("frechet_distance", _frechet_elementwise, "np.sqrt works element by element"),
    ("frechet_distance", lambda *a: complex(frechet_distance(*a), 1e-9), "keep its real part (.real)"),
    ("frechet_distance", _frechet_matrix, "take np.trace"),
    ("frechet_distance", _frechet_in_place, "changed its inputs in place"),
    ("frechet_distance", lambda *a: None, "did you forget the `return` statement"),
    ("sqrtm_psd", _sqrtm_no_clamp, "clamp the eigenvalues at 0 first"),
    ("sqrtm_psd", lambda s: reference_sqrtm(s, order="V w V"), "not V diag(√λ) V"),
    ("sqrtm_psd", lambda s: reference_sqrtm(s, order="Vt w V"), "not Vᵀ diag(√λ) V"),
    ("sqrtm_psd", lambda s: reference_sqrtm(s, root=False), "you rebuilt Σ itself"),
    ("sqrtm_psd", lambda s: reference_sqrtm(s, clamp="abs"), "don't take their absolute value"),
    ("sqrtm_psd", np.sqrt, "np.sqrt works element by element"),
    ("sqrtm_psd", np.linalg.cholesky, "like np.linalg.cholesky"),
    ("sqrtm_psd", _sqrtm_negative_root, "not the positive semi-definite root"),
    ("sqrtm_psd", lambda s: sqrtm_psd(s).astype(np.complex128) * (1 + 1e-9j), "use np.linalg.eigh"),
    ("sqrtm_psd", lambda s: sqrtm_psd(s).tolist(), "should return a NumPy array"),
    ("sqrtm_psd", lambda s: sqrtm_psd(s)[:-1], "expected a matrix of shape"),
    ("paired_kl", _kl(reverse=True), "you computed KL(p_gen ‖ p_ref)"),
    ("paired_kl", _kl(reduce="sum"), "you summed over the pairs"),
    ("paired_kl", _kl(per_element=True), "reduction='batchmean'"),
    ("paired_kl", _kl_div_mean, "reduction='batchmean'"),
    ("paired_kl", _kl(normalise=False), "logits are not log-probabilities"),
    ("paired_kl", _kl(dim=0), "not over the pairs (dim=0)"),
    ("paired_kl", _kl(pool=True), "the KL of the AVERAGED distributions"),
    ("paired_kl", _kl(symmetric=True), "you added both directions"),
    ("paired_kl", _kl(eps=1e-6), "adding ε inside the log"),
    ("paired_kl", _kl_log_of_logits, "log of a negative logit is NaN"),
    ("paired_kl", _kl_log_softmax_of_probs, "softmax underflows to exactly 0"),
    ("paired_kl", _kl_per_pair, "average them over the pairs"),
    ("extrapolate_fad", _extrapolate(x="n"), "fit against x = 1/n, not n"),
    ("extrapolate_fad", _extrapolate(take="slope"), "you returned the slope b"),
    ("extrapolate_fad", lambda n, v: float(np.polyfit(1 / np.asarray(n), v, 1)[0]), "you returned the slope b"),
    ("extrapolate_fad", _extrapolate(fit="last"), "the FAD at the largest n"),
    ("extrapolate_fad", _extrapolate(fit="endpoints"), "the first and last points only"),
    ("extrapolate_fad", _extrapolate(fit="swapped"), "not the other way round"),
    ("extrapolate_fad", lambda n, v: tuple(np.polyfit(1 / np.asarray(n), v, 1)), "return the intercept alone"),
    ("extrapolate_fad", lambda n, v: np.polyfit(1 / n, v, 1)[1], "np.asarray(sizes, dtype=float)"),
    ("info_nce_loss", _nce(cols=False), "only the audio → text direction"),
    ("info_nce_loss", _nce(rows=False), "only the text → audio direction"),
    ("info_nce_loss", _nce(combine="sum"), "don't add them"),
    ("info_nce_loss", _nce(temp="multiply"), "don't multiply"),
    ("info_nce_loss", _nce(temp="loss"), "not the loss"),
    ("info_nce_loss", _nce(temp="none"), "you ignored the temperature"),
    ("info_nce_loss", _nce(labels="zeros"), "not class 0"),
    ("info_nce_loss", _nce(softmax_first=True), "don't softmax first"),
    ("info_nce_loss", _nce_item, "no .item()"),
    ("info_nce_loss", _nce_per_row, "expected a scalar (0-d) loss"),
    ("info_nce_loss", _nce_detached, "carries no gradient"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out, out


def test_eig_instead_of_eigh_is_rejected_with_a_hint_about_eigh_or_clamping(capsys):
    """np.linalg.eig on a rank-deficient covariance gives complex values or NaN, depending on round-off."""
    assert check("sqrtm_psd", _sqrtm_eig) is False
    out = capsys.readouterr().out
    assert "np.linalg.eigh" in out or "clamp the eigenvalues at 0" in out, out


@pytest.mark.parametrize("task_id, right", [
    ("frechet_distance", lambda m1, s1, m2, s2: float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                                                      - 2 * trace_sqrt_product(s1, s2))),
    ("sqrtm_psd", lambda s: torch.from_numpy(sqrtm_psd(s))),
    ("paired_kl", lambda r, g: F.kl_div(torch.log_softmax(g, 1), torch.log_softmax(r, 1), reduction="batchmean",
                                        log_target=True)),
    ("extrapolate_fad", lambda n, v: fit_inverse_n(n, v)["intercept"]),
    ("info_nce_loss", lambda s, t: 0.5 * ((torch.logsumexp(s / t, 1) - (s / t).diagonal()).mean()
                                          + (torch.logsumexp(s / t, 0) - (s / t).diagonal()).mean())),
])
def test_other_correct_answers_pass(task_id, right, capsys):
    assert check(task_id, right) is True, capsys.readouterr().out


@pytest.mark.slow
def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_exercise(tmp_path):
    """Notebook 08 end to end in fresh kernels: the solution runs top to bottom (library cell included) and scores
    every point, the untouched exercise scores none."""
    paths = []
    for kind, folder in (("solution", "solutions"), ("untouched", "exercises")):
        target = tmp_path / f"{kind}_08_evaluation.ipynb"
        target.write_text((ROOT / folder / "08_evaluation.ipynb").read_text(encoding="utf-8"), encoding="utf-8")
        paths.append(target)
    full, empty = grade_many(paths, jobs=2, solutions_dir=ROOT / "solutions", timeout=120, cell_timeout=60)
    assert full.status == "completed", full.detail
    assert full.total == full.max_total == 9
    assert empty.status == "completed", empty.detail  # the untouched exercise runs top to bottom, no error
    assert empty.total == 0 and empty.max_total == 9
    assert all(s.message.startswith("not implemented") for s in empty.scores)
