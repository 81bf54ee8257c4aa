"""The TR/TL paper's claims and their verdicts, from the saved tables only.

The rules (vocabulary, margins, pooling) are :mod:`icl_heads.experiments.verdict_rules`;
``docs/methods.md`` ("Verdict rules") states each with its reason.

Example::

    trtl_verdicts("docs/results/data/trtl")[["model", "task", "claim", "verdict"]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...results import ExperimentResult
from ..kit import BASELINE, SeedResults, fmt, load_cells, per_seed
from ..verdict_rules import (
    RATE_METRICS,
    UNCLEAR,
    UNTESTABLE,
    VERDICTS,
    combine,
    floor_or_ceiling,
    grid_mean,
    judge,
    margin_for,
    noise_corrected_stability,
    pool_claim,
    pool_seeds,
    verdict_text,
)

#: The steering strength of the single-α reading (reported in each steering claim's notes;
#: the verdict itself is the α-grid rule, :data:`STEERING_RULE`).
VERDICT_ALPHA = 1.0
#: The pre-registered rule of the steering claims over the saved α grid.
STEERING_RULE = (
    "mean over every saved α > 0 (α = 0 is the unsteered prompt) of the per-α statistic; "
    "an α where the metric is at its floor or ceiling in every compared condition is "
    "untestable and left out; interval: the mean of the per-α bounds (conservative)"
)

#: The paper's claims, as the results page states them.
CLAIMS: dict[str, str] = {
    "tr_ablation_label_space": "TR ablation lowers label-space rate more than TL ablation "
    "and random sets",
    "tl_ablation_in_space": "TL ablation lowers in-space accuracy more than TR ablation and "
    "random sets",
    "tr_stable_tl_not": "TR maps are stable under random labels while TL maps are not",
    "scores_predict_ablation": "TR/TL scores correlate with their single-head ablation effects",
    "tr_steering": "TR steering raises label-space rate and subspace alignment",
    "tl_steering": "TL steering raises in-space accuracy and rotation toward the gold label",
    "tl_induction_overlap": "TL heads overlap induction heads",
}

#: The statistic of the stability claim (:func:`~icl_heads.experiments.verdict_rules.
#: noise_corrected_stability` on the perturbation table's Spearman rows).
STABILITY_METRIC = "noise_corrected_stability_difference"
_SPLIT_HALF = "gold (split half)"


#: The experiments the claims read (a folder with none of them is not a TR/TL folder).
CLAIM_EXPERIMENTS = (
    "ablation",
    "perturbation",
    "correlation",
    "steering_zero_shot",
    "reconciliation",
)


@dataclass(frozen=True)
class _Test:
    """One statistic a claim predicts: the row(s) of an experiment's table, the predicted
    sign, the null it is compared with (a number, or the value of another row), and how it
    is read (``"row"``: one row; ``"grid"``: the steering α grid; ``"stability"``: the
    noise-corrected stability statistic)."""

    experiment: str
    condition: str
    metric: str
    sign: int
    null: float | tuple[str, str] = 0.0
    read: str = "row"


def _claim_tests(claim: str) -> list[_Test]:
    steer = "steering_zero_shot"
    return {
        "tr_ablation_label_space": [
            _Test("ablation", "TR - TL", "delta_label_space_rate", -1),
            _Test("ablation", "TR - random_TR", "delta_label_space_rate", -1),
        ],
        "tl_ablation_in_space": [
            _Test("ablation", "TL - TR", "delta_in_space_accuracy", -1),
            _Test("ablation", "TL - random_TL", "delta_in_space_accuracy", -1),
        ],
        "tr_stable_tl_not": [
            _Test("perturbation", "random_labels", STABILITY_METRIC, +1, read="stability")
        ],
        "scores_predict_ablation": [
            _Test("correlation", "TR", "spearman_drop_label_space_rate", +1),
            _Test("correlation", "TL", "spearman_drop_in_space_accuracy", +1),
        ],
        "tr_steering": [
            _Test(steer, "TR", "delta_label_space_rate", +1, read="grid"),
            _Test(steer, "TR", "delta_alignment", +1, read="grid"),
            _Test(steer, "TR - random_TR", "delta_label_space_rate", +1, read="grid"),
            _Test(steer, "TR - random_TR", "delta_alignment", +1, read="grid"),
        ],
        "tl_steering": [
            _Test(steer, "TL", "delta_in_space_accuracy", +1, read="grid"),
            _Test(steer, "TL", "delta_rotation", +1, read="grid"),
            _Test(steer, "TL - random_TL", "delta_in_space_accuracy", +1, read="grid"),
            _Test(steer, "TL - random_TL", "delta_rotation", +1, read="grid"),
        ],
        "tl_induction_overlap": [
            _Test(
                "reconciliation",
                "TL vs induction",
                "top_k_overlap",
                +1,
                null=("TL vs induction", "chance_overlap"),
            ),
        ],
    }[claim]


def _row(table: pd.DataFrame, condition: str, metric: str, where: tuple = ()) -> pd.Series | None:
    rows = table[(table["condition"] == condition) & (table["metric"] == metric)]
    for column, value in where:
        if column not in rows.columns:
            return None
        rows = rows[np.isclose(rows[column].astype(float), value)]
    return rows.iloc[0] if len(rows) == 1 else None


def _test(t: _Test, **values) -> dict:
    out = {
        "experiment": t.experiment,
        "condition": t.condition,
        "metric": t.metric,
        "value": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "null": math.nan,
        "sign": t.sign,
        "margin": math.nan,
        "verdict": UNCLEAR,
    }
    out.update(values)
    return out


def _heads(res: ExperimentResult | None) -> dict[str, set]:
    heads = dict(getattr(res.settings, "heads", ()) or ()) if res is not None else {}
    return {name: set(hs) for name, hs in heads.items()}


def _degenerate(t: _Test, res: ExperimentResult, row: pd.Series, where: tuple) -> str:
    """Why a statistic cannot be tested in this design (``""`` when it can)."""
    parts = t.condition.split(" - ")
    heads = _heads(res)
    if len(parts) == 2 and all(p in heads for p in parts) and heads[parts[0]] == heads[parts[1]]:
        return f"identical {parts[0]} and {parts[1]} sets"
    metric = t.metric.removeprefix("delta_")
    if t.metric.startswith("delta_") and metric in RATE_METRICS:
        levels = []
        for condition in (BASELINE, *parts):
            level = _row(res.table, condition, metric, where)
            if level is None and condition == BASELINE:
                level = _row(res.table, condition, metric)
            if level is not None:
                levels.append(float(level["value"]))
        bound = floor_or_ceiling(levels) if len(levels) == len(parts) + 1 else ""
        if bound:
            return f"{metric} at its {bound} in every compared condition"
    if isinstance(row["value"], float) and math.isnan(row["value"]):
        if metric == "in_space_accuracy":
            return (
                "in_space_accuracy undefined: the compared conditions share no prompt in the "
                "label space"
            )
        if "spearman" in metric or "pearson" in metric:
            return "correlation undefined: a constant variable (e.g. no head changes the metric)"
        return "undefined statistic (NaN)"
    return ""


def _reference_level(table: pd.DataFrame, metric: str) -> float:
    row = _row(table, BASELINE, metric.removeprefix("delta_"))
    return float(row["value"]) if row is not None else math.nan


def _row_test(t: _Test, res: ExperimentResult | None, where: tuple = ()) -> dict:
    row = _row(res.table, t.condition, t.metric, where) if res is not None else None
    null = t.null
    if isinstance(null, tuple) and res is not None:
        null_row = _row(res.table, *null)
        null = float(null_row["value"]) if null_row is not None else math.nan
    if row is None or not isinstance(null, float) or math.isnan(null):
        return _test(t, missing=True)
    v, lo, hi = float(row["value"]), float(row["ci_low"]), float(row["ci_high"])
    margin = margin_for(t.metric, _reference_level(res.table, t.metric))
    got = _test(t, value=v, ci_low=lo, ci_high=hi, null=null, margin=margin)
    reason = _degenerate(t, res, row, where)
    if reason:
        got.update(verdict=UNTESTABLE, reason=reason)
    else:
        got["verdict"] = judge(v, lo, hi, sign=t.sign, null=null, margin=margin)
    return got


def _grid_test(t: _Test, res: ExperimentResult | None) -> tuple[dict, list[str]]:
    """The α-grid rule (:data:`STEERING_RULE`), and one note per α."""
    if res is None or "alpha" not in res.table.columns:
        return _test(t, missing=True), []
    alphas = sorted(a for a in set(res.table["alpha"].dropna().astype(float)) if a > 0)
    per_alpha = {a: _row_test(t, res, (("alpha", a),)) for a in alphas}
    notes = [
        f"{t.condition} {t.metric} at α = {a:g}: "
        + (
            "missing"
            if got.get("missing")
            else f"{fmt(got['value'])} [{fmt(got['ci_low'])}, {fmt(got['ci_high'])}], "
            + verdict_text(got["verdict"], margin=got["margin"], reason=got.get("reason"))
        )
        for a, got in per_alpha.items()
    ]
    usable = [
        got
        for got in per_alpha.values()
        if got["verdict"] != UNTESTABLE
        and not got.get("missing")
        and all(math.isfinite(got[x]) for x in ("value", "ci_low", "ci_high"))
    ]
    if not usable:
        untestable = [got for got in per_alpha.values() if got["verdict"] == UNTESTABLE]
        if untestable:
            reasons = "; ".join(dict.fromkeys(got["reason"] for got in untestable))
            return _test(t, verdict=UNTESTABLE, reason=f"at every α: {reasons}"), notes
        return _test(t, missing=True), notes
    v, lo, hi = grid_mean(
        [g["value"] for g in usable], [g["ci_low"] for g in usable], [g["ci_high"] for g in usable]
    )
    margin = margin_for(t.metric, _reference_level(res.table, t.metric))
    verdict = judge(v, lo, hi, sign=t.sign, null=0.0, margin=margin)
    got = _test(t, value=v, ci_low=lo, ci_high=hi, null=0.0, margin=margin, verdict=verdict)
    got["alphas"] = [a for a, g in per_alpha.items() if g in usable]
    return got, notes


def _stability_test(t: _Test, res: ExperimentResult | None) -> tuple[dict, list[str]]:
    """The noise-corrected stability statistic, from the Spearman rows of the perturbation
    table."""
    rows = {}
    if res is not None:
        for cond in (t.condition, _SPLIT_HALF):
            for s in ("tr", "tl"):
                rows[cond, s] = _row(res.table, cond, f"{s}_spearman")
    if res is None or any(r is None for r in rows.values()):
        return _test(t, missing=True), []
    trip = {
        k: (float(r["value"]), float(r["ci_low"]), float(r["ci_high"])) for k, r in rows.items()
    }
    v, lo, hi = noise_corrected_stability(
        trip[t.condition, "tr"], trip[_SPLIT_HALF, "tr"], trip[t.condition, "tl"],
        trip[_SPLIT_HALF, "tl"],
    )  # fmt: skip
    notes = [
        f"{s.upper()} map: {t.condition} vs gold {fmt(trip[t.condition, s][0])}, gold split "
        f"half {fmt(trip[_SPLIT_HALF, s][0])} (Spearman-Brown to n: "
        f"{fmt(2 * trip[_SPLIT_HALF, s][0] / (1 + trip[_SPLIT_HALF, s][0]))})"
        for s in ("tr", "tl")
    ]
    old = _row(res.table, t.condition, "tr_minus_tl_spearman")
    if old is not None:
        notes.append(
            f"uncorrected TR − TL Spearman {fmt(old['value'])} [{fmt(old['ci_low'])}, "
            f"{fmt(old['ci_high'])}] (the old statistic)"
        )
    notes.append("intervals: over heads only (the saved ones); see docs/methods.md")
    if math.isnan(v):
        notes.append("a split-half reference does not exceed 0: no reliable map at this n")
        return _test(t, null=0.0, margin=margin_for(t.metric)), notes
    margin = margin_for(t.metric)
    verdict = judge(v, lo, hi, sign=t.sign, null=0.0, margin=margin)
    return _test(t, value=v, ci_low=lo, ci_high=hi, null=0.0, margin=margin, verdict=verdict), notes


def claim_verdict(claim: str, results: Mapping[str, ExperimentResult]) -> dict:
    """The verdict of one claim from one task's saved results (``{experiment: result}``).

    Each claim predicts the sign of one or more statistics (contrasts against random sets or
    the other head set, effects against the baseline, correlations against 0, an overlap
    against its chance value, the noise-corrected stability difference against 0); each has
    a 95% interval and an equivalence margin
    (:func:`~icl_heads.experiments.verdict_rules.margin_for`). A statistic is judged by
    :func:`~icl_heads.experiments.verdict_rules.judge`, or is **untestable** in a
    degenerate design (identical TR and TL sets for a TR-vs-TL contrast; a rate at its
    floor or ceiling in every compared condition; an undefined statistic); the claim's
    verdict combines them (:func:`~icl_heads.experiments.verdict_rules.combine`). Steering
    statistics follow :data:`STEERING_RULE` (the α = 1 reading is in the notes). A task's
    results over several prompt seeds (:class:`~icl_heads.experiments.kit.SeedResults`)
    give each seed's verdict pooled by
    :func:`~icl_heads.experiments.verdict_rules.pool_seeds`.

    Example::

        trtl.claim_verdict("tl_induction_overlap", kit.load_cells(root)[model][task])

    Returns:
        ``{"claim", "verdict", "tests": [{"experiment", "condition", "metric", "value",
        "ci_low", "ci_high", "null", "sign", "margin", "verdict"}, + "reason" when
        untestable, "missing" when absent], "notes": [...]}``.
    """
    if claim not in CLAIMS:
        raise ValueError(f"Unknown claim {claim!r}; choose one of {list(CLAIMS)}.")
    if isinstance(results, SeedResults):
        return pool_seeds([claim_verdict(claim, r) for r in per_seed(results)], seeds=results.seeds)
    tests, notes = [], []
    for t in _claim_tests(claim):
        res = results.get(t.experiment)
        if t.read == "grid":
            got, more = _grid_test(t, res)
            notes += more
        elif t.read == "stability":
            got, more = _stability_test(t, res)
            notes += more
        else:
            got = _row_test(t, res)
        tests.append(got)
    for experiment in dict.fromkeys(t.experiment for t in _claim_tests(claim)):
        heads = _heads(results.get(experiment))
        if "TR" in heads and "TL" in heads and heads["TR"] == heads["TL"]:
            notes.append(
                f"the TR and TL head sets of {experiment} are identical "
                f"({' '.join(sorted(heads['TR']))})"
            )
    verdict = combine([t["verdict"] for t in tests])
    return {"claim": claim, "verdict": verdict, "tests": tests, "notes": notes}


def trtl_verdicts(results_root: str | Path) -> pd.DataFrame:
    """The verdict of every claim for every model and task under ``results_root``, from the
    saved tables (see :func:`claim_verdict`), plus an ``"all tasks"`` row per model and claim
    (:func:`~icl_heads.experiments.verdict_rules.pool_claim`: each statistic pooled over the
    tasks with a random-effects estimate; untestable tasks left out and counted).

    Example::

        trtl.trtl_verdicts("docs/results/data/trtl")

    Returns:
        Tidy DataFrame ``model, task, claim, statement, verdict, detail``; ``verdict`` is one
        of :data:`VERDICTS` (``detail`` gives the margin and the untestable reason).
    """
    rows = []
    for model, tasks in load_cells(results_root, family=("TR/TL", CLAIM_EXPERIMENTS)).items():
        for claim, statement in CLAIMS.items():
            per_task = []
            for task, results in tasks.items():
                got = claim_verdict(claim, results)
                per_task.append(got)
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "claim": claim,
                        "statement": statement,
                        "verdict": got["verdict"],
                        "detail": "; ".join([_detail(got["tests"]), *got["notes"]]),
                    }
                )
            pooled = pool_claim(per_task)
            counts = ", ".join(
                f"{v}: {n}/{len(per_task)}"
                for v in VERDICTS
                if (n := sum(g["verdict"] == v for g in per_task))
            )
            rows.append(
                {
                    "model": model,
                    "task": "all tasks",
                    "claim": claim,
                    "statement": statement,
                    "verdict": pooled["verdict"],
                    "detail": "; ".join(
                        [_detail(pooled["tests"]), *pooled["notes"], f"per task: {counts}"]
                    ),
                }
            )
    columns = ["model", "task", "claim", "statement", "verdict", "detail"]
    return pd.DataFrame(rows, columns=columns)


def _detail(tests: list[dict]) -> str:
    parts = []
    for t in tests:
        name = f"{t['condition']} {t['metric']}"
        if t.get("verdict") == UNTESTABLE and t.get("reason"):
            parts.append(f"{name}: untestable ({t['reason']})")
            continue
        if t.get("missing") is True:
            parts.append(f"{name}: missing")
            continue
        rel = ">" if t["sign"] > 0 else "<"
        if math.isnan(t["value"]):
            parts.append(f"{name}: undefined (NaN)")
            continue
        margin = t.get("margin", math.nan)
        margin = f", margin ±{fmt(margin)}" if margin is not None and math.isfinite(margin) else ""
        alphas = t.get("alphas")
        grid = f" (mean over α = {', '.join(f'{a:g}' for a in alphas)})" if alphas else ""
        parts.append(
            f"{name}{grid} = {fmt(t['value'])} [{fmt(t['ci_low'])}, {fmt(t['ci_high'])}] "
            f"({rel} {fmt(t['null'])}?{margin}): {t['verdict']}"
        )
    return "; ".join(parts)


__all__ = [
    "CLAIMS",
    "STABILITY_METRIC",
    "STEERING_RULE",
    "VERDICTS",
    "VERDICT_ALPHA",
    "claim_verdict",
    "trtl_verdicts",
]
