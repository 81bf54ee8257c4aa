"""Batch sizes that fit the device: ``batch_size="auto"`` and the out-of-memory retry.

* :func:`auto_batch_size` picks the largest batch whose estimated memory fits in a
  fraction (:data:`MEMORY_FRACTION`) of the device's free memory. The per-row estimate is
  :func:`row_bytes` (from the model's shape, the dtype and the prompts' length); on CUDA it
  is raised to a measured one (:func:`measured_row_bytes`: the peak memory of a one-row
  forward pass). On a CPU the batch is the fixed default (:data:`CPU_DEFAULTS`), lowered
  only when the machine's free RAM would not hold it.
* :func:`halving` runs a loop over rows in slices, and when a slice runs out of memory
  (``torch.OutOfMemoryError``, or a ``RuntimeError`` saying "out of memory" on other
  backends) retries it halved, keeping the smaller size for the rest of the loop; a
  sweep never crashes halfway through for lack of memory. Only a single row that does not
  fit is an error (:class:`MemoryError`, naming the device and what to change).

The batching loops of :mod:`icl_heads.activations` (every forward pass),
:mod:`icl_heads.last_token` (the engine's clean runs), :mod:`icl_heads.sweep_engine`
(the fast sweeps' rows per pass) and :mod:`icl_heads.patching_attribution` (forward and
backward passes) run through :func:`halving`, and resolve ``"auto"`` with
:func:`resolve_batch_size`. Every public function that takes a ``batch_size`` (or
``rows_per_pass``) passes it down to one of them, so each takes ``"auto"``; a value
recorded as ``"auto"`` (an intervention's replay spec) is resolved again on replay.

Example::

    size = auto_batch_size(model, prompts, kind="forward")        # e.g. 16 on a CPU
    got = collect(model, prompts, batch_size="auto")               # the same, resolved inside
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch

from .backends import final_residual

#: The value that asks for a batch size chosen from the device's memory.
AUTO = "auto"
#: Where a batch size is taken: a positive int or ``"auto"``.
BatchSize = int | Literal["auto"]
#: What is batched: a forward pass over prompts (every position, logits at the query);
#: the engine's clean run (a forward pass that also keeps the key/value cache and the
#: residual stream of the restart layers); the fast sweep's query rows (last token only);
#: the fast sweep's rows at every position; a forward and backward pass (attribution
#: patching: the graph keeps every block's activations for the backward pass).
Kind = Literal["forward", "clean_run", "query_rows", "all_rows", "backward"]
KINDS: tuple[str, ...] = ("forward", "clean_run", "query_rows", "all_rows", "backward")
#: Batch sizes on a CPU (and on devices whose memory cannot be read): the defaults every
#: analysis has always used; lowered only when free RAM would not hold them.
CPU_DEFAULTS: dict[str, int] = {
    "forward": 16,
    "clean_run": 16,
    "query_rows": 1024,
    "all_rows": 32,
    "backward": 8,
}
#: The largest batch "auto" picks (beyond it a GPU gains nothing and progress is coarse).
MAX_BATCH: dict[str, int] = {
    "forward": 256,
    "clean_run": 256,
    "query_rows": 8192,
    "all_rows": 512,
    "backward": 128,
}
#: The share of the free device memory a batch may take (the rest: allocator slack,
#: fragmentation, what the caller keeps between batches).
MEMORY_FRACTION = 0.6

T = TypeVar("T")


def check_batch_size(batch_size: object, what: str = "batch_size") -> BatchSize:
    """A positive whole number or ``"auto"`` (bools and floats are refused).

    Example::

        check_batch_size("auto")   # "auto"
        check_batch_size(8)        # 8
    """
    if isinstance(batch_size, str):
        if batch_size.strip().lower() == AUTO:
            return AUTO
        raise ValueError(
            f"{what}={batch_size!r} is not a batch size; pass a positive integer or 'auto' "
            "(the largest batch that fits the device's memory)."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{what} must be a positive integer or 'auto', got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"{what} must be >= 1 (or 'auto'), got {batch_size}.")
    return int(batch_size)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device running out of memory (CUDA's ``OutOfMemoryError``, or
    another backend's ``RuntimeError`` that says so).

    Example::

        is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))   # True
    """
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def free_bytes(device: str | torch.device) -> int | None:
    """Free memory on ``device`` in bytes: CUDA's free memory, a CPU's available RAM;
    ``None`` where it cannot be read (MPS and other backends).

    Example::

        free_bytes("cpu")   # e.g. 20_000_000_000
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):  # not a POSIX system
            return None
    return None


def row_bytes(cfg, seq_len: int, kind: Kind = "forward", *, kept_layers: int = 0) -> int:
    """Estimated device memory one row (prompt) of a batch needs, from the model's shape.

    A forward pass keeps one block's activations at a time (no gradients): the residual
    stream and its norm, queries/keys/values, the attention scores and pattern (``n_heads
    * seq_len**2``), the MLP's hidden units, and the float32 logits at the query. The
    engine's clean run also keeps every layer's keys and values and the residual stream
    of ``kept_layers`` restart layers; a query row is one position with the prefix shared;
    a backward row keeps every block's activations (and their gradients) until the
    backward pass.

    Example::

        row_bytes(model.cfg, 120, "forward")   # bytes per prompt of 120 tokens
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a batching kind; use one of {KINDS}.")
    size = torch.empty((), dtype=cfg.dtype).element_size()
    d, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    kv = getattr(cfg, "n_key_value_heads", None) or H
    d_mlp = (cfg.d_mlp or 4 * d) * (3 if getattr(cfg, "gated_mlp", False) else 2)
    positions = 1 if kind == "query_rows" else seq_len
    keys = seq_len  # a query row attends to the whole prompt
    per_position = 4 * d + (H + 2 * kv) * dh + H * dh + d_mlp
    scores = 3 * H * positions * keys  # scores, softmax, pattern
    activations = (positions * per_position + scores) * size
    if kind == "backward":  # every block's activations, and as much again for gradients
        activations *= 2 * cfg.n_layers
    logits = 2 * cfg.d_vocab * 4  # float32 logits at the query (and one copy)
    kept = 0
    if kind == "clean_run":
        kept = (cfg.n_layers * 2 * kv * dh * seq_len * 2 + kept_layers * seq_len * d) * size
    return int(activations + logits + kept)


def measured_row_bytes(run_one_row: Callable[[], object], device: str | torch.device) -> int | None:
    """The peak device memory a one-row run takes above what was allocated before it, on
    CUDA (``None`` elsewhere: no allocator statistics).

    Example::

        measured_row_bytes(lambda: model(tokens[:1]), "cuda")
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        run_one_row()
    torch.cuda.synchronize(device)
    return max(int(torch.cuda.max_memory_allocated(device) - before), 1)


def auto_batch_size(
    model,
    seq_len: int,
    *,
    kind: Kind = "forward",
    device: str | torch.device | None = None,
    kept_layers: int = 0,
    measured: int | None = None,
    free: int | None = None,
) -> int:
    """The largest batch of ``kind`` rows of ``seq_len`` tokens that fits the device.

    ``free`` (bytes; default: :func:`free_bytes`) times :data:`MEMORY_FRACTION`, divided by
    the per-row memory (the larger of :func:`row_bytes` and ``measured``), between 1 and
    :data:`MAX_BATCH`. On a CPU, or where the free memory cannot be read, the default of
    :data:`CPU_DEFAULTS`, lowered when the free RAM would not hold it.

    Example::

        auto_batch_size(model, prompts.seq_len, kind="forward", device="cuda")   # e.g. 128
    """
    device = torch.device(device if device is not None else model.cfg.device)
    per_row = max(row_bytes(model.cfg, seq_len, kind, kept_layers=kept_layers), measured or 0)
    if free is None:
        free = free_bytes(device)
    fits = None if free is None else int(free * MEMORY_FRACTION) // per_row
    if device.type != "cuda" or fits is None:
        default = CPU_DEFAULTS[kind]
        return max(1, default if fits is None else min(default, fits))
    return max(1, min(fits, MAX_BATCH[kind]))


def resolve_batch_size(
    batch_size: BatchSize,
    model,
    prompts,
    *,
    kind: Kind = "forward",
    device: str | torch.device | None = None,
    kept_layers: int = 0,
    what: str = "batch_size",
) -> int:
    """``batch_size`` checked; ``"auto"`` resolved with :func:`auto_batch_size` for
    ``prompts`` (a :class:`~icl_heads.prompts.PromptSet`), measuring a one-row forward pass
    of its longest prompt on CUDA (kinds ``"forward"`` and ``"clean_run"``).

    Example::

        resolve_batch_size("auto", model, prompts, device="cpu")   # 16
    """
    checked = check_batch_size(batch_size, what)
    if checked != AUTO:
        return checked
    device = torch.device(device if device is not None else model.cfg.device)
    measured = None
    if device.type == "cuda" and kind in ("forward", "clean_run") and len(prompts):
        longest = prompts.select(prompts.lengths.argmax().reshape(1)).to(device)
        measured = measured_row_bytes(
            lambda: final_residual(model, longest.tokens, longest.attention_mask), device
        )
    return auto_batch_size(
        model,
        prompts.seq_len,
        kind=kind,
        device=device,
        kept_layers=kept_layers,
        measured=measured,
    )


def _release(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


def halving(
    n: int,
    size: int,
    run: Callable[[int, int], T],
    *,
    device: str | torch.device | None = None,
    what: str = "batch",
    on_halve: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, int, T]]:
    """``(start, stop, run(start, stop))`` over rows ``0..n`` in slices of ``size``; a
    slice that runs out of memory is retried at half the size, and later slices keep the
    smaller size (so the results equal a run with that fixed size from there on).

    ``on_halve(new_size)`` is told each time the size is halved.

    Raises:
        MemoryError: a single row does not fit (the message names the device and the fix).

    Example::

        for start, stop, logits in halving(len(prompts), 64, forward_rows, device="cuda"):
            ...
    """
    device = torch.device(device) if device is not None else None
    start = 0
    while start < n:
        stop = min(start + size, n)
        try:
            out = run(start, stop)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            if stop - start <= 1:
                raise MemoryError(
                    f"{what}: a single row does not fit in the memory of {device or 'the device'}"
                    f" ({type(err).__name__}); load the model in a smaller dtype "
                    "(dtype='bfloat16'), over more devices (n_devices=...), or use shorter "
                    "prompts."
                ) from err
            out = _OOM  # leave the except block first: its traceback holds the tensors
        if out is _OOM:
            _release(device)
            size = max(1, math.ceil((stop - start) / 2))
            if on_halve is not None:
                on_halve(size)
            continue
        yield start, stop, out
        start = stop


_OOM = object()


__all__ = [
    "AUTO",
    "BatchSize",
    "Kind",
    "KINDS",
    "CPU_DEFAULTS",
    "MAX_BATCH",
    "MEMORY_FRACTION",
    "check_batch_size",
    "is_out_of_memory",
    "free_bytes",
    "row_bytes",
    "measured_row_bytes",
    "auto_batch_size",
    "resolve_batch_size",
    "halving",
]
