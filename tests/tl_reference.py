"""TransformerLens references for the tests and the detector benchmark (test scaffolding,
not part of the library)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.backends import HookedTransformer

#: TransformerLens ``detect_head`` names of icl_heads.detectors.DETECTORS.
TL_HEAD_NAMES = {
    "previous_token": "previous_token_head",
    "duplicate_token": "duplicate_token_head",
    "induction": "induction_head",
}


def detect_head_on_tokens(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"] | Sequence[Int[Tensor, " pos"]],
    patterns: Sequence[str | Tensor],
    *,
    share_cache: bool = False,
    **kwargs,
) -> list[Float[Tensor, "layer head"]]:
    """TransformerLens's ``detect_head`` on exactly these (unpadded) token sequences, for
    cross-checking icl_heads.token_detector_scores (``normalize="detect_head"``).

    ``detect_head`` tokenizes strings itself, and random token ids need not survive a
    decode/encode round trip. So it gets a model proxy whose ``to_tokens`` returns one
    sequence (everything else is the real model). It is called once per sequence and
    pattern, as its list path does, and the scores are averaged over sequences.

    Args:
        model: the model.
        tokens: ``[batch, pos]`` unpadded sequences, or a list of 1-D sequences (their
            lengths may differ), scored one at a time.
        patterns: each one of icl_heads.detectors.DETECTORS (or detect_head's own head name), or a
            ``[pos, pos]`` 0/1 tensor (then every sequence must have that length).
        share_cache: run one ``run_with_cache`` per sequence and pass it to every pattern
            (``cache=``, detect_head's cheapest use); by default detect_head runs the model
            itself for each pattern.
        **kwargs: passed to ``detect_head`` (``exclude_bos``, ``exclude_current_token``,
            ``error_measure``, ``heads``).

    Returns:
        One ``[layer, head]`` tensor per pattern: detect_head's mean over sequences.
    """
    from transformer_lens.head_detector import detect_head

    patterns = [TL_HEAD_NAMES.get(p, p) if isinstance(p, str) else p for p in patterns]
    scores: list[list[Tensor]] = [[] for _ in patterns]
    for row in tokens:
        sequence = row[None]
        cache = None
        if share_cache:
            _, cache = model.run_with_cache(sequence, remove_batch_dim=True)
        proxy = _FixedTokens(model, sequence)
        for out, pattern in zip(scores, patterns):
            out.append(detect_head(proxy, "", pattern, cache=cache, **kwargs))
    return [torch.stack(out).mean(0) for out in scores]


class _FixedTokens:
    """A model proxy whose ``to_tokens`` returns fixed tokens (everything else is the
    model), so ``detect_head`` scores exactly these tokens."""

    def __init__(self, model: HookedTransformer, tokens: Tensor) -> None:
        self._model, self._tokens = model, tokens

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def to_tokens(self, *args, **kwargs) -> Tensor:
        return self._tokens
