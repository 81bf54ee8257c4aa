"""Experiment 3 of the TR/TL paper: behaviour and TR/TL maps under input perturbations,
and how stable each map is against the gold-label map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...backends import HookedTransformer
from ...batching import BatchSize
from ...heads import HeadScores, check_top_k
from ...hooks import check_interventions
from ...metrics import BEHAVIOUR, behaviour
from ...prompts import PERTURBATIONS, PromptSet, build_prompts
from ...provenance import check_task_of, describe_prompts, same_prompts
from ...results import ExperimentResult, make_table, table_row
from ...settings import PromptInfo, Settings, describe_interventions, model_name
from ...stats import N_BOOT, correlation_ci, correlation_difference_ci, top_k_overlap_ci
from ...tasks import Task, builtin_tasks
from ..kit import (
    as_task,
    check_boot,
    check_model,
    check_prompts,
    level_rows,
    post_attention_norm,
)
from .passes import tsla_pass


@dataclass(frozen=True)
class PerturbationSettings(Settings):
    """How :func:`perturbation_experiment` was run (``task``, ``k``, ``n``, ``seed``: those
    of the gold prompts, from which every condition's prompts are built; ``prompts``: the
    gold prompts' full identity, ``None`` in results saved before it was recorded)."""

    model: str | None
    task: str
    k: int
    n: int
    seed: int
    perturbations: tuple[str, ...]
    labels: tuple[str, ...]
    top_k: int
    normalize: str
    apply_ln: bool
    n_boot: int
    post_attention_norm: bool = False
    interventions: tuple[str, ...] = ()
    prompts: PromptInfo | None = None


def perturbation_experiment(
    model: HookedTransformer,
    prompts: PromptSet,
    perturbations: Sequence[str] = PERTURBATIONS,
    *,
    task: Task | str | None = None,
    top_k: int | None = None,
    normalize: Literal["none", "norm", "tr"] = "none",
    apply_ln: bool = False,
    n_boot: int = N_BOOT,
    gold: ExperimentResult | None = None,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ExperimentResult:
    """Behaviour and TR/TL maps under input perturbations (Pan et al. 2023 style), and how
    stable each map is against the gold-label map.

    ``prompts`` are the gold prompts (``perturbation="gold"``). For each other perturbation
    (``"random_labels"``: demo labels drawn uniformly; ``"abstract_labels"``: label words
    replaced by unrelated tokens; ``"zero_shot"``: no demonstrations) the same queries are
    built with ``build_prompts(model, task, prompts.k, len(prompts), prompts.seed,
    perturbation)``; one forward pass per condition gives its TSLA maps (TSLA only needs the
    query, so zero-shot prompts get maps too) and behaviour.

    Table: per condition, the behaviour metrics and ``chance`` (``kind="level"``); for every
    condition but gold, its maps against the gold maps (``kind="stability"``,
    ``reference="gold"``): ``tr_spearman`` / ``tl_spearman`` (Spearman over heads with
    ``correlation_ci``), ``tr_overlap`` / ``tl_overlap`` (top-``k`` overlap; CI: bootstrap
    over each condition's prompts) and ``tr_minus_tl_spearman`` (paired bootstrap over heads:
    is TR more stable than TL?); and condition ``"gold (split half)"``: the same statistics
    between two halves of the gold prompts (each gold label split evenly;
    ``reference="other half"``), the reliability of a map from ``n/2`` prompts, a reference
    for the others.

    Args:
        prompts: the gold prompts, e.g. ``build_prompts(model, task, k=4, n=64, seed=0)``.
        perturbations: the conditions, ``"gold"`` among them.
        task: the task the prompts were built from (default ``load_task(prompts.task_name)``;
            pass it for a task that is not built in).
        gold: a :func:`~icl_heads.experiments.trtl.find_task_heads` result computed (not
            loaded) on ``prompts`` with the same ``normalize``, ``apply_ln`` and
            interventions: its maps and per-prompt behaviour are the gold condition's (the
            same numbers, one forward pass fewer).

    Example::

        prompts = ih.build_prompts(model, ih.load_task("sentiment"), k=4, n=64, seed=0)
        res = trtl.perturbation_experiment(model, prompts)
        res.select(metric="tr_spearman")

    Returns:
        :class:`ExperimentResult` ``"perturbation"``, maps ``"TR/<condition>"`` and
        ``"TL/<condition>"``; :class:`PerturbationSettings`.
    """
    check_model(model, "perturbation_experiment")
    check_prompts(model, prompts, need_demos=True)
    if prompts.perturbation != "gold":
        raise ValueError(
            f"perturbation_experiment needs the gold prompts, got prompts with perturbation="
            f"{prompts.perturbation!r}; build them with build_prompts(model, task, k, n, seed)."
        )
    if len(prompts) < 2 or len(_split_by_label(prompts.gold.cpu())[1]) == 0:
        raise ValueError(
            f"perturbation_experiment splits the gold prompts in two halves of the same "
            f"label balance, so some label needs >= 2 prompts; got {len(prompts)} prompt(s) "
            f"with labels {sorted(set(prompts.gold.tolist()))}. Build more prompts (larger n)."
        )
    task = _task_of(prompts, task)
    check_task_of(task, prompts, fn="perturbation_experiment")
    n_boot = check_boot(n_boot)
    perturbations = _check_perturbations(perturbations)
    k, n, seed = prompts.k, len(prompts), prompts.seed
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k, L, H)
    interventions = check_interventions(interventions, model)
    maps, rows = {}, []
    for p in tqdm(perturbations, desc="perturbations", disable=not progress, leave=False):
        here = prompts if p == "gold" else build_prompts(model, task, k, n, seed, perturbation=p)
        if here.query_examples != prompts.query_examples:
            raise ValueError(
                f"The {p!r} prompts built from task {task.name!r} do not ask the queries of "
                "the gold prompts; pass the task the gold prompts were built from (task=...)."
            )
        if p == "gold" and gold is not None:
            tr, tl, measured = _reused_gold(
                gold,
                here,
                model=model_name(model),
                normalize=normalize,
                apply_ln=apply_ln,
                interventions=interventions,
            )
        else:
            tr, tl, logits, _ = tsla_pass(
                model,
                here,
                top_k=top_k,
                normalize=normalize,
                apply_ln=apply_ln,
                batch_size=batch_size,
                device=device,
                interventions=interventions,
                progress=progress,
            )
            measured = behaviour(logits, here)
        maps[f"TR/{p}"], maps[f"TL/{p}"] = tr, tl
        rows += level_rows(p, measured, n_boot=n_boot, seed=seed)
        chance = 1.0 / here.n_labels
        rows.append(table_row(p, "chance", chance, chance, chance, n, kind="level"))
    for p in perturbations:
        rows += _stability_rows(p, maps, prompts.gold, top_k, n_boot=n_boot, seed=seed)
    settings = PerturbationSettings(
        model=model_name(model),
        task=task.name,
        k=k,
        n=n,
        seed=seed,
        perturbations=perturbations,
        labels=tuple(prompts.label_words),
        top_k=top_k,
        normalize=normalize,
        apply_ln=bool(apply_ln),
        n_boot=n_boot,
        post_attention_norm=post_attention_norm(model),
        interventions=describe_interventions(interventions),
        prompts=prompts.info(),
    )
    return ExperimentResult("perturbation", make_table(rows), settings, maps=maps)


def _task_of(prompts: PromptSet, task: object) -> Task:
    """The task the gold prompts were built from."""
    if task is not None:
        return as_task(task)
    if prompts.task_name not in builtin_tasks():
        raise ValueError(
            f"The prompts were built from task {prompts.task_name!r}, which is not built in; "
            "pass task=... (the Task the prompts were built from)."
        )
    return as_task(prompts.task_name)


def _check_perturbations(perturbations: object) -> tuple[str, ...]:
    if isinstance(perturbations, str) or not isinstance(perturbations, Sequence):
        raise TypeError(
            f"perturbations must be a list of names from {PERTURBATIONS}, got {perturbations!r}."
        )
    perturbations = tuple(perturbations)
    for p in perturbations:
        if p not in PERTURBATIONS:
            raise ValueError(f"Unknown perturbation {p!r}; choose from {PERTURBATIONS}.")
    if len(set(perturbations)) != len(perturbations):
        raise ValueError(f"perturbations repeats a condition: {list(perturbations)}.")
    if "gold" not in perturbations:
        raise ValueError(
            "perturbations must include 'gold': every map is compared with the gold-label map."
        )
    return perturbations


def _stability_rows(
    p: str, maps: dict[str, HeadScores], gold: Tensor, top_k: int, *, n_boot: int, seed: int
) -> list[dict]:
    """Condition ``p``'s maps against the gold maps (gold: one half against the other)."""
    if p == "gold":
        first, second = _split_by_label(gold)
        a = {s: maps[f"{s}/gold"].per_prompt[first] for s in ("TR", "TL")}
        b = {s: maps[f"{s}/gold"].per_prompt[second] for s in ("TR", "TL")}
        cond, reference = "gold (split half)", "other half"
    else:
        a = {s: maps[f"{s}/{p}"].per_prompt for s in ("TR", "TL")}
        b = {s: maps[f"{s}/gold"].per_prompt for s in ("TR", "TL")}
        cond, reference = p, "gold"
    mean_a = {s: torch.nanmean(v, 0) for s, v in a.items()}
    mean_b = {s: torch.nanmean(v, 0) for s, v in b.items()}
    rows = []
    for s in ("TR", "TL"):
        r, lo, hi, m = correlation_ci(
            mean_a[s], mean_b[s], method="spearman", n_boot=n_boot, seed=seed
        )
        rows.append(
            table_row(
                cond, f"{s.lower()}_spearman", r, lo, hi, m, kind="stability", reference=reference
            )
        )
        v, lo, hi, m = top_k_overlap_ci(a[s], b[s], top_k, paired=False, n_boot=n_boot, seed=seed)
        rows.append(
            table_row(
                cond, f"{s.lower()}_overlap", v, lo, hi, m, kind="stability", reference=reference
            )
        )
    v, lo, hi, m = correlation_difference_ci(
        mean_a["TR"], mean_b["TR"], mean_a["TL"], mean_b["TL"], n_boot=n_boot, seed=seed
    )
    rows.append(
        table_row(cond, "tr_minus_tl_spearman", v, lo, hi, m, kind="stability", reference=reference)
    )
    return rows


def _reused_gold(
    found: object,
    prompts: PromptSet,
    *,
    model: str | None,
    normalize: str,
    apply_ln: bool,
    interventions: Sequence,
) -> tuple[HeadScores, HeadScores, dict[str, Tensor]]:
    """The gold condition's maps and behaviour from a ``find_task_heads`` result, after
    checking that it was made on these prompts with these settings."""
    if not isinstance(found, ExperimentResult) or found.name != "find_task_heads":
        raise TypeError(f"gold must be a find_task_heads result, got {found!r:.80}.")
    s = found.settings
    mismatch = [
        what
        for what, ok in (
            ("prompts", same_prompts(s.prompts, prompts.info())),
            ("model", s.model is None or model is None or s.model == model),
            ("normalize", s.normalize == normalize),
            ("apply_ln", s.apply_ln == bool(apply_ln)),
            ("interventions", tuple(s.interventions) == describe_interventions(interventions)),
        )
        if not ok
    ]
    if mismatch:
        shown = (
            f" (gold: {describe_prompts(s.prompts)}; here: {describe_prompts(prompts.info())})"
            if "prompts" in mismatch
            else f" (gold: model {s.model!r}; here: model {model!r})"
            if "model" in mismatch
            else ""
        )
        raise ValueError(
            f"gold was made with other {', '.join(mismatch)} than this experiment's gold "
            f"condition (its prompts){shown}; pass the find_task_heads result of those "
            "prompts, or gold=None."
        )
    table = found.tables.get("per_prompt")
    tr, tl = found.maps["TR"], found.maps["TL"]
    if table is None or tr.per_prompt is None or tl.per_prompt is None:
        raise ValueError(
            "gold has no per-prompt maps or behaviour (a result loaded from disk keeps only "
            "the mean maps); pass a result computed in this session, or gold=None."
        )
    return tr, tl, {m: torch.tensor(table[m].to_numpy(), dtype=torch.float32) for m in BEHAVIOUR}


def _split_by_label(gold: Tensor) -> tuple[Tensor, Tensor]:
    """Two halves of the prompts with the same gold-label balance (alternate prompts of each
    label): on a binary task a head that favours one label has a TL score of opposite sign
    on the two labels, so halves with different balance would disagree for that reason."""
    first, second = [], []
    for label in torch.unique(gold).tolist():
        idx = (gold == label).nonzero().flatten().tolist()
        first += idx[0::2]
        second += idx[1::2]
    return torch.tensor(sorted(first)), torch.tensor(sorted(second))
