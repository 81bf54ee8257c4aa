"""Verdict rules (icl_heads.experiments.verdict_rules) and the claim verdicts of both
families on synthetic saved tables: one case per verdict category (holds, does not hold,
untestable of each kind, no effect larger than the margin, unclear), pooling over tasks,
the noise-corrected stability statistic, the steering α-grid rule and the task-vector
rules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import icl_heads as ih
from icl_heads.experiments import kit, trtl
from icl_heads.experiments import verdict_rules as vr
from icl_heads.experiments.geometry.curves import ALIGNMENT, SEPARABILITY
from icl_heads.experiments.geometry.verdicts import (
    geometry_claim_verdict,
    geometry_pooled_verdicts,
    geometry_verdicts,
    preregistered_layer,
)
from icl_heads.experiments.trtl.verdicts import STABILITY_METRIC
from icl_heads.results import ExperimentResult, make_table, table_row
from icl_heads.settings import Settings


@dataclass(frozen=True)
class VerdictTestSettings(Settings):
    """Settings with head sets, as the saved TR/TL results have."""

    heads: tuple = ()


def _result(name: str, rows: list[dict], heads: tuple = (), **tables) -> ExperimentResult:
    settings = (
        VerdictTestSettings(heads=heads)
        if heads
        else ih.PromptInfo(task="t", k=4, n=10, seed=0, perturbation="gold")
    )
    return ExperimentResult(name, make_table(rows), settings, tables=tables)


# ----------------------------------------------------------------------------- one statistic


@pytest.mark.parametrize(
    "ci, verdict",
    [
        ((-0.3, -0.2), vr.HOLDS),
        ((0.1, 0.2), vr.DOES_NOT_HOLD),
        ((-0.1, 0.1), vr.UNCLEAR),
        ((-0.03, 0.02), vr.NO_LARGER_EFFECT),
        ((-0.04, -0.01), vr.NO_LARGER_EFFECT),  # excludes 0, but smaller than the margin
        ((0.0, 0.0), vr.DOES_NOT_HOLD),  # exactly the null: no effect on any prompt
    ],
)
def test_judge_with_a_margin(ci, verdict):
    lo, hi = ci
    assert vr.judge((lo + hi) / 2, lo, hi, sign=-1, null=0.0, margin=0.05) == verdict


def test_judge_without_a_margin_keeps_the_old_rule():
    assert vr.judge(0.01, 0.005, 0.02, sign=+1, null=0.0) == vr.HOLDS
    assert vr.judge(0.01, 0.005, 0.02, sign=+1, null=0.0, margin=math.nan) == vr.HOLDS
    assert vr.judge(math.nan, 0, 1, sign=+1, null=0) == vr.UNCLEAR
    with pytest.raises(ValueError, match="sign"):
        vr.judge(0.0, 0.0, 1.0, sign=2, null=0.0)


def test_margins_are_fixed_per_kind_of_statistic():
    assert vr.margin_for("delta_label_space_rate") == 0.05
    assert vr.margin_for("delta_probe_accuracy") == 0.05
    assert vr.margin_for("spearman_drop_in_space_accuracy") == 0.1
    assert vr.margin_for(STABILITY_METRIC) == 0.1
    assert vr.margin_for("top_k_overlap") == 0.1
    assert vr.margin_for("onset") == 1.0
    assert vr.margin_for("delta_alignment", -0.2) == pytest.approx(0.02)
    assert math.isnan(vr.margin_for("delta_alignment"))


def test_a_claim_combines_its_statistics_worst_first():
    assert vr.combine([vr.HOLDS, vr.HOLDS]) == vr.HOLDS
    assert vr.combine([vr.HOLDS, vr.UNCLEAR]) == vr.UNCLEAR
    assert vr.combine([vr.UNCLEAR, vr.UNTESTABLE]) == vr.UNTESTABLE
    assert vr.combine([vr.UNTESTABLE, vr.NO_LARGER_EFFECT]) == vr.NO_LARGER_EFFECT
    assert vr.combine([vr.NO_LARGER_EFFECT, vr.DOES_NOT_HOLD]) == vr.DOES_NOT_HOLD
    assert vr.combine([]) == vr.UNCLEAR
    with pytest.raises(ValueError, match="'maybe'"):
        vr.combine(["maybe"])


def test_vote_pooling_leaves_untestable_tasks_out():
    assert kit.pool_verdicts(["holds", "untestable", "holds"]) == "holds"
    assert kit.pool_verdicts(["untestable", "untestable"]) == "untestable"
    assert kit.pool_verdicts(["holds", "unclear"]) == "unclear"
    assert kit.pool_verdicts([]) == "unclear"


def test_verdict_text_names_the_margin_and_the_reason():
    assert vr.verdict_text(vr.NO_LARGER_EFFECT, margin=0.05) == "no effect larger than 0.05"
    assert vr.verdict_text(vr.UNTESTABLE, reason="identical sets") == "untestable (identical sets)"
    assert vr.verdict_text(vr.HOLDS) == "holds"


def test_floor_ceiling_and_no_op():
    assert vr.floor_or_ceiling([1.0, 1.0, math.nan]) == "ceiling"
    assert vr.floor_or_ceiling([0.0, 0.0]) == "floor"
    assert vr.floor_or_ceiling([0.0, 1.0]) == ""
    assert vr.floor_or_ceiling([]) == ""
    assert vr.is_no_op(0.0, 0.0, 0.0) and not vr.is_no_op(0.0, -0.01, 0.01)


# ----------------------------------------------------------------------------- intervals


def test_worst_case_sum_is_the_perfect_correlation_bound():
    z = 1.959963984540054
    value, lo, hi = vr.worst_case_sum([(1, 0.5, 0.5 - z * 0.1, 0.5 + z * 0.1),
                                       (-1, 0.2, 0.2 - z * 0.2, 0.2 + z * 0.2)])  # fmt: skip
    assert value == pytest.approx(0.3)
    assert (hi - lo) / (2 * z) == pytest.approx(0.3)  # 0.1 + 0.2, not sqrt(0.05)
    assert vr.grid_mean([0.1, 0.3], [0.0, 0.2], [0.2, 0.4]) == pytest.approx((0.2, 0.1, 0.3))
    with pytest.raises(ValueError, match="2 values, 1 lows"):
        vr.grid_mean([0.1, 0.3], [0.0], [0.2, 0.4])


def test_a_bonferroni_interval_rescales_to_95_percent():
    level = 1 - 0.05 / 18
    lo, hi = vr.rescale_interval(0.0, -1.0, 1.0, level)
    z_b = 2.989  # z of 1 - 0.05 / 36
    assert hi == pytest.approx(1.959964 / z_b, rel=1e-3) and lo == pytest.approx(-hi)
    with pytest.raises(ValueError, match="from_level"):
        vr.rescale_interval(0.0, -1.0, 1.0, 95)


def test_noise_corrected_stability_compares_each_map_with_its_own_noise():
    exact = (0.99, 0.99, 0.99)
    # TL agrees with gold as well as its own split halves predict: no drop beyond noise
    v, lo, hi = vr.noise_corrected_stability(
        exact, exact, (0.6, 0.6, 0.6), (3 / 7, 3 / 7, 3 / 7)
    )  # spearman_brown(3/7) = 0.6
    assert v == pytest.approx(0.99 / vr.spearman_brown(0.99) - 1.0)
    assert lo == pytest.approx(v) and hi == pytest.approx(v)
    # TL drops far below its reference: D > 0 with an interval
    v, lo, hi = vr.noise_corrected_stability(
        (0.99, 0.98, 0.995), (0.99, 0.98, 0.995), (0.2, 0.1, 0.3), (0.8, 0.75, 0.85)
    )
    assert v == pytest.approx(0.99 / vr.spearman_brown(0.99) - 0.2 / vr.spearman_brown(0.8))
    assert 0 < lo < v < hi
    # a reference that is not above 0: undecidable at this n
    assert math.isnan(
        vr.noise_corrected_stability(exact, exact, (0.2, 0.1, 0.3), (0.1, -0.05, 0.2))[0]
    )


def test_random_effects_pooling():
    one = vr.pool_estimates([0.3], [0.1], [0.5])
    assert (one["value"], one["ci_low"], one["ci_high"], one["k"]) == (0.3, 0.1, 0.5, 1)
    same = vr.pool_estimates([0.2, 0.2, 0.2], [0.1, 0.1, 0.1], [0.3, 0.3, 0.3])
    assert same["value"] == pytest.approx(0.2) and same["tau2"] == 0.0
    se = 0.1 / 1.959964
    t2 = 4.302653  # t quantile, 2 degrees of freedom
    assert same["ci_high"] - 0.2 == pytest.approx(t2 * se / math.sqrt(3), rel=1e-4)
    spread = vr.pool_estimates([-0.5, 0.0, 0.5], [-0.55, -0.05, 0.45], [-0.45, 0.05, 0.55])
    assert spread["tau2"] > 0 and spread["ci_low"] < -0.5 and spread["ci_high"] > 0.5
    assert vr.pool_estimates([], [], [])["k"] == 0
    with pytest.raises(ValueError, match="one interval per value"):
        vr.pool_estimates([0.1, 0.2], [0.0], [0.3])


def _claim(tests):
    return {"verdict": vr.combine([t["verdict"] for t in tests]), "tests": tests, "notes": []}


def _t(value, lo, hi, verdict=None, margin=0.05, null=0.0):
    got = {"experiment": "e", "condition": "c", "metric": "m", "sign": -1, "value": value,
           "ci_low": lo, "ci_high": hi, "null": null, "margin": margin}  # fmt: skip
    got["verdict"] = verdict or vr.judge(value, lo, hi, sign=-1, null=null, margin=margin)
    return got


def test_pooling_a_claim_over_tasks_counts_untestable_tasks():
    tasks = [
        _claim([_t(-0.3, -0.4, -0.2)]),
        _claim([_t(-0.25, -0.35, -0.15)]),
        _claim([_t(0.0, 0.0, 0.0, verdict=vr.UNTESTABLE)]),
        _claim([_t(-0.35, -0.45, -0.25)]),
    ]
    pooled = vr.pool_claim(tasks)
    test = pooled["tests"][0]
    assert (test["k"], test["untestable"], test["missing"]) == (3, 1, 0)
    assert pooled["verdict"] == vr.HOLDS and test["value"] == pytest.approx(-0.3, abs=0.01)
    # a vote would need every task to hold; two holding tasks and one unclear still pool
    mixed = [_claim([_t(-0.3, -0.4, -0.2)]), _claim([_t(-0.28, -0.38, -0.18)]),
             _claim([_t(-0.2, -0.42, 0.02)])]  # fmt: skip
    assert kit.pool_verdicts([c["verdict"] for c in mixed]) == vr.UNCLEAR
    assert vr.pool_claim(mixed)["verdict"] == vr.HOLDS
    every = vr.pool_claim([_claim([_t(0, 0, 0, verdict=vr.UNTESTABLE)])] * 2)
    assert every["verdict"] == vr.UNTESTABLE
    nothing = vr.pool_claim([_claim([_t(0.0, -0.01, 0.01)])] * 3)
    assert nothing["verdict"] == vr.NO_LARGER_EFFECT
    with pytest.raises(ValueError, match="same tests"):
        vr.pool_claim([_claim([_t(0, 0, 1)]), _claim([])])


# ----------------------------------------------------------------------------- TR/TL claims


def _ablation_rows(tr_tl, tr_rand, levels=(0.9, 0.5, 0.7, 0.8)):
    rows = [
        table_row(c, "label_space_rate", v, v, v, 10, kind="level")
        for c, v in zip(("baseline", "TR", "TL", "random_TR"), levels)
    ]
    rows.append(table_row("TR - TL", "delta_label_space_rate", *tr_tl, 10, kind="contrast"))
    rows.append(
        table_row("TR - random_TR", "delta_label_space_rate", *tr_rand, 10, kind="contrast")
    )
    return rows


def test_tr_ablation_claim_holds_and_does_not_hold():
    holds = {
        "ablation": _result("ablation", _ablation_rows((-0.2, -0.3, -0.1), (-0.3, -0.4, -0.2)))
    }
    assert trtl.claim_verdict("tr_ablation_label_space", holds)["verdict"] == "holds"
    fails = {"ablation": _result("ablation", _ablation_rows((0.2, 0.1, 0.3), (-0.3, -0.4, -0.2)))}
    assert trtl.claim_verdict("tr_ablation_label_space", fails)["verdict"] == "does not hold"
    small = {
        "ablation": _result("ablation", _ablation_rows((0.0, -0.02, 0.02), (-0.3, -0.4, -0.2)))
    }
    got = trtl.claim_verdict("tr_ablation_label_space", small)
    assert got["verdict"] == vr.NO_LARGER_EFFECT and got["tests"][0]["margin"] == 0.05


def test_identical_tr_and_tl_sets_are_untestable():
    heads = (("TR", ("L1H0", "L2H1")), ("TL", ("L2H1", "L1H0")))
    rows = _ablation_rows((0.0, 0.0, 0.0), (-0.3, -0.4, -0.2))
    got = trtl.claim_verdict(
        "tr_ablation_label_space", {"ablation": _result("ablation", rows, heads)}
    )
    assert got["verdict"] == vr.UNTESTABLE
    assert got["tests"][0]["reason"] == "identical TR and TL sets"
    assert got["tests"][1]["verdict"] == vr.HOLDS  # the random contrast is still judged
    assert any("identical" in note for note in got["notes"])


def test_a_rate_at_its_ceiling_in_every_condition_is_untestable():
    rows = _ablation_rows((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), levels=(1.0, 1.0, 1.0, 1.0))
    got = trtl.claim_verdict("tr_ablation_label_space", {"ablation": _result("ablation", rows)})
    assert got["verdict"] == vr.UNTESTABLE
    assert "ceiling" in got["tests"][0]["reason"]


def test_an_undefined_correlation_is_untestable():
    rows = [
        table_row("TR", "spearman_drop_label_space_rate", math.nan, math.nan, math.nan, 30),
        table_row("TL", "spearman_drop_in_space_accuracy", 0.4, 0.2, 0.6, 30),
    ]
    got = trtl.claim_verdict(
        "scores_predict_ablation", {"correlation": _result("correlation", rows)}
    )
    assert got["verdict"] == vr.UNTESTABLE and "constant" in got["tests"][0]["reason"]
    assert got["tests"][1]["verdict"] == vr.HOLDS


def _perturbation(tl_random, tl_half):
    rows = []
    for cond, tr, tl in (("random_labels", 0.99, tl_random), ("gold (split half)", 0.99, tl_half)):
        rows.append(table_row(cond, "tr_spearman", tr, tr - 0.01, tr + 0.005, 270))
        rows.append(table_row(cond, "tl_spearman", *tl, 270))
    rows.append(table_row("random_labels", "tr_minus_tl_spearman", 0.3, 0.2, 0.4, 270))
    return {"perturbation": _result("perturbation", rows)}


def test_stability_is_judged_against_each_maps_split_half_reference():
    # the raw TR - TL gap is 0.3, but TL's random-label agreement is what its own noise gives
    noise = trtl.claim_verdict(
        "tr_stable_tl_not", _perturbation((0.6, 0.5, 0.7), (3 / 7, 0.35, 0.5))
    )
    assert noise["verdict"] == vr.UNCLEAR
    assert noise["tests"][0]["metric"] == STABILITY_METRIC
    assert any("old statistic" in n for n in noise["notes"])
    # TL drops far below a reliable reference: holds
    drop = trtl.claim_verdict(
        "tr_stable_tl_not", _perturbation((0.3, 0.25, 0.35), (0.9, 0.88, 0.92))
    )
    assert drop["verdict"] == vr.HOLDS
    # TL at its reference with a tight interval: no effect larger than the margin
    same = trtl.claim_verdict(
        "tr_stable_tl_not", _perturbation((0.96, 0.955, 0.965), (0.96, 0.955, 0.965))
    )
    assert same["verdict"] == vr.NO_LARGER_EFFECT
    missing = trtl.claim_verdict("tr_stable_tl_not", {})
    assert missing["verdict"] == vr.UNCLEAR and missing["tests"][0]["missing"]


def _steering(rates: dict[float, tuple[float, float, float]]) -> dict[str, ExperimentResult]:
    """A steering table whose label-space rate is at its floor at α <= 1; TR steering
    raises it at α = 2, 4 (``rates[alpha] = (TR level, random level, contrast)``)."""
    rows = [
        table_row("baseline", "label_space_rate", 0.0, 0.0, 0.0, 64, alpha=0.0),
        table_row("baseline", "alignment", 0.1, 0.09, 0.11, 64, alpha=0.0),
    ]
    for alpha, (tr, rand, contrast) in rates.items():
        a = {"alpha": alpha}
        rows += [
            table_row("TR", "label_space_rate", tr, tr, tr, 64, **a),
            table_row("random_TR", "label_space_rate", rand, rand, rand, 64, **a),
            table_row("TR", "delta_label_space_rate", tr, tr - 0.05, tr + 0.05, 64, **a),
            table_row(
                "TR - random_TR",
                "delta_label_space_rate",
                contrast,
                contrast - 0.05,
                contrast + 0.05,
                64,
                **a,
            ),  # fmt: skip
            table_row("TR", "delta_alignment", 0.03, 0.02, 0.04, 64, **a),
            table_row("TR - random_TR", "delta_alignment", 0.02, 0.015, 0.025, 64, **a),
        ]
        if tr == rand == 0.0:  # at the floor the saved deltas are exactly 0
            rows[-4] = table_row("TR", "delta_label_space_rate", 0.0, 0.0, 0.0, 64, **a)
            rows[-3] = table_row("TR - random_TR", "delta_label_space_rate", 0, 0, 0, 64, **a)
    return {"steering_zero_shot": _result("steering_zero_shot", rows)}


def test_steering_is_judged_over_the_alpha_grid_and_floor_alphas_are_untestable():
    floor = (0.0, 0.0, 0.0)
    cells = _steering({0.5: floor, 1.0: floor, 2.0: (0.31, 0.0, 0.31), 4.0: (0.94, 0.15, 0.79)})
    got = trtl.claim_verdict("tr_steering", cells)
    rate = got["tests"][0]
    assert rate["alphas"] == [2.0, 4.0] and rate["value"] == pytest.approx((0.31 + 0.94) / 2)
    assert got["verdict"] == vr.HOLDS
    assert any("α = 1: 0 [0, 0], untestable" in n and "floor" in n for n in got["notes"])
    assert got["tests"][1]["margin"] == pytest.approx(0.01)  # 10% of the baseline alignment
    only_floor = trtl.claim_verdict("tr_steering", _steering({1.0: floor}))
    assert only_floor["verdict"] == vr.UNTESTABLE
    assert "at every α" in only_floor["tests"][0]["reason"]


def test_trtl_verdicts_pool_the_statistics_over_tasks(tmp_path):
    for task, shift in (("a", 0.0), ("b", 0.02), ("c", -0.02)):
        rows = _ablation_rows((-0.2 + shift, -0.3 + shift, -0.1 + shift), (-0.2, -0.3, -0.1))
        _result("ablation", rows).save(tmp_path / "m" / task / "ablation")
    table = trtl.trtl_verdicts(tmp_path)
    assert set(table["verdict"]) <= set(trtl.VERDICTS)
    pooled = table[(table["task"] == "all tasks") & (table["claim"] == "tr_ablation_label_space")]
    assert pooled["verdict"].item() == vr.HOLDS
    assert "random effects" in pooled["detail"].item()


# ----------------------------------------------------------------------------- geometry claims


def _task_vector_cells(values: dict[int, float], width: float = 0.001) -> dict:
    level = 1 - 0.05 / len(values)
    effect = [
        table_row(
            "task_vector",
            ALIGNMENT,
            v,
            v - width,
            v + width,
            96,
            layer=layer,
            scale=1.0,
            level=level,
        )  # fmt: skip
        for layer, v in values.items()
    ]
    for layer in values:
        if values[layer] == 0.0:
            effect[layer] = table_row("task_vector", ALIGNMENT, 0.0, 0.0, 0.0, 96, layer=layer,
                                      scale=1.0, level=level)  # fmt: skip
    table = [table_row("zero_shot", ALIGNMENT, 0.03, 0.029, 0.031, 96, layer=0)]

    @dataclass(frozen=True)
    class TaskVectorTestSettings(Settings):
        layers: tuple = tuple(values)

    res = ExperimentResult(
        "task_vector",
        make_table(table),
        TaskVectorTestSettings(),
        tables={"effect": make_table(effect)},
    )
    return {"task_vector": res}


def test_task_vector_uses_the_preregistered_state_not_the_best_one():
    # state 0 is a no-op (exactly 0); the best state is 1; the pre-registered one (L // 2 = 2)
    # is significantly negative but within the margin (10% of 0.03)
    cells = _task_vector_cells({0: 0.0, 1: 0.002, 2: -0.002, 3: -0.01})
    assert preregistered_layer(cells) == 2
    got = geometry_claim_verdict("tv", cells)
    test = got["tests"][0]
    assert test["value"] == -0.002 and test["margin"] == pytest.approx(0.003)
    assert got["verdict"] == vr.NO_LARGER_EFFECT
    assert test["ci_high"] - test["value"] < 0.001  # the 95% interval, not the Bonferroni one
    assert any("1 no-op" in n for n in got["notes"])
    assert any("best state 1" in n for n in got["notes"])
    assert any("2/3 states significantly negative" in n for n in got["notes"])
    holds = geometry_claim_verdict("tv", _task_vector_cells({0: 0.0, 1: 0.0, 2: 0.01, 3: 0.0}))
    assert holds["verdict"] == vr.HOLDS
    no_op = geometry_claim_verdict("tv", _task_vector_cells({0: 0.0, 1: 0.01, 2: 0.0, 3: 0.0}))
    assert no_op["verdict"] == vr.UNTESTABLE and "no-op" in no_op["tests"][0]["reason"]


def _head_ablation_cells(pth: float, rand: float, base: float, width: float = 0.02) -> dict:
    rows = [
        table_row(c, SEPARABILITY, v, v - width, v + width, 96, span="early", layers="1 2")
        for c, v in (("baseline", base), ("PTH", pth), ("random_PTH", rand))
    ]
    summary = make_table(rows)
    return {"head_ablation": _result("head_ablation", rows[:1], summary=summary)}


def test_pth_ablation_is_a_contrast_with_the_random_sets_own_uncertainty():
    lower = geometry_claim_verdict("pth", _head_ablation_cells(0.6, 0.8, 0.8))
    assert lower["verdict"] == vr.HOLDS
    test = lower["tests"][0]
    assert test["value"] == pytest.approx(-0.2) and test["ci_high"] == pytest.approx(-0.16)
    # once the random sets' interval counts, a 0.03 gap is not told apart
    close = geometry_claim_verdict("pth", _head_ablation_cells(0.77, 0.8, 0.8))
    assert close["verdict"] == vr.UNCLEAR
    ceiling = geometry_claim_verdict("pth", _head_ablation_cells(1.0, 1.0, 1.0, width=0.0))
    assert ceiling["verdict"] == vr.UNTESTABLE and "ceiling" in ceiling["tests"][0]["reason"]
    missing = geometry_claim_verdict("pth", {})
    assert missing["verdict"] == vr.UNCLEAR and missing["tests"][0]["missing"]
    with pytest.raises(ValueError, match="'nope'"):
        geometry_claim_verdict("nope", {})


def test_geometry_pooled_verdicts_over_saved_tasks(tmp_path):
    for task, pth in (("a", 0.6), ("b", 0.62), ("c", 0.58)):
        cells = _head_ablation_cells(pth, 0.8, 0.8)
        cells["head_ablation"].save(tmp_path / "m" / task / "head_ablation")
    pooled = geometry_pooled_verdicts(tmp_path)
    row = pooled[pooled["claim"] == "pth"].iloc[0]
    assert row["verdict"] == vr.HOLDS and row["k"] == 3 and row["untestable"] == 0
    assert np.isclose(row["value"], -0.2, atol=0.01)
    others = pooled[pooled["claim"] != "pth"]
    assert set(others["verdict"]) == {vr.UNCLEAR}  # their results are missing
    assert isinstance(pooled, pd.DataFrame)


def test_pooling_a_claim_over_seeds_averages_with_a_conservative_interval():
    seeds = [_claim([_t(-0.3, -0.4, -0.2)]), _claim([_t(-0.1, -0.2, 0.0)]),
             _claim([_t(-0.2, -0.3, -0.1)])]  # fmt: skip
    pooled = vr.pool_seeds(seeds)
    test = pooled["tests"][0]
    # the mean of the values and of the bounds: as wide as one seed's interval
    assert (test["value"], test["ci_low"], test["ci_high"]) == pytest.approx((-0.2, -0.3, -0.1))
    assert test["seeds"] == 3 and test["seed_values"] == [-0.3, -0.1, -0.2]
    assert pooled["verdict"] == vr.HOLDS
    assert "per seed: holds 2/3, unclear 1/3" in pooled["notes"][0]
    # two seeds that do not hold outweigh one that does
    assert vr.pool_seeds([seeds[0], _claim([_t(0.2, 0.1, 0.3)])] * 2)["verdict"] == vr.UNCLEAR
    # a seed that cannot test the statistic is left out; untestable everywhere stays so
    untestable = _claim([{**_t(0, 0, 0, verdict=vr.UNTESTABLE), "reason": "identical sets"}])
    mixed = vr.pool_seeds([untestable, seeds[0]])
    assert mixed["tests"][0]["seeds"] == 1 and mixed["verdict"] == vr.HOLDS
    assert "reason" not in mixed["tests"][0]
    every = vr.pool_seeds([untestable, untestable])
    assert every["verdict"] == vr.UNTESTABLE and every["tests"][0]["reason"] == "identical sets"
    assert vr.pool_seeds(seeds[:1]) == seeds[0]
    with pytest.raises(ValueError, match="same tests"):
        vr.pool_seeds([_claim([_t(0, 0, 1)]), _claim([])])


def test_pooled_notes_say_which_seed_each_reading_comes_from():
    # the same reading in two seeds must not collapse into one unlabelled note
    a = {**_claim([_t(-0.3, -0.4, -0.2)]), "notes": ["shared", "x at 1: 0.5", "only a"]}
    b = {**_claim([_t(-0.1, -0.2, 0.0)]), "notes": ["shared", "x at 1: 0.5"]}
    c = {**_claim([_t(-0.2, -0.3, -0.1)]), "notes": ["shared", "x at 1: 0.7"]}
    notes = vr.pool_seeds([a, b, c], seeds=[0, 4, 7])["notes"]
    assert notes[1:] == ["shared", "seed 0: x at 1: 0.5", "seed 0: only a",
                         "seed 4: x at 1: 0.5", "seed 7: x at 1: 0.7"]  # fmt: skip
    assert vr.pool_seeds([b, c])["notes"][2:] == ["seed 0: x at 1: 0.5", "seed 1: x at 1: 0.7"]
    with pytest.raises(ValueError, match="one label per seed"):
        vr.pool_seeds([a, b], seeds=[0])


def test_a_folder_of_seed_grids_loads_as_seed_results_and_its_verdicts_pool_the_seeds(tmp_path):
    # seed 0 holds clearly; seed 1 is unclear; seed 2 has no "b" task
    for seed, tasks in ((0, {"a": -0.2, "b": -0.2}), (1, {"a": -0.05, "b": -0.2}),
                        (2, {"a": -0.2})):  # fmt: skip
        for task, tr_tl in tasks.items():
            rows = _ablation_rows((tr_tl, tr_tl - 0.1, tr_tl + 0.1), (-0.3, -0.4, -0.2))
            _result("ablation", rows).save(tmp_path / f"seed{seed}" / "m" / task / "ablation")
    cells = kit.load_cells(tmp_path)
    a, b = cells["m"]["a"], cells["m"]["b"]
    assert isinstance(a, kit.SeedResults) and a.seeds == (0, 1, 2) and b.seeds == (0, 1)
    assert list(a) == ["ablation"] and a["ablation"] is a.per_seed[0]["ablation"]
    assert len(kit.per_seed(a)) == 3 and kit.per_seed({"x": 1}) == [{"x": 1}]
    got = trtl.claim_verdict("tr_ablation_label_space", a)
    first = got["tests"][0]
    assert first["seeds"] == 3 and first["value"] == pytest.approx(-0.15)
    assert got["notes"][0].startswith("pooled over 3 prompt seeds")
    table = trtl.trtl_verdicts(tmp_path)
    row = table[(table["task"] == "a") & (table["claim"] == "tr_ablation_label_space")]
    assert "pooled over 3 prompt seeds" in row["detail"].item()
    # a folder with a one-seed grid beside seed grids is ambiguous
    _result("ablation", rows).save(tmp_path / "m" / "a" / "ablation")
    with pytest.raises(ValueError, match="both a one-seed grid"):
        kit.load_cells(tmp_path)


def test_geometry_verdicts_pool_the_seeds(tmp_path):
    for seed, pth in ((0, 0.6), (1, 0.7)):
        cells = _head_ablation_cells(pth, 0.8, 0.8)
        cells["head_ablation"].save(tmp_path / f"seed{seed}" / "m" / "a" / "head_ablation")
    got = geometry_claim_verdict("pth", kit.load_cells(tmp_path)["m"]["a"])
    assert got["tests"][0]["value"] == pytest.approx(-0.15) and got["tests"][0]["seeds"] == 2
    assert got["verdict"] == vr.HOLDS
    table = geometry_verdicts(tmp_path)
    assert table.loc[table["claim"] == "pth", "verdict"].item() == vr.HOLDS
