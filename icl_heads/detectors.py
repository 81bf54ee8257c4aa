"""Head detectors: previous-token, duplicate-token, induction and label-attention heads.

Token detectors compare each head's attention pattern ``A`` (``[query, key]``) with a 0/1
detection pattern ``D`` built from the tokens (the same patterns as TransformerLens's
``head_detector``):

- previous token: ``D[i, i-1] = 1``;
- duplicate token: ``D[i, j] = 1`` iff ``tok[j] == tok[i]`` and ``j < i``;
- induction: ``D[i, j+1] = 1`` iff ``tok[j] == tok[i]`` and ``j < i`` (the token after an
  earlier occurrence of the current token).

Let ``A'`` be ``A`` with the excluded key columns zeroed (padding, and optionally BOS and the
current token). Two normalisations:

- ``normalize="rows"`` (default): ``score = mean_{i in R} sum_j A'[i,j] D[i,j] / sum_j A'[i,j]``
  over the rows ``R`` where the pattern applies (``D[i]`` has a non-excluded target), so a
  perfect head scores 1.0. Without exclusions the denominator is 1 (rows sum to one).
- ``normalize="detect_head"``: ``score = sum_ij A' * D / sum_ij A'`` over all real rows;
  exactly TransformerLens's ``detect_head(..., error_measure="mul")``. On ``[BOS, r, r]``
  a perfect induction head scores only ``T / (2T + 1)`` there.

Scores are per sequence, then averaged over sequences (``HeadScores.per_prompt`` keeps the
per-sequence values; sequences where no row applies are NaN and skipped in the mean).

The default data are seeded random-token sequences ``[BOS] + r + r`` (``r`` of length ``T``
drawn from the ordinary vocabulary, never special tokens). Any :class:`PromptSet` or token
batch can be scored instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .activations import iter_batches
from .heads import HeadScores, check_top_k, default_top_k
from .hooks import check_interventions
from .models import resolve_device
from .prompts import PromptSet, check_prompt_set
from .settings import PromptInfo, Settings, describe_interventions, model_name

#: The token detectors, in the order of the detector axis of :func:`detection_patterns`.
DETECTORS = ("previous_token", "duplicate_token", "induction")
Normalize = Literal["rows", "detect_head"]
NORMALIZATIONS = ("rows", "detect_head")
#: Default thresholds of :func:`detect_heads` (score >= threshold gives the head that kind).
DEFAULT_THRESHOLDS = {
    "previous_token": 0.5,
    "duplicate_token": 0.5,
    "induction": 0.5,
    "label_attention": 0.5,
}
KINDS = tuple(DEFAULT_THRESHOLDS)

_PATTERN_SUFFIX = "attn.hook_pattern"
_TINY = 1e-30  # guards 0/0 in the per-row normalisation (a row with no mass scores 0)

Sequences = PromptSet | Int[Tensor, "batch pos"] | None


@dataclass(frozen=True)
class DetectorSettings(Settings):
    """How a detector map was made.

    ``sequences``: ``"random_repeated"`` (``T``, ``n``, ``seed`` say which), ``"prompts"``
    (``prompts`` says which) or ``"tokens"`` (a user's token batch).
    """

    detector: str
    model: str | None
    sequences: str
    prompts: PromptInfo | None = None
    T: int | None = None
    n: int | None = None
    seed: int | None = None
    normalize: str | None = None
    exclude_bos: bool | None = None
    exclude_current_token: bool | None = None
    thresholds: tuple | None = None
    top_k: int | None = None
    interventions: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- data


def random_repeated_tokens(
    model: HookedTransformer,
    T: int = 50,
    n: int = 32,
    seed: int = 0,
    *,
    prepend_bos: bool | None = None,
    device: str | torch.device | None = None,
) -> Int[Tensor, "batch pos"]:
    """Seeded random sequences ``[BOS] + r + r``, each ``r`` of ``T`` tokens.

    Tokens are drawn uniformly (with replacement) from the ordinary vocabulary: ids in
    ``[0, min(d_vocab, len(tokenizer)))`` minus the tokenizer's ``all_special_ids``; for a
    model without tokenizer, any id in ``[0, d_vocab)``.

    Args:
        model: supplies the vocabulary, BOS convention and context length.
        T: length of the random block (the sequence has ``2T`` tokens, plus BOS).
        n: number of sequences.
        seed: seeds the draw (a private ``torch.Generator``; global RNG untouched).
        prepend_bos: default ``model.cfg.default_prepend_bos`` when the tokenizer has a BOS
            token; never for a model without tokenizer.
        device: where to put the tokens (default CPU; the draw is always made on the CPU,
            so the tokens do not depend on the device).

    Returns:
        ``[n, 2T (+1)]`` token ids.
    """
    for name, value in (("T", T), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive integer, got {value!r}.")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    bos_id = _bos_token_id(model)
    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos) and bos_id is not None
    if prepend_bos and bos_id is None:
        raise ValueError(
            "prepend_bos=True but this model has no tokenizer with a BOS token; "
            "pass prepend_bos=False."
        )
    length = 2 * T + int(prepend_bos)
    if length > model.cfg.n_ctx:
        raise ValueError(
            f"T={T} gives sequences of {length} tokens ({'BOS + ' if prepend_bos else ''}2 x {T}), "
            f"longer than the model's context n_ctx={model.cfg.n_ctx}. Use "
            f"T <= {(model.cfg.n_ctx - int(prepend_bos)) // 2}."
        )
    vocab = _ordinary_vocabulary(model)
    gen = torch.Generator().manual_seed(int(seed))
    block = vocab[torch.randint(len(vocab), (n, T), generator=gen)]
    parts = [block, block]
    if prepend_bos:
        parts.insert(0, torch.full((n, 1), bos_id, dtype=torch.long))
    tokens = torch.cat(parts, dim=1)
    return tokens if device is None else tokens.to(resolve_device(device))


def detection_patterns(
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Bool[Tensor, "batch detector query key"]:
    """The 0/1 detection patterns of :data:`DETECTORS` for a (left-padded) token batch.

    ``[:, 0]`` previous token ``D[i, i-1]``; ``[:, 1]`` duplicate token ``D[i, j]`` iff
    ``tok[j] == tok[i], j < i``; ``[:, 2]`` induction ``D[i, j+1]`` iff ``tok[j] == tok[i],
    j < i``. Entries whose query or key is padding are ``False``. On an unpadded sequence
    these equal TransformerLens's ``get_*_head_detection_pattern``.
    """
    real = _real_mask(tokens, attention_mask)
    n, P = tokens.shape
    both_real = real[:, :, None] & real[:, None, :]
    strictly_lower = torch.ones(P, P, dtype=torch.bool, device=tokens.device).tril(-1)
    previous = torch.ones(P, P, dtype=torch.bool, device=tokens.device).tril(-1).triu(-1)
    duplicate = (tokens[:, :, None] == tokens[:, None, :]) & strictly_lower & both_real
    induction = torch.zeros_like(duplicate)
    induction[:, :, 1:] = duplicate[:, :, :-1]
    previous = previous & both_real
    return torch.stack([previous, duplicate, induction], dim=1)


# ----------------------------------------------------------------------------- scoring


def score_patterns(
    pattern: Float[Tensor, "batch head query key"],
    detection: Bool[Tensor, "batch detector query key"],
    keep: Bool[Tensor, "batch query key"],
    normalize: Normalize = "rows",
) -> Float[Tensor, "batch detector head"]:
    """Score attention patterns against detection patterns, all heads at once.

    ``keep`` marks the entries that count: real query row, real key column, and not an
    excluded column (BOS / current token). With ``A' = pattern * keep``:

    - ``"rows"``: ``mean_{i in R} (sum_j A'[i,j] D[i,j]) / (sum_j A'[i,j])`` with
      ``R = {i : any_j D[i,j] & keep[i,j]}``; NaN when ``R`` is empty.
    - ``"detect_head"``: ``sum_ij A' * D / sum_ij A'`` (TransformerLens "mul").
    """
    return _score(pattern, _Targets.of(detection, keep), normalize)


class _Targets(NamedTuple):
    """The kept detection-pattern entries of a batch, computed once and reused per layer."""

    keep: Bool[Tensor, "batch query key"]
    index: tuple[Tensor, Tensor, Tensor, Tensor]  # (batch, detector, query, key) of each target
    applies: Float[Tensor, "batch detector 1 query"]  # rows with at least one kept target
    n_detectors: int

    @classmethod
    def of(cls, detection: Tensor, keep: Tensor) -> _Targets:
        targets = detection & keep[:, None]
        return cls(
            keep=keep,
            index=targets.nonzero(as_tuple=True),
            applies=targets.any(-1)[:, :, None].float(),
            n_detectors=detection.shape[1],
        )


def _score(pattern: Tensor, targets: _Targets, normalize: Normalize) -> Tensor:
    """``score_patterns`` on prepared targets. The detection patterns are sparse (about one
    target per row), so the numerator gathers the pattern at the targets and scatter-adds
    them per row instead of multiplying dense ``[query, key]`` matrices."""
    batch, heads, queries, _ = pattern.shape
    masked = torch.where(targets.keep[:, None], pattern, 0.0)  # also drops NaN padding rows
    b, d, q, k = targets.index
    hits = pattern.new_zeros(batch, targets.n_detectors, queries, heads)
    hits.index_put_((b, d, q), masked[b, :, q, k], accumulate=True)
    hits = hits.transpose(-1, -2)  # [batch, detector, head, query]
    if normalize == "detect_head":
        return hits.sum(-1) / masked.sum((-1, -2))[:, None]
    row_scores = hits / masked.sum(-1)[:, None].clamp_min(_TINY)
    applies = targets.applies.to(pattern.dtype)
    return (row_scores * applies).sum(-1) / applies.sum(-1)  # 0/0 = NaN: nothing applies


def _keep_mask(
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    *,
    bos_token_id: int | None,
    exclude_bos: bool,
    exclude_current_token: bool,
    normalize: Normalize,
) -> Bool[Tensor, "batch query key"]:
    """Which (query, key) entries count: both real, minus excluded columns.

    ``exclude_bos`` drops the first real column of each row: with ``"rows"`` only if that
    token is BOS (never assume position 0 is BOS); with ``"detect_head"`` always, exactly as
    TransformerLens zeroes column 0.
    """
    real = _real_mask(tokens, attention_mask)
    keep = real[:, :, None] & real[:, None, :]
    P = tokens.shape[1]
    if exclude_bos:
        first = torch.argmax(real.int(), dim=1)  # first real position of each row
        is_bos = (
            torch.ones_like(first, dtype=torch.bool)
            if normalize == "detect_head"
            else (
                tokens.gather(1, first[:, None])[:, 0] == bos_token_id
                if bos_token_id is not None
                else torch.zeros_like(first, dtype=torch.bool)
            )
        )
        column = torch.arange(P, device=tokens.device)[None] == first[:, None]  # [batch, key]
        keep = keep & ~(column & is_bos[:, None])[:, None, :]
    if exclude_current_token:
        keep = keep & ~torch.eye(P, dtype=torch.bool, device=tokens.device)
    return keep


def _pattern_reducer(
    model: HookedTransformer,
    detectors: Sequence[str],
    normalize: Normalize,
    exclude_bos: bool,
    exclude_current_token: bool,
):
    """The per-batch reducer handed to :func:`~icl_heads.activations.iter_batches`: it
    prepares the batch's detection targets once, then reduces each layer's attention pattern
    to ``[batch, detector, head]`` scores inside the forward pass, so the patterns of all
    layers never coexist in memory (only one layer's ``[batch, head, pos, pos]`` at a
    time). That reduce-in-the-hook path is the point of the detectors' speed and memory."""
    which = [DETECTORS.index(d) for d in detectors]
    bos_token_id = _bos_token_id(model)

    def for_batch(batch: PromptSet):
        detection = detection_patterns(batch.tokens, batch.attention_mask)[:, which]
        keep = _keep_mask(
            batch.tokens,
            batch.attention_mask,
            bos_token_id=bos_token_id,
            exclude_bos=exclude_bos,
            exclude_current_token=exclude_current_token,
            normalize=normalize,
        )
        targets = _Targets.of(detection, keep)
        return lambda pattern, name: _score(pattern, targets, normalize)

    return for_batch


# ----------------------------------------------------------------------------- token detectors


def token_detector_scores(
    model: HookedTransformer,
    sequences: Sequences = None,
    *,
    detectors: Sequence[str] = DETECTORS,
    T: int = 50,
    n: int = 32,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> dict[str, HeadScores]:
    """Previous-token, duplicate-token and induction scores of every head in one batched pass.

    Only attention patterns are read (a ``hook_pattern`` filter), each layer's pattern is
    reduced to per-head scores as soon as it is computed (see :func:`score_patterns`).

    Args:
        model: the model.
        sequences: what to score: ``None`` (default) for :func:`random_repeated_tokens`
            ``(T, n, seed)``; a :class:`PromptSet` (e.g. a task's ICL prompts); or a
            ``[batch, pos]`` token tensor (left-padded if ``attention_mask`` is given, else
            unpadded).
        detectors: any of ``"previous_token"``, ``"duplicate_token"``, ``"induction"``.
        T, n, seed: the random sequences (only used when ``sequences`` is None).
        attention_mask: ``[batch, pos]`` 1 for real tokens, for a token tensor.
        normalize: ``"rows"`` (perfect head = 1.0) or ``"detect_head"`` (TransformerLens's
            "mul" measure, exactly).
        exclude_bos: zero the attention to the BOS column before scoring.
        exclude_current_token: zero the attention to the current token before scoring.
        batch_size: sequences per forward pass (default 32: the random sequences are short).
        device: defaults to the model's device.
        interventions: run with these interventions (e.g. an ablation).
        progress: show a progress bar.

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
    prompts, source = _as_prompt_set(
        model, sequences, T=T, n=n, seed=seed, attention_mask=attention_mask
    )
    interventions = check_interventions(interventions, model)
    reducer = _pattern_reducer(model, detectors, normalize, exclude_bos, exclude_current_token)
    names = [f"blocks.{layer}.{_PATTERN_SUFFIX}" for layer in range(model.cfg.n_layers)]
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
    n: int = 32,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> HeadScores:
    """Previous-token score of every head: attention from position ``i`` to ``i-1``.

    Arguments as in :func:`token_detector_scores` (default: ``T=50``, ``n=32``, ``seed=0``
    random repeated sequences, ``normalize="rows"``).

    Example::

        ih.previous_token_scores(model).top(5)
    """
    return token_detector_scores(
        model,
        sequences,
        detectors=["previous_token"],
        T=T,
        n=n,
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
    n: int = 32,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> HeadScores:
    """Duplicate-token score of every head: attention to earlier occurrences of the current
    token. Arguments as in :func:`token_detector_scores`."""
    return token_detector_scores(
        model,
        sequences,
        detectors=["duplicate_token"],
        T=T,
        n=n,
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
    n: int = 32,
    seed: int = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
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
        n=n,
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


# ----------------------------------------------------------------------------- label attention


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
    batch_size: int = 16,
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
    names = [f"blocks.{layer}.{_PATTERN_SUFFIX}" for layer in range(model.cfg.n_layers)]
    masses, golds = [], []
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
        query_rows = torch.stack([b.activations[n] for n in names], dim=1)  # [b, L, H, pos]
        positions = b.prompts.demo_label_positions  # [b, k]
        index = positions[:, None, None, :].expand(*query_rows.shape[:3], positions.shape[1])
        to_labels = query_rows.gather(-1, index)  # [b, L, H, k]
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


# ----------------------------------------------------------------------------- all at once


def detect_heads(
    model: HookedTransformer,
    prompts: PromptSet | None = None,
    *,
    sequences: Sequences = None,
    T: int = 50,
    n: int = 32,
    seed: int = 0,
    thresholds: dict[str, float] | float | None = None,
    top_k: int | dict[str, int] | None = None,
    normalize: Normalize = "rows",
    exclude_bos: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    interventions: Sequence = (),
    progress: bool = True,
) -> pd.DataFrame:
    """All four detectors in one tidy table: one row per head.

    The token detectors run on ``sequences`` (default: random ``[BOS] + r + r`` sequences
    with ``T``, ``n``, ``seed``; see :func:`token_detector_scores`); label attention runs on
    the ICL ``prompts`` when given (else NaN).

    A head gets a kind when its score reaches the kind's threshold (default
    :data:`DEFAULT_THRESHOLDS`, 0.5 each; a float sets all four; a dict overrides some), or,
    when ``top_k`` is given (an int for every kind or a dict per kind), when it is among
    the ``top_k`` heads by that score. Kinds: ``"previous_token"``, ``"duplicate_token"``,
    ``"induction"``, ``"label_attention"`` (by ``label_attention_score``); several are
    joined with ``"+"``; none is ``""``.

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
        n=n,
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


# ----------------------------------------------------------------------------- helpers


def _bos_token_id(model: HookedTransformer) -> int | None:
    tok = model.tokenizer
    return None if tok is None else tok.bos_token_id


def _ordinary_vocabulary(model: HookedTransformer) -> Int[Tensor, " vocab"]:
    size = model.cfg.d_vocab
    tok = model.tokenizer
    if tok is None:
        return torch.arange(size)
    size = min(size, len(tok))
    allowed = torch.ones(size, dtype=torch.bool)
    special = [i for i in tok.all_special_ids if 0 <= i < size]
    allowed[special] = False
    if not allowed.any():
        raise ValueError("This model's vocabulary has no ordinary (non-special) tokens.")
    return allowed.nonzero()[:, 0]


def _real_mask(tokens: Tensor, attention_mask: Tensor | None) -> Bool[Tensor, "batch pos"]:
    if attention_mask is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return attention_mask.to(tokens.device).bool()


def _check_detectors(detectors: Sequence[str]) -> list[str]:
    if isinstance(detectors, str):
        detectors = [detectors]
    detectors = list(detectors)
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown or not detectors:
        raise ValueError(f"Unknown detector(s) {unknown or detectors}; choose from {DETECTORS}.")
    return detectors


def _as_prompt_set(
    model: HookedTransformer,
    data: Sequences,
    *,
    T: int,
    n: int,
    seed: int,
    attention_mask: Tensor | None,
) -> tuple[PromptSet, dict]:
    """Wrap the detectors' input as a PromptSet so it streams through ``iter_batches``;
    also the settings fields that say what was scored.

    A raw token batch becomes a PromptSet with no demonstrations (``k=0``) and dummy labels:
    only ``tokens``/``attention_mask`` are read by the detectors.
    """
    if isinstance(data, PromptSet):
        if attention_mask is not None:
            raise ValueError("attention_mask is only for a token tensor; a PromptSet has its own.")
        check_prompt_set(data, "sequences", model=model)
        return data, {"sequences": "prompts", "prompts": data.info()}
    if data is None:
        tokens = random_repeated_tokens(model, T, n, seed)
        mask = torch.ones_like(tokens)
        source = {"sequences": "random_repeated", "T": int(T), "n": int(n), "seed": int(seed)}
    elif isinstance(data, Tensor):
        tokens = data[None] if data.ndim == 1 else data
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(
                f"Token data must be an integer [batch, pos] tensor, got dtype "
                f"{data.dtype} and shape {tuple(data.shape)}."
            )
        if tokens.shape[0] == 0 or tokens.shape[1] < 2:
            raise ValueError(
                f"Token data must hold at least one sequence of >= 2 tokens, got "
                f"shape {tuple(tokens.shape)}."
            )
        if tokens.shape[1] > model.cfg.n_ctx:
            raise ValueError(
                f"Sequences of {tokens.shape[1]} tokens exceed the model's context "
                f"n_ctx={model.cfg.n_ctx}; shorten them."
            )
        if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
            raise ValueError(
                f"Token ids must lie in [0, d_vocab={model.cfg.d_vocab}), got "
                f"[{int(tokens.min())}, {int(tokens.max())}]."
            )
        if attention_mask is None:
            mask = torch.ones_like(tokens)
        else:
            mask = attention_mask[None] if attention_mask.ndim == 1 else attention_mask
            if mask.shape != tokens.shape:
                raise ValueError(
                    f"attention_mask has shape {tuple(mask.shape)}; the tokens "
                    f"have {tuple(tokens.shape)}."
                )
            if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask.sum(-1) == 0).any()):
                raise ValueError(
                    "attention_mask must be left-padded (zeros, then ones) with at "
                    "least one real token per row."
                )
        tokens = tokens.long().cpu()
        mask = mask.long().cpu()
        source = {"sequences": "tokens"}
    else:
        raise TypeError(
            f"sequences must be None (random repeated tokens), a PromptSet or a "
            f"[batch, pos] token tensor, got {type(data).__name__}."
        )
    n = tokens.shape[0]
    empty = torch.zeros(n, 0, dtype=torch.long)
    prompts = PromptSet(
        tokens=tokens,
        attention_mask=mask,
        gold=torch.zeros(n, dtype=torch.long),
        label_token_ids=torch.zeros(0, dtype=torch.long),
        demo_label_positions=empty,
        demo_labels=empty,
        texts=("",) * n,
        label_words=(),
        task_name="tokens",
        k=0,
        seed=int(seed),
        perturbation="gold",
        query_examples=(0,) * n,
    )
    return prompts, source


def _thresholds(thresholds: dict[str, float] | float | None) -> dict[str, float]:
    if thresholds is None:
        return dict(DEFAULT_THRESHOLDS)
    if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        return dict.fromkeys(KINDS, float(thresholds))
    if isinstance(thresholds, dict):
        unknown = set(thresholds) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown kind(s) {sorted(unknown)} in thresholds; kinds are {KINDS}.")
        return {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in thresholds.items()}}
    raise TypeError(
        f"thresholds must be a float or a dict kind -> float, got {type(thresholds).__name__}."
    )


def _top_k(
    top_k: int | dict[str, int] | None, n_layers: int, n_heads: int
) -> dict[str, int] | None:
    if top_k is None:
        return None
    if isinstance(top_k, dict):
        unknown = set(top_k) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown kind(s) {sorted(unknown)} in top_k; kinds are {KINDS}.")
        return {
            k: check_top_k(v, n_layers, n_heads, allow_zero=True, what=f"top_k[{k!r}]")
            for k, v in top_k.items()
        }
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"top_k must be an int or a dict kind -> int, got {top_k!r}.")
    return dict.fromkeys(KINDS, check_top_k(top_k, n_layers, n_heads, allow_zero=True))


def _top_k_mask(scores: Float[Tensor, " n"], k: int) -> Bool[Tensor, " n"]:
    valid = ~torch.isnan(scores)
    k = min(k, int(valid.sum()))
    order = torch.argsort(torch.where(valid, scores, -torch.inf), descending=True, stable=True)
    mask = torch.zeros_like(valid)
    mask[order[:k]] = True
    return mask
