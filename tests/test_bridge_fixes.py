"""Fixes of the engine bugs the bridge twins found (issue 19; notes/s26/H2.md, bugs 1-5):
attribution patching's gradients on a bridge, groups without padding in the bridge engine,
bfloat16 unembedding on a bridge, a bridge the engine cannot run (GPT-2). The twins are
``conftest.make_tiny_bridge``; the coarser tests of the same bugs are in test_bridge.py."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bridge

import icl_heads as ih
from icl_heads import backends, bridge_engine
from icl_heads.activations import final_logits
from icl_heads.hooks import Capture, applied, hook_name

pytestmark = pytest.mark.skipif(
    not backends.bridge_available(),
    reason="the installed TransformerLens has no transformer_lens.model_bridge (needs >= 3.9)",
)

TOL = 1e-5  # float32, tiny models (measured <= 1e-8 here)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def pair_prompts(pair, sentiment_task):
    prompts = ih.build_prompts(pair[0], sentiment_task, k=3, n=8, seed=0)
    assert not bool(prompts.attention_mask.all())  # left padding: fully masked score rows
    return prompts


# --------------------------------------------------------------------------- bug 3: gradients


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("positions", ["all", "query"])
def test_attribution_patching_on_a_bridge_matches_the_hooked_model(
    pair, pair_prompts, mode, positions
):
    """Was: every bridge score 0 (hook_z off the gradient path), then NaN for every padded
    prompt (the NaN softmax gradient of fully masked rows), hidden by the nanmean."""
    hooked, bridge = (
        ih.attribution_patching(m, pair_prompts, mode=mode, positions=positions, progress=False)
        for m in pair
    )
    assert not hooked.per_prompt.isnan().any() and not bridge.per_prompt.isnan().any()
    assert hooked.per_prompt.abs().max() > 1e-3
    assert max_diff(hooked.per_prompt, bridge.per_prompt) <= TOL


def test_attribution_patching_on_a_bridge_matches_a_finite_difference(lone_bridge, lone_prompts):
    """Zero-ablating head (l, h) at the query scaled by eps: the metric moves by eps times
    the attribution estimate, to first order."""
    prompts = lone_prompts.select(torch.arange(3))
    got = ih.attribution_patching(lone_bridge, prompts, mode="zero", progress=False)
    eps = 1e-3
    metric = ih.metrics.get_metric("logit_diff")
    for layer, head in [(0, 1), (1, 2)]:
        name = hook_name("z", layer)

        def scale(act, hook, head=head):
            act = act.clone()
            act[:, -1, head] = act[:, -1, head] * (1 - eps)
            return act

        def value(hooks):
            with torch.no_grad(), lone_bridge.hooks(fwd_hooks=hooks):
                resid = backends.final_residual(lone_bridge, prompts.tokens, prompts.attention_mask)
            return metric(
                final_logits(lone_bridge, resid[:, -1]), prompts.gold, prompts.label_token_ids
            )

        fd = (value([(name, scale)]) - value([])).double() / eps
        assert torch.allclose(fd, got.per_prompt[:, layer, head].double(), rtol=2e-2, atol=1e-6)


@pytest.mark.parametrize("which", ["hooked", "bridge"])
def test_a_keep_grad_capture_changes_no_number(pair, pair_prompts, which):
    model = pair[0] if which == "hooked" else pair[1]
    names = {hook_name("z", layer) for layer in range(model.cfg.n_layers)}
    tokens, mask = pair_prompts.tokens, pair_prompts.attention_mask
    with torch.no_grad():
        plain = model(tokens, attention_mask=mask)
    capture = Capture(names=names.__contains__, keep_grad=True)
    with torch.enable_grad(), applied(model, [capture]):
        kept = model(tokens, attention_mask=mask)
    assert torch.equal(plain, kept.detach())
    assert set(capture.store) == names
    assert all(capture.store[n].requires_grad for n in names)


def test_a_keep_grad_capture_puts_the_bridges_z_on_the_gradient_path(lone_bridge, lone_prompts):
    name = hook_name("z", 0)
    full = lone_prompts.select(torch.nonzero(lone_prompts.attention_mask.all(1)).flatten())
    assert len(full)  # unpadded rows: no NaN softmax gradient (attribution patching's job)
    capture = Capture(names={name}.__contains__, keep_grad=True)
    with torch.enable_grad(), applied(lone_bridge, [capture]):
        logits = lone_bridge(full.tokens, attention_mask=full.attention_mask)
    (grad,) = torch.autograd.grad(logits[:, -1].sum(), [capture.store[name]], allow_unused=True)
    assert grad is not None and grad.isfinite().all() and grad.abs().max() > 0


# --------------------------------------------------------------------------- bug 1: no padding


@pytest.mark.parametrize("query_only", [True, False])
def test_bridge_engine_blocks_of_one_prompt_reproduce_the_full_pass(
    lone_bridge, lone_prompts, query_only
):
    """A single prompt (no padding at all): the engine builds the causal mask and gives
    the batch-1 rotary inputs to every row."""
    one = lone_prompts.select(torch.tensor([0, 0, 0]))  # three copies: one length
    one = one.select(torch.arange(3))
    L = lone_bridge.cfg.n_layers
    with torch.inference_mode():
        state, resid, _ = bridge_engine.clean_pass(
            lone_bridge, one, torch.arange(3), query_only=query_only, layers=range(L)
        )
        _, cache = lone_bridge.run_with_cache(one.tokens, attention_mask=one.attention_mask)
        for layer in range(L):
            rows = torch.tensor([2, 0])
            out = bridge_engine.run_block(lone_bridge, state, layer, resid[layer][rows], rows)
            ref = cache[hook_name("resid_post", layer)][rows]
            assert max_diff(out, ref[:, -1:] if query_only else ref) <= TOL


def test_causal_mask_with_and_without_a_window():
    full = bridge_engine.causal_mask(2, 4)
    assert full.shape == (2, 1, 4, 4) and torch.equal(full[1, 0], torch.ones(4, 4).tril().bool())
    windowed = bridge_engine.causal_mask(1, 4, window=2)[0, 0]
    assert windowed.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, True, True, False],
        [False, False, True, True],
    ]


# --------------------------------------------------------------------------- bug 4: bfloat16


def test_final_logits_of_float32_states_on_a_bfloat16_bridge(smol_tokenizer, sentiment_task):
    """Was: float32 @ bfloat16 in the unembedding (the bridge's final norm keeps its
    input's dtype; the hooked one casts to the model's)."""
    twin = make_tiny_bridge(smol_tokenizer, kind="llama", dtype=torch.bfloat16)
    prompts = ih.build_prompts(twin, sentiment_task, k=2, n=3, seed=0)
    with torch.no_grad():
        resid = backends.final_residual(twin, prompts.tokens, prompts.attention_mask)
        assert resid.dtype == torch.bfloat16
        # float32 states (averaged, steered: as find_task_heads and layer_geometry pass)
        logits = final_logits(twin, resid[:, -1].float())
        full = twin(prompts.tokens, attention_mask=prompts.attention_mask)[:, -1]
    assert logits.dtype == torch.bfloat16
    assert max_diff(logits, full) <= 0.05 * full.abs().max().item()


# --------------------------------------------------------------------------- bug 2: fallback


@pytest.fixture(scope="module")
def gpt_twin(smol_tokenizer):
    twin = make_tiny_bridge(smol_tokenizer, kind="gpt", n_layers=3)
    assert not backends.supports_engine(twin)
    return twin


@pytest.mark.parametrize("positions", ["query", "all"])
def test_condition_states_on_a_gpt2_bridge_are_its_full_passes(gpt_twin, sentiment_task, positions):
    """The shared clean runs (engine "full_pass") give one full pass per condition."""
    from icl_heads.experiments.geometry.shared_runs import condition_states
    from icl_heads.geometry import run_query

    prompts = ih.build_prompts(gpt_twin, sentiment_task, k=2, n=7, seed=2)
    iv = ih.ablate(gpt_twin, [(1, 0), (2, 3)], "zero", positions=positions)
    layers = [0, 1, 2, 3]
    opts = dict(batch_size=3, progress=False)
    clean, (changed,) = condition_states(
        gpt_twin, prompts, [((iv,), 1)], layers, query_only=positions == "query", **opts
    )
    ref_clean, _ = run_query(gpt_twin, prompts, layers, **opts)
    ref, _ = run_query(gpt_twin, prompts, [2, 3], interventions=[iv], **opts)
    assert max_diff(clean, ref_clean) <= TOL and max_diff(changed, ref) <= TOL
    assert max_diff(changed, ref_clean[:, 2:]) > 1e-3  # the ablation changed something


def test_a_full_pass_clean_run_rows_match_the_engine_contract(gpt_twin, sentiment_task):
    """run_items on a GPT-2 bridge: items at several layers with an all-position edit."""
    from icl_heads.interventions import RowEdit
    from icl_heads.last_token import clean_run, run_items

    prompts = ih.build_prompts(gpt_twin, sentiment_task, k=2, n=4, seed=3)
    index = torch.arange(len(prompts))
    T = prompts.seq_len
    with torch.inference_mode():
        clean = clean_run(gpt_twin, prompts, index, query_only=False, layers=[0, 2])
        assert clean.engine == "full_pass"

        def edit(layer, lo, hi, rows):
            n = rows.numel()
            pos = torch.arange(T)[None].expand(n, -1)
            head = torch.full((n,), 1)
            values = torch.zeros(n, T, gpt_twin.cfg.d_head)
            return RowEdit(hook_name("z", layer), rows.flatten(), pos, values, head)

        got = run_items(gpt_twin, clean, torch.tensor([0, 2, 2]), edit)
        for j, layer in enumerate([0, 2, 2]):
            iv = ih.ablate(gpt_twin, [(layer, 1)], "zero")
            with applied(gpt_twin, [iv], prompts, index):
                ref = gpt_twin(prompts.tokens, attention_mask=prompts.attention_mask)[:, -1]
            assert max_diff(got[j], ref) <= TOL
        clean_q = clean_run(gpt_twin, prompts, index, query_only=True, layers=[1])
        with pytest.raises(ValueError, match="cannot be re-run alone.*method='naive'"):
            run_items(gpt_twin, clean_q, torch.tensor([1]), edit)


# --------------------------------------------------------------------------- packed query rows


def test_query_rows_share_their_prompts_prefix_and_keep_their_order(lone_bridge, lone_prompts):
    """The bridge's query rows run packed as query positions of their prompt: the prefix
    cache holds one copy per prompt (never one per row), and rows of any order and any
    subset of the prompts come back in their own order, as the full pass gives them."""
    G, L = len(lone_prompts), lone_bridge.cfg.n_layers
    seen = []
    update = bridge_engine.PrefixCache.update

    def spy(self, keys, values, *args, **kwargs):
        seen.append((tuple(self.keys.shape), tuple(keys.shape)))
        return update(self, keys, values, *args, **kwargs)

    with torch.inference_mode():
        state, resid, _ = bridge_engine.clean_pass(
            lone_bridge, lone_prompts, torch.arange(G), query_only=True, layers=range(L)
        )
        _, cache = lone_bridge.run_with_cache(
            lone_prompts.tokens, attention_mask=lone_prompts.attention_mask
        )
        rows = torch.tensor([4, 1, 1, 4, 1, 4])  # prompts 1 and 4, three rows each
        x = resid[1][rows] + torch.randn(len(rows), 1, lone_bridge.cfg.d_model) * 0.1
        x[0] = x[3] = resid[1][4]  # unedited rows of prompt 4: the full pass's stream
        bridge_engine.PrefixCache.update = spy
        try:
            out = bridge_engine.run_block(lone_bridge, state, 1, x, rows)
        finally:
            bridge_engine.PrefixCache.update = update
    (prefix, own), T = seen[0], lone_prompts.seq_len
    assert prefix[0] == own[0] == 2 and prefix[2] == T - 1 and own[2] == 3
    ref = cache[hook_name("resid_post", 1)][4, -1]
    assert max_diff(out[0, 0], ref) <= TOL and max_diff(out[3, 0], ref) <= TOL
    one_by_one = [
        bridge_engine.run_block(lone_bridge, state, 1, x[[i]], rows[[i]]) for i in range(6)
    ]
    assert max_diff(out, torch.cat(one_by_one)) <= TOL  # the packed rows never see each other


def test_query_rows_are_the_same_under_a_bool_or_an_additive_mask(lone_bridge, lone_prompts):
    """Hugging Face gives the blocks a bool mask or an additive one (0 / dtype min) by its
    attention implementation; the packed rows' mask keeps the convention it was given."""
    G = len(lone_prompts)
    with torch.inference_mode():
        state, resid, _ = bridge_engine.clean_pass(
            lone_bridge, lone_prompts, torch.arange(G), query_only=True, layers=[1]
        )
        inputs = state.inputs[1]
        if inputs.mask.dtype == torch.bool:
            other = torch.zeros(inputs.mask.shape).masked_fill(
                ~inputs.mask, torch.finfo(torch.float32).min
            )
        else:
            other = inputs.mask == 0
        rows = torch.arange(G).repeat_interleave(2)
        got = []
        for mask in (inputs.mask, other):
            state.inputs[1] = bridge_engine.BlockInputs(
                mask, inputs.position_embeddings, inputs.position_ids
            )
            got.append(bridge_engine.run_block(lone_bridge, state, 1, resid[1][rows], rows))
    assert max_diff(*got) == 0.0
