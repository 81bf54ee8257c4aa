"""Building blocks of every hook, with no model running: hook names, positions, the
:class:`Intervention` base type, :class:`Capture` and :func:`applied`.

Everything above this module (the batching routine in :mod:`icl_heads.activations`, the
interventions in :mod:`icl_heads.interventions`, the last-token engine) speaks in these
terms; this module imports nothing of the package (``PromptSet`` appears in annotations only).

Hook names (``site`` + ``layer``)::

    hook_name("z", 3)                # 'blocks.3.attn.hook_z'
    hook_name("resid_post", 0)       # 'blocks.0.hook_resid_post'

Positions (``positions=`` everywhere in the package) are one concept, :data:`Positions`:

* ``"query"``: the last token of every row (prompts are left-padded, so the query is always
  last);
* ``"all"``: every position;
* an int or a list of ints: those positions (negative ones count from the end), the same
  for every row.

The two named forms are :data:`PositionMode`. Capturing activations
(:func:`icl_heads.activations.iter_batches`, :class:`Capture`) keeps a position axis of a
fixed meaning, so it takes a :data:`PositionMode` only; interventions and activation means
take any :data:`Positions`.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from jaxtyping import Bool
from torch import Tensor

if TYPE_CHECKING:  # annotations only: this module imports nothing of the package at run time
    from transformer_lens import HookedTransformer  # (3.x; only read by type checkers)

    from .prompts import PromptSet

#: ``[(hook name or names filter, hook function)]``, as TransformerLens's ``fwd_hooks``.
HookList = list[tuple[Union[str, Callable[[str], bool]], Callable]]  # noqa: UP007
#: The named position selections: ``"query"`` (the last token) or ``"all"``.
PositionMode = Literal["query", "all"]
#: A position selection: a :data:`PositionMode`, an int or a list of ints (see the module
#: docstring).
Positions = Union[PositionMode, int, Sequence[int]]  # noqa: UP007

#: Where an intervention can act: hook point templates by site name.
SITES: dict[str, str] = {
    "z": "blocks.{layer}.attn.hook_z",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
#: The layer-level sites (everything but the heads' ``z``).
LAYER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Hook points whose activation is ``[batch, head, query, key]`` (attention patterns).
PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")
#: Hook names a ``TransformerBridge`` reports under another, canonical name than the legacy
#: (HookedTransformer) one it also answers to: canonical block-level suffix -> legacy ones.
CANONICAL_ALIASES: dict[str, tuple[str, ...]] = {
    "hook_in": ("hook_resid_pre",),
    "hook_out": ("hook_resid_post",),
    "ln2.hook_in": ("hook_resid_mid",),
    "attn.hook_out": ("hook_attn_out",),
    "mlp.hook_out": ("hook_mlp_out",),
    "attn.o.hook_in": ("attn.hook_z",),
}
#: Tensors with at most this many elements are written into intervention specs as plain
#: numbers (:meth:`Intervention.to_spec`); larger ones by shape and fingerprint only.
MAX_INLINE = 1024


def hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of ``site`` (a key of :data:`SITES`) in ``layer``.

    Example::

        hook_name("z", 3)   # 'blocks.3.attn.hook_z'
    """
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}; choose one of {sorted(SITES)}.")
    return SITES[site].format(layer=layer)


def state_injection_hook(layer: int, n_layers: int) -> str:
    """Hook point that sets query *state* ``layer`` (the indexing of
    :func:`icl_heads.geometry.query_states`: ``0`` = the embeddings, ``l + 1`` = after block
    ``l``): ``blocks.0.hook_resid_pre`` for ``0``, else ``blocks.{layer - 1}.hook_resid_post``.

    Example::

        state_injection_hook(0, 30)    # 'blocks.0.hook_resid_pre'
        state_injection_hook(12, 30)   # 'blocks.11.hook_resid_post'
    """
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(f"layer must be a whole number (a state index), got {layer!r}.")
    if not 0 <= int(layer) <= n_layers:
        raise ValueError(
            f"State layer {layer} is out of range: states run from 0 (the "
            f"embeddings) to {n_layers} (after the last block)."
        )
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{int(layer) - 1}.hook_resid_post"


def legacy_aliases(name: str) -> list[str]:
    """The legacy (HookedTransformer) names of a ``TransformerBridge``'s canonical hook name
    (:data:`CANONICAL_ALIASES`).

    Example::

        legacy_aliases("blocks.3.hook_in")   # ['blocks.3.hook_resid_pre']
    """
    if not name.startswith("blocks."):
        return []
    _, layer, rest = name.split(".", 2)
    return [f"blocks.{layer}.{alias}" for alias in CANONICAL_ALIASES.get(rest, ())]


def in_block(name: str | Callable[[str], bool], layer: int) -> str | Callable | None:
    """A hook's name or names filter narrowed to block ``layer``'s hook points (each block
    of :func:`icl_heads.last_token.run_items` runs its own rows); ``None`` when a name lies
    outside the block.

    Example::

        in_block("blocks.3.attn.hook_z", 3)   # 'blocks.3.attn.hook_z'
    """
    prefix = f"blocks.{layer}."
    if isinstance(name, str):
        return name if name.startswith(prefix) else None
    return lambda hook_name: hook_name.startswith(prefix) and name(hook_name)


def intervention_hooks(
    interventions: Sequence[Any], batch: PromptSet | None, index: Tensor | None, n_layers: int
) -> HookList:
    """The hooks of ``interventions`` for ``batch``/``index`` (each intervention's
    ``fwd_hooks`` called once), refusing any after the last block (the final norm's or the
    unembedding's): the engines of :mod:`icl_heads.last_token` take the logits from the
    final residual stream, where such a hook would act in some runs (the full passes of a
    ``TransformerBridge``) and not in others.

    Example::

        hooks = intervention_hooks([iv], batch, index, model.cfg.n_layers)
    """
    hooks: HookList = []
    for iv in interventions:
        for name, fn in iv.fwd_hooks(batch, index):
            if isinstance(name, str) and name.startswith(("ln_final.", "unembed.")):
                raise ValueError(
                    f"{describe(iv)} hooks {name}, after the last block; the analyses read "
                    "the logits from the final residual stream, so it would not act on every "
                    f"run. Intervene at blocks.{n_layers - 1}.hook_resid_post (the same "
                    "stream) instead."
                )
            hooks.append((name, fn))
    return hooks


def registered_name(hook: Any, accepts: Callable[[str], bool]) -> str:
    """The name under which a hook was registered: ``hook.name`` when ``accepts`` it (the
    names filter the hook was added with), else the legacy alias of it that ``accepts``
    (a ``TransformerBridge`` reports ``blocks.0.hook_in`` to a hook added as
    ``blocks.0.hook_resid_pre``); ``hook.name`` when none does.

    Example::

        registered_name(hook, {"blocks.0.hook_resid_pre"}.__contains__)
    """
    name = hook.name
    if name is None or accepts(name):
        return name
    for alias in legacy_aliases(name):
        if accepts(alias):
            return alias
    return name


# --------------------------------------------------------------------------- positions


def check_positions(positions: Positions) -> Positions:
    """Validate a position selection: ``"query"`` or ``"all"`` come back as they are, an int
    or a list of ints as a tuple of ints.

    Example::

        check_positions([3, -1])   # (3, -1)
    """
    if isinstance(positions, str):
        if positions not in ("query", "all"):
            raise ValueError(
                f"positions must be 'query', 'all', an int or a list of ints; got {positions!r}."
            )
        return positions
    if isinstance(positions, Tensor):
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise TypeError(f"positions must be whole numbers; got a {positions.dtype} tensor.")
        positions = positions.flatten().tolist()
    if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
        return (int(positions),)
    if not isinstance(positions, Sequence) or any(
        isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in positions
    ):
        raise TypeError(
            f"positions must be 'query', 'all', an int or a list of ints; got {positions!r}."
        )
    out = tuple(int(p) for p in positions)
    if not out:
        raise ValueError("positions is an empty list; give at least one position.")
    return out


def position_mask(positions: Positions, length: int, device=None) -> Bool[Tensor, " pos"]:
    """Boolean ``[length]`` mask of the selected positions in a sequence of ``length``.

    Example::

        position_mask([0, -1], 4)   # tensor([True, False, False, True])
    """
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    if positions == "all":
        mask[:] = True
    elif positions == "query":
        mask[-1] = True
    else:
        for p in positions:
            if not -length <= p < length:
                raise ValueError(
                    f"Position {p} is out of range for a sequence of {length} "
                    f"tokens (use 0..{length - 1} or -{length}..-1)."
                )
            mask[p] = True
    return mask


def layers_to_mask(
    layers: int | Sequence[int] | Tensor | None, n_layers: int
) -> Bool[Tensor, " layer"]:
    """A layer selection (``None`` = every layer, an int, a list of ints or a boolean
    ``[n_layers]`` mask) as a boolean mask; clear errors for anything else.

    Example::

        layers_to_mask([0, 2], 3)   # tensor([True, False, True])
    """
    if layers is None:
        return torch.ones(n_layers, dtype=torch.bool)
    if isinstance(layers, Tensor) and layers.dtype == torch.bool:
        if tuple(layers.shape) != (n_layers,):
            raise ValueError(
                f"Layer mask has shape {tuple(layers.shape)}; this model needs "
                f"[n_layers] = [{n_layers}]."
            )
        return layers.cpu().clone()
    if isinstance(layers, Tensor):
        if layers.dtype.is_floating_point:
            raise TypeError(f"layers must be whole numbers; got a {layers.dtype} tensor.")
        layers = layers.flatten().tolist()
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(
            f"layers must be an int, a list of ints or None (every layer); got {layers!r}."
        )
    mask = torch.zeros(n_layers, dtype=torch.bool)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layers must be whole numbers; got {layer!r} in {layers!r}.")
        if not 0 <= int(layer) < n_layers:
            raise ValueError(
                f"Layer {layer} is out of range: this model has {n_layers} layers "
                f"(0..{n_layers - 1})."
            )
        mask[int(layer)] = True
    return mask


# --------------------------------------------------------------------------- interventions


@dataclass(frozen=True, eq=False)
class Intervention:
    """Base of every intervention (anything that adds hooks to a forward pass).

    * ``fwd_hooks(batch, index) -> HookList`` for the batching routine: ``batch`` is the
      batch's own ``PromptSet`` (trimmed padding) and ``index`` the rows of the full set it
      holds, so an intervention can pick per-prompt values (source rows, resampling donors);
      both are ``None`` in a bare ``with`` block;
    * ``with iv: ...`` adds its hooks to ``iv.model`` for the duration of the block
      (refused when ``per_prompt``);
    * ``describe()``: one human-readable line; ``to_spec()``: a small JSON-able dict that
      :func:`icl_heads.interventions.from_spec` rebuilds (``{"kind": "opaque", ...}`` for
      interventions that cannot be rebuilt, such as :class:`Capture`).

    Every analysis also accepts any object with a ``fwd_hooks(batch, index)`` method
    (:func:`check_interventions`); subclassing this class adds the rest.
    """

    _contexts: list = field(default_factory=list, init=False, repr=False, compare=False)

    #: Whether the hook values depend on which prompts are run (then a bare ``with`` block,
    #: which cannot know them, is refused).
    per_prompt = False

    def fwd_hooks(self, batch: PromptSet | None, index: Tensor | None) -> HookList:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def to_spec(self, *, max_inline: int = MAX_INLINE) -> dict:
        """A JSON-able description; this base answers ``{"kind": "opaque", ...}`` (cannot be
        rebuilt); the interventions of :mod:`icl_heads.interventions` override it, writing
        tensors of at most ``max_inline`` elements as numbers."""
        return {"kind": "opaque", "description": self.describe()}

    @property
    def _model(self) -> HookedTransformer:
        return self.model  # type: ignore[attr-defined]

    def __enter__(self):
        if self.per_prompt:
            raise TypeError(
                f"{self.describe()} pairs each prompt with its own source/donor prompt, which "
                "a bare `with` block cannot see once prompts are batched. Pass it to the "
                "analysis instead: ih.evaluate(model, prompts, interventions=[iv]) (every "
                "analysis takes interventions=[...])."
            )
        ctx = self._model.hooks(fwd_hooks=self.fwd_hooks(None, None))
        ctx.__enter__()
        self._contexts.append(ctx)
        return self

    def __exit__(self, *exc):
        return self._contexts.pop().__exit__(*exc)


def describe(iv: Any) -> str:
    """``iv.describe()`` where it exists, else the type's name."""
    fn = getattr(iv, "describe", None)
    return fn() if callable(fn) else type(iv).__name__


def check_interventions(interventions: Any, model: HookedTransformer | None = None) -> tuple:
    """``interventions`` as a tuple of objects with ``fwd_hooks`` (a single one is accepted),
    each built for ``model`` when given.

    Example::

        check_interventions(ih.ablate(model, heads), model)   # (Ablation(...),)
    """
    if interventions is None:
        return ()
    if hasattr(interventions, "fwd_hooks"):
        interventions = (interventions,)
    if isinstance(interventions, (str, bytes)) or not isinstance(interventions, Sequence):
        raise TypeError(
            f"interventions must be a list of interventions (ablate, patch, steer, "
            f"...), got {type(interventions).__name__}."
        )
    for iv in interventions:
        if not hasattr(iv, "fwd_hooks"):
            raise TypeError(
                f"{iv!r} is not an intervention (it has no fwd_hooks); build one "
                "with ih.ablate, ih.patch, ih.steer or ih.compose."
            )
        owner = getattr(iv, "model", None)
        if owner is None:
            owner = getattr(iv, "_model", None)
        if model is not None and owner is not None and owner is not model:
            raise ValueError(
                f"The intervention {describe(iv)} was built for another model; "
                "build it with the model you run."
            )
    return tuple(interventions)


@contextlib.contextmanager
def applied(
    model: HookedTransformer,
    interventions: Sequence[Intervention],
    batch: PromptSet | None = None,
    index: Tensor | None = None,
):
    """Context manager adding the hooks of ``interventions`` (for ``batch``/``index``).

    Example::

        with applied(model, [capture, iv], batch, index):
            model(batch.tokens, attention_mask=batch.attention_mask)
    """
    hooks: HookList = []
    for iv in interventions:
        hooks.extend(iv.fwd_hooks(batch, index))
    with model.hooks(fwd_hooks=hooks):
        yield model


# --------------------------------------------------------------------------- capture


@dataclass(frozen=True, eq=False)
class Capture(Intervention):
    """Record activations (no change to the run) into ``store``: hook name -> tensor.

    Args:
        names: which hook points (a names filter).
        positions: ``"query"`` keeps the last position (for attention patterns, the query
            row), ``"all"`` every position.
        attention_mask: ``[batch, pos]``; with ``positions="all"`` padding rows are zeroed so
            they can never leak into a mean.
        reduce: ``reduce(act, hook_name) -> Tensor`` applied inside the hook (e.g. a detector
            reducing a pattern to per-head scores), so only its result is kept.
        keep_grad: keep the tensors in the autograd graph (attribution patching): the hook
            returns the tensor it saw (unchanged), so the run goes on with it on both
            backends; otherwise they are detached copies and the hook returns nothing.

    ``store`` is keyed on the names ``names`` accepts, on both backends (a
    ``TransformerBridge`` reports ``blocks.0.hook_in`` to a hook registered as
    ``blocks.0.hook_resid_pre``: :func:`registered_name`).

    Example::

        rec = Capture(names={"blocks.0.attn.hook_z"}.__contains__, positions="query")
        with applied(model, [rec]):
            model(tokens)
        rec.store["blocks.0.attn.hook_z"]   # [batch, head, d_head]
    """

    names: Callable[[str], bool] = field(default=lambda name: False)
    positions: PositionMode = "all"
    attention_mask: Tensor | None = field(default=None, repr=False)
    reduce: Callable[[Tensor, str], Tensor] | None = field(default=None, repr=False)
    keep_grad: bool = False
    store: dict = field(default_factory=dict, repr=False)

    def fwd_hooks(self, batch=None, index=None) -> HookList:
        def hook(act: Tensor, hook) -> Tensor | None:
            # keyed on the name registered: a TransformerBridge reports its canonical name
            name = registered_name(hook, self.names)
            kept = self._at_positions(name, act)
            if self.reduce is not None:
                kept = self.reduce(kept, name)
            elif not self.keep_grad:
                kept = kept.detach().clone()
            self.store[name] = kept
            # keep_grad: hand the tensor back. A TransformerBridge goes on with its own
            # tensor when a hook returns None, which leaves the one stored here off the
            # gradient path (every gradient None); returned, it is the one that goes on.
            return act if self.keep_grad else None

        return [(self.names, hook)]

    def _at_positions(self, name: str, act: Tensor) -> Tensor:
        pattern = name.endswith(PATTERN_HOOKS)  # [batch, head, query, key]
        if self.positions == "query":
            return act[:, :, -1] if pattern else act[:, -1]
        mask = self.attention_mask
        if mask is None:
            return act
        if pattern:
            return act * mask[:, None, :, None].to(act)  # on its block's device
        if act.shape[:2] == mask.shape:
            return act * mask.reshape(*mask.shape, *([1] * (act.ndim - 2))).to(act)
        return act

    def describe(self) -> str:
        return "capture"


__all__ = [
    "HookList",
    "PositionMode",
    "Positions",
    "SITES",
    "LAYER_SITES",
    "PATTERN_HOOKS",
    "MAX_INLINE",
    "CANONICAL_ALIASES",
    "legacy_aliases",
    "registered_name",
    "intervention_hooks",
    "in_block",
    "hook_name",
    "state_injection_hook",
    "check_positions",
    "position_mask",
    "layers_to_mask",
    "Intervention",
    "describe",
    "check_interventions",
    "applied",
    "Capture",
]
