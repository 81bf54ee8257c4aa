"""What every patching sweep (and attribution patching) sets up before it runs: the checked
common arguments, the replacement template and the settings record of the result.

The template is one intervention on every head (site ``z``) or on every layer; the sweeps
take its replacement values and apply them one swept item at a time (see
:mod:`icl_heads.sweep_engine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import ActivationMeans
from .backends import HookedTransformer
from .batching import BatchSize, check_batch_size
from .devices import resolve_device
from .hooks import Positions, check_interventions, check_positions
from .interventions import Replacement, ablate, ablate_layers, patch
from .last_token import check_supported
from .metrics import Metric, get_metric, metric_name
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo, Settings, describe_interventions, model_name

SWEEP_MODES = ("zero", "mean", "resample", "patch")
SWEEP_METHODS = ("fast", "naive")


@dataclass(frozen=True)
class SweepSettings(Settings):
    """How a sweep (or attribution patching) was made."""

    analysis: str
    model: str | None
    prompts: PromptInfo
    metric: str
    mode: str
    positions: str | tuple[int, ...]
    site: str
    method: str
    seed: int
    source: PromptInfo | None = None
    means: PromptInfo | None = None
    interventions: tuple[str, ...] = ()
    effect: str = "metric(intervened) - metric(clean), mean over prompts"


@dataclass(frozen=True)
class SweepRun:
    """The checked common arguments of a sweep (from :func:`check_sweep`)."""

    metric: Metric
    positions: Positions
    interventions: tuple
    device: torch.device


def check_aligned(source: PromptSet, target: PromptSet, positions: Positions) -> None:
    """Source and target must align row by row (and in length unless only the query is
    patched).

    Example::

        check_aligned(shift_demo_labels(prompts), prompts, "all")   # passes
    """
    if len(source) != len(target):
        raise ValueError(
            f"Source has {len(source)} prompts and target {len(target)}; patching "
            "pairs source prompt i with target prompt i, so they must align."
        )
    if positions != "query" and not torch.equal(source.lengths, target.lengths):
        bad = int((source.lengths != target.lengths).nonzero()[0])
        raise ValueError(
            f"Source and target prompt {bad} differ in length "
            f"({int(source.lengths[bad])} vs {int(target.lengths[bad])} tokens), so "
            "their positions do not correspond. Patch positions='query' or use "
            "aligned prompts of equal length."
        )


def check_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric,
    mode: str,
    method: str,
    positions: Positions,
    batch_size: BatchSize,
    device: str | torch.device | None,
    interventions,
    seed: int,
    rows_per_pass: BatchSize | None = None,
) -> SweepRun:
    """Check the arguments every sweep shares; the metric, positions, background
    interventions and device they resolve to.

    Example::

        run = check_sweep(model, prompts, "logit_diff", "zero", "fast", "query", 16, None, (), 0)
    """
    check_prompt_set(prompts, model=model)
    metric_fn = get_metric(metric)
    if mode not in SWEEP_MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {SWEEP_MODES}.")
    if method not in SWEEP_METHODS:
        raise ValueError(f"method must be one of {SWEEP_METHODS}, got {method!r}.")
    if method == "fast":
        check_supported(model)
    check_batch_size(batch_size)
    if rows_per_pass is not None:
        check_batch_size(rows_per_pass, "rows_per_pass")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    device = resolve_device(device) if device is not None else torch.device(model.cfg.device)
    return SweepRun(
        metric=metric_fn,
        positions=check_positions(positions),
        interventions=check_interventions(interventions, model),
        device=device,
    )


def sweep_template(
    model: HookedTransformer,
    prompts: PromptSet,
    site: str,
    mode: str,
    positions: Positions,
    *,
    source: PromptSet | None,
    means: ActivationMeans | torch.Tensor | None,
    reference: PromptSet | None,
    seed: int,
    batch_size: BatchSize,
    device: torch.device,
    progress: bool,
) -> Replacement:
    """The intervention on every head (site ``z``) or every layer: the sweeps take its
    replacement values and apply them one item at a time.

    ``mode="mean"``/``"resample"`` without ``means``/``reference`` take them from
    ``prompts`` (the task's own prompts, docs/methods.md).

    Example::

        template = sweep_template(model, prompts, "z", "mean", "query", source=None,
                                  means=None, reference=None, seed=0, batch_size=16,
                                  device=torch.device("cpu"), progress=False)
    """
    if mode == "patch":
        if source is None:
            raise ValueError("mode='patch' needs source= (a PromptSet aligned with prompts).")
        check_prompt_set(source, "source", model=model)
        check_aligned(source, prompts, positions)
        return patch(
            model,
            source,
            site=site,
            positions=positions,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
    if source is not None:
        raise ValueError(f"source= is only used with mode='patch' (mode is {mode!r}).")
    if mode in ("mean", "resample") and means is None and reference is None:
        reference = prompts  # the task's own prompts (docs/methods.md)
    kwargs = dict(
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    if site == "z":
        every = torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
        return ablate(model, every, mode, positions, **kwargs)
    return ablate_layers(model, None, mode, positions, site=site, **kwargs)


def sweep_settings(
    analysis: str,
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric,
    mode: str,
    positions: Positions,
    site: str,
    method: str,
    seed: int,
    *,
    source: PromptSet | None,
    means: ActivationMeans | torch.Tensor | None,
    reference: PromptSet | None,
    interventions,
) -> SweepSettings:
    """The :class:`SweepSettings` of a sweep's result (where its means came from, if any).

    Example::

        settings = sweep_settings("head_sweep", model, prompts, "logit_diff", "zero",
                                  "query", "z", "fast", 0, source=None, means=None,
                                  reference=None, interventions=())
    """
    mean_info = None
    if mode == "mean":
        if isinstance(means, ActivationMeans):
            mean_info = means.prompts
        elif means is None:
            mean_info = (reference if reference is not None else prompts).info()
    return SweepSettings(
        analysis=analysis,
        model=model_name(model),
        prompts=prompts.info(),
        metric=metric_name(metric),
        mode=mode,
        positions=positions,
        site=site,
        method=method,
        seed=int(seed),
        source=source.info() if source is not None else None,
        means=mean_info,
        interventions=describe_interventions(interventions),
    )


__all__ = [
    "SweepSettings",
    "SweepRun",
    "SWEEP_MODES",
    "SWEEP_METHODS",
    "check_aligned",
    "check_sweep",
    "sweep_template",
    "sweep_settings",
]
