"""batch_size="auto" and the out-of-memory retry (icl_heads.batching), tested on the CPU
with a fake out-of-memory error: a hook that raises ``torch.OutOfMemoryError`` when its
activation has more rows than a limit, as a GPU would for a batch that does not fit."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import icl_heads as ih
from icl_heads import batching
from icl_heads.activations import collect


class FakeOOM:
    """A background "intervention" that raises a CUDA-style out-of-memory error whenever
    ``hook`` sees more than ``limit`` rows, and records the row counts it saw."""

    def __init__(self, hook: str, limit: int):
        self.hook, self.limit, self.sizes, self.raised = hook, limit, [], 0

    def fwd_hooks(self, batch, index):
        def fn(act, hook):
            self.sizes.append(act.shape[0])
            if act.shape[0] > self.limit:
                self.raised += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory (fake: {act.shape[0]} rows)")
            return act

        return [(self.hook, fn)]


def test_halving_retries_a_slice_that_runs_out_of_memory_and_keeps_the_smaller_size():
    calls, halved = [], []

    def run(start, stop):
        calls.append((start, stop))
        if stop - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return list(range(start, stop))

    got = list(batching.halving(10, 16, run, on_halve=halved.append))
    assert [(a, b) for a, b, _ in got] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [x for *_, part in got for x in part] == list(range(10))
    assert halved == [5, 3]
    assert calls[:2] == [(0, 10), (0, 5)]


def test_halving_lets_other_errors_through_and_names_the_device_when_one_row_is_too_big():
    def other(start, stop):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(batching.halving(4, 4, other))

    def never(start, stop):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(MemoryError, match="single row.*cpu.*bfloat16"):
        list(batching.halving(4, 4, never, device="cpu", what="fake sweep"))


def test_out_of_memory_errors_are_recognised():
    assert batching.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert batching.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not batching.is_out_of_memory(RuntimeError("size mismatch"))
    assert not batching.is_out_of_memory(ValueError("out of memory"))


def test_collect_after_an_out_of_memory_error_equals_a_fixed_batch_run(tiny_llama, tiny_prompts):
    fake = FakeOOM("blocks.0.hook_resid_pre", limit=3)
    got = collect(
        tiny_llama,
        tiny_prompts,
        ["blocks.1.hook_resid_post"],
        batch_size=16,
        interventions=[fake],
        progress=False,
    )
    assert fake.raised == 2 and max(s for s in fake.sizes if s <= 3) == 3  # 10 -> 5 -> 3
    fixed = collect(
        tiny_llama, tiny_prompts, ["blocks.1.hook_resid_post"], batch_size=3, progress=False
    )
    assert torch.equal(got.logits, fixed.logits)
    assert torch.equal(
        got.activations["blocks.1.hook_resid_post"], fixed.activations["blocks.1.hook_resid_post"]
    )


@pytest.mark.parametrize("positions", ["query", "all"])
def test_a_fast_sweep_survives_out_of_memory_in_groups_and_rows(
    tiny_llama, tiny_prompts, positions
):
    """Groups (the clean run) and rows (items x prompts per pass) both halve; the sweep
    equals one run with those sizes fixed."""
    prompts = tiny_prompts.select(torch.arange(9))  # groups 9 -> 5 -> 3: three of 3 prompts
    fake = FakeOOM("blocks.1.hook_resid_pre", limit=4)
    got = ih.head_sweep(
        tiny_llama,
        prompts,
        positions=positions,
        batch_size=9,
        rows_per_pass=1024,
        interventions=[fake],
        progress=False,
    )
    assert fake.raised >= 2
    fixed = ih.head_sweep(
        tiny_llama,
        prompts,
        positions=positions,
        batch_size=3,
        rows_per_pass=3,  # one item of 3 prompts per pass (4 rows is the limit)
        progress=False,
    )
    assert torch.equal(got.per_prompt, fixed.per_prompt)
    assert torch.equal(got.scores, fixed.scores)


def test_auto_batch_size_runs_and_equals_the_cpu_default(tiny_llama, tiny_prompts):
    auto = ih.evaluate(tiny_llama, tiny_prompts, batch_size="auto", progress=False)
    fixed = ih.evaluate(tiny_llama, tiny_prompts, batch_size=16, progress=False)
    assert auto.equals(fixed)
    sweep = ih.head_sweep(
        tiny_llama, tiny_prompts, batch_size="auto", rows_per_pass="auto", progress=False
    )
    ref = ih.head_sweep(tiny_llama, tiny_prompts, progress=False)
    assert torch.equal(sweep.per_prompt, ref.per_prompt)
    means = ih.activation_means(tiny_llama, tiny_prompts, batch_size="auto", progress=False)
    assert means.batch_size == batching.CPU_DEFAULTS["forward"]  # recorded resolved


def test_auto_batch_size_fits_the_free_memory_it_is_given():
    model = make_tiny_model(d_vocab=64)
    per_row = batching.row_bytes(model.cfg, 100, "forward")
    gib = 2**30
    # on a GPU: free memory x fraction / per-row bytes, capped
    fits = int(gib * batching.MEMORY_FRACTION) // per_row
    got = batching.auto_batch_size(model, 100, device="cuda", free=gib)
    assert got == min(fits, batching.MAX_BATCH["forward"])
    assert batching.auto_batch_size(model, 100, device="cuda", free=per_row) == 1
    # a measured per-row figure larger than the estimate lowers the batch
    small = batching.auto_batch_size(model, 100, device="cuda", free=gib, measured=per_row * 50)
    assert small == max(1, int(gib * batching.MEMORY_FRACTION) // (per_row * 50))
    # on a CPU: the fixed default, lowered only when RAM would not hold it
    assert batching.auto_batch_size(model, 100, device="cpu", free=100 * gib) == 16
    assert batching.auto_batch_size(model, 100, device="cpu", free=4 * per_row) == 2


def test_row_bytes_grows_with_length_dtype_and_kept_state():
    model = make_tiny_model(d_vocab=64)
    cfg = model.cfg
    assert batching.row_bytes(cfg, 200) > batching.row_bytes(cfg, 100)
    assert batching.row_bytes(cfg, 100, "clean_run", kept_layers=2) > batching.row_bytes(cfg, 100)
    assert batching.row_bytes(cfg, 100, "query_rows") < batching.row_bytes(cfg, 100, "all_rows")
    half = make_tiny_model(d_vocab=64).to(torch.bfloat16, print_details=False)
    half.cfg.dtype = torch.bfloat16
    assert batching.row_bytes(half.cfg, 100) < batching.row_bytes(cfg, 100)
