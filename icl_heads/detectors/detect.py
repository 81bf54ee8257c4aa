"""All four detectors in one table (:func:`detect_heads`): one row per head with its
scores and the kinds it qualifies for (by threshold or top-k).

Example::

    df = detect_heads(model, prompts)
    df[df.kind.str.contains("induction")]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..backends import HookedTransformer
from ..batching import BatchSize
from ..heads import check_top_k, default_top_k
from ..prompts import PromptSet, check_prompt_set
from ..stats import ranked_order
from .label_attention import label_attention_scores
from .scoring import DETECTORS, Normalize
from .sequences import Sequences, resolve_n_sequences
from .token_detectors import token_detector_scores

#: Default thresholds of :func:`detect_heads` (score >= threshold gives the head that kind).
DEFAULT_THRESHOLDS = {
    "previous_token": 0.5,
    "duplicate_token": 0.5,
    "induction": 0.5,
    "label_attention": 0.5,
}
KINDS = tuple(DEFAULT_THRESHOLDS)


def detect_heads(
    model: HookedTransformer,
    prompts: PromptSet | None = None,
    *,
    sequences: Sequences = None,
    T: int = 50,
    n_sequences: int | None = None,
    seed: int = 0,
    thresholds: dict[str, float] | float | None = None,
    top_k: int | dict[str, int] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    batch_size: BatchSize = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    n: int | None = None,
) -> pd.DataFrame:
    """All four detectors in one tidy table: one row per head.

    The token detectors run on ``sequences`` (default: random ``[BOS] + r + r`` sequences
    with ``T``, ``n_sequences``, ``seed``; see :func:`token_detector_scores`); label attention runs on
    the ICL ``prompts`` when given (else NaN).

    A head gets a kind when its score reaches the kind's threshold (default
    :data:`DEFAULT_THRESHOLDS`, 0.5 each; a float sets all four; a dict overrides some), or,
    when ``top_k`` is given (an int for every kind or a dict per kind), when it is among
    the ``top_k`` heads by that score. Kinds: ``"previous_token"``, ``"duplicate_token"``,
    ``"induction"``, ``"label_attention"`` (by ``label_attention_score``); several are
    joined with ``"+"``; none is ``""``. A NaN score never qualifies (not by threshold, not
    by rank); thresholds must be finite.

    Example::

        df = ih.detect_heads(model, prompts)
        df[df.kind.str.contains("induction")]

    Returns:
        DataFrame with columns ``layer, head, label, previous_token_score,
        duplicate_token_score, induction_score, label_attention_score, gold_label_share,
        kind``; ``df.attrs["settings"]`` says how it was made.
    """
    chosen_thresholds = _thresholds(thresholds)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    chosen_top_k = _top_k(top_k, L, H)
    if prompts is not None:
        check_prompt_set(prompts, model=model)
    token = token_detector_scores(
        model,
        sequences,
        T=T,
        n_sequences=resolve_n_sequences(n_sequences, n),
        seed=seed,
        normalize=normalize,
        exclude_bos=exclude_bos,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )
    frame = token["previous_token"].to_frame()[["layer", "head", "label"]]
    columns = {f"{d}_score": token[d].scores for d in DETECTORS}
    label = None
    if prompts is not None:
        label = label_attention_scores(
            model,
            prompts,
            batch_size=batch_size,
            device=device,
            interventions=interventions,
            progress=progress,
        )
    nan = torch.full((L, H), float("nan"))
    columns["label_attention_score"] = label.mass.scores if label else nan
    columns["gold_label_share"] = label.gold_share.scores if label else nan
    for name, values in columns.items():
        frame[name] = values.flatten().numpy()
    kinds = []
    for kind in KINDS:
        scores = columns[f"{kind}_score"].flatten()
        if chosen_top_k is not None:
            selected = _top_k_mask(scores, chosen_top_k.get(kind, default_top_k(L, H)))
        else:
            selected = scores >= chosen_thresholds[kind]  # NaN compares False
        kinds.append([kind if s else "" for s in selected.tolist()])
    frame["kind"] = ["+".join(k for k in ks if k) for ks in zip(*kinds, strict=True)]
    token_settings = token["previous_token"].settings
    frame.attrs["settings"] = token_settings.replace(
        detector="detect_heads",
        prompts=prompts.info() if prompts is not None else None,
        thresholds=None if chosen_top_k is not None else tuple(sorted(chosen_thresholds.items())),
        top_k=None if chosen_top_k is None else max(chosen_top_k.values()),
    )
    return frame


def _thresholds(thresholds: dict[str, float] | float | None) -> dict[str, float]:
    if thresholds is None:
        return dict(DEFAULT_THRESHOLDS)
    if isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool):
        return dict.fromkeys(KINDS, _threshold(thresholds, "thresholds"))
    if isinstance(thresholds, dict):
        unknown = set(thresholds) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown kind(s) {sorted(unknown)} in thresholds; kinds are {KINDS}.")
        chosen = {k: _threshold(v, f"thresholds[{k!r}]") for k, v in thresholds.items()}
        return {**DEFAULT_THRESHOLDS, **chosen}
    raise TypeError(
        f"thresholds must be a float or a dict kind -> float, got {type(thresholds).__name__}."
    )


def _threshold(value: object, what: str) -> float:
    """A finite threshold (a NaN one would silently give no head its kind)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(
            f"{what} must be a finite number, got {value!r} (a NaN threshold gives no "
            "head its kind; for 'none' pass a threshold above 1)."
        )
    return float(value)


def _top_k(
    top_k: int | dict[str, int] | None, n_layers: int, n_heads: int
) -> dict[str, int] | None:
    if top_k is None:
        return None
    if isinstance(top_k, dict):
        unknown = set(top_k) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown kind(s) {sorted(unknown)} in top_k; kinds are {KINDS}.")
        chosen = {k: (v, f"top_k[{k!r}]") for k, v in top_k.items()}
    elif isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"top_k must be an int or a dict kind -> int, got {top_k!r}.")
    else:
        chosen = {k: (top_k, "top_k") for k in KINDS}
    out = {}
    for kind, (value, what) in chosen.items():
        out[kind] = check_top_k(value, n_layers, n_heads, allow_zero=True, what=what)
        if out[kind] > n_layers * n_heads:  # every head would get every kind
            raise ValueError(
                f"{what} = {out[kind]} is more than the model's {n_layers * n_heads} heads "
                f"({n_layers} layers x {n_heads}); use a top_k <= {n_layers * n_heads}."
            )
    return out


def _top_k_mask(scores: Float[Tensor, " n"], k: int) -> Bool[Tensor, " n"]:
    """The ``k`` best heads by :func:`~icl_heads.heads.ranked_order` (NaN never ranked, so
    a detector without scores gives no head its kind)."""
    order = torch.as_tensor(ranked_order(scores)[:k], dtype=torch.long)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask[order] = True
    return mask
