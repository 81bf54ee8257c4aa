"""The verdict on each of the geometry paper's claims, computed from saved results only
(:func:`geometry_verdicts`), with the kit's rule (:func:`~icl_heads.experiments.kit.judge`).

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
from ..kit import judge, load_cells, random_name
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
        f"early-state mean of {SEPARABILITY} with the PTH ablated",
        random_name("PTH"),
        "< random",
    ),
    (
        "ih",
        "IH ablation lowers late alignment",
        f"late-state mean of {ALIGNMENT} with the IH ablated",
        random_name("IH"),
        "< random",
    ),
    (
        "tv",
        "Task vectors raise alignment",
        f"largest change of the final-state {ALIGNMENT} of zero-shot prompts over injection "
        "layers (Bonferroni interval)",
        "0",
        "> 0",
    ),
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


def _statistic(
    key: str, cells: dict[str, ExperimentResult]
) -> tuple[float, float, float, float, int]:
    """``(value, ci_low, ci_high, reference, sign)`` of one claim (KeyError / IndexError
    when a cell or row is missing)."""
    if key == "order":
        onset = cells["layer_geometry_k4"].tables["onset"]
        row = onset[onset["metric"] == f"{ALIGNMENT} - {SEPARABILITY}"].iloc[0]
        return row.value, row.ci_low, row.ci_high, 0.0, 1
    if key == "icl":
        value, low, high, _ = icl_effect(cells["layer_geometry_k0"], cells["layer_geometry_k4"])
        return value, low, high, 0.0, 1
    if key in ("pth", "ih"):
        name, metric, span = (
            ("PTH", SEPARABILITY, "early") if key == "pth" else ("IH", ALIGNMENT, "late")
        )
        summary = cells["head_ablation"].tables["summary"]
        pick = summary[(summary["metric"] == metric) & (summary["span"] == span)]
        mine = pick[pick["condition"] == name].iloc[0]
        rand = pick[pick["condition"] == random_name(name)].iloc[0]
        return mine.value, mine.ci_low, mine.ci_high, rand.value, -1
    effect = cells["task_vector"].tables["effect"]
    effect = effect[effect["metric"] == ALIGNMENT]
    best = effect.loc[effect["value"].idxmax()]
    return best.value, best.ci_low, best.ci_high, 0.0, 1


def geometry_verdicts(results_root: str | Path) -> pd.DataFrame:
    """The verdict on each claim, per model and task, computed from saved results only.

    Example::

        geometry_verdicts("docs/results/data/geometry")

    Returns:
        One row per model x task x claim: ``model, task, claim, statement, value, ci_low,
        ci_high, reference, verdict`` (:func:`~icl_heads.experiments.kit.judge`:
        ``holds`` / ``does not hold`` / ``unclear``: the interval excludes the reference
        value on the predicted side / on the other side, or is exactly the reference / does
        not exclude it).
    """
    root = Path(results_root)
    rows = []
    for model, tasks in (load_cells(root) if root.is_dir() else {}).items():
        for task, cells in tasks.items():
            for key, statement, _, _, _ in CLAIMS:
                value = low = high = reference = math.nan
                sign = 1
                try:
                    value, low, high, reference, sign = _statistic(key, cells)
                except (KeyError, IndexError, ValueError):
                    pass
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "claim": key,
                        "statement": statement,
                        "value": value,
                        "ci_low": low,
                        "ci_high": high,
                        "reference": reference,
                        "verdict": judge(value, low, high, sign=sign, null=reference),
                    }
                )
    return pd.DataFrame(rows)
