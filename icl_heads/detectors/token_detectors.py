"""Previous-token, duplicate-token and induction scores of every head, all in one batched
pass that reduces each layer's attention pattern as soon as it is computed.

Example::

    maps = token_detector_scores(model)              # all three on random [BOS] + r + r
    maps["induction"].top(5)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..activations import iter_batches
from ..backends import HookedTransformer
from ..batching import BatchSize
from ..heads import HeadScores
from ..hooks import check_interventions
from ..settings import describe_interventions, model_name
from .scoring import (
    DETECTORS,
    NORMALIZATIONS,
    PATTERN_SUFFIX,
    DetectorSettings,
    Normalize,
    pattern_reducer,
)
from .sequences import Sequences, as_prompt_set, resolve_n_sequences


def token_detector_scores(
    model: HookedTransformer,
    sequences: Sequences = None,
    *,
    detectors: Sequence[str] = DETECTORS,
    T: int = 50,
    n_sequences: int | None = None,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: BatchSize = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    n: int | None = None,
) -> dict[str, HeadScores]:
    """Previous-token, duplicate-token and induction scores of every head in one batched pass.

    Only attention patterns are read (a ``hook_pattern`` filter), each layer's pattern is
    reduced to per-head scores as soon as it is computed (see :func:`score_patterns`).

    Args:
        model: the model.
        sequences: what to score: ``None`` (default) for :func:`random_repeated_tokens`
            ``(T, n_sequences, seed)``; a :class:`PromptSet` (e.g. a task's ICL prompts); or a
            ``[batch, pos]`` token tensor (left-padded if ``attention_mask`` is given, else
            unpadded).
        detectors: any of ``"previous_token"``, ``"duplicate_token"``, ``"induction"``.
        T, n_sequences, seed: the random sequences (only used when ``sequences`` is None;
            ``n_sequences`` defaults to :data:`~icl_heads.detectors.N_SEQUENCES`, 32).
        attention_mask: ``[batch, pos]`` 1 for real tokens, for a token tensor.
        normalize: ``"rows"`` (perfect head = 1.0) or ``"detect_head"`` (TransformerLens's
            "mul" measure, exactly).
        exclude_bos: zero the attention to the BOS column before scoring.
        exclude_current_token: zero the attention to the current token before scoring.
        batch_size: sequences per forward pass (default 32: the random sequences are short).
        device: defaults to the model's device.
        interventions: run with these interventions (e.g. an ablation).
        progress: show a progress bar.
        n: deprecated old name of ``n_sequences`` (a DeprecationWarning).

    Example::

        maps = ih.token_detector_scores(model)          # all three on random [BOS]+r+r
        maps["induction"].top(5)

    Returns:
        ``{detector: HeadScores}`` named ``"<detector>_score"``, with ``per_prompt``
        ``[sequence, layer, head]`` and :class:`DetectorSettings`.
    """
    detectors = _check_detectors(detectors)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}.")
    n_sequences = resolve_n_sequences(n_sequences, n)
    prompts, source = as_prompt_set(
        model, sequences, T=T, n_sequences=n_sequences, seed=seed, attention_mask=attention_mask
    )
    interventions = check_interventions(interventions, model)
    reducer = pattern_reducer(model, detectors, normalize, exclude_bos, exclude_current_token)
    names = [f"blocks.{layer}.{PATTERN_SUFFIX}" for layer in range(model.cfg.n_layers)]
    per_prompt = []
    for batch in iter_batches(
        model,
        prompts,
        names,
        positions="all",
        reduce=reducer,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        return_logits=False,
        progress=progress,
        desc="head detectors",
    ):
        per_prompt.append(
            torch.stack([batch.activations[name] for name in names], dim=2).cpu()
        )  # [batch, detector, layer, head]
    stacked = torch.cat(per_prompt)
    common = dict(
        model=model_name(model),
        normalize=normalize,
        exclude_bos=bool(exclude_bos),
        exclude_current_token=bool(exclude_current_token),
        interventions=describe_interventions(interventions),
        **source,
    )
    return {
        name: HeadScores(
            torch.nanmean(stacked[:, i], dim=0),
            name=f"{name}_score",
            settings=DetectorSettings(detector=name, **common),
            per_prompt=stacked[:, i],
        )
        for i, name in enumerate(detectors)
    }


def previous_token_scores(
    model: HookedTransformer,
    sequences: Sequences = None,
    *,
    T: int = 50,
    n_sequences: int | None = None,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: BatchSize = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    n: int | None = None,
) -> HeadScores:
    """Previous-token score of every head: attention from position ``i`` to ``i-1``.

    Arguments as in :func:`token_detector_scores` (default: ``T=50``, ``n_sequences=32``, ``seed=0``
    random repeated sequences, ``normalize="rows"``).

    Example::

        ih.previous_token_scores(model).top(5)
    """
    return token_detector_scores(
        model,
        sequences,
        detectors=["previous_token"],
        T=T,
        n_sequences=resolve_n_sequences(n_sequences, n),
        seed=seed,
        attention_mask=attention_mask,
        normalize=normalize,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )["previous_token"]


def duplicate_token_scores(
    model: HookedTransformer,
    sequences: Sequences = None,
    *,
    T: int = 50,
    n_sequences: int | None = None,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: BatchSize = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    n: int | None = None,
) -> HeadScores:
    """Duplicate-token score of every head: attention to earlier occurrences of the current
    token. Arguments as in :func:`token_detector_scores`."""
    return token_detector_scores(
        model,
        sequences,
        detectors=["duplicate_token"],
        T=T,
        n_sequences=resolve_n_sequences(n_sequences, n),
        seed=seed,
        attention_mask=attention_mask,
        normalize=normalize,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )["duplicate_token"]


def induction_scores(
    model: HookedTransformer,
    sequences: Sequences = None,
    *,
    T: int = 50,
    n_sequences: int | None = None,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: BatchSize = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
    n: int | None = None,
) -> HeadScores:
    """Induction score of every head: attention to the token after an earlier occurrence of
    the current token (on ``[BOS] + r + r``: from ``i`` in the second copy to ``i - T + 1``).
    Arguments as in :func:`token_detector_scores`.

    Example::

        ih.induction_scores(model).plot()
    """
    return token_detector_scores(
        model,
        sequences,
        detectors=["induction"],
        T=T,
        n_sequences=resolve_n_sequences(n_sequences, n),
        seed=seed,
        attention_mask=attention_mask,
        normalize=normalize,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
        device=device,
        interventions=interventions,
        progress=progress,
    )["induction"]


def _check_detectors(detectors: Sequence[str]) -> list[str]:
    if isinstance(detectors, str):
        detectors = [detectors]
    detectors = list(detectors)
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown or not detectors:
        raise ValueError(f"Unknown detector(s) {unknown or detectors}; choose from {DETECTORS}.")
    return detectors
