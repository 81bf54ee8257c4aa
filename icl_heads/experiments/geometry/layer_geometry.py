"""Separability and alignment of the query states, layer by layer (:func:`layer_geometry`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...backends import HookedTransformer
from ...batching import BatchSize
from ...geometry import ONSET_FRACTION, check_state_layers, run_query
from ...hooks import check_interventions
from ...prompts import PromptSet, check_prompt_set
from ...results import ExperimentResult, make_table
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import LEVEL, N_BOOT
from ..kit import check_model
from .curves import (
    check_classes,
    curve_rows,
    measure_geometry,
    onset_rows,
    per_prompt_frame,
    prompts_condition,
)


@dataclass(frozen=True)
class LayerGeometrySettings(Settings):
    """How :func:`layer_geometry` was run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    layers: tuple[int, ...]
    folds: int
    seed: int
    n_boot: int
    C: float
    onset_fraction: float = ONSET_FRACTION
    level: float = LEVEL
    interventions: tuple[str, ...] = ()


def layer_geometry(
    model: HookedTransformer,
    prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Separability and alignment of the query states, layer by layer.

    One forward pass captures the query states (:func:`~icl_heads.geometry.query_states`);
    then :func:`~icl_heads.geometry.separability` and :func:`~icl_heads.geometry.alignment`
    measure every layer, sharing one stratified bootstrap.

    Args:
        layers: state indices (``0`` = embeddings, ``l + 1`` = after block ``l``); default
            all.
        folds, seed, n_boot, C: the probe's folds, the seed of folds and bootstrap, the
            bootstrap resamples, the probe's inverse L2 strength.
        interventions: run with these interventions (ablations, task vectors, ...).

    Example::

        result = ih.layer_geometry(model, prompts)
        result.plot()                                  # one panel per metric
        result.tables["onset"]                         # first layer at 90% of the maximum

    Returns:
        :class:`~icl_heads.results.ExperimentResult` named ``"layer_geometry"``: ``table``
        with one row per layer x metric (``condition`` = ``"k=<k>"``); ``tables["onset"]``
        (onset layer of every metric and the alignment-minus-separability difference, with
        bootstrap intervals); ``tables["per_prompt"]`` (per-prompt values by layer).
    """
    check_model(model, "layer_geometry")
    check_prompt_set(prompts, model=model)
    chosen = check_state_layers(layers, model.cfg.n_layers)
    check_classes(prompts, folds, "layer_geometry")
    interventions = check_interventions(interventions, model)
    states, _ = run_query(
        model,
        prompts,
        chosen,
        interventions=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    curves = measure_geometry(
        model,
        prompts,
        states,
        chosen,
        folds=folds,
        seed=seed,
        n_boot=n_boot,
        C=C,
        progress=progress,
    )
    condition = prompts_condition(prompts, interventions)
    settings = LayerGeometrySettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        layers=tuple(chosen),
        folds=int(folds),
        seed=int(seed),
        n_boot=int(n_boot),
        C=float(C),
        interventions=describe_interventions(interventions),
    )
    tables = {
        "onset": make_table(onset_rows(curves, condition)),
        "per_prompt": per_prompt_frame(curves, prompts),
    }
    return ExperimentResult(
        "layer_geometry", make_table(curve_rows(curves, condition)), settings, tables=tables
    )
