"""Interventions on a model's forward pass (ablation, patching, steering) and activation
capture. Every hook function of the package is built here; other modules ask for one.

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

Positions (``positions=``): ``"query"`` is the last token of every row (prompts are
left-padded, so the query is always last), ``"all"`` every position, or an int / list of
ints (negative counts from the end), the same for every row.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .heads import Head, HeadsLike, heads_to_mask, mask_to_heads
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo

HookList = list[tuple[Union[str, Callable[[str], bool]], Callable]]  # noqa: UP007
Positions = Union[Literal["all", "query"], int, Sequence[int]]  # noqa: UP007

#: Where an intervention can act: hook point templates by site name.
SITES: dict[str, str] = {
    "z": "blocks.{layer}.attn.hook_z",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
#: The layer-level sites (everything but the heads' ``z``).
LAYER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
ABLATION_MODES = ("zero", "mean", "resample")
_PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")


def hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of ``site`` (a key of :data:`SITES`) in ``layer``."""
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}; choose one of {sorted(SITES)}.")
    return SITES[site].format(layer=layer)


# --------------------------------------------------------------------------- validation


def check_positions(positions: Positions) -> Positions:
    """Validate a position selection (``"query"``, ``"all"``, an int or a list of ints)."""
    if isinstance(positions, str):
        if positions not in ("query", "all"):
            raise ValueError(f"positions must be 'query', 'all', an int or a list of ints; got "
                             f"{positions!r}.")
        return positions
    if isinstance(positions, Tensor):
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise TypeError(f"positions must be whole numbers; got a {positions.dtype} tensor.")
        positions = positions.flatten().tolist()
    if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
        return (int(positions),)
    if not isinstance(positions, Sequence) or any(
            isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in positions):
        raise TypeError(f"positions must be 'query', 'all', an int or a list of ints; got "
                        f"{positions!r}.")
    out = tuple(int(p) for p in positions)
    if not out:
        raise ValueError("positions is an empty list; give at least one position.")
    return out


def position_mask(positions: Positions, length: int, device=None) -> Bool[Tensor, " pos"]:
    """Boolean ``[length]`` mask of the selected positions in a sequence of ``length``."""
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    if positions == "all":
        mask[:] = True
    elif positions == "query":
        mask[-1] = True
    else:
        for p in positions:
            if not -length <= p < length:
                raise ValueError(f"Position {p} is out of range for a sequence of {length} "
                                 f"tokens (use 0..{length - 1} or -{length}..-1).")
            mask[p] = True
    return mask


def layers_to_mask(layers: int | Sequence[int] | Tensor | None,
                   n_layers: int) -> Bool[Tensor, " layer"]:
    """A layer selection (``None`` = every layer, an int, a list of ints or a boolean
    ``[n_layers]`` mask) as a boolean mask; clear errors for anything else."""
    if layers is None:
        return torch.ones(n_layers, dtype=torch.bool)
    if isinstance(layers, Tensor) and layers.dtype == torch.bool:
        if tuple(layers.shape) != (n_layers,):
            raise ValueError(f"Layer mask has shape {tuple(layers.shape)}; this model needs "
                             f"[n_layers] = [{n_layers}].")
        return layers.cpu().clone()
    if isinstance(layers, Tensor):
        if layers.dtype.is_floating_point:
            raise TypeError(f"layers must be whole numbers; got a {layers.dtype} tensor.")
        layers = layers.flatten().tolist()
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be an int, a list of ints or None (every layer); got "
                        f"{layers!r}.")
    mask = torch.zeros(n_layers, dtype=torch.bool)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layers must be whole numbers; got {layer!r} in {layers!r}.")
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"Layer {layer} is out of range: this model has {n_layers} layers "
                             f"(0..{n_layers - 1}).")
        mask[int(layer)] = True
    return mask


def check_interventions(interventions, model: HookedTransformer | None = None) -> tuple:
    """``interventions`` as a tuple of objects with ``fwd_hooks`` (a single one is accepted),
    each built for ``model`` when given."""
    if interventions is None:
        return ()
    if hasattr(interventions, "fwd_hooks"):
        interventions = (interventions,)
    if isinstance(interventions, (str, bytes)) or not isinstance(interventions, Sequence):
        raise TypeError(f"interventions must be a list of interventions (ablate, patch, steer, "
                        f"...), got {type(interventions).__name__}.")
    for iv in interventions:
        if not hasattr(iv, "fwd_hooks"):
            raise TypeError(f"{iv!r} is not an intervention (it has no fwd_hooks); build one "
                            "with ih.ablate, ih.patch, ih.steer or ih.compose.")
        owner = getattr(iv, "model", None)
        if owner is None:
            owner = getattr(iv, "_model", None)
        if model is not None and owner is not None and owner is not model:
            raise ValueError(f"The intervention {_describe(iv)} was built for another model; "
                             "build it with the model you run.")
    return tuple(interventions)


def _describe(iv) -> str:
    describe = getattr(iv, "describe", None)
    return describe() if callable(describe) else type(iv).__name__


def _align_end(act: Tensor, length: int) -> Tensor:
    """Align ``[batch, pos, ...]`` to ``length`` positions at the end (left-pad with zeros
    or drop leading positions): prompts are left-padded, so ends correspond."""
    have = act.shape[1]
    if have == length:
        return act
    if have > length:
        return act[:, have - length:]
    pad = act.new_zeros((act.shape[0], length - have, *act.shape[2:]))
    return torch.cat([pad, act], dim=1)


# --------------------------------------------------------------------------- base class


@dataclass(frozen=True, eq=False)
class Intervention:
    """Base of every intervention: ``fwd_hooks(batch, index)`` for the batching routine,
    and ``with iv: ...`` to add its hooks to the model for the duration of the block."""

    _contexts: list = field(default_factory=list, init=False, repr=False, compare=False)

    #: Whether the hook values depend on which prompts are run (then a bare ``with`` block,
    #: which cannot know them, is refused).
    per_prompt = False

    def fwd_hooks(self, batch: PromptSet | None, index: Tensor | None) -> HookList:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    @property
    def _model(self) -> HookedTransformer:
        return self.model  # type: ignore[attr-defined]

    def __enter__(self):
        if self.per_prompt:
            raise TypeError(
                f"{self.describe()} pairs each prompt with its own source/donor prompt, which "
                "a bare `with` block cannot see once prompts are batched. Pass it to the "
                "analysis instead: ih.evaluate(model, prompts, interventions=[iv]) (every "
                "analysis takes interventions=[...]).")
        ctx = self._model.hooks(fwd_hooks=self.fwd_hooks(None, None))
        ctx.__enter__()
        self._contexts.append(ctx)
        return self

    def __exit__(self, *exc):
        return self._contexts.pop().__exit__(*exc)


# --------------------------------------------------------------------------- capture


@dataclass(frozen=True, eq=False)
class Capture(Intervention):
    """Record activations (no change to the run) into ``store``: hook name -> tensor.

    Args:
        names: which hook points (a names filter).
        positions: ``"query"`` keeps the last position (for attention patterns, the query
            row), ``"all"`` every position.
        attention_mask: ``[batch, pos]``; with ``positions="all"`` padding rows are zeroed so
            they can never leak into a mean.
        reduce: ``reduce(act, hook_name) -> Tensor`` applied inside the hook (e.g. a detector
            reducing a pattern to per-head scores), so only its result is kept.
        keep_grad: keep the tensors in the autograd graph (attribution patching); otherwise
            they are detached copies.
    """

    names: Callable[[str], bool] = field(default=lambda name: False)
    positions: Literal["query", "all"] = "all"
    attention_mask: Tensor | None = field(default=None, repr=False)
    reduce: Callable[[Tensor, str], Tensor] | None = field(default=None, repr=False)
    keep_grad: bool = False
    store: dict = field(default_factory=dict, repr=False)

    def fwd_hooks(self, batch=None, index=None) -> HookList:
        def hook(act: Tensor, hook) -> None:
            act = self._at_positions(hook.name, act)
            if self.reduce is not None:
                act = self.reduce(act, hook.name)
            elif not self.keep_grad:
                act = act.detach().clone()
            self.store[hook.name] = act

        return [(self.names, hook)]

    def _at_positions(self, name: str, act: Tensor) -> Tensor:
        pattern = name.endswith(_PATTERN_HOOKS)  # [batch, head, query, key]
        if self.positions == "query":
            return act[:, :, -1] if pattern else act[:, -1]
        mask = self.attention_mask
        if mask is None:
            return act
        if pattern:
            return act * mask[:, None, :, None].to(act.dtype)
        if act.shape[:2] == mask.shape:
            return act * mask.reshape(*mask.shape, *([1] * (act.ndim - 2))).to(act.dtype)
        return act

    def describe(self) -> str:
        return "capture"


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

    def values(self, layer: int, batch: PromptSet | None, index: Tensor | None,
               length: int, n_rows: int) -> Tensor:
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
            raise ValueError(f"Mask has shape {tuple(mask.shape)}, expected "
                             f"{tuple(self.mask.shape)}.")
        return replace(self, mask=mask.bool().cpu())

    def _where(self) -> str:
        if self.site == "z":
            heads = mask_to_heads(self.mask)
            shown = ", ".join(str(h) for h in heads[:8]) + (", ..." if len(heads) > 8 else "")
            return f"heads=[{shown}]"
        return f"site={self.site}, layers={self.layers}"


@dataclass(frozen=True)
class ActivationMeans:
    """Mean activation of a site in every layer over a reference prompt set (padding
    excluded), computed once by :func:`activation_means` and reusable as ``means=``.

    Attributes:
        values: ``[layer, head, d_head]`` for site ``"z"``, else ``[layer, d_model]``.
        site: the site (``"z"``, ``"attn_out"``, ...).
        positions: ``"query"`` (mean at the query position) or ``"all"`` (every real token).
        prompts: the reference set it was averaged over.
    """

    values: Float[Tensor, "layer ..."]
    site: str
    positions: str
    prompts: PromptInfo | None = None

    def outputs(self, model: HookedTransformer) -> Float[Tensor, "layer head d_model"]:
        """Each head's mean output in the residual stream, ``z @ W_O`` (``b_O`` excluded)."""
        if self.site != "z":
            raise ValueError(f"outputs() is for head means (site 'z'); these are {self.site!r}.")
        return torch.einsum("lhd,lhdm->lhm", self.values.to(model.W_O.device, model.W_O.dtype),
                            model.W_O.detach())


def activation_means(
    model: HookedTransformer,
    prompts: PromptSet,
    site: str = "z",
    *,
    positions: Literal["query", "all"] | tuple[str, ...] = "query",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> ActivationMeans | tuple[ActivationMeans, ...]:
    """Mean activation of ``site`` in every layer over ``prompts``, for mean ablation.

    ``positions="query"``: ``mean_i act_i[N_i]`` over prompts ``i`` at their query position;
    ``positions="all"``: the mean over every real (non-pad) token of every prompt, each
    token weighted equally. A tuple such as ``("all", "query")`` gives one
    :class:`ActivationMeans` per entry, in that order, from one forward pass.

    Example::

        means = ih.activation_means(model, prompts)            # heads' z at the query
        ih.evaluate(model, prompts, interventions=[ih.ablate(model, heads, "mean", means=means)])
        every, query = ih.activation_means(model, prompts, positions=("all", "query"))

    Returns:
        :class:`ActivationMeans` (``values``: ``[layer, head, d_head]`` for ``"z"``, else
        ``[layer, d_model]``; float32, CPU), or a tuple of them for a tuple ``positions``.
    """
    from .activations import iter_batches

    check_prompt_set(prompts, "reference", model=model)
    wanted = positions if isinstance(positions, tuple) else (positions,)
    if not wanted or any(p not in ("query", "all") for p in wanted):
        raise ValueError(f"positions must be 'query' or 'all' (or a tuple of them) for means, "
                         f"got {positions!r}.")
    L = model.cfg.n_layers
    names = [hook_name(site, layer) for layer in range(L)]
    capture = "all" if "all" in wanted else "query"
    totals: dict[str, Tensor] = {}
    counts = dict.fromkeys(wanted, 0.0)
    for batch in iter_batches(model, prompts, names, positions=capture, batch_size=batch_size,
                              device=device, interventions=interventions, return_logits=False,
                              progress=progress, desc=f"mean {site}"):
        acts = torch.stack([batch.activations[n] for n in names], dim=1).double()
        for mode in dict.fromkeys(wanted):
            if mode == "query":  # [b, L, ...] (the query is the last position)
                at = acts if capture == "query" else acts[:, :, -1]
                s, c = at.sum(0), at.shape[0]
            else:  # [b, L, T, ...]
                w = batch.prompts.attention_mask.to(acts.device).double()
                w = w.reshape(w.shape[0], 1, w.shape[1], *([1] * (acts.ndim - 3)))
                s, c = (acts * w).sum((0, 2)), float(w.sum())
            totals[mode] = s if mode not in totals else totals[mode] + s
            counts[mode] += c
    out = tuple(ActivationMeans(values=(totals[m] / counts[m]).float().cpu(), site=site,
                                positions=m, prompts=prompts.info()) for m in wanted)
    return out if isinstance(positions, tuple) else out[0]


def _donor_rows(ref_texts: Sequence[str], index: Tensor, texts: Sequence[str] | None,
                seed: int) -> Tensor:
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
            raise ValueError("Resample ablation needs a reference set with at least one prompt "
                             "that differs from each ablated prompt; give reference= a larger "
                             "PromptSet.")
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
    """

    mode: str = "zero"
    means: Tensor | None = field(default=None, repr=False)
    donor_acts: dict | None = field(default=None, repr=False)
    donor_texts: tuple = field(default=(), repr=False)
    seed: int = 0

    @property
    def per_prompt(self) -> bool:  # type: ignore[override]
        return self.mode == "resample"

    def donors(self, batch: PromptSet | None, index: Tensor, n_rows: int) -> Tensor:
        """Donor prompt (row of the reference set) of every row of the batch."""
        return _donor_rows(self.donor_texts, index, batch.texts if batch is not None else None,
                           self.seed)

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


def _collect_sites(model, prompts, site, layers, positions, batch_size, device, progress):
    """Activations of ``site`` at ``layers`` over ``prompts`` (CPU): only the query position
    when ``positions == "query"``, else every position (left-padded)."""
    from .activations import collect

    names = [hook_name(site, layer) for layer in layers]
    pos = "query" if positions == "query" else "all"
    got = collect(model, prompts, names, positions=pos, batch_size=batch_size, device=device,
                  return_logits=False, progress=progress, desc=f"collect {site}").activations
    out = {}
    for layer, name in zip(layers, names, strict=True):
        act = got[name].cpu()
        out[layer] = act[:, None] if pos == "query" else act
    return out


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
      or a ``[L, H, d_head]`` tensor), or computed here from ``reference`` (at the query
      position if ``positions == "query"``, else over all real tokens);
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
    return _make_ablation(model, "z", mask, mode, positions, means=means, reference=reference,
                          seed=seed, batch_size=batch_size, device=device, progress=progress)


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
        raise ValueError("For heads use ablate(model, heads, ...); ablate_layers takes a layer "
                         f"site, one of {LAYER_SITES}.")
    if site not in LAYER_SITES:
        raise ValueError(f"Unknown layer site {site!r}; choose one of {LAYER_SITES}.")
    mask = layers_to_mask(layers, model.cfg.n_layers)
    return _make_ablation(model, site, mask, mode, positions, means=means, reference=reference,
                          seed=seed, batch_size=batch_size, device=device, progress=progress)


def _make_ablation(model, site, mask, mode, positions, *, means, reference, seed, batch_size,
                   device, progress) -> Ablation:
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    positions = check_positions(positions)
    kwargs = dict(model=model, site=site, mask=mask, positions=positions, mode=mode,
                  seed=int(seed))
    if mode == "mean":
        if means is None:
            if reference is None:
                raise ValueError("Mean ablation needs the mean activations: pass means= (e.g. "
                                 "activation_means(model, prompts)) or reference= (a PromptSet).")
            pos = "query" if positions == "query" else "all"
            means = activation_means(model, reference, site, positions=pos,
                                     batch_size=batch_size, device=device, progress=progress)
        kwargs["means"] = _check_means(model, means, site)
    elif mode == "resample":
        if reference is None:
            raise ValueError("Resample ablation draws activations from other prompts: pass "
                             "reference= (a PromptSet, usually the prompts being run).")
        check_prompt_set(reference, "reference", model=model)
        layers = (mask.any(-1) if mask.ndim == 2 else mask).nonzero().flatten().tolist()
        kwargs["donor_acts"] = _collect_sites(model, reference, site, layers, positions,
                                              batch_size, device, progress)
        kwargs["donor_texts"] = tuple(reference.texts)
    return Ablation(**kwargs)


def _check_means(model: HookedTransformer, means, site: str) -> Tensor:
    if isinstance(means, ActivationMeans):
        if means.site != site:
            raise ValueError(f"These means are of site {means.site!r}; this ablation is on "
                             f"{site!r}. Compute activation_means(model, prompts, {site!r}).")
        means = means.values
    if not isinstance(means, Tensor):
        raise TypeError(f"means must be ActivationMeans (activation_means(...)) or a tensor, "
                        f"got {type(means).__name__}.")
    want = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head) if site == "z" \
        else (model.cfg.n_layers, model.cfg.d_model)
    if tuple(means.shape) != want:
        raise ValueError(f"means has shape {tuple(means.shape)}; site {site!r} needs "
                         f"{list(want)}.")
    return means.detach().float().cpu()


@dataclass(frozen=True, eq=False)
class Patch(Replacement):
    """Activation patching: the selected activation of the target run is replaced by its
    value in the source run (target prompt ``i`` takes source prompt ``i``).

    Made by :func:`patch`. ``source_acts``: per layer ``[n_src, pos, (H,) d]`` (left-padded;
    ``pos`` = 1 when only the query is stored); ``source_lengths``: ``[n_src]`` token counts.
    """

    source_acts: dict = field(default_factory=dict, repr=False)
    source_lengths: Tensor | None = field(default=None, repr=False)
    source: PromptInfo | None = None
    per_prompt = True

    def source_rows(self, batch: PromptSet | None, index: Tensor, n_rows: int) -> Tensor:
        n_src = len(self.source_lengths)
        if int(index.max()) >= n_src:
            raise ValueError(f"Target prompt {int(index.max())} has no source prompt (the "
                             f"source has {n_src}); source and target must align row by row.")
        if self.positions != "query" and batch is not None:
            if not torch.equal(self.source_lengths[index.cpu()].cpu(), batch.lengths.cpu()):
                raise ValueError("Source and target prompts differ in length, so their "
                                 "positions do not correspond; patch only positions='query' or "
                                 "use aligned prompts of equal length (e.g. shift_demo_labels).")
        return index.cpu()

    def values(self, layer, batch, index, length, n_rows):
        acts = self.source_acts[layer][self.source_rows(batch, index, n_rows)]
        # query-only storage ([n, 1, ...]) broadcasts: only the last position is replaced
        return acts if self.positions == "query" else _align_end(acts, length)

    def describe(self) -> str:
        src = f"{self.source.task}/{self.source.perturbation}" if self.source else "source"
        return f"patch({self._where()}, from={src}, positions={self.positions})"


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
    acts = _collect_sites(model, source, site, sel, positions, batch_size, device, progress)
    return Patch(model=model, site=site, mask=mask, positions=positions, source_acts=acts,
                 source_lengths=source.lengths.cpu(), source=source.info())


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
                sel = pos[None, :, None, None] & (
                    torch.arange(act.shape[2], device=act.device) == self.head)[None, None, :, None]
                return act + sel * add
            return act + pos[None, :, None] * add

        return [(hook_name(self.site, self.layer), hook)]

    def describe(self) -> str:
        where = f"head=L{self.layer}H{self.head}" if self.head is not None else \
            f"site={self.site}, layer={self.layer}"
        return (f"steer({where}, alpha={self.alpha:g}, |v|={float(self.vector.norm()):.3g}, "
                f"positions={self.positions})")


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
            raise TypeError(f"vector must be a 1-D tensor of numbers, got "
                            f"{type(vector).__name__}.") from None
    vector = vector.detach().float()
    if vector.ndim != 1:
        raise ValueError(f"vector must be 1-D ([d_model] or, with a head, [d_head]); got shape "
                         f"{tuple(vector.shape)}.")
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
            raise ValueError(f"layer={layer} disagrees with head {Head(hl, head_index)}; omit "
                             "layer when giving a head.")
        layer = hl
        if vector.shape[0] == model.cfg.d_head and vector.shape[0] != model.cfg.d_model:
            site = "z"
        elif vector.shape[0] == model.cfg.d_model:
            site = "attn_out"
            head_index = None
        else:
            raise ValueError(f"A head's steering vector must have d_model={model.cfg.d_model} "
                             f"or d_head={model.cfg.d_head} entries, got {vector.shape[0]}.")
    else:
        if layer is None:
            raise ValueError("Give the layer to steer (or a head).")
        if site == "z":
            raise ValueError("To steer a head's z, give head=Head(layer, head).")
        hook_name(site, 0)
        if vector.shape[0] != model.cfg.d_model:
            raise ValueError(f"vector has {vector.shape[0]} entries; the residual stream has "
                             f"d_model={model.cfg.d_model}.")
    layers_to_mask([layer], L)  # type and range check
    return Steer(model=model, vector=vector, layer=int(layer), alpha=float(alpha),
                 positions=positions, head=head_index, site=site)


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
        return " + ".join(_describe(p) for p in self.parts)


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


@contextlib.contextmanager
def applied(model: HookedTransformer, interventions: Sequence, batch: PromptSet | None = None,
            index: Tensor | None = None):
    """Context manager adding the hooks of ``interventions`` (for ``batch``/``index``)."""
    hooks: HookList = []
    for iv in interventions:
        hooks.extend(iv.fwd_hooks(batch, index))
    with model.hooks(fwd_hooks=hooks):
        yield model


__all__ = [
    "SITES", "LAYER_SITES", "ABLATION_MODES", "hook_name", "check_positions", "position_mask",
    "layers_to_mask", "check_interventions", "Intervention", "Capture", "Replacement",
    "ActivationMeans", "activation_means", "Ablation", "ablate", "ablate_layers", "Patch",
    "patch", "Steer", "steer", "Compose", "compose", "RowEdit", "applied",
]


# --------------------------------------------------------------------------- task vectors


def state_injection_hook(layer: int, n_layers: int) -> str:
    """Hook point that sets query *state* ``layer`` (the indexing of
    :func:`icl_heads.geometry.query_states`: ``0`` = the embeddings, ``l + 1`` = after block
    ``l``): ``blocks.0.hook_resid_pre`` for ``0``, else ``blocks.{layer - 1}.hook_resid_post``.
    """
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(f"layer must be a whole number (a state index), got {layer!r}.")
    if not 0 <= int(layer) <= n_layers:
        raise ValueError(f"State layer {layer} is out of range: states run from 0 (the "
                         f"embeddings) to {n_layers} (after the last block).")
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{int(layer) - 1}.hook_resid_post"


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
        return (f"task_vector(state={self.layer}, mode={self.mode}, scale={self.scale:g}, "
                f"|v|={float(self.vector.norm()):.3g}, positions={self.positions})")


TASK_VECTOR_MODES = ("replace", "add")


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
        raise TypeError(f"inject_task_vector needs a HookedTransformer as model, got "
                        f"{type(model).__name__}.")
    if not isinstance(vector, Tensor):
        try:
            vector = torch.as_tensor(vector, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"vector must be a 1-D tensor of d_model numbers, got "
                            f"{type(vector).__name__}.") from None
    vector = vector.detach().float().cpu()
    if vector.ndim != 1 or vector.shape[0] != model.cfg.d_model:
        raise ValueError(f"vector must have shape [d_model] = [{model.cfg.d_model}], got "
                         f"{tuple(vector.shape)}; task_vector(model, prompts, layer) makes one.")
    if not torch.isfinite(vector).all():
        raise ValueError("vector contains NaN or inf values.")
    if mode not in TASK_VECTOR_MODES:
        raise ValueError(f"Unknown task-vector mode {mode!r}; choose one of {TASK_VECTOR_MODES}.")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number, got {scale!r}.")
    if not bool(torch.isfinite(torch.tensor(float(scale)))):
        raise ValueError(f"scale must be finite, got {scale!r}.")
    state_injection_hook(layer, model.cfg.n_layers)
    return TaskVector(model=model, vector=vector, layer=int(layer), mode=mode,
                      scale=float(scale), positions=check_positions(positions))


__all__ += ["state_injection_hook", "TaskVector", "TASK_VECTOR_MODES", "inject_task_vector"]
