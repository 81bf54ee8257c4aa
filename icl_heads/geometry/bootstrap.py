"""The stratified bootstrap over prompts shared by every geometry metric: resample counts
(each class resampled within itself), weight rows (row 0 the point estimate), weighted
means, and the split into point value and (bias-shifted) replicates.

Example::

    weights = bootstrap_weights(codes, n_boot=1000, seed=0)    # [1 + n_boot, prompt]
    point, replicates = split_replicates(weighted_means(correct, weights))
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


def resample_counts(codes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Stratified bootstrap: ``[n_boot, prompt]`` counts, each class resampled with
    replacement within itself (class sizes fixed). Same codes and seed, same resamples."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    counts = np.zeros((n_boot, n), dtype=np.float64)
    rows = np.arange(n_boot)[:, None]
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        picks = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, picks.shape), picks), 1.0)
    return counts


def bootstrap_weights(codes: np.ndarray, n_boot: int, seed: int) -> Tensor:
    """``[1 + n_boot, prompt]``: row 0 all ones (the point estimate), then the resamples."""
    counts = resample_counts(codes, n_boot, seed)
    return torch.from_numpy(np.vstack([np.ones((1, len(codes))), counts]))


def weighted_means(per_prompt: np.ndarray, weights: Tensor) -> np.ndarray:
    """NaN-aware weighted means of ``[prompt, layer]`` values for each weight row."""
    x = torch.from_numpy(np.asarray(per_prompt, dtype=np.float64))
    ok = ~torch.isnan(x)
    total = weights @ torch.where(ok, x, torch.zeros_like(x))
    count = weights @ ok.double()
    return torch.where(
        count > 0, total / count.clamp_min(1e-300), torch.full_like(total, float("nan"))
    ).numpy()


def split_replicates(rows: np.ndarray, centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate (row 0) and replicates (the rest). ``centre=True`` shifts the
    replicates by the bootstrap's bias estimate (their mean minus the estimate), per layer."""
    point, reps = rows[0], rows[1:]
    if centre:
        finite = np.where(np.isfinite(reps), reps, np.nan)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            bias = np.nanmean(finite, axis=0) - point
            reps = reps - np.where(np.isfinite(bias), bias, 0.0)
    return point, reps


def class_quadratics(G: Tensor, M: Tensor) -> Tensor:
    """``P[r] = M[r] G M[r]^T`` for weighted class indicators ``M`` [R, C, n]."""
    return (M @ G) @ M.transpose(1, 2)
