"""Per-head outputs at the query position, direct logit attribution (DLA), the task
subspace, and TSLA TR/TL scores (Yang, Cho, Inoue 2025; see METHODS.md "TSLA").

Everything here streams through :func:`icl_heads.activations.iter_batches`: one forward
pass per batch, capturing only ``blocks.{l}.attn.hook_z`` (plus, for DLA, the embedding,
MLP outputs and the final norm's scale) at the query position, and reducing each batch to
per-head numbers before the next one. Memory is independent of the number of prompts
unless per-prompt scores are requested.

Conventions (with TransformerLens's weight processing, as :func:`icl_heads.load_model` does):

- head output ``a[l, h] = z[N, l, h] @ W_O[l, h]`` at the query position ``N``;
- label directions ``u_y = W_U[:, token(y)]`` (times the final norm's weight if a model
  was loaded without ``fold_ln``), ``W_Y = [u_1 ... u_C]``;
- ``apply_ln=True`` applies the final norm's cached scale the way
  ``ActivationCache.apply_ln_to_stack`` does (centre for LayerNorm, divide by the scale),
  so the components add up exactly to the final normalised residual stream and,
  through ``W_U`` (+ ``b_U``), to the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .activations import Batch, iter_batches
from .heads import HeadScores, default_top_k
from .prompts import PromptSet, check_prompt_set

Normalizer = Literal["none", "norm", "tr"]
Target = Literal["gold", "logit_diff", "centered"]
Unit = Literal["component", "head", "attn", "mlp", "layer"]

NORMALIZERS: tuple[str, ...] = ("none", "norm", "tr")
TARGETS: tuple[str, ...] = ("gold", "logit_diff", "centered")
UNITS: tuple[str, ...] = ("component", "head", "attn", "mlp", "layer")

#: Architectures whose blocks normalise each sublayer's output with ``ln1``/``ln2``
#: (OLMo 2): head outputs are not additive in the residual stream there.
try:  # TransformerLens >= 3.x keeps the list here
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
except ImportError:  # pragma: no cover - older layouts
    POST_NORM_ARCHITECTURES = set()


# --------------------------------------------------------------------------- task subspace


def label_unembeddings(
    model: HookedTransformer, label_token_ids: Int[Tensor, " label"] | list[int]
) -> Float[Tensor, "d_model label"]:
    """The label directions ``W_Y = [u_{y_1} ... u_{y_C}]`` with ``u_y = W_U[:, token(y)]``.

    With ``fold_ln`` (the default processing) the final norm's weight is already inside
    ``W_U``; for a model loaded without it, the weight is multiplied in here, so that
    ``(normalised component) . u_y`` is always the component's direct logit contribution.

    Returns:
        ``[d_model, n_labels]`` float tensor on the model's device (no gradient).
    """
    ids = torch.as_tensor(label_token_ids, dtype=torch.long)
    vocab = model.cfg.d_vocab_out if model.cfg.d_vocab_out > 0 else model.cfg.d_vocab
    if ids.ndim != 1 or ids.numel() == 0:
        raise ValueError(f"label_token_ids must be a non-empty 1-D list of token ids, got shape "
                         f"{tuple(ids.shape)}.")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"label_token_ids {ids.tolist()} are out of range for a vocabulary of "
                         f"{vocab} tokens.")
    with torch.no_grad():
        W_U = model.W_U.detach()
        directions = W_U[:, ids.to(W_U.device)]
        weight = _final_norm_weight(model)
        if weight is not None:
            directions = directions * weight[:, None]
    return directions.clone()


def subspace_basis(
    directions: Float[Tensor, "d_model n"], *, rtol: float | None = None
) -> Float[Tensor, "d_model rank"]:
    """Orthonormal basis ``Q`` of ``span(directions)``, so the projector is ``P = Q Q^T``.

    Computed from the thin SVD in float64 (the pseudo-inverse route: ``P = W W^+``; never an
    explicit inverse). Singular values below ``rtol * s_max`` are dropped, with ``rtol``
    defaulting to ``max(d_model, n) * eps(float32)``, so ``Q`` depends only on the span, not
    on how the directions are scaled or mixed. ``||P a||^2 = ||Q^T a||^2`` costs ``O(d r)``
    instead of ``O(d^2)``.

    Returns:
        ``[d_model, rank]`` tensor with orthonormal columns, in the input's dtype and device.
    """
    if directions.ndim != 2 or directions.shape[1] == 0:
        raise ValueError(f"directions must be a [d_model, n] matrix with n >= 1, got shape "
                         f"{tuple(directions.shape)}.")
    if not torch.isfinite(directions).all():
        raise ValueError("directions contain NaN or inf values.")
    W = directions.detach().double()
    U, S, _ = torch.linalg.svd(W, full_matrices=False)
    if rtol is None:
        rtol = max(W.shape) * torch.finfo(torch.float32).eps
    rank = int((S > rtol * S.max()).sum()) if float(S.max()) > 0 else 0
    if rank == 0:
        raise ValueError("The label directions are all zero; the task subspace is empty.")
    return U[:, :rank].to(directions.dtype)


def task_subspace_projector(
    model: HookedTransformer, label_token_ids: Int[Tensor, " label"] | list[int]
) -> Float[Tensor, "d_model d_model"]:
    """Projector onto the task subspace ``span(W_Y)``: ``P = W_Y (W_Y^T W_Y)^+ W_Y^T = Q Q^T``.

    Prefer :func:`subspace_basis` (``Q``) in loops: ``||P a||^2 = ||Q^T a||^2``.
    """
    Q = subspace_basis(label_unembeddings(model, label_token_ids))
    return Q @ Q.T


# --------------------------------------------------------------------------- scores


def tr_score(
    head_out: Float[Tensor, "*batch d_model"], basis: Float[Tensor, "d_model rank"]
) -> Float[Tensor, "*batch"]:
    """TR score ``||P a||^2 = ||Q^T a||^2``: how much a head writes into the task subspace."""
    coords = head_out @ basis.to(head_out.device, head_out.dtype)
    return coords.pow(2).sum(-1)


def label_weights(
    gold: Int[Tensor, " batch"], n_labels: int, target: Target = "logit_diff"
) -> Float[Tensor, "batch label"]:
    """Weights ``w`` over the labels such that ``W_Y w`` is the target's residual direction.

    - ``"gold"``: ``u_{y*}`` (the gold-label logit);
    - ``"logit_diff"``: ``u_{y*} - mean_{y' != y*} u_{y'}`` (the gold-label logit difference
      of :func:`icl_heads.metrics.logit_diff`; equal to ``mean_{y' != y*} (u_{y*} - u_{y'})``,
      the TL direction);
    - ``"centered"``: ``u_{y*} - mean_{y'} u_{y'}`` (mean over all labels; METHODS' plain
      DLA; ``(C - 1) / C`` times ``"logit_diff"``).
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    if target != "gold" and n_labels < 2:
        raise ValueError(f"target={target!r} compares the gold label with the others and needs "
                         f"at least 2 labels, got {n_labels}; use target='gold'.")
    onehot = torch.nn.functional.one_hot(gold.long(), n_labels).float()
    if target == "gold":
        return onehot
    if target == "logit_diff":
        return onehot - (1.0 - onehot) / (n_labels - 1)
    return onehot - 1.0 / n_labels


def tl_score(
    head_out: Float[Tensor, "batch *head d_model"],
    label_dirs: Float[Tensor, "d_model label"],
    gold: Int[Tensor, " batch"],
) -> Float[Tensor, " batch *head"]:
    """TL score ``mean_{y' != y*} a^T (u_{y*} - u_{y'})`` per prompt (unnormalised).

    The label differences lie in the task subspace, so this is the head's direct logit
    attribution to the gold-label logit difference.
    """
    dirs = label_dirs.to(head_out.device, head_out.dtype)
    w = label_weights(gold.to(head_out.device), dirs.shape[1], "logit_diff").to(dirs)
    target = w @ dirs.T  # [batch, d_model]
    flat = head_out.reshape(head_out.shape[0], -1, head_out.shape[-1])
    return torch.einsum("bnd,bd->bn", flat, target).reshape(head_out.shape[:-1])


# --------------------------------------------------------------------------- streaming


def iter_head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    apply_ln: bool = False,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Iterator[tuple[Batch, Float[Tensor, "batch layer head d_model"]]]:
    """Stream per-head outputs at the query position, one forward pass per batch.

    ``a[b, l, h] = z[b, N, l, h] @ W_O[l, h]`` from ``blocks.{l}.attn.hook_z`` (no
    ``use_attn_result``); on models with a post-attention norm (Gemma 2/3), the norm's
    cached scale and weight are applied so ``a`` is what the head adds to the residual
    stream. ``apply_ln=True`` also applies the final norm's scale (centre + divide).

    Yields:
        ``(batch, a)`` with ``a`` of shape ``[batch, n_layers, n_heads, d_model]``.
    """
    _check_prompts(prompts)
    for batch, terms in _iter_query_terms(model, prompts, full=False, apply_ln=apply_ln,
                                          batch_size=batch_size, device=device,
                                          progress=progress, desc="head outputs"):
        yield batch, terms["head"]


def head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    apply_ln: bool = False,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Float[Tensor, "prompt layer head d_model"]:
    """Per-head outputs at the query position for all prompts, concatenated.

    See :func:`iter_head_outputs` (which streams). Memory is ``n * L * H * d_model`` floats
    (0.6 MB per prompt on the default model); prefer :func:`tsla_scores` or the streaming
    version for large sets.
    """
    return torch.cat([a for _, a in iter_head_outputs(
        model, prompts, apply_ln=apply_ln, batch_size=batch_size, device=device,
        progress=progress)])


def residual_decomposition(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    apply_ln: bool = False,
    batch_size: int = 16,
    device: str | torch.device | None = None,
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
        prompts; :func:`direct_logit_attribution` streams instead.
    """
    _check_prompts(prompts)
    stacks, labels = [], []
    for _, terms in _iter_query_terms(model, prompts, full=True, apply_ln=apply_ln,
                                      batch_size=batch_size, device=device, progress=progress,
                                      desc="decomposition"):
        stack, labels = _stack_terms(model, terms)
        stacks.append(stack)
    return torch.cat(stacks), labels


# --------------------------------------------------------------------------- TSLA


def tsla_scores(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    top_k: int | None = None,
    normalizer: Normalizer = "none",
    floor: float = 0.01,
    apply_ln: bool = False,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_per_prompt: bool = False,
) -> tuple[HeadScores, HeadScores]:
    """TSLA (Task Subspace Logit Attribution) TR and TL scores of every head.

    Per head ``(l, h)`` and prompt with gold label ``y*``, with ``a`` the head's output at
    the query position and ``P`` the projector onto ``span(W_Y)``:

    - **TR** ``= ||P a||^2`` (writes into the label space, whatever the label);
    - **TL** ``= mean_{y' != y*} a^T (u_{y*} - u_{y'})`` (pushes the gold label over the
      others), divided per prompt by ``||P a||`` (``normalizer="norm"``) or ``||P a||^2``
      (``"tr"``), or not at all (``"none"``, default).

    Both are averaged over the prompts (mean of per-prompt values). With a normaliser, heads
    whose mean TR is below ``floor * max(mean TR)`` get TL = NaN and are never ranked
    (dividing by a near-zero projection ranks noise first; see METHODS.md).

    Args:
        model: a weight-processed model (as :func:`icl_heads.load_model` returns).
        prompts: the task's prompts (at least 2 labels).
        top_k: size of the TR/TL head sets recorded in the metadata (``top_heads``);
            default 3% of all heads, at least 1.
        normalizer: ``"none"`` | ``"norm"`` | ``"tr"`` (see above).
        floor: fraction of the largest mean TR below which normalised TL is NaN (only used
            with a normaliser); ``0 <= floor < 1``.
        apply_ln: ``False`` (default, METHODS' formula) uses the raw head output ``a``;
            ``True`` first applies the final norm's cached scale per prompt (as DLA does), so
            TL equals the head's DLA to the gold-label logit difference.
        batch_size, device, progress: as in :func:`icl_heads.iter_batches`.
        return_per_prompt: also keep the ``[prompt, layer, head]`` scores (``.per_prompt``);
            otherwise memory does not grow with the number of prompts.

    Returns:
        ``(tr, tl)``, two :class:`HeadScores` named ``"tr_score"`` and ``"tl_score"`` whose
        metadata records method ``"tsla"``, model, task/k/n/seed/perturbation, labels,
        normalizer, floor, apply_ln, top_k and the top heads.
    """
    _check_prompts(prompts, need_pairs=True)
    if normalizer not in NORMALIZERS:
        raise ValueError(f"Unknown normalizer {normalizer!r}; choose one of {NORMALIZERS} "
                         "('none' = raw TL, 'norm' = divide by ||P a||, 'tr' = divide by "
                         "||P a||^2).")
    if not (isinstance(floor, (int, float)) and 0.0 <= floor < 1.0):
        raise ValueError(f"floor must be a fraction of the largest mean TR score in [0, 1), got "
                         f"{floor!r}.")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = _resolve_top_k(top_k, L, H)
    label_dirs = label_unembeddings(model, prompts.label_token_ids)
    basis = subspace_basis(label_dirs)
    # Coordinates of the TL direction in the basis: TL = (Q^T a) . (Q^T d), which equals
    # a . d because d lies in the subspace, and bounds |TL| / ||P a|| by ||d||.
    dirs_in_basis = basis.T @ label_dirs  # [rank, label]

    tr_sum = torch.zeros(L, H, dtype=torch.float64)
    tl_sum = torch.zeros(L, H, dtype=torch.float64)
    tr_rows, tl_rows = [], []
    for batch, terms in _iter_query_terms(model, prompts, full=False, apply_ln=apply_ln,
                                          batch_size=batch_size, device=device,
                                          progress=progress, desc="tsla"):
        a = terms["head"]
        coords = a @ basis.to(a.device, a.dtype)  # [batch, L, H, rank]
        tr = coords.pow(2).sum(-1)
        tl = tl_score(coords, dirs_in_basis, batch.prompts.gold)
        tl = _normalise(tl, tr, normalizer)
        tr_sum += tr.sum(0).double().cpu()
        tl_sum += tl.sum(0).double().cpu()
        if return_per_prompt:
            tr_rows.append(tr.float().cpu())
            tl_rows.append(tl.float().cpu())

    n = len(prompts)
    tr_mean = (tr_sum / n).float()
    tl_mean = (tl_sum / n).float()
    tr_pp = torch.cat(tr_rows) if return_per_prompt else None
    tl_pp = torch.cat(tl_rows) if return_per_prompt else None
    if normalizer != "none":
        below = tr_mean < floor * tr_mean.max()
        tl_mean[below] = float("nan")
        if tl_pp is not None:
            tl_pp[:, below] = float("nan")

    common = {
        "method": "tsla",
        "model": model.cfg.model_name,
        **prompts.describe(),
        "labels": list(prompts.label_words),
        "normalizer": normalizer,
        "floor": float(floor) if normalizer != "none" else None,
        "apply_ln": bool(apply_ln),
        "top_k": top_k,
    }
    tr_scores = HeadScores(tr_mean, name="tr_score", metadata={**common, "score": "TR"},
                           per_prompt=tr_pp)
    tl_scores = HeadScores(tl_mean, name="tl_score", metadata={**common, "score": "TL"},
                           per_prompt=tl_pp)
    for s in (tr_scores, tl_scores):
        s.metadata["top_heads"] = [str(h) for h in s.top(top_k)]
    return tr_scores, tl_scores


def _normalise(tl: Tensor, tr: Tensor, normalizer: str) -> Tensor:
    if normalizer == "none":
        return tl
    tiny = torch.finfo(tr.dtype).tiny
    denom = tr.sqrt() if normalizer == "norm" else tr
    return tl / denom.clamp_min(tiny)


# --------------------------------------------------------------------------- DLA


def dla_scores(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    target: Target = "logit_diff",
    apply_ln: bool = True,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_per_prompt: bool = False,
) -> HeadScores:
    """Plain per-head direct logit attribution ``a^T d``, averaged over prompts.

    ``d`` is the target direction (see :func:`label_weights`): ``"gold"`` = ``u_{y*}``,
    ``"logit_diff"`` (default) = ``u_{y*} - mean_{y' != y*} u_{y'}`` (the gold-label logit
    difference), ``"centered"`` = ``u_{y*} - mean_{y'} u_{y'}``. With ``apply_ln=True``
    (default) ``a`` is first divided by the final norm's cached scale (centred first for
    LayerNorm), as TransformerLens's ``apply_ln_to_stack``/``logit_attrs`` do; the result
    is then the head's exact additive share of that logit (difference).

    ``dla_scores(target="logit_diff", apply_ln=x)`` equals the TL score of
    ``tsla_scores(normalizer="none", apply_ln=x)``.

    Returns:
        :class:`HeadScores` named ``"dla_<target>"`` (metadata: method ``"dla"``, target,
        apply_ln, model, prompts).
    """
    _check_prompts(prompts, need_pairs=target != "gold")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    label_dirs = label_unembeddings(model, prompts.label_token_ids)
    total = torch.zeros(L, H, dtype=torch.float64)
    rows = []
    for batch, terms in _iter_query_terms(model, prompts, full=False, apply_ln=apply_ln,
                                          batch_size=batch_size, device=device,
                                          progress=progress, desc="dla"):
        a = terms["head"]
        direction = _target_directions(label_dirs, batch.prompts.gold, target).to(a)
        values = torch.einsum("blhd,bd->blh", a, direction)
        total += values.sum(0).double().cpu()
        if return_per_prompt:
            rows.append(values.float().cpu())
    meta = {"method": "dla", "target": target, "apply_ln": bool(apply_ln),
            "model": model.cfg.model_name, **prompts.describe(),
            "labels": list(prompts.label_words)}
    return HeadScores((total / len(prompts)).float(), name=f"dla_{target}", metadata=meta,
                      per_prompt=torch.cat(rows) if return_per_prompt else None)


def direct_logit_attribution(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    unit: Unit = "component",
    target: Target = "logit_diff",
    apply_ln: bool = True,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_per_prompt: bool = False,
) -> pd.DataFrame:
    """Direct logit attribution of every component at the query position, as a tidy frame.

    Each component's residual-stream output ``c`` (see :func:`residual_decomposition`),
    normalised by the final norm's cached scale when ``apply_ln=True`` (default, like
    ``ActivationCache.apply_ln_to_stack``), is projected on the target direction
    ``d = W_Y w`` (:func:`label_weights`); the unembedding bias enters as one more row
    ``unembed_bias = b_U[labels] . w``. With ``apply_ln=True`` the rows of ``unit`` =
    ``"component"`` or ``"layer"`` sum exactly to the target computed from the logits
    (e.g. :func:`icl_heads.metrics.logit_diff`; before any logit soft-cap).

    Args:
        unit: ``"component"`` (embed, pos_embed, every head, every layer's attention bias
            and MLP, unembed_bias), ``"head"`` (heads only), ``"attn"`` (per layer: its heads
            + ``b_O``), ``"mlp"`` (per layer), or ``"layer"`` (``embed`` = token + position
            embedding, ``L{l}`` = attention + MLP of layer ``l``, ``unembed_bias``).
        target: ``"logit_diff"`` (default), ``"gold"`` or ``"centered"`` (see
            :func:`label_weights`).
        apply_ln: apply the final norm's scale (default ``True``).
        return_per_prompt: one row per (prompt, unit) with a ``prompt`` column instead of
            the mean over prompts.

    Returns:
        DataFrame with columns ``[prompt,] component, kind, layer, head, <target>``
        (``layer``/``head`` are ``<NA>`` where they do not apply); ``.attrs["metadata"]``
        records how it was made.
    """
    _check_prompts(prompts, need_pairs=target != "gold")
    if unit not in UNITS:
        raise ValueError(f"Unknown unit {unit!r}; choose one of {UNITS}.")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    label_dirs = label_unembeddings(model, prompts.label_token_ids)
    label_bias = _unembed_bias(model)[prompts.label_token_ids.to(label_dirs.device)]
    total, rows, labels = None, [], []
    for batch, terms in _iter_query_terms(model, prompts, full=True, apply_ln=apply_ln,
                                          batch_size=batch_size, device=device,
                                          progress=progress, desc="dla"):
        stack, labels = _stack_terms(model, terms)  # [b, component, d_model]
        gold = batch.prompts.gold.to(stack.device)
        w = label_weights(gold, prompts.n_labels, target).to(stack)
        direction = w @ label_dirs.to(stack).T
        values = torch.einsum("bcd,bd->bc", stack, direction)
        bias = (w @ label_bias.to(stack))[:, None]
        values = torch.cat([values, bias], dim=1).double().cpu()
        total = values.sum(0) if total is None else total + values.sum(0)
        if return_per_prompt:
            rows.append(values)
    labels = [*labels, "unembed_bias"]
    groups, info = _unit_groups(labels, unit)
    meta = {"method": "dla", "unit": unit, "target": target, "apply_ln": bool(apply_ln),
            "model": model.cfg.model_name, **prompts.describe(),
            "labels": list(prompts.label_words)}
    if return_per_prompt:
        values = _group_sum(torch.cat(rows), groups, len(info))  # [prompt, unit]
        n_units = len(info)
        frame = pd.concat([_info_frame(info)] * len(prompts), ignore_index=True)
        frame.insert(0, "prompt", np.repeat(np.arange(len(prompts)), n_units))
        frame[target] = values.flatten().numpy()
    else:
        mean = _group_sum((total / len(prompts))[None], groups, len(info))[0]
        frame = _info_frame(info)
        frame[target] = mean.numpy()
    frame.attrs["metadata"] = meta
    return frame


# --------------------------------------------------------------------------- internals


def _check_prompts(prompts: PromptSet, *, need_pairs: bool = False) -> None:
    check_prompt_set(prompts)
    if need_pairs and prompts.n_labels < 2:
        raise ValueError(f"TL scores and label-difference targets compare the gold label with "
                         f"the others; this prompt set has {prompts.n_labels} label(s). Use a "
                         "task with at least 2 labels.")
    gold = prompts.gold
    if int(gold.min()) < 0 or int(gold.max()) >= prompts.n_labels:
        raise ValueError(f"prompts.gold holds label indices outside 0..{prompts.n_labels - 1}.")


def _resolve_top_k(top_k: int | None, n_layers: int, n_heads: int) -> int:
    if top_k is None:
        return default_top_k(n_layers, n_heads)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer (or None for 3% of heads), got "
                         f"{top_k!r}.")
    if top_k > n_layers * n_heads:
        raise ValueError(f"top_k={top_k} exceeds the model's {n_layers * n_heads} heads.")
    return top_k


def _check_model(model: HookedTransformer) -> None:
    cfg = model.cfg
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(
            f"{cfg.original_architecture} is a post-norm architecture (each sublayer's output "
            "passes through ln1/ln2 before the residual add), so per-head attribution is not "
            "additive there; icl_heads.attribution does not support it.")
    if cfg.use_normalization_before_and_after:
        post = model.blocks[0].ln1_post
        if type(post).__name__ != "RMSNorm":
            raise ValueError(f"Post-attention norm {type(post).__name__} is not supported "
                             "(only RMSNorm, as in Gemma 2/3).")


def _final_norm(model: HookedTransformer):
    if model.cfg.normalization_type is None:
        return None
    return getattr(model, "ln_final", None)


def _final_norm_weight(model: HookedTransformer) -> Tensor | None:
    """The final norm's weight if it was not folded into ``W_U`` (LN / RMS, not *Pre)."""
    norm = _final_norm(model)
    w = getattr(norm, "w", None) if norm is not None else None
    return w.detach() if isinstance(w, Tensor) else None


def _unembed_bias(model: HookedTransformer) -> Float[Tensor, " d_vocab"]:
    """``b_U``, plus ``b_ln @ W_U`` when the final LayerNorm's bias was not folded."""
    with torch.no_grad():
        bias = model.b_U.detach().clone()
        norm = _final_norm(model)
        b = getattr(norm, "b", None) if norm is not None else None
        if isinstance(b, Tensor):
            bias = bias + b.detach() @ model.W_U.detach()
    return bias


def _iter_query_terms(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    full: bool,
    apply_ln: bool,
    batch_size: int,
    device: str | torch.device | None,
    progress: bool,
    desc: str,
) -> Iterator[tuple[Batch, dict[str, Tensor]]]:
    """One forward pass per batch; yields the query position's additive residual terms.

    Terms: ``head`` ``[b, L, H, d]`` always; with ``full`` also ``embed`` ``[b, d]``,
    ``pos_embed`` ``[b, d]`` (learned positions only), ``attn_bias`` ``[b, L, d]`` and
    ``mlp`` ``[b, L, d]``. With ``apply_ln`` every term is centred (LayerNorm) and divided
    by the final norm's cached scale.
    """
    _check_model(model)
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
    final_norm = _final_norm(model) if apply_ln else None
    if final_norm is not None:
        names.append("ln_final.hook_scale")
    centre = cfg.normalization_type in ("LN", "LNPre")
    with torch.no_grad():
        W_O = model.W_O.detach()  # [L, H, d_head, d_model]
        b_O = model.b_O.detach()  # [L, d_model]
        post_w = (torch.stack([b.ln1_post.w.detach() for b in model.blocks])
                  if post_norm else None)  # [L, d_model]

    # The final norm's scale is only computed when the logits are (iter_batches stops at
    # the last block otherwise), so ask for logits exactly when that scale is needed.
    for batch in iter_batches(model, prompts, names, pos="query", batch_size=batch_size,
                              device=device, return_logits=final_norm is not None,
                              progress=progress, desc=desc):
        acts = batch.activations
        z = torch.stack([acts[n] for n in z_names], dim=1)  # [b, L, H, d_head]
        terms = {"head": torch.einsum("blhk,lhkd->blhd", z, W_O.to(z))}
        if full:
            terms["attn_bias"] = b_O.to(z)[None].expand(z.shape[0], -1, -1)
        if post_norm:
            scale = torch.stack([acts[f"blocks.{i}.ln1_post.hook_scale"] for i in range(L)],
                                dim=1)  # [b, L, 1]
            factor = post_w.to(z)[None] / scale  # [b, L, d_model]
            terms["head"] = terms["head"] * factor[:, :, None]
            if full:
                terms["attn_bias"] = terms["attn_bias"] * factor
        if full:
            terms["embed"] = acts["hook_embed"]
            if has_pos:
                terms["pos_embed"] = acts["hook_pos_embed"]
            if has_mlp:
                terms["mlp"] = torch.stack([acts[f"blocks.{i}.hook_mlp_out"] for i in range(L)],
                                           dim=1)
        if final_norm is not None:
            scale = acts["ln_final.hook_scale"].reshape(-1)  # [b]
            terms = {k: _apply_scale(v, scale, centre) for k, v in terms.items()}
        yield batch, terms


def _apply_scale(x: Tensor, scale: Float[Tensor, " batch"], centre: bool) -> Tensor:
    """``ActivationCache.apply_ln_to_stack`` for one term: centre (LayerNorm), divide."""
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x / scale.reshape(-1, *([1] * (x.ndim - 1))).to(x)


def _stack_terms(model: HookedTransformer, terms: dict[str, Tensor]) -> tuple[Tensor, list[str]]:
    """Stack the terms as ``[b, component, d_model]`` in the canonical component order."""
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


def _target_directions(label_dirs: Tensor, gold: Tensor, target: str) -> Tensor:
    w = label_weights(gold.to(label_dirs.device), label_dirs.shape[1], target).to(label_dirs)
    return w @ label_dirs.T  # [batch, d_model]


def _parse_label(label: str) -> tuple[str, int | None, int | None]:
    """``kind, layer, head`` of a component label."""
    if label in ("embed", "pos_embed", "unembed_bias"):
        return label, None, None
    layer_part, _, rest = label.partition(".")
    if rest:  # "L3.attn_bias", "L3.mlp"
        return rest, int(layer_part[1:]), None
    layer, head = label[1:].split("H")
    return "head", int(layer), int(head)


def _unit_groups(labels: list[str], unit: str) -> tuple[list[int], list[tuple]]:
    """Map every component to a row of ``unit`` (-1 = dropped); row info ``(name, kind,
    layer, head)``."""
    info: list[tuple] = []
    index: dict[str, int] = {}
    groups = []
    for label in labels:
        kind, layer, head = _parse_label(label)
        if unit == "component":
            key, row = label, (label, kind, layer, head)
        elif unit == "head":
            key, row = (label, (label, kind, layer, head)) if kind == "head" else (None, None)
        elif unit == "mlp":
            key, row = (label, (label, kind, layer, None)) if kind == "mlp" else (None, None)
        elif unit == "attn":
            key, row = ((f"L{layer}.attn", (f"L{layer}.attn", "attn", layer, None))
                        if kind in ("head", "attn_bias") else (None, None))
        else:  # layer
            if kind in ("embed", "pos_embed"):
                key, row = "embed", ("embed", "embed", None, None)
            elif kind == "unembed_bias":
                key, row = label, (label, kind, None, None)
            else:
                key, row = f"L{layer}", (f"L{layer}", "layer", layer, None)
        if key is None:
            groups.append(-1)
            continue
        if key not in index:
            index[key] = len(info)
            info.append(row)
        groups.append(index[key])
    return groups, info


def _group_sum(values: Tensor, groups: list[int], n_units: int) -> Tensor:
    """Sum the columns of ``values [rows, component]`` into ``[rows, n_units]``."""
    g = torch.tensor(groups)
    keep = g >= 0
    out = torch.zeros(values.shape[0], n_units, dtype=values.dtype)
    return out.index_add_(1, g[keep], values[:, keep])


def _info_frame(info: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(info, columns=["component", "kind", "layer", "head"])
    frame["layer"] = frame["layer"].astype("Int64")
    frame["head"] = frame["head"].astype("Int64")
    return frame
