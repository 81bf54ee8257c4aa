"""Experiment 2 of the TR/TL paper: ablate each named head set and its random controls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ...activations import ActivationMeans, activation_means
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...checks import check_seed
from ...heads import Head, HeadsLike, heads_to_mask
from ...hooks import Positions, check_interventions, check_positions
from ...interventions import ablate
from ...last_token import Run, run_conditions
from ...metrics import BEHAVIOUR, CONTINUOUS, behaviour, behaviour_and_continuous
from ...prompts import PromptSet
from ...provenance import check_head_sets, check_means
from ...results import ExperimentResult, make_table
from ...settings import (
    PromptInfo,
    Settings,
    describe_interventions,
    intervention_specs,
    model_name,
    settings_value,
)
from ...stats import N_BOOT
from ..kit import (
    BASELINE,
    Condition,
    chance_row,
    check_ablation_modes,
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
from .passes import sets_for_experiment


@dataclass(frozen=True)
class AblationSettings(Settings):
    """How :func:`ablation_experiment` was run (``heads``: ``(name, ("L3H5", ...))``)."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    heads: tuple
    n_random: int
    layer_matched: bool
    random_like: tuple[str, ...]
    mode: str
    positions: str | tuple[int, ...]
    means: PromptInfo | None
    seed: int
    n_boot: int
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()
    #: Every ablated condition as data: ``{"condition", "start", "query_only", "spec"}``
    #: with the ablation's JSON spec (``to_spec()``), so
    #: :func:`~icl_heads.experiments.replay.replay` reruns it from the saved result.
    conditions: tuple = ()
    #: The background interventions as JSON specs (``interventions`` describes them).
    intervention_specs: tuple = ()
    #: The prompts the head sets were found on (these prompts for ``heads=None``, those of
    #: ``trtl.head_sets(found)`` or of the maps given); ``None`` for head lists given by hand.
    heads_from: PromptInfo | None = None
    #: The other ablation mode run as a sensitivity analysis (conditions ``"<set> (<mode>)"``),
    #: or ``None``.
    sensitivity_mode: str | None = None
    #: Whether the table has the continuous metrics (``label_mass``, ``gold_margin``)
    #: beside the behaviour metrics.
    continuous: bool = False


def ablation_experiment(
    model: HookedTransformer,
    prompts: PromptSet,
    heads: Mapping[str, HeadsLike] | None = None,
    *,
    n_random: int = 5,
    layer_matched: bool = True,
    mode: Literal["zero", "mean", "resample"] = "mean",
    positions: Positions = "all",
    sensitivity_mode: Literal["zero", "mean", "resample"] | None = None,
    continuous: bool = False,
    seed: int = 0,
    random_like: Sequence[str] | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    top_k: int | None = None,
    n_boot: int = N_BOOT,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """Ablate each named head set (and ``n_random`` seeded random sets of the same size per
    set) and measure accuracy, label-space rate, in-space accuracy and logit difference.

    All conditions share one clean run per group of prompts (the baseline); each ablated
    run re-runs only the layers from the set's earliest layer on (only the last token when
    ``positions="query"``; :func:`~icl_heads.last_token.run_conditions`). Mean ablation uses
    one :func:`~icl_heads.activation_means` over ``reference`` (default: these prompts) at
    the ablated ``positions`` (every real token for ``"all"``, the query for ``"query"``) for
    every set. Every condition is saved as data (``settings.conditions``: its start layer and
    the ablation's JSON spec), so :func:`~icl_heads.experiments.replay.replay` reruns it.

    Args:
        heads: ``{"TR": tr.top(), "TL": tl.top(), ...}`` (any head selection per name; an
            empty set is allowed and reproduces the baseline). ``None``: the TR and TL heads
            of these prompts (``tsla_scores``, ``top_k``).
        n_random: random control sets per named set (see
            :func:`~icl_heads.experiments.kit.random_controls`); they never contain a head
            of any named set.
        layer_matched: random heads in the same layers as the set's heads.
        mode, positions: as in :func:`~icl_heads.ablate` (default mean ablation at every
            position).
        sensitivity_mode: another ablation mode to run as a sensitivity analysis (default
            ``None``: none): every named set and random control is ablated that way too, on
            the same prompts and clean runs, giving conditions ``"<set> (<mode>)"`` and
            ``"random_<set> (<mode>)"`` with their effects and contrasts
            (``"TR (zero) - random_TR (zero)"``); the main rows are unchanged.
        continuous: also the continuous metrics (:data:`~icl_heads.metrics.CONTINUOUS`:
            ``label_mass``, the label tokens' probability mass, TR's continuous reading;
            ``gold_margin``, the gold logit over the best other label, TL's) from the same
            logits, after the behaviour metrics of every condition (levels, effects,
            contrasts, random sets); default ``False`` (the table of earlier versions).
        seed: seeds the random sets, resampling donors and the bootstrap.
        random_like: the sets that get random controls (default: every non-empty set;
            ``()`` for none).
        means, reference: mean-ablation values or the prompts they come from. ``means``
            (an :class:`~icl_heads.ActivationMeans`) must come from this model, at the
            ablated ``positions``, over ``reference`` when given, else over prompts of this
            task (:func:`~icl_heads.provenance.check_means`).
        interventions: background interventions, active in every run (baseline included).

    Table: ``baseline`` / each set / ``random_<set>`` x metrics (``kind="level"``, with
    ``heads``, ``set_sd``, ``set_min``, ``set_max``); ``delta_<metric>`` vs baseline
    (``"effect"``); ``"<set> - random_<set>"`` and ``"<set> - <other set>"`` contrasts of the
    same metrics (``"contrast"``); ``baseline`` x ``chance``. ``tables["random_sets"]``: each
    random set's heads, layer-matched fraction and levels.

    Example::

        res = trtl.ablation_experiment(model, prompts, {"TR": tr.top(), "TL": tl.top()})
        res.select(condition="TR - random_TR", metric="delta_label_space_rate")

    Raises:
        TypeError: a non-mapping ``heads``, a float seed. ValueError: a head set larger than
        the model or out of range, ``n_random=0`` with random sets requested, too few free
        heads for the random sets, a bad mode; a map or head sets of another model or (for
        maps scored on prompts, and the sets of ``trtl.head_sets``) another task; ``means``
        of another model, positions or task (:mod:`icl_heads.provenance`).
    """
    check_model(model, "ablation_experiment")
    check_prompts(model, prompts)
    seed, n_boot = check_seed(seed), check_boot(n_boot)
    check_bool(layer_matched, "layer_matched")
    check_bool(continuous, "continuous")
    metrics = (*BEHAVIOUR, *CONTINUOUS) if continuous else BEHAVIOUR
    check_ablation_modes(mode, sensitivity_mode)
    modes = (mode,) if sensitivity_mode is None else (mode, sensitivity_mode)
    positions = check_positions(positions)
    interventions = check_interventions(interventions, model)
    check_head_sets(heads, model, prompts, fn="ablation_experiment")
    if "mean" in modes:
        check_means(
            means,
            model,
            prompts,
            positions=positions,
            reference=reference,
            fn="ablation_experiment",
        )
    heads_from, sets = sets_for_experiment(
        model,
        prompts,
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
    L, H = model.cfg.n_layers, model.cfg.n_heads
    union = torch.zeros(L, H, dtype=torch.bool)
    for c in conditions:
        union |= heads_to_mask(list(c.heads), L, H)
    mean_info = None
    if "mean" in modes:
        if means is None:
            means = activation_means(
                model,
                reference if reference is not None else prompts,
                "z",
                positions=positions,
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
        mean_info = means.prompts if isinstance(means, ActivationMeans) else None
    elif means is not None:
        raise ValueError(f"means= is only used with mode='mean' (mode is {mode!r}).")
    runs = {}
    for m in modes:
        template = ablate(
            model,
            union,
            m,
            positions,
            means=means if m == "mean" else None,
            reference=(reference if reference is not None else prompts)
            if m == "resample"
            else None,
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        for c in conditions:
            if c.heads:
                mask = heads_to_mask(list(c.heads), L, H)
                key = c.key if m == mode else _mode_name(c.key, m)
                runs[key] = Run((template.with_mask(mask),), min(h.layer for h in c.heads))
    measured, _ = run_conditions(
        model,
        prompts,
        runs,
        measure=behaviour_and_continuous if continuous else behaviour,
        query_only=positions == "query",
        background=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="ablation",
    )
    base = measured[BASELINE]
    for c in conditions:
        if not c.heads:
            for m in modes:
                key = c.key if m == mode else _mode_name(c.key, m)
                measured[key] = {name: v.clone() for name, v in base.items()}

    rows, random_rows = _rows(
        named, controls, measured, prompts, n_boot=n_boot, seed=seed, metrics=metrics
    )
    if sensitivity_mode is not None:
        extra, extra_random = _rows(
            {_mode_name(k, sensitivity_mode): v for k, v in named.items()},
            [
                Condition(
                    _mode_name(c.name, sensitivity_mode),
                    c.heads,
                    _mode_name(c.control_of, sensitivity_mode),
                    c.index,
                )
                for c in controls
            ],
            measured,
            prompts,
            n_boot=n_boot,
            seed=seed,
            metrics=metrics,
        )
        rows += [r for r in extra if r["condition"] != BASELINE]
        random_rows += extra_random
    settings = AblationSettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        heads=settings_heads(named),
        n_random=n_random,
        layer_matched=layer_matched,
        random_like=random_like,
        mode=mode,
        positions=positions,
        means=mean_info,
        seed=seed,
        n_boot=n_boot,
        post_attention_norm=post_attention_norm(model),
        interventions=describe_interventions(interventions),
        conditions=settings_value(
            [
                {
                    "condition": key,
                    "start": run.start,
                    "query_only": positions == "query",
                    "spec": run.interventions[0].to_spec(),
                }
                for key, run in runs.items()
            ]
        ),
        intervention_specs=settings_value(list(intervention_specs(interventions))),
        heads_from=heads_from,
        sensitivity_mode=sensitivity_mode,
        continuous=continuous,
    )
    return ExperimentResult(
        "ablation", make_table(rows), settings, tables={"random_sets": make_table(random_rows)}
    )


def _mode_name(name: str, mode: str) -> str:
    """The condition name of set (or control key) ``name`` ablated in sensitivity mode
    ``mode``: ``"TR (zero)"``, ``"random_TR (zero)"``, ``"random_TR#2 (zero)"``."""
    if "#" in name:
        base, index = name.split("#", 1)
        return f"{base} ({mode})#{index}"
    return f"{name} ({mode})"


def _rows(
    named: Mapping[str, list[Head]],
    controls: Sequence[Condition],
    measured: Mapping[str, dict[str, Tensor]],
    prompts: PromptSet,
    *,
    n_boot: int,
    seed: int,
    metrics: Sequence[str] = BEHAVIOUR,
) -> tuple[list[dict], list[dict]]:
    """The main table's rows (levels, effects, contrasts) and the random sets' rows."""
    base = measured[BASELINE]
    conditions = [Condition(name, tuple(hs)) for name, hs in named.items()]
    common = dict(n_boot=n_boot, seed=seed, metrics=metrics)
    rows = level_rows(BASELINE, base, heads="", **common)
    rows.append(chance_row(prompts, heads=""))
    pooled = {}
    for c in conditions:
        rows += level_rows(c.name, measured[c.key], heads=c.label, **common)
        rows += effect_rows(c.name, measured[c.key], base, heads=c.label, **common)
        per_set = [measured[r.key] for r in controls if r.control_of == c.name]
        if per_set:
            pooled[c.name] = pool(per_set, metrics)
            name = random_name(c.name)
            for row in level_rows(name, pooled[c.name], heads="", **common):
                row.update(spread(per_set, row["metric"]))
                rows.append(row)
            rows += effect_rows(name, pooled[c.name], base, heads="", **common)
    for name in named:
        if name in pooled:
            rows += effect_rows(
                contrast_name(name, random_name(name)),
                measured[name],
                pooled[name],
                kind="contrast",
                heads="",
                **common,
            )
        for other in named:
            if other != name:
                rows += effect_rows(
                    contrast_name(name, other),
                    measured[name],
                    measured[other],
                    kind="contrast",
                    heads="",
                    **common,
                )
    random_rows = []
    for c in controls:
        for row in level_rows(c.key, measured[c.key], **common):
            row.update(
                set=c.control_of,
                index=c.index,
                heads=c.label,
                layer_matched_fraction=matched_fraction(named[c.control_of], c.heads),
            )
            random_rows.append(row)
    return rows, random_rows
