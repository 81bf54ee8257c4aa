"""The TR/TL reproduction grid: every experiment on several tasks, one saved cell each,
resumable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...activations import ActivationMeans, activation_means
from ...attribution import NORMALIZATIONS
from ...backends import HookedTransformer
from ...checks import check_int, check_seed
from ...heads import HeadScores
from ...interventions import ABLATION_MODES
from ...models import load_model
from ...outputs import check_output_dir
from ...prompts import PromptSet, build_prompts
from ...results import ExperimentResult, safe_name
from ...settings import model_name
from ...stats import N_BOOT
from ...tasks import Task
from ..cells import cell_record, cell_request, cell_table, check_cells, run_cell
from ..kit import as_task, check_bool, check_boot, check_model, post_attention_norm
from ..splits import TaskSplit, heldout_split, split_prompts
from .ablation import ablation_experiment
from .correlation import correlation_experiment
from .find_heads import find_task_heads, head_sets
from .passes import mean_head_outputs
from .perturbation import perturbation_experiment
from .reconciliation import reconciliation_experiment
from .steering import steering_experiment

#: The experiments of :func:`reproduce_trtl`, in the order they run (directory names).
EXPERIMENTS = (
    "find_task_heads",
    "ablation",
    "perturbation",
    "correlation",
    "steering_zero_shot",
    "steering_abstract_labels",
    "reconciliation",
)


@dataclass(frozen=True)
class Preset:
    """The settings of a TR/TL reproduction.

    Attributes:
        k: demonstrations per prompt.
        n: prompts per task (the steering targets too).
        n_random: random control sets per head set (ablation, steering).
        n_boot: bootstrap resamples of every interval.
        alphas: steering strengths.
        steering_targets: the perturbations steered onto (``"zero_shot"``,
            ``"abstract_labels"``).
        n_sequences: random sequences of the induction / previous-token detectors.
        steering_batch_size: prompts per group in the steering runs (many short last-token
            runs: bigger groups mean fewer of them; the same results up to float rounding).
    """

    k: int
    n: int
    n_random: int
    n_boot: int
    alphas: tuple[float, ...]
    steering_targets: tuple[str, ...]
    n_sequences: int
    steering_batch_size: int = 64


#: The published reproduction: k=4, n=64, 5 random sets, 1000 resamples, alphas 0..4.
FULL = Preset(
    k=4,
    n=64,
    n_random=5,
    n_boot=N_BOOT,
    alphas=(0, 0.5, 1, 2, 4),
    steering_targets=("zero_shot", "abstract_labels"),
    n_sequences=32,
)
#: The small preset for CI: n=12, 2 random sets, 200 resamples, zero-shot steering only.
QUICK = Preset(
    k=4,
    n=12,
    n_random=2,
    n_boot=200,
    alphas=(0, 1, 4),
    steering_targets=("zero_shot",),
    n_sequences=8,
)


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
    batch_size: int = 16,
    device: str | torch.device | None = None,
    rerun_stale: bool = False,
    tl_normalize: str = "none",
    tl_floor: float = 0.01,
    heldout: bool = False,
    split_fraction: float = 0.5,
    sensitivity_mode: str | None = None,
) -> pd.DataFrame:
    """Run every TR/TL experiment on several tasks and save each result.

    Per task, on ``build_prompts(model, task, k, n, seed)``: ``find_task_heads``; then, with
    its TR and TL head sets (3% of heads each) and maps, ``ablation_experiment`` (mean
    ablation, all positions, ``n_random`` layer-matched random sets per set),
    ``perturbation_experiment``, ``correlation_experiment`` (mean ablation at the query),
    ``steering_experiment`` onto zero-shot and abstract-label prompts of the same task
    (``n`` prompts, seed ``seed + 1``, groups of ``preset.steering_batch_size`` prompts) and
    ``reconciliation_experiment``. Each result is saved (:func:`compact`: maps without
    per-prompt values) to ``out_dir/<model name>/<task>/<experiment>/``
    (:func:`~icl_heads.experiments.cells.run_cell`), with the request that defines it
    (:func:`cell_requests`). Resumable: a saved cell that verifies and was made with the
    same request is loaded, not recomputed; a damaged or incomplete one is recomputed
    (logged); a stale one (made with another request: other ``k``, ``n``, ``seed``, ...)
    stops the run before anything is computed, unless ``rerun_stale=True``.

    Work shared between cells (the numbers of separate calls, the steering vectors up to
    float rounding; fewer forward passes): one :func:`~icl_heads.activation_means` pass
    gives the mean-ablation means of the ablation (every token) and correlation (query)
    cells and, on models without a post-attention norm, the steering vectors
    (``means.outputs(model)``); the perturbation cell takes its gold condition from the
    ``find_task_heads`` result (``gold=``).

    Args:
        model: a loaded model or a name for :func:`~icl_heads.load_model`.
        tasks: built-in task names (or :class:`Task` objects).
        quick: the :data:`QUICK` preset (for CI) instead of :data:`FULL`.
        k, n, n_random, n_boot: override the preset.
        batch_size: prompts per batch (steering: ``preset.steering_batch_size``).
        rerun_stale: recompute saved cells that were made with another request (default:
            refuse them with a ValueError naming the fields that differ).
        tl_normalize, tl_floor: the TL score of ``find_task_heads`` and
            ``perturbation_experiment`` (``"none"``, default: the raw gold-label margin;
            ``"norm"``: divided by ``||P a||``; ``"tr"``: divided by ``||P a||^2``, the
            paper's normalised form as we reconstruct it) and its TR floor (see
            :func:`find_task_heads` and ``docs/methods.md``; ``perturbation_experiment``
            takes no floor and uses the default 0.01).
        heldout: held-out selection (default ``False``: every cell on the same prompts).
            ``True``: the task's examples are split (:func:`~icl_heads.experiments.splits.
            heldout_split`, ``split_fraction`` of each label's inputs, seed ``seed``) into a
            selection and an evaluation part; the heads (``find_task_heads``), the ablation
            means, the steering vectors and the maps of ``correlation`` and
            ``reconciliation`` come from ``n`` prompts whose queries are selection examples;
            the ablation, correlation sweep and steering effects are measured on ``n``
            prompts (and the steering targets) whose queries are evaluation examples
            (:func:`~icl_heads.experiments.splits.split_prompts`; demonstrations from the
            whole task). ``perturbation`` (no head selection) runs on the usual prompts.
            The settings record both prompt sets (``prompts``/``heads_from``/``means``,
            ``source``/``target``), and ``find_task_heads`` keeps the split in
            ``tables["split"]``.
        sensitivity_mode: also ablate every set in this other mode (e.g. ``"zero"``) in the
            ablation cell, as sensitivity rows ``"TR (zero)"``, ... (default ``None``).

    Non-default ``tl_normalize``, ``heldout`` and ``sensitivity_mode`` enter the cells'
    requests (so such a grid never loads a default cell); default calls make the same
    requests (and numbers) as before these options existed.

    Example::

        cells = trtl.reproduce_trtl(ih.load_model(), ["sentiment"], "results/trtl", quick=True)
        kit.load_cells("results/trtl")         # {model: {task: {experiment: result}}}

    Returns:
        The cells (:func:`~icl_heads.experiments.kit.cell_table`: ``model, task,
        experiment, path, status, seconds``; status ``"computed"`` or ``"loaded"``).
    """
    if isinstance(model, str):
        model = load_model(model)
    check_model(model, "reproduce_trtl")
    check_bool(quick, "quick")
    check_bool(rerun_stale, "rerun_stale")
    check_bool(heldout, "heldout")
    if tl_normalize not in NORMALIZATIONS:
        raise ValueError(f"Unknown tl_normalize {tl_normalize!r}; choose one of {NORMALIZATIONS}.")
    if sensitivity_mode is not None and (
        sensitivity_mode not in ABLATION_MODES or sensitivity_mode == "mean"
    ):
        raise ValueError(
            f"sensitivity_mode={sensitivity_mode!r}: the grid's ablation mode is 'mean'; choose "
            f"None or another mode of {ABLATION_MODES}."
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
    out_dir = check_output_dir(out_dir, what="reproduce_trtl: out_dir")
    task_objs = [as_task(t) for t in tasks]
    model_dir = out_dir / safe_name(model_name(model) or "model")
    sizes = dict(k=k, n=n, seed=seed, n_random=n_random, n_boot=n_boot)
    splits = {
        t.name: heldout_split(t, split_fraction, seed) if heldout else None for t in task_objs
    }
    options = dict(tl_normalize=tl_normalize, tl_floor=tl_floor, sensitivity_mode=sensitivity_mode)
    requests = {
        t.name: cell_requests(model, t, preset, **sizes, split=splits[t.name], **options)
        for t in task_objs
    }
    check_cells(
        [
            (model_dir / safe_name(t.name) / name, request)
            for t in task_objs
            for name, request in requests[t.name].items()
        ],
        rerun_stale=rerun_stale,
    )
    records: list[dict] = []
    bar = tqdm(
        total=len(task_objs) * len(EXPERIMENTS),
        desc="reproduce TR/TL",
        disable=not progress,
        unit="experiment",
    )
    for task in task_objs:
        split = splits[task.name]
        prompts = build_prompts(model, task, k, n, seed)
        grid = _TaskGrid(
            model,
            task,
            prompts if split is None else _split(model, task, k, n, seed, split, "selection"),
            model_dir / safe_name(task.name),
            requests=requests[task.name],
            rerun_stale=rerun_stale,
            records=records,
            bar=bar,
            batch_size=batch_size,
            device=device,
            progress=progress,
            split=split,
            gold=prompts,
            tl_normalize=tl_normalize,
            tl_floor=tl_floor,
            sensitivity_mode=sensitivity_mode,
        )
        grid.run(preset, n_random=n_random, n_boot=n_boot, seed=seed)
    bar.close()
    return cell_table(records)


def cell_requests(
    model: HookedTransformer | str,
    task: Task,
    preset: Preset,
    *,
    k: int,
    n: int,
    seed: int,
    n_random: int,
    n_boot: int,
    split: TaskSplit | None = None,
    tl_normalize: str = "none",
    tl_floor: float = 0.01,
    sensitivity_mode: str | None = None,
) -> dict[str, dict]:
    """The request of each cell of one task (:func:`~icl_heads.experiments.cells.cell_request`): the model, the task and its content hash, ``k``, ``n``, ``seed`` and
    ``n_boot`` for every cell; ``n_random`` for ablation and steering; the steering
    strengths ``alphas`` for steering; ``n_sequences`` for reconciliation. Only the cells
    the preset runs (its ``steering_targets``). Only when not default: ``tl_normalize`` and
    ``tl_floor`` (find_task_heads, perturbation, and the cells that use the maps),
    ``heldout`` (``{"fraction", "seed"}`` of ``split``; every cell but perturbation) and
    ``sensitivity_mode`` (ablation).

    Example::

        cell_requests(model, task, QUICK, k=4, n=12, seed=0, n_random=2, n_boot=200)["ablation"]
    """
    common = dict(k=k, n=n, seed=seed, n_boot=n_boot)
    extra: dict[str, dict] = {
        "ablation": dict(n_random=n_random),
        "reconciliation": dict(n_sequences=preset.n_sequences),
    }
    for target in ("zero_shot", "abstract_labels"):
        extra[f"steering_{target}"] = dict(n_random=n_random, alphas=list(preset.alphas))
    if tl_normalize != "none":  # every cell that uses the maps or the heads they give
        for name in EXPERIMENTS:
            extra.setdefault(name, {}).update(tl_normalize=tl_normalize, tl_floor=tl_floor)
    if split is not None:
        held = {"fraction": split.fraction, "seed": split.seed}
        for name in EXPERIMENTS:
            if name != "perturbation":
                extra.setdefault(name, {})["heldout"] = held
    if sensitivity_mode is not None:
        extra["ablation"]["sensitivity_mode"] = sensitivity_mode
    return {
        name: cell_request(model, task, name, **common, **extra.get(name, {}))
        for name in EXPERIMENTS
        if not name.startswith("steering_")
        or name.removeprefix("steering_") in preset.steering_targets
    }


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
        tl_normalize: str = "none",
        tl_floor: float = 0.01,
        sensitivity_mode: str | None = None,
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
        self.tl_normalize, self.tl_floor = tl_normalize, tl_floor
        self.sensitivity_mode = sensitivity_mode
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
        options = {}
        if self.tl_normalize != "none":
            options = dict(normalize=self.tl_normalize, floor=self.tl_floor)
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

    def run(self, preset: Preset, *, n_random: int, n_boot: int, seed: int) -> None:
        """Every experiment of the task (see :func:`reproduce_trtl`)."""
        model, prompts, task = self.model, self.prompts, self.task
        evaluation, heldout = self.evaluation, self.split is not None
        batch_size, device, progress = self.batch_size, self.device, self.progress
        found = self.cell("find_task_heads", lambda: self.find(n_boot=n_boot, seed=seed))
        ablation_options = {}
        if self.sensitivity_mode is not None:
            ablation_options["sensitivity_mode"] = self.sensitivity_mode
        perturbation_options = {}
        if self.tl_normalize != "none":
            perturbation_options["normalize"] = self.tl_normalize
        sets = head_sets(found)
        tr, tl = found.maps["TR"], found.maps["TL"]
        self.cell(
            "ablation",
            lambda: ablation_experiment(
                model,
                evaluation,
                sets,
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
        for target in ("zero_shot", "abstract_labels"):
            if target not in preset.steering_targets:
                self.bar.update(1)
                continue
            self.cell(
                f"steering_{target}",
                lambda target=target: steering_experiment(
                    model,
                    prompts,
                    build_prompts(
                        model, task, prompts.k, len(prompts), seed + 1, perturbation=target
                    )
                    if not heldout
                    else _split(
                        model,
                        task,
                        prompts.k,
                        len(prompts),
                        seed + 1,
                        self.split,
                        "evaluation",
                        perturbation=target,
                    ),
                    sets,
                    preset.alphas,
                    n_random=n_random,
                    seed=seed,
                    n_boot=n_boot,
                    vectors=self.steering_vectors(),
                    batch_size=preset.steering_batch_size,
                    device=device,
                    progress=progress,
                ),
            )
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
