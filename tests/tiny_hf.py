"""A tiny random Hugging Face Llama for the tests that need a model in Hugging Face form
(the TransformerBridge parity tests, the Ray grid's models loaded by folder name)."""

from __future__ import annotations

import torch


def tiny_hf_llama(vocab_size: int, seed: int = 0):
    """A random 2-layer Llama (RMS norm, rotary, GQA: 4 query / 2 key-value heads, untied
    unembedding) with non-trivial norm weights, so folding is really exercised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model
