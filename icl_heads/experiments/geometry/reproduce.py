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
from ...checks import check_int, check_seed
from ...detectors import token_detector_scores
from ...models import load_model
from ...outputs import check_output_dir, write_file
from ...prompts import build_prompts
from ...results import safe_name
from ...settings import model_name
from ...stats import N_BOOT
from ...tasks import Task
from ..cells import cell_record, cell_request, cell_table, check_cells, run_cell
from ..kit import as_task, check_bool, check_model
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
    """

    n: int
    folds: int
    n_random: int
    n_boot: int
    n_sequences: int
    tv_layers: int | None
    layers: int | None


#: Sizes of the full and the quick reproduction (quick: CI smoke run).
FULL = Preset(n=96, folds=5, n_random=5, n_boot=N_BOOT, n_sequences=32, tv_layers=None, layers=None)
QUICK = Preset(n=8, folds=2, n_random=1, n_boot=100, n_sequences=4, tv_layers=2, layers=5)
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
    batch_size: int = 16,
    device: str | torch.device | None = None,
    rerun_stale: bool = False,
) -> pd.DataFrame:
    """Run the geometry experiments for several tasks and save every result.

    For each task: :func:`layer_geometry` at ``k = 0`` and ``k`` (default 4), the
    task-vector layer sweep (:func:`task_vector_experiment`, ICL prompts into zero-shot
    prompts, replace, scale 1, every injection state), and :func:`head_ablation_geometry`
    (PTH / IH / random sets on the ``k``-shot prompts; the detector maps are computed once
    per model). Each result is saved to ``out_dir/<model name>/<task>/<experiment>/`` with
    the request that defines it (:func:`cell_requests`). An interrupted run resumes
    (:func:`~icl_heads.experiments.cells.run_cell`): a saved cell that verifies and was
    made with the same request is loaded, not recomputed; a damaged or incomplete one is
    recomputed (logged); a stale one (another request: other ``n``, ``k``, ``seed``,
    preset sizes) stops the run before anything is computed, unless ``rerun_stale=True``.

    Args:
        model: a model, or a name for :func:`icl_heads.load_model`.
        tasks: built-in task names (``ih.builtin_tasks()``) or task files.
        quick: small sizes for a smoke run (:data:`QUICK`: 8 prompts, 5 of the states, 2
            folds, 1 random set, 2 injection layers, 100 resamples, 4 detector sequences);
            the full run (:data:`FULL`) uses 96 prompts, every state, 5 folds, 5 random
            sets, every injection layer, 1000 resamples and 32 detector sequences.
        n: prompts per set (overrides the size of ``quick``).
        batch_size, device: passed to every experiment (and ``device`` to the detectors).
        rerun_stale: recompute saved cells that were made with another request (default:
            refuse them with a ValueError naming the fields that differ).

    Example::

        ih.reproduce_geometry(ih.load_model(), ["sentiment", "topic"], "results/geometry")

    Returns:
        One row per cell (:func:`~icl_heads.experiments.kit.cell_table`): ``model, task,
        experiment, path, status`` (``"computed"`` or ``"loaded"``), ``seconds``.
    """
    if isinstance(model, str):
        model = load_model(model)
    check_model(model, "reproduce_geometry")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    check_bool(quick, "quick")
    check_bool(rerun_stale, "rerun_stale")
    preset = QUICK if quick else FULL
    size = preset.n if n is None else check_int(n, "n", 2)
    k = check_int(k, "k", 1)
    seed = check_seed(seed)
    name = model_name(model)
    root = check_output_dir(out_dir, what="reproduce_geometry: out_dir") / safe_name(
        name or "model"
    )
    L = model.cfg.n_layers
    tv_layers, states = _spaced(preset.tv_layers, L - 1), _spaced(preset.layers, L)
    task_objs = [as_task(t) for t in tasks]
    requests = {t.name: cell_requests(model, t, preset, n=size, k=k, seed=seed) for t in task_objs}
    check_cells(
        [
            (root / safe_name(t.name) / experiment, request)
            for t in task_objs
            for experiment, request in requests[t.name].items()
        ],
        rerun_stale=rerun_stale,
    )
    detectors: dict = {}
    records = []
    for task in task_objs:
        zero = build_prompts(model, task, k=0, n=size, seed=seed)
        icl = build_prompts(model, task, k=k, n=size, seed=seed)
        geo = dict(
            folds=preset.folds,
            seed=seed,
            n_boot=preset.n_boot,
            progress=progress,
            batch_size=batch_size,
            device=device,
        )

        def head_sets() -> dict:
            if not detectors:
                detectors.update(
                    token_detector_scores(
                        model,
                        detectors=["previous_token", "induction"],
                        n_sequences=preset.n_sequences,
                        seed=seed,
                        device=device,
                        progress=progress,
                    )
                )
            return {"PTH": detectors["previous_token"], "IH": detectors["induction"]}

        makers = {
            "layer_geometry_k0": lambda zero=zero, geo=geo: layer_geometry(
                model, zero, states, **geo
            ),
            "layer_geometry_k4": lambda icl=icl, geo=geo: layer_geometry(model, icl, states, **geo),
            "task_vector": lambda icl=icl, zero=zero, geo=geo: task_vector_experiment(
                model, icl, zero, layers=tv_layers, **geo
            ),
            "head_ablation": lambda icl=icl, geo=geo, head_sets=head_sets: head_ablation_geometry(
                model, icl, head_sets(), layers=states, n_random=preset.n_random, **geo
            ),
        }
        for experiment in EXPERIMENTS:
            path = root / safe_name(task.name) / experiment
            _, status, seconds = run_cell(
                path,
                makers[experiment],
                request=requests[task.name][experiment],
                rerun_stale=rerun_stale,
            )
            records.append(cell_record(name, task.name, experiment, path, status, seconds))
            if status == "computed":
                _log_timing(root / "timings.csv", records[-1], quick)
    return cell_table(records)


def cell_requests(
    model: HookedTransformer | str, task: Task, preset: Preset, *, n: int, k: int, seed: int
) -> dict[str, dict]:
    """The request of each cell of one task (:func:`~icl_heads.experiments.cells.cell_request`): the model, the task and its content hash, ``n``, ``seed``, ``n_boot``
    and ``folds`` for every cell, and per cell the rest of what it computes:
    ``layer_geometry_k0``: ``k=0``, the measured states ``layers``; ``layer_geometry_k4``:
    ``k`` and ``layers``; ``task_vector``: ``k`` and the injection states ``tv_layers``;
    ``head_ablation``: ``k``, ``layers``, ``n_random`` and the detectors' ``n_sequences``.
    ``layers``/``tv_layers`` are the preset's (``None``: every one; an int: that many,
    evenly spaced).

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
