"""How a result was made: one small frozen settings dataclass per analysis.

Every result of the toolkit carries its settings (``HeadScores.settings``,
``DataFrame.attrs["settings"]``, ``ExperimentResult.settings``), and every saved result
writes them beside the numbers, so a file says how it was made::

    tr, tl = ih.tsla_scores(model, prompts)
    tr.settings                 # TSLASettings(model='smollm2-135m-instruct', prompts=PromptInfo(...), ...)
    tr.settings.to_dict()       # plain JSON-able dict, with its "kind"
    Settings.from_dict(d)       # the same dataclass back

A settings class is a frozen dataclass that subclasses :class:`Settings`; its fields are
JSON-able values, tuples, or other settings (e.g. :class:`PromptInfo`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Settings:
    """Base class of every analysis's settings (a frozen dataclass)."""

    _registry: ClassVar[dict[str, type[Settings]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Settings._registry[cls.__name__] = cls

    def to_dict(self) -> dict:
        """Plain JSON-able dict with a ``"kind"`` key naming the class."""
        out: dict[str, Any] = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(data: Mapping) -> Settings:
        """Rebuild the settings written by :meth:`to_dict`."""
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ValueError(f"Not icl-heads settings (no 'kind' key): {str(data)[:80]!r}.")
        kind = data["kind"]
        cls = Settings._registry.get(kind)
        if cls is None:
            raise ValueError(
                f"Unknown settings kind {kind!r}; known: {sorted(Settings._registry)}."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: _from_plain(v) for k, v in data.items() if k in names}
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PromptInfo(Settings):
    """Identity of a :class:`~icl_heads.prompts.PromptSet` (``prompts.info()``): which
    task, how many prompts, how many demonstrations, the seed, the perturbation and the
    model / tokenizer it was built for (the *recipe*), and what exactly they hold (the
    *content*):

    - ``task_digest``: :attr:`~icl_heads.tasks.Task.digest`, a hash of the task's
      examples, labels and template (so an edited task file with the same name differs);
    - ``task_source``: where the task came from (``"builtin:<file>"``, or the path of a
      task file); ``None`` for a task made in code;
    - ``prompts_digest``: a hash of the prompts' tokens (padding excluded), gold labels and
      label tokens (:func:`~icl_heads.prompt_set.prompts_digest`).

    The content fields are ``None`` in settings saved before they were recorded, and they
    take no part in ``==`` (two infos are equal when their recipes are); compare content
    with :func:`icl_heads.provenance.same_prompts`, which treats ``None`` as unknown.

    Example::

        prompts.info()
        # PromptInfo(task='sentiment', k=4, n=64, seed=0, perturbation='gold', model=...,
        #            task_digest='3f0c...', task_source='builtin:sentiment.jsonl', ...)
    """

    task: str
    k: int
    n: int
    seed: int
    perturbation: str
    model: str | None = None
    tokenizer: str | None = None
    task_digest: str | None = field(default=None, compare=False)
    task_source: str | None = field(default=None, compare=False)
    prompts_digest: str | None = field(default=None, compare=False)


def model_name(model: Any) -> str | None:
    """The model's name as results record it (``cfg.model_name``)."""
    return getattr(getattr(model, "cfg", None), "model_name", None)


def describe_interventions(interventions: Sequence[Any]) -> tuple[str, ...]:
    """One line per intervention, for settings (``describe()`` where it exists)."""
    out = []
    for iv in interventions:
        describe = getattr(iv, "describe", None)
        out.append(describe() if callable(describe) else type(iv).__name__)
    return tuple(out)


def intervention_specs(interventions: Sequence[Any]) -> tuple[dict, ...]:
    """One JSON-able spec per intervention (``iv.to_spec()``), for settings, so a saved
    result can be replayed with :func:`icl_heads.interventions.from_spec`. An object
    without ``to_spec`` is written as ``{"kind": "opaque", "description": ...}`` (recorded,
    but not rebuildable).

    Example::

        intervention_specs([ih.ablate(model, [(3, 2)])])
        # ({'kind': 'ablate', 'site': 'z', 'heads': [[3, 2]], 'mode': 'zero', ...},)
    """
    out = []
    for iv in interventions:
        to_spec = getattr(iv, "to_spec", None)
        if callable(to_spec):
            out.append(to_spec())
        else:
            out.append({"kind": "opaque", "description": describe_interventions([iv])[0]})
    return tuple(out)


def settings_value(value: Any) -> Any:
    """``value`` (JSON-able: dicts, lists, numbers, strings, settings) as a settings field
    holds it after a save and a load (lists as tuples, nested settings dicts as their
    dataclasses), so a result's settings compare equal before and after
    ``save``/``load``. ``settings.to_dict()`` gives the plain JSON form back.

    Example::

        settings_value({"heads": [[3, 2]]})      # {'heads': ((3, 2),)}
    """
    return _from_plain(_to_plain(value))


def _to_plain(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _from_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        if "kind" in value and value["kind"] in Settings._registry:
            return Settings.from_dict(value)
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_from_plain(v) for v in value)
    return value
