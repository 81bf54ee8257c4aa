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

Rooms: :mod:`~icl_heads.detectors.scoring` (detection patterns, the scoring core, the
settings record), :mod:`~icl_heads.detectors.sequences` (what is scored),
:mod:`~icl_heads.detectors.token_detectors`, :mod:`~icl_heads.detectors.label_attention`
and :mod:`~icl_heads.detectors.detect` (:func:`detect_heads`). Every public name is
importable from ``icl_heads.detectors``.
"""

from __future__ import annotations

from .detect import DEFAULT_THRESHOLDS, KINDS, detect_heads
from .label_attention import LabelAttention, label_attention_scores
from .scoring import (
    DETECTORS,
    NORMALIZATIONS,
    DetectorSettings,
    Normalize,
    detection_patterns,
    score_patterns,
)
from .sequences import N_SEQUENCES, Sequences, random_repeated_tokens
from .token_detectors import (
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
    token_detector_scores,
)

__all__ = [
    "DETECTORS",
    "NORMALIZATIONS",
    "DEFAULT_THRESHOLDS",
    "KINDS",
    "N_SEQUENCES",
    "Normalize",
    "Sequences",
    "DetectorSettings",
    "random_repeated_tokens",
    "detection_patterns",
    "score_patterns",
    "token_detector_scores",
    "previous_token_scores",
    "duplicate_token_scores",
    "induction_scores",
    "LabelAttention",
    "label_attention_scores",
    "detect_heads",
]
