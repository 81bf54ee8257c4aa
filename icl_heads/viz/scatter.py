"""Scatter plots over heads: one map against another (:func:`score_scatter`), a score
against an ablation effect (:func:`effect_scatter`) and every score against every effect's
drop (:func:`correlation_scatter`), with least-squares lines and Spearman's rho
(:func:`icl_heads.stats.correlation`). Points carry ``customdata = [layer, head]``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import zip_longest
from typing import TYPE_CHECKING

import numpy as np

from ..stats import correlation
from .scores import score_info
from .style import escape

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from .protocols import HeadMap


def score_scatter(
    x: HeadMap,
    y: HeadMap,
    *,
    label_top: int = 3,
    fit: bool = False,
    x_title: str | None = None,
    y_title: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """One map against another over all heads, e.g. TR vs TL (one point per head).

    Args:
        x, y: maps of the same shape (NaN heads are left out).
        label_top: write the names of the ``label_top`` best heads of each map beside
            their points (0: none), each on the side of its point where it overlaps no
            other label or labelled point; a label that fits nowhere is left to the hover.
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
    tops = [m.top(label_top) for m in (x, y)] if label_top else [[], []]
    pairs = zip_longest(*tops)  # alternating, best first
    order = [(h.layer, h.head) for pair in pairs for h in pair if h is not None]
    labelled = list(dict.fromkeys(order))  # best first, each head once
    text = [f"L{l}H{h}" if (l, h) in labelled else "" for l, h in zip(layers, heads)]
    index = {(int(l), int(h)): i for i, (l, h) in enumerate(zip(layers[ok], heads[ok]))}
    text, positions = place_labels(
        xs[ok],
        ys[ok],
        [t for t, keep in zip(text, ok) if keep],
        [index[h] for h in labelled if h in index],
    )
    x_name = x_title or score_info(x.name).title
    y_name = y_title or score_info(y.name).title
    fig = go.Figure(
        go.Scatter(
            x=xs[ok],
            y=ys[ok],
            mode="markers+text",
            name="heads",
            text=text,
            textposition=positions,
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


#: Where a label may sit beside its point (Plotly's ``textposition``) and its box's offset
#: from the point, in label widths ``w`` and heights ``h`` (pixels: 6 of marker room).
LABEL_SIDES = {
    "top center": (-0.5, -1.0, 0, -5),
    "bottom center": (-0.5, 0.0, 0, 5),
    "middle right": (0.0, -0.5, 6, 0),
    "middle left": (-1.0, -0.5, -6, 0),
    "top right": (0.0, -1.0, 4, -4),
    "top left": (-1.0, -1.0, -4, -4),
    "bottom right": (0.0, 0.0, 4, 4),
    "bottom left": (-1.0, 0.0, -4, 4),
}


def place_labels(
    xs: np.ndarray,
    ys: np.ndarray,
    text: Sequence[str],
    order: Sequence[int],
    *,
    size: tuple[float, float] = (560.0, 300.0),
    font: float = 10.0,
) -> tuple[list[str], list[str]]:
    """Labels that do not overlap: each point of ``order`` (best first) takes the first
    side of :data:`LABEL_SIDES` where its label's box overlaps no placed label and no
    labelled point, in a plot area of ``size`` pixels (a small one, so a wider figure only
    spreads them more); a label that fits nowhere is dropped (the hover still names it).

    Returns:
        (text, textposition) per point.

    Example::

        place_labels(np.array([0.0, 0.01]), np.array([0.0, 0.0]), ["L0H1", "L0H2"], [0, 1])
    """
    width, height = size
    px = _pixels(xs, width)
    py = height - _pixels(ys, height)
    shown, sides = [""] * len(text), ["top center"] * len(text)
    taken = [(px[i] - 4, py[i] - 4, px[i] + 4, py[i] + 4) for i in order]  # labelled points
    for i in order:
        w, h = 0.62 * font * len(text[i]) + 2, font + 3
        for side, (fx, fy, dx, dy) in LABEL_SIDES.items():
            x0, y0 = px[i] + dx + fx * w, py[i] + dy + fy * h
            box = (x0, y0, x0 + w, y0 + h)
            mine = (px[i] - 4, py[i] - 4, px[i] + 4, py[i] + 4)
            if not any(_overlap(box, other) for other in taken if other != mine):
                shown[i], sides[i] = text[i], side
                taken.append(box)
                break
    return shown, sides


def _pixels(values: np.ndarray, length: float) -> np.ndarray:
    """Values as pixels along an axis of ``length`` (Plotly's autorange pads ~5%)."""
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    return (values - low + 0.05 * span) / (1.1 * span) * length


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
