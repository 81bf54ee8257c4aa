"""Interventions on a model's forward pass (ablation, patching, steering, task vectors).
Every intervention hook of the package is built here; other modules ask for one. The
building blocks (hook names, positions, the :class:`~icl_heads.hooks.Intervention` base,
:class:`~icl_heads.hooks.Capture`) live in :mod:`icl_heads.hooks`; the values that need a
forward pass (mean activations, stored source/donor activations) are collected by
:mod:`icl_heads.activations`.

Every intervention is a small frozen object that

* hands the batching routine its forward hooks for one batch,
  ``fwd_hooks(batch, index) -> [(hook_name, fn)]``, so it can be passed to any analysis as
  ``interventions=[...]`` (e.g. ``ih.evaluate(model, prompts, interventions=[iv])``); there
  it knows which prompts are in the batch (``index``) and picks per-prompt values (source
  rows, resampling donors); and
* is a context manager that adds its hooks to the model for the duration::

      with ablate(model, heads, mode="mean", reference=prompts):
          ih.evaluate(model, prompts)       # any number of prompts

  Interventions whose values depend on the prompt (``patch``, ``mode="resample"``) cannot
  see which prompts a bare ``with`` block runs; they raise at entry and say to pass them as
  ``interventions=[...]`` instead.

Interventions compose: pass several, nest ``with`` blocks, or join them with
:func:`compose`. Hooks stack in the order they were added.

Head interventions act on ``blocks.{layer}.attn.hook_z`` (``[batch, pos, head, d_head]``,
one slot per *query* head), so they work unchanged on grouped-query-attention models such
as SmolLM2 (9 query heads over 3 key/value heads). A head's output in the residual stream
is ``z[:, :, head] @ W_O[layer, head]``; the layer's attention output is the sum of its
heads' outputs plus the constant bias ``b_O``.

Positions (``positions=``, :data:`~icl_heads.hooks.Positions`): ``"query"`` is the last
token of every row (prompts are left-padded, so the query is always last), ``"all"`` every
position, or an int / list of ints (negative counts from the end), the same for every row.

Interventions are data as well as hooks: ``iv.to_spec()`` is a small JSON-able dict and
:func:`from_spec` rebuilds the same intervention from it (see :func:`from_spec` for what
must be passed for which kind)::

    spec = iv.to_spec()                        # json.dumps(spec) works
    again = ih.interventions.from_spec(model, spec, prompts=[prompts])
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .activations import ActivationMeans, activation_means, collect_sites
from .heads import Head, HeadsLike, heads_to_mask, mask_to_heads
from .hooks import (
    LAYER_SITES,
    MAX_INLINE,
    SITES,
    Capture,
    HookList,
    Intervention,
    Positions,
    applied,
    check_interventions,
    check_positions,
    describe,
    hook_name,
    layers_to_mask,
    position_mask,
    state_injection_hook,
)
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo, Settings, model_name

log = logging.getLogger(__name__)

ABLATION_MODES = ("zero", "mean", "resample")
TASK_VECTOR_MODES = ("replace", "add")


def _align_end(act: Tensor, length: int) -> Tensor:
    """Align ``[batch, pos, ...]`` to ``length`` positions at the end (left-pad with zeros
    or drop leading positions): prompts are left-padded, so ends correspond."""
    have = act.shape[1]
    if have == length:
        return act
    if have > length:
        return act[:, have - length :]
    pad = act.new_zeros((act.shape[0], length - have, *act.shape[2:]))
    return torch.cat([pad, act], dim=1)


# --------------------------------------------------------------------------- replacements


@dataclass(frozen=True, eq=False)
class Replacement(Intervention):
    """Replace an activation at a site, for selected heads/layers and positions.

    Subclasses say what the replacement value is (:meth:`values`)."""

    model: HookedTransformer = field(repr=False, default=None)
    site: str = "z"
    mask: Tensor = field(default=None)  # [L, H] bool for site "z", else [L] bool
    positions: Positions = "all"

    @property
    def layers(self) -> list[int]:
        sel = self.mask.any(-1) if self.mask.ndim == 2 else self.mask
        return sel.nonzero().flatten().tolist()

    def values(
        self, layer: int, batch: PromptSet | None, index: Tensor | None, length: int, n_rows: int
    ) -> Tensor:
        """Replacement activations for ``layer``, broadcastable to the site's activation
        ``[n_rows, length, (head,) d]`` (aligned at the end of the sequence)."""
        raise NotImplementedError

    def selector(self, layer: int, length: int, device) -> Tensor:
        """Boolean selector broadcastable to the activation: positions x (heads)."""
        pos = position_mask(self.positions, length, device)
        if self.site == "z":
            heads = self.mask[layer].to(device)
            return pos[None, :, None, None] & heads[None, None, :, None]
        return pos[None, :, None]

    def fwd_hooks(self, batch: PromptSet | None, index: Tensor | None) -> HookList:
        hooks = []
        for layer in self.layers:

            def hook(act: Tensor, hook, layer=layer) -> Tensor:
                vals = self.values(layer, batch, index, act.shape[1], act.shape[0])
                sel = self.selector(layer, act.shape[1], act.device)
                return torch.where(sel, vals.to(act.device, act.dtype), act)

            hooks.append((hook_name(self.site, layer), hook))
        return hooks

    def with_mask(self, mask: Tensor) -> Replacement:
        """The same intervention on other heads/layers (shares the stored activations)."""
        if tuple(mask.shape) != tuple(self.mask.shape):
            raise ValueError(
                f"Mask has shape {tuple(mask.shape)}, expected {tuple(self.mask.shape)}."
            )
        return replace(self, mask=mask.bool().cpu())

    def _where(self) -> str:
        if self.site == "z":
            heads = mask_to_heads(self.mask)
            shown = ", ".join(str(h) for h in heads[:8]) + (", ..." if len(heads) > 8 else "")
            return f"heads=[{shown}]"
        return f"site={self.site}, layers={self.layers}"

    def _selection(self) -> dict:
        """The spec's ``site`` and ``heads`` (``[[layer, head], ...]``) or ``layers``."""
        if self.site == "z":
            return {"site": "z", "heads": [[h.layer, h.head] for h in mask_to_heads(self.mask)]}
        return {"site": self.site, "layers": self.layers}


def _donor_rows(
    ref_texts: Sequence[str], index: Tensor, texts: Sequence[str] | None, seed: int
) -> Tensor:
    """Seeded donor prompt for every row: row ``i`` (prompt index ``index[i]``) draws a
    reference prompt uniformly among those whose text differs from its own (when its text is
    known), with a generator seeded by ``(seed, index[i])``, so a prompt always gets the same
    donor whatever the batching."""
    n_ref = len(ref_texts)
    out = []
    for row, gi in enumerate(index.tolist()):
        if texts is None:
            candidates = list(range(n_ref))
        else:
            candidates = [j for j in range(n_ref) if ref_texts[j] != texts[row]]
        if not candidates:
            raise ValueError(
                "Resample ablation needs a reference set with at least one prompt "
                "that differs from each ablated prompt; give reference= a larger "
                "PromptSet."
            )
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(gi))
        out.append(candidates[int(torch.randint(len(candidates), (1,), generator=g))])
    return torch.tensor(out, dtype=torch.long)


@dataclass(frozen=True, eq=False)
class Ablation(Replacement):
    """Zero, mean or resample ablation of heads (site ``"z"``) or layer outputs.

    Made by :func:`ablate` (heads) and :func:`ablate_layers`. ``means``: ``[L, (H,) d]``
    mean activations (mode ``"mean"``); ``donor_acts``: reference activations per layer,
    ``[n_ref, pos, (H,) d]`` (left-padded; ``pos`` = 1 when only the query is stored) with
    ``donor_texts`` (mode ``"resample"``).

    How the values were made, for :meth:`to_spec`: ``means_from`` (the
    :class:`ActivationMeans` the means came from, ``None`` for a bare tensor);
    ``reference`` and ``batch_size`` (the donor set of mode ``"resample"`` and the batch
    size its activations were collected with).
    """

    mode: str = "zero"
    means: Tensor | None = field(default=None, repr=False)
    donor_acts: dict | None = field(default=None, repr=False)
    donor_texts: tuple = field(default=(), repr=False)
    seed: int = 0
    means_from: ActivationMeans | None = field(default=None, repr=False)
    reference: PromptInfo | None = field(default=None, repr=False)
    batch_size: int | None = field(default=None, repr=False)

    @property
    def per_prompt(self) -> bool:  # type: ignore[override]
        return self.mode == "resample"

    def donors(self, batch: PromptSet | None, index: Tensor, n_rows: int) -> Tensor:
        """Donor prompt (row of the reference set) of every row of the batch."""
        return _donor_rows(
            self.donor_texts, index, batch.texts if batch is not None else None, self.seed
        )

    def values(self, layer, batch, index, length, n_rows):
        if self.mode == "zero":
            return torch.zeros((), dtype=torch.float32)
        if self.mode == "mean":
            return self.means[layer]
        acts = self.donor_acts[layer][self.donors(batch, index, n_rows)]
        # query-only storage ([n, 1, ...]) broadcasts: only the last position is replaced
        return acts if self.positions == "query" else _align_end(acts, length)

    def describe(self) -> str:
        return f"ablate({self._where()}, mode={self.mode}, positions={self.positions})"

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "ablate", "site", "heads" | "layers", "mode", "positions", "seed"}``,
        plus ``"means"`` (mode ``"mean"``: how they were made, their fingerprint and, when
        small, their values) or ``"reference"`` (mode ``"resample"``: the donor prompts)."""
        spec = {
            "kind": "ablate",
            "model": model_name(self.model),
            **self._selection(),
            "mode": self.mode,
            "positions": _positions_spec(self.positions),
            "seed": self.seed,
        }
        if self.mode == "mean":
            spec["means"] = _means_record(self.means, self.means_from, max_inline)
        elif self.mode == "resample":
            spec["reference"] = _prompts_record(self.reference, self.batch_size)
        return spec


def ablate(
    model: HookedTransformer,
    heads: HeadsLike,
    mode: Literal["zero", "mean", "resample"] = "zero",
    positions: Positions = "all",
    *,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Ablation:
    """Ablate attention heads on ``hook_z`` (works with grouped-query attention).

    Each selected head's ``z`` at the selected positions is replaced by

    * ``"zero"``: ``0`` (the head's output ``z W_O`` becomes 0; ``b_O`` stays);
    * ``"mean"``: its mean over a reference set, ``means`` (from :func:`activation_means`,
      or a ``[L, H, d_head]`` tensor), or computed here from ``reference`` at the ablated
      positions (``activation_means(model, reference, "z", positions=positions)``: at the
      query for ``"query"``, over all real tokens for ``"all"``, over the real tokens at
      those positions for an int or a list of ints);
    * ``"resample"``: its value on another prompt of ``reference``: every prompt gets one
      donor (seeded by ``seed`` and the prompt's index, never a prompt with the same text),
      aligned at the end of the sequence (a donor shorter than the target gives zeros where
      it has no token). Pass it as ``interventions=[...]``: a bare ``with`` block is refused.

    Args:
        heads: ``Head`` list, ``(layer, head)`` pairs, a ``HeadScores`` (its ``top()``) or a
            boolean ``[L, H]`` mask. An empty selection is a no-op.
        positions: ``"all"`` (default: the head is removed everywhere), ``"query"``, an int
            or a list of ints.

    Example::

        iv = ih.ablate(model, tl.top(8), mode="mean", reference=prompts)
        ih.evaluate(model, prompts, interventions=[iv])

    Returns:
        An :class:`Ablation`.
    """
    mask = heads_to_mask(heads, model.cfg.n_layers, model.cfg.n_heads)
    return _make_ablation(
        model,
        "z",
        mask,
        mode,
        positions,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


def ablate_layers(
    model: HookedTransformer,
    layers: int | Sequence[int] | Tensor | None,
    mode: Literal["zero", "mean", "resample"] = "zero",
    positions: Positions = "all",
    *,
    site: str = "attn_out",
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Ablation:
    """Ablate a whole layer-level activation (``attn_out``, ``mlp_out``, ``resid_*``);
    arguments in the order of :func:`ablate`, the site a keyword.

    ``"zero"`` sets it to 0 — for ``attn_out`` that also removes the bias ``b_O``, unlike
    zero-ablating every head of the layer (which leaves ``attn_out = b_O``). ``"mean"`` and
    ``"resample"`` work as in :func:`ablate` (``means``: ``[L, d_model]``).
    ``layers=None`` means every layer.
    """
    if site == "z":
        raise ValueError(
            "For heads use ablate(model, heads, ...); ablate_layers takes a layer "
            f"site, one of {LAYER_SITES}."
        )
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES}.")
    mask = layers_to_mask(layers, model.cfg.n_layers)
    return _make_ablation(
        model,
        site,
        mask,
        mode,
        positions,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


def _make_ablation(
    model, site, mask, mode, positions, *, means, reference, seed, batch_size, device, progress
) -> Ablation:
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    positions = check_positions(positions)
    kwargs = dict(model=model, site=site, mask=mask, positions=positions, mode=mode, seed=int(seed))
    if mode == "mean":
        if means is None:
            if reference is None:
                raise ValueError(
                    "Mean ablation needs the mean activations: pass means= (e.g. "
                    "activation_means(model, prompts)) or reference= (a PromptSet)."
                )
            means = activation_means(
                model,
                reference,
                site,
                positions=positions,
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
        kwargs["means"] = _check_means(model, means, site)
        kwargs["means_from"] = means if isinstance(means, ActivationMeans) else None
    elif mode == "resample":
        if reference is None:
            raise ValueError(
                "Resample ablation draws activations from other prompts: pass "
                "reference= (a PromptSet, usually the prompts being run)."
            )
        check_prompt_set(reference, "reference", model=model)
        layers = (mask.any(-1) if mask.ndim == 2 else mask).nonzero().flatten().tolist()
        kwargs["donor_acts"] = collect_sites(
            model,
            reference,
            site,
            layers,
            positions=positions,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        kwargs["donor_texts"] = tuple(reference.texts)
        kwargs["reference"] = reference.info()
        kwargs["batch_size"] = batch_size
    return Ablation(**kwargs)


def _check_means(model: HookedTransformer, means, site: str) -> Tensor:
    if isinstance(means, ActivationMeans):
        if means.site != site:
            raise ValueError(
                f"These means are of site {means.site!r}; this ablation is on "
                f"{site!r}. Compute activation_means(model, prompts, {site!r})."
            )
        means = means.values
    if not isinstance(means, Tensor):
        raise TypeError(
            f"means must be ActivationMeans (activation_means(...)) or a tensor, "
            f"got {type(means).__name__}."
        )
    want = (
        (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
        if site == "z"
        else (model.cfg.n_layers, model.cfg.d_model)
    )
    if tuple(means.shape) != want:
        raise ValueError(f"means has shape {tuple(means.shape)}; site {site!r} needs {list(want)}.")
    return means.detach().float().cpu()


@dataclass(frozen=True, eq=False)
class Patch(Replacement):
    """Activation patching: the selected activation of the target run is replaced by its
    value in the source run (target prompt ``i`` takes source prompt ``i``).

    Made by :func:`patch`. ``source_acts``: per layer ``[n_src, pos, (H,) d]`` (left-padded;
    ``pos`` = 1 when only the query is stored); ``source_lengths``: ``[n_src]`` token counts;
    ``source``: the source prompts' identity; ``batch_size``: the batch size the source
    activations were collected with.
    """

    source_acts: dict = field(default_factory=dict, repr=False)
    source_lengths: Tensor | None = field(default=None, repr=False)
    source: PromptInfo | None = None
    batch_size: int | None = field(default=None, repr=False)
    per_prompt = True

    def source_rows(self, batch: PromptSet | None, index: Tensor, n_rows: int) -> Tensor:
        n_src = len(self.source_lengths)
        if int(index.max()) >= n_src:
            raise ValueError(
                f"Target prompt {int(index.max())} has no source prompt (the "
                f"source has {n_src}); source and target must align row by row."
            )
        if self.positions != "query" and batch is not None:
            if not torch.equal(self.source_lengths[index.cpu()].cpu(), batch.lengths.cpu()):
                raise ValueError(
                    "Source and target prompts differ in length, so their "
                    "positions do not correspond; patch only positions='query' or "
                    "use aligned prompts of equal length (e.g. shift_demo_labels)."
                )
        return index.cpu()

    def values(self, layer, batch, index, length, n_rows):
        acts = self.source_acts[layer][self.source_rows(batch, index, n_rows)]
        # query-only storage ([n, 1, ...]) broadcasts: only the last position is replaced
        return acts if self.positions == "query" else _align_end(acts, length)

    def describe(self) -> str:
        src = f"{self.source.task}/{self.source.perturbation}" if self.source else "source"
        return f"patch({self._where()}, from={src}, positions={self.positions})"

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "patch", "site", "heads" | "layers", "positions", "source"}`` (the
        source prompts' identity and the batch size their activations were collected with)."""
        return {
            "kind": "patch",
            "model": model_name(self.model),
            **self._selection(),
            "positions": _positions_spec(self.positions),
            "source": _prompts_record(self.source, self.batch_size),
        }


def patch(
    model: HookedTransformer,
    source: PromptSet,
    *,
    site: str = "z",
    heads: HeadsLike | None = None,
    layers: int | Sequence[int] | Tensor | None = None,
    positions: Positions = "all",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Patch:
    """Patch activations from a source run into the target run.

    The source activations are computed once here (only the needed hook points; only the
    query position when ``positions == "query"``). At run time target prompt ``i`` takes
    source prompt ``i``: source and target are aligned row by row and, unless
    ``positions == "query"``, must have equal lengths (``shift_demo_labels(prompts)`` makes
    such a pair). Pass it as ``interventions=[...]``: a bare ``with`` block is refused.

    Args:
        site: ``"z"`` (head outputs; select ``heads``, or ``layers`` for all their heads),
            ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``,
            ``"mlp_out"`` (select ``layers``). Default: every head / every layer.
        positions: ``"all"`` (default), ``"query"``, an int or a list of ints.

    Example::

        corrupted = ih.shift_demo_labels(prompts)
        iv = ih.patch(model, prompts, heads=tl.top(8))      # clean activations ...
        ih.evaluate(model, corrupted, interventions=[iv])   # ... into the corrupted run

    Returns:
        A :class:`Patch`.
    """
    check_prompt_set(source, "source", model=model)
    hook_name(site, 0)
    positions = check_positions(positions)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if site == "z":
        if heads is not None and layers is not None:
            raise ValueError("Give heads= or layers=, not both.")
        if heads is not None:
            mask = heads_to_mask(heads, L, H)
        else:
            mask = layers_to_mask(layers, L)[:, None].expand(L, H).clone()
    else:
        if heads is not None:
            raise ValueError(f"Site {site!r} is a layer activation; select layers=, not heads=.")
        mask = layers_to_mask(layers, L)
    sel = (mask.any(-1) if mask.ndim == 2 else mask).nonzero().flatten().tolist()
    acts = collect_sites(
        model,
        source,
        site,
        sel,
        positions=positions,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return Patch(
        model=model,
        site=site,
        mask=mask,
        positions=positions,
        source_acts=acts,
        source_lengths=source.lengths.cpu(),
        source=source.info(),
        batch_size=batch_size,
    )


# --------------------------------------------------------------------------- steering


@dataclass(frozen=True, eq=False)
class Steer(Intervention):
    """Add ``alpha * vector`` to an activation at chosen positions (see :func:`steer`)."""

    model: HookedTransformer = field(repr=False, default=None)
    vector: Tensor = field(repr=False, default=None)
    layer: int = 0
    alpha: float = 1.0
    positions: Positions = "query"
    head: int | None = None
    site: str = "resid_pre"

    def fwd_hooks(self, batch, index) -> HookList:
        def hook(act: Tensor, hook) -> Tensor:
            pos = position_mask(self.positions, act.shape[1], act.device)
            add = self.alpha * self.vector.to(act.device, act.dtype)
            if self.site == "z":  # [b, pos, head, d_head]: add to one head's z
                sel = (
                    pos[None, :, None, None]
                    & (torch.arange(act.shape[2], device=act.device) == self.head)[
                        None, None, :, None
                    ]
                )
                return act + sel * add
            return act + pos[None, :, None] * add

        return [(hook_name(self.site, self.layer), hook)]

    def describe(self) -> str:
        where = (
            f"head=L{self.layer}H{self.head}"
            if self.head is not None
            else f"site={self.site}, layer={self.layer}"
        )
        return (
            f"steer({where}, alpha={self.alpha:g}, |v|={float(self.vector.norm()):.3g}, "
            f"positions={self.positions})"
        )

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "steer", "site", "layer", "head", "alpha", "positions", "vector"}``
        (the vector's shape and fingerprint, and its values when small)."""
        return {
            "kind": "steer",
            "model": model_name(self.model),
            "site": self.site,
            "layer": self.layer,
            "head": self.head,
            "alpha": self.alpha,
            "positions": _positions_spec(self.positions),
            "vector": _tensor_record(self.vector, max_inline),
        }


def steer(
    model: HookedTransformer,
    vector: Float[Tensor, " d"],
    layer: int | None = None,
    *,
    alpha: float = 1.0,
    positions: Positions = "query",
    head: Head | tuple[int, int] | None = None,
    site: str = "resid_pre",
) -> Steer:
    """Steering: add ``alpha * vector`` to the residual stream or to a head's output.

    * ``head=None``: ``vector`` (``[d_model]``) is added to ``site`` of ``layer``
      (``"resid_pre"`` by default; ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``,
      ``"mlp_out"`` also work).
    * ``head=Head(l, h)`` with a ``[d_model]`` vector: added *as that head's output*. The
      head's output enters the residual stream only through the layer's attention output
      (``attn_out = sum_h z_h W_O[h] + b_O``), so this adds to ``blocks.l.hook_attn_out``:
      exactly the same as changing the head's output by ``vector`` (no pseudo-inverse of
      ``W_O``). On models with a norm after attention (Gemma 2/3), that hook is after the
      norm.
    * ``head=Head(l, h)`` with a ``[d_head]`` vector: added to the head's ``z`` (its output
      changes by ``alpha * vector @ W_O[l, h]``).

    Args:
        positions: ``"query"`` (default: steering acts where the answer is read), ``"all"``,
            an int or a list of ints.

    Example::

        v = ih.activation_means(model, icl_prompts).outputs(model)[12, 3]   # L12H3's mean output
        ih.evaluate(model, zero_shot, interventions=[ih.steer(model, v, head=(12, 3), alpha=2)])

    Returns:
        A :class:`Steer`.
    """
    if not isinstance(vector, Tensor):
        try:
            vector = torch.as_tensor(vector, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"vector must be a 1-D tensor of numbers, got {type(vector).__name__}."
            ) from None
    vector = vector.detach().float()
    if vector.ndim != 1:
        raise ValueError(
            f"vector must be 1-D ([d_model] or, with a head, [d_head]); got shape "
            f"{tuple(vector.shape)}."
        )
    if not torch.isfinite(vector).all():
        raise ValueError("vector contains NaN or inf values.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number, got {alpha!r}.")
    positions = check_positions(positions)
    L = model.cfg.n_layers
    head_index = None
    if head is not None:
        mask = heads_to_mask([head], L, model.cfg.n_heads)
        hl, head_index = (int(v) for v in mask.nonzero()[0])
        if layer is not None and layer != hl:
            raise ValueError(
                f"layer={layer} disagrees with head {Head(hl, head_index)}; omit "
                "layer when giving a head."
            )
        layer = hl
        if vector.shape[0] == model.cfg.d_head and vector.shape[0] != model.cfg.d_model:
            site = "z"
        elif vector.shape[0] == model.cfg.d_model:
            site = "attn_out"
            head_index = None
        else:
            raise ValueError(
                f"A head's steering vector must have d_model={model.cfg.d_model} "
                f"or d_head={model.cfg.d_head} entries, got {vector.shape[0]}."
            )
    else:
        if layer is None:
            raise ValueError("Give the layer to steer (or a head).")
        if site == "z":
            raise ValueError("To steer a head's z, give head=Head(layer, head).")
        hook_name(site, 0)
        if vector.shape[0] != model.cfg.d_model:
            raise ValueError(
                f"vector has {vector.shape[0]} entries; the residual stream has "
                f"d_model={model.cfg.d_model}."
            )
    layers_to_mask([layer], L)  # type and range check
    return Steer(
        model=model,
        vector=vector,
        layer=int(layer),
        alpha=float(alpha),
        positions=positions,
        head=head_index,
        site=site,
    )


# --------------------------------------------------------------------------- composition


@dataclass(frozen=True, eq=False)
class Compose(Intervention):
    """Several interventions applied together, in order (see :func:`compose`)."""

    parts: tuple = ()

    @property
    def _model(self) -> HookedTransformer:
        return self.parts[0]._model

    @property
    def per_prompt(self) -> bool:  # type: ignore[override]
        return any(getattr(p, "per_prompt", False) for p in self.parts)

    def fwd_hooks(self, batch, index) -> HookList:
        hooks: HookList = []
        for part in self.parts:
            hooks.extend(part.fwd_hooks(batch, index))
        return hooks

    def describe(self) -> str:
        return " + ".join(describe(p) for p in self.parts)

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "compose", "parts": [spec, ...]}``."""
        return {"kind": "compose", "parts": [_spec_of(p, max_inline) for p in self.parts]}


def compose(*interventions) -> Compose:
    """Join interventions into one (usable as ``interventions=[...]`` or as a context
    manager); they act in the order given."""
    if not interventions:
        raise ValueError("compose() needs at least one intervention.")
    parts = check_interventions(list(interventions))
    models = {id(p._model) for p in parts}
    if len(models) > 1:
        raise ValueError("compose(): all interventions must belong to the same model.")
    return Compose(parts=parts)


# --------------------------------------------------------------------------- engine edits


@dataclass(frozen=True, eq=False)
class RowEdit(Intervention):
    """Batched per-row edit used by the fast sweeps: at ``hook``, set
    ``act[rows[r], pos[r, j], (head[r])] = values[r, j]`` (out of place).

    Each batch row can carry a different intervention (one head, one layer output or one
    position per row), which is how many single-head interventions share one forward pass.

    Attributes:
        hook: the hook name.
        rows: ``[R]`` batch rows to edit.
        pos: ``[R, P]`` positions per row (into the activation's position axis).
        values: ``[R, P, d]`` new values.
        head: ``[R]`` head per row (site ``z``), or ``None``.
    """

    hook: str = ""
    rows: Int[Tensor, " row"] = None
    pos: Int[Tensor, "row p"] = None
    values: Float[Tensor, "row p d"] = None
    head: Int[Tensor, " row"] | None = None

    def fwd_hooks(self, batch=None, index=None) -> HookList:
        def hook(act: Tensor, hook) -> Tensor:
            dev = act.device
            idx = [self.rows.to(dev)[:, None], self.pos.to(dev)]
            if self.head is not None:
                idx.append(self.head.to(dev)[:, None])
            return act.index_put(tuple(idx), self.values.to(dev, act.dtype))

        return [(self.hook, hook)]


# --------------------------------------------------------------------------- task vectors


@dataclass(frozen=True, eq=False)
class TaskVector(Intervention):
    """Inject a task vector into query state ``layer`` (see :func:`inject_task_vector`).

    ``mode="add"``: ``h <- h + scale * vector``; ``mode="replace"``:
    ``h <- h + scale * (vector - h)`` (``scale = 1`` replaces the state, ``0`` leaves it).
    """

    model: HookedTransformer = field(repr=False, default=None)
    vector: Tensor = field(repr=False, default=None)
    layer: int = 0
    mode: str = "replace"
    scale: float = 1.0
    positions: Positions = "query"

    @property
    def hook_name(self) -> str:
        return state_injection_hook(self.layer, self.model.cfg.n_layers)

    def fwd_hooks(self, batch=None, index=None) -> HookList:
        def hook(act: Tensor, hook) -> Tensor:
            sel = position_mask(self.positions, act.shape[1], act.device)[None, :, None]
            vector = self.vector.to(act.device, act.dtype)
            if self.mode == "add":
                new = act + self.scale * vector
            else:
                new = act + self.scale * (vector - act)
            return torch.where(sel, new, act)

        return [(self.hook_name, hook)]

    def describe(self) -> str:
        return (
            f"task_vector(state={self.layer}, mode={self.mode}, scale={self.scale:g}, "
            f"|v|={float(self.vector.norm()):.3g}, positions={self.positions})"
        )

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "task_vector", "layer", "mode", "scale", "positions", "vector"}``."""
        return {
            "kind": "task_vector",
            "model": model_name(self.model),
            "layer": self.layer,
            "mode": self.mode,
            "scale": self.scale,
            "positions": _positions_spec(self.positions),
            "vector": _tensor_record(self.vector, max_inline),
        }


def inject_task_vector(
    model: HookedTransformer,
    vector: Float[Tensor, " d_model"],
    layer: int,
    *,
    mode: Literal["replace", "add"] = "replace",
    scale: float = 1.0,
    positions: Positions = "query",
) -> TaskVector:
    """Inject a task vector (e.g. :func:`icl_heads.geometry.task_vector`) into the residual
    stream, as an intervention usable with every analysis (``interventions=[...]``) or as a
    context manager.

    ``layer`` is a *state index*, as in :func:`icl_heads.geometry.query_states`: ``0`` sets
    the embeddings (``blocks.0.hook_resid_pre``), ``l + 1`` the stream after block ``l``
    (``blocks.l.hook_resid_post``), so ``task_vector(model, icl, layer)`` and
    ``inject_task_vector(model, v, layer)`` speak of the same state.

    * ``mode="replace"`` (default; Hendel et al.'s task vectors):
      ``h <- h + scale * (vector - h)``: ``scale = 1`` replaces the state by the vector,
      ``scale = 0`` leaves it exactly unchanged, values in between interpolate.
    * ``mode="add"`` (function-vector style): ``h <- h + scale * vector``.

    Args:
        positions: ``"query"`` (default: the last token of every row), ``"all"``, an int or
            a list of ints.

    Example::

        v = ih.task_vector(model, icl_prompts, layer=12)
        ih.evaluate(model, zero_shot, interventions=[ih.inject_task_vector(model, v, 12)])

    Returns:
        A :class:`TaskVector`.
    """
    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"inject_task_vector needs a HookedTransformer as model, got {type(model).__name__}."
        )
    if not isinstance(vector, Tensor):
        try:
            vector = torch.as_tensor(vector, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"vector must be a 1-D tensor of d_model numbers, got {type(vector).__name__}."
            ) from None
    vector = vector.detach().float().cpu()
    if vector.ndim != 1 or vector.shape[0] != model.cfg.d_model:
        raise ValueError(
            f"vector must have shape [d_model] = [{model.cfg.d_model}], got "
            f"{tuple(vector.shape)}; task_vector(model, prompts, layer) makes one."
        )
    if not torch.isfinite(vector).all():
        raise ValueError("vector contains NaN or inf values.")
    if mode not in TASK_VECTOR_MODES:
        raise ValueError(f"Unknown task-vector mode {mode!r}; choose one of {TASK_VECTOR_MODES}.")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number, got {scale!r}.")
    if not bool(torch.isfinite(torch.tensor(float(scale)))):
        raise ValueError(f"scale must be finite, got {scale!r}.")
    state_injection_hook(layer, model.cfg.n_layers)
    return TaskVector(
        model=model,
        vector=vector,
        layer=int(layer),
        mode=mode,
        scale=float(scale),
        positions=check_positions(positions),
    )


# --------------------------------------------------------------------------- specs
#
# A spec is a small JSON-able dict written by ``iv.to_spec()``. Heads are written as
# ``[[layer, head], ...]`` pairs (what heads_to_mask takes; no string to parse back),
# positions as "query" / "all" / a list of ints. Tensors are written as a record
# ``{"shape", "sha256", ["values"]}``: the values inline when small (at most ``max_inline``
# numbers, exact after a JSON round trip), else only the fingerprint, and the tensor is
# passed to from_spec (``tensors=``) or recomputed from recorded prompts (``prompts=``).

_SPEC_FIELDS = {
    "ablate": {
        "kind",
        "model",
        "site",
        "heads",
        "layers",
        "mode",
        "positions",
        "seed",
        "means",
        "reference",
    },
    "patch": {"kind", "model", "site", "heads", "layers", "positions", "source"},
    "steer": {"kind", "model", "site", "layer", "head", "alpha", "positions", "vector"},
    "task_vector": {"kind", "model", "layer", "mode", "scale", "positions", "vector"},
    "compose": {"kind", "parts"},
    "opaque": {"kind", "description"},
}


def _positions_spec(positions: Positions) -> str | list[int]:
    return positions if isinstance(positions, str) else [int(p) for p in positions]


def _fingerprint(t: Tensor) -> str:
    """First 16 hex digits of the SHA-256 of the tensor's float32 values."""
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _tensor_record(t: Tensor, max_inline: int) -> dict:
    rec: dict[str, Any] = {"shape": list(t.shape), "sha256": _fingerprint(t)}
    if t.numel() <= max_inline:
        rec["values"] = t.detach().to("cpu", torch.float32).tolist()
    return rec


def _prompts_record(info: PromptInfo | None, batch_size: int | None) -> dict:
    return {"prompts": info.to_dict() if info is not None else None, "batch_size": batch_size}


def _means_record(values: Tensor, means_from: ActivationMeans | None, max_inline: int) -> dict:
    rec: dict[str, Any] = {}
    if means_from is not None:
        rec.update(
            site=means_from.site,
            positions=_positions_spec(means_from.positions),
            prompts=means_from.prompts.to_dict() if means_from.prompts is not None else None,
            batch_size=means_from.batch_size,
            interventions=list(means_from.interventions),
        )
    rec.update(_tensor_record(values, max_inline))
    return rec


def _spec_of(iv: Any, max_inline: int = MAX_INLINE) -> dict:
    if isinstance(iv, Intervention):
        return iv.to_spec(max_inline=max_inline)
    fn = getattr(iv, "to_spec", None)
    return fn() if callable(fn) else {"kind": "opaque", "description": describe(iv)}


def _bad(kind: str, name: str, message: str) -> ValueError:
    return ValueError(f"Bad {kind!r} spec field {name!r}: {message}")


def _required(spec: Mapping, kind: str, name: str, where: str = "") -> Any:
    if name not in spec:
        raise _bad(kind, where + name, "missing; specs are written by iv.to_spec().")
    return spec[name]


def _spec_int(
    spec: Mapping, kind: str, name: str, *, optional: bool = False, where: str = ""
) -> int | None:
    value = spec.get(name) if optional else _required(spec, kind, name, where)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(kind, where + name, f"must be a whole number, got {value!r}.")
    return value


def _spec_number(spec: Mapping, kind: str, name: str) -> float:
    value = _required(spec, kind, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _bad(kind, name, f"must be a finite number, got {value!r}.")
    return float(value)


def _spec_range(kind: str, name: str, value: int, stop: int) -> None:
    if not 0 <= value < stop:
        raise _bad(kind, name, f"{value} is out of range for this model (0..{stop - 1}).")


def _spec_choice(spec: Mapping, kind: str, name: str, choices: Sequence[str]) -> str:
    value = _required(spec, kind, name)
    if value not in choices:
        raise _bad(kind, name, f"{value!r} is not one of {list(choices)}.")
    return value


def _spec_positions(spec: Mapping, kind: str, where: str = "") -> Positions:
    value = _required(spec, kind, "positions", where)
    if isinstance(value, (list, tuple)) and not value:
        raise _bad(
            kind, where + "positions", "an empty list; give 'query', 'all' or a list of ints."
        )
    try:
        return check_positions(value)
    except (TypeError, ValueError) as err:
        raise _bad(kind, where + "positions", str(err)) from None


def _spec_selection(model: HookedTransformer, spec: Mapping, kind: str, site: str) -> Tensor:
    """The ``[L, H]`` head mask (site z, field "heads") or ``[L]`` layer mask ("layers")."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    name = "heads" if site == "z" else "layers"
    other = "layers" if site == "z" else "heads"
    if other in spec:
        raise _bad(kind, other, f"site {site!r} selects {name}, not {other}.")
    value = _required(spec, kind, name)
    if not isinstance(value, list):
        raise _bad(kind, name, f"must be a list, got {value!r}.")
    try:
        if site == "z":
            if any(not isinstance(p, (list, tuple)) for p in value):
                raise TypeError(f"heads are [layer, head] pairs, got {value!r}.")
            return heads_to_mask([tuple(p) for p in value], L, H)
        return layers_to_mask(value, L)
    except (TypeError, ValueError) as err:
        raise _bad(kind, name, str(err)) from None


def _candidates(values: Any, what: type | tuple[type, ...]) -> list:
    if values is None:
        return []
    if isinstance(values, what):
        return [values]
    return list(values)


def _find_prompts(kind: str, name: str, info: Any, prompts: Any) -> PromptSet:
    """The PromptSet among ``prompts`` whose ``info()`` is the recorded ``info``."""
    if info is None:
        raise _bad(kind, name, "the prompts were not recorded, so they cannot be found again.")
    try:
        want = Settings.from_dict(info)
    except (TypeError, ValueError) as err:
        raise _bad(kind, name, f"not a PromptInfo ({err}).") from None
    given = _candidates(prompts, PromptSet)
    for p in given:
        if isinstance(p, PromptSet) and p.info() == want:
            return p
    raise _bad(
        kind,
        name,
        f"needs the prompts {want}; pass that PromptSet in prompts= (given: "
        f"{[p.info() for p in given if isinstance(p, PromptSet)] or 'none'}).",
    )


def _tensor_from(kind: str, name: str, rec: Any, tensors: Any) -> Tensor | None:
    """The tensor of a record: its inline values, else the one of ``tensors`` with its
    fingerprint, else ``None``."""
    if (
        not isinstance(rec, Mapping)
        or not isinstance(rec.get("shape"), list)
        or not isinstance(rec.get("sha256"), str)
    ):
        raise _bad(
            kind,
            name,
            f"must be a tensor record {{'shape', 'sha256', ['values']}}, got {str(rec)[:80]!r}.",
        )
    if "values" in rec:
        try:
            t = torch.tensor(rec["values"], dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise _bad(kind, f"{name}.values", "must be a (nested) list of numbers.") from None
        if list(t.shape) != rec["shape"] or _fingerprint(t) != rec["sha256"]:
            raise _bad(
                kind,
                f"{name}.values",
                "does not match the recorded shape and sha256 fingerprint (edited or truncated?).",
            )
        return t
    for cand in _candidates(tensors, (Tensor, ActivationMeans)):
        t = cand.values if isinstance(cand, ActivationMeans) else cand
        if (
            isinstance(t, Tensor)
            and list(t.shape) == rec["shape"]
            and _fingerprint(t) == rec["sha256"]
        ):
            return t.detach().to("cpu", torch.float32)
    return None


def _spec_vector(kind: str, spec: Mapping, tensors: Any) -> Tensor:
    vector = _tensor_from(kind, "vector", _required(spec, kind, "vector"), tensors)
    if vector is None:
        rec = spec["vector"]
        raise _bad(
            kind,
            "vector",
            f"the {rec['shape']} vector is not inlined; pass it in "
            f"tensors= (fingerprint {rec['sha256']}).",
        )
    return vector


def _spec_means(
    model: HookedTransformer,
    spec: Mapping,
    site: str,
    *,
    prompts: Any,
    tensors: Any,
    device: Any,
    progress: bool,
) -> ActivationMeans | Tensor:
    rec = _required(spec, "ablate", "means")
    values = _tensor_from("ablate", "means", rec, tensors)
    made = rec.get("prompts") is not None
    if made:
        if rec.get("site") != site:
            raise _bad(
                "ablate", "means.site", f"{rec.get('site')!r}; this ablation is on {site!r}."
            )
        positions = _spec_positions(rec, "ablate", where="means.")
        batch_size = _spec_int(rec, "ablate", "batch_size", optional=True, where="means.")
    if values is None:
        if not made or rec.get("interventions"):
            why = "were made under interventions" if made else "were given as a bare tensor"
            raise _bad(
                "ablate",
                "means",
                f"the means {why} and are not inlined; pass them in "
                f"tensors= (fingerprint {rec['sha256']}).",
            )
        reference = _find_prompts("ablate", "means.prompts", rec["prompts"], prompts)
        got = activation_means(
            model,
            reference,
            site,
            positions=positions,
            batch_size=batch_size if batch_size is not None else 16,
            device=device,
            progress=progress,
        )
        if _fingerprint(got.values) != rec["sha256"]:
            log.warning(
                "The recomputed mean activations differ from the recorded ones "
                "(another device or dtype?); the replay is not bit-exact."
            )
        return got
    if not made:
        return values
    return ActivationMeans(
        values=values,
        site=site,
        positions=positions,
        prompts=Settings.from_dict(rec["prompts"]),
        batch_size=batch_size,
        interventions=tuple(rec.get("interventions") or ()),
    )


def from_spec(
    model: HookedTransformer,
    spec: Mapping,
    *,
    prompts: PromptSet | Sequence[PromptSet] = (),
    tensors: Tensor | ActivationMeans | Sequence[Tensor | ActivationMeans] = (),
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Intervention:
    """Rebuild, for ``model``, the intervention that wrote ``spec`` (``iv.to_spec()``).

    What must be passed, by kind (prompt sets are matched to the spec by their ``info()``,
    tensors by their fingerprint, so order does not matter and one ``prompts=`` /
    ``tensors=`` list serves every part of a ``compose``):

    * ``ablate``, mode ``"zero"``: nothing.
    * ``ablate``, mode ``"mean"``: nothing when the means are inlined (at most
      :data:`~icl_heads.hooks.MAX_INLINE` numbers); else the means themselves in
      ``tensors=`` (an :class:`ActivationMeans` or tensor) or the reference ``PromptSet``
      they were averaged over in ``prompts=`` (they are recomputed with the recorded
      positions and batch size: bit-exact on the same device and dtype, a warning is logged
      otherwise). Means given as a bare tensor, or computed under interventions, must be
      passed in ``tensors=``.
    * ``ablate``, mode ``"resample"``: the reference ``PromptSet`` in ``prompts=`` (donor
      activations are collected again with the recorded batch size; donors follow the
      recorded seed).
    * ``patch``: the source ``PromptSet`` in ``prompts=``.
    * ``steer``, ``task_vector``: nothing when the vector is inlined; else the vector in
      ``tensors=``.
    * ``compose``: what its parts need.

    Example::

        spec = json.loads(json.dumps(iv.to_spec()))
        again = from_spec(model, spec, prompts=[reference])
        ih.evaluate(model, prompts, interventions=[again])    # the same numbers as iv

    Raises:
        ValueError: a bad spec (naming the bad field), a spec written for another model, or
            a missing prompt set / tensor (naming what to pass).
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise ValueError(
            f"Bad spec field 'kind': a spec is a dict with a 'kind' (written by "
            f"iv.to_spec()), got {str(spec)[:80]!r}."
        )
    kind = spec["kind"]
    if kind not in _SPEC_FIELDS:
        raise ValueError(
            f"Bad spec field 'kind': unknown kind {kind!r}; known: {sorted(_SPEC_FIELDS)}."
        )
    unknown = sorted(set(spec) - _SPEC_FIELDS[kind])
    if unknown:
        raise _bad(
            kind,
            unknown[0],
            f"not a field of {kind!r} specs (fields: {sorted(_SPEC_FIELDS[kind])}).",
        )
    if spec.get("model") is not None and spec["model"] != model_name(model):
        raise _bad(
            kind,
            "model",
            f"written for model {spec['model']!r}; this model is {model_name(model)!r}.",
        )
    common = dict(prompts=prompts, tensors=tensors, device=device, progress=progress)
    if kind == "opaque":
        raise _bad(
            kind,
            "kind",
            f"{spec.get('description', 'this intervention')!r} was "
            "written from an intervention that cannot be rebuilt (only ablate, patch, "
            "steer, task_vector and compose can).",
        )
    if kind == "compose":
        parts = _required(spec, kind, "parts")
        if not isinstance(parts, list) or not parts:
            raise _bad(kind, "parts", f"must be a non-empty list of specs, got {parts!r}.")
        return compose(*(from_spec(model, part, **common) for part in parts))
    if kind == "ablate":
        return _ablation_from_spec(model, spec, **common)
    if kind == "patch":
        site = _spec_choice(spec, kind, "site", list(SITES))
        mask = _spec_selection(model, spec, kind, site)
        positions = _spec_positions(spec, kind)
        rec = _required(spec, kind, "source")
        if not isinstance(rec, Mapping):
            raise _bad(kind, "source", f"must be a dict {{'prompts', 'batch_size'}}, got {rec!r}.")
        source = _find_prompts(kind, "source", rec.get("prompts"), prompts)
        batch_size = _spec_int(rec, kind, "batch_size", optional=True, where="source.")
        selection = {"heads": mask} if site == "z" else {"layers": mask}
        return patch(
            model,
            source,
            site=site,
            positions=positions,
            device=device,
            batch_size=batch_size if batch_size is not None else 16,
            progress=progress,
            **selection,
        )
    if kind == "steer":
        site = _spec_choice(spec, kind, "site", list(SITES))
        layer = _spec_int(spec, kind, "layer")
        head = _spec_int(spec, kind, "head", optional=True)
        alpha = _spec_number(spec, kind, "alpha")
        positions = _spec_positions(spec, kind)
        vector = _spec_vector(kind, spec, tensors)
        if (site == "z") != (head is not None):
            raise _bad(
                kind,
                "head",
                f"{head!r}; site 'z' steers one head (give its index), other sites none.",
            )
        _spec_range(kind, "layer", layer, model.cfg.n_layers)
        if head is not None:
            _spec_range(kind, "head", head, model.cfg.n_heads)
        try:
            if site == "z":
                return steer(model, vector, head=(layer, head), alpha=alpha, positions=positions)
            return steer(model, vector, layer, alpha=alpha, positions=positions, site=site)
        except (TypeError, ValueError) as err:
            raise _bad(kind, "vector", str(err)) from None
    # task_vector
    layer = _spec_int(spec, kind, "layer")
    mode = _spec_choice(spec, kind, "mode", TASK_VECTOR_MODES)
    scale = _spec_number(spec, kind, "scale")
    positions = _spec_positions(spec, kind)
    vector = _spec_vector(kind, spec, tensors)
    _spec_range(kind, "layer", layer, model.cfg.n_layers + 1)  # states 0..n_layers
    try:
        return inject_task_vector(model, vector, layer, mode=mode, scale=scale, positions=positions)
    except (TypeError, ValueError) as err:
        raise _bad(kind, "vector", str(err)) from None


def _ablation_from_spec(
    model: HookedTransformer,
    spec: Mapping,
    *,
    prompts: Any,
    tensors: Any,
    device: Any,
    progress: bool,
) -> Ablation:
    kind = "ablate"
    site = _spec_choice(spec, kind, "site", list(SITES))
    mask = _spec_selection(model, spec, kind, site)
    mode = _spec_choice(spec, kind, "mode", ABLATION_MODES)
    positions = _spec_positions(spec, kind)
    seed = _spec_int(spec, kind, "seed")
    means = reference = None
    batch_size = 16
    if mode == "mean":
        means = _spec_means(
            model, spec, site, prompts=prompts, tensors=tensors, device=device, progress=progress
        )
    elif mode == "resample":
        rec = _required(spec, kind, "reference")
        if not isinstance(rec, Mapping):
            raise _bad(
                kind, "reference", f"must be a dict {{'prompts', 'batch_size'}}, got {rec!r}."
            )
        reference = _find_prompts(kind, "reference", rec.get("prompts"), prompts)
        recorded = _spec_int(rec, kind, "batch_size", optional=True, where="reference.")
        batch_size = recorded if recorded is not None else 16
    for name, needed in (("means", "mean"), ("reference", "resample")):
        if name in spec and mode != needed:
            raise _bad(
                kind, name, f"only mode {needed!r} has {name}; this spec's mode is {mode!r}."
            )
    kwargs = dict(
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    if site == "z":
        return ablate(model, mask, mode, positions, **kwargs)
    return ablate_layers(model, mask, mode, positions, site=site, **kwargs)


__all__ = [
    "ABLATION_MODES",
    "TASK_VECTOR_MODES",
    "Replacement",
    "Ablation",
    "ablate",
    "ablate_layers",
    "Patch",
    "patch",
    "Steer",
    "steer",
    "Compose",
    "compose",
    "RowEdit",
    "TaskVector",
    "inject_task_vector",
    "from_spec",
]


# --------------------------------------------------------------------------- transitional
# Transitional re-exports, removed at integration: these names moved to icl_heads.hooks
# (building blocks) and icl_heads.activations (anything that runs the model); modules still
# importing them from here keep working until then.
__all__ += [
    "HookList",
    "Positions",
    "SITES",
    "LAYER_SITES",
    "hook_name",
    "check_positions",
    "position_mask",
    "layers_to_mask",
    "check_interventions",
    "Intervention",
    "Capture",
    "applied",
    "state_injection_hook",
    "ActivationMeans",
    "activation_means",
]
