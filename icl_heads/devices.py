"""The ``device=`` and ``dtype=`` arguments: :func:`resolve_device` and
:func:`resolve_dtype` turn them into a ``torch.device`` / ``torch.dtype``, checked to be
usable on this machine, with an error that names the bad value and the choices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn

#: The dtypes a model can be loaded in (all that TransformerLens supports), by name.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_DTYPE_ALIASES = {
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for a ``device=`` argument, checked to exist on this machine.

    Args:
        device: ``None`` or ``"auto"`` (CUDA if available, else CPU), a device string such
            as ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``, or a ``torch.device``.

    Returns:
        The device.

    Raises:
        TypeError: ``device`` is not a string, a ``torch.device`` or ``None``.
        ValueError: the string is not a device, or the device is not available here.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:<index>' or "
                "'mps' (or None: CUDA if available, else CPU)."
            ) from None
    else:
        raise TypeError(
            f"device must be a string such as 'cpu' or 'cuda', a torch.device or None; got "
            f"{device!r} of type {type(device).__name__}."
        )
    _check_device_available(resolved, device)
    return resolved


def _check_device_available(resolved: torch.device, given: object) -> None:
    kind = resolved.type
    if kind == "cpu":
        return
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={given!r}: CUDA is not available on this machine (torch "
                f"{torch.__version__} sees no CUDA GPU); use device='cpu'."
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={given!r}: this machine has {count} CUDA device(s) (cuda:0 to "
                f"cuda:{count - 1}); use one of them, 'cuda', or device='cpu'."
            )
        return
    if kind == "meta":
        raise ValueError(
            f"device={given!r}: the meta device holds no weights, so nothing can run on it; "
            "use device='cpu' or 'cuda'."
        )
    if kind == "mps":
        available = torch.backends.mps.is_available()
    else:  # xpu, hpu, ... : the backend module reports whether it has a device
        backend = getattr(torch, kind, None)
        is_available = getattr(backend, "is_available", None)
        available = bool(is_available()) if callable(is_available) else False
    if not available:
        raise ValueError(
            f"device={given!r}: no {kind!r} device is available on this machine; use device='cpu'."
        )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The ``torch.dtype`` for a ``dtype=`` argument: a ``torch.dtype`` or its name.

    Accepts ``torch.float32``, ``torch.float16``, ``torch.bfloat16``, ``torch.float64`` and
    their names ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"`` (also ``"fp32"``,
    ``"fp16"``/``"half"``, ``"bf16"``, ``"fp64"``/``"double"`` and ``"torch.float16"``).

    Raises:
        TypeError: ``dtype`` is neither a ``torch.dtype`` nor a string.
        ValueError: any other dtype or name.
    """
    choices = ", ".join(repr(n) for n in DTYPES)
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ValueError(
            f"dtype={dtype} is not supported; use one of {choices} (as a string or torch dtype)."
        )
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key in DTYPES:
            return DTYPES[key]
        raise ValueError(
            f"dtype={dtype!r} is not a supported dtype; use one of {choices} (or "
            "'fp32', 'fp16', 'bf16', 'fp64')."
        )
    raise TypeError(
        f"dtype must be a torch.dtype or its name ({choices}); got {dtype!r} of type "
        f"{type(dtype).__name__}."
    )


#: ``placement(layer) -> device``: where block ``layer``'s weights live (see
#: :func:`block_placement`).
Placement = Callable[[int], torch.device]


def module_device(module: nn.Module, default: str | torch.device = "cpu") -> torch.device:
    """The device of ``module``'s first parameter (``default`` when it has none).

    Example::

        module_device(model.unembed)   # where the logits are computed
    """
    for param in module.parameters():
        return param.device
    return torch.device(default)


def block_placement(model: nn.Module) -> Placement:
    """``placement(layer) -> device``: where each block of ``model`` lives, read from its
    weights, so a model split over several devices (TransformerLens's ``n_devices``) has
    each block's inputs moved there, as ``HookedTransformer.forward`` does at every block
    boundary. One device for every block on a model that is not split.

    Example::

        place = block_placement(model)
        x = x.to(place(3))   # before running model.blocks[3]
    """
    default = getattr(model.cfg, "device", None) or "cpu"
    devices = [module_device(block, default) for block in model.blocks]
    if len(set(devices)) == 1:
        one = devices[0]
        return lambda layer: one
    return devices.__getitem__


def output_device(model: nn.Module) -> torch.device:
    """Where ``model``'s final norm and unembedding live (the last device of a split model).

    Example::

        logits = model.unembed(resid.to(output_device(model)))
    """
    return module_device(model.unembed, getattr(model.cfg, "device", None) or "cpu")


def output_weights(
    model: nn.Module, device: str | torch.device
) -> tuple[Float[Tensor, "layer head d_head d_model"], Float[Tensor, "layer d_model"]]:
    """``W_O`` and ``b_O`` of every layer, detached, on ``device``: TransformerLens's
    stacks where all blocks share a device, else (a model split over several devices,
    ``n_devices > 1``, where those stacks fail) block by block, each moved to ``device``.

    Example::

        W_O, b_O = output_weights(model, "cuda:0")   # [L, H, d_head, d_model], [L, d_model]
    """
    place = block_placement(model)
    if len({place(layer) for layer in range(model.cfg.n_layers)}) == 1:
        return model.W_O.detach().to(device), model.b_O.detach().to(device)
    W_O = torch.stack([block.attn.W_O.detach().to(device) for block in model.blocks])
    b_O = torch.stack([block.attn.b_O.detach().to(device) for block in model.blocks])
    return W_O, b_O


__all__ = [
    "DTYPES",
    "Placement",
    "block_placement",
    "module_device",
    "output_device",
    "output_weights",
    "resolve_device",
    "resolve_dtype",
]
