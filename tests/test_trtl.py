"""The TR/TL paper's experiments (icl_heads.experiments.trtl): table contract, random control
sets, exactness of the shared clean runs, bad inputs, saving, verdicts and the results page.

Tiny models throughout; one slow test runs the quick reproduction on the default model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.attribution import label_unembeddings
from icl_heads.experiments import kit, trtl
from icl_heads.experiments.trtl import reproduce
from icl_heads.geometry import normalized_states, query_states, subspace_alignment
from icl_heads.pages.trtl import write_trtl_page
from icl_heads.results import TABLE_COLUMNS, ExperimentResult, make_table, table_row
from icl_heads.stats import paired_difference_ci

N_BOOT = 50


@pytest.fixture(scope="module")
def found(tiny_llama, tiny_prompts):
    return trtl.find_task_heads(tiny_llama, tiny_prompts, n_boot=N_BOOT, progress=False)


@pytest.fixture(scope="module")
def ablation(tiny_llama, tiny_prompts):
    return trtl.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"TR": [(1, 0)], "TL": [(1, 2)], "none": []},
        n_random=2,
        n_boot=N_BOOT,
        progress=False,
    )


@pytest.fixture(scope="module")
def zero_shot(tiny_llama, sentiment_task):
    return ih.build_prompts(tiny_llama, sentiment_task, k=0, n=10, seed=1)


@pytest.fixture(scope="module")
def steering(tiny_llama, tiny_prompts, zero_shot):
    return trtl.steering_experiment(
        tiny_llama,
        tiny_prompts,
        zero_shot,
        {"TR": [(1, 0)], "TL": [(0, 2), (1, 2)]},
        (0, 1, 3),
        n_random=2,
        n_boot=N_BOOT,
        progress=False,
    )


def _columns_ok(result: ExperimentResult) -> None:
    assert list(result.table.columns[:6]) == list(TABLE_COLUMNS)
    assert len(result.table) > 0
    assert result.settings.model == result.settings.to_dict()["model"]


# ----------------------------------------------------------------------------- find heads


def test_find_task_heads_gives_maps_sets_overlap_and_baseline(found, tiny_llama, tiny_prompts):
    _columns_ok(found)
    tr, tl = ih.tsla_scores(tiny_llama, tiny_prompts, progress=False)
    assert torch.equal(found.maps["TR"].scores, tr.scores)
    assert torch.equal(found.maps["TL"].scores, tl.scores)
    sets = trtl.head_sets(found)
    assert sets == {"TR": tr.top(), "TL": tl.top()}
    assert len(sets["TR"]) == 1  # 3% of 8 heads, at least 1
    overlap = found.value("TR∩TL", "overlap")
    assert overlap == len(set(sets["TR"]) & set(sets["TL"])) / 1
    # the baseline comes from the same pass as the maps and equals a plain evaluate
    plain = ih.evaluate(tiny_llama, tiny_prompts, progress=False)
    for metric in ("accuracy", "label_space_rate", "logit_diff"):
        assert found.value("baseline", metric) == pytest.approx(
            float(plain[metric].iloc[0]), abs=1e-6
        )
    assert found.settings.prompts == tiny_prompts.info()
    assert found.maps["TR"].settings.interventions == ()


def test_ablation_random_sets_never_contain_evaluated_heads(ablation, tiny_llama, tiny_prompts):
    random_sets = ablation.tables["random_sets"]
    evaluated = {"L1H0", "L1H2"}
    for heads in random_sets["heads"]:
        assert not set(heads.split()) & evaluated
    assert (random_sets["layer_matched_fraction"] == 1.0).all()
    again = trtl.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"TR": [(1, 0)], "TL": [(1, 2)], "none": []},
        n_random=2,
        n_boot=N_BOOT,
        progress=False,
    )
    pd.testing.assert_frame_equal(again.table, ablation.table)
    pd.testing.assert_frame_equal(again.tables["random_sets"], ablation.tables["random_sets"])


# ----------------------------------------------------------------------------- ablation


def test_ablation_table_has_levels_effects_contrasts_and_chance(ablation):
    _columns_ok(ablation)
    t = ablation.table
    assert set(t["kind"]) == {"level", "effect", "contrast"}
    for condition in ("baseline", "TR", "TL", "random_TR", "random_TL"):
        for metric in trtl.BEHAVIOUR:
            assert len(ablation.select(condition=condition, metric=metric)) == 1
    assert ablation.value("baseline", "chance") == 0.5
    for condition in ("TR - random_TR", "TL - random_TL", "TR - TL", "TL - TR"):
        assert len(ablation.select(condition=condition, metric="delta_logit_diff")) == 1
    row = ablation.select(condition="random_TR", metric="logit_diff").iloc[0]
    assert row["set_min"] <= row["value"] <= row["set_max"]


def test_ablating_an_empty_set_reproduces_the_baseline_exactly(ablation):
    t = ablation.table
    base = t[(t["condition"] == "baseline") & (t["metric"] != "chance")]
    empty = t[(t["condition"] == "none") & (t["kind"] == "level")]
    np.testing.assert_array_equal(
        base[["value", "ci_low", "ci_high", "n"]].to_numpy(),
        empty[["value", "ci_low", "ci_high", "n"]].to_numpy(),
    )
    effects = t[(t["condition"] == "none") & (t["kind"] == "effect")]
    assert (effects["value"].dropna() == 0).all()


@pytest.mark.parametrize("positions", ["all", "query"])
def test_ablation_shared_clean_run_equals_a_plain_ablated_run(tiny_gpt, sentiment_task, positions):
    prompts = ih.build_prompts(tiny_gpt, sentiment_task, k=3, n=9, seed=2)
    heads = [(0, 1), (1, 3)]
    res = trtl.ablation_experiment(
        tiny_gpt,
        prompts,
        {"S": heads},
        n_random=1,
        positions=positions,
        n_boot=N_BOOT,
        batch_size=4,
        progress=False,
    )
    means = ih.activation_means(tiny_gpt, prompts, positions=positions, progress=False)
    iv = ih.ablate(tiny_gpt, heads, "mean", positions, means=means)
    plain = ih.evaluate(tiny_gpt, prompts, interventions=[iv], progress=False)
    for metric in ("accuracy", "label_space_rate", "logit_diff"):
        assert res.value("S", metric) == pytest.approx(float(plain[metric].iloc[0]), abs=1e-5)
    assert res.settings.means == prompts.info()


def test_effects_are_paired_differences():
    t = torch.tensor([1.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.0, 0.0, 1.0, 0.0])
    rows = kit.effect_rows(
        "S", {"accuracy": t}, {"accuracy": b}, n_boot=200, seed=1, metrics=("accuracy",)
    )
    assert tuple(rows[0][c] for c in ("value", "ci_low", "ci_high", "n")) == paired_difference_ci(
        t, b, n_boot=200, seed=1
    )
    t_nan = torch.tensor([1.0, math.nan, 0.0, 1.0])
    v, lo, hi, _ = paired_difference_ci(t_nan, b, n_boot=200, seed=1)
    assert v == pytest.approx(2 / 3 - 1 / 4) and lo <= v <= hi


# ----------------------------------------------------------------------------- steering


def test_alpha_zero_steering_reproduces_the_baseline_exactly(steering):
    _columns_ok(steering)
    t = steering.table
    base = t[(t["condition"] == "baseline") & (t["metric"] != "chance")]
    for condition in ("TR", "TL", "random_TR", "random_TL"):
        rows = t[(t["condition"] == condition) & (t["alpha"] == 0) & (t["kind"] == "level")]
        cols = ["metric", "value", "ci_low", "ci_high", "n"]
        pd.testing.assert_frame_equal(
            rows[cols].reset_index(drop=True), base[cols].reset_index(drop=True)
        )
    geo = steering.tables["geometry"]
    g0 = geo[(geo["condition"] == "baseline")].reset_index(drop=True)
    gtr = geo[(geo["condition"] == "TR") & (geo["alpha"] == 0)].reset_index(drop=True)
    pd.testing.assert_series_equal(g0["value"], gtr["value"])


def test_steering_baseline_and_steered_runs_equal_plain_runs(
    steering, tiny_llama, tiny_prompts, zero_shot
):
    plain = ih.evaluate(tiny_llama, zero_shot, progress=False)
    assert steering.value("baseline", "logit_diff", alpha=0.0) == pytest.approx(
        float(plain["logit_diff"].iloc[0]), abs=1e-5
    )
    vectors = ih.activation_means(tiny_llama, tiny_prompts, progress=False).outputs(tiny_llama)
    iv = ih.compose(
        *[
            ih.steer(tiny_llama, vectors[layer, head], head=(layer, head), alpha=3.0)
            for layer, head in [(0, 2), (1, 2)]
        ]
    )
    steered = ih.evaluate(tiny_llama, zero_shot, interventions=[iv], progress=False)
    assert steering.value("TL", "logit_diff", alpha=3.0) == pytest.approx(
        float(steered["logit_diff"].iloc[0]), abs=1e-5
    )
    # geometry of the final state, recomputed from a plain run
    states = query_states(
        tiny_llama, zero_shot, tiny_llama.cfg.n_layers, interventions=[iv], progress=False
    )[:, 0]
    dirs = label_unembeddings(tiny_llama, zero_shot.label_token_ids)
    align = subspace_alignment(normalized_states(tiny_llama, states), dirs).mean()
    assert steering.value("TL", "alignment", alpha=3.0) == pytest.approx(float(align), abs=1e-5)
    geo = steering.tables["geometry"]
    assert sorted(set(geo["layer"])) == [0, 1]  # from the earliest steered layer on
    assert set(steering.tables["random_sets"]["set"]) == {"TR", "TL"}


def test_steering_table_has_overall_accuracy_and_continuous_metric_rows(steering):
    """Overall accuracy sits beside in-space accuracy; label_mass and gold_margin (issue 18
    item 6) are new rows of every condition and alpha, after the older metrics."""
    t = steering.table
    for condition in ("baseline", "TR", "TL", "random_TR", "random_TL"):
        metrics = list(t[(t["condition"] == condition) & (t["kind"] == "level")]["metric"])
        for m in ("accuracy", "in_space_accuracy", "label_mass", "gold_margin"):
            assert m in metrics, (condition, m)
        assert metrics.index("label_mass") > metrics.index("rotation")
    effects = set(t[t["kind"] == "effect"]["metric"])
    assert {"delta_accuracy", "delta_label_mass", "delta_gold_margin"} <= effects
    contrasts = set(t[t["kind"] == "contrast"]["metric"])
    assert {"delta_label_mass", "delta_gold_margin"} <= contrasts
    mass = t[t["metric"] == "label_mass"]["value"]
    assert ((mass >= 0) & (mass <= 1)).all()


def test_steering_runs_the_alpha_grid_up_to_eight(tiny_llama, tiny_prompts, zero_shot):
    grid = (0, 0.5, 1, 2, 4, 8)
    res = trtl.steering_experiment(
        tiny_llama, tiny_prompts, zero_shot, {"TL": [(1, 2)]}, grid, n_random=1,
        n_boot=N_BOOT, progress=False,
    )  # fmt: skip
    t = res.table
    assert sorted(set(t[t["condition"] == "TL"]["alpha"])) == list(grid)
    assert np.isfinite(t[t["condition"] == "TL"]["value"].dropna()).all()


# ----------------------------------------------------------------------------- correlation


def test_correlation_one_sweep_equals_one_head_sweep_per_metric(tiny_llama, tiny_prompts):
    res = trtl.correlation_experiment(tiny_llama, tiny_prompts, n_boot=N_BOOT, progress=False)
    _columns_ok(res)
    for metric in ("label_space_rate", "in_space_accuracy", "logit_diff"):
        ref = ih.head_sweep(tiny_llama, tiny_prompts, metric, mode="mean", progress=False)
        got = res.maps[f"delta_{metric}"]
        assert torch.equal(
            torch.nan_to_num(ref.per_prompt, 7.0), torch.nan_to_num(got.per_prompt, 7.0)
        )
        assert got.settings.metric == metric
    heads = res.tables["heads"]
    assert len(heads) == 8 and {"tr_score", "tl_score", "delta_logit_diff"} <= set(heads)
    tl = res.maps["TL"].scores.flatten()
    drop = -res.maps["delta_logit_diff"].scores.flatten()
    r = res.value("TL", "spearman_drop_logit_diff")
    assert r == pytest.approx(
        pd.Series(tl.numpy()).corr(pd.Series(drop.numpy()), method="spearman")
    )


# ----------------------------------------------------------------------------- perturbation


def test_perturbation_gives_maps_per_condition_including_zero_shot(tiny_llama, sentiment_task):
    res = trtl.perturbation_experiment(
        tiny_llama,
        ih.build_prompts(tiny_llama, sentiment_task, 3, 8, 0),
        task=sentiment_task,
        n_boot=N_BOOT,
        progress=False,
    )
    _columns_ok(res)
    assert set(res.maps) == {f"{s}/{p}" for s in ("TR", "TL") for p in ih.PERTURBATIONS}
    assert res.maps["TR/zero_shot"].settings.prompts.k == 0
    for p in ("random_labels", "abstract_labels", "zero_shot"):
        for metric in ("tr_spearman", "tl_spearman", "tr_overlap", "tr_minus_tl_spearman"):
            assert len(res.select(condition=p, metric=metric, reference="gold")) == 1
    assert len(res.select(condition="gold (split half)", metric="tr_spearman")) == 1
    by_name = trtl.perturbation_experiment(
        tiny_llama,
        ih.build_prompts(tiny_llama, sentiment_task, 3, 8, 0),
        ("gold",),
        n_boot=N_BOOT,
        progress=False,
    )
    assert by_name.value("gold", "accuracy") == res.value("gold", "accuracy")


def test_perturbation_reuses_the_gold_maps_of_find_task_heads_exactly(tiny_llama, sentiment_task):
    gold_prompts = ih.build_prompts(tiny_llama, sentiment_task, 3, 8, 0)
    found = trtl.find_task_heads(tiny_llama, gold_prompts, n_boot=N_BOOT, progress=False)
    plain = trtl.perturbation_experiment(
        tiny_llama, gold_prompts, task=sentiment_task, n_boot=N_BOOT, progress=False
    )
    reused = trtl.perturbation_experiment(
        tiny_llama, gold_prompts, task=sentiment_task, n_boot=N_BOOT, gold=found, progress=False
    )
    pd.testing.assert_frame_equal(reused.table, plain.table)
    for name, scores in plain.maps.items():
        assert torch.equal(reused.maps[name].per_prompt, scores.per_prompt), name
    with pytest.raises(ValueError, match="prompts"):  # other prompts (seed 1)
        trtl.perturbation_experiment(
            tiny_llama,
            ih.build_prompts(tiny_llama, sentiment_task, 3, 8, 1),
            gold=found,
            progress=False,
        )
    with pytest.raises(ValueError, match="normalize"):
        trtl.perturbation_experiment(
            tiny_llama, gold_prompts, gold=found, normalize="norm", progress=False
        )
    with pytest.raises(TypeError, match="find_task_heads"):
        trtl.perturbation_experiment(tiny_llama, gold_prompts, gold=plain, progress=False)


def test_reproduce_shares_passes_without_changing_any_number(tiny_llama, sentiment_task, tmp_path):
    cells = trtl.reproduce_trtl(
        tiny_llama, ["sentiment"], tmp_path, quick=True, progress=False, n=8, n_boot=N_BOOT,
        design=trtl.LEGACY,  # the design of the saved results; MAIN: test_main_grid_...
    )  # fmt: skip
    assert set(cells["status"]) == {"computed"}
    done = {e: ExperimentResult.load(p) for e, p in zip(cells["experiment"], cells["path"])}
    prompts = ih.build_prompts(tiny_llama, sentiment_task, 4, 8, 0)
    found = done["find_task_heads"]
    alone = {
        "ablation": trtl.ablation_experiment(
            tiny_llama, prompts, trtl.head_sets(found), n_random=2, n_boot=N_BOOT, progress=False
        ),
        "perturbation": trtl.perturbation_experiment(
            tiny_llama, prompts, n_boot=N_BOOT, progress=False
        ),
        "correlation": trtl.correlation_experiment(
            tiny_llama,
            prompts,
            tr=found.maps["TR"],
            tl=found.maps["TL"],
            n_boot=N_BOOT,
            progress=False,
        ),
    }
    for name, result in alone.items():  # both through the same save and load
        result = ExperimentResult.load(result.save(tmp_path / "alone" / name))
        pd.testing.assert_frame_equal(done[name].table, result.table, obj=name)
        assert done[name].settings == result.settings, name
    vectors = trtl.mean_head_outputs(tiny_llama, prompts, progress=False)
    steer = trtl.steering_experiment(
        tiny_llama,
        prompts,
        ih.build_prompts(tiny_llama, sentiment_task, 4, 8, 1, perturbation="zero_shot"),
        trtl.head_sets(found),
        (0, 1, 4),
        n_random=2,
        n_boot=N_BOOT,
        vectors=vectors,
        batch_size=64,
        progress=False,
    )
    steer = ExperimentResult.load(steer.save(tmp_path / "alone" / "steering"))
    pd.testing.assert_frame_equal(
        done["steering_zero_shot"].table, steer.table, check_exact=False, atol=1e-5, rtol=1e-4
    )


# ----------------------------------------------------------------------------- reconciliation


def test_reconciliation_pairs_and_task_vector(tiny_llama, tiny_prompts, found):
    res = trtl.reconciliation_experiment(
        tiny_llama,
        tiny_prompts,
        tr=found.maps["TR"],
        tl=found.maps["TL"],
        T=10,
        n_sequences=4,
        n_boot=N_BOOT,
        progress=False,
    )
    _columns_ok(res)
    for cond in ("TL vs induction", "TL vs label_attention", "TR vs previous_token"):
        assert len(res.select(condition=cond, metric="top_k_overlap")) == 1
        assert res.value(cond, "chance_overlap") == 1 / 8
    tv = res.tables["task_vector"]
    assert sorted(set(tv["layer"])) == [0, 1, 2]
    share = tv[tv["metric"] == "task_subspace_share"]["value"]
    assert ((share >= 0) & (share <= 1)).all()
    assert res.settings.task_vector_layer == 1


# ----------------------------------------------------------------------------- saving


def test_results_round_trip_through_save_and_load(ablation, steering, found, tmp_path):
    for res in (ablation, steering, found):
        loaded = ExperimentResult.load(res.save(tmp_path / res.name))
        assert loaded.settings == res.settings
        pd.testing.assert_frame_equal(
            loaded.table.fillna(""), res.table.fillna(""), check_dtype=False
        )
        assert set(loaded.tables) == set(res.tables)
    assert trtl.head_sets(ExperimentResult.load(tmp_path / "ablation")) == {
        "TR": [ih.Head(1, 0)],
        "TL": [ih.Head(1, 2)],
        "none": [],
    }


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda m, p, z: trtl.ablation_experiment(m, p, {"TR": [(0, 0)] * 9}),
            ValueError,
            "more than the model",
        ),
        (
            lambda m, p, z: trtl.ablation_experiment(m, p, {"TR": [(5, 0)]}),
            ValueError,
            "out of range",
        ),
        (
            lambda m, p, z: trtl.ablation_experiment(m, p, {"TR": [(0, 0), (0, 0)]}),
            ValueError,
            "more than once",
        ),
        (lambda m, p, z: trtl.ablation_experiment(m, p, [(0, 0)]), TypeError, "mapping"),
        (
            lambda m, p, z: trtl.ablation_experiment(m, p, {"TR": [(0, 0)]}, n_random=0),
            ValueError,
            "n_random=0",
        ),
        (
            lambda m, p, z: trtl.ablation_experiment(m, p, {"TR": [(0, 0)]}, seed=0.5),
            TypeError,
            "seed",
        ),
        (
            lambda m, p, z: trtl.ablation_experiment(m, p, {"TR": [(0, 0)]}, mode="max"),
            ValueError,
            "mode",
        ),
        (
            lambda m, p, z: trtl.ablation_experiment(
                m, p, {"TR": [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]}
            ),
            ValueError,
            "free",
        ),
        (
            lambda m, p, z: trtl.steering_experiment(m, z, z, {"TR": [(0, 0)]}),
            ValueError,
            "no demonstrations",
        ),
        (
            lambda m, p, z: trtl.steering_experiment(m, p, z, {"TR": [(0, 0)]}, alphas="big"),
            TypeError,
            "alphas",
        ),
        (
            lambda m, p, z: trtl.steering_experiment(m, p, z, {"TR": [(0, 0)]}, n_random=0),
            ValueError,
            "n_random=0",
        ),
        (
            lambda m, p, z: trtl.steering_experiment(
                m, p, z, {"TR": [(0, 0)]}, vectors=torch.zeros(2, 4, 5)
            ),
            ValueError,
            "vectors",
        ),
        (lambda m, p, z: trtl.reconciliation_experiment(m, z), ValueError, "no demonstrations"),
        (lambda m, p, z: trtl.find_task_heads(m, p, top_k=9), ValueError, "exceeds"),
        (lambda m, p, z: trtl.find_task_heads(m, p, seed=1.0), TypeError, "seed"),
        (
            lambda m, p, z: trtl.perturbation_experiment(m, p, ("random_labels",)),
            ValueError,
            "gold",
        ),
        (lambda m, p, z: trtl.perturbation_experiment(m, z), ValueError, "no demonstrations"),
        (
            lambda m, p, z: trtl.correlation_experiment(m, p, tr=torch.zeros(2, 4)),
            ValueError,
            "HeadScores",
        ),
        (lambda m, p, z: trtl.random_head_sets(m, [(0, 0)], 2, seed=1.5), TypeError, "seed"),
        (lambda m, p, z: trtl.reproduce_trtl(m, [], "out"), TypeError, "tasks"),
    ],
)
def test_bad_input_gives_a_clear_error(tiny_llama, tiny_prompts, zero_shot, call, error, match):
    with pytest.raises(error, match=match):
        call(tiny_llama, tiny_prompts, zero_shot)


def test_perturbation_takes_the_gold_prompts_and_their_task(tiny_llama, sentiment_task):
    shuffled = ih.build_prompts(tiny_llama, sentiment_task, 3, 8, 0, perturbation="random_labels")
    with pytest.raises(ValueError, match="gold prompts"):
        trtl.perturbation_experiment(tiny_llama, shuffled, progress=False)
    mine = ih.make_task("mine", [(f"input {i}", ["good", "bad"][i % 2]) for i in range(12)])
    prompts = ih.build_prompts(tiny_llama, mine, 3, 8, 0)
    with pytest.raises(ValueError, match=r"pass task=\.\.\."):
        trtl.perturbation_experiment(tiny_llama, prompts, progress=False)
    res = trtl.perturbation_experiment(
        tiny_llama, prompts, ("gold", "random_labels"), task=mine, n_boot=N_BOOT, progress=False
    )
    assert res.settings.task == "mine" and res.settings.n == 8 and res.settings.k == 3


def test_random_sets_can_be_turned_off(tiny_llama, tiny_prompts):
    res = trtl.ablation_experiment(
        tiny_llama,
        tiny_prompts,
        {"TR": [(1, 0)]},
        n_random=0,
        random_like=(),
        n_boot=N_BOOT,
        progress=False,
    )
    assert "random_TR" not in res.conditions and res.tables["random_sets"].empty


# ----------------------------------------------------------------------------- verdicts


def _result(name: str, rows: list[dict]) -> ExperimentResult:
    settings = ih.PromptInfo(task="t", k=4, n=10, seed=0, perturbation="gold")
    return ExperimentResult(name, make_table(rows), settings)


@pytest.mark.parametrize(
    "ci, verdict",
    [
        ((-0.3, -0.2), "holds"),
        ((0.1, 0.2), "does not hold"),
        ((-0.1, 0.1), "unclear"),
        ((0.0, 0.0), "does not hold"),
    ],
)
def test_verdicts_follow_the_confidence_intervals(ci, verdict):
    lo, hi = ci
    rows = [
        table_row(c, "delta_label_space_rate", (lo + hi) / 2, lo, hi, 10)
        for c in ("TR - TL", "TR - random_TR")
    ]
    got = trtl.claim_verdict("tr_ablation_label_space", {"ablation": _result("ablation", rows)})
    assert got["verdict"] == verdict
    missing = trtl.claim_verdict("tr_ablation_label_space", {})
    assert missing["verdict"] == "unclear"


def test_overlap_verdict_compares_with_the_chance_row():
    rows = [
        table_row("TL vs induction", "top_k_overlap", 0.5, 0.25, 0.75, 8),
        table_row("TL vs induction", "chance_overlap", 0.3, 0.3, 0.3, 8),
    ]
    got = trtl.claim_verdict(
        "tl_induction_overlap", {"reconciliation": _result("reconciliation", rows)}
    )
    assert got["verdict"] == "unclear" and got["tests"][0]["null"] == 0.3


# ----------------------------------------------------------------------------- reproduce + page


def test_quick_reproduce_is_resumable_and_writes_the_page(tiny_llama, tmp_path, monkeypatch):
    out = tmp_path / "data"
    first = trtl.reproduce_trtl(
        tiny_llama, ["sentiment"], out, quick=True, progress=False, n=8, n_boot=N_BOOT,
        design=trtl.LEGACY,  # MAIN's cells: test_main_grid_is_resumable_and_writes_the_page
    )  # fmt: skip
    cells = sorted(p.parent.name for p in out.glob("*/sentiment/*/result.json"))
    assert cells == sorted(e for e in trtl.EXPERIMENTS if e != "steering_abstract_labels")
    assert sorted(first["experiment"]) == cells and set(first["status"]) == {"computed"}

    def refuse(*args, **kwargs):
        raise AssertionError("a saved cell was recomputed")

    for fn in (
        "find_task_heads",
        "ablation_experiment",
        "perturbation_experiment",
        "correlation_experiment",
        "steering_experiment",
        "reconciliation_experiment",
    ):
        monkeypatch.setattr(reproduce, fn, refuse)  # the names reproduce_trtl calls
    second = trtl.reproduce_trtl(
        tiny_llama, ["sentiment"], out, quick=True, progress=False, n=8, n_boot=N_BOOT,
        design=trtl.LEGACY,
    )  # fmt: skip
    assert set(second["status"]) == {"loaded"}
    pd.testing.assert_frame_equal(
        second[["model", "task", "experiment", "path"]],
        first[["model", "task", "experiment", "path"]],
    )
    saved = kit.load_cells(out)[tiny_llama.cfg.model_name]["sentiment"]
    assert saved["find_task_heads"].maps["TR"].per_prompt is None  # saved compact
    page = write_trtl_page(out, tmp_path / "page.md", tmp_path / "figures")
    text = page.read_text()
    assert "## Verdicts" in text
    for statement in trtl.CLAIMS.values():
        assert statement in text
    figures = list((tmp_path / "figures").glob("*.html"))
    assert len(figures) == len(cells)
    verdicts = trtl.trtl_verdicts(out)
    assert set(verdicts["verdict"]) <= set(trtl.VERDICTS)
    assert len(verdicts) == 2 * len(trtl.CLAIMS)


@pytest.mark.slow
def test_quick_reproduce_on_the_default_model(smol, tmp_path):
    torch.set_num_threads(1)
    trtl.reproduce_trtl(smol, ["sentiment"], tmp_path, quick=True, progress=False)
    results = {"sentiment": next(iter(kit.load_cells(tmp_path).values()))["sentiment"]}
    found = results["sentiment"]["find_task_heads"]
    assert len(trtl.head_sets(found)["TR"]) == 8
    abl = results["sentiment"]["ablation"]
    assert abl.value("baseline", "label_space_rate") > 0.5
    page = write_trtl_page(tmp_path, tmp_path / "page.md", tmp_path / "fig")
    assert "smollm2" in page.read_text()


def test_mean_head_outputs_are_the_heads_mean_output_at_the_query(tiny_llama, tiny_prompts):
    vectors = trtl.mean_head_outputs(tiny_llama, tiny_prompts, progress=False)
    expected = ih.activation_means(tiny_llama, tiny_prompts, progress=False).outputs(tiny_llama)
    torch.testing.assert_close(vectors, expected.float(), atol=1e-5, rtol=1e-5)


def test_every_result_plots(found, ablation, steering):
    for res in (found, ablation, steering):
        assert res.plot().data
