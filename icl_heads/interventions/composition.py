"""Several interventions applied together, in order (:func:`compose`).

Example::

    both = compose(ablate(model, heads), steer(model, v, layer=3))
    ih.evaluate(model, prompts, interventions=[both])
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends import HookedTransformer
from ..hooks import MAX_INLINE, HookList, Intervention, check_interventions, describe
from .records import spec_of


@dataclass(frozen=True, eq=False)
class Compose(Intervention):
    """Several interventions applied together, in order (see :func:`compose`)."""

    parts: tuple = ()

    @property
    def _model(self) -> HookedTransformer:
        return self.parts[0]._model

    @property
    def per_prompt(self) -> bool:  # type: ignore[override]
        return any(getattr(p, "per_prompt", False) for p in self.parts)

    def fwd_hooks(self, batch, index) -> HookList:
        hooks: HookList = []
        for part in self.parts:
            hooks.extend(part.fwd_hooks(batch, index))
        return hooks

    def describe(self) -> str:
        return " + ".join(describe(p) for p in self.parts)

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """``{"kind": "compose", "parts": [spec, ...]}``."""
        return {"kind": "compose", "parts": [spec_of(p, max_inline) for p in self.parts]}


def compose(*interventions) -> Compose:
    """Join interventions into one (usable as ``interventions=[...]`` or as a context
    manager); they act in the order given."""
    if not interventions:
        raise ValueError("compose() needs at least one intervention.")
    parts = check_interventions(list(interventions))
    models = {id(p._model) for p in parts}
    if len(models) > 1:
        raise ValueError("compose(): all interventions must belong to the same model.")
    return Compose(parts=parts)
