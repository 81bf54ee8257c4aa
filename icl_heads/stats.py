"""Confidence intervals for the experiments: seeded percentile bootstrap over prompts (or
over heads, for correlations), NaN-aware.

Every experiment reports ``value, ci_low, ci_high, n`` with these functions, so a reader
can tell an effect from noise::

    mean, low, high, n = mean_ci(per_prompt_accuracy, seed=0)
    r, low, high, n = correlation_ci(effects, scores, method="spearman", seed=0)

NaN and infinities (``docs/api.md``, "NaN and infinities"):

* **NaN is a missing value**: every function drops it (``n`` counts what is kept) and
  gives NaN, never a number, where nothing is left.
* **+-inf** is ordered but has no mean: order-based statistics take it (Spearman
  correlations, :func:`top_k_overlap`, :func:`percentile_interval`, where an endpoint among
  infinite replicates is infinite); mean-based ones refuse it with a ValueError naming the
  argument (:func:`mean_ci`, the difference intervals, Pearson correlations,
  :func:`top_k_overlap_ci`'s per-prompt maps). :func:`nanmean` is plain arithmetic
  (a mean with ``+inf`` is ``+inf``; with both signs, NaN).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Literal

import numpy as np
from torch import Tensor

from .checks import check_seed

#: Bootstrap resamples used unless a function is told otherwise.
N_BOOT = 1000
LEVEL = 0.95


def _as_array(values, name: str, *, allow_inf: bool = False) -> np.ndarray:
    """``values`` as a float array; ``+-inf`` refused (a ValueError naming ``name``) unless
    ``allow_inf`` (order-based statistics)."""
    if isinstance(values, Tensor):
        values = values.detach().double().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be numbers (a tensor, array or list), got {type(values).__name__}."
        ) from None
    if not allow_inf:
        inf = np.isinf(arr).reshape(-1)
        if inf.any():
            first = int(np.flatnonzero(inf)[0])
            raise ValueError(
                f"{name} holds {int(inf.sum())} infinite value(s) (first: flat index "
                f"{first} = {arr.reshape(-1)[first]}); a mean or a Pearson correlation of "
                "inf is undefined. Drop them, or mark them missing with NaN."
            )
    return arr


def ranked_order(values: Tensor | np.ndarray, *, largest: bool = True) -> np.ndarray:
    """The ranking rule of every head map: flat indices of the rankable values, best first.

    NaN (not scored / undefined) is never ranked; ``+inf`` and ``-inf`` are ranked as the
    orderings they are (above / below every number); ties keep their flat (row-major)
    order. ``largest=False`` ranks the lowest values first (then ``-inf`` comes first).

    Example::

        ranked_order(torch.tensor([1.0, float("nan"), -float("inf"), 3.0]))   # [3, 0, 2]
    """
    if isinstance(values, Tensor):
        values = values.detach().double().cpu().numpy()
    x = np.asarray(values, dtype=float).reshape(-1)
    index = np.flatnonzero(~np.isnan(x))
    key = -x[index] if largest else x[index]
    return index[np.argsort(key, kind="stable")]


def _check(n_boot: int, level: float, seed: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    check_seed(seed)


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

    Raises:
        ValueError: ``values`` holds ``+-inf`` (a mean of inf has no interval).
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
    """``nanmean(treated) - nanmean(baseline)`` over the same items (e.g. prompts), with a
    bootstrap interval that resamples the items jointly (the interval for an
    intervention's effect on the same prompts).

    Without NaNs this is the mean of the differences with :func:`mean_ci`'s interval. Items
    where both values are NaN are dropped; where only one is (e.g. in-space accuracy, which
    is undefined outside the label space), each mean is over its own defined items of the
    resample.

    Returns:
        ``(difference, ci_low, ci_high, n)``, ``n`` the items kept; NaN where one side has
        no defined value.

    Example::

        paired_difference_ci(ablated_accuracy, clean_accuracy, seed=0)
    """
    _check(n_boot, level, seed)
    t = _as_array(treated, "treated").reshape(-1)
    b = _as_array(baseline, "baseline").reshape(-1)
    if t.shape != b.shape:
        raise ValueError(f"treated and baseline must pair up: {t.shape[0]} vs {b.shape[0]} values.")
    if not (np.isnan(t).any() or np.isnan(b).any()):
        return mean_ci(t - b, n_boot=n_boot, level=level, seed=seed)
    keep = ~(np.isnan(t) & np.isnan(b))
    t, b = t[keep], b[keep]
    n = int(t.size)
    if n == 0 or np.isnan(t).all() or np.isnan(b).all():
        return math.nan, math.nan, math.nan, n
    value = float(np.nanmean(t) - np.nanmean(b))
    if n == 1:
        return value, value, value, 1
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN resamples: NaN
        boots = np.nanmean(t[idx], 1) - np.nanmean(b[idx], 1)
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return value, math.nan, math.nan, n
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return value, float(low), float(high), n


def independent_difference_ci(
    treated,
    baseline,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """``mean(treated) - mean(baseline)`` of two independent samples (NaN dropped), with a
    bootstrap interval that resamples each sample on its own (first ``treated``, then
    ``baseline``, from one seeded generator).

    Returns:
        ``(difference, ci_low, ci_high, n)`` with ``n`` the smaller sample size.

    Example::

        independent_difference_ci(k4_values, k0_values, seed=0)
    """
    _check(n_boot, level, seed)
    t = _as_array(treated, "treated").reshape(-1)
    b = _as_array(baseline, "baseline").reshape(-1)
    t, b = t[~np.isnan(t)], b[~np.isnan(b)]
    n = int(min(t.size, b.size))
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    value = float(t.mean() - b.mean())
    rng = np.random.default_rng(seed)
    boots = t[rng.integers(0, t.size, (n_boot, t.size))].mean(1) - b[
        rng.integers(0, b.size, (n_boot, b.size))
    ].mean(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return value, float(low), float(high), n


def nanmean(values, axis: int | None = None) -> np.ndarray:
    """Mean ignoring NaN, NaN (without a warning) where every value is NaN; ``+-inf`` as
    in IEEE arithmetic (a mean with ``+inf`` is ``+inf``, with both signs NaN)."""
    x = np.asarray(values, dtype=float)
    ok = ~np.isnan(x)
    count = ok.sum(axis=axis)
    with np.errstate(all="ignore"):
        total = np.where(ok, x, 0.0).sum(axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def percentile_interval(
    replicates: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware percentile interval of bootstrap replicates over their first axis (NaN
    where no replicate is defined). Infinite replicates (e.g. a Fisher ratio without
    within-class spread) are ordered like numbers: an endpoint next to one is infinite,
    never NaN.

    Example::

        low, high = percentile_interval(replicates)      # replicates: [n_boot, layer]
    """
    reps = np.asarray(replicates, dtype=float)
    alpha = (1 - level) / 2
    out = np.full((2, *reps.shape[1:]), np.nan)
    ok = (~np.isnan(reps)).any(0)
    if ok.any():
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            q = [alpha, 1 - alpha]
            out[:, ok] = np.nanquantile(reps[:, ok], q, axis=0)
            if np.isinf(reps[:, ok]).any():
                out[:, ok] = _infinite_endpoints(reps[:, ok], q, out[:, ok])
    return out[0], out[1]


def _infinite_endpoints(reps: np.ndarray, q: list[float], linear: np.ndarray) -> np.ndarray:
    """Linear-interpolation quantiles where a neighbour is infinite (numpy's ``inf - inf``
    or ``inf * 0`` gave NaN): the lower order statistic when the quantile falls exactly
    on it, else the infinite neighbour."""
    below = np.nanquantile(reps, q, axis=0, method="lower")
    above = np.nanquantile(reps, q, axis=0, method="higher")
    n = (~np.isnan(reps)).sum(0)
    h = (n - 1)[None] * np.asarray(q)[:, None]
    exact = h == np.floor(h)
    edge = np.where(np.isposinf(above), np.inf, np.where(np.isneginf(below), -np.inf, linear))
    return np.where(np.isnan(linear), np.where(exact | (below == above), below, edge), linear)


def bonferroni_z(m: int, level: float = LEVEL) -> float:
    """The normal quantile of a two-sided interval at ``level`` corrected for ``m``
    comparisons (Bonferroni): ``Phi^-1(1 - (1 - level) / (2 m))``."""
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - level) / (2 * max(1, m))))


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    denom = np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(-1) / denom, np.nan)


def _corr_rows(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Spearman or Pearson correlation along the last axis (one per row)."""
    if method == "spearman":
        x, y = _rank(x), _rank(y)
    return _pearson_rows(x, y)


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
        ``+-inf`` are ranked by Spearman and refused (ValueError) by Pearson.
    """
    _check(n_boot, level, seed)
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    ordered = method == "spearman"  # ranks order +-inf; Pearson's moments cannot
    a = _as_array(x, "x", allow_inf=ordered).reshape(-1)
    b = _as_array(y, "y", allow_inf=ordered).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"x and y must pair up: {a.shape[0]} vs {b.shape[0]} values.")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3:
        return math.nan, math.nan, math.nan, n

    r = float(_corr_rows(a, b, method))
    if n_boot == 1 or math.isnan(r):
        return r, math.nan, math.nan, n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = _corr_rows(a[idx], b[idx], method)
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return r, math.nan, math.nan, n
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return r, float(low), float(high), n


def correlation_difference_ci(
    x1,
    y1,
    x2,
    y2,
    *,
    method: Literal["spearman", "pearson"] = "spearman",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """``corr(x1, y1) - corr(x2, y2)`` over the same items (e.g. heads), with a paired
    bootstrap: the same resampled items for both correlations. Items with a NaN in any of
    the four are dropped.

    Returns:
        ``(difference, ci_low, ci_high, n)``; NaN where fewer than 3 items.
    """
    _check(n_boot, level, seed)
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    arrays = [
        _as_array(v, name, allow_inf=method == "spearman").reshape(-1)
        for v, name in ((x1, "x1"), (y1, "y1"), (x2, "x2"), (y2, "y2"))
    ]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"x1, y1, x2, y2 must pair up: {[a.size for a in arrays]} values.")
    keep = ~np.any([np.isnan(a) for a in arrays], axis=0)
    a, b, c, d = (arr[keep] for arr in arrays)
    n = int(a.size)
    if n < 3:
        return math.nan, math.nan, math.nan, n
    value = float(_corr_rows(a, b, method) - _corr_rows(c, d, method))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = _corr_rows(a[idx], b[idx], method) - _corr_rows(c[idx], d[idx], method)
    boots = boots[~np.isnan(boots)]
    if boots.size == 0 or math.isnan(value):
        return value, math.nan, math.nan, n
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return value, float(low), float(high), n


def _top_set(x: np.ndarray, k: int) -> set[int]:
    return set(ranked_order(x)[:k].tolist())


def top_k_overlap(a: Tensor | np.ndarray, b: Tensor | np.ndarray, k: int) -> float:
    """Fraction of the top-``k`` heads of map ``a`` that are also in the top-``k`` of ``b``:
    ``|top_k(a) & top_k(b)| / k``, ranked as :meth:`HeadScores.top` ranks
    (:func:`ranked_order`: NaN never ranked, ``+-inf`` ranked, ties to the
    lower flat index).

    Raises:
        ValueError: a map has no rankable (non-NaN) value. A map with fewer than ``k``
            brings the ones it has (with a ``UserWarning``), as ``top(k)`` does.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}.")
    x = _as_array(a, "a", allow_inf=True).reshape(-1)
    y = _as_array(b, "b", allow_inf=True).reshape(-1)
    for name, values in (("a", x), ("b", y)):
        rankable = int((~np.isnan(values)).sum())
        if rankable == 0:
            raise ValueError(
                f"top_k_overlap: map {name} has no rankable value (all {values.size} are "
                "NaN); its top-k set would be empty."
            )
        if rankable < k:
            warnings.warn(
                f"top_k_overlap: map {name} has {rankable} rankable values, fewer than "
                f"k={k}; its top set has {rankable}.",
                UserWarning,
                stacklevel=2,
            )
    return len(_top_set(x, k) & _top_set(y, k)) / k


def top_k_overlap_ci(
    per_prompt_a: Tensor,
    per_prompt_b: Tensor,
    k: int,
    *,
    paired: bool,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """Top-``k`` overlap of two mean maps (``[prompt, layer, head]`` per-prompt scores) with
    a bootstrap over prompts: the same resampled prompts for both maps when ``paired`` (maps
    from the same prompts), independent resamples otherwise.

    NaN per-prompt scores are missing (each head's mean is over its defined prompts); a
    head with no defined prompt in a resample is not ranked in it. ``+-inf`` per-prompt
    scores are refused (ValueError): their means are undefined.

    Returns:
        ``(overlap, ci_low, ci_high, k)``.
    """
    _check(n_boot, level, seed)
    a = _as_array(per_prompt_a, "per_prompt_a")
    b = _as_array(per_prompt_b, "per_prompt_b")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN columns stay NaN
        mean_a, mean_b = np.nanmean(a, 0), np.nanmean(b, 0)
    value = top_k_overlap(mean_a, mean_b, k)  # errors / warns for the maps themselves
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        rng = np.random.default_rng(seed)
        boots = []
        for start in range(0, n_boot, 100):
            m = min(100, n_boot - start)
            ia = rng.integers(0, a.shape[0], size=(m, a.shape[0]))
            ib = ia if paired else rng.integers(0, b.shape[0], size=(m, b.shape[0]))
            ma, mb = np.nanmean(a[ia], 1), np.nanmean(b[ib], 1)
            boots += [len(_top_set(x, k) & _top_set(y, k)) / k for x, y in zip(ma, mb)]
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return float(value), float(low), float(high), int(k)
