"""Checked inputs of the geometry measures: states as a ``[prompt, layer, d]`` float64
tensor, one label per prompt, class codes with enough prompts per class, layer labels.

Example::

    X = as_states(states)                            # [prompt, layer, d] float64, CPU
    codes, n_classes = class_codes(as_labels(prompts.gold, len(X)), 5, "separability")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def as_states(states, what: str = "states") -> Tensor:
    """``[prompt, layer, d]`` float64 CPU tensor from a tensor / array of 2 or 3 dims."""
    if isinstance(states, np.ndarray):
        states = torch.from_numpy(states)
    if not isinstance(states, Tensor):
        raise TypeError(
            f"{what} must be a [prompt, layer, d_model] or [prompt, d_model] tensor "
            f"(e.g. ih.query_states(model, prompts)), got {type(states).__name__}."
        )
    if (
        states.dtype == torch.bool
        or states.is_complex()
        or not (states.dtype.is_floating_point or states.dtype in (torch.int32, torch.int64))
    ):
        raise TypeError(f"{what} must hold real numbers, got a {states.dtype} tensor.")
    if states.ndim == 2:
        states = states[:, None]
    if states.ndim != 3:
        raise ValueError(
            f"{what} must be [prompt, layer, d_model] or [prompt, d_model], got shape "
            f"{tuple(states.shape)}."
        )
    if states.shape[0] == 0 or states.shape[1] == 0 or states.shape[2] == 0:
        raise ValueError(
            f"{what} is empty (shape {tuple(states.shape)}); give at least one "
            "prompt, layer and dimension."
        )
    states = states.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(states).flatten(1).all(-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{what} contain NaN or inf values in {len(rows)} of {len(states)} prompts "
            f"(first: prompt {rows[0]}); the run that made them broke (e.g. a NaN "
            "intervention). Give finite states."
        )
    return states


def as_labels(labels, n: int) -> np.ndarray:
    """Labels as a 1-D array with one entry per prompt; a missing label (NaN, inf, None)
    is an error, never an extra class."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError):
        raise TypeError(
            f"labels must be one class label per prompt (e.g. prompts.gold), got "
            f"{type(labels).__name__}."
        ) from None
    if arr.ndim != 1:
        raise ValueError(
            f"labels must be 1-D (one label per prompt, e.g. prompts.gold), got shape {arr.shape}."
        )
    if len(arr) != n:
        raise ValueError(
            f"states and labels have different lengths ({n} states vs {len(arr)} "
            "labels); pass one label per prompt, in the order of the states (e.g. "
            "query_states(model, prompts) with prompts.gold)."
        )
    values = arr.tolist()
    missing = np.array([_missing(v) for v in values], dtype=bool)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"labels hold {int(missing.sum())} missing value(s) (NaN, inf or None; first: "
            f"prompt {first} = {values[first]!r}); a missing label is not a class. Drop "
            "those prompts or give every prompt its class."
        )
    return arr


def _missing(value: object) -> bool:
    """A label that is no class: None, or a float NaN / inf."""
    if value is None:
        return True
    return isinstance(value, float) and not np.isfinite(value)


def class_codes(labels: np.ndarray, folds: int | None, what: str) -> tuple[np.ndarray, int]:
    """Class codes ``0..C-1`` and ``C``; errors for one class or too few per class."""
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{what} needs at least two classes among the prompts, got only "
            f"{classes.tolist()} over {len(labels)} prompts; build prompts that cover "
            "several labels (build_prompts balances the labels: use n >= the "
            "number of labels)."
        )
    counts = np.bincount(codes)
    if folds is not None and counts.min() < folds:
        worst = classes[int(counts.argmin())].item()  # a plain number: not np.int64(0)
        raise ValueError(
            f"{what}: class {worst!r} has {int(counts.min())} prompts, fewer than "
            f"folds={folds}; use folds <= {int(counts.min())} or more prompts "
            f"(n >= folds x classes = {folds * len(classes)})."
        )
    if counts.min() < 2:
        worst = classes[int(counts.argmin())].item()  # a plain number: not np.int64(0)
        raise ValueError(
            f"{what}: class {worst!r} has a single prompt; every class needs at "
            "least two (use more prompts)."
        )
    return codes.astype(np.int64), len(classes)


def check_layer_labels(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(n_layers))
    labels = tuple(int(x) for x in layers)
    if len(labels) != n_layers:
        raise ValueError(
            f"layers names {len(labels)} layers but the states have {n_layers}; "
            "give one label per state layer."
        )
    return labels
