"""Attention patterns of one prompt (icl_heads.attention_patterns): every head's pattern,
without padding, equal to TransformerLens's own cache; the record checks its shapes."""

from __future__ import annotations

import pytest
import torch

from icl_heads.attention_patterns import AttentionExample, attention_example


@pytest.fixture(scope="module")
def example(tiny_llama, tiny_prompts):
    return attention_example(tiny_llama, tiny_prompts, index=1)


def test_attention_example_has_every_heads_pattern_without_padding(
    tiny_llama, tiny_prompts, example
):
    length = int(tiny_prompts.lengths[1])
    assert example.patterns.shape == (2, 4, length, length)
    assert example.n_layers == 2 and example.n_heads == 4
    assert len(example.tokens) == length and example.prompt_index == 1
    assert torch.allclose(example.patterns.sum(-1), torch.ones(2, 4, length), atol=1e-5)
    assert torch.all(example.patterns.triu(1) == 0)  # causal
    assert example.text == tiny_prompts.texts[1]
    assert example.answer == tiny_prompts.label_words[int(tiny_prompts.gold[1])]
    # the same patterns as TransformerLens's own cache on the unpadded prompt
    tokens = tiny_prompts.select([1]).tokens
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=lambda n: n.endswith("pattern"))
    assert torch.allclose(example.patterns[1], cache["pattern", 1][0], atol=1e-5)


def test_attention_example_checks_its_shapes():
    with pytest.raises(ValueError, match="3 tokens"):
        AttentionExample(["a", "b", "c"], torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="n_layers, n_heads, pos, pos"):
        AttentionExample(["a"], torch.zeros(1, 1))
