"""The geometry paper's experiments (Yang et al. 2025, arXiv 2505.18752): separability and
alignment curves over layers, task vectors, and what ablating previous-token and induction
heads does to the curves. Each returns an :class:`~icl_heads.results.ExperimentResult`::

    ih.layer_geometry(model, prompts).plot()                      # curves over layers
    ih.task_vector_experiment(model, icl_prompts, zero_shot)      # injection layer sweep
    ih.head_ablation_geometry(model, prompts)                     # PTH / IH / random sets

:func:`reproduce_geometry` runs them for several tasks and saves every result (resumable);
:func:`write_geometry_page` reads only saved results and writes the results page, with the
verdict on each of the paper's claims computed from the saved tables. One command (resumable: saved cells are loaded)::

    icl-heads reproduce --models default gemma-3-270m --experiments geometry --pages --no-reports

Spans (project choice): with ``L`` blocks, the *early* states are ``1 .. L // 2`` and the
*late* states ``L // 2 + 1 .. L`` (state ``i`` = the stream after ``i`` blocks; state 0, the
embeddings, is in neither).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..checks import check_int
from ..detectors import token_detector_scores
from ..geometry import (
    ALIGNMENT_METRICS,
    ONSET_FRACTION,
    SEPARABILITY_METRICS,
    GeometryCurves,
    alignment_curves,
    bootstrap_weights,
    check_state_layers,
    class_codes,
    onset_layers,
    percentile_interval,
    run_query,
    separability_curves,
    weighted_means,
)
from ..heads import HeadScores, check_top_k, heads_to_mask, mask_to_heads, random_head_sets
from ..interventions import (
    TASK_VECTOR_MODES,
    ablate,
    activation_means,
    check_interventions,
    check_positions,
    inject_task_vector,
)
from ..prompts import PromptSet, build_prompts, check_prompt_set
from ..results import ExperimentResult, make_table, safe_name, table_row
from ..settings import PromptInfo, Settings, describe_interventions, model_name
from ..stats import LEVEL, N_BOOT, mean_ci

log = logging.getLogger(__name__)

GEOMETRY_METRICS = SEPARABILITY_METRICS + ALIGNMENT_METRICS
BEHAVIOUR = ("accuracy", "label_space_rate", "in_space_accuracy", "logit_diff")
#: The primary measure of each property (the verdicts use these).
SEPARABILITY = "probe_accuracy"
ALIGNMENT = "mean_diff_cosine"

__all__ = [
    "LayerGeometrySettings", "TaskVectorSettings", "HeadAblationGeometrySettings",
    "layer_geometry", "task_vector_experiment", "head_ablation_geometry", "reproduce_geometry",
    "write_geometry_page", "geometry_verdicts", "spans",
]


# --------------------------------------------------------------------------- settings


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


@dataclass(frozen=True)
class TaskVectorSettings(Settings):
    """How :func:`task_vector_experiment` was run."""

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


# --------------------------------------------------------------------------- helpers


def spans(layers: Sequence[int], n_layers: int) -> dict[str, list[int]]:
    """The early (``1 .. L // 2``) and late (``L // 2 + 1 .. L``) states among ``layers``."""
    half = n_layers // 2
    return {"early": [int(x) for x in layers if 1 <= x <= half],
            "late": [int(x) for x in layers if x > half]}


def _check_model(model, fn: str) -> None:
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"{fn} needs a HookedTransformer as model (e.g. icl_heads.load_model()), "
                        f"got {type(model).__name__}.")


def _check_classes(prompts: PromptSet, folds: int, fn: str) -> None:
    """The probe's class checks, before any forward pass."""
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")
    class_codes(prompts.gold.cpu().numpy(), folds, fn)


def _geometry(model, prompts: PromptSet, states, layers, *, folds, seed, n_boot, C,
              progress=False) -> GeometryCurves:
    """Separability and alignment of ``states`` (same resamples for every metric)."""
    sep = separability_curves(states, prompts.gold, folds=folds, seed=seed, n_boot=n_boot, C=C,
                              layers=layers, progress=progress)
    ali = alignment_curves(states, prompts.gold, model, prompts.label_token_ids, seed=seed,
                           n_boot=n_boot, layers=layers)
    return sep.merge(ali)


def _condition(prompts: PromptSet, interventions: Sequence = ()) -> str:
    name = f"k={prompts.k}"
    if prompts.perturbation != "gold":
        name += f" ({prompts.perturbation})"
    described = describe_interventions(interventions)
    return name + "".join(f" + {d}" for d in described)


def _curve_rows(curves: GeometryCurves, condition: str, **extra) -> list[dict]:
    rows = []
    for metric in curves.metrics:
        low, high = curves.interval(metric)
        for j, layer in enumerate(curves.layers):
            rows.append(table_row(condition, metric, curves.values[metric][j], low[j], high[j],
                                  curves.n, layer=int(layer), **extra))
    return rows


def _span_rows(curves: GeometryCurves, condition: str, layer_spans: Mapping[str, list[int]]
               ) -> list[dict]:
    """Mean of each curve over each span, with the interval of the span mean."""
    rows = []
    index = {layer: j for j, layer in enumerate(curves.layers)}
    for metric in curves.metrics:
        for span, members in layer_spans.items():
            cols = [index[m] for m in members if m in index]
            if not cols:
                continue
            with np.errstate(all="ignore"):
                value = _nanmean(curves.values[metric][cols])
                reps = _nanmean(curves.replicates[metric][:, cols], axis=1)
            low, high = percentile_interval(reps[:, None])
            rows.append(table_row(condition, metric, value, low[0], high[0], curves.n,
                                  span=span, layers=" ".join(map(str, members))))
    return rows


def _nanmean(x: np.ndarray, axis=None):
    x = np.asarray(x, dtype=float)
    ok = ~np.isnan(x)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    count = ok.sum(axis=axis)
    with np.errstate(all="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _onset_rows(curves: GeometryCurves, condition: str) -> list[dict]:
    """Onset layer (first layer at ``ONSET_FRACTION`` of the maximum) of every metric, and
    the alignment-minus-separability onset difference, with bootstrap intervals."""
    rows = []
    onsets = {}
    for metric in curves.metrics:
        point = float(onset_layers(curves.values[metric], curves.layers))
        reps = onset_layers(curves.replicates[metric], curves.layers)
        onsets[metric] = (point, reps)
        low, high = percentile_interval(reps[:, None])
        rows.append(table_row(condition, metric, point, low[0], high[0], curves.n,
                              fraction=ONSET_FRACTION))
    point = onsets[ALIGNMENT][0] - onsets[SEPARABILITY][0]
    diff = onsets[ALIGNMENT][1] - onsets[SEPARABILITY][1]
    low, high = percentile_interval(diff[:, None])
    rows.append(table_row(condition, f"{ALIGNMENT} - {SEPARABILITY}", point, low[0], high[0],
                          curves.n, fraction=ONSET_FRACTION))
    return rows


def _per_prompt_frame(curves: GeometryCurves, prompts: PromptSet) -> pd.DataFrame:
    n, L = curves.n, len(curves.layers)
    frame = pd.DataFrame({
        "prompt": np.repeat(np.arange(n), L),
        "query_example": np.repeat(np.asarray(prompts.query_examples), L),
        "gold": np.repeat(prompts.gold.cpu().numpy(), L),
        "layer": np.tile(np.asarray(curves.layers), n),
    })
    for metric, values in curves.per_prompt.items():
        frame[metric] = np.asarray(values, dtype=float).reshape(-1)
    return frame


# --------------------------------------------------------------------------- layer geometry


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
    batch_size: int = 16,
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
    _check_model(model, "layer_geometry")
    check_prompt_set(prompts, model=model)
    chosen = check_state_layers(layers, model.cfg.n_layers)
    _check_classes(prompts, folds, "layer_geometry")
    interventions = check_interventions(interventions, model)
    states, _ = run_query(model, prompts, chosen, interventions=interventions,
                          batch_size=batch_size, device=device, progress=progress)
    curves = _geometry(model, prompts, states, chosen, folds=folds, seed=seed, n_boot=n_boot,
                       C=C, progress=progress)
    condition = _condition(prompts, interventions)
    settings = LayerGeometrySettings(
        model=model_name(model), prompts=prompts.info(), labels=tuple(prompts.label_words),
        layers=tuple(chosen), folds=int(folds), seed=int(seed), n_boot=int(n_boot), C=float(C),
        interventions=describe_interventions(interventions))
    tables = {"onset": make_table(_onset_rows(curves, condition)),
              "per_prompt": _per_prompt_frame(curves, prompts)}
    return ExperimentResult("layer_geometry", make_table(_curve_rows(curves, condition)),
                            settings, tables=tables)


# --------------------------------------------------------------------------- task vectors


def task_vector_experiment(
    model: HookedTransformer,
    icl_prompts: PromptSet,
    zero_shot_prompts: PromptSet,
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
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Task vectors: behaviour and geometry of zero-shot prompts after injecting the mean ICL
    query state, for each layer of injection.

    For every injection state ``l`` (state index, as in ``query_states``) and ``scale``:
    ``v_l = task_vector(model, icl_prompts, l)`` is injected into the zero-shot prompts at
    state ``l`` (:func:`~icl_heads.interventions.inject_task_vector`, ``mode``), and the run
    is measured by the behaviour metrics (accuracy, label-space rate, in-space accuracy,
    gold-label logit difference) and the geometry (separability and alignment) of the
    states at ``read_layer`` (default: the final state, ``n_layers``). One pass over the ICL
    prompts gives every task vector.

    Args:
        layers: injection states; default ``0 .. n_layers - 1`` (injecting after the last
            block would leave no block to use the vector).
        scales: injection scales (``replace``: 1 replaces the state, 0 changes nothing).
        mode: ``"replace"`` (default) or ``"add"``.
        positions: where to inject (``"query"``, default).
        read_layer: the state whose geometry is measured (default the final state).

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
    _check_model(model, "task_vector_experiment")
    check_prompt_set(icl_prompts, "icl_prompts", model=model)
    check_prompt_set(zero_shot_prompts, "zero_shot_prompts", model=model)
    if not torch.equal(icl_prompts.label_token_ids.cpu(), zero_shot_prompts.label_token_ids.cpu()):
        raise ValueError(f"icl_prompts and zero_shot_prompts have different label tokens "
                         f"({list(icl_prompts.label_words)} vs "
                         f"{list(zero_shot_prompts.label_words)}); build both from the same "
                         "task.")
    L = model.cfg.n_layers
    inject = list(range(L)) if layers is None else check_state_layers(layers, L)
    read = L if read_layer is None else check_state_layers([read_layer], L)[0]
    if isinstance(scales, numbers.Real) and not isinstance(scales, bool):
        scales = [scales]
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise TypeError(f"scales must be a non-empty list of numbers, got {scales!r}.")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise TypeError(f"scales must be finite numbers, got {s!r} in {scales!r}.")
    if mode not in TASK_VECTOR_MODES:
        raise ValueError(f"Unknown task-vector mode {mode!r}; choose one of {TASK_VECTOR_MODES}.")
    positions = check_positions(positions)
    _check_classes(zero_shot_prompts, folds, "task_vector_experiment")
    _check_classes(icl_prompts, folds, "task_vector_experiment")
    geo = dict(folds=folds, seed=seed, n_boot=n_boot, C=C)

    wanted = sorted(set(inject) | {read})
    icl_states, icl_beh = run_query(model, icl_prompts, wanted, behaviour=True,
                                    batch_size=batch_size, device=device, progress=progress,
                                    desc="ICL states")
    vectors = {layer: icl_states[:, wanted.index(layer)].double().mean(0).float()
               for layer in inject}
    read_col = wanted.index(read)
    icl_curves = _with_behaviour(
        _geometry(model, icl_prompts, icl_states[:, read_col:read_col + 1], [read], **geo),
        icl_beh, icl_prompts, seed, n_boot)
    base_states, base_beh = run_query(model, zero_shot_prompts, [read], behaviour=True,
                                      batch_size=batch_size, device=device, progress=False)
    base_curves = _with_behaviour(_geometry(model, zero_shot_prompts, base_states, [read], **geo),
                                  base_beh, zero_shot_prompts, seed, n_boot)

    cells = [(layer, float(s)) for layer in inject for s in scales]
    several = len(scales) > 1
    rows: list[dict] = []
    effects: list[dict] = []
    z = _bonferroni_z(len(cells))
    level = 1 - (1 - LEVEL) / len(cells)
    for layer, scale in tqdm(cells, desc="task vectors", disable=not progress, leave=False,
                             unit="cell"):
        iv = inject_task_vector(model, vectors[layer], layer, mode=mode, scale=scale,
                                positions=positions)
        states, beh = run_query(model, zero_shot_prompts, [read], behaviour=True,
                                interventions=[iv], batch_size=batch_size, device=device,
                                progress=False)
        curves = _with_behaviour(_geometry(model, zero_shot_prompts, states, [read], **geo), beh,
                                 zero_shot_prompts, seed, n_boot)
        condition = f"task_vector x{scale:g}" if several else "task_vector"
        extra = dict(layer=layer, scale=scale, read_layer=read)
        rows += _point_rows(curves, condition, **extra)
        for name, ref in (("zero_shot", base_curves), ("icl", icl_curves)):
            if scale == float(scales[0]):
                rows += _point_rows(ref, name, layer=layer, scale=math.nan, read_layer=read)
        for metric in curves.metrics:
            with np.errstate(invalid="ignore"):
                diff = curves.replicates[metric][:, 0] - base_curves.replicates[metric][:, 0]
                value = curves.values[metric][0] - base_curves.values[metric][0]
            diff = diff[np.isfinite(diff)]
            sd = float(np.std(diff)) if diff.size > 1 else math.nan
            effects.append(table_row(condition, metric, value, value - z * sd, value + z * sd,
                                     curves.n, layer=layer, scale=scale, level=level))
    settings = TaskVectorSettings(
        model=model_name(model), icl_prompts=icl_prompts.info(),
        zero_shot_prompts=zero_shot_prompts.info(), labels=tuple(icl_prompts.label_words),
        layers=tuple(inject), scales=tuple(float(s) for s in scales), mode=mode,
        positions=str(positions), read_layer=int(read), folds=int(folds), seed=int(seed),
        n_boot=int(n_boot), C=float(C))
    return ExperimentResult("task_vector", make_table(rows), settings,
                            tables={"effect": make_table(effects)})


def _with_behaviour(curves: GeometryCurves, behaviour: dict[str, np.ndarray], prompts: PromptSet,
                    seed: int, n_boot: int) -> GeometryCurves:
    """Add the behaviour metrics (per-prompt) with the same stratified resamples."""
    codes, _ = class_codes(prompts.gold.cpu().numpy(), None, "task_vector_experiment")
    weights = bootstrap_weights(codes, n_boot, seed)
    for name in BEHAVIOUR:
        per_prompt = behaviour[name][:, None]
        rows = weighted_means(per_prompt, weights)
        curves.values[name], curves.replicates[name] = rows[0], rows[1:]
        curves.per_prompt[name] = per_prompt
    return curves


def _point_rows(curves: GeometryCurves, condition: str, **extra) -> list[dict]:
    rows = []
    for metric in curves.metrics:
        low, high = curves.interval(metric)
        rows.append(table_row(condition, metric, curves.values[metric][0], low[0], high[0],
                              curves.n, **extra))
    return rows


def _bonferroni_z(m: int) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - LEVEL) / (2 * max(1, m))))


# --------------------------------------------------------------------------- head ablation


def head_ablation_geometry(
    model: HookedTransformer,
    prompts: PromptSet,
    heads: Mapping[str, object] | None = None,
    *,
    top_k: int | None = None,
    n_random: int = 5,
    mode: str = "zero",
    positions="all",
    layers: int | Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = N_BOOT,
    C: float = 1.0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Separability and alignment curves with head sets ablated, against the unablated
    curves and layer-matched random sets.

    Conditions: ``"clean"``; each named set (default ``"PTH"``: the top-``k``
    previous-token heads, ``"IH"``: the top-``k`` induction heads, from
    :func:`~icl_heads.detectors.token_detector_scores` on random repeated tokens, ``k`` = 3%
    of heads); and ``"random (<name>)"``: ``n_random`` sets with the same number of heads in
    each layer as the named set, never containing a head of any named set (from the nearest
    layers when a layer has too few others; seeded). A random condition's value is the mean
    over its sets; its interval comes from a two-level bootstrap (sets, then prompts), so it
    covers both. Every condition shares the probe folds and the prompt resamples.

    Args:
        heads: ``{name: heads}`` with heads as ``Head`` lists, ``(layer, head)`` pairs, a
            boolean mask or a ``HeadScores`` (its ``top(top_k)``; the map is kept in
            ``maps``). Default: PTH and IH as above.
        top_k: heads per set taken from a ``HeadScores`` (default 3% of heads, at least 1).
        n_random: random sets per named set.
        mode, positions: the ablation (:func:`~icl_heads.interventions.ablate`; default zero
            ablation at every position).
        layers, folds, seed, n_boot, C: as in :func:`layer_geometry`.

    Example::

        result = ih.head_ablation_geometry(model, prompts)
        result.plot(); result.tables["summary"]        # early / late span means

    Returns:
        :class:`~icl_heads.results.ExperimentResult` named ``"head_ablation_geometry"``:
        ``table`` (condition x layer x metric), ``tables["summary"]`` (each curve's mean
        over the early and late states, with intervals), ``tables["heads"]`` (every set's
        heads), ``maps`` (the detector maps the sets came from).
    """
    _check_model(model, "head_ablation_geometry")
    check_prompt_set(prompts, model=model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    chosen = check_state_layers(layers, L)
    _check_classes(prompts, folds, "head_ablation_geometry")
    n_random = check_int(n_random, "n_random", 0)
    k = check_top_k(top_k, L, H)
    positions = check_positions(positions)
    maps: dict[str, HeadScores] = {}
    if heads is None:
        detected = token_detector_scores(model, detectors=["previous_token", "induction"],
                                         seed=seed, progress=progress)
        heads = {"PTH": detected["previous_token"], "IH": detected["induction"]}
    if not isinstance(heads, Mapping) or not heads:
        raise TypeError(f"heads must be a dict {{name: heads}}, e.g. {{'PTH': [...], 'IH': "
                        f"[...]}}, got {type(heads).__name__}.")
    masks: dict[str, torch.Tensor] = {}
    for name, value in heads.items():
        if not isinstance(name, str) or not name or name == "clean" or name.startswith("random"):
            raise ValueError(f"Head-set names must be non-empty strings other than 'clean' and "
                             f"'random...', got {name!r}.")
        if isinstance(value, HeadScores):
            maps[name] = value
            value = value.top(k)
        masks[name] = heads_to_mask(value, L, H)
    excluded = torch.zeros(L, H, dtype=torch.bool)
    for mask in masks.values():
        excluded |= mask

    means = None
    if mode == "mean":
        means = activation_means(model, prompts, positions="query" if positions == "query"
                                 else "all", batch_size=batch_size, device=device,
                                 progress=False)
    geo = dict(folds=folds, seed=seed, n_boot=n_boot, C=C)

    def measure(mask: torch.Tensor | None) -> GeometryCurves:
        ivs = [] if mask is None else [ablate(model, mask, mode, positions, means=means,
                                              reference=prompts, seed=seed,
                                              batch_size=batch_size, device=device,
                                              progress=False)]
        states, _ = run_query(model, prompts, chosen, interventions=ivs,
                              batch_size=batch_size, device=device, progress=False)
        return _geometry(model, prompts, states, chosen, **geo)

    plan: list[tuple[str, int, torch.Tensor | None]] = [("clean", 0, None)]
    head_rows = []
    rng = np.random.default_rng(seed)
    for name, mask in masks.items():
        plan.append((name, 0, mask))
        head_rows += [{"condition": name, "set": 0, "layer": h.layer, "head": h.head}
                      for h in mask_to_heads(mask)]
        drawn = random_head_sets(model, mask, n_random, seed=rng, exclude=excluded)
        for s, random_set in enumerate(drawn):
            plan.append((f"random ({name})", s, heads_to_mask(random_set, L, H)))
            head_rows += [{"condition": f"random ({name})", "set": s, "layer": h.layer,
                           "head": h.head} for h in random_set]

    measured: dict[str, list[GeometryCurves]] = {}
    for condition, _, mask in tqdm(plan, desc="head ablations", disable=not progress,
                                   leave=False, unit="set"):
        measured.setdefault(condition, []).append(measure(mask))

    layer_spans = spans(chosen, L)
    rows, summary = [], []
    for condition, sets in measured.items():
        curves = sets[0] if len(sets) == 1 and not condition.startswith("random") else \
            _pool_sets(sets, seed)
        rows += _curve_rows(curves, condition)
        summary += _span_rows(curves, condition, layer_spans)
    settings = HeadAblationGeometrySettings(
        model=model_name(model), prompts=prompts.info(), labels=tuple(prompts.label_words),
        heads={name: tuple(str(h) for h in mask_to_heads(m)) for name, m in masks.items()},
        top_k=int(k), n_random=int(n_random), mode=mode, positions=str(positions),
        layers=tuple(chosen), folds=int(folds), seed=int(seed), n_boot=int(n_boot), C=float(C),
        early=tuple(layer_spans["early"]), late=tuple(layer_spans["late"]))
    return ExperimentResult("head_ablation_geometry", make_table(rows), settings, maps=maps,
                            tables={"summary": make_table(summary),
                                    "heads": pd.DataFrame(head_rows, columns=[
                                        "condition", "set", "layer", "head"])})


def _pool_sets(sets: list[GeometryCurves], seed: int) -> GeometryCurves:
    """Mean over random sets; replicates from a two-level bootstrap (resample the sets, then
    take each set's prompt-resample replicate)."""
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
        pooled.values[metric] = _nanmean(np.stack([s.values[metric] for s in sets]), axis=0)
        pooled.replicates[metric] = _nanmean(chosen, axis=1)
    return pooled


# --------------------------------------------------------------------------- reproduction

#: Sizes of the full and the quick reproduction (quick: CI smoke run).
FULL = dict(n=96, folds=5, n_random=5, n_boot=N_BOOT, detector_n=32, tv_layers=None,
            layers=None)
QUICK = dict(n=8, folds=2, n_random=1, n_boot=100, detector_n=4, tv_layers=2, layers=5)
EXPERIMENTS = ("layer_geometry_k0", "layer_geometry_k4", "task_vector", "head_ablation")


def reproduce_geometry(
    model: HookedTransformer | str,
    tasks: Sequence[str],
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    n: int | None = None,
    k: int = 4,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Run the geometry experiments for several tasks and save every result.

    For each task: :func:`layer_geometry` at ``k = 0`` and ``k`` (default 4), the
    task-vector layer sweep (:func:`task_vector_experiment`, ICL prompts into zero-shot
    prompts, replace, scale 1, every injection state), and :func:`head_ablation_geometry`
    (PTH / IH / random sets on the ``k``-shot prompts; the detector maps are computed once
    per model). Each result is saved to ``out_dir/<model name>/<task>/<experiment>/``; a
    cell whose ``result.json`` exists is loaded, not recomputed, so an interrupted run
    resumes.

    Args:
        model: a model, or a name for :func:`icl_heads.load_model`.
        tasks: built-in task names (``ih.builtin_tasks()``) or task files.
        quick: small sizes for a smoke run (8 prompts, 5 of the states, 2 folds, 1 random
            set, 2 injection layers, 100 resamples, 4 detector sequences); the full run
            uses 96 prompts, every state, 5 folds, 5 random sets, every injection layer,
            1000 resamples and 32 detector sequences.
        n: prompts per set (overrides the size of ``quick``).
        batch_size, device: passed to every experiment (and ``device`` to the detectors).

    Example::

        ih.reproduce_geometry(ih.load_model(), ["sentiment", "topic"], "results/geometry")

    Returns:
        One row per cell: ``model, task, experiment, path, status`` (``"computed"`` or
        ``"loaded"``), ``seconds``.
    """
    from ..models import load_model
    from ..tasks import load_task

    if isinstance(model, str):
        model = load_model(model)
    _check_model(model, "reproduce_geometry")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    size = dict(QUICK if quick else FULL)
    if n is not None:
        size["n"] = check_int(n, "n", 2)
    root = Path(out_dir) / safe_name(model_name(model) or "model")
    L = model.cfg.n_layers
    tv_layers = states = None
    if size["tv_layers"] is not None:
        tv_layers = sorted({int(round(x)) for x in np.linspace(0, L - 1, size["tv_layers"])})
    if size["layers"] is not None:
        states = sorted({int(round(x)) for x in np.linspace(0, L, size["layers"])})
    detectors = None
    records = []
    for task_name in tasks:
        task = load_task(task_name)
        zero = build_prompts(model, task, k=0, n=size["n"], seed=seed)
        icl = build_prompts(model, task, k=k, n=size["n"], seed=seed)
        geo = dict(folds=size["folds"], seed=seed, n_boot=size["n_boot"], progress=progress,
                   batch_size=batch_size, device=device)
        for experiment in EXPERIMENTS:
            path = root / safe_name(task.name) / experiment
            start = time.perf_counter()
            if (path / "result.json").is_file():
                ExperimentResult.load(path)
                status = "loaded"
            else:
                log.info("geometry: %s / %s / %s", model_name(model), task.name, experiment)
                if experiment == "layer_geometry_k0":
                    result = layer_geometry(model, zero, states, **geo)
                elif experiment == "layer_geometry_k4":
                    result = layer_geometry(model, icl, states, **geo)
                elif experiment == "task_vector":
                    result = task_vector_experiment(model, icl, zero, layers=tv_layers, **geo)
                else:
                    if detectors is None:
                        detectors = token_detector_scores(
                            model, detectors=["previous_token", "induction"],
                            n=size["detector_n"], seed=seed, device=device, progress=progress)
                    heads = {"PTH": detectors["previous_token"], "IH": detectors["induction"]}
                    result = head_ablation_geometry(model, icl, heads, layers=states,
                                                    n_random=size["n_random"], **geo)
                result.save(path)
                status = "computed"
            records.append({"model": model_name(model), "task": task.name,
                            "experiment": experiment, "path": str(path), "status": status,
                            "seconds": time.perf_counter() - start})
            if status == "computed":
                _log_timing(root / "timings.csv", records[-1], quick)
    return pd.DataFrame(records)


def _log_timing(path: Path, record: dict, quick: bool) -> None:
    """Append a computed cell's wall time to ``<out_dir>/<model>/timings.csv``."""
    row = pd.DataFrame([{"task": record["task"], "experiment": record["experiment"],
                         "seconds": round(record["seconds"], 1), "quick": bool(quick),
                         "threads": torch.get_num_threads(),
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}])
    path.parent.mkdir(parents=True, exist_ok=True)
    row.to_csv(path, mode="a", header=not path.is_file(), index=False)


# --------------------------------------------------------------------------- verdicts

CLAIMS = (
    ("order", "Separability rises in early layers, alignment in later ones",
     f"onset of {ALIGNMENT} minus onset of {SEPARABILITY} (k=4; onset = first state at "
     f"{ONSET_FRACTION:.0%} of the maximum)", "0", "> 0"),
    ("icl", "ICL (k > 0) raises alignment more than separability",
     "late-state mean of [Δ logit_lens_accuracy − Δ probe_accuracy], Δ = k=4 minus k=0 "
     "(paired by query)", "0", "> 0"),
    ("pth", "PTH ablation lowers early separability",
     f"early-state mean of {SEPARABILITY} with the PTH ablated", "random (PTH)", "< random"),
    ("ih", "IH ablation lowers late alignment",
     f"late-state mean of {ALIGNMENT} with the IH ablated", "random (IH)", "< random"),
    ("tv", "Task vectors raise alignment",
     f"largest change of the final-state {ALIGNMENT} of zero-shot prompts over injection "
     "layers (Bonferroni interval)", "0", "> 0"),
)


def _verdict(value: float, low: float, high: float, reference: float, direction: int) -> str:
    """``holds`` when the interval excludes the reference on the predicted side, ``does not
    hold`` when it excludes it on the other side, else ``unclear``."""
    if any(math.isnan(x) for x in (value, low, high, reference)):
        return "unclear"
    if direction > 0:
        return "holds" if low > reference else "does not hold" if high < reference else "unclear"
    return "holds" if high < reference else "does not hold" if low > reference else "unclear"


def _load_cells(results_root: Path) -> dict[tuple[str, str], dict[str, ExperimentResult]]:
    cells: dict[tuple[str, str], dict[str, ExperimentResult]] = {}
    for meta in sorted(results_root.glob("*/*/*/result.json")):
        directory = meta.parent
        model, task, experiment = directory.parts[-3:]
        cells.setdefault((model, task), {})[experiment] = ExperimentResult.load(directory)
    return cells


def _icl_effect(k0: ExperimentResult, k4: ExperimentResult, seed: int = 0
                ) -> tuple[float, float, float, int]:
    """Late-state mean over prompts of ``(Δ logit-lens correct) − (Δ probe correct)``,
    ``Δ`` = k=4 minus k=0, paired by query when both sets have the same queries."""
    n_layers = _n_layers(k4)
    late = spans(sorted(set(k4.tables["per_prompt"]["layer"])), n_layers)["late"]
    wide = []
    for result in (k0, k4):
        frame = result.tables["per_prompt"]
        frame = frame[frame["layer"].isin(late)]
        wide.append(frame.groupby("prompt").agg(
            query=("query_example", "first"), lens=("logit_lens_accuracy", "mean"),
            probe=("probe_accuracy", "mean")))
    a, b = wide
    if len(a) == len(b) and (a["query"].to_numpy() == b["query"].to_numpy()).all():
        diff = (b["lens"] - a["lens"]) - (b["probe"] - a["probe"])
        return mean_ci(diff.to_numpy(), seed=seed)
    rng = np.random.default_rng(seed)
    da = (a["lens"] - a["probe"]).to_numpy()
    db = (b["lens"] - b["probe"]).to_numpy()
    point = float(db.mean() - da.mean())
    boots = (db[rng.integers(0, len(db), (N_BOOT, len(db)))].mean(1)
             - da[rng.integers(0, len(da), (N_BOOT, len(da)))].mean(1))
    low, high = np.quantile(boots, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return point, float(low), float(high), min(len(da), len(db))


def _n_layers(result: ExperimentResult) -> int:
    """The model's block count, from a layer-geometry result (its largest possible state)."""
    layers = result.settings.layers
    return max(layers) if layers else 0


def geometry_verdicts(results_root: str | Path) -> pd.DataFrame:
    """The verdict on each claim, per model and task, computed from saved results only.

    Returns:
        One row per model x task x claim: ``model, task, claim, statement, value, ci_low,
        ci_high, reference, verdict`` (``holds`` / ``does not hold`` / ``unclear``: the
        interval excludes the reference value on the predicted side / on the other side /
        does not exclude it).
    """
    rows = []
    for (model, task), cells in _load_cells(Path(results_root)).items():
        for key, statement, _, _, _ in CLAIMS:
            value = low = high = reference = math.nan
            direction = 1
            try:
                if key == "order":
                    onset = cells["layer_geometry_k4"].tables["onset"]
                    row = onset[onset["metric"] == f"{ALIGNMENT} - {SEPARABILITY}"].iloc[0]
                    value, low, high, reference = row.value, row.ci_low, row.ci_high, 0.0
                elif key == "icl":
                    value, low, high, _ = _icl_effect(cells["layer_geometry_k0"],
                                                      cells["layer_geometry_k4"])
                    reference = 0.0
                elif key in ("pth", "ih"):
                    name, metric, span = (("PTH", SEPARABILITY, "early") if key == "pth"
                                          else ("IH", ALIGNMENT, "late"))
                    summary = cells["head_ablation"].tables["summary"]
                    pick = summary[(summary["metric"] == metric) & (summary["span"] == span)]
                    mine = pick[pick["condition"] == name].iloc[0]
                    rand = pick[pick["condition"] == f"random ({name})"].iloc[0]
                    value, low, high = mine.value, mine.ci_low, mine.ci_high
                    reference, direction = rand.value, -1
                else:
                    effect = cells["task_vector"].tables["effect"]
                    effect = effect[effect["metric"] == ALIGNMENT]
                    best = effect.loc[effect["value"].idxmax()]
                    value, low, high, reference = best.value, best.ci_low, best.ci_high, 0.0
            except (KeyError, IndexError, ValueError):
                pass
            rows.append({"model": model, "task": task, "claim": key, "statement": statement,
                         "value": value, "ci_low": low, "ci_high": high,
                         "reference": reference,
                         "verdict": _verdict(value, low, high, reference, direction)})
    return pd.DataFrame(rows)


def _model_verdict(verdicts: Sequence[str]) -> str:
    """A model's verdict over its tasks: ``holds`` if it holds on every task, ``does not
    hold`` if it holds on none and fails on at least one, else ``unclear``."""
    verdicts = list(verdicts)
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if verdicts and not any(v == "holds" for v in verdicts) and "does not hold" in verdicts:
        return "does not hold"
    return "unclear"


# --------------------------------------------------------------------------- results page

_CURVE_METRICS = ("probe_accuracy", "fisher_ratio", "mean_diff_cosine", "logit_lens_accuracy",
                  "top_singular_cosine", "effective_dim", "task_subspace_alignment",
                  "label_rotation")
_TV_METRICS = ("accuracy", "label_space_rate", "probe_accuracy", "mean_diff_cosine",
               "logit_lens_accuracy", "task_subspace_alignment")
_ABLATION_METRICS = ("probe_accuracy", "fisher_ratio", "mean_diff_cosine",
                     "logit_lens_accuracy")


def _figure(result: ExperimentResult, metrics: Sequence[str], title: str, path: Path) -> Path:
    table = result.table[result.table["metric"].isin(metrics)]
    sub = ExperimentResult(result.name, table, result.settings)
    fig = sub.plot(title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", div_id=path.stem)
    return path


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _ci(value: float, low: float, high: float) -> str:
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def write_geometry_page(
    results_root: str | Path,
    page_path: str | Path,
    figure_dir: str | Path,
    *,
    command: str | None = None,
) -> Path:
    """Write the geometry results page from saved results only (every model found under
    ``results_root/<model>/<task>/<experiment>/``).

    The page holds the curves (standalone HTML figures in ``figure_dir``, written with
    ``include_plotlyjs="directory"`` and embedded by relative links), the settings, the key
    numbers (the first state where separability and alignment reach
    :data:`~icl_heads.geometry.ONSET_FRACTION` of their maximum, per task and model), and the
    verdict on each claim per model (:func:`geometry_verdicts`).

    Returns:
        The page's path.
    """
    results_root, page_path, figure_dir = Path(results_root), Path(page_path), Path(figure_dir)
    command = command or ("icl-heads reproduce --models default gemma-3-270m --experiments "
                          "geometry --pages --no-reports")
    cells = _load_cells(results_root)
    if not cells:
        raise FileNotFoundError(f"write_geometry_page: no saved results under "
                                f"{str(results_root)!r} (run reproduce_geometry first).")
    verdicts = geometry_verdicts(results_root)
    models = sorted({m for m, _ in cells})
    rel = Path(_relpath(figure_dir, page_path.parent))
    out = ["# Hidden-state geometry: separability, alignment, task vectors, PTH and IH", "",
           f"Generated by `{command}` from the saved results in "
           f"`{results_root}` (`write_geometry_page` reads only those; do not edit by hand).",
           "", "The geometry paper (Yang et al. 2025, arXiv 2505.18752) explains in-context "
           "classification by two properties of the query hidden states: **separability** "
           "(can the classes be told apart?) rising in early layers and **alignment** (does "
           "the class structure point along the label unembeddings?) rising in later layers; "
           "previous-token heads (PTH) drive the first, induction heads (IH) and task vectors "
           "the second. Definitions: `docs/methods.md` and `icl_heads/geometry.py`. State `i` "
           "is the residual stream at the query after `i` blocks (0 = embeddings).", ""]

    out += ["## Verdicts", "",
            "Each claim is tested by one statistic with a 95% bootstrap interval (task "
            "vectors: Bonferroni-adjusted over the injection layers). **holds**: the interval "
            "excludes the reference value on the predicted side; **does not hold**: it "
            "excludes it on the other side; **unclear**: it does not exclude it. A model's "
            "verdict is *holds* when the claim holds on every task, *does not hold* when it "
            "holds on none and fails on at least one, else *unclear*. A verdict says whether "
            "an effect can be told from the reference, not whether it is large: read the "
            "value beside it. Nothing was tuned to make a claim hold.", ""]
    header = "| claim | statistic | reference | " + " | ".join(models) + " |"
    out += [header, "|" + "---|" * (3 + len(models))]
    for key, statement, statistic, reference, _ in CLAIMS:
        cells_md = []
        for model in models:
            sub = verdicts[(verdicts["model"] == model) & (verdicts["claim"] == key)]
            detail = ", ".join(f"{t}: {v}" for t, v in zip(sub["task"], sub["verdict"]))
            cells_md.append(f"**{_model_verdict(sub['verdict'])}** ({detail})")
        out.append(f"| {statement} | {statistic} | {reference} | " + " | ".join(cells_md) + " |")
    out += ["", "Per task (value [95% interval] against the reference):", "",
            "| model | task | claim | value [interval] | reference | verdict |",
            "|---|---|---|---|---|---|"]
    for row in verdicts.itertuples():
        out.append(f"| {row.model} | {row.task} | {row.claim} | "
                   f"{_ci(row.value, row.ci_low, row.ci_high)} | {_fmt(row.reference)} | "
                   f"{row.verdict} |")

    out += ["", "## Key numbers: where the curves rise", "",
            f"The first state where each curve reaches {ONSET_FRACTION:.0%} of its maximum "
            "(95% bootstrap interval), and the curve's maximum. Separability: "
            f"`{SEPARABILITY}`; alignment: `{ALIGNMENT}` (and the logit-lens accuracy).", "",
            "| model | task | k | blocks | separability onset | alignment onset | logit-lens "
            "onset | max probe accuracy | max cosine | max logit-lens accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, task), results in sorted(cells.items()):
        for name in ("layer_geometry_k0", "layer_geometry_k4"):
            if name not in results:
                continue
            result = results[name]
            onset = result.tables["onset"].set_index("metric")
            table = result.table

            def peak(metric: str, table=table) -> str:
                return _fmt(table[table["metric"] == metric]["value"].max())

            def on(metric: str, onset=onset) -> str:
                if metric not in onset.index:
                    return "–"
                r = onset.loc[metric]
                return _ci(r["value"], r["ci_low"], r["ci_high"])

            out.append(f"| {model} | {task} | {result.settings.prompts.k} | "
                       f"{_n_layers(result)} | {on(SEPARABILITY)} | {on(ALIGNMENT)} | "
                       f"{on('logit_lens_accuracy')} | {peak(SEPARABILITY)} | "
                       f"{peak(ALIGNMENT)} | {peak('logit_lens_accuracy')} |")

    for model in models:
        out += ["", f"## {model}", ""]
        if model.lower().startswith("gemma"):
            out += ["On Gemma 3 the heads' summed output passes through a norm after attention "
                    "before it joins the residual stream, so zero-ablating a head also changes "
                    "how that norm scales the other heads of its layer.", ""]
        for (m, task), results in sorted(cells.items()):
            if m != model:
                continue
            results = {name: results[name] for name in EXPERIMENTS if name in results}
            out += [f"### {task}", ""]
            # one flat directory, so every figure shares one plotly.min.js
            stem = f"{safe_name(model)}__{safe_name(task)}__"
            figures = []
            if "layer_geometry_k0" in results and "layer_geometry_k4" in results:
                both = pd.concat([results["layer_geometry_k0"].table,
                                  results["layer_geometry_k4"].table], ignore_index=True)
                combined = ExperimentResult("layer_geometry", both,
                                            results["layer_geometry_k4"].settings)
                _figure(combined, _CURVE_METRICS, f"{model} / {task}: query-state geometry by "
                        "layer, k=0 vs k=4", figure_dir / f"{stem}curves.html")
                figures.append((f"{stem}curves.html", "Separability and alignment by layer (k=0 vs "
                                "k=4), with the TR/TL steering geometry (task-subspace "
                                "alignment, rotation toward the gold label)", 2200))
            if "task_vector" in results:
                _figure(results["task_vector"], _TV_METRICS, f"{model} / {task}: task vector "
                        "injected into zero-shot prompts, by injection state",
                        figure_dir / f"{stem}task_vector.html")
                figures.append((f"{stem}task_vector.html", "Task-vector layer sweep (final-state "
                                "geometry and behaviour of zero-shot prompts; zero-shot and "
                                "ICL as reference lines)", 1650))
            if "head_ablation" in results:
                _figure(results["head_ablation"], _ABLATION_METRICS, f"{model} / {task}: PTH / "
                        "IH / layer-matched random ablations", figure_dir / f"{stem}head_ablation.html")
                figures.append((f"{stem}head_ablation.html", "Curves with the top PTH / IH ablated, "
                                "and layer-matched random sets", 1150))
            for file, caption, height in figures:
                out += [f"**{caption}** ([open]({(rel / file).as_posix()}))", "",
                        f'<iframe src="{(rel / file).as_posix()}" width="100%" '
                        f'height="{height}" style="border:none"></iframe>', ""]
            out += _settings_md(results)

    timing_rows = []
    for model in models:
        path = results_root / model / "timings.csv"
        if path.is_file():
            log_ = pd.read_csv(path)
            log_ = log_[~log_["quick"].astype(bool)].drop_duplicates(["task", "experiment"],
                                                                     keep="last")
            if log_.empty:
                continue
            timing_rows.append(f"| {model} | {len(log_)} | {log_['seconds'].sum() / 60:.1f} | "
                               f"{int(log_['threads'].max())} | {log_['finished'].min()} .. "
                               f"{log_['finished'].max()} |")
    if timing_rows:
        out += ["", "## Wall time", "", "As recorded by `reproduce_geometry` "
                "(`<model>/timings.csv`; cells computed, not loaded), on 2 CPU cores shared with "
                "other jobs:", "", "| model | cells | minutes | torch threads | finished |",
                "|---|---|---|---|---|", *timing_rows]
    out += ["", "## How to reproduce", "", "```bash",
            command, "```", "",
            "Cells whose `result.json` exists are loaded, not recomputed; delete a cell's "
            "directory to recompute it. `--quick` runs a small smoke version.", ""]
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text("\n".join(out), encoding="utf-8")
    return page_path


def _settings_md(results: Mapping[str, ExperimentResult]) -> list[str]:
    lines = ["<details><summary>Settings</summary>", ""]
    for name, result in results.items():
        s = result.settings
        if name.startswith("layer_geometry"):
            p = s.prompts
            lines.append(f"- `{name}`: {p.n} prompts, k={p.k}, seed={p.seed}, labels "
                         f"{list(s.labels)}; probe: {s.folds}-fold, C={s.C}; {s.n_boot} "
                         f"resamples; states {min(s.layers)}..{max(s.layers)}.")
        elif name == "task_vector":
            lines.append(f"- `task_vector`: {s.icl_prompts.n} ICL prompts (k={s.icl_prompts.k}) "
                         f"-> {s.zero_shot_prompts.n} zero-shot prompts; mode={s.mode}, "
                         f"scales={list(s.scales)}, positions={s.positions}, injection states "
                         f"{list(s.layers)}, read at state {s.read_layer}; {s.folds}-fold "
                         f"probe; {s.n_boot} resamples.")
        elif name == "head_ablation":
            heads = "; ".join(f"{k}: {', '.join(v)}" for k, v in s.heads.items())
            lines.append(f"- `head_ablation`: {s.prompts.n} prompts (k={s.prompts.k}); "
                         f"{s.mode} ablation at {s.positions} positions; top_k={s.top_k} "
                         f"({heads}); {s.n_random} layer-matched random sets per set; early "
                         f"states {_range(s.early)}, late {_range(s.late)}; {s.folds}-fold "
                         f"probe; {s.n_boot} resamples.")
    return lines + ["", "</details>", ""]


def _range(layers: Sequence[int]) -> str:
    return f"{min(layers)}..{max(layers)}" if layers else "none"


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())
