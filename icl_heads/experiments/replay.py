"""Replay a saved condition: rebuild its prompts and its intervention from the result's
settings alone (the prompts' identity and the intervention's JSON spec) and run it again.

A result that records its conditions as data (``settings.conditions``: ``{"condition",
"start", "query_only", "spec"}``; :func:`~icl_heads.experiments.trtl.ablation_experiment`,
and :func:`~icl_heads.experiments.trtl.steering_experiment` with
``protocol="query_matched"``, whose records also carry ``"alpha"``) can be checked or
extended on a fresh machine from its ``result.json``. Prompts of a held-out split are
rebuilt from the split the grid recorded in the cell's request (``request["heldout"]``) or
one passed as ``split=``::

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
from ..batching import BatchSize
from ..interventions import from_spec
from ..last_token import Run, run_conditions
from ..metrics import BEHAVIOUR, CONTINUOUS, behaviour, behaviour_and_continuous
from ..prompts import PromptSet, build_prompts
from ..results import ExperimentResult, make_table
from ..settings import PromptInfo
from ..tasks import Task
from .kit import as_task, check_model, level_rows
from .splits import PARTS, TaskSplit, heldout_split, split_prompts
from .trtl.query_matched import MATCHED_KIND, rebuild_matched_steer


def prompts_from_info(
    model: HookedTransformer,
    info: PromptInfo | Mapping,
    task: Task | str | None = None,
    *,
    split: TaskSplit | None = None,
) -> PromptSet:
    """The prompt set a result recorded (``prompts.info()``), built again:
    ``build_prompts(model, task, k, n, seed, perturbation)``. ``task`` defaults to the
    built-in task of that name (pass the :class:`~icl_heads.tasks.Task` for your own).
    With ``split`` (a :class:`~icl_heads.experiments.splits.TaskSplit`), a recorded set
    that is not the ``build_prompts`` one is looked for among the split's parts
    (:func:`~icl_heads.experiments.splits.split_prompts` with the same recipe), by its
    recorded ``prompts_digest``.

    Example::

        again = prompts_from_info(model, result.settings.prompts)

    Raises:
        ValueError: the rebuilt set is not the recorded one (another task file, another
            tokenizer, prompts of a held-out split without ``split``): the message names
            the fields that differ.
    """
    if isinstance(info, Mapping):
        info = PromptInfo.from_dict({"kind": "PromptInfo", **dict(info)})
    task = as_task(task if task is not None else info.task)
    perturbation = None if info.perturbation == "gold" else info.perturbation
    prompts = build_prompts(model, task, info.k, info.n, info.seed, perturbation=perturbation)
    if (
        split is not None
        and info.prompts_digest is not None
        and prompts.info().prompts_digest != info.prompts_digest
    ):
        for part in PARTS:
            held = split_prompts(
                model, task, info.k, info.n, info.seed, perturbation, split=split, part=part
            )
            if held.info().prompts_digest == info.prompts_digest:
                prompts = held
                break
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
    alpha: float | None = None,
    task: Task | str | None = None,
    split: TaskSplit | None = None,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Rerun one saved condition of ``result`` on ``model`` from its settings alone.

    The prompts, every prompt set the intervention's spec names (e.g. the reference prompts
    of mean-ablation means) and the background interventions are rebuilt; the condition
    runs through :func:`~icl_heads.last_token.run_conditions` from its recorded start layer,
    and its level rows are computed with the result's ``n_boot`` and ``seed``: on the same
    model they equal the saved ones. A query-matched steering result (records of kind
    ``"query_matched_steer"``) rebuilds the source prompts, their heads' outputs at the query
    and the row pairing, and steers the target prompts (``settings.target``).

    Args:
        condition: a key of ``result.settings.conditions`` (``"TR"``, or ``"random_TR#2"``
            for one random control set, whose saved levels are in
            ``tables["random_sets"]``).
        alpha: the steering strength of the condition (steering results, which record
            one condition per set and alpha; required there).
        task: the task of the prompts when it is not a built-in one.
        split: the held-out split of the prompts; default: the one in the cell's request
            (``result.request["heldout"]``, as the grids record it), if any.

    Example::

        replay(saved_steering, model, "TL", alpha=1.0)

    Returns:
        The condition's ``kind="level"`` rows (``condition, metric, value, ci_low,
        ci_high, n``): the behaviour metrics, then the continuous ones where the result
        has them (ablation ``continuous=True``, steering).

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
    plain = _with_request_digest(json.loads(json.dumps(result.settings.to_dict())), result)
    record = _record(result, plain, condition, alpha)
    if split is None:
        split = _request_split(result, task)
    target_info = plain["target"] if "target" in plain else plain["prompts"]
    prompts = prompts_from_info(model, target_info, task, split=split)
    background_specs = plain.get("intervention_specs") or []
    build = dict(device=device, progress=progress)
    background = [
        from_spec(model, spec, prompts=_sources(model, [spec], task, split), **build)
        for spec in background_specs
    ]
    spec = record["spec"]
    if spec.get("kind") == MATCHED_KIND:
        source = prompts_from_info(model, spec["source"], task, split=split)
        intervention = rebuild_matched_steer(
            model,
            spec,
            source,
            prompts,
            batch_size=batch_size,
            interventions=background,
            **build,
        )
    else:
        sources = _sources(model, [spec, *background_specs], task, split)
        intervention = from_spec(model, spec, prompts=sources, **build)
    continuous = bool(plain.get("continuous")) or result.name == "steering"
    measured, _ = run_conditions(
        model,
        prompts,
        {condition: Run((intervention,), record["start"])},
        measure=behaviour_and_continuous if continuous else behaviour,
        query_only=bool(record["query_only"]),
        background=background,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="replay",
    )
    rows = level_rows(
        condition,
        measured[condition],
        n_boot=int(plain["n_boot"]),
        seed=int(plain["seed"]),
        metrics=(*BEHAVIOUR, *CONTINUOUS) if continuous else BEHAVIOUR,
    )
    return make_table(rows)


def _record(result: ExperimentResult, plain: dict, condition: str, alpha: float | None) -> dict:
    """The saved record of ``condition`` (and ``alpha``, for steering results)."""
    records = plain.get("conditions") or ()
    if not records:
        raise ValueError(
            f"The {result.name!r} result records no conditions as data "
            "(settings.conditions); it was saved by an older version or by an "
            "experiment that does not replay (steering: protocol='query_matched' only)."
        )
    if any("alpha" in r for r in records):
        have = sorted({(r["condition"], r["alpha"]) for r in records})
        if alpha is None:
            raise ValueError(
                f"replay: the {result.name!r} result records one condition per alpha; pass "
                f"alpha= (it has {have[:6]}{' ...' if len(have) > 6 else ''})."
            )
        found = [r for r in records if r["condition"] == condition and float(r["alpha"]) == alpha]
        if not found:
            raise ValueError(
                f"No condition {condition!r} at alpha={alpha!r} in this result; it has "
                f"{have[:8]}{' ...' if len(have) > 8 else ''}."
            )
        return found[0]
    by_name = {r["condition"]: r for r in records}
    if condition not in by_name:
        raise ValueError(f"No condition {condition!r} in this result; it has {sorted(by_name)}.")
    return by_name[condition]


def _with_request_digest(plain: object, result: ExperimentResult) -> object:
    """``plain`` settings with the task digest of the cell's request filled into every
    recorded prompt set of that task that lacks one (cells saved before prompt sets recorded
    their task's digest): replaying such a cell on an edited task is then refused by
    :func:`prompts_from_info`, not run on other prompts."""
    request = result.request if isinstance(result.request, Mapping) else {}
    digest, name = request.get("task_digest"), request.get("task")
    if not isinstance(digest, str) or not isinstance(name, str):
        return plain
    if isinstance(plain, Mapping):
        out = {key: _with_request_digest(value, result) for key, value in plain.items()}
        if (
            out.get("kind") == "PromptInfo"
            and out.get("task") == name
            and not out.get("task_digest")
        ):
            out["task_digest"] = digest
        return out
    if isinstance(plain, list):
        return [_with_request_digest(value, result) for value in plain]
    return plain


def _request_split(result: ExperimentResult, task: Task | str | None) -> TaskSplit | None:
    """The held-out split a grid recorded in the cell's request, rebuilt (or ``None``)."""
    request = result.request if isinstance(result.request, Mapping) else {}
    held = request.get("heldout")
    if not isinstance(held, Mapping):
        return None
    the_task = as_task(task if task is not None else request.get("task"))
    return heldout_split(the_task, float(held["fraction"]), int(held["seed"]))


def _sources(
    model: HookedTransformer, specs: list, task: Task | str | None, split: TaskSplit | None
) -> list[PromptSet]:
    """Every prompt set the specs name (means, donors, patch sources), rebuilt."""
    needed = {json.dumps(i, sort_keys=True): i for i in _prompt_infos(specs)}
    return [prompts_from_info(model, info, task, split=split) for info in needed.values()]
