"""Alignment of each layer's class structure with the label unembeddings (mean-difference
cosine, logit lens, top singular directions, effective dimension) and the TR/TL paper's
steering geometry (task-subspace alignment, label rotation), with stratified bootstrap
intervals.

Example::

    ih.alignment(ih.query_states(model, prompts), prompts.gold, model, prompts.label_token_ids)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..attribution import label_unembeddings, subspace_basis
from ..backends import HookedTransformer, is_model
from ..checks import check_int
from ..settings import Settings
from ..stats import LEVEL, N_BOOT
from .bootstrap import bootstrap_weights, class_quadratics, split_replicates, weighted_means
from .curves import GeometryCurves
from .inputs import as_labels, as_states, check_layer_labels, class_codes
from .states import normalized_states

log = logging.getLogger(__name__)

#: Resamples used for ``top_singular_cosine``'s interval (one eigendecomposition each).
SPECTRAL_BOOT = 200
ALIGNMENT_METRICS = (
    "mean_diff_cosine",
    "logit_lens_accuracy",
    "top_singular_cosine",
    "effective_dim",
    "task_subspace_alignment",
    "label_rotation",
)


@dataclass(frozen=True)
class AlignmentSettings(Settings):
    """How :func:`alignment` was computed."""

    model: str | None
    label_token_ids: tuple[int, ...]
    seed: int
    n_boot: int
    spectral_boot: int
    level: float = LEVEL
    states: str = "after the final norm's scale (normalized_states)"
    effective_dim: str = "participation ratio (sum l)^2 / sum l^2 of the covariance"


def subspace_alignment(
    states: Float[Tensor, "*batch d_model"], label_dirs: Float[Tensor, "d_model label"]
) -> Float[Tensor, "*batch"]:
    """Alignment with the task subspace ``||P h|| / ||h||`` (``P`` projects onto
    ``span(label_dirs)``): 1 when a state lies in the label space, 0 when orthogonal."""
    basis = subspace_basis(label_dirs.to(states.device, torch.float32)).to(states.dtype)
    proj = (states @ basis).norm(dim=-1)
    return proj / states.norm(dim=-1).clamp_min(torch.finfo(states.dtype).tiny)


def label_rotation(
    states: Float[Tensor, "batch ... d_model"],
    label_dirs: Float[Tensor, "d_model label"],
    gold: Int[Tensor, " batch"],
) -> Float[Tensor, "batch ..."]:
    """Rotation toward the gold label inside the task subspace:
    ``cos(P h, u_{y*}) - mean_{y' != y*} cos(P h, u_{y'})``."""
    dirs = label_dirs.to(states.device, states.dtype)
    basis = subspace_basis(dirs.float()).to(states.dtype)
    projected = (states @ basis) @ basis.T  # P h
    unit = dirs / dirs.norm(dim=0, keepdim=True).clamp_min(torch.finfo(dirs.dtype).tiny)
    cos = (projected @ unit) / projected.norm(dim=-1, keepdim=True).clamp_min(
        torch.finfo(states.dtype).tiny
    )  # [batch, *rest, label]
    n_labels = dirs.shape[1]
    onehot = torch.nn.functional.one_hot(gold.long().to(states.device), n_labels).to(cos.dtype)
    onehot = onehot.reshape(onehot.shape[0], *([1] * (cos.ndim - 2)), n_labels)
    gold_cos = (cos * onehot).sum(-1)
    others = (cos * (1 - onehot)).sum(-1) / (n_labels - 1)
    return gold_cos - others


def _label_ids(model: HookedTransformer, label_token_ids) -> Tensor:
    if isinstance(label_token_ids, Tensor):
        ids = label_token_ids.detach().cpu().long().flatten()
    else:
        try:
            ids = torch.as_tensor(list(label_token_ids), dtype=torch.long)
        except (TypeError, ValueError):
            raise TypeError(
                f"label_token_ids must be a list of token ids (e.g. "
                f"prompts.label_token_ids), got {label_token_ids!r}."
            ) from None
    if ids.numel() < 2:
        raise ValueError(f"alignment needs at least two label tokens, got {ids.tolist()}.")
    listed = ids.tolist()
    repeated = sorted({i for i in listed if listed.count(i) > 1})
    if repeated:
        raise ValueError(
            f"alignment: label_token_ids {listed} repeat token(s) {repeated}; two labels with "
            "one token have the same unembedding, so their difference is zero. Pass one "
            "distinct token per label (prompts.label_token_ids)."
        )
    return ids


def alignment_curves(
    states,
    labels,
    model: HookedTransformer,
    label_token_ids,
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    layers: Sequence[int] | None = None,
) -> GeometryCurves:
    """:func:`alignment` as :class:`GeometryCurves` (values, replicates, per-prompt)."""
    if not is_model(model):
        raise TypeError(
            f"alignment needs the model (a HookedTransformer or TransformerBridge) for its "
            f"unembedding and final norm, got {type(model).__name__}."
        )
    X = as_states(states)
    n, L, d = X.shape
    if d != model.cfg.d_model:
        raise ValueError(
            f"states have d_model={d} but the model has d_model="
            f"{model.cfg.d_model}; measure states of this model."
        )
    arr = as_labels(labels, n)
    seed = check_int(seed, "seed", -(2**62))
    n_boot = check_int(n_boot, "n_boot", 1)
    ids = _label_ids(model, label_token_ids)
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= len(ids):
        raise ValueError(
            f"alignment labels must be label indices 0..{len(ids) - 1} into "
            f"label_token_ids (e.g. prompts.gold), got values "
            f"{np.unique(arr)[:8].tolist()}."
        )
    gold = arr.astype(np.int64)
    codes, n_classes = class_codes(gold, None, "alignment")
    present = np.unique(gold)  # label index of each class code
    layer_labels = check_layer_labels(layers, L)
    weights = bootstrap_weights(codes, n_boot, seed)
    R = weights.shape[0]

    U = label_unembeddings(model, ids).detach().double().cpu()  # [d, labels]
    b_U = getattr(model, "b_U", None)
    bias = (
        b_U.detach().double().cpu()[ids]
        if b_U is not None
        else torch.zeros(len(ids), dtype=torch.float64)
    )
    Z = normalized_states(model, X.float()).double()  # [n, L, d]

    # per-prompt metrics (the steering geometry of the TR/TL paper, by the same functions)
    gold_t = torch.from_numpy(gold)
    lens = ((Z @ U + bias).argmax(-1) == gold_t[:, None]).double().numpy()
    sub = subspace_alignment(Z, U).numpy()
    rot = label_rotation(Z, U, gold_t).numpy()

    pairs = list(combinations(range(n_classes), 2))
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    diff = U[:, present[a.numpy()]] - U[:, present[b.numpy()]]  # [d, pairs]
    unit = diff / diff.norm(dim=0, keepdim=True).clamp_min(1e-300)
    Y = torch.nn.functional.one_hot(torch.from_numpy(codes), n_classes).double()
    M = weights[:, None, :] * Y.T[None]  # [R, C, n]
    N = M.sum(-1)
    pidx = torch.arange(len(pairs))
    rank = n_classes - 1
    n_spec = 1 + min(SPECTRAL_BOOT, R - 1)

    cosine = np.empty((R, L))
    spectral = np.full((R, L), np.nan)
    eff_dim = np.empty((R, L))
    for j in range(L):
        Zc = Z[:, j] - Z[:, j].mean(0)
        G = Zc @ Zc.T
        P = class_quadratics(G, M)
        proj = Zc @ unit  # [n, pairs]
        S = M @ proj  # [R, C, pairs]
        num = S[:, a, pidx] / N[:, a] - S[:, b, pidx] / N[:, b]
        sq = (
            P[:, a, a] / N[:, a] ** 2
            + P[:, b, b] / N[:, b] ** 2
            - 2 * P[:, a, b] / (N[:, a] * N[:, b])
        )
        scale = G.diagonal().sum().clamp_min(1e-300) / n
        cos = torch.where(
            sq > 1e-12 * scale,
            num / sq.clamp_min(1e-300).sqrt(),
            torch.full_like(num, float("nan")),
        )
        cosine[:, j] = torch.nanmean(cos, dim=-1).numpy()
        eff_dim[:, j] = _participation_ratio(G, weights).numpy()
        spectral[:n_spec, j] = _top_singular_cosine(G, proj, weights[:n_spec], rank).numpy()

    curves = GeometryCurves(layer_labels, n, chance=1.0 / n_classes)
    rows = {
        "mean_diff_cosine": cosine,
        "logit_lens_accuracy": weighted_means(lens, weights),
        "top_singular_cosine": spectral[:n_spec],
        "effective_dim": eff_dim,
        "task_subspace_alignment": weighted_means(sub, weights),
        "label_rotation": weighted_means(rot, weights),
    }
    for name in ALIGNMENT_METRICS:
        centre = name in ("mean_diff_cosine", "top_singular_cosine", "effective_dim")
        curves.values[name], curves.replicates[name] = split_replicates(rows[name], centre)
    curves.per_prompt.update(
        logit_lens_accuracy=lens, task_subspace_alignment=sub, label_rotation=rot
    )
    return curves


def _centred_gram_terms(G: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For weights ``w`` [R, n]: ``a`` [R, n] with the weighted centred Gram
    ``Gc_ij = G_ij - a_i - a_j``, plus ``Gw`` [R, n] and ``W`` [R]."""
    W = w.sum(-1)
    Gw = w @ G
    s = (Gw * w).sum(-1) / W**2
    a = Gw / W[:, None] - s[:, None] / 2
    return a, Gw, W


def _participation_ratio(G: Tensor, w: Tensor) -> Tensor:
    """``tr(C)^2 / tr(C^2)`` of the weighted covariance, from the (uncentred) Gram ``G``.

    With ``Gc_ij = G_ij - a_i - a_j`` the weighted centred Gram:
    ``tr C = sum_i w_i Gc_ii / W`` and
    ``tr C^2 = sum_ij w_i w_j Gc_ij^2 / W^2 = [w^T (G o G) w - 4 sum_i w_i a_i (G w)_i
    + 2 W sum_i w_i a_i^2 + 2 (sum_i w_i a_i)^2] / W^2``, so no ``[R, n, n]`` tensor is formed.
    """
    a, Gw, W = _centred_gram_terms(G, w)
    trace = (w * (G.diagonal()[None] - 2 * a)).sum(-1) / W
    wa = (w * a).sum(-1)
    squares = (
        ((w @ (G * G)) * w).sum(-1)
        - 4 * (w * a * Gw).sum(-1)
        + 2 * W * (w * a * a).sum(-1)
        + 2 * wa**2
    ) / W**2
    tiny = 1e-12 * trace.abs().clamp_min(1e-300) ** 2
    return torch.where(
        squares > tiny, trace**2 / squares.clamp_min(1e-300), torch.full_like(trace, float("nan"))
    )


def _top_singular_cosine(G: Tensor, proj: Tensor, w: Tensor, rank: int) -> Tensor:
    """``mean_pairs ||V^T e_ab||`` with ``V`` the top ``rank`` principal directions of the
    weighted states, from the centred Gram (``proj = Z_c e`` [n, pairs]).

    Each resample's matrix is decomposed on its drawn prompts only (a prompt of weight 0 is
    a zero row and column: the same top eigenpairs, about a quarter of the work)."""
    a, _, W = _centred_gram_terms(G, w)
    root = w.sqrt()
    mean = (w @ proj) / W[:, None]  # [R, pairs]
    centred = root[:, :, None] * (proj[None] - mean[:, None, :])  # [R, n, pairs]
    R = w.shape[0]
    lam = torch.full((R, rank), float("nan"), dtype=G.dtype)
    coords = torch.full((R, rank, proj.shape[1]), float("nan"), dtype=G.dtype)
    for r in range(R):
        idx = torch.nonzero(w[r] > 0).flatten()
        Gc = G[idx][:, idx] - a[r, idx, None] - a[r, None, idx]
        K = root[r, idx, None] * Gc * root[r, None, idx]
        evals, evecs = _eigh(K[None])
        lam[r] = evals[0, -rank:]  # ascending
        coords[r] = evecs[0, :, -rank:].T @ centred[r, idx]
    keep = lam > 1e-9 * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    coords = torch.where(
        keep[..., None], coords / lam.clamp_min(1e-300).sqrt()[..., None], torch.zeros_like(coords)
    )
    frac = coords.pow(2).sum(1).sqrt().clamp_max(1.0)  # [R, pairs]
    return torch.where(keep.any(-1), frac.mean(-1), torch.full_like(W, float("nan")))


def _eigh(K: Tensor) -> tuple[Tensor, Tensor]:
    """Batched symmetric eigendecomposition (float64); a matrix LAPACK fails on gets NaN."""
    try:
        return torch.linalg.eigh(K)
    except torch.linalg.LinAlgError:
        evals = torch.full(K.shape[:2], float("nan"), dtype=K.dtype)
        evecs = torch.full(K.shape, float("nan"), dtype=K.dtype)
        for r in range(K.shape[0]):
            try:
                evals[r], evecs[r] = torch.linalg.eigh(K[r])
            except torch.linalg.LinAlgError:
                log.warning("alignment: an eigendecomposition failed; its resample is NaN.")
        return evals, evecs


def alignment(
    states: Float[Tensor, "prompt layer d_model"] | Float[Tensor, "prompt d_model"],
    labels: Int[Tensor, " prompt"] | Sequence[int],
    model: HookedTransformer,
    label_token_ids: Int[Tensor, " label"] | Sequence[int],
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """How well the class structure of each layer's states points along the label
    unembeddings ``u_y = W_U[:, token(y)]``, on the states after the final norm's scale.

    Metrics (definitions in the module docstring): ``mean_diff_cosine`` (cosine of class-mean
    differences with label-unembedding differences, mean over label pairs),
    ``logit_lens_accuracy``, ``top_singular_cosine`` (top ``C - 1`` singular directions of
    the centred states vs the label differences), ``effective_dim`` (participation ratio),
    and the steering geometry ``task_subspace_alignment`` and ``label_rotation``.
    Intervals: stratified bootstrap over prompts (``top_singular_cosine``: the first
    :data:`SPECTRAL_BOOT` resamples, one eigendecomposition each).

    Args:
        states: ``[prompt, layer, d_model]`` or ``[prompt, d_model]`` residual states of
            ``model`` (before the final norm; normalised here).
        labels: gold label index per prompt into ``label_token_ids`` (``prompts.gold``).
        label_token_ids: the label tokens (``prompts.label_token_ids``), one distinct
            token per label (a repeated token is a ``ValueError``).
        layers: the state index of each layer of ``states`` (default ``0, 1, ...``).

    Example::

        states = ih.query_states(model, prompts)
        ih.alignment(states, prompts.gold, model, prompts.label_token_ids)

    Returns:
        Tidy DataFrame, one row per layer x metric; ``.attrs["settings"]``
        (:class:`AlignmentSettings`) and ``.attrs["chance"]``.
    """
    curves = alignment_curves(
        states, labels, model, label_token_ids, seed=seed, n_boot=n_boot, layers=layers
    )
    frame = curves.frame()
    frame.attrs["settings"] = AlignmentSettings(
        model=getattr(model.cfg, "model_name", None),
        label_token_ids=tuple(int(i) for i in _label_ids(model, label_token_ids)),
        seed=int(seed),
        n_boot=int(n_boot),
        spectral_boot=min(SPECTRAL_BOOT, int(n_boot)),
    )
    frame.attrs["chance"] = curves.chance
    return frame
