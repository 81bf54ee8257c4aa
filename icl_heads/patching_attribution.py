"""Attribution patching: the first-order estimate ``grad · (replacement - z)`` of every
head's effect from one forward and one backward pass per batch of prompts.

Directly comparable with the exact :func:`~icl_heads.patching.head_sweep` (same modes,
positions, replacements and settings record); importable as
``icl_heads.patching.attribution_patching``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .activations import ActivationMeans, final_logits
from .backends import HookedTransformer, final_residual, is_bridge
from .batching import BatchSize, halving, resolve_batch_size
from .heads import HeadScores
from .hooks import Capture, Positions, applied, hook_name, position_mask
from .last_token import clean_run, run_items, supports_last_token
from .metrics import Metric, metric_name
from .prompts import PromptSet
from .sweep_setup import SweepRun, check_sweep, sweep_settings, sweep_template

#: Metrics that are step functions of the logits: their gradient is zero almost everywhere.
NON_DIFFERENTIABLE = ("accuracy", "label_space_rate", "in_space_accuracy")


def attribution_patching(
    model: HookedTransformer,
    prompts: PromptSet,
    metric: str | Metric = "logit_diff",
    *,
    mode: Literal["zero", "mean", "resample", "patch"] = "zero",
    positions: Positions = "query",
    source: PromptSet | None = None,
    means: ActivationMeans | Tensor | None = None,
    reference: PromptSet | None = None,
    seed: int = 0,
    batch_size: BatchSize = 8,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> HeadScores:
    """Attribution patching: a first-order estimate of every head's effect at once.

    For prompt ``i`` and head ``(l, h)``::

        effect ~ sum_{pos in positions} sum_d  dM_i/dz[pos, l, h, d] * (z'[pos, l, h, d] - z[pos, l, h, d])

    where ``z`` is the target run's ``hook_z``, ``z'`` the replacement (0, the mean, a
    donor's or the source's ``z``, as in :func:`~icl_heads.patching.head_sweep`) and ``M_i`` the metric. One
    forward and one backward pass per batch of prompts give every head's estimate (the
    gradient is taken with respect to ``hook_z`` only, so no weight gradients are
    computed). With ``positions="query"`` the prefix runs once without gradients and only
    the last token goes forward and backward (the query's ``z`` reaches the metric only
    through the last token), which gives the same gradient for less. The metric must be
    differentiable (``"logit_diff"`` or a callable); step metrics such as accuracy have zero
    gradient and are refused.

    ``batch_size``: prompts per forward and backward pass, or ``"auto"``: the largest batch
    that fits the device's memory (:mod:`icl_heads.batching`; 8 on a CPU). A batch that runs
    out of device memory is retried halved, and later batches keep that size.

    Example::

        attr = ih.attribution_patching(model, prompts, "logit_diff", mode="mean")
        attr.top(5, largest=False)           # the heads estimated to matter most

    Returns:
        ``HeadScores`` named ``"attribution_<metric>"`` (per-prompt estimates in
        ``per_prompt``), directly comparable with
        :func:`~icl_heads.patching.head_sweep`'s effects.
    """
    run = check_sweep(
        model, prompts, metric, mode, "naive", positions, batch_size, device, interventions, seed
    )
    if isinstance(metric, str) and metric in NON_DIFFERENTIABLE:
        raise ValueError(
            f"Attribution patching needs a differentiable metric; {metric!r} is a "
            "step function of the logits (zero gradient). Use 'logit_diff' or a "
            "smooth callable."
        )
    # "auto": the largest batch whose forward and backward pass fit (icl_heads.batching)
    batch_size = resolve_batch_size(batch_size, model, prompts, kind="backward", device=run.device)
    template = sweep_template(
        model,
        prompts,
        "z",
        mode,
        run.positions,
        source=source,
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=run.device,
        progress=progress,
    )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name("z", layer) for layer in range(L)]

    def estimates(start: int, stop: int) -> Float[Tensor, "batch layer head"]:
        index = torch.arange(start, stop)
        batch = prompts.select(index).to(run.device)
        zs, grads = _z_grads(model, batch, index, run, names)
        T = zs[0].shape[1]  # 1 on the last-token path
        pos = position_mask(run.positions, T, run.device)[None, :, None, None]
        layers = []  # [batch, head] per layer, on the batch's device (blocks may be split)
        for layer, (z, grad) in enumerate(zip(zs, grads, strict=True)):
            with torch.no_grad():
                rep = template.values(layer, batch, index, T, len(index)).to(z.device)
                delta = (rep - z.detach()) * pos.to(z.device)
                layers.append((grad * delta).sum((1, 3)).float().to(run.device))
        return torch.stack(layers, 1).cpu()  # one copy per batch

    per_prompt = torch.zeros(len(prompts), L, H)
    # A specialised loop, not iter_batches: that one runs under inference_mode, and this
    # needs a backward pass. A batch that runs out of memory is retried halved.
    bar = tqdm(total=len(prompts), desc="attribution patching", disable=not progress, leave=False)
    try:
        for start, stop, out in halving(
            len(prompts), batch_size, estimates, device=run.device, what="attribution patching"
        ):
            per_prompt[start:stop] = out
            bar.update(stop - start)
    finally:
        bar.close()
    settings = sweep_settings(
        "attribution_patching",
        model,
        prompts,
        metric,
        mode,
        run.positions,
        "z",
        "attribution",
        seed,
        source=source,
        means=means,
        reference=reference,
        interventions=run.interventions,
    )
    return HeadScores(
        torch.nanmean(per_prompt, 0),
        name=f"attribution_{metric_name(metric)}",
        settings=settings,
        per_prompt=per_prompt,
    )


def _z_grads(model, batch: PromptSet, index: Tensor, run: SweepRun, names: list[str]):
    """``hook_z`` of every layer and the metric's gradient with respect to it, from one
    forward and one backward pass. At the query (on supported architectures) the prefix
    runs once without gradients and only the last token goes forward and backward."""
    last_token = run.positions == "query" and supports_last_token(model, batch.seq_len)
    if last_token:
        with torch.no_grad():
            clean = clean_run(
                model, batch, index, query_only=True, layers=[0], interventions=run.interventions
            )
    capture = Capture(names=set(names).__contains__, positions="all", keep_grad=True)
    # On a bridge a fully masked score row (a left-padding query) reaches the softmax
    # through an additive mask, so its NaN softmax gradient flows back into every q and k
    # of the row; the hooked model masks with torch.where, which drops it. Same here:
    bridge_hooks = [(_is_scores, _masked_scores_off_the_gradient)] if is_bridge(model) else []
    with torch.enable_grad(), applied(model, [capture]), model.hooks(fwd_hooks=bridge_hooks):
        if last_token:
            logits = run_items(
                model, clean, torch.zeros(1, dtype=torch.long), interventions=run.interventions
            )[0]
        else:
            with applied(model, run.interventions, batch, index):
                resid = final_residual(model, batch.tokens, batch.attention_mask)
            logits = final_logits(model, resid[:, -1])
        zs = [capture.store[name] for name in names]
        value = run.metric(logits, batch.gold, batch.label_token_ids)
        if not value.requires_grad:
            raise ValueError(
                "The metric's value does not depend differentiably on the "
                "logits; attribution patching needs a differentiable metric."
            )
        grads = torch.autograd.grad(value.sum(), zs, allow_unused=True)
    missing = [name for name, g in zip(names, grads, strict=True) if g is None]
    if missing:
        raise ValueError(
            f"Attribution patching found no gradient of the metric with respect to "
            f"{missing[0]} ({len(missing)} of {len(names)} hook_z points) on "
            f"{type(model).__name__}: the z the run went on with is not the one captured "
            "there (an intervention that overwrites hook_z with values that do not depend "
            "on it, or a backend that drops hook outputs), so every estimate would be 0. "
            "Drop that intervention (or use head_sweep, which needs no gradient)."
        )
    return zs, list(grads)


def _is_scores(name: str) -> bool:
    return name.endswith("attn.hook_attn_scores")


def _masked_scores_off_the_gradient(scores: Tensor, hook) -> Tensor:
    """The same scores, with the masked (``-inf``) ones off the gradient path."""
    return torch.where(scores == float("-inf"), scores.detach(), scores)


__all__ = ["attribution_patching", "NON_DIFFERENTIABLE"]
