"""Patching sweeps: the fast strategies equal the reference loop; identities; attribution
patching against finite differences; clear errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import icl_heads as ih
import icl_heads.patching as patching
import icl_heads.patching_attribution as patching_attribution
from icl_heads import last_token
from icl_heads.activations import collect
from icl_heads.heads import Head
from icl_heads.hooks import Capture, applied
from icl_heads.interventions import steer
from icl_heads.patching import attribution_patching, head_sweep, layer_sweep, position_sweep
from icl_heads.prompts import shift_demo_labels

ATOL = 1e-4


def _assert_same(fast, naive):
    assert fast.shape == naive.shape
    assert torch.equal(torch.isnan(fast), torch.isnan(naive))
    ok = ~torch.isnan(naive)
    torch.testing.assert_close(fast[ok], naive[ok], atol=ATOL, rtol=0)


def _sweep_kwargs(mode, prompts):
    return {"source": shift_demo_labels(prompts)} if mode == "patch" else {}


# --------------------------------------------------------------------------- fast == naive


@pytest.mark.parametrize("mode", ["zero", "mean", "resample", "patch"])
@pytest.mark.parametrize("positions", ["query", "all"])
def test_fast_head_sweep_equals_the_reference_loop(tiny_llama, tiny_prompts, mode, positions):
    kw = dict(mode=mode, positions=positions, progress=False, **_sweep_kwargs(mode, tiny_prompts))
    naive = head_sweep(tiny_llama, tiny_prompts, method="naive", batch_size=4, **kw)
    fast = head_sweep(tiny_llama, tiny_prompts, method="fast", batch_size=4, rows_per_pass=5, **kw)
    _assert_same(fast.per_prompt, naive.per_prompt)
    _assert_same(fast.scores, naive.scores)
    assert naive.scores.abs().max() > 1e-3  # the interventions do something
    assert fast.settings.method == "fast" and naive.settings.method == "naive"


@pytest.mark.parametrize(
    "mode,positions",
    [("zero", "query"), ("patch", "all"), ("mean", "query"), ("resample", [-1, -3])],
)
def test_fast_head_sweep_equals_the_reference_loop_on_a_layernorm_model(
    tiny_gpt, sentiment_task, mode, positions
):
    prompts = ih.build_prompts(tiny_gpt, sentiment_task, k=2, n=6, seed=1)
    kw = dict(mode=mode, positions=positions, progress=False, **_sweep_kwargs(mode, prompts))
    naive = head_sweep(tiny_gpt, prompts, method="naive", **kw)
    fast = head_sweep(tiny_gpt, prompts, method="fast", **kw)
    _assert_same(fast.per_prompt, naive.per_prompt)


def test_query_sweep_fallback_engine_equals_the_reference_loop(
    tiny_llama, tiny_prompts, monkeypatch
):
    """Architectures the last-token block does not cover run TransformerLens's blocks with an
    expanded key/value cache; force that path."""
    monkeypatch.setattr(last_token, "supports_last_token", lambda model, seq_len: False)
    monkeypatch.setattr(patching_attribution, "supports_last_token", lambda model, seq_len: False)
    kw = dict(mode="resample", positions="query", progress=False)
    naive = head_sweep(tiny_llama, tiny_prompts, method="naive", **kw)
    fast = head_sweep(tiny_llama, tiny_prompts, method="fast", batch_size=3, rows_per_pass=3, **kw)
    _assert_same(fast.per_prompt, naive.per_prompt)


@pytest.mark.parametrize("metric", ["accuracy", "label_space_rate", "in_space_accuracy"])
def test_fast_sweep_equals_the_reference_loop_for_every_metric(tiny_llama, tiny_prompts, metric):
    kw = dict(mode="mean", positions="query", progress=False)
    naive = head_sweep(tiny_llama, tiny_prompts, metric, method="naive", **kw)
    fast = head_sweep(tiny_llama, tiny_prompts, metric, method="fast", **kw)
    _assert_same(fast.per_prompt, naive.per_prompt)


def test_a_callable_metric_is_accepted(tiny_llama, tiny_prompts):
    def gold_logit(logits, gold, labels):
        return logits[torch.arange(len(gold)), labels[gold]]

    fast = head_sweep(tiny_llama, tiny_prompts, gold_logit, progress=False)
    naive = head_sweep(tiny_llama, tiny_prompts, gold_logit, method="naive", progress=False)
    _assert_same(fast.per_prompt, naive.per_prompt)
    assert fast.name == "delta_gold_logit"


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post"])
@pytest.mark.parametrize(
    "mode,positions", [("patch", "query"), ("patch", "all"), ("zero", "query"), ("mean", "all")]
)
def test_fast_layer_sweep_equals_the_reference_loop(
    tiny_llama, tiny_prompts, site, mode, positions
):
    kw = dict(
        site=site,
        mode=mode,
        positions=positions,
        progress=False,
        **_sweep_kwargs(mode, tiny_prompts),
    )
    naive = layer_sweep(tiny_llama, tiny_prompts, method="naive", **kw)
    fast = layer_sweep(tiny_llama, tiny_prompts, method="fast", **kw)
    torch.testing.assert_close(
        torch.tensor(fast.effect.values), torch.tensor(naive.effect.values), atol=ATOL, rtol=0
    )
    assert list(fast.columns) == [
        "layer",
        "site",
        "mode",
        "positions",
        "metric",
        "effect",
        "effect_sem",
        "clean",
        "n_prompts",
    ]
    assert fast.layer.tolist() == [0, 1]


@pytest.mark.parametrize("mode", ["patch", "zero", "resample"])
def test_fast_position_sweep_equals_the_reference_loop(tiny_llama, tiny_prompts, mode):
    kw = dict(
        layer=1, site="resid_pre", mode=mode, progress=False, **_sweep_kwargs(mode, tiny_prompts)
    )
    naive = position_sweep(tiny_llama, tiny_prompts, method="naive", **kw)
    fast = position_sweep(tiny_llama, tiny_prompts, method="fast", batch_size=16, **kw)
    torch.testing.assert_close(
        torch.tensor(fast.effect.values),
        torch.tensor(naive.effect.values),
        atol=ATOL,
        rtol=0,
        equal_nan=True,
    )
    assert len(fast) == tiny_prompts.seq_len
    assert fast.pos_from_end.iloc[-1] == -1
    # a position counts only the prompts that have a token there
    assert fast.n_prompts.tolist() == tiny_prompts.attention_mask.sum(0).tolist()


def test_position_sweep_of_the_query_matches_the_layer_sweep_at_the_query(tiny_llama, tiny_prompts):
    source = shift_demo_labels(tiny_prompts)
    by_pos = position_sweep(
        tiny_llama, tiny_prompts, layer=1, mode="patch", source=source, progress=False
    )
    by_layer = layer_sweep(
        tiny_llama,
        tiny_prompts,
        site="resid_pre",
        mode="patch",
        source=source,
        positions="query",
        progress=False,
    )
    assert by_pos.effect.iloc[-1] == pytest.approx(by_layer.effect.iloc[1], abs=ATOL)


def test_sweeping_a_subset_of_heads_leaves_the_others_nan(tiny_llama, tiny_prompts):
    got = head_sweep(tiny_llama, tiny_prompts, heads=[Head(1, 2), Head(0, 0)], progress=False)
    done = ~torch.isnan(got.scores)
    assert done.sum() == 2 and done[1, 2] and done[0, 0]
    full = head_sweep(tiny_llama, tiny_prompts, progress=False)
    torch.testing.assert_close(got.scores[done], full.scores[done], atol=1e-6, rtol=0)


def test_head_sweep_reports_how_it_was_made(tiny_llama, tiny_prompts, tmp_path):
    got = head_sweep(tiny_llama, tiny_prompts, mode="resample", seed=3, progress=False)
    assert got.name == "delta_logit_diff"
    assert got.per_prompt.shape == (len(tiny_prompts), 2, 4)
    settings = got.settings
    assert isinstance(settings, patching.SweepSettings)
    assert settings.mode == "resample" and settings.positions == "query"
    assert settings.metric == "logit_diff" and settings.seed == 3
    assert settings.prompts == tiny_prompts.info()
    assert settings.model == tiny_llama.cfg.model_name
    assert isinstance(got.baseline, float)
    for suffix in (".json", ".parquet"):
        loaded = ih.HeadScores.load(got.save(tmp_path / f"sweep{suffix}"))
        assert loaded.settings == settings and torch.allclose(loaded.scores, got.scores)
        assert loaded.baseline == got.baseline


# --------------------------------------------------------------------------- identities


def test_patching_prompts_into_themselves_has_no_effect_in_every_sweep(tiny_llama, tiny_prompts):
    for positions in ("query", "all"):
        got = head_sweep(
            tiny_llama,
            tiny_prompts,
            mode="patch",
            source=tiny_prompts,
            positions=positions,
            progress=False,
        )
        assert got.per_prompt.abs().max() < 1e-5
        frame = layer_sweep(
            tiny_llama,
            tiny_prompts,
            mode="patch",
            source=tiny_prompts,
            site="mlp_out",
            positions=positions,
            progress=False,
        )
        assert frame.effect.abs().max() < 1e-5
    frame = position_sweep(
        tiny_llama, tiny_prompts, layer=0, mode="patch", source=tiny_prompts, progress=False
    )
    assert frame.effect.abs().max() < 1e-5


def test_layer_sweep_zero_attn_out_equals_zero_ablating_every_head_and_removing_b_O(
    tiny_gpt, sentiment_task
):
    """The layer sweep's attn_out := 0 at the query equals zero-ablating every head of the
    layer (which leaves attn_out = b_O) and subtracting b_O."""
    prompts = ih.build_prompts(tiny_gpt, sentiment_task, k=2, n=4, seed=2)
    frame = layer_sweep(
        tiny_gpt, prompts, site="attn_out", mode="zero", positions="query", progress=False
    )
    heads = [Head(0, h) for h in range(tiny_gpt.cfg.n_heads)]
    minus_bias = steer(tiny_gpt, -tiny_gpt.blocks[0].attn.b_O.detach(), 0, site="attn_out")
    iv = ih.interventions.ablate(tiny_gpt, heads, mode="zero", positions="query")
    clean = collect(tiny_gpt, prompts, progress=False).logits
    ablated = collect(tiny_gpt, prompts, interventions=[iv, minus_bias], progress=False).logits
    ld = ih.metrics.logit_diff
    expected = (
        ld(ablated, prompts.gold, prompts.label_token_ids)
        - ld(clean, prompts.gold, prompts.label_token_ids)
    ).mean()
    assert frame.effect.iloc[0] == pytest.approx(float(expected), abs=ATOL)


# --------------------------------------------------------------------------- attribution


def test_attribution_patching_equals_a_finite_difference_derivative(tiny_llama, tiny_prompts):
    """For zero ablation, attribution = dM/dz . (0 - z) = d/de M(z - e z) at e = 0."""
    one = tiny_prompts.select([2])
    attr = attribution_patching(tiny_llama, one, mode="zero", positions="query", progress=False)
    ld = ih.metrics.logit_diff
    for layer, head in [(0, 1), (1, 3)]:
        name = f"blocks.{layer}.attn.hook_z"
        rec = Capture(names={name}.__contains__, positions="query")
        with torch.inference_mode(), applied(tiny_llama, [rec]):
            tiny_llama(one.tokens, attention_mask=one.attention_mask)
        z = rec.store[name][0, head]

        def metric(eps, z=z, layer=layer, head=head):
            iv = steer(tiny_llama, z, head=Head(layer, head), alpha=-eps)
            logits = collect(tiny_llama, one, interventions=[iv], progress=False).logits
            return float(ld(logits, one.gold, one.label_token_ids))

        eps = 1e-2
        derivative = (metric(eps) - metric(-eps)) / (2 * eps)
        assert attr.scores[layer, head] == pytest.approx(derivative, rel=2e-2, abs=1e-4)


def test_attribution_patching_is_exact_for_a_self_patch_and_tracks_the_exact_sweep(
    tiny_llama, tiny_prompts
):
    same = attribution_patching(
        tiny_llama, tiny_prompts, mode="patch", source=tiny_prompts, positions="all", progress=False
    )
    assert same.scores.abs().max() < 1e-6
    attr = attribution_patching(tiny_llama, tiny_prompts, mode="mean", batch_size=3, progress=False)
    exact = head_sweep(tiny_llama, tiny_prompts, mode="mean", progress=False)
    assert attr.per_prompt.shape == exact.per_prompt.shape
    r = torch.corrcoef(torch.stack([attr.scores.flatten(), exact.scores.flatten()]))[0, 1]
    assert r > 0.5
    assert attr.settings.method == "attribution"


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt"])
@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_query_attribution_shortcut_equals_the_full_backward_pass(
    model_name, mode, request, sentiment_task, monkeypatch
):
    """At the query, only the last token is run forward/backward; it must give the same
    gradients as a full forward and backward pass."""
    model = request.getfixturevalue(model_name)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=5, seed=4)
    fast = attribution_patching(model, prompts, mode=mode, batch_size=2, progress=False)
    monkeypatch.setattr(last_token, "supports_last_token", lambda model, seq_len: False)
    monkeypatch.setattr(patching_attribution, "supports_last_token", lambda model, seq_len: False)
    full = attribution_patching(model, prompts, mode=mode, batch_size=2, progress=False)
    torch.testing.assert_close(fast.per_prompt, full.per_prompt, atol=1e-5, rtol=1e-4)
    assert full.scores.abs().max() > 1e-3


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(tiny_llama, tiny_prompts):
    with pytest.raises(ValueError, match="Unknown metric"):
        head_sweep(tiny_llama, tiny_prompts, "f1", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        head_sweep(tiny_llama, tiny_prompts, heads=[Head(0, 9)], progress=False)
    with pytest.raises(ValueError, match="shape"):
        head_sweep(
            tiny_llama, tiny_prompts, heads=torch.ones(4, 2, dtype=torch.bool), progress=False
        )
    empty = replace(
        tiny_prompts,
        tokens=tiny_prompts.tokens[:0],
        attention_mask=tiny_prompts.attention_mask[:0],
        gold=tiny_prompts.gold[:0],
    )
    for fn in (head_sweep, attribution_patching):
        with pytest.raises(ValueError, match="empty"):
            fn(tiny_llama, empty, progress=False)
    with pytest.raises(ValueError, match="empty"):
        layer_sweep(tiny_llama, empty, mode="zero", progress=False)
    with pytest.raises(ValueError, match="mode"):
        head_sweep(tiny_llama, tiny_prompts, mode="noise", progress=False)
    with pytest.raises(ValueError, match="method"):
        head_sweep(tiny_llama, tiny_prompts, method="quick", progress=False)
    with pytest.raises(ValueError, match="source="):
        head_sweep(tiny_llama, tiny_prompts, mode="patch", progress=False)
    with pytest.raises(ValueError, match="align"):
        head_sweep(
            tiny_llama,
            tiny_prompts,
            mode="patch",
            source=tiny_prompts.select([0, 1]),
            progress=False,
        )
    other = ih.build_prompts(tiny_llama, ih.load_task("sentiment"), k=3, n=10, seed=9)
    with pytest.raises(ValueError, match="differ in length"):
        head_sweep(
            tiny_llama, tiny_prompts, mode="patch", source=other, positions="all", progress=False
        )
    with pytest.raises(ValueError, match="layer site"):
        layer_sweep(tiny_llama, tiny_prompts, site="z", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        position_sweep(tiny_llama, tiny_prompts, layer=2, mode="zero", progress=False)
    with pytest.raises(ValueError, match="differentiable"):
        attribution_patching(tiny_llama, tiny_prompts, "accuracy", progress=False)


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_fast_sweeps_equal_the_reference_loop_on_the_default_model(smol, sentiment_task):
    prompts = ih.build_prompts(smol, sentiment_task, k=1, n=3, seed=0)
    L, H = smol.cfg.n_layers, smol.cfg.n_heads
    heads = [Head(layer, (2 * layer) % H) for layer in range(0, L, 5)]  # 6 heads, all layers
    threads = torch.get_num_threads()
    # On a shared 2-core machine PyTorch's 2-thread kernels stall while another process
    # holds a core (26 s with one thread, 220 s with two, measured); results do not depend
    # on it.
    torch.set_num_threads(1)
    try:
        for mode, positions in [("zero", "query"), ("mean", "query"), ("patch", "all")]:
            kw = dict(
                mode=mode,
                positions=positions,
                heads=heads,
                progress=False,
                **_sweep_kwargs(mode, prompts),
            )
            naive = head_sweep(smol, prompts, method="naive", **kw)
            fast = head_sweep(smol, prompts, method="fast", **kw)
            _assert_same(fast.per_prompt, naive.per_prompt)
            assert (~torch.isnan(fast.scores)).sum() == len(heads)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("positions", ["query", "all"])
@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_background_interventions_act_on_both_runs_and_fast_equals_naive(
    tiny_llama, tiny_prompts, positions, mode
):
    """head_sweep(interventions=[...]): every head's effect with other heads already
    ablated; the fast engine replays the background on every row of every block."""
    background = [
        ih.ablate(
            tiny_llama,
            [Head(0, 2), Head(1, 1)],
            mode="mean",
            reference=tiny_prompts,
            progress=False,
        ),
        steer(tiny_llama, torch.randn(tiny_llama.cfg.d_model), 1, alpha=0.5),
    ]
    kw = dict(mode=mode, positions=positions, interventions=background, progress=False)
    naive = head_sweep(tiny_llama, tiny_prompts, method="naive", **kw)
    fast = head_sweep(tiny_llama, tiny_prompts, method="fast", batch_size=4, rows_per_pass=6, **kw)
    _assert_same(fast.per_prompt, naive.per_prompt)
    plain = head_sweep(tiny_llama, tiny_prompts, mode=mode, positions=positions, progress=False)
    assert not torch.allclose(fast.scores, plain.scores, atol=1e-4)  # the background matters
    clean = ih.evaluate(tiny_llama, tiny_prompts, interventions=background, progress=False)
    assert fast.baseline == pytest.approx(clean.logit_diff.iloc[0], abs=1e-5)
    assert len(fast.settings.interventions) == 2


def test_the_split_modules_serve_the_old_import_paths():
    """patching re-exports what moved to sweep_setup and patching_attribution."""
    from icl_heads import patching_attribution, sweep_setup

    assert patching.attribution_patching is patching_attribution.attribution_patching
    assert patching.SweepSettings is sweep_setup.SweepSettings
    assert patching.SWEEP_MODES == ("zero", "mean", "resample", "patch")
    assert patching.NON_DIFFERENTIABLE is patching_attribution.NON_DIFFERENTIABLE
    assert ih.attribution_patching is attribution_patching
