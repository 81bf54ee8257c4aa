"""Hidden-state geometry at the query position (Yang et al. 2025, arXiv 2505.18752, and the
steering geometry of arXiv 2509.24164; definitions in ``docs/methods.md``).

States are the residual stream at the query (last) position after each block, plus the
embedding: ``states[:, i]`` is the stream after ``i`` blocks (``i = 0``: the embeddings,
``i = n_layers``: the final residual stream, before the final norm). The functions that
measure them take plain tensors, so states from anywhere can be measured the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .activations import iter_batches
from .attribution import subspace_basis
from .prompts import PromptSet, check_prompt_set


def state_hook_names(model: HookedTransformer) -> list[str]:
    """Hook names of the query states: ``blocks.0.hook_resid_pre`` (the embeddings), then
    ``blocks.{l}.hook_resid_post`` for every layer ``l``."""
    return ["blocks.0.hook_resid_pre",
            *(f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers))]


def check_state_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """State indices ``0..n_layers`` (``None``: all of them); clear errors otherwise."""
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be an int, a list of ints or None, got {layers!r}.")
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layers must be whole numbers, got {layer!r} in {layers!r}.")
        if not 0 <= layer <= n_layers:
            raise ValueError(f"State layer {layer} is out of range: states run from 0 (the "
                             f"embeddings) to {n_layers} (after the last block).")
        out.append(layer)
    if not out:
        raise ValueError("layers is an empty list; give at least one layer (or None for all).")
    return out


def query_states(
    model: HookedTransformer,
    prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    *,
    interventions: Sequence = (),
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Float[Tensor, "prompt layer d_model"]:
    """Residual-stream states at the query position, after each block plus the embedding.

    Streams through the one batching routine, capturing only the selected hook points at
    the query position: memory is the states kept, never a full cache.

    Args:
        layers: state indices to keep (``0`` = embeddings, ``l + 1`` = after block ``l``);
            default all ``n_layers + 1``.
        interventions: run with these interventions (ablations, task vectors, steering).

    Example::

        states = ih.query_states(model, prompts)      # [prompt, n_layers + 1, d_model]

    Returns:
        ``[prompt, len(layers), d_model]`` float tensor on the CPU.
    """
    check_prompt_set(prompts, model=model)
    chosen = check_state_layers(layers, model.cfg.n_layers)
    names = [state_hook_names(model)[i] for i in chosen]
    rows = []
    for batch in iter_batches(model, prompts, names, positions="query", batch_size=batch_size,
                              device=device, interventions=interventions, return_logits=False,
                              progress=progress, desc="query states"):
        rows.append(torch.stack([batch.activations[n] for n in names], dim=1).float().cpu())
    return torch.cat(rows)


def normalized_states(
    model: HookedTransformer, states: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """States after the final norm (its scale; with ``fold_ln`` the weight is inside
    ``W_U``), so that ``normalized @ W_U`` are the logit-lens logits (before ``b_U``)."""
    if model.cfg.normalization_type is None:
        return states
    with torch.no_grad():
        x = states.to(model.W_U.device, model.W_U.dtype)
        return model.ln_final(x.unsqueeze(-2)).squeeze(-2).to(states.device)


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
        torch.finfo(states.dtype).tiny)  # [batch, *rest, label]
    n_labels = dirs.shape[1]
    onehot = torch.nn.functional.one_hot(gold.long().to(states.device), n_labels).to(cos.dtype)
    onehot = onehot.reshape(onehot.shape[0], *([1] * (cos.ndim - 2)), n_labels)
    gold_cos = (cos * onehot).sum(-1)
    others = (cos * (1 - onehot)).sum(-1) / (n_labels - 1)
    return gold_cos - others
