"""The geometry reproduction grid: every experiment for several tasks, each result saved
(:func:`reproduce_geometry`, resumable)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...backends import HookedTransformer
from ...batching import BatchSize
from ...checks import check_int, check_seed
from ...detectors import token_detector_scores
from ...interventions import ABLATION_MODES
from ...models import load_model
from ...outputs import check_output_dir, write_file
from ...prompts import build_prompts
from ...results import safe_name
from ...settings import model_name
from ...stats import N_BOOT
from ...tasks import Task
from ..cells import cell_record, cell_request, cell_table, check_cells, run_cell
from ..kit import as_task, check_bool, check_model
from ..splits import TaskSplit, heldout_split, split_prompts
from .head_ablation import head_ablation_geometry
from .layer_geometry import layer_geometry
from .task_vectors import task_vector_experiment


@dataclass(frozen=True)
class Preset:
    """The sizes of a reproduction.

    Attributes:
        n: prompts per set.
        folds: probe folds.
        n_random: random sets per named head set.
        n_boot: bootstrap resamples.
        n_sequences: random sequences that find the PTH and IH heads.
        tv_layers: injection states of the task-vector sweep (``None``: every one; an int:
            that many, evenly spaced).
        layers: states measured (``None``: every one; an int: that many, evenly spaced).
        n_seeds: prompt seeds (``seed, seed + 1, ...``), one grid each, in
            ``<out_dir>/seed<s>/`` when there are several.
    """

    n: int
    folds: int
    n_random: int
    n_boot: int
    n_sequences: int
    tv_layers: int | None
    layers: int | None
    n_seeds: int = 1


#: Sizes of the full and the quick reproduction (quick: CI smoke run). Full (issue 18): 256
#: prompts per set, 3 prompt seeds.
FULL = Preset(
    n=256,
    folds=5,
    n_random=5,
    n_boot=N_BOOT,
    n_sequences=32,
    tv_layers=None,
    layers=None,
    n_seeds=3,
)
QUICK = Preset(n=8, folds=2, n_random=1, n_boot=100, n_sequences=4, tv_layers=2, layers=5)
#: The sizes of the first saved results (96 prompts, one seed).
FIRST = Preset(
    n=96, folds=5, n_random=5, n_boot=N_BOOT, n_sequences=32, tv_layers=None, layers=None
)


@dataclass(frozen=True)
class Design:
    """How the geometry grid's experiments are designed (``docs/methods.md``, "Held-out
    selection, TL normalisation and ablation modes").

    Attributes:
        heldout, split_fraction: held-out selection: the task vector comes from ICL prompts
            of the *selection* queries and is injected into zero-shot prompts of the
            *evaluation* queries; the head ablation runs on evaluation prompts with its
            means (and donors) from the selection prompts (``heldout_split(task,
            split_fraction, seed)``). The layer-geometry cells select nothing (their probes
            cross-validate) and run on the usual prompts.
        sensitivity_mode: the ablation mode run beside zero ablation in ``head_ablation``
            (``None``: none).
    """

    heldout: bool
    split_fraction: float
    sensitivity_mode: str | None


#: The grid's design (issue 18): held-out task vectors and ablation means, mean ablation as
#: the sensitivity rows of the zero-ablation main rows.
MAIN = Design(heldout=True, split_fraction=0.5, sensitivity_mode="mean")
#: The design of the first saved results: every cell on the same prompts, zero ablation only.
LEGACY = Design(heldout=False, split_fraction=0.5, sensitivity_mode=None)
#: The cells of each task, in the order they run.
EXPERIMENTS = ("layer_geometry_k0", "layer_geometry_k4", "task_vector", "head_ablation")


def _spaced(count: int | None, top: int) -> list[int] | None:
    """``count`` evenly spaced integers in ``0 .. top`` (``None``: all)."""
    if count is None:
        return None
    return sorted({int(round(x)) for x in np.linspace(0, top, count)})


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
    n_seeds: int | None = None,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    rerun_stale: bool = False,
    design: Design | None = None,
) -> pd.DataFrame:
    """Run the geometry experiments for several tasks and save every result.

    For each task: :func:`layer_geometry` at ``k = 0`` and ``k`` (default 4), the
    task-vector layer sweep (:func:`task_vector_experiment`, ICL prompts into zero-shot
    prompts, replace, scale 1, every injection state), and :func:`head_ablation_geometry`
    (PTH / IH / random sets on the ``k``-shot prompts; the detector maps are computed once
    per model), following ``design`` (default :data:`MAIN`: held-out task vectors and
    ablation means, mean ablation as sensitivity rows beside zero ablation; :data:`LEGACY`:
    the first saved results' design). Each result is saved to
    ``out_dir/<model name>/<task>/<experiment>/`` (one seed) or
    ``out_dir/seed<s>/<model name>/<task>/<experiment>/`` (each of several seeds,
    ``n_seeds``; the full preset runs 3), with the request that defines it
    (:func:`cell_requests`). An interrupted run resumes
    (:func:`~icl_heads.experiments.cells.run_cell`): a saved cell that verifies and was
    made with the same request is loaded, not recomputed; a damaged or incomplete one is
    recomputed (logged); a stale one (another request: other ``n``, ``k``, ``seed``,
    preset sizes) stops the run before anything is computed, unless ``rerun_stale=True``.

    Args:
        model: a model, or a name for :func:`icl_heads.load_model`.
        tasks: built-in task names (``ih.builtin_tasks()``) or task files.
        quick: small sizes for a smoke run (:data:`QUICK`: 8 prompts, 5 of the states, 2
            folds, 1 random set, 2 injection layers, 100 resamples, 4 detector sequences);
            the full run (:data:`FULL`) uses 256 prompts, 3 prompt seeds, every state, 5
            folds, 5 random sets, every injection layer, 1000 resamples and 32 detector
            sequences.
        seed: the first prompt seed (seeds ``seed .. seed + n_seeds - 1``).
        n: prompts per set (overrides the size of ``quick``).
        n_seeds: prompt seeds (overrides the preset's).
        design: :data:`MAIN` (default), :data:`LEGACY` or your own :class:`Design`.
        batch_size, device: passed to every experiment (and ``device`` to the detectors).
        rerun_stale: recompute saved cells that were made with another request (default:
            refuse them with a ValueError naming the fields that differ).

    Example::

        ih.reproduce_geometry(ih.load_model(), ["sentiment", "topic"], "results/geometry")

    Returns:
        One row per cell (:func:`~icl_heads.experiments.kit.cell_table`): ``model, task,
        experiment, path, status`` (``"computed"`` or ``"loaded"``), ``seconds``, ``seed``.
    """
    if isinstance(model, str):
        model = load_model(model)
    check_model(model, "reproduce_geometry")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    check_bool(quick, "quick")
    check_bool(rerun_stale, "rerun_stale")
    design = _check_design(design)
    preset = QUICK if quick else FULL
    size = preset.n if n is None else check_int(n, "n", 2)
    k = check_int(k, "k", 1)
    seed = check_seed(seed)
    n_seeds = check_int(n_seeds if n_seeds is not None else preset.n_seeds, "n_seeds", 1)
    name = model_name(model)
    out_dir = check_output_dir(out_dir, what="reproduce_geometry: out_dir")
    seeds = list(range(seed, seed + n_seeds))
    roots = {
        s: (out_dir if n_seeds == 1 else out_dir / f"seed{s}") / safe_name(name or "model")
        for s in seeds
    }
    L = model.cfg.n_layers
    tv_layers, states = _spaced(preset.tv_layers, L - 1), _spaced(preset.layers, L)
    task_objs = [as_task(t) for t in tasks]
    splits = {
        (s, t.name): heldout_split(t, design.split_fraction, s) if design.heldout else None
        for s in seeds
        for t in task_objs
    }
    requests = {
        (s, t.name): cell_requests(
            model,
            t,
            preset,
            n=size,
            k=k,
            seed=s,
            split=splits[s, t.name],
            sensitivity_mode=design.sensitivity_mode,
        )
        for s in seeds
        for t in task_objs
    }
    check_cells(
        [
            (roots[s] / safe_name(t.name) / experiment, request)
            for s in seeds
            for t in task_objs
            for experiment, request in requests[s, t.name].items()
        ],
        rerun_stale=rerun_stale,
    )
    detectors: dict = {}
    records = []
    seed_of: list[int] = []
    for s in seeds:
        for task in task_objs:
            split = splits[s, task.name]
            zero = build_prompts(model, task, k=0, n=size, seed=s)
            icl = build_prompts(model, task, k=k, n=size, seed=s)
            source, target, ablated, reference = icl, zero, icl, None
            if split is not None:
                part = dict(split=split)
                source = split_prompts(model, task, k, size, s, **part, part="selection")
                target = split_prompts(model, task, 0, size, s, **part, part="evaluation")
                ablated = split_prompts(model, task, k, size, s, **part, part="evaluation")
                reference = source
            geo = dict(
                folds=preset.folds,
                seed=s,
                n_boot=preset.n_boot,
                progress=progress,
                batch_size=batch_size,
                device=device,
            )
            ablation = dict(sensitivity_mode=design.sensitivity_mode, reference=reference)
            if design.sensitivity_mode is None and reference is None:
                ablation = {}  # the call of the first grid

            def head_sets(s: int = s) -> dict:
                if s not in detectors:
                    detectors[s] = token_detector_scores(
                        model,
                        detectors=["previous_token", "induction"],
                        n_sequences=preset.n_sequences,
                        seed=s,
                        device=device,
                        progress=progress,
                    )
                return {"PTH": detectors[s]["previous_token"], "IH": detectors[s]["induction"]}

            makers = {
                "layer_geometry_k0": lambda zero=zero, geo=geo: layer_geometry(
                    model, zero, states, **geo
                ),
                "layer_geometry_k4": lambda icl=icl, geo=geo: layer_geometry(
                    model, icl, states, **geo
                ),
                "task_vector": lambda source=source, target=target, geo=geo: task_vector_experiment(
                    model, source, target, layers=tv_layers, **geo
                ),
                "head_ablation": lambda ablated=ablated, geo=geo, head_sets=head_sets, ablation=(ablation): (
                    head_ablation_geometry(
                        model,
                        ablated,
                        head_sets(),
                        layers=states,
                        n_random=preset.n_random,
                        **ablation,
                        **geo,
                    )
                ),
            }
            for experiment in EXPERIMENTS:
                path = roots[s] / safe_name(task.name) / experiment
                _, status, seconds = run_cell(
                    path,
                    makers[experiment],
                    request=requests[s, task.name][experiment],
                    rerun_stale=rerun_stale,
                )
                records.append(cell_record(name, task.name, experiment, path, status, seconds))
                seed_of.append(s)
                if status == "computed":
                    _log_timing(roots[s] / "timings.csv", records[-1], quick)
    table = cell_table(records)
    table["seed"] = seed_of
    return table


def _check_design(design: Design | None) -> Design:
    """``design`` (default :data:`MAIN`), checked."""
    if design is None:
        return MAIN
    if not isinstance(design, Design):
        raise TypeError(
            f"design must be a geometry Design (MAIN, LEGACY or your own), got "
            f"{type(design).__name__}."
        )
    check_bool(design.heldout, "heldout")
    if design.sensitivity_mode is not None and (
        design.sensitivity_mode not in ABLATION_MODES or design.sensitivity_mode == "zero"
    ):
        raise ValueError(
            f"sensitivity_mode={design.sensitivity_mode!r}: the geometry grid's ablation mode "
            f"is 'zero'; choose None or another mode of {ABLATION_MODES}."
        )
    return design


def cell_requests(
    model: HookedTransformer | str,
    task: Task,
    preset: Preset,
    *,
    n: int,
    k: int,
    seed: int,
    split: TaskSplit | None = None,
    sensitivity_mode: str | None = None,
) -> dict[str, dict]:
    """The request of each cell of one task (:func:`~icl_heads.experiments.cells.cell_request`): the model, the task and its content hash, ``n``, ``seed``, ``n_boot``
    and ``folds`` for every cell, and per cell the rest of what it computes:
    ``layer_geometry_k0``: ``k=0``, the measured states ``layers``; ``layer_geometry_k4``:
    ``k`` and ``layers``; ``task_vector``: ``k`` and the injection states ``tv_layers``;
    ``head_ablation``: ``k``, ``layers``, ``n_random`` and the detectors' ``n_sequences``.
    ``layers``/``tv_layers`` are the preset's (``None``: every one; an int: that many,
    evenly spaced). Only where they differ from :data:`LEGACY`: ``heldout``
    (``{"fraction", "seed"}`` of ``split``; task_vector and head_ablation) and
    ``sensitivity_mode`` (head_ablation).

    Example::

        cell_requests(model, task, QUICK, n=8, k=4, seed=0)["task_vector"]
    """
    common = dict(n=n, seed=seed, n_boot=preset.n_boot, folds=preset.folds)
    extra = {
        "layer_geometry_k0": dict(k=0, layers=preset.layers),
        "layer_geometry_k4": dict(k=k, layers=preset.layers),
        "task_vector": dict(k=k, tv_layers=preset.tv_layers),
        "head_ablation": dict(
            k=k, layers=preset.layers, n_random=preset.n_random, n_sequences=preset.n_sequences
        ),
    }
    if split is not None:
        for e in ("task_vector", "head_ablation"):
            extra[e]["heldout"] = {"fraction": split.fraction, "seed": split.seed}
    if sensitivity_mode is not None:
        extra["head_ablation"]["sensitivity_mode"] = sensitivity_mode
    return {e: cell_request(model, task, e, **common, **extra[e]) for e in EXPERIMENTS}


def _log_timing(path: Path, record: dict, quick: bool) -> None:
    """Add a computed cell's wall time to ``<out_dir>/<model>/timings.csv`` (rewritten
    atomically; a line cut short by a killed run is dropped)."""
    row = pd.DataFrame(
        [
            {
                "task": record["task"],
                "experiment": record["experiment"],
                "seconds": round(record["seconds"], 1),
                "quick": bool(quick),
                "threads": torch.get_num_threads(),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old = old[: old.rfind("\n") + 1]
    new = row.to_csv(index=False, header=not old, lineterminator="\n")
    write_file(path, old + new)
