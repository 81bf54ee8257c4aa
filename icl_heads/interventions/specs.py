"""Interventions rebuilt from their specs (:func:`from_spec`, the reverse of
``iv.to_spec()``). The records a spec holds (tensors, positions, prompts) are described in
:mod:`icl_heads.interventions.records`; here every field is checked and a bad one is named
(``Bad 'ablate' spec field 'mode': ...``; nested fields dotted, e.g. ``'means.values'``).

Example::

    spec = json.loads(json.dumps(iv.to_spec()))
    again = from_spec(model, spec, prompts=[reference])
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..activations import ActivationMeans, activation_means
from ..backends import HookedTransformer
from ..batching import BatchSize, check_batch_size
from ..heads import heads_to_mask
from ..hooks import SITES, Intervention, Positions, check_positions, layers_to_mask
from ..prompts import PromptSet
from ..provenance import same_prompts
from ..settings import Settings, model_name
from .composition import compose
from .records import fingerprint
from .replacement import ABLATION_MODES, Ablation, ablate, ablate_layers, patch
from .steering import TASK_VECTOR_MODES, inject_task_vector, steer

log = logging.getLogger(__name__)

_SPEC_FIELDS = {
    "ablate": {
        "kind",
        "model",
        "site",
        "heads",
        "layers",
        "mode",
        "positions",
        "seed",
        "means",
        "reference",
    },
    "patch": {"kind", "model", "site", "heads", "layers", "positions", "source"},
    "steer": {"kind", "model", "site", "layer", "head", "alpha", "positions", "vector"},
    "task_vector": {"kind", "model", "layer", "mode", "scale", "positions", "vector"},
    "compose": {"kind", "parts"},
    "opaque": {"kind", "description"},
}


def _bad(kind: str, name: str, message: str) -> ValueError:
    return ValueError(f"Bad {kind!r} spec field {name!r}: {message}")


def _required(spec: Mapping, kind: str, name: str, where: str = "") -> Any:
    if name not in spec:
        raise _bad(kind, where + name, "missing; specs are written by iv.to_spec().")
    return spec[name]


def _spec_int(
    spec: Mapping, kind: str, name: str, *, optional: bool = False, where: str = ""
) -> int | None:
    value = spec.get(name) if optional else _required(spec, kind, name, where)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(kind, where + name, f"must be a whole number, got {value!r}.")
    return value


def _spec_batch_size(spec: Mapping, kind: str, where: str) -> BatchSize | None:
    """A recorded ``batch_size``: absent/None, a positive whole number, or ``"auto"`` (an
    intervention built with ``batch_size="auto"`` records it so; replayed, it picks the
    batch that fits this device)."""
    value = spec.get("batch_size")
    if value is None:
        return None
    try:
        return check_batch_size(value, "batch_size")
    except (TypeError, ValueError):
        raise _bad(
            kind, where + "batch_size", f"must be a positive whole number or 'auto', got {value!r}."
        ) from None


def _spec_number(spec: Mapping, kind: str, name: str) -> float:
    value = _required(spec, kind, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _bad(kind, name, f"must be a finite number, got {value!r}.")
    return float(value)


def _spec_range(kind: str, name: str, value: int, stop: int) -> None:
    if not 0 <= value < stop:
        raise _bad(kind, name, f"{value} is out of range for this model (0..{stop - 1}).")


def _spec_choice(spec: Mapping, kind: str, name: str, choices: Sequence[str]) -> str:
    value = _required(spec, kind, name)
    if value not in choices:
        raise _bad(kind, name, f"{value!r} is not one of {list(choices)}.")
    return value


def _spec_positions(spec: Mapping, kind: str, where: str = "") -> Positions:
    value = _required(spec, kind, "positions", where)
    if isinstance(value, (list, tuple)) and not value:
        raise _bad(
            kind, where + "positions", "an empty list; give 'query', 'all' or a list of ints."
        )
    try:
        return check_positions(value)
    except (TypeError, ValueError) as err:
        raise _bad(kind, where + "positions", str(err)) from None


def _spec_selection(model: HookedTransformer, spec: Mapping, kind: str, site: str) -> Tensor:
    """The ``[L, H]`` head mask (site z, field "heads") or ``[L]`` layer mask ("layers")."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    name = "heads" if site == "z" else "layers"
    other = "layers" if site == "z" else "heads"
    if other in spec:
        raise _bad(kind, other, f"site {site!r} selects {name}, not {other}.")
    value = _required(spec, kind, name)
    if not isinstance(value, list):
        raise _bad(kind, name, f"must be a list, got {value!r}.")
    try:
        if site == "z":
            if any(not isinstance(p, (list, tuple)) for p in value):
                raise TypeError(f"heads are [layer, head] pairs, got {value!r}.")
            return heads_to_mask([tuple(p) for p in value], L, H)
        return layers_to_mask(value, L)
    except (TypeError, ValueError) as err:
        raise _bad(kind, name, str(err)) from None


def _candidates(values: Any, what: type | tuple[type, ...]) -> list:
    if values is None:
        return []
    if isinstance(values, what):
        return [values]
    return list(values)


def _find_prompts(kind: str, name: str, info: Any, prompts: Any) -> PromptSet:
    """The PromptSet among ``prompts`` whose ``info()`` is the recorded ``info``."""
    if info is None:
        raise _bad(kind, name, "the prompts were not recorded, so they cannot be found again.")
    try:
        want = Settings.from_dict(info)
    except (TypeError, ValueError) as err:
        raise _bad(kind, name, f"not a PromptInfo ({err}).") from None
    given = _candidates(prompts, PromptSet)
    for p in given:
        if isinstance(p, PromptSet) and same_prompts(want, p.info()):  # digests too
            return p
    raise _bad(
        kind,
        name,
        f"needs the prompts {want}; pass that PromptSet in prompts= (given: "
        f"{[p.info() for p in given if isinstance(p, PromptSet)] or 'none'}).",
    )


def _tensor_from(kind: str, name: str, rec: Any, tensors: Any) -> Tensor | None:
    """The tensor of a record: its inline values, else the one of ``tensors`` with its
    fingerprint, else ``None``."""
    if (
        not isinstance(rec, Mapping)
        or not isinstance(rec.get("shape"), list)
        or not isinstance(rec.get("sha256"), str)
    ):
        raise _bad(
            kind,
            name,
            f"must be a tensor record {{'shape', 'sha256', ['values']}}, got {str(rec)[:80]!r}.",
        )
    if "values" in rec:
        try:
            t = torch.tensor(rec["values"], dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise _bad(kind, f"{name}.values", "must be a (nested) list of numbers.") from None
        if list(t.shape) != rec["shape"] or fingerprint(t) != rec["sha256"]:
            raise _bad(
                kind,
                f"{name}.values",
                "does not match the recorded shape and sha256 fingerprint (edited or truncated?).",
            )
        return t
    for cand in _candidates(tensors, (Tensor, ActivationMeans)):
        t = cand.values if isinstance(cand, ActivationMeans) else cand
        if (
            isinstance(t, Tensor)
            and list(t.shape) == rec["shape"]
            and fingerprint(t) == rec["sha256"]
        ):
            return t.detach().to("cpu", torch.float32)
    return None


def _spec_vector(kind: str, spec: Mapping, tensors: Any) -> Tensor:
    vector = _tensor_from(kind, "vector", _required(spec, kind, "vector"), tensors)
    if vector is None:
        rec = spec["vector"]
        raise _bad(
            kind,
            "vector",
            f"the {rec['shape']} vector is not inlined; pass it in "
            f"tensors= (fingerprint {rec['sha256']}).",
        )
    return vector


def _spec_means(
    model: HookedTransformer,
    spec: Mapping,
    site: str,
    *,
    prompts: Any,
    tensors: Any,
    device: Any,
    progress: bool,
) -> ActivationMeans | Tensor:
    rec = _required(spec, "ablate", "means")
    values = _tensor_from("ablate", "means", rec, tensors)
    made = rec.get("prompts") is not None
    if made:
        if rec.get("site") != site:
            raise _bad(
                "ablate", "means.site", f"{rec.get('site')!r}; this ablation is on {site!r}."
            )
        positions = _spec_positions(rec, "ablate", where="means.")
        batch_size = _spec_batch_size(rec, "ablate", where="means.")
    if values is None:
        if not made or rec.get("interventions"):
            why = "were made under interventions" if made else "were given as a bare tensor"
            raise _bad(
                "ablate",
                "means",
                f"the means {why} and are not inlined; pass them in "
                f"tensors= (fingerprint {rec['sha256']}).",
            )
        reference = _find_prompts("ablate", "means.prompts", rec["prompts"], prompts)
        got = activation_means(
            model,
            reference,
            site,
            positions=positions,
            batch_size=batch_size if batch_size is not None else 16,
            device=device,
            progress=progress,
        )
        if fingerprint(got.values) != rec["sha256"]:
            log.warning(
                "The recomputed mean activations differ from the recorded ones "
                "(another device or dtype?); the replay is not bit-exact."
            )
        return got
    if not made:
        return values
    return ActivationMeans(
        values=values,
        site=site,
        positions=positions,
        prompts=Settings.from_dict(rec["prompts"]),
        batch_size=batch_size,
        interventions=tuple(rec.get("interventions") or ()),
    )


def from_spec(
    model: HookedTransformer,
    spec: Mapping,
    *,
    prompts: PromptSet | Sequence[PromptSet] = (),
    tensors: Tensor | ActivationMeans | Sequence[Tensor | ActivationMeans] = (),
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Intervention:
    """Rebuild, for ``model``, the intervention that wrote ``spec`` (``iv.to_spec()``).

    What must be passed, by kind (prompt sets are matched to the spec by their ``info()``,
    tensors by their fingerprint, so order does not matter and one ``prompts=`` /
    ``tensors=`` list serves every part of a ``compose``):

    * ``ablate``, mode ``"zero"``: nothing.
    * ``ablate``, mode ``"mean"``: nothing when the means are inlined (at most
      :data:`~icl_heads.hooks.MAX_INLINE` numbers); else the means themselves in
      ``tensors=`` (an :class:`ActivationMeans` or tensor) or the reference ``PromptSet``
      they were averaged over in ``prompts=`` (they are recomputed with the recorded
      positions and batch size: bit-exact on the same device and dtype, a warning is logged
      otherwise). Means given as a bare tensor, or computed under interventions, must be
      passed in ``tensors=``.
    * ``ablate``, mode ``"resample"``: the reference ``PromptSet`` in ``prompts=`` (donor
      activations are collected again with the recorded batch size; donors follow the
      recorded seed).
    * ``patch``: the source ``PromptSet`` in ``prompts=``.
    * ``steer``, ``task_vector``: nothing when the vector is inlined; else the vector in
      ``tensors=``.
    * ``compose``: what its parts need.

    Example::

        spec = json.loads(json.dumps(iv.to_spec()))
        again = from_spec(model, spec, prompts=[reference])
        ih.evaluate(model, prompts, interventions=[again])    # the same numbers as iv

    Raises:
        ValueError: a bad spec (naming the bad field), a spec written for another model, or
            a missing prompt set / tensor (naming what to pass).
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
        raise ValueError(
            f"Bad spec field 'kind': a spec is a dict with a 'kind' (written by "
            f"iv.to_spec()), got {str(spec)[:80]!r}."
        )
    kind = spec["kind"]
    if kind not in _SPEC_FIELDS:
        raise ValueError(
            f"Bad spec field 'kind': unknown kind {kind!r}; known: {sorted(_SPEC_FIELDS)}."
        )
    unknown = sorted(set(spec) - _SPEC_FIELDS[kind])
    if unknown:
        raise _bad(
            kind,
            unknown[0],
            f"not a field of {kind!r} specs (fields: {sorted(_SPEC_FIELDS[kind])}).",
        )
    if spec.get("model") is not None and spec["model"] != model_name(model):
        raise _bad(
            kind,
            "model",
            f"written for model {spec['model']!r}; this model is {model_name(model)!r}.",
        )
    common = dict(prompts=prompts, tensors=tensors, device=device, progress=progress)
    if kind == "opaque":
        raise _bad(
            kind,
            "kind",
            f"{spec.get('description', 'this intervention')!r} was "
            "written from an intervention that cannot be rebuilt (only ablate, patch, "
            "steer, task_vector and compose can).",
        )
    if kind == "compose":
        parts = _required(spec, kind, "parts")
        if not isinstance(parts, list) or not parts:
            raise _bad(kind, "parts", f"must be a non-empty list of specs, got {parts!r}.")
        return compose(*(from_spec(model, part, **common) for part in parts))
    if kind == "ablate":
        return _ablation_from_spec(model, spec, **common)
    if kind == "patch":
        site = _spec_choice(spec, kind, "site", list(SITES))
        mask = _spec_selection(model, spec, kind, site)
        positions = _spec_positions(spec, kind)
        rec = _required(spec, kind, "source")
        if not isinstance(rec, Mapping):
            raise _bad(kind, "source", f"must be a dict {{'prompts', 'batch_size'}}, got {rec!r}.")
        source = _find_prompts(kind, "source", rec.get("prompts"), prompts)
        batch_size = _spec_batch_size(rec, kind, where="source.")
        selection = {"heads": mask} if site == "z" else {"layers": mask}
        return patch(
            model,
            source,
            site=site,
            positions=positions,
            device=device,
            batch_size=batch_size if batch_size is not None else 16,
            progress=progress,
            **selection,
        )
    if kind == "steer":
        site = _spec_choice(spec, kind, "site", list(SITES))
        layer = _spec_int(spec, kind, "layer")
        head = _spec_int(spec, kind, "head", optional=True)
        alpha = _spec_number(spec, kind, "alpha")
        positions = _spec_positions(spec, kind)
        vector = _spec_vector(kind, spec, tensors)
        if (site == "z") != (head is not None):
            raise _bad(
                kind,
                "head",
                f"{head!r}; site 'z' steers one head (give its index), other sites none.",
            )
        _spec_range(kind, "layer", layer, model.cfg.n_layers)
        if head is not None:
            _spec_range(kind, "head", head, model.cfg.n_heads)
        try:
            if site == "z":
                return steer(model, vector, head=(layer, head), alpha=alpha, positions=positions)
            return steer(model, vector, layer, alpha=alpha, positions=positions, site=site)
        except (TypeError, ValueError) as err:
            raise _bad(kind, "vector", str(err)) from None
    # task_vector
    layer = _spec_int(spec, kind, "layer")
    mode = _spec_choice(spec, kind, "mode", TASK_VECTOR_MODES)
    scale = _spec_number(spec, kind, "scale")
    positions = _spec_positions(spec, kind)
    vector = _spec_vector(kind, spec, tensors)
    _spec_range(kind, "layer", layer, model.cfg.n_layers + 1)  # states 0..n_layers
    try:
        return inject_task_vector(model, vector, layer, mode=mode, scale=scale, positions=positions)
    except (TypeError, ValueError) as err:
        raise _bad(kind, "vector", str(err)) from None


def _ablation_from_spec(
    model: HookedTransformer,
    spec: Mapping,
    *,
    prompts: Any,
    tensors: Any,
    device: Any,
    progress: bool,
) -> Ablation:
    kind = "ablate"
    site = _spec_choice(spec, kind, "site", list(SITES))
    mask = _spec_selection(model, spec, kind, site)
    mode = _spec_choice(spec, kind, "mode", ABLATION_MODES)
    positions = _spec_positions(spec, kind)
    seed = _spec_int(spec, kind, "seed")
    means = reference = None
    batch_size = 16
    if mode == "mean":
        means = _spec_means(
            model, spec, site, prompts=prompts, tensors=tensors, device=device, progress=progress
        )
    elif mode == "resample":
        rec = _required(spec, kind, "reference")
        if not isinstance(rec, Mapping):
            raise _bad(
                kind, "reference", f"must be a dict {{'prompts', 'batch_size'}}, got {rec!r}."
            )
        reference = _find_prompts(kind, "reference", rec.get("prompts"), prompts)
        recorded = _spec_batch_size(rec, kind, where="reference.")
        batch_size = recorded if recorded is not None else 16
    for name, needed in (("means", "mean"), ("reference", "resample")):
        if name in spec and mode != needed:
            raise _bad(
                kind, name, f"only mode {needed!r} has {name}; this spec's mode is {mode!r}."
            )
    kwargs = dict(
        means=means,
        reference=reference,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    if site == "z":
        return ablate(model, mask, mode, positions, **kwargs)
    return ablate_layers(model, mask, mode, positions, site=site, **kwargs)
