"""Every analysis on a model split over several devices (TransformerLens's ``n_devices``),
checked on the CPU with a fake device map: what a later block's hooks capture is a tensor
"of another device" (:class:`Elsewhere`), which refuses to be combined with tensors of the
batch's device until it is moved (``.to(device)`` or ``.cpu()``), as torch refuses tensors of
two GPUs. Each analysis must give exactly the numbers of the unsplit run.

Real multi-GPU placement is not tested here (no GPU). The engine's moves at block
boundaries and the decomposition's per-block weights have their own fake-device tests in
``tests/test_gpu_ready.py``; this file covers everything that gathers what hooks capture.
"""

from __future__ import annotations

import pytest
import torch
from result_leaves import numeric_leaves
from test_gpu_ready import ANALYSES, OnAnotherDevice

import icl_heads as ih
from icl_heads import hooks
from icl_heads.attention_patterns import attention_example
from icl_heads.experiments import geometry, trtl
from icl_heads.full_runs import full_condition_runs
from icl_heads.last_token import Run


class Elsewhere(OnAnotherDevice):
    """:class:`OnAnotherDevice` where only a move leaves the other device: ``.cpu()``,
    ``.to(device)`` and ``.to(tensor)`` (to that tensor's device); ``.to(dtype)`` stays."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu or func is torch.Tensor.to:
            target = [*args[1:], kwargs.get("device"), kwargs.get("other")]
            moves = func is torch.Tensor.cpu or any(
                isinstance(a, (str, torch.device, torch.Tensor)) for a in target
            )
            other = next((a for a in target if isinstance(a, torch.Tensor)), None)
            stays = not moves or isinstance(other, cls)
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)
            return out.as_subclass(cls if stays else torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


#: The hooks of a 2-layer model whose block 1 and final norm live on a second device.
FAR = ("blocks.1.", "ln_final.")


def _split_at_capture(monkeypatch) -> list[str]:
    """What every :class:`~icl_heads.hooks.Capture` keeps (or hands its reducer) from block
    1 and the final norm comes "from another device"; returns the names captured there.
    The activation is "elsewhere" before the capture selects its positions (the mask of
    ``positions="all"`` is the batch's, so the capture moves it to the activation)."""
    real = hooks.Capture._at_positions
    seen: list[str] = []

    def at_positions(self, name, act):
        if name.startswith(FAR):
            seen.append(name)
            act = act.as_subclass(Elsewhere)
        return real(self, name, act)

    monkeypatch.setattr(hooks.Capture, "_at_positions", at_positions)
    return seen


def _assert_same(reference, got) -> None:
    ref, have = dict(numeric_leaves(reference)), dict(numeric_leaves(got))
    assert ref.keys() == have.keys()
    assert ref, "nothing to compare"
    for path, value in have.items():
        assert type(value) is torch.Tensor, f"{path} is still 'on another device'"
        assert torch.equal(value.nan_to_num(7.0), ref[path].nan_to_num(7.0)), path


def test_the_fake_refuses_to_mix_until_moved():
    here, far = torch.ones(2), torch.ones(2).as_subclass(Elsewhere)
    with pytest.raises(RuntimeError, match="same device"):
        torch.stack([here, far])
    assert type(torch.stack([here, far.to("cpu")])) is torch.Tensor
    assert type(torch.stack([here, far.cpu()])) is torch.Tensor
    assert type(far.to(torch.float64)) is Elsewhere  # a dtype is not a move
    assert type(here.to(far)) is Elsewhere  # to that tensor's device


#: ``evaluate`` captures nothing (its logits come from the unembedding's device).
NO_CAPTURE = {"evaluate"}
#: Attribution patching differentiates with respect to the captured tensors themselves, so
#: a re-wrapped capture leaves the graph; it moves each layer's estimates to the batch's
#: device before stacking (icl_heads/patching_attribution.py, ``estimates``).
NOT_FAKED = {"attribution_patching"}


def _zero_shot(model):
    return ih.build_prompts(model, ih.load_task("sentiment"), k=0, n=10, seed=1)


#: The experiments ``ANALYSES`` (the bfloat16 test's list) leaves out.
MORE = {
    "perturbation_experiment": lambda m, p: trtl.perturbation_experiment(
        m, p, ("gold", "random_labels"), n_boot=20, progress=False
    ),
    "correlation_experiment": lambda m, p: trtl.correlation_experiment(
        m, p, n_boot=20, progress=False
    ),
    "task_vector_experiment": lambda m, p: geometry.task_vector_experiment(
        m, p, _zero_shot(m), layers=[1], folds=2, n_boot=20, progress=False
    ),
}
SPLIT = {
    **{n: f for n, f in ANALYSES.items() if n not in NO_CAPTURE | NOT_FAKED},
    **MORE,
}


#: The analyses (and fallbacks) that stacked per-layer captures as they came before
#: session 27: each failed on a split model.
GATHERING = {
    "token_detector_scores": lambda m, p: ih.token_detector_scores(
        m, T=6, n_sequences=4, progress=False
    ),
    "label_attention_scores": lambda m, p: ih.label_attention_scores(m, p, progress=False),
    "attention_example": lambda m, p: attention_example(m, p, 1).patterns,
    "full_condition_runs": lambda m, p: full_condition_runs(
        m,
        p,
        {"ablated": Run((ih.ablate(m, [(0, 1)], "zero"),), 0)},
        measure=lambda logits, prompts: {"logits": logits.float().cpu()},
        names=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
        background=(),
        batch_size=4,
        device="cpu",
        progress=False,
        desc="runs",
        baseline_states=True,
    ),
    "head_ablation_geometry": lambda m, p: geometry.head_ablation_geometry(
        m, p, {"A": [(0, 0), (1, 1)]}, n_random=1, folds=2, n_boot=20, progress=False
    ),
    "reconciliation_experiment": lambda m, p: trtl.reconciliation_experiment(
        m, p, T=6, n_sequences=4, n_boot=20, progress=False
    ),
}


@pytest.mark.parametrize("name", [*SPLIT, *GATHERING])
def test_every_analysis_gathers_the_layers_of_a_split_model(
    tiny_llama, tiny_prompts, monkeypatch, name
):
    analysis = {**SPLIT, **GATHERING}[name]
    reference = analysis(tiny_llama, tiny_prompts)
    seen = _split_at_capture(monkeypatch)
    got = analysis(tiny_llama, tiny_prompts)
    assert seen, "no capture of the later block: nothing was split"
    _assert_same(reference, got)


def test_head_mean_outputs_read_the_weights_block_by_block(tiny_llama, tiny_prompts, monkeypatch):
    """``ActivationMeans.outputs`` (the steering vectors of reproduce_trtl) read
    ``model.W_O``, TransformerLens's stack of every block's weights, which fails on a split
    model; on a split model they now read them block by block, with the same numbers."""
    from icl_heads import devices

    means = ih.activation_means(tiny_llama, tiny_prompts, progress=False)
    reference = means.outputs(tiny_llama)

    def refuse(self):
        raise RuntimeError("W_O of blocks on several devices")

    monkeypatch.setattr(type(tiny_llama), "W_O", property(refuse))
    monkeypatch.setattr(
        devices, "block_placement", lambda model: lambda layer: torch.device(f"cpu:{layer}")
    )
    assert torch.equal(means.outputs(tiny_llama), reference)
