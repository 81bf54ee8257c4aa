"""Label attention: how much each head attends from the query to the demonstrations'
label tokens, and the share of it on demos carrying the gold label.

Example::

    la = label_attention_scores(model, prompts)
    la.mass.top(5), la.gold_share.baseline
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..activations import iter_batches
from ..backends import HookedTransformer
from ..batching import BatchSize
from ..heads import HeadScores
from ..hooks import check_interventions
from ..prompts import PromptSet, check_prompt_set
from ..settings import describe_interventions, model_name
from .scoring import PATTERN_SUFFIX, DetectorSettings, check_pattern_rows


class LabelAttention(NamedTuple):
    """Result of :func:`label_attention_scores`: ``mass`` (attention to the demo labels) and
    ``gold_share`` (the share of it on demos with the gold label; its ``baseline`` is the
    chance share)."""

    mass: HeadScores
    gold_share: HeadScores


def label_attention_scores(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> LabelAttention:
    """Attention from the query position to the demonstrations' label tokens, per head.

    With ``a_j`` the attention of the query (last) position to demo ``j``'s label token:

    - ``mass = sum_j a_j`` (averaged over prompts);
    - ``gold_share = sum_{j: demo_label_j = gold} a_j / sum_j a_j`` (averaged over prompts
      that show at least one demo with the gold label; NaN per prompt otherwise). Chance
      level (attention spread evenly over the label tokens) is ``gold_share.baseline``:
      the mean fraction of demos carrying the gold label.

    Captures only the query row of each layer's ``hook_pattern``.

    Example::

        la = ih.label_attention_scores(model, prompts)
        la.mass.top(5), la.gold_share.baseline

    Returns:
        ``LabelAttention(mass, gold_share)``, two :class:`HeadScores` named
        ``"label_attention_score"`` and ``"gold_label_share"``.
    """
    check_prompt_set(prompts, model=model)
    if prompts.k == 0 or prompts.demo_label_positions.shape[1] == 0:
        raise ValueError(
            f"This PromptSet has no demonstrations (k={prompts.k}, perturbation="
            f"{prompts.perturbation!r}), so there are no label tokens to attend to. Build it "
            f"with k >= 1 and without perturbation='zero_shot'."
        )
    interventions = check_interventions(interventions, model)
    names = [f"blocks.{layer}.{PATTERN_SUFFIX}" for layer in range(model.cfg.n_layers)]
    masses, golds = [], []
    sinks = bool(getattr(model.cfg, "use_attention_sinks", False))
    for b in iter_batches(
        model,
        prompts,
        names,
        positions="query",
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=False,
        progress=progress,
        desc="label attention",
    ):
        here = b.prompts.tokens.device  # each layer's rows on its block's device (n_devices)
        query_rows = torch.stack([b.activations[n].to(here) for n in names], 1)  # [b, L, H, pos]
        if not sinks:
            check_pattern_rows(
                query_rows.sum(-1),
                torch.ones_like(query_rows[..., 0], dtype=torch.bool),
                "label_attention_scores",
            )
        positions = b.prompts.demo_label_positions  # [b, k]
        index = positions[:, None, None, :].expand(*query_rows.shape[:3], positions.shape[1])
        to_labels = query_rows.gather(-1, index)  # [b, L, H, k]
        if not bool(torch.isfinite(to_labels).all()):
            bad = (~torch.isfinite(to_labels)).flatten(1).any(-1).nonzero().flatten()
            raise ValueError(
                f"label_attention_scores: the attention of {len(bad)} prompts to their "
                f"label tokens holds NaN or inf (first: prompt {int(b.index[bad[0]])}); the "
                "run or an intervention made it non-finite, and it cannot be scored."
            )
        is_gold = (b.prompts.demo_labels == b.prompts.gold[:, None]).to(to_labels.dtype)
        masses.append(to_labels.sum(-1).cpu())
        golds.append((to_labels * is_gold[:, None, None]).sum(-1).cpu())
    mass, gold = torch.cat(masses), torch.cat(golds)
    has_gold = (prompts.demo_labels == prompts.gold[:, None]).any(-1)
    share = torch.where(has_gold[:, None, None] & (mass > 0), gold / mass, torch.nan)
    fraction_gold = (prompts.demo_labels == prompts.gold[:, None]).float().mean(-1)
    chance = float(fraction_gold[has_gold].mean()) if has_gold.any() else None

    def settings(detector: str) -> DetectorSettings:
        return DetectorSettings(
            detector=detector,
            model=model_name(model),
            sequences="prompts",
            prompts=prompts.info(),
            interventions=describe_interventions(interventions),
        )

    return LabelAttention(
        mass=HeadScores(
            mass.mean(0),
            name="label_attention_score",
            settings=settings("label_attention"),
            per_prompt=mass,
        ),
        gold_share=HeadScores(
            torch.nanmean(share, dim=0),
            name="gold_label_share",
            settings=settings("gold_label_share"),
            per_prompt=share,
            baseline=chance,
        ),
    )
