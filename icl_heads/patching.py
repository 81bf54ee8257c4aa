"""Activation-patching and ablation sweeps: the effect of every single head, every layer, or
every position of a layer on a metric of the final-position logits.

``effect = metric(intervened run) - metric(clean run)``, per prompt, then averaged over
prompts (NaN-aware). What replaces the activation comes from
:mod:`icl_heads.interventions`: ``"zero"``, ``"mean"``, ``"resample"`` ablation, or
``"patch"`` from an aligned source ``PromptSet``. Background ``interventions=[...]`` act
on both runs (e.g. the effect of every head with the TR heads already ablated).

Two strategies (``method=``), in :mod:`icl_heads.sweep_engine`:

* ``"naive"`` — the reference loop: one batched run over the prompts per swept item.
* ``"fast"`` (default), exact: the cached-prefix engine of :mod:`icl_heads.last_token`
  (each group of prompts runs once; then only the last token, or only the layers from the
  intervened one on, are re-run for many items at once).

:func:`attribution_patching` (defined in :mod:`icl_heads.patching_attribution`, importable
from here) gives the first-order approximation ``grad · (replacement - z)`` for every head
from one forward and one backward pass per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from .activations import ActivationMeans
from .backends import HookedTransformer
from .batching import BatchSize
from .heads import HeadScores, HeadsLike, heads_to_mask
from .hooks import LAYER_SITES, Positions, layers_to_mask
from .metrics import Metric, metric_name
from .patching_attribution import NON_DIFFERENTIABLE, attribution_patching
from .prompts import PromptSet
from .sweep_engine import SweepItems, sweep_effects
from .sweep_setup import (
    SWEEP_METHODS,
    SWEEP_MODES,
    SweepSettings,
    check_sweep,
    sweep_settings,
    sweep_template,
)

# --------------------------------------------------------------------------- public sweeps


def head_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    heads: HeadsLike | None = None,
    seed: int = 0,
    method: Literal["fast", "naive"] = "fast",
    batch_size: BatchSize = 16,
    rows_per_pass: BatchSize | None = None,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> HeadScores:
    """Effect of intervening on every single head: ``metric(intervened) - metric(clean)``,
    averaged over prompts.

    Args:
        prompts: the target prompts (the run that is intervened on).
        metric: ``"logit_diff"``, ``"accuracy"``, ``"label_space_rate"``,
            ``"in_space_accuracy"`` or a callable ``metric(logits, gold, label_token_ids)``
            returning one value per prompt.
        mode: ``"zero"``, ``"mean"`` (``means`` or the mean over ``reference``, default
            ``prompts``), ``"resample"`` (donors from ``reference``, default ``prompts``;
            seeded) or ``"patch"`` (from ``source``, aligned with ``prompts``).
        positions: ``"query"`` (default; the fast path re-runs only the last token),
            ``"all"``, or a list of positions (negative = from the end).
        heads: restrict the sweep to these heads (others are NaN); default all.
        method: ``"fast"`` (exact, batched) or ``"naive"`` (reference loop: one run per head).
        batch_size: prompts per forward pass (the fast engine caches one such group's clean
            run at a time).
        rows_per_pass: (head, prompt) rows per pass of the fast engine (default 1024 at the
            query, 32 at all positions).
        interventions: background interventions applied to both runs.

    Example::

        effects = ih.head_sweep(model, prompts, "logit_diff", mode="mean")
        effects.top(5, largest=False)        # the heads whose removal hurts most

    Returns:
        ``HeadScores`` named ``"delta_<metric>"`` with ``per_prompt`` ``[prompt, L, H]``
        effects, ``baseline`` = the clean metric, and :class:`SweepSettings`.
    """
    run = check_sweep(
        model,
        prompts,
        metric,
        mode,
        method,
        positions,
        batch_size,
        device,
        interventions,
        seed,
        rows_per_pass,
    )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sel = torch.ones(L, H, dtype=torch.bool) if heads is None else heads_to_mask(heads, L, H)
    template = sweep_template(
        model,
        prompts,
        "z",
        mode,
        run.positions,
        source=source,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=run.device,
        progress=progress,
    )
    layer, head = sel.nonzero().T
    items = SweepItems(site="z", layer=layer, head=head)
    effects, clean = sweep_effects(
        model, prompts, template, run, items, method, batch_size, rows_per_pass, progress
    )
    per_prompt = torch.full((len(prompts), L, H), math.nan)
    per_prompt[:, layer, head] = effects
    settings = sweep_settings(
        "head_sweep",
        model,
        prompts,
        metric,
        mode,
        run.positions,
        "z",
        method,
        seed,
        source=source,
        means=means,
        reference=reference,
        interventions=run.interventions,
    )
    return HeadScores(
        torch.nanmean(per_prompt, 0),
        name=f"delta_{metric_name(metric)}",
        settings=settings,
        per_prompt=per_prompt,
        baseline=float(torch.nanmean(clean, 0)),
    )


def layer_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    site: str = "attn_out",
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    layers: int | Sequence[int] | None = None,
    seed: int = 0,
    method: Literal["fast", "naive"] = "fast",
    batch_size: BatchSize = 16,
    rows_per_pass: BatchSize | None = None,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Effect of intervening on one layer's ``site`` (``resid_pre``, ``resid_mid``,
    ``resid_post``, ``attn_out``, ``mlp_out``), for every layer.

    Same modes, positions, methods and defaults as :func:`head_sweep` (``means``:
    ``[L, d_model]``). ``mode="zero"`` on ``attn_out`` removes the whole attention output
    including ``b_O``.

    Example::

        frame = ih.layer_sweep(model, prompts, site="mlp_out", mode="mean")
        frame[["layer", "effect", "effect_sem"]]

    Returns:
        Tidy DataFrame, one row per layer: ``layer, site, mode, positions, metric, effect,
        effect_sem, clean, n_prompts``; ``.attrs["settings"]`` says how it was made.
    """
    run = check_sweep(
        model,
        prompts,
        metric,
        mode,
        method,
        positions,
        batch_size,
        device,
        interventions,
        seed,
        rows_per_pass,
    )
    if site not in LAYER_SITES:
        raise ValueError(
            f"Unknown layer site {site!r}; choose one of {LAYER_SITES} (for heads use head_sweep)."
        )
    layer_list = layers_to_mask(layers, model.cfg.n_layers).nonzero().flatten()
    template = sweep_template(
        model,
        prompts,
        site,
        mode,
        run.positions,
        source=source,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=run.device,
        progress=progress,
    )
    items = SweepItems(site=site, layer=layer_list)
    effects, clean = sweep_effects(
        model, prompts, template, run, items, method, batch_size, rows_per_pass, progress
    )
    mean, sem, count = _summary(effects)
    frame = pd.DataFrame(
        {
            "layer": layer_list.numpy(),
            "site": site,
            "mode": mode,
            "positions": str(run.positions),
            "metric": metric_name(metric),
            "effect": mean.numpy(),
            "effect_sem": sem.numpy(),
            "clean": float(torch.nanmean(clean, 0)),
            "n_prompts": count.numpy(),
        }
    )
    frame.attrs["settings"] = sweep_settings(
        "layer_sweep",
        model,
        prompts,
        metric,
        mode,
        run.positions,
        site,
        method,
        seed,
        source=source,
        means=means,
        reference=reference,
        interventions=run.interventions,
    )
    return frame


def position_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    layer: int,
    site: str = "resid_pre",
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    source: PromptSet | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    method: Literal["fast", "naive"] = "fast",
    batch_size: BatchSize = 16,
    rows_per_pass: BatchSize | None = None,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Effect of intervening on ``site`` of ``layer`` at one position, for every position.

    Positions are counted from the end (``pos_from_end = -1`` is the query), so they mean
    the same token slot in every left-padded prompt; a prompt contributes only at its real
    (non-pad) positions. ``mode="patch"`` needs ``source`` with prompts of equal length
    (e.g. ``shift_demo_labels(prompts)``).

    ``mode="mean"`` replaces each swept position by the mean over all real tokens
    (``activation_means(..., positions="all")`` of ``reference``, default ``prompts``), the
    same mean at every position; not the mean at that position, as
    ``ablate(positions=[p], mode="mean")`` would take. Pass ``means=`` for other means.

    Example::

        frame = ih.position_sweep(model, prompts, layer=3, mode="patch",
                                  source=shift_demo_labels(prompts))
        frame.nsmallest(3, "effect")[["pos_from_end", "effect"]]

    Returns:
        Tidy DataFrame, one row per position: ``layer, site, mode, pos, pos_from_end,
        metric, effect, effect_sem, clean, n_prompts`` (``pos`` indexes ``prompts.tokens``);
        ``.attrs["settings"]`` says how it was made.
    """
    run = check_sweep(
        model,
        prompts,
        metric,
        mode,
        method,
        "all",
        batch_size,
        device,
        interventions,
        seed,
        rows_per_pass,
    )
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES}.")
    L, T = model.cfg.n_layers, prompts.seq_len
    layer = int(layers_to_mask(layer, L).nonzero()[0])
    template = sweep_template(
        model,
        prompts,
        site,
        mode,
        "all",
        source=source,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=run.device,
        progress=progress,
    )
    from_end = torch.arange(-T, 0)
    items = SweepItems(site=site, layer=torch.full((T,), layer), pos_from_end=from_end)
    effects, clean = sweep_effects(
        model, prompts, template, run, items, method, batch_size, rows_per_pass, progress
    )
    pad = prompts.attention_mask == 0  # [n, T]: no token there -> not counted
    effects = effects.masked_fill(pad.cpu(), math.nan)
    mean, sem, count = _summary(effects)
    frame = pd.DataFrame(
        {
            "layer": layer,
            "site": site,
            "mode": mode,
            "pos": torch.arange(T).numpy(),
            "pos_from_end": from_end.numpy(),
            "metric": metric_name(metric),
            "effect": mean.numpy(),
            "effect_sem": sem.numpy(),
            "clean": float(torch.nanmean(clean, 0)),
            "n_prompts": count.numpy(),
        }
    )
    frame.attrs["settings"] = sweep_settings(
        "position_sweep",
        model,
        prompts,
        metric,
        mode,
        "all",
        site,
        method,
        seed,
        source=source,
        means=means,
        reference=reference,
        interventions=run.interventions,
    )
    return frame


# --------------------------------------------------------------------------- helpers


def _summary(effects: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, standard error and count over prompts (dim 0), NaN-aware."""
    mean = torch.nanmean(effects, 0)
    valid = ~torch.isnan(effects)
    count = valid.sum(0)
    sq = torch.where(valid, (effects - mean) ** 2, torch.zeros_like(effects)).sum(0)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    sem = torch.where(count > 1, std / count.clamp(min=1).sqrt(), torch.full_like(mean, math.nan))
    return mean, sem, count


__all__ = [
    "head_sweep",
    "layer_sweep",
    "position_sweep",
    "attribution_patching",
    "SweepSettings",
    "SWEEP_MODES",
    "SWEEP_METHODS",
    "LAYER_SITES",
    "NON_DIFFERENTIABLE",
]
