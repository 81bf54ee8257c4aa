"""Interventions: identities, ground truth against hand computations, composition, errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import icl_heads as ih
from icl_heads.activations import activation_means, collect, final_logits
from icl_heads.backends import final_residual
from icl_heads.heads import Head
from icl_heads.hooks import Capture, applied, position_mask
from icl_heads.interventions import ablate, ablate_layers, compose, patch, steer
from icl_heads.prompts import shift_demo_labels


def _logits(model, prompts, interventions=()):
    return collect(model, prompts, interventions=list(interventions), progress=False).logits


def _record(model, prompts, names, interventions=(), positions="all"):
    """Run prompts as one batch and record activations (after the interventions)."""
    batch = prompts.select(torch.arange(len(prompts)))
    rec = Capture(names=set(names).__contains__, positions=positions)
    index = torch.arange(len(prompts))
    with torch.inference_mode(), applied(model, [*interventions, rec], batch, index):
        model(batch.tokens, attention_mask=batch.attention_mask)
    return rec.store


# --------------------------------------------------------------------------- identities


def test_ablating_an_empty_head_set_is_a_no_op(tiny_llama, tiny_prompts):
    clean = _logits(tiny_llama, tiny_prompts)
    for heads in ([], torch.zeros(2, 4, dtype=torch.bool)):
        for mode in ("zero", "mean", "resample"):
            iv = ablate(tiny_llama, heads, mode=mode, reference=tiny_prompts)
            assert torch.equal(_logits(tiny_llama, tiny_prompts, [iv]), clean)


def test_zero_ablating_every_head_of_a_layer_leaves_attn_out_equal_to_b_O(tiny_llama, tiny_prompts):
    layer = 1
    iv = ablate(tiny_llama, [Head(layer, h) for h in range(4)], mode="zero")
    store = _record(tiny_llama, tiny_prompts, [f"blocks.{layer}.hook_attn_out"], [iv])
    attn_out = store[f"blocks.{layer}.hook_attn_out"]
    b_O = tiny_llama.blocks[layer].attn.b_O.detach()
    assert b_O.abs().max() > 1e-3  # the identity below would be vacuous with b_O = 0
    torch.testing.assert_close(attn_out, b_O.expand_as(attn_out), atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt"])
def test_zero_ablating_every_head_equals_removing_attention_output_up_to_b_O(
    model_name, request, sentiment_task
):
    """Zero-ablating all heads of a layer == setting attn_out := b_O; removing the whole
    attention output (attn_out := 0) differs exactly by b_O."""
    model = request.getfixturevalue(model_name)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=5, seed=3)
    layer = 0
    heads = ablate(model, [Head(layer, h) for h in range(model.cfg.n_heads)], mode="zero")
    removed = ablate_layers(model, [layer], site="attn_out", mode="zero")
    minus_bias = steer(
        model, -model.blocks[layer].attn.b_O.detach(), layer, site="attn_out", positions="all"
    )
    torch.testing.assert_close(
        _logits(model, prompts, [heads, minus_bias]),
        _logits(model, prompts, [removed]),
        atol=1e-5,
        rtol=1e-5,
    )
    assert not torch.allclose(
        _logits(model, prompts, [heads]), _logits(model, prompts, [removed]), atol=1e-4
    )


def test_mean_ablation_with_the_mean_of_one_prompt_on_that_prompt_is_a_no_op(
    tiny_llama, tiny_prompts
):
    one = tiny_prompts.select([3])
    means = activation_means(tiny_llama, one, positions="query")
    every = torch.ones(2, 4, dtype=torch.bool)
    iv = ablate(tiny_llama, every, mode="mean", positions="query", means=means)
    torch.testing.assert_close(
        _logits(tiny_llama, one, [iv]), _logits(tiny_llama, one), atol=1e-5, rtol=1e-5
    )
    # ...and it does change another prompt (the test can fail)
    other = tiny_prompts.select([4])
    assert not torch.allclose(
        _logits(tiny_llama, other, [iv]), _logits(tiny_llama, other), atol=1e-4
    )


@pytest.mark.parametrize("site", ["z", "resid_pre", "attn_out", "mlp_out", "resid_post"])
@pytest.mark.parametrize("positions", ["all", "query"])
def test_patching_a_run_into_itself_changes_nothing(tiny_llama, tiny_prompts, site, positions):
    iv = patch(tiny_llama, tiny_prompts, site=site, positions=positions)
    torch.testing.assert_close(
        _logits(tiny_llama, tiny_prompts, [iv]),
        _logits(tiny_llama, tiny_prompts),
        atol=1e-5,
        rtol=1e-5,
    )


# --------------------------------------------------------------------------- ground truth


def test_zero_ablating_a_head_at_the_query_removes_exactly_its_output(tiny_llama, tiny_prompts):
    """attn_out(ablated) - attn_out(clean) = -z[query, h] @ W_O[h] at the query, 0 elsewhere."""
    layer, head = 1, 2
    names = [f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.attn.hook_z"]
    clean = _record(tiny_llama, tiny_prompts, names)
    iv = ablate(tiny_llama, [Head(layer, head)], mode="zero", positions="query")
    ablated = _record(tiny_llama, tiny_prompts, names, [iv])
    diff = ablated[names[0]] - clean[names[0]]
    expected = -clean[names[1]][:, -1, head] @ tiny_llama.W_O[layer, head].detach()
    torch.testing.assert_close(diff[:, -1], expected, atol=1e-5, rtol=1e-5)
    assert diff[:, :-1].abs().max() == 0


def test_head_means_equal_a_hand_computed_masked_mean(tiny_llama, tiny_prompts):
    z = collect(
        tiny_llama, tiny_prompts, ["blocks.1.attn.hook_z"], positions="all", progress=False
    ).activations["blocks.1.attn.hook_z"]
    m = tiny_prompts.attention_mask.float()
    expected_all = (z * m[:, :, None, None]).sum((0, 1)) / m.sum()
    got = activation_means(tiny_llama, tiny_prompts, positions="all", batch_size=3)
    torch.testing.assert_close(got.values[1], expected_all, atol=1e-5, rtol=1e-5)
    got_q = activation_means(tiny_llama, tiny_prompts, positions="query", batch_size=4)
    torch.testing.assert_close(got_q.values[1], z[:, -1].mean(0), atol=1e-5, rtol=1e-5)
    assert got_q.outputs(tiny_llama).shape == (2, 4, tiny_llama.cfg.d_model)
    assert activation_means(tiny_llama, tiny_prompts, "attn_out").values.shape == (
        2,
        tiny_llama.cfg.d_model,
    )


def test_means_at_several_positions_come_from_one_pass_and_equal_separate_calls(
    tiny_llama, tiny_prompts
):
    passes = []
    tiny_llama.add_hook("blocks.0.hook_resid_pre", lambda act, hook: passes.append(1))
    try:
        every, query = activation_means(
            tiny_llama, tiny_prompts, positions=("all", "query"), batch_size=3, progress=False
        )
    finally:
        tiny_llama.reset_hooks()
    assert len(passes) == -(-len(tiny_prompts) // 3)  # one pass over the prompts
    for got, positions in ((every, "all"), (query, "query")):
        alone = activation_means(
            tiny_llama, tiny_prompts, positions=positions, batch_size=3, progress=False
        )
        assert got.positions == positions and torch.equal(got.values, alone.values)
    (only,) = activation_means(tiny_llama, tiny_prompts, positions=("query",), progress=False)
    assert torch.equal(only.values, query.values)
    with pytest.raises(ValueError, match="'query' or 'all'"):
        activation_means(tiny_llama, tiny_prompts, positions=("all", "last"))


def test_means_at_explicit_positions_average_the_real_tokens_there(tiny_llama, tiny_prompts):
    z = collect(
        tiny_llama, tiny_prompts, ["blocks.1.attn.hook_z"], positions="all", progress=False
    ).activations["blocks.1.attn.hook_z"]
    sel = position_mask([3, -2], tiny_prompts.seq_len)
    w = (tiny_prompts.attention_mask.bool() & sel).float()
    assert 0 < w[:, 3].sum() < len(tiny_prompts)  # position 3 is padding in some prompts
    expected = (z * w[:, :, None, None]).sum((0, 1)) / w.sum()
    for batch_size in (3, 10):
        got = activation_means(
            tiny_llama, tiny_prompts, positions=[3, -2], batch_size=batch_size, progress=False
        )
        assert got.positions == (3, -2)
        torch.testing.assert_close(got.values[1], expected, atol=1e-5, rtol=1e-5)
    last = activation_means(tiny_llama, tiny_prompts, positions=-1, progress=False)
    query = activation_means(tiny_llama, tiny_prompts, positions="query", progress=False)
    torch.testing.assert_close(last.values, query.values, atol=1e-6, rtol=1e-6)
    several = activation_means(
        tiny_llama, tiny_prompts, positions=("all", [3, -2]), batch_size=3, progress=False
    )
    assert [m.positions for m in several] == ["all", (3, -2)]
    torch.testing.assert_close(several[1].values[1], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        activation_means(tiny_llama, tiny_prompts, positions=[tiny_prompts.seq_len])


def test_mean_ablation_at_positions_takes_the_mean_at_those_positions(tiny_llama, tiny_prompts):
    iv = ablate(tiny_llama, [Head(0, 1)], "mean", [-2], reference=tiny_prompts, progress=False)
    at = activation_means(tiny_llama, tiny_prompts, positions=[-2], progress=False)
    assert torch.equal(iv.means, at.values) and iv.means_from.positions == (-2,)
    every = activation_means(tiny_llama, tiny_prompts, positions="all", progress=False)
    assert not torch.allclose(iv.means, every.values)  # the old behaviour took "all"
    z = _record(tiny_llama, tiny_prompts, ["blocks.0.attn.hook_z"], [iv])["blocks.0.attn.hook_z"]
    torch.testing.assert_close(z[:, -2, 1], at.values[0, 1].expand_as(z[:, -2, 1]))


def test_mean_ablation_writes_the_mean_into_the_head(tiny_llama, tiny_prompts):
    means = activation_means(tiny_llama, tiny_prompts, positions="all")
    iv = ablate(tiny_llama, [Head(0, 1)], mode="mean", means=means)
    z = _record(tiny_llama, tiny_prompts, ["blocks.0.attn.hook_z"], [iv])["blocks.0.attn.hook_z"]
    torch.testing.assert_close(z[:, :, 1], means.values[0, 1].expand_as(z[:, :, 1]))


def test_resample_ablation_takes_a_seeded_donor_that_is_another_prompt(tiny_llama, tiny_prompts):
    name = "blocks.1.attn.hook_z"
    clean_z = _record(tiny_llama, tiny_prompts, [name], positions="query")[name]
    iv = ablate(
        tiny_llama, [Head(1, 3)], mode="resample", positions="query", reference=tiny_prompts, seed=7
    )
    batch = tiny_prompts.select(torch.arange(len(tiny_prompts)))
    donors = iv.donors(batch, torch.arange(len(tiny_prompts)), len(tiny_prompts))
    assert (donors != torch.arange(len(tiny_prompts))).all()
    got = _record(tiny_llama, tiny_prompts, [name], [iv], positions="query")[name]
    torch.testing.assert_close(got[:, 3], clean_z[donors, 3])
    torch.testing.assert_close(got[:, :3], clean_z[:, :3])
    again = ablate(
        tiny_llama, [Head(1, 3)], mode="resample", positions="query", reference=tiny_prompts, seed=7
    )
    assert torch.equal(again.donors(batch, torch.arange(10), 10), donors)
    other = ablate(
        tiny_llama, [Head(1, 3)], mode="resample", positions="query", reference=tiny_prompts, seed=8
    )
    assert not torch.equal(other.donors(batch, torch.arange(10), 10), donors)


def test_resample_donors_do_not_depend_on_batching(tiny_llama, tiny_prompts):
    iv = ablate(tiny_llama, [Head(0, 0), Head(1, 1)], mode="resample", reference=tiny_prompts)
    one = collect(
        tiny_llama, tiny_prompts, interventions=[iv], batch_size=10, progress=False
    ).logits
    many = collect(
        tiny_llama, tiny_prompts, interventions=[iv], batch_size=3, progress=False
    ).logits
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


def test_patching_one_head_copies_the_source_z_on_a_gqa_model(tiny_llama, tiny_prompts):
    assert tiny_llama.cfg.n_key_value_heads == 2  # 4 query heads over 2 key/value heads
    source = shift_demo_labels(tiny_prompts)
    name = "blocks.1.attn.hook_z"
    src_z = _record(tiny_llama, source, [name])[name]
    iv = patch(tiny_llama, source, heads=[Head(1, 2)], positions="all")
    got = _record(tiny_llama, tiny_prompts, [name], [iv])[name]
    real = tiny_prompts.attention_mask.bool()
    torch.testing.assert_close(got[:, :, 2][real], src_z[:, :, 2][real])
    clean_z = _record(tiny_llama, tiny_prompts, [name])[name]
    torch.testing.assert_close(got[:, :, :2], clean_z[:, :, :2])


def test_patching_the_residual_stream_at_the_query_reproduces_the_source_downstream(
    tiny_llama, tiny_prompts
):
    """Patching resid_pre of layer 0 at every position makes the target run the source."""
    source = shift_demo_labels(tiny_prompts)
    iv = patch(tiny_llama, source, site="resid_pre", layers=[0], positions="all")
    torch.testing.assert_close(
        _logits(tiny_llama, tiny_prompts, [iv]), _logits(tiny_llama, source), atol=1e-5, rtol=1e-5
    )


def test_steering_adds_alpha_times_the_vector_at_the_chosen_positions(tiny_llama, tiny_prompts):
    d = tiny_llama.cfg.d_model
    v = torch.randn(d)
    name = "blocks.1.hook_resid_pre"
    clean = _record(tiny_llama, tiny_prompts, [name])[name]
    got = _record(tiny_llama, tiny_prompts, [name], [steer(tiny_llama, v, 1, alpha=2.0)])[name]
    torch.testing.assert_close(
        got[:, -1] - clean[:, -1], (2.0 * v).expand(10, d), atol=1e-5, rtol=1e-5
    )
    assert (got[:, :-1] - clean[:, :-1]).abs().max() == 0
    got = _record(tiny_llama, tiny_prompts, [name], [steer(tiny_llama, v, 1, positions=[-3, -2])])[
        name
    ]
    changed = (got - clean).abs().amax(-1) > 0
    assert changed[:, -3:-1].all() and not changed[:, -1].any()


def test_steering_a_head_output_is_exact_in_residual_and_z_space(tiny_llama, tiny_prompts):
    layer, head = 0, 3
    out_name = f"blocks.{layer}.hook_attn_out"
    clean = _record(tiny_llama, tiny_prompts, [out_name])[out_name]
    v_res = torch.randn(tiny_llama.cfg.d_model)
    got = _record(
        tiny_llama,
        tiny_prompts,
        [out_name],
        [steer(tiny_llama, v_res, head=Head(layer, head), alpha=0.5)],
    )[out_name]
    torch.testing.assert_close(
        got[:, -1] - clean[:, -1], (0.5 * v_res).expand(10, -1), atol=1e-5, rtol=1e-5
    )
    v_z = torch.randn(tiny_llama.cfg.d_head)
    got = _record(
        tiny_llama,
        tiny_prompts,
        [out_name],
        [steer(tiny_llama, v_z, head=Head(layer, head), alpha=0.5)],
    )[out_name]
    expected = 0.5 * v_z @ tiny_llama.W_O[layer, head].detach()
    torch.testing.assert_close(
        got[:, -1] - clean[:, -1], expected.expand(10, -1), atol=1e-5, rtol=1e-5
    )


# --------------------------------------------------------------------------- composition


def test_context_managers_nest_compose_and_clean_up(tiny_llama, tiny_prompts):
    a = ablate(tiny_llama, [Head(0, 1)], mode="zero")
    b = steer(tiny_llama, torch.randn(tiny_llama.cfg.d_model), 1, alpha=3.0)
    batch = tiny_prompts.select(torch.arange(10))
    clean = _logits(tiny_llama, tiny_prompts)
    both = _logits(tiny_llama, tiny_prompts, [a, b])

    def run():
        with torch.inference_mode():
            resid = final_residual(tiny_llama, batch.tokens, batch.attention_mask)
        return final_logits(tiny_llama, resid[:, -1])

    with a:
        with b:
            nested = run()
        only_a = run()
    with compose(a, b):
        composed = run()
    after = run()
    torch.testing.assert_close(nested, both, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(composed, both, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(only_a, _logits(tiny_llama, tiny_prompts, [a]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, clean, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(both, clean, atol=1e-3)
    with compose(a, b):  # compose is itself an intervention for iter_batches
        pass
    torch.testing.assert_close(
        _logits(tiny_llama, tiny_prompts, [compose(a, b)]), both, atol=1e-5, rtol=1e-5
    )


def test_heads_can_be_given_as_headscores_top_or_mask(tiny_llama, tiny_prompts):
    scores = ih.HeadScores(torch.arange(8.0).reshape(2, 4))
    from_list = ablate(tiny_llama, scores.top(2))
    from_mask = ablate(tiny_llama, scores.mask(2))
    assert torch.equal(from_list.mask, from_mask.mask)
    assert from_list.mask.sum() == 2 and from_list.mask[1, 3] and from_list.mask[1, 2]


def test_a_bare_context_refuses_per_prompt_interventions_and_the_analyses_take_them(
    tiny_llama, tiny_prompts
):
    """A patch pairs target prompt i with source prompt i, which a bare `with` block cannot
    see once prompts are batched: it raises at entry; evaluate(interventions=[...]) works on
    any number of prompts, whatever the batch size."""
    source = shift_demo_labels(tiny_prompts)
    iv = patch(tiny_llama, source, site="resid_pre", layers=[0])
    with pytest.raises(TypeError, match="interventions="):
        with iv:
            pass
    resample = ablate(tiny_llama, [Head(0, 1)], mode="resample", reference=tiny_prompts)
    with pytest.raises(TypeError, match="interventions="):
        with compose(ablate(tiny_llama, [Head(1, 0)]), resample):
            pass
    for batch_size in (3, 16):
        got = ih.evaluate(
            tiny_llama, tiny_prompts, interventions=[iv], batch_size=batch_size, progress=False
        )
        want = ih.evaluate(tiny_llama, source, progress=False)
        assert got.logit_diff.iloc[0] == pytest.approx(want.logit_diff.iloc[0], abs=1e-4)
    assert got.attrs["settings"].interventions == (iv.describe(),)


def test_a_bare_context_ablation_works_on_any_number_of_prompts(tiny_llama, tiny_prompts):
    iv = ablate(tiny_llama, [Head(0, 1), Head(1, 2)], mode="mean", reference=tiny_prompts)
    passed = ih.evaluate(tiny_llama, tiny_prompts, interventions=[iv], batch_size=3, progress=False)
    with iv:
        bare = ih.evaluate(tiny_llama, tiny_prompts, batch_size=3, progress=False)
    clean = ih.evaluate(tiny_llama, tiny_prompts, progress=False)
    assert bare.logit_diff.iloc[0] == pytest.approx(passed.logit_diff.iloc[0], abs=1e-5)
    assert bare.logit_diff.iloc[0] != pytest.approx(clean.logit_diff.iloc[0], abs=1e-4)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(tiny_llama, tiny_prompts):
    with pytest.raises(ValueError, match="out of range"):
        ablate(tiny_llama, [Head(2, 0)])
    with pytest.raises(ValueError, match="out of range"):
        ablate(tiny_llama, [(0, 4)])
    with pytest.raises(ValueError, match="shape"):
        ablate(tiny_llama, torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mode"):
        ablate(tiny_llama, [Head(0, 0)], mode="noise")
    with pytest.raises(ValueError, match="means= .* or reference="):
        ablate(tiny_llama, [Head(0, 0)], mode="mean")
    with pytest.raises(ValueError, match="reference="):
        ablate(tiny_llama, [Head(0, 0)], mode="resample")
    with pytest.raises(ValueError, match="shape"):
        ablate(tiny_llama, [Head(0, 0)], mode="mean", means=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="positions"):
        ablate(tiny_llama, [Head(0, 0)], positions="last")
    with pytest.raises(ValueError, match="site"):
        patch(tiny_llama, tiny_prompts, site="attn_in")
    with pytest.raises(ValueError, match="out of range"):
        ablate_layers(tiny_llama, [5])
    with pytest.raises(ValueError, match="d_model"):
        steer(tiny_llama, torch.zeros(7), 0)
    empty = replace(
        tiny_prompts,
        tokens=tiny_prompts.tokens[:0],
        attention_mask=tiny_prompts.attention_mask[:0],
        gold=tiny_prompts.gold[:0],
    )
    with pytest.raises(ValueError, match="empty"):
        activation_means(tiny_llama, empty)
    with pytest.raises(ValueError, match="empty"):
        patch(tiny_llama, empty)
    with pytest.raises(ValueError, match="empty"):
        ablate(tiny_llama, [Head(0, 0)], mode="resample", reference=empty)
    iv = ablate(tiny_llama, [Head(0, 0)], positions=[500])
    with pytest.raises(ValueError, match="out of range"):
        _logits(tiny_llama, tiny_prompts, [iv])


def test_patching_unequal_lengths_at_all_positions_is_refused(
    tiny_llama, tiny_prompts, sentiment_task
):
    other = ih.build_prompts(tiny_llama, sentiment_task, k=3, n=10, seed=5)
    assert not torch.equal(other.lengths, tiny_prompts.lengths)
    iv = patch(tiny_llama, other, positions="all")
    with pytest.raises(ValueError, match="differ in length"):
        _logits(tiny_llama, tiny_prompts, [iv])
    iv = patch(tiny_llama, other, positions="query")  # the query always corresponds
    _logits(tiny_llama, tiny_prompts, [iv])
