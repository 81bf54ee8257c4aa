"""Per-layer geometry curves (:class:`GeometryCurves`: values, bootstrap replicates and
per-prompt values of each metric) and curve onsets (:func:`onset_layers`).

Example::

    curves = separability_curves(states, prompts.gold)
    curves.frame()                                   # layer, metric, value, ci_low, ci_high, n
    onset_layers(curves.values["probe_accuracy"], curves.layers)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..stats import LEVEL, percentile_interval

#: A curve's onset: the first layer where it reaches this fraction of its maximum.
ONSET_FRACTION = 0.9


@dataclass
class GeometryCurves:
    """Per-layer geometry of one set of states: point values, bootstrap replicates (the
    same stratified resamples for every metric), and per-prompt values where a metric has
    them. Plumbing of the experiments; the public functions return :meth:`frame`.

    Attributes:
        layers: the state index of each column.
        n: number of prompts.
        values: metric -> ``[layer]``.
        replicates: metric -> ``[resample, layer]``.
        per_prompt: metric -> ``[prompt, layer]`` (probe correctness, logit-lens
            correctness, subspace alignment, label rotation).
        chance: ``1 / classes`` (for accuracies).
    """

    layers: tuple[int, ...]
    n: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict)
    chance: float = float("nan")

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    def merge(self, other: GeometryCurves) -> GeometryCurves:
        """Both curves' metrics (same layers and prompts)."""
        if tuple(other.layers) != tuple(self.layers) or other.n != self.n:
            raise ValueError("Curves of different layers or prompt counts cannot be merged.")
        return GeometryCurves(
            self.layers,
            self.n,
            {**self.values, **other.values},
            {**self.replicates, **other.replicates},
            {**self.per_prompt, **other.per_prompt},
            self.chance,
        )

    def interval(self, metric: str, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of ``metric`` per layer from the replicates."""
        return percentile_interval(self.replicates[metric], level)

    def frame(self, level: float = LEVEL) -> pd.DataFrame:
        """Tidy rows ``layer, metric, value, ci_low, ci_high, n``."""
        rows = []
        for metric, values in self.values.items():
            low, high = self.interval(metric, level)
            for j, layer in enumerate(self.layers):
                rows.append(
                    {
                        "layer": int(layer),
                        "metric": metric,
                        "value": float(values[j]),
                        "ci_low": float(low[j]),
                        "ci_high": float(high[j]),
                        "n": int(self.n),
                    }
                )
        return pd.DataFrame(rows, columns=["layer", "metric", "value", "ci_low", "ci_high", "n"])


def onset_layers(
    curves: np.ndarray, layers: Sequence[int], fraction: float = ONSET_FRACTION
) -> np.ndarray:
    """The first layer where each curve reaches ``fraction`` of its maximum.

    Args:
        curves: ``[..., layer]`` values (NaN ignored; ``+inf``, e.g. the Fisher ratio of
            classes without within-class spread, is a maximum like any other: its onset
            is the first infinite layer).
        layers: the layer label of each column.

    Returns:
        ``[...]`` layer labels (float; NaN where a curve has no positive maximum).
    """
    values = np.asarray(curves, dtype=float)
    labels = np.asarray(layers, dtype=float)
    filled = np.where(np.isnan(values), -np.inf, values)
    peak = filled.max(-1, keepdims=True)
    reached = filled >= fraction * peak
    first = reached.argmax(-1)
    out = labels[first]
    return np.where(peak[..., 0] > 0, out, np.nan)
