"""Names that moved to another module keep working for one release: a module's
``__getattr__`` made by :func:`moved_names` returns the object from its new home with a
``DeprecationWarning`` that says how to import it now."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping


def moved_names(module: str, moves: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``module`` whose names ``moves`` maps to the
    modules that hold them now.

    Example::

        __getattr__ = moved_names(__name__, {"collect": "icl_heads.activations"})
        # icl_heads.collect -> DeprecationWarning: ... use `from icl_heads.activations
        #                      import collect`
    """

    def __getattr__(name: str) -> object:
        home = moves.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} is deprecated and leaves {module} in the next release; use "
            f"`from {home} import {name}`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__
