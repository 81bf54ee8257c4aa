"""Summaries of the TR/TL experiments: the contrasts, correlations, stabilities and
overlaps the paper's claims rest on, with 95% intervals, and one sentence per claim with
its verdict (:func:`~icl_heads.experiments.trtl.claim_verdict`, printed as given)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..experiments.kit import fmt
from ..experiments.trtl.verdicts import CLAIMS, VERDICT_ALPHA, claim_verdict
from ..results import ExperimentResult
from .numbers import is_nan, metric_label, select_rows, side, text_table, value_ci, with_ci


def claim_lines(result: ExperimentResult, experiment: str | None = None) -> list[str]:
    """One paragraph per claim of the TR/TL paper that ``result`` tests (as ``experiment``,
    default its name): the claim, its verdict (:func:`~icl_heads.experiments.trtl.
    claim_verdict`, printed as given) and one sentence per statistic it rests on, written
    from that statistic's interval.

    Example::

        claim_lines(ablation_result)
        # ['Claim: TR ablation lowers ... — verdict: does not hold', '  TL ablation left ...']
    """
    experiment = experiment or result.name
    out = []
    for claim, statement in CLAIMS.items():
        got = claim_verdict(claim, {experiment: result})
        tests = [t for t in got["tests"] if t["experiment"] == experiment]
        if not tests or len(tests) != len(got["tests"]):
            continue
        out.append(f"Claim: {statement} — verdict: {got['verdict']}")
        out += [f"  {_test_sentence(t, result)}" for t in tests]
        out += [f"  Note: {note}" for note in got.get("notes", ())]
        reason = got.get("reason")
        if isinstance(reason, str) and reason:
            out.append(f"  ({reason})")
    return out


def _reading(t: Mapping, null_text: str = "0") -> str:
    """What the interval of test ``t`` shows against its predicted sign."""
    if t.get("missing"):
        return "not measured by this run"
    if is_nan(t["value"]):
        return "undefined (NaN: e.g. no prompt in the label space, or a metric no head changes)"
    if t["ci_low"] == t["ci_high"] == t["value"] == t["null"]:
        return f"exactly {null_text}: no effect at all"
    s = side(t["ci_low"], t["ci_high"], t["null"])
    if s == 0:
        return f"no clear effect (the interval includes {null_text})"
    return "as the claim predicts" if s == t["sign"] else "the opposite of the claim"


def _test_sentence(t: Mapping, result: ExperimentResult) -> str:
    condition, metric = t["condition"], t["metric"]
    where = {"alpha": VERDICT_ALPHA} if "alpha" in result.table.columns else {}
    ci = with_ci(t["value"], t["ci_low"], t["ci_high"], signed=True)
    verb = "steering" if result.name == "steering" else "ablation"
    label = metric_label(metric)
    if " - " in condition and metric.startswith("delta_"):
        a, b = condition.split(" - ", 1)
        b_name = f"random sets ({b})" if b.startswith("random_") else b
        changes = [
            with_ci(*value_ci(result, condition=c, metric=metric, **where), signed=True)
            for c in (a, b)
        ]
        at = f" at alpha={VERDICT_ALPHA:g}" if where else ""
        s = side(t["ci_low"], t["ci_high"], t["null"])
        if s:
            head = (
                f"{a} {verb} left the {label} {'higher' if s > 0 else 'lower'} than "
                f"{b_name} did{at}: change"
            )
        else:
            head = f"{a} {verb} vs {b_name}{at}: change in the {label}"
        return f"{head} {changes[0]} vs {changes[1]}, {condition} = {ci}: {_reading(t)}."
    if metric.startswith("delta_"):
        at = f" at alpha={VERDICT_ALPHA:g}" if where else ""
        return f"{condition} {verb}{at} changed the {label} by {ci}: {_reading(t)}."
    if metric.startswith("spearman_drop_"):
        dropped = metric_label(metric.removeprefix("spearman_drop_"))
        return (
            f"Spearman rho of the {condition} score with the drop in {dropped} when the head "
            f"alone is ablated: {ci}: {_reading(t)}."
        )
    if metric == "tr_minus_tl_spearman":
        return (
            f"Under {condition.replace('_', ' ')}, the TR map's rank correlation with the "
            f"gold-label map minus the TL map's: {ci}: {_reading(t)}."
        )
    if metric == "top_k_overlap":
        return (
            f"{condition}: top-k overlap {ci} against {fmt(t['null'])} by chance: "
            f"{_reading(t, fmt(t['null']))}."
        )
    rel = ">" if t["sign"] > 0 else "<"
    return f"{condition} {metric} = {ci} (predicted {rel} {fmt(t['null'])}): {_reading(t)}."


def _contrast_lines(result: ExperimentResult, metrics: Sequence[str], **where) -> list[str]:
    contrasts = list(dict.fromkeys(select_rows(result, kind="contrast", **where)["condition"]))
    effects = list(dict.fromkeys(select_rows(result, kind="effect", **where)["condition"]))
    metrics = [m for m in metrics if m in set(result.table["metric"])]
    if not contrasts or not metrics:
        return []
    columns = [f"Δ {metric_label(m)}" for m in metrics]

    def cell(condition: str, column: str) -> str:
        metric = metrics[columns.index(column)]
        return with_ci(*value_ci(result, condition=condition, metric=metric, **where), signed=True)

    return [
        *text_table("change from baseline", effects, columns, cell),
        *text_table("contrast", contrasts, columns, cell),
    ]


def ablation_lines(result: ExperimentResult) -> list[str]:
    """The summary of a ablation result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        ablation_lines(result)      # list of lines to print
    """
    metrics = ("delta_label_space_rate", "delta_in_space_accuracy", "delta_accuracy")
    base = [
        f"{metric_label(m)} {with_ci(*value_ci(result, condition='baseline', metric=m))}"
        for m in ("accuracy", "label_space_rate", "in_space_accuracy")
    ]
    return [
        "Baseline (no ablation): " + ", ".join(base) + ".",
        "What the ablations changed (95% CIs over prompts; a contrast 'A - B' is A's change "
        "minus B's, paired by prompt):",
        *_contrast_lines(result, metrics),
        *claim_lines(result),
    ]


def steering_lines(result: ExperimentResult) -> list[str]:
    """The summary of a steering result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        steering_lines(result)      # list of lines to print
    """
    target = getattr(getattr(result.settings, "target", None), "perturbation", "zero_shot")
    alphas = sorted(set(result.table["alpha"].dropna())) if "alpha" in result.table else []
    alpha = VERDICT_ALPHA if VERDICT_ALPHA in alphas else (alphas[-1] if alphas else None)
    metrics = (
        "delta_label_space_rate",
        "delta_alignment",
        "delta_in_space_accuracy",
        "delta_rotation",
    )
    where = {"alpha": alpha} if alpha is not None else {}
    out = [
        f"What steering {target.replace('_', '-')} prompts changed at alpha={alpha:g} (95% CIs; "
        "'A - B' is A's change minus B's):"
        if alpha is not None
        else "What steering changed:",
        *_contrast_lines(result, metrics, **where),
    ]
    claims = claim_lines(result, f"steering_{target}")
    if not claims:
        claims = [
            f"The paper's steering claims are judged on zero-shot prompts (--target "
            f"zero_shot) at alpha={VERDICT_ALPHA:g}; this run steered {target} prompts."
        ]
    return out + claims


def find_heads_lines(result: ExperimentResult) -> list[str]:
    """The summary of a find heads result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        find_heads_lines(result)      # list of lines to print
    """
    out = []
    for name in ("TR", "TL"):
        heads = select_rows(result, condition=name, metric=f"{name.lower()}_score")
        if len(heads):
            score = with_ci(*value_ci(result, condition=name, metric=f"{name.lower()}_score"))
            rest = with_ci(*value_ci(result, condition="all heads", metric=f"{name.lower()}_score"))
            out.append(
                f"{name} heads: {heads['heads'].iloc[0]} (mean {name} score {score}; all heads "
                f"{rest})."
            )
    overlap = value_ci(result, condition="TR∩TL", metric="overlap")
    chance = value_ci(result, condition="TR∩TL", metric="chance_overlap")
    rho = value_ci(result, condition="TR vs TL", metric="spearman")
    if not is_nan(overlap[0]):
        out.append(
            f"TR and TL sets overlap {with_ci(*overlap)} (chance {fmt(chance[0])}); the TR and "
            f"TL maps' Spearman rho over heads is {with_ci(*rho, signed=True)}: "
            + {
                1: "heads that score high on TR tend to score high on TL.",
                -1: "heads that score high on TR tend to score low on TL.",
                0: "no clear relation between the two maps.",
            }[side(rho[1], rho[2])]
        )
    base = [
        f"{metric_label(m)} {with_ci(*value_ci(result, condition='baseline', metric=m))}"
        for m in ("accuracy", "label_space_rate")
    ]
    return out + ["Baseline: " + ", ".join(base) + "."]


def perturbation_lines(result: ExperimentResult) -> list[str]:
    """The summary of a perturbation result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        perturbation_lines(result)      # list of lines to print
    """
    rows = select_rows(result, kind="stability")
    conditions = list(dict.fromkeys(rows["condition"]))
    columns = ["TR Spearman", "TL Spearman", "TR - TL"]
    metrics = dict(zip(columns, ("tr_spearman", "tl_spearman", "tr_minus_tl_spearman")))

    def cell(condition: str, column: str) -> str:
        return with_ci(
            *value_ci(result, condition=condition, metric=metrics[column], kind="stability")
        )

    return [
        "How stable each map is against the gold-label map (Spearman over heads, 95% CIs):",
        *text_table("condition", conditions, columns, cell),
        *claim_lines(result),
    ]


def correlation_lines(result: ExperimentResult) -> list[str]:
    """The summary of a correlation result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        correlation_lines(result)      # list of lines to print
    """
    effects = ("label_space_rate", "in_space_accuracy", "logit_diff")
    columns = [f"drop in {metric_label(e)}" for e in effects]

    def cell(score: str, column: str) -> str:
        metric = f"spearman_drop_{effects[columns.index(column)]}"
        return with_ci(*value_ci(result, condition=score, metric=metric), signed=True)

    return [
        "Spearman rho of each score with the single-head ablation effect (95% CIs):",
        *text_table("score", ["TR", "TL"], columns, cell),
        *claim_lines(result),
    ]


def reconciliation_lines(result: ExperimentResult) -> list[str]:
    """The summary of a reconciliation result (see :func:`icl_heads.summaries.summary_lines`).

    Example::

        reconciliation_lines(result)      # list of lines to print
    """
    rows = select_rows(result, metric="top_k_overlap")
    out = ["Top-k overlaps against chance (95% CIs):"]
    for condition in dict.fromkeys(rows["condition"]):
        chance = value_ci(result, condition=condition, metric="chance_overlap")[0]
        value = with_ci(*value_ci(result, condition=condition, metric="top_k_overlap"))
        out.append(f"  {condition}: {value} (chance {fmt(chance)})")
    return out + claim_lines(result)
