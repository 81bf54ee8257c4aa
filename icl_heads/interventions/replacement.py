"""Interventions that replace an activation's values: ablation (zero, mean, resample) of
heads or layer outputs, activation patching from a source run, and the batched per-row
edits of the fast sweeps. The mean activations and stored source/donor activations they
need are collected by :mod:`icl_heads.activations`.

Example::

    iv = ablate(model, [(3, 2)], mode="mean", reference=prompts)
    ih.evaluate(model, prompts, interventions=[iv])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..activations import ActivationMeans, activation_means, collect_sites
from ..backends import HookedTransformer
from ..batching import BatchSize
from ..heads import HeadsLike, heads_to_mask, mask_to_heads
from ..hooks import (
    LAYER_SITES,
    MAX_INLINE,
    HookList,
    Intervention,
    Positions,
    check_positions,
    hook_name,
    layers_to_mask,
    position_mask,
)
from ..prompts import PromptSet, check_prompt_set
from ..provenance import check_model_match
from ..settings import PromptInfo, model_name
from .records import means_record, positions_spec, prompts_record

ABLATION_MODES = ("zero", "mean", "resample")


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
            "positions": positions_spec(self.positions),
            "seed": self.seed,
        }
        if self.mode == "mean":
            spec["means"] = means_record(self.means, self.means_from, max_inline)
        elif self.mode == "resample":
            spec["reference"] = prompts_record(self.reference, self.batch_size)
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
    batch_size: BatchSize = 16,
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
    batch_size: BatchSize = 16,
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
        check_model_match(
            model,
            means.model,
            None,
            fn="Mean ablation",
            what="means=",
            fix="Compute activation_means(model, prompts) with this model.",
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
            "positions": positions_spec(self.positions),
            "source": prompts_record(self.source, self.batch_size),
        }


def patch(
    model: HookedTransformer,
    source: PromptSet,
    *,
    site: str = "z",
    heads: HeadsLike | None = None,
    layers: int | Sequence[int] | Tensor | None = None,
    positions: Positions = "all",
    batch_size: BatchSize = 16,
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
