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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .backends import HookedTransformer, final_residual
from .batching import BatchSize, check_batch_size, halving, resolve_batch_size
from .devices import module_device, output_device, output_weights
from .hooks import (
    PATTERN_HOOKS,
    Capture,
    HookList,
    Intervention,
    PositionMode,
    Positions,
    check_interventions,
    check_positions,
    describe,
    hook_name,
    intervention_hooks,
    position_mask,
)
from .models import resolve_device
from .progress import Heartbeat
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo

#: ``reduce(batch) -> (fn(act, hook_name) -> Tensor)``: built once per batch (so it can
#: prepare per-batch data), applied to every captured activation inside its hook.
Reducer = Callable[[PromptSet], Callable[[Tensor, str], Tensor]]


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
        raise TypeError(
            f"names must be a hook name, a list of hook names or a callable filter, got {names!r}."
        )
    return set(names).__contains__


def iter_batches(
    model: HookedTransformer,
    prompts: PromptSet,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    *,
    positions: PositionMode = "query",
    reduce: Reducer | None = None,
    batch_size: BatchSize = 16,
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
        batch_size: prompts per forward pass, or ``"auto"``: the largest batch that fits
            the device's memory (:mod:`icl_heads.batching`; 16 on a CPU). A batch that
            runs out of device memory is retried halved, and later batches keep that size.
        device: defaults to the model's device.
        interventions: :class:`~icl_heads.hooks.Intervention` objects (or anything with
            ``fwd_hooks(batch, index)``) applied during each pass.
        return_logits: also return final-position logits (the unembedding is applied to
            the query position only, which saves memory and time).
        progress: show a tqdm bar.

    Yields:
        :class:`Batch` objects, in prompt order.
    """
    check_prompt_set(prompts, model=model)
    check_batch_size(batch_size)
    if positions not in ("query", "all"):
        raise ValueError(f"positions must be 'query' or 'all', got {positions!r}.")
    device = resolve_device(device) if device is not None else torch.device(model.cfg.device)
    interventions = check_interventions(interventions, model)
    batch_size = resolve_batch_size(batch_size, model, prompts, device=device)
    keep = names_filter(names)
    n = len(prompts)

    def run(start: int, stop: int) -> Batch:
        index = torch.arange(start, stop)
        batch = prompts.select(index).to(device)
        capture = Capture(
            names=keep,
            positions=positions,
            attention_mask=batch.attention_mask,
            reduce=reduce(batch) if reduce is not None else None,
        )
        hooks: HookList = capture.fwd_hooks()
        hooks.extend(intervention_hooks(interventions, batch, index, model.cfg.n_layers))
        if not bar.disable:  # the bar moves per block, not only per batch (issue 21)
            hooks.extend(beat.capture.fwd_hooks())
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            logits = _forward(model, batch, return_logits=return_logits)
        return Batch(index=index, prompts=batch, logits=logits, activations=capture.store)

    total = len(range(0, n, batch_size))
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="batch")
    beat = Heartbeat(bar, model.cfg.n_layers)
    try:  # a batch that runs out of memory is retried halved (icl_heads.batching)
        for _, _, batch in halving(n, batch_size, run, device=device, what=desc):
            bar.update(1)
            yield batch
    finally:
        bar.close()


def _forward(model: HookedTransformer, batch: PromptSet, *, return_logits: bool) -> Tensor | None:
    """Forward pass that unembeds only the last position."""
    resid = final_residual(model, batch.tokens, batch.attention_mask)  # either backend
    return final_logits(model, resid[:, -1]) if return_logits else None


def final_logits(
    model: HookedTransformer, resid: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_vocab"]:
    """Logits from the final residual stream (final norm, unembed, soft-cap if any).

    The unembedding is ``x @ W_U + b_U`` through the unembed's hook points: the same
    product as TransformerLens's ``Unembed``, which would first copy ``W_U`` transposed
    (0.1-0.7 GB) on every call."""
    x = resid.unsqueeze(-2).to(output_device(model))  # norms expect a position axis
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    unembed = model.unembed
    # a bridge's final norm keeps its input's dtype (float32 states into a bfloat16 model,
    # e.g. averaged or steered ones); the hooked norms cast to the model's: do the same
    x = x.to(unembed.W_U.dtype)
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
    positions: PositionMode = "query",
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence[Intervention] = (),
    return_logits: bool = True,
    progress: bool = True,
    desc: str = "batches",
) -> Collected:
    """Run :func:`iter_batches` and concatenate. Position (and attention-key) axes are
    left-padded back to the full set's length, with zeros at padding."""
    logits, acts = [], {}
    for batch in iter_batches(
        model,
        prompts,
        names,
        positions=positions,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=return_logits,
        progress=progress,
        desc=desc,
    ):
        if batch.logits is not None:
            logits.append(batch.logits)
        for name, act in batch.activations.items():
            acts.setdefault(name, []).append(_left_pad(name, act, prompts.seq_len, positions))
    return Collected(
        logits=torch.cat(logits) if logits else None,
        activations={k: torch.cat(v) for k, v in acts.items()},
    )


def _left_pad(name: str, act: Tensor, length: int, positions: PositionMode) -> Tensor:
    if name.endswith(PATTERN_HOOKS):
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


def collect_sites(
    model: HookedTransformer,
    prompts: PromptSet,
    site: str,
    layers: Sequence[int],
    *,
    positions: Positions = "all",
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[int, Tensor]:
    """Activations of ``site`` at ``layers`` over ``prompts``, on the CPU, for interventions
    that replay stored activations (resample ablation, patching).

    Only the query position is kept when ``positions == "query"`` (``[prompt, 1, ...]``, so
    it broadcasts over the position axis), else every position (``[prompt, pos, ...]``,
    left-padded to ``prompts.seq_len``).

    Example::

        acts = collect_sites(model, prompts, "z", [0, 3], positions="query")
        acts[3].shape   # [prompt, 1, head, d_head]
    """
    names = [hook_name(site, layer) for layer in layers]
    pos = "query" if positions == "query" else "all"
    got = collect(
        model,
        prompts,
        names,
        positions=pos,
        batch_size=batch_size,
        device=device,
        return_logits=False,
        progress=progress,
        desc=f"collect {site}",
    ).activations
    out = {}
    for layer, name in zip(layers, names, strict=True):
        act = got[name].cpu()
        out[layer] = act[:, None] if pos == "query" else act
    return out


# --------------------------------------------------------------------------- means


@dataclass(frozen=True)
class ActivationMeans:
    """Mean activation of a site in every layer over a reference prompt set (padding
    excluded), computed once by :func:`activation_means` and reusable as ``means=``.

    Attributes:
        values: ``[layer, head, d_head]`` for site ``"z"``, else ``[layer, d_model]``.
        site: the site (``"z"``, ``"attn_out"``, ...).
        positions: where the mean was taken: ``"query"``, ``"all"`` (every real token) or a
            tuple of positions (see :func:`activation_means`).
        prompts: the reference set it was averaged over.
        batch_size: the batch size it was computed with (so it can be recomputed exactly).
        interventions: descriptions of the interventions active while it was computed.
        model: ``cfg.model_name`` of the model it was computed with (``None`` if unknown;
            the prompts may have been built for another model sharing the tokenizer).
            :func:`icl_heads.provenance.check_means` compares it, ``values``' shape and
            ``prompts`` with the model and prompts the means are used on.
    """

    values: Float[Tensor, "layer ..."]
    site: str
    positions: Positions
    prompts: PromptInfo | None = None
    batch_size: int | None = None
    interventions: tuple[str, ...] = ()
    model: str | None = None

    def outputs(self, model: HookedTransformer) -> Float[Tensor, "layer head d_model"]:
        """Each head's mean output in the residual stream, ``z @ W_O`` (``b_O`` excluded)."""
        if self.site != "z":
            raise ValueError(f"outputs() is for head means (site 'z'); these are {self.site!r}.")
        # block by block on a model split over several devices (model.W_O's stack fails)
        W_O, _ = output_weights(model, module_device(model.blocks[0]))
        return torch.einsum("lhd,lhdm->lhm", self.values.to(W_O.device, W_O.dtype), W_O)


def activation_means(
    model: HookedTransformer,
    prompts: PromptSet,
    site: str = "z",
    *,
    positions: Positions | tuple[Positions, ...] = "query",
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> ActivationMeans | tuple[ActivationMeans, ...]:
    """Mean activation of ``site`` in every layer over ``prompts``, for mean ablation.

    * ``positions="query"``: ``mean_i act_i[N_i]`` over prompts ``i`` at their query
      position;
    * ``positions="all"``: the mean over every real (non-pad) token of every prompt, each
      token weighted equally;
    * an int or a list of ints: the mean over the real tokens at those positions, each token
      weighted equally. Positions index the prompt set's padded sequence
      (``prompts.seq_len`` long, left-padded) as :func:`~icl_heads.hooks.position_mask`
      does, so negative positions (counted from the end) name the same token of every
      prompt; a non-negative position names the same token only in prompts of equal length,
      and prompts that are padding there are left out.

    A tuple of several selections, such as ``("all", "query")`` or ``("all", [3])``, gives
    one :class:`ActivationMeans` per entry, in that order, from one forward pass (a tuple
    of ints is one selection).

    Example::

        means = ih.activation_means(model, prompts)            # heads' z at the query
        ih.evaluate(model, prompts, interventions=[ih.ablate(model, heads, "mean", means=means)])
        every, query = ih.activation_means(model, prompts, positions=("all", "query"))

    Returns:
        :class:`ActivationMeans` (``values``: ``[layer, head, d_head]`` for ``"z"``, else
        ``[layer, d_model]``; float32, CPU), or a tuple of them for several selections.
    """
    check_prompt_set(prompts, "reference", model=model)
    several = isinstance(positions, tuple) and any(
        isinstance(p, (str, Sequence)) for p in positions
    )
    requested = positions if several else (positions,)
    try:
        wanted = tuple(check_positions(p) for p in requested)
    except (TypeError, ValueError):
        raise ValueError(
            "positions for means must be 'query' or 'all', an int or a list of ints (or a "
            f"tuple of several of these), got {positions!r}."
        ) from None
    if not wanted:
        raise ValueError(
            "positions for means must be 'query' or 'all' (or a tuple of them), got ()."
        )
    seq_len = prompts.seq_len
    selected = {p: position_mask(p, seq_len) for p in wanted if p not in ("query", "all")}
    interventions = check_interventions(interventions, model)
    L = model.cfg.n_layers
    names = [hook_name(site, layer) for layer in range(L)]
    capture = "query" if all(p == "query" for p in wanted) else "all"
    # "auto" resolved here, so the means record the batch size they were computed with
    batch_size = resolve_batch_size(batch_size, model, prompts, device=device)
    totals: dict = {}
    counts = dict.fromkeys(wanted, 0.0)
    for batch in iter_batches(
        model,
        prompts,
        names,
        positions=capture,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=False,
        progress=progress,
        desc=f"mean {site}",
    ):
        here = batch.prompts.tokens.device  # blocks may live on several devices
        acts = torch.stack([batch.activations[n].to(here) for n in names], dim=1).double()
        for mode in dict.fromkeys(wanted):
            if mode == "query":  # [b, L, ...] (the query is the last position)
                at = acts if capture == "query" else acts[:, :, -1]
                s, c = at.sum(0), at.shape[0]
            else:  # [b, L, T, ...]
                w = batch.prompts.attention_mask.to(acts.device)
                if mode != "all":  # the batch holds the last T of the set's seq_len columns
                    w = w.bool() & selected[mode][seq_len - w.shape[1] :].to(w.device)
                w = w.double()
                w = w.reshape(w.shape[0], 1, w.shape[1], *([1] * (acts.ndim - 3)))
                s, c = (acts * w).sum((0, 2)), w.sum()  # no device sync per batch
            totals[mode] = s if mode not in totals else totals[mode] + s
            counts[mode] += c
    for mode, count in counts.items():
        if float(count) == 0:
            raise ValueError(
                f"No prompt has a real (non-pad) token at positions {mode!r}, so there is "
                "nothing to average; choose positions that the prompts cover (negative "
                "positions count from the end of every prompt)."
            )
    out = tuple(
        ActivationMeans(
            values=(totals[m] / float(counts[m])).float().cpu(),
            site=site,
            positions=m,
            prompts=prompts.info(),
            batch_size=batch_size,
            interventions=tuple(describe(iv) for iv in interventions),
            model=model.cfg.model_name,
        )
        for m in wanted
    )
    return out if several else out[0]
