"""The TR/TL reproduction grid: every experiment on several tasks, one saved cell each,
resumable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...activations import ActivationMeans, activation_means
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...checks import check_int, check_seed
from ...heads import HeadScores
from ...models import load_model
from ...outputs import check_output_dir
from ...prompts import PromptSet, build_prompts
from ...results import ExperimentResult, safe_name
from ...settings import model_name
from ...tasks import Task
from ..cells import cell_record, cell_table, check_cells, run_cell
from ..kit import as_task, check_bool, check_boot, check_model, post_attention_norm
from ..splits import TaskSplit, heldout_split, split_prompts
from .ablation import ablation_experiment
from .correlation import correlation_experiment
from .find_heads import find_task_heads, head_sets
from .passes import mean_head_outputs
from .perturbation import perturbation_experiment
from .presets import EXPERIMENTS as EXPERIMENTS  # re-exported: the grid's names
from .presets import FIRST as FIRST
from .presets import (
    FULL,
    LEGACY,
    QUICK,
    Design,
    Preset,
    check_design,
    request_options,
    seed_root,
    steering_cells,
)
from .presets import cell_requests as cell_requests
from .reconciliation import reconciliation_experiment
from .steering import steering_experiment


def compact(result: ExperimentResult) -> ExperimentResult:
    """The result as a reproduction saves it: maps without per-prompt values (small files).

    Example::

        compact(result).save("results/trtl/model/sentiment/ablation")
    """
    maps = {
        k: HeadScores(
            m.scores,
            name=m.name,
            settings=m.settings,
            per_prompt=None,
            top_k=m.top_k,
            baseline=m.baseline,
        )
        for k, m in result.maps.items()
    }
    return ExperimentResult(
        result.name, result.table, result.settings, maps=maps, tables=result.tables
    )


def reproduce_trtl(
    model: HookedTransformer | str,
    tasks: Sequence[str | Task] = ("sentiment", "topic", "category"),
    out_dir: str | Path = "results/trtl",
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    k: int | None = None,
    n: int | None = None,
    n_random: int | None = None,
    n_boot: int | None = None,
    n_seeds: int | None = None,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    rerun_stale: bool = False,
    design: Design | None = None,
    tl_normalize: str | None = None,
    tl_floor: float | None = None,
    heldout: bool | None = None,
    split_fraction: float | None = None,
    sensitivity_mode: str | None = None,
) -> pd.DataFrame:
    """Run every TR/TL experiment on several tasks and save each result.

    The grid follows ``design`` (default :data:`MAIN`, the design of issue 18; every
    setting in ``docs/methods.md``). Per task and seed ``s``:

    - ``find_task_heads`` on ``n`` k-shot prompts (held out: whose queries are *selection*
      examples of :func:`~icl_heads.experiments.splits.heldout_split` ``(task,
      split_fraction, s)``), TL score ``design.tl_normalize`` with its floor; with
      ``design.tl_sensitivity`` also that TL map, its set and its overlap with the main set
      (``maps["TL_raw"]``, ``tables["tl_sensitivity"]``, rows ``"TL vs TL_raw"``);
    - ``ablation`` of the TR and TL sets (3% of heads each; ``n_random`` layer-matched
      random sets per set) by mean ablation at every position (means from the selection
      prompts) on ``n`` *evaluation* prompts (queries from the other part; the same prompts
      when not held out); with ``design.sensitivity_mode`` every set again in that mode
      (rows ``"TR (zero)"``, ...); the sensitivity TL set as ``"TL_raw"`` (no random sets of
      its own); ``label_mass`` / ``gold_margin`` rows with ``design.continuous``;
    - ``perturbation`` (no selection: the usual ``build_prompts`` prompts) with the TL
      score of the design; ``correlation`` (mean ablation at the query) on the evaluation
      prompts with the selection maps;
    - steering onto zero-shot and abstract-label prompts, one cell per protocol of
      ``design.steering_protocols`` (the first is ``steering_<target>``, the others
      ``steering_<target>_<protocol>``), the selection heads: ``"query_matched"`` steers
      the evaluation prompts' own zero-shot / abstract-label twins (seed ``s``) with their
      k-shot outputs; ``"task_mean"`` steers evaluation prompts of seed ``s + 1`` with the
      selection prompts' mean outputs (both: groups of ``preset.steering_batch_size``);
    - ``reconciliation`` on the selection prompts.

    Each result is saved (:func:`compact`: maps without per-prompt values) to
    ``out_dir/<model name>/<task>/<experiment>/`` when the grid runs one seed, and to
    ``out_dir/seed<s>/<model name>/<task>/<experiment>/`` for each seed when it runs
    several (``n_seeds``; the full preset runs 3): every seed's folder is a grid of the
    one-seed layout (:func:`~icl_heads.experiments.kit.load_cells` reads it as before), and
    a seed's cells are the cells of ``reproduce_trtl(seed=s, n_seeds=1)``. Each cell is
    saved with the request that defines it (:func:`cell_requests`). Resumable: a saved
    cell that verifies and was made with the same request is loaded, not recomputed; a
    damaged or incomplete one is recomputed (logged); a stale one (made with another
    request: other ``k``, ``n``, ``seed``, design, ...) stops the run before anything is
    computed, unless ``rerun_stale=True``.

    Work shared between cells (the numbers of separate calls, the steering vectors up to
    float rounding; fewer forward passes): one :func:`~icl_heads.activation_means` pass
    gives the mean-ablation means of the ablation (every token) and correlation (query)
    cells and, on models without a post-attention norm, the task-mean steering vectors;
    the perturbation cell takes its gold condition from the ``find_task_heads`` result
    when both ran on the same prompts.

    Args:
        model: a loaded model or a name for :func:`~icl_heads.load_model`.
        tasks: built-in task names (or :class:`Task` objects).
        quick: the :data:`QUICK` preset (for CI) instead of :data:`FULL`.
        seed: the first prompt seed (seeds ``seed .. seed + n_seeds - 1``).
        k, n, n_random, n_boot, n_seeds: override the preset.
        batch_size: prompts per batch (steering: ``preset.steering_batch_size``).
        rerun_stale: recompute saved cells that were made with another request (default:
            refuse them with a ValueError naming the fields that differ).
        design: :data:`MAIN` (default) or :data:`LEGACY` (the design of the first saved
            results), or your own :class:`Design`.
        tl_normalize, tl_floor, heldout, split_fraction, sensitivity_mode: override one
            field of ``design`` (``None``: the design's; to drop the sensitivity mode pass
            ``design=dataclasses.replace(MAIN, sensitivity_mode=None)``).

    Settings that differ from :data:`LEGACY` enter the cells' requests (so such a grid
    never loads a cell of another design); a :data:`LEGACY` grid makes the requests (and
    numbers) of the grids made before these options existed.

    Example::

        cells = trtl.reproduce_trtl(ih.load_model(), ["sentiment"], "results/trtl", quick=True)
        kit.load_cells("results/trtl")         # {model: {task: {experiment: result}}}

    Returns:
        The cells (:func:`~icl_heads.experiments.kit.cell_table`: ``model, task,
        experiment, path, status, seconds``, then ``seed``; status ``"computed"`` or
        ``"loaded"``).
    """
    if isinstance(model, str):
        model = load_model(model)
    check_model(model, "reproduce_trtl")
    check_bool(quick, "quick")
    check_bool(rerun_stale, "rerun_stale")
    design = check_design(
        design,
        tl_normalize=tl_normalize,
        tl_floor=tl_floor,
        heldout=heldout,
        split_fraction=split_fraction,
        sensitivity_mode=sensitivity_mode,
    )
    seed = check_seed(seed)
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    if not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    preset = QUICK if quick else FULL
    k = check_int(k if k is not None else preset.k, "k", 1)
    n = check_int(n if n is not None else preset.n, "n", 2)
    n_random = check_int(n_random if n_random is not None else preset.n_random, "n_random", 1)
    n_boot = check_boot(n_boot if n_boot is not None else preset.n_boot)
    n_seeds = check_int(n_seeds if n_seeds is not None else preset.n_seeds, "n_seeds", 1)
    out_dir = check_output_dir(out_dir, what="reproduce_trtl: out_dir")
    task_objs = [as_task(t) for t in tasks]
    seeds = list(range(seed, seed + n_seeds))
    roots = {
        s: seed_root(out_dir, s, n_seeds) / safe_name(model_name(model) or "model") for s in seeds
    }
    plans = {}
    for s in seeds:
        for t in task_objs:
            split = heldout_split(t, design.split_fraction, s) if design.heldout else None
            sizes = dict(k=k, n=n, seed=s, n_random=n_random, n_boot=n_boot)
            plans[s, t.name] = (split, cell_requests(model, t, preset, **sizes, split=split,
                                                     **request_options(design)))  # fmt: skip
    check_cells(
        [
            (roots[s] / safe_name(t.name) / name, request)
            for s in seeds
            for t in task_objs
            for name, request in plans[s, t.name][1].items()
        ],
        rerun_stale=rerun_stale,
    )
    records: list[dict] = []
    seed_of: list[int] = []
    bar = tqdm(
        total=sum(len(plans[key][1]) for key in plans),
        desc="reproduce TR/TL",
        disable=not progress,
        unit="experiment",
    )
    for s in seeds:
        for task in task_objs:
            split, requests = plans[s, task.name]
            prompts = build_prompts(model, task, k, n, s)
            grid = _TaskGrid(
                model,
                task,
                prompts if split is None else _split(model, task, k, n, s, split, "selection"),
                roots[s] / safe_name(task.name),
                requests=requests,
                rerun_stale=rerun_stale,
                records=records,
                bar=bar,
                batch_size=batch_size,
                device=device,
                progress=progress,
                split=split,
                gold=prompts,
                design=design,
            )
            grid.run(preset, n_random=n_random, n_boot=n_boot, seed=s)
            seed_of += [s] * (len(records) - len(seed_of))
    bar.close()
    table = cell_table(records)
    table["seed"] = seed_of
    return table


class _TaskGrid:
    """The cells of one task, and the passes they share (computed on first use)."""

    def __init__(
        self,
        model: HookedTransformer,
        task: Task,
        prompts: PromptSet,
        root: Path,
        *,
        requests: dict[str, dict],
        rerun_stale: bool,
        records: list[dict],
        bar: tqdm,
        batch_size: int,
        device: str | torch.device | None,
        progress: bool,
        split: TaskSplit | None = None,
        gold: PromptSet | None = None,
        design: Design = LEGACY,
    ):
        # prompts: where heads, means, vectors and maps come from (the selection part when
        # held out); evaluation: where effects are measured; gold: the perturbation cell's
        self.model, self.task, self.prompts, self.root = model, task, prompts, root
        self.split = split
        self.gold = gold if gold is not None else prompts
        self.evaluation = (
            prompts
            if split is None
            else _split(model, task, prompts.k, len(prompts), prompts.seed, split, "evaluation")
        )
        self.design = design
        self.records, self.bar = records, bar
        self.requests, self.rerun_stale = requests, rerun_stale
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.means: dict[str, ActivationMeans] = {}
        self.vectors: Tensor | None = None

    def cell(self, name: str, make: Callable[[], ExperimentResult]) -> ExperimentResult:
        """Load or make (and save, compact) one cell."""
        path = self.root / name
        result, status, seconds = run_cell(
            path,
            make,
            request=self.requests[name],
            rerun_stale=self.rerun_stale,
            prepare=compact,
        )
        self.records.append(
            cell_record(model_name(self.model), self.task.name, name, path, status, seconds)
        )
        self.bar.update(1)
        return result

    def mean_z(self, positions: str) -> ActivationMeans:
        """The heads' mean z over every token (``"all"``) or at the query (``"query"``):
        both from one pass."""
        if not self.means:
            self.means["all"], self.means["query"] = activation_means(
                self.model,
                self.prompts,
                "z",
                positions=("all", "query"),
                batch_size=self.batch_size,
                device=self.device,
                progress=self.progress,
            )
        return self.means[positions]

    def steering_vectors(self) -> Tensor:
        """The heads' mean outputs at the query (from the shared means on models without a
        post-attention norm)."""
        if self.vectors is None:
            if post_attention_norm(self.model):
                self.vectors = mean_head_outputs(
                    self.model,
                    self.prompts,
                    batch_size=self.batch_size,
                    device=self.device,
                    progress=self.progress,
                )
            else:
                self.vectors = self.mean_z("query").outputs(self.model)
        return self.vectors

    def find(self, *, n_boot: int, seed: int) -> ExperimentResult:
        """The ``find_task_heads`` result (with the split as ``tables["split"]`` when held
        out)."""
        d = self.design
        options = {}
        if d.tl_normalize != "none":
            options = dict(normalize=d.tl_normalize, floor=d.tl_floor)
        if d.tl_sensitivity is not None:
            options["sensitivity_normalize"] = d.tl_sensitivity
        found = find_task_heads(
            self.model,
            self.prompts,
            n_boot=n_boot,
            seed=seed,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
            **options,
        )
        if self.split is not None:
            found.tables["split"] = self.split.table()
        return found

    def targets(self, target: str, protocol: str) -> tuple[PromptSet, PromptSet]:
        """The source and target prompts of a steering cell: query-matched, the evaluation
        prompts and their twins (same seed); task-mean, the selection prompts and
        evaluation prompts of seed + 1."""
        k, n, seed = self.prompts.k, len(self.prompts), self.prompts.seed
        if protocol == "query_matched":
            source, seed_t = self.evaluation, seed
        else:
            source, seed_t = self.prompts, seed + 1
        if self.split is None:
            target_prompts = build_prompts(self.model, self.task, k, n, seed_t, perturbation=target)
        else:
            target_prompts = _split(
                self.model, self.task, k, n, seed_t, self.split, "evaluation", perturbation=target
            )
        return source, target_prompts

    def run(self, preset: Preset, *, n_random: int, n_boot: int, seed: int) -> None:
        """Every experiment of the task (see :func:`reproduce_trtl`)."""
        model, prompts, task, d = self.model, self.prompts, self.task, self.design
        evaluation, heldout = self.evaluation, self.split is not None
        batch_size, device, progress = self.batch_size, self.device, self.progress
        found = self.cell("find_task_heads", lambda: self.find(n_boot=n_boot, seed=seed))
        ablation_options: dict = {}
        if d.sensitivity_mode is not None:
            ablation_options["sensitivity_mode"] = d.sensitivity_mode
        if d.continuous:
            ablation_options["continuous"] = True
        sets = head_sets(found)
        ablated = sets
        if d.tl_sensitivity is not None:  # the sensitivity TL set, without random sets
            ablated = head_sets(found, sensitivity=True)
            ablation_options["random_like"] = tuple(sets)
        perturbation_options = {}
        if d.tl_normalize != "none":
            perturbation_options["normalize"] = d.tl_normalize
        tr, tl = found.maps["TR"], found.maps["TL"]
        self.cell(
            "ablation",
            lambda: ablation_experiment(
                model,
                evaluation,
                ablated,
                n_random=n_random,
                seed=seed,
                n_boot=n_boot,
                means=self.mean_z("all"),
                batch_size=batch_size,
                device=device,
                progress=progress,
                **ablation_options,
            ),
        )
        computed = tr.per_prompt is not None and not heldout  # found on these prompts
        self.cell(
            "perturbation",
            lambda: perturbation_experiment(
                model,
                self.gold,
                task=task,
                n_boot=n_boot,
                gold=found if computed else None,
                **perturbation_options,
                batch_size=batch_size,
                device=device,
                progress=progress,
            ),
        )
        self.cell(
            "correlation",
            lambda: correlation_experiment(
                model,
                evaluation,
                tr=tr,
                tl=tl,
                seed=seed,
                n_boot=n_boot,
                means=self.mean_z("query"),
                batch_size=batch_size,
                device=device,
                progress=progress,
            ),
        )
        for name, target, protocol in steering_cells(preset, d):
            self.cell(name, lambda target=target, protocol=protocol: self.steer(
                target, protocol, sets, preset, n_random=n_random, n_boot=n_boot, seed=seed
            ))  # fmt: skip
        self.cell(
            "reconciliation",
            lambda: reconciliation_experiment(
                model,
                prompts,
                tr=tr,
                tl=tl,
                seed=seed,
                n_sequences=preset.n_sequences,
                n_boot=n_boot,
                batch_size=batch_size,
                device=device,
                progress=progress,
            ),
        )

    def steer(
        self,
        target: str,
        protocol: str,
        sets: dict,
        preset: Preset,
        *,
        n_random: int,
        n_boot: int,
        seed: int,
    ) -> ExperimentResult:
        """One steering cell (see :func:`reproduce_trtl`)."""
        source, target_prompts = self.targets(target, protocol)
        options = {"protocol": protocol} if protocol != "task_mean" else {}
        if protocol == "task_mean":
            options["vectors"] = self.steering_vectors()
        return steering_experiment(
            self.model,
            source,
            target_prompts,
            sets,
            preset.alphas,
            n_random=n_random,
            seed=seed,
            n_boot=n_boot,
            batch_size=preset.steering_batch_size,
            device=self.device,
            progress=self.progress,
            **options,
        )


def _split(
    model: HookedTransformer,
    task: Task,
    k: int,
    n: int,
    seed: int,
    split: TaskSplit,
    part: str,
    perturbation: str | None = None,
) -> PromptSet:
    """The prompts of one part of a held-out split (see :func:`reproduce_trtl`)."""
    return split_prompts(model, task, k, n, seed, perturbation, split=split, part=part)
