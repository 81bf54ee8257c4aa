"""Head detectors: agreement with TransformerLens's detect_head, a hand-built model with known
heads, slow references, bad input, and the real model (slow)."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch
from conftest import skip_without_hooked
from tl_reference import detect_head_on_tokens
from transformer_lens.head_detector import (
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

import icl_heads as ih
from icl_heads.backends import HookedTransformer, HookedTransformerConfig
from icl_heads.detectors import (
    DETECTORS,
    detect_heads,
    detection_patterns,
    duplicate_token_scores,
    induction_scores,
    label_attention_scores,
    previous_token_scores,
    random_repeated_tokens,
    score_patterns,
    token_detector_scores,
)


def tl_scores(model, sequences, **kwargs) -> dict:
    """TransformerLens's detect_head on the same sequences, per detector."""
    return dict(zip(DETECTORS, detect_head_on_tokens(model, sequences, DETECTORS, **kwargs)))


# --------------------------------------------------------------------------- hand-built model

V, N, C = 30, 32, 200.0  # vocabulary, context, logit scale of the designed heads


def hand_built_model() -> HookedTransformer:
    """2-layer attention-only model, 3 heads per layer, no tokenizer:

    - L0H0 previous-token head: positional query for p-1 meets positional key p; its value
      copies the token into a "previous token" subspace.
    - L1H0 induction head (K-composition): query = current token, key = previous-token
      subspace written by L0H0; position 0 is pushed away through b_Q.
    - L1H1 duplicate-token head: query/key = token identity, minus a positional self term.
    - L0H1, L0H2, L1H2: zero weights, i.e. uniform attention.
    Residual layout: [token one-hot (V) | position one-hot (N) | previous token (V)].
    """
    cfg = HookedTransformerConfig(
        n_layers=2,
        n_heads=3,
        d_model=2 * V + N,
        d_head=64,
        d_vocab=V,
        n_ctx=N,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="relu",
        seed=0,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tok, pos, prev = torch.arange(V), torch.arange(N), V + N + torch.arange(V)
        model.embed.W_E[tok, tok] = 1.0
        model.pos_embed.W_pos[pos, V + pos] = 1.0
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        a0.W_Q[0, V + pos[1:], pos[:-1]] = C  # query at p looks for key position p - 1
        a0.W_K[0, V + pos, pos] = 1.0
        a0.W_V[0, tok, tok] = 1.0
        a0.W_O[0, tok, prev] = 1.0
        a1.W_Q[0, tok, tok] = C  # current token ...
        a1.W_K[0, prev, tok] = 1.0  # ... meets the previous token of each key position
        a1.b_Q[0, 63] = 1.0
        a1.W_K[0, V + 0, 63] = -C  # position 0 has no real previous token
        a1.W_Q[1, tok, tok] = C  # same token ...
        a1.W_K[1, tok, tok] = 1.0
        a1.W_Q[1, V + pos, V + pos] = -C  # ... but not itself
        a1.W_K[1, V + pos, V + pos] = 1.0
    model.eval()
    return model


@pytest.fixture(scope="module")
def handmade():
    skip_without_hooked("the hand-built model sets HookedTransformerConfig weights by hand")
    return hand_built_model()


def test_hand_built_model_heads_are_found_and_nothing_else(handmade):
    scores = token_detector_scores(handmade, T=12, n_sequences=16, seed=0, progress=False)
    expected = {"previous_token": (0, 0), "induction": (1, 0), "duplicate_token": (1, 1)}
    for name, head in expected.items():
        s = scores[name]
        assert s.top(1) == [head], (name, s.scores)
        assert s[head] > 0.9, (name, s.scores)
        others = s.scores.clone()
        others[head] = 0.0
        assert others.max() < 0.3, (name, s.scores)


def test_hand_built_perfect_heads_under_detect_head_normalisation(handmade):
    """TransformerLens's "mul" divides by all rows: a perfect head scores the fraction of
    rows where its pattern applies (about 1/2 for induction on r + r), not 1."""
    tokens = random_repeated_tokens(handmade, T=12, n_sequences=16, seed=0)
    ours = token_detector_scores(handmade, tokens, normalize="detect_head", progress=False)
    applies = detection_patterns(tokens).any(-1).float().mean(-1).mean(0)  # [detector]
    for i, (name, head) in enumerate(
        [("previous_token", (0, 0)), ("duplicate_token", (1, 1)), ("induction", (1, 0))]
    ):
        assert ours[name][head] == pytest.approx(float(applies[i]), abs=1e-3), name
    assert ours["previous_token"][(0, 0)] == pytest.approx(23 / 24, abs=1e-3)


def test_random_tokens_have_no_bos_without_tokenizer(handmade):
    tokens = random_repeated_tokens(handmade, T=12, n_sequences=4, seed=3)
    assert tokens.shape == (4, 24)
    assert torch.equal(tokens[:, :12], tokens[:, 12:])
    assert tokens.min() >= 0 and tokens.max() < V


def test_detect_heads_labels_the_hand_built_heads(handmade):
    frame = detect_heads(handmade, T=12, n_sequences=16, progress=False)
    assert list(frame.columns) == [
        "layer",
        "head",
        "label",
        "previous_token_score",
        "duplicate_token_score",
        "induction_score",
        "label_attention_score",
        "gold_label_share",
        "kind",
    ]
    assert len(frame) == 6
    kinds = dict(zip(frame.label, frame.kind, strict=True))
    assert kinds == {
        "L0H0": "previous_token",
        "L0H1": "",
        "L0H2": "",
        "L1H0": "induction",
        "L1H1": "duplicate_token",
        "L1H2": "",
    }
    assert frame.label_attention_score.isna().all()
    assert frame.attrs["settings"].T == 12


def test_detect_heads_top_k_and_thresholds(handmade):
    top1 = detect_heads(handmade, T=12, n_sequences=8, top_k=1, progress=False)
    assert dict(zip(top1.label, top1.kind, strict=True))["L1H0"] == "induction"
    assert (top1.kind != "").sum() == 3  # label attention is NaN: never ranked
    everything = detect_heads(handmade, T=12, n_sequences=8, thresholds=0.0, progress=False)
    assert (everything.kind == "previous_token+duplicate_token+induction").all()
    custom = detect_heads(
        handmade, T=12, n_sequences=8, thresholds={"induction": 2.0}, progress=False
    )
    assert "induction" not in "".join(custom.kind)


# --------------------------------------------------------------------------- TL agreement


def test_detection_patterns_equal_transformer_lens():
    tokens = torch.tensor([[1, 5, 7, 5, 9, 7, 7, 5, 2]])
    ours = detection_patterns(tokens)[0].float()
    for i, fn in enumerate(
        [
            get_previous_token_head_detection_pattern,
            get_duplicate_token_head_detection_pattern,
            get_induction_head_detection_pattern,
        ]
    ):
        assert torch.equal(ours[i], fn(tokens)), DETECTORS[i]


@pytest.mark.parametrize("kind", ["llama", "gpt"])
@pytest.mark.parametrize("exclude_bos", [False, True])
def test_scores_equal_detect_head_on_the_same_tokens(kind, exclude_bos, tiny_llama, tiny_gpt):
    model = tiny_llama if kind == "llama" else tiny_gpt
    tokens = random_repeated_tokens(model, T=9, n_sequences=3, seed=1)
    tokens[0, 4] = tokens[0, 2]  # an in-copy repeat: several targets in one row
    ours = token_detector_scores(
        model,
        tokens,
        normalize="detect_head",
        exclude_bos=exclude_bos,
        batch_size=2,
        progress=False,
    )
    ref = tl_scores(model, tokens, exclude_bos=exclude_bos)
    for name in DETECTORS:
        assert (ours[name].scores - ref[name]).abs().max() < 1e-5, name


def test_exclude_current_token_equals_detect_head(tiny_llama):
    tokens = random_repeated_tokens(tiny_llama, T=6, n_sequences=2, seed=2)
    tokens[:, 3] = tokens[:, 2]  # adjacent repeat: the induction target is the query itself
    ours = token_detector_scores(
        tiny_llama, tokens, normalize="detect_head", exclude_current_token=True, progress=False
    )
    ref = tl_scores(tiny_llama, tokens, exclude_current_token=True)
    for name in DETECTORS:
        assert (ours[name].scores - ref[name]).abs().max() < 1e-5, name


def test_left_padded_prompts_equal_detect_head_per_prompt(tiny_llama, tiny_prompts):
    """Padding: padded keys get no weight and padded rows do not count."""
    assert (tiny_prompts.attention_mask == 0).any()  # the set really is padded
    ours = token_detector_scores(
        tiny_llama, tiny_prompts, normalize="detect_head", batch_size=4, progress=False
    )
    sequences = [tiny_prompts.select([i]).tokens[0] for i in range(len(tiny_prompts))]
    ref = tl_scores(tiny_llama, sequences)
    for name in DETECTORS:
        assert (ours[name].scores - ref[name]).abs().max() < 1e-5, name
    # the same prompts as an explicit token batch with an attention mask
    again = token_detector_scores(
        tiny_llama,
        tiny_prompts.tokens,
        attention_mask=tiny_prompts.attention_mask,
        normalize="detect_head",
        progress=False,
    )
    assert torch.allclose(again["induction"].scores, ours["induction"].scores, atol=1e-6)


# --------------------------------------------------------------------------- slow references


def _reference(pattern, tokens, mask, normalize, exclude_bos, exclude_current, bos_id):
    """Python loops over sequences, heads and rows."""
    n, H, P, _ = pattern.shape
    tl_patterns = [
        get_previous_token_head_detection_pattern,
        get_duplicate_token_head_detection_pattern,
        get_induction_head_detection_pattern,
    ]
    out = torch.full((n, 3, H), math.nan)
    for b in range(n):
        real = mask[b].nonzero()[:, 0]
        toks = tokens[b, real]
        for d, fn in enumerate(tl_patterns):
            D = fn(toks[None])
            for h in range(H):
                A = pattern[b, h][real][:, real].clone()
                if exclude_bos and (normalize == "detect_head" or toks[0] == bos_id):
                    A[:, 0] = 0
                if exclude_current:
                    A.fill_diagonal_(0)
                if normalize == "detect_head":
                    out[b, d, h] = (A * D).sum() / A.sum()
                    continue
                rows = []
                for i in range(len(real)):
                    targets = D[i].clone()
                    if exclude_bos and toks[0] == bos_id:
                        targets[0] = 0
                    if exclude_current:
                        targets[i] = 0
                    if targets.sum() > 0:
                        rows.append(float((A[i] * D[i]).sum() / A[i].sum()))
                if rows:
                    out[b, d, h] = sum(rows) / len(rows)
    return out


@pytest.mark.parametrize(
    "normalize,exclude_bos,exclude_current",
    list(itertools.product(["rows", "detect_head"], [False, True], [False, True])),
)
def test_score_patterns_equal_a_slow_loop(normalize, exclude_bos, exclude_current):
    from icl_heads.detectors.scoring import keep_mask

    g = torch.Generator().manual_seed(0)
    n, H, P, bos = 3, 2, 9, 1
    tokens = torch.randint(3, 7, (n, P), generator=g)  # small vocabulary: many repeats
    mask = torch.ones(n, P, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :1] = 0
    tokens[:, 0] = bos
    tokens[1, 3] = bos
    tokens[2, 1] = 5  # row 2 starts without BOS
    scores = torch.randn(n, H, P, P, generator=g)
    allowed = torch.ones(P, P, dtype=torch.bool).tril() & mask.bool()[:, None, None, :]
    pattern = scores.masked_fill(~allowed, -torch.inf).softmax(-1)  # NaN rows at padding
    keep = keep_mask(
        tokens,
        mask,
        bos_token_id=bos,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current,
        normalize=normalize,
    )
    ours = score_patterns(pattern, detection_patterns(tokens, mask), keep, normalize)
    ref = _reference(pattern, tokens, mask, normalize, exclude_bos, exclude_current, bos)
    torch.testing.assert_close(ours, ref, equal_nan=True, atol=1e-6, rtol=1e-5)


def test_a_pattern_equal_to_the_detection_pattern_scores_one():
    tokens = torch.tensor([[1, 4, 5, 6, 4, 5, 6]])
    D = detection_patterns(tokens)  # [1, 3, q, k]
    for d in range(3):
        rows = D[0, d].float()
        has = rows.sum(-1) > 0
        pattern = torch.where(
            has[:, None], rows / rows.sum(-1, keepdim=True).clamp_min(1), torch.eye(7)
        )[None, None]
        keep = torch.ones(1, 7, 7, dtype=torch.bool)
        score = score_patterns(pattern, D[:, [d]], keep, "rows")
        assert score.item() == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- label attention


def test_label_attention_equals_a_full_cache_reference(tiny_llama, tiny_prompts):
    la = label_attention_scores(tiny_llama, tiny_prompts, batch_size=3, progress=False)
    mass, share = [], []
    for i in range(len(tiny_prompts)):
        p = tiny_prompts.select([i])
        _, cache = tiny_llama.run_with_cache(p.tokens, attention_mask=p.attention_mask)
        q = torch.stack([cache["pattern", layer][0, :, -1] for layer in range(2)])  # [L, H, pos]
        to_labels = q[:, :, p.demo_label_positions[0]]  # [L, H, k]
        gold = p.demo_labels[0] == p.gold[0]
        mass.append(to_labels.sum(-1))
        share.append(
            to_labels[:, :, gold].sum(-1) / to_labels.sum(-1)
            if gold.any()
            else torch.full((2, 4), math.nan)
        )
    torch.testing.assert_close(la.mass.scores, torch.stack(mass).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        la.gold_share.scores, torch.stack(share).nanmean(0), atol=1e-5, rtol=1e-4
    )
    assert la.mass.name == "label_attention_score" and la.gold_share.name == "gold_label_share"
    assert la.mass.per_prompt.shape == (len(tiny_prompts), 2, 4)
    assert 0 < la.gold_share.baseline < 1


def test_label_attention_equals_detect_head_with_a_label_pattern(tiny_llama, tiny_prompts):
    """detect_head("mul") with D = 1 at (query, demo label positions) is mass / seq_len."""
    p = tiny_prompts.select([0])
    la = label_attention_scores(tiny_llama, p, progress=False)
    P = p.tokens.shape[1]
    D = torch.zeros(P, P)
    D[-1, p.demo_label_positions[0]] = 1
    [ref] = detect_head_on_tokens(tiny_llama, p.tokens, [D])
    assert (la.mass.scores - ref * P).abs().max() < 1e-5


def test_detect_heads_with_prompts_fills_label_columns(tiny_llama, tiny_prompts):
    frame = detect_heads(
        tiny_llama, tiny_prompts, T=5, n_sequences=2, thresholds=0.0, progress=False
    )
    assert frame.label_attention_score.notna().all()
    assert frame.kind.str.contains("label_attention").all()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 8


# --------------------------------------------------------------------------- data and wrappers


def test_random_tokens_are_seeded_ordinary_and_repeated(tiny_llama, smol_tokenizer):
    a = random_repeated_tokens(tiny_llama, T=40, n_sequences=5, seed=7)
    b = random_repeated_tokens(tiny_llama, T=40, n_sequences=5, seed=7)
    c = random_repeated_tokens(tiny_llama, T=40, n_sequences=5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (5, 81)
    assert (a[:, 0] == smol_tokenizer.bos_token_id).all()
    assert torch.equal(a[:, 1:41], a[:, 41:])
    special = torch.tensor(smol_tokenizer.all_special_ids)
    assert not torch.isin(a[:, 1:], special).any()
    assert random_repeated_tokens(tiny_llama, T=4, n_sequences=1, prepend_bos=False).shape == (1, 8)


def test_named_wrappers_equal_the_joint_pass(tiny_llama):
    joint = token_detector_scores(tiny_llama, T=6, n_sequences=3, progress=False)
    for fn, name in [
        (previous_token_scores, "previous_token"),
        (duplicate_token_scores, "duplicate_token"),
        (induction_scores, "induction"),
    ]:
        single = fn(tiny_llama, T=6, n_sequences=3, progress=False)
        assert torch.allclose(single.scores, joint[name].scores, atol=1e-6)
        assert single.name == f"{name}_score"
        assert single.settings.T == 6 and single.settings.normalize == "rows"
        assert single.per_prompt.shape == (3, 2, 4)


def test_the_old_keyword_n_still_works_with_a_deprecation_warning(tiny_llama):
    """``n=`` is the old name of ``n_sequences=``: same numbers, a DeprecationWarning,
    and a TypeError when both are given."""
    with pytest.warns(DeprecationWarning, match="n= is deprecated; use n_sequences="):
        old = random_repeated_tokens(tiny_llama, T=5, n=3, seed=1)
    assert torch.equal(old, random_repeated_tokens(tiny_llama, T=5, n_sequences=3, seed=1))
    new = token_detector_scores(tiny_llama, T=5, n_sequences=3, progress=False)
    for fn in (token_detector_scores, induction_scores, detect_heads):
        with pytest.warns(DeprecationWarning, match="n= is deprecated") as caught:
            got = fn(tiny_llama, T=5, n=3, progress=False)
        assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller
        if fn is induction_scores:
            assert torch.equal(got.scores, new["induction"].scores)
        elif fn is detect_heads:
            assert got.attrs["settings"].n == 3
        else:
            assert torch.equal(got["induction"].scores, new["induction"].scores)
        with pytest.raises(TypeError, match="n_sequences=3 and .* n=3 were both given"):
            fn(tiny_llama, T=5, n_sequences=3, n=3, progress=False)
    assert new["induction"].settings.n == 3  # the settings field keeps its saved name
    assert random_repeated_tokens(tiny_llama, T=5).shape[0] == ih.detectors.N_SEQUENCES == 32


# --------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors(tiny_llama, sentiment_task):
    with pytest.raises(ValueError, match="n_ctx=256.*T <= 127"):
        induction_scores(tiny_llama, T=200, progress=False)
    with pytest.raises(ValueError, match="n_sequences must be a positive integer"):
        induction_scores(tiny_llama, n_sequences=0, progress=False)
    zero_shot = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=2, perturbation="zero_shot")
    with pytest.raises(ValueError, match="no demonstrations"):
        label_attention_scores(tiny_llama, zero_shot, progress=False)
    with pytest.raises(TypeError, match="PromptSet"):
        label_attention_scores(tiny_llama, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="normalize"):
        induction_scores(tiny_llama, T=4, n_sequences=1, normalize="mul", progress=False)
    with pytest.raises(ValueError, match="Unknown detector"):
        token_detector_scores(tiny_llama, T=4, n_sequences=1, detectors=["induction_head"])
    with pytest.raises(TypeError, match="token tensor"):
        induction_scores(tiny_llama, ["some text"], progress=False)
    with pytest.raises(TypeError, match="integer"):
        induction_scores(tiny_llama, torch.zeros(2, 5), progress=False)
    with pytest.raises(ValueError, match="exceed the model's context"):
        induction_scores(tiny_llama, torch.zeros(1, 300, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="d_vocab"):
        induction_scores(tiny_llama, torch.full((1, 5), 10**6), progress=False)
    with pytest.raises(ValueError, match="left-padded"):
        induction_scores(
            tiny_llama,
            torch.ones(1, 4, dtype=torch.long),
            attention_mask=torch.tensor([[1, 1, 0, 1]]),
            progress=False,
        )
    with pytest.raises(ValueError, match="Unknown kind"):
        detect_heads(tiny_llama, T=4, n_sequences=1, thresholds={"induction_head": 0.5})


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_has_induction_and_previous_token_heads(smol):
    scores = token_detector_scores(smol, T=30, n_sequences=8, seed=0, batch_size=8, progress=False)
    induction, previous = scores["induction"], scores["previous_token"]
    top_induction = induction.top(5)
    assert induction[top_induction[0]] > 0.7
    assert all(15 <= h.layer <= 24 for h in top_induction)  # middle-to-late layers
    assert previous[previous.top(1)[0]] > 0.7
    # the two kinds are different heads
    assert not set(top_induction[:3]) & set(previous.top(3))
