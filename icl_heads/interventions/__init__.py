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

Rooms: :mod:`~icl_heads.interventions.replacement` (ablate, ablate_layers, patch, RowEdit),
:mod:`~icl_heads.interventions.steering` (steer, inject_task_vector),
:mod:`~icl_heads.interventions.composition` (compose),
:mod:`~icl_heads.interventions.records` (what ``to_spec`` writes) and
:mod:`~icl_heads.interventions.specs` (:func:`from_spec`). Every public name is importable
from ``icl_heads.interventions``.
"""

from __future__ import annotations

from ..moved import moved_names
from .composition import Compose, compose
from .replacement import (
    ABLATION_MODES,
    Ablation,
    Patch,
    Replacement,
    RowEdit,
    ablate,
    ablate_layers,
    patch,
)
from .specs import from_spec
from .steering import TASK_VECTOR_MODES, Steer, TaskVector, inject_task_vector, steer

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


#: Names that moved to the floors below (building blocks to ``icl_heads.hooks``, anything
#: that runs the model to ``icl_heads.activations``): importable from here for one release,
#: with a DeprecationWarning naming the new path.
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(
            ("HookList", "Positions", "SITES", "LAYER_SITES", "hook_name", "check_positions",
             "position_mask", "layers_to_mask", "check_interventions", "Intervention",
             "Capture", "applied", "state_injection_hook"),
            "icl_heads.hooks",
        ),
        "ActivationMeans": "icl_heads.activations",
        "activation_means": "icl_heads.activations",
    },
)  # fmt: skip
