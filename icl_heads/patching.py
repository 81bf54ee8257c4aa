"""Activation-patching and ablation sweeps: the effect of every single head, every layer, or
every position of a layer on a metric of the final-position logits.

``effect = metric(intervened run) - metric(clean run)``, per prompt, then averaged over
prompts (NaN-aware). What replaces the activation comes from
:mod:`icl_heads.interventions`: ``"zero"``, ``"mean"``, ``"resample"`` ablation, or
``"patch"`` from an aligned source ``PromptSet``. Background ``interventions=[...]`` act
on both runs (e.g. the effect of every head with the TR heads already ablated).

Two strategies (``method=``):

* ``"naive"`` — the reference loop: one batched run over the prompts per swept item.
* ``"fast"`` (default), exact: the cached-prefix engine of :mod:`icl_heads.last_token`
  (each group of prompts runs once; then only the last token, or only the layers from the
  intervened one on, are re-run for many items at once).

:func:`attribution_patching` gives the first-order approximation ``grad · (replacement - z)``
for every head from one forward and one backward pass per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .activations import check_batch_size, collect, final_logits
from .heads import HeadScores, HeadsLike, heads_to_mask
from .interventions import (
    LAYER_SITES,
    ActivationMeans,
    Capture,
    Positions,
    Replacement,
    RowEdit,
    ablate,
    ablate_layers,
    applied,
    check_interventions,
    check_positions,
    hook_name,
    layers_to_mask,
    patch,
    position_mask,
)
from .last_token import (
    CleanRun,
    check_supported,
    clean_groups,
    clean_run,
    run_items,
    supports_last_token,
)
from .metrics import Metric, get_metric, metric_name
from .models import resolve_device
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo, Settings, describe_interventions, model_name

SWEEP_MODES = ("zero", "mean", "resample", "patch")
SWEEP_METHODS = ("fast", "naive")
#: Metrics that are step functions of the logits: their gradient is zero almost everywhere.
NON_DIFFERENTIABLE = ("accuracy", "label_space_rate", "in_space_accuracy")


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


# --------------------------------------------------------------------------- validation


def _check_aligned(source: PromptSet, target: PromptSet, positions: Positions) -> None:
    """Source and target must align row by row (and in length unless only the query is
    patched)."""
    if len(source) != len(target):
        raise ValueError(f"Source has {len(source)} prompts and target {len(target)}; patching "
                         "pairs source prompt i with target prompt i, so they must align.")
    if positions != "query" and not torch.equal(source.lengths, target.lengths):
        bad = int((source.lengths != target.lengths).nonzero()[0])
        raise ValueError(f"Source and target prompt {bad} differ in length "
                         f"({int(source.lengths[bad])} vs {int(target.lengths[bad])} tokens), so "
                         "their positions do not correspond. Patch positions='query' or use "
                         "aligned prompts of equal length.")


@dataclass(frozen=True)
class _Run:
    """The checked common arguments of a sweep."""

    metric: Metric
    positions: Positions
    interventions: tuple
    device: torch.device


def _check_common(model, prompts, metric, mode, method, positions, batch_size, device,
                  interventions, seed, rows_per_pass=None) -> _Run:
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
    return _Run(metric=metric_fn, positions=check_positions(positions),
                interventions=check_interventions(interventions, model), device=device)


def _template(model, prompts, site, mode, positions, *, source, means, reference, seed,
              batch_size, device, progress) -> Replacement:
    """The intervention on every head (site ``z``) or every layer: the sweeps take its
    replacement values and apply them one item at a time."""
    if mode == "patch":
        if source is None:
            raise ValueError("mode='patch' needs source= (a PromptSet aligned with prompts).")
        check_prompt_set(source, "source", model=model)
        _check_aligned(source, prompts, positions)
        return patch(model, source, site=site, positions=positions, batch_size=batch_size,
                     device=device, progress=progress)
    if source is not None:
        raise ValueError(f"source= is only used with mode='patch' (mode is {mode!r}).")
    if mode in ("mean", "resample") and means is None and reference is None:
        reference = prompts  # the task's own prompts (docs/methods.md)
    kwargs = dict(means=means, reference=reference, seed=seed, batch_size=batch_size,
                  device=device, progress=progress)
    if site == "z":
        every = torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
        return ablate(model, every, mode, positions, **kwargs)
    return ablate_layers(model, None, mode, positions, site=site, **kwargs)


def _settings(analysis, model, prompts, metric, mode, positions, site, method, seed, *,
              source, means, reference, interventions) -> SweepSettings:
    mean_info = None
    if mode == "mean":
        if isinstance(means, ActivationMeans):
            mean_info = means.prompts
        elif means is None:
            mean_info = (reference if reference is not None else prompts).info()
    return SweepSettings(
        analysis=analysis, model=model_name(model), prompts=prompts.info(),
        metric=metric_name(metric), mode=mode, positions=positions, site=site, method=method,
        seed=int(seed), source=source.info() if source is not None else None,
        means=mean_info, interventions=describe_interventions(interventions))


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class _Items:
    """What is swept: item ``i`` intervenes at ``layer[i]`` (on ``head[i]`` for site z, at
    position ``pos_from_end[i]`` for position sweeps; else at the template's positions)."""

    site: str
    layer: Int[Tensor, " item"]
    head: Int[Tensor, " item"] | None = None
    pos_from_end: Int[Tensor, " item"] | None = None

    def __len__(self) -> int:
        return len(self.layer)


# --------------------------------------------------------------------------- naive reference


def _item_intervention(template: Replacement, items: _Items, i: int, L: int, H: int):
    layer = int(items.layer[i])
    if items.site == "z":
        mask = torch.zeros(L, H, dtype=torch.bool)
        mask[layer, int(items.head[i])] = True
    else:
        mask = torch.zeros(L, dtype=torch.bool)
        mask[layer] = True
    iv = template.with_mask(mask)
    if items.pos_from_end is not None:
        iv = replace(iv, positions=(int(items.pos_from_end[i]),))
    return iv


def _naive_effects(model, prompts, template, run: _Run, items, *, batch_size,
                   progress) -> tuple[Tensor, Tensor]:
    """Reference loop: one batched run over all prompts per item. Returns per-prompt
    effects ``[prompt, item]`` and clean metric ``[prompt]``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    gold, labels = prompts.gold, prompts.label_token_ids
    if items.pos_from_end is not None:
        batch_size = len(prompts)  # one untrimmed batch, so every position exists
    kwargs = dict(batch_size=batch_size, device=run.device, progress=False)
    clean_logits = collect(model, prompts, interventions=run.interventions, **kwargs).logits
    clean = run.metric(clean_logits, gold, labels).float().cpu()
    out = torch.full((len(prompts), len(items)), math.nan)
    for i in tqdm(range(len(items)), desc="naive sweep", disable=not progress, leave=False):
        iv = _item_intervention(template, items, i, L, H)
        logits = collect(model, prompts, interventions=[*run.interventions, iv], **kwargs).logits
        out[:, i] = run.metric(logits, gold, labels).float().cpu() - clean
    return out, clean


# --------------------------------------------------------------------------- fast sweep


class _LayerValues:
    """The template's replacement values for one group, one layer at a time (the sweep
    visits layers in order, so one cached layer is enough): ``[G, P, (H,) d]``."""

    def __init__(self, template: Replacement, clean: CleanRun, length: int, shape: tuple):
        self.template, self.clean, self.length, self.shape = template, clean, length, shape
        self.layer, self.values = None, None

    def __call__(self, layer: int) -> Tensor:
        if layer != self.layer:
            group = self.clean.group
            v = self.template.values(layer, group, self.clean.index, self.length, len(group))
            self.layer, self.values = layer, v.to(group.tokens.device).expand(self.shape)
        return self.values


def _edit_for(items: _Items, chunk: Tensor, values: _LayerValues, sel_pos: Tensor, T: int,
              G: int):
    """The engine's ``edit(layer, lo, hi, rows)``: items ``chunk[lo:hi]`` get their
    replacement (one head, layer output or position each) on their rows."""
    def edit(layer: int, lo: int, hi: int, rows: Tensor) -> RowEdit:
        device = rows.device
        it = chunk[lo:hi].repeat_interleave(G)  # item of each row (rows[j, g], row-major)
        g = torch.arange(G, device=device).repeat(hi - lo)
        vals = values(layer)
        head = None
        if items.pos_from_end is not None:
            pos = (T + items.pos_from_end[it]).to(device)[:, None]
            v = vals[g[:, None], pos]
        else:
            pos = sel_pos[None].expand(len(it), -1)
            if items.site == "z":
                head = items.head[it].to(device)
                v = vals[g[:, None], sel_pos[None], head[:, None]]
            else:
                v = vals[g[:, None], sel_pos[None]]
        return RowEdit(hook=hook_name(items.site, layer), rows=rows.flatten(), pos=pos,
                       values=v, head=head)

    return edit


def _fast_effects(model, prompts, template, run: _Run, items, *, query_only: bool,
                  batch_size: int, rows_per_pass: int, progress) -> tuple[Tensor, Tensor]:
    """Exact batched sweep. Returns per-prompt effects ``[prompt, item]`` (NaN where not
    computed) and the clean metric ``[prompt]``."""
    if query_only and any(getattr(iv, "positions", "all") not in ("all", "query")
                          for iv in run.interventions):
        raise ValueError("Background interventions at explicit positions cannot be replayed "
                         "on the fast query path (it re-runs only the last token); use "
                         "method='naive' or positions 'all'/'query' for them.")
    n, device = len(prompts), run.device
    out = torch.full((n, len(items)), math.nan)
    clean_all = torch.full((n,), math.nan)
    layers_needed = sorted(set(items.layer.tolist()))
    for part in clean_groups(model, prompts, layers=layers_needed, query_only=query_only,
                             interventions=run.interventions, batch_size=batch_size,
                             device=device, progress=progress, desc="fast sweep",
                             runs_per_prompt=len(items)):
        gidx, group, clean = part.index, part.prompts, part.clean
        G, T = len(group), group.seq_len
        clean_m = run.metric(clean.logits, group.gold, group.label_token_ids).float()
        clean_all[gidx] = clean_m.cpu()
        length = 1 if query_only else T
        shape = (G, length, model.cfg.n_heads, model.cfg.d_head) if items.site == "z" \
            else (G, length, model.cfg.d_model)
        values = _LayerValues(template, clean, length, shape)
        if query_only or template.positions == "all":
            sel_pos = torch.arange(length, device=device)
        else:
            sel_pos = position_mask(template.positions, length, device).nonzero().flatten()
        todo = torch.arange(len(items))
        if items.pos_from_end is not None:  # positions that exist in this group
            todo = todo[items.pos_from_end >= -T]
        order = todo[torch.argsort(items.layer[todo], stable=True)]
        per_chunk = max(1, rows_per_pass // G)
        for c0 in range(0, len(order), per_chunk):
            chunk = order[c0:c0 + per_chunk]
            edit = _edit_for(items, chunk, values, sel_pos, T, G)
            logits = run_items(model, clean, items.layer[chunk], edit, run.interventions)
            r = logits.shape[0]
            m = run.metric(logits.reshape(r * G, -1), group.gold.repeat(r),
                           group.label_token_ids).float().reshape(r, G)
            out[gidx[None, :], chunk[:, None]] = (m - clean_m[None]).cpu()
            part.tick(r * G)
    return out, clean_all


def _effects(model, prompts, template, run: _Run, items, method, batch_size, rows_per_pass,
             progress):
    query_only = run.positions == "query"
    if method == "naive":
        return _naive_effects(model, prompts, template, run, items, batch_size=batch_size,
                              progress=progress)
    if rows_per_pass is None:
        rows_per_pass = 1024 if query_only else 32
    return _fast_effects(model, prompts, template, run, items, query_only=query_only,
                         batch_size=batch_size, rows_per_pass=rows_per_pass, progress=progress)


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
    batch_size: int = 16,
    rows_per_pass: int | None = None,
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
    run = _check_common(model, prompts, metric, mode, method, positions, batch_size, device,
                        interventions, seed, rows_per_pass)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sel = torch.ones(L, H, dtype=torch.bool) if heads is None else heads_to_mask(heads, L, H)
    template = _template(model, prompts, "z", mode, run.positions, source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size,
                         device=run.device, progress=progress)
    layer, head = sel.nonzero().T
    items = _Items(site="z", layer=layer, head=head)
    effects, clean = _effects(model, prompts, template, run, items, method, batch_size,
                              rows_per_pass, progress)
    per_prompt = torch.full((len(prompts), L, H), math.nan)
    per_prompt[:, layer, head] = effects
    settings = _settings("head_sweep", model, prompts, metric, mode, run.positions, "z", method,
                         seed, source=source, means=means, reference=reference,
                         interventions=run.interventions)
    return HeadScores(torch.nanmean(per_prompt, 0), name=f"delta_{metric_name(metric)}",
                      settings=settings, per_prompt=per_prompt,
                      baseline=float(torch.nanmean(clean, 0)))


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
    batch_size: int = 16,
    rows_per_pass: int | None = None,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Effect of intervening on one layer's ``site`` (``resid_pre``, ``resid_mid``,
    ``resid_post``, ``attn_out``, ``mlp_out``), for every layer.

    Same modes, positions, methods and defaults as :func:`head_sweep` (``means``:
    ``[L, d_model]``). ``mode="zero"`` on ``attn_out`` removes the whole attention output
    including ``b_O``.

    Returns:
        Tidy DataFrame, one row per layer: ``layer, site, mode, positions, metric, effect,
        effect_sem, clean, n_prompts``; ``.attrs["settings"]`` says how it was made.
    """
    run = _check_common(model, prompts, metric, mode, method, positions, batch_size, device,
                        interventions, seed, rows_per_pass)
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES} (for heads "
                         "use head_sweep).")
    layer_list = layers_to_mask(layers, model.cfg.n_layers).nonzero().flatten()
    template = _template(model, prompts, site, mode, run.positions, source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size,
                         device=run.device, progress=progress)
    items = _Items(site=site, layer=layer_list)
    effects, clean = _effects(model, prompts, template, run, items, method, batch_size,
                              rows_per_pass, progress)
    mean, sem, count = _summary(effects)
    frame = pd.DataFrame({
        "layer": layer_list.numpy(), "site": site, "mode": mode,
        "positions": str(run.positions), "metric": metric_name(metric), "effect": mean.numpy(),
        "effect_sem": sem.numpy(), "clean": float(torch.nanmean(clean, 0)),
        "n_prompts": count.numpy(),
    })
    frame.attrs["settings"] = _settings("layer_sweep", model, prompts, metric, mode,
                                        run.positions, site, method, seed, source=source,
                                        means=means, reference=reference,
                                        interventions=run.interventions)
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
    batch_size: int = 16,
    rows_per_pass: int | None = None,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Effect of intervening on ``site`` of ``layer`` at one position, for every position.

    Positions are counted from the end (``pos_from_end = -1`` is the query), so they mean
    the same token slot in every left-padded prompt; a prompt contributes only at its real
    (non-pad) positions. ``mode="patch"`` needs ``source`` with prompts of equal length
    (e.g. ``shift_demo_labels(prompts)``).

    Returns:
        Tidy DataFrame, one row per position: ``layer, site, mode, pos, pos_from_end,
        metric, effect, effect_sem, clean, n_prompts`` (``pos`` indexes ``prompts.tokens``);
        ``.attrs["settings"]`` says how it was made.
    """
    run = _check_common(model, prompts, metric, mode, method, "all", batch_size, device,
                        interventions, seed, rows_per_pass)
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES}.")
    L, T = model.cfg.n_layers, prompts.seq_len
    layer = int(layers_to_mask(layer, L).nonzero()[0])
    template = _template(model, prompts, site, mode, "all", source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size,
                         device=run.device, progress=progress)
    from_end = torch.arange(-T, 0)
    items = _Items(site=site, layer=torch.full((T,), layer), pos_from_end=from_end)
    effects, clean = _effects(model, prompts, template, run, items, method, batch_size,
                              rows_per_pass, progress)
    pad = prompts.attention_mask == 0  # [n, T]: no token there -> not counted
    effects = effects.masked_fill(pad.cpu(), math.nan)
    mean, sem, count = _summary(effects)
    frame = pd.DataFrame({
        "layer": layer, "site": site, "mode": mode, "pos": torch.arange(T).numpy(),
        "pos_from_end": from_end.numpy(), "metric": metric_name(metric),
        "effect": mean.numpy(), "effect_sem": sem.numpy(),
        "clean": float(torch.nanmean(clean, 0)), "n_prompts": count.numpy(),
    })
    frame.attrs["settings"] = _settings("position_sweep", model, prompts, metric, mode, "all",
                                        site, method, seed, source=source, means=means,
                                        reference=reference, interventions=run.interventions)
    return frame


# --------------------------------------------------------------------------- attribution


def attribution_patching(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> HeadScores:
    """Attribution patching: a first-order estimate of every head's effect at once.

    For prompt ``i`` and head ``(l, h)``::

        effect ~ sum_{pos in positions} sum_d  dM_i/dz[pos, l, h, d] * (z'[pos, l, h, d] - z[pos, l, h, d])

    where ``z`` is the target run's ``hook_z``, ``z'`` the replacement (0, the mean, a
    donor's or the source's ``z``, as in :func:`head_sweep`) and ``M_i`` the metric. One
    forward and one backward pass per batch of prompts give every head's estimate (the
    gradient is taken with respect to ``hook_z`` only, so no weight gradients are
    computed). With ``positions="query"`` the prefix runs once without gradients and only
    the last token goes forward and backward (the query's ``z`` reaches the metric only
    through the last token), which gives the same gradient for less. The metric must be
    differentiable (``"logit_diff"`` or a callable); step metrics such as accuracy have zero
    gradient and are refused.

    Returns:
        ``HeadScores`` named ``"attribution_<metric>"`` (per-prompt estimates in
        ``per_prompt``), directly comparable with :func:`head_sweep`'s effects.
    """
    run = _check_common(model, prompts, metric, mode, "naive", positions, batch_size, device,
                        interventions, seed)
    if isinstance(metric, str) and metric in NON_DIFFERENTIABLE:
        raise ValueError(f"Attribution patching needs a differentiable metric; {metric!r} is a "
                         "step function of the logits (zero gradient). Use 'logit_diff' or a "
                         "smooth callable.")
    template = _template(model, prompts, "z", mode, run.positions, source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size,
                         device=run.device, progress=progress)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name("z", layer) for layer in range(L)]
    per_prompt = torch.zeros(len(prompts), L, H)
    starts = range(0, len(prompts), batch_size)
    # A specialised loop, not iter_batches: that one runs under inference_mode, and this
    # needs a backward pass.
    for s in tqdm(starts, desc="attribution patching", disable=not progress, leave=False):
        index = torch.arange(s, min(s + batch_size, len(prompts)))
        batch = prompts.select(index).to(run.device)
        zs, grads = _z_grads(model, batch, index, run, names)
        T = zs[0].shape[1]  # 1 on the last-token path
        pos = position_mask(run.positions, T, run.device)[None, :, None, None]
        for layer, (z, grad) in enumerate(zip(zs, grads, strict=True)):
            with torch.no_grad():
                rep = template.values(layer, batch, index, T, len(index)).to(run.device)
                delta = (rep - z.detach()) * pos
                per_prompt[index, layer] = (grad * delta).sum((1, 3)).float().cpu()
    settings = _settings("attribution_patching", model, prompts, metric, mode, run.positions,
                         "z", "attribution", seed, source=source, means=means,
                         reference=reference, interventions=run.interventions)
    return HeadScores(torch.nanmean(per_prompt, 0), name=f"attribution_{metric_name(metric)}",
                      settings=settings, per_prompt=per_prompt)


def _z_grads(model, batch: PromptSet, index: Tensor, run: _Run, names: list[str]):
    """``hook_z`` of every layer and the metric's gradient with respect to it, from one
    forward and one backward pass. At the query (on supported architectures) the prefix
    runs once without gradients and only the last token goes forward and backward."""
    last_token = run.positions == "query" and supports_last_token(model, batch.seq_len)
    if last_token:
        with torch.no_grad():
            clean = clean_run(model, batch, index, query_only=True, layers=[0],
                              interventions=run.interventions)
    capture = Capture(names=set(names).__contains__, positions="all", keep_grad=True)
    with torch.enable_grad(), applied(model, [capture]):
        if last_token:
            logits = run_items(model, clean, torch.zeros(1, dtype=torch.long),
                               interventions=run.interventions)[0]
        else:
            with applied(model, run.interventions, batch, index):
                resid = model(batch.tokens, attention_mask=batch.attention_mask,
                              stop_at_layer=model.cfg.n_layers)
            logits = final_logits(model, resid[:, -1])
        zs = [capture.store[name] for name in names]
        value = run.metric(logits, batch.gold, batch.label_token_ids)
        if not value.requires_grad:
            raise ValueError("The metric's value does not depend differentiably on the "
                             "logits; attribution patching needs a differentiable metric.")
        grads = torch.autograd.grad(value.sum(), zs, allow_unused=True)
    return zs, [torch.zeros_like(z) if g is None else g for z, g in zip(zs, grads, strict=True)]


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


__all__ = ["head_sweep", "layer_sweep", "position_sweep", "attribution_patching",
           "SweepSettings", "SWEEP_MODES", "SWEEP_METHODS", "LAYER_SITES"]
