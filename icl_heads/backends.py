"""The two model backends: TransformerLens's ``HookedTransformer`` (TL 3.x) and its
``TransformerBridge`` in compatibility mode (TL 3.9 and 4.x). This module answers what the
analyses need that differs between them; besides the last-token engine
(:mod:`icl_heads.last_token`) it is the only place that knows which backend it holds.

Differences handled here (each function's docstring says how):

* the model check (:func:`check_backend`): a bridge must be in compatibility mode (folded
  norms, centred weights, the legacy hook names), else its numbers differ;
* ``cfg.original_architecture`` (hooked) vs ``cfg.architecture`` (bridge):
  :func:`architecture`;
* ``W_K``/``W_V``: one matrix per query head on the hooked backend, per key/value head on
  the bridge (grouped-query attention): :func:`key_value_weights` answers per query head;
* ``b_O``: zeros on a bias-free hooked model, an error on a bias-free bridge:
  :func:`attn_output_bias`;
* ``stop_at_layer=n_layers`` returns the final residual stream on the hooked backend and
  the logits on the bridge: :func:`final_residual`;
* hook names: the bridge reports a canonical name (``blocks.0.hook_in``) to hooks added
  under a legacy one (``blocks.0.hook_resid_pre``): :func:`icl_heads.hooks.registered_name`
  keys captures on the name registered (a name table, no backend check);
* the cached-prefix engine: TransformerLens internals on the hooked backend
  (:mod:`icl_heads.last_token`), the bridge's own blocks on a bridge
  (:mod:`icl_heads.bridge_engine`, no ``start_at_layer`` needed): :func:`supports_engine`.

Example::

    from icl_heads.backends import check_backend, is_bridge
    model = check_backend(model, "my_analysis")   # a HookedTransformer or a bridge
    is_bridge(model)                              # False for load_model() on TL 3.x
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

try:  # TransformerLens 3.x; 4.x removed it (TransformerBridge only)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # pragma: no cover - depends on the installed TransformerLens

    class HookedTransformer:  # type: ignore[no-redef]
        """Stand-in on TransformerLens 4.x, which has no ``HookedTransformer``: no model is
        one, so every analysis takes the bridge path; the toolkit's modules import the
        name from here (for type hints and ``isinstance``)."""

    HookedTransformerConfig = None  # type: ignore[assignment,misc]

try:  # TransformerLens >= 3.9 ships the bridge; older releases do not
    from transformer_lens.model_bridge import TransformerBridge
except ImportError:  # pragma: no cover - depends on the installed TransformerLens
    TransformerBridge = None  # type: ignore[assignment,misc]
try:  # the attention the bridge engine (icl_heads.bridge_engine) can run block by block
    from transformer_lens.model_bridge.generalized_components import (
        PositionEmbeddingsAttentionBridge,
    )
except ImportError:  # pragma: no cover - depends on the installed TransformerLens
    PositionEmbeddingsAttentionBridge = None  # type: ignore[assignment,misc]

#: The ``backend=`` choices of :func:`icl_heads.models.load_model`.
Backend = Literal["auto", "hooked", "bridge"]
BACKENDS: tuple[str, ...] = ("auto", "hooked", "bridge")


def transformer_lens_major() -> int:
    """The installed TransformerLens major version (``3`` for 3.9.0, ``0`` if unknown).

    Example::

        transformer_lens_major()   # 3
    """
    try:
        version = importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return 0
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def hooked_available() -> bool:
    """Whether the installed TransformerLens ships ``HookedTransformer`` (3.x; 4.x does not)."""
    return HookedTransformerConfig is not None


def bridge_available() -> bool:
    """Whether the installed TransformerLens ships ``TransformerBridge``."""
    return TransformerBridge is not None


def resolve_backend(backend: object) -> Literal["hooked", "bridge"]:
    """The backend ``load_model(backend=...)`` uses: ``"auto"`` is ``"hooked"`` on
    TransformerLens 3.x (where ``HookedTransformer`` is the reference) and ``"bridge"`` on
    4.x; ``"hooked"``/``"bridge"`` are checked to exist in the installed TransformerLens.

    Example::

        resolve_backend("auto")   # 'hooked' on TransformerLens 3.9
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not a backend; choose one of {list(BACKENDS)} "
            "('auto': HookedTransformer on TransformerLens 3.x, TransformerBridge on 4.x)."
        )
    if backend == "auto":
        return "bridge" if transformer_lens_major() >= 4 else "hooked"
    if backend == "hooked" and not hooked_available():
        raise ValueError(
            "backend='hooked' needs TransformerLens 3.x (HookedTransformer was removed in 4.0); "
            "pass backend='bridge' or 'auto', or install 'transformer-lens>=3.9,<4'."
        )
    if backend == "bridge" and not bridge_available():
        raise ValueError(
            "backend='bridge' needs TransformerLens >= 3.9 (transformer_lens.model_bridge); "
            "upgrade it, or pass backend='hooked'."
        )
    return backend  # type: ignore[return-value]


def is_bridge(model: object) -> bool:
    """Whether ``model`` is a ``TransformerBridge``.

    Example::

        is_bridge(ih.load_model(backend="bridge"))   # True
    """
    return TransformerBridge is not None and isinstance(model, TransformerBridge)


def is_model(model: object) -> bool:
    """Whether ``model`` is a backend the analyses run on: a ``HookedTransformer`` or a
    ``TransformerBridge`` in compatibility mode."""
    if isinstance(model, HookedTransformer):
        return True
    return is_bridge(model) and bool(getattr(model, "compatibility_mode", False))


def check_backend(model: object, fn: str) -> Any:
    """``model`` if an analysis can run on it, else an error naming ``fn`` and the fix:
    a ``TypeError`` for anything but a ``HookedTransformer`` or ``TransformerBridge``, a
    ``ValueError`` for a bridge without ``enable_compatibility_mode()`` (its weights are not
    folded and centred and its legacy hook names are off, so every number would differ).

    Example::

        check_backend(model, "tsla_scores")   # returns model
    """
    if isinstance(model, HookedTransformer):
        return model
    if is_bridge(model):
        if not getattr(model, "compatibility_mode", False):
            raise ValueError(
                f"{fn} needs a TransformerBridge in compatibility mode; call "
                "model.enable_compatibility_mode() first (or load it with "
                "icl_heads.load_model(..., backend='bridge'), which does)."
            )
        return model
    raise TypeError(
        f"{fn} needs a HookedTransformer or a TransformerBridge as model (e.g. "
        f"icl_heads.load_model()), got {type(model).__name__}."
    )


# --------------------------------------------------------------------------- config and weights


def architecture(model: Any) -> str | None:
    """The Hugging Face architecture name (``"LlamaForCausalLM"``):
    ``cfg.original_architecture`` on the hooked backend, ``cfg.architecture`` on the bridge.

    Example::

        architecture(model)   # 'LlamaForCausalLM'
    """
    cfg = model.cfg
    return getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)


def cfg_value(model: Any, name: str, default: Any = None) -> Any:
    """``model.cfg.<name>``, or ``default`` where the backend's config lacks the field (the
    bridge's config has no ``use_logn_attn``, ``use_split_qkv_input``, ... ; their absence
    means the feature is off)."""
    return getattr(model.cfg, name, default)


def key_value_weights(
    model: Any,
) -> tuple[Float[Tensor, "layer head d_model d_head"], Float[Tensor, "layer head d_model d_head"]]:
    """``(W_K, W_V)`` with one matrix per *query* head, as ``HookedTransformer`` gives them;
    the bridge gives grouped-query models one per key/value head, repeated here.

    Example::

        W_K, W_V = key_value_weights(model)   # [n_layers, n_heads, d_model, d_head] each
    """
    W_K, W_V = model.W_K, model.W_V
    H = model.cfg.n_heads
    if W_K.shape[1] != H:
        W_K = W_K.repeat_interleave(H // W_K.shape[1], dim=1)
    if W_V.shape[1] != H:
        W_V = W_V.repeat_interleave(H // W_V.shape[1], dim=1)
    return W_K, W_V


def attn_output_bias(model: Any) -> Float[Tensor, "layer d_model"]:
    """``b_O`` of every layer; zeros where the model's attention output has no bias (the
    hooked backend holds zeros there, the bridge raises).

    Example::

        attn_output_bias(model).shape   # (n_layers, d_model)
    """
    if not is_bridge(model):
        return model.b_O
    biases = [block.attn.b_O for block in model.blocks]
    ref = model.W_O
    return torch.stack(
        [
            b if b is not None else torch.zeros(ref.shape[-1], dtype=ref.dtype, device=ref.device)
            for b in biases
        ]
    )


def add_zero_output_biases(model: Any) -> int:
    """Give every bias-free attention output projection of a bridge an explicit zero bias,
    so ``model.b_O`` exists as on ``HookedTransformer`` (which holds zeros there). Adding
    zero changes no number. Returns how many projections got one (``0`` on the hooked
    backend)."""
    if not is_bridge(model):
        return 0
    added = 0
    for block in model.blocks:
        linear = getattr(block.attn.o, "original_component", None)
        if isinstance(linear, torch.nn.Linear) and linear.bias is None:
            weight = linear.weight
            linear.bias = torch.nn.Parameter(
                torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device),
                requires_grad=weight.requires_grad,
            )
            added += 1
    return added


# --------------------------------------------------------------------------- running


class _ReachedFinalNorm(Exception):
    """Raised by the hook that stops a bridge's forward pass at the final norm."""

    def __init__(self, resid: Tensor):
        super().__init__("stopped at ln_final")
        self.resid = resid


def final_residual(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after the last block (before the final norm), with any hooks
    already on the model firing as in a full run.

    Hooked backend: ``model(..., stop_at_layer=n_layers)``. The bridge returns logits for
    ``stop_at_layer=n_layers``, so there the run stops at ``ln_final.hook_in`` instead (no
    unembedding over every position).

    Example::

        resid = final_residual(model, prompts.tokens, prompts.attention_mask)
        logits = final_logits(model, resid[:, -1])
    """
    if not is_bridge(model):
        return model(tokens, attention_mask=attention_mask, stop_at_layer=model.cfg.n_layers)

    def stop(act: Tensor, hook) -> None:
        raise _ReachedFinalNorm(act)

    try:
        with model.hooks(fwd_hooks=[("ln_final.hook_in", stop)]):
            model(tokens, attention_mask=attention_mask)
    except _ReachedFinalNorm as reached:
        return reached.resid
    raise RuntimeError(  # pragma: no cover - every compatibility-mode bridge has ln_final
        f"The bridge {type(model).__name__} never reached ln_final.hook_in; icl-heads "
        "needs a final norm hook point to read the final residual stream."
    )


def supports_engine(model: Any) -> bool:
    """Whether the cached-prefix engine can run on ``model``: every ``HookedTransformer``
    (:mod:`icl_heads.last_token`), and a bridge whose every attention is a
    ``PositionEmbeddingsAttentionBridge`` with rotated-key and value hooks (Llama, Mistral,
    Qwen, Gemma and similar: :mod:`icl_heads.bridge_engine` runs its own blocks). Other
    bridges take the exact fallback (one full pass per condition or swept item).

    Example::

        supports_engine(ih.load_model(backend="bridge"))   # True (SmolLM2 is a Llama)
    """
    if not is_bridge(model):
        return True
    if PositionEmbeddingsAttentionBridge is None:  # pragma: no cover - older bridges
        return False
    return all(
        isinstance(block.attn, PositionEmbeddingsAttentionBridge)
        and hasattr(block.attn, "hook_rot_k")
        and callable(getattr(block, "register_forward_pre_hook", None))
        for block in model.blocks
    )


__all__ = [
    "Backend",
    "BACKENDS",
    "transformer_lens_major",
    "hooked_available",
    "bridge_available",
    "HookedTransformer",
    "HookedTransformerConfig",
    "resolve_backend",
    "is_bridge",
    "is_model",
    "check_backend",
    "architecture",
    "cfg_value",
    "key_value_weights",
    "attn_output_bias",
    "add_zero_output_biases",
    "final_residual",
    "supports_engine",
    "TransformerBridge",
]
