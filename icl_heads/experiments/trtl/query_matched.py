"""The query-matched steering protocol of :func:`~icl_heads.experiments.trtl.
steering_experiment` (``protocol="query_matched"``): every target prompt gets the head
outputs of its own k-shot twin (the source prompt with the same query), not a task mean.

Example::

    icl = ih.build_prompts(model, task, k=4, n=64, seed=0)
    zs = ih.build_prompts(model, task, k=0, n=64, seed=0)       # the same 64 queries
    pairs = check_query_pairs(icl, zs)                          # target row -> source row
    outputs = query_head_outputs(model, icl, [Head(3, 1)])      # [64, 1, d_model]
    iv = matched_steer(model, outputs, [Head(3, 1)], pairs, alpha=1.0, source=icl.info())
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ...backends import HookedTransformer
from ...batching import BatchSize
from ...decomposition import iter_query_terms
from ...heads import Head
from ...hooks import MAX_INLINE, HookList, Intervention, check_interventions, hook_name
from ...prompts import PromptSet
from ...settings import PromptInfo

#: The steering protocols of ``steering_experiment`` (``docs/methods.md``, "Steering
#: protocols").
PROTOCOLS = ("task_mean", "query_matched")

#: The ``kind`` of a query-matched steer's record (:func:`matched_spec`).
MATCHED_KIND = "query_matched_steer"

#: What each protocol adds (recorded as ``SteeringSettings.vector``).
VECTOR_TEXT = {
    "task_mean": (
        "each head's mean output at the query over the source prompts, in the "
        "residual stream, added at its layer's attention output"
    ),
    "query_matched": (
        "each target prompt's own source twin's output of each head at the query (source "
        "row i for target row i, the same query example), in the residual stream, added "
        "at its layer's attention output"
    ),
}


def check_protocol(protocol: object) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a ValueError naming it.

    Example::

        check_protocol("query_matched")      # "query_matched"
    """
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown steering protocol {protocol!r}; choose one of {list(PROTOCOLS)} "
            "(docs/methods.md, 'Steering protocols')."
        )
    return protocol


def check_query_pairs(source: PromptSet, target: PromptSet) -> Int[Tensor, " target"]:
    """The source row of every target row for the query-matched protocol: target prompt
    ``i`` pairs with source prompt ``i``, which must have the same query (the same task
    example, ``query_examples``) and gold label. ``build_prompts`` with the same ``n`` and
    ``seed`` chooses the same queries at every ``k`` and perturbation, so
    ``build_prompts(model, task, k=0, n=n, seed=source.seed)`` is the zero-shot twin set.

    Raises:
        ValueError: the sets differ in size, or a row's queries (or gold labels) differ:
            the message names the first such row and the fix.

    Example::

        check_query_pairs(icl, zs)            # tensor([0, 1, ..., n - 1])
    """
    fix = (
        "build the target prompts with the source prompts' n and seed, e.g. "
        f"build_prompts(model, task, k=0, n={len(source)}, seed={source.seed}) "
        "(the queries depend only on n and seed)"
    )
    if len(source) != len(target):
        raise ValueError(
            f"protocol='query_matched' pairs each target prompt with the source prompt of "
            f"the same query, but source_prompts has {len(source)} prompts and "
            f"target_prompts {len(target)}; {fix}."
        )
    for i, (a, b) in enumerate(zip(source.query_examples, target.query_examples, strict=True)):
        if a != b:
            raise ValueError(
                f"protocol='query_matched': target prompt {i} asks task example {b} but "
                f"source prompt {i} asks example {a} (source seed {source.seed}, target seed "
                f"{target.seed}); source and target must pair one-to-one by query: {fix}."
            )
    bad = (source.gold.cpu() != target.gold.cpu()).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"protocol='query_matched': target prompt {bad[0]} has gold label "
            f"{int(target.gold[bad[0]])} but its source twin {int(source.gold[bad[0]])}; "
            f"the pairs must be the same query: {fix}."
        )
    return torch.arange(len(target))


def query_head_outputs(
    model: HookedTransformer,
    prompts: PromptSet,
    heads: Sequence[Head],
    *,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> Float[Tensor, "prompt head d_model"]:
    """Each of ``heads``' output at the query of every prompt, as it enters the residual
    stream (``z W_O``, times the post-attention norm's weight and cached scale where there
    is one): per prompt what :func:`~icl_heads.experiments.trtl.mean_head_outputs` averages.
    One forward pass; float32 on the CPU.

    Example::

        out = query_head_outputs(model, icl, [Head(3, 1), Head(5, 0)])   # [n, 2, d_model]
    """
    interventions = check_interventions(interventions, model)
    layers = torch.tensor([h.layer for h in heads], dtype=torch.long)
    index = torch.tensor([h.head for h in heads], dtype=torch.long)
    parts = []
    for _batch, terms in iter_query_terms(
        model,
        prompts,
        full=False,
        apply_ln=False,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
        desc="query head outputs",
    ):
        head = terms["head"]  # [b, L, H, d]
        parts.append(head[:, layers.to(head.device), index.to(head.device)].float().cpu())
    return torch.cat(parts)


@dataclass(frozen=True, eq=False)
class MatchedSteer(Intervention):
    """Add, at the query of target row ``i``, ``alpha`` times the outputs of ``heads`` on
    source row ``source_rows[i]`` (each head's own output at its layer's attention output).

    Made by :func:`matched_steer`. Per prompt (a bare ``with`` block is refused). Its spec is
    ``{"kind": "opaque", ...}``: ``from_spec`` cannot rebuild it (the outputs are per prompt;
    rebuild the source prompts from the settings and run the experiment again).
    """

    model: HookedTransformer = field(repr=False, default=None)
    outputs: Tensor = field(repr=False, default=None)  # [n_source, n_all, d_model]
    columns: tuple[int, ...] = ()  # the columns of ``outputs`` of ``heads``
    heads: tuple[Head, ...] = ()
    source_rows: Tensor = field(repr=False, default=None)  # [n_target]
    alpha: float = 1.0
    source: PromptInfo | None = None
    per_prompt = True

    def fwd_hooks(self, batch, index) -> HookList:
        hooks: HookList = []
        for layer in sorted({h.layer for h in self.heads}):
            cols = [c for c, h in zip(self.columns, self.heads, strict=True) if h.layer == layer]

            def hook(act: Tensor, hook, cols=cols) -> Tensor:
                rows = self.source_rows[index.cpu()]
                add = self.outputs[rows][:, cols].to(act.device, act.dtype)  # [b, c, d]
                out = act[:, -1]
                for j in range(len(cols)):
                    out = out + self.alpha * add[:, j]
                return torch.cat([act[:, :-1], out[:, None]], dim=1)

            hooks.append((hook_name("attn_out", layer), hook))
        return hooks

    def describe(self) -> str:
        src = (
            f"{self.source.task}/{self.source.perturbation} k={self.source.k} "
            f"n={self.source.n} seed={self.source.seed}"
            if self.source is not None
            else "source"
        )
        heads = ",".join(str(h) for h in self.heads)
        return (
            f"steer_query_matched(heads=[{heads}], alpha={self.alpha:g}, from={src}, "
            "positions=query)"
        )

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "opaque", "description": ...}``: a query-matched steer carries one
        vector per prompt and head, which ``from_spec`` cannot rebuild."""
        return {"kind": "opaque", "description": self.describe()}


def matched_steer(
    model: HookedTransformer,
    outputs: Float[Tensor, "source head d_model"],
    heads: Sequence[Head],
    source_rows: Int[Tensor, " target"],
    *,
    alpha: float,
    source: PromptInfo | None = None,
    columns: Sequence[int] | None = None,
) -> MatchedSteer:
    """A :class:`MatchedSteer` of ``heads`` (``outputs[:, columns[j]]`` is head ``j``'s
    output per source prompt; default: column ``j``), pairing target row ``i`` with source
    row ``source_rows[i]`` (:func:`check_query_pairs`).

    Example::

        iv = matched_steer(model, query_head_outputs(model, icl, hs), hs,
                           check_query_pairs(icl, zs), alpha=1.0, source=icl.info())
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f"matched_steer: alpha must be a finite number, got {alpha!r}.")
    heads = tuple(Head(*h) for h in heads)
    columns = tuple(range(len(heads))) if columns is None else tuple(int(c) for c in columns)
    if len(columns) != len(heads):
        raise ValueError(
            f"matched_steer: {len(columns)} columns for {len(heads)} heads; give one per head."
        )
    if outputs.ndim != 3 or outputs.shape[-1] != model.cfg.d_model:
        raise ValueError(
            f"matched_steer: outputs must be [n_source, heads, d_model={model.cfg.d_model}], "
            f"got {tuple(outputs.shape)} (query_head_outputs(model, source, heads))."
        )
    return MatchedSteer(
        model=model,
        outputs=outputs,
        columns=columns,
        heads=heads,
        source_rows=source_rows.cpu(),
        alpha=float(alpha),
        source=source,
    )


def matched_spec(steer: MatchedSteer) -> dict:
    """A query-matched steer as data, for the settings of a result:
    ``{"kind": "query_matched_steer", "heads": [[l, h], ...], "alpha", "source"}`` (the
    source prompts' identity, ``PromptInfo.to_dict()``). Not a ``from_spec`` spec (the
    outputs are per prompt): :func:`~icl_heads.experiments.replay.replay` rebuilds the
    source prompts, their head outputs and the pairing from it.

    Example::

        matched_spec(iv)["heads"]          # [[3, 1], [5, 0]]
    """
    if not isinstance(steer, MatchedSteer):
        raise TypeError(f"matched_spec needs a MatchedSteer, got {type(steer).__name__}.")
    return {
        "kind": MATCHED_KIND,
        "heads": [[h.layer, h.head] for h in steer.heads],
        "alpha": steer.alpha,
        "source": steer.source.to_dict() if steer.source is not None else None,
    }


def rebuild_matched_steer(
    model: HookedTransformer,
    spec: dict,
    source: PromptSet,
    target: PromptSet,
    *,
    batch_size: BatchSize = 16,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = False,
) -> MatchedSteer:
    """The :class:`MatchedSteer` of a :func:`matched_spec` record, on the rebuilt source and
    target prompts (one pass over the source prompts for the heads' outputs; the pairing
    checked by :func:`check_query_pairs`).

    Example::

        iv = rebuild_matched_steer(model, record["spec"], icl, zero_shot)
    """
    if not isinstance(spec, dict) or spec.get("kind") != MATCHED_KIND:
        raise ValueError(
            f"Not a query-matched steer record (kind {MATCHED_KIND!r}): {str(spec)[:80]!r}."
        )
    heads = [Head(int(a), int(b)) for a, b in spec["heads"]]
    outputs = query_head_outputs(
        model,
        source,
        heads,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    pairs = check_query_pairs(source, target)
    return matched_steer(
        model, outputs, heads, pairs, alpha=float(spec["alpha"]), source=source.info()
    )
