"""The verdict on each of the geometry paper's claims, computed from saved results only
(:func:`geometry_claim_verdict`, :func:`geometry_verdicts`, pooled over tasks by
:func:`geometry_pooled_verdicts`), with the rules of
:mod:`icl_heads.experiments.verdict_rules` (``docs/methods.md``, "Verdict rules").

Example::

    verdicts = geometry_verdicts("docs/results/data/geometry")
    verdicts[verdicts["claim"] == "order"][["model", "task", "verdict"]]
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ...geometry import ONSET_FRACTION
from ...results import ExperimentResult
from ...stats import independent_difference_ci, mean_ci
from ..kit import SeedResults, fmt, load_cells, per_seed, random_name
from ..verdict_rules import (
    RATE_METRICS,
    UNCLEAR,
    UNTESTABLE,
    floor_or_ceiling,
    is_no_op,
    judge,
    margin_for,
    pool_claim,
    pool_seeds,
    rescale_interval,
    worst_case_sum,
)
from .curves import ALIGNMENT, SEPARABILITY, spans

#: ``(key, statement, statistic, reference, predicted direction)`` of every claim.
CLAIMS = (
    (
        "order",
        "Separability rises in early layers, alignment in later ones",
        f"onset of {ALIGNMENT} minus onset of {SEPARABILITY} (k=4; onset = first state at "
        f"{ONSET_FRACTION:.0%} of the maximum)",
        "0",
        "> 0",
    ),
    (
        "icl",
        "ICL (k > 0) raises alignment more than separability",
        "late-state mean of [Δ logit_lens_accuracy − Δ probe_accuracy], Δ = k=4 minus k=0 "
        "(paired by query)",
        "0",
        "> 0",
    ),
    (
        "pth",
        "PTH ablation lowers early separability",
        f"early-state mean of {SEPARABILITY} with the PTH ablated minus with the random "
        "sets ablated (worst-case interval from the two saved intervals)",
        "0",
        "< 0",
    ),
    (
        "ih",
        "IH ablation lowers late alignment",
        f"late-state mean of {ALIGNMENT} with the IH ablated minus with the random sets "
        "ablated (worst-case interval from the two saved intervals)",
        "0",
        "< 0",
    ),
    (
        "tv",
        "Task vectors raise alignment",
        f"change of the final-state {ALIGNMENT} of zero-shot prompts with the task vector "
        "injected at the pre-registered state L // 2 (95% interval; the other states in "
        "the notes)",
        "0",
        "> 0",
    ),
)


#: The experiments the claims read (a folder with none of them is not a geometry folder).
GEOMETRY_FAMILY = (
    "geometry",
    ("layer_geometry_k0", "layer_geometry_k4", "task_vector", "head_ablation"),
)


def n_layers(result: ExperimentResult) -> int:
    """The model's block count, from a layer-geometry result (its largest possible state).

    Example::

        n_layers(cells["layer_geometry_k4"])           # 30 on SmolLM2-135M
    """
    layers = result.settings.layers
    return max(layers) if layers else 0


def icl_effect(
    k0: ExperimentResult, k4: ExperimentResult, seed: int = 0
) -> tuple[float, float, float, int]:
    """Late-state mean over prompts of ``(Δ logit-lens correct) − (Δ probe correct)``,
    ``Δ`` = k=4 minus k=0: paired by query (:func:`~icl_heads.stats.mean_ci` of the
    differences) when both sets have the same queries, else the difference of two
    independent means (:func:`~icl_heads.stats.independent_difference_ci`).

    Example::

        value, low, high, n = icl_effect(cells["layer_geometry_k0"], cells["layer_geometry_k4"])
    """
    late = spans(sorted(set(k4.tables["per_prompt"]["layer"])), n_layers(k4))["late"]
    wide = []
    for result in (k0, k4):
        frame = result.tables["per_prompt"]
        frame = frame[frame["layer"].isin(late)]
        wide.append(
            frame.groupby("prompt").agg(
                query=("query_example", "first"),
                lens=("logit_lens_accuracy", "mean"),
                probe=("probe_accuracy", "mean"),
            )
        )
    a, b = wide
    if len(a) == len(b) and (a["query"].to_numpy() == b["query"].to_numpy()).all():
        diff = (b["lens"] - a["lens"]) - (b["probe"] - a["probe"])
        return mean_ci(diff.to_numpy(), seed=seed)
    return independent_difference_ci(
        (b["lens"] - b["probe"]).to_numpy(), (a["lens"] - a["probe"]).to_numpy(), seed=seed
    )


def preregistered_layer(cells: dict[str, ExperimentResult]) -> int:
    """The injection state of the task-vector claim, fixed before the results: ``L // 2``
    (``L`` blocks, from the layer-geometry result, else the task-vector settings).

    Example::

        preregistered_layer(cells)          # 15 on SmolLM2-135M (30 blocks)
    """
    if "layer_geometry_k4" in cells:
        return n_layers(cells["layer_geometry_k4"]) // 2
    return (max(cells["task_vector"].settings.layers) + 1) // 2


def _order(cells: dict[str, ExperimentResult]) -> dict:
    onset = cells["layer_geometry_k4"].tables["onset"]
    row = onset[onset["metric"] == f"{ALIGNMENT} - {SEPARABILITY}"].iloc[0]
    got = {"value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high, "null": 0.0}
    got["margin"] = margin_for("onset")
    if math.isnan(row.value):
        got["reason"] = "onset undefined: a curve never reaches its threshold"
    return got


def _icl(cells: dict[str, ExperimentResult]) -> dict:
    value, low, high, _ = icl_effect(cells["layer_geometry_k0"], cells["layer_geometry_k4"])
    got = {"value": value, "ci_low": low, "ci_high": high, "null": 0.0}
    got["margin"] = margin_for("logit_lens_accuracy")
    late = spans(
        sorted(set(cells["layer_geometry_k4"].tables["per_prompt"]["layer"])),
        n_layers(cells["layer_geometry_k4"]),
    )["late"]
    for metric in ("logit_lens_accuracy", "probe_accuracy"):
        values = []
        for key in ("layer_geometry_k0", "layer_geometry_k4"):
            frame = cells[key].tables["per_prompt"]
            values += list(frame[frame["layer"].isin(late)][metric].astype(float))
        bound = floor_or_ceiling(values)
        if not bound:
            break
    else:
        got["reason"] = "logit-lens and probe accuracy at their floor or ceiling on every prompt"
    return got


def _head_ablation(key: str, cells: dict[str, ExperimentResult]) -> dict:
    name, metric, span = (
        ("PTH", SEPARABILITY, "early") if key == "pth" else ("IH", ALIGNMENT, "late")
    )
    summary = cells["head_ablation"].tables["summary"]
    pick = summary[(summary["metric"] == metric) & (summary["span"] == span)]
    rows = {c: pick[pick["condition"] == c].iloc[0] for c in ("baseline", name, random_name(name))}
    mine, rand = rows[name], rows[random_name(name)]
    value, low, high = worst_case_sum(
        [
            (1.0, mine.value, mine.ci_low, mine.ci_high),
            (-1.0, rand.value, rand.ci_low, rand.ci_high),
        ]
    )
    got = {"value": value, "ci_low": low, "ci_high": high, "null": 0.0}
    got["margin"] = margin_for(metric, rows["baseline"].value)
    got["notes"] = [
        f"{name} {fmt(mine.value)} [{fmt(mine.ci_low)}, {fmt(mine.ci_high)}], "
        f"{random_name(name)} {fmt(rand.value)} [{fmt(rand.ci_low)}, {fmt(rand.ci_high)}], "
        f"baseline {fmt(rows['baseline'].value)}"
    ]
    if metric in RATE_METRICS:
        bound = floor_or_ceiling([r.value for r in rows.values()])
        if bound:
            got["reason"] = f"{metric} at its {bound} in every condition"
    return got


def _task_vector(cells: dict[str, ExperimentResult]) -> dict:
    result = cells["task_vector"]
    effect = result.tables["effect"]
    effect = effect[effect["metric"] == ALIGNMENT]
    layer = preregistered_layer(cells)
    table = result.table
    zero = table[(table["condition"] == "zero_shot") & (table["metric"] == ALIGNMENT)]
    got = {
        "null": 0.0,
        "margin": margin_for(ALIGNMENT, zero["value"].iloc[0] if len(zero) else None),
    }
    live = effect[~effect.apply(lambda r: is_no_op(r["value"], r["ci_low"], r["ci_high"]), axis=1)]
    notes = [
        f"{len(effect) - len(live)} no-op injection state(s) left out "
        f"({', '.join(str(int(x)) for x in effect.loc[~effect.index.isin(live.index), 'layer'])})"
    ]
    if len(live):
        best = live.loc[live["value"].idxmax()]
        notes.append(
            f"best state {int(best.layer)}: {fmt(best.value)} [{fmt(best.ci_low)}, "
            f"{fmt(best.ci_high)}] (Bonferroni), descriptive only"
        )
        notes.append(
            f"Bonferroni intervals: {int((live['ci_high'] < 0).sum())}/{len(live)} states "
            f"significantly negative, {int((live['ci_low'] > 0).sum())}/{len(live)} positive"
        )
    got["notes"] = notes
    row = effect[effect["layer"] == layer]
    if not len(row):
        got.update(value=math.nan, ci_low=math.nan, ci_high=math.nan)
        got["reason"] = f"the pre-registered state {layer} was not among the injection states"
        return got
    row = row.iloc[0]
    level = float(row["level"]) if "level" in row and math.isfinite(row["level"]) else 0.95
    low, high = rescale_interval(row.value, row.ci_low, row.ci_high, level)
    got.update(value=float(row.value), ci_low=low, ci_high=high, layer=layer)
    if is_no_op(row.value, row.ci_low, row.ci_high):
        got["reason"] = f"injecting at state {layer} is a no-op (exactly 0)"
    return got


def geometry_claim_verdict(key: str, cells: dict[str, ExperimentResult]) -> dict:
    """The verdict on one claim from one task's saved results (``{experiment: result}``):
    its statistic with a 95% interval and equivalence margin, judged by
    :func:`~icl_heads.experiments.verdict_rules.judge`, or ``untestable`` in a degenerate
    design (a metric at its floor or ceiling in every condition, a no-op injection, an
    undefined onset); ``unclear`` when a result is missing. Results over several prompt
    seeds (:class:`~icl_heads.experiments.kit.SeedResults`) give each seed's verdict pooled
    by :func:`~icl_heads.experiments.verdict_rules.pool_seeds`.

    Example::

        geometry_claim_verdict("tv", kit.load_cells(root)[model][task])["verdict"]

    Returns:
        ``{"claim", "verdict", "tests": [one test: "experiment", "condition", "metric",
        "value", "ci_low", "ci_high", "null", "sign", "margin", "verdict", + "reason"],
        "notes"}``.
    """
    keys = [k for k, *_ in CLAIMS]
    if key not in keys:
        raise ValueError(f"Unknown claim {key!r}; choose one of {keys}.")
    if isinstance(cells, SeedResults):
        return pool_seeds(
            [geometry_claim_verdict(key, r) for r in per_seed(cells)], seeds=cells.seeds
        )
    experiment, condition, metric, sign = {
        "order": ("layer_geometry_k4", "k=4", f"onset {ALIGNMENT} - {SEPARABILITY}", 1),
        "icl": ("layer_geometry_k4", "k=4 - k=0", "late Δ logit_lens - Δ probe", 1),
        "pth": ("head_ablation", "PTH - random_PTH", f"early {SEPARABILITY}", -1),
        "ih": ("head_ablation", "IH - random_IH", f"late {ALIGNMENT}", -1),
        "tv": ("task_vector", "task_vector", f"Δ final {ALIGNMENT}", 1),
    }[key]
    test = {"experiment": experiment, "condition": condition, "metric": metric, "sign": sign}
    test.update(value=math.nan, ci_low=math.nan, ci_high=math.nan, null=0.0, margin=math.nan)
    notes: list[str] = []
    try:
        if key == "order":
            got = _order(cells)
        elif key == "icl":
            got = _icl(cells)
        elif key in ("pth", "ih"):
            got = _head_ablation(key, cells)
        else:
            got = _task_vector(cells)
    except (KeyError, IndexError, ValueError):
        test.update(verdict=UNCLEAR, missing=True)
        return {"claim": key, "verdict": UNCLEAR, "tests": [test], "notes": ["missing result"]}
    notes += got.pop("notes", [])
    test.update({k: float(v) if k != "reason" else v for k, v in got.items()})
    if "reason" in got:
        test["verdict"] = UNTESTABLE
    else:
        test["verdict"] = judge(
            test["value"], test["ci_low"], test["ci_high"], sign=sign, null=0.0,
            margin=test["margin"],
        )  # fmt: skip
    return {"claim": key, "verdict": test["verdict"], "tests": [test], "notes": notes}


def geometry_verdicts(results_root: str | Path) -> pd.DataFrame:
    """The verdict on each claim, per model and task, computed from saved results only
    (:func:`geometry_claim_verdict`).

    Example::

        geometry_verdicts("docs/results/data/geometry")

    Returns:
        One row per model x task x claim: ``model, task, claim, statement, value, ci_low,
        ci_high, reference, verdict, margin, note`` (``reference``: the null of the
        statistic, 0; ``note``: the untestable reason and the descriptive notes).
    """
    root = Path(results_root)
    rows = []
    for model, tasks in (load_cells(root, family=GEOMETRY_FAMILY) if root.is_dir() else {}).items():
        for task, cells in tasks.items():
            for key, statement, _, _, _ in CLAIMS:
                got = geometry_claim_verdict(key, cells)
                test = got["tests"][0]
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "claim": key,
                        "statement": statement,
                        "value": test["value"],
                        "ci_low": test["ci_low"],
                        "ci_high": test["ci_high"],
                        "reference": test["null"],
                        "verdict": got["verdict"],
                        "margin": test["margin"],
                        "note": "; ".join(
                            ([f"untestable: {test['reason']}"] if "reason" in test else [])
                            + got["notes"]
                        ),
                    }
                )
    columns = ["model", "task", "claim", "statement", "value", "ci_low", "ci_high"]
    columns += ["reference", "verdict", "margin", "note"]
    return pd.DataFrame(rows, columns=columns)


def geometry_pooled_verdicts(results_root: str | Path) -> pd.DataFrame:
    """Each claim's verdict per model over its tasks
    (:func:`~icl_heads.experiments.verdict_rules.pool_claim`: a random-effects estimate of
    the claim's statistic; untestable tasks left out and counted).

    Example::

        geometry_pooled_verdicts("docs/results/data/geometry")

    Returns:
        One row per model x claim: ``model, claim, statement, value, ci_low, ci_high,
        reference, verdict, margin, k, untestable, method``.
    """
    root = Path(results_root)
    rows = []
    for model, tasks in (load_cells(root, family=GEOMETRY_FAMILY) if root.is_dir() else {}).items():
        for key, statement, _, _, _ in CLAIMS:
            pooled = pool_claim([geometry_claim_verdict(key, cells) for cells in tasks.values()])
            test = pooled["tests"][0]
            rows.append(
                {"model": model, "claim": key, "statement": statement}
                | {k: test[k] for k in ("value", "ci_low", "ci_high")}
                | {"reference": test["null"], "verdict": pooled["verdict"]}
                | {k: test[k] for k in ("margin", "k", "untestable", "method")}
            )
    columns = ["model", "claim", "statement", "value", "ci_low", "ci_high", "reference"]
    columns += ["verdict", "margin", "k", "untestable", "method"]
    return pd.DataFrame(rows, columns=columns)


__all__ = [
    "CLAIMS",
    "geometry_claim_verdict",
    "geometry_pooled_verdicts",
    "geometry_verdicts",
    "icl_effect",
    "n_layers",
    "preregistered_layer",
]
