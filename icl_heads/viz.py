"""Plotly figures of the toolkit. Every function returns a ``go.Figure`` and never calls
``.show()``: the figure is interactive in Jupyter, ``fig.write_html(path)`` (or
:func:`save_figure`) makes a standalone page, and PNG export works where ``kaleido`` is
installed (optional).

Figures and what they show:

- :func:`head_heatmap` / :func:`head_heatmaps`: layer x head maps of any
  :class:`~icl_heads.heads.HeadScores` (layer 0 at the top, heads along x), one map or
  several side by side with shared axes (e.g. TR | TL | induction | previous-token). Signed
  maps get a diverging ``RdBu`` scale centred at 0 (Plotly's RdBu: negative red, positive
  blue, as in TransformerLens's demos), maps without negative values a sequential
  ``Blues``. Hover shows layer, head, score and rank; the top-k heads are outlined.
- :func:`score_scatter`: one map against another over all heads (e.g. TR vs TL), coloured
  by layer, top heads labelled; with ``fit=True`` (and in :func:`effect_scatter`) the
  least-squares line and Spearman's rho.
- :func:`layer_curves`: a metric over layers (or alpha, or k), one curve per condition with
  its confidence band, one panel per metric.
- :func:`condition_bars`: bars per condition and metric with confidence error bars, the
  baseline and chance as dashed lines.
- :func:`attention_pattern`: the attention pattern of one head on one prompt, tokens on
  both axes.
- :func:`experiment_figure`: the figure an :class:`~icl_heads.results.ExperimentResult`
  draws with ``.plot()``, chosen from what its table and maps hold (never from its name,
  so a new experiment plots without a change here).

This module draws and imports none of the types it draws: a map is anything shaped like
:class:`HeadMap` and a result anything shaped like :class:`ResultLike` (``HeadScores`` and
``ExperimentResult`` are; their ``.plot()`` methods call in here, never the other way).

Every figure that shows heads carries ``customdata = [layer, head, ...]`` on its points,
so a click handler (the linked report, :mod:`icl_heads.report`) can tell which head was
clicked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .stats import correlation

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from torch import Tensor

#: Colours of conditions, in order (Plotly's D3 palette, blue and red first).
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Fixed colours of the conditions the experiments name (others take :data:`PALETTE`).
CONDITION_COLOURS = {
    "baseline": "#7f7f7f",
    "clean": "#7f7f7f",
    "zero_shot": "#7f7f7f",
    "TR": "#d62728",
    "TL": "#1f77b4",
    "random_TR": "#ff9896",
    "random_TL": "#aec7e8",
    "PTH": "#ff7f0e",
    "IH": "#2ca02c",
    "random (PTH)": "#ffbb78",
    "random (IH)": "#98df8a",
    "icl": "#9467bd",
    "task_vector": "#8c564b",
}
#: Condition names read as "nothing was changed" (drawn as the baseline line of bar charts).
BASELINE_CONDITIONS = ("baseline", "clean", "none", "unablated", "no_intervention")
#: Columns of an experiment table that are a curve's x axis, in order of preference.
CURVE_AXES = ("layer", "alpha", "k")
#: Outline colour of the top-k heads and of a selected head.
OUTLINE = "black"


@runtime_checkable
class HeadMap(Protocol):
    """What the figures read from a ``[layer, head]`` map:
    :class:`~icl_heads.heads.HeadScores` is one (any object with these members draws)."""

    scores: Tensor  #: ``[n_layers, n_heads]`` values, NaN where not scored
    name: str  #: what the value is, e.g. ``"tr_score"``
    settings: Any  #: how it was made (read by :func:`describe_settings`), or None

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...

    def top(self, k: int | None = None) -> list: ...

    def rank(self) -> Tensor: ...

    def __getitem__(self, head: tuple[int, int]) -> float: ...


class ResultLike(Protocol):
    """What :func:`experiment_figure` reads from a result:
    :class:`~icl_heads.results.ExperimentResult` is one."""

    name: str  #: the experiment (titles only: never used to pick the figure)
    table: pd.DataFrame  #: tidy rows ``condition, metric, value, ci_low, ci_high, n, ...``
    settings: Any
    maps: Mapping[str, HeadMap]
    tables: Mapping[str, pd.DataFrame]


# --------------------------------------------------------------------------- head maps


def head_heatmap(
    scores: HeadMap,
    *,
    title: str | None = None,
    diverging: bool | None = None,
    highlight_top: int | None = 0,
) -> go.Figure:
    """Layer x head heatmap of one map (layer 0 at the top, heads along x).

    Args:
        scores: the map.
        title: default: the score's name and how it was made (model, task, k, n).
        diverging: symmetric ``RdBu`` scale centred at 0 (default when the map has
            negative values), else sequential ``Blues``.
        highlight_top: outline the top-k heads (0: none; ``None``: the map's default
            ``top()``, 3% of heads unless the map says otherwise).

    Returns:
        A figure with one ``heatmap`` trace; hover shows layer, head, score and rank, and
        ``customdata[i][j] = [layer, head, rank]``.
    """
    meta = describe_settings(scores.settings)
    default_title = scores.name + (f" ({meta})" if meta else "")
    fig = head_heatmaps(
        [scores],
        diverging=diverging,
        highlight_top=highlight_top,
        title=title or default_title,
        subplot_titles=False,
    )
    return fig


def head_heatmaps(
    maps: Mapping[str, HeadMap] | Sequence[HeadMap],
    *,
    title: str | None = None,
    diverging: bool | Sequence[bool] | None = None,
    highlight_top: int | None = 0,
    shared_scale: bool = False,
    subplot_titles: bool = True,
    height: int | None = None,
) -> go.Figure:
    """Several layer x head maps side by side with shared layer and head axes.

    Example::

        tr, tl = ih.tsla_scores(model, prompts)
        ih.viz.head_heatmaps({"TR": tr, "TL": tl, "induction": ih.induction_scores(model)})

    Args:
        maps: ``{title: HeadScores}`` (or a list, titled by each map's ``name``); all of
            the same ``[n_layers, n_heads]`` shape.
        title: the figure's title (default: the first map's settings).
        diverging: per map (or one value for all): ``RdBu`` centred at 0, or ``Blues``;
            default: diverging where the map has negative values.
        highlight_top: outline each map's top-k heads (0: none; ``None``: each map's
            default ``top()``).
        shared_scale: one colour range for all maps (only sensible for maps of one kind).
        subplot_titles: write each map's title above it.
        height: pixels (default: grows with the number of layers).

    Returns:
        A figure with one ``heatmap`` trace per map, trace ``i`` on axes ``x{i+1}/y{i+1}``
        with its own colour bar below it.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    named = _named_maps(maps)
    if not named:
        raise ValueError("head_heatmaps needs at least one HeadScores map.")
    shapes = {(m.n_layers, m.n_heads) for m in named.values()}
    if len(shapes) != 1:
        raise ValueError(
            f"All maps must have one [n_layers, n_heads] shape to share axes, got {sorted(shapes)}."
        )
    ((n_layers, n_heads),) = shapes
    n = len(named)
    flags = _per_map(diverging, n, "diverging")
    grids = [m.scores.numpy().astype(float) for m in named.values()]
    shared_limit = max((_abs_max(z) for z in grids), default=1.0)
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_yaxes=True,
        horizontal_spacing=0.04 if n > 1 else 0,
        subplot_titles=list(named) if (subplot_titles and n > 1) else None,
    )
    for i, ((name, scores), z, flag) in enumerate(zip(named.items(), grids, flags)):
        signed = _has_negative(z) if flag is None else bool(flag)
        colour = _colour_kwargs(z, signed, shared_limit if shared_scale else None)
        rank = scores.rank().numpy()
        custom = np.stack(
            [
                np.broadcast_to(np.arange(n_layers)[:, None], z.shape),
                np.broadcast_to(np.arange(n_heads)[None, :], z.shape),
                rank,
            ],
            axis=-1,
        )
        bar = dict(title=dict(text=scores.name, side="top"), thickness=12)
        if n > 1:  # a horizontal colour bar under each facet (titled by the facet above)
            domain = fig.layout[f"xaxis{i + 1 if i else ''}"].domain
            bar = dict(
                orientation="h",
                x=(domain[0] + domain[1]) / 2,
                xanchor="center",
                y=0,
                yanchor="top",
                ypad=45,
                len=(domain[1] - domain[0]) * 0.95,
                thickness=10,
            )
        fig.add_trace(
            go.Heatmap(
                z=_nan_to_none(z),
                customdata=custom,
                name=str(name),
                colorbar=bar,
                hovertemplate=(
                    "<b>L%{customdata[0]}H%{customdata[1]}</b><br>layer %{customdata[0]}, "
                    "head %{customdata[1]}<br>" + _escape(scores.name) + " = %{z:.4g}"
                    f"<br>rank %{{customdata[2]}} of {z.size}<extra>{_escape(name)}"
                    "</extra>"
                ),
                xgap=1,
                ygap=1,
                **colour,
            ),
            row=1,
            col=i + 1,
        )
        if highlight_top != 0:
            for head in top_heads(scores, highlight_top):
                fig.add_shape(
                    type="rect",
                    x0=head.head - 0.5,
                    x1=head.head + 0.5,
                    y0=head.layer - 0.5,
                    y1=head.layer + 0.5,
                    line=dict(color=OUTLINE, width=2),
                    row=1,
                    col=i + 1,
                )
    small = n_layers <= 40
    fig.update_yaxes(
        autorange="reversed",
        tickprefix="L",
        dtick=1 if small else None,
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(title_text="Layer", row=1, col=1)
    fig.update_xaxes(
        tickprefix="H",
        dtick=1 if n_heads <= 16 else None,
        showgrid=False,
        zeroline=False,
        title_text="Head",
    )
    if n > 3:
        fig.update_annotations(font_size=max(9, 14 - n))
    first = next(iter(named.values()))
    meta = describe_settings(first.settings)
    fig.update_layout(
        title=title or (" | ".join(named) + (f" ({meta})" if meta else "")),
        height=height or max(320, 18 * n_layers + (200 if n > 1 else 120)),
        margin=dict(b=120 if n > 1 else 60),
        plot_bgcolor="white",
    )
    return fig


# --------------------------------------------------------------------------- scatter plots


def score_scatter(
    x: HeadMap,
    y: HeadMap,
    *,
    label_top: int = 5,
    fit: bool = False,
    x_title: str | None = None,
    y_title: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """One map against another over all heads, e.g. TR vs TL (one point per head).

    Args:
        x, y: maps of the same shape (NaN heads are left out).
        label_top: write the names of the ``label_top`` best heads of each map beside
            their points (0: none).
        fit: draw the least-squares line and give Spearman's rho and Pearson's r (over
            the plotted heads) in the title.
        x_title, y_title: axis titles (default: the maps' names).
        title: the figure's title.

    Returns:
        A figure whose head trace (``name="heads"``) is coloured by layer and carries
        ``customdata = [layer, head]`` per point.
    """
    import plotly.graph_objects as go

    if (x.n_layers, x.n_heads) != (y.n_layers, y.n_heads):
        raise ValueError(
            f"score_scatter: the maps have shapes [{x.n_layers}, {x.n_heads}] and "
            f"[{y.n_layers}, {y.n_heads}]; give maps of one model."
        )
    xs, ys = x.scores.flatten().numpy(), y.scores.flatten().numpy()
    layers = np.repeat(np.arange(x.n_layers), x.n_heads)
    heads = np.tile(np.arange(x.n_heads), x.n_layers)
    ok = np.isfinite(xs) & np.isfinite(ys)
    labelled = {(h.layer, h.head) for m in (x, y) for h in m.top(label_top)} if label_top else set()
    text = [f"L{l}H{h}" if (l, h) in labelled else "" for l, h in zip(layers, heads)]
    x_name, y_name = x_title or x.name, y_title or y.name
    fig = go.Figure(
        go.Scatter(
            x=xs[ok],
            y=ys[ok],
            mode="markers+text",
            name="heads",
            text=[t for t, keep in zip(text, ok) if keep],
            textposition="top center",
            textfont=dict(size=10),
            customdata=np.stack([layers[ok], heads[ok]], axis=-1),
            marker=dict(
                color=layers[ok],
                colorscale="Viridis",
                cmin=0,
                cmax=max(1, x.n_layers - 1),
                size=8,
                line=dict(width=0.5, color="white"),
                colorbar=dict(title=dict(text="layer"), thickness=12),
            ),
            hovertemplate=(
                "<b>L%{customdata[0]}H%{customdata[1]}</b><br>"
                + _escape(x_name)
                + " = %{x:.4g}<br>"
                + _escape(y_name)
                + " = %{y:.4g}<extra></extra>"
            ),
        )
    )
    heading = title or f"{y_name} vs {x_name}"
    if fit and ok.sum() >= 3:
        slope, intercept = np.polyfit(xs[ok], ys[ok], 1)
        line_x = np.array([xs[ok].min(), xs[ok].max()])
        rho = correlation(xs[ok], ys[ok], method="spearman")
        pearson = float(np.corrcoef(xs[ok], ys[ok])[0, 1])
        fig.add_trace(
            go.Scatter(
                x=line_x,
                y=slope * line_x + intercept,
                mode="lines",
                name=f"fit (slope {slope:.3g})",
                hoverinfo="skip",
                line=dict(color="#444", dash="dash"),
            )
        )
        heading += f"<br><sup>Spearman ρ = {rho:.3f}, Pearson r = {pearson:.3f}, {int(ok.sum())} heads</sup>"
    fig.update_layout(
        title=heading,
        xaxis_title=x_name,
        yaxis_title=y_name,
        showlegend=fit,
        height=480,
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def top_heads(scores: HeadMap, k: int | None = None) -> list:
    """The heads a figure outlines: ``scores.top(k)`` without the heads that only tie into
    it (value at or below the map's median), so a mostly constant map outlines only the
    heads that stand out, and a constant map none."""
    import torch

    finite = scores.scores[torch.isfinite(scores.scores)]
    if finite.numel() == 0:
        return []
    median = float(finite.median())
    return [h for h in scores.top(k) if scores[h] > median]


def effect_scatter(scores: HeadMap, effects: HeadMap, **kwargs) -> go.Figure:
    """A head's score against the effect of ablating it, over all heads, with the fitted
    line and Spearman's rho (the correlation analysis of the TR/TL paper).
    :func:`score_scatter` with ``fit=True``; keyword arguments go to it."""
    kwargs.setdefault("fit", True)
    return score_scatter(scores, effects, **kwargs)


# --------------------------------------------------------------------------- tables


def layer_curves(
    table: pd.DataFrame,
    *,
    x: str | None = None,
    metrics: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    chance: float | Mapping[str, float] | None = None,
    cols: int | None = None,
    title: str | None = None,
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

    Returns:
        A figure with, per condition and metric, a band trace (``fill="toself"``) and a
        ``lines+markers`` trace; curves of one condition share a legend entry.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = x or _curve_axis(table)
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
    colours = _colours(conditions)
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
                        fillcolor=_rgba(color, 0.15),
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
                        f"{_escape(condition)}<br>{x} = %{{x}}<br>{_escape(metric)} = "
                        "%{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}], "
                        "n=%{customdata[2]}<extra></extra>"
                    ),
                ),
                row=row + 1,
                col=col + 1,
            )
    for j, metric in enumerate(metrics):
        level = _chance_for(chance, metric)
        if level is not None:
            row, col = divmod(j, cols)
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
            fig.update_xaxes(title_text=x, row=row + 1, col=col + 1)
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
    colours = _colours(conditions)

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
                "n=%{customdata[2]}<extra>" + _escape(condition) + "</extra>"
            ),
        )

    def lines(metric: str) -> list[tuple[float, str, str]]:
        out = []
        if baseline:
            rows = table[(table["condition"] == baseline) & (table["metric"] == metric)]
            if len(rows) and np.isfinite(float(rows["value"].iloc[0])):
                out.append((float(rows["value"].iloc[0]), "#333", "dash"))
        level = _chance_for(chance, metric)
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


def correlation_scatter(
    heads: pd.DataFrame,
    scores: Sequence[str],
    effects: Sequence[str],
    *,
    drop: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Scores against single-head ablation effects, one panel per (score, effect) pair,
    each with its least-squares line and Spearman's rho in the panel title.

    Args:
        heads: one row per head with ``layer, head`` and the score and effect columns
            (e.g. ``correlation_experiment(...).tables["heads"]``).
        scores: score columns (x), one row of panels each, e.g. ``["tr_score", "tl_score"]``.
        effects: effect columns (y), one column of panels each, e.g.
            ``["delta_label_space_rate", ...]``.
        drop: plot the *drop* (minus the effect: clean - ablated), as the TR/TL paper
            correlates scores with drops; rho then matches the experiment's
            ``spearman_drop_*`` rows.
        title: the figure's title.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles, panels = [], []
    for s in scores:
        for e in effects:
            x = heads[s].to_numpy(float)
            y = heads[e].to_numpy(float) * (-1.0 if drop else 1.0)
            ok = np.isfinite(x) & np.isfinite(y)
            rho = correlation(x[ok], y[ok], method="spearman") if ok.sum() >= 3 else math.nan
            shown = f"ρ = {rho:.2f}" if math.isfinite(rho) else "ρ undefined: constant"
            titles.append(f"{s} vs {'drop in ' if drop else ''}{_effect_name(e)} ({shown})")
            panels.append((s, e, x, y, ok))
    fig = make_subplots(
        rows=len(scores),
        cols=len(effects),
        subplot_titles=titles,
        horizontal_spacing=0.07,
        vertical_spacing=0.14,
    )
    layers = heads["layer"].to_numpy(int)
    head_ids = heads["head"].to_numpy(int)
    for i, (s, e, x, y, ok) in enumerate(panels):
        row, col = divmod(i, len(effects))
        fig.add_trace(
            go.Scatter(
                x=x[ok],
                y=y[ok],
                mode="markers",
                name="heads",
                showlegend=False,
                customdata=np.stack([layers[ok], head_ids[ok]], axis=-1),
                marker=dict(
                    color=layers[ok],
                    colorscale="Viridis",
                    size=6,
                    cmin=0,
                    cmax=max(1, int(layers.max()) if layers.size else 1),
                    showscale=i == 0,
                    colorbar=dict(title=dict(text="layer"), thickness=10),
                ),
                hovertemplate=(
                    "<b>L%{customdata[0]}H%{customdata[1]}</b><br>"
                    + _escape(s)
                    + " = %{x:.4g}<br>"
                    + _escape(e)
                    + (" drop" if drop else "")
                    + " = %{y:.4g}<extra></extra>"
                ),
            ),
            row=row + 1,
            col=col + 1,
        )
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
            slope, intercept = np.polyfit(x[ok], y[ok], 1)
            line_x = np.array([x[ok].min(), x[ok].max()])
            fig.add_trace(
                go.Scatter(
                    x=line_x,
                    y=slope * line_x + intercept,
                    mode="lines",
                    showlegend=False,
                    hoverinfo="skip",
                    line=dict(color="#444", dash="dash"),
                ),
                row=row + 1,
                col=col + 1,
            )
        fig.update_xaxes(title_text=s, row=row + 1, col=col + 1)
    fig.update_layout(title=title, height=max(380, 330 * len(scores) + 60))
    fig.update_annotations(font_size=11)
    return fig


# --------------------------------------------------------------------------- attention


def attention_pattern(
    pattern,
    tokens: Sequence[str],
    *,
    head: object | None = None,
    title: str | None = None,
) -> go.Figure:
    """The attention pattern of one head on one prompt: query position down, key position
    across, the prompt's tokens on both axes (positions are numeric, so repeated tokens stay
    apart).

    Args:
        pattern: ``[query, key]`` attention weights (tensor or array), rows summing to 1.
        tokens: the prompt's tokens (``model.to_str_tokens``), one per position.
        head: the head, for the title (e.g. ``Head(3, 5)``).
        title: the figure's title.
    """
    import plotly.graph_objects as go

    z = _to_numpy(pattern)
    if z.ndim != 2 or z.shape[0] != z.shape[1] or z.shape[0] != len(tokens):
        raise ValueError(
            f"attention_pattern needs a square [query, key] pattern with one "
            f"token per position; got shape {tuple(z.shape)} and {len(tokens)} "
            "tokens."
        )
    labels = [display_token(t) for t in tokens]
    positions = np.arange(len(tokens))
    custom = np.stack(np.meshgrid(positions, positions, indexing="ij"), axis=-1).astype(object)
    query_tok = np.array(labels, dtype=object)[:, None].repeat(len(labels), 1)
    key_tok = np.array(labels, dtype=object)[None, :].repeat(len(labels), 0)
    custom = np.concatenate([custom, query_tok[..., None], key_tok[..., None]], axis=-1)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale="Blues",
            zmin=0,
            zmax=max(float(np.nanmax(z)) if z.size else 1, 1e-6),
            customdata=custom,
            colorbar=dict(title=dict(text="attention"), thickness=12),
            hovertemplate=(
                "query %{customdata[0]} %{customdata[2]} → key %{customdata[1]} "
                "%{customdata[3]}<br>weight %{z:.3f}<extra></extra>"
            ),
        )
    )
    axis = dict(
        tickmode="array",
        tickvals=positions,
        ticktext=labels,
        tickfont=dict(size=9),
        showgrid=False,
        zeroline=False,
    )
    name = f" of {head}" if head is not None else ""
    fig.update_layout(
        title=title or f"Attention pattern{name}",
        xaxis=dict(axis, title="key (attended-to) token", tickangle=-90),
        yaxis=dict(axis, title="query token", autorange="reversed"),
        height=max(420, 11 * len(tokens) + 200),
        width=max(480, 11 * len(tokens) + 260),
        plot_bgcolor="white",
    )
    return fig


def display_token(token: str) -> str:
    """A token as an axis label: newlines and tabs written as ``\\n`` / ``\\t``."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


# --------------------------------------------------------------------------- experiments


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
    - a table with a ``layer`` / ``alpha`` / ``k`` axis: :func:`layer_curves`, one panel
      per metric, one curve per condition, confidence bands;
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
    axis = _curve_axis(drawn)
    if axis is not None:
        return layer_curves(drawn, x=axis, chance=chance, title=name)
    if "kind" in table.columns:
        return condition_bars(drawn, chance=chance, facet=True, title=name)
    return condition_bars(drawn, chance=chance or None, title=name)


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


def _effect_name(column: str) -> str:
    return column[len("delta_") :] if column.startswith("delta_") else column


def save_figure(fig: go.Figure, path: str | Path, *, include_plotlyjs: bool | str = True,
                div_id: str | None = None) -> Path:
    """Write a figure: ``.html`` (standalone; Plotly's JS embedded unless told otherwise,
    so it opens offline; ``include_plotlyjs="directory"`` shares one ``plotly.min.js``
    beside it; ``div_id`` fixes the plot's element id, so regenerated files are identical),
    or ``.png`` / ``.svg`` / ``.pdf`` through ``kaleido`` (optional: ``pip install
    kaleido``; it drives a local Chrome or Chromium)."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".html", ".htm"):
        fig.write_html(path, include_plotlyjs=include_plotlyjs, full_html=True, div_id=div_id)
        return path
    if suffix not in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        raise ValueError(f"save_figure: use a .html, .png, .svg or .pdf path, got {path.name!r}.")
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ImportError(
            f"save_figure({path.name!r}): static images need the optional "
            "package kaleido (pip install kaleido) and a Chrome or Chromium; "
            "or save as .html."
        ) from None
    fig.write_image(path)
    return path


# --------------------------------------------------------------------------- helpers


def _colours(conditions: Sequence[str]) -> dict[str, str]:
    """A colour per condition: the fixed ones of :data:`CONDITION_COLOURS`, then the
    palette's unused colours in order, then Plotly's 24-colour palette: distinct colours for
    up to 30-odd conditions before any repeats."""
    from plotly.colors import qualitative

    fixed = set(CONDITION_COLOURS.values())
    spare = [c for c in PALETTE if c not in fixed]
    spare += [c for c in qualitative.Dark24 if c.lower() not in fixed | set(spare)]
    out: dict[str, str] = {}
    i = 0
    for condition in conditions:
        if condition in CONDITION_COLOURS and CONDITION_COLOURS[condition] not in out.values():
            out[condition] = CONDITION_COLOURS[condition]
            continue
        unused = [c for c in spare if c not in out.values()]
        out[condition] = unused[0] if unused else spare[i % len(spare)]
        i += 1
    return out


def _result_title(result) -> str:
    meta = describe_settings(result.settings)
    return f"{result.name}" + (f" ({meta})" if meta else "")


def describe_settings(settings) -> str:
    """A short title suffix from a result's settings: model, task, k, n."""
    if settings is None:
        return ""
    parts = []
    model = getattr(settings, "model", None)
    if model:
        parts.append(f"model={model}")
    prompts = next(
        (
            getattr(settings, a)
            for a in ("prompts", "source", "icl_prompts")
            if getattr(settings, a, None) is not None
        ),
        None,
    )
    if prompts is None and hasattr(settings, "task") and hasattr(settings, "k"):
        prompts = settings
    if prompts is not None and hasattr(prompts, "task"):
        parts.append(f"task={prompts.task}, k={prompts.k}, n={prompts.n}")
    elif isinstance(getattr(settings, "task", None), str):
        parts.append(f"task={settings.task}")
    return ", ".join(parts)


def _named_maps(maps) -> dict[str, HeadMap]:
    if isinstance(maps, HeadMap):
        maps = [maps]
    if isinstance(maps, Mapping):
        items = list(maps.items())
    else:
        items = []
        for m in maps:
            name, i = getattr(m, "name", "map"), 2
            while name in dict(items):
                name, i = f"{m.name} ({i})", i + 1
            items.append((name, m))
    for key, value in items:
        if not isinstance(value, HeadMap):
            raise TypeError(
                f"head_heatmaps: {key!r} is a {type(value).__name__}, not a HeadScores map."
            )
    return {str(k): v for k, v in items}


def _per_map(value, n: int, what: str) -> list:
    if value is None or isinstance(value, bool):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what}: give one value or one per map ({n}), got {len(values)}.")
    return values


def _has_negative(z: np.ndarray) -> bool:
    finite = z[np.isfinite(z)]
    return bool(finite.size) and float(finite.min()) < 0


def _abs_max(z: np.ndarray) -> float:
    finite = np.abs(z[np.isfinite(z)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _colour_kwargs(z: np.ndarray, signed: bool, limit: float | None) -> dict:
    if signed:
        m = limit if limit is not None else _abs_max(z)
        return dict(colorscale="RdBu", zmid=0.0, zmin=-m, zmax=m)
    finite = z[np.isfinite(z)]
    low = 0.0 if not finite.size else min(0.0, float(finite.min()))
    high = limit if limit is not None else (float(finite.max()) if finite.size else 1.0)
    return dict(colorscale="Blues", zmin=low, zmax=high if high > low else low + 1.0)


def _nan_to_none(z: np.ndarray) -> list:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in z.tolist()]


def _to_numpy(values) -> np.ndarray:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            return values.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(values, dtype=float)


def _curve_axis(table: pd.DataFrame) -> str | None:
    for column in CURVE_AXES:
        if column in table.columns and table[column].notna().any() and table[column].nunique() > 1:
            return column
    return None


def _chance_for(chance, metric: str) -> float | None:
    if chance is None:
        return None
    if isinstance(chance, Mapping):
        value = chance.get(metric)
        return None if value is None else float(value)
    return float(chance)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _escape(text: object) -> str:
    """Text safe inside a Plotly hovertemplate (no ``%{...}`` substitutions, no tags)."""
    return str(text).replace("<", "&lt;").replace(">", "&gt;").replace("{", "(").replace("}", ")")
