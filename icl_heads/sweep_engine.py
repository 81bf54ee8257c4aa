"""The two engines behind the patching sweeps: per-prompt effects of every swept item.

* ``"naive"``: the reference loop, one batched run over the prompts per item.
* ``"fast"``, exact: the cached-prefix engine of :mod:`icl_heads.last_token` driven by
  :func:`~icl_heads.last_token.clean_groups` (each group of prompts runs once; then only the
  last token, or only the layers from the intervened one on, are re-run for many items at
  once). On a ``TransformerBridge``, which the engine cannot run
  (:func:`icl_heads.backends.supports_engine`), ``"fast"`` runs the reference loop: the
  same numbers, slower.

An item intervenes at one layer (on one head for site ``z``, at one position for position
sweeps); what replaces the activation comes from the sweep's template
(:func:`~icl_heads.sweep_setup.sweep_template`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .activations import collect
from .backends import HookedTransformer, supports_engine
from .batching import AUTO, BatchSize, halving, resolve_batch_size
from .hooks import hook_name, position_mask
from .interventions import Replacement, RowEdit
from .last_token import CleanRun, clean_groups, run_items
from .prompts import PromptSet
from .sweep_setup import SweepRun


@dataclass(frozen=True)
class SweepItems:
    """What is swept: item ``i`` intervenes at ``layer[i]`` (on ``head[i]`` for site z, at
    position ``pos_from_end[i]`` for position sweeps; else at the template's positions).

    Example::

        items = SweepItems(site="z", layer=torch.tensor([0, 0]), head=torch.tensor([0, 1]))
    """

    site: str
    layer: Int[Tensor, " item"]
    head: Int[Tensor, " item"] | None = None
    pos_from_end: Int[Tensor, " item"] | None = None

    def __len__(self) -> int:
        return len(self.layer)


def sweep_effects(
    model: HookedTransformer,
    prompts: PromptSet,
    template: Replacement,
    run: SweepRun,
    items: SweepItems,
    method: str,
    batch_size: BatchSize,
    rows_per_pass: BatchSize | None,
    progress: bool,
) -> tuple[Float[Tensor, "prompt item"], Float[Tensor, " prompt"]]:
    """Per-prompt effects ``metric(intervened) - metric(clean)`` of every item ``[prompt,
    item]`` (NaN where not computed) and the clean metric ``[prompt]``.

    ``rows_per_pass`` (fast engine): (item, prompt) rows per pass, default 1024 at the query
    and 32 at all positions; ``"auto"``: as many as fit the device
    (:mod:`icl_heads.batching`). A pass that runs out of memory is retried with half the
    rows, and later passes keep that number.

    Example::

        effects, clean = sweep_effects(model, prompts, template, run, items, "fast", 16,
                                       None, False)
    """
    query_only = run.positions == "query"
    if method == "naive" or not supports_engine(model):
        return _naive_effects(
            model, prompts, template, run, items, batch_size=batch_size, progress=progress
        )
    if rows_per_pass is None:
        rows_per_pass = 1024 if query_only else 32
    elif rows_per_pass == AUTO:
        kind = "query_rows" if query_only else "all_rows"
        rows_per_pass = resolve_batch_size(
            AUTO, model, prompts, kind=kind, device=run.device, what="rows_per_pass"
        )
    return _fast_effects(
        model,
        prompts,
        template,
        run,
        items,
        query_only=query_only,
        batch_size=batch_size,
        rows_per_pass=rows_per_pass,
        progress=progress,
    )


# --------------------------------------------------------------------------- naive reference


def _item_intervention(template: Replacement, items: SweepItems, i: int, L: int, H: int):
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


def _naive_effects(
    model, prompts, template, run: SweepRun, items, *, batch_size, progress
) -> tuple[Tensor, Tensor]:
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


def _edit_for(
    items: SweepItems, chunk: Tensor, values: _LayerValues, sel_pos: Tensor, T: int, G: int
):
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
        return RowEdit(
            hook=hook_name(items.site, layer), rows=rows.flatten(), pos=pos, values=v, head=head
        )

    return edit


def _items_pass(model, clean, items, order, values, sel_pos, run: SweepRun, c0: int, c1: int):
    """Logits ``[item, G, d_vocab]`` of the items ``order[c0:c1]`` over the clean group."""
    chunk = order[c0:c1]
    edit = _edit_for(items, chunk, values, sel_pos, clean.group.seq_len, len(clean.group))
    return run_items(model, clean, items.layer[chunk], edit, run.interventions)


def _fast_effects(
    model,
    prompts,
    template,
    run: SweepRun,
    items,
    *,
    query_only: bool,
    batch_size: int,
    rows_per_pass: int,
    progress,
) -> tuple[Tensor, Tensor]:
    """Exact batched sweep. Returns per-prompt effects ``[prompt, item]`` (NaN where not
    computed) and the clean metric ``[prompt]``."""
    if query_only and any(
        getattr(iv, "positions", "all") not in ("all", "query") for iv in run.interventions
    ):
        raise ValueError(
            "Background interventions at explicit positions cannot be replayed "
            "on the fast query path (it re-runs only the last token); use "
            "method='naive' or positions 'all'/'query' for them."
        )
    n, device = len(prompts), run.device
    out = torch.full((n, len(items)), math.nan, device=device)  # copied to the CPU once
    clean_all = torch.full((n,), math.nan)
    layers_needed = sorted(set(items.layer.tolist()))
    for part in clean_groups(
        model,
        prompts,
        layers=layers_needed,
        query_only=query_only,
        interventions=run.interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="fast sweep",
        runs_per_prompt=len(items),
    ):
        gidx, group, clean = part.index, part.prompts, part.clean
        G, T = len(group), group.seq_len
        clean_m = run.metric(clean.logits, group.gold, group.label_token_ids).float()
        clean_all[gidx] = clean_m.cpu()
        length = 1 if query_only else T
        shape = (
            (G, length, model.cfg.n_heads, model.cfg.d_head)
            if items.site == "z"
            else (G, length, model.cfg.d_model)
        )
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
        items_run = partial(_items_pass, model, clean, items, order, values, sel_pos, run)
        # a pass that runs out of memory is retried with half the items (icl_heads.batching)
        for c0, c1, logits in halving(len(order), per_chunk, items_run, device=device):
            chunk, r = order[c0:c1], logits.shape[0]
            m = (
                run.metric(logits.reshape(r * G, -1), group.gold.repeat(r), group.label_token_ids)
                .float()
                .reshape(r, G)
            )
            rows, cols = gidx[None, :].to(device), chunk[:, None].to(device)
            out[rows, cols] = (m - clean_m[None]).to(device)
            part.tick(r * G)
    return out.cpu(), clean_all


__all__ = ["SweepItems", "sweep_effects"]
