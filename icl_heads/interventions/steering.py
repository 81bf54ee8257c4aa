"""Interventions that add a vector to the stream: steering (a residual-stream site or one
head's output) and task vectors (set or shift a query state, Hendel et al.).

Example::

    iv = steer(model, v, head=(12, 3), alpha=2.0)
    ih.evaluate(model, zero_shot, interventions=[iv])
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..backends import HookedTransformer, check_backend
from ..heads import Head, heads_to_mask
from ..hooks import (
    MAX_INLINE,
    HookList,
    Intervention,
    Positions,
    check_positions,
    hook_name,
    layers_to_mask,
    position_mask,
    state_injection_hook,
)
from ..settings import model_name
from .records import positions_spec, tensor_record

TASK_VECTOR_MODES = ("replace", "add")


# --------------------------------------------------------------------------- steering


def check_finite_vector(vector: Tensor, fn: str, where: str) -> None:
    """A ValueError naming ``fn``, the argument ``vector``, ``where`` it goes (a head, a
    layer) and its first bad entry, when ``vector`` holds NaN or inf.

    Example::

        check_finite_vector(v, "steer", "head L1H2")
    """
    bad = ~torch.isfinite(vector)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{fn}: vector for {where} holds {int(bad.sum())} NaN or inf value(s) of "
            f"{vector.numel()} (first: entry {first} = {float(vector[first])}); give a "
            "finite vector (e.g. a mean over prompts whose run had no NaN)."
        )


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
            "positions": positions_spec(self.positions),
            "vector": tensor_record(self.vector, max_inline),
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
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number, got {alpha!r}.")
    if not math.isfinite(alpha):
        raise ValueError(
            f"steer: alpha must be a finite number, got {alpha!r}; NaN or inf steering "
            "makes NaN logits, which cannot be scored."
        )
    positions = check_positions(positions)
    L = model.cfg.n_layers
    head_index = None
    if head is not None:
        mask = heads_to_mask([head], L, model.cfg.n_heads)
        hl, head_index = (int(v) for v in mask.nonzero()[0])
        target = f"head {Head(hl, head_index)}"
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
        target = f"{site} of layer {layer}"
        hook_name(site, 0)
        if vector.shape[0] != model.cfg.d_model:
            raise ValueError(
                f"vector has {vector.shape[0]} entries; the residual stream has "
                f"d_model={model.cfg.d_model}."
            )
    layers_to_mask([layer], L)  # type and range check
    check_finite_vector(vector, "steer", target)
    if not bool(torch.isfinite(float(alpha) * vector).all()):
        raise ValueError(
            f"steer: alpha={alpha!r} times the vector for {target} overflows float32 "
            f"(|v| = {float(vector.norm()):.3g}); use a smaller alpha."
        )
    return Steer(
        model=model,
        vector=vector,
        layer=int(layer),
        alpha=float(alpha),
        positions=positions,
        head=head_index,
        site=site,
    )


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
            "positions": positions_spec(self.positions),
            "vector": tensor_record(self.vector, max_inline),
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
    check_backend(model, "inject_task_vector")
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
    if mode not in TASK_VECTOR_MODES:
        raise ValueError(f"Unknown task-vector mode {mode!r}; choose one of {TASK_VECTOR_MODES}.")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number, got {scale!r}.")
    if not math.isfinite(scale):
        raise ValueError(f"inject_task_vector: scale must be a finite number, got {scale!r}.")
    state_injection_hook(layer, model.cfg.n_layers)
    check_finite_vector(vector, "inject_task_vector", f"state {layer}")
    return TaskVector(
        model=model,
        vector=vector,
        layer=int(layer),
        mode=mode,
        scale=float(scale),
        positions=check_positions(positions),
    )
