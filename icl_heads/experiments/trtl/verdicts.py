"""The TR/TL paper's claims and their verdicts, from the saved tables only."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...results import ExperimentResult
from ..kit import VERDICTS, fmt, judge, load_cells, pool_verdicts

#: The steering strength at which the steering claims are judged on the results page.
VERDICT_ALPHA = 1.0

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


@dataclass(frozen=True)
class _Test:
    """One statistic a claim predicts: the row(s) of an experiment's table, the predicted
    sign, and the null it is compared with (a number, or the value of another row)."""

    experiment: str
    condition: str
    metric: str
    sign: int
    null: float | tuple[str, str] = 0.0
    where: tuple = ()


def _claim_tests(claim: str) -> list[_Test]:
    a = (("alpha", VERDICT_ALPHA),)
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
        "tr_stable_tl_not": [_Test("perturbation", "random_labels", "tr_minus_tl_spearman", +1)],
        "scores_predict_ablation": [
            _Test("correlation", "TR", "spearman_drop_label_space_rate", +1),
            _Test("correlation", "TL", "spearman_drop_in_space_accuracy", +1),
        ],
        "tr_steering": [
            _Test(steer, "TR", "delta_label_space_rate", +1, where=a),
            _Test(steer, "TR", "delta_alignment", +1, where=a),
            _Test(steer, "TR - random_TR", "delta_label_space_rate", +1, where=a),
            _Test(steer, "TR - random_TR", "delta_alignment", +1, where=a),
        ],
        "tl_steering": [
            _Test(steer, "TL", "delta_in_space_accuracy", +1, where=a),
            _Test(steer, "TL", "delta_rotation", +1, where=a),
            _Test(steer, "TL - random_TL", "delta_in_space_accuracy", +1, where=a),
            _Test(steer, "TL - random_TL", "delta_rotation", +1, where=a),
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


def claim_verdict(claim: str, results: Mapping[str, ExperimentResult]) -> dict:
    """The verdict of one claim from one task's saved results (``{experiment: result}``).

    Each claim predicts the sign of one or more statistics (contrasts against random sets or
    the other head set, effects against the baseline, correlations against 0, an overlap
    against its chance value); each has a 95% bootstrap CI. The claim **holds** when every
    CI lies on the predicted side of its null value (:func:`~icl_heads.experiments.kit.judge`);
    it **does not hold** when some CI lies on the opposite side, or is exactly the null (no
    effect at all); otherwise it is **unclear**.

    Example::

        trtl.claim_verdict("tl_induction_overlap", kit.load_cells(root)[model][task])

    Returns:
        ``{"claim", "verdict", "tests": [{"experiment", "condition", "metric", "value",
        "ci_low", "ci_high", "null", "sign", "verdict"}], "notes": [...]}`` (notes: e.g.
        identical TR and TL sets, which make their contrasts exactly 0).
    """
    if claim not in CLAIMS:
        raise ValueError(f"Unknown claim {claim!r}; choose one of {list(CLAIMS)}.")
    tests = []
    for t in _claim_tests(claim):
        res = results.get(t.experiment)
        row = _row(res.table, t.condition, t.metric, t.where) if res is not None else None
        null = t.null
        if isinstance(null, tuple) and res is not None:
            null_row = _row(res.table, *null)
            null = float(null_row["value"]) if null_row is not None else math.nan
        if row is None or not isinstance(null, float):
            tests.append(
                {
                    "experiment": t.experiment,
                    "condition": t.condition,
                    "metric": t.metric,
                    "value": math.nan,
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                    "null": math.nan,
                    "sign": t.sign,
                    "verdict": "unclear",
                    "missing": True,
                }
            )
            continue
        v, lo, hi = float(row["value"]), float(row["ci_low"]), float(row["ci_high"])
        tests.append(
            {
                "experiment": t.experiment,
                "condition": t.condition,
                "metric": t.metric,
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "null": float(null),
                "sign": t.sign,
                "verdict": judge(v, lo, hi, sign=t.sign, null=float(null)),
            }
        )
    notes = []
    for experiment in dict.fromkeys(t.experiment for t in _claim_tests(claim)):
        res = results.get(experiment)
        heads = dict(getattr(res.settings, "heads", ()) or ()) if res is not None else {}
        if (
            "TR" in heads
            and "TL" in heads
            and set(heads["TR"]) == set(heads["TL"])
            and any(" - " in t["condition"] and "random" not in t["condition"] for t in tests)
        ):
            notes.append(
                f"the TR and TL head sets of {experiment} are identical "
                f"({' '.join(heads['TR'])}), so TR-vs-TL contrasts are exactly 0"
            )
    verdicts = [t["verdict"] for t in tests]
    if all(v == "holds" for v in verdicts):
        verdict = "holds"
    elif any(v == "does not hold" for v in verdicts):
        verdict = "does not hold"
    else:
        verdict = "unclear"
    return {"claim": claim, "verdict": verdict, "tests": tests, "notes": notes}


def trtl_verdicts(results_root: str | Path) -> pd.DataFrame:
    """The verdict of every claim for every model and task under ``results_root``, from the
    saved tables (see :func:`claim_verdict`), plus an ``"all tasks"`` row per model and claim
    (:func:`~icl_heads.experiments.kit.pool_verdicts`: holds (or does not hold) when it does
    on every task, else unclear).

    Example::

        trtl.trtl_verdicts("docs/results/data/trtl")

    Returns:
        Tidy DataFrame ``model, task, claim, statement, verdict, detail``.
    """
    rows = []
    for model, tasks in load_cells(results_root).items():
        for claim, statement in CLAIMS.items():
            per_task = []
            for task, results in tasks.items():
                got = claim_verdict(claim, results)
                per_task.append(got["verdict"])
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
            holds = sum(v == "holds" for v in per_task)
            fails = sum(v == "does not hold" for v in per_task)
            rows.append(
                {
                    "model": model,
                    "task": "all tasks",
                    "claim": claim,
                    "statement": statement,
                    "verdict": pool_verdicts(per_task),
                    "detail": f"holds on {holds}/{len(per_task)} tasks, does not hold on "
                    f"{fails}/{len(per_task)}",
                }
            )
    columns = ["model", "task", "claim", "statement", "verdict", "detail"]
    return pd.DataFrame(rows, columns=columns)


def _detail(tests: list[dict]) -> str:
    parts = []
    for t in tests:
        if t.get("missing"):
            parts.append(f"{t['condition']} {t['metric']}: missing")
            continue
        rel = ">" if t["sign"] > 0 else "<"
        if math.isnan(t["value"]):
            parts.append(
                f"{t['condition']} {t['metric']}: undefined (NaN: e.g. a correlation "
                "with a metric no head changes, or no prompt in the label space)"
            )
            continue
        parts.append(
            f"{t['condition']} {t['metric']} = {fmt(t['value'])} "
            f"[{fmt(t['ci_low'])}, {fmt(t['ci_high'])}] "
            f"({rel} {fmt(t['null'])}?)"
        )
    return "; ".join(parts)


__all__ = ["CLAIMS", "VERDICTS", "VERDICT_ALPHA", "claim_verdict", "trtl_verdicts"]
