"""95% intervals for card numbers: Wilson's for rates (known values), the percentile bootstrap for means."""

import math

import numpy as np
import pytest

from course_lib.metrics.intervals import bootstrap_interval, wilson_interval


def test_wilson_interval_known_values_and_edges():
    # 38 of 48: p = 0.7917; scipy.stats.binomtest(38, 48).proportion_ci(method="wilson") = (0.65741, 0.88270)
    low, high = wilson_interval(38, 48)
    assert low == pytest.approx(0.65741, abs=1e-5) and high == pytest.approx(0.88270, abs=1e-5)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0, 10)[1] > 0.2  # no collapse at 0 hits
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] < 0.8
    narrow, wide = wilson_interval(400, 500), wilson_interval(40, 50)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more trials, a narrower interval
    with pytest.raises(ValueError, match="hits must be in"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        wilson_interval(0, 0)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_items():
    rng = np.random.default_rng(1)
    few, many = rng.normal(5.0, 1.0, 20), rng.normal(5.0, 1.0, 2000)
    low, high = bootstrap_interval(few)
    assert low < few.mean() < high
    # close to the normal-theory half-width 1.96 · s / sqrt(n)
    assert (high - low) / 2 == pytest.approx(1.96 * few.std(ddof=1) / math.sqrt(20), rel=0.25)
    low2, high2 = bootstrap_interval(many)
    assert high2 - low2 < (high - low) / 5
    assert bootstrap_interval(few) == bootstrap_interval(few)  # seeded
    with pytest.raises(ValueError, match="at least 2 values"):
        bootstrap_interval([1.0])


def test_beats_baseline_needs_intervals_that_do_not_overlap():
    from course_lib.metrics.intervals import beats_baseline, rate_interval

    rows = {1.0: {"class_accuracy": 0.25, "count_accuracy": 0.5}, 3.0: {"class_accuracy": 0.9, "count_accuracy": 0.6},
            5.0: {"class_accuracy": 0.4}}
    found = beats_baseline(rows, {"class_accuracy": 48, "count_accuracy": 28}, baseline=1.0)
    assert [(s, k) for s, k, *_ in found] == [(3.0, "class_accuracy")]  # 0.6 vs 0.5 of 28 and 0.4 vs 0.25 overlap
    assert found[0][3] == rate_interval(0.9, 48) and found[0][5] == rate_interval(0.25, 48)
    assert beats_baseline(rows, {"class_accuracy": 4}, baseline=1.0) == []  # 4 prompts: everything overlaps
