"""Figures of tidy experiment tables: :func:`layer_curves` (a metric over layers, alpha
or k, one curve per condition with its confidence band) and :func:`condition_bars` (bars
per condition and metric with confidence error bars, baseline and chance lines)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .style import BASELINE_CONDITIONS, chance_for, colours_for, escape, rgba

if TYPE_CHECKING:
    import plotly.graph_objects as go


#: Columns of an experiment table that are a curve's x axis, in order of preference.
CURVE_AXES = ("layer", "alpha", "k")


def layer_curves(
    table: pd.DataFrame,
    *,
    x: str | None = None,
    metrics: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    chance: float | Mapping[str, float] | None = None,
    cols: int | None = None,
    title: str | None = None,
    x_title: str | None = None,
) -> go.Figure:
    """Curves over layers (or ``alpha``, ``k``): one panel per metric, one curve per
    condition, each with its confidence band (``ci_low`` .. ``ci_high``).

    Args:
        table: a tidy experiment table (``condition, metric, value, ci_low, ci_high, n`` and
            the x column).
        x: the x column (default: the first of ``layer``, ``alpha``, ``k`` it has).
        metrics, conditions: which to draw, in order (default: all, in table order).
        chance: a dotted horizontal line per panel (a number, or ``{metric: value}``).
        cols: panels per row (default: 1 for up to 3 metrics, else 2).
        title: the figure's title.
        x_title: the x axis title (default: the x column's name; for state indices
            ``viz.ablation.STATE_AXIS_TITLE`` says that state 0 is the embeddings).

    Returns:
        A figure with, per condition and metric, a band trace (``fill="toself"``) and a
        ``lines+markers`` trace; curves of one condition share a legend entry. Each panel's
        y axis is titled with its metric; the chance line (a layout line) has a legend
        entry of its own.

    Example::

        layer_curves(result.table, chance={"probe_accuracy": 0.5}, x_title="state")
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = x or curve_axis(table)
    if x is None or x not in table.columns:
        raise ValueError(
            f"layer_curves: the table has no x column ({', '.join(CURVE_AXES)}); "
            f"its columns are {list(table.columns)}."
        )
    metrics = list(metrics or dict.fromkeys(table["metric"]))
    conditions = list(conditions or dict.fromkeys(table["condition"]))
    cols = cols or (1 if len(metrics) <= 3 else 2)
    n_rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(
        rows=n_rows,
        cols=cols,
        subplot_titles=metrics,
        vertical_spacing=min(0.1, 0.35 / max(1, n_rows)),
        horizontal_spacing=0.08,
    )
    colours = colours_for(conditions)
    for condition in conditions:
        color = colours[condition]
        dash = "dot" if str(condition).startswith("random") else "solid"
        for j, metric in enumerate(metrics):
            row, col = divmod(j, cols)
            rows = table[(table["condition"] == condition) & (table["metric"] == metric)]
            rows = rows[rows[x].notna()].sort_values(x)
            if rows.empty:
                continue
            xs = rows[x].tolist()
            low, high = rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)
            if np.isfinite(low).any():
                fig.add_trace(
                    go.Scatter(
                        x=xs + xs[::-1],
                        y=list(high) + list(low[::-1]),
                        fill="toself",
                        mode="lines",
                        fillcolor=rgba(color, 0.15),
                        line=dict(width=0),
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=str(condition),
                        name=f"{condition} CI",
                    ),
                    row=row + 1,
                    col=col + 1,
                )
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=rows["value"],
                    mode="lines+markers",
                    name=str(condition),
                    line=dict(color=color, dash=dash),
                    legendgroup=str(condition),
                    showlegend=j == 0,
                    customdata=np.stack([low, high, rows["n"].to_numpy()], axis=-1),
                    hovertemplate=(
                        f"{escape(condition)}<br>{x} = %{{x}}<br>{escape(metric)} = "
                        "%{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}], "
                        "n=%{customdata[2]}<extra></extra>"
                    ),
                ),
                row=row + 1,
                col=col + 1,
            )
    chance_shown = False
    for j, metric in enumerate(metrics):
        row, col = divmod(j, cols)
        fig.update_yaxes(title_text=metric, row=row + 1, col=col + 1)
        level = chance_for(chance, metric)
        if level is not None:
            if not chance_shown:  # a legend entry for the layout lines
                fig.add_trace(
                    go.Scatter(
                        x=[None],
                        y=[None],
                        mode="lines",
                        name="chance",
                        line=dict(color="#888", dash="dot"),
                        legendgroup="chance",
                    )
                )
                chance_shown = True
            fig.add_hline(
                y=level,
                line=dict(color="#888", dash="dot"),
                row=row + 1,
                col=col + 1,
                annotation_text="chance",
                annotation_position="bottom right",
            )
    for j in range(len(metrics)):
        row, col = divmod(j, cols)
        if j + cols >= len(metrics):  # the lowest panel of its column
            fig.update_xaxes(title_text=x_title or x, row=row + 1, col=col + 1)
    fig.update_layout(
        title=title, height=max(340, 250 * n_rows + 90), legend=dict(title=dict(text="condition"))
    )
    return fig


def condition_bars(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    baseline: str | None = None,
    chance: float | Mapping[str, float] | None = None,
    facet: bool = False,
    cols: int = 4,
    title: str | None = None,
) -> go.Figure:
    """Bars per condition and metric with confidence intervals as error bars; the baseline
    condition's value and the chance level as dashed / dotted lines.

    Args:
        table: a tidy experiment table.
        metrics, conditions: which to draw, in order (default: all, in table order).
        baseline: the condition drawn as the baseline line (default: the first of
            :data:`BASELINE_CONDITIONS` present; ``""``: none).
        chance: chance level, a number or ``{metric: value}`` (default: a ``chance``
            column of the table, where there is one).
        facet: one panel per metric with the conditions along x (for metrics on different
            scales); default: one panel, metrics along x, grouped by condition.
        cols: panels per row when ``facet``.
        title: the figure's title.

    Returns:
        Without ``facet``: one ``bar`` trace per condition (``error_y`` from the CI). With
        ``facet``: one ``bar`` trace per condition and metric. Lines are layout shapes.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = list(metrics or dict.fromkeys(table["metric"]))
    conditions = list(conditions or dict.fromkeys(table["condition"]))
    table = table[table["metric"].isin(metrics) & table["condition"].isin(conditions)]
    if baseline is None:
        baseline = next((c for c in BASELINE_CONDITIONS if c in conditions), "")
    if chance is None and "chance" in table.columns:
        chance = {
            m: float(v) for m, v in table.groupby("metric")["chance"].first().items() if pd.notna(v)
        }
    colours = colours_for(conditions)

    def bar(rows: pd.DataFrame, x: list, condition: str, showlegend: bool = True) -> go.Bar:
        value = rows["value"].to_numpy(float)
        return go.Bar(
            x=x,
            y=value,
            name=str(condition),
            marker_color=colours[condition],
            legendgroup=str(condition),
            showlegend=showlegend,
            error_y=dict(
                type="data",
                symmetric=False,
                array=np.nan_to_num(rows["ci_high"].to_numpy(float) - value),
                arrayminus=np.nan_to_num(value - rows["ci_low"].to_numpy(float)),
            ),
            customdata=rows[["ci_low", "ci_high", "n"]].to_numpy(),
            hovertemplate=(
                "%{x}: %{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}], "
                "n=%{customdata[2]}<extra>" + escape(condition) + "</extra>"
            ),
        )

    def lines(metric: str) -> list[tuple[float, str, str]]:
        out = []
        if baseline:
            rows = table[(table["condition"] == baseline) & (table["metric"] == metric)]
            if len(rows) and np.isfinite(float(rows["value"].iloc[0])):
                out.append((float(rows["value"].iloc[0]), "#333", "dash"))
        level = chance_for(chance, metric)
        if level is not None:
            out.append((level, "#888", "dot"))
        return out

    if not facet:
        fig = go.Figure()
        for condition in conditions:
            rows = table[table["condition"] == condition]
            rows = (
                rows.set_index("metric")
                .reindex([m for m in metrics if m in set(rows["metric"])])
                .reset_index()
            )
            fig.add_trace(bar(rows, list(rows["metric"]), condition))
        for position, metric in enumerate(metrics):
            for y, color, dash in lines(metric):
                fig.add_shape(
                    type="line",
                    x0=position - 0.45,
                    x1=position + 0.45,
                    y0=y,
                    y1=y,
                    xref="x",
                    yref="y",
                    line=dict(color=color, dash=dash, width=2),
                )
        fig.update_layout(
            barmode="group",
            title=title,
            yaxis_title="value",
            xaxis=dict(categoryorder="array", categoryarray=metrics),
            legend=dict(title=dict(text="condition")),
        )
        return fig

    cols = max(1, min(cols, len(metrics)))
    n_rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(
        rows=n_rows,
        cols=cols,
        subplot_titles=metrics,
        vertical_spacing=min(0.16, 0.5 / max(1, n_rows)),
        horizontal_spacing=0.06,
    )
    shown = set()
    for j, metric in enumerate(metrics):
        row, col = divmod(j, cols)
        for condition in conditions:
            rows = table[(table["condition"] == condition) & (table["metric"] == metric)]
            if rows.empty:
                continue
            fig.add_trace(
                bar(rows.head(1), [str(condition)], condition, showlegend=condition not in shown),
                row=row + 1,
                col=col + 1,
            )
            shown.add(condition)
        for y, color, dash in lines(metric):
            fig.add_hline(
                y=y, line=dict(color=color, dash=dash, width=1.5), row=row + 1, col=col + 1
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title=title,
        height=max(360, 280 * n_rows + 80),
        bargap=0.15,
        legend=dict(title=dict(text="condition")),
    )
    return fig


def curve_axis(table: pd.DataFrame) -> str | None:
    """The table's x axis for curves: the first of :data:`CURVE_AXES` with more than one
    value, or None.

    Example::

        curve_axis(result.table)  # "layer" for a layer sweep, None for plain conditions
    """
    for column in CURVE_AXES:
        if column in table.columns and table[column].notna().any() and table[column].nunique() > 1:
            return column
    return None
