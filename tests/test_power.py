"""The power table's rule (icl_heads.experiments.power): one synthetic case per branch
(resolved, needs n, no n will, untestable, not by n, undefined), the closed form against
issue 18's worked example, and the n against a brute-force simulation of the design."""

from __future__ import annotations

import math

import numpy as np

from icl_heads.experiments import power as pw
from icl_heads.experiments import verdict_rules as vr


def test_resolved_when_the_interval_excludes_the_null_or_lies_inside_the_margin():
    got = pw.resolving_n(-0.2, -0.3, -0.1, 64, margin=0.05, verdict=vr.HOLDS)
    assert got["status"] == pw.RESOLVED and got["n_needed"] is None
    assert got["target"] == "CI excluding 0" and "resolved at this n" in got["text"]
    got = pw.resolving_n(0.2, 0.1, 0.3, 64, margin=0.05, verdict=vr.DOES_NOT_HOLD)
    assert got["status"] == pw.RESOLVED
    got = pw.resolving_n(0.01, -0.02, 0.03, 64, margin=0.05, verdict=vr.NO_LARGER_EFFECT)
    assert got["status"] == pw.RESOLVED and got["target"] == "CI inside ±0.05"


def test_needs_n_reproduces_the_worked_example_of_issue_18():
    # SmolLM2 topic TR - TL label-space rate: -0.14 [-0.28, 0.0004] at n = 64, "~130 prompts"
    got = pw.resolving_n(-0.14, -0.28, 0.0004, 64, margin=0.05, verdict=vr.UNCLEAR)
    assert got["status"] == pw.NEEDS_N and got["target"] == "CI excluding 0"
    se = 0.2804 / (2 * 1.959964)
    expected = math.ceil(64 * ((1.959964 + 0.841621) * se / 0.14) ** 2)
    assert got["n_needed"] == expected and 125 <= expected <= 135
    assert f"n ≈ {expected}" in got["text"]


def test_needs_n_scales_as_one_over_root_n():
    # the same standard error read at n = 64 and at n = 256 (half as wide) asks the same n*
    a = pw.resolving_n(0.1, -0.02, 0.22, 64, verdict=vr.UNCLEAR)["n_needed"]
    b = pw.resolving_n(0.1, 0.04, 0.16, 256, verdict=vr.UNCLEAR)["n_needed"]
    assert abs(a - b) <= 1


def test_no_n_will_when_the_estimate_lies_inside_the_margin():
    got = pw.resolving_n(0.01, -0.05, 0.07, 64, margin=0.05, verdict=vr.UNCLEAR)
    assert got["status"] == pw.NO_N_WILL and got["target"] == "CI inside ±0.05"
    assert got["text"].startswith("no n will: effect below the margin")
    # the n at which the interval would lie inside ±0.05 (equivalence), given beside it
    se = 0.12 / (2 * 1.959964)
    assert got["n_needed"] == math.ceil(64 * ((1.959964 + 0.841621) * se / 0.04) ** 2)
    # an estimate exactly at the margin: no n, no equivalence n either
    edge = pw.resolving_n(0.05, -0.01, 0.11, 64, margin=0.05, verdict=vr.UNCLEAR)
    assert edge["status"] == pw.NO_N_WILL and edge["n_needed"] is None


def test_untestable_designs_get_no_n():
    got = pw.resolving_n(
        0.0, 0.0, 0.0, 64, margin=0.05, verdict=vr.UNTESTABLE, reason="identical TR and TL sets"
    )
    assert got["status"] == pw.POWER_UNTESTABLE and got["n_needed"] is None
    assert "identical TR and TL sets" in got["text"] and "no n will" in got["text"]


def test_intervals_not_over_prompts_are_not_settled_by_n():
    got = pw.resolving_n(0.2, -0.1, 0.5, 270, margin=0.1, verdict=vr.UNCLEAR, unit="heads")
    assert got["status"] == pw.NOT_BY_N and got["n_needed"] is None and "heads" in got["text"]
    # inside the margin it is still "no n will", with no n (the interval is not over prompts)
    got = pw.resolving_n(0.02, -0.3, 0.3, None, margin=0.1, verdict=vr.UNCLEAR, unit="tasks")
    assert got["status"] == pw.NO_N_WILL and got["n_needed"] is None


def test_undefined_statistics_and_missing_tests():
    got = pw.resolving_n(math.nan, math.nan, math.nan, 64, verdict=vr.UNCLEAR)
    assert got["status"] == pw.UNDEFINED
    assert pw.statistic_power({"missing": True}, 64)["status"] == pw.UNDEFINED


def test_claim_power_takes_the_largest_n_and_no_n_first():
    needs = [
        pw.resolving_n(-0.14, -0.28, 0.0004, 64, verdict=vr.UNCLEAR),
        pw.resolving_n(0.1, -0.02, 0.22, 64, verdict=vr.UNCLEAR),
    ]
    largest = max(p["n_needed"] for p in needs)
    assert pw.claim_power(vr.UNCLEAR, needs) == f"n ≈ {largest}"
    below = pw.resolving_n(0.01, -0.05, 0.07, 64, margin=0.05, verdict=vr.UNCLEAR)
    assert pw.claim_power(vr.UNCLEAR, [*needs, below]).startswith("no n will")
    assert pw.claim_power(vr.HOLDS, needs) == "resolved at this n"
    assert pw.claim_power(vr.UNTESTABLE, needs).startswith("no n will")


def test_power_table_has_one_row_per_statistic():
    test = {"value": -0.14, "ci_low": -0.28, "ci_high": 0.0004, "null": 0.0, "margin": 0.05,
            "verdict": vr.UNCLEAR}  # fmt: skip
    frame = pw.power_table(
        [{"model": "m", "claim": "c", "task": "t", "statistic": "TR - TL", "test": test, "n": 64}]
    )
    assert list(frame.columns) == list(pw.POWER_COLUMNS)
    row = frame.iloc[0]
    assert row["status"] == pw.NEEDS_N and row["claim_verdict"] == vr.UNCLEAR
    assert row["power"].startswith("n ≈")


def test_the_n_gives_80_percent_power_in_a_brute_force_simulation():
    """Per-prompt paired differences in {-1, 0, +1} (a step metric): at n = 64 the effect
    0.1 is unclear; at the computed n*, 95% normal intervals of simulated data sets exclude 0
    about 80% of the time."""
    rng = np.random.default_rng(0)
    p_up, p_down = 0.25, 0.15  # mean 0.1, sd ~0.62

    def sample(n, reps):
        u = rng.random((reps, n))
        return (u < p_up).astype(float) - ((u >= p_up) & (u < p_up + p_down)).astype(float)

    pilot = sample(64, 1)[0]
    delta = p_up - p_down
    sd = math.sqrt(p_up + p_down - delta**2)
    half = 1.959964 * sd / 8  # the interval at n = 64 of this design, centred on the effect
    got = pw.resolving_n(delta, delta - half, delta + half, 64, verdict=vr.UNCLEAR)
    n_star = got["n_needed"]
    assert got["status"] == pw.NEEDS_N and 200 < n_star < 400 and pilot.size == 64
    data = sample(n_star, 4000)
    mean, se = data.mean(axis=1), data.std(axis=1, ddof=1) / math.sqrt(n_star)
    hit = np.mean((mean - 1.959964 * se > 0) | (mean + 1.959964 * se < 0))
    assert 0.77 <= hit <= 0.83, hit
    # and a quarter of that n has far less power
    small = sample(n_star // 4, 4000)
    m4, s4 = small.mean(axis=1), small.std(axis=1, ddof=1) / math.sqrt(n_star // 4)
    assert np.mean(m4 - 1.959964 * s4 > 0) < 0.4
