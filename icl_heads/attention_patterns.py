"""Every head's attention pattern on one prompt: :func:`attention_example` runs the model
once and returns an :class:`AttentionExample`, the data the linked report
(:mod:`icl_heads.report`) and :func:`icl_heads.viz.attention_pattern` draw::

    from icl_heads.attention_patterns import attention_example

    example = attention_example(model, prompts)          # prompt 0, every head
    viz.attention_pattern(example.patterns[3, 5], example.tokens, head=ih.Head(3, 5))

Running lives here, drawing in :mod:`icl_heads.viz` / :mod:`icl_heads.report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from .activations import collect

if TYPE_CHECKING:
    from .backends import HookedTransformer
    from .prompts import PromptSet


@dataclass
class AttentionExample:
    """The attention patterns of every head on one prompt, for the report's detail panel.

    Attributes:
        tokens: the prompt's tokens (no padding), one string per position.
        patterns: ``[n_layers, n_heads, query, key]`` attention weights.
        text: the prompt's text.
        prompt_index: the prompt's row in the :class:`~icl_heads.prompts.PromptSet`.
        answer: the gold label of the prompt ("" when unknown).

    Example::

        AttentionExample(tokens=["a", "b"], patterns=torch.ones(2, 4, 2, 2).tril() / 2)
    """

    tokens: list[str]
    patterns: Float[Tensor, "layer head query key"]
    text: str = ""
    prompt_index: int = 0
    answer: str = ""

    def __post_init__(self) -> None:
        self.patterns = torch.as_tensor(self.patterns).detach().float().cpu()
        if self.patterns.ndim != 4 or self.patterns.shape[2] != self.patterns.shape[3]:
            raise ValueError(
                f"AttentionExample.patterns must be [n_layers, n_heads, pos, pos], "
                f"got shape {tuple(self.patterns.shape)}."
            )
        if self.patterns.shape[2] != len(self.tokens):
            raise ValueError(
                f"AttentionExample: {len(self.tokens)} tokens for patterns over "
                f"{self.patterns.shape[2]} positions."
            )

    @property
    def n_layers(self) -> int:
        return self.patterns.shape[0]

    @property
    def n_heads(self) -> int:
        return self.patterns.shape[1]


def attention_example(
    model: HookedTransformer,
    prompts: PromptSet,
    index: int = 0,
    *,
    device: str | torch.device | None = None,
) -> AttentionExample:
    """Every head's attention pattern on prompt ``index`` of ``prompts`` (one forward pass
    through :func:`icl_heads.activations.collect`, capturing only ``hook_pattern``).

    Args:
        model: the model.
        prompts: the prompt set; padding is removed.
        index: which prompt (default the first).
        device: where to run (default: the model's device).

    Returns:
        An :class:`AttentionExample`: the prompt's tokens, text and gold label, and
        ``patterns`` of shape ``[n_layers, n_heads, pos, pos]`` over its unpadded tokens.

    Example::

        example = attention_example(model, prompts, index=2)
        example.patterns[3, 5, -1]   # where head L3H5 attends from the query token
    """
    one = prompts.select([index])
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    got = collect(
        model, one, names, positions="all", device=device, return_logits=False, progress=False
    )
    keep = one.attention_mask[0].bool().cpu()
    here = got.activations[names[0]].device  # a split model's layers: moved to the first's
    patterns = torch.stack([got.activations[name][0].to(here) for name in names])  # [L, H, T, T]
    patterns = patterns[:, :, keep][:, :, :, keep]
    tokens = model.to_str_tokens(one.tokens[0][keep].cpu())
    answer = one.label_words[int(one.gold[0])] if len(one.label_words) else ""
    return AttentionExample(
        tokens=[str(t) for t in tokens],
        patterns=patterns,
        text=one.texts[0],
        prompt_index=int(index),
        answer=answer,
    )
