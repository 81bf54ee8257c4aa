"""The geometry experiments (icl_heads/experiments/geometry/) and their results page
(icl_heads/pages/geometry.py) on tiny models: tables, settings, head sets and their random
controls, verdicts, the resumable grid. Tests marked ``slow`` run on the embedded
SmolLM2-135M with small n."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.experiments.geometry import (
    geometry_verdicts,
    head_ablation_geometry,
    layer_geometry,
    reproduce_geometry,
    task_vector_experiment,
)
from icl_heads.experiments.kit import judge
from icl_heads.experiments.verdict_rules import VERDICTS
from icl_heads.pages.geometry import write_geometry_page
from icl_heads.results import ExperimentResult


def test_bad_experiment_inputs_give_clear_errors_naming_the_fix(tiny_llama, tiny_prompts):
    with pytest.raises(ValueError, match="State layer 9 is out of range"):
        layer_geometry(tiny_llama, tiny_prompts, [9], progress=False)
    # tiny_prompts: 10 prompts, 5 per class
    with pytest.raises(ValueError, match="fewer than folds=6; use folds <= 5"):
        layer_geometry(tiny_llama, tiny_prompts, folds=6, progress=False)
    one_class = tiny_prompts.select([i for i in range(10) if tiny_prompts.gold[i] == 0])
    with pytest.raises(ValueError, match="at least two classes"):
        layer_geometry(tiny_llama, one_class, progress=False)
    with pytest.raises(ValueError, match="mode"):
        task_vector_experiment(tiny_llama, tiny_prompts, tiny_prompts, mode="swap", progress=False)
    with pytest.raises(TypeError, match="dict"):
        head_ablation_geometry(tiny_llama, tiny_prompts, heads=[(0, 1)], progress=False)


@pytest.fixture(scope="module")
def tiny_sets(tiny_llama, sentiment_task):
    icl = ih.build_prompts(tiny_llama, sentiment_task, k=2, n=12, seed=0)
    zero = ih.build_prompts(tiny_llama, sentiment_task, k=0, n=12, seed=0)
    return icl, zero


def test_layer_geometry_has_one_row_per_layer_and_metric_and_round_trips(
    tiny_llama, tiny_sets, tmp_path
):
    icl, _ = tiny_sets
    result = layer_geometry(tiny_llama, icl, folds=3, n_boot=30, progress=False)
    L = tiny_llama.cfg.n_layers
    assert len(result.table) == (L + 1) * 8 and set(result.table["condition"]) == {"k=2"}
    assert {"condition", "metric", "value", "ci_low", "ci_high", "n", "layer"} <= set(
        result.table.columns
    )
    assert set(result.tables["onset"]["metric"]) >= {
        "probe_accuracy",
        "mean_diff_cosine - probe_accuracy",
    }
    assert result.settings.prompts == icl.info() and result.settings.folds == 3
    again = ExperimentResult.load(result.save(tmp_path / "r"))
    pd.testing.assert_frame_equal(again.table, result.table)
    assert again.settings == result.settings
    fig = result.plot()
    assert len(fig.data) > 0
    same = layer_geometry(tiny_llama, icl, folds=3, n_boot=30, progress=False)
    pd.testing.assert_frame_equal(same.table, result.table)


def test_task_vector_experiment_reports_behaviour_and_geometry_per_injection_layer(
    tiny_llama, tiny_sets
):
    icl, zero = tiny_sets
    result = task_vector_experiment(
        tiny_llama, icl, zero, layers=[0, 1], scales=[0.0, 1.0], folds=3, n_boot=30, progress=False
    )
    t = result.table
    assert set(t["condition"]) == {"zero_shot", "icl", "task_vector x0", "task_vector x1"}
    assert {"accuracy", "label_space_rate", "mean_diff_cosine", "probe_accuracy"} <= set(
        t["metric"]
    )
    # scale 0 changes nothing: the same numbers as the zero-shot baseline
    for layer in (0, 1):
        for metric in ("accuracy", "logit_diff", "mean_diff_cosine", "probe_accuracy"):
            assert result.value("task_vector x0", metric, layer=layer) == pytest.approx(
                result.value("zero_shot", metric, layer=layer)
            )
    effect = result.tables["effect"]
    zero_rows = effect[effect["condition"] == "task_vector x0"]
    values = zero_rows["value"].dropna().to_numpy()  # in-space accuracy may be undefined
    assert len(values) > 10 and np.allclose(values, 0.0)


def test_head_ablation_geometry_compares_named_sets_with_layer_matched_random_sets(
    tiny_llama, tiny_sets
):
    icl, _ = tiny_sets
    heads = {"PTH": [(0, 1)], "IH": [(1, 2), (1, 3)]}
    result = head_ablation_geometry(
        tiny_llama, icl, heads, n_random=2, folds=3, n_boot=30, progress=False
    )
    assert result.conditions == ["baseline", "PTH", "random_PTH", "IH", "random_IH"]
    sets = result.tables["heads"]
    named = {(1, 2), (1, 3), (0, 1)}
    for (condition, _), rows in sets.groupby(["condition", "set"]):
        got = set(zip(rows["layer"], rows["head"]))
        if condition.startswith("random"):
            assert not got & named
            want = heads[condition[len("random_") :]]
            assert sorted(layer for layer, _ in got) == sorted(layer for layer, _ in want)
    summary = result.tables["summary"]
    assert set(summary["span"]) == {"early", "late"}
    assert result.settings.heads["IH"] == ("L1H2", "L1H3")


def test_default_head_sets_are_the_top_previous_token_and_induction_heads(tiny_llama, tiny_sets):
    icl, _ = tiny_sets
    result = head_ablation_geometry(
        tiny_llama, icl, n_random=1, layers=[0, 2], folds=3, n_boot=20, progress=False
    )
    assert set(result.maps) == {"PTH", "IH"}
    assert result.settings.heads["PTH"] == tuple(str(h) for h in result.maps["PTH"].top(1))
    assert result.settings.top_k == 1 and set(result.table["layer"]) == {0, 2}
    with pytest.raises(ValueError, match="names"):
        head_ablation_geometry(tiny_llama, icl, {"baseline": [(0, 1)]}, progress=False)


def test_verdicts_follow_the_interval_and_the_reference():
    assert judge(0.5, 0.2, 0.8, sign=+1, null=0.0) == "holds"
    assert judge(-0.5, -0.8, -0.2, sign=+1, null=0.0) == "does not hold"
    assert judge(0.1, -0.1, 0.3, sign=+1, null=0.0) == "unclear"
    assert judge(0.4, 0.3, 0.5, sign=-1, null=0.6) == "holds"
    assert judge(math.nan, 0, 1, sign=+1, null=0) == "unclear"


def test_reproduce_saves_resumes_and_the_page_is_written_from_saved_results(tiny_llama, tmp_path):
    out = tmp_path / "data"
    first = reproduce_geometry(tiny_llama, ["sentiment"], out, quick=True, progress=False, n=12)
    assert set(first["status"]) == {"computed"} and len(first) == 4
    again = reproduce_geometry(tiny_llama, ["sentiment"], out, quick=True, progress=False, n=12)
    assert set(again["status"]) == {"loaded"}
    verdicts = geometry_verdicts(out)
    assert len(verdicts) == 5
    # the whole vocabulary (held-out selection at n=12 can leave a degenerate cell untestable)
    assert set(verdicts["verdict"]) <= set(VERDICTS)
    page = write_geometry_page(out, tmp_path / "docs" / "geometry.md", tmp_path / "docs" / "fig")
    text = page.read_text()
    assert "## Verdicts" in text and "Key numbers" in text
    figures = tmp_path / "docs" / "fig"
    assert (figures / f"{tiny_llama.cfg.model_name}__sentiment__curves.html").is_file()
    assert (figures / "plotly.min.js").is_file()
    assert 'src="fig/' in text
    with pytest.raises(FileNotFoundError, match="reproduce_geometry"):
        write_geometry_page(tmp_path / "nothing", tmp_path / "p.md", tmp_path / "f")


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_on_the_default_model_sentiment_becomes_separable_before_the_last_layer(smol):
    torch.set_num_threads(1)
    prompts = ih.build_prompts(smol, ih.load_task("sentiment"), k=4, n=24, seed=0)
    result = layer_geometry(smol, prompts, folds=3, n_boot=50, progress=False)
    acc = result.select(metric="probe_accuracy").set_index("layer")["value"]
    assert acc.loc[0] <= 0.6  # the query token is the same for every prompt
    assert acc.max() >= 0.75


# ---- H9: head_ablation_geometry shares the clean pass (issue 21 item 5)


def _per_condition_reference(model, prompts, result, *, mode, positions, background=()):
    """The straightforward path: one full pass and one measurement per condition (every
    head set of ``result.tables["heads"]``), random sets pooled as the experiment does."""
    from icl_heads.experiments.geometry.curves import curve_rows, measure_geometry, pool_sets
    from icl_heads.geometry import run_query

    s = result.settings
    layers = list(s.layers)
    geo = dict(folds=s.folds, seed=s.seed, n_boot=s.n_boot, C=s.C)
    means = ih.activation_means(model, prompts, progress=False) if mode == "mean" else None

    def measure(heads):
        ivs = (
            [
                ih.ablate(
                    model,
                    heads,
                    mode,
                    positions,
                    means=means,
                    reference=prompts,
                    seed=s.seed,
                    progress=False,
                )
            ]
            if heads
            else []
        )
        states, _ = run_query(
            model, prompts, layers, interventions=[*background, *ivs], progress=False
        )
        return measure_geometry(model, prompts, states, layers, **geo)

    rows = curve_rows(measure([]), "baseline")
    sets = result.tables["heads"]
    for name in dict.fromkeys(sets["condition"]):
        mine = sets[sets["condition"] == name]
        curves = [
            measure(list(zip(g["layer"], g["head"], strict=True)))
            for _, g in mine.groupby("set", sort=True)
        ]
        rows += curve_rows(
            pool_sets(curves, s.seed) if name.startswith("random") else curves[0], name
        )
    return pd.DataFrame(rows)


def _assert_same_tables(got: pd.DataFrame, want: pd.DataFrame) -> None:
    keys = ["condition", "metric", "layer"]
    merged = got.merge(want, on=keys, suffixes=("", "_ref"), validate="one_to_one")
    assert len(merged) == len(got) == len(want)
    for col in ("value", "ci_low", "ci_high"):
        a, b = merged[col].to_numpy(float), merged[f"{col}_ref"].to_numpy(float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        ok = ~np.isnan(a)
        assert np.abs(a[ok] - b[ok]).max() <= 1e-6, (col, merged[~np.isclose(a, b)])


@pytest.mark.parametrize(
    ("kind", "mode", "positions"),
    [("llama", "zero", "all"), ("gpt", "mean", "query"), ("llama", "resample", "all")],
)
def test_shared_clean_pass_gives_the_numbers_of_one_pass_per_condition(
    smol_tokenizer, sentiment_task, kind, mode, positions
):
    from conftest import make_tiny_model

    model = make_tiny_model(smol_tokenizer, kind=kind, n_layers=3)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=12, seed=0)
    heads = {"PTH": [(1, 0), (2, 2)], "IH": [(2, 1)]}
    result = head_ablation_geometry(
        model,
        prompts,
        heads,
        n_random=1,
        mode=mode,
        positions=positions,
        folds=3,
        n_boot=40,
        batch_size=5,
        progress=False,
    )
    want = _per_condition_reference(model, prompts, result, mode=mode, positions=positions)
    _assert_same_tables(result.table, want)


def test_shared_clean_pass_keeps_background_interventions_in_every_run(
    smol_tokenizer, sentiment_task
):
    from conftest import make_tiny_model

    model = make_tiny_model(smol_tokenizer, kind="llama", n_layers=3)
    prompts = ih.build_prompts(model, sentiment_task, k=2, n=12, seed=0)
    background = [ih.ablate(model, [(0, 3)], "zero")]
    heads = {"IH": [(1, 1)]}
    result = head_ablation_geometry(
        model,
        prompts,
        heads,
        n_random=1,
        folds=3,
        n_boot=30,
        batch_size=4,
        interventions=background,
        progress=False,
    )
    want = _per_condition_reference(
        model, prompts, result, mode="zero", positions="all", background=background
    )
    _assert_same_tables(result.table, want)
    # states before the first ablated block are the clean ones
    t = result.table
    early = t[t["layer"] <= 1]
    base = early[early["condition"] == "baseline"].set_index(["metric", "layer"])["value"]
    ih_rows = early[early["condition"] == "IH"].set_index(["metric", "layer"])["value"]
    pd.testing.assert_series_equal(base, ih_rows, check_names=False)


def test_ablated_runs_restart_at_their_first_ablated_block(tiny_llama, tiny_sets):
    icl, _ = tiny_sets
    rows = {0: 0, 1: 0}
    handles = [
        tiny_llama.blocks[i].register_forward_hook(
            lambda module, args, out, i=i: rows.__setitem__(i, rows[i] + out.shape[0])
        )
        for i in (0, 1)
    ]
    try:
        head_ablation_geometry(
            tiny_llama, icl, {"IH": [(1, 2)]}, n_random=2, folds=3, n_boot=10, progress=False
        )
    finally:
        for h in handles:
            h.remove()
    n = len(icl)
    assert rows[0] == n  # block 0: the clean pass only, shared by the 3 ablated runs
    assert rows[1] == 4 * n  # block 1: the clean pass and each ablated run


def test_models_the_restart_engine_cannot_run_fall_back_to_full_passes(
    tiny_llama, tiny_sets, monkeypatch
):
    from icl_heads.experiments.geometry import shared_runs

    icl, _ = tiny_sets
    opts = dict(n_random=1, layers=[0, 1, 2], folds=3, n_boot=20, progress=False)
    fast = head_ablation_geometry(tiny_llama, icl, {"IH": [(1, 2)]}, **opts)

    def refuse(model):
        raise ValueError("shortformer")

    monkeypatch.setattr(shared_runs, "check_supported", refuse)
    slow = head_ablation_geometry(tiny_llama, icl, {"IH": [(1, 2)]}, **opts)
    _assert_same_tables(fast.table, slow.table)


# ---- H5: the geometry grid's design of issue 18 (sensitivity mode, held-out, seeds)


def test_head_ablation_sensitivity_rows_leave_the_main_rows_unchanged(tiny_llama, tiny_sets):
    icl, _ = tiny_sets
    heads = {"PTH": [(0, 1)], "IH": [(1, 2)]}
    kwargs = dict(n_random=2, folds=3, n_boot=30, layers=[0, 1, 2], progress=False)
    plain = head_ablation_geometry(tiny_llama, icl, heads, **kwargs)
    both = head_ablation_geometry(tiny_llama, icl, heads, sensitivity_mode="mean", **kwargs)
    assert both.conditions == [*plain.conditions, "PTH (mean)", "random_PTH (mean)",
                               "IH (mean)", "random_IH (mean)"]  # fmt: skip
    for key in ("table", "summary", "effect"):
        new = both.table if key == "table" else both.tables[key]
        old = plain.table if key == "table" else plain.tables[key]
        kept = new[~new["condition"].str.endswith("(mean)")].reset_index(drop=True)
        pd.testing.assert_frame_equal(kept, old, obj=key)
    assert both.settings.sensitivity_mode == "mean" and plain.settings.sensitivity_mode is None
    # the mean rows are mean ablation: the same as a main-mode mean call
    mean = head_ablation_geometry(tiny_llama, icl, heads, mode="mean", **kwargs)
    t = both.table[both.table["condition"] == "IH (mean)"]["value"].to_numpy()
    want = mean.table[mean.table["condition"] == "IH"]["value"].to_numpy()
    np.testing.assert_allclose(t, want, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="sensitivity_mode='zero'"):
        head_ablation_geometry(tiny_llama, icl, heads, sensitivity_mode="zero", **kwargs)


def test_geometry_grid_defaults_to_the_heldout_design(tiny_llama, sentiment_task, tmp_path):
    from icl_heads.experiments import geometry, kit
    from icl_heads.experiments.splits import heldout_split, split_prompts

    assert geometry.FULL.n == 256 and geometry.FULL.n_seeds == 3 and geometry.QUICK.n_seeds == 1
    assert geometry.MAIN.heldout and geometry.MAIN.sensitivity_mode == "mean"
    out = tmp_path / "data"
    cells = reproduce_geometry(tiny_llama, ["sentiment"], out, quick=True, progress=False, n=12,
                               n_seeds=2)  # fmt: skip
    assert sorted(set(cells["seed"])) == [0, 1] and len(cells) == 8
    for seed in (0, 1):
        done = kit.load_cells(out / f"seed{seed}")[tiny_llama.cfg.model_name]["sentiment"]
        split = heldout_split(sentiment_task, 0.5, seed)
        sel = split_prompts(tiny_llama, sentiment_task, 4, 12, seed, split=split, part="selection")
        ev0 = split_prompts(tiny_llama, sentiment_task, 0, 12, seed, split=split,
                            part="evaluation")  # fmt: skip
        tv = done["task_vector"].settings
        assert tv.icl_prompts.prompts_digest == sel.info().prompts_digest
        assert tv.zero_shot_prompts.prompts_digest == ev0.info().prompts_digest
        abl = done["head_ablation"]
        assert abl.settings.reference.prompts_digest == sel.info().prompts_digest
        assert abl.settings.sensitivity_mode == "mean" and "IH (mean)" in abl.conditions
        assert abl.request["heldout"] == {"fraction": 0.5, "seed": seed}
        assert "heldout" not in done["layer_geometry_k4"].request
    # the page of the two seeds pools them and says what the design changed
    text = write_geometry_page(out, tmp_path / "g.md", tmp_path / "fig").read_text()
    assert "**Prompt seeds: 0, 1.**" in text and "designs changed too" in text
    # the first design's requests are the grid's requests before the design existed
    legacy = reproduce_geometry(tiny_llama, ["sentiment"], tmp_path / "legacy", quick=True,
                                progress=False, n=12, design=geometry.LEGACY)  # fmt: skip
    request = ExperimentResult.load(legacy["path"].iloc[3]).request
    assert "heldout" not in request and "sensitivity_mode" not in request
    assert list(legacy["seed"]) == [0] * 4
    legacy_page = write_geometry_page(tmp_path / "legacy", tmp_path / "l.md", tmp_path / "lf")
    assert "designs changed too" not in legacy_page.read_text()
    with pytest.raises(TypeError, match="geometry Design"):
        reproduce_geometry(tiny_llama, ["sentiment"], tmp_path, design="main")
