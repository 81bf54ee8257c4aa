"""Summaries of the geometry experiments: the onset per metric, the change from clean
per ablated head set, the task vector's largest effect, and the claims' verdicts (the
results pages' rules: :func:`~icl_heads.experiments.geometry.verdicts.geometry_claim_verdict`)."""

from __future__ import annotations

import math

from ..experiments.geometry.curves import ALIGNMENT, SEPARABILITY
from ..experiments.geometry.verdicts import geometry_claim_verdict
from ..experiments.kit import judge, random_name
from ..experiments.verdict_rules import LAYER_MARGIN
from ..results import ExperimentResult
from .numbers import difference_interval, is_nan, metric_label, side, text_table, with_ci


def _onset_lines(result: ExperimentResult) -> list[str]:
    onset = result.tables.get("onset")
    if onset is None or onset.empty:
        return []
    out = [
        "Onset per metric (first state at 90% of its maximum; state 0 is the embeddings; 95% CIs):"
    ]
    for _, row in onset.iterrows():
        signed = " - " in str(row["metric"])
        out.append(
            f"  {row['metric']}: {with_ci(row['value'], row['ci_low'], row['ci_high'], signed=signed)}"
        )
    return out


def layer_geometry_lines(result: ExperimentResult) -> list[str]:
    """The summary of a layer geometry result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        layer_geometry_lines(result)      # list of lines to print
    """
    out = _onset_lines(result)
    onset = result.tables.get("onset")
    key = f"{ALIGNMENT} - {SEPARABILITY}"
    if onset is not None and key in set(onset["metric"]):
        row = onset[onset["metric"] == key].iloc[0]
        verdict = judge(
            row["value"], row["ci_low"], row["ci_high"], sign=1, null=0.0, margin=LAYER_MARGIN
        )
        reading = {
            1: "alignment rises after separability",
            -1: "alignment rises before separability",
            0: "no clear order",
        }[side(row["ci_low"], row["ci_high"])]
        out.append(
            f"Claim: Separability rises in early layers, alignment in later ones — verdict on "
            f"these prompts: {verdict} ({key} = "
            f"{with_ci(row['value'], row['ci_low'], row['ci_high'], signed=True)} states: "
            f"{reading}; the results pages judge it at k=4)."
        )
    return out


def head_ablation_lines(result: ExperimentResult) -> list[str]:
    """The summary of a head ablation result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        head_ablation_lines(result)      # list of lines to print
    """
    summary = result.tables.get("summary")
    if summary is None or summary.empty:
        return []

    def level(condition: str, metric: str, span: str) -> tuple[float, float, float]:
        rows = summary[
            (summary["condition"] == condition)
            & (summary["metric"] == metric)
            & (summary["span"] == span)
        ]
        if len(rows) != 1:
            return math.nan, math.nan, math.nan
        r = rows.iloc[0]
        return float(r["value"]), float(r["ci_low"]), float(r["ci_high"])

    cells = [
        (SEPARABILITY, "early"),
        (SEPARABILITY, "late"),
        (ALIGNMENT, "early"),
        (ALIGNMENT, "late"),
    ]
    columns = [f"{span} {m}" for m, span in cells]
    sets = [c for c in dict.fromkeys(summary["condition"]) if c != "baseline"]

    def cell(condition: str, column: str) -> str:
        metric, span = cells[columns.index(column)]
        clean, mine = level("baseline", metric, span), level(condition, metric, span)
        if condition == "clean":
            return with_ci(*clean)
        if any(is_nan(x) for x in (*clean, *mine)):
            return "–"
        change = mine[0] - clean[0]
        return with_ci(change, *difference_interval(mine, clean), signed=True)

    out = [
        "Change from clean per ablated set (mean over the early / late states; state 0, the "
        "embeddings, is left out; approximate 95% CIs from the two levels' intervals, "
        "conservative for these paired prompts):",
        *text_table("set", ["clean", *sets], columns, cell),
    ]
    for key, name, metric, span, statement in (
        ("pth", "PTH", SEPARABILITY, "early", "PTH ablation lowers early separability"),
        ("ih", "IH", ALIGNMENT, "late", "IH ablation lowers late alignment"),
    ):
        mine, rand = level(name, metric, span), level(random_name(name), metric, span)
        if is_nan(mine[0]):
            continue
        # the verdict and its statistic as the results page judges them (one rule)
        claim = geometry_claim_verdict(key, {"head_ablation": result})
        test = claim["tests"][0]
        reading = {
            -1: "lower than with random sets, as the claim predicts",
            1: "higher than with random sets: the opposite of the claim",
            0: "not clearly different from random sets",
        }[side(test["ci_low"], test["ci_high"], test["null"])]
        contrast = with_ci(test["value"], test["ci_low"], test["ci_high"], signed=True)
        out.append(
            f"Claim: {statement} — verdict: {claim['verdict']}. With {name} ablated the {span} "
            f"{metric_label(metric)} is {with_ci(*mine)} against {with_ci(*rand)} with "
            f"{random_name(name)} and {with_ci(*level('baseline', metric, span))} clean "
            f"({name} - {random_name(name)} = {contrast}): {reading}."
        )
    return out


def task_vector_lines(result: ExperimentResult) -> list[str]:
    """The summary of a task vector result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        task_vector_lines(result)      # list of lines to print
    """
    effect = result.tables.get("effect")
    if effect is None or effect.empty:
        return []
    out = [
        "Largest change of the zero-shot prompts' final state by injecting the task vector "
        "(Bonferroni 95% CIs over injection layers):"
    ]
    verdict_line = []
    for metric in (ALIGNMENT, SEPARABILITY, "accuracy", "label_space_rate"):
        rows = effect[effect["metric"] == metric].dropna(subset=["value"])
        if rows.empty:
            continue
        best = rows.loc[rows["value"].idxmax()]
        out.append(
            f"  {metric_label(metric)}: {with_ci(best['value'], best['ci_low'], best['ci_high'], signed=True)} "
            f"(injected at state {int(best['layer'])})"
        )
        if metric == ALIGNMENT:  # judged at the pre-registered state, not the best one
            claim = geometry_claim_verdict("tv", {"task_vector": result})
            test = claim["tests"][0]
            verdict_line.append(
                f"Claim: Task vectors raise alignment — verdict: {claim['verdict']} (judged at "
                f"the pre-registered state L//2, no-op states excluded: "
                f"{with_ci(test['value'], test['ci_low'], test['ci_high'], signed=True)}; the "
                f"best state above is descriptive)."
            )
    return out + verdict_line
