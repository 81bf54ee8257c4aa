"""HeadScores and head selections: ranking, masks, tidy frames, saving, plotting, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from icl_heads.heads import (
    Head,
    HeadScores,
    default_top_k,
    heads_to_mask,
    map_head_set,
    mask_to_heads,
    random_head_sets,
)
from icl_heads.settings import PromptInfo
from icl_heads.stats import ranked_order

NAN = math.nan


@pytest.fixture
def scores():
    # 3 layers x 4 heads; one NaN (not scored), one tie (L0H1 = L2H0 = 5)
    grid = torch.tensor([[1.0, 5.0, -7.0, 0.0], [2.0, NAN, 9.0, -1.0], [5.0, 3.0, -2.0, 4.0]])
    return HeadScores(
        grid, name="tl_score", settings=PromptInfo(task="x", k=4, n=3, seed=0, perturbation="gold")
    )


def test_head_prints_as_layer_and_head():
    assert str(Head(3, 5)) == "L3H5" and Head(3, 5) == (3, 5)


def test_default_top_k_is_three_percent_of_heads_at_least_one():
    assert default_top_k(30, 9) == 8
    assert default_top_k(2, 4) == 1
    assert default_top_k(32, 32) == 31


def test_top_ranks_best_first_and_skips_nan(scores):
    assert scores.top(3) == [Head(1, 2), Head(0, 1), Head(2, 0)]  # tie: row-major order
    assert scores.top(3, largest=False) == [Head(0, 2), Head(2, 2), Head(1, 3)]
    assert scores.top(2, by_abs=True) == [Head(1, 2), Head(0, 2)]
    with pytest.warns(UserWarning, match="only 11 are rankable"):
        assert Head(1, 1) not in scores.top(12)
    with pytest.warns(UserWarning, match="'tl_score'"):
        assert len(scores.top(100)) == 11  # NaN never ranked, k clipped
    assert scores.top(0) == []
    assert scores.top() == [Head(1, 2)]  # default: 3% of 12 heads -> 1
    assert scores[Head(1, 2)] == 9.0 and scores[(0, 2)] == -7.0


def test_top_of_an_all_nan_map_is_empty():
    with pytest.warns(UserWarning, match="only 0 are rankable"):
        assert HeadScores(torch.full((2, 2), NAN)).top(3) == []


def test_an_all_nan_map_never_becomes_an_empty_head_set():
    # issue 22: an all-NaN map became an empty head set whose "ablated" rows silently
    # equal the baseline; as a set (mask, map_head_set, the kit) it is an error
    blank = HeadScores(torch.full((2, 2), NAN), name="tl_score")
    with pytest.raises(ValueError, match="tl_score.mask: the HeadScores map 'tl_score' has no"):
        blank.mask(1)
    assert blank.top(0) == []
    assert "top=[]" in repr(blank)  # repr never raises nor warns


def test_mask_and_mask_to_heads_round_trip(scores):
    mask = scores.mask(3)
    assert mask.dtype == torch.bool and mask.shape == (3, 4) and int(mask.sum()) == 3
    assert set(mask_to_heads(mask)) == set(scores.top(3))
    assert mask_to_heads(mask) == sorted(scores.top(3))  # row-major order


def test_rank_is_one_for_the_best_head_and_nan_for_unscored(scores):
    rank = scores.rank()
    assert rank[1, 2] == 1 and rank[0, 2] == 11
    assert math.isnan(rank[1, 1])
    finite = rank[~torch.isnan(rank)]
    assert sorted(finite.tolist()) == list(range(1, 12))


def test_to_frame_is_tidy_one_row_per_head(scores):
    frame = scores.to_frame()
    assert list(frame.columns) == ["layer", "head", "label", "tl_score", "rank"]
    assert len(frame) == 12
    row = frame[frame.label == "L1H2"].iloc[0]
    assert (row["layer"], row["head"], row["tl_score"], row["rank"]) == (1, 2, 9.0, 1.0)
    assert frame.tl_score.isna().sum() == 1


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_save_and_load_round_trip(scores, tmp_path, suffix):
    path = scores.save(tmp_path / "sub" / f"scores{suffix}")
    assert path.exists()
    loaded = HeadScores.load(path)
    assert loaded.name == scores.name
    assert loaded.settings == scores.settings
    assert torch.equal(torch.isnan(loaded.scores), torch.isnan(scores.scores))
    finite = ~torch.isnan(scores.scores)
    assert torch.equal(loaded.scores[finite], scores.scores[finite])
    assert loaded.top(5) == scores.top(5)


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_save_and_load_keep_per_prompt_scores(tmp_path, suffix):
    per_prompt = torch.randn(5, 3, 4)
    per_prompt[2, 1, 3] = math.nan  # a prompt where the score is undefined
    s = HeadScores(torch.nanmean(per_prompt, 0), name="induction_score", per_prompt=per_prompt)
    loaded = HeadScores.load(s.save(tmp_path / f"scores{suffix}"))
    assert loaded.per_prompt is not None and loaded.per_prompt.shape == (5, 3, 4)
    assert torch.equal(torch.isnan(loaded.per_prompt), torch.isnan(per_prompt))
    assert torch.allclose(loaded.per_prompt.nan_to_num(), per_prompt.nan_to_num())
    # the tidy frame of a loaded file is unchanged by the extra column
    assert list(loaded.to_frame().columns) == list(s.to_frame().columns)


def test_per_prompt_scores_are_kept_on_cpu_as_float():
    per_prompt = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    s = HeadScores(per_prompt.mean(0), name="tr_score", per_prompt=per_prompt)
    assert s.per_prompt.dtype == torch.float32 and s.scores.dtype == torch.float32
    assert s.n_layers == 3 and s.n_heads == 4


def test_plot_returns_a_heatmap_figure(scores):
    fig = scores.plot()
    heatmap = fig.data[0]
    assert heatmap.type == "heatmap"
    assert len(heatmap.z) == 3 and len(heatmap.z[0]) == 4
    assert "tl_score" in fig.layout.title.text
    assert fig.layout.yaxis.autorange == "reversed"
    outlined = scores.plot(highlight_top=3)
    assert len(outlined.layout.shapes) == 3
    assert scores.plot(diverging=False).data[0].zmid is None
    assert scores.plot().data[0].zmid == 0.0  # negative values: diverging around 0


def test_repr_mentions_name_and_top_heads(scores):
    text = repr(scores)
    assert "tl_score" in text and "L1H2=9" in text


# --------------------------------------------------------------------------- heads_to_mask


def test_heads_to_mask_accepts_every_head_selection(scores):
    expected = torch.zeros(3, 4, dtype=torch.bool)
    expected[0, 1] = expected[2, 3] = True
    assert torch.equal(heads_to_mask([Head(0, 1), Head(2, 3)], 3, 4), expected)
    assert torch.equal(heads_to_mask([(0, 1), (2, 3)], 3, 4), expected)
    assert torch.equal(heads_to_mask(expected, 3, 4), expected)
    assert torch.equal(heads_to_mask(scores, 3, 4), scores.mask())
    assert not heads_to_mask([], 3, 4).any()


@pytest.mark.parametrize(
    "heads, error, match",
    [
        ([Head(3, 0)], ValueError, "out of range"),
        ([(0, 4)], ValueError, "out of range"),
        ([(-1, 0)], ValueError, "out of range"),
        (torch.zeros(4, 3, dtype=torch.bool), ValueError, "shape"),
        (torch.zeros(3, 4), TypeError, "boolean"),
        (["L0H1"], TypeError, "pairs"),
        ([5], TypeError, "pairs"),
    ],
)
def test_heads_to_mask_rejects_bad_selections(heads, error, match):
    with pytest.raises(error, match=match):
        heads_to_mask(heads, 3, 4)


def test_bad_input_raises_a_clear_error(scores, tmp_path):
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        HeadScores(torch.zeros(5))
    with pytest.raises(ValueError, match="k must be"):
        scores.top(-1)
    with pytest.raises(TypeError, match="whole number"):
        scores.top(2.5)
    with pytest.raises(ValueError, match=r"\.json or \.parquet"):
        scores.save(tmp_path / "scores.csv")
    with pytest.raises(ValueError, match=r"\.json or \.parquet"):
        HeadScores.load(tmp_path / "scores.csv")
    with pytest.raises(ValueError, match="per_prompt"):
        HeadScores(torch.zeros(3, 4), per_prompt=torch.zeros(2, 4, 3))


# ----------------------------------------------------------------------------- random sets


def test_random_sets_are_reproducible_disjoint_and_layer_matched():
    model = make_tiny_model(None, n_layers=4, n_heads=8, d_vocab=64)
    heads = [(1, 0), (1, 3), (3, 5)]
    exclude = [(1, 1), (2, 2)]
    a = random_head_sets(model, heads, 6, seed=3, exclude=exclude)
    b = random_head_sets(model, heads, 6, seed=3, exclude=exclude)
    assert a == b
    assert a != random_head_sets(model, heads, 6, seed=4, exclude=exclude)
    blocked = {Head(*h) for h in heads + exclude}
    for s in a:
        assert len(s) == 3 and len(set(s)) == 3 and not (set(s) & blocked)
        assert sorted(h.layer for h in s) == [1, 1, 3]
    unmatched = random_head_sets(model, heads, 6, layer_matched=False, seed=3, exclude=exclude)
    assert all(len(s) == 3 and not (set(s) & blocked) for s in unmatched)
    assert {h.layer for s in unmatched for h in s} != {1, 3}


def test_random_sets_take_the_nearest_layer_when_a_layer_is_full():
    model = make_tiny_model(None, n_layers=3, n_heads=2, d_vocab=64)
    (s,) = random_head_sets(model, [(1, 0)], 1, seed=0, exclude=[(1, 1)])
    assert s[0].layer == 0  # layer 1 has no free head; layer 0 is nearest (lower first)


def test_random_sets_from_one_generator_continue_its_stream_and_errors_are_clear():
    model = make_tiny_model(None, n_layers=3, n_heads=4, d_vocab=64)
    rng = np.random.default_rng(5)
    first = random_head_sets(model, [(0, 0), (2, 1)], 1, seed=rng)
    second = random_head_sets(model, [(0, 0), (2, 1)], 1, seed=rng)
    assert first + second == random_head_sets(model, [(0, 0), (2, 1)], 2, seed=5)
    assert random_head_sets(model, [(0, 0)], 0) == []
    six = torch.zeros(3, 4, dtype=torch.bool)
    six[:, :2] = True  # 6 of 12 heads, plus 1 excluded: only 5 free
    with pytest.raises(ValueError, match="smaller head sets"):
        random_head_sets(model, six, 1, exclude=[(0, 2)])
    with pytest.raises(TypeError, match="seed"):
        random_head_sets(model, [(0, 0)], 2, seed=1.5)
    with pytest.raises(TypeError, match="n_random"):
        random_head_sets(model, [(0, 0)], 2.0)
    with pytest.raises(ValueError, match="n_random must be >= 0, got -1"):
        random_head_sets(model, [(0, 0)], -1)
    with pytest.raises(ValueError, match="out of range"):
        random_head_sets(model, [(7, 0)], 2)


# ---- NaN and infinities (docs/api.md): NaN never ranked, +-inf ranked as orderings


def test_ranked_order_skips_nan_and_ranks_infinities_at_the_ends():
    values = torch.tensor([1.0, NAN, -math.inf, 3.0, math.inf, NAN, 1.0])
    assert ranked_order(values).tolist() == [4, 3, 0, 6, 2]  # ties keep row-major order
    assert ranked_order(values, largest=False).tolist() == [2, 0, 6, 3, 4]
    assert ranked_order(np.full(3, NAN)).tolist() == []


def test_top_and_rank_never_rank_nan_tied_with_minus_inf():
    grid = torch.tensor([[NAN, -math.inf, 2.0], [math.inf, NAN, -math.inf]])
    s = HeadScores(grid, name="effect")
    assert s.top(4) == [Head(1, 0), Head(0, 2), Head(0, 1), Head(1, 2)]
    assert s.top(2, largest=False) == [Head(0, 1), Head(1, 2)]
    assert s.top(3, by_abs=True) == [Head(0, 1), Head(1, 0), Head(1, 2)]
    with pytest.warns(UserWarning, match="top\\(6\\) asked for 6 heads but only 4"):
        assert len(s.top(6)) == 4
    rank = s.rank()
    assert rank[1, 0] == 1 and rank[0, 2] == 2 and rank[0, 1] == 3 and rank[1, 2] == 4
    assert torch.isnan(rank[0, 0]) and torch.isnan(rank[1, 1])
    assert sorted(s.to_frame()["rank"].dropna().tolist()) == [1, 2, 3, 4]
    assert set(s.top(4)) == {h for h in mask_to_heads(s.mask(4))}


def test_rank_and_top_agree_on_finite_maps(scores):
    order = scores.top(5)
    rank = scores.rank()
    assert [int(rank[h.layer, h.head]) for h in order] == [1, 2, 3, 4, 5]


def test_map_head_set_is_never_empty():
    s = HeadScores(torch.tensor([[1.0, NAN], [NAN, NAN]]), name="m")
    assert map_head_set(s, 2, 2, 1, what="Head set 'A'") == [Head(0, 0)]
    with pytest.raises(ValueError, match="Head set 'A': the HeadScores map 'm' gives no head"):
        map_head_set(s, 2, 2, 0, what="Head set 'A'")
    with pytest.raises(ValueError, match="Head set 'A': the HeadScores map 'm' has no rankable"):
        map_head_set(HeadScores(torch.full((2, 2), NAN), name="m"), 2, 2, 1, what="Head set 'A'")
    with pytest.raises(ValueError, match=r"has shape \[2, 2\]; this model has"):
        map_head_set(s, 3, 2, 1, what="Head set 'A'")
