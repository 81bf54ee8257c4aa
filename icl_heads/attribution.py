"""Direct logit attribution (DLA), the task subspace, and TSLA TR/TL scores (Yang et al.
2025, arXiv 2509.24164; definitions in ``docs/methods.md``), built on the residual
decomposition of :mod:`icl_heads.decomposition`.

Every score streams: one forward pass per batch, capturing only ``hook_z`` (plus, for
DLA, the embedding, MLP outputs and the final norm's scale) at the query position, each
batch reduced to per-prompt numbers before the next one.

Label directions ``u_y = W_U[:, token(y)]`` (times the final norm's weight if a model was
loaded without ``fold_ln``), ``W_Y = [u_1 ... u_C]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .backends import HookedTransformer
from .batching import BatchSize
from .decomposition import (
    component_labels,
    final_norm_weight,
    reduce_query_terms,
    stack_terms,
    unembed_bias,
)
from .heads import HeadScores, check_top_k
from .hooks import check_interventions
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo, Settings, describe_interventions, model_name

Normalize = Literal["none", "norm", "tr"]
Target = Literal["gold", "logit_diff", "centered"]
Unit = Literal["component", "head", "attn", "mlp", "layer"]

NORMALIZATIONS: tuple[str, ...] = ("none", "norm", "tr")
TARGETS: tuple[str, ...] = ("gold", "logit_diff", "centered")
UNITS: tuple[str, ...] = ("component", "head", "attn", "mlp", "layer")


@dataclass(frozen=True)
class TSLASettings(Settings):
    """How :func:`tsla_scores` was run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    normalize: str
    floor: float | None
    apply_ln: bool
    top_k: int
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class DLASettings(Settings):
    """How :func:`dla_scores` / :func:`direct_logit_attribution` were run."""

    model: str | None
    prompts: PromptInfo
    labels: tuple[str, ...]
    target: str
    apply_ln: bool
    unit: str = "head"
    interventions: tuple[str, ...] = ()


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
        raise ValueError(
            f"label_token_ids must be a non-empty 1-D list of token ids, got shape "
            f"{tuple(ids.shape)}."
        )
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(
            f"label_token_ids {ids.tolist()} are out of range for a vocabulary of {vocab} tokens."
        )
    with torch.no_grad():
        W_U = model.W_U.detach()
        directions = W_U[:, ids.to(W_U.device)]
        weight = final_norm_weight(model)
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
        raise ValueError(
            f"directions must be a [d_model, n] matrix with n >= 1, got shape "
            f"{tuple(directions.shape)}."
        )
    bad = ~torch.isfinite(directions)
    if bool(bad.any()):
        columns = bad.any(0).nonzero().flatten().tolist()
        raise ValueError(
            f"directions hold {int(bad.sum())} NaN or inf value(s) in column(s) {columns} "
            "(one column per label direction); give finite directions."
        )
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
    - ``"centered"``: ``u_{y*} - mean_{y'} u_{y'}`` (mean over all labels; the plain
      DLA of docs/methods.md; ``(C - 1) / C`` times ``"logit_diff"``).
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    if target != "gold" and n_labels < 2:
        raise ValueError(
            f"target={target!r} compares the gold label with the others and needs "
            f"at least 2 labels, got {n_labels}; use target='gold'."
        )
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


# --------------------------------------------------------------------------- TSLA


def tsla_scores(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    top_k: int | None = None,
    normalize: Normalize = "none",
    floor: float = 0.01,
    apply_ln: bool = False,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> tuple[HeadScores, HeadScores]:
    """TSLA (Task Subspace Logit Attribution) TR and TL scores of every head.

    Per head ``(l, h)`` and prompt with gold label ``y*``, with ``a`` the head's output at
    the query position and ``P`` the projector onto ``span(W_Y)``:

    - **TR** ``= ||P a||^2`` (writes into the label space, whatever the label);
    - **TL** ``= mean_{y' != y*} a^T (u_{y*} - u_{y'})`` (pushes the gold label over the
      others), divided per prompt by ``||P a||`` (``normalize="norm"``) or ``||P a||^2``
      (``"tr"``), or not at all (``"none"``, default).

    Both are averaged over the prompts (mean of per-prompt values, kept in
    ``.per_prompt``). With a normalisation, heads whose mean TR is below
    ``floor * max(mean TR)`` get TL = NaN and are never ranked (dividing by a near-zero
    projection ranks noise first; see docs/methods.md).

    Args:
        model: a weight-processed model (as :func:`icl_heads.load_model` returns).
        prompts: the task's prompts (at least 2 labels).
        top_k: size of the TR/TL head sets: the default ``k`` of the returned maps'
            ``top()``; default 3% of all heads, at least 1.
        normalize: ``"none"`` | ``"norm"`` | ``"tr"`` (see above).
        floor: fraction of the largest mean TR below which normalised TL is NaN (only used
            with a normalisation); ``0 <= floor < 1``.
        apply_ln: ``False`` (default: the paper's formula on the head's raw output ``a``);
            ``True`` first applies the final norm's cached scale per prompt (as DLA does, whose
            default it is), so TL equals the head's DLA to the gold-label logit difference.
        batch_size, device, progress: as in :func:`icl_heads.iter_batches`.
        interventions: run with these interventions (ablate, patch, steer, ...).

    Example::

        tr, tl = ih.tsla_scores(model, prompts)
        tr.top(), tl.top()          # the TR and TL heads (3% of heads each)
        tr.plot()

    Returns:
        ``(tr, tl)``, two :class:`HeadScores` named ``"tr_score"`` and ``"tl_score"``, with
        :class:`TSLASettings`.
    """
    _check_prompts(model, prompts, need_pairs=True)
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalize {normalize!r}; choose one of {NORMALIZATIONS} "
            "('none' = raw TL, 'norm' = divide by ||P a||, 'tr' = divide by "
            "||P a||^2)."
        )
    if isinstance(floor, bool) or not (isinstance(floor, (int, float)) and 0.0 <= floor < 1.0):
        raise ValueError(
            f"floor must be a fraction of the largest mean TR score in [0, 1), got {floor!r}."
        )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k, L, H)
    if top_k > L * H:
        raise ValueError(f"top_k={top_k} exceeds the model's {L * H} heads.")
    interventions = check_interventions(interventions, model)
    label_dirs = label_unembeddings(model, prompts.label_token_ids)
    basis = subspace_basis(label_dirs)
    # Coordinates of the TL direction in the basis: TL = (Q^T a) . (Q^T d), which equals
    # a . d because d lies in the subspace, and bounds |TL| / ||P a|| by ||d||.
    dirs_in_basis = basis.T @ label_dirs  # [rank, label]

    def reduce(batch, terms):
        a = terms["head"]
        coords = a @ basis.to(a.device, a.dtype)  # [batch, L, H, rank]
        tr = coords.pow(2).sum(-1)
        tl = _normalise(tl_score(coords, dirs_in_basis, batch.prompts.gold), tr, normalize)
        return {"tr": tr, "tl": tl}

    got = reduce_query_terms(
        model,
        prompts,
        reduce,
        full=False,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc="tsla",
    )
    tr_pp, tl_pp = got["tr"].float(), got["tl"].float()
    tr_mean, tl_mean = got["tr"].mean(0).float(), got["tl"].mean(0).float()
    if normalize != "none":
        below = tr_mean < floor * tr_mean.max()
        tl_mean[below] = float("nan")
        tl_pp[:, below] = float("nan")
    settings = TSLASettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        normalize=normalize,
        floor=float(floor) if normalize != "none" else None,
        apply_ln=bool(apply_ln),
        top_k=top_k,
        interventions=describe_interventions(interventions),
    )
    return (
        HeadScores(tr_mean, name="tr_score", settings=settings, per_prompt=tr_pp, top_k=top_k),
        HeadScores(tl_mean, name="tl_score", settings=settings, per_prompt=tl_pp, top_k=top_k),
    )


def _normalise(tl: Tensor, tr: Tensor, normalize: str) -> Tensor:
    if normalize == "none":
        return tl
    tiny = torch.finfo(tr.dtype).tiny
    denom = tr.sqrt() if normalize == "norm" else tr
    return tl / denom.clamp_min(tiny)


# --------------------------------------------------------------------------- DLA


def dla_scores(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    target: Target = "logit_diff",
    top_k: int | None = None,
    apply_ln: bool = True,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> HeadScores:
    """Plain per-head direct logit attribution ``a^T d``, averaged over prompts.

    ``d`` is the target direction (see :func:`label_weights`): ``"gold"`` = ``u_{y*}``,
    ``"logit_diff"`` (default) = ``u_{y*} - mean_{y' != y*} u_{y'}`` (the gold-label logit
    difference), ``"centered"`` = ``u_{y*} - mean_{y'} u_{y'}``. With ``apply_ln=True``
    (default, TransformerLens's ``logit_attrs`` convention) ``a`` is first divided by the
    final norm's cached scale (centred first for LayerNorm), so the result is the head's
    exact additive share of that logit (difference).

    ``dla_scores(target="logit_diff", apply_ln=x)`` equals the TL score of
    ``tsla_scores(normalize="none", apply_ln=x)``.

    Returns:
        :class:`HeadScores` named ``"dla_<target>"`` (per-prompt values in ``per_prompt``)
        with :class:`DLASettings`.
    """
    _check_prompts(model, prompts, need_pairs=target != "gold")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top_k = check_top_k(top_k, L, H) if top_k is not None else None
    interventions = check_interventions(interventions, model)
    label_dirs = label_unembeddings(model, prompts.label_token_ids)

    def reduce(batch, terms):
        a = terms["head"]
        direction = _target_directions(label_dirs, batch.prompts.gold, target).to(a)
        return {"dla": torch.einsum("blhd,bd->blh", a, direction)}

    per_prompt = reduce_query_terms(
        model,
        prompts,
        reduce,
        full=False,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc="dla",
    )["dla"]
    settings = DLASettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        target=target,
        apply_ln=bool(apply_ln),
        unit="head",
        interventions=describe_interventions(interventions),
    )
    return HeadScores(
        per_prompt.mean(0).float(),
        name=f"dla_{target}",
        settings=settings,
        per_prompt=per_prompt.float(),
        top_k=top_k,
    )


def direct_logit_attribution(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    unit: Unit = "component",
    target: Target = "logit_diff",
    apply_ln: bool = True,
    per_prompt: bool = False,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Direct logit attribution of every component at the query position, as a tidy frame.

    Each component's residual-stream output ``c`` (see
    :func:`icl_heads.residual_decomposition`), normalised by the final norm's cached scale
    when ``apply_ln=True`` (default, like ``ActivationCache.apply_ln_to_stack``), is
    projected on the target direction ``d = W_Y w`` (:func:`label_weights`); the
    unembedding bias enters as one more row ``unembed_bias = b_U[labels] . w``. With
    ``apply_ln=True`` the rows of ``unit`` = ``"component"`` or ``"layer"`` sum exactly to
    the target computed from the logits (e.g. :func:`icl_heads.metrics.logit_diff`; before
    any logit soft-cap).

    Args:
        unit: ``"component"`` (embed, pos_embed, every head, every layer's attention bias
            and MLP, unembed_bias), ``"head"`` (heads only), ``"attn"`` (per layer: its heads
            + ``b_O``), ``"mlp"`` (per layer), or ``"layer"`` (``embed`` = token + position
            embedding, ``L{l}`` = attention + MLP of layer ``l``, ``unembed_bias``).
        target: ``"logit_diff"`` (default), ``"gold"`` or ``"centered"`` (see
            :func:`label_weights`).
        apply_ln: apply the final norm's scale (default ``True``).
        per_prompt: one row per (prompt, unit) with a ``prompt`` column instead of the mean
            over prompts.

    Example::

        dla = ih.direct_logit_attribution(model, prompts, unit="layer")
        dla.sort_values("logit_diff").tail()

    Returns:
        DataFrame with columns ``[prompt,] component, kind, layer, head, <target>``
        (``layer``/``head`` are ``<NA>`` where they do not apply); ``.attrs["settings"]``
        says how it was made.
    """
    _check_prompts(model, prompts, need_pairs=target != "gold")
    if unit not in UNITS:
        raise ValueError(f"Unknown unit {unit!r}; choose one of {UNITS}.")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    interventions = check_interventions(interventions, model)
    label_dirs = label_unembeddings(model, prompts.label_token_ids)
    label_bias = unembed_bias(model)[prompts.label_token_ids.to(label_dirs.device)]

    def reduce(batch, terms):
        stack, _ = stack_terms(model, terms)  # [b, component, d_model]
        w = label_weights(batch.prompts.gold.to(stack.device), prompts.n_labels, target).to(stack)
        values = torch.einsum("bcd,bd->bc", stack, w @ label_dirs.to(stack).T)
        bias = (w @ label_bias.to(stack))[:, None]
        return {"dla": torch.cat([values, bias], dim=1)}

    values = reduce_query_terms(
        model,
        prompts,
        reduce,
        full=True,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc="dla",
    )["dla"]  # [prompt, component]
    groups, info = _unit_groups([*component_labels(model), "unembed_bias"], unit)
    if per_prompt:
        grouped = _group_sum(values, groups, len(info))  # [prompt, unit]
        frame = pd.concat([_info_frame(info)] * len(prompts), ignore_index=True)
        frame.insert(0, "prompt", np.repeat(np.arange(len(prompts)), len(info)))
        frame[target] = grouped.flatten().numpy()
    else:
        frame = _info_frame(info)
        frame[target] = _group_sum(values.mean(0, keepdim=True), groups, len(info))[0].numpy()
    frame.attrs["settings"] = DLASettings(
        model=model_name(model),
        prompts=prompts.info(),
        labels=tuple(prompts.label_words),
        target=target,
        apply_ln=bool(apply_ln),
        unit=unit,
        interventions=describe_interventions(interventions),
    )
    return frame


# --------------------------------------------------------------------------- internals


def _check_prompts(
    model: HookedTransformer, prompts: PromptSet, *, need_pairs: bool = False
) -> None:
    check_prompt_set(prompts, model=model)
    if need_pairs and prompts.n_labels < 2:
        raise ValueError(
            f"TL scores and label-difference targets compare the gold label with "
            f"the others; this prompt set has {prompts.n_labels} label(s). Use a "
            "task with at least 2 labels."
        )
    gold = prompts.gold
    if int(gold.min()) < 0 or int(gold.max()) >= prompts.n_labels:
        raise ValueError(f"prompts.gold holds label indices outside 0..{prompts.n_labels - 1}.")


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
            key, row = (
                (f"L{layer}.attn", (f"L{layer}.attn", "attn", layer, None))
                if kind in ("head", "attn_bias")
                else (None, None)
            )
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
