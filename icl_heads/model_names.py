"""Model names: the one check of a name :func:`icl_heads.models.load_model` will resolve
(the CLI's ``--model``/``--models`` use it too), and TransformerLens's official names on
either major version (``transformer_lens.loading_from_pretrained`` on 3.x,
``transformer_lens.supported_models`` on 4.x).

Example::

    from icl_heads.model_names import check_model_name
    check_model_name("default")   # 'default' (the embedded package is installed)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .embedded import EMBEDDED_MODELS, embedded_model_parts


def official_model_name(name: str) -> str:
    """TransformerLens's official name for ``name`` (a ``ValueError`` for a name it does not
    know), on TransformerLens 3.x and 4.x.

    Example::

        official_model_name("gpt2")   # 'gpt2'
    """
    try:  # TransformerLens 3.x
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:  # TransformerLens 4.x moved it
        from transformer_lens.supported_models import get_official_model_name
    return get_official_model_name(name)


def hub_problem(repo_id: str) -> str | None:
    """Why the hub model ``repo_id`` cannot be loaded now (``None``: it is in the local
    Hugging Face cache, or the hub answers within a few seconds).

    Example::

        hub_problem("gpt2")   # None when cached or online; 'ConnectError: ...' offline
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    try:
        huggingface_hub.HfApi().model_info(repo_id, timeout=10)
    except HfHubHTTPError:
        return None  # the hub answered (e.g. a gated model): loading gives the details
    except Exception as err:  # offline mode, no DNS, refused, timed out
        text = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return None


def check_model_name(
    name: object,
    option: str = "name",
    *,
    probe: Callable[[str], str | None] = hub_problem,
) -> str:
    """Check a model name the way :func:`icl_heads.models.load_model` will resolve it,
    loading nothing: an embedded model whose package is installed, a local directory with
    ``config.json``, or a TransformerLens official name that is in the local Hugging Face
    cache or can be downloaded now (``probe(repo_id)`` says why not, or ``None``). Errors
    name ``option`` (``"name"``; the CLI passes ``"--model"``) and the name. Returns it.

    Raises:
        TypeError: not a string.
        ValueError: an empty or unknown name, a file or a directory without config.json.
        FileNotFoundError: a path that does not exist.
        ImportError: an embedded model whose package is not installed.
        ConnectionError: a hub model that is not cached while the hub cannot be reached.

    Example::

        check_model_name("default")             # 'default'
        check_model_name("nope", "--model")     # ValueError: Unknown model 'nope' (--model)
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise TypeError(
            f"{option} must be a model name or a directory, got {name!r} of type "
            f"{type(name).__name__}."
        )
    choices = ", ".join(EMBEDDED_MODELS)
    fix = (
        f"pass an embedded model ({choices}), a local directory with a Hugging Face model, "
        "or a TransformerLens official name such as gpt2"
    )
    if not name.strip():
        raise ValueError(f"{option} {name!r} is empty; {fix}.")
    if name in EMBEDDED_MODELS:
        embedded_model_parts(EMBEDDED_MODELS[name])  # ImportError if its package is missing
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{option} {name!r} is a directory without config.json; pass a directory "
                "saved with model.save_pretrained(...) and tokenizer.save_pretrained(...)."
            )
        return name
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name):
        if path.exists():
            raise ValueError(
                f"{option} {name!r} is a file; pass the directory that holds a Hugging Face "
                "model (config.json and weights)."
            )
        raise FileNotFoundError(
            f"{option} {name!r}: no such directory; pass an existing directory with a Hugging "
            "Face model, or a model name."
        )
    try:
        official = official_model_name(name)
    except ValueError:
        raise ValueError(f"Unknown model {name!r} ({option}); {fix}.") from None
    problem = probe(official)
    if problem is not None:
        default = f"{option} default" if option.startswith("--") else "'default'"
        raise ConnectionError(
            f"{option} {name!r} must be downloaded from the Hugging Face hub, which cannot be "
            f"reached from this machine ({problem}). Use {default} for the embedded "
            "model, or a local directory that holds the model's files."
        )
    return name


__all__ = ["check_model_name", "official_model_name", "hub_problem"]
