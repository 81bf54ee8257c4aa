"""Task vectors: the mean ICL query state injected into zero-shot prompts, layer by layer
(:func:`task_vector_experiment`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...backends import HookedTransformer
from ...batching import BatchSize
from ...geometry import check_state_layers, run_query
from ...hooks import check_interventions, check_positions
from ...interventions import TASK_VECTOR_MODES, inject_task_vector
from ...prompts import PromptSet, check_prompt_set
from ...provenance import check_task_vector_pair
from ...results import ExperimentResult, make_table, table_row
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import LEVEL, N_BOOT, bonferroni_z
from ..kit import check_model
from .curves import check_classes, measure_geometry, point_rows, with_behaviour
from .injected_runs import injection_runs, injection_start


@dataclass(frozen=True)
class TaskVectorSettings(Settings):
    """How :func:`task_vector_experiment` was run.

    ``icl_prompts`` are the source prompts (the vector comes from them) and
    ``zero_shot_prompts`` the target prompts (it is injected into them): the field names
    of results saved before the arguments were renamed ``source_prompts`` /
    ``target_prompts``.
    """

    model: str | None
    icl_prompts: PromptInfo
    zero_shot_prompts: PromptInfo
    labels: tuple[str, ...]
    layers: tuple[int, ...]
    scales: tuple[float, ...]
    mode: str
    positions: str
    read_layer: int
    folds: int
    seed: int
    n_boot: int
    C: float
    level: float = LEVEL
    effect_interval: str = "Bonferroni over the injection cells, normal-approximation bootstrap"
    interventions: tuple[str, ...] = ()


def _check_scales(scales: object) -> list[float]:
    if isinstance(scales, numbers.Real) and not isinstance(scales, bool):
        scales = [scales]
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise TypeError(f"scales must be a non-empty list of numbers, got {scales!r}.")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise TypeError(f"scales must be finite numbers, got {s!r} in {scales!r}.")
    return list(scales)


def task_vector_experiment(
    model: HookedTransformer,
    source_prompts: PromptSet,
    target_prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    *,
    mode: str = "replace",
    positions="query",
    read_layer: int | None = None,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Task vectors: behaviour and geometry of zero-shot (target) prompts after injecting
    the mean query state of ICL (source) prompts, for each layer of injection.

    For every injection state ``l`` (state index, as in ``query_states``) and ``scale``:
    ``v_l = task_vector(model, source_prompts, l)`` is injected into the target prompts at
    state ``l`` (:func:`~icl_heads.interventions.inject_task_vector`, ``mode``), and the run
    is measured by the behaviour metrics (accuracy, label-space rate, in-space accuracy,
    gold-label logit difference) and the geometry (separability and alignment) of the
    states at ``read_layer`` (default: the final state, ``n_layers``). One pass over the
    source prompts gives every task vector.

    Args:
        source_prompts: the ICL prompts the vectors come from (``k >= 1``).
        target_prompts: the zero-shot prompts (``k == 0``) of the same task they are
            injected into; a swapped or mixed pair is refused
            (:func:`~icl_heads.provenance.check_task_vector_pair`).
        layers: injection states; default ``0 .. n_layers - 1`` (injecting after the last
            block would leave no block to use the vector).
        scales: injection scales (``replace``: 1 replaces the state, 0 changes nothing).
        mode: ``"replace"`` (default) or ``"add"``.
        positions: where to inject (``"query"``, default).
        read_layer: the state whose geometry is measured (default the final state).
        interventions: background interventions, active in every run (the source pass,
            the zero-shot reference and every injection run).

    Example::

        zero = ih.build_prompts(model, task, k=0, n=64)
        icl = ih.build_prompts(model, task, k=4, n=64)
        ih.task_vector_experiment(model, icl, zero).plot()

    Returns:
        :class:`~icl_heads.results.ExperimentResult` named ``"task_vector"``: rows per
        condition (``"zero_shot"``, ``"icl"`` — repeated at every injection layer so they
        draw as reference lines — and ``"task_vector"``, or ``"task_vector x<scale>"`` with
        several scales) x injection ``layer`` x metric, with a ``scale`` column;
        ``tables["effect"]``: the paired change from the zero-shot baseline per layer, scale
        and metric, with a Bonferroni-adjusted interval over the injection cells.
    """
    check_model(model, "task_vector_experiment")
    check_prompt_set(source_prompts, "source_prompts", model=model)
    check_prompt_set(target_prompts, "target_prompts", model=model)
    if not torch.equal(source_prompts.label_token_ids.cpu(), target_prompts.label_token_ids.cpu()):
        raise ValueError(
            f"source_prompts and target_prompts have different label tokens "
            f"({list(source_prompts.label_words)} vs "
            f"{list(target_prompts.label_words)}); build both from the same "
            "task."
        )
    L = model.cfg.n_layers
    inject = list(range(L)) if layers is None else check_state_layers(layers, L)
    read = L if read_layer is None else check_state_layers([read_layer], L)[0]
    scales = _check_scales(scales)
    if mode not in TASK_VECTOR_MODES:
        raise ValueError(f"Unknown task-vector mode {mode!r}; choose one of {TASK_VECTOR_MODES}.")
    positions = check_positions(positions)
    check_task_vector_pair(source_prompts, target_prompts, fn="task_vector_experiment")
    check_classes(target_prompts, folds, "task_vector_experiment")
    check_classes(source_prompts, folds, "task_vector_experiment")
    background = check_interventions(interventions, model)
    geo = dict(folds=folds, seed=seed, n_boot=n_boot, C=C)
    run = dict(batch_size=batch_size, device=device)

    wanted = sorted(set(inject) | {read})
    icl_states, icl_beh = run_query(
        model,
        source_prompts,
        wanted,
        behaviour=True,
        interventions=background,
        progress=progress,
        desc="ICL states",
        **run,
    )
    vectors = {
        layer: icl_states[:, wanted.index(layer)].double().mean(0).float() for layer in inject
    }
    col = wanted.index(read)
    icl_curves = with_behaviour(
        measure_geometry(model, source_prompts, icl_states[:, col : col + 1], [read], **geo),
        icl_beh,
        source_prompts,
        seed,
        n_boot,
    )
    cells = [(layer, float(s)) for layer in inject for s in scales]
    ivs = [
        inject_task_vector(
            model, vectors[layer], layer, mode=mode, scale=scale, positions=positions
        )
        for layer, scale in cells
    ]
    (base_states, base_beh), injected = injection_runs(
        model,
        target_prompts,
        [((iv,), injection_start(layer, read, L)) for iv, (layer, _) in zip(ivs, cells)],
        read,
        background=background,
        progress=progress,
        **run,
    )
    base_curves = with_behaviour(
        measure_geometry(model, target_prompts, base_states, [read], **geo),
        base_beh,
        target_prompts,
        seed,
        n_boot,
    )

    several = len(scales) > 1
    rows: list[dict] = []
    effects: list[dict] = []
    z = bonferroni_z(len(cells))
    level = 1 - (1 - LEVEL) / len(cells)
    for (layer, scale), (states, beh) in zip(
        tqdm(cells, desc="task vectors", disable=not progress, leave=False, unit="cell"),
        injected,
        strict=True,
    ):
        curves = with_behaviour(
            measure_geometry(model, target_prompts, states, [read], **geo),
            beh,
            target_prompts,
            seed,
            n_boot,
        )
        condition = f"task_vector x{scale:g}" if several else "task_vector"
        rows += point_rows(curves, condition, layer=layer, scale=scale, read_layer=read)
        for name, ref in (("zero_shot", base_curves), ("icl", icl_curves)):
            if scale == float(scales[0]):
                rows += point_rows(ref, name, layer=layer, scale=math.nan, read_layer=read)
        for metric in curves.metrics:
            with np.errstate(invalid="ignore"):
                diff = curves.replicates[metric][:, 0] - base_curves.replicates[metric][:, 0]
                value = curves.values[metric][0] - base_curves.values[metric][0]
            diff = diff[np.isfinite(diff)]
            sd = float(np.std(diff)) if diff.size > 1 else math.nan
            effects.append(
                table_row(
                    condition,
                    metric,
                    value,
                    value - z * sd,
                    value + z * sd,
                    curves.n,
                    layer=layer,
                    scale=scale,
                    level=level,
                )
            )
    settings = TaskVectorSettings(
        model=model_name(model),
        icl_prompts=source_prompts.info(),
        zero_shot_prompts=target_prompts.info(),
        labels=tuple(source_prompts.label_words),
        layers=tuple(inject),
        scales=tuple(float(s) for s in scales),
        mode=mode,
        positions=str(positions),
        read_layer=int(read),
        folds=int(folds),
        seed=int(seed),
        n_boot=int(n_boot),
        C=float(C),
        interventions=describe_interventions(background),
    )
    return ExperimentResult(
        "task_vector", make_table(rows), settings, tables={"effect": make_table(effects)}
    )
