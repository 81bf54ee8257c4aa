"""The one batching routine: run a model over a :class:`PromptSet` in batches, capturing
only the requested hook points at the requested positions.

Every analysis streams through :func:`iter_batches` (memory independent of the number of
prompts) or collects with :func:`collect`. Batch size, progress bar, device, the checks of
the prompts against the model and ``torch.inference_mode`` live here once.

Example::

    got = ih.collect(model, prompts, ["blocks.3.hook_resid_post"], positions="query")
    got.activations["blocks.3.hook_resid_post"]     # [prompt, d_model]
    got.logits                                      # [prompt, d_vocab] at the query
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .interventions import Capture, HookList, check_interventions
from .models import resolve_device
from .prompts import PromptSet, check_prompt_set

CapturePositions = Literal["query", "all"]
#: ``reduce(batch) -> (fn(act, hook_name) -> Tensor)``: built once per batch (so it can
#: prepare per-batch data), applied to every captured activation inside its hook.
Reducer = Callable[[PromptSet], Callable[[Tensor, str], Tensor]]


class Intervention(Protocol):
    """Anything that can hand the batching routine forward hooks for one batch.

    ``batch`` is the batch's own ``PromptSet`` (trimmed padding) and ``index`` the rows of
    the full set it holds, so an intervention can pick per-prompt values (e.g. resampling).
    """

    def fwd_hooks(self, batch: PromptSet, index: Tensor) -> HookList: ...


@dataclass
class Batch:
    """One batch's results.

    Attributes:
        index: ``[batch]`` rows of the full ``PromptSet``.
        prompts: the batch's ``PromptSet`` (on the run's device).
        logits: ``[batch, d_vocab]`` logits at the query (last) position, or ``None``.
        activations: hook name -> tensor, sliced to the requested positions (``"query"``
            removes the position axis; for attention patterns it keeps the query row;
            ``"all"`` keeps every position, with padding rows set to zero), or what
            ``reduce`` made of it.
    """

    index: Tensor
    prompts: PromptSet
    logits: Float[Tensor, "batch d_vocab"] | None
    activations: dict[str, Tensor]


def names_filter(names: Sequence[str] | Callable[[str], bool] | None) -> Callable[[str], bool]:
    """A TransformerLens-style names filter from a name, a list of names or a callable."""
    if names is None:
        return lambda name: False
    if callable(names):
        return names
    if isinstance(names, str):
        return {names}.__contains__
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a hook name, a list of hook names or a callable "
                        f"filter, got {names!r}.")
    return set(names).__contains__


def check_batch_size(batch_size, what: str = "batch_size") -> int:
    """A positive whole number (bools and floats are refused)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{what} must be a positive integer, got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"{what} must be >= 1, got {batch_size}.")
    return int(batch_size)


def iter_batches(
    model: HookedTransformer,
    prompts: PromptSet,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    *,
    positions: CapturePositions = "query",
    reduce: Reducer | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence[Intervention] = (),
    return_logits: bool = True,
    progress: bool = True,
    desc: str = "batches",
) -> Iterator[Batch]:
    """Stream a model over ``prompts`` batch by batch, capturing only ``names``.

    Args:
        model: the model.
        prompts: left-padded prompts (each batch is trimmed to its own longest prompt).
        names: hook names (or a ``names_filter`` callable) to capture; default none.
        positions: ``"query"`` keeps only the last (query) position, ``"all"`` every one.
        reduce: optional per-batch reducer applied to each captured activation inside its
            hook (so only the reduced value is kept; see :data:`Reducer`).
        batch_size: prompts per forward pass.
        device: defaults to the model's device.
        interventions: objects with ``fwd_hooks(batch, index)`` applied during each pass.
        return_logits: also return final-position logits (the unembedding is applied to
            the query position only, which saves memory and time).
        progress: show a tqdm bar.

    Yields:
        :class:`Batch` objects, in prompt order.
    """
    check_prompt_set(prompts, model=model)
    batch_size = check_batch_size(batch_size)
    if positions not in ("query", "all"):
        raise ValueError(f"positions must be 'query' or 'all', got {positions!r}.")
    device = resolve_device(device) if device is not None else torch.device(model.cfg.device)
    interventions = check_interventions(interventions, model)
    keep = names_filter(names)
    n = len(prompts)
    starts = range(0, n, batch_size)
    bar = tqdm(starts, desc=desc, disable=not progress, leave=False,
               total=len(starts), unit="batch")
    for start in bar:
        index = torch.arange(start, min(start + batch_size, n))
        batch = prompts.select(index).to(device)
        capture = Capture(names=keep, positions=positions, attention_mask=batch.attention_mask,
                          reduce=reduce(batch) if reduce is not None else None)
        hooks: HookList = capture.fwd_hooks()
        for iv in interventions:
            hooks.extend(iv.fwd_hooks(batch, index))
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            logits = _forward(model, batch, return_logits=return_logits)
        yield Batch(index=index, prompts=batch, logits=logits, activations=capture.store)


def _forward(model: HookedTransformer, batch: PromptSet, *, return_logits: bool) -> Tensor | None:
    """Forward pass that unembeds only the last position."""
    resid = model(batch.tokens, attention_mask=batch.attention_mask,
                  stop_at_layer=model.cfg.n_layers)
    return final_logits(model, resid[:, -1]) if return_logits else None


def final_logits(
    model: HookedTransformer, resid: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_vocab"]:
    """Logits from the final residual stream (final norm, unembed, soft-cap if any).

    The unembedding is ``x @ W_U + b_U`` through the unembed's hook points: the same
    product as TransformerLens's ``Unembed``, which would first copy ``W_U`` transposed
    (0.1-0.7 GB) on every call."""
    x = resid.unsqueeze(-2)  # norms expect a position axis
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    unembed = model.unembed
    logits = unembed.hook_out(unembed.hook_in(x) @ unembed.W_U + unembed.b_U).squeeze(-2)
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


@dataclass
class Collected:
    """Concatenated results of :func:`collect` (rows in prompt order)."""

    logits: Float[Tensor, "prompt d_vocab"] | None
    activations: dict[str, Tensor]


def collect(
    model: HookedTransformer,
    prompts: PromptSet,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    *,
    positions: CapturePositions = "query",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence[Intervention] = (),
    return_logits: bool = True,
    progress: bool = True,
    desc: str = "batches",
) -> Collected:
    """Run :func:`iter_batches` and concatenate. Position (and attention-key) axes are
    left-padded back to the full set's length, with zeros at padding."""
    logits, acts = [], {}
    for batch in iter_batches(model, prompts, names, positions=positions, batch_size=batch_size,
                              device=device, interventions=interventions,
                              return_logits=return_logits, progress=progress, desc=desc):
        if batch.logits is not None:
            logits.append(batch.logits)
        for name, act in batch.activations.items():
            acts.setdefault(name, []).append(_left_pad(name, act, prompts.seq_len, positions))
    return Collected(
        logits=torch.cat(logits) if logits else None,
        activations={k: torch.cat(v) for k, v in acts.items()},
    )


def _left_pad(name: str, act: Tensor, length: int, positions: CapturePositions) -> Tensor:
    if name.endswith(("hook_pattern", "hook_attn_scores")):
        missing = length - act.shape[-1]
        pads = (missing, 0) if positions == "query" else (missing, 0, missing, 0)
        return torch.nn.functional.pad(act, pads)
    if positions == "query":
        return act
    missing = length - act.shape[1]
    if missing == 0:
        return act
    pad_shape = (act.shape[0], missing, *act.shape[2:])
    return torch.cat([act.new_zeros(pad_shape), act], dim=1)
