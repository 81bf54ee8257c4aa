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
    independent_difference_ci,
    mean_ci,
    nanmean,
    paired_difference_ci,
    percentile_interval,
    ranked_order,
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


# ---- NaN and infinities (docs/api.md): NaN is missing; +-inf ranked by order-based
# statistics, refused by mean-based ones


def test_every_interval_drops_nan_and_gives_nan_when_nothing_is_left():
    nan = [math.nan] * 4
    assert mean_ci(nan)[3] == 0 and math.isnan(mean_ci(nan)[0])
    assert math.isnan(paired_difference_ci(nan, [1.0] * 4)[0])
    assert independent_difference_ci(nan, [1.0, 2.0])[3] == 0
    assert math.isnan(independent_difference_ci(nan, [1.0, 2.0])[0])
    assert correlation_ci(nan, [1.0, 2.0, 3.0, 4.0])[3] == 0
    assert math.isnan(correlation_difference_ci(nan, nan, nan, nan)[0])
    low, high = percentile_interval(np.full((5, 2), math.nan))
    assert np.isnan(low).all() and np.isnan(high).all()
    assert math.isnan(float(nanmean(nan)))


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda: mean_ci([0.0, math.inf]), "values"),
        (lambda: paired_difference_ci([math.inf, 1.0], [0.0, 1.0]), "treated"),
        (lambda: independent_difference_ci([0.0, 1.0], [-math.inf]), "baseline"),
        (lambda: correlation_ci([1, 2, 3], [1, math.inf, 3], method="pearson"), "y"),
        (
            lambda: top_k_overlap_ci(
                torch.full((2, 2, 2), math.inf), torch.ones(2, 2, 2), 1, paired=True
            ),
            "per_prompt_a",
        ),
    ],
)
def test_mean_based_statistics_refuse_infinities_naming_the_argument(call, named):
    with pytest.raises(ValueError, match=f"^{named} holds 1|^{named} holds 8"):
        call()


def test_order_based_statistics_rank_infinities():
    # Spearman ranks +-inf like any value: perfectly monotone
    assert correlation_ci([1.0, 2.0, 3.0, math.inf], [1, 2, 3, 4], n_boot=20)[0] == 1.0
    assert correlation_ci([-math.inf, 2.0, 3.0, 4.0], [1, 2, 3, 4], n_boot=20)[0] == 1.0
    # top-k overlap: +inf best, -inf ranked last, NaN never (it used to tie with -inf)
    a = np.array([math.nan, -math.inf, 2.0, math.inf])
    b = np.array([0.0, 1.0, 2.0, 3.0])
    assert top_k_overlap(a, b, 2) == 1.0
    assert top_k_overlap(a, np.array([5.0, 1.0, 2.0, 3.0]), 3) == 2 / 3
    with pytest.warns(UserWarning, match="map a has 3 rankable values, fewer than k=4"):
        assert top_k_overlap(a, b, 4) == 3 / 4  # the NaN head is not in a's top set
    with pytest.raises(ValueError, match="map b has no rankable value"):
        top_k_overlap(b, np.full(4, math.nan), 1)


def test_percentile_interval_endpoints_next_to_infinite_replicates_are_infinite():
    inf = math.inf
    reps = np.array([[1, 2, inf, inf], [1, 2, 3, inf], [-inf, 1, 2, 3], [1, 2, 3, 4]]).T
    low, high = percentile_interval(reps)
    assert low[0] == low[1] == low[3] == pytest.approx(1.075) and low[2] == -inf
    assert high[0] == high[1] == inf and high[2] == pytest.approx(2.925)
    assert high[3] == pytest.approx(3.925)  # finite replicates: numbers unchanged
    low, high = percentile_interval(np.array([[0.0], [1.0], [inf]]), level=1e-9)
    assert low[0] == pytest.approx(1.0) and high[0] == inf
    low, high = percentile_interval(np.array([[inf], [inf], [math.nan]]))
    assert low[0] == high[0] == inf


def test_nanmean_is_plain_arithmetic_on_infinities():
    assert float(nanmean([1.0, math.inf, math.nan])) == math.inf
    assert math.isnan(float(nanmean([math.inf, -math.inf])))


def test_ranked_order_is_the_one_ranking_rule():
    x = np.array([2.0, math.nan, -math.inf, 2.0, math.inf])
    assert ranked_order(x).tolist() == [4, 0, 3, 2]
    assert ranked_order(torch.tensor(x)).tolist() == [4, 0, 3, 2]
