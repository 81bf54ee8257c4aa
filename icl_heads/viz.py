"""Plotly figures. Every function returns a ``go.Figure`` and never calls ``.show()``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .heads import HeadScores


def head_heatmap(
    scores: HeadScores,
    *,
    title: str | None = None,
    diverging: bool | None = None,
    highlight_top: int | None = 0,
) -> go.Figure:
    """Layer x head heatmap (layer 0 at the top, heads along x) with hover labels.

    Args:
        scores: the map.
        title: default: the score name and metadata.
        diverging: symmetric ``RdBu`` scale centred at 0 (default when the map has
            negative values), else sequential ``Blues``.
        highlight_top: outline the top-k heads (0: none; ``None``: the default 3%).
    """
    import plotly.graph_objects as go

    z = scores.scores.numpy()
    finite = z[np.isfinite(z)]
    if diverging is None:
        diverging = bool(finite.size) and float(finite.min()) < 0
    L, H = z.shape
    text = [[f"L{l}H{h}" for h in range(H)] for l in range(L)]
    kwargs = {}
    if diverging:
        m = float(np.abs(finite).max()) if finite.size else 1.0
        kwargs = dict(colorscale="RdBu", zmid=0.0, zmin=-m, zmax=m)
    else:
        kwargs = dict(colorscale="Blues")
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)], customdata=text,
        hovertemplate="%{customdata}<br>" + scores.name + "=%{z:.4g}<extra></extra>",
        colorbar=dict(title=scores.name), **kwargs))
    if highlight_top != 0:
        for head in scores.top(highlight_top):
            fig.add_shape(type="rect", x0=head.head - 0.5, x1=head.head + 0.5,
                          y0=head.layer - 0.5, y1=head.layer + 0.5,
                          line=dict(color="black", width=2))
    meta = _describe_settings(scores.settings)
    fig.update_layout(title=title or f"{scores.name}" + (f" ({meta})" if meta else ""),
                      xaxis_title="Head", yaxis_title="Layer",
                      yaxis=dict(autorange="reversed"), height=max(300, 18 * L + 120))
    return fig


def _describe_settings(settings) -> str:
    """A short title suffix from a result's settings: model, task, k, n."""
    if settings is None:
        return ""
    parts = []
    model = getattr(settings, "model", None)
    if model:
        parts.append(f"model={model}")
    prompts = getattr(settings, "prompts", None)
    if prompts is None and hasattr(settings, "task"):
        prompts = settings
    if prompts is not None:
        parts.append(f"task={prompts.task}, k={prompts.k}, n={prompts.n}")
    return ", ".join(parts)


def experiment_figure(result, *, title: str | None = None) -> go.Figure:
    """The default figure of an :class:`~icl_heads.results.ExperimentResult`, read from its
    table: curves with confidence bands over ``layer`` or ``alpha`` when the table has such
    a column (one panel per metric, one curve per condition), else bars with confidence
    error bars (metrics along x, one colour per condition)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = result.table
    axis = next((c for c in ("layer", "alpha", "k") if c in table.columns), None)
    metrics = list(dict.fromkeys(table["metric"]))
    conditions = list(dict.fromkeys(table["condition"]))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]
    name = title or f"{result.name} ({_describe_settings(result.settings)})"
    if axis is None:
        fig = go.Figure()
        for i, condition in enumerate(conditions):
            rows = table[table["condition"] == condition]
            fig.add_trace(go.Bar(
                x=rows["metric"], y=rows["value"], name=str(condition),
                marker_color=palette[i % len(palette)],
                error_y=dict(type="data", symmetric=False,
                             array=(rows["ci_high"] - rows["value"]).to_numpy(),
                             arrayminus=(rows["value"] - rows["ci_low"]).to_numpy()),
                customdata=rows[["ci_low", "ci_high", "n"]].to_numpy(),
                hovertemplate="%{x}: %{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}], "
                              "n=%{customdata[2]}<extra>" + str(condition) + "</extra>"))
        fig.update_layout(barmode="group", title=name, yaxis_title="value")
        return fig
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics,
                        vertical_spacing=min(0.08, 0.3 / max(1, len(metrics))))
    for i, condition in enumerate(conditions):
        color = palette[i % len(palette)]
        for j, metric in enumerate(metrics):
            rows = table[(table["condition"] == condition) & (table["metric"] == metric)]
            rows = rows.sort_values(axis)
            if rows.empty:
                continue
            x = rows[axis].tolist()
            fig.add_trace(go.Scatter(
                x=x + x[::-1], y=rows["ci_high"].tolist() + rows["ci_low"].tolist()[::-1],
                fill="toself", fillcolor=_rgba(color, 0.15), line=dict(width=0),
                hoverinfo="skip", showlegend=False, legendgroup=str(condition)),
                row=j + 1, col=1)
            fig.add_trace(go.Scatter(
                x=x, y=rows["value"], mode="lines+markers", name=str(condition),
                line=dict(color=color), legendgroup=str(condition), showlegend=j == 0),
                row=j + 1, col=1)
    fig.update_xaxes(title_text=axis, row=len(metrics), col=1)
    fig.update_layout(title=name, height=max(320, 260 * len(metrics)))
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
