"""The geometry experiments' shared work gives the numbers of the plain computation bit for
bit: the task-vector injection runs restarted from one clean pass per group
(icl_heads/experiments/geometry/injected_runs.py) against one full pass per injection, and
the spectral alignment metric decomposed in chunks against one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import icl_heads as ih
from icl_heads.experiments.geometry import injected_runs, task_vector_experiment
from icl_heads.experiments.geometry.injected_runs import injection_runs, injection_start
from icl_heads.geometry import alignment_curves, label_alignment, run_query


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


@pytest.fixture(scope="module")
def three_layers(smol_tokenizer):
    from conftest import make_tiny_model

    return {
        kind: make_tiny_model(smol_tokenizer, kind=kind, n_layers=3, seed=1)
        for kind in ("llama", "gpt")
    }


@pytest.mark.parametrize("kind", ["llama", "gpt"])
@pytest.mark.parametrize("read", [3, 2])
def test_injection_runs_give_the_numbers_of_one_full_pass_per_injection(
    three_layers, sentiment_task, kind, read
):
    model = three_layers[kind]
    zero = ih.build_prompts(model, sentiment_task, k=0, n=11, seed=0)
    icl = ih.build_prompts(model, sentiment_task, k=2, n=11, seed=0)
    background = [ih.ablate(model, [(0, 1)], "zero")]
    states, _ = run_query(model, icl, [0, 1, 2, 3], progress=False)
    ivs = [
        ih.inject_task_vector(model, states[:, layer].mean(0), layer, scale=scale)
        for layer, scale in [(0, 1.0), (1, 1.0), (2, 0.5), (3, 1.0)]
    ]
    runs = [((iv,), injection_start(iv_layer, read, 3)) for iv, iv_layer in zip(ivs, [0, 1, 2, 3])]
    (base, base_beh), got = injection_runs(
        model, zero, runs, read, background=background, batch_size=4, progress=False
    )
    opts = dict(behaviour=True, batch_size=4, progress=False)
    want_base, want_base_beh = run_query(model, zero, [read], interventions=background, **opts)
    assert torch.equal(base, want_base)
    assert all(_same(base_beh[m], want_base_beh[m]) for m in want_base_beh)
    for iv, (states_j, beh_j) in zip(ivs, got, strict=True):
        want, want_beh = run_query(model, zero, [read], interventions=[*background, iv], **opts)
        assert torch.equal(states_j, want)
        assert all(_same(beh_j[m], want_beh[m]) for m in want_beh)


def test_injection_runs_restart_at_the_block_that_writes_the_state(three_layers, sentiment_task):
    model = three_layers["llama"]
    zero = ih.build_prompts(model, sentiment_task, k=0, n=8, seed=0)
    icl = ih.build_prompts(model, sentiment_task, k=2, n=8, seed=0)
    rows = {0: 0, 1: 0, 2: 0}
    handles = [
        model.blocks[i].register_forward_hook(
            lambda module, args, out, i=i: rows.__setitem__(i, rows[i] + out.shape[0])
        )
        for i in rows
    ]
    try:
        task_vector_experiment(model, icl, zero, layers=[2, 3], folds=2, n_boot=10, progress=False)
    finally:
        for h in handles:
            h.remove()
    n = len(zero)
    if ih.backends.is_bridge(model):  # (TransformerLens 4.x) one full pass per run there
        assert rows == {0: 4 * n, 1: 4 * n, 2: 4 * n}  # ICL, zero-shot, two injections
        return
    assert rows[0] == 2 * n  # the ICL pass and the zero-shot clean pass, nothing more
    assert rows[1] == 3 * n  # and the run into state 2 (written by block 1)
    assert rows[2] == 4 * n  # and the run into state 3 (written by block 2)


def test_task_vector_tables_are_those_of_full_passes(three_layers, sentiment_task, monkeypatch):
    model = three_layers["llama"]
    zero = ih.build_prompts(model, sentiment_task, k=0, n=12, seed=1)
    icl = ih.build_prompts(model, sentiment_task, k=2, n=12, seed=1)
    opts = dict(layers=[0, 1, 2], scales=[1.0, 2.0], folds=3, n_boot=40, batch_size=5)
    fast = task_vector_experiment(model, icl, zero, progress=False, **opts)

    def refuse(model):
        raise ValueError("shortformer")

    monkeypatch.setattr(injected_runs, "check_supported", refuse)
    slow = task_vector_experiment(model, icl, zero, progress=False, **opts)
    assert fast.table.equals(slow.table)
    assert fast.tables["effect"].equals(slow.tables["effect"])


def _dense_top_singular_cosine(G, proj, w, rank):
    """The former computation: every resample's full [n, n] matrix in one batch."""
    W = w.sum(-1)
    Gw = w @ G
    a = Gw / W[:, None] - ((Gw * w).sum(-1) / W**2)[:, None] / 2
    root = w.sqrt()
    K = root[:, :, None] * (G[None] - a[:, :, None] - a[:, None, :]) * root[:, None, :]
    evals, evecs = torch.linalg.eigh(K)
    lam, top = evals[:, -rank:], evecs[:, :, -rank:]
    mean = (w @ proj) / W[:, None]
    coords = top.transpose(1, 2) @ (root[:, :, None] * (proj[None] - mean[:, None, :]))
    keep = lam > 1e-9 * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    coords = torch.where(
        keep[..., None], coords / lam.clamp_min(1e-300).sqrt()[..., None], torch.zeros_like(coords)
    )
    frac = coords.pow(2).sum(1).sqrt().clamp_max(1.0)
    return torch.where(keep.any(-1), frac.mean(-1), torch.full_like(W, float("nan")))


def test_spectral_alignment_on_the_drawn_prompts_matches_the_full_matrices(
    tiny_llama, tiny_prompts, monkeypatch
):
    states, _ = run_query(tiny_llama, tiny_prompts, [0, 1, 2], progress=False)
    opts = dict(n_boot=25, seed=3)
    args = (states, tiny_prompts.gold, tiny_llama, tiny_prompts.label_token_ids)
    fast = alignment_curves(*args, **opts)
    monkeypatch.setattr(label_alignment, "_top_singular_cosine", _dense_top_singular_cosine)
    dense = alignment_curves(*args, **opts)
    for metric in fast.metrics:
        np.testing.assert_allclose(fast.values[metric], dense.values[metric], rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            fast.replicates[metric], dense.replicates[metric], rtol=0, atol=1e-12
        )
