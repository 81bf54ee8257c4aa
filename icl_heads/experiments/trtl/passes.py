"""Forward passes several TR/TL experiments share: TSLA maps with the query logits (and
query states) of the same pass, a tap that keeps query-position activations of a pass some
analysis runs anyway, and each head's mean output at the query (the steering vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ...activations import final_logits
from ...attribution import tsla_scores
from ...backends import HookedTransformer
from ...batching import BatchSize
from ...decomposition import iter_query_terms
from ...heads import Head, HeadScores, map_head_set
from ...hooks import Capture, check_interventions
from ...prompts import PromptSet, check_prompt_set
from ...provenance import heads_origin
from ...settings import PromptInfo, describe_interventions
from ..kit import HeadSets, check_model, head_sets_with_controls


class QueryTap:
    """Query-position activations kept from a pass that some analysis runs anyway (a
    :class:`~icl_heads.interventions.Capture` whose reducer appends each batch), so that
    e.g. TSLA scores and the logits of the same prompts come from one forward pass.

    Example::

        tap = QueryTap(["blocks.5.hook_resid_post"])
        tsla_scores(model, prompts, interventions=[tap.capture])
        tap.stacked("blocks.5.hook_resid_post")          # [n_prompts, d_model]
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.rows: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self.capture = Capture(
            names=set(self.names).__contains__, positions="query", reduce=self._keep
        )

    def _keep(self, act: Tensor, name: str) -> Tensor:
        self.rows[name].append(act.detach().float().clone())
        return act[:0]

    def stacked(self, name: str) -> Tensor:
        """Every batch's rows of hook ``name``, concatenated: ``[prompt, ...]``."""
        return torch.cat(self.rows[name])


def tsla_pass(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    top_k: int | None,
    normalize: Literal["none", "norm", "tr"],
    apply_ln: bool,
    batch_size: BatchSize,
    device: str | torch.device | None,
    interventions: Sequence,
    progress: bool,
    state_layers: Sequence[int] = (),
    floor: float = 0.01,
) -> tuple[HeadScores, HeadScores, Float[Tensor, "prompt d_vocab"], dict[int, Tensor]]:
    """:func:`~icl_heads.tsla_scores` plus the query logits (and the query states after the
    blocks ``state_layers``) from the same forward pass.

    Example::

        tr, tl, logits, _ = tsla_pass(model, prompts, top_k=None, normalize="none",
                                      apply_ln=False, batch_size=16, device=None,
                                      interventions=(), progress=False)

    Returns:
        ``(tr, tl, logits, {layer: [prompt, d_model] states})``; the maps' settings record
        ``interventions`` (not the tap).
    """
    L = model.cfg.n_layers
    final = f"blocks.{L - 1}.hook_resid_post"
    names = [final] + [
        f"blocks.{layer}.hook_resid_post" for layer in state_layers if layer != L - 1
    ]
    tap = QueryTap(names)
    tr, tl = tsla_scores(
        model,
        prompts,
        top_k=top_k,
        normalize=normalize,
        floor=floor,
        apply_ln=apply_ln,
        batch_size=batch_size,
        device=device,
        interventions=[*interventions, tap.capture],
        progress=progress,
    )
    settings = tr.settings.replace(interventions=describe_interventions(interventions))
    tr.settings = tl.settings = settings
    with torch.inference_mode():
        logits = final_logits(model, tap.stacked(final).to(model.cfg.device)).float().cpu()
    states = {layer: tap.stacked(f"blocks.{layer}.hook_resid_post").cpu() for layer in state_layers}
    return tr, tl, logits, states


def mean_head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> Float[Tensor, "layer head d_model"]:
    """Each head's mean output at the query over ``prompts``, as it enters the residual
    stream: the steering vectors of :func:`~icl_heads.experiments.trtl.steering_experiment`.

    ``mean_i a_i[l, h]`` with ``a = z W_O`` (equal to
    ``activation_means(model, prompts).outputs(model)``), times the post-attention norm's
    cached weight and scale on models that have one (Gemma 2/3), so that it is what the head
    added to the residual stream there. One forward pass.

    Example::

        vectors = trtl.mean_head_outputs(model, prompts)      # [n_layers, n_heads, d_model]
    """
    check_model(model, "mean_head_outputs")
    check_prompt_set(prompts, model=model)
    interventions = check_interventions(interventions, model)
    total, count = None, 0
    for _batch, terms in iter_query_terms(
        model,
        prompts,
        full=False,
        apply_ln=False,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc="mean head outputs",
    ):
        s = terms["head"].double().sum(0).cpu()
        total = s if total is None else total + s
        count += terms["head"].shape[0]
    return (total / count).float()


def tr_tl_sets(
    model: HookedTransformer,
    prompts: PromptSet,
    *,
    top_k: int | None = None,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> dict[str, list[Head]]:
    """The default head sets of the experiments that take ``heads=None``: the ``top_k``
    best heads of the TR and TL maps of ``prompts`` (:func:`~icl_heads.tsla_scores`).

    Example::

        trtl.passes.tr_tl_sets(model, prompts)      # {"TR": [Head(...), ...], "TL": [...]}
    """
    tr, tl = tsla_scores(
        model,
        prompts,
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    n_layers, n_heads = tr.n_layers, tr.n_heads
    return {
        name: map_head_set(scores, n_layers, n_heads, what=f"Head set {name!r}")
        for name, scores in (("TR", tr), ("TL", tl))
    }


def sets_for_experiment(
    model: HookedTransformer,
    prompts: PromptSet,
    heads: object,
    *,
    top_k: int | None,
    n_random: object,
    random_like: object,
    layer_matched: bool,
    seed: int,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> tuple[PromptInfo | None, HeadSets]:
    """The head sets of an experiment that takes ``heads=None`` (:func:`tr_tl_sets` of
    ``prompts``) or given ``heads``, with their random controls
    (:func:`~icl_heads.experiments.kit.head_sets_with_controls`), and where the sets came
    from (``prompts.info()`` for the default sets, else
    :func:`~icl_heads.provenance.heads_origin`).

    Example::

        heads_from, sets = passes.sets_for_experiment(
            model, prompts, None, top_k=None, n_random=5, random_like=None,
            layer_matched=True, seed=0)
    """
    heads_from = prompts.info() if heads is None else heads_origin(heads)
    if heads is None:
        heads = tr_tl_sets(
            model,
            prompts,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
        )
    sets = head_sets_with_controls(
        model,
        heads,
        n_random=n_random,
        random_like=random_like,
        layer_matched=layer_matched,
        seed=seed,
    )
    return heads_from, sets
