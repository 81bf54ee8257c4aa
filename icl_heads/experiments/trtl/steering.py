"""Experiment 5 of the TR/TL paper: steer zero-shot or abstract-label prompts with the output
of a head set over ICL prompts (its task mean, or each prompt's own k-shot twin's: the
protocols of ``docs/methods.md``, "Steering protocols"); behaviour, continuous metrics and
the geometry of the query state."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ...attribution import label_unembeddings
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...checks import check_seed
from ...geometry import label_rotation, normalized_states, subspace_alignment
from ...heads import Head, HeadsLike
from ...hooks import Positions, check_interventions, check_positions
from ...interventions import compose, steer
from ...last_token import Run, run_conditions
from ...metrics import BEHAVIOUR, CONTINUOUS, behaviour_and_continuous
from ...prompts import PromptSet
from ...provenance import check_head_sets, check_same_task
from ...results import ExperimentResult, make_table, table_row
from ...settings import PromptInfo, Settings, describe_interventions, model_name, settings_value
from ...stats import N_BOOT, mean_ci
from ..kit import (
    BASELINE,
    Condition,
    chance_row,
    check_bool,
    check_boot,
    check_model,
    check_prompts,
    contrast_name,
    effect_rows,
    level_rows,
    matched_fraction,
    pool,
    post_attention_norm,
    random_name,
    spread,
)
from .find_heads import settings_heads
from .passes import mean_head_outputs, sets_for_experiment
from .query_matched import (
    VECTOR_TEXT,
    check_protocol,
    check_query_pairs,
    matched_spec,
    matched_steer,
    query_head_outputs,
)

#: The steering geometry of the final state (``docs/methods.md``, "Geometry of steering").
GEOMETRY = ("alignment", "rotation")


@dataclass(frozen=True)
class SteeringSettings(Settings):
    """How :func:`steering_experiment` was run (``source``/``target``: the source and
    target prompts)."""

    model: str | None
    source: PromptInfo
    target: PromptInfo
    labels: tuple[str, ...]
    heads: tuple
    alphas: tuple[float, ...]
    n_random: int
    layer_matched: bool
    random_like: tuple[str, ...]
    positions: str | tuple[int, ...]
    start_layer: int
    seed: int
    n_boot: int
    vector: str = VECTOR_TEXT["task_mean"]
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()
    #: The prompts the head sets were found on (the source prompts for ``heads=None``,
    #: those of ``trtl.head_sets(found)`` or of the maps given); ``None`` for head lists
    #: given by hand.
    heads_from: PromptInfo | None = None
    #: ``"task_mean"`` (one vector per head for every target prompt) or ``"query_matched"``
    #: (target prompt ``i`` gets source prompt ``i``'s own head outputs; same query).
    protocol: str = "task_mean"
    #: How a steered condition's intervention is recorded: its ``describe()`` line per
    #: set and alpha for ``"query_matched"`` (``to_spec()`` is ``{"kind": "opaque"}``: a
    #: per-prompt steer cannot be rebuilt by ``from_spec``); empty for ``"task_mean"``.
    steer_descriptions: tuple[str, ...] = ()
    #: ``"query_matched"``: every steered condition as data, ``{"condition", "alpha",
    #: "start", "query_only", "spec"}`` with spec ``{"kind": "query_matched_steer", "heads",
    #: "alpha", "source"}`` (the source prompts' identity), so
    #: :func:`~icl_heads.experiments.replay.replay` reruns it; empty for ``"task_mean"``.
    conditions: tuple = ()


def steering_experiment(
    model: HookedTransformer,
    source_prompts: PromptSet,
    target_prompts: PromptSet,
    heads: Mapping[str, HeadsLike] | None = None,
    alphas: Sequence[float] = (0, 0.5, 1, 2, 4),
    *,
    n_random: int = 5,
    layer_matched: bool = True,
    random_like: Sequence[str] | None = None,
    positions: Positions = "query",
    vectors: Float[Tensor, "layer head d_model"] | None = None,
    top_k: int | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    protocol: str = "task_mean",
) -> ExperimentResult:
    """Steer target prompts (zero-shot or abstract-label) with the output of a head set over
    ICL source prompts, and measure behaviour and the geometry of the query state.

    For a set ``S`` and strength ``alpha``, every head ``(l, h)`` of ``S`` adds
    ``alpha * mean_i a_i[l, h]`` (its mean output at the query over ``source_prompts``, in
    the residual stream) at its layer's attention output, at the query position of every
    target prompt (``ih.steer(model, v, head=(l, h), alpha=alpha)``, composed over the set):
    ``protocol="task_mean"`` (the default). ``protocol="query_matched"``: target prompt ``i``
    gets instead ``alpha * a_i[l, h]``, the head's output at the query of *its own* source
    prompt (source row ``i``, which must ask the same query: build both sets with the same
    ``n`` and ``seed``), so the vector can point each prompt toward its own gold label;
    random control sets get the same treatment (``docs/methods.md``, "Steering protocols").
    Geometry (``docs/methods.md``, "Geometry of steering"), on the state after the final
    norm's scale: ``alignment = ||P h|| / ||h||`` and ``rotation = cos(P h, u_{y*}) -
    mean_{y' != y*} cos(P h, u_{y'})`` (``geometry.subspace_alignment``,
    ``geometry.label_rotation``; ``P`` projects on the target's label subspace), for the final
    state (main table) and for the state after every block from the earliest steered layer on
    (``tables["geometry"]``, the final norm applied as a logit lens).

    All runs share one clean run of the target prompts; each re-runs only the last token
    from the earliest steered layer of all sets on (the baseline too, so ``alpha = 0``
    reproduces it exactly).

    Args:
        source_prompts: ICL prompts (with demonstrations) the vectors are averaged over.
        target_prompts: the prompts to steer (any perturbation), of the source prompts'
            task (another task's target is refused).
        heads: ``{"TR": ..., "TL": ...}``; ``None``: TR and TL heads of the source prompts.
            Maps scored on prompts and ``trtl.head_sets`` must come from this model and the
            source prompts' task (:func:`~icl_heads.provenance.check_head_sets`).
        alphas: steering strengths.
        n_random, layer_matched, random_like, seed: random control sets, as in
            :func:`~icl_heads.experiments.trtl.ablation_experiment`.
        positions: where the vectors are added (default ``"query"``).
        vectors: the heads' mean outputs over the source prompts, if already computed
            (:func:`~icl_heads.experiments.trtl.mean_head_outputs`; saves its forward pass;
            ``"task_mean"`` only).
        protocol: ``"task_mean"`` (default) or ``"query_matched"`` (``positions="query"``
            only; source and target pair row by row by query, else a ValueError).

    Table: ``baseline`` (``alpha = 0``) and, per alpha, each set and ``random_<set>`` x
    behaviour metrics (``accuracy`` overall, ``label_space_rate``, ``in_space_accuracy``,
    ``logit_diff``), ``alignment``, ``rotation``, then the continuous metrics
    ``label_mass`` and ``gold_margin`` (:data:`~icl_heads.metrics.CONTINUOUS`, from the same
    logits) (``kind="level"``), their ``delta_*`` vs the baseline (``"effect"``) and
    ``"<set> - random_<set>"`` (``"contrast"``); ``chance``.

    Example::

        zs = ih.build_prompts(model, task, k=0, n=64)
        res = trtl.steering_experiment(model, prompts, zs, {"TR": tr.top(), "TL": tl.top()})
        res.select(condition="TR", metric="label_space_rate")
    """
    check_model(model, "steering_experiment")
    check_prompts(model, source_prompts, "source_prompts", need_demos=True)
    check_prompts(model, target_prompts, "target_prompts")
    check_same_task(
        source_prompts,
        target_prompts,
        fn="steering_experiment",
        a_name="source_prompts",
        b_name="target_prompts",
        fix="Build the target prompts from the source prompts' task, e.g. "
        "build_prompts(model, task, k=0, n=64).",
    )
    check_head_sets(heads, model, source_prompts, fn="steering_experiment")
    protocol = check_protocol(protocol)
    alphas = _check_alphas(alphas)
    seed, n_boot = check_seed(seed), check_boot(n_boot)
    check_bool(layer_matched, "layer_matched")
    positions = check_positions(positions)
    pairs = None
    if protocol == "query_matched":
        if positions != "query":
            raise ValueError(
                f"protocol='query_matched' adds each prompt's own head outputs at the query; "
                f"positions={positions!r} is not supported (use positions='query')."
            )
        if vectors is not None:
            raise ValueError(
                "vectors= holds task-mean vectors, which protocol='query_matched' does not "
                "use (it takes each source prompt's own head outputs); drop vectors=."
            )
        pairs = check_query_pairs(source_prompts, target_prompts)
    interventions = check_interventions(interventions, model)
    heads_from, sets = sets_for_experiment(
        model,
        source_prompts,
        heads,
        top_k=top_k,
        n_random=n_random,
        random_like=random_like,
        layer_matched=layer_matched,
        seed=seed,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    named, controls, conditions = sets.named, sets.controls, sets.conditions
    n_random, random_like = sets.n_random, sets.random_like
    L = model.cfg.n_layers
    used = [h.layer for c in conditions for h in c.heads]
    start = min(used) if used else L - 1
    records: list[dict] = []
    if protocol == "query_matched":
        runs, descriptions = _matched_runs(
            model,
            source_prompts,
            conditions,
            alphas,
            pairs,
            start,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
        )
        records = [
            {
                "condition": key,
                "alpha": alpha,
                "start": run.start,
                "query_only": True,
                "spec": matched_spec(run.interventions[0]),
            }
            for (key, alpha), run in runs.items()
            if run.interventions
        ]
    else:
        descriptions = ()
        vectors = _check_vectors(model, vectors)
        if vectors is None:
            vectors = mean_head_outputs(
                model,
                source_prompts,
                batch_size=batch_size,
                device=device,
                interventions=interventions,
                progress=progress,
            )
        runs = {}
        for c in conditions:
            for alpha in alphas:
                steers = [
                    steer(model, vectors[h.layer, h.head], head=h, alpha=alpha, positions=positions)
                    for h in c.heads
                ]
                runs[(c.key, alpha)] = Run((compose(*steers),) if steers else (), start)
    state_layers = list(range(start, L))
    measured, states = run_conditions(
        model,
        target_prompts,
        runs,
        measure=behaviour_and_continuous,
        query_only=positions == "query",
        state_layers=state_layers,
        baseline_start=start,
        background=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="steering",
    )
    label_dirs = label_unembeddings(model, target_prompts.label_token_ids).float().cpu()
    gold = target_prompts.gold.cpu()
    per: dict = {}
    for key, values in measured.items():
        normed = normalized_states(model, states[key]).float().cpu()  # [n, layers, d]
        align = subspace_alignment(normed, label_dirs)
        rot = label_rotation(normed, label_dirs, gold)
        per[key] = {
            **values,
            "alignment": align[:, -1],
            "rotation": rot[:, -1],
            "_alignment_layers": align,
            "_rotation_layers": rot,
        }
    rows, geo_rows, random_rows = _rows(
        named, controls, per, target_prompts, alphas, state_layers, n_boot=n_boot, seed=seed
    )
    settings = SteeringSettings(
        model=model_name(model),
        source=source_prompts.info(),
        target=target_prompts.info(),
        labels=tuple(target_prompts.label_words),
        heads=settings_heads(named),
        alphas=alphas,
        n_random=n_random,
        layer_matched=layer_matched,
        random_like=random_like,
        positions=positions,
        start_layer=start,
        seed=seed,
        n_boot=n_boot,
        post_attention_norm=post_attention_norm(model),
        interventions=describe_interventions(interventions),
        heads_from=heads_from,
        vector=VECTOR_TEXT[protocol],
        protocol=protocol,
        steer_descriptions=descriptions,
        conditions=settings_value(records),
    )
    tables = {"geometry": make_table(geo_rows), "random_sets": make_table(random_rows)}
    return ExperimentResult("steering", make_table(rows), settings, tables=tables)


def _matched_runs(
    model: HookedTransformer,
    source_prompts: PromptSet,
    conditions: Sequence[Condition],
    alphas: tuple[float, ...],
    pairs: Tensor,
    start: int,
    **collect,
) -> tuple[dict, tuple[str, ...]]:
    """The query-matched runs: one forward pass over the source prompts for the outputs of
    every head any set uses, then one :class:`~.query_matched.MatchedSteer` per set and
    alpha; with each run's ``describe()`` line (set, alpha: description)."""
    heads = sorted({h for c in conditions for h in c.heads})
    column = {h: j for j, h in enumerate(heads)}
    outputs = (
        query_head_outputs(model, source_prompts, heads, **collect)
        if heads
        else torch.zeros(len(source_prompts), 0, model.cfg.d_model)
    )
    info = source_prompts.info()
    runs, descriptions = {}, []
    for c in conditions:
        for alpha in alphas:
            if not c.heads:
                runs[(c.key, alpha)] = Run((), start)
                continue
            iv = matched_steer(
                model,
                outputs,
                c.heads,
                pairs,
                alpha=alpha,
                source=info,
                columns=[column[h] for h in c.heads],
            )
            runs[(c.key, alpha)] = Run((iv,), start)
            descriptions.append(f"{c.key}, alpha={alpha:g}: {iv.describe()}")
    return runs, tuple(descriptions)


def _check_alphas(alphas: object) -> tuple[float, ...]:
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence) or not alphas:
        raise TypeError(f"alphas must be a non-empty list of numbers, got {alphas!r}.")
    out = []
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, numbers.Real):
            raise TypeError(f"alphas must be numbers, got {a!r} in {list(alphas)}.")
        if not math.isfinite(a):
            raise ValueError(f"alphas must be finite numbers, got {a!r} in {list(alphas)}.")
        out.append(float(a))
    if len(set(out)) != len(out):
        raise ValueError(f"alphas repeats a value: {list(alphas)}.")
    return tuple(out)


def _check_vectors(model: HookedTransformer, vectors: object) -> Tensor | None:
    if vectors is None:
        return None
    want = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model)
    if not isinstance(vectors, Tensor) or tuple(vectors.shape) != want:
        raise ValueError(
            f"vectors must be a [n_layers, n_heads, d_model] = {list(want)} tensor "
            "(mean_head_outputs(model, source_prompts)), got "
            f"{getattr(vectors, 'shape', type(vectors).__name__)}."
        )
    return vectors.detach().float().cpu()


def _geometry_rows(
    condition: str,
    values: Mapping[str, Tensor],
    layers: Sequence[int],
    *,
    n_boot: int,
    seed: int,
    alpha: float,
) -> list[dict]:
    """The geometry of the state after each block of ``layers`` (mean over prompts)."""
    rows = []
    for metric in GEOMETRY:
        per_layer = values[f"_{metric}_layers"]
        for j, layer in enumerate(layers):
            v, lo, hi, n = mean_ci(per_layer[:, j], n_boot=n_boot, seed=seed)
            rows.append(table_row(condition, metric, v, lo, hi, n, alpha=alpha, layer=layer))
    return rows


def _rows(
    named: Mapping[str, list[Head]],
    controls: Sequence[Condition],
    per: Mapping,
    target_prompts: PromptSet,
    alphas: tuple[float, ...],
    state_layers: Sequence[int],
    *,
    n_boot: int,
    seed: int,
) -> tuple[list[dict], list[dict], list[dict]]:
    """The main table's rows, the geometry rows (per layer) and the random sets' rows."""
    conditions = [Condition(name, tuple(hs)) for name, hs in named.items()]
    # the continuous metrics come last, so the rows of the other metrics keep their order
    metrics = (*BEHAVIOUR, *GEOMETRY, *CONTINUOUS)
    base = per[BASELINE]
    rows = level_rows(BASELINE, base, n_boot=n_boot, seed=seed, metrics=metrics, alpha=0.0)
    rows.append(chance_row(target_prompts, alpha=0.0))
    geo_rows = _geometry_rows(BASELINE, base, state_layers, n_boot=n_boot, seed=seed, alpha=0.0)
    random_rows = []
    for alpha in alphas:
        for c in conditions:
            here = per[(c.key, alpha)]
            rows += level_rows(c.name, here, n_boot=n_boot, seed=seed, metrics=metrics, alpha=alpha)
            rows += effect_rows(
                c.name, here, base, n_boot=n_boot, seed=seed, metrics=metrics, alpha=alpha
            )
            geo_rows += _geometry_rows(
                c.name, here, state_layers, n_boot=n_boot, seed=seed, alpha=alpha
            )
            mine = [r for r in controls if r.control_of == c.name]
            if not mine:
                continue
            per_set = [per[(r.key, alpha)] for r in mine]
            pooled = pool(per_set, (*metrics, "_alignment_layers", "_rotation_layers"))
            name = random_name(c.name)
            for row in level_rows(
                name, pooled, n_boot=n_boot, seed=seed, metrics=metrics, alpha=alpha
            ):
                row.update(spread(per_set, row["metric"]))
                rows.append(row)
            rows += effect_rows(
                name, pooled, base, n_boot=n_boot, seed=seed, metrics=metrics, alpha=alpha
            )
            rows += effect_rows(
                contrast_name(c.name, name),
                here,
                pooled,
                n_boot=n_boot,
                seed=seed,
                kind="contrast",
                metrics=metrics,
                alpha=alpha,
            )
            geo_rows += _geometry_rows(
                name, pooled, state_layers, n_boot=n_boot, seed=seed, alpha=alpha
            )
            for r, values in zip(mine, per_set):
                for row in level_rows(
                    r.key, values, n_boot=n_boot, seed=seed, metrics=metrics, alpha=alpha
                ):
                    row.update(
                        set=c.name,
                        index=r.index,
                        heads=r.label,
                        layer_matched_fraction=matched_fraction(named[c.name], r.heads),
                    )
                    random_rows.append(row)
    return rows, geo_rows, random_rows
