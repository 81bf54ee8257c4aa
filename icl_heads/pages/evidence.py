"""What both results pages add under their verdicts: the per-claim **power table** (the n
that would settle each verdict, :mod:`icl_heads.experiments.power`), the **replication
table** (the papers' claims beside ours, with the settings that differ) and each cell's
**wall time**. Everything is read from the saved cells; nothing is typed in.

Example::

    cells = load_cells("docs/results/data/trtl")
    "\\n".join(power_md(trtl_power(cells), TRTL_CLAIMS))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from ..experiments.geometry.curves import ALIGNMENT, SEPARABILITY
from ..experiments.geometry.verdicts import CLAIMS as GEOMETRY_CLAIMS
from ..experiments.geometry.verdicts import geometry_claim_verdict, preregistered_layer
from ..experiments.kit import BASELINE, fmt, per_seed, random_name
from ..experiments.power import POWER, claim_power, power_table
from ..experiments.trtl.verdicts import CLAIMS as TRTL_CLAIMS
from ..experiments.trtl.verdicts import VERDICT_ALPHA, claim_verdict
from ..experiments.verdict_rules import pool_claim
from ..results import ExperimentResult
from .common import fmt_ci

Cells = Mapping[str, Mapping[str, Mapping[str, ExperimentResult]]]

#: TR/TL experiments whose intervals are over heads (bootstrap over the model's heads),
#: not over prompts: more prompts do not narrow them as 1/√n.
OVER_HEADS = ("correlation", "perturbation", "reconciliation")
#: Where the results pages take the papers' claims from (the project's notes on the
#: papers; the papers' own numbers are not in them).
SOURCE = (
    'the shared METHODS.md, whose statements docs/methods.md repeats under "Experiments of '
    'the TR/TL paper" and "Geometry paper"'
)
#: The models the papers used, as the project's notes list them (METHODS.md, "Models").
PAPER_MODELS = "Llama-3-8B, Llama-3.2, Qwen2-7B, Qwen2.5-32B, Yi-34B"
_UNKNOWN = "not in our sources"
#: How the two headline percentages quoted in issue 18 are labelled: we could not read the
#: paper's own text to check them (nor the exact metric and baseline each refers to).
_UNCHECKED = "as quoted, not checked against the paper's text"
ALL_TASKS = "all tasks"


def design_n(result: ExperimentResult | None) -> int | None:
    """The number of prompts behind a result's intervals: its target (steering),
    zero-shot (task vector) or evaluated prompt set's ``n``; None where it has none.

    Example::

        design_n(cells["ablation"])           # 64
    """
    settings = getattr(result, "settings", None)
    for name in ("target", "zero_shot_prompts", "prompts"):
        info = getattr(settings, name, None)
        n = getattr(info, "n", None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def _pooled_n(tasks: Mapping[str, Mapping[str, ExperimentResult]], experiment: str) -> int | None:
    ns = [design_n(results.get(experiment)) for results in tasks.values()]
    ns = [n for n in ns if n is not None]
    return min(ns) if ns else None


def _entries(model, claim, task, got, n_of, unit_of) -> list[dict]:
    return [
        {
            "model": model,
            "claim": claim,
            "task": task,
            "statistic": f"{t['condition']} {t['metric']}",
            "test": t,
            "n": n_of(t["experiment"]),
            "unit": unit_of(t["experiment"]),
            "claim_verdict": got["verdict"],
        }
        for t in got["tests"]
    ]


def _power_frame(cells: Cells, claims: Sequence[str], verdict_of, unit_of) -> pd.DataFrame:
    entries: list[dict] = []
    for model, tasks in cells.items():
        for claim in claims:
            per_task = []
            for task, results in tasks.items():
                got = verdict_of(claim, results)
                per_task.append(got)
                entries += _entries(
                    model, claim, task, got, lambda e, r=results: design_n(r.get(e)), unit_of
                )
            pooled = pool_claim(per_task)
            entries += _entries(
                model, claim, ALL_TASKS, pooled, lambda e, ts=tasks: _pooled_n(ts, e),
                lambda e: "tasks",
            )  # fmt: skip
    return power_table(entries)


def trtl_power(cells: Cells) -> pd.DataFrame:
    """The power table of the TR/TL page
    (:func:`~icl_heads.experiments.power.power_table`): every statistic of every claim
    (:func:`~icl_heads.experiments.trtl.claim_verdict`), per model and task, and pooled
    over tasks (``"all tasks"``, n per task). Statistics of :data:`OVER_HEADS` have
    intervals over heads (``unit="heads"``).

    Example::

        trtl_power(load_cells("docs/results/data/trtl"))[["model", "claim", "power"]]
    """
    return _power_frame(
        cells,
        list(TRTL_CLAIMS),
        claim_verdict,
        lambda e: "heads" if e in OVER_HEADS else "prompts",
    )


def geometry_power(cells: Cells) -> pd.DataFrame:
    """The power table of the geometry page: each claim's statistic
    (:func:`~icl_heads.experiments.geometry.geometry_claim_verdict`), per model and task,
    and pooled over tasks; every interval is over prompts.

    Example::

        geometry_power(load_cells("docs/results/data/geometry"))
    """
    return _power_frame(
        cells, [key for key, *_ in GEOMETRY_CLAIMS], geometry_claim_verdict, lambda e: "prompts"
    )


POWER_NOTE = (
    "For each claim, model and task (and pooled over tasks): is the verdict settled at "
    "this n, and if not, the n that would settle it at {power:.0%} power (two-sided "
    "α = 0.05), from the interval's standard error scaled as 1/√n: the n of prompts at "
    "which the interval would **exclude the null** (for holds / does not hold), or, where "
    'the estimate lies inside the equivalence margin, **no n will** give more than "no '
    'effect larger than the margin" (the n for that is given). The n is an approximation '
    "(normal, the same design, the estimate taken as the true effect). Intervals over the "
    'model\'s heads (correlations, map stability, overlaps) and the pooled "all tasks" '
    "intervals (a t interval with k − 1 degrees of freedom and a between-task variance) "
    "do not shrink as 1/√n with more prompts: **not by n**. The formula is in "
    '[methods.md, "Power"]'
    "(../methods.md#power-the-n-that-would-settle-a-verdict). A claim with several "
    "statistics needs every unclear one settled: its cell shows the largest n."
)


def power_md(frame: pd.DataFrame, claims: Mapping[str, str] | Sequence) -> list[str]:
    """The power section of a page from :func:`trtl_power` or :func:`geometry_power`: per
    model a claim x task table (the claim's verdict and
    :func:`~icl_heads.experiments.power.claim_power`), then every statistic in a
    collapsed table (effect, interval, n, verdict, the n to resolve it)."""
    names = dict(claims) if isinstance(claims, Mapping) else {c[0]: c[1] for c in claims}
    out = ["## Power: the n that would settle each verdict", "", POWER_NOTE.format(power=POWER), ""]
    for model, part in frame.groupby("model", sort=False):
        tasks = list(dict.fromkeys(part["task"]))
        out += [f"### {model}", ""]
        out += ["| claim | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for claim in dict.fromkeys(part["claim"]):
            cells_md = []
            for task in tasks:
                rows = part[(part["claim"] == claim) & (part["task"] == task)]
                if not len(rows):
                    cells_md.append("")
                    continue
                verdict = rows["claim_verdict"].iloc[0]
                cells_md.append(f"{verdict}: {claim_power(verdict, rows.to_dict('records'))}")
            out.append(f"| {names.get(claim, claim)} | " + " | ".join(cells_md) + " |")
        out += ["", "<details><summary>Every statistic</summary>", ""]
        out += [
            "| claim | task | statistic | effect [95% CI] | null ± margin | n | verdict | "
            "to settle it |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in part.itertuples():
            margin = f" ± {fmt(r.margin)}" if _finite(r.margin) else ""
            n = f"{int(r.n)} prompts" if r.unit == "prompts" and _finite(r.n) else f"({r.unit})"
            out.append(
                f"| {r.claim} | {r.task} | {r.statistic} | {fmt_ci(r.value, r.ci_low, r.ci_high)}"
                f" | {fmt(r.null)}{margin} | {n} | {r.verdict} | {r.power} |"
            )
        out += ["", "</details>", ""]
    return out


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# =========================================================================== wall time


def wall_time_md(cells: Cells) -> list[str]:
    """The wall-time section of a page: each cell's computing time in seconds, as
    :func:`~icl_heads.experiments.cells.run_cell` recorded it (``wall_seconds`` in its
    ``result.json``), "not recorded" for cells saved before it was; a cell of several prompt
    seeds shows the sum over them."""
    out = [
        "## Wall time of each cell",
        "",
        "Seconds to compute each cell, as the grid recorded it in the cell's `result.json` "
        '(`wall_seconds`); "not recorded" for cells saved before the grid recorded it.',
        "",
        "| model | task | experiment | wall time (s) |",
        "|---|---|---|---|",
    ]
    for model, tasks in cells.items():
        for task, results in tasks.items():
            for experiment in results:
                times = [r[experiment].wall_seconds for r in per_seed(results) if experiment in r]
                seconds = None if None in times else sum(times)
                shown = "not recorded" if seconds is None else f"{seconds:.1f}"
                if len(times) > 1 and seconds is not None:
                    shown += f" ({len(times)} seeds)"
                out.append(f"| {model} | {task} | {experiment} | {shown} |")
    return out + [""]


# =========================================================================== replication


def _level(result: ExperimentResult | None, condition: str, metric: str, alpha=None) -> float:
    if result is None:
        return math.nan
    t = result.table
    rows = t[(t["condition"] == condition) & (t["metric"] == metric)]
    if alpha is not None and "alpha" in rows.columns and condition != BASELINE:
        rows = rows[(rows["alpha"].astype(float) - alpha).abs() < 1e-9]
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def _trtl_numbers(claim: str, results: Mapping[str, ExperimentResult]) -> str:
    """Our headline numbers of one claim on one task, read from the saved tables."""
    ab, st = results.get("ablation"), results.get("steering_zero_shot")
    if claim in ("tr_ablation_label_space", "tl_ablation_in_space"):
        name, metric = (
            ("TR", "label_space_rate") if claim.startswith("tr") else ("TL", "in_space_accuracy")
        )
        base, mine = _level(ab, BASELINE, metric), _level(ab, name, metric)
        rand = _level(ab, random_name(name), metric)
        chance = f", chance {fmt(_level(ab, BASELINE, 'chance'))}" if name == "TL" else ""
        return f"{fmt(base)} → {fmt(mine)} (random {fmt(rand)}{chance})"
    if claim == "tr_stable_tl_not":
        p = results.get("perturbation")
        return (
            f"ρ(random, gold): TR {fmt(_level(p, 'random_labels', 'tr_spearman'))}, TL "
            f"{fmt(_level(p, 'random_labels', 'tl_spearman'))}; split half: TR "
            f"{fmt(_level(p, 'gold (split half)', 'tr_spearman'))}, TL "
            f"{fmt(_level(p, 'gold (split half)', 'tl_spearman'))}"
        )
    if claim == "scores_predict_ablation":
        c = results.get("correlation")
        return (
            f"TR ρ {fmt(_level(c, 'TR', 'spearman_drop_label_space_rate'))}, TL ρ "
            f"{fmt(_level(c, 'TL', 'spearman_drop_in_space_accuracy'))}"
        )
    if claim in ("tr_steering", "tl_steering"):
        name, metric = (
            ("TR", "label_space_rate") if claim.startswith("tr") else ("TL", "in_space_accuracy")
        )
        a = VERDICT_ALPHA
        return (
            f"{fmt(_level(st, BASELINE, metric))} → {fmt(_level(st, name, metric, a))} "
            f"(random {fmt(_level(st, random_name(name), metric, a))}) at α = {a:g}"
        )
    r = results.get("reconciliation")
    return (
        f"overlap {fmt(_level(r, 'TL vs induction', 'top_k_overlap'))} (chance "
        f"{fmt(_level(r, 'TL vs induction', 'chance_overlap'))})"
    )


#: The TR/TL paper's claims as the project's notes state them (source: METHODS.md, the
#: section and item named), and which of our metrics carries them.
TRTL_PAPER = {
    "tr_ablation_label_space": (
        '"TR ablation lowers label-space rate most; random sets change little" (Experiments '
        "of the TR/TL paper, 1). Issue 18 quotes the paper's headline: TR-head ablation moves "
        "the in-label-space ratio from ~100% to ~20% on Llama-3-8B (" + _UNCHECKED + ")",
        "label-space rate: baseline → TR ablated",
    ),
    "tl_ablation_in_space": (
        '"TL ablation lowers in-space accuracy most (toward chance)" (Experiments of the '
        "TR/TL paper, 1)",
        "in-space accuracy: baseline → TL ablated",
    ),
    "tr_stable_tl_not": (
        '"TR scores should stay stable under random labels, TL scores should not" '
        "(Experiments of the TR/TL paper, 2)",
        "Spearman ρ of each map, random vs gold labels",
    ),
    "scores_predict_ablation": (
        "the correlation analysis is run (Experiments of the TR/TL paper, 3); no expected "
        "value is stated",
        "Spearman ρ, score vs single-head ablation drop",
    ),
    "tr_steering": (
        '"TR steering raises label-space rate" and alignment with the task subspace '
        "(Experiments of the TR/TL paper, 4, 5). Issue 18 quotes the paper's headline: "
        "task-vector steering with TR heads 9.2% → 40.4%, with TL heads 11.2% (" + _UNCHECKED + ")",
        "label-space rate of zero-shot prompts: unsteered → TR-steered",
    ),
    "tl_steering": (
        '"TL steering raises in-space accuracy" and rotation toward the correct label '
        "(Experiments of the TR/TL paper, 4, 5)",
        "in-space accuracy of zero-shot prompts: unsteered → TL-steered",
    ),
    "tl_induction_overlap": (
        "overlap of TL heads with induction heads is measured (Experiments of the TR/TL "
        "paper, 6); no expected value is stated",
        "top-k overlap of TL and induction heads",
    ),
}


def _pooled_verdicts(cells: Cells, claims: Sequence[str], verdict_of) -> dict:
    out = {}
    for model, tasks in cells.items():
        for claim in claims:
            per_task = [verdict_of(claim, results) for results in tasks.values()]
            out[model, claim] = pool_claim(per_task)["verdict"]
    return out


def trtl_replication_md(cells: Cells) -> list[str]:
    """The replication section of the TR/TL page: the paper's claims (as the project's
    notes state them; the paper's own numbers only where issue 18 quotes them, labelled
    unchecked) beside ours on every model (per task, read from the saved tables, and the
    pooled verdict), then the settings side by side."""
    models = list(cells)
    verdicts = _pooled_verdicts(cells, list(TRTL_CLAIMS), claim_verdict)
    out = _replication_intro("TR/TL paper (Yang, Cho, Inoue 2025, arXiv 2509.24164)")
    out += ["| claim | the paper (our notes) | our metric | " + " | ".join(models) + " |"]
    out += ["|---|---|---|" + "---|" * len(models)]
    for claim, (paper, metric) in TRTL_PAPER.items():
        ours = []
        for model in models:
            per_task = "; ".join(
                f"{task}: {_trtl_numbers(claim, results)}" for task, results in cells[model].items()
            )
            ours.append(f"all tasks: **{verdicts[model, claim]}**; {per_task}")
        out.append(f"| {TRTL_CLAIMS[claim]} | {paper} | {metric} | " + " | ".join(ours) + " |")
    settings = {model: _trtl_settings(tasks) for model, tasks in cells.items()}
    return out + _settings_table(settings, _TRTL_SETTING_NAMES)


_TRTL_SETTING_NAMES = (
    ("model", f"{PAPER_MODELS} (METHODS.md, Models)"),
    ("tasks", _UNKNOWN),
    ("n (prompts per cell)", _UNKNOWN),
    ("k (demonstrations)", _UNKNOWN),
    ("head-set size", _UNKNOWN),
    ("ablation mode", _UNKNOWN),
    ("steering protocol", _UNKNOWN),
    ("TL score", _UNKNOWN),
)


def _first(tasks: Mapping[str, Mapping[str, ExperimentResult]], experiment: str):
    return next((r[experiment] for r in tasks.values() if experiment in r), None)


def _trtl_settings(tasks: Mapping[str, Mapping[str, ExperimentResult]]) -> dict:
    found = _first(tasks, "find_task_heads")
    ablation, steering = _first(tasks, "ablation"), _first(tasks, "steering_zero_shot")
    s = getattr(found, "settings", None)
    out = {
        "model": getattr(s, "model", "–"),
        "tasks": ", ".join(tasks),
        "n (prompts per cell)": str(design_n(found)),
        "k (demonstrations)": str(getattr(getattr(s, "prompts", None), "k", "–")),
        "head-set size": f"top {getattr(s, 'top_k', '–')} of each map",
        "TL score": f"normalize={getattr(s, 'normalize', '–')}",
    }
    a = getattr(ablation, "settings", None)
    out["ablation mode"] = (
        f"{getattr(a, 'mode', '–')} ablation at {getattr(a, 'positions', '–')} positions"
    )
    t = getattr(steering, "settings", None)
    out["steering protocol"] = (
        f"{getattr(t, 'vector', '–')}; positions={getattr(t, 'positions', '–')}, "
        f"α in {list(getattr(t, 'alphas', ()))}"
    )
    return out


def _replication_intro(paper: str) -> list[str]:
    return [
        "## Replication: the paper's claims beside ours",
        "",
        f"The {paper} claims, as the project's notes on the paper state them ({SOURCE}; "
        "quoted in the second column with the section they come from); "
        "the paper's own text is not in our sources, so its numbers are shown only where issue "
        "18 quotes them, labelled as unchecked (their exact metric and baseline are not "
        "stated there). "
        "Ours are read from the saved tables, per task, with the verdict pooled over the "
        "tasks. The settings that differ follow the table.",
        "",
    ]


def _settings_table(settings: Mapping[str, Mapping[str, str]], names) -> list[str]:
    models = list(settings)
    out = ["", "Settings, the paper's (as our sources state them) and ours:", ""]
    out += ["| setting | the paper | " + " | ".join(models) + " |"]
    out += ["|---|---|" + "---|" * len(models)]
    for name, paper in names:
        out.append(
            f"| {name} | {paper} | " + " | ".join(settings[m].get(name, "–") for m in models) + " |"
        )
    return out + [""]


GEOMETRY_PAPER = {
    "order": '"Early layers should raise it" (separability); "Later layers should raise it" (alignment) (Geometry paper)',
    "icl": "not stated in our sources (our reading of the two-stage account)",
    "pth": '"ablating the top-k PTHs lowers early-layer separability" (Geometry paper)',
    "ih": '"ablating top-k IHs lowers late-layer alignment" (Geometry paper)',
    "tv": '"adding a task vector raises it" (alignment) (Geometry paper)',
}


def geometry_replication_md(cells: Cells) -> list[str]:
    """The replication section of the geometry page: the paper's claims (as the project's
    notes state them) beside our statistic per task (value [95% CI], from
    :func:`~icl_heads.experiments.geometry.geometry_claim_verdict`) and the pooled verdict
    on every model, then the settings side by side."""
    models = list(cells)
    keys = [key for key, *_ in GEOMETRY_CLAIMS]
    verdicts = _pooled_verdicts(cells, keys, geometry_claim_verdict)
    out = _replication_intro("geometry paper (Yang, Cho, Zhong, Inoue 2025, arXiv 2505.18752)")
    out += ["| claim | the paper (our notes) | our statistic | " + " | ".join(models) + " |"]
    out += ["|---|---|---|" + "---|" * len(models)]
    for key, statement, statistic, _, _ in GEOMETRY_CLAIMS:
        ours = []
        for model in models:
            parts = []
            for task, results in cells[model].items():
                t = geometry_claim_verdict(key, results)["tests"][0]
                parts.append(f"{task}: {fmt_ci(t['value'], t['ci_low'], t['ci_high'])}")
            ours.append(f"all tasks: **{verdicts[model, key]}**; {'; '.join(parts)}")
        out.append(
            f"| {statement} | {GEOMETRY_PAPER[key]} | {statistic} | " + " | ".join(ours) + " |"
        )
    settings = {model: _geometry_settings(tasks) for model, tasks in cells.items()}
    return out + _settings_table(settings, _GEOMETRY_SETTING_NAMES)


_GEOMETRY_SETTING_NAMES = (
    ("model", f"{PAPER_MODELS} (METHODS.md, Models; the TR/TL paper's list)"),
    ("tasks", _UNKNOWN),
    ("n (prompts per cell)", _UNKNOWN),
    ("k (demonstrations)", _UNKNOWN),
    ("head-set size", _UNKNOWN),
    ("ablation mode", _UNKNOWN),
    (
        "task vector",
        "mean of h_l over ICL prompts, injected into zero-shot prompts (replace or add) (METHODS.md)",
    ),
    (
        "separability / alignment",
        f"probe accuracy / cosine of class-mean difference with u_A − u_B (METHODS.md, reconstruction); ours: {SEPARABILITY} / {ALIGNMENT}",
    ),
)


def _geometry_settings(tasks: Mapping[str, Mapping[str, ExperimentResult]]) -> dict:
    k4, ablation, tv = (
        _first(tasks, e) for e in ("layer_geometry_k4", "head_ablation", "task_vector")
    )
    s, a, v = (getattr(r, "settings", None) for r in (k4, ablation, tv))
    layer = preregistered_layer(next(iter(tasks.values()))) if k4 is not None else "–"
    return {
        "model": getattr(s, "model", "–"),
        "tasks": ", ".join(tasks),
        "n (prompts per cell)": f"{design_n(k4)} (task vector: {design_n(tv)} zero-shot)",
        "k (demonstrations)": f"{getattr(getattr(s, 'prompts', None), 'k', '–')} (and 0)",
        "head-set size": f"top {getattr(a, 'top_k', '–')} PTH / IH",
        "ablation mode": f"{getattr(a, 'mode', '–')} ablation at {getattr(a, 'positions', '–')} positions",
        "task vector": f"mode={getattr(v, 'mode', '–')}, judged at state {layer} (L // 2), read at the final state",
        "separability / alignment": f"{SEPARABILITY} / {ALIGNMENT}",
    }


__all__ = [
    "ALL_TASKS",
    "OVER_HEADS",
    "design_n",
    "geometry_power",
    "geometry_replication_md",
    "power_md",
    "trtl_power",
    "trtl_replication_md",
    "wall_time_md",
]
