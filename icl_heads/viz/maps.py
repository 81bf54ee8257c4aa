"""Layer x head maps: :func:`head_heatmap` (one map) and :func:`head_heatmaps` (several
side by side with shared axes), top heads outlined (:func:`top_heads`). Signed maps get a
diverging ``RdBu`` scale centred at 0, maps without negative values a sequential ``Blues``.
Every cell carries ``customdata = [layer, head, rank]`` for the linked report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .protocols import HeadMap
from .style import OUTLINE, describe_settings, escape

if TYPE_CHECKING:
    import plotly.graph_objects as go


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
                    "head %{customdata[1]}<br>" + escape(scores.name) + " = %{z:.4g}"
                    f"<br>rank %{{customdata[2]}} of {z.size}<extra>{escape(name)}"
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
