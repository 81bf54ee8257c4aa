"""The final residual stream at the query position, split into additive terms: every head's
output, every layer's attention bias and MLP output, the embeddings; optionally divided by
the final norm's cached scale. The scores of :mod:`icl_heads.attribution` are built on it.

Conventions (with TransformerLens's weight processing, as :func:`icl_heads.load_model` does):

- head output ``a[l, h] = z[N, l, h] @ W_O[l, h]`` at the query position ``N``, from
  ``blocks.{l}.attn.hook_z`` (no ``use_attn_result``); on models with a norm after
  attention (Gemma 2/3) the norm's cached scale and weight are applied, so ``a`` is what
  the head adds to the residual stream;
- ``apply_ln=True`` applies the final norm's cached scale the way
  ``ActivationCache.apply_ln_to_stack`` does (centre for LayerNorm, divide by the scale),
  so the terms add up exactly to the final normalised residual stream and, through
  ``W_U`` (+ ``b_U``), to the logits.

Everything streams through :func:`icl_heads.activations.iter_batches`: one forward pass per
batch, capturing only what the terms need at the query position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from .activations import Batch, iter_batches
from .backends import HookedTransformer, architecture
from .batching import BatchSize
from .devices import output_weights, resolve_device
from .prompts import PromptSet, check_prompt_set

#: ``reduce(batch, terms) -> {name: [batch, ...]}``: per-prompt values from one batch's terms.
TermReducer = Callable[[Batch, dict[str, Tensor]], dict[str, Tensor]]


def check_additive(model: HookedTransformer) -> None:
    """Raise unless per-head outputs add up in this architecture's residual stream."""
    cfg = model.cfg
    if architecture(model) in POST_NORM_ARCHITECTURES:
        raise ValueError(
            f"{architecture(model)} is a post-norm architecture (each sublayer's output "
            "passes through ln1/ln2 before the residual add), so per-head attribution is not "
            "additive there; icl-heads' attribution does not support it."
        )
    if cfg.use_normalization_before_and_after:
        post = model.blocks[0].ln1_post
        if type(post).__name__ != "RMSNorm":
            raise ValueError(
                f"Post-attention norm {type(post).__name__} is not supported "
                "(only RMSNorm, as in Gemma 2/3)."
            )


def final_norm(model: HookedTransformer):
    """The final norm module, or ``None`` for a model without one."""
    if model.cfg.normalization_type is None:
        return None
    return getattr(model, "ln_final", None)


def final_norm_weight(model: HookedTransformer) -> Tensor | None:
    """The final norm's weight if it was not folded into ``W_U`` (LN / RMS, not *Pre)."""
    norm = final_norm(model)
    w = getattr(norm, "w", None) if norm is not None else None
    return w.detach() if isinstance(w, Tensor) else None


def unembed_bias(model: HookedTransformer) -> Float[Tensor, " d_vocab"]:
    """``b_U``, plus ``b_ln @ W_U`` when the final LayerNorm's bias was not folded."""
    with torch.no_grad():
        bias = model.b_U.detach().clone()
        norm = final_norm(model)
        b = getattr(norm, "b", None) if norm is not None else None
        if isinstance(b, Tensor):
            bias = bias + b.detach() @ model.W_U.detach()
    return bias


def iter_query_terms(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    full: bool,
    apply_ln: bool,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    desc: str = "decomposition",
) -> Iterator[tuple[Batch, dict[str, Tensor]]]:
    """One forward pass per batch; yields the query position's additive residual terms.

    Terms: ``head`` ``[b, L, H, d]`` always; with ``full`` also ``embed`` ``[b, d]``,
    ``pos_embed`` ``[b, d]`` (learned positions only), ``attn_bias`` ``[b, L, d]`` and
    ``mlp`` ``[b, L, d]``. With ``apply_ln`` every term is centred (LayerNorm) and divided
    by the final norm's cached scale. A term that is NaN or inf (a broken run) is a
    ValueError naming the prompt (and head).
    """
    check_additive(model)
    cfg = model.cfg
    L = cfg.n_layers
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(L)]
    names = list(z_names)
    post_norm = bool(cfg.use_normalization_before_and_after)
    if post_norm:
        names += [f"blocks.{layer}.ln1_post.hook_scale" for layer in range(L)]
    has_pos = cfg.positional_embedding_type == "standard"
    has_mlp = not cfg.attn_only
    if full:
        names.append("hook_embed")
        if has_pos:
            names.append("hook_pos_embed")
        if has_mlp:
            names += [f"blocks.{layer}.hook_mlp_out" for layer in range(L)]
    norm = final_norm(model) if apply_ln else None
    if norm is not None:
        names.append("ln_final.hook_scale")
    centre = cfg.normalization_type in ("LN", "LNPre")
    here = resolve_device(device) if device is not None else torch.device(cfg.device)
    with torch.no_grad():
        W_O, b_O = output_weights(model, here)  # [L, H, d_head, d_model], [L, d_model]
        post_w = (
            torch.stack([b.ln1_post.w.detach().to(here) for b in model.blocks])
            if post_norm
            else None
        )  # [L, d_model]

    # The final norm's scale is only computed when the logits are (iter_batches stops at
    # the last block otherwise), so ask for logits exactly when that scale is needed.
    for batch in iter_batches(
        model,
        prompts,
        names,
        positions="query",
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=norm is not None,
        progress=progress,
        desc=desc,
    ):
        acts = batch.activations  # each layer's on its block's device (n_devices > 1)
        z = _layers(acts, "blocks.{}.attn.hook_z", L, here)  # [b, L, H, d_head]
        terms = {"head": torch.einsum("blhk,lhkd->blhd", z, W_O.to(z))}
        if full:
            terms["attn_bias"] = b_O.to(z)[None].expand(z.shape[0], -1, -1)
        if post_norm:
            scale = _layers(acts, "blocks.{}.ln1_post.hook_scale", L, here)  # [b, L, 1]
            factor = post_w.to(z)[None] / scale  # [b, L, d_model]
            terms["head"] = terms["head"] * factor[:, :, None]
            if full:
                terms["attn_bias"] = terms["attn_bias"] * factor
        if full:
            terms["embed"] = acts["hook_embed"].to(here)
            if has_pos:
                terms["pos_embed"] = acts["hook_pos_embed"].to(here)
            if has_mlp:
                terms["mlp"] = _layers(acts, "blocks.{}.hook_mlp_out", L, here)  # [b, L, d_model]
        if norm is not None:
            scale = acts["ln_final.hook_scale"].to(here).reshape(-1)  # [b] (the last device)
            terms = {k: _apply_scale(v, scale, centre) for k, v in terms.items()}
        _check_finite_terms(batch, terms)
        yield batch, terms


def _layers(acts: dict[str, Tensor], name: str, L: int, here: torch.device) -> Tensor:
    """``[b, L, ...]``: every layer's capture of ``name`` (``"blocks.{}..."``), each moved to
    ``here`` before stacking (on a split model each lives on its block's device)."""
    return torch.stack([acts[name.format(i)].to(here) for i in range(L)], dim=1)


def _check_finite_terms(batch: Batch, terms: dict[str, Tensor]) -> None:
    """A ValueError naming the term, the prompt (and head) when a term is NaN or inf: a
    broken run never becomes a NaN score that ranking then skips."""
    for name, value in terms.items():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            where = bad.reshape(*bad.shape[: 3 if name == "head" else 1], -1).any(-1)
            first = where.nonzero()[0].tolist()
            head = f", head L{first[1]}H{first[2]}" if name == "head" else ""
            raise ValueError(
                f"The query-position {name!r} term holds NaN or inf (first: prompt "
                f"{int(batch.index[first[0]])}{head}); the run or an intervention made the "
                "activations non-finite, and they cannot be attributed."
            )


def reduce_query_terms(
    model: HookedTransformer,
    prompts: PromptSet,
    reduce: TermReducer,
    *,
    full: bool,
    apply_ln: bool,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    desc: str = "decomposition",
) -> dict[str, Float[Tensor, "prompt ..."]]:
    """The one reduce loop of the attribution scores: stream the query terms, reduce each
    batch to per-prompt values with ``reduce(batch, terms)``, and concatenate them (CPU,
    float64). Memory grows only with the per-prompt values, never with the terms."""
    rows: dict[str, list[Tensor]] = {}
    for batch, terms in iter_query_terms(
        model,
        prompts,
        full=full,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc=desc,
    ):
        for name, value in reduce(batch, terms).items():
            rows.setdefault(name, []).append(value.detach().double().cpu())
    return {name: torch.cat(values) for name, values in rows.items()}


def _apply_scale(x: Tensor, scale: Float[Tensor, " batch"], centre: bool) -> Tensor:
    """``ActivationCache.apply_ln_to_stack`` for one term: centre (LayerNorm), divide."""
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x / scale.reshape(-1, *([1] * (x.ndim - 1))).to(x)


def stack_terms(model: HookedTransformer, terms: dict[str, Tensor]) -> tuple[Tensor, list[str]]:
    """Stack the terms as ``[b, component, d_model]`` in the canonical component order:
    ``embed``, ``pos_embed`` (learned positions only), then per layer ``L{l}H{h}`` for every
    head, ``L{l}.attn_bias`` and ``L{l}.mlp``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    parts, labels = [terms["embed"][:, None]], ["embed"]
    if "pos_embed" in terms:
        parts.append(terms["pos_embed"][:, None])
        labels.append("pos_embed")
    for layer in range(L):
        parts += [terms["head"][:, layer], terms["attn_bias"][:, layer, None]]
        labels += [f"L{layer}H{h}" for h in range(H)] + [f"L{layer}.attn_bias"]
        if "mlp" in terms:
            parts.append(terms["mlp"][:, layer, None])
            labels.append(f"L{layer}.mlp")
    return torch.cat(parts, dim=1), labels


def component_labels(model: HookedTransformer) -> list[str]:
    """The labels of :func:`stack_terms`'s components, without running the model."""
    labels = ["embed"]
    if model.cfg.positional_embedding_type == "standard":
        labels.append("pos_embed")
    for layer in range(model.cfg.n_layers):
        labels += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)] + [f"L{layer}.attn_bias"]
        if not model.cfg.attn_only:
            labels.append(f"L{layer}.mlp")
    return labels


# --------------------------------------------------------------------------- public


def iter_head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    apply_ln: bool = False,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> Iterator[tuple[Batch, Float[Tensor, "batch layer head d_model"]]]:
    """Stream per-head outputs at the query position, one forward pass per batch.

    ``a[b, l, h] = z[b, N, l, h] @ W_O[l, h]`` (see the module docstring);
    ``apply_ln=True`` also applies the final norm's scale (centre + divide).

    Yields:
        ``(batch, a)`` with ``a`` of shape ``[batch, n_layers, n_heads, d_model]``.
    """
    check_prompt_set(prompts, model=model)
    for batch, terms in iter_query_terms(
        model,
        prompts,
        full=False,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc="head outputs",
    ):
        yield batch, terms["head"]


def head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    apply_ln: bool = False,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> Float[Tensor, "prompt layer head d_model"]:
    """Per-head outputs at the query position for all prompts, concatenated.

    See :func:`iter_head_outputs` (which streams). Memory is ``n * L * H * d_model`` floats
    (0.6 MB per prompt on the default model); prefer :func:`icl_heads.tsla_scores` or the
    streaming version for large sets.

    Example::

        a = ih.head_outputs(model, prompts)      # [prompt, layer, head, d_model]
        a[:, 17, 3].norm(dim=-1).mean()          # how much L17H3 writes at the query
    """
    return torch.cat(
        [
            a.float().cpu()  # results in float32 on the CPU, whatever the model's dtype
            for _, a in iter_head_outputs(
                model,
                prompts,
                apply_ln=apply_ln,
                batch_size=batch_size,
                device=device,
                interventions=interventions,
                progress=progress,
            )
        ]
    )


def residual_decomposition(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    apply_ln: bool = False,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> tuple[Float[Tensor, "prompt component d_model"], list[str]]:
    """The final residual stream at the query position, split into additive components.

    Components, in order: ``embed``, ``pos_embed`` (learned positions only), then per
    layer ``L{l}H{h}`` for every head, ``L{l}.attn_bias`` (``b_O``, which holds the folded
    value biases) and ``L{l}.mlp`` (``hook_mlp_out``, biases included). They sum to the
    final residual stream (``apply_ln=False``) or, with ``apply_ln=True``, to the final
    norm's output (so ``sum @ W_U + b_U`` are the logits, before any soft-cap).

    Returns:
        ``(stack [prompt, component, d_model], labels)``. Memory grows with the number of
        prompts; :func:`icl_heads.direct_logit_attribution` streams instead.
    """
    check_prompt_set(prompts, model=model)
    stacks = []
    for _, terms in iter_query_terms(
        model,
        prompts,
        full=True,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    ):
        stack, _ = stack_terms(model, terms)
        stacks.append(stack.float().cpu())  # float32 on the CPU, whatever the model's dtype
    return torch.cat(stacks), component_labels(model)
