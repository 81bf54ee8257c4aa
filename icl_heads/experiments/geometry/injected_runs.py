"""What the injection runs of :func:`~icl_heads.experiments.geometry.task_vector_experiment`
share: one clean pass per group of target prompts (the zero-shot reference itself, and the
residual stream at every position from which each injection run restarts).

Injecting into state ``l`` (:func:`~icl_heads.interventions.inject_task_vector` hooks
``blocks.{l-1}.hook_resid_post``, or ``blocks.0.hook_resid_pre`` for ``l = 0``) changes
nothing before block ``l - 1`` ends, so an injection run restarts from the clean residual
entering block ``max(l - 1, 0)`` (:func:`injection_start`) and runs the later blocks over
every position, through TransformerLens's own blocks with the prompts' batches
(:func:`~icl_heads.last_token.run_items`): the numbers of one full pass per injection
(bit for bit on the default model and Gemma 3: ``tests/test_geometry_experiments.py``), for
about half the blocks. A ``TransformerBridge`` and the architectures the restart engine
cannot run take one full pass per run (:func:`~icl_heads.geometry.run_query`).

Example::

    iv = ih.inject_task_vector(model, v, 12)
    (base, base_beh), [(states, beh)] = injection_runs(model, zero, [((iv,), 11)], 30)
    states.shape, beh["accuracy"].shape    # [prompt, 1, d_model], [prompt]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ...backends import HookedTransformer, is_bridge
from ...batching import BatchSize
from ...geometry import run_query, state_hook_names
from ...hooks import Capture, Intervention
from ...last_token import check_supported, clean_groups, run_items
from ...metrics import BEHAVIOUR, METRICS
from ...prompts import PromptSet

#: One injection run: its interventions and the block it restarts at.
InjectionRun = tuple[Sequence[Intervention], int]
#: The query state at the read layer (``[prompt, 1, d_model]``) and the per-prompt behaviour
#: metrics (``accuracy``, ``label_space_rate``, ``in_space_accuracy``, ``logit_diff``) of a run.
Measured = tuple[Float[Tensor, "prompt 1 d_model"], dict[str, np.ndarray]]


def injection_start(layer: int, read: int, n_layers: int) -> int:
    """The block an injection into state ``layer`` restarts at: the block whose hook writes
    the state (``layer - 1``; block 0 for the embeddings), and no later than the block whose
    hook reads state ``read`` (so the read is seen in the run).

    Example::

        injection_start(12, 30, 30)     # 11: blocks.11.hook_resid_post writes state 12
        injection_start(0, 30, 30)      # 0: blocks.0.hook_resid_pre
    """
    return min(max(int(layer) - 1, 0), min(int(read), n_layers - 1))


def injection_runs(
    model: HookedTransformer,
    prompts: PromptSet,
    runs: Sequence[InjectionRun],
    read: int,
    *,
    background: Sequence[Intervention] = (),
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[Measured, list[Measured]]:
    """The query state at ``read`` and the behaviour of the clean run (``background`` only)
    and of each run (``background`` and its interventions), sharing one clean pass per group
    of ``batch_size`` prompts; each run restarts at its block (:func:`injection_start`).

    Hooks fire in the order of :func:`~icl_heads.geometry.run_query` (the capture, the
    background, the run's interventions), so the numbers are those of one full pass per run.
    The progress bar ticks once per group of prompts and run.

    Example::

        (base, base_beh), measured = injection_runs(
            model, zero, [((iv,), injection_start(12, 30, 30))], 30
        )
    """
    if is_bridge(model) or not _restartable(model):
        return _full_passes(model, prompts, runs, read, background, batch_size, device)
    name = state_hook_names(model)[read]
    L = model.cfg.n_layers
    starts = sorted({int(start) for _, start in runs}) or [min(read, L - 1)]
    capture = Capture(names={name}.__contains__, positions="query")
    clean: list[tuple[Tensor, dict]] = []
    rows: list[list[tuple[Tensor, dict]]] = [[] for _ in runs]
    for group in clean_groups(
        model,
        prompts,
        layers=starts,
        query_only=False,
        interventions=[capture, *background],
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="injection runs",
        runs_per_prompt=1 + len(runs),
    ):
        G = len(group.index)
        clean.append((_state(capture.store[name]), _behaviour(group.clean.logits, group.prompts)))
        group.tick(G)
        for j, (ivs, start) in enumerate(runs):
            mine = Capture(names={name}.__contains__, positions="query")
            logits = run_items(
                model, group.clean, torch.tensor([int(start)]), None, [mine, *background, *ivs]
            )[0]
            rows[j].append((_state(mine.store[name]), _behaviour(logits, group.prompts)))
            group.tick(G)
    return _joined(clean), [_joined(r) for r in rows]


def _restartable(model: HookedTransformer) -> bool:
    try:
        check_supported(model)
    except ValueError:  # e.g. shortformer: one full pass per run (the same numbers)
        return False
    return True


def _state(act: Tensor) -> Tensor:
    """A captured query state as :func:`~icl_heads.geometry.run_query` keeps it."""
    return act[:, None].float().cpu()


def _behaviour(logits: Tensor, prompts: PromptSet) -> dict[str, Tensor]:
    """Per-prompt behaviour metrics of one group, as :func:`~icl_heads.geometry.run_query`
    reduces each batch's logits."""
    return {
        name: METRICS[name](logits, prompts.gold, prompts.label_token_ids).float().cpu()
        for name in BEHAVIOUR
    }


def _joined(parts: list[tuple[Tensor, dict]]) -> Measured:
    states = torch.cat([p[0] for p in parts])
    return states, {
        name: torch.cat([p[1][name] for p in parts]).numpy().astype(float) for name in BEHAVIOUR
    }


def _full_passes(model, prompts, runs, read, background, batch_size, device):
    """One full pass per run (a bridge, or an architecture the restart engine cannot run)."""
    opts = dict(behaviour=True, batch_size=batch_size, device=device, progress=False)
    base = run_query(model, prompts, [read], interventions=background, **opts)
    out = [
        run_query(model, prompts, [read], interventions=[*background, *ivs], **opts)
        for ivs, _ in runs
    ]
    return base, out
