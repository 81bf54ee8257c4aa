"""The batching routine: batched == one-at-a-time, only requested hooks, positions."""

from __future__ import annotations

import pytest
import torch

import icl_heads as ih
from icl_heads.activations import collect, final_logits, iter_batches
from icl_heads.backends import final_residual


def _one_by_one_logits(model, ps):
    out = []
    for i in range(len(ps)):
        one = ps.select([i])
        with torch.inference_mode():
            out.append(model(one.tokens)[0, -1])  # no padding at all: the plain forward
    return torch.stack(out)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt"])
def test_batched_equals_unbatched(fixture, request, sentiment_task):
    model = request.getfixturevalue(fixture)
    ps = ih.build_prompts(model, sentiment_task, k=3, n=7, seed=0)
    assert ps.lengths.unique().numel() > 1  # really padded
    batched = collect(model, ps, batch_size=4, progress=False).logits
    assert (batched - _one_by_one_logits(model, ps)).abs().max() < 1e-4


@pytest.mark.slow
def test_batched_equals_unbatched_on_default_model(smol):
    ps = ih.build_prompts(smol, ih.load_task("sentiment"), k=2, n=5, seed=1)
    assert ps.lengths.unique().numel() > 1
    batched = collect(smol, ps, batch_size=5, progress=False).logits
    assert (batched - _one_by_one_logits(smol, ps)).abs().max() < 1e-4


def test_captures_only_requested_hooks_at_query(tiny_llama, tiny_prompts):
    names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"]
    got = collect(tiny_llama, tiny_prompts, names, batch_size=3, progress=False)
    assert set(got.activations) == set(names)
    i = int(tiny_prompts.lengths.argmin())  # a padded row
    one = tiny_prompts.select([i])
    _, cache = tiny_llama.run_with_cache(one.tokens, names_filter=names)
    assert torch.allclose(got.activations[names[0]][i], cache[names[0]][0, -1], atol=1e-5)
    assert torch.allclose(got.activations[names[1]][i], cache[names[1]][0, -1], atol=1e-5)
    pattern = got.activations[names[2]][i]  # [head, key] query row, left-padded keys
    assert torch.allclose(pattern[:, -one.seq_len :], cache[names[2]][0, :, -1], atol=1e-5)
    assert pattern[:, : tiny_prompts.seq_len - one.seq_len].abs().max() < 1e-6


def test_all_positions_are_left_padded_to_full_length(tiny_llama, tiny_prompts):
    name = "blocks.0.hook_resid_pre"
    got = collect(
        tiny_llama,
        tiny_prompts,
        [name],
        positions="all",
        batch_size=4,
        progress=False,
        return_logits=False,
    )
    act = got.activations[name]
    assert act.shape[:2] == tiny_prompts.tokens.shape and got.logits is None
    pad = ~tiny_prompts.attention_mask.bool()
    assert act[pad].abs().max() == 0


def test_names_filter_callable_and_streaming(tiny_llama, tiny_prompts):
    batches = list(
        iter_batches(
            tiny_llama, tiny_prompts, lambda n: n.endswith("hook_z"), batch_size=4, progress=False
        )
    )
    assert [len(b.index) for b in batches] == [4, 4, 2]
    assert all(
        set(b.activations) == {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"} for b in batches
    )


def test_final_logits_matches_model(tiny_gpt, tiny_prompts):
    one = tiny_prompts.select([0])
    with torch.inference_mode():
        resid = final_residual(tiny_gpt, one.tokens)
        assert torch.allclose(
            final_logits(tiny_gpt, resid[:, -1]), tiny_gpt(one.tokens)[:, -1], atol=1e-5
        )


def test_bad_arguments(tiny_llama, tiny_prompts):
    with pytest.raises(ValueError, match="batch_size"):
        collect(tiny_llama, tiny_prompts, batch_size=0)
    with pytest.raises(ValueError, match="positions must be"):
        collect(tiny_llama, tiny_prompts, positions="middle")
