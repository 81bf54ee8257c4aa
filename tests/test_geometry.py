"""Hidden-state geometry (icl_heads/geometry.py) and the task-vector intervention
(icl_heads/interventions.py): synthetic states whose answers are known, exactness against
TransformerLens, determinism and bad inputs. The experiments built on them:
tests/test_geometry_experiments.py. Tests marked ``slow`` run on the embedded SmolLM2-135M."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.attribution import label_unembeddings
from icl_heads.geometry import (
    alignment,
    alignment_curves,
    onset_layers,
    query_states,
    resample_counts,
    separability,
    state_hook_names,
    task_vector,
)
from icl_heads.interventions import TaskVector, inject_task_vector


def _two_gaussians(n=80, d=16, gap=12.0, direction=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    states = torch.randn(n, d, generator=g)
    if direction is None:
        direction = torch.zeros(d)
        direction[3] = 1.0
    states += gap / 2 * (2 * labels[:, None] - 1) * direction / direction.norm()
    return states, labels


def _value(frame: pd.DataFrame, metric: str, layer: int = 0) -> pd.Series:
    return frame[(frame["metric"] == metric) & (frame["layer"] == layer)].iloc[0]


# --------------------------------------------------------------------------- separability


def test_two_separated_gaussian_classes_give_probe_accuracy_one_and_a_high_fisher_ratio():
    states, labels = _two_gaussians(gap=12.0)
    frame = separability(states, labels)
    assert _value(frame, "probe_accuracy").value == 1.0
    # between SS = n (gap/2)^2 = 2880, within SS ~ n d = 1280: ratio ~ 2.25
    fisher = _value(frame, "fisher_ratio")
    assert 1.5 < fisher.value < 3.5 and fisher.ci_low <= fisher.value <= fisher.ci_high


def test_identical_classes_give_chance_accuracy_and_a_fisher_ratio_near_zero():
    g = torch.Generator().manual_seed(1)
    states = torch.randn(200, 3, 8, generator=g)
    frame = separability(states, torch.arange(200) % 2)
    acc = frame[frame["metric"] == "probe_accuracy"]["value"]
    assert (abs(acc - 0.5) < 0.12).all()
    assert (frame[frame["metric"] == "fisher_ratio"]["value"] < 0.05).all()


def test_fisher_ratio_equals_the_trace_ratio_of_the_scatter_matrices():
    g = torch.Generator().manual_seed(2)
    states = torch.randn(30, 5, generator=g).double()
    labels = torch.arange(30) % 3
    mu = states.mean(0)
    between = sum(
        (labels == c).sum() * ((states[labels == c].mean(0) - mu) ** 2).sum() for c in range(3)
    )
    within = sum(((states[labels == c] - states[labels == c].mean(0)) ** 2).sum() for c in range(3))
    frame = separability(states, labels, folds=3, n_boot=10)
    assert _value(frame, "fisher_ratio").value == pytest.approx(float(between / within), rel=1e-9)


def test_the_same_seed_gives_identical_results_and_another_seed_other_intervals():
    states, labels = _two_gaussians(gap=2.0)
    a = separability(states, labels, seed=3)
    b = separability(states, labels, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = separability(states, labels, seed=4)
    assert not a[["ci_low", "ci_high"]].equals(c[["ci_low", "ci_high"]])


def test_labels_may_be_strings_and_states_numpy_arrays():
    states, labels = _two_gaussians()
    words = np.array(["neg", "pos"])[labels.numpy()]
    a = separability(states.numpy(), words)
    b = separability(states, labels)
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["chance"] == 0.5 and a.attrs["settings"].folds == 5


def test_stratified_resamples_keep_class_sizes_and_repeat_with_the_seed():
    codes = np.array([0] * 7 + [1] * 5)
    counts = resample_counts(codes, 50, seed=1)
    assert (counts[:, :7].sum(1) == 7).all() and (counts[:, 7:].sum(1) == 5).all()
    assert np.array_equal(counts, resample_counts(codes, 50, seed=1))


# --------------------------------------------------------------------------- alignment


def _label_states(model, ids, parallel: bool, n=40, seed=0):
    """States whose class-mean difference is parallel (or orthogonal) to u_0 - u_1, with
    every state of the same norm so the final norm's scale is one constant."""
    U = label_unembeddings(model, ids).float().cpu()
    diff = U[:, 0] - U[:, 1]
    diff = diff / diff.norm()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n // 2, U.shape[0], generator=g)
    direction = diff
    if not parallel:
        direction = torch.randn(U.shape[0], generator=g)
        direction -= (direction @ diff) * diff
        direction /= direction.norm()
    noise -= (noise @ direction)[:, None] * direction  # orthogonal to the class direction
    states = torch.cat([noise + 5 * direction, noise - 5 * direction])
    labels = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).long()
    return states, labels


def test_a_class_mean_difference_parallel_to_the_label_difference_has_cosine_one(tiny_llama):
    ids = [10, 20]
    states, labels = _label_states(tiny_llama, ids, parallel=True)
    frame = alignment(states, labels, tiny_llama, ids, n_boot=50)
    assert _value(frame, "mean_diff_cosine").value == pytest.approx(1.0, abs=1e-5)
    assert _value(frame, "top_singular_cosine").value == pytest.approx(1.0, abs=1e-4)


def test_an_orthogonal_class_mean_difference_has_cosine_zero(tiny_llama):
    ids = [10, 20]
    states, labels = _label_states(tiny_llama, ids, parallel=False)
    frame = alignment(states, labels, tiny_llama, ids, n_boot=50)
    assert abs(_value(frame, "mean_diff_cosine").value) < 1e-5
    assert _value(frame, "top_singular_cosine").value < 1e-3


def test_alignment_reads_states_after_the_final_norm_and_matches_the_logit_lens(
    tiny_llama, tiny_prompts
):
    states = query_states(tiny_llama, tiny_prompts, progress=False)
    frame = alignment(
        states, tiny_prompts.gold, tiny_llama, tiny_prompts.label_token_ids, n_boot=20
    )
    # the logit lens at the final state is the model's own label accuracy
    acc = ih.evaluate(tiny_llama, tiny_prompts, progress=False)["accuracy"].iloc[0]
    last = tiny_llama.cfg.n_layers
    assert _value(frame, "logit_lens_accuracy", last).value == pytest.approx(acc)
    # the steering geometry is the per-prompt functions' mean
    Z = ih.geometry.normalized_states(tiny_llama, states)
    U = label_unembeddings(tiny_llama, tiny_prompts.label_token_ids).cpu()
    rot = ih.geometry.label_rotation(Z, U, tiny_prompts.gold).mean(0)
    got = frame[frame["metric"] == "label_rotation"]["value"].to_numpy()
    np.testing.assert_allclose(got, rot.numpy(), atol=1e-5)
    assert set(frame["metric"]) == set(ih.geometry.ALIGNMENT_METRICS)


def test_effective_dimension_is_the_participation_ratio_of_the_covariance(tiny_llama):
    g = torch.Generator().manual_seed(3)
    d = tiny_llama.cfg.d_model
    states = torch.randn(60, d, generator=g) * torch.linspace(0.2, 3, d)
    states = states / states.norm(dim=-1, keepdim=True) * math.sqrt(d)  # RMS norm is a no-op
    labels = torch.arange(60) % 2
    curves = alignment_curves(states, labels, tiny_llama, [10, 20], n_boot=10)
    Z = ih.geometry.normalized_states(tiny_llama, states).double()
    eig = torch.linalg.eigvalsh(torch.cov(Z.T, correction=0))
    assert curves.values["effective_dim"][0] == pytest.approx(
        float(eig.sum() ** 2 / (eig**2).sum()), rel=1e-6
    )


def test_onset_is_the_first_layer_at_ninety_percent_of_the_maximum():
    curves = np.array([[0.0, 0.5, 0.95, 1.0, 0.9], [np.nan, -1.0, -0.5, -0.2, -0.1]])
    out = onset_layers(curves, [0, 1, 2, 3, 4])
    assert out[0] == 2 and math.isnan(out[1])


# --------------------------------------------------------------------------- query states


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt"])
def test_query_states_equal_run_with_cache_at_the_last_position(
    model_name, request, sentiment_task
):
    model = request.getfixturevalue(model_name)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=5, seed=1)
    states = query_states(model, prompts, batch_size=2, progress=False)
    _, cache = model.run_with_cache(prompts.tokens, attention_mask=prompts.attention_mask)
    L = model.cfg.n_layers
    expected = torch.stack(
        [cache["blocks.0.hook_resid_pre"][:, -1]]
        + [cache[f"blocks.{layer}.hook_resid_post"][:, -1] for layer in range(L)],
        dim=1,
    )
    assert states.shape == (5, L + 1, model.cfg.d_model)
    torch.testing.assert_close(states, expected, atol=1e-5, rtol=1e-5)
    assert len(state_hook_names(model)) == L + 1
    assert torch.equal(query_states(model, prompts, [2, 0], progress=False), states[:, [2, 0]])


# --------------------------------------------------------------------------- task vectors


def test_a_task_vector_is_the_mean_query_state(tiny_llama, tiny_prompts):
    states = query_states(tiny_llama, tiny_prompts, progress=False)
    v = task_vector(tiny_llama, tiny_prompts, 1, progress=False)
    torch.testing.assert_close(v, states[:, 1].mean(0))
    both = task_vector(tiny_llama, tiny_prompts, [0, 2], progress=False)
    assert both.shape == (2, tiny_llama.cfg.d_model)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_injecting_a_task_vector_with_scale_zero_reproduces_the_baseline_exactly(
    tiny_llama, tiny_prompts, mode
):
    v = task_vector(tiny_llama, tiny_prompts, 1, progress=False) * 3
    base = query_states(tiny_llama, tiny_prompts, progress=False)
    iv = inject_task_vector(tiny_llama, v, 1, mode=mode, scale=0.0)
    assert torch.equal(
        query_states(tiny_llama, tiny_prompts, interventions=[iv], progress=False), base
    )


def test_replacing_writes_the_vector_into_the_state_and_adding_adds_it(tiny_llama, tiny_prompts):
    v = torch.randn(tiny_llama.cfg.d_model)
    base = query_states(tiny_llama, tiny_prompts, progress=False)
    replaced = query_states(
        tiny_llama,
        tiny_prompts,
        progress=False,
        interventions=[inject_task_vector(tiny_llama, v, 1)],
    )
    torch.testing.assert_close(replaced[:, 1], v.expand(len(tiny_prompts), -1))
    torch.testing.assert_close(replaced[:, 0], base[:, 0])
    added = query_states(
        tiny_llama,
        tiny_prompts,
        progress=False,
        interventions=[inject_task_vector(tiny_llama, v, 1, mode="add", scale=0.5)],
    )
    torch.testing.assert_close(added[:, 1], base[:, 1] + 0.5 * v)
    # a context manager too, and only the query position is touched
    with inject_task_vector(tiny_llama, v, 1):
        logits = tiny_llama(tiny_prompts.tokens, attention_mask=tiny_prompts.attention_mask)
    clean = tiny_llama(tiny_prompts.tokens, attention_mask=tiny_prompts.attention_mask)
    torch.testing.assert_close(logits[:, :-1], clean[:, :-1])
    assert not torch.allclose(logits[:, -1], clean[:, -1])


def test_task_vector_injection_describes_itself_and_refuses_bad_input(tiny_llama):
    v = torch.zeros(tiny_llama.cfg.d_model)
    iv = inject_task_vector(tiny_llama, v, 2, mode="add", scale=2)
    assert isinstance(iv, TaskVector) and "state=2" in iv.describe()
    assert iv.hook_name == "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match="out of range"):
        inject_task_vector(tiny_llama, v, 3)
    with pytest.raises(ValueError, match=r"\[d_model\]"):
        inject_task_vector(tiny_llama, torch.zeros(5), 1)
    with pytest.raises(ValueError, match="mode 'swap'"):
        inject_task_vector(tiny_llama, v, 1, mode="swap")
    with pytest.raises(TypeError, match="scale"):
        inject_task_vector(tiny_llama, v, 1, scale="big")
    with pytest.raises(ValueError, match="NaN"):
        inject_task_vector(tiny_llama, torch.full_like(v, math.nan), 1)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors_naming_the_fix(tiny_llama, tiny_prompts):
    states, labels = _two_gaussians(n=20)
    with pytest.raises(ValueError, match="at least two classes.*n >= the number of labels"):
        separability(states, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="fewer than folds=5; use folds <= 3"):
        separability(states[:7], labels[:7])
    with pytest.raises(ValueError, match="different lengths.*one label per prompt"):
        separability(states, labels[:19])
    with pytest.raises(ValueError, match="different lengths"):
        alignment(torch.zeros(20, tiny_llama.cfg.d_model), labels[:19], tiny_llama, [10, 20])
    with pytest.raises(ValueError, match="at least two classes"):
        alignment(
            torch.randn(20, tiny_llama.cfg.d_model),
            torch.zeros(20, dtype=torch.long),
            tiny_llama,
            [10, 20],
        )
    with pytest.raises(ValueError, match="label indices 0..1"):
        alignment(torch.randn(20, tiny_llama.cfg.d_model), labels + 1, tiny_llama, [10, 20])
    with pytest.raises(ValueError, match="d_model"):
        alignment(torch.randn(20, 7), labels, tiny_llama, [10, 20])
    with pytest.raises(TypeError, match="tensor"):
        separability([[1.0, 2.0]] * 20, labels)
    with pytest.raises(ValueError, match="shape"):
        separability(torch.zeros(20, 2, 3, 4), labels)
    with pytest.raises(ValueError, match="NaN"):
        separability(torch.full((20, 3), math.nan), labels)
    with pytest.raises(ValueError, match="State layer 9 is out of range"):
        query_states(tiny_llama, tiny_prompts, [9], progress=False)
    with pytest.raises(ValueError, match="State layer 9 is out of range"):
        task_vector(tiny_llama, tiny_prompts, 9, progress=False)


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_on_the_default_model_injection_at_scale_zero_matches_zero_shot(smol):
    torch.set_num_threads(1)
    task = ih.load_task("sentiment")
    icl = ih.build_prompts(smol, task, k=4, n=8, seed=0)
    zero = ih.build_prompts(smol, task, k=0, n=8, seed=0)
    v = task_vector(smol, icl, 12, progress=False)
    base = ih.evaluate(smol, zero, progress=False)
    same = ih.evaluate(
        smol, zero, progress=False, interventions=[inject_task_vector(smol, v, 12, scale=0.0)]
    )
    pd.testing.assert_frame_equal(base, same, check_like=True)


# ---- NaN and infinities (docs/api.md): a missing label is never a class


def test_nan_labels_are_an_error_not_an_extra_class():
    X, y = _two_gaussians(n=40, d=4)
    labels = y.double()
    labels[[3, 7]] = math.nan  # used to become a third class in np.unique
    with pytest.raises(ValueError, match=r"labels hold 2 missing value\(s\) .*first: prompt 3"):
        separability(X, labels, folds=2, n_boot=5)
    as_str = np.array(["a", "b"] * 20, dtype=object)
    as_str[5] = None
    with pytest.raises(ValueError, match="prompt 5 = None"):
        separability(X, as_str, folds=2, n_boot=5)
    frame = separability(X, y, folds=2, n_boot=5)  # finite labels: as before
    assert frame.attrs["chance"] == 0.5


def test_onset_of_an_infinite_curve_is_its_first_infinite_layer():
    # a Fisher ratio is +inf where the classes have no within-class spread
    curves = np.array([[0.0, 1.0, math.inf, math.inf], [math.nan] * 4, [0.0, 0.5, 0.95, 1.0]])
    out = onset_layers(curves, [0, 1, 2, 3])
    assert out[0] == 2 and math.isnan(out[1]) and out[2] == 2
