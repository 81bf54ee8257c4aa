"""Separability and alignment curves with head sets ablated, against the unablated curves
and layer-matched random sets (:func:`head_ablation_geometry`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...activations import activation_means
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...detectors import token_detector_scores
from ...geometry import GeometryCurves, check_state_layers
from ...heads import HeadScores, check_top_k
from ...hooks import check_interventions, check_positions
from ...interventions import ablate
from ...prompts import PromptSet, check_prompt_set
from ...provenance import check_head_sets, same_task
from ...results import ExperimentResult, make_table
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import LEVEL, N_BOOT
from ..kit import (
    BASELINE,
    Condition,
    check_ablation_modes,
    check_model,
    head_sets_with_controls,
)
from .curves import check_classes, curve_rows, pool_sets, span_rows, spans
from .shared_runs import (
    changed_layers,
    condition_states,
    difference_curves,
    measure_conditions,
)


@dataclass(frozen=True)
class HeadAblationGeometrySettings(Settings):
    """How :func:`head_ablation_geometry` was run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    heads: dict
    top_k: int
    n_random: int
    mode: str
    positions: str
    layers: tuple[int, ...]
    folds: int
    seed: int
    n_boot: int
    C: float
    early: tuple[int, ...] = ()
    late: tuple[int, ...] = ()
    level: float = LEVEL
    random_sets: str = "layer-matched, never containing a head of any named set; seeded"
    interventions: tuple[str, ...] = ()
    #: The other ablation mode run as a sensitivity analysis (conditions ``"<set> (<mode>)"``,
    #: ``"random_<set> (<mode>)"``), or ``None``.
    sensitivity_mode: str | None = None
    #: The prompts mean-ablation means and resampling donors come from (``None``: these
    #: prompts).
    reference: PromptInfo | None = None


def head_ablation_geometry(
    model: HookedTransformer,
    prompts: PromptSet,
    heads: Mapping[str, object] | None = None,
    *,
    top_k: int | None = None,
    n_random: int = 5,
    mode: str = "zero",
    positions="all",
    sensitivity_mode: str | None = None,
    reference: PromptSet | None = None,
    layers: int | Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Separability and alignment curves with head sets ablated, against the unablated
    curves and layer-matched random sets.

    Conditions: ``"baseline"`` (nothing ablated); each named set (default ``"PTH"``: the
    top-``k`` previous-token heads, ``"IH"``: the top-``k`` induction heads, from
    :func:`~icl_heads.detectors.token_detector_scores` on random repeated tokens, ``k`` = 3%
    of heads); and ``"random_<name>"``: ``n_random`` sets with the same number of heads in
    each layer as the named set, never containing a head of any named set (from the nearest
    layers when a layer has too few others; drawn from one seeded stream, set after set). A
    random condition's value is the mean over its sets; its interval comes from a two-level
    bootstrap (sets, then prompts), so it covers both. Every condition shares the probe
    folds and the prompt resamples.

    Cost: one clean pass per group of prompts, shared by every ablated run; each run
    restarts from the clean residual before its first ablated block and only its later
    states are measured again (the earlier ones are the clean states): the numbers of one
    full pass per condition, at a fraction of the cost
    (:mod:`~icl_heads.experiments.geometry.shared_runs`). Progress ticks per group of
    prompts and run, then per state measured.

    Args:
        heads: ``{name: heads}`` with heads as ``Head`` lists, ``(layer, head)`` pairs, a
            boolean mask or a ``HeadScores`` (its ``top(top_k)``; the map is kept in
            ``maps``). Default: PTH and IH as above. A map must come from this model (its
            shape and name); a map scored on prompts (e.g. TR/TL) also from this task
            (:func:`~icl_heads.provenance.check_head_sets`).
        top_k: heads per set taken from a ``HeadScores`` (default 3% of heads, at least 1).
        n_random: random sets per named set (0: none).
        mode, positions: the ablation (:func:`~icl_heads.interventions.ablate`; default zero
            ablation at every position).
        sensitivity_mode: another ablation mode run as a sensitivity analysis (default
            ``None``: none; the reproduction grid runs ``"mean"``): every named and random
            set is ablated that way too, on the same prompts, clean pass, folds and
            resamples, as conditions ``"<set> (<mode>)"`` and ``"random_<set> (<mode>)"``
            (in every table); the main conditions' rows are unchanged.
        reference: the prompts mean-ablation means (and resampling donors) come from
            (default: these prompts), e.g. the selection part of a held-out split.
        layers, folds, seed, n_boot, C: as in :func:`layer_geometry`.
        interventions: background interventions, active in every run (the baseline too).

    Example::

        result = ih.head_ablation_geometry(model, prompts)
        result.plot(); result.tables["summary"]        # early / late span means

    Returns:
        :class:`~icl_heads.results.ExperimentResult` named ``"head_ablation_geometry"``:
        ``table`` (condition x layer x metric), ``tables["summary"]`` (each curve's mean
        over the early and late states, with intervals), ``tables["effect"]`` (each
        ablated curve minus the baseline, layer by layer, with paired intervals: the
        difference of the replicates on the same prompt resamples), ``tables["heads"]``
        (every set's heads; ``set`` = the random set's index, 0 for a named set), ``maps``
        (the detector maps the sets came from).
    """
    check_model(model, "head_ablation_geometry")
    check_prompt_set(prompts, model=model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    chosen = check_state_layers(layers, L)
    check_classes(prompts, folds, "head_ablation_geometry")
    k = check_top_k(top_k, L, H)
    positions = check_positions(positions)
    check_ablation_modes(mode, sensitivity_mode)
    if reference is not None:
        check_prompt_set(reference, "reference", model=model)
        if not same_task(reference.info(), prompts.info()):
            raise ValueError(
                f"head_ablation_geometry: reference prompts of task {reference.task_name!r} "
                f"for prompts of task {prompts.task_name!r}; give prompts of the same task."
            )
    modes = (mode,) if sensitivity_mode is None else (mode, sensitivity_mode)
    donors = reference if reference is not None else prompts
    background = check_interventions(interventions, model)
    if heads is None:
        detected = token_detector_scores(
            model, detectors=["previous_token", "induction"], seed=seed, progress=progress
        )
        heads = {"PTH": detected["previous_token"], "IH": detected["induction"]}
    if not isinstance(heads, Mapping) or not heads:
        raise TypeError(
            f"heads must be a dict {{name: heads}}, e.g. {{'PTH': [...], 'IH': "
            f"[...]}}, got {type(heads).__name__}."
        )
    check_head_sets(heads, model, prompts, fn="head_ablation_geometry")
    maps = {name: value for name, value in heads.items() if isinstance(value, HeadScores)}
    chosen_sets = head_sets_with_controls(
        model,
        heads,
        n_random=n_random,
        random_like=None if n_random else (),
        layer_matched=True,
        seed=np.random.default_rng(seed),
        top_k=k,
    )
    named, controls = chosen_sets.named, chosen_sets.controls
    plan, plan_modes = [Condition(BASELINE, ())], [mode]
    for m in modes:
        for name, hs in named.items():
            group = [Condition(name, tuple(hs))] + [c for c in controls if c.control_of == name]
            if m != mode:
                group = [
                    Condition(f"{c.name} ({m})", c.heads, c.control_of, c.index) for c in group
                ]
            plan += group
            plan_modes += [m] * len(group)

    means = None
    if "mean" in modes:
        means = activation_means(
            model,
            donors,
            positions="query" if positions == "query" else "all",
            batch_size=batch_size,
            device=device,
            progress=False,
        )
    runs = []
    for condition, m in zip(plan[1:], plan_modes[1:], strict=True):
        iv = ablate(
            model,
            list(condition.heads),
            m,
            positions,
            means=means if m == "mean" else None,
            reference=donors,
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=False,
        )
        first = min((h.layer for h in condition.heads), default=None)
        runs.append(((iv,), first))
    clean, changed = condition_states(
        model,
        prompts,
        runs,
        chosen,
        query_only=positions == "query",
        background=background,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    base, ablated = measure_conditions(
        model,
        prompts,
        clean,
        changed,
        chosen,
        [changed_layers(chosen, first) for _, first in runs],
        folds=folds,
        seed=seed,
        n_boot=n_boot,
        C=C,
        progress=progress,
    )
    measured: dict[str, list[GeometryCurves]] = {BASELINE: [base]}
    for condition, curves in zip(plan[1:], ablated, strict=True):
        measured.setdefault(condition.name, []).append(curves)

    layer_spans = spans(chosen, L)
    pooled = {c.name for c in plan if c.control_of is not None}
    rows, summary, effect = [], [], []
    for name, sets in measured.items():
        curves = pool_sets(sets, seed) if name in pooled else sets[0]
        rows += curve_rows(curves, name)
        summary += span_rows(curves, name, layer_spans)
        if name != BASELINE:
            effect += curve_rows(difference_curves(curves, base), name)
    head_rows = [
        {"condition": c.name, "set": c.index or 0, "layer": h.layer, "head": h.head}
        for c in plan[1:]
        for h in c.heads
    ]
    settings = HeadAblationGeometrySettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        heads={name: tuple(str(h) for h in hs) for name, hs in named.items()},
        top_k=int(k),
        n_random=chosen_sets.n_random,
        mode=mode,
        positions=str(positions),
        layers=tuple(chosen),
        folds=int(folds),
        seed=int(seed),
        n_boot=int(n_boot),
        C=float(C),
        early=tuple(layer_spans["early"]),
        late=tuple(layer_spans["late"]),
        interventions=describe_interventions(background),
        sensitivity_mode=sensitivity_mode,
        reference=reference.info() if reference is not None else None,
    )
    return ExperimentResult(
        "head_ablation_geometry",
        make_table(rows),
        settings,
        maps=maps,
        tables={
            "summary": make_table(summary),
            "effect": make_table(effect),
            "heads": pd.DataFrame(head_rows, columns=["condition", "set", "layer", "head"]),
        },
    )
