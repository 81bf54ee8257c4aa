"""Replay a saved condition: rebuild its prompts and its intervention from the result's
settings alone (the prompts' identity and the intervention's JSON spec) and run it again.

A result that records its conditions as data (``settings.conditions``: ``{"condition",
"start", "query_only", "spec"}``; today :func:`~icl_heads.experiments.trtl.ablation_experiment`)
can be checked or extended on a fresh machine from its ``result.json``::

    from icl_heads.experiments.replay import replay

    saved = ih.ExperimentResult.load("results/trtl/smollm2-135m-instruct/sentiment/ablation")
    again = replay(saved, model, "TR")            # the level rows of condition "TR"
    again.set_index("metric")["value"]            # equal to the saved level rows
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import pandas as pd
import torch

from ..backends import HookedTransformer
from ..interventions import from_spec
from ..last_token import Run, run_conditions
from ..prompts import PromptSet, build_prompts
from ..results import ExperimentResult, make_table
from ..settings import PromptInfo
from ..tasks import Task
from .kit import as_task, check_model, level_rows


def prompts_from_info(
    model: HookedTransformer, info: PromptInfo | Mapping, task: Task | str | None = None
) -> PromptSet:
    """The prompt set a result recorded (``prompts.info()``), built again:
    ``build_prompts(model, task, k, n, seed, perturbation)``. ``task`` defaults to the
    built-in task of that name (pass the :class:`~icl_heads.tasks.Task` for your own).

    Raises:
        ValueError: the rebuilt set is not the recorded one (another task file, another
            tokenizer, prompts of a held-out split): the message names the fields that
            differ.
    """
    if isinstance(info, Mapping):
        info = PromptInfo.from_dict({"kind": "PromptInfo", **dict(info)})
    task = as_task(task if task is not None else info.task)
    perturbation = None if info.perturbation == "gold" else info.perturbation
    prompts = build_prompts(model, task, info.k, info.n, info.seed, perturbation=perturbation)
    got = prompts.info()
    differ = [
        f
        for f in ("task", "k", "n", "seed", "perturbation", "tokenizer")
        if getattr(got, f) != getattr(info, f) and not (f == "tokenizer" and info.tokenizer is None)
    ]
    # the content too, where recorded: an edited task file, or a held-out split (same
    # recipe, other queries), rebuilds other prompts under the same recipe
    differ += [
        f
        for f in ("task_digest", "prompts_digest")
        if getattr(info, f) is not None and getattr(got, f) != getattr(info, f)
    ]
    if differ:
        raise ValueError(
            f"The prompts rebuilt for this model differ from the recorded ones in "
            f"{differ} (recorded {info}, rebuilt {got}); pass the task the result "
            "was made with (task=...) and a model with the same tokenizer."
        )
    return prompts


def _prompt_infos(spec: object) -> Iterator[dict]:
    """Every recorded prompt set inside a spec (means, donors, patch sources)."""
    if isinstance(spec, Mapping):
        if spec.get("kind") == "PromptInfo":
            yield dict(spec)
            return
        for value in spec.values():
            yield from _prompt_infos(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from _prompt_infos(value)


def replay(
    result: ExperimentResult,
    model: HookedTransformer,
    condition: str,
    *,
    task: Task | str | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Rerun one saved condition of ``result`` on ``model`` from its settings alone.

    The prompts, every prompt set the intervention's spec names (e.g. the reference prompts
    of mean-ablation means) and the background interventions are rebuilt; the condition
    runs through :func:`~icl_heads.last_token.run_conditions` from its recorded start layer,
    and its level rows are computed with the result's ``n_boot`` and ``seed``: on the same
    model they equal the saved ones.

    Args:
        condition: a key of ``result.settings.conditions`` (``"TR"``, or ``"random_TR#2"``
            for one random control set, whose saved levels are in
            ``tables["random_sets"]``).
        task: the task of the prompts when it is not a built-in one.

    Returns:
        The condition's ``kind="level"`` rows (``condition, metric, value, ci_low,
        ci_high, n``).

    Raises:
        ValueError: the result records no conditions as data, or not this one (the message
            lists those it has).
    """
    check_model(model, "replay")
    if not isinstance(result, ExperimentResult):
        raise TypeError(
            f"replay needs an ExperimentResult (ExperimentResult.load(path)), got "
            f"{type(result).__name__}."
        )
    plain = json.loads(json.dumps(result.settings.to_dict()))
    records = {r["condition"]: r for r in plain.get("conditions") or ()}
    if not records:
        raise ValueError(
            f"The {result.name!r} result records no conditions as data "
            "(settings.conditions); it was saved by an older version or by an "
            "experiment that does not replay."
        )
    if condition not in records:
        raise ValueError(f"No condition {condition!r} in this result; it has {sorted(records)}.")
    record = records[condition]
    prompts = prompts_from_info(model, plain["prompts"], task)
    background_specs = plain.get("intervention_specs") or []
    needed = {
        json.dumps(i, sort_keys=True): i for i in _prompt_infos([record["spec"], *background_specs])
    }
    sources = [prompts_from_info(model, info, task) for info in needed.values()]
    build = dict(prompts=sources, device=device, progress=progress)
    intervention = from_spec(model, record["spec"], **build)
    background = [from_spec(model, spec, **build) for spec in background_specs]
    measured, _ = run_conditions(
        model,
        prompts,
        {condition: Run((intervention,), record["start"])},
        query_only=bool(record["query_only"]),
        background=background,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="replay",
    )
    rows = level_rows(
        condition, measured[condition], n_boot=int(plain["n_boot"]), seed=int(plain["seed"])
    )
    return make_table(rows)
