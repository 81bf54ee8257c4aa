"""The presets and designs of the TR/TL reproduction grid (:func:`~icl_heads.experiments.
trtl.reproduce_trtl`): how big a grid is (:class:`Preset`) and how each experiment is
designed (:class:`Design`), fixed in code before any run, and the cells they give."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ...attribution import NORMALIZATIONS
from ...backends import HookedTransformer
from ...interventions import ABLATION_MODES
from ...stats import N_BOOT
from ...tasks import Task
from ..cells import cell_request
from ..kit import check_bool
from ..splits import TaskSplit
from .query_matched import PROTOCOLS, check_protocol

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
        n_seeds: prompt seeds per task (``seed, seed + 1, ...``): one grid per seed, in
            ``<out_dir>/seed<s>/`` when there are several (:func:`reproduce_trtl`).
    """

    k: int
    n: int
    n_random: int
    n_boot: int
    alphas: tuple[float, ...]
    steering_targets: tuple[str, ...]
    n_sequences: int
    steering_batch_size: int = 64
    n_seeds: int = 1


#: The reproduction of issue 18: k=4, n=256 prompts per cell, 3 prompt seeds (0, 1, 2), 5
#: random sets, 1000 resamples, alphas 0, 0.5, 1, 2, 4, 8.
FULL = Preset(
    k=4,
    n=256,
    n_random=5,
    n_boot=N_BOOT,
    alphas=(0, 0.5, 1, 2, 4, 8),
    steering_targets=("zero_shot", "abstract_labels"),
    n_sequences=32,
    n_seeds=3,
)
#: The preset the first saved results (``docs/results/data``, made with :data:`LEGACY`)
#: were made with: n=64, one seed, alphas 0..4.
FIRST = Preset(
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


@dataclass(frozen=True)
class Design:
    """How each experiment of a TR/TL grid is designed (``docs/methods.md``, "Held-out
    selection, TL normalisation and ablation modes", "Steering protocols"): fixed in code
    before any run, recorded in every cell's request where it differs from :data:`LEGACY`.

    Attributes:
        tl_normalize, tl_floor: the TL score of the head sets (``find_task_heads``) and of
            ``perturbation``, and its TR floor.
        tl_sensitivity: another TL score computed beside it (``"none"``: the raw margin),
            with its set and overlap (``find_task_heads(sensitivity_normalize=)``) and its
            set ablated without random sets (condition ``"TL_raw"``); ``None``: none.
        heldout, split_fraction: held-out selection (heads, means and task-mean vectors
            from a selection split of the queries, effects on the evaluation split).
        steering_protocols: the steering protocols, the main one first (its cells are
            ``steering_<target>``, the others ``steering_<target>_<protocol>``).
        sensitivity_mode: the ablation mode run beside mean ablation (``None``: none).
        continuous: ``label_mass`` and ``gold_margin`` rows in the ablation table.
    """

    tl_normalize: str
    tl_floor: float
    tl_sensitivity: str | None
    heldout: bool
    split_fraction: float
    steering_protocols: tuple[str, ...]
    sensitivity_mode: str | None
    continuous: bool


#: The grid's design (issue 18): TL score ``"tr"`` with the 1% TR floor (raw margin as the
#: sensitivity analysis), held-out selection on half the queries, query-matched steering
#: (task-mean beside it), zero ablation beside mean ablation, continuous metrics.
MAIN = Design(
    tl_normalize="tr",
    tl_floor=0.01,
    tl_sensitivity="none",
    heldout=True,
    split_fraction=0.5,
    steering_protocols=("query_matched", "task_mean"),
    sensitivity_mode="zero",
    continuous=True,
)
#: The design of the first saved results: raw TL margin, every cell on the same prompts,
#: task-mean steering, mean ablation only.
LEGACY = Design(
    tl_normalize="none",
    tl_floor=0.01,
    tl_sensitivity=None,
    heldout=False,
    split_fraction=0.5,
    steering_protocols=("task_mean",),
    sensitivity_mode=None,
    continuous=False,
)


def seed_root(out_dir: str | Path, seed: int, n_seeds: int) -> Path:
    """The root of one seed's grid: ``out_dir`` when the grid runs one seed, else
    ``out_dir/seed<seed>`` (each a grid of the usual ``<model>/<task>/<experiment>``
    layout).

    Example::

        seed_root("docs/results/data/trtl", 2, 3)       # .../trtl/seed2
    """
    return Path(out_dir) if n_seeds == 1 else Path(out_dir) / f"seed{int(seed)}"


def steering_cells(preset: Preset, design: Design) -> list[tuple[str, str, str]]:
    """The steering cells of a grid: ``(cell name, target, protocol)``, the main protocol's
    cell ``steering_<target>`` and the others ``steering_<target>_<protocol>``.

    Example::

        steering_cells(QUICK, MAIN)
        # [("steering_zero_shot", "zero_shot", "query_matched"),
        #  ("steering_zero_shot_task_mean", "zero_shot", "task_mean")]
    """
    out = []
    for target in ("zero_shot", "abstract_labels"):
        if target not in preset.steering_targets:
            continue
        for i, protocol in enumerate(design.steering_protocols):
            out.append(
                (f"steering_{target}" + ("" if i == 0 else f"_{protocol}"), target, protocol)
            )
    return out


def check_design(design: Design | None, **overrides: object) -> Design:
    """The design of a grid call: ``design`` (default :data:`MAIN`) with the given
    non-``None`` fields replaced, checked."""
    if design is None:
        design = MAIN
    if not isinstance(design, Design):
        raise TypeError(
            f"design must be a trtl Design (MAIN, LEGACY or your own), got {type(design).__name__}."
        )
    design = replace(design, **{key: v for key, v in overrides.items() if v is not None})
    check_bool(design.heldout, "heldout")
    check_bool(design.continuous, "continuous")
    if design.tl_normalize not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown tl_normalize {design.tl_normalize!r}; choose one of {NORMALIZATIONS}."
        )
    if design.tl_sensitivity is not None and (
        design.tl_sensitivity not in NORMALIZATIONS or design.tl_sensitivity == design.tl_normalize
    ):
        raise ValueError(
            f"tl_sensitivity={design.tl_sensitivity!r} must be None or another TL score than "
            f"tl_normalize={design.tl_normalize!r}, one of {NORMALIZATIONS}."
        )
    if design.sensitivity_mode is not None and (
        design.sensitivity_mode not in ABLATION_MODES or design.sensitivity_mode == "mean"
    ):
        raise ValueError(
            f"sensitivity_mode={design.sensitivity_mode!r}: the grid's ablation mode is 'mean'; "
            f"choose None or another mode of {ABLATION_MODES}."
        )
    protocols = design.steering_protocols
    if isinstance(protocols, str) or not protocols or len(set(protocols)) != len(protocols):
        raise ValueError(
            f"steering_protocols must be a non-empty tuple of distinct protocols of "
            f"{list(PROTOCOLS)}, got {protocols!r}."
        )
    for protocol in protocols:
        check_protocol(protocol)
    return replace(design, steering_protocols=tuple(protocols))


def request_options(design: Design) -> dict:
    """The :func:`cell_requests` keywords of a design."""
    return dict(
        tl_normalize=design.tl_normalize,
        tl_floor=design.tl_floor,
        tl_sensitivity=design.tl_sensitivity,
        sensitivity_mode=design.sensitivity_mode,
        protocols=design.steering_protocols,
        continuous=design.continuous,
    )


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
    tl_sensitivity: str | None = None,
    sensitivity_mode: str | None = None,
    protocols: Sequence[str] = ("task_mean",),
    continuous: bool = False,
) -> dict[str, dict]:
    """The request of each cell of one task (:func:`~icl_heads.experiments.cells.cell_request`): the model, the task and its content hash, ``k``, ``n``, ``seed`` and
    ``n_boot`` for every cell; ``n_random`` for ablation and steering; the steering
    strengths ``alphas`` for steering; ``n_sequences`` for reconciliation. Only the cells
    the preset runs (its ``steering_targets``, one per protocol: :func:`steering_cells`).
    Only where they differ from :data:`LEGACY` (the keyword defaults here): ``tl_normalize``
    and ``tl_floor`` (every cell: they choose the heads), ``tl_sensitivity``
    (find_task_heads, ablation), ``heldout`` (``{"fraction", "seed"}`` of ``split``; every
    cell but perturbation), ``sensitivity_mode`` and ``continuous`` (ablation), and a
    steering cell's ``protocol``.

    Example::

        cell_requests(model, task, QUICK, k=4, n=12, seed=0, n_random=2, n_boot=200)["ablation"]
    """
    design = replace(LEGACY, steering_protocols=tuple(protocols))
    common = dict(k=k, n=n, seed=seed, n_boot=n_boot)
    steering = steering_cells(preset, design)
    names = [e for e in EXPERIMENTS if not e.startswith("steering_")]
    names[4:4] = [name for name, _, _ in steering]  # after correlation, as they run
    extra: dict[str, dict] = {
        "ablation": dict(n_random=n_random),
        "reconciliation": dict(n_sequences=preset.n_sequences),
    }
    for name, _, protocol in steering:
        extra[name] = dict(n_random=n_random, alphas=list(preset.alphas))
        if protocol != "task_mean":
            extra[name]["protocol"] = protocol
    if tl_normalize != "none":  # every cell that uses the maps or the heads they give
        for name in names:
            extra.setdefault(name, {}).update(tl_normalize=tl_normalize, tl_floor=tl_floor)
    if tl_sensitivity is not None:
        for name in ("find_task_heads", "ablation"):
            extra[name]["tl_sensitivity"] = tl_sensitivity
    if split is not None:
        held = {"fraction": split.fraction, "seed": split.seed}
        for name in names:
            if name != "perturbation":
                extra.setdefault(name, {})["heldout"] = held
    if sensitivity_mode is not None:
        extra["ablation"]["sensitivity_mode"] = sensitivity_mode
    if continuous:
        extra["ablation"]["continuous"] = True
    return {
        name: cell_request(model, task, name, **common, **extra.get(name, {})) for name in names
    }
