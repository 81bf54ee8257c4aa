"""What the geometry experiments share: the probe checks, one measurement of separability and
alignment over states, the layer spans, and the rows of their tables (curves, span means,
onsets, single points, per-prompt values), every interval from :mod:`icl_heads.stats`.

Spans (project choice): with ``L`` blocks, the *early* states are ``1 .. L // 2`` and the
*late* states ``L // 2 + 1 .. L`` (state ``i`` = the stream after ``i`` blocks; state 0, the
embeddings, is in neither).

Example::

    curves = measure_geometry(model, prompts, states, layers, folds=5, seed=0, n_boot=1000,
                              C=1.0)
    rows = curve_rows(curves, "k=4")
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from ...backends import HookedTransformer
from ...geometry import (
    ALIGNMENT_METRICS,
    ONSET_FRACTION,
    SEPARABILITY_METRICS,
    GeometryCurves,
    alignment_curves,
    bootstrap_weights,
    class_codes,
    onset_layers,
    separability_curves,
    weighted_means,
)
from ...metrics import BEHAVIOUR
from ...prompts import PromptSet
from ...results import table_row
from ...settings import describe_interventions
from ...stats import nanmean, percentile_interval

GEOMETRY_METRICS = SEPARABILITY_METRICS + ALIGNMENT_METRICS
#: The primary measure of each property (the verdicts use these).
SEPARABILITY = "probe_accuracy"
ALIGNMENT = "mean_diff_cosine"


def spans(layers: Sequence[int], n_layers: int) -> dict[str, list[int]]:
    """The early (``1 .. L // 2``) and late (``L // 2 + 1 .. L``) states among ``layers``.

    Example::

        spans(range(31), 30)    # {"early": [1, ..., 15], "late": [16, ..., 30]}
    """
    half = n_layers // 2
    return {
        "early": [int(x) for x in layers if 1 <= x <= half],
        "late": [int(x) for x in layers if x > half],
    }


def check_classes(prompts: PromptSet, folds: object, fn: str) -> None:
    """The probe's checks (``folds`` >= 2, two classes, enough prompts per class), before any
    forward pass.

    Example::

        check_classes(prompts, 5, "layer_geometry")    # ValueError before any model run
    """
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")
    class_codes(prompts.gold.cpu().numpy(), folds, fn)


def measure_geometry(
    model: HookedTransformer,
    prompts: PromptSet,
    states: Float[Tensor, "prompt layer d_model"],
    layers: Sequence[int],
    *,
    folds: int,
    seed: int,
    n_boot: int,
    C: float,
    progress: bool = False,
) -> GeometryCurves:
    """Separability and alignment of ``states`` (the same resamples for every metric).

    Example::

        curves = measure_geometry(model, prompts, states, [0, 6, 12], folds=5, seed=0,
                                  n_boot=1000, C=1.0)
    """
    sep = separability_curves(
        states,
        prompts.gold,
        folds=folds,
        seed=seed,
        n_boot=n_boot,
        C=C,
        layers=layers,
        progress=progress,
    )
    ali = alignment_curves(
        states,
        prompts.gold,
        model,
        prompts.label_token_ids,
        seed=seed,
        n_boot=n_boot,
        layers=layers,
    )
    return sep.merge(ali)


def with_behaviour(
    curves: GeometryCurves,
    behaviour: Mapping[str, np.ndarray],
    prompts: PromptSet,
    seed: int,
    n_boot: int,
) -> GeometryCurves:
    """``curves`` with the behaviour metrics (per prompt) added, with the same stratified
    resamples.

    Example::

        curves = with_behaviour(curves, behaviour, prompts, seed=0, n_boot=1000)
    """
    codes, _ = class_codes(prompts.gold.cpu().numpy(), None, "task_vector_experiment")
    weights = bootstrap_weights(codes, n_boot, seed)
    for name in BEHAVIOUR:
        per_prompt = behaviour[name][:, None]
        rows = weighted_means(per_prompt, weights)
        curves.values[name], curves.replicates[name] = rows[0], rows[1:]
        curves.per_prompt[name] = per_prompt
    return curves


def pool_sets(sets: Sequence[GeometryCurves], seed: int) -> GeometryCurves:
    """Mean over random sets; replicates from a two-level bootstrap (resample the sets, then
    take each set's prompt-resample replicate).

    Example::

        pooled = pool_sets([curves_0, curves_1, curves_2], seed=0)
    """
    first = sets[0]
    pooled = GeometryCurves(first.layers, first.n, chance=first.chance)
    rng = np.random.default_rng([seed, 7919])
    n_sets = len(sets)
    n_rep = max(s.replicates[m].shape[0] for s in sets for m in s.metrics)
    pick = rng.integers(0, n_sets, size=(n_rep, n_sets))
    for metric in first.metrics:
        stack = np.stack([s.replicates[metric] for s in sets])  # [set, rep, layer]
        reps = stack.shape[1]
        chosen = stack[pick[:reps], np.arange(reps)[:, None]]  # [rep, set, layer]
        pooled.values[metric] = nanmean(np.stack([s.values[metric] for s in sets]), axis=0)
        pooled.replicates[metric] = nanmean(chosen, axis=1)
    return pooled


# --------------------------------------------------------------------------- rows


def prompts_condition(prompts: PromptSet, interventions: Sequence = ()) -> str:
    """The condition name of a layer-geometry run: ``"k=4"``, ``"k=4 (shuffled)"``, with
    ``" + <intervention>"`` per background intervention.

    Example::

        prompts_condition(prompts)                     # "k=4"
    """
    name = f"k={prompts.k}"
    if prompts.perturbation != "gold":
        name += f" ({prompts.perturbation})"
    return name + "".join(f" + {d}" for d in describe_interventions(interventions))


def curve_rows(curves: GeometryCurves, condition: str, **extra) -> list[dict]:
    """One row per metric x layer, with the percentile interval of its replicates.

    Example::

        make_table(curve_rows(curves, "k=4"))
    """
    rows = []
    for metric in curves.metrics:
        low, high = curves.interval(metric)
        for j, layer in enumerate(curves.layers):
            rows.append(
                table_row(
                    condition,
                    metric,
                    curves.values[metric][j],
                    low[j],
                    high[j],
                    curves.n,
                    layer=int(layer),
                    **extra,
                )
            )
    return rows


def point_rows(curves: GeometryCurves, condition: str, **extra) -> list[dict]:
    """One row per metric of a one-layer curve.

    Example::

        point_rows(curves, "zero_shot", layer=3, scale=1.0, read_layer=30)
    """
    rows = []
    for metric in curves.metrics:
        low, high = curves.interval(metric)
        rows.append(
            table_row(
                condition, metric, curves.values[metric][0], low[0], high[0], curves.n, **extra
            )
        )
    return rows


def span_rows(
    curves: GeometryCurves, condition: str, layer_spans: Mapping[str, list[int]]
) -> list[dict]:
    """Mean of each curve over each span, with the interval of the span mean.

    Example::

        span_rows(curves, "PTH", spans(layers, model.cfg.n_layers))
    """
    rows = []
    index = {layer: j for j, layer in enumerate(curves.layers)}
    for metric in curves.metrics:
        for span, members in layer_spans.items():
            cols = [index[m] for m in members if m in index]
            if not cols:
                continue
            with np.errstate(all="ignore"):
                value = nanmean(curves.values[metric][cols])
                reps = nanmean(curves.replicates[metric][:, cols], axis=1)
            low, high = percentile_interval(reps[:, None])
            rows.append(
                table_row(
                    condition,
                    metric,
                    value,
                    low[0],
                    high[0],
                    curves.n,
                    span=span,
                    layers=" ".join(map(str, members)),
                )
            )
    return rows


def onset_rows(curves: GeometryCurves, condition: str) -> list[dict]:
    """Onset layer (first layer at ``ONSET_FRACTION`` of the maximum) of every metric, and
    the alignment-minus-separability onset difference, with bootstrap intervals.

    Example::

        make_table(onset_rows(curves, "k=4"))
    """
    rows = []
    onsets = {}
    for metric in curves.metrics:
        point = float(onset_layers(curves.values[metric], curves.layers))
        reps = onset_layers(curves.replicates[metric], curves.layers)
        onsets[metric] = (point, reps)
        low, high = percentile_interval(reps[:, None])
        rows.append(
            table_row(condition, metric, point, low[0], high[0], curves.n, fraction=ONSET_FRACTION)
        )
    point = onsets[ALIGNMENT][0] - onsets[SEPARABILITY][0]
    diff = onsets[ALIGNMENT][1] - onsets[SEPARABILITY][1]
    low, high = percentile_interval(diff[:, None])
    rows.append(
        table_row(
            condition,
            f"{ALIGNMENT} - {SEPARABILITY}",
            point,
            low[0],
            high[0],
            curves.n,
            fraction=ONSET_FRACTION,
        )
    )
    return rows


def per_prompt_frame(curves: GeometryCurves, prompts: PromptSet) -> pd.DataFrame:
    """Per-prompt values by layer (``prompt, query_example, gold, layer, <metric>...``).

    Example::

        per_prompt_frame(curves, prompts).groupby("layer")["probe_accuracy"].mean()
    """
    n, L = curves.n, len(curves.layers)
    frame = pd.DataFrame(
        {
            "prompt": np.repeat(np.arange(n), L),
            "query_example": np.repeat(np.asarray(prompts.query_examples), L),
            "gold": np.repeat(prompts.gold.cpu().numpy(), L),
            "layer": np.tile(np.asarray(curves.layers), n),
        }
    )
    for metric, values in curves.per_prompt.items():
        frame[metric] = np.asarray(values, dtype=float).reshape(-1)
    return frame
