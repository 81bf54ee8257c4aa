"""How an intervention is written as data: the records its ``to_spec()`` puts in a spec.

A spec is a small JSON-able dict. Heads are written as ``[[layer, head], ...]`` pairs (what
:func:`~icl_heads.heads.heads_to_mask` takes; no string to parse back), positions as
``"query"`` / ``"all"`` / a list of ints. Tensors are written as a record
``{"shape", "sha256", ["values"]}``: the values inline when small (at most ``max_inline``
numbers, exact after a JSON round trip), else only the fingerprint, and the tensor is passed
to :func:`~icl_heads.interventions.from_spec` (``tensors=``) or recomputed from recorded
prompts (``prompts=``). Reading specs back is :mod:`icl_heads.interventions.specs`.

Example::

    tensor_record(torch.ones(2), max_inline=8)   # {"shape": [2], "sha256": "...", "values": [1.0, 1.0]}
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from ..activations import ActivationMeans
from ..hooks import MAX_INLINE, Intervention, Positions, describe
from ..settings import PromptInfo


def positions_spec(positions: Positions) -> str | list[int]:
    """``"query"`` / ``"all"`` as they are, a tuple of positions as a list of ints."""
    return positions if isinstance(positions, str) else [int(p) for p in positions]


def fingerprint(t: Tensor) -> str:
    """First 16 hex digits of the SHA-256 of the tensor's float32 values."""
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def tensor_record(t: Tensor, max_inline: int) -> dict:
    """``{"shape", "sha256"}``, plus ``"values"`` when ``t`` has at most ``max_inline``
    numbers."""
    rec: dict[str, Any] = {"shape": list(t.shape), "sha256": fingerprint(t)}
    if t.numel() <= max_inline:
        rec["values"] = t.detach().to("cpu", torch.float32).tolist()
    return rec


def prompts_record(info: PromptInfo | None, batch_size: int | None) -> dict:
    """``{"prompts": PromptInfo as a dict (or None), "batch_size"}``."""
    return {"prompts": info.to_dict() if info is not None else None, "batch_size": batch_size}


def means_record(values: Tensor, means_from: ActivationMeans | None, max_inline: int) -> dict:
    """The tensor record of mean activations, plus how they were made when known (site,
    positions, prompts, batch size, interventions)."""
    rec: dict[str, Any] = {}
    if means_from is not None:
        rec.update(
            site=means_from.site,
            positions=positions_spec(means_from.positions),
            prompts=means_from.prompts.to_dict() if means_from.prompts is not None else None,
            batch_size=means_from.batch_size,
            interventions=list(means_from.interventions),
        )
    rec.update(tensor_record(values, max_inline))
    return rec


def spec_of(iv: Any, max_inline: int = MAX_INLINE) -> dict:
    """``iv.to_spec()`` for anything (an object without ``to_spec`` is ``opaque``)."""
    if isinstance(iv, Intervention):
        return iv.to_spec(max_inline=max_inline)
    fn = getattr(iv, "to_spec", None)
    return fn() if callable(fn) else {"kind": "opaque", "description": describe(iv)}
