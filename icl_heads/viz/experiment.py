"""The figure a result draws with ``.plot()`` (:func:`experiment_figure`), chosen from what
its table and maps hold, never from its name: a new experiment plots without a change
here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd

from .ablation import STATE_AXIS_TITLE, STATE_METRICS, ablated_sets, ablation_differences
from .curves import condition_bars, curve_axis, layer_curves
from .maps import head_heatmaps
from .scatter import correlation_scatter
from .style import BASELINE_CONDITIONS, describe_settings

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .protocols import ResultLike


def experiment_figure(result: ResultLike, *, title: str | None = None) -> go.Figure:
    """The figure of an :class:`~icl_heads.results.ExperimentResult` (``result.plot()``),
    chosen from what the result holds (never from its name):

    - maps and an empty table: :func:`head_heatmaps` of the maps, top heads outlined;
    - a per-head table (``layer``, ``head``) with score (``*_score``) and effect
      (``delta_*``) columns, e.g. ``correlation``'s ``tables["heads"]``:
      :func:`correlation_scatter`, every score against every effect's drop, with rho;
    - maps and a table whose levels are the unchanged model's only (every ``level`` row,
      or every row where the table has no ``kind``, is a :data:`BASELINE_CONDITIONS`
      condition; e.g. ``find_task_heads``): the maps are the finding, :func:`head_heatmaps`;
    - a ``layer`` table of head ablations (conditions ``X`` with their random controls
      ``random_X`` and a baseline, no ``kind``; e.g. ``head_ablation_geometry``):
      :func:`ablation_differences`, each set's difference from the baseline in its own
      panel per metric, paired bands from ``tables["effect"]`` where the result has it;
    - a table with a ``layer`` / ``alpha`` / ``k`` axis: :func:`layer_curves`, one panel
      per metric, one curve per condition, confidence bands (state-geometry tables say
      that state 0 is the embeddings);
    - otherwise :func:`condition_bars` with confidence error bars, baseline and chance lines.

    Tables with a ``kind`` column (the TR/TL experiments: ``level``, ``effect``,
    ``contrast``, ...) draw their levels (and the other kinds that have no level rows, such
    as overlaps and correlations), one panel per metric; ``chance`` rows become chance
    lines (for accuracy and in-space accuracy) and ``chance_<x>`` rows the chance line of
    the metric ending in ``<x>``.

    Example::

        result = ih.ablation_experiment(model, prompts, heads={"TR": tr.top()})
        viz.experiment_figure(result)  # the same as result.plot()
    """
    name = title or _result_title(result)
    table = result.table
    if result.maps and table.empty:
        return head_heatmaps(result.maps, title=name, highlight_top=None)
    found = _score_effect_table(result.tables)
    if found is not None:
        heads, scores, effects = found
        return correlation_scatter(heads, scores, effects, title=name)
    if result.maps and _baseline_levels_only(table):
        return head_heatmaps(result.maps, title=name, highlight_top=None)
    drawn, chance = _levels(table)
    axis = curve_axis(drawn)
    if axis == "layer" and "kind" not in table.columns and ablated_sets(table):
        effect = result.tables.get("effect")
        if effect is not None and not {"condition", "metric", "layer"} <= set(effect.columns):
            effect = None
        return ablation_differences(
            drawn, effect=effect, chance=chance or _label_chance(result, drawn), title=name
        )
    if axis is not None:
        states = axis == "layer" and bool(set(drawn["metric"]) & set(STATE_METRICS))
        return layer_curves(
            drawn,
            x=axis,
            chance=chance or _label_chance(result, drawn),
            title=name,
            x_title=STATE_AXIS_TITLE if states else None,
        )
    if "kind" in table.columns:
        return condition_bars(drawn, chance=chance, facet=True, title=name)
    return condition_bars(drawn, chance=chance or None, title=name)


def _label_chance(result, table: pd.DataFrame) -> dict[str, float]:
    """Chance (``1 / labels``, from the settings' ``labels``) of the table's accuracies."""
    labels = getattr(result.settings, "labels", None)
    if not labels or len(labels) < 2:
        return {}
    return {
        str(m): 1.0 / len(labels)
        for m in dict.fromkeys(table["metric"])
        if str(m).endswith("accuracy")
    }


def _result_title(result) -> str:
    """The result's name and how it was made (a label: never used to pick the figure)."""
    meta = describe_settings(result.settings)
    return f"{result.name}" + (f" ({meta})" if meta else "")


def _score_effect_table(
    tables: Mapping[str, pd.DataFrame],
) -> tuple[pd.DataFrame, list[str], list[str]] | None:
    """The first per-head table with score and effect columns, and those columns."""
    for frame in tables.values():
        if not {"layer", "head"} <= set(frame.columns):
            continue
        scores = [c for c in frame.columns if str(c).endswith("_score")]
        effects = [c for c in frame.columns if str(c).startswith("delta_")]
        if scores and effects:
            return frame, scores, effects
    return None


def _baseline_levels_only(table: pd.DataFrame) -> bool:
    """Whether the table's levels are all of the unchanged model (no intervened condition:
    what the result found is in its maps)."""
    levels = table[table["kind"] == "level"] if "kind" in table.columns else table
    conditions = set(levels["condition"])
    return bool(conditions) and conditions <= set(BASELINE_CONDITIONS)


def _levels(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """The rows a figure draws, and the chance levels read from ``chance`` rows."""
    chance: dict[str, float] = {}
    metrics = list(dict.fromkeys(table["metric"]))
    for metric in metrics:
        if metric != "chance" and not metric.startswith("chance_"):
            continue
        value = table.loc[table["metric"] == metric, "value"].dropna()
        if value.empty:
            continue
        if metric == "chance":
            targets = [m for m in metrics if m in ("accuracy", "in_space_accuracy")]
        else:
            suffix = metric[len("chance_") :]
            targets = [m for m in metrics if m.endswith(suffix) and m != metric]
        for target in targets:
            chance.setdefault(target, float(value.iloc[0]))
    drawn = table[~table["metric"].astype(str).str.startswith("chance")]
    if "kind" in drawn.columns:
        levels = drawn[drawn["kind"] == "level"]
        others = drawn[~drawn["kind"].isin(["level", "effect", "contrast"])]
        drawn = pd.concat([levels, others]) if len(levels) else drawn
    return drawn, chance
