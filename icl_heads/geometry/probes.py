"""Separability of the classes in each layer's states: a held-out logistic-regression
probe and the Fisher ratio, with stratified bootstrap intervals.

Example::

    ih.separability(ih.query_states(model, prompts), prompts.gold)
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_int
from ..settings import Settings
from ..stats import LEVEL, N_BOOT
from .bootstrap import bootstrap_weights, class_quadratics, split_replicates, weighted_means
from .curves import GeometryCurves
from .inputs import as_labels, as_states, check_layer_labels, class_codes

log = logging.getLogger(__name__)

SEPARABILITY_METRICS = ("probe_accuracy", "fisher_ratio")


@dataclass(frozen=True)
class SeparabilitySettings(Settings):
    """How :func:`separability` was computed."""

    folds: int
    seed: int
    n_boot: int
    C: float
    level: float = LEVEL
    probe: str = "StandardScaler + LogisticRegression(lbfgs, L2), stratified k-fold"
    fisher: str = "tr(S_B) / tr(S_W) on the states as given"


def separability_curves(
    states,
    labels,
    *,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> GeometryCurves:
    """:func:`separability` as :class:`GeometryCurves` (values, replicates, per-prompt)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = as_states(states)
    n, L, _ = X.shape
    arr = as_labels(labels, n)
    folds = check_int(folds, "folds", 2)
    seed = check_int(seed, "seed", -(2**62))
    n_boot = check_int(n_boot, "n_boot", 1)
    if isinstance(C, bool) or not isinstance(C, numbers.Real) or not C > 0:
        raise ValueError(
            f"C (the probe's inverse regularisation) must be a positive number, got {C!r}."
        )
    codes, n_classes = class_codes(arr, folds, "separability")
    layer_labels = check_layer_labels(layers, L)
    weights = bootstrap_weights(codes, n_boot, seed)

    splits = list(
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32).split(
            np.zeros(n), codes
        )
    )
    correct = np.zeros((n, L))
    not_converged = 0
    for j in tqdm(range(L), desc="probes", disable=not progress, leave=False, unit="layer"):
        features = X[:, j].numpy()
        for train, test in splits:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=1000))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                probe.fit(features[train], codes[train])
            not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            correct[test, j] = probe.predict(features[test]) == codes[test]
    if not_converged:
        log.warning(
            "separability: %d of %d probe fits did not converge in 1000 iterations.",
            not_converged,
            L * folds,
        )

    Y = torch.nn.functional.one_hot(torch.from_numpy(codes), n_classes).double()  # [n, C]
    M = weights[:, None, :] * Y.T[None]  # [R, C, n]
    N = M.sum(-1)
    fisher = np.empty((weights.shape[0], L))
    for j in range(L):
        Xc = X[:, j] - X[:, j].mean(0)
        G = Xc @ Xc.T
        A = M @ G.diagonal()  # [R, C]: sum_{i in c} w_i |x_i|^2
        P = class_quadratics(G, M)
        within = (A - P.diagonal(dim1=1, dim2=2) / N).sum(-1)
        total = A.sum(-1) - P.sum((1, 2)) / N.sum(-1)
        between = total - within
        scale = A.sum(-1).clamp_min(1e-300)
        ratio = torch.where(
            within > 1e-12 * scale,
            between / within.clamp_min(1e-300),
            torch.full_like(within, float("inf")),
        )
        fisher[:, j] = torch.where(
            total > 1e-12 * scale, ratio, torch.full_like(ratio, float("nan"))
        ).numpy()

    accuracy = weighted_means(correct, weights)
    curves = GeometryCurves(layer_labels, n, chance=1.0 / n_classes)
    curves.values["probe_accuracy"], curves.replicates["probe_accuracy"] = split_replicates(
        accuracy
    )
    curves.values["fisher_ratio"], curves.replicates["fisher_ratio"] = split_replicates(
        fisher, True
    )
    curves.per_prompt["probe_accuracy"] = correct
    return curves


def separability(
    states: Float[Tensor, "prompt layer d_model"] | Float[Tensor, "prompt d_model"],
    labels: Int[Tensor, " prompt"] | Sequence,
    folds: int = 5,
    seed: int = 0,
    *,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """How well the classes can be told apart in each layer's states.

    * ``probe_accuracy``: held-out accuracy of a logistic-regression probe (scikit-learn;
      features standardised on each training fold, L2 penalty ``C``), stratified
      ``folds``-fold cross-validation shuffled with ``seed``. Every prompt is held out once;
      the interval is a stratified bootstrap of the per-prompt held-out correctness.
    * ``fisher_ratio``: ``tr(S_B) / tr(S_W)``, between-class over within-class sum of
      squares of the states as given (see the module docstring), with a stratified
      bootstrap interval.

    Args:
        states: ``[prompt, layer, d_model]`` or ``[prompt, d_model]`` (any source).
        labels: one class per prompt (ints or strings), e.g. ``prompts.gold``.
        folds: cross-validation folds; every class needs at least ``folds`` prompts.
        seed: seeds the folds and the bootstrap.
        n_boot: bootstrap resamples.
        C: inverse L2 strength of the probe.
        layers: the state index of each layer of ``states`` (default ``0, 1, ...``).

    Example::

        states = ih.query_states(model, prompts)
        ih.separability(states, prompts.gold)        # layer, metric, value, ci_low, ci_high, n

    Returns:
        Tidy DataFrame, one row per layer x metric; ``.attrs["settings"]``
        (:class:`SeparabilitySettings`) and ``.attrs["chance"]`` (``1 / classes``).
    """
    curves = separability_curves(
        states, labels, folds=folds, seed=seed, n_boot=n_boot, C=C, layers=layers, progress=progress
    )
    frame = curves.frame()
    frame.attrs["settings"] = SeparabilitySettings(
        folds=int(folds), seed=int(seed), n_boot=int(n_boot), C=float(C)
    )
    frame.attrs["chance"] = curves.chance
    return frame
