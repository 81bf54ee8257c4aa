"""Scatter plots over heads: one map against another (:func:`score_scatter`), a score
against an ablation effect (:func:`effect_scatter`) and every score against every effect's
drop (:func:`correlation_scatter`), with least-squares lines and Spearman's rho
(:func:`icl_heads.stats.correlation`). Points carry ``customdata = [layer, head]``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..stats import correlation
from .style import escape

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from .protocols import HeadMap


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
                + escape(x_name)
                + " = %{x:.4g}<br>"
                + escape(y_name)
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


def effect_scatter(scores: HeadMap, effects: HeadMap, **kwargs) -> go.Figure:
    """A head's score against the effect of ablating it, over all heads, with the fitted
    line and Spearman's rho (the correlation analysis of the TR/TL paper).
    :func:`score_scatter` with ``fit=True``; keyword arguments go to it."""
    kwargs.setdefault("fit", True)
    return score_scatter(scores, effects, **kwargs)


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
                    + escape(s)
                    + " = %{x:.4g}<br>"
                    + escape(e)
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


def _effect_name(column: str) -> str:
    return column[len("delta_") :] if column.startswith("delta_") else column
