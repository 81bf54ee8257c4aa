"""batch_size="auto" and the out-of-memory retry (icl_heads.batching), tested on the CPU
with a fake out-of-memory error: a hook that raises ``torch.OutOfMemoryError`` when its
activation has more rows than a limit, as a GPU would for a batch that does not fit."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import make_tiny_model
from result_leaves import numeric_leaves

import icl_heads as ih
from icl_heads import batching
from icl_heads.activations import collect, collect_sites
from icl_heads.experiments import trtl
from icl_heads.experiments.geometry import head_ablation_geometry, task_vector_experiment
from icl_heads.experiments.trtl.correlation import EFFECT_METRICS
from icl_heads.results import ExperimentResult


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


# --------------------------------------------------------------------------- "auto" everywhere


def _assert_same(got, want) -> None:
    got, want = dict(numeric_leaves(got)), dict(numeric_leaves(want))
    assert got.keys() == want.keys() and got
    for path, value in got.items():
        assert torch.equal(value.nan_to_num(123.0), want[path].nan_to_num(123.0)), path


@pytest.fixture(scope="module")
def sets(tiny_llama, tiny_prompts, sentiment_task):
    return dict(
        m=tiny_llama,
        p=tiny_prompts,
        task=sentiment_task,
        zero=ih.build_prompts(tiny_llama, sentiment_task, k=0, n=10, seed=0),
        shifted=ih.shift_demo_labels(tiny_prompts),
    )


def _under(iv_fn):
    """``evaluate`` under an intervention built with the batch size given."""
    return lambda e, b: ih.evaluate(e["m"], e["p"], interventions=[iv_fn(e, b)], progress=False)


Q = dict(progress=False)
#: Every public function that takes a batch size (or ``rows_per_pass``), as ``name ->
#: (the batch size "auto" is on a CPU, fn(sets, batch_size))``; the experiments built on
#: them (reproduce_trtl, reproduce_geometry, replay, the passes) pass it through.
AUTO_CASES = {
    "evaluate": (16, lambda e, b: ih.evaluate(e["m"], e["p"], batch_size=b, **Q)),
    "collect_sites": (
        16,
        lambda e, b: collect_sites(e["m"], e["p"], "z", [0, 1], batch_size=b, **Q),
    ),
    "tsla_scores": (16, lambda e, b: ih.tsla_scores(e["m"], e["p"], batch_size=b, **Q)),
    "dla_scores": (16, lambda e, b: ih.dla_scores(e["m"], e["p"], batch_size=b, **Q)),
    "direct_logit_attribution": (
        16,
        lambda e, b: ih.direct_logit_attribution(e["m"], e["p"], batch_size=b, **Q),
    ),
    "head_outputs": (16, lambda e, b: ih.head_outputs(e["m"], e["p"], batch_size=b, **Q)),
    "residual_decomposition": (
        16,
        lambda e, b: ih.residual_decomposition(e["m"], e["p"], batch_size=b, **Q),
    ),
    "detect_heads": (16, lambda e, b: ih.detect_heads(e["m"], e["p"], batch_size=b, **Q)),
    "label_attention_scores": (
        16,
        lambda e, b: ih.label_attention_scores(e["m"], e["p"], batch_size=b, **Q),
    ),
    "token_detector_scores": (16, lambda e, b: ih.token_detector_scores(e["m"], batch_size=b, **Q)),
    "query_states": (16, lambda e, b: ih.query_states(e["m"], e["p"], [0, 1], batch_size=b, **Q)),
    "task_vector": (16, lambda e, b: ih.task_vector(e["m"], e["p"], 1, batch_size=b, **Q)),
    "ablate_resample": (
        16,
        _under(
            lambda e, b: ih.ablate(
                e["m"], [(0, 1)], "resample", reference=e["p"], batch_size=b, **Q
            )
        ),
    ),
    "ablate_layers_mean": (
        16,
        _under(
            lambda e, b: ih.ablate_layers(e["m"], 1, "mean", reference=e["p"], batch_size=b, **Q)
        ),
    ),
    "patch": (
        16,
        _under(lambda e, b: ih.patch(e["m"], e["shifted"], heads=[(0, 1)], batch_size=b, **Q)),
    ),
    "head_sweep": (16, lambda e, b: ih.head_sweep(e["m"], e["p"], batch_size=b, **Q)),
    "head_sweep_naive": (
        16,
        lambda e, b: ih.head_sweep(e["m"], e["p"], method="naive", batch_size=b, **Q),
    ),
    "layer_sweep": (
        16,
        lambda e, b: ih.layer_sweep(
            e["m"], e["p"], mode="patch", source=e["shifted"], batch_size=b, **Q
        ),
    ),
    "position_sweep": (
        16,
        lambda e, b: ih.position_sweep(e["m"], e["p"], layer=1, batch_size=b, **Q),
    ),
    "attribution_patching": (
        8,
        lambda e, b: ih.attribution_patching(e["m"], e["p"], batch_size=b, **Q),
    ),
    "attribution_patching_all": (
        8,
        lambda e, b: ih.attribution_patching(
            e["m"], e["p"], mode="mean", positions="all", reference=e["p"], batch_size=b, **Q
        ),
    ),
    "find_task_heads": (
        16,
        lambda e, b: ih.find_task_heads(e["m"], e["p"], n_boot=5, batch_size=b, **Q),
    ),
    "ablation_experiment": (
        16,
        lambda e, b: ih.ablation_experiment(
            e["m"],
            e["p"],
            mode="resample",
            reference=e["p"],
            n_random=1,
            n_boot=5,
            batch_size=b,
            **Q,
        ),
    ),
    "correlation_experiment": (
        16,
        lambda e, b: trtl.correlation_experiment(e["m"], e["p"], n_boot=5, batch_size=b, **Q),
    ),
    "perturbation_experiment": (
        16,
        lambda e, b: trtl.perturbation_experiment(
            e["m"], e["p"], ("gold", "zero_shot"), n_boot=5, batch_size=b, **Q
        ),
    ),
    "reconciliation_experiment": (
        16,
        lambda e, b: trtl.reconciliation_experiment(
            e["m"], e["p"], T=5, n_sequences=2, n_boot=5, batch_size=b, **Q
        ),
    ),
    "steering_experiment": (
        16,
        lambda e, b: ih.steering_experiment(
            e["m"], e["p"], e["zero"], n_random=1, n_boot=5, batch_size=b, **Q
        ),
    ),
    "layer_geometry": (
        16,
        lambda e, b: ih.layer_geometry(e["m"], e["p"], folds=2, n_boot=5, batch_size=b, **Q),
    ),
    "head_ablation_geometry": (
        16,
        lambda e, b: head_ablation_geometry(
            e["m"],
            e["p"],
            {"PTH": [(0, 1)]},
            n_random=1,
            layers=[1],
            folds=2,
            n_boot=5,
            batch_size=b,
            **Q,
        ),
    ),  # fmt: skip
    "task_vector_experiment": (
        16,
        lambda e, b: task_vector_experiment(
            e["m"], e["p"], e["zero"], layers=[1], folds=2, n_boot=5, batch_size=b, **Q
        ),
    ),
}


@pytest.mark.parametrize("name", list(AUTO_CASES))
def test_every_batch_size_takes_auto_and_equals_the_cpu_default(sets, name):
    """``batch_size="auto"`` is accepted everywhere a public function takes a batch size,
    and on a CPU gives exactly the run at its default (16; 8 for a backward pass)."""
    fixed, fn = AUTO_CASES[name]
    _assert_same(fn(sets, "auto"), fn(sets, fixed))


@pytest.mark.parametrize("sweep", ["head_sweep", "layer_sweep", "position_sweep"])
def test_rows_per_pass_auto_equals_the_cpu_default(sets, sweep):
    m, p = sets["m"], sets["p"]
    kwargs = dict(layer=1) if sweep == "position_sweep" else {}
    fn = getattr(ih, sweep)
    got = fn(m, p, rows_per_pass="auto", **kwargs, **Q)
    _assert_same(got, fn(m, p, rows_per_pass=None, **kwargs, **Q))


def test_attribution_patching_survives_out_of_memory_and_equals_a_fixed_batch_run(
    tiny_llama, tiny_prompts
):
    prompts = tiny_prompts.select(torch.arange(9))  # batches 9 -> 5 -> 3: three of 3
    fake = FakeOOM("blocks.1.hook_resid_pre", limit=4)
    got = ih.attribution_patching(
        tiny_llama, prompts, batch_size=9, interventions=[fake], progress=False
    )
    assert fake.raised == 2
    fixed = ih.attribution_patching(tiny_llama, prompts, batch_size=3, progress=False)
    assert torch.equal(got.per_prompt, fixed.per_prompt)
    assert torch.equal(got.scores, fixed.scores)


def test_correlation_decodes_its_one_sweep_when_groups_are_halved(tiny_llama, tiny_prompts, caplog):
    """After an out-of-memory halving the groups are not ``batch_size`` long: the one-sweep
    recording is still decoded (no fallback to one sweep per metric) and equals a run with
    the halved size fixed."""
    prompts = tiny_prompts.select(torch.arange(9))
    fake = FakeOOM("blocks.1.hook_resid_pre", limit=4)
    kwargs = dict(n_boot=20, progress=False)
    with caplog.at_level(logging.WARNING, logger="icl_heads.experiments.trtl.correlation"):
        got = trtl.correlation_experiment(
            tiny_llama, prompts, batch_size=9, interventions=[fake], **kwargs
        )
    assert fake.raised >= 2
    assert "did not match" not in caplog.text
    for metric in EFFECT_METRICS:  # the sizes the halving settled on, fixed
        fixed = ih.head_sweep(
            tiny_llama, prompts, metric, mode="mean", batch_size=3, rows_per_pass=3, progress=False
        )
        want, have = fixed.per_prompt.nan_to_num(9.0), got.maps[f"delta_{metric}"].per_prompt
        assert torch.equal(have.nan_to_num(9.0), want), metric


def test_a_saved_result_made_with_auto_batches_replays(tiny_llama, tiny_prompts, tmp_path):
    """An intervention built with ``batch_size="auto"`` records "auto" in its spec (a
    resample ablation's donors, a patch's source, a background one); the spec reader
    takes it back and the replay picks the batch that fits the device."""
    from icl_heads.experiments.replay import replay

    source = ih.shift_demo_labels(tiny_prompts)
    background = ih.ablate(
        tiny_llama, [(0, 2)], "resample", reference=tiny_prompts, batch_size="auto", progress=False
    )
    assert background.to_spec()["reference"]["batch_size"] == "auto"
    result = ih.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"TR": [(1, 0)]},
        mode="resample",
        reference=tiny_prompts,
        n_random=0,
        random_like=(),
        n_boot=20,
        batch_size="auto",
        interventions=[background],
        progress=False,
    )
    result.save(tmp_path / "cell")
    saved = ExperimentResult.load(tmp_path / "cell")
    again = replay(saved, tiny_llama, "TR", batch_size="auto").set_index("metric")
    table = saved.table
    want = table[(table["condition"] == "TR") & (table["kind"] == "level")].set_index("metric")
    for metric in want.index:
        assert again.loc[metric, "value"] == pytest.approx(
            want.loc[metric, "value"], abs=1e-9, nan_ok=True
        )
    patch_spec = ih.patch(tiny_llama, source, heads=[(0, 1)], batch_size="auto", progress=False)
    rebuilt = ih.interventions.from_spec(
        tiny_llama, json.loads(json.dumps(patch_spec.to_spec())), prompts=[source]
    )
    assert rebuilt.batch_size == "auto"


def test_a_backward_row_needs_more_memory_than_a_forward_one():
    cfg = make_tiny_model(d_vocab=64).cfg
    assert batching.row_bytes(cfg, 100, "backward") > batching.row_bytes(cfg, 100, "forward")
    assert (
        batching.auto_batch_size(make_tiny_model(d_vocab=64), 100, kind="backward", device="cpu")
        == 8
    )


@pytest.mark.parametrize("grid", ["trtl", "geometry"])
def test_a_quick_grid_with_auto_batches_equals_the_default_and_resumes(tiny_llama, tmp_path, grid):
    from icl_heads.experiments.geometry import reproduce_geometry

    run = trtl.reproduce_trtl if grid == "trtl" else reproduce_geometry
    kwargs = dict(quick=True, progress=False)
    auto = run(tiny_llama, ["sentiment"], tmp_path / "auto", batch_size="auto", **kwargs)
    fixed = run(tiny_llama, ["sentiment"], tmp_path / "fixed", batch_size=16, **kwargs)
    assert set(auto["status"]) == {"computed"}
    for a, f in zip(auto["path"], fixed["path"], strict=True):
        _assert_same(ExperimentResult.load(a), ExperimentResult.load(f))
    again = run(tiny_llama, ["sentiment"], tmp_path / "auto", batch_size="auto", **kwargs)
    assert set(again["status"]) == {"loaded"}
