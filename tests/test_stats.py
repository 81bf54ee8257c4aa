"""Confidence intervals: coverage of known answers, seeds, NaN handling, agreement with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from icl_heads.stats import (
    correlation_ci,
    correlation_difference_ci,
    mean_ci,
    paired_difference_ci,
    top_k_overlap,
    top_k_overlap_ci,
)


def test_mean_ci_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 2000)
    m, lo, hi, n = mean_ci(small, seed=1)
    assert lo < m < hi and n == 20 and m == pytest.approx(small.mean())
    _, lo2, hi2, _ = mean_ci(large, seed=1)
    assert lo2 < 1.0 < hi2 and (hi2 - lo2) < (hi - lo) / 5


def test_mean_ci_is_seeded_and_ignores_nan():
    x = torch.tensor([1.0, 2.0, math.nan, 4.0, 8.0])
    assert mean_ci(x, seed=3) == mean_ci(x, seed=3)
    assert mean_ci(x, seed=3)[3] == 4 and mean_ci(x)[0] == pytest.approx(3.75)
    assert mean_ci([math.nan])[3] == 0 and math.isnan(mean_ci([math.nan])[0])
    assert mean_ci([2.0])[:3] == (2.0, 2.0, 2.0)


def test_paired_difference_is_the_mean_of_differences():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 2.5, 1.0])
    assert paired_difference_ci(a, b)[0] == pytest.approx((a - b).mean())
    with pytest.raises(ValueError, match="pair up"):
        paired_difference_ci(a, b[:2])


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_correlation_equals_scipy_and_its_interval_contains_it(method):
    rng = np.random.default_rng(2)
    x = rng.normal(size=80)
    y = x + rng.normal(size=80)
    x[3] = math.nan  # a pair with a NaN is dropped
    r, lo, hi, n = correlation_ci(x, y, method=method, seed=0)
    keep = ~np.isnan(x)
    ref = getattr(scipy.stats, f"{method}r")(x[keep], y[keep]).statistic
    assert r == pytest.approx(ref) and lo < r < hi and n == 79
    assert correlation_ci(x, -y, method=method)[0] == pytest.approx(-ref)


def test_correlation_of_too_few_or_constant_values_is_nan():
    assert math.isnan(correlation_ci([1.0, 2.0], [1.0, 2.0])[0])
    assert math.isnan(correlation_ci([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])[0])


def test_top_k_overlap():
    a = torch.tensor([[5.0, 4.0], [3.0, math.nan]])
    b = torch.tensor([[5.0, 1.0], [4.0, 3.0]])
    assert top_k_overlap(a, b, 2) == 0.5 and top_k_overlap(a, a, 3) == 1.0


def test_top_k_overlap_takes_arrays_and_ranks_ties_by_index():
    assert top_k_overlap(np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0]), 1) == 1.0
    assert top_k_overlap(np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0]), 1) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        top_k_overlap(np.ones(3), np.ones(3), 0)


def test_correlation_difference_is_zero_for_the_same_pairs_and_matches_two_correlations():
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(3, 40))
    assert correlation_difference_ci(x, y, x, y, seed=0) == (0.0, 0.0, 0.0, 40)
    for method in ("spearman", "pearson"):
        value, low, high, n = correlation_difference_ci(x, x + 0.1 * y, x, z, method=method)
        expected = (
            correlation_ci(x, x + 0.1 * y, method=method)[0]
            - correlation_ci(x, z, method=method)[0]
        )
        assert value == pytest.approx(expected) and low <= value <= high and n == 40
        assert low > 0  # a near-perfect correlation minus an unrelated one
    x[3] = math.nan
    assert correlation_difference_ci(x, y, x, z)[3] == 39
    assert math.isnan(correlation_difference_ci([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [2.0, 1.0])[0])
    with pytest.raises(ValueError, match="pair up"):
        correlation_difference_ci(x, y, x, z[:5])


def test_top_k_overlap_ci_of_a_map_with_itself_is_one_and_is_seeded():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(20, 3, 4)) + np.arange(12).reshape(3, 4))
    assert top_k_overlap_ci(a, a, 3, paired=True, n_boot=50) == (1.0, 1.0, 1.0, 3)
    b = torch.tensor(rng.normal(size=(20, 3, 4)) - np.arange(12).reshape(3, 4))
    value, low, high, k = top_k_overlap_ci(a, b, 3, paired=False, n_boot=50, seed=2)
    assert value == 0.0 and low <= high and k == 3
    assert top_k_overlap_ci(a, b, 3, paired=False, n_boot=50, seed=2) == (value, low, high, k)


@pytest.mark.parametrize(
    "kwargs, error",
    [({"n_boot": 0}, ValueError), ({"level": 1.5}, ValueError), ({"seed": "x"}, TypeError)],
)
def test_bad_settings_give_clear_errors(kwargs, error):
    with pytest.raises(error):
        mean_ci([1.0, 2.0], **kwargs)
