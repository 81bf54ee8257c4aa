"""Attribution: head outputs, residual decomposition and DLA (identities and agreement with
TransformerLens's ActivationCache), task subspace, TSLA TR/TL scores."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_model, needs_hooked

import icl_heads as ih
from icl_heads import attribution as at
from icl_heads.activations import collect
from icl_heads.backends import HookedTransformer, HookedTransformerConfig
from icl_heads.metrics import logit_diff

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def topic_task():
    return ih.load_task("topic")


@pytest.fixture(scope="module")
def topic_prompts(tiny_llama, topic_task):
    """4 labels, so TL's mean over y' != y* is a real mean."""
    return ih.build_prompts(tiny_llama, topic_task, k=2, n=8, seed=1)


def _tl_cache(model, prompts, i):
    """TransformerLens oracle: run_with_cache on prompt i alone (no padding at all)."""
    one = prompts.select([i])
    _, cache = model.run_with_cache(one.tokens)
    return one, cache


def _final_resid(model, prompts):
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    got = collect(model, prompts, [name], progress=False)
    return got.activations[name], got.logits


def _target_from_logits(logits, prompts, target):
    lab = logits[:, prompts.label_token_ids]
    gold = lab.gather(1, prompts.gold[:, None])[:, 0]
    if target == "gold":
        return gold
    if target == "logit_diff":
        return logit_diff(logits, prompts.gold, prompts.label_token_ids)
    return gold - lab.mean(1)


def _post_norm_model(tokenizer):
    """Gemma-style block: an RMSNorm on the attention and MLP outputs (ln1_post/ln2_post)."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        n_heads=4,
        d_model=32,
        d_head=8,
        d_mlp=64,
        n_ctx=256,
        d_vocab=tokenizer.vocab_size,
        act_fn="gelu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        use_normalization_before_and_after=True,
        n_key_value_heads=2,
        seed=0,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="left")
    state = model.state_dict()
    g = torch.Generator().manual_seed(3)
    for name, value in state.items():
        if name.endswith(".w") and value.ndim == 1:
            state[name] = 1.0 + 0.3 * torch.randn(value.shape, generator=g)
    model.load_and_process_state_dict(
        state,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
    )
    return model.eval()


# --------------------------------------------------------------------------- task subspace


def test_subspace_basis_is_orthonormal_and_matches_pinv_projector():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 3, generator=g)
    Q = at.subspace_basis(W)
    assert Q.shape == (32, 3)
    assert torch.allclose(Q.T @ Q, torch.eye(3), atol=1e-5)
    reference = W @ torch.linalg.pinv(W)
    assert torch.allclose(Q @ Q.T, reference, atol=1e-5)


def test_projector_depends_only_on_the_span():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 4, generator=g)
    A = torch.randn(4, 4, generator=g) + 4 * torch.eye(4)  # invertible: rescale and mix
    P = at.subspace_basis(W) @ at.subspace_basis(W).T
    Q2 = at.subspace_basis(W @ A)
    assert torch.allclose(Q2 @ Q2.T, P, atol=1e-5)
    # a repeated direction does not add a dimension
    Q3 = at.subspace_basis(torch.cat([W, 2.5 * W[:, :1]], dim=1))
    assert Q3.shape[1] == 4 and torch.allclose(Q3 @ Q3.T, P, atol=1e-5)


def test_task_subspace_projector_on_a_model(tiny_llama, topic_prompts):
    ids = topic_prompts.label_token_ids
    P = at.task_subspace_projector(tiny_llama, ids)
    U = tiny_llama.W_U.detach()[:, ids]
    assert torch.allclose(P, P.T, atol=1e-6)
    assert torch.allclose(P @ P, P, atol=1e-5)
    assert torch.allclose(P @ U, U, atol=1e-5)
    assert torch.allclose(at.label_unembeddings(tiny_llama, ids), U)


# --------------------------------------------------------------------------- head outputs


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt"])
@pytest.mark.parametrize("apply_ln", [False, True])
def test_head_outputs_match_transformer_lens_stack_head_results(
    fixture, apply_ln, request, sentiment_task
):
    model = request.getfixturevalue(fixture)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=5, seed=0)
    assert prompts.lengths.unique().numel() > 1  # padded rows are exercised
    a = ih.head_outputs(model, prompts, apply_ln=apply_ln, batch_size=2, progress=False)
    L, H, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    assert a.shape == (5, L, H, d)
    for i in (0, int(prompts.lengths.argmin())):
        _, cache = _tl_cache(model, prompts, i)
        oracle = cache.stack_head_results(apply_ln=apply_ln, pos_slice=-1)  # [L*H, 1, d]
        assert torch.allclose(a[i], oracle[:, 0].reshape(L, H, d), atol=1e-5)


# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt"])
def test_components_sum_to_final_residual_and_logits(fixture, request, sentiment_task):
    model = request.getfixturevalue(fixture)
    prompts = ih.build_prompts(model, sentiment_task, k=3, n=6, seed=2)
    resid, logits = _final_resid(model, prompts)
    raw, labels = ih.residual_decomposition(model, prompts, batch_size=4, progress=False)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n_extra = 2 if fixture == "tiny_gpt" else 1  # embed (+ pos_embed)
    assert raw.shape[1] == len(labels) == n_extra + L * (H + 2)
    assert torch.allclose(raw.sum(1), resid, atol=1e-4)
    scaled, _ = ih.residual_decomposition(model, prompts, apply_ln=True, progress=False)
    rebuilt = scaled.sum(1) @ model.W_U.detach() + model.b_U.detach()
    assert (rebuilt - logits).abs().max() < 1e-3


@pytest.mark.parametrize("target", ["gold", "logit_diff", "centered"])
@pytest.mark.parametrize("unit", ["component", "layer"])
def test_dla_rows_sum_to_the_target_from_the_logits(target, unit, tiny_gpt, topic_task):
    prompts = ih.build_prompts(tiny_gpt, topic_task, k=2, n=6, seed=0)
    _, logits = _final_resid(tiny_gpt, prompts)
    frame = at.direct_logit_attribution(
        tiny_gpt, prompts, unit=unit, target=target, per_prompt=True, progress=False
    )
    per_prompt = torch.tensor(frame.groupby("prompt")[target].sum().to_numpy())
    expected = _target_from_logits(logits, prompts, target).double()
    assert (per_prompt - expected).abs().max() < 1e-3
    mean = at.direct_logit_attribution(tiny_gpt, prompts, unit=unit, target=target, progress=False)
    assert abs(mean[target].sum() - float(expected.mean())) < 1e-3
    assert mean.attrs["settings"].target == target and mean.attrs["settings"].unit == unit


def test_dla_matches_transformer_lens_logit_attrs(tiny_llama, sentiment_task):
    model = tiny_llama
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=4, seed=3)
    heads = at.direct_logit_attribution(
        model, prompts, unit="head", target="logit_diff", per_prompt=True, progress=False
    )
    attn = at.direct_logit_attribution(model, prompts, unit="attn", per_prompt=True, progress=False)
    mlp = at.direct_logit_attribution(model, prompts, unit="mlp", per_prompt=True, progress=False)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for i in range(len(prompts)):
        one, cache = _tl_cache(model, prompts, i)
        right, wrong = one.gold_token_ids, one.label_token_ids[1 - one.gold]  # binary task
        head_stack = cache.stack_head_results(pos_slice=-1)
        want = cache.logit_attrs(head_stack, tokens=right, incorrect_tokens=wrong, pos_slice=-1)
        got = heads[heads.prompt == i]["logit_diff"].to_numpy()
        assert torch.allclose(torch.tensor(got).float(), want[:, 0], atol=1e-5)
        stack, names = cache.decompose_resid(pos_slice=-1, return_labels=True)
        want = cache.logit_attrs(stack, tokens=right, incorrect_tokens=wrong, pos_slice=-1)[:, 0]
        want = dict(zip(names, want.tolist(), strict=True))
        for layer in range(L):
            got_attn = attn[(attn.prompt == i) & (attn.layer == layer)]["logit_diff"].item()
            got_mlp = mlp[(mlp.prompt == i) & (mlp.layer == layer)]["logit_diff"].item()
            assert got_attn == pytest.approx(want[f"{layer}_attn_out"], abs=1e-5)
            assert got_mlp == pytest.approx(want[f"{layer}_mlp_out"], abs=1e-5)
    assert len(heads) == len(prompts) * L * H
    assert list(heads.columns) == ["prompt", "component", "kind", "layer", "head", "logit_diff"]


def test_dla_units_are_consistent(tiny_llama, tiny_prompts):
    comp = at.direct_logit_attribution(tiny_llama, tiny_prompts, progress=False)
    layer = at.direct_logit_attribution(tiny_llama, tiny_prompts, unit="layer", progress=False)
    head = at.direct_logit_attribution(tiny_llama, tiny_prompts, unit="head", progress=False)
    scores = at.dla_scores(tiny_llama, tiny_prompts, progress=False)
    assert comp["logit_diff"].sum() == pytest.approx(layer["logit_diff"].sum(), abs=1e-6)
    assert set(comp["kind"]) == {"embed", "head", "attn_bias", "mlp", "unembed_bias"}
    assert list(layer["component"]) == ["embed", "L0", "L1", "unembed_bias"]
    grid = torch.tensor(head["logit_diff"].to_numpy()).float().reshape(2, 4)
    assert torch.allclose(grid, scores.scores, atol=1e-6)
    assert scores.name == "dla_logit_diff" and isinstance(scores.settings, at.DLASettings)


@needs_hooked("the Gemma-style post-norm model is built from a HookedTransformerConfig")
def test_post_attention_norm_is_applied_to_head_outputs(smol_tokenizer, sentiment_task):
    model = _post_norm_model(smol_tokenizer)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=4, seed=0)
    names = [f"blocks.{layer}.hook_attn_out" for layer in range(2)] + ["blocks.0.attn.hook_z"]
    got = collect(model, prompts, names, progress=False)
    a = ih.head_outputs(model, prompts, progress=False)
    stack, labels = ih.residual_decomposition(model, prompts, progress=False)
    for layer in range(2):
        # heads + b_O, each through ln1_post's cached scale and weight, = hook_attn_out
        start = labels.index(f"L{layer}H0")
        attn_out = got.activations[f"blocks.{layer}.hook_attn_out"]
        assert torch.allclose(stack[:, start : start + 5].sum(1), attn_out, atol=1e-5)
        assert torch.allclose(stack[:, start : start + 4], a[:, layer], atol=1e-6)
    # the raw z @ W_O would not add up: the norm really matters here
    raw = (
        torch.einsum("bhk,hkd->bd", got.activations["blocks.0.attn.hook_z"], model.W_O.detach()[0])
        + model.b_O.detach()[0]
    )
    assert not torch.allclose(raw, got.activations["blocks.0.hook_attn_out"], atol=1e-3)
    scaled, _ = ih.residual_decomposition(model, prompts, apply_ln=True, progress=False)
    rebuilt = scaled.sum(1) @ model.W_U.detach() + model.b_U.detach()
    assert (rebuilt - got.logits).abs().max() < 1e-3


def test_unfolded_final_norm_weight_and_bias_are_attributed(smol_tokenizer, sentiment_task):
    model = make_tiny_model(smol_tokenizer, kind="gpt", process=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        model.ln_final.w.copy_(1 + 0.3 * torch.randn(model.cfg.d_model, generator=g))
        model.ln_final.b.copy_(0.2 * torch.randn(model.cfg.d_model, generator=g))
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=4, seed=0)
    _, logits = _final_resid(model, prompts)
    frame = at.direct_logit_attribution(
        model, prompts, target="gold", per_prompt=True, progress=False
    )
    per_prompt = torch.tensor(frame.groupby("prompt")["gold"].sum().to_numpy())
    expected = logits.gather(1, prompts.gold_token_ids[:, None])[:, 0].double()
    assert (per_prompt - expected).abs().max() < 1e-3


def test_post_norm_architectures_are_rejected(smol_tokenizer, tiny_prompts):
    model = make_tiny_model(smol_tokenizer, kind="llama")
    model.cfg.original_architecture = "Olmo2ForCausalLM"
    with pytest.raises(ValueError, match="post-norm"):
        at.tsla_scores(model, tiny_prompts, progress=False)


# --------------------------------------------------------------------------- TSLA


def _reference_tsla(model, prompts):
    """Slow reference: explicit pinv projector and an explicit loop over wrong labels."""
    a = ih.head_outputs(model, prompts, progress=False).double()
    U = model.W_U.detach().double()[:, prompts.label_token_ids]
    P = U @ torch.linalg.pinv(U)
    tr = (a @ P).pow(2).sum(-1)
    tl = torch.zeros(tr.shape, dtype=torch.float64)
    for i, y in enumerate(prompts.gold.tolist()):
        others = [j for j in range(prompts.n_labels) if j != y]
        for j in others:
            tl[i] += a[i] @ (U[:, y] - U[:, j]) / len(others)
    return tr, tl


def test_tsla_matches_reference_computation(tiny_llama, topic_prompts):
    tr, tl = at.tsla_scores(tiny_llama, topic_prompts, batch_size=3, progress=False)
    ref_tr, ref_tl = _reference_tsla(tiny_llama, topic_prompts)
    assert torch.allclose(tr.per_prompt.double(), ref_tr, rtol=1e-4, atol=1e-6)
    assert torch.allclose(tl.per_prompt.double(), ref_tl, rtol=1e-4, atol=1e-6)
    assert torch.allclose(tr.scores.double(), ref_tr.mean(0), rtol=1e-4, atol=1e-6)
    assert torch.allclose(tl.scores.double(), ref_tl.mean(0), rtol=1e-4, atol=1e-6)
    assert tr.name == "tr_score" and tl.name == "tl_score"


def test_tr_is_invariant_to_rescaling_the_label_basis(tiny_llama, topic_prompts):
    ids = topic_prompts.label_token_ids
    g = torch.Generator().manual_seed(2)
    A = torch.diag(torch.tensor([0.3, 2.0, 5.0, 1.0])) + 0.5 * torch.randn(4, 4, generator=g)
    assert abs(float(torch.linalg.det(A))) > 1e-2
    a = ih.head_outputs(tiny_llama, topic_prompts, progress=False)
    U = at.label_unembeddings(tiny_llama, ids)
    assert torch.allclose(
        at.tr_score(a, at.subspace_basis(U @ A)),
        at.tr_score(a, at.subspace_basis(U)),
        rtol=1e-4,
        atol=1e-7,
    )
    # end to end: a model whose label unembeddings are mixed by A
    mixed = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        mixed.unembed.W_U[:, ids] = U @ A
    tr, tl = at.tsla_scores(tiny_llama, topic_prompts, progress=False)
    tr2, tl2 = at.tsla_scores(mixed, topic_prompts, progress=False)
    assert torch.allclose(tr2.scores, tr.scores, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(tl2.scores, tl.scores, rtol=1e-2)  # TL does depend on the basis


@pytest.mark.parametrize("normalize", ["none", "norm", "tr"])
def test_tl_flips_sign_when_gold_is_swapped_in_a_binary_task(normalize, tiny_llama, tiny_prompts):
    assert tiny_prompts.n_labels == 2
    swapped = replace(tiny_prompts, gold=1 - tiny_prompts.gold)
    kw = dict(normalize=normalize, floor=0.0, progress=False)
    tr, tl = at.tsla_scores(tiny_llama, tiny_prompts, **kw)
    tr_s, tl_s = at.tsla_scores(tiny_llama, swapped, **kw)
    assert torch.allclose(tl_s.per_prompt, -tl.per_prompt, atol=1e-6)
    assert torch.allclose(tl_s.scores, -tl.scores, atol=1e-6)
    assert torch.allclose(tr_s.scores, tr.scores)
    assert tl.scores.abs().max() > 1e-4  # not trivially zero


def test_tl_equals_dla_to_the_gold_logit_difference(tiny_gpt, topic_task):
    prompts = ih.build_prompts(tiny_gpt, topic_task, k=2, n=6, seed=4)
    for apply_ln in (False, True):
        _, tl = at.tsla_scores(tiny_gpt, prompts, apply_ln=apply_ln, progress=False)
        dla = at.dla_scores(tiny_gpt, prompts, apply_ln=apply_ln, progress=False)
        assert torch.allclose(tl.scores, dla.scores, rtol=1e-4, atol=1e-6)
        assert tl.settings.apply_ln is apply_ln
    centered = at.dla_scores(tiny_gpt, prompts, target="centered", progress=False)
    diff = at.dla_scores(tiny_gpt, prompts, target="logit_diff", progress=False)
    assert torch.allclose(centered.scores, diff.scores * 3 / 4, rtol=1e-4, atol=1e-7)


def test_per_prompt_scores_average_to_the_map_and_batch_size_does_not_matter(
    tiny_llama, topic_prompts
):
    tr, tl = at.tsla_scores(tiny_llama, topic_prompts, batch_size=8, progress=False)
    assert tr.per_prompt.shape == (len(topic_prompts), 2, 4)
    assert torch.allclose(tr.per_prompt.mean(0), tr.scores, atol=1e-6)
    assert torch.allclose(tl.per_prompt.mean(0), tl.scores, atol=1e-6)
    tr3, tl3 = at.tsla_scores(tiny_llama, topic_prompts, batch_size=3, progress=False)
    assert torch.allclose(tr3.scores, tr.scores, rtol=1e-5, atol=1e-7)
    assert torch.allclose(tl3.scores, tl.scores, rtol=1e-5, atol=1e-7)
    assert torch.equal(tr3.per_prompt, tr.per_prompt) or torch.allclose(
        tr3.per_prompt, tr.per_prompt, atol=1e-6
    )


def test_normalisers_divide_per_prompt_and_floor_weak_heads(tiny_llama, topic_prompts):
    kw = dict(progress=False)
    tr, tl = at.tsla_scores(tiny_llama, topic_prompts, **kw)
    _, tl_norm = at.tsla_scores(tiny_llama, topic_prompts, normalize="norm", floor=0.0, **kw)
    _, tl_tr = at.tsla_scores(tiny_llama, topic_prompts, normalize="tr", floor=0.0, **kw)
    assert torch.allclose(tl_norm.per_prompt, tl.per_prompt / tr.per_prompt.sqrt(), rtol=1e-4)
    assert torch.allclose(tl_tr.per_prompt, tl.per_prompt / tr.per_prompt, rtol=1e-4)
    # "norm" is a cosine times ||P(u* - mean u')||: bounded
    U = at.label_unembeddings(tiny_llama, topic_prompts.label_token_ids)
    bound = (U - U.mean(1, keepdim=True)).norm(dim=0).max() * 4 / 3
    assert tl_norm.per_prompt.abs().max() <= bound + 1e-5

    floor = 0.3
    _, floored = at.tsla_scores(tiny_llama, topic_prompts, normalize="tr", floor=floor, **kw)
    weak = tr.scores < floor * tr.scores.max()
    assert weak.any() and (~weak).any()
    assert torch.isnan(floored.scores[weak]).all()
    assert torch.isfinite(floored.scores[~weak]).all()
    assert torch.isnan(floored.per_prompt[:, weak]).all()
    assert torch.allclose(floored.scores[~weak], tl_tr.scores[~weak])
    ranked = floored.top(8)
    assert len(ranked) == int((~weak).sum())
    assert all(not weak[h.layer, h.head] for h in ranked)
    assert floored.settings.normalize == "tr" and floored.settings.floor == floor
    assert tl.settings.normalize == "none" and tl.settings.floor is None


def test_settings_say_how_scores_were_made_and_survive_saving(tiny_llama, tiny_prompts, tmp_path):
    tr, tl = at.tsla_scores(tiny_llama, tiny_prompts, top_k=3, progress=False)
    for s in (tr, tl):
        settings = s.settings
        assert isinstance(settings, at.TSLASettings)
        assert settings.prompts.task == "sentiment" and settings.prompts.k == 3
        assert settings.prompts.n == len(tiny_prompts)
        assert settings.labels == ("positive", "negative") and settings.top_k == 3
        json.dumps(settings.to_dict())
        for suffix in (".json", ".parquet"):
            loaded = ih.HeadScores.load(s.save(tmp_path / f"{s.name}{suffix}"))
            assert torch.allclose(loaded.scores, s.scores) and loaded.settings == settings
            assert loaded.top() == s.top() and len(loaded.top()) == 3
    # the scorer's top_k is the maps' default top()
    assert len(tr.top()) == 3 and len(tl.top()) == 3
    default_tr, _ = at.tsla_scores(tiny_llama, tiny_prompts, progress=False)
    assert default_tr.settings.top_k == 1 and len(default_tr.top()) == 1  # 3% of 8, >= 1


# --------------------------------------------------------------------------- bad input


def _empty(prompts):
    return replace(
        prompts,
        tokens=prompts.tokens[:0],
        attention_mask=prompts.attention_mask[:0],
        gold=prompts.gold[:0],
    )


def _single_label(prompts):
    return replace(
        prompts,
        label_token_ids=prompts.label_token_ids[:1],
        label_words=prompts.label_words[:1],
        gold=torch.zeros_like(prompts.gold),
    )


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, p: at.tsla_scores(m, p, normalize="cosine"), ValueError, "normalize"),
        (lambda m, p: at.tsla_scores(m, p, normalize="norm", floor=1.5), ValueError, "floor"),
        (lambda m, p: at.tsla_scores(m, p, top_k=0), ValueError, "top_k"),
        (lambda m, p: at.tsla_scores(m, p, top_k=100), ValueError, "top_k"),
        (lambda m, p: at.tsla_scores(m, _empty(p)), ValueError, "empty"),
        (lambda m, p: at.tsla_scores(m, p.texts), TypeError, "PromptSet"),
        (lambda m, p: at.tsla_scores(m, _single_label(p)), ValueError, "at least 2 labels"),
        (lambda m, p: at.tsla_scores(m, p, batch_size=0), ValueError, "batch_size"),
        (lambda m, p: at.dla_scores(m, p, target="margin"), ValueError, "target"),
        (lambda m, p: at.direct_logit_attribution(m, p, unit="neuron"), ValueError, "unit"),
        (lambda m, p: at.direct_logit_attribution(m, _empty(p)), ValueError, "empty"),
        (lambda m, p: ih.head_outputs(m, _empty(p)), ValueError, "empty"),
        (lambda m, p: at.label_unembeddings(m, [10**7]), ValueError, "out of range"),
        (lambda m, p: at.subspace_basis(torch.zeros(8, 2)), ValueError, "zero"),
        (lambda m, p: at.label_weights(torch.tensor([0]), 1, "logit_diff"), ValueError, "2 labels"),
    ],
)
def test_bad_input_raises_a_clear_error(call, error, match, tiny_llama, tiny_prompts):
    with pytest.raises(error, match=match):
        call(tiny_llama, tiny_prompts)


def test_dla_gold_target_works_with_a_single_label(tiny_llama, tiny_prompts):
    scores = at.dla_scores(tiny_llama, _single_label(tiny_prompts), target="gold", progress=False)
    assert torch.isfinite(scores.scores).all()


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_tsla_on_the_default_model_finds_strong_tr_and_tl_heads(smol):
    prompts = ih.build_prompts(smol, ih.load_task("sentiment"), k=4, n=10, seed=0)
    tr, tl = at.tsla_scores(smol, prompts, progress=False)
    assert tr.scores.shape == (30, 9) and tr.settings.top_k == 8
    top = tr.top()
    median = float(tr.scores.median())
    assert all(tr[h] > 20 * median for h in top[:3])  # a few heads dominate the label space
    best = tl.top(1)[0]
    assert tl[best] > 0
    assert float(tl.per_prompt[:, best.layer, best.head].mean()) == pytest.approx(
        tl[best], rel=1e-5
    )
    _, tl_norm = at.tsla_scores(smol, prompts, normalize="norm", progress=False)
    n_nan = int(torch.isnan(tl_norm.scores).sum())
    assert 0 < n_nan < 270  # weak heads floored, strong ones ranked


@pytest.mark.slow
def test_dla_identity_and_tl_consistency_on_the_default_model(smol):
    prompts = ih.build_prompts(smol, ih.load_task("sentiment"), k=3, n=6, seed=1)
    _, logits = _final_resid(smol, prompts)
    frame = at.direct_logit_attribution(smol, prompts, per_prompt=True, progress=False)
    per_prompt = torch.tensor(frame.groupby("prompt")["logit_diff"].sum().to_numpy())
    expected = logit_diff(logits, prompts.gold, prompts.label_token_ids).double()
    assert (per_prompt - expected).abs().max() < 1e-3 * max(1.0, float(expected.abs().max()))
    _, tl = at.tsla_scores(smol, prompts, apply_ln=True, progress=False)
    heads = frame[frame.kind == "head"]
    grid = torch.tensor(heads["logit_diff"].to_numpy()).float().reshape(len(prompts), 30, 9)
    assert torch.allclose(grid, tl.per_prompt, atol=1e-4)
    assert not math.isnan(float(tl.scores.sum()))


# ---- H12: the normalised TL score through find_task_heads (issue 18 item 1)


def test_find_task_heads_normalised_tl_never_ranks_a_head_below_the_tr_floor(
    tiny_llama, topic_prompts
):
    from icl_heads.experiments import trtl  # noqa: PLC0415

    kw = dict(n_boot=20, progress=False)
    default = trtl.find_task_heads(tiny_llama, topic_prompts, **kw)
    assert default.settings.normalize == "none" and default.settings.floor is None
    tr = default.maps["TR"].scores
    unfloored = trtl.find_task_heads(tiny_llama, topic_prompts, normalize="norm", floor=0.0, **kw)
    best = unfloored.maps["TL"].top(1)[0]
    share = float(tr[best.layer, best.head] / tr.max())
    assert share < 1  # the best normalised head is not the strongest TR head here
    floor = share + (1 - share) / 2  # just above the best normalised head's TR
    found = trtl.find_task_heads(tiny_llama, topic_prompts, normalize="norm", floor=floor, **kw)
    weak = tr < floor * tr.max()
    assert torch.isnan(found.maps["TL"].scores[weak]).all()
    tl_set = trtl.head_sets(found)["TL"]
    assert best not in tl_set and tl_set
    assert all(not weak[h.layer, h.head] for h in tl_set)
    assert found.settings.normalize == "norm" and found.settings.floor == floor
    assert found.maps["TL"].settings.floor == floor
    # the TR map and its set do not depend on the TL normaliser
    assert torch.equal(found.maps["TR"].scores, tr)
    assert trtl.head_sets(found)["TR"] == trtl.head_sets(default)["TR"]
