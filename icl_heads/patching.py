"""Activation-patching and ablation sweeps: the effect of every single head, every layer, or
every position of a layer on a metric of the final-position logits.

``effect = metric(intervened run) - metric(clean run)``, per prompt, then averaged over
prompts (NaN-aware). Interventions (what replaces the activation) come from
:mod:`icl_heads.interventions`: ``"zero"``, ``"mean"``, ``"resample"`` ablation, or
``"patch"`` from an aligned source ``PromptSet``.

Three strategies (``method=``):

* ``"naive"`` — the reference loop: one batched run over the prompts per swept item, through
  :func:`icl_heads.activations.collect`.
* ``"fast"`` (default), exact:

  - query-position interventions (``positions="query"``): the query is the last token, so an
    intervention there changes nothing before it. Each group of prompts is run once, keeping
    the keys/values of every position but the last (TransformerLens's key/value cache) and
    the last token's residual stream before every layer. Then only the last token is re-run,
    one swept item per batch row, and each row *starts at its own layer* from the cached
    residual (rows join the batch as the loop over blocks reaches their layer).
  - all-position interventions: the residual stream before the intervened layer is
    unchanged, so each row starts at its layer from the clean run's cached residual, with
    many items stacked along the batch axis.

* :func:`attribution_patching` — the first-order approximation ``grad · (replacement - z)``
  for every head from one forward and one backward pass per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from .activations import collect, final_logits
from .heads import HeadScores, HeadsLike, heads_to_mask
from .interventions import (
    HeadMeans,
    Positions,
    Record,
    RowEdit,
    _make_ablation,
    _Replacement,
    applied,
    check_positions,
    hook_name,
    patch,
    position_mask,
)
from .metrics import Metric, get_metric
from .prompts import PromptSet, check_prompt_set

SWEEP_MODES = ("zero", "mean", "resample", "patch")
LAYER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Metrics that are step functions of the logits: their gradient is zero almost everywhere.
NON_DIFFERENTIABLE = ("accuracy", "label_space_rate", "in_space_accuracy")


# --------------------------------------------------------------------------- validation


def _metric_name(metric: str | Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")


def _check_aligned(source: PromptSet, target: PromptSet, positions: Positions) -> None:
    """Source and target must align row by row (and in length unless only the query is
    patched)."""
    check_prompt_set(source, "source")
    if len(source) != len(target):
        raise ValueError(f"Source has {len(source)} prompts and target {len(target)}; patching "
                         "pairs source prompt i with target prompt i, so they must align.")
    if positions != "query" and not torch.equal(source.lengths, target.lengths):
        bad = int((source.lengths != target.lengths).nonzero()[0])
        raise ValueError(f"Source and target prompt {bad} differ in length "
                         f"({int(source.lengths[bad])} vs {int(target.lengths[bad])} tokens), so "
                         "their positions do not correspond. Patch positions='query' or use "
                         "aligned prompts of equal length.")


def _check_common(model, prompts, metric, mode, method):
    check_prompt_set(prompts)
    metric_fn = get_metric(metric)
    if mode not in SWEEP_MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {SWEEP_MODES}.")
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', got {method!r}.")
    if method == "fast" and model.cfg.positional_embedding_type == "shortformer":
        raise ValueError("The fast sweeps do not support shortformer positional embeddings; "
                         "use method='naive'.")
    return metric_fn


def _template(model, prompts, site, mode, positions, *, source, means, reference, seed,
              batch_size, device, progress) -> _Replacement:
    """The intervention on every head (site ``z``) or every layer: the sweeps take its
    replacement values and apply them one item at a time."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if mode == "patch":
        if source is None:
            raise ValueError("mode='patch' needs source= (a PromptSet aligned with prompts).")
        _check_aligned(source, prompts, positions)
        return patch(model, source, site=site, positions=positions, batch_size=batch_size,
                     device=device, progress=progress)
    if source is not None:
        raise ValueError(f"source= is only used with mode='patch' (mode is {mode!r}).")
    if mode in ("mean", "resample") and means is None and reference is None:
        reference = prompts  # the task's own prompts (METHODS.md)
    mask = torch.ones(L, H, dtype=torch.bool) if site == "z" else torch.ones(L, dtype=torch.bool)
    return _make_ablation(model, site, mask, mode, positions, means=means, reference=reference,
                          seed=seed, batch_size=batch_size, device=device, progress=progress)


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


def _item_intervention(template: _Replacement, items: _Items, i: int, L: int, H: int):
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


def _naive_effects(model, prompts, template, metric_fn, items, *, batch_size, device,
                   progress) -> tuple[Tensor, Tensor]:
    """Reference loop: one batched run over all prompts per item. Returns per-prompt
    effects ``[prompt, item]`` and clean metric ``[prompt]``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    gold, labels = prompts.gold, prompts.label_token_ids
    if items.pos_from_end is not None:
        batch_size = len(prompts)  # one untrimmed batch, so every position exists
    clean_logits = collect(model, prompts, batch_size=batch_size, device=device,
                           progress=False).logits
    clean = metric_fn(clean_logits, gold, labels).float().cpu()
    out = torch.full((len(prompts), len(items)), math.nan)
    for i in tqdm(range(len(items)), desc="naive sweep", disable=not progress, leave=False):
        iv = _item_intervention(template, items, i, L, H)
        logits = collect(model, prompts, batch_size=batch_size, device=device,
                         interventions=[iv], progress=False).logits
        out[:, i] = metric_fn(logits, gold, labels).float().cpu() - clean
    return out, clean


# --------------------------------------------------------------------------- fast engine


@dataclass
class _Clean:
    logits: Tensor  # [G, vocab]
    resid: dict  # layer -> [G, P, d_model] residual before the layer (P = 1 or T)
    kv: list | None  # per layer (keys, values) of all positions but the last


def _clean_query(model: HookedTransformer, group: PromptSet) -> _Clean:
    """One clean pass of a group, keeping the prefix's keys/values and the last token's
    residual stream before every layer. (A specialised run: ``iter_batches`` has no
    key/value cache.)"""
    G, L = len(group), model.cfg.n_layers
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, G)
    rec = Record(names=lambda name: name.endswith("hook_resid_pre"), pos="query")
    with applied(model, [rec]):
        resid = model(group.tokens, attention_mask=group.attention_mask, past_kv_cache=cache,
                      stop_at_layer=L)
    logits = final_logits(model, resid[:, -1])
    kv = [(e.past_keys[:, :-1], e.past_values[:, :-1]) for e in cache.entries]
    res = {layer: rec.store[hook_name("resid_pre", layer)][:, None] for layer in range(L)}
    return _Clean(logits=logits, resid=res, kv=kv)


def _clean_all(model: HookedTransformer, group: PromptSet, layers: list[int]) -> _Clean:
    """One clean pass of a group keeping the residual stream before ``layers`` (all
    positions)."""
    names = [hook_name("resid_pre", layer) for layer in layers]
    got = collect(model, group, names, pos="all", batch_size=len(group), progress=False)
    resid = {layer: got.activations[name] for layer, name in zip(layers, names, strict=True)}
    return _Clean(logits=got.logits, resid=resid, kv=None)


def _run_rows(model: HookedTransformer, row_layer: Tensor, row_prompt: Tensor,
              start: Callable[[int, Tensor], Tensor], edit: Callable[[int, int, int], RowEdit],
              mask: Tensor, kv: list | None) -> Float[Tensor, "row d_vocab"]:
    """Run a batch of rows through the blocks, each row starting at its own layer.

    Rows are sorted by ``row_layer``; at block ``i`` the rows whose layer is ``i`` join the
    batch with the clean residual ``start(i, prompts)`` and get their edit at that block.
    ``kv``: per-layer prefix keys/values of the rows' prompts (query-only mode), expanded
    over the rows. Calls the blocks directly (a specialised fast path: no embedding, and
    each block sees a different batch).
    """
    L = model.cfg.n_layers
    first = int(row_layer[0])
    bounds = torch.searchsorted(row_layer, torch.arange(first, L), right=True).tolist()
    resid = None
    for i, hi in zip(range(first, L), bounds, strict=True):
        lo = 0 if resid is None else resid.shape[0]
        edits = []
        if hi > lo:
            new = start(i, row_prompt[lo:hi])
            resid = new if resid is None else torch.cat([resid, new])
            edits.append(edit(i, lo, hi))
        prompts = row_prompt[:hi]
        entry = None
        if kv is not None:
            keys, values = kv[i]
            entry = TransformerLensKeyValueCacheEntry(past_keys=keys[prompts],
                                                      past_values=values[prompts], frozen=True)
        with applied(model, edits):
            resid = model.blocks[i](resid, past_kv_cache_entry=entry,
                                    attention_mask=mask[prompts])
    return final_logits(model, resid[:, -1])


def _last_token_supported(model: HookedTransformer, seq_len: int) -> bool:
    """Whether :func:`_last_token_block` reproduces this architecture's blocks exactly
    (otherwise the query sweeps fall back to TransformerLens's blocks with an expanded
    key/value cache: exact, slower)."""
    cfg = model.cfg
    if cfg.positional_embedding_type not in ("rotary", "standard"):
        return False
    flags = (cfg.parallel_attn_mlp, cfg.use_split_qkv_input, cfg.use_attn_in, cfg.load_in_4bit,
             cfg.use_logn_attn, cfg.use_attention_sinks, cfg.use_dynamic_ntk_rope,
             cfg.clip_qkv is not None, cfg.original_architecture in POST_NORM_ARCHITECTURES,
             cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM",
                                           "Olmo3ForCausalLM"),
             cfg.attention_dir != "causal")
    if any(bool(f) for f in flags):
        return False
    for block in model.blocks:
        if block.attn.attn_type == "local" and seq_len > int(cfg.window_size or 0):
            return False
    return True


@dataclass
class _Prefix:
    """Keys/values of a group's prefix (all positions but the last) in one layer."""

    keys_t: Tensor  # [G, kv_head, d_head, T-1], rotated
    values: Tensor  # [G, kv_head, T-1, d_head]
    bias: Tensor  # [G, 1, 1, T]: -inf at padding, 0 elsewhere (last column: the query)


def _prefixes(model: HookedTransformer, clean: _Clean, mask: Tensor) -> list[_Prefix]:
    out = []
    pad = (mask[:, :-1] == 0)
    bias = torch.zeros(mask.shape, dtype=model.cfg.dtype, device=mask.device)
    bias[:, :-1] = bias[:, :-1].masked_fill(pad, -math.inf)
    bias = bias[:, None, None]
    for layer, (keys, values) in enumerate(clean.kv):
        if model.cfg.positional_embedding_type == "rotary":
            keys = model.blocks[layer].attn.apply_rotary(keys, 0, mask[:, :-1])
        out.append(_Prefix(keys_t=keys.permute(0, 2, 3, 1).contiguous(),
                           values=values.permute(0, 2, 1, 3).contiguous(), bias=bias))
    return out


def _last_token_block(model: HookedTransformer, layer: int, x: Tensor, G: int, r: int,
                      prefix: _Prefix, mask_rows: Tensor) -> Tensor:
    """One transformer block for the last token only, ``x`` = ``[G * r, 1, d_model]`` (row
    ``g * r + j``: item ``j`` of prompt ``g``), attending to prompt ``g``'s cached prefix.

    The prefix keys/values are shared by the ``r`` rows of a prompt (a batched matmul over
    prompts and key/value heads), never copied per row: TransformerLens's own attention with
    a key/value cache would concatenate and re-rotate the whole prefix for every row.
    Fires the block's hooks (``hook_resid_pre``, norms, ``hook_q/k/v``, ``hook_rot_q/k``,
    ``hook_z``, ``hook_result``, ``hook_attn_out``, ``hook_resid_mid``, MLP hooks,
    ``hook_mlp_out``, ``hook_resid_post``) except ``hook_attn_scores``/``hook_pattern``.
    """
    cfg, block = model.cfg, model.blocks[layer]
    attn = block.attn
    N, H, dh = G * r, cfg.n_heads, cfg.d_head
    resid_pre = block.hook_resid_pre(x)
    h = block.ln1(resid_pre)
    q, k, v = attn.calculate_qkv_matrices(h, h, h)  # [N, 1, H, dh], [N, 1, kv, dh]
    if cfg.positional_embedding_type == "rotary":
        T = mask_rows.shape[1]
        q = attn.hook_rot_q(attn.apply_rotary(q, T - 1, mask_rows))
        k = attn.hook_rot_k(attn.apply_rotary(k, T - 1, mask_rows))
    kv = k.shape[2]
    rep = H // kv
    q5 = q.reshape(G, r, kv, rep, dh)
    qg = q5.permute(0, 2, 1, 3, 4).reshape(G, kv, r * rep, dh)  # query head = kv * rep + j
    k4, v4 = k.reshape(G, r, kv, dh), v.reshape(G, r, kv, dh)
    s_prefix = qg @ prefix.keys_t  # [G, kv, r * rep, T - 1]
    s_self = torch.einsum("grkjd,grkd->gkrj", q5, k4).reshape(G, kv, r * rep, 1)
    scores = torch.cat([s_prefix, s_self], dim=-1) / attn.attn_scale
    scores = apply_softcap(scores, cfg.attn_scores_soft_cap) + prefix.bias
    pattern = torch.softmax(scores, dim=-1)
    v_self = v4.permute(0, 2, 1, 3).repeat_interleave(rep, dim=2)  # [G, kv, r * rep, dh]
    z = pattern[..., :-1] @ prefix.values + pattern[..., -1:] * v_self
    z = z.reshape(G, kv, r, rep, dh).permute(0, 2, 1, 3, 4).reshape(N, 1, H, dh)
    z = attn.hook_z(z)
    if cfg.use_attn_result:
        result = attn.hook_result(torch.einsum("nphd,hdm->nphm", z, attn.W_O))
        out = result.sum(2) + attn.b_O
    else:
        out = z.reshape(N, 1, H * dh) @ attn.W_O.reshape(H * dh, -1) + attn.b_O
    if cfg.use_normalization_before_and_after:
        out = block.ln1_post(out)
    attn_out = block.hook_attn_out(out)
    if cfg.attn_only:
        return block.hook_resid_post(resid_pre + attn_out)
    resid_mid = block.hook_resid_mid(resid_pre + attn_out)
    mlp_in = block.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
    mlp_out = block.apply_mlp(block.ln2(mlp_in))
    return block.hook_resid_post(resid_mid + mlp_out)


def _run_last_token(model: HookedTransformer, item_layer: Tensor, G: int,
                    start: Callable[[int], Tensor], edit: Callable[[int, int, int, int], RowEdit],
                    prefixes: list[_Prefix], mask: Tensor) -> Float[Tensor, "G item d_vocab"]:
    """Last-token run of ``G`` prompts x ``len(item_layer)`` items (sorted by layer): item
    ``j`` joins at its layer with the clean residual ``start(layer)`` (``[G, 1, d_model]``)
    and gets ``edit(layer, lo, hi, r)`` (items ``lo..hi`` of ``r`` in the batch)."""
    L = model.cfg.n_layers
    first = int(item_layer[0])
    bounds = torch.searchsorted(item_layer, torch.arange(first, L), right=True).tolist()
    x = None
    for i, hi in zip(range(first, L), bounds, strict=True):
        lo = 0 if x is None else x.shape[1]
        edits = []
        if hi > lo:
            new = start(i).expand(-1, hi - lo, -1)
            x = new if x is None else torch.cat([x, new], dim=1)
            edits.append(edit(i, lo, hi, hi))
        r = x.shape[1]
        mask_rows = mask.repeat_interleave(r, dim=0)
        with applied(model, edits):
            x = _last_token_block(model, i, x.reshape(G * r, 1, -1), G, r, prefixes[i],
                                  mask_rows).reshape(G, r, -1)
    return final_logits(model, x)


def _query_effects(model, group, gidx, template, metric_fn, items, clean, clean_m, out, *,
                   batch_size, device, bar) -> None:
    """Fast query-position sweep of one group on the last-token path (fills ``out``)."""
    G = len(group)
    prefixes = _prefixes(model, clean, group.attention_mask)
    order = torch.argsort(items.layer, stable=True)
    per_chunk = max(1, batch_size // G)
    value_cache: dict[int, Tensor] = {}

    def values(layer: int) -> Tensor:
        if layer not in value_cache:
            value_cache.clear()
            shape = (G, 1, model.cfg.n_heads, model.cfg.d_head) if items.site == "z" \
                else (G, 1, model.cfg.d_model)
            value_cache[layer] = template.values(layer, group, gidx, 1, G).to(device).expand(shape)
        return value_cache[layer]

    for c0 in range(0, len(order), per_chunk):
        c_it = order[c0:c0 + per_chunk]
        c_layer = items.layer[c_it]

        def edit(layer: int, lo: int, hi: int, r: int, c_it=c_it) -> RowEdit:
            n_new = hi - lo
            rows = (torch.arange(G)[:, None] * r + torch.arange(lo, hi)[None]).flatten()
            vals = values(layer)[:, 0]  # [G, (H,) d]
            head = None
            if items.site == "z":
                head = items.head[c_it[lo:hi]].to(device).repeat(G)
                v = vals[torch.arange(G, device=device).repeat_interleave(n_new), head]
            else:
                v = vals.repeat_interleave(n_new, dim=0)
            return RowEdit(hook=hook_name(items.site, layer), rows=rows.to(device),
                           pos=torch.zeros(len(rows), 1, dtype=torch.long, device=device),
                           values=v[:, None], head=head)

        logits = _run_last_token(model, c_layer, G, lambda layer: clean.resid[layer], edit,
                                 prefixes, group.attention_mask)  # [G, r, vocab]
        r = logits.shape[1]
        flat = logits.reshape(G * r, -1)
        gold = group.gold.repeat_interleave(r)
        m = metric_fn(flat, gold, group.label_token_ids).float().reshape(G, r)
        out[gidx[:, None], c_it[None]] = (m - clean_m[:, None]).cpu()
        bar.update(G * r)


def _rows_effects(model, group, gidx, template, metric_fn, items, clean, clean_m, out, *,
                  query_only: bool, batch_size, device, bar) -> None:
    """Generic fast sweep of one group (fills ``out``): rows = (item, prompt) pairs sorted
    by layer, ``batch_size`` rows per pass, each starting at its layer from the clean
    residual (all positions; or the last token with an expanded key/value cache)."""
    G, T = len(group), group.seq_len
    length = 1 if query_only else T
    order = torch.argsort(items.layer, stable=True)
    it = order.repeat_interleave(G)
    pr = torch.arange(G).repeat(len(items))
    if items.pos_from_end is not None:  # position sweep: skip positions that are all padding
        keep = items.pos_from_end[it] >= -T
        it, pr = it[keep], pr[keep]
    row_layer = items.layer[it]
    if query_only or template.positions == "all":
        sel_pos = torch.arange(length, device=device)
    else:
        sel_pos = position_mask(template.positions, length, device).nonzero().flatten()
    shape = (G, length, model.cfg.n_heads, model.cfg.d_head) if items.site == "z" \
        else (G, length, model.cfg.d_model)
    value_cache: dict[int, Tensor] = {}

    def values(layer: int) -> Tensor:
        if layer not in value_cache:
            value_cache.clear()
            v = template.values(layer, group, gidx, length, G).to(device)
            value_cache[layer] = v.expand(shape)
        return value_cache[layer]

    def start(layer: int, p: Tensor) -> Tensor:
        return clean.resid[layer][p]

    for c0 in range(0, len(it), batch_size):
        c_it, c_pr = it[c0:c0 + batch_size], pr[c0:c0 + batch_size].to(device)

        def edit(layer: int, lo: int, hi: int, c_it=c_it, c_pr=c_pr) -> RowEdit:
            r_it, r_pr = c_it[lo:hi], c_pr[lo:hi]
            vals, head = values(layer), None
            if items.pos_from_end is not None:
                pos = (T + items.pos_from_end[r_it]).to(device)[:, None]
                v = vals[r_pr, pos[:, 0]][:, None]
            else:
                pos = sel_pos[None].expand(hi - lo, -1)
                if items.site == "z":
                    head = items.head[r_it].to(device)
                    v = vals[r_pr, :, head][:, sel_pos]
                else:
                    v = vals[r_pr][:, sel_pos]
            return RowEdit(hook=hook_name(items.site, layer),
                           rows=torch.arange(lo, hi, device=device), pos=pos, values=v,
                           head=head)

        logits = _run_rows(model, row_layer[c0:c0 + batch_size], c_pr, start, edit,
                           group.attention_mask, clean.kv)
        m = metric_fn(logits, group.gold[c_pr], group.label_token_ids)
        out[gidx[c_pr.cpu()], c_it] = (m.float() - clean_m[c_pr]).cpu()
        bar.update(len(c_it))


def _fast_effects(model, prompts, template, metric_fn, items, *, query_only: bool,
                  batch_size: int, group_size: int, device, progress) -> tuple[Tensor, Tensor]:
    """Exact batched sweep. Returns per-prompt effects ``[prompt, item]`` (NaN where not
    computed) and the clean metric ``[prompt]``."""
    device = torch.device(device) if device is not None else torch.device(model.cfg.device)
    n = len(prompts)
    out = torch.full((n, len(items)), math.nan)
    clean_all = torch.full((n,), math.nan)
    layers_needed = sorted(set(items.layer.tolist()))
    bar = tqdm(total=n * len(items), desc="fast sweep", disable=not progress, leave=False,
               unit="run")
    with torch.inference_mode():
        for g0 in range(0, n, group_size):
            gidx = torch.arange(g0, min(g0 + group_size, n))
            group = prompts.select(gidx).to(device)
            clean = _clean_query(model, group) if query_only else \
                _clean_all(model, group, layers_needed)
            clean_m = metric_fn(clean.logits, group.gold, group.label_token_ids).float()
            clean_all[gidx] = clean_m.cpu()
            kwargs = dict(batch_size=batch_size, device=device, bar=bar)
            if query_only and _last_token_supported(model, group.seq_len):
                _query_effects(model, group, gidx, template, metric_fn, items, clean, clean_m,
                               out, **kwargs)
            else:
                _rows_effects(model, group, gidx, template, metric_fn, items, clean, clean_m,
                              out, query_only=query_only, **kwargs)
    bar.close()
    return out, clean_all


# --------------------------------------------------------------------------- public sweeps


def _default_batch_size(query_only: bool) -> int:
    return 1024 if query_only else 32


def head_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: HeadMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    heads: HeadsLike | None = None,
    seed: int = 0,
    method: Literal["fast", "naive"] = "fast",
    batch_size: int | None = None,
    group_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> HeadScores:
    """Effect of intervening on every single head: ``metric(intervened) - metric(clean)``,
    averaged over prompts.

    Args:
        prompts: the target prompts (the run that is intervened on).
        metric: ``"logit_diff"``, ``"accuracy"``, ``"label_space_rate"``,
            ``"in_space_accuracy"`` or a callable ``metric(logits, gold, label_token_ids)``.
        mode: ``"zero"``, ``"mean"`` (``means`` or the mean over ``reference``, default
            ``prompts``), ``"resample"`` (donors from ``reference``, default ``prompts``;
            seeded) or ``"patch"`` (from ``source``, aligned with ``prompts``).
        positions: ``"query"`` (default; fastest: only the last token is re-run), ``"all"``,
            or a list of positions (negative = from the end).
        heads: restrict the sweep to these heads (others are NaN); default all.
        method: ``"fast"`` (exact, batched) or ``"naive"`` (reference loop: one run per head).
        batch_size: rows (head x prompt) per pass in the fast engine (default 1024 for the
            query position, 32 for all positions); prompts per batch in the naive loop.
        group_size: prompts whose clean run is cached together (fast engine).

    Returns:
        ``HeadScores`` named ``"delta_<metric>"`` with ``per_prompt`` ``[prompt, L, H]`` effects
        and metadata (method, metric, mode, positions, prompts, model, clean metric).
    """
    metric_fn = _check_common(model, prompts, metric, mode, method)
    positions = check_positions(positions)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sel = torch.ones(L, H, dtype=torch.bool) if heads is None else heads_to_mask(heads, L, H)
    template = _template(model, prompts, "z", mode, positions, source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size or 16,
                         device=device, progress=progress)
    layer, head = sel.nonzero().T
    items = _Items(site="z", layer=layer, head=head)
    effects, clean = _effects(model, prompts, template, metric_fn, items, positions, method,
                              batch_size, group_size, device, progress)
    per_prompt = torch.full((len(prompts), L, H), math.nan)
    per_prompt[:, layer, head] = effects
    scores = _nanmean(per_prompt, 0)
    meta = _metadata(model, prompts, metric, mode, positions, method, clean, source=source,
                     seed=seed, means=means)
    return HeadScores(scores, name=f"delta_{_metric_name(metric)}", metadata=meta,
                      per_prompt=per_prompt)


def layer_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    site: str = "attn_out",
    mode: Literal["zero", "mean", "resample", "patch"] = "patch",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: Tensor | None = None,
    reference: PromptSet | None = None,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    method: Literal["fast", "naive"] = "fast",
    batch_size: int | None = None,
    group_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Effect of intervening on one layer's ``site`` (``resid_pre``, ``resid_mid``,
    ``resid_post``, ``attn_out``, ``mlp_out``), for every layer.

    Same modes, positions and methods as :func:`head_sweep` (``means``: ``[L, d_model]``).
    ``mode="zero"`` on ``attn_out`` removes the whole attention output including ``b_O``.

    Returns:
        Tidy DataFrame, one row per layer: ``layer, site, mode, positions, metric, effect,
        effect_sem, clean, n_prompts``.
    """
    metric_fn = _check_common(model, prompts, metric, mode, method)
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES} (for heads "
                         "use head_sweep).")
    positions = check_positions(positions)
    L = model.cfg.n_layers
    layer_list = list(range(L)) if layers is None else [int(x) for x in layers]
    for x in layer_list:
        if not 0 <= x < L:
            raise ValueError(f"Layer {x} is out of range: this model has {L} layers.")
    template = _template(model, prompts, site, mode, positions, source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size or 16,
                         device=device, progress=progress)
    items = _Items(site=site, layer=torch.tensor(layer_list, dtype=torch.long))
    effects, clean = _effects(model, prompts, template, metric_fn, items, positions, method,
                              batch_size, group_size, device, progress)
    mean, sem, count = _summary(effects)
    return pd.DataFrame({
        "layer": layer_list, "site": site, "mode": mode, "positions": str(positions),
        "metric": _metric_name(metric), "effect": mean.numpy(), "effect_sem": sem.numpy(),
        "clean": float(_nanmean(clean, 0)), "n_prompts": count.numpy(),
    })


def position_sweep(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    layer: int,
    site: str = "resid_pre",
    mode: Literal["zero", "mean", "resample", "patch"] = "patch",
    source: PromptSet | None = None,
    means: Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    method: Literal["fast", "naive"] = "fast",
    batch_size: int | None = None,
    group_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Effect of intervening on ``site`` of ``layer`` at one position, for every position.

    Positions are counted from the end (``pos_from_end = -1`` is the query), so they mean
    the same token slot in every left-padded prompt; a prompt contributes only at its real
    (non-pad) positions. ``mode="patch"`` needs ``source`` with prompts of equal length.

    Returns:
        Tidy DataFrame, one row per position: ``layer, site, mode, pos, pos_from_end,
        metric, effect, effect_sem, clean, n_prompts`` (``pos`` indexes ``prompts.tokens``).
    """
    metric_fn = _check_common(model, prompts, metric, mode, method)
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES}.")
    L, T = model.cfg.n_layers, prompts.seq_len
    if not 0 <= int(layer) < L:
        raise ValueError(f"Layer {layer} is out of range: this model has {L} layers.")
    template = _template(model, prompts, site, mode, "all", source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size or 16,
                         device=device, progress=progress)
    from_end = torch.arange(-T, 0)
    items = _Items(site=site, layer=torch.full((T,), int(layer)), pos_from_end=from_end)
    effects, clean = _effects(model, prompts, template, metric_fn, items, "all", method,
                              batch_size, group_size, device, progress)
    pad = prompts.attention_mask == 0  # [n, T]: no token there -> not counted
    effects = effects.masked_fill(pad.cpu(), math.nan)
    mean, sem, count = _summary(effects)
    return pd.DataFrame({
        "layer": int(layer), "site": site, "mode": mode, "pos": torch.arange(T).numpy(),
        "pos_from_end": from_end.numpy(), "metric": _metric_name(metric),
        "effect": mean.numpy(), "effect_sem": sem.numpy(),
        "clean": float(_nanmean(clean, 0)), "n_prompts": count.numpy(),
    })


def _effects(model, prompts, template, metric_fn, items, positions, method, batch_size,
             group_size, device, progress):
    query_only = positions == "query"
    if method == "naive":
        return _naive_effects(model, prompts, template, metric_fn, items,
                              batch_size=batch_size or 16, device=device, progress=progress)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}.")
    bs = batch_size or _default_batch_size(query_only)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}.")
    return _fast_effects(model, prompts, template, metric_fn, items, query_only=query_only,
                         batch_size=bs, group_size=group_size, device=device, progress=progress)


# --------------------------------------------------------------------------- attribution


def attribution_patching(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: HeadMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> HeadScores:
    """Attribution patching: a first-order estimate of every head's effect at once.

    For prompt ``i`` and head ``(l, h)``::

        effect ~ sum_{pos in positions} sum_d  dM_i/dz[pos, l, h, d] * (z'[pos, l, h, d] - z[pos, l, h, d])

    where ``z`` is the target run's ``hook_z``, ``z'`` the replacement (0, the mean, a
    donor's or the source's ``z``, as in :func:`head_sweep`) and ``M_i`` the metric. One
    forward and one backward pass per batch of prompts give every head's estimate (the
    gradient is taken with ``torch.autograd.grad`` with respect to ``hook_z`` only, so no
    weight gradients are computed). With ``positions="query"`` the prefix runs once without
    gradients and only the last token goes forward and backward (the query's ``z`` reaches
    the metric only through the last token), which gives the same gradient for less. The metric must be differentiable (``"logit_diff"`` or
    a callable); step metrics such as accuracy have zero gradient and are refused.

    Returns:
        ``HeadScores`` named ``"attribution_<metric>"`` (per-prompt estimates in
        ``per_prompt``), directly comparable with :func:`head_sweep`'s effects.
    """
    metric_fn = _check_common(model, prompts, metric, mode, "naive")
    if isinstance(metric, str) and metric in NON_DIFFERENTIABLE:
        raise ValueError(f"Attribution patching needs a differentiable metric; {metric!r} is a "
                         "step function of the logits (zero gradient). Use 'logit_diff' or a "
                         "smooth callable.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    positions = check_positions(positions)
    template = _template(model, prompts, "z", mode, positions, source=source, means=means,
                         reference=reference, seed=seed, batch_size=batch_size, device=device,
                         progress=progress)
    device = torch.device(device) if device is not None else torch.device(model.cfg.device)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name("z", layer) for layer in range(L)]
    per_prompt = torch.zeros(len(prompts), L, H)
    starts = range(0, len(prompts), batch_size)
    # A specialised loop, not iter_batches: that one runs under inference_mode, and this
    # needs a backward pass.
    for s in tqdm(starts, desc="attribution patching", disable=not progress, leave=False):
        index = torch.arange(s, min(s + batch_size, len(prompts)))
        batch = prompts.select(index).to(device)
        if positions == "query" and _last_token_supported(model, batch.seq_len):
            zs, grads = _query_z_grads(model, batch, metric_fn, names)  # z: [b, 1, H, d]
        else:
            zs, grads = _z_grads(model, batch, metric_fn, names)  # z: [b, T, H, d]
        T = zs[0].shape[1]
        pos = position_mask(positions, T, device)[None, :, None, None]
        for layer, (z, grad) in enumerate(zip(zs, grads, strict=True)):
            with torch.no_grad():
                rep = template.values(layer, batch, index, T, len(index)).to(device)
                delta = (rep - z.detach()) * pos
                per_prompt[index, layer] = (grad * delta).sum((1, 3)).float().cpu()
    meta = _metadata(model, prompts, metric, mode, positions, "attribution", None,
                     source=source, seed=seed, means=means)
    return HeadScores(_nanmean(per_prompt, 0), name=f"attribution_{_metric_name(metric)}",
                      metadata=meta, per_prompt=per_prompt)


def _metric_grads(metric_fn, logits, batch, zs):
    value = metric_fn(logits, batch.gold, batch.label_token_ids)
    if not value.requires_grad:
        raise ValueError("The metric's value does not depend differentiably on the logits; "
                         "attribution patching needs a differentiable metric.")
    grads = torch.autograd.grad(value.sum(), zs, allow_unused=True)
    return [torch.zeros_like(z) if g is None else g for z, g in zip(zs, grads, strict=True)]


def _z_grads(model, batch, metric_fn, names):
    """``hook_z`` of every layer (all positions) and the metric's gradient with respect to
    it, from one forward and one backward pass."""
    rec = Record(names=set(names).__contains__, pos="all", keep_grad=True)
    with torch.enable_grad(), applied(model, [rec]):
        resid = model(batch.tokens, attention_mask=batch.attention_mask,
                      stop_at_layer=model.cfg.n_layers)
        zs = [rec.store[name] for name in names]
        grads = _metric_grads(metric_fn, final_logits(model, resid[:, -1]), batch, zs)
    return zs, grads


def _query_z_grads(model, batch, metric_fn, names):
    """The same at the query position only, exactly and cheaper: the query's ``z`` reaches
    the metric only through the last token, so the prefix runs once without gradients (key/
    value cache) and only the last token is run forward and backward."""
    G = len(batch)
    with torch.no_grad():
        clean = _clean_query(model, batch)
        prefixes = _prefixes(model, clean, batch.attention_mask)
    rec = Record(names=set(names).__contains__, pos="all", keep_grad=True)
    with torch.enable_grad(), applied(model, [rec]):
        x = clean.resid[0]
        for layer in range(model.cfg.n_layers):
            x = _last_token_block(model, layer, x, G, 1, prefixes[layer], batch.attention_mask)
        zs = [rec.store[name] for name in names]
        grads = _metric_grads(metric_fn, final_logits(model, x[:, -1]), batch, zs)
    return zs, grads


# --------------------------------------------------------------------------- helpers


def _nanmean(x: Tensor, dim: int) -> Tensor:
    valid = ~torch.isnan(x)
    total = torch.where(valid, x, torch.zeros_like(x)).sum(dim)
    count = valid.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def _summary(effects: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, standard error and count over prompts (dim 0), NaN-aware."""
    mean = _nanmean(effects, 0)
    valid = ~torch.isnan(effects)
    count = valid.sum(0)
    sq = torch.where(valid, (effects - mean) ** 2, torch.zeros_like(effects)).sum(0)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    sem = torch.where(count > 1, std / count.clamp(min=1).sqrt(), torch.full_like(mean, math.nan))
    return mean, sem, count


def _metadata(model, prompts, metric, mode, positions, method, clean, *, source, seed,
              means) -> dict:
    meta = {
        "method": method, "metric": _metric_name(metric), "mode": mode,
        "positions": positions if isinstance(positions, str) else list(positions),
        "prompts": prompts.describe(), "model": getattr(model.cfg, "model_name", None),
        "effect": "metric(intervened) - metric(clean), mean over prompts",
    }
    if clean is not None:
        meta["clean_metric"] = float(_nanmean(clean, 0))
    if mode == "patch" and source is not None:
        meta["source"] = source.describe()
    if mode == "resample":
        meta["seed"] = seed
    if mode == "mean" and isinstance(means, HeadMeans):
        meta["means"] = {"pos": means.pos, "n_prompts": means.n_prompts, **means.metadata}
    return meta


__all__ = ["head_sweep", "layer_sweep", "position_sweep", "attribution_patching",
           "SWEEP_MODES", "LAYER_SITES"]
