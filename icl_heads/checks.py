"""Argument checks shared by the public functions: a bad value becomes a one-line
``TypeError``/``ValueError`` that names the argument and the value."""

from __future__ import annotations

import numbers

import numpy as np


def check_int(value: object, name: str, minimum: int | None = None, what: str | None = None) -> int:
    """``value`` as an ``int``: ``TypeError`` for bools, floats and other types (a whole
    float gets a hint), ``ValueError`` below ``minimum``. ``what`` says what is wanted
    (default: "an integer", and ">= minimum" for a value too small).

    Example::

        k = check_int(k, "k", 0, "a non-negative integer")
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        hint = f"; write {int(value)}" if isinstance(value, float) and value.is_integer() else ""
        raise TypeError(
            f"{name} must be {what or 'an integer'}, got {type(value).__name__} {value!r}{hint}."
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what or f'>= {minimum}'}, got {value!r}.")
    return int(value)


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as a non-negative ``int`` (numpy's and torch's generators need one):
    ``TypeError`` for other types, ``ValueError`` below 0, both naming the value.

    Example::

        seed = check_seed(seed)
    """
    return check_int(seed, name, 0, "a non-negative integer (a random seed)")
