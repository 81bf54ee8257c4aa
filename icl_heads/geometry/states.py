"""Query states: the residual stream at the query position after each block (plus the
embedding), read in one batched pass, and task vectors (their mean over ICL prompts).

Example::

    states = query_states(model, prompts)          # [prompt, n_layers + 1, d_model]
    v = task_vector(model, prompts, layer=12)      # [d_model]
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..activations import iter_batches
from ..backends import HookedTransformer
from ..batching import BatchSize
from ..metrics import BEHAVIOUR, METRICS
from ..prompts import PromptSet, check_prompt_set
from .inputs import as_states

#: Behaviour metrics (``icl_heads.metrics``) kept per prompt by :func:`run_query`.


def state_hook_names(model: HookedTransformer) -> list[str]:
    """Hook names the query states are read from: ``blocks.0.hook_resid_pre`` (the
    embeddings), ``blocks.{i}.hook_resid_pre`` for states ``1 .. n_layers - 1`` and
    ``blocks.{n_layers - 1}.hook_resid_post`` for the last.

    State ``i`` is the stream after ``i`` blocks; reading it where the next block takes it
    in (rather than at ``blocks.{i-1}.hook_resid_post``, the same tensor) means an
    intervention that writes state ``i`` (:func:`~icl_heads.interventions.inject_task_vector` hooks
    ``blocks.{i-1}.hook_resid_post``) is seen in the captured state.
    """
    L = model.cfg.n_layers
    return [
        "blocks.0.hook_resid_pre",
        *(f"blocks.{i}.hook_resid_pre" for i in range(1, L)),
        f"blocks.{L - 1}.hook_resid_post",
    ]


def check_state_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """State indices ``0..n_layers`` (``None``: all of them); clear errors otherwise."""
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = [int(layers)]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be an int, a list of ints or None, got {layers!r}.")
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layers must be whole numbers, got {layer!r} in {layers!r}.")
        if not 0 <= layer <= n_layers:
            raise ValueError(
                f"State layer {layer} is out of range: states run from 0 (the "
                f"embeddings) to {n_layers} (after the last block)."
            )
        out.append(int(layer))
    if not out:
        raise ValueError("layers is an empty list; give at least one layer (or None for all).")
    return out


def query_states(
    model: HookedTransformer,
    prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    *,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
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
    states, _ = run_query(
        model,
        prompts,
        layers,
        interventions=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return states


def run_query(
    model: HookedTransformer,
    prompts: PromptSet,
    layers: int | Sequence[int] | None = None,
    *,
    behaviour: bool = False,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "query states",
) -> tuple[Float[Tensor, "prompt layer d_model"], dict[str, np.ndarray] | None]:
    """:func:`query_states`, and with ``behaviour=True`` also the per-prompt behaviour
    metrics of the same pass (``accuracy``, ``label_space_rate``, ``in_space_accuracy``,
    ``logit_diff``: ``[prompt]`` arrays; each batch's logits are reduced at once, so only
    the states are kept)."""
    check_prompt_set(prompts, model=model)
    chosen = check_state_layers(layers, model.cfg.n_layers)
    all_names = state_hook_names(model)
    names = [all_names[i] for i in chosen]
    rows: list[Tensor] = []
    kept: dict[str, list[Tensor]] = {name: [] for name in BEHAVIOUR}
    for batch in iter_batches(
        model,
        prompts,
        names,
        positions="query",
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=behaviour,
        progress=progress,
        desc=desc,
    ):
        here = batch.prompts.tokens.device  # blocks may live on several devices
        rows.append(
            torch.stack([batch.activations[n].to(here) for n in names], dim=1).float().cpu()
        )
        if behaviour:
            for name in BEHAVIOUR:
                kept[name].append(
                    METRICS[name](batch.logits, batch.prompts.gold, batch.prompts.label_token_ids)
                    .float()
                    .cpu()
                )
    states = torch.cat(rows)
    if not behaviour:
        return states, None
    return states, {name: torch.cat(v).numpy().astype(float) for name, v in kept.items()}


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


def task_vector(
    model: HookedTransformer,
    prompts: PromptSet,
    layer: int | Sequence[int],
    *,
    interventions: Sequence = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Float[Tensor, "*layer d_model"]:
    """Task vector: the mean query state over ICL prompts, ``mean_i h_layer(prompt_i)``.

    ``layer`` is a state index as in :func:`query_states` (``0`` = embeddings, ``l + 1`` =
    after block ``l``); inject the vector at the same index with
    :func:`~icl_heads.interventions.inject_task_vector`.

    Example::

        v = ih.task_vector(model, icl_prompts, layer=12)
        ih.evaluate(model, zero_shot, interventions=[ih.inject_task_vector(model, v, 12)])

    Returns:
        ``[d_model]`` for one layer, ``[len(layer), d_model]`` for a list (float32, CPU).

    Raises:
        ValueError: a query state holds NaN or inf (a broken run): never a NaN vector.
    """
    single = isinstance(layer, numbers.Integral) and not isinstance(layer, bool)
    states = query_states(
        model,
        prompts,
        layer,
        interventions=interventions,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    states = as_states(states, "task_vector: the query states")  # NaN / inf: an error
    vectors = states.mean(0).float()
    return vectors[0] if single else vectors
