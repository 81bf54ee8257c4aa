"""Confidence intervals for the experiments: seeded percentile bootstrap over prompts (or
over heads, for correlations), NaN-aware.

Every experiment reports ``value, ci_low, ci_high, n`` with these functions, so a reader
can tell an effect from noise::

    mean, low, high, n = mean_ci(per_prompt_accuracy, seed=0)
    r, low, high, n = correlation_ci(effects, scores, method="spearman", seed=0)
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import numpy as np
import torch
from torch import Tensor

#: Bootstrap resamples used unless a function is told otherwise.
N_BOOT = 1000
LEVEL = 0.95


def _as_array(values, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().double().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers (a tensor, array or list), got "
                        f"{type(values).__name__}.") from None
    return arr


def _check(n_boot: int, level: float, seed: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}.")


def mean_ci(
    values,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """Mean of ``values`` (NaN ignored) with a seeded percentile-bootstrap confidence
    interval over the values (resampled with replacement).

    Returns:
        ``(mean, ci_low, ci_high, n)``, with ``n`` the number of non-NaN values. With
        ``n == 0`` everything is NaN; with ``n == 1`` the interval is the value itself.
    """
    _check(n_boot, level, seed)
    arr = _as_array(values, "values").reshape(-1)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, mean, mean, 1
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, n, size=(n_boot, n))].mean(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(low), float(high), n


def paired_difference_ci(
    treated,
    baseline,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """Mean of ``treated - baseline`` over the pairs where both are defined, with a
    bootstrap interval over the pairs (the right interval for an intervention's effect on
    the same prompts)."""
    t = _as_array(treated, "treated").reshape(-1)
    b = _as_array(baseline, "baseline").reshape(-1)
    if t.shape != b.shape:
        raise ValueError(f"treated and baseline must pair up: {t.shape[0]} vs {b.shape[0]} "
                         "values.")
    return mean_ci(t - b, n_boot=n_boot, level=level, seed=seed)


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    denom = np.sqrt((xc ** 2).sum(-1) * (yc ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(-1) / denom, np.nan)


def correlation(x, y, method: Literal["spearman", "pearson"] = "spearman") -> float:
    """Spearman (rank) or Pearson correlation over the pairs where both are defined."""
    return correlation_ci(x, y, method=method, n_boot=1)[0]


def correlation_ci(
    x,
    y,
    *,
    method: Literal["spearman", "pearson"] = "spearman",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """Correlation of ``x`` and ``y`` (pairs with a NaN dropped) with a seeded bootstrap
    interval over the pairs (e.g. over heads).

    Returns:
        ``(r, ci_low, ci_high, n)``; NaN where fewer than 3 pairs or a constant variable.
    """
    _check(n_boot, level, seed)
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    a = _as_array(x, "x").reshape(-1)
    b = _as_array(y, "y").reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"x and y must pair up: {a.shape[0]} vs {b.shape[0]} values.")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3:
        return math.nan, math.nan, math.nan, n

    def stat(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        if method == "spearman":
            xs, ys = _rank(xs), _rank(ys)
        return _pearson_rows(xs, ys)

    r = float(stat(a, b))
    if n_boot == 1 or math.isnan(r):
        return r, math.nan, math.nan, n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = stat(a[idx], b[idx])
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return r, math.nan, math.nan, n
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return r, float(low), float(high), n


def top_k_overlap(a: Tensor, b: Tensor, k: int) -> float:
    """Fraction of the top-``k`` heads of map ``a`` that are also in the top-``k`` of ``b``
    (NaN never ranked)."""
    def top(x: Tensor) -> set[int]:
        flat = torch.as_tensor(x, dtype=torch.float32).flatten()
        flat = torch.where(torch.isnan(flat), torch.tensor(-math.inf), flat)
        return set(torch.argsort(flat, descending=True, stable=True)[:k].tolist())

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    return len(top(a) & top(b)) / k
