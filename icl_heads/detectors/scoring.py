"""The scoring core of the token detectors: the 0/1 detection patterns of a token batch,
the entries that count, and the reduction of attention patterns to per-head scores inside
the forward pass (definitions in :mod:`icl_heads.detectors`). Also the settings record
every detector map carries.

Example::

    detection = detection_patterns(tokens)                    # [batch, detector, q, k]
    scores = score_patterns(pattern, detection, keep)          # [batch, detector, head]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..backends import HookedTransformer
from ..prompts import PromptSet
from ..settings import PromptInfo, Settings

#: The token detectors, in the order of the detector axis of :func:`detection_patterns`.
DETECTORS = ("previous_token", "duplicate_token", "induction")
Normalize = Literal["rows", "detect_head"]
NORMALIZATIONS = ("rows", "detect_head")
#: The attention-pattern hook of a block: ``blocks.{layer}.attn.hook_pattern``.
PATTERN_SUFFIX = "attn.hook_pattern"
_TINY = 1e-30  # guards 0/0 in the per-row normalisation (a row with no mass scores 0)


@dataclass(frozen=True)
class DetectorSettings(Settings):
    """How a detector map was made.

    ``sequences``: ``"random_repeated"`` (``T``, ``n`` and ``seed`` say which; ``n`` is the
    ``n_sequences`` scored, its name kept because saved results carry it), ``"prompts"``
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

    A pattern that is not finite at a kept entry (a broken run) is a ValueError, never a
    NaN score averaged away.
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
    mass = masked.sum(-1)  # [batch, head, query]; NaN / inf iff a kept entry is
    if not bool(torch.isfinite(mass).all()):
        bad = (~torch.isfinite(mass)).flatten(1).any(-1).nonzero().flatten().tolist()
        raise ValueError(
            f"The attention patterns of {len(bad)} of {batch} sequences hold NaN or inf at "
            f"real positions (first: batch row {bad[0]}); the run or an intervention made "
            "them non-finite, and they cannot be scored."
        )
    b, d, q, k = targets.index
    hits = pattern.new_zeros(batch, targets.n_detectors, queries, heads)
    hits.index_put_((b, d, q), masked[b, :, q, k], accumulate=True)
    hits = hits.transpose(-1, -2)  # [batch, detector, head, query]
    if normalize == "detect_head":
        return hits.sum(-1) / masked.sum((-1, -2))[:, None]
    row_scores = hits / mass[:, None].clamp_min(_TINY)
    applies = targets.applies.to(pattern.dtype)
    return (row_scores * applies).sum(-1) / applies.sum(-1)  # 0/0 = NaN: nothing applies


def keep_mask(
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


def pattern_reducer(
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
    bos_token_id = tokenizer_bos_id(model)

    def for_batch(batch: PromptSet):
        detection = detection_patterns(batch.tokens, batch.attention_mask)[:, which]
        keep = keep_mask(
            batch.tokens,
            batch.attention_mask,
            bos_token_id=bos_token_id,
            exclude_bos=exclude_bos,
            exclude_current_token=exclude_current_token,
            normalize=normalize,
        )
        targets = _Targets.of(detection, keep)
        real = _real_mask(batch.tokens, batch.attention_mask)

        def score(pattern: Tensor, name: str) -> Tensor:
            # a split model's later blocks (n_devices > 1) hand their patterns over on their
            # own device: one layer's pattern at a time is moved to the batch's targets
            pattern = pattern.to(real.device)
            if not sinks:
                check_pattern_rows(pattern.sum(-1), real[:, None], name)
            return _score(pattern, targets, normalize)

        return score

    sinks = bool(getattr(model.cfg, "use_attention_sinks", False))
    return for_batch


def check_pattern_rows(row_sums: Tensor, real: Tensor, where: str) -> None:
    """A ValueError when a real query row of an attention pattern sums to exactly 0:
    TransformerLens replaces a NaN pattern by zeros, so such a row is a broken run (a NaN
    intervention, float16 overflow), never a score of 0. (Models with attention sinks may
    give a row little mass; the caller skips them.)"""
    dead = (row_sums == 0) & real
    if bool(dead.any()):
        rows = dead.flatten(1).any(-1).nonzero().flatten().tolist()
        raise ValueError(
            f"{where}: the attention of {len(rows)} of {row_sums.shape[0]} sequences is zero "
            f"in a whole real row (first: batch row {rows[0]}); TransformerLens zeroes NaN "
            "patterns, so the run or an intervention made them non-finite, and they cannot "
            "be scored."
        )


def tokenizer_bos_id(model: HookedTransformer) -> int | None:
    """The tokenizer's BOS token id (``None`` without tokenizer or BOS)."""
    tok = model.tokenizer
    return None if tok is None else tok.bos_token_id


def _real_mask(tokens: Tensor, attention_mask: Tensor | None) -> Bool[Tensor, "batch pos"]:
    if attention_mask is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return attention_mask.to(tokens.device).bool()
