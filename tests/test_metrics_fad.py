"""Fréchet audio distance: closed forms, invariances, SciPy agreement, rank-deficient stability, FAD∞."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from course_lib.metrics.fad import (
    fad,
    fad_infinity,
    fit_inverse_n,
    frechet_distance,
    gaussian_stats,
    sample_size_bias,
    sqrtm_psd,
    trace_sqrt_product,
)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook computation (pytorch-fid / google-research FAD): sqrtm of the product, real part."""
    covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


def _random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_gaussian_stats_matches_numpy_and_is_float64():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    mu_t, sigma_t = gaussian_stats(torch.from_numpy(x))  # torch input works the same
    np.testing.assert_allclose(sigma_t, sigma)


@pytest.mark.parametrize("bad, match", [(np.zeros((1, 3)), "at least 2"), (np.zeros(5), "2-D"),
                                        (np.zeros((2, 2, 2)), "2-D"), (np.array([[0.0, np.nan], [1, 2]]), "NaN")])
def test_gaussian_stats_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        gaussian_stats(bad)


def test_identical_sets_give_zero():
    x = np.random.default_rng(1).normal(size=(40, 8))
    assert abs(fad(x, x)) < 1e-9
    assert fad(x, x) >= 0.0


def test_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # scaled identity: Tr(aI + bI - 2 sqrt(ab) I) = D (sqrt a - sqrt b)^2
    assert frechet_distance(np.zeros(3), 4 * np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(3.0, rel=1e-12)


def test_symmetric_and_order_invariant():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 5)), rng.normal(0.3, 1.5, size=(70, 5))
    d = fad(x, y)
    assert d > 0.1
    assert fad(y, x) == pytest.approx(d, rel=1e-10)
    assert fad(x[rng.permutation(60)], y[rng.permutation(70)]) == pytest.approx(d, rel=1e-10)


def test_agrees_with_scipy_sqrtm_on_random_embeddings():
    rng = np.random.default_rng(4)
    for d in (3, 16, 64):
        x = rng.normal(size=(400, d)) @ rng.normal(size=(d, d))
        y = rng.normal(0.2, 1.0, size=(300, d)) @ rng.normal(size=(d, d))
        mu1, s1 = gaussian_stats(x)
        mu2, s2 = gaussian_stats(y)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_rank_deficient_covariances_stay_finite_and_non_negative():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(12, 32))  # N < D: singular covariances
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "clamped" warning for valid covariances
        d = fad(x, y)
        same = fad(x, x)
    assert np.isfinite(d) and d > 0
    assert 0.0 <= same < 1e-8
    # exactly singular, zero and rank-1 covariances
    assert frechet_distance(np.zeros(4), np.zeros((4, 4)), np.zeros(4), np.zeros((4, 4))) == 0.0
    v = np.array([1.0, 2.0, 0.0, 0.0])
    assert frechet_distance(np.zeros(4), np.outer(v, v), np.zeros(4), np.outer(v, v)) == pytest.approx(0.0, abs=1e-9)
    # a near-singular case where the product is badly conditioned
    s1, s2 = _random_cov(rng, 20, rank=3), _random_cov(rng, 20, rank=5)
    val = frechet_distance(np.zeros(20), s1, np.zeros(20), s2)
    assert np.isfinite(val) and val >= 0.0


def test_trace_sqrt_and_sqrtm_psd():
    rng = np.random.default_rng(6)
    s1, s2 = _random_cov(rng, 7), _random_cov(rng, 7)
    root = sqrtm_psd(s1)
    np.testing.assert_allclose(root @ root, s1, atol=1e-10)
    np.testing.assert_allclose(root, root.T)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(np.real(linalg.sqrtm(s1 @ s2))), rel=1e-8)
    assert trace_sqrt_product(s1, s2) == pytest.approx(trace_sqrt_product(s2, s1), rel=1e-10)


def test_clear_errors_for_invalid_statistics():
    with pytest.raises(ValueError, match="differ in dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="square"):
        frechet_distance(np.zeros(3), np.ones((3, 2)), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="same embedding model"):
        fad(np.zeros((5, 3)), np.zeros((5, 4)))


def test_fit_inverse_n_recovers_a_plus_b_over_n():
    sizes = np.array([50, 80, 120, 200, 400])
    fit = fit_inverse_n(sizes, 0.7 + 35.0 / sizes)
    assert fit["intercept"] == pytest.approx(0.7, abs=1e-10)
    assert fit["slope"] == pytest.approx(35.0, rel=1e-10)
    assert fit["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two distinct"):
        fit_inverse_n([10, 10], [1.0, 2.0])


def test_sample_size_bias_and_fad_infinity_on_the_same_distribution():
    rng = np.random.default_rng(7)
    d = 8
    a, b = rng.normal(size=(600, d)), rng.normal(size=(600, d))  # same distribution: true distance 0
    bias = sample_size_bias(a, b, sizes=[20, 50, 150, 400], repeats=3, seed=0)
    means = bias["mean"]
    assert all(m > 0 for m in means)
    assert means[0] > 3 * means[-1]  # the bias shrinks roughly like 1/n
    assert abs(bias["fit"]["intercept"]) < 0.25 * means[-1] + 0.02
    # FAD∞ removes the bias of the *generated* set only: the reference statistics come from all of emb_real,
    # so a large reference set keeps its own (constant) bias small
    ref = rng.normal(size=(5000, d))
    inf = fad_infinity(ref, b, n_sizes=8, seed=0)
    assert len(inf["sizes"]) == len(inf["values"]) == 8 and inf["sizes"][0] == 150 and inf["sizes"][-1] == 600
    assert abs(inf["fad_inf"]) < min(0.3 * inf["values"][0], min(inf["values"])) and inf["slope"] > 0
    # a real shift is recovered: mean offset 0.5 in every dimension gives a true FAD of d * 0.25 = 2
    shifted = fad_infinity(ref, b + 0.5, sizes=[100, 200, 300, 600], seed=1)
    assert shifted["fad_inf"] == pytest.approx(2.0, abs=0.25)
    assert fad_infinity(ref, b, n_sizes=8, seed=0)["values"] == inf["values"]  # seeded
