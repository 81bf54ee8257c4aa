"""Exact full-sequence runs of a set of conditions: the fallback of the cached-prefix
engine (:func:`icl_heads.last_token.run_conditions`) for models it cannot run."""

from __future__ import annotations

import torch

from .activations import collect


def full_condition_runs(
    model,
    prompts,
    conditions,
    *,
    measure,
    names,
    background,
    batch_size,
    device,
    progress,
    desc,
    baseline_states,
) -> tuple[dict, dict]:
    """One full pass per condition (architectures the cached-prefix engine cannot run, and
    bridges): the fallback of :func:`~icl_heads.last_token.run_conditions`, with its
    arguments (``conditions``: ``{key: Run}``). The baseline's states are kept only when
    ``baseline_states`` (a re-run baseline), as the engine does. Returns ``(measured,
    states)``: per condition key, ``measure``'s dict and the ``[batch, len(names), d]``
    states (float32, on the CPU).

    Example::

        measured, _ = full_condition_runs(model, prompts, {"ablated": Run(ivs, 0)},
            measure=measure, names=[], background=(), batch_size=16, device="cpu",
            progress=False, desc="runs", baseline_states=False)
    """
    measured, states = {}, {}
    for key, ivs in [("baseline", ()), *((k, c.interventions) for k, c in conditions.items())]:
        got = collect(
            model,
            prompts,
            names,
            positions="query",
            batch_size=batch_size,
            device=device,
            interventions=[*background, *ivs],
            progress=progress,
            desc=desc,
        )
        measured[key] = measure(got.logits, prompts)
        if names and (key != "baseline" or baseline_states):
            # each layer's states on its block's device (n_devices > 1): moved before stacking
            layers = [got.activations[nm].to("cpu", torch.float32) for nm in names]
            states[key] = torch.stack(layers, 1)
    return measured, states
