"""The cached-prefix engine behind the fast sweeps and attribution patching.

An intervention at layer ``l`` changes nothing before ``l``; one at the query (the last
token) changes nothing at earlier positions. So a group of prompts is run once (the *clean
run*), keeping

* for query-position work: the keys/values of every position but the last (the *prefix*)
  and the last token's residual stream before every layer;
* for all-position work: the residual stream before the needed layers at every position.

Then :func:`run_items` re-runs only what can change, for many *items* (single
interventions) at once: the batch holds one row per (item, prompt), and each item's rows
join the batch at the item's own layer, starting from the clean residual there. On the
query path only the last token is run, through :func:`last_token_block`, which shares each
prompt's cached prefix across that prompt's rows (a batched matmul over prompts and
key/value heads) instead of copying it per row.

This module and ``models.py`` are the only places that touch ``HookedTransformer``
internals (``calculate_qkv_matrices``, ``apply_rotary``, the key/value cache). A
``TransformerBridge`` has none of them: there the clean run and the blocks are
:mod:`icl_heads.bridge_engine`'s (the bridge's own blocks, engine ``"bridge"``), and a
bridge that engine cannot run takes the exact fallback, one full pass per condition
(:func:`icl_heads.backends.supports_engine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from . import bridge_engine
from .activations import final_logits
from .backends import HookedTransformer, cfg_value, is_bridge, supports_engine
from .batching import BatchSize, halving, resolve_batch_size
from .devices import block_placement
from .full_runs import full_condition_runs
from .hooks import Capture, Intervention, hook_name, in_block, intervention_hooks
from .metrics import behaviour
from .models import resolve_device
from .progress import Heartbeat
from .prompts import PromptSet

#: How :func:`run_items` runs a block: the specialised last-token block over a shared
#: prefix; TransformerLens's block with a per-row key/value cache (query only, any
#: architecture); or TransformerLens's block over every position.
Engine = Literal["last_token", "kv_blocks", "all_positions", "bridge", "full_pass"]
#: ``edit(layer, lo, hi, rows)`` -> the edit of items ``lo..hi`` (which join at ``layer``);
#: ``rows[j, g]`` is the batch row of item ``lo + j`` for prompt ``g`` in this block.
EditFn = Callable[[int, int, int, Tensor], Intervention]


def supports_last_token(model: HookedTransformer, seq_len: int) -> bool:
    """Whether :func:`last_token_block` reproduces this architecture's blocks exactly
    (otherwise query work uses TransformerLens's blocks with an expanded key/value cache:
    exact, slower)."""
    if is_bridge(model):  # its blocks are Hugging Face's: no TransformerLens internals
        return False
    cfg = model.cfg
    if cfg.positional_embedding_type not in ("rotary", "standard"):
        return False
    flags = (
        cfg.parallel_attn_mlp,
        cfg.use_split_qkv_input,
        cfg.use_attn_in,
        cfg.load_in_4bit,
        cfg_value(model, "use_logn_attn", False),
        cfg_value(model, "use_attention_sinks", False),
        cfg_value(model, "use_dynamic_ntk_rope", False),
        cfg.clip_qkv is not None,
        cfg.original_architecture in POST_NORM_ARCHITECTURES,
        cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"),
        cfg.attention_dir != "causal",
    )
    if any(bool(f) for f in flags):
        return False
    for block in model.blocks:
        if block.attn.attn_type == "local" and seq_len > int(cfg.window_size or 0):
            return False
    return True


def check_supported(model: HookedTransformer) -> None:
    """Raise a clear error for models the engine cannot run exactly."""
    if model.cfg.positional_embedding_type == "shortformer":
        raise ValueError(
            "The fast sweeps do not support shortformer positional embeddings; use method='naive'."
        )


# --------------------------------------------------------------------------- clean run


@dataclass
class Prefix:
    """Keys/values of a group's prefix (all positions but the last) in one layer, laid out
    for :func:`last_token_block`."""

    keys_t: Tensor  # [G, kv_head, d_head, T-1], rotated
    values: Tensor  # [G, kv_head, T-1, d_head]
    bias: Tensor  # [G, 1, 1, T]: -inf at padding, 0 elsewhere (last column: the query)


@dataclass
class CleanRun:
    """One clean pass of a group of prompts (with any background interventions).

    Attributes:
        logits: ``[G, d_vocab]`` at the query.
        resid: layer -> ``[G, P, d_model]`` residual stream before the layer (``P = 1``:
            the last token; else every position, padding zeroed).
        kv: per layer ``(keys, values)`` of the prefix (query work only).
        prefixes: the same, rotated and laid out for :func:`last_token_block` (when the
            architecture is supported).
        engine: how :func:`run_items` runs this group's rows.
        on_block: called with each block's index as :func:`run_items` finishes it (the
            progress bar's heartbeat of :func:`clean_groups`).
    """

    group: PromptSet
    index: Tensor
    logits: Float[Tensor, "G d_vocab"]
    resid: dict[int, Tensor]
    kv: list[tuple[Tensor, Tensor]] | None
    prefixes: list[Prefix] | None
    engine: Engine
    bridge: bridge_engine.BridgeState | None = None
    on_block: Callable[[int], None] | None = field(default=None, repr=False)


def clean_run(
    model: HookedTransformer,
    group: PromptSet,
    index: Int[Tensor, " G"],
    *,
    query_only: bool,
    layers: Sequence[int],
    interventions: Sequence[Intervention] = (),
) -> CleanRun:
    """Run ``group`` (rows ``index`` of the full set) once, keeping what :func:`run_items`
    needs to restart rows at ``layers``: see :class:`CleanRun`."""
    if is_bridge(model) and not supports_engine(model):  # e.g. GPT-2: rows re-run whole
        stored, logits = bridge_engine.full_clean_pass(
            model, group, index, query_only=query_only, layers=layers, interventions=interventions
        )
        return CleanRun(group, index, logits, stored, None, None, "full_pass")
    if is_bridge(model):  # the bridge's own blocks: icl_heads.bridge_engine
        state, stored, logits = bridge_engine.clean_pass(
            model, group, index, query_only=query_only, layers=layers, interventions=interventions
        )
        return CleanRun(group, index, logits, stored, None, None, "bridge", state)
    G, L = len(group), model.cfg.n_layers
    names = [hook_name("resid_pre", layer) for layer in layers]
    capture = Capture(
        names=set(names).__contains__,
        positions="query" if query_only else "all",
        attention_mask=group.attention_mask,
    )
    cache = (
        TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, G)
        if query_only
        else None
    )
    # The capture goes first: it records what enters each block, before any background
    # intervention at hook_resid_pre acts (run_items replays those when rows start there).
    hooks = capture.fwd_hooks() + intervention_hooks(interventions, group, index, L)
    with model.hooks(fwd_hooks=hooks):
        resid = model(
            group.tokens, attention_mask=group.attention_mask, past_kv_cache=cache, stop_at_layer=L
        )
    logits = final_logits(model, resid[:, -1])
    stored = {layer: capture.store[name] for layer, name in zip(layers, names, strict=True)}
    if not query_only:
        return CleanRun(group, index, logits, stored, None, None, "all_positions")
    kv = [(e.past_keys[:, :-1], e.past_values[:, :-1]) for e in cache.entries]
    resid_last = {layer: act[:, None] for layer, act in stored.items()}
    if supports_last_token(model, group.seq_len):
        prefixes = _prefixes(model, kv, group.attention_mask)
        return CleanRun(group, index, logits, resid_last, kv, prefixes, "last_token")
    return CleanRun(group, index, logits, resid_last, kv, None, "kv_blocks")


def _prefixes(model: HookedTransformer, kv: list, mask: Tensor) -> list[Prefix]:
    out = []
    pad = mask[:, :-1] == 0
    bias = torch.zeros(mask.shape, dtype=model.cfg.dtype, device=mask.device)
    bias[:, :-1] = bias[:, :-1].masked_fill(pad, -math.inf)
    bias = bias[:, None, None]
    for layer, (keys, values) in enumerate(kv):  # each on its block's device
        if model.cfg.positional_embedding_type == "rotary":
            keys = model.blocks[layer].attn.apply_rotary(keys, 0, mask[:, :-1].to(keys.device))
        out.append(
            Prefix(
                keys_t=keys.permute(0, 2, 3, 1).contiguous(),
                values=values.permute(0, 2, 1, 3).contiguous(),
                bias=bias.to(keys.device),
            )
        )
    return out


# --------------------------------------------------------------------------- the last-token block


def last_token_block(
    model: HookedTransformer,
    layer: int,
    x: Tensor,
    G: int,
    r: int,
    prefix: Prefix,
    mask_rows: Tensor,
) -> Tensor:
    """One transformer block for the last token only, ``x`` = ``[G * r, 1, d_model]`` (row
    ``g * r + j``: row ``j`` of prompt ``g``), attending to prompt ``g``'s cached prefix.

    The prefix keys/values are shared by the ``r`` rows of a prompt, never copied per row:
    TransformerLens's own attention with a key/value cache would concatenate and re-rotate
    the whole prefix for every row. Fires the block's hooks (``hook_resid_pre``, norms,
    ``hook_q/k/v``, ``hook_rot_q/k``, ``hook_z``, ``hook_result``, ``hook_attn_out``,
    ``hook_resid_mid``, MLP hooks, ``hook_mlp_out``, ``hook_resid_post``) except
    ``hook_attn_scores``/``hook_pattern``.
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


# --------------------------------------------------------------------------- rows joining at their layer


def run_items(
    model: HookedTransformer,
    clean: CleanRun,
    item_layers: Int[Tensor, " item"],
    edit: EditFn | None = None,
    interventions: Sequence[Intervention] = (),
) -> Float[Tensor, "item G d_vocab"]:
    """Run ``len(item_layers)`` items (sorted by layer) over every prompt of the clean run's
    group, each item's rows joining at its layer from the clean residual and getting
    ``edit(layer, lo, hi, rows)`` there. ``interventions`` (the background ones of the clean
    run) act on every row, as they did in the clean run.

    Row layout in a block with ``r`` items joined: item-major (row ``j * G + g``) for the
    TransformerLens engines, prompt-major (row ``g * r + j``) for the last-token block and
    the bridge's query rows (packed: :func:`icl_heads.bridge_engine.row_view`). Every
    block's hooks are planned first and added under one hook context for the whole run
    (entering and leaving a context resets every hook point of the model).

    Returns:
        Logits ``[item, G, d_vocab]`` at the query.
    """
    group, G, L = clean.group, len(clean.group), model.cfg.n_layers
    if clean.engine == "full_pass":  # one full pass of every (item, prompt) row
        query_only = any(t.shape[1] != group.seq_len for t in clean.resid.values())
        logits = bridge_engine.full_pass_items(
            model, group, clean.index, item_layers, edit, interventions, query_only=query_only
        )
        for i in range(int(item_layers[0]), L) if clean.on_block is not None else ():
            clean.on_block(i)
        return logits
    packed = clean.engine == "bridge" and clean.bridge.query_only  # rows as query positions
    prompt_major = clean.engine == "last_token" or packed
    first = int(item_layers[0])
    bounds = torch.searchsorted(item_layers, torch.arange(first, L), right=True).tolist()
    device = group.tokens.device
    plan, hooks, lo = [], [], 0
    for i, hi in zip(range(first, L), bounds, strict=True):
        r = hi  # items joined once block i has taken its own
        g = torch.arange(G, device=device)
        if prompt_major:
            rows = g[None] * r + torch.arange(lo, hi, device=device)[:, None]
            prompt_of_row = g.repeat_interleave(r)
        else:
            rows = torch.arange(lo, hi, device=device)[:, None] * G + g[None]
            prompt_of_row = g.repeat(r)
        if interventions:
            rows_batch, rows_index = (
                group.select(prompt_of_row.cpu()),
                clean.index[prompt_of_row.cpu()],
            )
            block_hooks = [
                (block_name, fn)
                for name, fn in intervention_hooks(interventions, rows_batch, rows_index, L)
                if (block_name := in_block(name, i)) is not None
            ]
        else:
            block_hooks = []
        if edit is not None and hi > lo:
            block_hooks += edit(i, lo, hi, rows).fwd_hooks()
        if packed:
            block_hooks = [bridge_engine.row_view(n, fn, G, r) for n, fn in block_hooks]
        hooks += block_hooks
        plan.append((i, lo, hi, prompt_of_row))
        lo = hi
    place = block_placement(model)  # blocks may live on several devices (n_devices)
    x = None  # [G, r, P, d] while rows join; blocks see it flattened in their layout
    with model.hooks(fwd_hooks=hooks):
        for i, lo, hi, prompt_of_row in plan:
            here = place(i)  # move at the block boundary, as HookedTransformer.forward does
            x = x.to(here) if x is not None else None
            if hi > lo:
                new = clean.resid[i][:, None].to(here).expand(-1, hi - lo, -1, -1)
                x = new if x is None else torch.cat([x, new], dim=1)
            r = x.shape[1]
            flat = (
                x.reshape(G * r, *x.shape[2:])
                if prompt_major
                else x.transpose(0, 1).reshape(r * G, *x.shape[2:])
            )
            flat = _block(model, clean, i, flat, prompt_of_row, G, r)
            if clean.on_block is not None:
                clean.on_block(i)
            x = (
                flat.reshape(G, r, *flat.shape[1:])
                if prompt_major
                else flat.reshape(r, G, *flat.shape[1:]).transpose(0, 1)
            )
    return final_logits(model, x[:, :, -1]).transpose(0, 1)


def _block(
    model: HookedTransformer,
    clean: CleanRun,
    layer: int,
    x: Tensor,
    prompt_of_row: Tensor,
    G: int,
    r: int,
) -> Tensor:
    if clean.engine == "bridge":
        return bridge_engine.run_block(model, clean.bridge, layer, x, prompt_of_row)
    mask = clean.group.attention_mask.to(x.device)  # x is on the block's device
    if clean.engine == "last_token":
        return last_token_block(
            model, layer, x, G, r, clean.prefixes[layer], mask.repeat_interleave(r, dim=0)
        )
    entry = None
    if clean.engine == "kv_blocks":
        keys, values = clean.kv[layer]
        rows = prompt_of_row.to(keys.device)
        entry = TransformerLensKeyValueCacheEntry(
            past_keys=keys[rows], past_values=values[rows], frozen=True
        )
    return model.blocks[layer](
        x, past_kv_cache_entry=entry, attention_mask=mask[prompt_of_row.to(mask.device)]
    )


# --------------------------------------------------------------------------- the driver


@dataclass
class Group:
    """One group of prompts of :func:`clean_groups`: its rows of the full set, the group
    (on the run's device) and its clean run; ``tick(n)`` advances the shared progress bar
    by ``n`` prompt runs (``n / len(index)`` batches)."""

    index: Int[Tensor, " G"]
    prompts: PromptSet
    clean: CleanRun
    tick: Callable[[int], None]


def clean_groups(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    layers: Sequence[int],
    query_only: bool,
    interventions: Sequence[Intervention] = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "runs",
    runs_per_prompt: int = 1,
) -> Iterator[Group]:
    """The one group loop of the engine: ``prompts`` in groups of ``batch_size``, each run
    once (:func:`clean_run`, keeping what rows restarting at ``layers`` need), under
    ``torch.inference_mode`` and one progress bar of ``runs_per_prompt`` batches per group
    (a :class:`Heartbeat` shows the block reached in between). Every sweep and experiment
    that re-runs prompts from a layer on iterates this. ``batch_size="auto"``: the largest
    group that fits the device (:mod:`icl_heads.batching`); a group whose clean run runs out
    of memory is retried halved (the bar then counts the smaller groups too).

    Example::

        for group in clean_groups(model, prompts, layers=[3], query_only=True):
            logits = run_items(model, group.clean, torch.tensor([3]), None, [iv])[0]
            group.tick(len(group.index))
    """
    device = resolve_device(device) if device is not None else torch.device(model.cfg.device)
    n = len(prompts)
    batch_size = resolve_batch_size(
        batch_size, model, prompts, kind="clean_run", device=device, kept_layers=len(layers)
    )
    bar = tqdm(
        total=math.ceil(n / batch_size) * runs_per_prompt,
        desc=desc,
        disable=not progress,
        leave=False,
        unit="batch",
    )
    beat = Heartbeat(bar, model.cfg.n_layers)

    def run(start: int, stop: int) -> Group:
        index = torch.arange(start, stop)
        group = prompts.select(index).to(device)
        clean = clean_run(
            model,
            group,
            index,
            query_only=query_only,
            layers=layers,
            interventions=[*interventions, beat.capture] if progress else interventions,
        )
        clean.on_block = beat.on_block if progress else None
        G = len(index)
        return Group(index, group, clean, lambda k, G=G: bar.update(round(k / G)))

    try:  # a group that runs out of memory is retried halved (icl_heads.batching)
        with torch.inference_mode():
            for _, _, part in halving(n, batch_size, run, device=device, what=desc):
                yield part
    finally:
        bar.close()


@dataclass(frozen=True)
class Run:
    """One condition of :func:`run_conditions`: its interventions and the earliest layer
    they can change (rows restart there from the clean run)."""

    interventions: tuple
    start: int


#: ``measure(logits, prompts) -> {metric: [prompt] tensor}`` (default: the behaviour
#: metrics of :func:`icl_heads.metrics.behaviour`).
Measure = Callable[[Tensor, PromptSet], dict[str, Tensor]]


def run_conditions(
    model: HookedTransformer,
    prompts: PromptSet,
    conditions: Mapping[Hashable, Run],
    *,
    measure: Measure = behaviour,
    query_only: bool,
    state_layers: Sequence[int] = (),
    baseline_start: int | None = None,
    background: Sequence[Intervention] = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "conditions",
) -> tuple[dict[Hashable, dict[str, Tensor]], dict[Hashable, Tensor]]:
    """The baseline and every condition over ``prompts``, sharing one clean run per group of
    prompts: each condition re-runs only its layers from ``start`` on (only the last token
    when ``query_only``). The public driver of every experiment.

    ``baseline_start=None``: the baseline is the clean run itself; an int: the baseline is
    re-run from that layer through the same engine as the conditions, so a condition whose
    interventions change nothing reproduces it bit for bit. ``background`` interventions
    act in every run, the baseline included. Architectures the engine cannot run
    (:func:`check_supported`) and a ``TransformerBridge`` fall back to one full pass per
    condition (the same numbers, slower).

    Returns:
        ``(measured, states)``: key (``"baseline"`` first, then the keys of
        ``conditions``) -> ``measure`` of its query logits, per prompt; key -> the query
        states after the blocks ``state_layers``, ``[prompt, len(state_layers), d_model]``
        (empty when no ``state_layers``).

    Example::

        iv = ih.ablate(model, [(3, 1)], "zero")
        measured, _ = run_conditions(model, prompts, {"L3H1": Run((iv,), start=3)},
                                     query_only=False)
        measured["L3H1"]["accuracy"] - measured["baseline"]["accuracy"]
    """
    names = [hook_name("resid_post", layer) for layer in state_layers]
    try:
        check_supported(model)
        fallback = not supports_engine(model)
    except ValueError:
        fallback = True
    if fallback:
        return full_condition_runs(
            model,
            prompts,
            conditions,
            measure=measure,
            names=names,
            background=background,
            batch_size=batch_size,
            device=device,
            progress=progress,
            desc=desc,
            baseline_states=baseline_start is not None,
        )
    starts = sorted(
        {c.start for c in conditions.values()}
        | ({baseline_start} if baseline_start is not None else set())
    )
    if not starts:
        starts = [model.cfg.n_layers - 1]
    # A state before a run's start is the clean run's: the stream entering the next block.
    early = {s + 1 for s in state_layers if s < starts[-1]}
    keys = ["baseline", *conditions]
    measured: dict = {k: [] for k in keys}
    states: dict = {k: [] for k in keys}

    def one(clean: CleanRun, start: int, interventions: Sequence) -> tuple[Tensor, Tensor | None]:
        capture = Capture(names=set(names).__contains__, positions="query")
        logits = run_items(
            model, clean, torch.tensor([start]), None, [*background, *interventions, capture]
        )[0]
        got = [
            (capture.store[nm] if s >= start else clean.resid[s + 1][:, -1]).float().cpu()
            for s, nm in zip(state_layers, names, strict=True)
        ]
        return logits, torch.stack(got, 1) if names else None

    for group in clean_groups(
        model,
        prompts,
        layers=sorted(set(starts) | early),
        query_only=query_only,
        interventions=background,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc=desc,
        runs_per_prompt=len(keys),
    ):
        G = len(group.index)
        for key in keys:
            if key == "baseline":
                logits, got = (
                    (group.clean.logits, None)
                    if baseline_start is None
                    else one(group.clean, baseline_start, ())
                )
            else:
                logits, got = one(group.clean, conditions[key].start, conditions[key].interventions)
            measured[key].append(measure(logits, group.prompts))
            states[key].append(got)
            group.tick(G)
    out_m = {k: {m: torch.cat([g[m] for g in v]) for m in v[0]} for k, v in measured.items()}
    out_s = {k: torch.cat(v) for k, v in states.items() if v and v[0] is not None}
    return out_m, out_s
