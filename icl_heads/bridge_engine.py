"""The cached-prefix engine on a ``TransformerBridge``: rows restart at a layer and run the
bridge's *own* blocks from there, for the query token only or for every position.

The hooked backend's engine (:mod:`icl_heads.last_token`) re-implements a block for the
last token from TransformerLens internals a bridge does not have. Here the bridge's blocks
run as they are (Hugging Face's decoder layer with the bridge's re-implemented attention:
rotary, grouped-query heads, query/key norms, soft-capping, every hook point), given what
the full forward pass would have given them. The clean run records, for every block:

* the keyword inputs the bridge passed it (the 4-d attention mask with its padding,
  causal and sliding-window structure; the rotary ``position_embeddings`` of the block's
  own kind; ``position_ids``), so a block called on its own sees exactly those;
* on the query path, the prefix's rotated keys and values (``hook_rot_k``, ``hook_v``,
  recorded after every background intervention has acted).

The query rows of a prompt then run each block packed, as query positions of their
prompt's one batch row: the prefix enters through the attention's key/value cache seam
(:class:`PrefixCache`, passed as ``layer_past``: the prompt's cached keys/values joined with
its rows' own, never copied per row), and the mask lets each row see the prefix and itself
only (a block that never reads the cache is an error, never a silently different number).
An all-position row runs each block on the whole sequence with the recorded mask and
rotary inputs (``start_at_layer`` without needing it: TransformerLens 3.9's bridge has no
``start_at_layer``). Both are exact against the bridge's full forward pass
(``tests/test_bridge.py``: 1e-5 on float32).

Which bridges: those whose every attention is a ``PositionEmbeddingsAttentionBridge``
(Llama, Mistral, Qwen, Gemma 2/3 and similar; :func:`icl_heads.backends.supports_engine`).
Others take the exact fallback: one full pass per condition or swept item.

Example::

    state, resid, logits = clean_pass(model, group, index, query_only=True, layers=[3])
    x = run_block(model, state, 3, resid[3][prompt_of_row], prompt_of_row)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .activations import final_logits
from .backends import final_residual, supports_engine
from .hooks import PATTERN_HOOKS, Capture, Intervention, hook_name, intervention_hooks
from .prompts import PromptSet


@dataclass
class BlockInputs:
    """What the bridge's forward pass gave one block besides the residual stream, cut to
    the rows' positions (the last one on the query path).

    Attributes:
        mask: the attention mask as the bridge built it, ``[G, 1, P, T]`` (``P``: 1 on the
            query path, else ``T``).
        position_embeddings: rotary ``(cos, sin)``, ``[G, P, d_rot]`` each, or ``None``.
        position_ids: ``[G, P]`` or ``None``.
    """

    mask: Tensor
    position_embeddings: tuple[Tensor, Tensor] | None
    position_ids: Tensor | None

    def rows(self, prompt_of_row: Tensor) -> dict[str, Any]:
        """The block's keyword inputs for rows of prompts ``prompt_of_row``."""
        kwargs: dict[str, Any] = {"attention_mask": self.mask[prompt_of_row]}
        if self.position_embeddings is not None:
            kwargs["position_embeddings"] = tuple(
                t[prompt_of_row] for t in self.position_embeddings
            )
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids[prompt_of_row]
        return kwargs


@dataclass
class BridgeState:
    """What :func:`run_block` needs from one group's clean run on a bridge.

    Attributes:
        query_only: rows hold the last token only (else every position).
        inputs: per layer, the block's recorded keyword inputs.
        kv: per layer, the prefix's ``(keys, values)``, ``[G, kv_head, T - 1, d_head]``
            (keys rotated), on the query path; else ``None``.
    """

    query_only: bool
    inputs: list[BlockInputs]
    kv: list[tuple[Tensor, Tensor]] | None


class PrefixCache:
    """The key/value cache seam of the bridge's attention for one block call: ``update``
    returns each prompt's cached prefix keys/values joined with its packed rows' own (the
    bridge's attention calls it after rotary, before the scores).

    Example::

        cache = PrefixCache(keys, values)          # [G, kv_head, T - 1, d_head] each
        k, v = cache.update(k_new, v_new, layer)   # [G, kv_head, T - 1 + r, d_head] each
    """

    def __init__(self, keys: Tensor, values: Tensor):
        self.keys, self.values = keys, values
        self.used = False

    def update(self, keys: Tensor, values: Tensor, layer_idx: int, *args, **kwargs):
        self.used = True
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


_KWARGS = ("attention_mask", "position_embeddings", "position_ids")


def _record_inputs(model: Any, store: list) -> list:
    """Forward pre-hooks on every block keeping its keyword inputs in ``store[layer]``;
    returns the handles."""
    handles = []
    for layer, block in enumerate(model.blocks):

        def keep(module, args, kwargs, layer=layer):
            store[layer] = {k: kwargs.get(k) for k in _KWARGS}

        handles.append(block.register_forward_pre_hook(keep, with_kwargs=True))
    return handles


def _window(model: Any, layer: int) -> int | None:
    """The sliding window of block ``layer``'s attention (Hugging Face's own attribute, else
    its config's, as Mistral has), or ``None`` for full causal attention."""
    hf_attn = getattr(model.blocks[layer].attn, "original_component", None)
    if hf_attn is None:
        return None
    if hasattr(hf_attn, "sliding_window"):  # Gemma 2/3, Qwen 2: None on full layers
        return hf_attn.sliding_window
    return getattr(getattr(hf_attn, "config", None), "sliding_window", None)


def causal_mask(
    n_rows: int, seq_len: int, window: int | None = None, device: Any = None
) -> Bool[Tensor, "row 1 pos pos"]:
    """The bool attention mask ``[n_rows, 1, seq_len, seq_len]`` (``True``: attend) of rows
    without padding: causal, and within ``window`` positions when given (Hugging Face's
    sliding window: query ``q`` sees key ``k`` when ``q - window < k <= q``).

    Example::

        causal_mask(2, 4, window=2)[0, 0]   # each query sees itself and the one before
    """
    q = torch.arange(seq_len, device=device)[:, None]
    k = torch.arange(seq_len, device=device)[None, :]
    mask = k <= q
    if window is not None:
        mask = mask & (k > q - window)
    return mask[None, None].expand(n_rows, 1, seq_len, seq_len)


def _per_row(t: Tensor | None, n_rows: int) -> Tensor | None:
    """``t`` with one entry per row: Hugging Face gives batch-1 inputs (rotary tables,
    position ids, masks) to a batch whose rows all share them."""
    if t is None or t.shape[0] == n_rows:
        return t
    if t.shape[0] != 1:  # pragma: no cover - HF gives one entry per row or one for all
        raise RuntimeError(f"A block input of batch {t.shape[0]} for {n_rows} rows.")
    return t.expand(n_rows, *t.shape[1:])


def _cut(
    recorded: dict, query_only: bool, layer: int, n_rows: int, seq_len: int, model: Any
) -> BlockInputs:
    mask = recorded["attention_mask"]
    if mask is None:  # no padding: HF and the bridge let the attention build the causal mask
        device = next(model.blocks[layer].parameters()).device
        mask = causal_mask(n_rows, seq_len, _window(model, layer), device)
    elif mask.ndim != 4:
        raise RuntimeError(  # pragma: no cover - every supported bridge builds a 4-d mask
            f"The bridge gave block {layer} a {mask.ndim}-d attention mask "
            f"({tuple(mask.shape)}); the bridge engine needs a 4-d one."
        )
    pe, ids = recorded["position_embeddings"], recorded["position_ids"]
    mask = _per_row(mask, n_rows)
    pe = tuple(_per_row(t, n_rows) for t in pe) if pe is not None else None
    ids = _per_row(ids, n_rows)
    if query_only:
        mask = mask[:, :, -1:]
        pe = tuple(t[:, -1:] for t in pe) if pe is not None else None
        ids = ids[:, -1:] if ids is not None else None
    return BlockInputs(mask=mask, position_embeddings=pe, position_ids=ids)


def clean_pass(
    model: Any,
    group: PromptSet,
    index: Int[Tensor, " G"],
    *,
    query_only: bool,
    layers: Sequence[int],
    interventions: Sequence[Intervention] = (),
) -> tuple[BridgeState, dict[int, Tensor], Float[Tensor, "G d_vocab"]]:
    """One clean pass of ``group`` on a bridge (with ``interventions``), keeping what rows
    restarting at ``layers`` need: ``(state, resid, logits)``, ``resid[layer]`` the residual
    stream entering the layer (``[G, 1, d_model]`` at the query, else ``[G, T, d_model]``
    with padding zeroed), recorded before any background intervention there acts.

    Example::

        state, resid, logits = clean_pass(model, group, index, query_only=True, layers=[3])
    """
    if not supports_engine(model):
        raise ValueError(
            f"The bridge engine cannot run {type(model).__name__} (an attention other than "
            "PositionEmbeddingsAttentionBridge); the analyses take their full-pass fallback."
        )
    names = [hook_name("resid_pre", layer) for layer in layers]
    capture = Capture(
        names=set(names).__contains__,
        positions="query" if query_only else "all",
        attention_mask=group.attention_mask,
    )
    L = model.cfg.n_layers
    recorded: list = [None] * L
    keys: list = [None] * L
    values: list = [None] * L
    kv_hooks = []
    if query_only:
        # After the background interventions (added later, fired later): the prefix the
        # rows attend to is the one the clean run attended to.
        for layer in range(L):

            def keep_k(act, hook, layer=layer):
                keys[layer] = act[:, :-1].transpose(1, 2).contiguous()

            def keep_v(act, hook, layer=layer):
                values[layer] = act[:, :-1].transpose(1, 2).contiguous()

            kv_hooks += [
                (f"blocks.{layer}.attn.hook_rot_k", keep_k),
                (f"blocks.{layer}.attn.hook_v", keep_v),
            ]
    handles = _record_inputs(model, recorded)
    try:
        hooks = capture.fwd_hooks() + intervention_hooks(
            interventions, group, index, model.cfg.n_layers
        )
        with model.hooks(fwd_hooks=hooks + kv_hooks):
            resid = final_residual(model, group.tokens, group.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    logits = final_logits(model, resid[:, -1])
    stored = {layer: capture.store[name] for layer, name in zip(layers, names, strict=True)}
    if query_only:
        stored = {layer: act[:, None] for layer, act in stored.items()}
    state = BridgeState(
        query_only=query_only,
        inputs=[
            _cut(recorded[layer], query_only, layer, *group.tokens.shape, model)
            for layer in range(L)
        ],
        kv=list(zip(keys, values, strict=True)) if query_only else None,
    )
    return state, stored, logits


def _packed_inputs(query: dict[str, Any], r: int) -> dict[str, Any]:
    """The query path's keyword inputs (``query``: :meth:`BlockInputs.rows` of the prompts)
    for ``r`` rows of every prompt packed as ``r`` query positions: each row sees its
    prompt's prefix (the recorded query row of the mask) and its own key only (a diagonal
    over the packed positions), at the query's rotary position."""
    mask = query["attention_mask"]  # [P, 1, 1, T]: the query's row
    P, T = mask.shape[0], mask.shape[-1]
    eye = torch.eye(r, dtype=torch.bool, device=mask.device)
    if mask.dtype == torch.bool:
        own = eye.expand(P, 1, r, r)
    else:  # an additive mask: the query's own entry where a row meets itself
        blocked = torch.full((), torch.finfo(mask.dtype).min, dtype=mask.dtype)
        own = torch.where(eye, mask[..., -1:], blocked.to(mask.device)).expand(P, 1, r, r)
    kwargs = {"attention_mask": torch.cat([mask[..., : T - 1].expand(P, 1, r, T - 1), own], -1)}
    if "position_embeddings" in query:
        kwargs["position_embeddings"] = tuple(
            t.expand(P, r, *t.shape[2:]) for t in query["position_embeddings"]
        )
    if "position_ids" in query:
        kwargs["position_ids"] = query["position_ids"].expand(P, r)
    return kwargs


def run_block(
    model: Any,
    state: BridgeState,
    layer: int,
    x: Float[Tensor, "row pos d_model"],
    prompt_of_row: Int[Tensor, " row"],
) -> Float[Tensor, "row pos d_model"]:
    """Block ``layer`` of the bridge on rows ``x`` (row ``i`` belongs to prompt
    ``prompt_of_row[i]``), with that prompt's recorded inputs (and cached prefix on the
    query path). Every hook point of the block fires.

    On the query path each prompt of ``prompt_of_row`` must hold the same number ``r`` of
    rows. They run packed, as ``r`` query positions of their prompt's one batch row: the
    prefix keys and values are shared by the prompt's rows (never copied per row), and the
    mask lets each position see the prefix and itself only. The block's hooks then see
    ``[P, r, ...]`` (``P`` prompts in order, each one's rows in their order in ``x``);
    :func:`row_view` gives a hook the ``[row, 1, ...]`` view in prompt-major row order.

    Example::

        x = run_block(model, state, 3, x, prompt_of_row)
    """
    if not state.query_only:
        out = model.blocks[layer](x, **state.inputs[layer].rows(prompt_of_row))
        return out[0] if isinstance(out, tuple) else out
    present, counts = torch.unique(prompt_of_row.cpu(), return_counts=True)
    r = int(counts[0])
    if not bool((counts == r).all()):
        raise ValueError(
            "The bridge engine's query rows need the same number of rows for each of their "
            f"prompts; got {dict(zip(present.tolist(), counts.tolist()))} (prompt: rows)."
        )
    order = torch.sort(prompt_of_row.cpu(), stable=True).indices.to(x.device)
    packed = x[order].reshape(len(present), r, x.shape[-1])
    keys, values = state.kv[layer]
    if len(present) != keys.shape[0]:  # a subset of the clean run's prompts
        keys, values = keys[present.to(keys.device)], values[present.to(keys.device)]
    query = state.inputs[layer].rows(present.to(state.inputs[layer].mask.device))
    cache = PrefixCache(keys, values)
    # ``layer_past``: the name the bridge's attention reads its cache from that reaches it
    # through the Hugging Face layer (transformers 5 renames ``past_key_values``).
    out = model.blocks[layer](packed, layer_past=cache, **_packed_inputs(query, r))
    if not cache.used:
        raise RuntimeError(
            f"Block {layer} of the bridge ignored the cached prefix (its attention never read "
            "layer_past): this TransformerLens/transformers pair routes the key/value cache "
            "elsewhere; the query rows would attend to themselves only. Report it; meanwhile "
            "use method='naive' or positions='all'."
        )
    out = out[0] if isinstance(out, tuple) else out
    result = torch.empty_like(x)
    result[order] = out.reshape(len(order), 1, -1)
    return result


def row_view(name: str | Any, fn: Any, n_prompts: int, r: int) -> tuple[str | Any, Any]:
    """The hook ``(name, fn)`` for a block that :func:`run_block` runs packed with ``r``
    rows per prompt: ``fn`` sees the ``[G * r, 1, ...]`` rows (prompt-major, row
    ``g * r + j``) of the packed ``[G, r, ...]`` activation, as it would on unpacked rows;
    what it returns or edits in place goes back into the packed one. Attention patterns
    (``[batch, head, query, key]``) have no row view: a hook on them is refused.

    Example::

        hooks = [row_view(name, fn, G, r) for name, fn in hooks]
    """
    if isinstance(name, str) and name.endswith((*PATTERN_HOOKS, "_normed")):
        raise ValueError(
            f"A hook at {name} cannot act on the bridge engine's query rows (they run "
            "packed as query positions; an attention pattern has no per-row view). Use "
            "positions='all' or method='naive' for an intervention on attention patterns."
        )

    def viewed(act: Tensor, hook: Any) -> Tensor:
        if act.shape[:2] != (n_prompts, r) or getattr(hook, "name", "").endswith(
            (*PATTERN_HOOKS, "_normed")
        ):
            raise ValueError(
                f"A hook at {getattr(hook, 'name', name)} cannot act on the bridge engine's "
                f"query rows: its activation {tuple(act.shape)} is not [prompt, row, ...] "
                f"({n_prompts} prompts, {r} rows). Use positions='all' or method='naive'."
            )
        rows = act.reshape(n_prompts * r, 1, *act.shape[2:])
        out = fn(rows, hook=hook)
        return (rows if out is None else out).reshape(act.shape)

    return name, viewed


# --------------------------------------------------------------------------- full passes


def full_clean_pass(
    model: Any,
    group: PromptSet,
    index: Int[Tensor, " G"],
    *,
    query_only: bool,
    layers: Sequence[int],
    interventions: Sequence[Intervention] = (),
) -> tuple[dict[int, Tensor], Float[Tensor, "G d_vocab"]]:
    """:func:`clean_pass` for a bridge whose blocks the engine cannot run (GPT-2 and other
    attentions than ``PositionEmbeddingsAttentionBridge``): one full pass with
    ``interventions``, keeping ``(resid, logits)`` as :func:`clean_pass` does; its rows
    then re-run whole (:func:`full_pass_items`).

    Example::

        resid, logits = full_clean_pass(model, group, index, query_only=True, layers=[3])
    """
    names = [hook_name("resid_pre", layer) for layer in layers]
    capture = Capture(
        names=set(names).__contains__,
        positions="query" if query_only else "all",
        attention_mask=group.attention_mask,
    )
    hooks = capture.fwd_hooks() + intervention_hooks(
        interventions, group, index, model.cfg.n_layers
    )
    with model.hooks(fwd_hooks=hooks):
        resid = final_residual(model, group.tokens, group.attention_mask)
    stored = {layer: capture.store[name] for layer, name in zip(layers, names, strict=True)}
    if query_only:
        stored = {layer: act[:, None] for layer, act in stored.items()}
    return stored, final_logits(model, resid[:, -1])


def full_pass_items(
    model: Any,
    group: PromptSet,
    index: Int[Tensor, " G"],
    item_layers: Int[Tensor, " item"],
    edit: Any = None,
    interventions: Sequence[Intervention] = (),
    *,
    query_only: bool = False,
) -> Float[Tensor, "item G d_vocab"]:
    """The items of :func:`icl_heads.last_token.run_items` as one full pass of ``item x G``
    rows (item-major: row ``j * G + g``), each item's ``edit`` at its layer on its rows and
    ``interventions`` on every row everywhere. The same numbers as restarting the rows at
    their layers from the clean run when ``interventions`` are the clean run's (before an
    item's layer they act as they did there) and the edits act at every position (a query-
    only clean run's ``edit`` indexes a one-position stream: refused).

    Example::

        logits = full_pass_items(model, group, index, torch.tensor([3]), None, [iv])
    """
    if edit is not None and query_only:
        raise ValueError(
            f"{type(model).__name__}'s blocks cannot be re-run alone, and edits of a query-"
            "only clean run index the query position only: use method='naive' (one full "
            "pass per item) or positions='all'."
        )
    G, layers = len(group), [int(x) for x in item_layers]
    device = group.tokens.device
    g = torch.arange(G, device=device)
    prompt_of_row = g.repeat(len(layers)).cpu()
    rows_batch, rows_index = group.select(prompt_of_row), index[prompt_of_row]
    hooks = intervention_hooks(interventions, rows_batch, rows_index, model.cfg.n_layers)
    if edit is not None:
        for layer in sorted(set(layers)):  # item_layers is sorted: items lo..hi join here
            lo, hi = layers.index(layer), layers.index(layer) + layers.count(layer)
            rows = torch.arange(lo, hi, device=device)[:, None] * G + g[None]
            hooks += edit(layer, lo, hi, rows).fwd_hooks()
    with model.hooks(fwd_hooks=hooks):
        resid = final_residual(model, rows_batch.tokens, rows_batch.attention_mask)
    return final_logits(model, resid[:, -1]).reshape(len(layers), G, -1)


__all__ = [
    "BlockInputs",
    "BridgeState",
    "PrefixCache",
    "causal_mask",
    "clean_pass",
    "run_block",
    "row_view",
    "full_clean_pass",
    "full_pass_items",
]
