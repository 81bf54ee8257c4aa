"""What the conditions of :func:`~icl_heads.experiments.geometry.head_ablation_geometry`
share: one clean pass per group of prompts (the clean query states, and the residual stream
from which every ablated run restarts at its first ablated block), and the geometry of every
state an ablation cannot change (the clean curves, measured once).

Ablating heads of blocks ``f, ...`` changes only the states after block ``f`` (state ``i`` =
the stream after ``i`` blocks, so states ``0 .. f`` are the clean ones): an ablated run
restarts from the clean residual before block ``f``
(:func:`~icl_heads.last_token.run_items`), and only its states ``> f`` are captured and
measured; the others are the clean values, spliced in (:func:`splice_curves`).

Example::

    clean, changed = condition_states(model, prompts, [((iv,), 3)], [0, 2, 4, 6],
                                      query_only=False)
    changed[0].shape    # [prompt, 2, d_model]: states 4 and 6 (after blocks 3 and 5 changed)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ...backends import HookedTransformer
from ...batching import BatchSize
from ...geometry import GeometryCurves, run_query, state_hook_names
from ...hooks import Capture, Intervention
from ...last_token import check_supported, clean_groups, run_items
from ...prompts import PromptSet
from .curves import measure_geometry

#: One ablated condition: its interventions and its first ablated block (``None``: it
#: changes nothing, e.g. an empty head set).
AblatedRun = tuple[Sequence[Intervention], int | None]


def changed_layers(layers: Sequence[int], first_block: int | None) -> list[int]:
    """The states among ``layers`` that an intervention from block ``first_block`` on can
    change: those after it (``> first_block``).

    Example::

        changed_layers([0, 1, 2, 3, 4], 2)     # [3, 4]
    """
    if first_block is None:
        return []
    return [int(x) for x in layers if x > first_block]


def condition_states(
    model: HookedTransformer,
    prompts: PromptSet,
    runs: Sequence[AblatedRun],
    layers: Sequence[int],
    *,
    query_only: bool,
    background: Sequence[Intervention] = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[Float[Tensor, "prompt layer d_model"], list[Float[Tensor, "prompt changed d_model"]]]:
    """The clean query states at ``layers`` and, per run, its states at
    :func:`changed_layers`, sharing one clean pass per group of ``batch_size`` prompts.

    Each run restarts from the clean residual before its first ablated block (only the last
    token when ``query_only``: ablations at the query alone); ``background`` interventions
    act in every run, the clean one too. Hooks fire in the order of
    :func:`~icl_heads.geometry.run_query` (the capture before the interventions), so the
    numbers are those of one full pass per condition. The progress bar ticks once per group
    of prompts and run.

    Example::

        clean, changed = condition_states(model, prompts, [((iv,), 3)], range(7),
                                          query_only=False)
    """
    names = state_hook_names(model)
    wanted = [names[i] for i in layers]
    changed = [changed_layers(layers, first) for _, first in runs]
    try:
        check_supported(model)
    except ValueError:  # e.g. shortformer: one full pass per run (the same numbers)
        return _full_passes(model, prompts, runs, layers, changed, background, batch_size, device)
    starts = sorted({first for _, first in runs if first is not None})
    n_runs = 1 + sum(1 for c in changed if c)
    clean_rows: list[Tensor] = []
    run_rows: list[list[Tensor]] = [[] for _ in runs]
    clean_capture = Capture(names=set(wanted).__contains__, positions="query")
    for group in clean_groups(
        model,
        prompts,
        layers=starts or [model.cfg.n_layers - 1],
        query_only=query_only,
        interventions=[clean_capture, *background],
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="ablated runs",
        runs_per_prompt=n_runs,
    ):
        G = len(group.index)
        clean_rows.append(_stack(clean_capture.store, wanted))
        group.tick(G)
        for j, ((ivs, first), keep) in enumerate(zip(runs, changed, strict=True)):
            if not keep:
                continue
            keep_names = [names[i] for i in keep]
            capture = Capture(names=set(keep_names).__contains__, positions="query")
            run_items(
                model,
                group.clean,
                torch.tensor([first]),
                None,
                [capture, *background, *ivs],
            )
            run_rows[j].append(_stack(capture.store, keep_names))
            group.tick(G)
    clean = torch.cat(clean_rows)
    return clean, [torch.cat(rows) if rows else clean[:, :0] for rows in run_rows]


def _full_passes(model, prompts, runs, layers, changed, background, batch_size, device):
    """One full pass per run (architectures the cached-prefix engine cannot restart)."""
    opts = dict(batch_size=batch_size, device=device, progress=False)
    clean, _ = run_query(model, prompts, list(layers), interventions=background, **opts)
    out = []
    for (ivs, _), keep in zip(runs, changed, strict=True):
        if not keep:
            out.append(clean[:, :0])
            continue
        states, _ = run_query(model, prompts, keep, interventions=[*background, *ivs], **opts)
        out.append(states)
    return clean, out


def _stack(store: dict, names: Sequence[str]) -> Tensor:
    # each layer's states on its block's device (n_devices > 1): moved before stacking
    return torch.stack([store[n].to("cpu", torch.float32) for n in names], dim=1)


def measure_by_layer(
    model: HookedTransformer,
    prompts: PromptSet,
    states: Float[Tensor, "prompt layer d_model"],
    layers: Sequence[int],
    *,
    folds: int,
    seed: int,
    n_boot: int,
    C: float,
    tick: Callable[[int], None] | None = None,
) -> GeometryCurves:
    """:func:`~icl_heads.experiments.geometry.curves.measure_geometry` of ``states``, one
    state at a time (every metric of a state depends on that state alone, so the curves are
    the same as in one call), calling ``tick(1)`` after each.

    Example::

        curves = measure_by_layer(model, prompts, states, [0, 3], folds=5, seed=0,
                                  n_boot=1000, C=1.0)
    """
    parts = []
    for j, layer in enumerate(layers):
        parts.append(
            measure_geometry(
                model,
                prompts,
                states[:, j : j + 1],
                [layer],
                folds=folds,
                seed=seed,
                n_boot=n_boot,
                C=C,
            )
        )
        if tick is not None:
            tick(1)
    return concat_curves(parts)


def concat_curves(parts: Sequence[GeometryCurves]) -> GeometryCurves:
    """Curves of disjoint layers side by side (in the order given).

    Example::

        concat_curves([curves_0_to_3, curves_4_to_6]).layers    # (0, ..., 6)
    """
    first = parts[0]
    out = GeometryCurves(tuple(x for p in parts for x in p.layers), first.n, chance=first.chance)
    for metric in first.metrics:
        out.values[metric] = np.concatenate([p.values[metric] for p in parts])
        out.replicates[metric] = np.concatenate([p.replicates[metric] for p in parts], axis=1)
    for metric in first.per_prompt:
        out.per_prompt[metric] = np.concatenate([p.per_prompt[metric] for p in parts], axis=1)
    return out


def splice_curves(clean: GeometryCurves, changed: GeometryCurves | None) -> GeometryCurves:
    """``clean`` with the columns of ``changed``'s layers replaced by ``changed``'s.

    Example::

        splice_curves(clean, measure_by_layer(model, prompts, states, [4, 6], ...))
    """
    out = GeometryCurves(clean.layers, clean.n, chance=clean.chance)
    index = {layer: j for j, layer in enumerate(clean.layers)}
    cols = [index[x] for x in changed.layers] if changed is not None else []
    for metric in clean.metrics:
        values, reps = clean.values[metric].copy(), clean.replicates[metric].copy()
        if cols:
            values[cols] = changed.values[metric]
            reps[:, cols] = changed.replicates[metric]
        out.values[metric], out.replicates[metric] = values, reps
    for metric, per_prompt in clean.per_prompt.items():
        per_prompt = per_prompt.copy()
        if cols:
            per_prompt[:, cols] = changed.per_prompt[metric]
        out.per_prompt[metric] = per_prompt
    return out


def measure_conditions(
    model: HookedTransformer,
    prompts: PromptSet,
    clean: Float[Tensor, "prompt layer d_model"],
    changed: Sequence[Float[Tensor, "prompt changed d_model"]],
    layers: Sequence[int],
    changed_at: Sequence[Sequence[int]],
    *,
    folds: int,
    seed: int,
    n_boot: int,
    C: float,
    progress: bool = True,
) -> tuple[GeometryCurves, list[GeometryCurves]]:
    """The clean curves over ``layers`` and each run's curves: its changed states measured,
    the clean values elsewhere. One progress bar ticks per state measured.

    Example::

        base, runs = measure_conditions(model, prompts, clean, changed, layers,
                                        [changed_layers(layers, 3)], folds=5, seed=0,
                                        n_boot=1000, C=1.0)
    """
    total = len(layers) + sum(len(c) for c in changed_at)
    geo = dict(folds=folds, seed=seed, n_boot=n_boot, C=C)
    with tqdm(total=total, desc="geometry", disable=not progress, leave=False, unit="state") as bar:
        base = measure_by_layer(model, prompts, clean, layers, tick=bar.update, **geo)
        out = []
        for states, at in zip(changed, changed_at, strict=True):
            part = (
                measure_by_layer(model, prompts, states, at, tick=bar.update, **geo) if at else None
            )
            out.append(splice_curves(base, part))
    return base, out


def difference_curves(curves: GeometryCurves, base: GeometryCurves) -> GeometryCurves:
    """``curves - base`` layer by layer, replicate by replicate (both from the same prompt
    resamples, so the interval of the difference is paired).

    Example::

        curve_rows(difference_curves(ablated, clean), "PTH")
    """
    out = GeometryCurves(curves.layers, curves.n, chance=curves.chance)
    for metric in curves.metrics:
        with np.errstate(invalid="ignore"):
            out.values[metric] = curves.values[metric] - base.values[metric]
            out.replicates[metric] = curves.replicates[metric] - base.replicates[metric]
    return out
